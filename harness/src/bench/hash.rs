//! `blockwitness bench hash`: hash and classify a 1 GiB image the way a run does, and set
//! the figure against this machine's limit, measured in the same run: the slower of
//! (a) xxh3-128 over 4 KiB blocks of an in-memory buffer on one core, times the cores the
//! hasher uses, and (b) reading the same file from the page cache in the same segments on
//! the same cores without hashing. With a hash this fast, (b) is usually the limit.
//! `sha256sum` of the same file is printed for reference (the tool a user reaches for).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::SeedableRng;

use super::{run_host, BenchError};
use crate::classify::classify_generation;
use crate::model::BackupKind;
use crate::record::{GenerationRecord, Live};

#[derive(Clone, Debug)]
pub struct BenchHashOptions {
    /// Image size in bytes (default 1 GiB).
    pub size: u64,
    /// Where the temporary image is written (default: the system temp dir).
    pub dir: PathBuf,
    /// Bytes of the in-memory buffer the single-core limit is measured on.
    pub limit_bytes: usize,
}

impl Default for BenchHashOptions {
    fn default() -> Self {
        BenchHashOptions {
            size: 1 << 30,
            dir: std::env::temp_dir(),
            limit_bytes: 256 << 20,
        }
    }
}

/// The figures of one `bench hash` run.
#[derive(Clone, Debug)]
pub struct BenchHashReport {
    pub size: u64,
    pub cores: usize,
    /// Best of the hashing runs.
    pub hash_time: Duration,
    pub classify_time: Duration,
    pub sha256sum_time: Duration,
    /// The block hash over an in-memory buffer on one core, bytes per second.
    pub hash_per_core: f64,
    /// Best time to read the image from the page cache, without hashing.
    pub read_time: Duration,
    /// The 1-minute load average when the run started: figures are noisy when other
    /// work shares the cores.
    pub load_average: Option<f64>,
}

impl BenchHashReport {
    fn rate(&self, d: Duration) -> f64 {
        self.size as f64 / d.as_secs_f64()
    }

    /// Bytes per second of hash + classify.
    pub fn ours(&self) -> f64 {
        self.rate(self.hash_time + self.classify_time)
    }

    pub fn sha256sum(&self) -> f64 {
        self.rate(self.sha256sum_time)
    }

    /// The in-memory block hash on one core times cores.
    pub fn hash_limit(&self) -> f64 {
        self.hash_per_core * self.cores as f64
    }

    /// Reading the image without hashing.
    pub fn read_limit(&self) -> f64 {
        self.rate(self.read_time)
    }

    /// The machine's limit: the slower of hashing from memory and reading the file.
    pub fn limit(&self) -> f64 {
        self.hash_limit().min(self.read_limit())
    }

    /// Ours over the limit (target: at least 0.9).
    pub fn ratio_to_limit(&self) -> f64 {
        self.ours() / self.limit()
    }

    pub fn ratio_to_sha256sum(&self) -> f64 {
        self.ours() / self.sha256sum()
    }
}

