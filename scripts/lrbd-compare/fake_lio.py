#!/usr/bin/python3
"""A stand-in for targetcli and LIO's configfs, enough to run lrbd's own code where there is no
LIO (this machine's kernel has no configfs target): `targetcli` commands, given as arguments or
on stdin the way lrbd's TargetcliDispatcher feeds them, are logged and applied to a directory
tree laid out like /sys/kernel/config/target. `dump` prints what that tree holds per target and
TPG, the state both lrbd and `rbdgw plan --lrbd-commands` are compared on.

Usage: fake_lio.py ROOT targetcli [ARGS...]   (ROOT: the fake configfs `target` directory)
       fake_lio.py ROOT dump
Only what lrbd uses is emulated; anything else fails loudly.
"""
import json
import os
import re
import sys
import uuid

# LIO's attribute files, with their defaults (the ones lrbd's samples set must exist).
BACKSTORE_ATTRIBS = {
    "block_size": "512", "emulate_3pc": "1", "emulate_caw": "1", "emulate_dpo": "1",
    "emulate_fua_read": "1", "emulate_fua_write": "1", "emulate_model_alias": "0",
    "emulate_rest_reord": "0", "emulate_tas": "1", "emulate_tpu": "0", "emulate_tpws": "0",
    "emulate_ua_intlck_ctrl": "0", "emulate_write_cache": "0", "enforce_pr_isids": "1",
    "force_pr_aptpl": "0", "hw_block_size": "512", "hw_max_sectors": "8192",
    "hw_pi_prot_type": "0", "hw_queue_depth": "128", "is_nonrot": "1",
    "max_unmap_block_desc_count": "1", "max_unmap_lba_count": "8192",
    "max_write_same_len": "65535", "optimal_sectors": "8192", "pi_prot_format": "0",
    "pi_prot_type": "0", "queue_depth": "128", "unmap_granularity": "8192",
    "unmap_granularity_alignment": "0", "unmap_zeroes_data": "0",
}
TPG_ATTRIBS = {
    "authentication": "0", "cache_dynamic_acls": "0", "default_cmdsn_depth": "64",
    "default_erl": "0", "demo_mode_discovery": "1", "demo_mode_write_protect": "1",
    "fabric_prot_type": "0", "generate_node_acls": "0", "login_timeout": "15",
    "netif_timeout": "2", "prod_mode_write_protect": "0", "t10_pi": "0",
    "tpg_enabled_sendtargets": "1",
}
ACL_ATTRIBS = {
    "dataout_timeout": "3", "dataout_timeout_retries": "5", "default_erl": "0",
    "nopin_response_timeout": "30", "nopin_timeout": "15", "random_datain_pdu_offsets": "0",
    "random_datain_seq_offsets": "0", "random_r2t_offsets": "0",
}
ACL_PARAMS = {
    "DataDigest": "CRC32C,None", "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes",
    "DefaultTime2Retain": "20", "DefaultTime2Wait": "2", "ErrorRecoveryLevel": "0",
    "FirstBurstLength": "65536", "HeaderDigest": "CRC32C,None", "IFMarkInt": "Reject",
    "IFMarker": "No", "ImmediateData": "Yes", "InitialR2T": "Yes", "MaxBurstLength": "262144",
    "MaxConnections": "1", "MaxOutstandingR2T": "1", "MaxRecvDataSegmentLength": "8192",
    "MaxXmitDataSegmentLength": "262144", "OFMarkInt": "Reject", "OFMarker": "No",
    "TargetAlias": "LIO Target",
}
AUTH = ["userid", "password", "userid_mutual", "password_mutual"]


