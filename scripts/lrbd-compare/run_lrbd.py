#!/usr/bin/python3
"""Runs lrbd's own code (a checkout of SUSE/lrbd, not part of this project) against a real Ceph
cluster, with targetcli, `rbd map` and LIO's configfs replaced by fake_lio.py.

Usage: run_lrbd.py LRBD CEPH_CONF store CONFIG        (lrbd -f CONFIG: wipe, then write xattrs)
       run_lrbd.py LRBD CEPH_CONF apply HOST ROOT     (lrbd -H HOST into the fake configfs ROOT)
       run_lrbd.py LRBD CEPH_CONF migrate             (lrbd -m 1.0: print the migrated config)
ROOT must look like /sys/kernel/config/target to lrbd's path splitting: four components, no
underscores (e.g. /tmp/lrbdcmp/cfs/target).
"""
import argparse
import importlib.machinery
import importlib.util
import os
import sys
import types

here = os.path.dirname(os.path.abspath(__file__))
lrbd_path, ceph_conf, mode = sys.argv[1:4]

# lrbd imports netifaces for its own addresses; the host's are given below instead.
sys.modules["netifaces"] = types.ModuleType("netifaces")
loader = importlib.machinery.SourceFileLoader("lrbd", lrbd_path)
spec = importlib.util.spec_from_loader("lrbd", loader)
lrbd = importlib.util.module_from_spec(spec)
loader.exec_module(lrbd)
lrbd.is_suse = lambda: False

args = argparse.Namespace(config=None, ceph=ceph_conf, host=None, name=None, pools=None,
                          verbose=False, wipe=False, clear=False, unmap=False, file=None,
                          add=None, output=False, migrate=None, edit=False, local=False,
                          backstore=None, debug=False, editor=None)


def host_addresses(host):
    """The addresses a gateway host has: those of every portal the stored config names for it
    (the targets' hosts entries and its own gateway entries' portals)."""
    import json
    import rados
    names = set()
    portals = {}
    with rados.Rados(conffile=ceph_conf) as c:
        for pool in c.list_pools():
            with c.open_ioctx(pool) as io:
                try:
                    attrs = list(io.get_xattrs("lrbd.conf"))
                except rados.ObjectNotFound:
                    continue
                for k, v in attrs:
                    v = json.loads(v.decode())
                    if k == "targets":
                        for t in v:
                            for h in t.get("hosts", []):
                                if h["host"] == host:
                                    names.add(h["portal"])
                    elif k == "portals":
                        portals = {p["name"]: p["addresses"] for p in v}
                    elif k == host:
                        for e in v.get("tpg", []):
                            if "portal" in e:
                                names.add(e["portal"])
    return sorted({a.split(" ")[0] for n in names for a in portals.get(n, [])})


if mode == "store":
    args.file = sys.argv[4]
    lrbd.main(args)
elif mode == "migrate":
    args.migrate = "1.0"
    lrbd.main(args)
elif mode == "apply":
    host, root = sys.argv[4:6]
    os.environ["PATH"] = os.path.join(root, "bin") + ":" + os.environ["PATH"]
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    with open(os.path.join(root, "bin", "targetcli"), "w") as f:
        f.write('#!/bin/sh\nexec /usr/bin/python3 %s %s targetcli "$@"\n'
                % (os.path.join(here, "fake_lio.py"), root))
    with open(os.path.join(root, "bin", "rbd"), "w") as f:
        f.write('#!/bin/sh\n[ "$1" = showmapped ] && echo "id pool namespace image snap device"\n'
                'exit 0\n')
    with open(os.path.join(root, "bin", "modprobe"), "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    for b in ["targetcli", "rbd", "modprobe"]:
        os.chmod(os.path.join(root, "bin", b), 0o755)
    addrs = host_addresses(host)
    lrbd.addresses = lambda: addrs
    lrbd.Runtime.target = root
    args.host = host
    lrbd.main(args)
else:
    raise SystemExit(__doc__)
