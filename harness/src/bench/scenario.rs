//! `blockwitness bench scenario`: the wall time of a scenario run against a bare boot
//! with the same fill and workload.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{failed, timed_exec, BenchError};
use crate::image::BuiltImage;
use crate::qemu::Accel;
use crate::report::{Summary, SUMMARY_FILE};
use crate::run::disks;
use crate::scenario::Rate;
use crate::vm::{BootOptions, Vm};

/// Figures of `bench scenario`.
pub struct ScenarioBench {
    pub accel: String,
    pub scenario: String,
    /// The scenario's run, from boot to the written report.
    pub scenario_wall: Duration,
    /// Its backup phase alone.
    pub backup: Duration,
    /// A bare boot, the same fill and the same workload for as long as the backup ran,
    /// shutdown: no backup, no recording.
    pub bare_wall: Duration,
}

impl fmt::Display for ScenarioBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Duration| d.as_secs_f64();
        writeln!(f, "bench scenario ({}, {})", self.scenario, self.accel)?;
        writeln!(
            f,
            "  scenario run (boot to report):        {:7.1} s",
            s(self.scenario_wall)
        )?;
        writeln!(
            f,
            "  of which the backup itself:           {:7.1} s",
            s(self.backup)
        )?;
        writeln!(
            f,
            "  bare boot + fill + workload, no backup: {:5.1} s",
            s(self.bare_wall)
        )?;
        write!(
            f,
            "  ratio run / (bare + backup):          {:7.2} (target <= 1.20)",
            s(self.scenario_wall) / (s(self.bare_wall) + s(self.backup)).max(1e-9)
        )
    }
}

fn phase_seconds(summary: &Summary, phase: &str) -> f64 {
    summary
        .run
        .timings
        .iter()
        .filter(|t| t.phase == phase)
        .map(|t| t.seconds)
        .sum()
}

/// `bench scenario`: one run of `plan` against a bare run of the same boot, fill and
/// workload, same image and accelerator.
pub fn scenario(
    plan: &crate::plan::Plan,
    scenario_text: &str,
    opts: &crate::run::RunOptions,
    img: &BuiltImage,
    dir: &Path,
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
    let backup = Duration::from_secs_f64(phase_seconds(&summary, "backup 1"));
    let accel = summary.run.accelerator.clone();
    let accel_used = if accel.starts_with("kvm") {
        Accel::Kvm
    } else {
        Accel::Tcg
    };

    // The bare run: same disks (made the same way), fill, workload for `backup`, shutdown.
    let started = Instant::now();
    let mut opts_boot = BootOptions::new(accel_used, dir.join("bare"));
    opts_boot.memory_mb = (plan.guest.memory_bytes >> 20) as u32;
    opts_boot.cpus = plan.guest.cpus;
    let mut mounts = Vec::new();
    for v in &plan.volumes {
        let disk = disks::volume_disk(dir, v, plan.seed)?;
        if let Some(m) = &v.mount {
            mounts.push(format!(
                "d=$(grep -l {} /sys/block/vd*/serial | cut -d/ -f4) && mkdir -p {m} && mount /dev/$d {m} && \
                 bw-workload fill --dir {m} --bytes {} --seed {} >/dev/null",
                disk.serial, v.fill_bytes, v.fill_seed
            ));
        }
        opts_boot.disks.push(disk);
    }
    let mut vm = Vm::boot(img, opts_boot)?;
    timed_exec(&mut vm, &["/bin/sh", "-c", &mounts.join(" && ")])?;
    let step = plan
        .backups
        .first()
        .ok_or_else(|| failed("the plan", "has no backup"))?;
    let mut handles = Vec::new();
    for w in &step.during {
        let vol = plan
            .volumes
            .iter()
            .find(|v| v.name == w.spec.volume)
            .ok_or_else(|| failed("workload", "unknown volume"))?;
        let mut argv = vec![
            "/bin/bw-workload".to_string(),
            w.spec.kind.name().to_string(),
            "--dir".into(),
            vol.mount.clone().unwrap_or_default(),
            "--seed".into(),
            w.seed.to_string(),
            "--duration".into(),
            format!("{}ms", backup.as_millis()),
        ];
        if w.spec.stamped {
            argv.push("--stamped".into());
        }
        if let Some(Rate::BytesPerSec(b)) = w.spec.rate {
            argv.extend(["--rate".into(), format!("{b}/s")]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        handles.push(vm.guest.spawn(&argv).map_err(|e| failed("workload", e))?);
    }
    for h in handles {
        let _ = vm.guest.wait(h, backup + Duration::from_secs(60));
    }
    vm.shutdown(Duration::from_secs(60))?;
    Ok(ScenarioBench {
        accel,
        scenario: plan.scenario.clone(),
        scenario_wall,
        backup,
        bare_wall: started.elapsed(),
    })
}
