//! Integration tests of the harness core: scenario files, classification, the differ,
//! reports, and docs/scenarios.md. One binary, a module per feature.

mod apt_lists;
mod classify_props;
mod docs;
mod field_scenarios;
mod layering;
mod report;
mod runs;
mod scenario_errors;

use std::path::PathBuf;

/// harness/tests/core/fixtures/<sub>.
pub fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/core/fixtures")
        .join(sub)
}

/// Set BW_BLESS=1 to rewrite golden files from the current output.
pub fn bless() -> bool {
    std::env::var_os("BW_BLESS").is_some_and(|v| v == "1")
}

/// Whether this is a CI run (CI=true): there a test that needs root, loop devices or
/// host tools must run, never skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| matches!(v.trim(), "true" | "1"))
}

/// A test this machine cannot run: under CI a failure, elsewhere a note on stderr.
pub fn cannot_run(why: &str) {
    assert!(!under_ci(), "CI=true and this test cannot run here: {why}");
    eprintln!("skipped: {why}");
}
