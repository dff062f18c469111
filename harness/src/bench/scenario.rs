//! `blockwitness bench scenario`: the harness's share of a scenario's wall time, and the
//! nightly's scenario-runs per hour on this machine.
//!
//! The baseline is what any backup of the scenario's volumes costs at the least, with no
//! harness around it: the same guest booted, the same disks made and filled, every
//! backed-up volume read whole once (`dd` of the device in the same guest), shut down.
//! The scenario's run (boot to written report, the image build left out) minus that is
//! what the harness adds: the pipeline's own overhead, the recording, the truth, the
//! workloads, the hashing, the classification and the report. (The earlier baseline ran
//! the workload for as long as the backup took and then added the backup time again,
//! counting the backup twice.)

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{failed, timed_exec, BenchError};
use crate::image::BuiltImage;
use crate::qemu::Accel;
use crate::report::{Summary, SUMMARY_FILE};
use crate::run::disks;
use crate::vm::{BootOptions, Vm};

/// Figures of `bench scenario`.
pub struct ScenarioBench {
    pub accel: String,
    pub scenario: String,
    /// The scenario's run, from boot to the written report.
    pub scenario_wall: Duration,
    /// Its backup phases alone.
    pub backup: Duration,
    /// The baseline: boot, fill, `dd` of every backed-up volume, shutdown.
    pub bare_wall: Duration,
    /// Of which the `dd` reads.
    pub bare_read: Duration,
    /// The nightly's throughput, from a nightly report, when one was found.
    pub nightly: Option<NightlyRate>,
}

/// Scenario runs per hour of a real nightly (or a subset of one).
pub struct NightlyRate {
    pub report: PathBuf,
    pub runs: usize,
    pub seconds: f64,
}

impl NightlyRate {
    pub fn per_hour(&self) -> f64 {
        self.runs as f64 * 3600.0 / self.seconds.max(1e-9)
    }
}

/// The runs per hour before the harness's own overhead was cut (issue 14, measured).
pub const RUNS_PER_HOUR_BEFORE: f64 = 74.0;

impl ScenarioBench {
    /// The harness's share of the scenario's wall time: what the run costs beyond the
    /// baseline, over the run.
    pub fn harness_share(&self) -> f64 {
        let run = self.scenario_wall.as_secs_f64();
        (run - self.bare_wall.as_secs_f64()).max(0.0) / run.max(1e-9)
    }
}

impl fmt::Display for ScenarioBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Duration| d.as_secs_f64();
        writeln!(f, "bench scenario ({}, {})", self.scenario, self.accel)?;
        writeln!(
            f,
            "  scenario run (boot to report):                 {:7.1} s",
            s(self.scenario_wall)
        )?;
        writeln!(
            f,
            "    of which the backups:                        {:7.1} s",
            s(self.backup)
        )?;
        writeln!(
            f,
            "  baseline: boot + fill + dd of each volume:     {:7.1} s",
            s(self.bare_wall)
        )?;
        writeln!(
            f,
            "    of which the dd reads:                       {:7.1} s",
            s(self.bare_read)
        )?;
        write!(
            f,
            "  the harness's share of the run's wall time:    {:7.1} %  (run / baseline {:.2})",
            self.harness_share() * 100.0,
            s(self.scenario_wall) / s(self.bare_wall).max(1e-9)
        )?;
        match &self.nightly {
            Some(n) => write!(
                f,
                "\n  nightly scenario-runs per hour on this machine: {:7.1}  ({} runs in {:.0} s, {}; before: {RUNS_PER_HOUR_BEFORE:.0}, goal >= {:.0})",
                n.per_hour(),
                n.runs,
                n.seconds,
                n.report.display(),
                RUNS_PER_HOUR_BEFORE * 1.5
            ),
            None => write!(
                f,
                "\n  nightly scenario-runs per hour: no nightly report found (run `blockwitness nightly`, then pass --nightly DIR)"
            ),
        }
    }
}

fn phase_seconds(summary: &Summary, prefix: &str) -> f64 {
    summary
        .run
        .timings
        .iter()
        .filter(|t| t.phase.starts_with(prefix))
        .map(|t| t.seconds)
        .sum()
}

/// The runs and total time of a nightly's summary.json (in `dir`).
pub fn nightly_rate(dir: &Path) -> Result<NightlyRate, BenchError> {
    #[derive(serde::Deserialize)]
    struct Nightly {
        seconds: f64,
        runs: Vec<serde::de::IgnoredAny>,
    }
    let path = dir.join("summary.json");
    let text = std::fs::read(&path).map_err(|source| BenchError::Path {
        path: path.clone(),
        source,
    })?;
    let n: Nightly =
        serde_json::from_slice(&text).map_err(|e| failed(&path.display().to_string(), e))?;
    if n.runs.is_empty() {
        return Err(failed(
            &path.display().to_string(),
            "the nightly ran nothing",
        ));
    }
    Ok(NightlyRate {
        report: dir.to_path_buf(),
        runs: n.runs.len(),
        seconds: n.seconds,
    })
}

