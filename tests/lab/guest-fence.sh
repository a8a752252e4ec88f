# Two cluster nodes in the lab VM, each logged in to both gateways under its own initiator
# name (open-iscsi ifaces): node A through dm-multipath, fenced and unfenced the way
# fence-agents' fence_mpath does it (mpathpersist), node B on its raw paths the way fence_scsi
# does it (sg_persist on every device), with the agents' own command lines (fence_mpath.py,
# fence_scsi.py: register-ignore, reserve type 5, preempt-and-abort, read keys). Then node B
# logs in again, which gives its sessions new ISIDs (open-iscsi numbers them per session):
# its registration named the old ones, so it must register again (fence-agents#517).
# Markers "RBDGW-FENCE: ..." on the console; the host checks the last one.
fail() { echo "RBDGW-FENCE: FAIL $*"; multipath -ll; sg_persist -n -i -s -d /dev/$A1; tail -20 /tmp/multipathd.log; poweroff -f; }
T=iqn.1994-05.com.redhat:37d4cea93db4
KA=0xa1; KB=0xb2
@SETUP@
for n in a b; do
  iscsiadm -m iface -I node$n -o new >/dev/null || fail "iface node$n"
  iscsiadm -m iface -I node$n -o update -n iface.initiatorname -v iqn.2026-11.org.rbdgw:node-$n >/dev/null
done
for p in 192.168.0.27 192.168.0.32; do
  iscsiadm -m discovery -t sendtargets -p $p:3260 -I nodea -I nodeb >/dev/null || fail "discovery on $p"
done
iscsiadm -m node -l >/dev/null || fail login
[ "$(iscsiadm -m session | wc -l)" = 4 ] || fail "expected 4 sessions: $(iscsiadm -m session)"
# "iface portal disk" for each session.
disks() { iscsiadm -m session -P3 | awk '/Iface Name:/ {i=$3} /Current Portal:/ {p=$3} /Attached scsi disk/ {print i, p, $4}'; }
i=0; while [ "$(disks | wc -l)" != 4 ]; do i=$((i+1)); [ $i -gt 100 ] && fail "4 disks: $(disks)"; sleep 0.2; done
disks | tee /tmp/disks
A1=$(awk '$1=="nodea" {print $3; exit}' /tmp/disks)
B=$(awk '$1=="nodeb" {print $3}' /tmp/disks | tr '\n' ' ')
# Node A's paths make its multipath map; node B's stay raw. fence_mpath needs the keys file.
sed -i 's/^defaults {/defaults {\n    reservation_key file/' /etc/multipath.conf
{ echo "blacklist {"; for d in $B; do echo "    devnode \"^$d\$\""; done; echo "}"; } >> /etc/multipath.conf
mkdir -p /etc/multipath /run/multipathd; multipathd -d -s -v3 >/tmp/multipathd.log 2>&1 & sleep 3; multipath -r >/dev/null 2>&1; sleep 2
i=0; while [ ! -b /dev/mapper/mpatha ]; do i=$((i+1)); [ $i -gt 50 ] && fail "no mpatha"; sleep 0.2; done
[ "$(multipath -ll | grep -c 'active ready')" = 2 ] || fail "node A's map has not both paths: $(multipath -ll)"
M=/dev/mapper/mpatha
keys() { sg_persist -n -i -k -d /dev/$A1 | awk '$1 ~ /^0x/ {print $1}' | sort | tr '\n' ' '; }
holder() { sg_persist -n -i -r -d /dev/$A1 | tr '\n' ' '; }
wr() { dd if=/dev/zero of=$1 bs=4k count=1 seek=$2 oflag=direct conv=notrunc 2>/dev/null; }

