# Issue 14 (one global mutex): a device that is stuck must not hold up the ioctls of
# another, and a control call waiting on it can be killed. fault_delay_cow_ms holds a
# copy on minor 0 for 30 s; DESTROY of minor 0 waits for it; meanwhile minor 1 answers
# INFO and makes its transitions, and the waiting DESTROY dies at once when killed.
# Needs $VOL and $S1 (filesystems).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
mkdir -p /mnt2
mount $S1 /mnt2 || die "mount $S1"
rm -f /mnt/cow /mnt2/cow
prefill 1 1
check "setup minor 0" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
check "setup minor 1" $CTL setup --minor 1 --cow /mnt2/cow --cow-size 4m $S1
snap_start 0 || fail "start 0"
snap_start 1 /mnt2 || fail "start 1"
echo > $F
echo 30000 > $P/fault_delay_cow_ms
dd if=/dev/urandom of=/mnt/data/f0 bs=4k count=1 conv=notrunc oflag=direct 2>/dev/null & w=$!
wait_for 30 fired delay-cow || fail "the copy was not delayed"
$CTL destroy 0 & killed=$!
sleep 1
check "minor 1 answers INFO while minor 0's DESTROY waits" timeout 5 $CTL info 1
check "minor 1 goes incremental meanwhile" timeout 5 $CTL to-incremental 1
kill -9 $killed
if wait_for 3 gone $killed; then
	ok "the waiting DESTROY ended when killed"
else
	fail "the waiting DESTROY ignores SIGKILL"
fi
echo 0 > $P/fault_delay_cow_ms
wait_for 60 gone $w || fail "the held write never completed"
# The killed DESTROY may have left minor 0 half torn down; a new one finishes it.
$CTL destroy 0 2>/dev/null
check "minor 0 can be set up again" $CTL setup --minor 0 --cow /mnt/cow2 --cow-size 4m $VOL
check "destroy 0" $CTL destroy 0
check "destroy 1" $CTL destroy 1
rm -f /mnt/cow /mnt/cow2 /mnt2/cow
umount /mnt2
check "rmmod" rmmod bwsnap
umount /mnt
finish
