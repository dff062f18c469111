# The concurrency test, in steps that the harness (harness/tests/kmod.rs) drives, so that
# it can take the point-in-time truth with QMP while the guest holds the filesystem
# frozen: writers hammer the volume while the whole snapshot is hashed, twice; the
# harness compares each pass with the truth (COW extents excluded). A third pass with
# fault_cow_read_live=1 shows the comparison catches a module serving live data.
# Needs $VOL (a filesystem of 256 MiB at most: one pass of trace events fits the ring).
#
#   race.sh prepare     load, mount $VOL, fill it, set up minor 0
#   race.sh writers     three writers until /tmp/stop exists (the harness spawns it)
#   race.sh freeze      sync and freeze /mnt (the harness then takes the truth)
#   race.sh start       START while frozen, thaw; COW extents to /tmp/ext
#   race.sh read N [fault]
#                       hash the snapshot into /tmp/hash.N, drain the trace into
#                       /tmp/trace.N ("fault": with fault_cow_read_live=1)
#   race.sh live        hash the live volume into /tmp/hash.live (writers stopped)
#   race.sh finish      counters and traces agree; destroy, rmmod; kernel log clean
TEST=race
[ "$1" = prepare ] || BWTEST_CONTINUE=1
. ./lib.sh
NF=20
P=/sys/module/bwsnap/parameters

writer() { # writer ID: overwrite, overwrite direct, delete and recreate, partial + sync
	n=0
	while [ ! -e /tmp/stop ]; do
		f=/mnt/data/f$(( (n * 7 + $1) % NF ))
		case $((n % 4)) in
		0) dd if=/dev/urandom of=$f bs=4k count=16 seek=$(( (n * 13 + $1 * 101) % 1000 )) conv=notrunc 2>/dev/null ;;
		1) dd if=/dev/urandom of=$f bs=4k count=3 seek=$(( (n * 29 + $1) % 1020 )) conv=notrunc oflag=direct 2>/dev/null ;;
		2) rm -f /mnt/t$1; dd if=/dev/urandom of=/mnt/t$1 bs=64k count=$(( 1 + n % 8 )) 2>/dev/null ;;
		3) dd if=/dev/urandom of=$f bs=512 count=3 seek=$(( (n * 57) % 8000 )) conv=notrunc 2>/dev/null; sync ;;
		esac
		n=$((n + 1))
	done
	echo "writer $1: $n rounds"
}

NB=$(( ($(blockdev --getsize64 $VOL) + 4095) / 4096 ))

case "$1" in
prepare)
	rm -f /tmp/stop /tmp/trace.* /tmp/hash.*
	load
	mount $VOL /mnt || die "mount $VOL"
	prefill $NF 4
	check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 80m $VOL
	;;
writers)
	writer 1 & writer 2 & writer 3 &
	wait
	exit 0
	;;
freeze)
	sync
	fsfreeze --freeze /mnt || die "freeze"
	exit 0
	;;
start)
	$CTL start 0; rc=$?
	# Thaw on every path: a frozen filesystem would hang the writers for good.
	fsfreeze --unfreeze /mnt
	[ $rc -eq 0 ] || die "start while frozen"
	$CTL extents 0 > /tmp/ext
	cat /tmp/ext
	exit 0
	;;
read)
	[ "$3" = fault ] && echo 1 > $P/fault_cow_read_live
	bwtool hash /dev/bwsnap0 > /tmp/hash.$2; rc=$?
	echo 0 > $P/fault_cow_read_live
	[ $rc -eq 0 ] || fail "snapshot read pass $2: $(tail -1 /tmp/hash.$2)"
	$CTL trace 0 > /tmp/trace.$2
	check "pass $2: trace has one event per block" test "$(grep -c -E '^[0-9]+ (cow|live)( fault)?$' /tmp/trace.$2)" -eq $NB
	check "pass $2: trace dropped nothing" test "$(head -1 /tmp/trace.$2)" = "dropped 0"
	if [ "$3" = fault ]; then
		check "pass $2: the knob fired" test "$(grep -c ' live fault$' /tmp/trace.$2)" -gt 0
	else
		check "pass $2: no fault in the trace" test "$(grep -c ' fault$' /tmp/trace.$2)" -eq 0
	fi
	;;
live)
	sync
	echo 3 > /proc/sys/vm/drop_caches
	bwtool hash $VOL > /tmp/hash.live || fail "live read"
	;;
finish)
	$CTL info 0
	check "COW copies were made" test "$(info_field 0 cow_copies)" -gt 0
	check "reads were served from COW" test "$(info_field 0 cow_reads)" -gt 0
	check "snapshot not invalidated" test "$(info_field 0 error)" -eq 0
	check "trace: cow events match the counter" test "$(cat /tmp/trace.* | grep -c ' cow$')" -eq "$(info_field 0 cow_reads)"
	check "destroy" $CTL destroy 0
	check "rmmod" rmmod bwsnap
	check "umount" umount /mnt
	;;
*)
	die "unknown step '$1'"
	;;
esac
finish
