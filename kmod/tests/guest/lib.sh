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

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
die() { echo "FAIL: $*"; echo "FAILS $((FAILS + 1))"; exit 1; }
ok() { echo "ok: $*"; }
check() { # check DESCRIPTION COMMAND... : the command must succeed
	d=$1; shift
	if "$@"; then ok "$d"; else fail "$d"; fi
}

# expect_errno N DESCRIPTION COMMAND...: COMMAND must fail with "os error N".
expect_errno() {
	n=$1; d=$2; shift 2
	out=$("$@" 2>&1)
	if [ $? -eq 0 ]; then
		fail "$d: succeeded, want errno $n"
	elif echo "$out" | grep -q "os error $n)"; then
		ok "$d (errno $n)"
	else
		fail "$d: want errno $n, got: $out"
	fi
}

# info_field MINOR NAME: one field of `bwsnap-ctl info` (text form).
info_field() {
	$CTL info "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}
state_of() { $CTL info "$1" | cut -d' ' -f3; }

expect_state() { # expect_state MINOR STATE
	s=$(state_of "$1")
	if [ "$s" = "$2" ]; then ok "minor $1 is $2"; else fail "minor $1 is $s, want $2"; fi
}

load() { insmod /lib/modules/bwsnap.ko "$@" || die "insmod bwsnap"; }

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
	fsfreeze --unfreeze /mnt 2>/dev/null
	m=0
	while [ $m -lt 32 ]; do bwsnap-ctl destroy $m 2>/dev/null; m=$((m + 1)); done
	for d in /mnt2 /mnt; do umount $d 2>/dev/null; done
	rmmod bwsnap 2>/dev/null
	rm -f /tmp/stop
	true
}
