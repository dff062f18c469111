//! Scenario files (scenarios/*.toml): the schema, loading and validation.
//!
//! Loading runs in two phases. Phase one reads the TOML into a spanned tree and walks it
//! against the key table in [`keys`] (unknown keys, types, enum values, required keys),
//! then serde reads the raw structs of [`raw`]. Phase two ([`validate`]) checks units,
//! ranges and references and produces a typed [`Scenario`]. Every mistake becomes a
//! [`Diagnostic`] with file, line, column, key path and what is allowed there; all of a
//! file's mistakes are reported at once. Resolving a scenario for one seed and image is
//! `crate::plan`'s job.

pub mod error;
pub mod host;
pub mod keys;
pub mod pipeline;
pub mod raw;
pub mod tree;
pub mod units;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{Diagnostic, Location, ScenarioError};
pub use host::Host;
pub use pipeline::{Delivery, DmSnapshotSpec, ExternalSpec, LvmSpec, PipelineSpec, SnapshotSteps};
pub use raw::{
    DiskBackend, EndHow, FaultAt, Floppy, IoSchedule, LvmIncremental, Op, PipelineKind, When,
    WorkloadKind,
};
pub use units::{Pace, PaceAmount, Rate, SizeOrPercent};

use crate::model::{Exit, Expectations, FaultKind, FrameSel, Layer};

/// A validated scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The file's text, kept so the report holds the scenario exactly as run.
    pub source: String,
    pub name: String,
    pub description: String,
    pub story: String,
    pub images: Vec<String>,
    pub seed: u64,
    pub seeds: u32,
    pub timeout: Duration,
    pub guest: Guest,
    pub volumes: Vec<Volume>,
    pub workloads: Vec<Workload>,
    pub backup: BackupSpec,
    pub pipeline: PipelineSpec,
    pub faults: Vec<Fault>,
    pub expect: Expectations,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    pub memory: u64,
    pub cpus: u32,
    pub modules: Vec<String>,
    pub floppy: Floppy,
    pub hang_disk: bool,
    /// Who serves the volumes.
    pub disk: DiskBackend,
    /// The witness disk's seeded completion schedule: the most a request is held, or
    /// None for no schedule.
    pub io_max_delay: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// Bytes, a multiple of 4 KiB.
    pub size: u64,
    pub fs: Filesystem,
    /// None for a raw volume.
    pub mount: Option<String>,
    pub backup: bool,
    pub fill: SizeOrPercent,
}

impl Volume {
    /// 4 KiB blocks: the unit of recording and classification.
    pub fn blocks(&self) -> u64 {
        self.size / 4096
    }
}

/// The filesystem made on a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Filesystem {
    Ext2 { block_size: u32 },
    Ext4 { block_size: u32 },
    Xfs,
    None,
}

impl Filesystem {
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext2 { .. } => "ext2",
            Filesystem::Ext4 { .. } => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::None => "none",
        }
    }

    /// The guest kernel module that mounts it (ext2 is mounted by the ext4 driver).
    pub fn kernel_module(self) -> Option<&'static str> {
        match self {
            Filesystem::Ext2 { .. } | Filesystem::Ext4 { .. } => Some("ext4"),
            Filesystem::Xfs => Some("xfs"),
            Filesystem::None => None,
        }
    }

    /// The filesystem's block size in bytes (xfs as made by mkfs.xfs here: 4 KiB).
    pub fn block_size(self) -> Option<u32> {
        match self {
            Filesystem::Ext2 { block_size } | Filesystem::Ext4 { block_size } => Some(block_size),
            Filesystem::Xfs => Some(4096),
            Filesystem::None => None,
        }
    }

    /// Whether e2fsprogs (debugfs, e2fsck) understand it.
    pub fn is_ext(self) -> bool {
        matches!(self, Filesystem::Ext2 { .. } | Filesystem::Ext4 { .. })
    }
}

