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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scenario::Expectations;

/// Size of the unit everything is recorded and classified in.
pub const BLOCK: usize = 4096;

/// xxh3-128 (seed 0) of one 4 KiB block, as the 16 little-endian bytes of the value:
/// the same hash the reference pipeline's wire protocol and witness carry, so truth, the
/// target re-read and the pipeline's recordings compare directly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 16]);

impl BlockHash {
    pub fn of(data: &[u8]) -> BlockHash {
        BlockHash(xxhash_rust::xxh3::xxh3_128(data).to_le_bytes())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits: enough to tell blocks apart in a table.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }

    pub fn from_hex(text: &str) -> Option<BlockHash> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(BlockHash(out))
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

impl Serialize for BlockHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for BlockHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BlockHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 32 hex digits"))
    }
}

/// The live reads the agent made around the snapshot read of a block.
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

/// Where the module served a snapshot read from (its trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Cow,
    Live,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    Full,
    Incremental,
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

/// A stamped block's evidence: the stamp the backup (or snapshot) held, and the stamp of
/// the truth block when it had one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampEvidence {
    pub held: bw_guest::stamp::Stamp,
    pub truth: Option<bw_guest::stamp::Stamp>,
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

/// Kernel trouble on the guest console (the console module scans for it).
pub use crate::console::{Finding as ConsoleFinding, Trouble as ConsoleKind};

/// Scans a guest console log for oops, BUG, WARNING, lockdep, panic and hung-task lines.
pub fn scan_console(text: &str) -> Vec<ConsoleFinding> {
    crate::console::scan(text)
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub kind: CheckKind,
    pub passed: bool,
    pub detail: String,
}

/// Run-level events beside the blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvents {
    pub console: Vec<ConsoleFinding>,
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

mod codec {
    //! The binary layout: MAGIC, varint length + JSON of [`Meta`], then for each volume and
    //! generation: varint length + JSON of [`GenMeta`] and the columns it says are present.
    //! A column of optional hashes is a run-length list of (tag, count) with tag 0 = none,
    //! 1 = equal to the reference, 2 = explicit (16 bytes each, after the runs). The live
    //! column's tag 3 carries two hashes (before, after).

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Meta {
        run: RunInfo,
        expect: Expectations,
        events: RunEvents,
        volumes: Vec<VolMeta>,
    }

    #[derive(Serialize, Deserialize)]
    struct VolMeta {
        name: String,
        fs: String,
        generations: usize,
    }

    #[derive(Serialize, Deserialize)]
    struct GenMeta {
        generation: u32,
        kind: BackupKind,
        blocks: u64,
        has_snapshot: bool,
        has_live: bool,
        has_source: bool,
        has_transport: bool,
        has_target: bool,
        incremental: bool,
        has_previous: bool,
        retransmits: BTreeMap<u64, u32>,
        excluded: Vec<Exclusion>,
        agent: Claim,
        target_claim: Claim,
        committed: bool,
        previous_intact: Option<bool>,
        snapshot_instant_ns: Option<u64>,
        stamps: BTreeMap<u64, StampEvidence>,
        owners: BTreeMap<u64, String>,
    }

