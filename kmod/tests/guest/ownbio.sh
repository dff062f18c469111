# Issue 14 (own bios): the module's own COW writes must never be taken for writes to
# copy, also when the block layer splits one and resubmits the rest through
# submit_bio_noacct itself (the caller is then the block layer, not the module). On
# ext2 with 1 KiB blocks the COW file's extents begin and end inside 4 KiB blocks that
# are not wholly COW file, and max_sectors_kb=4 splits every slot write of more than
# one block: a module that recognises its bios by their caller holds the rest of its
# own slot write behind the copy that waits for it. Needs $VOL (ext2, 1 KiB blocks)
# and $S1 (scratch, at least as large).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
prefill 2 4
q=/sys/block/$(basename $VOL)/queue/max_sectors_kb
was=$(cat $q)
echo 4 > $q || die "cannot set $q"
check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 16m $VOL
$CTL extents 0 > /tmp/ext
sync; fsfreeze --freeze /mnt
dd if=$VOL of=$S1 bs=1M iflag=direct 2>/dev/null
$CTL start 0 || fail "start"
fsfreeze --unfreeze /mnt
dd if=/dev/urandom of=/tmp/new bs=1M count=4 2>/dev/null
dd if=/tmp/new of=/mnt/data/f0 bs=1M count=4 conv=notrunc oflag=direct 2>/dev/null & w=$!
if wait_for 120 gone $w; then
	ok "4 MiB of first writes completed"
else
	echo "$was" > $q
	die "4 MiB of first writes hang: the module held the rest of its own split COW write"
fi
echo "$was" > $q
$CTL info 0
check "copies made" test "$(info_field 0 cow_copies)" -ge 1000
check "snapshot not invalidated" test "$(info_field 0 error)" -eq 0
check "the snapshot equals the frozen copy" sh -c "test \"\$(bwtool cmp $S1 /dev/bwsnap0 /tmp/ext | tail -1)\" = 'differ 0'"
check "the new data is live" sh -c "dd if=/mnt/data/f0 bs=1M count=4 iflag=direct 2>/dev/null | cmp -s - /tmp/new"
check "destroy" $CTL destroy 0
rm -f /mnt/cow
check "rmmod" rmmod bwsnap
umount /mnt
finish
