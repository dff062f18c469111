//! `blockwitness bench disk`: the witness disk's throughput against QEMU's own
//! virtio-blk, in one guest at the same time: two copies of the same image, one served
//! by QEMU (`-blockdev file`, cache writeback), one by `bw-disk` with its history
//! recorded. The guest runs witness-disk/tools/iobench.c (O_DIRECT, queue depth 1,
//! static, carried in on a tools disk): sequential 1 MiB reads and writes, random 4 KiB
//! reads and writes, each on both disks in ABBA order. Goal: the witness disk at 0.9 of
//! QEMU or better on each. Also prints the history's size per million requests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{failed, median, BenchError};
use crate::image::tools::{guest_dev, mount_tools, tools_disk, TOOLS_MOUNT};
use crate::image::BuiltImage;
use crate::qemu::{Accel, Disk, DiskFormat};
use crate::vm::{BootOptions, Vm};
use crate::witness::{WitnessDiskSpec, WitnessDisks};

/// The data disks' size.
const DISK_MIB: u64 = 256;
/// The goal: witness / QEMU throughput.
pub const GOAL: f64 = 0.9;

/// One access pattern: (mode, block bytes, count).
const PATTERNS: [(&str, u64, u64); 4] = [
    ("seq-read", 1 << 20, 512),
    ("seq-write", 1 << 20, 512),
    ("rand-read", 4096, 3000),
    ("rand-write", 4096, 3000),
];
/// Rounds of QEMU, witness, witness, QEMU per pattern.
const ROUNDS: usize = 3;

/// One pattern's figures, MiB/s (the median of 2 x ROUNDS runs each).
#[derive(Clone, Debug)]
pub struct Row {
    pub mode: &'static str,
    pub block: u64,
    pub qemu: f64,
    pub witness: f64,
}

/// Everything `bench disk` measured.
#[derive(Clone, Debug)]
pub struct DiskBench {
    pub accel: Accel,
    pub rows: Vec<Row>,
    /// The witness disk's history after the run.
    pub history_bytes: u64,
    pub history_requests: u64,
    /// Per request kind (op and length) with at least 1% of the requests: (kind,
    /// requests, bytes their records take).
    pub history_kinds: Vec<(String, u64, u64)>,
}

impl DiskBench {
    pub fn meets_goal(&self) -> bool {
        self.rows.iter().all(|r| r.witness / r.qemu >= GOAL)
    }
}

impl fmt::Display for DiskBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench disk ({}, O_DIRECT, queue depth 1, {DISK_MIB} MiB disks, median of {} runs \
             in ABBA order)",
            self.accel,
            2 * ROUNDS
        )?;
        writeln!(
            f,
            "  {:<11} {:>8}  {:>12}  {:>14}  ratio (goal >= {GOAL:.2})",
            "pattern", "block", "qemu MiB/s", "witness MiB/s"
        )?;
        for r in &self.rows {
            let ratio = r.witness / r.qemu.max(1e-9);
            writeln!(
                f,
                "  {:<11} {:>8}  {:>12.2}  {:>14.2}  {:.2}{}",
                r.mode,
                r.block,
                r.qemu,
                r.witness,
                ratio,
                if ratio >= GOAL { "" } else { "  BELOW GOAL" }
            )?;
        }
        writeln!(
            f,
            "  history: {} requests, {} bytes = {:.1} MB per million requests of this mix",
            self.history_requests,
            self.history_bytes,
            self.history_bytes as f64 / self.history_requests.max(1) as f64
        )?;
        for (kind, n, bytes) in &self.history_kinds {
            writeln!(
                f,
                "    {kind:<22} {n:>7} requests  {:>7.1} MB per million",
                *bytes as f64 / (*n).max(1) as f64
            )?;
        }
        Ok(())
    }
}

