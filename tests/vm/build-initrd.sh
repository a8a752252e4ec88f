#!/usr/bin/env bash
# Builds the initramfs of rbdgw's Linux initiator VM: busybox, open-iscsi (iscsid, iscsiadm),
# multipath-tools, sg3-utils, ddpt, e2fsprogs and the kernel modules they need, taken from this
# machine's Debian packages (linux-image-amd64 open-iscsi multipath-tools sg3-utils ddpt
# busybox-static cpio kmod e2fsprogs). GUEST_SCRIPT becomes the tail of /init; the VM powers
# off when it ends.
# Usage: build-initrd.sh OUTDIR GUEST_SCRIPT   -> OUTDIR/initrd.gz; prints the kernel's path.
set -euo pipefail
OUT=$1; GUEST=$2
K=$(ls /lib/modules | sort -V | tail -1)
R=$OUT/root
rm -rf "$R"; mkdir -p "$R"/{bin,sbin,etc/iscsi,proc,sys,dev,tmp,mnt,run/lock,var/lib/iscsi,lib/modules/$K}
cp /bin/busybox "$R/bin/"
for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done

copy_libs() { for l in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*'); do mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; done; }
for b in iscsid iscsiadm multipath multipathd mpathpersist sg_inq sg_vpd sg_rtpg sg_persist sg_turs sg_xcopy sg_raw sg_reset ddpt dmsetup kmod mke2fs e2fsck udevadm; do
  p=$(command -v "$b"); cp "$p" "$R/sbin/"; copy_libs "$p"
done
ln -sf kmod "$R/sbin/modprobe"
# multipathd cancels threads: glibc loads libgcc_s for that at run time (ldd does not show it).
# (awk reads to the end: an early exit would kill ldconfig with SIGPIPE, which pipefail reports.)
g=$(ldconfig -p | awk '/libgcc_s.so.1 / && !g {g=$NF} END {print g}'); mkdir -p "$R$(dirname "$g")"; cp -L "$g" "$R$g"
cp /etc/mke2fs.conf "$R/etc/" 2>/dev/null || true
# multipath reads a path's WWID from the udev database: the guest runs systemd-udevd.
mkdir -p "$R/lib/systemd" "$R/lib/udev" "$R/etc/udev"
cp /lib/systemd/systemd-udevd "$R/lib/systemd/"; copy_libs /lib/systemd/systemd-udevd
cp -a /lib/udev/. "$R/lib/udev/"; rm -f "$R/lib/udev/hwdb.bin"
for h in /lib/udev/*_id; do copy_libs "$h"; done
mkdir -p "$R/lib/multipath"; cp -a /lib/multipath/. "$R/lib/multipath/"
cd "/lib/modules/$K"
for m in iscsi_tcp sd_mod dm-multipath dm-round-robin dm-service-time scsi_dh_alua virtio_net virtio_pci crc32c_generic ext4; do
  for f in $(modprobe -S "$K" --show-depends "$m" | awk '$1=="insmod"{print $2}'); do
    rel=${f#/lib/modules/$K/}; mkdir -p "$R/lib/modules/$K/$(dirname "$rel")"; cp "$f" "$R/lib/modules/$K/$rel"
  done
done
cp modules.builtin modules.builtin.modinfo modules.order "$R/lib/modules/$K/"
depmod -b "$R" "$K"
# iscsid insists on a passwd entry for the peer it talks to.
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"; echo "root:x:0:" > "$R/etc/group"
echo "InitiatorName=iqn.2026-11.org.rbdgw:vm-initiator" > "$R/etc/iscsi/initiatorname.iscsi"
: > "$R/etc/iscsi/iscsid.conf"
{ cat <<'INIT'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci virtio_net iscsi_tcp sd_mod dm_multipath dm_round_robin scsi_dh_alua crc32c_generic ext4; do modprobe $m; done
ip link set lo up; ip link set eth0 up
/lib/systemd/systemd-udevd --daemon; udevadm trigger --action=add; udevadm settle -t 10
INIT
  cat "$GUEST"; echo; echo 'poweroff -f'; } > "$R/init"
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$OUT/initrd.gz"
echo "/boot/vmlinuz-$K"
