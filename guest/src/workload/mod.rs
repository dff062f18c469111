//! The seeded guest workload generator behind `bw-workload`: what the workload kinds do,
//! the run loop that executes, paces, logs and stops them, and the summary and write-log
//! records the harness reads back.
//!
//! Determinism: a kind chooses every operation from a ChaCha RNG seeded by (seed, kind,
//! writer) and from an in-memory model of the files it manages (sorted at the start, then
//! only changed by its own operations), never from timing or directory order. So the same
//! seed and arguments over the same starting state issue the same operations; a run stopped
//! by a signal or a duration issued a prefix of them.
//!
//! Stamped mode: every 4 KiB data block written is a [`crate::stamp::Stamp`] naming the
//! block's LBA on the filesystem's device. New ranges are allocated first (fallocate, or
//! zeros and fdatasync where the filesystem has no fallocate, e.g. ext2), their physical
//! blocks are looked up with FIEMAP, and the stamps are written with O_DIRECT into those
//! very blocks, so the LBA in a stamp is where the block lives. For a raw device the LBA
//! is the offset / 4096. FIEMAP offsets are relative to the filesystem's own device: the
//! harness gives each volume a whole disk, so they are disk LBAs.
//!
//! A write that blocks on a frozen filesystem just waits: no operation has a timeout.

mod args;
mod engine;
mod fiemap;
mod io;
mod kinds;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use crate::units::{parse_duration, parse_rate, parse_size};
pub use args::{ArgsError, USAGE};
pub use fiemap::{physical_blocks, FiemapError};

/// Bytes per block: the unit of every write, stamp and LBA.
pub const BLOCK: u64 = crate::stamp::BLOCK_SIZE as u64;

/// What the workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Fill,
    Overwrite,
    Append,
    DeleteRewrite,
    FillToFull,
    MetadataChurn,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Fill,
        Kind::Overwrite,
        Kind::Append,
        Kind::DeleteRewrite,
        Kind::FillToFull,
        Kind::MetadataChurn,
    ];

    /// The name used on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fill => "fill",
            Kind::Overwrite => "overwrite",
            Kind::Append => "append",
            Kind::DeleteRewrite => "delete-rewrite",
            Kind::FillToFull => "fill-to-full",
            Kind::MetadataChurn => "metadata-churn",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the workload writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A directory on a mounted filesystem.
    Dir(PathBuf),
    /// A raw block device (filesystem "none"), or a plain file standing in for one.
    Device(PathBuf),
}

pub use crate::units::Rate;

/// One workload run, as resolved from the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub kind: Kind,
    pub target: Target,
    pub seed: u64,
    /// Written into every stamp, so concurrent workloads are told apart.
    pub writer: u32,
    pub rate: Option<Rate>,
    pub duration: Option<Duration>,
    /// Data bytes to write; for `fill`, the total size of the files to create.
    pub bytes: Option<u64>,
    pub ops: Option<u64>,
    pub stamped: bool,
    /// syncfs (fsync for a device) after every N operations.
    pub sync_every: Option<u64>,
    pub log: Option<PathBuf>,
    /// Size of the files created when overwrite, append or delete-rewrite find none.
    pub set_size: u64,
    pub max_file_size: u64,
    /// Largest single overwrite or append.
    pub max_write: u64,
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal,
    Duration,
    Bytes,
    Ops,
    /// The kind finished its work (fill reached its size, a device was filled).
    Done,
    /// fill-to-full reached ENOSPC (or the end of the device): the expected end.
    Full,
    /// Too many operations failed in a row: the target is gone or broken.
    Errors,
    /// An error after which the run cannot go on (the log, or stamps that could not be
    /// placed truthfully); it is the last entry of `errors`.
    Fatal,
}

/// The JSON summary printed on stdout at the end of a run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub kind: Kind,
    pub seed: u64,
    pub writer: u32,
    pub stamped: bool,
    pub target: String,
    /// Operations completed (files created for fill, writes for overwrite, ...).
    pub ops: u64,
    /// Data bytes written by those operations.
    pub bytes: u64,
    /// 4 KiB data blocks written, setup included: the write sequence numbers used.
    pub writes: u64,
    /// Bytes of the working set created before the first operation, when there was none.
    pub setup_bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// CLOCK_MONOTONIC ns at which the first and last data writes were issued.
    pub first_write_ns: Option<u64>,
    pub last_write_ns: Option<u64>,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Distinct files written, created, renamed, chmodded, truncated or deleted.
    pub files_touched: u64,
    pub stopped_by: StopReason,
    pub error_count: u64,
    /// The first errors, as messages (at most [`MAX_ERROR_MESSAGES`]).
    pub errors: Vec<String>,
}

/// How many error messages a summary keeps; `error_count` counts them all.
pub const MAX_ERROR_MESSAGES: usize = 20;

/// One line of the write log: one 4 KiB data block written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    pub seq: u64,
    /// Block number on the device; null for an unstamped write into a file, whose
    /// placement the filesystem decides later.
    pub lba: Option<u64>,
    /// CLOCK_MONOTONIC ns when the write was issued.
    pub time_ns: u64,
    /// Path relative to the directory; null on a raw device.
    pub file: Option<String>,
    /// Byte offset in the file (or on the device).
    pub offset: u64,
    /// The operation: fill, setup, overwrite, append, rewrite, churn-create.
    pub op: String,
}

/// Why a run could not start. Errors after the start end up in the summary instead.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot open the target {path}")]
    Target {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("target {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("device {path} is smaller than one 4 KiB block")]
    DeviceTooSmall { path: PathBuf },
    #[error("invalid setting {field}: {problem}")]
    BadConfig {
        field: &'static str,
        problem: &'static str,
    },
    #[error("cannot create the write log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs a workload until its kind is done, a limit is reached, or `stop` is set (the
/// binary sets it from SIGTERM/SIGINT).
pub fn run(config: &Config, stop: &AtomicBool) -> Result<Summary, WorkloadError> {
    config.validate()?;
    engine::run(config, stop)
}

impl Config {
    /// Checks what the command line parser checks, for configs built in code.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let bad = |field, problem| Err(WorkloadError::BadConfig { field, problem });
        for (field, size) in [
            ("set_size", self.set_size),
            ("max_file_size", self.max_file_size),
            ("max_write", self.max_write),
        ] {
            if size == 0 || size % BLOCK != 0 {
                return bad(field, "must be a non-zero multiple of 4096");
            }
        }
        if matches!(self.rate, Some(Rate::BytesPerSec(0) | Rate::OpsPerSec(0))) {
            return bad("rate", "must be above zero");
        }
        if self.sync_every == Some(0) {
            return bad("sync_every", "must be above zero");
        }
        let needs_dir = !matches!(self.kind, Kind::Fill | Kind::FillToFull | Kind::Overwrite);
        if needs_dir && matches!(self.target, Target::Device(_)) {
            return bad("target", "this kind needs a directory, not a device");
        }
        Ok(())
    }
}
