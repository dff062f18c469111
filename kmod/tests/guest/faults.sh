# Each fault knob fires, deterministically, and is logged in debugfs with its block.
# Needs $VOL (a filesystem), $S1 and $S2 (scratch, same size).
. ./lib.sh
P=/sys/module/bwsnap/parameters
F=/sys/kernel/debug/bwsnap/faults
load
mount $VOL /mnt || die "mount $VOL"
prefill 2 4
dd if=/dev/urandom of=/mnt/victim bs=1M count=4 2>/dev/null
sync
# vblocks FIRST LAST: device blocks holding victim file blocks FIRST..LAST (4 KiB)
vblocks() { bwtool phys /mnt/victim $(($1 * 4096)) $(( ($2 - $1 + 1) * 4096 )); }
overwrite() { # overwrite victim blocks FIRST..LAST, one O_DIRECT write each
	k=$1
	while [ $k -le $2 ]; do
		dd if=/dev/urandom of=/mnt/victim bs=4k count=1 seek=$k conv=notrunc oflag=direct 2>/dev/null
		k=$((k + 1))
	done
}
snap() { # freeze, copy the volume to $S1, START, thaw
	sync; fsfreeze --freeze /mnt
	dd if=$VOL of=$S1 bs=1M iflag=direct 2>/dev/null
	$CTL start 0 || fail "start"
	fsfreeze --unfreeze /mnt
	$CTL extents 0 > /tmp/ext
}
fault_blocks() { sed -n "s/^$1 minor=0 block=//p" $F | sort -n; }
diff_blocks() { # snapshot vs the frozen copy, differing blocks
	dd if=/dev/bwsnap0 of=$S2 bs=1M iflag=direct 2>/dev/null
	bwtool cmp $S1 $S2 /tmp/ext | sed '$d' | sort -n
}

check "all knobs off by default" test "$(cat $P/fault_cow_read_live $P/fault_drop_tracking $P/fault_corrupt_cow $P/fault_delay_cow_ms | tr -d '\n')" = 0000
check "debugfs log exists and is empty" test -f $F -a ! -s $F

# ---- cow-read-live: 1 in 3 reads of copied blocks serve live data ----
check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 16m $VOL
snap
overwrite 0 29
echo 3 > $P/fault_cow_read_live
diff_blocks > /tmp/diff
echo 0 > $P/fault_cow_read_live
fault_blocks cow-read-live > /tmp/fired
$CTL trace 0 > /tmp/trace
cow=$(info_field 0 cow_reads)
fired=$(wc -l < /tmp/fired)
echo "cow-read-live: eligible $((cow + fired)), fired $fired, differing $(wc -l < /tmp/diff)"
check "fires on every 3rd eligible read" test "$fired" -eq $(( (cow + fired) / 3 ))
check "at least 10 firings (30 overwritten blocks)" test "$fired" -ge 10
grep -v -x -F -f /tmp/fired /tmp/diff > /tmp/x
check "every wrong block is a logged firing" test ! -s /tmp/x
vblocks 0 29 | grep -x -F -f /tmp/fired > /tmp/vf
grep -v -x -F -f /tmp/diff /tmp/vf > /tmp/x
check "every firing on an overwritten block leaked live data" test ! -s /tmp/x
check "trace marks the firings" test "$(grep -c ' live fault$' /tmp/trace)" -eq "$fired"
check "printk saw it" sh -c "dmesg | grep -q 'fault cow-read-live minor=0 block='"
echo > $F
check "writing the debugfs file clears it" test ! -s $F

# ---- corrupt-cow: 1 in 2 copies get a bit flipped ----
check "to-incremental" $CTL to-incremental 0; rm /mnt/cow
check "to-snapshot" $CTL to-snapshot 0 --cow /mnt/cow --cow-size 16m
snap
echo 2 > $P/fault_corrupt_cow
overwrite 40 59
echo 0 > $P/fault_corrupt_cow
diff_blocks > /tmp/diff
fault_blocks corrupt-cow > /tmp/fired
copies=$(info_field 0 cow_copies)
echo "corrupt-cow: copies $copies, fired $(wc -l < /tmp/fired), differing $(wc -l < /tmp/diff)"
check "at least 10 firings (20 copies of victim blocks)" test "$(wc -l < /tmp/fired)" -ge 10
grep -v -x -F -f /tmp/fired /tmp/diff > /tmp/x
check "every wrong block is a logged firing" test ! -s /tmp/x
vblocks 40 59 | grep -x -F -f /tmp/fired > /tmp/vf
grep -v -x -F -f /tmp/diff /tmp/vf > /tmp/x
check "every firing on a victim block corrupted the snapshot" test ! -s /tmp/x
b=$(head -1 /tmp/vf)
n=$(cmp -l $S1 $S2 2>/dev/null | awk -v lo=$((b * 4096 + 1)) -v hi=$((b * 4096 + 4096)) '$1 >= lo && $1 <= hi' | wc -l)
check "a corrupted block differs in exactly one byte ($n)" test "$n" -eq 1
echo > $F

# ---- drop-tracking: at START 1 in 2 set bits leave the period map ----
check "to-incremental" $CTL to-incremental 0; rm /mnt/cow
overwrite 60 79
check "to-snapshot" $CTL to-snapshot 0 --cow /mnt/cow --cow-size 16m
echo 2 > $P/fault_drop_tracking
snap
echo 0 > $P/fault_drop_tracking
$CTL map 0 --blocks > /tmp/map
fault_blocks drop-tracking > /tmp/fired
kept=$(wc -l < /tmp/map); dropped=$(wc -l < /tmp/fired)
echo "drop-tracking: kept $kept dropped $dropped"
check "half the period's blocks dropped" test "$dropped" -eq $(( (kept + dropped) / 2 ))
check "dropped blocks are not in the map" sh -c "! grep -x -F -f /tmp/fired /tmp/map"
check "info agrees" test "$(info_field 0 changed_blocks)" -eq "$kept"
vblocks 60 79 > /tmp/vw
check "some overwritten victim blocks were dropped" sh -c "grep -q -x -F -f /tmp/fired /tmp/vw"
echo > $F

# ---- delay-cow: each copy waits N ms ----
echo 100 > $P/fault_delay_cow_ms
t0=$(cut -d' ' -f1 /proc/uptime)
overwrite 100 109
t1=$(cut -d' ' -f1 /proc/uptime)
echo 0 > $P/fault_delay_cow_ms
n=$(grep -c '^delay-cow minor=0 block=' $F)
echo "delay-cow: $n delays, $(echo "$t1 - $t0" | bc) s"
check "at least 10 delayed copies" test "$n" -ge 10
check "10 writes took at least 1 s" test "$(echo "$t1 - $t0 >= 1" | bc)" -eq 1
check "the snapshot is still right" sh -c "test \"\$(bwtool cmp $S1 /dev/bwsnap0 /tmp/ext | tail -1)\" = 'differ 0'"

check "destroy" $CTL destroy 0
check "rmmod" rmmod bwsnap
umount /mnt
finish
