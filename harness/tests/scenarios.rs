//! The scenario library as a test binary: one test per scenario file and image, named
//! `<scenario>::<image>`, run with the scenario's first seed (the nightly runs every seed).
//!
//! The CI subset below runs by default; every other scenario is listed as ignored (so it
//! shows, never silently skipped) and runs with `--run-ignored all` (nextest) or
//! `--include-ignored` (libtest): that is the whole matrix, shardable with
//! `cargo nextest run --test scenarios --run-ignored all --partition hash:K/N`.
//!
//! `BW_SLOW=N` runs every scenario with QEMU slowed to 1/N of the wall clock (the
//! `--slow N` of `run` and `nightly`).

use std::path::PathBuf;

use blockwitness::accel::AccelChoice;
use blockwitness::events::{Event, Reporter};
use blockwitness::model::{Exit, Layer};
use blockwitness::plan::Plan;
use blockwitness::run::{run_plan, RunOptions};
use libtest_mimic::{Arguments, Failed, Trial};

/// What CI runs within its budget: the field stories' main detectors, at least one
/// scenario of every fault layer the run injects, both kernels, the filesystems whose
/// blocks are not 4 KiB-shaped (1 KiB ext4, xfs), and the driven pipelines. The
/// `ci-subset` test below fails when an entry matches no scenario or a layer or kernel
/// is left out.
const CI_SUBSET: &[&str] = &[
    "future-clean::debian-6.1",
    "future-cow-read-live::debian-6.1",
    "future-cow-read-live::debian-6.12",
    // The teardown race found: under a minute here (kmod/README.md, "The teardown race").
    "teardown-race-open::debian-6.1",
    "ext2-ext4-freeze::debian-6.1",
    "floppy-loaded::debian-6.1",
    "incremental-chain-drop-tracking::debian-6.1",
    "agent-skip-blocks::debian-6.1",
    "transport-rewrite::debian-6.1",
    "target-wrong-offset-unverified::debian-6.1",
    "guest-crash::debian-6.1",
    "ext4-1k-cow-read-live::debian-6.1",
    "xfs-cow-read-live::debian-6.1",
    // The driven pipelines (each under 2 minutes here): the kernel's dm-snapshot clean
    // and overflowing, LVM, and a vendor's product by its commands caught reading live.
    "dm-snapshot-clean::debian-6.1",
    "dm-snapshot-overflow::debian-6.12",
    // LVM classic: its volume is cut out of its disk, truth and history alike.
    "lvm-classic-clean::debian-6.12",
    "external-reads-live::debian-6.1",
    // A product that cannot announce its instant, judged at the history oracle's cut:
    // clean on one kernel, caught reading live on the other (each under 2 minutes).
    "external-oracle-clean::debian-6.12",
    "external-oracle-reads-live::debian-6.1",
];

/// The layers CI must cover with at least one scenario each (disk faults are the
/// witness disk's, tested by its own VM test).
const CI_LAYERS: [Layer; 5] = [
    Layer::Module,
    Layer::Agent,
    Layer::Transport,
    Layer::Target,
    Layer::Guest,
];

/// What is wrong with the CI subset, given each test's name and its scenario's fault
/// layers: entries that match no test, layers and images no entry covers.
fn subset_problems(subset: &[&str], tests: &[(String, String, Vec<Layer>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut layers = Vec::new();
    let mut images = Vec::new();
    for entry in subset {
        match tests.iter().find(|(name, _, _)| name == entry) {
            Some((_, image, l)) => {
                layers.extend(l.iter().copied());
                images.push(image.clone());
            }
            None => problems.push(format!("CI subset entry {entry} matches no scenario")),
        }
    }
    for layer in CI_LAYERS {
        if !layers.contains(&layer) {
            problems.push(format!(
                "the CI subset runs no scenario with a {} fault",
                layer.name()
            ));
        }
    }
    let all_images: std::collections::BTreeSet<&String> =
        tests.iter().map(|(_, image, _)| image).collect();
    for image in all_images {
        if !images.contains(image) {
            problems.push(format!("the CI subset runs nothing on {image}"));
        }
    }
    problems
}

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

/// `BW_SLOW=N`: the slow-down factor (unset: full speed). A value that is not a whole
/// number from 1 to 20 fails every test, rather than silently running at full speed.
fn slow() -> Result<Option<u32>, String> {
    match std::env::var("BW_SLOW") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n @ 1..=20) => Ok(Some(n)),
            _ => Err(format!("BW_SLOW={v:?} is not a whole number from 1 to 20")),
        },
    }
}

fn main() {
    let args = Arguments::from_args();
    let dir: PathBuf = blockwitness::paths::scenarios_dir();
    let report = blockwitness::scenario::check(std::slice::from_ref(&dir));
    let mut trials = Vec::new();
    let mut tests: Vec<(String, String, Vec<Layer>)> = Vec::new();
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
            tests.push((
                test_name.clone(),
                image.clone(),
                scenario.faults.iter().map(|f| f.spec.layer()).collect(),
            ));
            let ignored = !CI_SUBSET.contains(&test_name.as_str());
            let s = scenario.clone();
            trials.push(
                Trial::test(test_name, move || {
                    let plan = Plan::resolve(&s, s.seed, &image);
                    let opts = RunOptions {
                        slow: slow().map_err(Failed::from)?,
                        ..RunOptions::standard(accel())
                    };
                    let result = run_plan(&plan, &s.source, &opts, &Lines);
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
    // Not a VM test: the subset itself, so a renamed scenario cannot drop out of CI.
    let problems = subset_problems(CI_SUBSET, &tests);
    trials.push(Trial::test("ci-subset", move || {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Failed::from(problems.join("\n")))
        }
    }));
    // The check itself can fail: a stray entry, a layer and a kernel left out.
    let known = tests.clone();
    trials.push(Trial::test("ci-subset-check-can-fail", move || {
        let found = subset_problems(&["no-such-scenario::debian-6.1"], &known);
        let want = [
            "CI subset entry no-such-scenario::debian-6.1 matches no scenario",
            "the CI subset runs no scenario with a module fault",
            "the CI subset runs nothing on debian-6.12",
        ];
        match want.iter().find(|w| !found.iter().any(|f| f == *w)) {
            None => Ok(()),
            Some(w) => Err(Failed::from(format!("not reported: {w}; got {found:?}"))),
        }
    }));
    if tests.is_empty() {
        trials.push(Trial::test("no-scenarios", move || {
            Err(Failed::from(format!(
                "no scenario files in {}",
                dir.display()
            )))
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