/// A data disk full of non-zero bytes (holes would make reads cheaper than real data).
fn data_disk(path: &Path) -> Result<(), BenchError> {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 | 1).collect();
    let mut f = std::fs::File::create(path)?;
    for _ in 0..DISK_MIB {
        std::io::Write::write_all(&mut f, &chunk)?;
    }
    f.sync_all()?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct Figure {
    mib_s: f64,
}

fn iobench(vm: &mut Vm, dev: &str, mode: &str, block: u64, count: u64) -> Result<f64, BenchError> {
    let line = vm
        .guest
        .sh(
            &format!("{TOOLS_MOUNT}/iobench /dev/{dev} {mode} {block} {count} 7"),
            Duration::from_secs(900),
        )
        .map_err(|e| failed(&format!("iobench {mode} on {dev}"), crate::error_chain(&e)))?;
    let fig: Figure = serde_json::from_str(line.trim())
        .map_err(|e| failed(&format!("iobench {mode} output {line:?}"), e))?;
    Ok(fig.mib_s)
}

/// Runs the benchmark in `dir`.
pub fn bench_disk(img: &BuiltImage, accel: Accel, dir: &Path) -> Result<DiskBench, BenchError> {
    let q0: PathBuf = dir.join("q0.raw");
    let w0: PathBuf = dir.join("w0.raw");
    data_disk(&q0)?;
    std::fs::copy(&q0, &w0)?;
    let (disks, vhost) = WitnessDisks::start(
        &[WitnessDiskSpec {
            id: "w0".into(),
            image: w0,
            serial: "bw-w0".into(),
        }],
        dir,
        2,
        None,
    )
    .map_err(|e| failed("starting the witness disk", crate::error_chain(&e)))?;
    let mut opts = BootOptions::new(accel, dir.join("run"));
    opts.disks.push(Disk {
        id: "q0".into(),
        path: q0,
        format: DiskFormat::Raw,
        serial: "bw-q0".into(),
        read_only: false,
    });
    opts.disks
        .push(tools_disk(&crate::paths::project_root(), dir)?);
    opts.vhost_disks = vhost;
    let mut vm = Vm::boot(img, opts)?;
    let qdev = guest_dev(&mut vm.guest, "bw-q0")?;
    let wdev = guest_dev(&mut vm.guest, "bw-w0")?;
    mount_tools(&mut vm.guest)?;
    let mut rows = Vec::new();
    for (mode, block, count) in PATTERNS {
        // ABBA, so a drift of the shared host over the run hits both alike; the median
        // keeps one disturbed run from deciding.
        let (mut qemu, mut witness) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            qemu.push(iobench(&mut vm, &qdev, mode, block, count)?);
            witness.push(iobench(&mut vm, &wdev, mode, block, count)?);
            witness.push(iobench(&mut vm, &wdev, mode, block, count)?);
            qemu.push(iobench(&mut vm, &qdev, mode, block, count)?);
        }
        rows.push(Row {
            mode,
            block,
            qemu: median(qemu),
            witness: median(witness),
        });
    }
    vm.shutdown(Duration::from_secs(60))?;
    let ends = disks.finish(Duration::from_secs(20));
    let end = &ends[0];
    let history = witness_disk::History::open(&end.history)
        .map_err(|e| failed("the witness disk's history", crate::error_chain(&e)))?;
    let mut kinds: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for r in &history.records {
        if let witness_disk::history::Record::Request(q) = r {
            let k = kinds
                .entry(format!("{} {}", q.op.name(), q.len))
                .or_default();
            k.0 += 1;
            k.1 += r.encoded_len() as u64;
        }
    }
    let requests = history.requests().count() as u64;
    let mut history_kinds: Vec<_> = kinds
        .into_iter()
        .filter(|(_, (n, _))| *n * 100 >= requests)
        .map(|(k, (n, b))| (k, n, b))
        .collect();
    history_kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    Ok(DiskBench {
        accel,
        rows,
        history_bytes: std::fs::metadata(&end.history)?.len(),
        history_requests: requests,
        history_kinds,
    })
}
