//! The recording of one run: for every backed-up volume and every generation, the hash of
//! each 4 KiB block at every recording point (truth, snapshot, live, source, transport,
//! target), what the pipeline claimed, and the run-level events. Classification works on
//! this and nothing else, so `blockwitness report DIR` and `diff` can reload it.
//!
//! Every stage but truth is optional as a whole ("not recorded": a pipeline without
//! witness records, or an offline diff), and per block ("not read", "never crossed").
//!
//! Saved as `recording.bwrec`: a magic line, JSON for the small fields, then per
//! generation compact binary columns. Columns are stored relative to truth (a clean
//! block costs a bit in a run-length code), truth relative to the previous generation's
//! truth; so a clean 512 MiB run's recording is its 4 MiB of truth hashes and little else.
//! The byte layout is codec.rs's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::console;
use crate::model::{BackupKind, BlockHash, Expectations, Skipped};

/// The live reads the agent made around the snapshot read of a block: one right after
/// it, or two bracketing it (a workload write between the snapshot read and a single
/// live read could otherwise turn data from the future into a corrupt snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    NotRead,
    /// Live data (read before or after the snapshot read) equal to what the snapshot
    /// device returned.
    Equal,
    /// One live read, after the snapshot read, that differed; its hash.
    Differs(BlockHash),
    /// Live reads right before and right after the snapshot read, both different from
    /// it; their hashes. A workload write between them cannot hide post-snapshot data.
    Bracketed {
        before: BlockHash,
        after: BlockHash,
    },
}

impl Live {
    /// Whether any live reading equals the snapshot's content (None: none was made).
    pub fn matches_snapshot(&self, snapshot: &BlockHash) -> Option<bool> {
        match *self {
            Live::NotRead => None,
            Live::Equal => Some(true),
            Live::Differs(h) => Some(&h == snapshot),
            Live::Bracketed { before, after } => Some(&before == snapshot || &after == snapshot),
        }
    }
}

/// Whether the harness holds its own truth for a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum TruthState {
    /// Taken at the announced instant, after the harness checked the volumes named were
    /// the ones backed up and frozen.
    #[default]
    Taken,
    /// The pipeline never announced an instant for this backup: nothing it committed
    /// can be checked.
    NeverAnnounced,
    /// Announced, and the harness did not take its truth (a harness error): why.
    NotTaken { why: String },
    /// The scenario says the product cannot announce its instant (`instant =
    /// "oracle"`): the truth is the history oracle's at the cut it found.
    AtCut { cut: Box<CutRecord> },
}

/// Which image the history oracle's cut was found on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CutImage {
    /// The product's snapshot device, as the harness's own reader read it whole.
    SnapshotDevice,
    /// The backup, as the harness re-read it at the target.
    Backup,
}

impl CutImage {
    pub const fn describe(self) -> &'static str {
        match self {
            CutImage::SnapshotDevice => "the snapshot device as the harness's reader read it",
            CutImage::Backup => "the backup as the harness re-read it",
        }
    }
}

/// One image judged at its best cut, without an announced instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutJudgement {
    /// The cut T, ns on the history's clock; None when it is before every write.
    pub cut_ns: Option<u64>,
    /// The span of equally good cuts, as text ("[a ns, b ns)").
    pub span: String,
    /// Blocks consistent at the cut, and blocks judged (not excluded).
    pub explained: u64,
    pub judged: u64,
    /// Blocks per oracle class (only classes with blocks).
    pub counts: BTreeMap<String, u64>,
    /// The first problem blocks, one line each.
    pub examples: Vec<String>,
}

impl CutJudgement {
    /// Every judged block is explained at the one cut.
    pub fn consistent(&self) -> bool {
        self.explained == self.judged
    }
}

/// The truth of a generation taken from the history oracle's cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutRecord {
    /// The image whose best cut is the truth.
    pub image: CutImage,
    pub judgement: CutJudgement,
    /// Blocks a write was in flight to at the cut, so more than one content was
    /// possible there: the truth holds the image's own content when it is one of them.
    pub in_flight: u64,
    /// The backup judged on its own, when the truth came from another image (None:
    /// nothing committed, or the backup is the image above).
    pub backup: Option<CutJudgement>,
    /// Writes whose submit time the history's adapter moved (the seeded schedule).
    pub moved_submits: u64,
}

/// A 4 KiB block the COW file covers only in part (a filesystem with smaller blocks):
/// only its COW bytes are left out, the rest is judged at the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialBlock {
    /// The COW file's byte ranges inside the block: (offset, length).
    pub cow: Vec<(u32, u32)>,
    /// Whether every byte outside them equals truth at the target (None: nothing
    /// committed to compare with).
    pub outside_equal: Option<bool>,
}

