# The copy offload initiator (192.168.0.33) inside the lab VM: one target on two gateways
# (192.168.0.27, .32) with two LUNs, logged in through both (four disks, no multipath: each
# command goes down the path the test picks). The guest writes 8 MiB of random data to LUN 0
# through gw1, then copies it to LUN 1 two ways, each read back through the other gateway
# and compared: sg_xcopy (EXTENDED COPY) within gw1; ddpt --xcopy with the source through gw2
# and the destination through gw1. Then ODX with sg_raw, the commands as Windows sends them:
# POPULATE TOKEN over the source and RECEIVE ROD TOKEN INFORMATION through gw1, WRITE USING
# TOKEN through gw2's path; a write to the source through gw2 revokes the token, and the same
# WRITE USING TOKEN is then refused. (Not `ddpt --odx`: Debian's ddpt 0.97 writes a POPULATE
# TOKEN range descriptor one byte early, LBA from byte 15, so a copy of 16,384 blocks asks for
# 4,194,304 and any target refuses it.) Markers "RBDGW-COPY: ..." on the console drive the
# host side.
fail() { echo "RBDGW-COPY: FAIL $*"; cat /tmp/disks 2>/dev/null; poweroff -f; }
@SETUP@
iscsiadm -m discovery -t sendtargets -p 192.168.0.27:3260 >/dev/null || fail discovery
iscsiadm -m node -l >/dev/null || fail login
i=0; while [ "$(ls /sys/block | grep -c '^sd')" -lt @DISKS@ ]; do i=$((i+1)); [ $i -gt 150 ] && fail "expected @DISKS@ disks: $(ls /sys/block)"; sleep 0.2; done
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
# Big-endian fields for the parameter lists: value, bytes.
be() {
  v=$1; n=$2; out=""
  while [ "$n" -gt 0 ]; do out="$(printf '\\%03o' $((v & 255)))$out"; v=$((v >> 8)); n=$((n - 1)); done
  printf "$out"
}
byte() { dd if="$1" bs=1 skip="$2" count=1 2>/dev/null | od -An -tu1 | tr -d ' '; }
# POPULATE TOKEN (SBC-3 5.12), list 7: data length, flags, inactivity timeout (default), ROD
# type (default), one range: blocks 0..N.
{ be 30 2; be 0 2; be 0 4; be 0 4; be 0 2; be 16 2; be 0 8; be $N 4; be 0 4; } > /tmp/pt
[ "$(wc -c < /tmp/pt)" = 32 ] || fail "POPULATE TOKEN list is $(wc -c < /tmp/pt) bytes"
sg_raw -s 32 -i /tmp/pt $S1 83 10 00 00 00 00 00 00 00 07 00 00 00 20 00 00 || fail "POPULATE TOKEN"
# RECEIVE ROD TOKEN INFORMATION (SPC-4 6.27), list 7: status done (01h), then the token
# after the sense data and the token descriptor's length.
sg_raw -r 1024 -o /tmp/rrti $S1 84 07 00 00 00 07 00 00 00 00 00 00 04 00 00 00 || fail "RECEIVE ROD TOKEN INFORMATION"
[ "$(byte /tmp/rrti 5)" = 1 ] || fail "POPULATE TOKEN status $(byte /tmp/rrti 5), not 1 (done)"
dd if=/tmp/rrti of=/tmp/tok bs=1 skip=$((38 + $(byte /tmp/rrti 13))) count=512 2>/dev/null
[ "$(wc -c < /tmp/tok)" = 512 ] || fail "no 512-byte token"
# WRITE USING TOKEN (SBC-3 5.46), list 8, through gw2: the token, one range at 2N.
{ be 550 2; be 0 6; be 0 8; cat /tmp/tok; be 0 6; be 16 2; be $((2 * N)) 8; be $N 4; be 0 4; } > /tmp/wut
[ "$(wc -c < /tmp/wut)" = 552 ] || fail "WRITE USING TOKEN list is $(wc -c < /tmp/wut) bytes"
sg_raw -s 552 -i /tmp/wut $D2 83 11 00 00 00 00 00 00 00 08 00 00 02 28 00 00 || fail "WRITE USING TOKEN"
check $D1 $((2 * N)) "ODX: token made through gw1, written through gw2, read through gw1"
# The token is change vulnerable: a write to its source through gw2 revokes it.
dd if=/dev/zero of=$S2 bs=512 count=1 seek=100 oflag=direct 2>/dev/null || fail "write the source"
if sg_raw -s 552 -i /tmp/wut $D2 83 11 00 00 00 00 00 00 00 09 00 00 02 28 00 00 2>/tmp/revoked; then
  fail "WRITE USING TOKEN with a revoked token succeeded"
fi
cat /tmp/revoked
grep -qi "revoked" /tmp/revoked || fail "the refusal does not say the token was revoked"
echo "RBDGW-COPY: VERIFIED ODX token revoked by a write through gw2"
# An abort during a long copy (on RBD: LUN 2, 1.5 GiB written whole by the host, to the
# empty LUN 3): sg_xcopy of all of it through gw1 and, half a second in, a LOGICAL UNIT RESET
# of LUN 3 (sg_reset -d: the task management function Linux sends). The copy fails; the
# destination's last MiB, random in the source, is still zeroes well after the copy would
# have got there; and the LU copies again at once.
if [ @LONG_COPY@ = 1 ]; then
  LS=$(dev 192.168.0.27 2); LD=$(dev 192.168.0.27 3)
  [ -n "$LS" ] && [ -n "$LD" ] || fail "LUNs 2 and 3 not found"
  blocks=$(cat /sys/block/${LS#/dev/}/size)
  dd if=/dev/urandom of=/tmp/tail bs=512 count=2048 2>/dev/null
  dd if=/tmp/tail of=$LS bs=512 seek=$((blocks - 2048)) oflag=direct 2>/dev/null || fail "write the long source's tail"
  sg_xcopy if=$LS of=$LD bs=512 count=$blocks >/tmp/long 2>&1 &
  xc=$!
  sleep 0.5
  sg_reset -d $LD || fail "LOGICAL UNIT RESET of LUN 3"
  if wait $xc; then cat /tmp/long; fail "the long copy ended well before the reset could stop it"; fi
  cat /tmp/long
  sleep 5
  sg_turs $LD >/dev/null 2>&1; sg_turs $LD >/dev/null 2>&1 || fail "LUN 3 not ready after the reset"
  zeroes=$(dd if=/dev/zero bs=512 count=2048 2>/dev/null | md5sum)
  got=$(dd if=$LD bs=512 skip=$((blocks - 2048)) count=2048 iflag=direct 2>/dev/null | md5sum)
  [ "$got" = "$zeroes" ] || fail "the destination's end was written after the reset: the copy went on"
  echo "RBDGW-COPY: VERIFIED the long copy stopped at the LOGICAL UNIT RESET"
  sg_xcopy if=$D1 of=$LD bs=512 count=$N || fail "sg_xcopy after the reset"
  check $LD 0 "a copy to LUN 3 right after the reset"
fi
echo "RBDGW-COPY: OK"
