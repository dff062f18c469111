# Issue 14 (shared pool): the module allocates its bios from a bio_set of its own,
# never from fs_bio_set, which the filesystem's bios (the writes the module holds)
# also draw from: with one pool for both, the module's allocation can wait for a
# reserve element that only a bio it holds would give back. The deadlock itself needs
# that reserve exhausted (memory pressure; Debian's kernels have no slab fault
# injection), so what is checked is where the module's bios come from: a bio slab of
# its own (the kernel keeps one per bio size, named bio-SIZE), in use while a
# snapshot read is held in flight. Needs $VOL (a filesystem).
. ./lib.sh
slabs() { grep '^bio-' /proc/slabinfo | cut -d' ' -f1 | sort; }
slabs > /tmp/slabs.0
load
mount $VOL /mnt || die "mount $VOL"
prefill 1 1
check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
snap_start 0 || fail "start"
echo > $F
echo 60000 > $P/fault_delay_read_ms
dd if=/dev/bwsnap0 of=/dev/null bs=64k count=1 iflag=direct 2>/dev/null & r=$!
wait_for 30 fired delay-read || fail "the read was not held"
slabs > /tmp/slabs.1
own=$(grep -v -x -F -f /tmp/slabs.0 /tmp/slabs.1 | tr '\n' ' ')
echo "bio slabs before the module: $(tr '\n' ' ' < /tmp/slabs.0); new: ${own:-none}"
grep '^bio-' /proc/slabinfo
if [ -n "$own" ]; then
	ok "the module has a bio slab of its own ($own)"
	active=0
	for s in $own; do
		active=$((active + $(awk -v s=$s '$1 == s { print $2 }' /proc/slabinfo)))
	done
	check "its slab holds the held read's bios ($active active)" test "$active" -gt 0
else
	fail "no bio slab came with the module: its bios come from a shared pool"
fi
echo 0 > $P/fault_delay_read_ms
wait $r || fail "the held read failed"
check "destroy" $CTL destroy 0
rm -f /mnt/cow
check "rmmod" rmmod bwsnap
umount /mnt
finish