def put(path, value=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(value + "\n")


def get(path):
    with open(path) as f:
        return f.read().rstrip("\n")


def files(base, defaults):
    for k, v in defaults.items():
        put(os.path.join(base, k), v)


def kv(args):
    out = {}
    for a in args:
        if "=" not in a:
            raise SystemExit("fake targetcli: expected key=value, found %r" % a)
        k, v = a.split("=", 1)
        out[k] = v
    return out


class Lio:
    def __init__(self, root):
        self.root = root
        self.iscsi = os.path.join(root, "iscsi")
        os.makedirs(os.path.join(self.iscsi, "discovery_auth"), exist_ok=True)
        da = os.path.join(self.iscsi, "discovery_auth")
        if not os.path.exists(os.path.join(da, "enforce_discovery_auth")):
            files(da, {k: "" for k in AUTH})
            put(os.path.join(da, "enforce_discovery_auth"), "0")

    def tpg_dir(self, target, tag):
        return os.path.join(self.iscsi, target, "tpgt_%s" % tag)

    def create_tpg(self, target, tag):
        d = self.tpg_dir(target, tag)
        if os.path.isdir(d):
            raise SystemExit("fake targetcli: tpg %s of %s exists" % (tag, target))
        files(os.path.join(d, "attrib"), TPG_ATTRIBS)
        files(os.path.join(d, "auth"), {k: "" for k in AUTH})
        for sub in ["acls", "lun", "np"]:
            os.makedirs(os.path.join(d, sub))
        # targetcli creates a TPG enabled.
        put(os.path.join(d, "enable"), "1")

    def run(self, argv):
        if not argv:
            for line in sys.stdin:
                words = line.split()
                if words == ["exit"]:
                    # targetcli's shell ends there; lrbd waits for it without closing stdin.
                    return
                if not words:
                    continue
                self.log(words)
                self.command(words)
            return
        if argv[:2] == ["get", "global"]:
            print("%s=false" % argv[2])
            return
        self.log(argv)
        self.command(argv)

    def log(self, words):
        with open(os.path.join(self.root, "commands.log"), "a") as f:
            f.write("targetcli " + " ".join(words) + "\n")

    def command(self, w):
        if w[:2] == ["set", "global"] or w[0] == "clearconfig":
            return
        expect = None
        if "#" in w:
            # `# LUN n`: the number rbdgw says targetcli gives this LUN.
            expect = int(w[w.index("#") + 2])
            w = w[:w.index("#")]
        path, verb, args = w[0], w[1] if len(w) > 1 else "", w[2:]
        m = re.fullmatch(r"/backstores/(rbd|iblock|fileio|ramdisk)/([^/]+)", path)
        if m and verb == "set":
            d = os.path.join(self.root, "core", "%s_0" % m.group(1), m.group(2))
            sub = {"attribute": "attrib", "wwn": "wwn"}[args[0]]
            for k, v in kv(args[1:]).items():
                if not os.path.exists(os.path.join(d, sub, k)):
                    raise SystemExit("fake targetcli: no attribute %s" % k)
                put(os.path.join(d, sub, k), v)
            return
        m = re.fullmatch(r"/backstores/(rbd|iblock|fileio|ramdisk)", path)
        if m and verb == "create":
            a = kv(args)
            a.setdefault("dev", "")
            d = os.path.join(self.root, "core", "%s_0" % m.group(1), a["name"])
            files(os.path.join(d, "attrib"), BACKSTORE_ATTRIBS)
            put(os.path.join(d, "udev_path"), a["dev"])
            put(os.path.join(d, "enable"), "1")
            put(os.path.join(d, "wwn", "vpd_unit_serial"), "")
            put(os.path.join(d, "wwn", "vendor_id"), "LIO-ORG")
            return
        if path == "/iscsi" and verb == "create":
            if args:
                target = args[0]
            else:
                # targetcli's generated name: host, machine, 12 random hex digits.
                target = "iqn.2003-01.org.linux-iscsi.%s.x8664:sn.%s" % (
                    os.uname()[1].split(".")[0], uuid.uuid4().hex[-12:])
            self.create_tpg(target, 1)
            return
        if path == "/iscsi" and verb == "set" and args[0] == "discovery_auth":
            a = kv(args[1:])
            da = os.path.join(self.iscsi, "discovery_auth")
            put(os.path.join(da, "enforce_discovery_auth"), a.pop("enable"))
            for k, v in a.items():
                k = {"mutual_userid": "userid_mutual", "mutual_password": "password_mutual"}.get(k, k)
                put(os.path.join(da, k), v)
            return
        m = re.fullmatch(r"/iscsi/([^/]+)", path)
        if m and verb == "create":
            self.create_tpg(m.group(1), args[0])
            return
        m = re.fullmatch(r"/iscsi/([^/]+)/tpg(\d+)(/.*)?", path)
        if not m:
            raise SystemExit("fake targetcli: unknown path %r" % path)
        d = self.tpg_dir(m.group(1), m.group(2))
        if not os.path.isdir(d):
            raise SystemExit("fake targetcli: no such tpg %r" % path)
        rest = m.group(3) or ""
        if rest == "" and verb in ("enable", "disable"):
            put(os.path.join(d, "enable"), "1" if verb == "enable" else "0")
        elif rest == "" and verb == "set" and args[0] == "attribute":
            for k, v in kv(args[1:]).items():
                put(os.path.join(d, "attrib", k), v)
        elif rest == "" and verb == "set" and args[0] == "auth":
            for k, v in kv(args[1:]).items():
                put(os.path.join(d, "auth", k), v)
        elif rest == "/luns" and verb == "create":
            store = args[0]
            name = store.rsplit("/", 1)[1]
            kind = store.split("/")[2]
            core = os.path.join(self.root, "core", "%s_0" % kind, name)
            if not os.path.isdir(core):
                raise SystemExit("fake targetcli: no backstore %s" % store)
            luns = os.path.join(d, "lun")
            used = {int(x[4:]) for x in os.listdir(luns)}
            if len(args) > 1:
                lun = int(args[1])
                if lun in used:
                    raise SystemExit("fake targetcli: lun %d in use" % lun)
            else:
                lun = min(set(range(len(used) + 1)) - used)
                if expect is not None and lun != expect:
                    raise SystemExit("fake targetcli: %s became LUN %d, not %d as said"
                                     % (" ".join(w), lun, expect))
            os.makedirs(os.path.join(luns, "lun_%d" % lun))
            os.symlink(core, os.path.join(luns, "lun_%d" % lun, "%s_link" % name[:8]))
        elif rest == "/portals" and verb == "create":
            addr = args[0] + (":" + args[1] if len(args) > 1 else ":3260") if args else "0.0.0.0:3260"
            os.makedirs(os.path.join(d, "np", addr), exist_ok=True)
        elif rest == "/acls" and verb == "create":
            a = os.path.join(d, "acls", args[0])
            files(os.path.join(a, "attrib"), ACL_ATTRIBS)
            files(os.path.join(a, "param"), ACL_PARAMS)
            files(os.path.join(a, "auth"), {k: "" for k in AUTH})
        else:
            m2 = re.fullmatch(r"/acls/([^/]+)", rest)
            if not m2:
                raise SystemExit("fake targetcli: unknown command %r" % " ".join(w))
            a = os.path.join(d, "acls", m2.group(1))
            if not os.path.isdir(a):
                raise SystemExit("fake targetcli: no acl %s" % m2.group(1))
            if verb == "create":
                os.makedirs(os.path.join(a, "lun_%s" % args[0]))
                put(os.path.join(a, "lun_%s" % args[0], "mapped_lun"), args[1])
            elif verb == "set" and args[0] in ("auth", "attribute", "parameter"):
                sub = {"auth": "auth", "attribute": "attrib", "parameter": "param"}[args[0]]
                for k, v in kv(args[1:]).items():
                    if not os.path.exists(os.path.join(a, sub, k)):
                        raise SystemExit("fake targetcli: no %s %s" % (sub, k))
                    put(os.path.join(a, sub, k), v)
            else:
                raise SystemExit("fake targetcli: unknown command %r" % " ".join(w))


def changed(base, defaults):
    return {k: get(os.path.join(base, k)) for k in sorted(defaults)
            if get(os.path.join(base, k)) != defaults[k]}


def dump(root):
    """Per target and TPG: enabled, listed by SendTargets, portals, attributes and auth that
    differ from LIO's defaults, LUNs (number -> pool/image, serial, changed backstore
    attributes), ACLs with their mapped LUNs, credentials and settings; and discovery auth."""
    iscsi = os.path.join(root, "iscsi")
    out = {"targets": {}}
    da = os.path.join(iscsi, "discovery_auth")
    out["discovery_auth"] = {k: get(os.path.join(da, k)) for k in AUTH + ["enforce_discovery_auth"]}
    if out["discovery_auth"]["enforce_discovery_auth"] == "0":
        out["discovery_auth"] = "off"
    for target in sorted(os.listdir(iscsi)):
        if target == "discovery_auth":
            continue
        tpgs = {}
        for t in sorted(os.listdir(os.path.join(iscsi, target))):
            d = os.path.join(iscsi, target, t)
            luns = {}
            for l in sorted(os.listdir(os.path.join(d, "lun")), key=lambda x: int(x[4:])):
                (link,) = os.listdir(os.path.join(d, "lun", l))
                core = os.path.realpath(os.path.join(d, "lun", l, link))
                luns[l[4:]] = {
                    "backstore": os.path.basename(core),
                    "dev": get(os.path.join(core, "udev_path")),
                    "serial": get(os.path.join(core, "wwn", "vpd_unit_serial")),
                    "vendor": get(os.path.join(core, "wwn", "vendor_id")),
                    "attrib": changed(os.path.join(core, "attrib"), BACKSTORE_ATTRIBS),
                }
            acls = {}
            for a in sorted(os.listdir(os.path.join(d, "acls"))):
                ad = os.path.join(d, "acls", a)
                acls[a] = {
                    "mapped": {x[4:]: get(os.path.join(ad, x, "mapped_lun"))
                               for x in sorted(os.listdir(ad)) if x.startswith("lun_")},
                    "auth": {k: get(os.path.join(ad, "auth", k)) for k in AUTH
                             if get(os.path.join(ad, "auth", k))},
                    "attrib": changed(os.path.join(ad, "attrib"), ACL_ATTRIBS),
                    "param": changed(os.path.join(ad, "param"), ACL_PARAMS),
                }
            tpgs[t[5:]] = {
                "enabled": get(os.path.join(d, "enable")),
                "portals": sorted(os.listdir(os.path.join(d, "np"))),
                "attrib": changed(os.path.join(d, "attrib"), TPG_ATTRIBS),
                "auth": {k: get(os.path.join(d, "auth", k)) for k in AUTH
                         if get(os.path.join(d, "auth", k))},
                "luns": luns,
                "acls": acls,
            }
        out["targets"][target] = tpgs
    return out


if __name__ == "__main__":
    root = sys.argv[1]
    if sys.argv[2] == "dump":
        print(json.dumps(dump(root), indent=1, sort_keys=True))
    elif sys.argv[2] == "targetcli":
        Lio(root).run(sys.argv[3:])
    elif sys.argv[2] == "apply":
        # A list of commands (`rbdgw plan --lrbd-commands`); only targetcli's are applied.
        lio = Lio(root)
        for line in open(sys.argv[3]):
            words = line.split()
            if words and words[0] == "targetcli":
                lio.log(words[1:])
                lio.command(words[1:])
    else:
        raise SystemExit(__doc__)