impl fmt::Display for BenchHashReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let gb = |r: f64| r / 1e9;
        write!(
            f,
            "bench hash: {} MiB image, {} core(s), page cache warm",
            self.size >> 20,
            self.cores
        )?;
        match self.load_average {
            Some(l) if l > 0.5 => writeln!(
                f,
                ", load average {l:.2} at start: other work shares the cores, figures are noisy"
            )?,
            Some(l) => writeln!(f, ", load average {l:.2}")?,
            None => writeln!(f)?,
        }
        writeln!(
            f,
            "  blockwitness hash+classify  {:>6.3} s  {:>6.2} GB/s  (hash {:.3} s, classify {:.3} s)",
            (self.hash_time + self.classify_time).as_secs_f64(),
            gb(self.ours()),
            self.hash_time.as_secs_f64(),
            self.classify_time.as_secs_f64()
        )?;
        writeln!(
            f,
            "  sha256sum (one stream)      {:>6.3} s  {:>6.2} GB/s",
            self.sha256sum_time.as_secs_f64(),
            gb(self.sha256sum())
        )?;
        writeln!(
            f,
            "  xxh3-128 of 4 KiB blocks in memory {:.2} GB/s per core x {} = {:.2} GB/s",
            gb(self.hash_per_core),
            self.cores,
            gb(self.hash_limit())
        )?;
        writeln!(
            f,
            "  reading the image, no hashing  {:>6.3} s  {:>6.2} GB/s",
            self.read_time.as_secs_f64(),
            gb(self.read_limit())
        )?;
        writeln!(
            f,
            "  limit (the slower of the two): {:.2} GB/s",
            gb(self.limit())
        )?;
        writeln!(
            f,
            "  ratio to the limit:   {:.2} (target >= 0.90)",
            self.ratio_to_limit()
        )?;
        write!(
            f,
            "  ratio to sha256sum:   {:.2}",
            self.ratio_to_sha256sum()
        )
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Reads `path` the way [`crate::hash::hash_image`] does (1 MiB segments on the rayon
/// pool) without hashing; the best of three passes.
fn read_time(path: &Path) -> Result<Duration, BenchError> {
    use rayon::prelude::*;
    use std::os::unix::fs::FileExt;
    const SEGMENT: u64 = 1 << 20;
    let err = |source| BenchError::Path {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        (0..len.div_ceil(SEGMENT))
            .into_par_iter()
            .try_for_each_init(
                || vec![0u8; SEGMENT as usize],
                |buf, i| {
                    let offset = i * SEGMENT;
                    let want = (len - offset).min(SEGMENT) as usize;
                    file.read_exact_at(&mut buf[..want], offset)
                },
            )
            .map_err(err)?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

/// The block hash's throughput on one core over `bytes` of random data in memory, bytes
/// per second (best of three passes).
pub fn hash_per_core(bytes: usize) -> f64 {
    let mut buf = vec![0u8; bytes.max(crate::model::BLOCK)];
    rand_chacha::ChaCha8Rng::seed_from_u64(0x6a5b).fill_bytes(&mut buf);
    let mut best = Duration::MAX;
    let mut sink = 0u8;
    for _ in 0..3 {
        let start = Instant::now();
        for block in buf.chunks(crate::model::BLOCK) {
            sink ^= crate::model::BlockHash::of(block).0[0];
        }
        best = best.min(start.elapsed());
    }
    std::hint::black_box(sink);
    buf.len() as f64 / best.as_secs_f64().max(1e-9)
}

fn write_image(path: &Path, size: u64) -> Result<(), BenchError> {
    let err = |source| BenchError::Path {
        path: path.to_owned(),
        source,
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    // Random data: a hasher must not profit from zeros or repeats.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xb10c);
    let mut buf = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        file.write_all(&buf[..n]).map_err(err)?;
        left -= n as u64;
    }
    file.flush().map_err(err)
}

/// Runs the benchmark. Writes and removes a temporary image of `opts.size` bytes.
pub fn bench_hash(opts: &BenchHashOptions) -> Result<BenchHashReport, BenchError> {
    if !on_path("sha256sum") {
        return Err(BenchError::MissingTool {
            tool: "sha256sum",
            package: "coreutils",
        });
    }
    let load_average = super::load_average();
    let dir = tempfile::Builder::new()
        .prefix("bw-bench-hash")
        .tempdir_in(&opts.dir)
        .map_err(|source| BenchError::Path {
            path: opts.dir.clone(),
            source,
        })?;
    let image = dir.path().join("image.raw");
    write_image(&image, opts.size)?;

    // Warm the page cache so every contender hashes from memory, not from the disk.
    let _ = crate::hash::hash_image(&image).map_err(BenchError::Hash)?;
    let mut hash_time = Duration::MAX;
    let mut truth = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        truth = crate::hash::hash_image(&image).map_err(BenchError::Hash)?;
        hash_time = hash_time.min(start.elapsed());
    }

    // Classify as a clean full backup whose every stage equals truth: the work a run
    // does per block.
    let mut g = GenerationRecord::new(1, BackupKind::Full, truth.clone());
    let column: Vec<_> = truth.iter().map(|h| Some(*h)).collect();
    g.snapshot = Some(column.clone());
    g.live = Some(vec![Live::Equal; truth.len()]);
    g.transport = Some(column.clone());
    g.target = Some(column);
    g.committed = true;
    let start = Instant::now();
    let result = classify_generation("bench", &g);
    let classify_time = start.elapsed();
    if let Some(f) = result.findings.first() {
        return Err(BenchError::Mismatch { block: f.block });
    }

    let start = Instant::now();
    let sum = run_host(Command::new("sha256sum").arg(&image))?;
    let sha256sum_time = start.elapsed();
    if sum.split_whitespace().next().is_none_or(|h| h.len() != 64) {
        return Err(BenchError::Tool {
            command: "sha256sum".into(),
            detail: format!("unexpected output {sum:?}"),
        });
    }

    let hash_per_core = hash_per_core(opts.limit_bytes);
    let read_time = read_time(&image)?;

    Ok(BenchHashReport {
        size: opts.size,
        cores: rayon::current_num_threads(),
        hash_time,
        classify_time,
        sha256sum_time,
        hash_per_core,
        read_time,
        load_average,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_measured() {
        // A real measurement on a small buffer: positive and finite.
        let r = hash_per_core(1 << 20);
        assert!(r.is_finite() && r > 1e6, "{r}");
    }

    #[test]
    fn ratios() {
        let r = BenchHashReport {
            size: 1 << 30,
            cores: 2,
            hash_time: Duration::from_millis(400),
            classify_time: Duration::from_millis(100),
            sha256sum_time: Duration::from_secs(4),
            hash_per_core: 1.0e9,
            read_time: Duration::from_millis(250),
            load_average: Some(0.1),
        };
        assert!((r.ours() - (1u64 << 30) as f64 / 0.5).abs() < 1.0);
        assert!((r.ratio_to_limit() - r.ours() / 2.0e9).abs() < 1e-9);
        assert!((r.ratio_to_sha256sum() - 8.0).abs() < 1e-9);
        assert!(r.to_string().contains("ratio to the limit"));
    }

    #[test]
    fn small_run_end_to_end() {
        let report = bench_hash(&BenchHashOptions {
            size: 16 << 20,
            limit_bytes: 4 << 20,
            ..BenchHashOptions::default()
        })
        .unwrap();
        assert!(report.ours() > 0.0 && report.limit() > 0.0 && report.sha256sum() > 0.0);
        assert!(report.to_string().contains("xxh3-128"));
    }
}
