//! The history's cost, measured on the host: `bw-disk cost` drives an engine over a
//! sparse image (no guest) with a full sequential write of the volume in 1 MiB requests,
//! then an instant, then random 4 KiB writes (into the overlay) and reads (through the
//! layers), and prints the history bytes each phase added, bytes per request and per
//! million requests, and the process's peak memory.

use std::path::Path;
use std::time::Instant;

use crate::driver::{HostDriver, HostRequest};
use crate::engine::EngineConfig;
use crate::history::EndReason;
use crate::serve::ServeError;

/// One phase's figures.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub requests: u64,
    pub history_bytes: u64,
    pub seconds: f64,
}

/// Everything `bw-disk cost` measured.
#[derive(Clone, Debug)]
pub struct CostReport {
    pub disk_bytes: u64,
    pub phases: Vec<Phase>,
    pub history_total: u64,
    /// VmHWM and VmRSS of this process at the end, KiB.
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
}

impl std::fmt::Display for CostReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "witness-disk history cost, {:.1} GiB volume (host, no guest)",
            self.disk_bytes as f64 / (1u64 << 30) as f64
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "  {:<26} {:>9} requests  {:>12} bytes  {:>7.1} B/request (= MB per million)  {:>6.1}s",
                p.name,
                p.requests,
                p.history_bytes,
                p.history_bytes as f64 / p.requests.max(1) as f64,
                p.seconds
            )?;
        }
        writeln!(f, "  history file total: {} bytes", self.history_total)?;
        write!(
            f,
            "  backend memory: peak RSS {} KiB, RSS at end {} KiB (includes the test guest memory it touched, about 1 MiB)",
            self.peak_rss_kib, self.rss_kib
        )
    }
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs the three phases over a fresh sparse image of `disk_bytes` in `dir`.
pub fn measure(dir: &Path, disk_bytes: u64, random_ops: u64) -> Result<CostReport, ServeError> {
    let image = dir.join("cost.raw");
    let io = |source| ServeError::Listen {
        path: image.clone(),
        source,
    };
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(disk_bytes))
        .map_err(io)?;
    let history = dir.join("cost.history");
    let _ = std::fs::remove_dir_all(dir.join("cost.state"));
    let d = HostDriver::start(
        &image,
        &dir.join("cost.state"),
        &history,
        EngineConfig {
            serial: "cost".into(),
            max_queues: 1,
            schedule: None,
        },
    )?;
    let mut phases = Vec::new();
    let mut run = |name, requests: u64, each: &mut dyn FnMut(u64) -> HostRequest<'static>| {
        let before = d.engine.stats().history.bytes;
        let start = Instant::now();
        for i in 0..requests {
            if d.run(&each(i)) != Some(0) {
                return Err(ServeError::Invalid(format!("{name}: request {i} failed")));
            }
        }
        phases.push(Phase {
            name,
            requests,
            history_bytes: d.engine.stats().history.bytes - before,
            seconds: start.elapsed().as_secs_f64(),
        });
        Ok(())
    };
    static MIB: [u8; 1 << 20] = [0x5A; 1 << 20];
    run("sequential 1 MiB writes", disk_bytes >> 20, &mut |i| {
        HostRequest::Write {
            offset: i << 20,
            data: &MIB,
        }
    })?;
    // An instant: the random phases then write to an overlay (copy-on-write, a bitmap)
    // and read through the layers, as after a backup's instant.
    d.engine.instant("cost").map_err(ServeError::Layers)?;
    let blocks = disk_bytes / 4096;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % blocks
    };
    run("random 4 KiB writes", random_ops, &mut |_| {
        HostRequest::Write {
            offset: next() * 4096,
            data: &MIB[..4096],
        }
    })?;
    run("random 4 KiB reads", random_ops, &mut |_| {
        HostRequest::Read {
            offset: next() * 4096,
            len: 4096,
        }
    })?;
    d.engine.finish(EndReason::Shutdown)?;
    let report = CostReport {
        disk_bytes,
        phases,
        history_total: std::fs::metadata(&history).map_or(0, |m| m.len()),
        peak_rss_kib: status_kib("VmHWM:"),
        rss_kib: status_kib("VmRSS:"),
    };
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_dir_all(dir.join("cost.state"));
    Ok(report)
}
