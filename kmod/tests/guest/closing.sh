# Issue 12 item 2 (teardown serves future data): a snapshot read in flight while the
# snapshot is closed (to-incremental, destroy) must not return data written after the
# close. The module sets a closing state before it lets any write through and fails
# such a read with EIO. Deterministic: fault_delay_read_ms holds the read after it is
# planned (block B, served live) until the test has closed the snapshot and overwritten
# B; then the test lets it go. A last pass sets fault_teardown_open, which re-opens the
# race on purpose: then the read must return the new data and the fault log name B (what
# scenarios/teardown-race-open.toml relies on). Needs $VOL (a filesystem).
. ./lib.sh
load
mount $VOL /mnt || die "mount $VOL"
prefill 1 1
B=$(bwtool phys /mnt/data/f0 0 4096)

check "fault_teardown_open is off by default" test "$(cat $P/fault_teardown_open)" = 0
for how in to-incremental destroy open; do
	open=0
	if [ $how = open ]; then
		# The race re-opened: to-incremental with the knob set.
		how=to-incremental open=1
	fi
	echo $open > $P/fault_teardown_open
	rm -f /mnt/cow /tmp/got
	dd if=/dev/urandom of=/tmp/new bs=4k count=1 2>/dev/null
	check "$how: setup" $CTL setup --minor 0 --cow /mnt/cow --cow-size 4m $VOL
	snap_start 0 || fail "$how: start"
	# Nothing has written B since START: this is the snapshot's content.
	dd if=$VOL of=/tmp/old bs=4k skip=$B count=1 iflag=direct 2>/dev/null
	cmp -s /tmp/old /tmp/new && die "random data repeated"
	echo > $F
	echo 60000 > $P/fault_delay_read_ms
	dd if=/dev/bwsnap0 of=/tmp/got bs=4k skip=$B count=1 iflag=direct 2>/dev/null & r=$!
	wait_for 30 fired delay-read || fail "$how: the read was not held"
	$CTL $how 0 & c=$!
	# The device goes once the close has begun (state changed, writes let through).
	wait_for 30 test ! -e /dev/bwsnap0 || fail "$how: /dev/bwsnap0 stayed"
	dd if=/tmp/new of=/mnt/data/f0 bs=4k count=1 conv=notrunc oflag=direct 2>/dev/null & w=$!
	if wait_for 30 gone $w; then
		ok "$how: a write to B passed while the read of B was held"
	else
		fail "$how: the write to B stayed held"
	fi
	echo 0 > $P/fault_delay_read_ms
	wait $r; rrc=$?
	wait $c || fail "$how: $how 0 failed"
	wait $w
	if [ $open = 1 ]; then
		echo 0 > $P/fault_teardown_open
		check "open: the read in flight across the close succeeded" test $rrc -eq 0
		check "open: it returned the data written after the close" cmp -s /tmp/got /tmp/new
		check "open: the fault log names B, and only B" \
			test "$(sed -n 's/^open-teardown minor=0 block=//p' $F)" = "$B"
		check "open: the trace marks B as a live read changed by a fault" \
			sh -c "$CTL trace 0 2>/dev/null | grep -q '^$B live fault\$'"
	elif [ $rrc -ne 0 ]; then
		ok "$how: the read in flight across the close failed (dd exit $rrc)"
	elif cmp -s /tmp/got /tmp/old; then
		ok "$how: the read in flight across the close returned the snapshot's data"
	elif cmp -s /tmp/got /tmp/new; then
		fail "$how: the read in flight across the close returned data written after the close"
	else
		fail "$how: the read returned neither the snapshot's nor the new data"
	fi
	if [ $how = to-incremental ]; then
		check "destroy" $CTL destroy 0
	fi
done
rm -f /mnt/cow
check "rmmod" rmmod bwsnap
umount /mnt
finish
