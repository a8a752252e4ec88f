#!/usr/bin/python3
"""Prints every gateway host a config names (targets, host-keyed gateways and auth entries)."""
import json
import re
import sys

text = re.sub(r"#.*?\n", "", open(sys.argv[1]).read())  # lrbd strips comments the same way
doc = json.loads(text)
hosts = []
for t in doc.get("targets", []):
    hosts += [t["host"]] if "host" in t else [h["host"] for h in t.get("hosts", [])]
for p in doc.get("pools", []):
    hosts += [g["host"] for g in p.get("gateways", []) if "host" in g]
hosts += [a["host"] for a in doc.get("auth", []) if "host" in a]
print(" ".join(dict.fromkeys(hosts)))
