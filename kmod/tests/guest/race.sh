# Writers hammer the volume while the whole snapshot is read, twice: each read must
# equal the copy of the volume taken while it was frozen at START, except the COW
# file's own blocks. Needs $VOL (a filesystem), $S1 and $S2 (scratch, same size).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
NF=24
prefill $NF 4
ROUNDS=${ROUNDS:-100000}

writer() { # writer ID: overwrite, append, delete and recreate, sync
	n=0
	while [ $n -lt $ROUNDS ] && [ ! -e /tmp/stop ]; do
		f=/mnt/data/f$(( (n * 7 + $1) % NF ))
		case $((n % 4)) in
		0) dd if=/dev/urandom of=$f bs=4k count=16 seek=$(( (n * 13 + $1 * 101) % 1000 )) conv=notrunc 2>/dev/null ;;
		1) dd if=/dev/urandom of=$f bs=4k count=3 seek=$(( (n * 29 + $1) % 1020 )) conv=notrunc oflag=direct 2>/dev/null ;;
		2) rm -f /mnt/t$1; dd if=/dev/urandom of=/mnt/t$1 bs=64k count=$(( 1 + n % 8 )) 2>/dev/null ;;
		3) dd if=/dev/urandom of=$f bs=512 count=3 seek=$(( (n * 57) % 8000 )) conv=notrunc 2>/dev/null; sync ;;
		esac
		n=$((n + 1))
	done
}

check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 96m $VOL
writer 1 & w1=$!
writer 2 & w2=$!
writer 3 & w3=$!
sleep 2
sync
fsfreeze --freeze /mnt
dd if=$VOL of=$S1 bs=1M iflag=direct 2>/dev/null
check "start while frozen" $CTL start 0
fsfreeze --unfreeze /mnt
$CTL extents 0 > /tmp/ext

MB=$(( $(blockdev --getsize64 $VOL) >> 20 ))
HALF=$((MB / 2))
: > /tmp/trace
for pass in 1 2; do
	# In two halves, draining the trace after each (the ring holds 65536 events).
	dd if=/dev/bwsnap0 of=$S2 bs=1M count=$HALF iflag=direct 2>/dev/null || fail "snapshot read pass $pass (1)"
	$CTL trace 0 >> /tmp/trace
	dd if=/dev/bwsnap0 of=$S2 bs=1M skip=$HALF seek=$HALF iflag=direct conv=notrunc 2>/dev/null || fail "snapshot read pass $pass (2)"
	$CTL trace 0 >> /tmp/trace
	bwtool cmp $S1 $S2 /tmp/ext > /tmp/cmp.$pass
	d=$(tail -1 /tmp/cmp.$pass)
	if [ "$d" = "differ 0" ]; then ok "pass $pass: snapshot equals the frozen copy"; else fail "pass $pass: snapshot $d blocks from the frozen copy: $(head -20 /tmp/cmp.$pass | tr '\n' ' ')"; fi
done
touch /tmp/stop
wait $w1 $w2 $w3
sync
bwtool cmp $S1 $VOL /tmp/ext > /tmp/cmp.live
echo "live volume: $(tail -1 /tmp/cmp.live) blocks changed since the snapshot"
check "the writers changed the live volume (>100 blocks)" test "$(tail -1 /tmp/cmp.live | cut -d" " -f2)" -gt 100
$CTL info 0
check "COW copies were made" test "$(info_field 0 cow_copies)" -gt 0
check "reads were served from COW" test "$(info_field 0 cow_reads)" -gt 0
check "snapshot not invalidated" test "$(info_field 0 error)" -eq 0
NB=$(( ($(blockdev --getsize64 $VOL) + 4095) / 4096 ))
check "trace: one event per block per pass" test "$(grep -c -E '^[0-9]+ (cow|live)$' /tmp/trace)" -eq $((2 * NB))
check "trace: cow events match the counter" test "$(grep -c ' cow$' /tmp/trace)" -eq "$(info_field 0 cow_reads)"
check "trace: nothing dropped" test "$(grep -c '^dropped 0$' /tmp/trace)" -eq 4
check "destroy" $CTL destroy 0
check "rmmod" rmmod bwsnap
umount /mnt
finish
