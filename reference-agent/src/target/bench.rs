//! The benchmark hook for `blockwitness bench agent`: stream N MiB of blocks through a
//! real `bw-target` process over a unix socket and time the session, from the first byte
//! to the committed result (the target's fsync and verification re-read included).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::sender::{BlockSource, SendError, SendStats, Sender, SenderOptions, SessionSpec};
use crate::transport::Address;
use crate::wire::SessionId;

/// What one ingest run measured.
#[derive(Debug, Clone)]
pub struct IngestBench {
    pub bytes: u64,
    pub duration: Duration,
    pub stats: SendStats,
}

impl IngestBench {
    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("start {bin}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bw-target did not report that it listens within {0:?}")]
    NotListening(Duration),
    #[error("create the benchmark directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("session through bw-target")]
    Send(#[from] SendError),
}

/// Incompressible, non-zero blocks that differ from each other.
pub struct PatternSource {
    pattern: Vec<u8>,
    block_size: usize,
}

impl PatternSource {
    pub fn new(block_size: u32) -> PatternSource {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let pattern = (0..(1usize << 20) + block_size as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        PatternSource {
            pattern,
            block_size: block_size as usize,
        }
    }

    /// The content of block `block` (what a test or the harness expects to find stored).
    pub fn fill(&self, block: u64, out: &mut [u8]) {
        let start = (block as usize * 4099) % (1 << 20);
        out.copy_from_slice(&self.pattern[start..start + out.len()]);
        let tag = block.to_le_bytes();
        let n = tag.len().min(out.len());
        out[..n].copy_from_slice(&tag[..n]);
    }
}

impl BlockSource for PatternSource {
    fn read_blocks(&mut self, first_block: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let bs = self.block_size;
        for (i, b) in buf.chunks_mut(bs).enumerate() {
            self.fill(first_block + i as u64, b);
        }
        Ok(())
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // The benchmark's own child: stop and reap it whatever happened.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `target_bin serve` with a store under `work_dir`, sends `mib` MiB as one full
/// session of 4 KiB blocks over a unix socket, and returns the timing.
pub fn bench_ingest(
    target_bin: &Path,
    mib: u64,
    work_dir: &Path,
) -> Result<IngestBench, BenchError> {
    let store = work_dir.join("bench-store");
    let sock = work_dir.join("bench-target.sock");
    std::fs::create_dir_all(work_dir).map_err(|source| BenchError::Dir {
        path: work_dir.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_dir_all(&store);
    let mut child = Command::new(target_bin)
        .arg("serve")
        .arg("--store")
        .arg(&store)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            bin: target_bin.to_path_buf(),
            source,
        })?;
    let stdout = child.stdout.take();
    let guard = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    if let Some(out) = stdout {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let wait = Duration::from_secs(10);
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("\"listening\"") => break,
            Ok(_) => {}
            Err(_) => return Err(BenchError::NotListening(wait)),
        }
    }
    let block_size = 4096u32;
    let spec = SessionSpec::full(
        SessionId::random().unwrap_or(SessionId([0x42; 16])),
        "bench",
        mib.max(1) << 20,
        block_size,
        1,
    );
    let mut source = PatternSource::new(block_size);
    let mut sender = Sender::new(Address::Unix(sock), SenderOptions::default());
    let start = Instant::now();
    sender.send(&spec, &mut source)?;
    let duration = start.elapsed();
    let stats = sender.stats().clone();
    drop(sender);
    drop(guard);
    let _ = std::fs::remove_dir_all(&store);
    Ok(IngestBench {
        bytes: spec.volume_size,
        duration,
        stats,
    })
}
