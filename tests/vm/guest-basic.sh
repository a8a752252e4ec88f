# The basic Linux initiator check, run inside the VM. @PORTAL@ and @TARGET@ are filled in by
# the test. The host's 127.0.0.1 is 10.0.2.2 on qemu's user network. e2fsprogs are called by
# full path: busybox prefers its own applets of the same names.
fail() { echo "RBDGW-VM-RESULT: FAIL $*"; poweroff -f; }
waitdev() { i=0; while [ ! -b /dev/sda ]; do i=$((i+1)); [ $i -gt 100 ] && fail "no /dev/sda"; sleep 0.2; done; }
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
iscsid -f & sleep 1
iscsiadm -m discovery -t sendtargets -p @PORTAL@ | tee /tmp/discovered || fail discovery
grep -q "@TARGET@" /tmp/discovered || fail "target not discovered"
# SendTargets names the gateway's own address (127.0.0.1), which the VM reaches through NAT
# as 10.0.2.2: record the node under the address the VM can use.
iscsiadm -m node -T @TARGET@ -p @PORTAL@ -o new >/dev/null || fail "node record"
iscsiadm -m node -T @TARGET@ -p @PORTAL@ -l || fail login
waitdev
sg_inq /dev/sda | grep -i "vendor identification" || fail inquiry
/sbin/mke2fs -q -t ext4 /dev/sda || fail mkfs
mount -t ext4 /dev/sda /mnt || fail mount
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do
  dd if=/dev/urandom of=/mnt/file$i bs=64k count=8 2>/dev/null || fail "write file$i"
done
(cd /mnt && md5sum file* > /tmp/sums) || fail checksum
umount /mnt || fail umount
/sbin/e2fsck -fn /dev/sda || fail "e2fsck found errors"
iscsiadm -m node -T @TARGET@ -p @PORTAL@ -u || fail logout
sleep 1
iscsiadm -m node -T @TARGET@ -p @PORTAL@ -l || fail "second login"
waitdev
mount -t ext4 /dev/sda /mnt || fail "second mount"
(cd /mnt && md5sum -c /tmp/sums) || fail "checksums differ after logout and login"
umount /mnt
iscsiadm -m node -T @TARGET@ -p @PORTAL@ -u
echo "RBDGW-VM-RESULT: OK"