/// Where the module served a snapshot read from (its trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Cow,
    Live,
    Error,
}

/// What a part of the pipeline said about a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Claim {
    /// It said nothing (crashed, reset, never answered).
    Silent,
    Success,
    Failure(String),
}

/// Blocks left out of classification, and why (e.g. the COW file's extents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    pub reason: String,
}

/// A stamped block's evidence: the stamped pieces the backup (or snapshot) held, one per
/// filesystem block the workload wrote there (one for a whole 4 KiB piece), and the
/// pieces of the truth block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampEvidence {
    pub held: Vec<bw_guest::stamp::Piece>,
    pub truth: Vec<bw_guest::stamp::Piece>,
}

/// The target stage of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetBlock<'a> {
    /// No target re-read recorded at all.
    NotRecorded,
    /// No generation was committed.
    NotCommitted,
    /// The committed generation's block: None = the target does not hold it.
    Held(Option<&'a BlockHash>),
}

/// An incremental backup's extra record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IncrementalRecord {
    /// The blocks the agent sent (its changed-block map as read).
    pub sent: BTreeSet<u64>,
    /// The previous committed generation's blocks at the target.
    pub previous: Option<Vec<Option<BlockHash>>>,
}

/// One volume, one generation (one backup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationRecord {
    pub generation: u32,
    pub kind: BackupKind,
    pub blocks: u64,
    /// Always present: the point-in-time image's hashes.
    pub truth: Vec<BlockHash>,
    pub snapshot: Option<Vec<Option<BlockHash>>>,
    pub live: Option<Vec<Live>>,
    pub source: Option<Vec<Option<Source>>>,
    /// Blocks where some layer logged an injected fault.
    pub fault_sites: BTreeSet<u64>,
    /// Hash of the last frame that crossed the proxy for each block.
    pub transport: Option<Vec<Option<BlockHash>>>,
    /// Blocks that crossed more than once, and how many extra times.
    pub retransmits: BTreeMap<u64, u32>,
    /// The harness's re-read of the committed generation; None = not recorded.
    pub target: Option<Vec<Option<BlockHash>>>,
    pub excluded: Vec<Exclusion>,
    pub incremental: Option<IncrementalRecord>,
    pub agent: Claim,
    pub target_claim: Claim,
    /// Whether the target committed this generation.
    pub committed: bool,
    /// After a failed backup: whether the previous generation is still intact.
    pub previous_intact: Option<bool>,
    /// Guest CLOCK_MONOTONIC of the snapshot instant.
    pub snapshot_instant_ns: Option<u64>,
    pub stamps: BTreeMap<u64, StampEvidence>,
    /// Owning file (or "free space", "metadata: ...") of blocks that are not ok.
    pub owners: BTreeMap<u64, String>,
    /// Whether the harness took its own truth for this backup.
    pub truth_state: TruthState,
    /// Blocks the COW file covers in part.
    pub partial: BTreeMap<u64, PartialBlock>,
    /// Size in bytes of the image the target stored, when one was re-read.
    pub target_bytes: Option<u64>,
    /// Where the pipeline's word on its COW file disagrees with what the harness found
    /// on the truth image (a product finding).
    pub cow_findings: Vec<String>,
    /// The history oracle's judgement of this generation (witness disks only).
    pub oracle: Option<OracleRecord>,
}

/// The history oracle on one generation: the truth image at the announced instant and
/// the committed backup, each judged against the volume's write history and checked
/// against that truth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OracleRecord {
    /// The announced instant on the history's clock (ns from the backend's origin).
    pub instant_ns: u64,
    /// Writes whose submit time the history's adapter moved up to a write they
    /// overtook (the seeded schedule).
    pub moved_submits: u64,
    pub truth: OracleJudgement,
    /// None: nothing was committed to judge.
    pub backup: Option<OracleJudgement>,
}

impl OracleRecord {
    /// The oracle and the truth at the announced instant agree on every block of both.
    pub fn agrees(&self) -> bool {
        self.truth.agrees && self.backup.as_ref().is_none_or(|b| b.agrees)
    }
}

