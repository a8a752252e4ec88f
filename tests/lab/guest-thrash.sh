# The thrasher's initiator (192.168.0.33) inside the lab VM: one target on three gateways
# (192.168.0.27, .32, .34), two LUNs, open-iscsi and dm-multipath with the README's device
# section. Two writers, one per multipath map, write a pattern block by block (4 KiB, direct)
# and read every 16th block back; every write slower than 1 s and every I/O error is
# reported. Each second the paths of both maps are printed. A line "stop" on the console ends
# the run: the writers stop, both maps are read back whole and compared with the pattern.
# Markers "RBDGW-THRASH: ..." on the console drive the host side.
fail() { echo "RBDGW-THRASH: FAIL $*"; multipath -ll; tail -30 /tmp/multipathd.log; poweroff -f; }
now_cs() { cut -d' ' -f1 /proc/uptime | tr -d '.'; }
T=iqn.2026-11.org.rbdgw:thrash
N=2048
@SETUP@
iscsiadm -m discovery -t sendtargets -p 192.168.0.27:3260 > /tmp/disc || fail "discovery"
cat /tmp/disc
[ "$(grep -c " $T" /tmp/disc)" = 3 ] || fail "discovery lists $(grep -c " $T" /tmp/disc) portals, not 3"
iscsiadm -m node -l >/dev/null || fail login
i=0; while [ "$(ls /sys/block | grep -c '^sd')" -lt 6 ]; do i=$((i+1)); [ $i -gt 150 ] && fail "expected 6 paths: $(ls /sys/block)"; sleep 0.2; done
iscsiadm -m session -P3 | awk '/Current Portal:/ {split($3,a,":"); p=a[1]} /Attached scsi disk/ {print "RBDGW-THRASH: SD " $4 " " p}'
mkdir -p /etc/multipath /run/multipathd; multipathd -d -s -v2 >/tmp/multipathd.log 2>&1 & sleep 3; multipath -r >/dev/null 2>&1; sleep 2
i=0; while [ ! -b /dev/mapper/mpatha ] || [ ! -b /dev/mapper/mpathb ]; do i=$((i+1)); [ $i -gt 100 ] && fail "no mpatha/mpathb"; sleep 0.2; done
multipath -ll
dd if=/dev/urandom of=/tmp/pat bs=4096 count=$N 2>/dev/null
writer() {
  m=$1; i=0
  while [ ! -f /tmp/stop ]; do
    b=$((i % N)); t0=$(now_cs)
    dd if=/tmp/pat of=/dev/mapper/$m bs=4096 count=1 skip=$b seek=$b oflag=direct conv=notrunc 2>/dev/null \
      || echo "RBDGW-THRASH: IOERROR $m write $b"
    dt=$(( ($(now_cs) - t0) * 10 ))
    [ $dt -ge 1000 ] && echo "RBDGW-THRASH: STALL $m ms=$dt"
    if [ $((i % 16)) = 15 ]; then
      dd if=/dev/mapper/$m of=/tmp/rb.$m bs=4096 count=1 skip=$b iflag=direct 2>/dev/null \
        || echo "RBDGW-THRASH: IOERROR $m read $b"
      dd if=/tmp/pat of=/tmp/want.$m bs=4096 count=1 skip=$b 2>/dev/null
      cmp -s /tmp/rb.$m /tmp/want.$m || echo "RBDGW-THRASH: MISMATCH $m block $b"
    fi
    i=$((i+1)); echo $i > /tmp/count.$m
  done
  echo done > /tmp/done.$m
}
# One line per map: the guest's uptime (centiseconds) when multipathd answered, then each
# path as sdX:priority:dm state-checker state, from multipathd's own view (`multipath -ll`
# would run the checkers itself and block on a stopped gateway). The host times failovers
# by the guest's clock, not by when a line reaches it.
paths() {
  p=$(multipathd show paths raw format "%m|%d|%p|%t|%T" 2>/dev/null)
  read -r up _ </proc/uptime
  echo "$p" | awk -F'|' -v t="${up%.*}${up#*.}" '
    $1 ~ /^mpath/ {gsub(/ /, "", $5); line[$1] = line[$1] " " $2 ":" $3 ":" $4 "-" $5}
    END {for (m in line) print "RBDGW-THRASH: PATHS " t " " m line[m]}'
}
# Whatever multipathd logs (a path failed or came back, priorities changed, a group switched)
# prints the paths at once (after a burst of lines, 0.2 s of quiet): a slow TCG guest's
# once-a-loop lines come only every two seconds or so.
tail -n 0 -F /tmp/multipathd.log 2>/dev/null | while read -r _; do
  while read -r -t 0.2 _; do :; done
  paths
done &
writer mpatha & writer mpathb &
echo "RBDGW-THRASH: RUNNING"
while :; do
  paths
  if read -t 1 cmd && [ "$cmd" = stop ]; then break; fi
done
touch /tmp/stop
echo "RBDGW-THRASH: STOPPING"
i=0; while [ ! -f /tmp/done.mpatha ] || [ ! -f /tmp/done.mpathb ]; do i=$((i+1)); [ $i -gt 300 ] && fail "writers do not stop"; sleep 0.2; done
echo "RBDGW-THRASH: WRITERS STOPPED, READING BACK"
for m in mpatha mpathb; do
  n=$(cat /tmp/count.$m); [ $n -gt $N ] && n=$N
  dd if=/dev/mapper/$m of=/tmp/all.$m bs=4096 count=$n iflag=direct 2>/dev/null || echo "RBDGW-THRASH: IOERROR $m final read"
  dd if=/tmp/pat of=/tmp/wantall bs=4096 count=$n 2>/dev/null
  cmp -s /tmp/all.$m /tmp/wantall && echo "RBDGW-THRASH: VERIFIED $m blocks=$n writes=$(cat /tmp/count.$m)" \
    || echo "RBDGW-THRASH: MISMATCH $m final"
done
multipath -ll
echo "RBDGW-THRASH: DONE"
