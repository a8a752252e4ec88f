#!/usr/bin/python3
"""Compares two dumps of fake_lio.py (lrbd's and rbdgw's) on what an initiator meets: per
target and TPG, enabled, portals, LUN number -> image and serial and attributes, ACLs with
mapped LUNs, credentials and settings, authentication attributes, and discovery auth. TPGs
with neither portal nor LUN (lrbd's leftovers, unreachable) are left out. Prints the
differences; exits 1 if there are any."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_lio import ACL_PARAMS  # noqa: E402


# Deliberate differences, reported apart: rbdgw announces a write cache by default (librbd's
# writeback cache; initiators flush it with SYNCHRONIZE CACHE) and thin provisioning (UNMAP
# and WRITE SAME discard RBD objects), LIO's rbd backstore neither unless set; and
# lrbd wrote "1"/"0" into Yes/No login keys, which rbdgw reads as Yes/No.
deliberate = []


def norm(d, side):
    out = {"discovery_auth": d["discovery_auth"], "targets": {}}
    for t, tpgs in d["targets"].items():
        kept = {}
        for tag, g in tpgs.items():
            if not g["portals"] and not g["luns"]:
                continue
            for n, l in g["luns"].items():
                l.pop("vendor", None)
                l.pop("backstore", None)
                for attr, what in [("emulate_write_cache", "a write cache"),
                                   ("emulate_tpu", "thin provisioning"),
                                   ("emulate_tpws", None)]:
                    if side == "rbdgw" and l["attrib"].get(attr) == "1":
                        l["attrib"].pop(attr)
                        if what:
                            deliberate.append(what)
            for a in g["acls"].values():
                for k, v in a["param"].items():
                    a["param"][k] = {"1": "Yes", "0": "No"}.get(v, v)
                a["param"] = {k: v for k, v in a["param"].items() if v != ACL_PARAMS[k]}
            kept[tag] = g
        if kept:
            out["targets"][t] = kept
    return out


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                yield "%s/%s: only rbdgw: %s" % (path, k, json.dumps(b[k])[:200])
            elif k not in b:
                yield "%s/%s: only lrbd: %s" % (path, k, json.dumps(a[k])[:200])
            else:
                yield from diff(a[k], b[k], "%s/%s" % (path, k))
    elif a != b:
        yield "%s: lrbd %s, rbdgw %s" % (path, json.dumps(a), json.dumps(b))


a = norm(json.load(open(sys.argv[1])), "lrbd")
b = norm(json.load(open(sys.argv[2])), "rbdgw")
found = list(diff(a, b))
for line in found:
    print(line)
if deliberate:
    print("deliberate: " + ", ".join("%d LUNs with %s" % (deliberate.count(w), w)
                                     for w in sorted(set(deliberate))))
sys.exit(1 if found else 0)
