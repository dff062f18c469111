# Issue 14 (COW extents through a user mapping): the filesystem reports the COW file's
# extents into a mapping in the caller's address space, which another thread of the
# caller can rewrite before the module reads them back. The module must never use
# extents that are not the file's own: it refuses the setup, or it has the right ones.
# fault_delay_extents_ms holds that window open; `bwtool extents-attack` finds the
# mapping and points every extent at byte 0 of the device (the boot block).
# Needs $VOL (a filesystem).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
rm -f /mnt/cow
echo > $F
echo 30000 > $P/fault_delay_extents_ms
bwtool extents-attack $VOL /mnt/cow 8388608 > /tmp/attack 2>&1
echo 0 > $P/fault_delay_extents_ms
cat /tmp/attack
check "the attack found the mapping and rewrote it" grep -q '^rewrote [1-9]' /tmp/attack
if [ "$(state_of 0)" = None ]; then
	ok "setup refused the rewritten extents ($(grep '^setup' /tmp/attack))"
else
	$CTL extents 0 > /tmp/used
	bwtool extents /mnt/cow > /tmp/real
	echo "module: $(tr '\n' ' ' < /tmp/used); file: $(tr '\n' ' ' < /tmp/real)"
	check "the module uses the file's own extents" cmp -s /tmp/used /tmp/real
	check "destroy" $CTL destroy 0
fi
rm -f /mnt/cow
check "rmmod" rmmod bwsnap
umount /mnt
finish
