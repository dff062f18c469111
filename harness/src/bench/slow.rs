//! `blockwitness bench slow`: the nightly's clean scenarios at full speed and with QEMU
//! slowed down (`--slow N`), same image and seed. Per `during` workload, the ratio of
//! the bytes it wrote slowed to at full speed (the goal is 1.00 ± 0.02: a workload paced
//! by the backup's progress writes the same on a slow machine), whether its steps were
//! the same, and whether each verdict matched. The slow-down itself is measured: the
//! backup's blocks per second against the full-speed run, and the throttle's duty.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{failed, BenchError};
use crate::model::Exit;
use crate::plan::Plan;
use crate::record::WorkloadRecord;
use crate::report::{Summary, SUMMARY_FILE};
use crate::run::{run_plan, RunOptions};
use crate::scenario::Scenario;

/// The ratio goal: a paced workload writes the same whatever the machine's speed.
pub const GOAL: f64 = 0.02;

/// What one run of a scenario measured.
#[derive(Clone, Debug)]
pub struct RunFigures {
    pub verdict: String,
    pub exit: Exit,
    pub report: PathBuf,
    pub seconds: f64,
    /// Blocks per second of the first backup.
    pub blocks_per_second: Option<f64>,
    /// The throttle's measured duty (None: not slowed).
    pub duty: Option<f64>,
    pub workloads: Vec<WorkloadRecord>,
}

/// One `during` workload of one backup, at both speeds.
#[derive(Clone, Debug)]
pub struct WorkloadPair {
    pub backup: u32,
    pub index: usize,
    pub kind: String,
    pub pacing: String,
    pub normal: Option<u64>,
    pub slow: Option<u64>,
    /// Paced workloads: whether every step's position and amount matched.
    pub same_steps: bool,
}

impl WorkloadPair {
    /// Bytes written slowed over bytes written at full speed.
    pub fn ratio(&self) -> Option<f64> {
        match (self.normal, self.slow) {
            (Some(0), Some(0)) => Some(1.0),
            (Some(n), Some(s)) if n > 0 => Some(s as f64 / n as f64),
            _ => None,
        }
    }

    pub fn within_goal(&self) -> bool {
        self.ratio().is_some_and(|r| (r - 1.0).abs() <= GOAL)
    }
}

/// A scenario at full speed and slowed.
#[derive(Clone, Debug)]
pub struct SlowPair {
    pub scenario: String,
    pub image: String,
    pub seed: u64,
    pub normal: RunFigures,
    pub slow: RunFigures,
    pub workloads: Vec<WorkloadPair>,
}

impl SlowPair {
    pub fn verdicts_match(&self) -> bool {
        self.normal.verdict == self.slow.verdict
    }

    /// How much slower the slowed backup read, as measured (full speed / slowed).
    pub fn measured_slowdown(&self) -> Option<f64> {
        match (self.normal.blocks_per_second, self.slow.blocks_per_second) {
            (Some(n), Some(s)) if s > 0.0 => Some(n / s),
            _ => None,
        }
    }
}

fn figures(report: &Path, exit: Exit, verdict: &str) -> Result<RunFigures, BenchError> {
    let path = report.join(SUMMARY_FILE);
    let text = std::fs::read(&path).map_err(|source| BenchError::Path {
        path: path.clone(),
        source,
    })?;
    let summary: Summary = serde_json::from_slice(&text).map_err(|e| failed(SUMMARY_FILE, e))?;
    Ok(RunFigures {
        verdict: verdict.to_string(),
        exit,
        report: report.to_path_buf(),
        seconds: summary.total_seconds,
        blocks_per_second: summary.speeds.first().map(|s| s.blocks_per_second()),
        duty: summary.run.slow.as_ref().map(|s| s.duty),
        workloads: summary.workloads,
    })
}

/// Runs `plan` at full speed and slowed `factor` times, and pairs up its workloads.
pub fn compare(
    plan: &Plan,
    scenario_text: &str,
    opts: &RunOptions,
    factor: u32,
) -> Result<SlowPair, BenchError> {
    let run = |slow: Option<u32>| {
        let opts = RunOptions {
            slow,
            ..opts.clone()
        };
        let r = run_plan(plan, scenario_text, &opts, &crate::events::Silent);
        figures(&r.report_dir, r.exit(), r.verdict.name())
    };
    let normal = run(None)?;
    let slow = run(Some(factor))?;
    let workloads = normal
        .workloads
        .iter()
        .map(|n| {
            let s = slow
                .workloads
                .iter()
                .find(|s| s.backup == n.backup && s.index == n.index);
            WorkloadPair {
                backup: n.backup,
                index: n.index,
                kind: n.kind.clone(),
                pacing: n.pacing.clone(),
                normal: n.bytes,
                slow: s.and_then(|s| s.bytes),
                same_steps: s.is_some_and(|s| s.steps == n.steps),
            }
        })
        .collect();
    Ok(SlowPair {
        scenario: plan.scenario.clone(),
        image: plan.image.clone(),
        seed: plan.seed,
        normal,
        slow,
        workloads,
    })
}

