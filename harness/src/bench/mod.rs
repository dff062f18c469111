//! Benchmarks that print figures and ratios against a baseline measured in the same run.
//! Targets are reported, never asserted: a noisy machine must not fail a build.
//!
//! One file per bench: [`boot`], [`hash`], [`agent`], [`scenario`], [`cow`], [`disk`],
//! [`oracle`], [`slow`], [`pipelines`]. What they share (the error, the median, running a
//! command on the host or in the guest) is here.

pub mod agent;
pub mod boot;
pub mod cow;
pub mod disk;
pub mod hash;
pub mod oracle;
pub mod pipelines;
pub mod scenario;
pub mod slow;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub use agent::{agent, AgentBench};
pub use boot::{boot, BootBench};
pub use scenario::{scenario, ScenarioBench};

use crate::guest::GuestError;
use crate::vm::{Vm, VmError};

/// Why a benchmark could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("I/O")]
    Io(#[from] std::io::Error),
    #[error("{path}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("booting the benchmark guest")]
    Vm(#[from] VmError),
    #[error("in the benchmark guest")]
    Guest(#[from] GuestError),
    #[error("preparing the guest tools")]
    Tools(#[from] crate::image::tools::ToolsError),
    #[error("making a disk")]
    Disk(#[from] crate::run::disks::DiskError),
    #[error("`{tool}` is not installed: the bench compares against it (install with: apt-get install {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Tool { command: String, detail: String },
    #[error("hashing the benchmark image failed")]
    Hash(#[source] crate::hash::HashError),
    #[error("the oracle benchmark")]
    Oracle(#[from] oracle::BenchOracleError),
    #[error("the benchmark's own hash of block {block} differs from sha256sum's view of the file")]
    Mismatch { block: u64 },
    #[error("image {image} was built without bwsnap.ko")]
    NoModule { image: String },
    #[error("the guest benchmark script failed ({how}):\n{output}")]
    Script { how: String, output: String },
    #[error("the guest benchmark printed no figure for {mode} {setup}; output:\n{output}")]
    MissingFigure {
        mode: &'static str,
        setup: &'static str,
        output: String,
    },
    #[error("{setup} made no copies during the {mode} run: the snapshot was not active, the figure means nothing")]
    NoCopies {
        mode: &'static str,
        setup: &'static str,
    },
    #[error("the guest kernel reported trouble during the benchmark: {line}")]
    Kernel { line: String },
}

/// The median of a list (the upper one of an even count).
pub fn median<T: Copy + Default + PartialOrd>(mut xs: Vec<T>) -> T {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

/// The host's 1-minute load average: figures are noisy when other work shares the cores.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
}

pub(crate) fn failed(what: &str, detail: impl std::fmt::Display) -> BenchError {
    BenchError::Failed {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// Runs a command on the host; fails with its stderr, else returns its stdout.
fn run_host(command: &mut Command) -> Result<String, BenchError> {
    let text = format!("{command:?}").replace('"', "");
    let out = command.output().map_err(|source| BenchError::Spawn {
        command: text.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(BenchError::Tool {
            command: text,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv` in the guest and fails unless it exits 0; returns stdout and the time.
fn timed_exec(vm: &mut Vm, argv: &[&str]) -> Result<(String, Duration), BenchError> {
    let t = Instant::now();
    let done = vm
        .guest
        .exec(argv, Duration::from_secs(1800))
        .map_err(|e| failed(&argv.join(" "), e))?;
    if !done.success() {
        return Err(failed(&argv.join(" "), done.describe()));
    }
    Ok((done.stdout, t.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_the_upper_of_two() {
        assert_eq!(median(vec![3, 1, 2]), 2);
        assert_eq!(median(vec![1.0, 2.0]), 2.0);
        assert_eq!(
            median(vec![Duration::from_secs(5), Duration::from_secs(1)]),
            Duration::from_secs(5)
        );
        assert_eq!(median(Vec::<u32>::new()), 0);
    }
}
