//! `blockwitness bench pipelines`: the same clean scenario under each built-in pipeline,
//! in one invocation. For each driven pipeline (dm-snapshot, LVM classic, LVM thin):
//! the backup's copy throughput against `dd` of the same snapshot device (timed right
//! after the copy, in the same guest), and the recording overhead: the copy with the
//! harness's reader beside it against the copy without it (a second run with
//! `reader = false`). The reference pipeline's backup phase is shown beside them.

use std::fmt;
use std::time::Duration;

use super::{failed, BenchError};
use crate::pipeline::driven::Figure;
use crate::plan::Plan;
use crate::report::{Summary, SUMMARY_FILE};
use crate::run::{run_plan, RunOptions};

/// The recording overhead the brief aims for.
pub const OVERHEAD_GOAL: f64 = 1.3;

/// The clean scenario every pipeline runs: a 128 MiB ext4 volume half full, stamped
/// overwrites at 1 MiB/s on the wall clock during the full backup (paced ones would hold
/// the copy at the pacing gate, and the copy's time would be the workload's).
fn scenario_text(name: &str, pipeline: &str, backup: &str) -> String {
    format!(
        r#"name = "bench-{name}"
description = "bench pipelines: {name}"
story = "data from the future"
timeout = "15m"

[guest]
memory = "1GiB"
cpus = 2

{pipeline}

[[volumes]]
name = "data"
size = "128MiB"
fill = "50%"

[[workloads]]
kind = "overwrite"
stamped = true
rate = "1MiB/s"
wall_clock_reason = "bench pipelines measures the copy's own speed: a workload paced by the backup's progress would hold the copy at its gate"
{backup}"#
    )
}

/// The snapshot space of every pipeline: room for the workload's writes, and for the
/// reference's COW file in the half-empty filesystem.
const BACKUP: &str = "\n[backup]\ncow_size = \"32MiB\"\n";

/// The pipelines measured: (name, `[pipeline]` table without `reader`).
const DRIVEN: [(&str, &str); 3] = [
    ("dm-snapshot", "[pipeline]\nkind = \"dm-snapshot\"\n"),
    ("lvm-classic", "[pipeline]\nkind = \"lvm\"\n"),
    ("lvm-thin", "[pipeline]\nkind = \"lvm\"\nthin = true\n"),
];

/// One driven pipeline's figures.
pub struct PipelineFigures {
    pub name: &'static str,
    pub bytes: u64,
    /// The copy with the reader beside it.
    pub copy_with_reader: Duration,
    /// The copy alone (`reader = false`).
    pub copy_without_reader: Duration,
    /// dd of the same snapshot device, after the copy.
    pub dd: Duration,
}

impl PipelineFigures {
    fn mib_s(&self, d: Duration) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
    }

    pub fn overhead(&self) -> f64 {
        self.copy_with_reader.as_secs_f64() / self.copy_without_reader.as_secs_f64().max(1e-9)
    }
}

/// Figures of `bench pipelines`.
pub struct PipelinesBench {
    pub accel: String,
    pub image: String,
    pub load: Option<f64>,
    pub driven: Vec<PipelineFigures>,
    /// The reference pipeline's backup phase (its own agent, target and witness).
    pub reference_backup: Duration,
}

impl fmt::Display for PipelinesBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench pipelines ({}, {}, load {})",
            self.image,
            self.accel,
            self.load.map_or("?".into(), |l| format!("{l:.1}"))
        )?;
        writeln!(
            f,
            "  {:<12} {:>10} {:>14} {:>14} {:>10} {:>9}",
            "pipeline", "MiB", "copy+reader", "copy alone", "dd", "overhead"
        )?;
        for p in &self.driven {
            writeln!(
                f,
                "  {:<12} {:>10.0} {:>9.1} MiB/s {:>9.1} MiB/s {:>5.1} MiB/s {:>8.2}x{}",
                p.name,
                p.bytes as f64 / (1 << 20) as f64,
                p.mib_s(p.copy_with_reader),
                p.mib_s(p.copy_without_reader),
                p.mib_s(p.dd),
                p.overhead(),
                if p.overhead() <= OVERHEAD_GOAL {
                    ""
                } else {
                    " (over the goal)"
                }
            )?;
        }
        writeln!(
            f,
            "  reference    backup phase {:.1} s (agent, target and witness of its own)",
            self.reference_backup.as_secs_f64()
        )?;
        write!(
            f,
            "  overhead = copy with the harness's reader / copy without it (goal <= {OVERHEAD_GOAL}x); \
             dd reads the same snapshot device alone, right after the copy"
        )
    }
}

