//! Progress-paced runs (`--paced FILE`): what a run does at each step of its allowance,
//! the operations it issues and the amount it writes depend on the seed and the plan of
//! allowances only, never on when the grants come.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{operations, read_log, run, tree, Operation, TempDir, BIN};
use bw_guest::workload::{Allowance, PaceUnit, PacedProgress, StopReason, WorkloadSummary};

/// Longest wait for one thing a paced run must do (be ready, use a step, exit).
const DEADLINE: Duration = Duration::from_secs(60);

/// How the test plays the harness.
#[derive(Clone, Copy, Debug)]
enum Granting {
    /// The harness's way: grant the next step as soon as the previous one is used,
    /// appending a line to the allowance file.
    Lockstep,
    /// Lockstep, with a seeded random delay before each grant, replacing the whole file
    /// (temp file + rename) each time.
    Jittered { seed: u64, max_ms: u64 },
    /// Every step and "end" written before the run starts.
    AllAtOnce,
}

/// A plan: the workload, the cumulative allowances, in a unit.
struct Plan {
    /// Kind and options, without --dir, --paced and --log.
    args: &'static str,
    /// Prepares the directory before the run (the same for every granting).
    prepare: Option<&'static str>,
    unit: PaceUnit,
    steps: Vec<u64>,
    /// Largest amount one operation can do, in the unit.
    max_op: u64,
}

/// What one paced run did.
struct Ran {
    summary: WorkloadSummary,
    /// The progress at ready (before any grant), for the stepwise grantings.
    ready: Option<PacedProgress>,
    /// The progress once each step was used, for the stepwise grantings.
    at_step: Vec<PacedProgress>,
    log: Vec<Operation>,
    tree: Vec<(String, bool, u64, u32)>,
}

fn amount(unit: PaceUnit, n: u64) -> String {
    match unit {
        PaceUnit::Bytes => n.to_string(),
        PaceUnit::Ops => format!("{n}ops"),
    }
}

fn read_progress(file: &Path) -> Option<PacedProgress> {
    let text = fs::read_to_string(file).ok()?;
    Some(
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text:?}", file.display())),
    )
}

