//! bwsnap.ko in real guests, through the harness's own QEMU runner, on each kernel the
//! project supports (issue 3, "Tests"):
//!
//! * `vm_kmod_scripts_*`: one boot per kernel runs the guest scripts of kmod/tests/guest,
//!   each on a fresh volume of its own: the state machine and every bad input
//!   (state.sh), incremental map exactness (incr.sh), COW full (full.sh), each fault
//!   knob firing (faults.sh), teardown under load (teardown.sh), 100 load/unload
//!   cycles (loadunload.sh). The module's W=1 build log is checked for warnings first.
//! * `vm_kmod_bugs_*`: the bugs of issue 14 and the teardown race of issue 12, a script
//!   each (closing, pool, discard, perminor, extents, adddisk, ownbio), each written to
//!   fail against the module as it was, and readorder (a write waits for a snapshot
//!   read of its block). `BW_KMOD_SCRIPTS=a,b` runs only the named scripts of a set.
//! * `vm_kmod_start_drain_*`: START waits for a write the host holds in flight in QEMU
//!   (blkdebug), and the snapshot does not change after START.
//! * `vm_kmod_race_*`: writers hammer the volume while the guest hashes the whole
//!   snapshot; the hashes must equal the QEMU point-in-time copy the host took (QMP,
//!   [`blockwitness::truth::Truth`]) while the guest held the filesystem frozen. A pass
//!   with the cow-read-live knob on shows that the comparison catches live data.
//! * `vm_bench_cow_debian_6_1`: `bench cow`'s plumbing (dm-snapshot through its ioctls),
//!   with short runs; figures are printed, not judged.
//!
//! After each guest its console is scanned for oops, BUG, WARN and hung tasks.

mod common;
#[path = "kmod/support.rs"]
mod support;

#[test]
fn vm_kmod_scripts_debian_6_1() {
    support::scripts("debian-6.1", support::SCRIPTS);
}

#[test]
fn vm_kmod_scripts_debian_6_12() {
    support::scripts("debian-6.12", support::SCRIPTS);
}

#[test]
fn vm_kmod_bugs_debian_6_1() {
    support::scripts("debian-6.1", support::BUG_SCRIPTS);
}

#[test]
fn vm_kmod_bugs_debian_6_12() {
    support::scripts("debian-6.12", support::BUG_SCRIPTS);
}

#[test]
fn vm_kmod_start_drain_debian_6_1() {
    support::start_drain("debian-6.1");
}

#[test]
fn vm_kmod_start_drain_debian_6_12() {
    support::start_drain("debian-6.12");
}

#[test]
fn vm_kmod_race_debian_6_1() {
    support::race("debian-6.1");
}

#[test]
fn vm_kmod_race_debian_6_12() {
    support::race("debian-6.12");
}

#[test]
fn vm_bench_cow_debian_6_1() {
    support::bench_cow_smoke("debian-6.1");
}

/// The host-side mirror of `bwtool hash` must agree with the C helper on real data.
#[test]
fn block_hash_matches_bwtool() {
    support::hash_matches_bwtool();
}

/// The verdict on a guest script's output can fail.
#[test]
fn script_verdict_needs_a_clean_run() {
    support::judge_needs_a_clean_run();
}
