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
# Device blocks wholly inside the victim file: there the map must be exact.
bwtool blocks /mnt/victim > /tmp/vblocks
check "victim file mapped" test "$(wc -l < /tmp/vblocks)" -gt 1500
w() { # w OFF LEN BS: overwrite LEN bytes at byte OFF of the victim, O_DIRECT writes of BS
	dd if=/dev/urandom of=/mnt/victim bs=$3 count=$(($2 / $3)) seek=$(($1 / $3)) conv=notrunc oflag=direct 2>/dev/null
	bwtool phys /mnt/victim $1 $2 >> /tmp/expect
}

check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 16m $VOL
sync; fsfreeze --freeze /mnt
dd if=$VOL of=$S1 bs=1M iflag=direct 2>/dev/null
check "start 1" $CTL start 0
fsfreeze --unfreeze /mnt
dd if=/dev/urandom of=/mnt/data/f3 bs=4k count=10 conv=notrunc oflag=direct 2>/dev/null
check "to-incremental" $CTL to-incremental 0
rm /mnt/cow

# The period's writes: whole blocks, a partial block, a write straddling two blocks.
: > /tmp/expect
w 0 4096 4096
w 4096 4096 4096
w $((5 * 4096)) 4096 4096
w $((100 * 4096)) 8192 4096
w $((1023 * 4096)) 4096 4096
w $((2047 * 4096)) 4096 4096
w $((300 * 4096 + 3 * 512)) 512 512
w $((500 * 4096 + 7 * 512)) 1024 512
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
grep -x -F -f /tmp/vblocks /tmp/expect | sort -nu > /tmp/expect.s
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

# Discard while incremental: passed and tracked. The blocks of a file written before
# the last START are not in the current period until the file is deleted and trimmed.
check "to-incremental" $CTL to-incremental 0
rm /mnt/cow2; sync
fstrim /mnt
bwtool blocks /mnt/data/f1 > /tmp/f1blocks
rm /mnt/data/f1; sync
# A freeze forces the log: xfs does not trim extents freed by a transaction still
# in flight ("busy"), and that would make this test depend on timing.
fsfreeze --freeze /mnt; fsfreeze --unfreeze /mnt
fstrim -v /mnt
check "to-snapshot" $CTL to-snapshot 0 --cow /mnt/cow3 --cow-size 16m
sync; fsfreeze --freeze /mnt
check "start 3" $CTL start 0
fsfreeze --unfreeze /mnt
$CTL map 0 --blocks > /tmp/map3
grep -v -x -F -f /tmp/map3 /tmp/f1blocks > /tmp/missing
if [ -s /tmp/missing ]; then fail "discarded blocks missing from the map: $(wc -l < /tmp/missing) of $(wc -l < /tmp/f1blocks)"; else ok "discarded blocks are in the map ($(wc -l < /tmp/f1blocks))"; fi
check "destroy" $CTL destroy 0
rm /mnt/cow3
check "rmmod" rmmod bwsnap
umount /mnt
finish