/// The newest `nightly-*` report under `reports`, if any.
pub fn latest_nightly(reports: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(reports)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("nightly-"))
                && p.join("summary.json").is_file()
        })
        .collect();
    found.sort();
    found.pop()
}

/// `bench scenario`: one run of `plan` against the baseline in the same image and
/// accelerator; `nightly` is the report whose runs per hour are quoted.
pub fn scenario(
    plan: &crate::plan::Plan,
    scenario_text: &str,
    opts: &crate::run::RunOptions,
    img: &BuiltImage,
    dir: &Path,
    nightly: Option<&Path>,
) -> Result<ScenarioBench, BenchError> {
    let result = crate::run::run_plan(plan, scenario_text, opts, &crate::events::Silent);
    if result.exit() != crate::model::Exit::Pass {
        return Err(failed(
            &format!("running {}", plan.scenario),
            format!(
                "{}: {}",
                result.verdict.name(),
                result.verdict.reasons().join("; ")
            ),
        ));
    }
    let summary: Summary =
        serde_json::from_slice(&std::fs::read(result.report_dir.join(SUMMARY_FILE))?)
            .map_err(|e| failed(SUMMARY_FILE, e))?;
    let scenario_wall = Duration::from_secs_f64(
        (summary.total_seconds - phase_seconds(&summary, "image")).max(0.0),
    );
    let backup = Duration::from_secs_f64(phase_seconds(&summary, "backup "));
    let accel = summary.run.accelerator.clone();
    let accel_used = if accel.starts_with("kvm") {
        Accel::Kvm
    } else {
        Accel::Tcg
    };

    // The baseline: same disks (made the same way), fill, dd of each volume, shutdown.
    let started = Instant::now();
    let mut opts_boot = BootOptions::new(accel_used, dir.join("bare"));
    opts_boot.memory_mb = (plan.guest.memory_bytes >> 20) as u32;
    opts_boot.cpus = plan.guest.cpus;
    opts_boot.slow = opts.slow;
    let mut fills = Vec::new();
    let mut reads = Vec::new();
    for v in &plan.volumes {
        let disk = disks::volume_disk(dir, v, plan.seed)?;
        let dev = format!(
            "$(grep -l {} /sys/block/vd*/serial | cut -d/ -f4)",
            disk.serial
        );
        if let Some(m) = &v.mount {
            fills.push(format!(
                "d={dev} && mkdir -p {m} && mount /dev/$d {m} && \
                 bw-workload fill --dir {m} --bytes {} --seed {} >/dev/null",
                v.fill_bytes, v.fill_seed
            ));
        }
        if v.backup {
            reads.push(format!(
                "d={dev} && dd if=/dev/$d of=/dev/null bs=1M 2>/dev/null"
            ));
        }
        opts_boot.disks.push(disk);
    }
    let mut vm = Vm::boot(img, opts_boot)?;
    if !fills.is_empty() {
        timed_exec(
            &mut vm,
            &["/bin/sh", "-c", &(fills.join(" && ") + " && sync")],
        )?;
    }
    // The page cache must not serve the reads: the backup reads the disk.
    timed_exec(
        &mut vm,
        &["/bin/sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"],
    )?;
    let (_, bare_read) = timed_exec(&mut vm, &["/bin/sh", "-c", &reads.join(" && ")])?;
    vm.shutdown(Duration::from_secs(60) * opts.slow_factor())?;
    let nightly = match nightly {
        Some(d) => Some(nightly_rate(d)?),
        None => latest_nightly(&opts.reports_dir).and_then(|d| nightly_rate(&d).ok()),
    };
    Ok(ScenarioBench {
        accel,
        scenario: plan.scenario.clone(),
        scenario_wall,
        backup,
        bare_wall: started.elapsed(),
        bare_read,
        nightly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_rates() {
        let b = ScenarioBench {
            accel: "tcg".into(),
            scenario: "s".into(),
            scenario_wall: Duration::from_secs(100),
            backup: Duration::from_secs(40),
            bare_wall: Duration::from_secs(30),
            bare_read: Duration::from_secs(10),
            nightly: Some(NightlyRate {
                report: "reports/nightly-1".into(),
                runs: 10,
                seconds: 360.0,
            }),
        };
        assert!((b.harness_share() - 0.7).abs() < 1e-9);
        assert!((b.nightly.as_ref().unwrap().per_hour() - 100.0).abs() < 1e-9);
        let text = b.to_string();
        assert!(text.contains("70.0 %"), "{text}");
        assert!(text.contains("100.0"), "{text}");
    }

    #[test]
    fn a_nightly_summary_gives_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("nightly-17");
        std::fs::create_dir_all(&n).unwrap();
        std::fs::write(
            n.join("summary.json"),
            r#"{"started_unix":17,"seconds":1800.0,"runs":[{},{},{}],"matrix":[]}"#,
        )
        .unwrap();
        assert_eq!(latest_nightly(dir.path()), Some(n.clone()));
        let r = nightly_rate(&n).unwrap();
        assert_eq!((r.runs, r.per_hour().round()), (3, 6.0));
        std::fs::write(n.join("summary.json"), r#"{"seconds":1.0,"runs":[]}"#).unwrap();
        assert!(nightly_rate(&n).is_err());
    }
}
