# The copy offload initiator (192.168.0.33) inside the lab VM: one target on two gateways
# (192.168.0.27, .32) with two LUNs, logged in through both (four disks, no multipath: each
# command goes down the path the test picks). The guest writes 8 MiB of random data to LUN 0
# through gw1, then copies it to LUN 1 two ways, each read back through the other gateway
# and compared: sg_xcopy (EXTENDED COPY) within gw1; ddpt --xcopy with the source through gw2
# and the destination through gw1. (Not `ddpt --odx`: Debian's ddpt 0.97 writes a POPULATE
# TOKEN range descriptor one byte early, LBA from byte 15, so a copy of 16,384 blocks asks for
# 4,194,304 and any target refuses it; ODX runs in the copy_offload test and bench/run copy.)
# Markers
# "RBDGW-COPY: ..." on the console drive the host side.
fail() { echo "RBDGW-COPY: FAIL $*"; cat /tmp/disks 2>/dev/null; poweroff -f; }
@SETUP@
iscsiadm -m discovery -t sendtargets -p 192.168.0.27:3260 >/dev/null || fail discovery
iscsiadm -m node -l >/dev/null || fail login
i=0; while [ "$(ls /sys/block | grep -c '^sd')" -lt 4 ]; do i=$((i+1)); [ $i -gt 150 ] && fail "expected 4 disks: $(ls /sys/block)"; sleep 0.2; done
sleep 1
# Each disk with the portal and LUN it was reached by.
iscsiadm -m session -P3 | awk '/Current Portal:/ {split($3,a,":"); p=a[1]} /Lun:/ {l=$NF} /Attached scsi disk/ {print $4, p, l}' > /tmp/disks
cat /tmp/disks
dev() { awk -v p="$1" -v l="$2" '$2==p && $3==l {print "/dev/" $1}' /tmp/disks; }
S1=$(dev 192.168.0.27 0); D1=$(dev 192.168.0.27 1); S2=$(dev 192.168.0.32 0); D2=$(dev 192.168.0.32 1)
[ -n "$S1" ] && [ -n "$D1" ] && [ -n "$S2" ] && [ -n "$D2" ] || fail "disks not found"
N=16384
dd if=/dev/urandom of=/tmp/src bs=1M count=8 2>/dev/null
dd if=/tmp/src of=$S1 bs=1M oflag=direct 2>/dev/null || fail "write the source"
want=$(md5sum < /tmp/src)
check() {
  got=$(dd if=$1 bs=512 skip=$2 count=$N iflag=direct 2>/dev/null | md5sum)
  [ "$got" = "$want" ] || fail "$3: the copy differs from the source"
  echo "RBDGW-COPY: VERIFIED $3"
}
sg_xcopy if=$S1 of=$D1 bs=512 count=$N || fail "sg_xcopy"
check $D2 0 "sg_xcopy through gw1, read through gw2"
ddpt if=$S2 iflag=pt of=$D1 oflag=pt bs=512 count=$N seek=$N --xcopy || fail "ddpt --xcopy"
check $D2 $N "ddpt --xcopy from gw2's path to gw1's, read through gw2"
echo "RBDGW-COPY: OK"
