# Write throughput on the origin with a snapshot active, relative to none: O_DIRECT
# random 4 KiB and sequential 1 MiB overwrites of a 64 MiB file, 10 s each. Every
# measurement with a snapshot starts from a fresh one, so first writes pay the copy.
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
dd if=/dev/urandom of=/mnt/bench bs=1M count=64 2>/dev/null; sync
T=${BENCH_SECS:-10}
fresh() {
	$CTL destroy 0 2>/dev/null; rm -f /mnt/cow
	$CTL setup --minor 0 --cow /mnt/cow --cow-size 96m $VOL || die setup
	sync; fsfreeze --freeze /mnt; $CTL start 0; fsfreeze --unfreeze /mnt
}
for mode in rand4k seq1m; do
	base=$(bwtool wbench /mnt/bench $mode $T | cut -d' ' -f2)
	fresh
	snap=$(bwtool wbench /mnt/bench $mode $T | cut -d' ' -f2)
	copies=$(info_field 0 cow_copies)
	again=$(bwtool wbench /mnt/bench $mode $T | cut -d' ' -f2)
	echo "BENCH $mode none=$base MiB/s snapshot=$snap MiB/s (ratio $(echo "scale=3; $snap / $base" | bc), $copies copies) rewrite=$again MiB/s (ratio $(echo "scale=3; $again / $base" | bc))"
done
$CTL destroy 0; rm -f /mnt/cow
rmmod bwsnap
finish
