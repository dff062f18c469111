# Tear the snapshot down (to-incremental, destroy) while it is being read and the
# volume written: no oops, the reader ends (with EIO or not), held writes complete,
# the live data is what was written. Needs $VOL (a filesystem).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
prefill 6 4
dd if=/dev/urandom of=/tmp/src bs=1M count=4 2>/dev/null

writer() { # rewrite every file with /tmp/src until told to stop, a whole pass at a time
	while [ ! -e /tmp/stop ]; do
		for i in 0 1 2 3 4 5; do
			dd if=/tmp/src of=/mnt/data/f$i bs=64k conv=notrunc,fsync 2>/dev/null
		done
	done
}

for round in 1 2 3 4; do
	rm -f /tmp/stop
	check "round $round: setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 32m $VOL
	sync; fsfreeze --freeze /mnt
	$CTL start 0 || fail "round $round: start"
	fsfreeze --unfreeze /mnt
	writer & w=$!
	dd if=/dev/bwsnap0 of=/dev/null bs=4k iflag=direct 2>/dev/null & r=$!
	sleep $round
	if [ $((round % 2)) -eq 1 ]; then
		check "round $round: to-incremental under load" $CTL to-incremental 0
	fi
	check "round $round: destroy under load" $CTL destroy 0
	wait $r; echo "round $round: reader exit $?"
	touch /tmp/stop; wait $w
	rm -f /mnt/cow
done
sync; echo 3 > /proc/sys/vm/drop_caches
for i in 0 1 2 3 4 5; do
	check "f$i holds what was written" cmp -s /tmp/src /mnt/data/f$i
done
check "rmmod" rmmod bwsnap
umount /mnt
finish
