# Incremental map exactness: every block that changed between two snapshot instants
# is in the period map, and inside a known file the map holds exactly the blocks
# written. Discards: passed and tracked while incremental, dropped while a snapshot
# is held. Needs $VOL (a filesystem), $S1 and $S2 (scratch, same size).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
prefill 4 4
dd if=/dev/urandom of=/mnt/victim bs=1M count=8 2>/dev/null
sync
bwtool blocks /mnt/victim > /tmp/vblocks
check "victim file has 2048 blocks" test "$(wc -l < /tmp/vblocks)" -eq 2048
vblock() { sed -n "$(( $1 + 1 ))p" /tmp/vblocks; }

check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 16m $VOL
sync; fsfreeze --freeze /mnt
dd if=$VOL of=$S1 bs=1M iflag=direct 2>/dev/null
check "start 1" $CTL start 0
fsfreeze --unfreeze /mnt
dd if=/dev/urandom of=/mnt/data/f3 bs=4k count=10 conv=notrunc oflag=direct 2>/dev/null
check "to-incremental" $CTL to-incremental 0
rm /mnt/cow

# The period's writes: whole blocks, a partial block, a two-block write straddling.
: > /tmp/expect
for k in 0 1 5 100 101 1023 2047; do
	dd if=/dev/urandom of=/mnt/victim bs=4k count=1 seek=$k conv=notrunc oflag=direct 2>/dev/null
	vblock $k >> /tmp/expect
done
dd if=/dev/urandom of=/mnt/victim bs=512 count=1 seek=$((300 * 8 + 3)) conv=notrunc oflag=direct 2>/dev/null
vblock 300 >> /tmp/expect
dd if=/dev/urandom of=/mnt/victim bs=512 count=2 seek=$((500 * 8 + 7)) conv=notrunc oflag=direct 2>/dev/null
vblock 500 >> /tmp/expect; vblock 501 >> /tmp/expect
rm /mnt/data/f2
dd if=/dev/urandom of=/mnt/new bs=1M count=2 2>/dev/null
sync
check "to-snapshot" $CTL to-snapshot 0 --cow /mnt/cow2 --cow-size 16m
sync; fsfreeze --freeze /mnt
dd if=$VOL of=$S2 bs=1M iflag=direct 2>/dev/null
check "start 2" $CTL start 0
fsfreeze --unfreeze /mnt
$CTL map 0 --blocks > /tmp/map
$CTL info 0
check "changed_blocks equals the map's size" test "$(info_field 0 changed_blocks)" -eq "$(wc -l < /tmp/map)"
bwtool cmp $S1 $S2 > /tmp/diff
sed -i '$d' /tmp/diff
echo "changed between the instants: $(wc -l < /tmp/diff) blocks; map: $(wc -l < /tmp/map) blocks"
grep -v -x -F -f /tmp/map /tmp/diff > /tmp/missing
if [ -s /tmp/missing ]; then fail "changed blocks missing from the map: $(head -20 /tmp/missing | tr '\n' ' ')"; else ok "every changed block is in the map"; fi
grep -x -F -f /tmp/vblocks /tmp/map | sort -n > /tmp/vmap
sort -n /tmp/expect > /tmp/expect.s
if cmp -s /tmp/vmap /tmp/expect.s; then ok "inside the victim file the map is exact ($(wc -l < /tmp/vmap) blocks)"; else fail "victim blocks in map: $(tr '\n' ' ' < /tmp/vmap) want: $(tr '\n' ' ' < /tmp/expect.s)"; fi

# Discard while a snapshot is held: dropped, the snapshot is intact.
before=$(info_field 0 tracking_blocks)
rm /mnt/new; sync
fstrim -v /mnt || echo "fstrim not supported here"
check "discard in SNAPSHOT is not tracked" test "$(info_field 0 tracking_blocks)" -le $((before + 64))
dd if=/dev/bwsnap0 of=$S1 bs=1M iflag=direct 2>/dev/null
$CTL extents 0 > /tmp/ext
bwtool cmp $S2 $S1 /tmp/ext > /tmp/cmp
check "snapshot intact after fstrim" test "$(tail -1 /tmp/cmp)" = "differ 0"

# Discard while incremental: passed and tracked.
check "to-incremental" $CTL to-incremental 0
rm /mnt/cow2; sync
dd if=/dev/urandom of=/mnt/tmpfile bs=1M count=4 2>/dev/null; sync
bwtool blocks /mnt/tmpfile > /tmp/tblocks
rm /mnt/tmpfile; sync
before=$(info_field 0 tracking_blocks)
if fstrim -v /mnt; then
	check "discard in INCREMENTAL is tracked" test "$(info_field 0 tracking_blocks)" -gt $before
fi
check "destroy" $CTL destroy 0
check "rmmod" rmmod bwsnap
umount /mnt
finish
