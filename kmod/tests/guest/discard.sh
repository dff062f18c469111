# Issue 14 (secure erase, discards while ARMED). Secure erase destroys data as a write
# does: while a snapshot is held it must be refused (EOPNOTSUPP), never reported done
# while nothing was erased. While ARMED there is no snapshot yet: discards and secure
# erase go to the device (and are tracked). QEMU 7.2's virtio-blk has no secure erase,
# so BLKSECDISCARD stops in the ioctl before any bio: the helper module bwtest.ko
# submits the bio from kernel code, as a filesystem or driver would on a device that
# has it. The device itself answers EOPNOTSUPP, so whatever reaches it says so.
# Needs $VOL (ext4) and $HELPER (a disk holding bwtest.ko).
. ./lib.sh
mkdir -p /helper
mount -o ro $HELPER /helper || die "mount the helper disk $HELPER"
load
mount $VOL /mnt || die "mount $VOL"
dev=$(basename $VOL)
discards() { awk '{ print $12 }' /sys/block/$dev/stat; }
# bwtest OP SECTOR SECTORS: submit one bio, print its status (0 or -errno).
bwtest() {
	insmod /helper/bwtest.ko dev=$VOL op=$1 sector=$2 sectors=$3 2>/dev/null
	dmesg | sed -n "s/.*bwtest: $1 $(echo $VOL | sed 's,/,\\/,g') $2+$3: status //p" | tail -1
}
LAST=$(( $(blockdev --getsz $VOL) / 8 * 8 - 8 ))
echo "helper: status of a secure erase with no module in the way: $(bwtest secure-erase $LAST 8)"

prefill 1 1
check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
snap_start 0 || fail "start 1"
check "to-incremental" $CTL to-incremental 0
rm /mnt/cow
dd if=/dev/urandom of=/mnt/gone bs=1M count=4 2>/dev/null
sync
bwtool blocks /mnt/gone > /tmp/gone
check "to-snapshot (armed)" $CTL to-snapshot 0 --cow /mnt/cow --cow-size 4m
expect_state 0 Armed

# ---- ARMED: discards and secure erase reach the device ----
rm /mnt/gone; sync
d0=$(discards)
fstrim -v /mnt
d1=$(discards)
check "discards reach the device while armed ($d0 -> $d1)" test "$d1" -gt "$d0"
s=$(bwtest secure-erase $LAST 8)
check "secure erase while armed reaches the device (status ${s:-none}, want -95)" test "$s" = -95
snap_start 0 || fail "start 2"
$CTL map 0 --blocks > /tmp/map
grep -v -x -F -f /tmp/map /tmp/gone > /tmp/missing
check "blocks discarded while armed are in the period map ($(wc -l < /tmp/gone) blocks, $(wc -l < /tmp/missing) missing)" test ! -s /tmp/missing

# ---- SNAPSHOT: discards dropped, secure erase refused ----
dd if=$VOL of=/tmp/last.before bs=512 skip=$LAST count=8 iflag=direct 2>/dev/null
dd if=/dev/urandom of=/mnt/gone2 bs=1M count=1 2>/dev/null; sync; rm /mnt/gone2; sync
d0=$(discards)
fstrim /mnt
d1=$(discards)
check "discards do not reach the device while a snapshot is held ($d0 -> $d1)" test "$d1" -eq "$d0"
s=$(bwtest secure-erase $LAST 8)
check "secure erase while a snapshot is held is refused (status ${s:-none}, want -95)" test "$s" = -95
check "the snapshot still holds the block" sh -c "dd if=/dev/bwsnap0 bs=512 skip=$LAST count=8 iflag=direct 2>/dev/null | cmp -s - /tmp/last.before"
check "destroy" $CTL destroy 0
rm -f /mnt/cow
check "rmmod" rmmod bwsnap
umount /mnt
umount /helper
finish
