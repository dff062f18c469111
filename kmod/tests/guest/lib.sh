# Helpers for the bwsnap guest tests (busybox sh). Sourced by each test.
# Conventions: the volume under test is $VOL mounted on /mnt; $S1 and $S2 are scratch
# disks of the same size where a test needs them ($S1 holds a filesystem). The harness
# (harness/tests/kmod.rs) passes them in the environment, found by disk serial; the
# defaults are a bare QEMU guest's first three virtio disks. bwvol=DEV on the kernel
# command line overrides $VOL (e.g. a partition).
CMDVOL=$(sed -n 's/.*bwvol=\([^ ]*\).*/\1/p' /proc/cmdline)
VOL=${CMDVOL:-${VOL:-/dev/vda}}
S1=${S1:-/dev/vdb}
S2=${S2:-/dev/vdc}
mkdir -p /mnt
# Mark the kernel log so that `finish` judges only what this test caused. A test run
# in several steps (race.sh) names itself in $TEST and marks only its first step.
TEST=${TEST:-$(basename "$0" .sh)}
[ -n "$BWTEST_CONTINUE" ] || echo "bwtest-begin $TEST" > /dev/kmsg

CTL=bwsnap-ctl
FAILS=0
P=/sys/module/bwsnap/parameters
F=/sys/kernel/debug/bwsnap/faults

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
die() { echo "FAIL: $*"; echo "FAILS $((FAILS + 1))"; exit 1; }
ok() { echo "ok: $*"; }
# Helpers keep their variables to _-names: a test's own $d or $n stays its own.
check() { # check DESCRIPTION COMMAND... : the command must succeed
	_cd=$1; shift
	if "$@"; then ok "$_cd"; else fail "$_cd"; fi
}

# expect_errno N DESCRIPTION COMMAND...: COMMAND must fail with "os error N".
expect_errno() {
	_en=$1; _ed=$2; shift 2
	_eo=$("$@" 2>&1)
	if [ $? -eq 0 ]; then
		fail "$_ed: succeeded, want errno $_en"
	elif echo "$_eo" | grep -q "os error $_en)"; then
		ok "$_ed (errno $_en)"
	else
		fail "$_ed: want errno $_en, got: $_eo"
	fi
}

# info_field MINOR NAME: one field of `bwsnap-ctl info` (text form).
info_field() {
	$CTL info "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}
state_of() { $CTL info "$1" | cut -d' ' -f3; }

expect_state() { # expect_state MINOR STATE
	_ss=$(state_of "$1")
	if [ "$_ss" = "$2" ]; then ok "minor $1 is $2"; else fail "minor $1 is $_ss, want $2"; fi
}

load() { insmod /lib/modules/bwsnap.ko "$@" || die "insmod bwsnap"; }

# wait_for SECONDS COMMAND...: retry COMMAND every 0.1 s until it succeeds; false
# when the time runs out. Every wait in these tests has such a deadline.
wait_for() {
	_wn=$(($1 * 10)); shift
	until "$@" 2>/dev/null; do
		_wn=$((_wn - 1))
		[ $_wn -le 0 ] && return 1
		sleep 0.1
	done
}
# A background process has ended.
gone() { ! kill -0 "$1" 2>/dev/null; }
# A fault knob of this kind has fired (the fault log names it).
fired() { grep -q "^$1 minor=" $F; }

# snap_start MINOR [MOUNTPOINT]: START with the filesystem frozen, as the agent does.
snap_start() {
	sync; fsfreeze --freeze "${2:-/mnt}"
	$CTL start "$1"; rc=$?
	fsfreeze --unfreeze "${2:-/mnt}"
	return $rc
}

# The kernel log since this test last began.
test_dmesg() {
	dmesg | awk -v m="bwtest-begin $TEST" 'substr($0, length($0) - length(m) + 1) == m { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }'
}

finish() {
	if test_dmesg | grep -E "BUG:|WARNING:|Oops|Call Trace|blocked for more than" >/dev/null; then
		test_dmesg | grep -E -A20 "BUG:|WARNING:|Oops|blocked for more than" | head -60
		fail "kernel log has a splat"
	fi
	echo "FAILS $FAILS"
	[ "$FAILS" -eq 0 ]
}

# Fill /mnt with N files of M MiB of random data.
prefill() {
	mkdir -p /mnt/data
	i=0
	while [ $i -lt "$1" ]; do
		dd if=/dev/urandom of=/mnt/data/f$i bs=1M count="$2" 2>/dev/null
		i=$((i + 1))
	done
	sync
}

# After a failed test: take down whatever it left (best effort), so the next test in
# the same guest starts clean.
reset_all() {
	# Knobs off first: a held read or copy would keep a destroy waiting.
	for k in fault_delay_read_ms fault_delay_start_ms fault_delay_extents_ms fault_delay_cow_ms; do
		echo 0 > $P/$k 2>/dev/null
	done
	fsfreeze --unfreeze /mnt 2>/dev/null
	fsfreeze --unfreeze /mnt2 2>/dev/null
	m=0
	while [ $m -lt 32 ]; do bwsnap-ctl destroy $m 2>/dev/null; m=$((m + 1)); done
	for d in /mnt2 /mnt /helper; do umount $d 2>/dev/null; done
	rmmod bwsnap 2>/dev/null
	rm -f /tmp/stop
	true
}
