# A write to a block that a snapshot read is reading from the live device is held
# until that read is done (the read is tracked: dm-snapshot's track_chunk), even when
# the block's copy is made meanwhile. fault_delay_read_ms holds the read after it was
# planned. Needs $VOL (a filesystem).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
prefill 1 1
B=$(bwtool phys /mnt/data/f0 0 4096)
dd if=/dev/urandom of=/tmp/new bs=4k count=1 2>/dev/null
rm -f /mnt/cow
check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
snap_start 0 || fail "start"
dd if=$VOL of=/tmp/old bs=4k skip=$B count=1 iflag=direct 2>/dev/null
echo > $F
echo 60000 > $P/fault_delay_read_ms
dd if=/dev/bwsnap0 of=/tmp/got bs=4k skip=$B count=1 iflag=direct 2>/dev/null & r=$!
wait_for 30 fired delay-read || fail "the read was not held"
dd if=/tmp/new of=/mnt/data/f0 bs=4k count=1 conv=notrunc oflag=direct 2>/dev/null & w=$!
sleep 2
check "the write waits while the read of its block is in flight" kill -0 $w
echo 0 > $P/fault_delay_read_ms
wait $r || fail "the held read failed"
check "the read returned the snapshot's data" cmp -s /tmp/got /tmp/old
wait_for 30 gone $w || fail "the write never completed"
check "the write landed" sh -c "dd if=$VOL bs=4k skip=$B count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/new"
check "the snapshot still holds the old data" sh -c "dd if=/dev/bwsnap0 bs=4k skip=$B count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/old"
check "destroy" $CTL destroy 0
rm -f /mnt/cow
check "rmmod" rmmod bwsnap
umount /mnt
finish