/// What a workload does, wherever and whenever it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub kind: WorkloadKind,
    pub volume: String,
    pub stamped: bool,
    /// A wall-clock rate: `before`/`between` workloads, or a `during` workload whose
    /// scenario says why in `wall_clock_reason`.
    pub rate: Option<Rate>,
    /// A rate per share of the backup's progress (`during` workloads only).
    #[serde(default)]
    pub pace: Option<Pace>,
    /// Why a `during` workload is paced by the wall clock (or not at all) instead.
    #[serde(default)]
    pub wall_clock_reason: Option<String>,
    pub amount: Option<u64>,
    pub ops: Option<u64>,
    pub duration: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    #[serde(flatten)]
    pub spec: WorkloadSpec,
    pub when: When,
    /// The backups (1 = the full) a `during` or `between` workload runs for; empty for
    /// `before`.
    pub backups: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupSpec {
    pub incrementals: u32,
    pub cow_size: SizeOrPercent,
    pub discovery_timeout: Duration,
}

impl BackupSpec {
    /// Full plus incrementals.
    pub fn count(&self) -> u32 {
        1 + self.incrementals
    }
}

/// One injected fault and the backup it is active in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// 1 = the full backup.
    pub backup: u32,
    pub spec: FaultSpec,
}

/// Every fault kind with its parameters ([`FaultKind`] names and documents them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultSpec {
    CowReadLive {
        every: u64,
    },
    DropTracking {
        every: u64,
    },
    CorruptCow {
        every: u64,
    },
    DelayCow {
        ms: u64,
    },
    DelayRead {
        ms: u64,
    },
    /// The module lets reads in flight across a snapshot's end succeed (the teardown race).
    OpenTeardown,
    DiskEio {
        at: DiskMatch,
    },
    DiskHang {
        at: DiskMatch,
    },
    DiskLatency {
        volume: String,
        op: Op,
        blocks: Option<BlockSpan>,
        max_ms: u64,
    },
    DiskTorn {
        volume: String,
        /// 4 KiB blocks of the torn write that land.
        land: u32,
    },
    BitFlip {
        frames: FrameSel,
    },
    /// A bit flip the proxy disguises by rewriting the frame's hashes and end digest.
    Rewrite {
        frames: FrameSel,
    },
    DropFrame {
        frame: u64,
    },
    Disconnect {
        after_frame: u64,
    },
    WrongOffset {
        every: u64,
    },
    SkipVerify,
    CrashBeforeCommit,
    /// The agent leaves 1 block in `every` out of a full backup.
    SkipBlocks {
        every: u64,
    },
    Reset {
        at: ResetAt,
    },
    /// Crash the guest kernel (sysrq c).
    Panic {
        at: ResetAt,
    },
    RemoveDisk {
        volume: String,
        at: FaultAt,
    },
    /// End the snapshot while a disk fault holds a read (the teardown race).
    EndSnapshot {
        volume: String,
        how: EndHow,
    },
}

/// 4 KiB blocks `first..first + count` of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpan {
    pub first: u64,
    pub count: u64,
}

/// The requests an `eio` or `hang` fault hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMatch {
    pub volume: String,
    pub op: Op,
    /// None: every block.
    pub blocks: Option<BlockSpan>,
    /// Only the first matching request.
    pub once: bool,
    /// Matching requests let through first.
    pub after_requests: u64,
}