/// Runs one scenario text and returns its summary (a run that does not pass is an error:
/// its figures would mean nothing).
fn run_one(text: &str, image: &str, opts: &RunOptions) -> Result<Summary, BenchError> {
    let s = crate::scenario::parse(std::path::Path::new("bench-pipelines.toml"), text)
        .map_err(|e| failed("the bench's scenario", e))?;
    let plan = Plan::resolve(&s, s.seed, image);
    let result = run_plan(&plan, &s.source, opts, &crate::events::Silent);
    if result.exit() != crate::model::Exit::Pass {
        return Err(failed(
            &format!("running {}", plan.scenario),
            format!(
                "{}: {} (report {})",
                result.verdict.name(),
                result.verdict.reasons().join("; "),
                result.report_dir.display()
            ),
        ));
    }
    serde_json::from_slice(&std::fs::read(result.report_dir.join(SUMMARY_FILE))?)
        .map_err(|e| failed(SUMMARY_FILE, e))
}

fn figure(summary: &Summary, fig: Figure, what: &str) -> Result<(u64, Duration), BenchError> {
    summary
        .notes
        .iter()
        .find_map(|n| fig.parse(n))
        .map(|(b, s)| (b, Duration::from_secs_f64(s)))
        .ok_or_else(|| failed(what, "the run's notes hold no such figure"))
}

/// `bench pipelines` on `image`.
pub fn pipelines(image: &str, opts: &RunOptions) -> Result<PipelinesBench, BenchError> {
    let load = super::load_average();
    let mut with_dd = opts.clone();
    with_dd.measure_dd = true;
    let mut driven = Vec::new();
    let mut accel = String::new();
    for (name, table) in DRIVEN {
        let on = run_one(
            &scenario_text(name, &format!("{table}reader = true\n"), BACKUP),
            image,
            &with_dd,
        )?;
        // "tcg (auto: why ...)": the accelerator's name is enough here.
        accel = on
            .run
            .accelerator
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let (bytes, copy_with_reader) = figure(&on, Figure::Copy, name)?;
        let (_, dd) = figure(&on, Figure::Dd, name)?;
        let off = run_one(
            &scenario_text(name, &format!("{table}reader = false\n"), BACKUP),
            image,
            opts,
        )?;
        let (_, copy_without_reader) = figure(&off, Figure::Copy, name)?;
        let p = PipelineFigures {
            name,
            bytes,
            copy_with_reader,
            copy_without_reader,
            dd,
        };
        // Each pipeline's figures as soon as they are measured: a later failure must
        // not lose them.
        eprintln!(
            "  {name}: copy with the reader {:.1} s, alone {:.1} s, dd {:.1} s ({:.2}x)",
            p.copy_with_reader.as_secs_f64(),
            p.copy_without_reader.as_secs_f64(),
            p.dd.as_secs_f64(),
            p.overhead()
        );
        driven.push(p);
    }
    let reference = run_one(&scenario_text("reference", "", BACKUP), image, opts)?;
    let reference_backup = Duration::from_secs_f64(
        reference
            .run
            .timings
            .iter()
            .filter(|t| t.phase == "backup 1")
            .map(|t| t.seconds)
            .sum(),
    );
    Ok(PipelinesBench {
        accel,
        image: image.to_string(),
        load,
        driven,
        reference_backup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bench_scenario_is_valid() {
        let parse = |text: &str| {
            crate::scenario::parse(std::path::Path::new("bench.toml"), text)
                .unwrap_or_else(|e| panic!("{e}\n{text}"))
        };
        for (name, table) in DRIVEN {
            for reader in ["true", "false"] {
                let s = parse(&scenario_text(
                    name,
                    &format!("{table}reader = {reader}\n"),
                    BACKUP,
                ));
                assert_eq!(s.pipeline.reader(), reader == "true");
            }
        }
        let s = parse(&scenario_text("reference", "", BACKUP));
        assert_eq!(s.pipeline, crate::scenario::PipelineSpec::Reference);
    }
}