    pub fn encode(rec: &Recording) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let meta = Meta {
            run: rec.run.clone(),
            expect: rec.expect.clone(),
            events: rec.events.clone(),
            volumes: rec
                .volumes
                .iter()
                .map(|v| VolMeta {
                    name: v.name.clone(),
                    fs: v.fs.clone(),
                    generations: v.generations.len(),
                })
                .collect(),
        };
        put_json(&mut out, &meta);
        for v in &rec.volumes {
            let mut prev_truth: Option<&[BlockHash]> = None;
            for g in &v.generations {
                let gm = GenMeta {
                    generation: g.generation,
                    kind: g.kind,
                    blocks: g.blocks,
                    has_snapshot: g.snapshot.is_some(),
                    has_live: g.live.is_some(),
                    has_source: g.source.is_some(),
                    has_transport: g.transport.is_some(),
                    has_target: g.target.is_some(),
                    incremental: g.incremental.is_some(),
                    has_previous: g.incremental.as_ref().is_some_and(|i| i.previous.is_some()),
                    retransmits: g.retransmits.clone(),
                    excluded: g.excluded.clone(),
                    agent: g.agent.clone(),
                    target_claim: g.target_claim.clone(),
                    committed: g.committed,
                    previous_intact: g.previous_intact,
                    snapshot_instant_ns: g.snapshot_instant_ns,
                    stamps: g.stamps.clone(),
                    owners: g.owners.clone(),
                };
                put_json(&mut out, &gm);
                // Truth relative to the previous generation's truth, when lengths agree.
                match prev_truth.filter(|p| p.len() == g.truth.len()) {
                    Some(p) => {
                        out.push(1);
                        let opt: Vec<Option<BlockHash>> =
                            g.truth.iter().map(|h| Some(*h)).collect();
                        put_hashes(&mut out, &opt, p);
                    }
                    None => {
                        out.push(0);
                        for h in &g.truth {
                            out.extend_from_slice(&h.0);
                        }
                    }
                }
                prev_truth = Some(&g.truth);
                if let Some(c) = &g.snapshot {
                    put_hashes(&mut out, c, &g.truth);
                }
                if let Some(c) = &g.live {
                    let tags: Vec<(u8, Option<BlockHash>)> = c
                        .iter()
                        .map(|l| match l {
                            Live::NotRead => (0, None),
                            Live::Equal => (1, None),
                            Live::Differs(h) => (2, Some(*h)),
                            Live::Bracketed { before, .. } => (3, Some(*before)),
                        })
                        .collect();
                    put_tagged(&mut out, &tags);
                    // The second hash of each bracketed read, in block order.
                    for l in c {
                        if let Live::Bracketed { after, .. } = l {
                            out.extend_from_slice(&after.0);
                        }
                    }
                }
                if let Some(c) = &g.source {
                    let tags: Vec<(u8, Option<BlockHash>)> = c
                        .iter()
                        .map(|s| match s {
                            None => (0, None),
                            Some(Source::Cow) => (1, None),
                            Some(Source::Live) => (2, None),
                            Some(Source::Error) => (3, None),
                        })
                        .collect();
                    put_tagged(&mut out, &tags);
                }
                put_set(&mut out, &g.fault_sites);
                if let Some(c) = &g.transport {
                    put_hashes(&mut out, c, &g.truth);
                }
                if let Some(c) = &g.target {
                    put_hashes(&mut out, c, &g.truth);
                }
                if let Some(inc) = &g.incremental {
                    put_set(&mut out, &inc.sent);
                    if let Some(p) = &inc.previous {
                        put_hashes(&mut out, p, &g.truth);
                    }
                }
            }
        }
        out
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn put_json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
        // Serializing plain structs of strings, numbers and maps with string-able keys
        // cannot fail.
        let json = serde_json::to_vec(value).expect("recording metadata serializes");
        put_varint(out, json.len() as u64);
        out.extend_from_slice(&json);
    }

    fn put_hashes(out: &mut Vec<u8>, column: &[Option<BlockHash>], reference: &[BlockHash]) {
        let tags: Vec<(u8, Option<BlockHash>)> = column
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                None => (0, None),
                Some(h) if reference.get(i) == Some(h) => (1, None),
                Some(h) => (2, Some(*h)),
            })
            .collect();
        put_tagged(out, &tags);
    }

    /// Runs of tags, then the explicit hashes in block order.
    fn put_tagged(out: &mut Vec<u8>, tags: &[(u8, Option<BlockHash>)]) {
        let mut runs: Vec<(u8, u64)> = Vec::new();
        for (tag, _) in tags {
            match runs.last_mut() {
                Some((t, n)) if t == tag => *n += 1,
                _ => runs.push((*tag, 1)),
            }
        }
        put_varint(out, runs.len() as u64);
        for (tag, n) in runs {
            out.push(tag);
            put_varint(out, n);
        }
        for (_, h) in tags {
            if let Some(h) = h {
                out.extend_from_slice(&h.0);
            }
        }
    }

    fn put_set(out: &mut Vec<u8>, set: &BTreeSet<u64>) {
        // Ranges of consecutive blocks: (gap from the previous range's end, length).
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &b in set {
            match ranges.last_mut() {
                Some((start, len)) if *start + *len == b => *len += 1,
                _ => ranges.push((b, 1)),
            }
        }
        put_varint(out, ranges.len() as u64);
        let mut end = 0;
        for (start, len) in ranges {
            put_varint(out, start - end);
            put_varint(out, len);
            end = start + len;
        }
    }

    struct Reader<'a> {
        path: &'a Path,
        bytes: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        fn corrupt(&self, what: impl Into<String>) -> RecordError {
            RecordError::Corrupt {
                path: self.path.to_owned(),
                offset: self.at,
                what: what.into(),
            }
        }

        fn byte(&mut self) -> Result<u8, RecordError> {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| self.corrupt("truncated"))?;
            self.at += 1;
            Ok(b)
        }

        fn varint(&mut self) -> Result<u64, RecordError> {
            let mut v: u64 = 0;
            for shift in (0..64).step_by(7) {
                let b = self.byte()?;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err(self.corrupt("varint too long"))
        }

        fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
            let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
            let end = end.ok_or_else(|| self.corrupt("truncated"))?;
            let slice = &self.bytes[self.at..end];
            self.at = end;
            Ok(slice)
        }

        fn hash(&mut self) -> Result<BlockHash, RecordError> {
            let mut h = [0u8; 16];
            h.copy_from_slice(self.take(16)?);
            Ok(BlockHash(h))
        }

        fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, RecordError> {
            let n = self.varint()? as usize;
            let path = self.path.to_owned();
            serde_json::from_slice(self.take(n)?)
                .map_err(|source| RecordError::Json { path, source })
        }

        /// Reads tag runs for `blocks` entries; returns the tags.
        fn tags(&mut self, blocks: u64, max_tag: u8) -> Result<Vec<u8>, RecordError> {
            let runs = self.varint()?;
            let mut tags = Vec::with_capacity(blocks.min(1 << 28) as usize);
            for _ in 0..runs {
                let tag = self.byte()?;
                let n = self.varint()?;
                if tag > max_tag || tags.len() as u64 + n > blocks {
                    return Err(self.corrupt("bad run"));
                }
                tags.resize(tags.len() + n as usize, tag);
            }
            if tags.len() as u64 != blocks {
                return Err(self.corrupt(format!(
                    "column has {} entries for {blocks} blocks",
                    tags.len()
                )));
            }
            Ok(tags)
        }

        fn hashes(
            &mut self,
            blocks: u64,
            reference: &[BlockHash],
        ) -> Result<Vec<Option<BlockHash>>, RecordError> {
            let tags = self.tags(blocks, 2)?;
            let mut out = Vec::with_capacity(tags.len());
            for (i, tag) in tags.iter().enumerate() {
                out.push(match tag {
                    0 => None,
                    1 => Some(
                        *reference
                            .get(i)
                            .ok_or_else(|| self.corrupt("reference too short"))?,
                    ),
                    _ => Some(self.hash()?),
                });
            }
            Ok(out)
        }

        fn set(&mut self) -> Result<BTreeSet<u64>, RecordError> {
            let ranges = self.varint()?;
            let mut set = BTreeSet::new();
            let mut end: u64 = 0;
            for _ in 0..ranges {
                let start = end
                    .checked_add(self.varint()?)
                    .ok_or_else(|| self.corrupt("bad range"))?;
                let len = self.varint()?;
                end = start
                    .checked_add(len)
                    .ok_or_else(|| self.corrupt("bad range"))?;
                if len > 1 << 40 {
                    return Err(self.corrupt("bad range"));
                }
                set.extend(start..end);
            }
            Ok(set)
        }
    }

    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Recording, RecordError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(RecordError::Magic {
                path: path.to_owned(),
            });
        }
        let mut r = Reader {
            path,
            bytes,
            at: MAGIC.len(),
        };
        let meta: Meta = r.json()?;
        let mut volumes = Vec::new();
        for vm in meta.volumes {
            let mut generations: Vec<GenerationRecord> = Vec::new();
            for _ in 0..vm.generations {
                let gm: GenMeta = r.json()?;
                if gm.blocks > 1 << 36 {
                    return Err(r.corrupt("implausible block count"));
                }
                let truth = match r.byte()? {
                    0 => (0..gm.blocks)
                        .map(|_| r.hash())
                        .collect::<Result<Vec<_>, _>>()?,
                    1 => {
                        let prev = generations
                            .last()
                            .map(|g| g.truth.clone())
                            .unwrap_or_default();
                        r.hashes(gm.blocks, &prev)?
                            .into_iter()
                            .map(|h| h.ok_or_else(|| r.corrupt("truth hash missing")))
                            .collect::<Result<Vec<_>, _>>()?
                    }
                    _ => return Err(r.corrupt("bad truth encoding")),
                };
                let snapshot = if gm.has_snapshot {
                    Some(r.hashes(gm.blocks, &truth)?)
                } else {
                    None
                };
                let live = if gm.has_live {
                    let tags = r.tags(gm.blocks, 3)?;
                    let mut out = Vec::with_capacity(tags.len());
                    for t in tags {
                        out.push(match t {
                            0 => Live::NotRead,
                            1 => Live::Equal,
                            2 => Live::Differs(r.hash()?),
                            _ => Live::Bracketed {
                                before: r.hash()?,
                                after: BlockHash([0; 16]),
                            },
                        });
                    }
                    for l in out.iter_mut() {
                        if let Live::Bracketed { after, .. } = l {
                            *after = r.hash()?;
                        }
                    }
                    Some(out)
                } else {
                    None
                };
                let source = if gm.has_source {
                    let tags = r.tags(gm.blocks, 3)?;
                    Some(
                        tags.into_iter()
                            .map(|t| match t {
                                1 => Some(Source::Cow),
                                2 => Some(Source::Live),
                                3 => Some(Source::Error),
                                _ => None,
                            })
                            .collect(),
                    )
                } else {
                    None
                };
                let fault_sites = r.set()?;
                let transport = if gm.has_transport {
                    Some(r.hashes(gm.blocks, &truth)?)
                } else {
                    None
                };
                let target = if gm.has_target {
                    Some(r.hashes(gm.blocks, &truth)?)
                } else {
                    None
                };
                let incremental = if gm.incremental {
                    let sent = r.set()?;
                    let previous = if gm.has_previous {
                        Some(r.hashes(gm.blocks, &truth)?)
                    } else {
                        None
                    };
                    Some(IncrementalRecord { sent, previous })
                } else {
                    None
                };
                generations.push(GenerationRecord {
                    generation: gm.generation,
                    kind: gm.kind,
                    blocks: gm.blocks,
                    truth,
                    snapshot,
                    live,
                    source,
                    fault_sites,
                    transport,
                    retransmits: gm.retransmits,
                    target,
                    excluded: gm.excluded,
                    incremental,
                    agent: gm.agent,
                    target_claim: gm.target_claim,
                    committed: gm.committed,
                    previous_intact: gm.previous_intact,
                    snapshot_instant_ns: gm.snapshot_instant_ns,
                    stamps: gm.stamps,
                    owners: gm.owners,
                });
            }
            volumes.push(VolumeRecord {
                name: vm.name,
                fs: vm.fs,
                generations,
            });
        }
        if r.at != bytes.len() {
            return Err(r.corrupt("trailing bytes"));
        }
        Ok(Recording {
            run: meta.run,
            expect: meta.expect,
            volumes,
            events: meta.events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut g2 = GenerationRecord::new(2, BackupKind::Incremental, {
            let mut t = truth.clone();
            t[1] = h(777);
            t
        });
        g2.incremental = Some(IncrementalRecord {
            sent: [1, 2, 3].into_iter().collect(),
            previous: Some(truth.iter().map(|t| Some(*t)).collect()),
        });
        Recording {
            run: RunInfo {
                run_id: "r1".into(),
                scenario: "s".into(),
                seed: 3,
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
        assert!(bytes.len() < 1000 * 16 + 4000, "{}", bytes.len());
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

    #[test]
    fn console_scan_finds_the_lines_that_matter() {
        let log = "[    1.0] ok\n[    2.5] BUG: kernel NULL pointer dereference, address: 0\n\
                   [    3.0] WARNING: CPU: 0 PID: 1 at fs/ext4/super.c:123\n\
                   [  120.1] INFO: task bw-agent:77 blocked for more than 120 seconds.\n\
                   [  130.0] Kernel panic - not syncing: Fatal exception\nplain line\n";
        let kinds: Vec<ConsoleKind> = scan_console(log).iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                ConsoleKind::Bug,
                ConsoleKind::Warn,
                ConsoleKind::HungTask,
                ConsoleKind::Panic
            ]
        );
        assert_eq!(scan_console(log)[0].line_no, 2);
    }
}