/// Waits (with [`DEADLINE`]) until `ok` holds for the run's progress.
fn wait_progress(
    done: &Path,
    child: &mut Child,
    what: &str,
    ok: impl Fn(&PacedProgress) -> bool,
) -> PacedProgress {
    let start = Instant::now();
    loop {
        if let Some(p) = read_progress(done) {
            if ok(&p) {
                return p;
            }
            assert_eq!(p.stopped_by, None, "{what}: the run ended early: {p:?}");
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what}: the run exited ({status}) first");
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: no progress within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn paced_run(plan: &Plan, granting: Granting, tmp: &TempDir, name: &str) -> Ran {
    let dir = tmp.sub(name);
    if let Some(prepare) = plan.prepare {
        run(&format!("{prepare} --dir {}", dir.display()));
    }
    let file = tmp.0.join(format!("{name}.allow"));
    let done = PathBuf::from(format!("{}.done", file.display()));
    let log = tmp.0.join(format!("{name}.log"));
    let lines = |upto: usize, end: bool| {
        let mut text = String::new();
        for &a in &plan.steps[..upto] {
            writeln!(text, "{}", amount(plan.unit, a)).unwrap();
        }
        if end {
            text.push_str("end\n");
        }
        text
    };
    if let Granting::AllAtOnce = granting {
        fs::write(&file, lines(plan.steps.len(), true)).unwrap();
    }
    let mut child = Command::new(BIN)
        .args(plan.args.split_whitespace())
        .args(["--dir", dir.to_str().unwrap(), "--seed", "5"])
        .args([
            "--paced",
            file.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = None;
    let mut at_step = Vec::new();
    let mut rng = match granting {
        Granting::Jittered { seed, .. } => seed | 1,
        Granting::Lockstep | Granting::AllAtOnce => 1,
    };
    if !matches!(granting, Granting::AllAtOnce) {
        let r = wait_progress(&done, &mut child, "ready", |_| true);
        assert_eq!((r.ops, r.bytes, r.done), (0, 0, 0), "{granting:?}: ready");
        ready = Some(r);
        for (k, &allowance) in plan.steps.iter().enumerate() {
            match granting {
                Granting::Lockstep => {
                    let mut f = fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&file)
                        .unwrap();
                    std::io::Write::write_all(
                        &mut f,
                        format!("{}\n", amount(plan.unit, allowance)).as_bytes(),
                    )
                    .unwrap();
                }
                Granting::Jittered { max_ms, .. } => {
                    std::thread::sleep(Duration::from_millis(xorshift(&mut rng) % (max_ms + 1)));
                    let tmp_file = tmp.0.join(format!("{name}.allow.tmp"));
                    fs::write(&tmp_file, lines(k + 1, false)).unwrap();
                    fs::rename(&tmp_file, &file).unwrap();
                }
                Granting::AllAtOnce => unreachable!("granted before the start"),
            }
            let what = format!("{granting:?} step {k} ({allowance})");
            let p = wait_progress(&done, &mut child, &what, |p| p.done >= allowance);
            if k == 0 {
                // Used up, the run waits: nothing more happens until the next grant.
                std::thread::sleep(Duration::from_millis(50));
                let still = read_progress(&done).unwrap();
                assert_eq!(still, p, "{what}: the run went past its allowance");
            }
            at_step.push(p);
        }
        fs::write(&file, lines(plan.steps.len(), true)).unwrap();
    }
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{granting:?}: the run did not end after \"end\"");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{granting:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: WorkloadSummary = serde_json::from_slice(&out.stdout).unwrap();
    let last = read_progress(&done).unwrap();
    assert_eq!(
        last.stopped_by,
        Some(StopReason::AllowanceUsed),
        "{granting:?}"
    );
    assert_eq!(
        (last.ops, last.bytes, last.writes),
        (summary.ops, summary.bytes, summary.writes)
    );
    Ran {
        summary,
        ready,
        at_step,
        log: operations(&read_log(&log)),
        tree: tree(&dir),
    }
}

/// Runs a plan under three grantings and checks they did exactly the same.
fn same_under_any_timing(plan: &Plan) {
    let tmp = TempDir::new("paced");
    let runs = [
        (
            Granting::Lockstep,
            paced_run(plan, Granting::Lockstep, &tmp, "lockstep"),
        ),
        (
            Granting::Jittered {
                seed: 7,
                max_ms: 25,
            },
            paced_run(
                plan,
                Granting::Jittered {
                    seed: 7,
                    max_ms: 25,
                },
                &tmp,
                "jittered",
            ),
        ),
        (
            Granting::AllAtOnce,
            paced_run(plan, Granting::AllAtOnce, &tmp, "at-once"),
        ),
    ];
    let last = *plan.steps.last().unwrap();
    let (_, first) = &runs[0];
    assert!(!first.log.is_empty(), "{}: nothing written", plan.args);
    for (granting, ran) in &runs {
        let s = &ran.summary;
        assert_eq!(
            (s.stopped_by, s.failure, s.error_count),
            (StopReason::AllowanceUsed, None, 0),
            "{granting:?}"
        );
        assert_eq!(
            s.paced,
            Some(Allowance {
                unit: Some(plan.unit),
                amount: last,
                end: true
            }),
            "{granting:?}"
        );
        let done = match plan.unit {
            PaceUnit::Bytes => s.bytes,
            PaceUnit::Ops => s.ops,
        };
        assert!(
            done >= last && done < last + plan.max_op,
            "{granting:?}: {done} done for {last}"
        );
        assert_eq!(ran.log, first.log, "{granting:?}: other operations");
        assert_eq!(ran.tree, first.tree, "{granting:?}: another tree");
        assert_eq!(
            (s.ops, s.bytes, s.writes, s.last_seq),
            (
                first.summary.ops,
                first.summary.bytes,
                first.summary.writes,
                first.summary.last_seq
            ),
            "{granting:?}"
        );
    }
    // The stepwise grantings saw the same progress at every step, whatever the delays.
    let (_, jittered) = &runs[1];
    assert_eq!(jittered.ready, first.ready);
    assert_eq!(jittered.at_step, first.at_step);
    for (p, &allowance) in first.at_step.iter().zip(&plan.steps) {
        assert!(
            p.done >= allowance && p.done < allowance + plan.max_op,
            "{p:?} for {allowance}"
        );
    }
}

#[test]
fn a_paced_run_does_the_same_whatever_the_grant_timing_in_bytes() {
    same_under_any_timing(&Plan {
        args: "delete-rewrite --max-file-size 256KiB",
        prepare: Some("fill --bytes 3MiB --max-file-size 256KiB --seed 3"),
        unit: PaceUnit::Bytes,
        steps: (1..=10).map(|k| k * (192 << 10)).collect(),
        max_op: 256 << 10,
    });
}

#[test]
fn a_paced_run_does_the_same_whatever_the_grant_timing_in_ops() {
    // An empty directory: the working set is made before the run says it is ready.
    same_under_any_timing(&Plan {
        args: "append --set-size 1MiB --max-write 16KiB",
        prepare: None,
        unit: PaceUnit::Ops,
        steps: (1..=8).map(|k| k * 7).collect(),
        max_op: 1,
    });
}

#[test]
fn a_paced_run_waits_for_its_first_grant_with_a_deadline() {
    let tmp = TempDir::new("paced-stall");
    let dir = tmp.sub("d");
    let file = tmp.0.join("allow");
    let out = Command::new(BIN)
        .args([
            "overwrite",
            "--dir",
            dir.to_str().unwrap(),
            "--set-size",
            "256KiB",
        ])
        .args([
            "--paced",
            file.to_str().unwrap(),
            "--paced-timeout",
            "300ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let summary: WorkloadSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary.stopped_by, StopReason::Fatal);
    assert!(
        summary.errors[0].contains("has not grown"),
        "{:?}",
        summary.errors
    );
    let last = read_progress(Path::new(&format!("{}.done", file.display()))).unwrap();
    assert_eq!(last.stopped_by, Some(StopReason::Fatal));
    assert_eq!(last.last_error.as_deref(), Some(summary.errors[0].as_str()));
}
