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
//! Stamped mode: every 4 KiB data block written is made of stamped pieces
//! ([`crate::stamp::Piece`]), one per filesystem block (1, 2 or 4 KiB), each naming its
//! byte offset on the filesystem's device. New ranges are allocated first (fallocate, or
//! zeros and fdatasync where the filesystem has no fallocate, e.g. ext2), the physical
//! place of every filesystem block is looked up with FIEMAP, and the pieces are written
//! with O_DIRECT into those very blocks, so the offset in a stamp is where the piece
//! lives, whether or not the filesystem's blocks line up with 4 KiB device blocks. For a
//! raw device every 4 KiB block is one piece at offset / 4096. FIEMAP offsets are relative
//! to the filesystem's own device: the harness gives each volume a whole disk, so they
//! are disk offsets.
//!
//! Pacing: by the wall clock (`--rate`, for `before`/`between` workloads), or by the
//! backup's progress (`--paced FILE`, for `during` workloads; see paced.rs), where the
//! amount written and its order relative to the backup depend on the seed only.
//!
//! A write that blocks on a frozen filesystem just waits: no operation has a timeout.

mod args;
mod engine;
pub mod fiemap;
mod io;
mod kinds;
mod paced;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use crate::units::{parse_duration, parse_rate, parse_size};
pub use args::{ArgsError, USAGE};
pub use fiemap::{physical_pieces, FiemapError};
pub use paced::{
    parse_allowance, Allowance, AllowanceProblem, PaceUnit, PacedError, PacedProgress,
};

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
    /// Paced by the backup's progress: the allowance file (see paced.rs).
    pub paced: Option<PathBuf>,
    /// Longest wait for a paced allowance to grow before the run gives up.
    pub paced_timeout: Duration,
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
    /// A paced run used its final allowance (the allowance file said "end").
    AllowanceUsed,
    /// Too many operations failed in a row: the target is gone or broken.
    Errors,
    /// An error after which the run cannot go on (the log, or stamps that could not be
    /// placed truthfully); it is the last entry of `errors`.
    Fatal,
}

/// Why a run did not do what it was asked: the harness must not count it as a workload
/// that ran. `bw-workload` exits 1 when a summary has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// Operations failed, or the run ended on an error: `errors` says which.
    Errors,
    /// Asked to write, the run completed no operation (stopped before its first, or
    /// every one failed).
    NothingWritten,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::Errors => "the workload hit errors",
            Failure::NothingWritten => "the workload was asked to write and wrote nothing",
        })
    }
}

/// The JSON summary printed on stdout at the end of a run; the harness deserializes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadSummary {
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
    /// The allowance last read, for a paced run.
    pub paced: Option<Allowance>,
    /// Set when the run failed or did nothing it was asked to: never a clean workload.
    pub failure: Option<Failure>,
}

/// How long a paced run waits for its allowance to grow, unless told otherwise.
pub const DEFAULT_PACED_TIMEOUT: Duration = Duration::from_secs(600);

/// How many error messages a summary keeps; `error_count` counts them all.
pub const MAX_ERROR_MESSAGES: usize = 20;

/// One line of the write log: one 4 KiB data block written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    pub seq: u64,
    /// The 4 KiB device block that holds this whole block, when one does: on a raw
    /// device, or a stamped block whose pieces fill one device block in order. Null for
    /// an unstamped write into a file (the filesystem places it later) and for pieces
    /// spread over several device blocks.
    pub lba: Option<u64>,
    /// Device byte offset of each stamped piece of this block, in file order (one for a
    /// whole 4 KiB piece, four on a filesystem of 1 KiB blocks); empty when unstamped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<u64>,
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
    #[error("the filesystem of {path} has {size}-byte blocks: stamps need 1 KiB or larger, a power of two")]
    BlockSize { path: PathBuf, size: u64 },
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
pub fn run(config: &Config, stop: &AtomicBool) -> Result<WorkloadSummary, WorkloadError> {
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
        if self.paced.is_some() && self.rate.is_some() {
            return bad("rate", "a paced run has no wall-clock rate");
        }
        if self.paced.is_some() && self.duration.is_some() {
            return bad("duration", "a paced run has no wall-clock duration");
        }
        if self.paced_timeout.is_zero() {
            return bad("paced_timeout", "must be above zero");
        }
        let needs_dir = !matches!(self.kind, Kind::Fill | Kind::FillToFull | Kind::Overwrite);
        if needs_dir && matches!(self.target, Target::Device(_)) {
            return bad("target", "this kind needs a directory, not a device");
        }
        Ok(())
    }
}
