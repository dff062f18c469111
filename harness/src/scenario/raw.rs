//! The scenario file as serde reads it: every key optional where the schema has a default,
//! units still as strings. Nothing here is checked beyond TOML types; `validate.rs` turns
//! it into a [`super::Scenario`]. Field names and enum values must match `keys.rs`; a test
//! holds them together.

use serde::Deserialize;

use crate::model::{BlockClass, Layer, Outcome, Skipped, Where};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub name: String,
    pub description: String,
    pub story: String,
    pub images: Option<Vec<String>>,
    pub seed: Option<u64>,
    pub seeds: Option<u64>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub guest: RawGuest,
    pub volumes: Vec<RawVolume>,
    #[serde(default)]
    pub workloads: Vec<RawWorkload>,
    #[serde(default)]
    pub backup: RawBackup,
    pub pipeline: Option<RawPipeline>,
    #[serde(default)]
    pub faults: Vec<RawFault>,
    #[serde(default)]
    pub expect: RawExpect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuest {
    pub memory: Option<String>,
    pub cpus: Option<u64>,
    pub modules: Option<Vec<String>>,
    pub floppy: Option<Floppy>,
    pub hang_disk: Option<bool>,
    pub disk: Option<DiskBackend>,
    pub io_schedule: Option<IoSchedule>,
    pub io_max_delay: Option<String>,
}

/// Who serves the guest's volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBackend {
    /// The witness disk (`bw-disk`): every request recorded, truth from its layers,
    /// disk faults, the seeded schedule.
    Witness,
    /// QEMU's own block layer: QMP snapshots for the truth (kept for comparison).
    Qemu,
}

impl DiskBackend {
    pub fn name(self) -> &'static str {
        match self {
            DiskBackend::Witness => "witness",
            DiskBackend::Qemu => "qemu",
        }
    }
}

/// How the witness disk completes requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoSchedule {
    /// As soon as they are done.
    Off,
    /// Each held for a delay drawn from the run's seed, so races replay.
    Seeded,
}

/// The floppy controller a guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Floppy {
    None,
    Empty,
    Media,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    pub name: String,
    pub size: String,
    pub fs: Option<FsKind>,
    pub block_size: Option<u64>,
    pub mount: Option<String>,
    pub backup: Option<bool>,
    pub fill: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsKind {
    Ext2,
    Ext4,
    Xfs,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    pub kind: WorkloadKind,
    pub volume: Option<String>,
    pub stamped: Option<bool>,
    pub rate: Option<String>,
    pub wall_clock_reason: Option<String>,
    pub amount: Option<String>,
    pub ops: Option<u64>,
    pub duration: Option<String>,
    pub when: Option<When>,
    pub backups: Option<Vec<u64>>,
}

/// What a workload does (bw-workload's kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    Overwrite,
    Append,
    DeleteRewrite,
    FillToFull,
    MetadataChurn,
}

impl WorkloadKind {
    /// The name bw-workload takes on its command line.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Overwrite => "overwrite",
            WorkloadKind::Append => "append",
            WorkloadKind::DeleteRewrite => "delete-rewrite",
            WorkloadKind::FillToFull => "fill-to-full",
            WorkloadKind::MetadataChurn => "metadata-churn",
        }
    }
}

/// When a workload runs relative to the backups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    Before,
    During,
    Between,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub incrementals: Option<u64>,
    pub cow_size: Option<String>,
    pub discovery_timeout: Option<String>,
    /// The short form of `[pipeline] kind`.
    pub pipeline: Option<PipelineKind>,
}

/// Which pipeline is under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineKind {
    /// bwsnap, bw-agent and bw-target.
    Reference,
    /// The kernel's dm snapshot target, driven with dmsetup.
    DmSnapshot,
    /// LVM2 snapshots, classic or thin.
    Lvm,
    /// A vendor's product, driven by the scenario's commands.
    External,
}