# fence_mpath "on" for node A: register on every path, reserve (type 5).
mpathpersist --out --register-ignore --param-sark=$KA $M >/dev/null || fail "mpathpersist register"
mpathpersist --out --reserve --param-rk=$KA --prout-type=5 $M >/dev/null || fail "mpathpersist reserve"
# fence_scsi "on" for node B: register on each of its devices (the reservation exists).
for d in $B; do sg_persist -n -o -I -S $KB -d /dev/$d >/dev/null || fail "sg_persist register on $d"; done
k=$(keys); echo "RBDGW-FENCE: keys $k"
[ "$k" = "0xa1 0xa1 0xb2 0xb2 " ] || fail "keys after both nodes registered: $k"
holder | grep -q "Key=0xa1" || fail "reservation: $(holder)"
holder | grep -q "Write Exclusive, registrants only" || fail "reservation type: $(holder)"
mpathpersist --in --read-keys $M | grep -q 0xb2 || fail "mpathpersist read-keys"
# Registrants of a registrants-only reservation write, through every path.
for d in $B; do wr /dev/$d 1 || fail "node B (registered) write on $d"; done
wr $M 2 || fail "node A write"

# fence_mpath "off" of node B from node A: PREEMPT AND ABORT.
mpathpersist --out --preempt-abort --param-rk=$KA --param-sark=$KB --prout-type=5 $M >/dev/null || fail "preempt-abort"
k=$(keys); echo "RBDGW-FENCE: after fencing node B: keys $k"
[ "$k" = "0xa1 0xa1 " ] || fail "keys after fencing: $k"
for d in $B; do
  sg_turs /dev/$d >/dev/null 2>&1  # its unit attention (REGISTRATIONS PREEMPTED)
  wr /dev/$d 3 && fail "fenced node B still writes on $d"
done
echo "RBDGW-FENCE: node B fenced on both gateways"
wr $M 3 || fail "node A write after fencing"

# fence_scsi "on" (unfence) of node B: it registers again and writes.
for d in $B; do sg_persist -n -o -I -S $KB -d /dev/$d >/dev/null || fail "re-register on $d"; done
for d in $B; do wr /dev/$d 4 || fail "unfenced node B write on $d"; done
echo "RBDGW-FENCE: node B unfenced"

# Node B logs in again: new sessions, new ISIDs, new I_T nexuses. Its registrations named the
# old ones, so it writes nothing until it registers again.
for p in 192.168.0.27 192.168.0.32; do iscsiadm -m node -T $T -p $p:3260 -I nodeb -u >/dev/null || fail "logout $p"; done
for p in 192.168.0.27 192.168.0.32; do iscsiadm -m node -T $T -p $p:3260 -I nodeb -l >/dev/null || fail "login $p"; done
i=0; while [ "$(disks | wc -l)" != 4 ]; do i=$((i+1)); [ $i -gt 100 ] && fail "node B's disks back: $(disks)"; sleep 0.2; done
disks > /tmp/disks; B=$(awk '$1=="nodeb" {print $3}' /tmp/disks | tr '\n' ' ')
sg_persist -n -i -s -d /dev/$A1 > /tmp/full; grep -o ',i,0x[0-9a-f]*' /tmp/full | sort -u | tr '\n' ' ' > /tmp/isids
echo "RBDGW-FENCE: registered ISIDs $(cat /tmp/isids)"
for d in $B; do
  sg_turs /dev/$d >/dev/null 2>&1
  wr /dev/$d 5 && fail "node B wrote through a new ISID it never registered ($d)"
done
for d in $B; do sg_persist -n -o -I -S $KB -d /dev/$d >/dev/null || fail "register the new nexus $d"; done
for d in $B; do wr /dev/$d 5 || fail "node B write after registering its new nexus on $d"; done
echo "RBDGW-FENCE: a new ISID is a new initiator port: registered again, node B writes"
# Cleanup as fence_mpath does on unfence of the last node: clear.
mpathpersist --out --clear --param-rk=$KA $M >/dev/null || fail clear
[ -z "$(keys)" ] || fail "keys after clear: $(keys)"
echo "RBDGW-FENCE: OK"