/// One image judged by the oracle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OracleJudgement {
    /// The cut T, ns on the history's clock; None when it is before every write.
    pub cut_ns: Option<u64>,
    /// The span of equally good cuts, as text ("[a ns, b ns)").
    pub span: String,
    /// Blocks consistent at the cut, and blocks judged (not excluded).
    pub explained: u64,
    pub judged: u64,
    /// Blocks per oracle class (only classes with blocks).
    pub counts: BTreeMap<String, u64>,
    /// Where the announced instant lies against the cut: in-span, in-other-best-span,
    /// outside.
    pub place: String,
    /// The instant is one of the best cuts and every block's verdict agrees with a
    /// plain comparison against the truth at the instant.
    pub agrees: bool,
    pub disagreements: u64,
    /// The first disagreements and problem blocks, one line each.
    pub examples: Vec<String>,
}

/// A witness disk of the run and what its history holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The volume it served ("" for the never-answering extra disk).
    pub volume: String,
    pub id: String,
    /// The history's file, in the report directory.
    pub history_file: String,
    pub history_bytes: u64,
    /// Whether the backend finished the history (its end record is there).
    pub complete: bool,
    /// Why it stopped recording (disconnected, shutdown, ...).
    pub end: String,
    pub records: u64,
    /// Requests by op, and by outcome.
    pub requests: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub instants: u32,
    /// Every fault armed on it: `kind spec` and how often it fired.
    pub faults: Vec<(String, u64)>,
    /// The seeded schedule, if on: "seed S, at most D us".
    pub schedule: Option<String>,
}

impl GenerationRecord {
    /// A generation with only truth recorded and nothing claimed.
    pub fn new(generation: u32, kind: BackupKind, truth: Vec<BlockHash>) -> GenerationRecord {
        GenerationRecord {
            generation,
            kind,
            blocks: truth.len() as u64,
            truth,
            snapshot: None,
            live: None,
            source: None,
            fault_sites: BTreeSet::new(),
            transport: None,
            retransmits: BTreeMap::new(),
            target: None,
            excluded: Vec::new(),
            incremental: None,
            agent: Claim::Silent,
            target_claim: Claim::Silent,
            committed: false,
            previous_intact: None,
            snapshot_instant_ns: None,
            stamps: BTreeMap::new(),
            owners: BTreeMap::new(),
            truth_state: TruthState::Taken,
            partial: BTreeMap::new(),
            target_bytes: None,
            cow_findings: Vec::new(),
            oracle: None,
        }
    }

    /// The target stage of block `b`.
    pub fn target_block(&self, b: usize) -> TargetBlock<'_> {
        match (&self.target, self.committed) {
            (_, false) => TargetBlock::NotCommitted,
            (None, true) => TargetBlock::NotRecorded,
            (Some(t), true) => TargetBlock::Held(t.get(b).and_then(|h| h.as_ref())),
        }
    }

    /// The exclusion covering block `b`, if any.
    pub fn exclusion(&self, b: u64) -> Option<&Exclusion> {
        self.excluded.iter().find(|e| e.start <= b && b < e.end)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    pub fs: String,
    pub generations: Vec<GenerationRecord>,
}

/// A post-run check the scenario asked for (fsck, remount, discovery skips).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    Fsck,
    Remount,
    SkippedFloppy,
    SkippedHangDisk,
}

impl CheckKind {
    /// The check that discovery skipped the device `s`.
    pub fn skipped(s: Skipped) -> CheckKind {
        match s {
            Skipped::Floppy => CheckKind::SkippedFloppy,
            Skipped::HangDisk => CheckKind::SkippedHangDisk,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub kind: CheckKind,
    pub passed: bool,
    pub detail: String,
}

/// Run-level events beside the blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvents {
    pub console: Vec<console::Finding>,
    pub watchdog_fired: bool,
    /// Volumes whose device disappeared during the run.
    pub vanished: Vec<String>,
    /// Infrastructure problems: never counted as a product pass or fail.
    pub harness_errors: Vec<String>,
    pub checks: Vec<CheckResult>,
    /// What happened along the way (faults injected, workload summaries, timings of
    /// the instant), in order.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Every injected fault and how often it fired, as its injecting layer counted.
    #[serde(default)]
    pub faults: Vec<FaultFired>,
    /// What each `during` workload wrote in each backup, step by step when paced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadRecord>,
    /// How fast each backup went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speeds: Vec<BackupSpeed>,
}

/// One injected fault of one backup, and how often it fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultFired {
    pub backup: u32,
    /// `layer/kind`.
    pub fault: String,
    /// Times it fired; None when its layer's count could not be read (a harness error
    /// says why).
    pub fired: Option<u64>,
    /// Who counted: the module's fault log, the proxy, bw-target's events, the agent,
    /// the run's hooks.
    pub counted_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub phase: String,
    pub seconds: f64,
}

