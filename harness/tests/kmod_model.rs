//! Model-based testing of bwsnap.ko (issue 14, item 3): proptest-state-machine
//! sequences of operations run in a real guest against a pure-Rust model of the
//! module's documented semantics (kmod_model/model.rs).
//!
//! One guest per kernel runs every sequence through one long-lived executor,
//! `bwsnap-exec` (bw_guest::bwsnap_exec), on two 8 MiB volumes: ext4 with 4 KiB blocks
//! and ext2 with 1 KiB blocks, each filesystem 6 MiB and a 2 MiB arena after it that
//! only the test writes. After every step the snapshot blocks the step touched are
//! read back, at START and before a snapshot goes away the whole device is, INFO of
//! every minor is checked, and a map read must be exact in the arena.
//!
//! Environment:
//! * `BW_MODEL_CASES`: sequences per kernel (default [`runner::DEFAULT_CASES`]; the
//!   nightly runs thousands).
//! * `BW_MODEL_SEED`: the generator's seed (printed by every run).
//! * `BW_MODEL_REPRO`: one sequence in its one-line form (what a failure prints): runs
//!   exactly it, nothing else.
//!
//! Before the generated sequences, each fault knob of the module is turned on under a
//! sequence it must spoil, and the test must see it: the checks can fail.

mod common;

#[path = "kmod_model/exec.rs"]
mod exec;
#[path = "kmod_model/model.rs"]
mod model;
#[path = "kmod_model/ops.rs"]
mod ops;
#[path = "kmod_model/runner.rs"]
mod runner;

#[test]
fn vm_model_debian_6_1() {
    runner::model_test("debian-6.1", "vm_model_debian_6_1");
}

#[test]
fn vm_model_debian_6_12() {
    runner::model_test("debian-6.12", "vm_model_debian_6_12");
}

/// The same seed generates the same sequences (BW_MODEL_SEED reruns a generation).
#[test]
fn model_generation_is_seeded() {
    runner::generation_is_seeded();
}

/// The repro line names the test and carries the sequence on one line.
#[test]
fn model_repro_line_is_one_line() {
    let ops = ops::parse_line("setup m0 v1 cow=fresh size=slots:4; start m0; write v1 s=3+2")
        .expect("valid");
    let line = runner::repro_line("vm_model_debian_6_1", &ops);
    assert!(!line.contains('\n'));
    assert!(line
        .contains("BW_MODEL_REPRO='setup m0 v1 cow=fresh size=slots:4; start m0; write v1 s=3+2'"));
    assert!(line.contains("test(=vm_model_debian_6_1)"));
}
