# Write throughput on the origin with a snapshot active, three ways in one guest: no
# snapshot, bwsnap, and the kernel's dm-snapshot (transient "N" and persistent "P"
# exception stores, 4 KiB chunks like bwsnap's blocks), O_DIRECT overwrites of a 64 MiB
# file. Every snapshot is fresh, so first writes pay the copy: random 4 KiB writes run
# for $BENCH_SECS (a few repeat a block); sequential 1 MiB writes make one pass over the
# file with a snapshot (every write pays), $BENCH_SECS of passes without. $BENCH_ROUNDS
# rounds, each measuring every set-up once, so that a slow spell of the host (TCG)
# falls on all of them alike. Run by `blockwitness bench cow` (harness/src/bench_cow.rs).
# Needs $VOL (ext4, the origin; partition 1 of the disk) and $COWDEV (partition 2 of
# the same disk: dm-snapshot's exception store; bwsnap keeps its COW file on $VOL).
# Prints "BENCH MODE SETUP MIB/S COPIES P99_US" per figure and round (P99_US: the
# 99th percentile of the run's write latencies, microseconds).
. ./lib.sh
T=${BENCH_SECS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
[ -b "$COWDEV" ] || die "COWDEV=$COWDEV is not a block device"
FILE_BYTES=$((64 << 20))
SZ=$(blockdev --getsz $VOL)
majmin() { cat /sys/class/block/$(basename $1)/dev; }

bench() { # bench MODE SETUP COPIES-COMMAND: one timed run, one BENCH line
	secs=$T limit=
	# One whole pass however long it takes (at most 10 minutes).
	case "$1 $2" in seq1m*snap*) secs=600 limit=$FILE_BYTES ;; esac
	r=$(bwtool wbench /mnt/bench $1 $secs $limit) || die "wbench $1 $2"
	echo "BENCH $1 $2 $(echo "$r" | cut -d' ' -f2) $($3) $(echo "$r" | cut -d' ' -f10)"
}
zero() { echo 0; }
bwsnap_copies() {
	[ "$(info_field 0 error)" -eq 0 ] || { echo "FAIL: bwsnap snapshot failed" >&2; echo -1; return; }
	info_field 0 cow_copies
}
dm_copies() { # chunks in use, less the metadata chunks
	s=$(bwtool dm status bws) || { echo -1; return; }
	case "$s" in
	*Invalid* | *Overflow*) echo "FAIL: dm snapshot $s" >&2; echo -1 ;;
	*) echo "$s" | awk '{ split($2, a, "/"); print (a[1] - $3) / 8 }' ;;
	esac
}

# No snapshot and bwsnap: the filesystem mounted from $VOL itself.
round_plain() {
	mount $VOL /mnt || die "mount $VOL"
	for mode in rand4k seq1m; do
		bench $mode none zero
		$CTL setup --minor 0 --cow /mnt/cow --cow-size 96m $VOL || die "setup"
		sync; fsfreeze --freeze /mnt; $CTL start 0; rc=$?; fsfreeze --unfreeze /mnt
		[ $rc -eq 0 ] || die "start"
		bench $mode bwsnap bwsnap_copies
		$CTL destroy 0 || die "destroy"
		rm -f /mnt/cow
	done
	umount /mnt
}

# dm-snapshot: the filesystem mounted through a snapshot-origin device; a snapshot is
# set up the way LVM does it: load it inactive, suspend the origin, resume the
# snapshot, resume the origin.
round_dm() {
	origin=$(bwtool dm create bwo "0 $SZ snapshot-origin $(majmin $VOL)") || die "dm origin"
	mount /dev/$origin /mnt || die "mount /dev/$origin"
	for mode in rand4k seq1m; do
		bench $mode dm-none zero
		for store in N P; do
			# A persistent store reads its header: start from a blank one.
			dd if=/dev/zero of=$COWDEV bs=4k count=1 oflag=direct 2>/dev/null
			bwtool dm create bws "0 $SZ snapshot $(majmin $VOL) $(majmin $COWDEV) $store 8" suspended >/dev/null || die "dm snapshot"
			sync
			bwtool dm suspend bwo && bwtool dm resume bws && bwtool dm resume bwo || die "dm activate"
			bench $mode dm-snapshot-$store dm_copies
			bwtool dm remove bws || die "dm remove snapshot"
		done
	done
	umount /mnt
	bwtool dm remove bwo || die "dm remove origin"
}

load
mount $VOL /mnt || die "mount $VOL"
rm -f /mnt/cow
dd if=/dev/urandom of=/mnt/bench bs=1M count=$((FILE_BYTES >> 20)) 2>/dev/null
umount /mnt
round=1
while [ $round -le $ROUNDS ]; do
	round_plain
	round_dm
	round=$((round + 1))
done
rmmod bwsnap
finish
