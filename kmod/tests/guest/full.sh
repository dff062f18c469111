# COW full: the snapshot fails with ENOSPC, every snapshot read fails EIO (never live
# data), the live volume keeps working, destroy cleans up. Needs $VOL (a filesystem).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
prefill 4 4
check "setup with a 1 MiB COW file" $CTL setup --minor 0 --cow /mnt/cow --cow-size 1m $VOL
sync; fsfreeze --freeze /mnt
check "start" $CTL start 0
fsfreeze --unfreeze /mnt
check "snapshot readable before overflow" dd if=/dev/bwsnap0 of=/dev/null bs=1M count=4 iflag=direct
dd if=/dev/urandom of=/tmp/new bs=1M count=8 2>/dev/null
# 8 MiB of overwrites in place need 2048 copies; the COW file holds 256.
check "live writes succeed while the COW file overflows" dd if=/tmp/new of=/mnt/data/f0 bs=1M count=4 conv=notrunc,fsync
check "more live writes succeed after" dd if=/tmp/new of=/mnt/data/f1 bs=1M skip=4 count=4 conv=notrunc,fsync
$CTL info 0
check "error is -ENOSPC" test "$(info_field 0 error)" -eq -28
check "state stays snapshot" test "$(state_of 0)" = Snapshot
# Slots are reserved a run at a time: the run that did not fit is not counted.
check "the COW file is (nearly) used up" test "$(info_field 0 cow_used)" -gt $(( $(info_field 0 cow_size) / 2 ))
check "never more used than there is" test "$(info_field 0 cow_used)" -le "$(info_field 0 cow_size)"
if dd if=/dev/bwsnap0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; then fail "snapshot read succeeded after overflow"; else ok "snapshot read fails after overflow"; fi
LAST=$(( $(blockdev --getsize64 $VOL) / 4096 - 1 ))
if dd if=/dev/bwsnap0 of=/dev/null bs=4k skip=$LAST count=1 iflag=direct 2>/dev/null; then fail "read of an untouched block succeeded"; else ok "read of an untouched block fails too"; fi
$CTL trace 0 > /tmp/trace
check "trace records the failed reads" grep -q "^$LAST error$" /tmp/trace
echo 3 > /proc/sys/vm/drop_caches
check "live data intact (f0)" sh -c "dd if=/tmp/new bs=1M count=4 2>/dev/null | cmp - /mnt/data/f0"
check "live data intact (f1)" sh -c "dd if=/tmp/new bs=1M skip=4 count=4 2>/dev/null | cmp - /mnt/data/f1"
check "to-incremental from a failed snapshot" $CTL to-incremental 0
check "remove the COW file" rm /mnt/cow
check "destroy" $CTL destroy 0
check "rmmod" rmmod bwsnap
umount /mnt
finish
