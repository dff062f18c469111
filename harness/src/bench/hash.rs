//! `blockwitness bench hash`: hash and classify a 1 GiB image the way a run does, and set
//! the figure against `sha256sum` of the same file and against this machine's sha256
//! limit, measured in the same run as `openssl speed -evp sha256` on one core times the
//! cores the hasher uses. Needs openssl and sha256sum on the host; a missing tool is an
//! error naming the package, never a silently skipped comparison.

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
    /// Seconds `openssl speed` runs for.
    pub openssl_seconds: u32,
}

impl Default for BenchHashOptions {
    fn default() -> Self {
        BenchHashOptions {
            size: 1 << 30,
            dir: std::env::temp_dir(),
            openssl_seconds: 3,
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
    /// openssl's single-core sha256 throughput, bytes per second.
    pub openssl_per_core: f64,
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

    /// The machine's limit: openssl per core times cores.
    pub fn limit(&self) -> f64 {
        self.openssl_per_core * self.cores as f64
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
            "  limit: openssl speed -evp sha256 {:.2} GB/s per core x {} = {:.2} GB/s",
            gb(self.openssl_per_core),
            self.cores,
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

/// Reads the sha256 figure (in 1000s of bytes per second) from `openssl speed` output.
pub fn parse_openssl_speed(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.trim_start().to_ascii_lowercase().starts_with("sha256"))?;
    let last = line.split_whitespace().last()?;
    let kilo: f64 = last.strip_suffix('k').unwrap_or(last).parse().ok()?;
    Some(kilo * 1000.0)
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
    for (tool, package) in [("openssl", "openssl"), ("sha256sum", "coreutils")] {
        if !on_path(tool) {
            return Err(BenchError::MissingTool { tool, package });
        }
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

    let speed = run_host(Command::new("openssl").args([
        "speed",
        "-evp",
        "sha256",
        "-bytes",
        "4096",
        "-seconds",
        &opts.openssl_seconds.to_string(),
    ]))?;
    let openssl_per_core =
        parse_openssl_speed(&speed).ok_or_else(|| BenchError::OpensslOutput {
            output: speed.clone(),
        })?;

    Ok(BenchHashReport {
        size: opts.size,
        cores: rayon::current_num_threads(),
        hash_time,
        classify_time,
        sha256sum_time,
        openssl_per_core,
        load_average,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openssl_speed_output() {
        let out = "The 'numbers' are in 1000s of bytes per second processed.\n\
                   type           4096 bytes\nsha256         1695482.45k\n";
        assert_eq!(parse_openssl_speed(out), Some(1_695_482_450.0));
        assert_eq!(parse_openssl_speed("nothing here"), None);
    }

    #[test]
    fn ratios() {
        let r = BenchHashReport {
            size: 1 << 30,
            cores: 2,
            hash_time: Duration::from_millis(400),
            classify_time: Duration::from_millis(100),
            sha256sum_time: Duration::from_secs(4),
            openssl_per_core: 1.0e9,
            load_average: Some(0.1),
        };
        assert!((r.ours() - (1u64 << 30) as f64 / 0.5).abs() < 1.0);
        assert!((r.ratio_to_limit() - r.ours() / 2.0e9).abs() < 1e-9);
        assert!((r.ratio_to_sha256sum() - 8.0).abs() < 1e-9);
        assert!(r.to_string().contains("ratio to the limit"));
    }

    #[test]
    fn small_run_end_to_end() {
        if !on_path("openssl") {
            // The error path is the product here: say what is missing.
            let err = bench_hash(&BenchHashOptions::default()).unwrap_err();
            assert!(err.to_string().contains("apt-get install openssl"));
            return;
        }
        let report = bench_hash(&BenchHashOptions {
            size: 16 << 20,
            openssl_seconds: 1,
            ..BenchHashOptions::default()
        })
        .unwrap();
        assert!(report.ours() > 0.0 && report.limit() > 0.0 && report.sha256sum() > 0.0);
    }
}