impl FaultSpec {
    /// The kind, without its parameters.
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultSpec::CowReadLive { .. } => FaultKind::CowReadLive,
            FaultSpec::DropTracking { .. } => FaultKind::DropTracking,
            FaultSpec::CorruptCow { .. } => FaultKind::CorruptCow,
            FaultSpec::DelayCow { .. } => FaultKind::DelayCow,
            FaultSpec::DelayRead { .. } => FaultKind::DelayRead,
            FaultSpec::OpenTeardown => FaultKind::OpenTeardown,
            FaultSpec::DiskHang { .. } => FaultKind::DiskHang,
            FaultSpec::DiskEio { .. } => FaultKind::DiskEio,
            FaultSpec::DiskLatency { .. } => FaultKind::DiskLatency,
            FaultSpec::DiskTorn { .. } => FaultKind::DiskTorn,
            FaultSpec::BitFlip { .. } => FaultKind::BitFlip,
            FaultSpec::Rewrite { .. } => FaultKind::Rewrite,
            FaultSpec::DropFrame { .. } => FaultKind::DropFrame,
            FaultSpec::Disconnect { .. } => FaultKind::Disconnect,
            FaultSpec::WrongOffset { .. } => FaultKind::WrongOffset,
            FaultSpec::SkipVerify => FaultKind::SkipVerify,
            FaultSpec::CrashBeforeCommit => FaultKind::CrashBeforeCommit,
            FaultSpec::SkipBlocks { .. } => FaultKind::SkipBlocks,
            FaultSpec::Reset { .. } => FaultKind::Reset,
            FaultSpec::Panic { .. } => FaultKind::Panic,
            FaultSpec::RemoveDisk { .. } => FaultKind::RemoveDisk,
            FaultSpec::EndSnapshot { .. } => FaultKind::EndSnapshot,
        }
    }

    pub fn layer(&self) -> Layer {
        self.kind().layer()
    }

    /// For a `latency` or `hang` fault that holds reads of given blocks: the volume and
    /// the blocks (what `end-snapshot` waits for).
    pub fn held_read(&self) -> Option<(&str, BlockSpan)> {
        let (volume, op, blocks) = match self {
            FaultSpec::DiskLatency {
                volume, op, blocks, ..
            } => (volume, op, blocks),
            FaultSpec::DiskHang { at } => (&at.volume, &at.op, &at.blocks),
            FaultSpec::DiskEio { .. }
            | FaultSpec::DiskTorn { .. }
            | FaultSpec::CowReadLive { .. }
            | FaultSpec::DropTracking { .. }
            | FaultSpec::CorruptCow { .. }
            | FaultSpec::DelayCow { .. }
            | FaultSpec::DelayRead { .. }
            | FaultSpec::OpenTeardown
            | FaultSpec::BitFlip { .. }
            | FaultSpec::Rewrite { .. }
            | FaultSpec::DropFrame { .. }
            | FaultSpec::Disconnect { .. }
            | FaultSpec::WrongOffset { .. }
            | FaultSpec::SkipVerify
            | FaultSpec::CrashBeforeCommit
            | FaultSpec::SkipBlocks { .. }
            | FaultSpec::Reset { .. }
            | FaultSpec::Panic { .. }
            | FaultSpec::RemoveDisk { .. }
            | FaultSpec::EndSnapshot { .. } => return None,
        };
        match (op, blocks) {
            (Op::Read | Op::Both, Some(b)) => Some((volume, *b)),
            (Op::Write, _) | (_, None) => None,
        }
    }

    /// The volume whose witness disk a disk fault hits.
    pub fn disk_volume(&self) -> Option<&str> {
        match self {
            FaultSpec::DiskEio { at } | FaultSpec::DiskHang { at } => Some(&at.volume),
            FaultSpec::DiskLatency { volume, .. } | FaultSpec::DiskTorn { volume, .. } => {
                Some(volume)
            }
            FaultSpec::CowReadLive { .. }
            | FaultSpec::DropTracking { .. }
            | FaultSpec::CorruptCow { .. }
            | FaultSpec::DelayCow { .. }
            | FaultSpec::DelayRead { .. }
            | FaultSpec::OpenTeardown
            | FaultSpec::BitFlip { .. }
            | FaultSpec::Rewrite { .. }
            | FaultSpec::DropFrame { .. }
            | FaultSpec::Disconnect { .. }
            | FaultSpec::WrongOffset { .. }
            | FaultSpec::SkipVerify
            | FaultSpec::CrashBeforeCommit
            | FaultSpec::SkipBlocks { .. }
            | FaultSpec::Reset { .. }
            | FaultSpec::Panic { .. }
            | FaultSpec::RemoveDisk { .. }
            | FaultSpec::EndSnapshot { .. } => None,
        }
    }
}

/// When a guest reset fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetAt {
    AfterMs(u64),
    AtPercent(u8),
}

/// Loads and validates one scenario file against this host (its images, its free space).
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    load_for(path, &Host::probe())
}

/// Loads and validates one scenario file against `host`.
pub fn load_for(path: &Path, host: &Host) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_for(path, &text, host)
}

/// Validates scenario text on its own (no host checks); `path` is only used to name the
/// file in messages.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    parse_for(path, text, &Host::unchecked())
}

