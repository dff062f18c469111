//! Blockwitness: boots a snapshot-backup pipeline in QEMU on real Debian kernels, runs
//! scenarios against it, records every block at every stage and classifies the first
//! stage where a block diverges from the point-in-time truth.
//!
//! The binary (`src/main.rs`) is a thin command-line layer over this library. The
//! module map in docs/architecture.md gives each module's one job and what it may
//! import; [`model`] is the vocabulary at the bottom.

pub mod accel;
pub mod bench;
pub mod cleanup;
pub mod console;
pub mod doctor;
pub mod guest;
pub mod image;
pub mod model;
pub mod paths;
pub mod qemu;
pub mod vm;

pub mod classify;
pub mod cowfile;
pub mod diff;
pub mod events;
pub mod fsmap;
pub mod gate;
pub mod hash;
pub mod nightly;
pub mod oracle;
pub mod pipeline;
pub mod plan;
pub mod proxy;
pub mod record;
pub mod report;
pub mod run;
pub mod scenario;
pub mod shrink;
pub mod truth;
pub mod ui;
pub mod witness;

/// An error and its sources on one line ("a: b: c").
pub use bw_guest::error_chain;

/// Whether this is a CI run (CI=true, as CI services set it): there a test that needs
/// root, loop devices or host tools must run, never skip.
#[cfg(test)]
pub(crate) fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| matches!(v.trim(), "true" | "1"))
}

/// A unit test this machine cannot run: under CI a failure, elsewhere a note.
#[cfg(test)]
pub(crate) fn cannot_run(why: &str) {
    assert!(!under_ci(), "CI=true and this test cannot run here: {why}");
    eprintln!("skipped: {why}");
}