/// What ran, where, and how to run it again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub scenario: String,
    pub scenario_file: String,
    pub seed: u64,
    pub image: String,
    pub kernel: String,
    pub packages: Vec<Package>,
    pub accelerator: String,
    pub pipeline: String,
    pub started_unix: u64,
    pub timings: Vec<Timing>,
    /// One command line that reproduces the run.
    pub repro: String,
    pub blockwitness_version: String,
    /// Set when QEMU was slowed down (`--slow N`), with what the throttle measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<SlowRecord>,
    /// Who served the volumes: "witness" or "qemu".
    #[serde(default)]
    pub disk: String,
    /// The witness disks and their histories.
    #[serde(default)]
    pub witness_disks: Vec<DiskRecord>,
}

/// Everything recorded in one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    pub run: RunInfo,
    pub expect: Expectations,
    pub volumes: Vec<VolumeRecord>,
    pub events: RunEvents,
}

/// Why a recording could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write recording {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read recording {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a blockwitness recording (bad magic)")]
    Magic { path: PathBuf },
    #[error("recording {path} is damaged at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: usize,
        what: String,
    },
    #[error("recording {path}: bad metadata")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("recording of volume {volume} generation {generation}: column {column} has {found} entries for {blocks} blocks")]
    Shape {
        volume: String,
        generation: u32,
        column: &'static str,
        found: usize,
        blocks: u64,
    },
}

/// The file name of a recording in a report directory.
pub const RECORDING_FILE: &str = "recording.bwrec";
/// Version 2: 16-byte block hashes (xxh3-128) and bracketed live reads.
const MAGIC: &[u8; 8] = b"BWREC\x00\x00\x02";