impl PipelineKind {
    pub const ALL: [PipelineKind; 4] = [
        PipelineKind::Reference,
        PipelineKind::DmSnapshot,
        PipelineKind::Lvm,
        PipelineKind::External,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PipelineKind::Reference => "reference",
            PipelineKind::DmSnapshot => "dm-snapshot",
            PipelineKind::Lvm => "lvm",
            PipelineKind::External => "external",
        }
    }
}

/// `[pipeline]`: the kind and its keys (which keys a kind takes is checked in
/// `validate.rs`, from the table in `keys.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub kind: PipelineKind,
    pub reader: Option<bool>,
    pub persistent: Option<bool>,
    pub chunk_size: Option<String>,
    pub thin: Option<bool>,
    pub incremental: Option<LvmIncremental>,
    pub dir: Option<String>,
    pub build: Option<String>,
    pub build_timeout: Option<String>,
    pub modules: Option<Vec<String>>,
    pub step_timeout: Option<String>,
    pub scratch_disk: Option<String>,
    pub cow_file: Option<String>,
    pub cow_file_max: Option<String>,
    pub instant: Option<InstantSource>,
    pub commands: Option<RawCommands>,
}

/// Where an external product's snapshot instant, and so its truth, comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstantSource {
    /// The product's steps give it: the harness's truth between `setup` and `thaw`, or
    /// when `snapshot` runs `bw-pipe instant`.
    Announced,
    /// The product cannot announce it: the truth is the history oracle's, at the cut
    /// that explains the backup (witness disks only).
    Oracle,
}

/// How an LVM pipeline makes its incrementals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LvmIncremental {
    /// The changed blocks between two thin snapshots (thin_delta).
    ThinDelta,
    /// The whole snapshot again.
    Full,
}

/// `[pipeline.commands]`: an external product's steps, as guest shell commands.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommands {
    pub prepare: Option<String>,
    pub freeze: Option<String>,
    pub setup: Option<String>,
    pub thaw: Option<String>,
    pub snapshot: Option<String>,
    pub device: Option<String>,
    pub stream: Option<String>,
    pub copy: Option<String>,
    pub changed: Option<String>,
    pub transition: Option<String>,
    pub destroy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub layer: Layer,
    pub kind: String,
    pub backup: Option<u64>,
    pub every: Option<u64>,
    pub frame: Option<u64>,
    pub after_frame: Option<u64>,
    pub ms: Option<u64>,
    pub after_ms: Option<u64>,
    pub at_percent: Option<u64>,
    pub volume: Option<String>,
    pub op: Option<Op>,
    pub block: Option<u64>,
    pub once: Option<bool>,
    pub at: Option<FaultAt>,
    pub blocks: Option<u64>,
    pub after_requests: Option<u64>,
    pub max_ms: Option<u64>,
    pub land: Option<u64>,
    pub how: Option<EndHow>,
}

/// How `end-snapshot` ends a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndHow {
    /// bwsnap's TO_INCREMENTAL: the agent's own transition after a backup.
    ToIncremental,
    /// bwsnap's DESTROY.
    Destroy,
}

impl EndHow {
    /// The bwsnap-ctl subcommand.
    pub fn command(self) -> &'static str {
        match self {
            EndHow::ToIncremental => "to-incremental",
            EndHow::Destroy => "destroy",
        }
    }
}

/// Which disk requests a disk fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Read,
    Write,
    /// Reads and writes.
    Both,
}

/// The moment of a backup a guest fault fires at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAt {
    Freeze,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub classes: Option<Vec<BlockClass>>,
    pub allow_clean: Option<bool>,
    pub outcomes: Option<Vec<Outcome>>,
    pub allow_outcomes: Option<Vec<Outcome>>,
    pub at: Option<Where>,
    pub named_writes: Option<bool>,
    pub fsck: Option<bool>,
    pub remount: Option<bool>,
    pub skipped: Option<Vec<Skipped>>,
}
