# The state machine, bad inputs and refusals. Needs $VOL (a filesystem), $S1 (another filesystem).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
FS=$(awk -v d=$VOL '$1==d{print $3}' /proc/mounts)
echo "filesystem $FS"
SIZE=$(blockdev --getsize64 $VOL)

# ---- bad inputs ----
expect_errno 2 "setup of a device that does not exist" $CTL setup --minor 0 --cow /mnt/cow /dev/nope
expect_errno 22 "setup of minor 32" $CTL setup --minor 32 --cow /mnt/cow $VOL
expect_errno 18 "COW file on another volume" $CTL setup --minor 0 --cow /tmp/cow $VOL
check "the refused COW file was removed" test ! -e /tmp/cow
mkdir -p /mnt/adir
expect_errno 21 "COW path is a directory" $CTL setup --minor 0 --cow /mnt/adir $VOL
touch /mnt/exists
expect_errno 17 "COW path exists" $CTL setup --minor 0 --cow /mnt/exists $VOL
expect_errno 2 "COW path in a missing directory" $CTL setup --minor 0 --cow /mnt/no/cow $VOL
expect_errno 22 "COW size 0" $CTL setup --minor 0 --cow /mnt/cow --cow-size 0 $VOL
expect_errno 22 "COW size not a multiple of 4096" $CTL setup --minor 0 --cow /mnt/cow --cow-size 1000 $VOL
expect_errno 28 "COW size larger than the volume" $CTL setup --minor 0 --cow /mnt/cow --cow-size $((SIZE * 2)) $VOL
check "the refused COW file was removed" test ! -e /mnt/cow
expect_errno 18 "a device that is not the mounted one" $CTL setup --minor 0 --cow /mnt/cow $S1
check "no COW file left behind" test ! -e /mnt/cow
expect_errno 2 "start of an unused minor" $CTL start 0
expect_errno 2 "destroy of an unused minor" $CTL destroy 0
expect_errno 2 "map of an unused minor" $CTL map 0
expect_errno 2 "trace of an unused minor" $CTL trace 0
expect_state 0 None
bwtool badptr || fail "bad pointers"

# ---- SETUP -> ARMED ----
check "setup minor 3 (default COW size)" $CTL setup --minor 3 --cow /mnt/cow $VOL
expect_state 3 Armed
cs=$(info_field 3 cow_size)
want=$((SIZE / 100 * 10 / 4096 * 4096))
# the default is 10% rounded down to whole blocks; slots may lose a little
if [ "$cs" -le "$want" ] && [ "$cs" -gt $((want - 65536)) ]; then ok "default COW size $cs ~ 10% ($want)"; else fail "COW size $cs, want ~$want"; fi
check "COW file has the requested size" test "$(stat -c %s /mnt/cow)" -eq "$want"
check "COW extents listed" test "$($CTL extents 3 | wc -l)" -ge 1
check "extents count matches info" test "$($CTL extents 3 | wc -l)" -eq "$(info_field 3 cow_extents)"
expect_errno 16 "setup of a used minor" $CTL setup --minor 3 --cow /mnt/cow2 $VOL
expect_errno 16 "setup of a tracked device on another minor" $CTL setup --minor 4 --cow /mnt/cow2 $VOL
check "the refused COW file was removed" test ! -e /mnt/cow2
expect_errno 22 "to-incremental while armed" $CTL to-incremental 3
expect_errno 22 "to-snapshot while armed" $CTL to-snapshot 3 --cow /mnt/cow2
check "no snapshot device while armed" test ! -e /dev/bwsnap3
if rm -f /mnt/cow 2>/dev/null && test ! -e /mnt/cow; then fail "COW file could be removed"; else ok "COW file is immutable (rm)"; fi
if echo x >> /mnt/cow 2>/dev/null; then fail "COW file could be written"; else ok "COW file is immutable (write)"; fi
if rmmod bwsnap 2>/dev/null; then die "rmmod with a minor in use succeeded"; else ok "rmmod refused while in use"; fi

# ---- START -> SNAPSHOT ----
sync; fsfreeze --freeze /mnt
check "start" $CTL start 3
fsfreeze --unfreeze /mnt
expect_state 3 Snapshot
check "seq is 1" test "$(info_field 3 seq)" -eq 1
check "snapshot device exists" test -b /dev/bwsnap3
check "snapshot device has the volume's size" test "$(blockdev --getsize64 /dev/bwsnap3)" -eq "$SIZE"
check "snapshot device is read-only" test "$(blockdev --getro /dev/bwsnap3)" -eq 1
if dd if=/dev/zero of=/dev/bwsnap3 bs=4096 count=1 oflag=direct 2>/dev/null; then fail "write to the snapshot device succeeded"; else ok "write to the snapshot device fails"; fi
expect_errno 22 "start twice" $CTL start 3
expect_errno 22 "to-snapshot while in snapshot" $CTL to-snapshot 3 --cow /mnt/cow2
check "the snapshot reads to the end" sh -c "bwtool readall /dev/bwsnap3 | grep -q 'read $SIZE errors 0'"

# ---- TO_INCREMENTAL ----
check "to-incremental" $CTL to-incremental 3
expect_state 3 Incremental
check "snapshot device gone" test ! -e /dev/bwsnap3
check "no extents in incremental" test "$($CTL extents 3 | wc -l)" -eq 0
check "COW file removable after to-incremental" rm /mnt/cow
expect_errno 22 "start while incremental" $CTL start 3
expect_errno 22 "to-incremental twice" $CTL to-incremental 3

# ---- TO_SNAPSHOT -> ARMED -> START again ----
check "to-snapshot with an explicit size" $CTL to-snapshot 3 --cow /mnt/cow2 --cow-size 8m
expect_state 3 Armed
check "explicit COW size" test "$(info_field 3 cow_size)" -eq $((8 << 20))
sync; fsfreeze --freeze /mnt
check "second start" $CTL start 3
fsfreeze --unfreeze /mnt
check "seq is 2" test "$(info_field 3 seq)" -eq 2
check "map readable" $CTL map 3
check "destroy in snapshot state" $CTL destroy 3
expect_state 3 None
check "snapshot device gone after destroy" test ! -e /dev/bwsnap3
check "COW file stays after destroy, removable" rm /mnt/cow2

# ---- destroy from ARMED and INCREMENTAL ----
check "setup again" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
check "destroy while armed" $CTL destroy 0
rm -f /mnt/cow
check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
check "start" $CTL start 0
check "to-incremental" $CTL to-incremental 0
check "destroy while incremental" $CTL destroy 0
rm -f /mnt/cow

# ---- two devices at once ----
if [ -b $S1 ] && mkdir -p /mnt2 && mount $S1 /mnt2 2>/dev/null; then
	check "setup $VOL" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
	check "setup $S1" $CTL setup --minor 1 --cow /mnt2/cow --cow-size 4m $S1
	check "start both" sh -c "$CTL start 0 && $CTL start 1"
	check "two snapshot devices" test -b /dev/bwsnap0 -a -b /dev/bwsnap1
	check "info lists both" test "$($CTL info | wc -l)" -eq 2
	check "destroy both" sh -c "$CTL destroy 0 && $CTL destroy 1"
	rm -f /mnt/cow /mnt2/cow
	umount /mnt2
else
	fail "cannot mount $S1 for the two-device test"
fi

check "rmmod after destroy" rmmod bwsnap
umount /mnt
finish
