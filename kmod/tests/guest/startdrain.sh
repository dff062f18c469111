# Issue 14 (START and writes in flight): START must wait for writes the module let
# through before it, or one that lands after the instant changes the snapshot under
# the reader. The host holds such a write in QEMU (blkdebug "break write_aio") across
# START; harness/tests/kmod.rs drives these steps:
#
#   startdrain.sh prepare   load, mount $VOL, setup; block L (the device's last) := A
#   startdrain.sh write     (spawned; the host has set the break) write B to block L
#   startdrain.sh pending   the write is still in flight (held in QEMU)
#   startdrain.sh start     (spawned) START; its exit status to /tmp/start.rc
#   startdrain.sh early     if START has returned: the snapshot's block L now
#   startdrain.sh finish    (the host resumed the write) START succeeded, the
#                           snapshot's block L did not change, cleanup
TEST=startdrain
[ "$1" = prepare ] || BWTEST_CONTINUE=1
. ./lib.sh
L=$(( $(blockdev --getsize64 $VOL) / 4096 - 1 ))
snapblock() { dd if=/dev/bwsnap0 bs=4k skip=$L count=1 iflag=direct 2>/dev/null; }

case "$1" in
prepare)
	rm -f /tmp/start.rc /tmp/snap.early /tmp/write.done
	load
	# noinit_itable: no background inode-table zeroing writes to catch the break
	mount -o noinit_itable,noatime $VOL /mnt || die "mount $VOL"
	rm -f /mnt/cow
	check "setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
	dd if=/dev/urandom of=/tmp/a bs=4k count=1 2>/dev/null
	dd if=/dev/urandom of=/tmp/b bs=4k count=1 2>/dev/null
	dd if=/tmp/a of=$VOL bs=4k seek=$L count=1 conv=notrunc oflag=direct 2>/dev/null
	sync
	exit 0
	;;
write)
	dd if=/tmp/b of=$VOL bs=4k seek=$L count=1 conv=notrunc oflag=direct 2>/dev/null
	touch /tmp/write.done
	exit 0
	;;
pending)
	check "the write is held in flight" test ! -e /tmp/write.done
	;;
start)
	$CTL start 0; echo $? > /tmp/start.rc
	exit 0
	;;
early)
	if [ -e /tmp/start.rc ]; then
		echo "START returned while a write was in flight"
		snapblock > /tmp/snap.early
	else
		echo "START waits for the write in flight"
	fi
	exit 0
	;;
finish)
	check "the write completed" test -e /tmp/write.done
	check "START succeeded" test "$(cat /tmp/start.rc 2>/dev/null)" = 0
	snapblock > /tmp/snap.late
	check "the live block holds the write" sh -c "dd if=$VOL bs=4k skip=$L count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/b"
	if [ -e /tmp/snap.early ]; then
		check "the snapshot did not change after START" cmp -s /tmp/snap.early /tmp/snap.late
	else
		ok "START returned only after the write in flight completed"
	fi
	check "the snapshot holds one of the two versions" sh -c "cmp -s /tmp/snap.late /tmp/a || cmp -s /tmp/snap.late /tmp/b"
	check "destroy" $CTL destroy 0
	rm -f /mnt/cow
	check "rmmod" rmmod bwsnap
	check "umount" umount /mnt
	;;
*)
	die "unknown step '$1'"
	;;
esac
finish