/// Validates scenario text against `host`.
pub fn parse_for(path: &Path, text: &str, host: &Host) -> Result<Scenario, ScenarioError> {
    let invalid = |diagnostics: Vec<Diagnostic>| ScenarioError::Invalid {
        path: path.to_owned(),
        diagnostics: diagnostics.into_iter().map(|d| d.locate(text)).collect(),
    };
    let tree = match tree::parse(text) {
        Ok(tree) => tree,
        Err((message, span)) => {
            let mut d = Diagnostic::new(
                format!("not valid TOML: {}", message.replace('\n', ": ")),
                tree::KeyPath::root(),
            )
            .with_help(
                "see https://toml.io for the syntax; strings need quotes, e.g. size = \"512MiB\"",
            );
            if let Some(span) = span {
                d = d.with_span(span);
            }
            return Err(invalid(vec![d]));
        }
    };
    let found = tree::check_schema(&tree);
    if !found.is_empty() {
        return Err(invalid(found));
    }
    // The schema walk has checked what serde checks; an error here means keys.rs and
    // raw.rs disagree, and is still reported with its position.
    let raw: raw::RawScenario = toml::from_str(text).map_err(|e| {
        let mut d = Diagnostic::new(e.message().to_owned(), tree::KeyPath::root());
        if let Some(span) = e.span() {
            d = d.with_span(span);
        }
        invalid(vec![d])
    })?;
    validate::validate(raw, &tree, path, text, host).map_err(invalid)
}

/// The result of `blockwitness check`: each file and whether it is valid.
#[derive(Debug)]
pub struct CheckReport {
    pub files: Vec<(PathBuf, Result<Scenario, ScenarioError>)>,
}

impl CheckReport {
    pub fn all_valid(&self) -> bool {
        self.files.iter().all(|(_, r)| r.is_ok())
    }

    /// How `blockwitness check` ends: pass when all are valid, a product failure when a
    /// scenario is invalid, a harness error when no scenario was found or a file could
    /// not be read.
    pub fn exit(&self) -> Exit {
        if self.files.is_empty()
            || self
                .files
                .iter()
                .any(|(_, r)| matches!(r, Err(ScenarioError::Read { .. })))
        {
            Exit::HarnessError
        } else if self.all_valid() {
            Exit::Pass
        } else {
            Exit::ProductFailure
        }
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        if self.files.is_empty() {
            return writeln!(f, "no scenario files found");
        }
        for (path, result) in &self.files {
            match result {
                Ok(s) => writeln!(
                    f,
                    "ok    {} ({}: {} volume(s), {} backup(s), {} fault(s), image(s) {})",
                    path.display(),
                    s.name,
                    s.volumes.len(),
                    s.backup.count(),
                    s.faults.len(),
                    s.images.join(", ")
                )?,
                Err(e) => {
                    writeln!(f, "FAIL  {}", path.display())?;
                    writeln!(f, "{e}")?;
                    let mut source = std::error::Error::source(e);
                    while let Some(s) = source {
                        writeln!(f, "  caused by: {s}")?;
                        source = s.source();
                    }
                }
            }
        }
        let bad = self.files.iter().filter(|(_, r)| r.is_err()).count();
        write!(
            f,
            "{} scenario(s) checked, {} invalid",
            self.files.len(),
            bad
        )
    }
}

/// Validates scenario files without booting anything, against this host. A directory
/// means every `*.toml` in it (sorted); no paths means `scenarios/`.
pub fn check(paths: &[PathBuf]) -> CheckReport {
    check_for(paths, &Host::probe())
}

/// Validates scenario files against `host`.
pub fn check_for(paths: &[PathBuf], host: &Host) -> CheckReport {
    let default = [PathBuf::from("scenarios")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match scenario_files(path) {
                Ok(found) => files.extend(found.into_iter().map(|p| {
                    let r = load_for(&p, host);
                    (p, r)
                })),
                Err(source) => files.push((
                    path.clone(),
                    Err(ScenarioError::Read {
                        path: path.clone(),
                        source,
                    }),
                )),
            }
        } else {
            files.push((path.clone(), load_for(path, host)));
        }
    }
    CheckReport { files }
}

/// The `*.toml` files of a directory, sorted.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}
