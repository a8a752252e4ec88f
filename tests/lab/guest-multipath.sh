# The seed's initiator (192.168.0.33) inside the lab VM: discovery on both gateways, login to
# both portals, dm-multipath with ALUA priorities, a verifiable pattern written through the
# multipath device while the host takes the owner gateway away (@ACTION@: KILL or CUT), read
# back and compared, then the path reinstated when the host brings the gateway back.
# Markers "RBDGW-LAB: ..." on the console drive the host side.
fail() { echo "RBDGW-LAB: FAIL $*"; multipath -ll; tail -20 /tmp/multipathd.log; poweroff -f; }
now_cs() { cut -d' ' -f1 /proc/uptime | tr -d '.'; }
T=iqn.1994-05.com.redhat:37d4cea93db4
@SETUP@
for p in 192.168.0.27 192.168.0.32; do
  iscsiadm -m discovery -t sendtargets -p $p:3260 > /tmp/disc || fail "discovery on $p"
  echo "RBDGW-LAB: discovery on $p:"; cat /tmp/disc
  grep -q "^192.168.0.27:3260,1 $T" /tmp/disc || fail "portal 1 missing from discovery on $p"
  grep -q "^192.168.0.32:3260,2 $T" /tmp/disc || fail "portal 2 missing from discovery on $p"
done
iscsiadm -m node -l >/dev/null || fail login
n=$(iscsiadm -m session | wc -l); echo "RBDGW-LAB: sessions=$n"; [ "$n" = 2 ] || fail "expected 2 sessions"
i=0; while [ ! -b /dev/sdb ]; do i=$((i+1)); [ $i -gt 100 ] && fail "no sdb"; sleep 0.2; done
mkdir -p /etc/multipath /run/multipathd; multipathd -d -s -v3 >/tmp/multipathd.log 2>&1 & sleep 3; head -5 /tmp/multipathd.log; multipath -r >/dev/null 2>&1; sleep 2
i=0; while [ ! -b /dev/mapper/mpatha ]; do i=$((i+1)); [ $i -gt 50 ] && fail "no mpatha"; sleep 0.2; done
multipath -ll | tee /tmp/mp
echo "RBDGW-LAB: groups=$(grep -c 'policy=' /tmp/mp) paths=$(grep -c 'active ready' /tmp/mp)"
[ "$(grep -c 'policy=' /tmp/mp)" = 2 ] || fail "expected 2 priority groups"
# The owner's path (gateway 1, TPG 1) must be active/optimized (alua prio 50) and the other
# active/non-optimized (prio 10). The order of the groups in the table is not checked: multipathd
# may build the map while a new path is still being checked and then switch to the best group
# without reordering the table.
owner=$(iscsiadm -m session -P3 | awk '/Current Portal: 192.168.0.27:/ {p=1} /Current Portal: 192.168.0.32:/ {p=0} p && /Attached scsi disk/ {print $4}')
path_prios() { multipath -ll | awk '/prio=/ {for (i=1;i<=NF;i++) if ($i ~ /^prio=/) {split($i,a,"="); p=a[2]}} / sd[a-z]+ / {for (i=1;i<=NF;i++) if ($i ~ /^sd[a-z]+$/) print $i, p}'; }
i=0; while :; do
  path_prios > /tmp/prios
  grep -q "^$owner 50$" /tmp/prios && [ "$(grep -c ' 10$' /tmp/prios)" = 1 ] && break
  i=$((i+1)); [ $i -gt 20 ] && fail "owner path $owner is not the only active/optimized one: $(tr '\n' ' ' < /tmp/prios)"
  sleep 0.5
done
echo "RBDGW-LAB: owner path $owner prios $(tr '\n' ' ' < /tmp/prios)"
dev=/dev/mapper/mpatha
dd if=/dev/urandom of=/tmp/pattern bs=1M count=40 2>/dev/null
md5sum /tmp/pattern > /tmp/want
max=0; i=0
echo "RBDGW-LAB: WRITING"
while [ $i -lt 40 ]; do
  [ $i = 8 ] && { echo "RBDGW-LAB: @ACTION@-NOW"; sleep 1; }
  t0=$(now_cs)
  dd if=/tmp/pattern of=$dev bs=1M count=1 skip=$i seek=$i oflag=direct conv=notrunc 2>/dev/null || fail "write of MiB $i"
  dt=$(( $(now_cs) - t0 )); [ $dt -gt $max ] && max=$dt
  i=$((i+1))
done
echo "RBDGW-LAB: WRITTEN slowest_write_ms=$((max*10))"
multipath -ll
dd if=$dev of=/tmp/back bs=1M count=40 iflag=direct 2>/dev/null || fail "read back"
sed 's|/tmp/pattern|/tmp/back|' /tmp/want | md5sum -c >/dev/null || fail "data read back differs"
echo "RBDGW-LAB: VERIFIED"
echo "RBDGW-LAB: RESTORE-NOW"
i=0; while [ "$(multipath -ll | grep -c 'active ready')" != 2 ]; do i=$((i+1)); [ $i -gt 90 ] && fail "path not reinstated"; sleep 1; done
multipath -ll
echo "RBDGW-LAB: REINSTATED after_s=$i"
dd if=$dev of=/tmp/back bs=1M count=40 iflag=direct 2>/dev/null || fail "read after reinstatement"
sed 's|/tmp/pattern|/tmp/back|' /tmp/want | md5sum -c >/dev/null || fail "data differs after reinstatement"
echo "RBDGW-LAB: OK"
