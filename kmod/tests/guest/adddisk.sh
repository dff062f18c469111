# Issue 14 (add_disk before the state switch): the snapshot device appears only once
# it serves the snapshot; whoever opens it as soon as it exists (udev, blkid) reads
# the snapshot, never an I/O error. fault_delay_start_ms holds START right after it
# added the device. Needs $VOL (a filesystem).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
rm -f /mnt/cow
check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
echo > $F
echo 60000 > $P/fault_delay_start_ms
sync; fsfreeze --freeze /mnt
$CTL start 0 & s=$!
wait_for 30 fired delay-start || fail "START was not held"
check "the snapshot device exists" test -b /dev/bwsnap0
if dd if=/dev/bwsnap0 of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null; then
	ok "the new snapshot device reads"
else
	fail "the new snapshot device fails reads: it was added before it served the snapshot"
fi
echo 0 > $P/fault_delay_start_ms
wait $s || fail "start"
fsfreeze --unfreeze /mnt
check "destroy" $CTL destroy 0
rm -f /mnt/cow
check "rmmod" rmmod bwsnap
umount /mnt
finish
