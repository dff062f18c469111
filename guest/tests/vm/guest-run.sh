#!/bin/sh
# The command run inside the guest: xfs on bw-d1; ext4-1k, ext4-2k, ext2-1k images
# copied from bw-d0 onto the raw disks bw-d2..bw-d4.
dev_of() { for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$1" ] && echo /dev/${b##*/}; done; }
echo "kernel $(uname -r)"
mkdir -p /mnt/o /mnt/x
mount -t xfs "$(dev_of bw-d1)" /mnt/x || exit 1
rc=0
sh /mnt/o/guest-check.sh "$(dev_of bw-d1)" /mnt/x xfs-4k || rc=1
n=2
for img in ext4-1k ext4-2k ext2-1k; do
    dev=$(dev_of bw-d$n); n=$((n + 1))
    dd if=/mnt/o/$img.img of="$dev" bs=1M 2>/dev/null && sync
    mkdir -p /mnt/$img
    mount -t ${img%-*} "$dev" /mnt/$img || { echo "mount $img failed"; rc=1; continue; }
    sh /mnt/o/guest-check.sh "$dev" /mnt/$img $img || rc=1
    umount /mnt/$img
done
exit $rc