/// The nightly's clean scenarios: no fault, nothing expected but a clean run.
pub fn is_clean(s: &Scenario) -> bool {
    s.faults.is_empty() && s.expect.classes.is_empty() && s.expect.outcomes.is_empty()
}

/// `bench slow`'s figures.
pub struct SlowBench {
    pub factor: u32,
    pub pairs: Vec<SlowPair>,
    /// Scenarios that could not be measured, and why.
    pub errors: Vec<String>,
}

/// Runs every clean scenario of `scenarios` (filtered by name) on `image` with its
/// first seed, at full speed and slowed `factor` times.
pub fn bench_slow(
    scenarios: &[Scenario],
    image: &str,
    opts: &RunOptions,
    factor: u32,
    progress: &dyn Fn(&str),
) -> SlowBench {
    let mut pairs = Vec::new();
    let mut errors = Vec::new();
    for s in scenarios.iter().filter(|s| is_clean(s)) {
        progress(&format!(
            "{} on {image}: full speed, then slowed {factor}x",
            s.name
        ));
        let plan = Plan::resolve(s, s.seed, image);
        match compare(&plan, &s.source, opts, factor) {
            Ok(p) => pairs.push(p),
            Err(e) => errors.push(format!("{}: {}", s.name, crate::error_chain(&e))),
        }
    }
    SlowBench {
        factor,
        pairs,
        errors,
    }
}

impl fmt::Display for SlowBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench slow: clean scenarios at full speed and slowed {}x (goal: bytes ratio 1.00 ± {GOAL:.2}, same verdict)",
            self.factor
        )?;
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        for p in &self.pairs {
            writeln!(
                f,
                "  {} ({}, seed {}): verdict {} / {} {}; {:.0} s / {:.0} s; backup {} / {} blocks/s (measured slow-down {}x, QEMU duty {})",
                p.scenario,
                p.image,
                p.seed,
                p.normal.verdict,
                p.slow.verdict,
                if p.verdicts_match() { "(match)" } else { "(DIFFER)" },
                p.normal.seconds,
                p.slow.seconds,
                opt(p.normal.blocks_per_second, 0),
                opt(p.slow.blocks_per_second, 0),
                opt(p.measured_slowdown(), 2),
                opt(p.slow.duty, 2),
            )?;
            for w in &p.workloads {
                writeln!(
                    f,
                    "    backup {} workload #{} {} ({}): {} / {} bytes, ratio {}{}{}",
                    w.backup,
                    w.index,
                    w.kind,
                    w.pacing,
                    w.normal.map_or("-".into(), |b| b.to_string()),
                    w.slow.map_or("-".into(), |b| b.to_string()),
                    opt(w.ratio(), 3),
                    if w.within_goal() { "" } else { " (OFF GOAL)" },
                    if w.pacing.starts_with("wall clock") {
                        ""
                    } else if w.same_steps {
                        ", same steps"
                    } else {
                        ", steps DIFFER"
                    }
                )?;
            }
        }
        for e in &self.errors {
            writeln!(f, "  not measured: {e}")?;
        }
        let workloads: Vec<&WorkloadPair> = self.pairs.iter().flat_map(|p| &p.workloads).collect();
        let on_goal = workloads.iter().filter(|w| w.within_goal()).count();
        let matched = self.pairs.iter().filter(|p| p.verdicts_match()).count();
        write!(
            f,
            "  {on_goal}/{} workloads within 1.00 ± {GOAL:.2}; {matched}/{} verdicts matched",
            workloads.len(),
            self.pairs.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(normal: Option<u64>, slow: Option<u64>) -> WorkloadPair {
        WorkloadPair {
            backup: 1,
            index: 0,
            kind: "overwrite".into(),
            pacing: "1MiB per 4%".into(),
            normal,
            slow,
            same_steps: true,
        }
    }

    #[test]
    fn ratios_and_the_goal() {
        assert_eq!(pair(Some(100), Some(101)).ratio(), Some(1.01));
        assert!(pair(Some(100), Some(101)).within_goal());
        assert!(!pair(Some(100), Some(150)).within_goal());
        assert!(pair(Some(0), Some(0)).within_goal());
        assert_eq!(pair(Some(0), Some(5)).ratio(), None);
        assert!(!pair(None, Some(5)).within_goal());
    }
}
