#!/usr/bin/env bash
# A throwaway Ceph cluster for the tests: one monitor and one memstore OSD, no cephx, msgr2 on
# ADDR:PORT only, with an "rbd" pool. Daemons write their PIDs to DIR/run/*.pid; stop them by
# those PIDs (the OSD may need SIGKILL).
# Usage: start-cluster.sh DIR PORT [ADDR]      (packages: ceph-mon ceph-osd ceph-common)
set -euo pipefail
D=$1; PORT=$2; ADDR=${3:-127.0.0.1}
mkdir -p "$D"/{run,log,mon,osd}
fsid=$(cat /proc/sys/kernel/random/uuid)
cat > "$D/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v2:$ADDR:$PORT
auth cluster required = none
auth service required = none
auth client required = none
run dir = $D/run
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
mon data = $D/mon/\$cluster-\$id
osd data = $D/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = ${MEMSTORE_BYTES:-1073741824}
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
public addr = $ADDR
ms bind msgr1 = false
CONF
monmaptool --create --addv a "[v2:$ADDR:$PORT]" --fsid "$fsid" "$D/monmap" >/dev/null
ceph-mon -c "$D/ceph.conf" --mkfs -i a --monmap "$D/monmap"
ceph-mon -c "$D/ceph.conf" -i a
uuid=$(cat /proc/sys/kernel/random/uuid)
id=$(ceph -c "$D/ceph.conf" osd new "$uuid")
mkdir -p "$D/osd/ceph-$id"
ceph-osd -c "$D/ceph.conf" -i "$id" --mkfs --osd-uuid "$uuid" 2>/dev/null
ceph-osd -c "$D/ceph.conf" -i "$id" 2>/dev/null
ceph -c "$D/ceph.conf" osd pool create rbd 8 >/dev/null 2>&1
ceph -c "$D/ceph.conf" osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
rbd -c "$D/ceph.conf" pool init rbd
