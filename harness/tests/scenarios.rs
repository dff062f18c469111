//! The scenario library as a test binary: one test per scenario file and image, named
//! `<scenario>::<image>`, run with the scenario's first seed (the nightly runs every seed).
//!
//! The CI subset below runs by default; every other scenario is listed as ignored (so it
//! shows, never silently skipped) and runs with `--run-ignored all` (nextest) or
//! `--include-ignored` (libtest): that is the whole matrix, shardable with
//! `cargo nextest run --test scenarios --run-ignored all --partition hash:K/N`.

use std::path::PathBuf;

use blockwitness::accel::AccelChoice;
use blockwitness::events::{Event, Reporter};
use blockwitness::model::Exit;
use blockwitness::plan::Plan;
use blockwitness::run::{run_plan, RunOptions};
use libtest_mimic::{Arguments, Failed, Trial};

/// What CI runs within its budget: the field stories' main detectors on debian-6.1, and
/// one scenario on debian-6.12.
const CI_SUBSET: &[&str] = &[
    "future-clean::debian-6.1",
    "future-cow-read-live::debian-6.1",
    "ext2-ext4-freeze::debian-6.1",
    "floppy-loaded::debian-6.1",
    "incremental-chain-drop-tracking::debian-6.1",
    "future-cow-read-live::debian-6.12",
];

/// Progress lines on stderr (nextest shows them for failing tests).
struct Lines;

impl Reporter for Lines {
    fn event(&self, event: &Event) {
        match event {
            Event::Phase { name, .. } => eprintln!("== {name}"),
            Event::Note { text, .. } => eprintln!("   {text}"),
            Event::RunFinished {
                verdict,
                report_dir,
                ..
            } => eprintln!("== {verdict}: {report_dir}"),
            Event::RunStarted { .. } | Event::Progress { .. } | Event::Shrink { .. } => {}
        }
    }
}

fn accel() -> AccelChoice {
    match std::env::var("BW_ACCEL").as_deref() {
        Ok("kvm") => AccelChoice::Kvm,
        Ok("tcg") => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    }
}

fn main() {
    let args = Arguments::from_args();
    let dir: PathBuf = blockwitness::paths::scenarios_dir();
    let report = blockwitness::scenario::check(std::slice::from_ref(&dir));
    let mut trials = Vec::new();
    for (path, result) in report.files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scenario = match result {
            Ok(s) => s,
            Err(e) => {
                // A broken scenario file is a failing test, not a missing one.
                let text = e.to_string();
                trials.push(Trial::test(format!("{name}::invalid"), move || {
                    Err(Failed::from(text))
                }));
                continue;
            }
        };
        for image in scenario.images.clone() {
            let test_name = format!("{}::{image}", scenario.name);
            let ignored = !CI_SUBSET.contains(&test_name.as_str());
            let s = scenario.clone();
            trials.push(
                Trial::test(test_name, move || {
                    let plan = Plan::resolve(&s, s.seed, &image);
                    let result = run_plan(&plan, &s.source, &RunOptions::standard(accel()), &Lines);
                    match result.exit() {
                        Exit::Pass => Ok(()),
                        exit @ (Exit::ProductFailure | Exit::HarnessError) => {
                            Err(Failed::from(format!(
                                "{} (exit {}): {}\nreport: {}\nrepro: {}",
                                result.verdict.name(),
                                exit.code(),
                                result.verdict.reasons().join("; "),
                                result.report_dir.join("index.html").display(),
                                plan.repro
                            )))
                        }
                    }
                })
                .with_ignored_flag(ignored),
            );
        }
    }
    if trials.is_empty() {
        trials.push(Trial::test("no-scenarios", move || {
            Err(Failed::from(format!(
                "no scenario files in {}",
                dir.display()
            )))
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
