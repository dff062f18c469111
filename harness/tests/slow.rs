//! A slow machine writes what a fast one does: cow-delete-churn and future-clean run at
//! full speed and with QEMU slowed down 2x (`--slow 2`, same seed and image), and must
//! end with the same verdict, the same amount written by every paced workload, and the
//! same steps (where the backup was held, and what each workload had written there).
//! Four scenario runs under TCG: long, and worth it (it is issue 9's proof).

mod common;

use blockwitness::accel::AccelChoice;
use blockwitness::bench::slow::{compare, SlowPair};
use blockwitness::model::Exit;
use blockwitness::plan::Plan;
use blockwitness::run::RunOptions;

const FACTOR: u32 = 2;

fn accel() -> AccelChoice {
    match std::env::var("BW_ACCEL").as_deref() {
        Ok("kvm") => AccelChoice::Kvm,
        Ok("tcg") => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    }
}

fn slowed_twice(name: &str) -> SlowPair {
    let path = blockwitness::paths::scenarios_dir().join(format!("{name}.toml"));
    let s = blockwitness::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::resolve(&s, s.seed, "debian-6.1");
    let pair = compare(&plan, &s.source, &RunOptions::standard(accel()), FACTOR)
        .unwrap_or_else(|e| panic!("{name}: {}", common::error_chain(&e)));
    eprintln!(
        "{name}: {} ({:.0} s, {:?} blocks/s) / slowed {} ({:.0} s, {:?} blocks/s, duty {:?})",
        pair.normal.verdict,
        pair.normal.seconds,
        pair.normal.blocks_per_second,
        pair.slow.verdict,
        pair.slow.seconds,
        pair.slow.blocks_per_second,
        pair.slow.duty
    );
    pair
}

fn check(pair: &SlowPair) {
    let reports = format!(
        "reports: {} and {}",
        pair.normal.report.display(),
        pair.slow.report.display()
    );
    assert_eq!(pair.normal.exit, Exit::Pass, "full speed: {reports}");
    assert_eq!(pair.slow.exit, Exit::Pass, "slowed: {reports}");
    assert!(pair.verdicts_match(), "{reports}");
    // Slowed for real, at least 2x: QEMU could run at most about half of the wall time
    // (the throttle measures it; a late wake-up of its thread only lengthens a stop).
    let duty = pair.slow.duty.expect("the slowed run records its throttle");
    assert!(
        duty <= 0.55,
        "QEMU ran {:.0}% of the time: {reports}",
        duty * 100.0
    );
    assert!(pair.normal.duty.is_none(), "{reports}");
    let paced: Vec<_> = pair
        .workloads
        .iter()
        .filter(|w| !w.pacing.starts_with("wall clock"))
        .collect();
    assert!(!paced.is_empty(), "no paced workload: {reports}");
    for w in paced {
        let what = format!("workload #{} {} ({})", w.index, w.kind, w.pacing);
        let bytes = w
            .normal
            .unwrap_or_else(|| panic!("{what}: no summary: {reports}"));
        assert!(bytes > 0, "{what} wrote nothing: {reports}");
        assert_eq!(w.slow, Some(bytes), "{what}: bytes differ: {reports}");
        assert!(w.same_steps, "{what}: steps differ: {reports}");
    }
}

#[test]
fn vm_cow_delete_churn_slowed_2x_writes_the_same() {
    check(&slowed_twice("cow-delete-churn"));
}

#[test]
fn vm_future_clean_slowed_2x_writes_the_same() {
    check(&slowed_twice("future-clean"));
}