impl Recording {
    /// Checks that every column has one entry per block.
    pub fn check_shape(&self) -> Result<(), RecordError> {
        for v in &self.volumes {
            for g in &v.generations {
                let n = g.blocks;
                let shape = |column: &'static str, found: usize| {
                    if found as u64 == n {
                        Ok(())
                    } else {
                        Err(RecordError::Shape {
                            volume: v.name.clone(),
                            generation: g.generation,
                            column,
                            found,
                            blocks: n,
                        })
                    }
                };
                shape("truth", g.truth.len())?;
                if let Some(c) = &g.snapshot {
                    shape("snapshot", c.len())?;
                }
                if let Some(c) = &g.live {
                    shape("live", c.len())?;
                }
                if let Some(c) = &g.source {
                    shape("source", c.len())?;
                }
                if let Some(c) = &g.transport {
                    shape("transport", c.len())?;
                }
                if let Some(c) = &g.target {
                    shape("target", c.len())?;
                }
                if let Some(IncrementalRecord {
                    previous: Some(p), ..
                }) = &g.incremental
                {
                    shape("previous", p.len())?;
                }
            }
        }
        Ok(())
    }

    /// Writes the recording to `path` (atomically: temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), RecordError> {
        self.check_shape()?;
        let bytes = codec::encode(self);
        let err = |source| RecordError::Write {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("bwrec.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Reads a recording saved by [`Recording::save`].
    pub fn load(path: &Path) -> Result<Recording, RecordError> {
        let bytes = std::fs::read(path).map_err(|source| RecordError::Read {
            path: path.to_owned(),
            source,
        })?;
        let rec = codec::decode(path, &bytes)?;
        rec.check_shape()?;
        Ok(rec)
    }
}

mod codec;
mod pace;

pub use pace::{BackupSpeed, PaceStep, SlowRecord, WorkloadRecord};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HASH_LEN;

    fn h(n: u64) -> BlockHash {
        BlockHash::of(&n.to_le_bytes())
    }

    pub(crate) fn sample() -> Recording {
        let n = 1000u64;
        let truth: Vec<BlockHash> = (0..n).map(h).collect();
        let mut g = GenerationRecord::new(1, BackupKind::Full, truth.clone());
        let mut snap: Vec<Option<BlockHash>> = truth.iter().map(|t| Some(*t)).collect();
        snap[5] = Some(h(99_999));
        snap[6] = None;
        g.snapshot = Some(snap.clone());
        let mut live = vec![Live::Equal; n as usize];
        live[7] = Live::Differs(h(12345));
        live[8] = Live::NotRead;
        live[11] = Live::Bracketed {
            before: h(54321),
            after: h(6789),
        };
        g.live = Some(live);
        g.partial.insert(
            13,
            PartialBlock {
                cow: vec![(1024, 3072)],
                outside_equal: Some(false),
            },
        );
        g.target_bytes = Some(n * 4096 + 512);
        g.cow_findings
            .push("the module reports 3 extents, the truth image has 2".into());
        let mut source = vec![Some(Source::Cow); n as usize];
        source[3] = Some(Source::Live);
        source[4] = None;
        source[9] = Some(Source::Error);
        g.source = Some(source);
        g.fault_sites = [3, 4, 5, 500, 501, 502].into_iter().collect();
        g.transport = Some(snap);
        g.retransmits.insert(10, 2);
        g.target = Some(truth.iter().map(|t| Some(*t)).collect());
        g.committed = true;
        g.agent = Claim::Success;
        g.target_claim = Claim::Failure("verify failed".into());
        g.excluded.push(Exclusion {
            start: 100,
            end: 200,
            reason: "COW file".into(),
        });
        g.owners.insert(5, "/data/f1".into());
        let judged = OracleJudgement {
            cut_ns: Some(120),
            span: "[120 ns, 140 ns)".into(),
            explained: 999,
            judged: 1000,
            counts: [("consistent".to_string(), 999), ("corrupt".to_string(), 1)]
                .into_iter()
                .collect(),
            place: "in-span".into(),
            agrees: true,
            disagreements: 0,
            examples: vec!["block 5: corrupt".into()],
        };
        g.oracle = Some(OracleRecord {
            instant_ns: 125,
            moved_submits: 2,
            truth: judged.clone(),
            backup: Some(judged),
        });
        let mut g2 = GenerationRecord::new(2, BackupKind::Incremental, {
            let mut t = truth.clone();
            t[1] = h(777);
            t
        });
        g2.truth_state = TruthState::NotTaken {
            why: "the volume was not frozen".into(),
        };
        g2.incremental = Some(IncrementalRecord {
            sent: [1, 2, 3].into_iter().collect(),
            previous: Some(truth.iter().map(|t| Some(*t)).collect()),
        });
        Recording {
            run: RunInfo {
                run_id: "r1".into(),
                scenario: "s".into(),
                seed: 3,
                disk: "witness".into(),
                witness_disks: vec![DiskRecord {
                    volume: "data".into(),
                    id: "d0".into(),
                    history_file: "history-data.bwhist".into(),
                    history_bytes: 4096,
                    complete: true,
                    faults: vec![("{\"kind\":\"torn\",\"land\":1}".into(), 1)],
                    ..DiskRecord::default()
                }],
                ..RunInfo::default()
            },
            expect: Expectations::clean(),
            volumes: vec![VolumeRecord {
                name: "data".into(),
                fs: "ext4".into(),
                generations: vec![g, g2],
            }],
            events: RunEvents {
                watchdog_fired: true,
                faults: vec![FaultFired {
                    backup: 1,
                    fault: "module/cow-read-live".into(),
                    fired: Some(12),
                    counted_by: "the module's fault log".into(),
                }],
                workloads: vec![WorkloadRecord {
                    backup: 1,
                    index: 0,
                    writer: 1,
                    kind: "overwrite".into(),
                    volume: "data".into(),
                    pacing: "1MiB per 50%".into(),
                    steps: vec![PaceStep {
                        step: 0,
                        position: 0,
                        allowance: 1 << 20,
                        done: (1 << 20) + 4096,
                        bytes: (1 << 20) + 4096,
                        ops: 17,
                    }],
                    bytes: Some(2 << 20),
                    ops: Some(33),
                    writes: Some(600),
                    stopped_by: Some("allowance-used".into()),
                    failure: None,
                }],
                ..RunEvents::default()
            },
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORDING_FILE);
        let rec = sample();
        rec.save(&path).unwrap();
        assert_eq!(Recording::load(&path).unwrap(), rec);
    }

    #[test]
    fn clean_columns_cost_almost_nothing() {
        let mut rec = sample();
        let g = &mut rec.volumes[0].generations[0];
        g.snapshot = Some(g.truth.iter().map(|t| Some(*t)).collect());
        let bytes = codec::encode(&rec);
        // Two generations of truth (the second mostly relative) plus metadata.
        assert!(bytes.len() < 1000 * HASH_LEN + 4000, "{}", bytes.len());
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORDING_FILE);
        sample().save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(Recording::load(&path).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[0] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            Recording::load(&path),
            Err(RecordError::Magic { .. })
        ));
    }

    #[test]
    fn shape_mismatch_is_named() {
        let mut rec = sample();
        rec.volumes[0].generations[0]
            .transport
            .as_mut()
            .unwrap()
            .pop();
        let err = rec.check_shape().unwrap_err().to_string();
        assert!(err.contains("transport") && err.contains("999"), "{err}");
    }
}
