//! Classification: for every block, the first recording stage that diverges from truth;
//! per generation, the run-level outcomes (what the pipeline claimed against what it
//! did); and the verdict of a run against the scenario's expectations.
//!
//! Outcome enums are matched exhaustively, and "could not run" ([`Verdict::CouldNotRun`])
//! is a different variant from "ran and diverged" ([`Verdict::Fail`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::record::{
    BackupKind, BlockHash, CheckKind, Claim, ConsoleKind, GenerationRecord, Live, RecordError,
    Recording, StampEvidence, TargetBlock,
};
use crate::scenario::{Skipped, Where};

/// The class of one block: the first stage where it diverged from truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockClass {
    Ok,
    /// Snapshot != truth and == live: post-snapshot data. Culprit: the module.
    DataFromTheFuture,
    /// Snapshot != truth and != live. Culprit: the module.
    CorruptSnapshot,
    /// Incremental: changed but not sent; the target keeps old data.
    DataFromThePast,
    /// Full backup: never crossed the transport; or sent but absent at the target.
    MissingBlock,
    /// Snapshot == truth, transport != snapshot.
    TransportCorruption,
    /// Transport == truth, target re-read != transport.
    TargetCorruption,
    /// Differs from truth, and the stages that would say where were not recorded.
    Unattributed,
    /// A documented don't-care block (COW file extents, ...).
    Excluded,
}

impl BlockClass {
    pub const ALL: [BlockClass; 9] = [
        BlockClass::Ok,
        BlockClass::DataFromTheFuture,
        BlockClass::CorruptSnapshot,
        BlockClass::DataFromThePast,
        BlockClass::MissingBlock,
        BlockClass::TransportCorruption,
        BlockClass::TargetCorruption,
        BlockClass::Unattributed,
        BlockClass::Excluded,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            BlockClass::Ok => "ok",
            BlockClass::DataFromTheFuture => "data-from-the-future",
            BlockClass::CorruptSnapshot => "corrupt-snapshot",
            BlockClass::DataFromThePast => "data-from-the-past",
            BlockClass::MissingBlock => "missing-block",
            BlockClass::TransportCorruption => "transport-corruption",
            BlockClass::TargetCorruption => "target-corruption",
            BlockClass::Unattributed => "unattributed",
            BlockClass::Excluded => "excluded",
        }
    }

    pub fn from_name(name: &str) -> Option<BlockClass> {
        BlockClass::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether the block counts against a clean run.
    pub const fn is_problem(self) -> bool {
        match self {
            BlockClass::Ok | BlockClass::Excluded => false,
            BlockClass::DataFromTheFuture
            | BlockClass::CorruptSnapshot
            | BlockClass::DataFromThePast
            | BlockClass::MissingBlock
            | BlockClass::TransportCorruption
            | BlockClass::TargetCorruption
            | BlockClass::Unattributed => true,
        }
    }

    /// The part of the pipeline the class points at.
    pub const fn culprit(self) -> &'static str {
        match self {
            BlockClass::Ok | BlockClass::Excluded => "",
            BlockClass::DataFromTheFuture | BlockClass::CorruptSnapshot => "module",
            BlockClass::DataFromThePast => "module tracking or agent",
            BlockClass::MissingBlock => "agent",
            BlockClass::TransportCorruption => "transport",
            BlockClass::TargetCorruption => "target",
            BlockClass::Unattributed => "unknown (stages not recorded)",
        }
    }

    /// Compact code for block maps; the index in [`BlockClass::ALL`].
    pub fn code(self) -> u8 {
        BlockClass::ALL.iter().position(|c| *c == self).unwrap_or(0) as u8
    }

    /// Worst first: how the report orders its table of blocks.
    pub const fn severity(self) -> u8 {
        match self {
            BlockClass::DataFromTheFuture => 8,
            BlockClass::CorruptSnapshot => 7,
            BlockClass::DataFromThePast => 6,
            BlockClass::MissingBlock => 5,
            BlockClass::TargetCorruption => 4,
            BlockClass::TransportCorruption => 3,
            BlockClass::Unattributed => 2,
            BlockClass::Excluded => 1,
            BlockClass::Ok => 0,
        }
    }
}

/// A run-level outcome beside the blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The agent or target reported success on a wrong (or absent) backup: the worst.
    FalseSuccess,
    /// Nobody claimed success, nothing was committed, the previous generation is intact.
    FailedCleanly,
    GuestOops,
    GuestHang,
    VolumeVanished,
    /// Infrastructure: never a product pass or fail.
    HarnessError,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::FalseSuccess,
        Outcome::FailedCleanly,
        Outcome::GuestOops,
        Outcome::GuestHang,
        Outcome::VolumeVanished,
        Outcome::HarnessError,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::FalseSuccess => "false-success",
            Outcome::FailedCleanly => "failed-cleanly",
            Outcome::GuestOops => "guest-oops",
            Outcome::GuestHang => "guest-hang",
            Outcome::VolumeVanished => "volume-vanished",
            Outcome::HarnessError => "harness-error",
        }
    }
}

/// What a stamp says about the write a block holds, compared with truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StampOrder {
    /// No usable stamp evidence.
    Unknown,
    /// The block holds a write made after the truth's content (or after the instant).
    Later,
    /// The block holds a write older than the truth's content.
    Earlier,
}

impl StampOrder {
    /// Orders the held stamp against truth's stamp (same workload run and writer) or,
    /// failing that, against the snapshot instant.
    pub fn of(evidence: Option<&StampEvidence>, instant_ns: Option<u64>) -> StampOrder {
        let Some(e) = evidence else {
            return StampOrder::Unknown;
        };
        if let Some(t) = e.truth {
            if t.run == e.held.run && t.writer == e.held.writer && t.lba == e.held.lba {
                return match e.held.seq.cmp(&t.seq) {
                    std::cmp::Ordering::Greater => StampOrder::Later,
                    std::cmp::Ordering::Less => StampOrder::Earlier,
                    std::cmp::Ordering::Equal => StampOrder::Unknown,
                };
            }
        }
        match instant_ns {
            Some(i) if e.held.time_ns > i => StampOrder::Later,
            _ => StampOrder::Unknown,
        }
    }
}

/// Everything recorded about one block, borrowed from a generation record.
#[derive(Clone, Copy, Debug)]
pub struct BlockInput<'a> {
    pub kind: BackupKind,
    pub truth: &'a BlockHash,
    /// Outer None: the stage was not recorded; inner None: the block was not read.
    pub snapshot: Option<Option<&'a BlockHash>>,
    /// None: not recorded.
    pub live: Option<Live>,
    /// Outer None: not recorded; inner None: the block never crossed the proxy.
    pub transport: Option<Option<&'a BlockHash>>,
    pub target: TargetBlock<'a>,
    /// Incremental only: whether the agent sent the block.
    pub sent: bool,
    /// Incremental only: the previous committed generation's block at the target
    /// (outer None: not recorded).
    pub previous: Option<Option<&'a BlockHash>>,
    pub stamp: StampOrder,
    pub excluded: bool,
}

/// Classifies one block; the second value says which rule decided.
pub fn classify_block(b: &BlockInput) -> (BlockClass, &'static str) {
    if b.excluded {
        return (BlockClass::Excluded, "excluded");
    }
    let truth = b.truth;
    let was_sent = b.kind == BackupKind::Full
        || b.sent
        || matches!(b.transport, Some(Some(_)))
        || matches!(b.snapshot, Some(Some(_)));

    if !was_sent {
        // An incremental that did not send this block: the target must still be right.
        return match b.target {
            TargetBlock::Held(Some(r)) if r == truth => (BlockClass::Ok, "unchanged and not sent"),
            TargetBlock::Held(held) => match b.previous {
                Some(prev) if prev == held => {
                    (BlockClass::DataFromThePast, "changed since the last backup, not sent; the target keeps the old data")
                }
                Some(_) => (BlockClass::TargetCorruption, "not sent, and the target holds neither the old nor the new data"),
                None => match b.stamp {
                    StampOrder::Earlier => (BlockClass::DataFromThePast, "not sent; the target's block holds an older stamped write"),
                    StampOrder::Later | StampOrder::Unknown => {
                        (BlockClass::Unattributed, "not sent and differs at the target; the previous generation was not recorded")
                    }
                },
            },
            TargetBlock::NotCommitted | TargetBlock::NotRecorded => (BlockClass::Ok, "not sent; nothing committed to check"),
        };
    }

    // Stage 1: the snapshot device.
    if let Some(Some(s)) = b.snapshot {
        if s != truth {
            if b.stamp == StampOrder::Later {
                return (
                    BlockClass::DataFromTheFuture,
                    "the snapshot holds a stamped write made after the snapshot instant",
                );
            }
            return match b.live {
                Some(Live::Equal) => (
                    BlockClass::DataFromTheFuture,
                    "snapshot differs from truth and equals the live disk",
                ),
                Some(Live::Differs(l)) if &l == s => (
                    BlockClass::DataFromTheFuture,
                    "snapshot differs from truth and equals the live disk",
                ),
                Some(Live::Differs(_)) => (
                    BlockClass::CorruptSnapshot,
                    "snapshot differs from truth and from the live disk",
                ),
                Some(Live::Bracketed { before, after }) if &before == s || &after == s => (
                    BlockClass::DataFromTheFuture,
                    "snapshot differs from truth and equals the live disk",
                ),
                Some(Live::Bracketed { .. }) => (
                    BlockClass::CorruptSnapshot,
                    "snapshot differs from truth and from the live disk right before and right after its read",
                ),
                Some(Live::NotRead) | None => (
                    BlockClass::CorruptSnapshot,
                    "snapshot differs from truth; no live read to compare with",
                ),
            };
        }
    }

    // Stage 2: the transport.
    match b.transport {
        Some(None) => {
            return match b.target {
                TargetBlock::NotCommitted => {
                    (BlockClass::Ok, "never sent; nothing committed to check")
                }
                TargetBlock::Held(_) | TargetBlock::NotRecorded => {
                    (BlockClass::MissingBlock, "never crossed the transport")
                }
            };
        }
        Some(Some(x)) if x != truth => {
            return (
                BlockClass::TransportCorruption,
                "crossed the transport different from what the snapshot read",
            );
        }
        Some(Some(_)) | None => {}
    }

    // Stage 3: the target's stored generation.
    match b.target {
        TargetBlock::Held(None) => (BlockClass::MissingBlock, "sent, but absent at the target"),
        TargetBlock::Held(Some(r)) if r == truth => (BlockClass::Ok, "every stage equals truth"),
        TargetBlock::Held(Some(_)) => {
            let transport_seen = matches!(b.transport, Some(Some(_)));
            let snapshot_seen = matches!(b.snapshot, Some(Some(_)));
            match (transport_seen, snapshot_seen, b.stamp) {
                (true, _, _) => (
                    BlockClass::TargetCorruption,
                    "crossed the transport intact; the target's re-read differs",
                ),
                (false, _, StampOrder::Later) => (
                    BlockClass::DataFromTheFuture,
                    "the target holds a stamped write made after the truth's",
                ),
                (false, _, StampOrder::Earlier) => (
                    BlockClass::DataFromThePast,
                    "the target holds a stamped write older than the truth's",
                ),
                (false, true, StampOrder::Unknown) => (
                    BlockClass::Unattributed,
                    "snapshot read was right, target differs; transport not recorded",
                ),
                (false, false, StampOrder::Unknown) => (
                    BlockClass::Unattributed,
                    "target differs from truth; earlier stages not recorded",
                ),
            }
        }
        TargetBlock::NotCommitted | TargetBlock::NotRecorded => {
            (BlockClass::Ok, "every recorded stage equals truth")
        }
    }
}

/// The write a stamped block holds, and when it was made relative to the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteNote {
    pub seq: u64,
    pub lba: u64,
    pub time_ns: u64,
    pub writer: u32,
    /// Write time minus the snapshot instant, when the instant is known.
    pub after_instant_ns: Option<i64>,
}

impl std::fmt::Display for WriteNote {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "write #{} (writer {}) at LBA {}",
            self.seq, self.writer, self.lba
        )?;
        match self.after_instant_ns {
            Some(d) if d >= 0 => write!(f, ", {:.3} ms after the snapshot instant", d as f64 / 1e6),
            Some(d) => write!(f, ", {:.3} ms before the snapshot instant", -d as f64 / 1e6),
            None => Ok(()),
        }
    }
}

/// One block that is not ok.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub block: u64,
    pub class: BlockClass,
    pub why: String,
    pub write: Option<WriteNote>,
    pub fault_site: bool,
}

/// The classification of one volume's generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationResult {
    pub volume: String,
    pub generation: u32,
    pub kind: BackupKind,
    pub blocks: u64,
    /// One class per block.
    pub classes: Vec<BlockClass>,
    pub counts: BTreeMap<BlockClass, u64>,
    /// Every problem block (not ok, not excluded), in block order.
    pub findings: Vec<Finding>,
    pub committed: bool,
    pub agent: Claim,
    pub target_claim: Claim,
    pub outcomes: BTreeSet<Outcome>,
    /// A failed backup damaged the previous generation.
    pub previous_damaged: bool,
    /// The recording points present for this generation.
    pub stages: Vec<&'static str>,
}

/// The classification of a whole recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub generations: Vec<GenerationResult>,
    /// Run-level outcomes: the generations' and the run's events.
    pub outcomes: BTreeSet<Outcome>,
    pub counts: BTreeMap<BlockClass, u64>,
}

impl Classification {
    /// Classes found anywhere that count against a clean run.
    pub fn problem_classes(&self) -> BTreeSet<BlockClass> {
        self.counts
            .iter()
            .filter(|(c, n)| c.is_problem() && **n > 0)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// Why a recording could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("the recording is malformed")]
    Shape(#[source] RecordError),
    #[error("volume {volume} has no generation recorded")]
    NoGenerations { volume: String },
    #[error("the recording holds no volume")]
    NoVolumes,
}

/// Builds the per-block input for block `b` of a generation.
pub fn block_input(g: &GenerationRecord, b: usize) -> BlockInput<'_> {
    let block = b as u64;
    BlockInput {
        kind: g.kind,
        truth: &g.truth[b],
        snapshot: g.snapshot.as_ref().map(|c| c[b].as_ref()),
        live: g.live.as_ref().map(|c| c[b]),
        transport: g.transport.as_ref().map(|c| c[b].as_ref()),
        target: g.target_block(b),
        sent: g
            .incremental
            .as_ref()
            .is_some_and(|i| i.sent.contains(&block)),
        previous: g
            .incremental
            .as_ref()
            .and_then(|i| i.previous.as_ref())
            .map(|p| p[b].as_ref()),
        stamp: StampOrder::of(g.stamps.get(&block), g.snapshot_instant_ns),
        excluded: g.exclusion(block).is_some(),
    }
}

/// Classifies one generation.
pub fn classify_generation(volume: &str, g: &GenerationRecord) -> GenerationResult {
    let mut classes = Vec::with_capacity(g.blocks as usize);
    let mut counts: BTreeMap<BlockClass, u64> = BTreeMap::new();
    let mut findings = Vec::new();
    for b in 0..g.blocks as usize {
        let (class, why) = classify_block(&block_input(g, b));
        classes.push(class);
        *counts.entry(class).or_default() += 1;
        if class.is_problem() {
            let block = b as u64;
            let write = g.stamps.get(&block).map(|e| WriteNote {
                seq: e.held.seq,
                lba: e.held.lba,
                time_ns: e.held.time_ns,
                writer: e.held.writer,
                after_instant_ns: g.snapshot_instant_ns.map(|i| {
                    (i128::from(e.held.time_ns) - i128::from(i))
                        .clamp(i64::MIN.into(), i64::MAX.into()) as i64
                }),
            });
            findings.push(Finding {
                block,
                class,
                why: why.to_owned(),
                write,
                fault_site: g.fault_sites.contains(&block),
            });
        }
    }

    // Only what the pipeline said counts as a claim: a generation committed by a target
    // that then went silent is judged by its blocks, not called a false success.
    let claimed_success = g.agent == Claim::Success || g.target_claim == Claim::Success;
    let wrong = findings.iter().any(|f| f.class.is_problem());
    let mut outcomes = BTreeSet::new();
    if claimed_success && (wrong || !g.committed) {
        outcomes.insert(Outcome::FalseSuccess);
    }
    let previous_damaged = g.previous_intact == Some(false);
    if !claimed_success && !g.committed && !previous_damaged {
        outcomes.insert(Outcome::FailedCleanly);
    }

    let mut stages = vec!["truth"];
    for (present, name) in [
        (g.snapshot.is_some(), "snapshot"),
        (g.live.is_some(), "live"),
        (g.source.is_some(), "source"),
        (g.transport.is_some(), "transport"),
        (g.target.is_some(), "target"),
    ] {
        if present {
            stages.push(name);
        }
    }

    GenerationResult {
        volume: volume.to_owned(),
        generation: g.generation,
        kind: g.kind,
        blocks: g.blocks,
        classes,
        counts,
        findings,
        committed: g.committed,
        agent: g.agent.clone(),
        target_claim: g.target_claim.clone(),
        outcomes,
        previous_damaged,
        stages,
    }
}

/// Classifies every generation of every volume and gathers the run-level outcomes.
pub fn classify(rec: &Recording) -> Result<Classification, ClassifyError> {
    rec.check_shape().map_err(ClassifyError::Shape)?;
    if rec.volumes.is_empty() {
        return Err(ClassifyError::NoVolumes);
    }
    let mut generations = Vec::new();
    for v in &rec.volumes {
        if v.generations.is_empty() {
            return Err(ClassifyError::NoGenerations {
                volume: v.name.clone(),
            });
        }
        // Volumes are independent; classify their generations in parallel.
        let results: Vec<GenerationResult> = {
            use rayon::prelude::*;
            v.generations
                .par_iter()
                .map(|g| classify_generation(&v.name, g))
                .collect()
        };
        generations.extend(results);
    }
    let mut outcomes: BTreeSet<Outcome> = generations
        .iter()
        .flat_map(|g| g.outcomes.iter().copied())
        .collect();
    for finding in &rec.events.console {
        match finding.kind {
            ConsoleKind::Oops
            | ConsoleKind::Bug
            | ConsoleKind::Warn
            | ConsoleKind::Lockdep
            | ConsoleKind::Panic => {
                outcomes.insert(Outcome::GuestOops);
            }
            ConsoleKind::HungTask => {
                outcomes.insert(Outcome::GuestHang);
            }
        }
    }
    if rec.events.watchdog_fired {
        outcomes.insert(Outcome::GuestHang);
    }
    if !rec.events.vanished.is_empty() {
        outcomes.insert(Outcome::VolumeVanished);
    }
    if !rec.events.harness_errors.is_empty() {
        outcomes.insert(Outcome::HarnessError);
    }
    let mut counts: BTreeMap<BlockClass, u64> = BTreeMap::new();
    for g in &generations {
        for (c, n) in &g.counts {
            *counts.entry(*c).or_default() += n;
        }
    }
    Ok(Classification {
        generations,
        outcomes,
        counts,
    })
}

/// The verdict of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    /// The product did something the scenario does not allow.
    Fail {
        reasons: Vec<String>,
    },
    /// The harness could not run or judge the scenario: no product pass or fail.
    CouldNotRun {
        errors: Vec<String>,
    },
}

impl Verdict {
    /// 0 pass, 1 product failure, 2 harness error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail { .. } => 1,
            Verdict::CouldNotRun { .. } => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::CouldNotRun { .. } => "harness-error",
        }
    }

    /// The reasons (failures or harness errors); empty for a pass.
    pub fn reasons(&self) -> &[String] {
        match self {
            Verdict::Pass => &[],
            Verdict::Fail { reasons } => reasons,
            Verdict::CouldNotRun { errors } => errors,
        }
    }
}

fn blocks_text(blocks: &[u64]) -> String {
    let shown: Vec<String> = blocks.iter().take(5).map(|b| b.to_string()).collect();
    let more = if blocks.len() > 5 {
        format!(", ... ({} in all)", blocks.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// Judges a classified recording against its expectations.
pub fn verdict(c: &Classification, rec: &Recording) -> Verdict {
    let expect = &rec.expect;
    if !rec.events.harness_errors.is_empty() {
        return Verdict::CouldNotRun {
            errors: rec.events.harness_errors.clone(),
        };
    }
    let mut errors = Vec::new();
    let mut reasons = Vec::new();

    // Blocks.
    let found = c.problem_classes();
    let count = |class: BlockClass| c.counts.get(&class).copied().unwrap_or(0);
    let blocks_of = |class: BlockClass| -> Vec<(String, u32, u64, bool, bool)> {
        c.generations
            .iter()
            .flat_map(|g| {
                g.findings
                    .iter()
                    .filter(move |f| f.class == class)
                    .map(move |f| {
                        (
                            g.volume.clone(),
                            g.generation,
                            f.block,
                            f.fault_site,
                            f.write.is_some(),
                        )
                    })
            })
            .collect()
    };
    for class in &found {
        if !expect.classes.contains(class) {
            let blocks: Vec<u64> = blocks_of(*class).iter().map(|b| b.2).collect();
            reasons.push(format!(
                "{} block(s) of {} (blocks {})",
                count(*class),
                class.name(),
                blocks_text(&blocks)
            ));
        }
    }
    let recovered = found.is_empty() && expect.allow_clean;
    if !recovered {
        for class in &expect.classes {
            if !found.contains(class) {
                reasons.push(format!("expected {} blocks, found none", class.name()));
            }
        }
    }
    if expect.at == Where::FaultSites {
        for class in expect.classes.iter().filter(|c| found.contains(c)) {
            let blocks = blocks_of(*class);
            let outside: Vec<u64> = blocks.iter().filter(|b| !b.3).map(|b| b.2).collect();
            if !outside.is_empty() {
                reasons.push(format!(
                    "{} {} block(s) are not where a fault was injected (blocks {})",
                    outside.len(),
                    class.name(),
                    blocks_text(&outside)
                ));
            }
            if blocks.iter().all(|b| !b.3) {
                reasons.push(format!(
                    "no {} block was found where a fault was injected",
                    class.name()
                ));
            }
        }
    }
    if expect.named_writes {
        // Filesystem metadata (the journal, bitmaps) leaks with the data but is never
        // written by the stamped workload: only blocks of files must name their write.
        let owner = |volume: &str, generation: u32, block: u64| -> Option<&str> {
            rec.volumes
                .iter()
                .find(|v| v.name == volume)?
                .generations
                .iter()
                .find(|g| g.generation == generation)?
                .owners
                .get(&block)
                .map(String::as_str)
        };
        let future = blocks_of(BlockClass::DataFromTheFuture);
        let unnamed: Vec<u64> = future
            .iter()
            .filter(|b| !b.4)
            .filter(|b| owner(&b.0, b.1, b.2).is_none_or(|o| o.starts_with('/')))
            .map(|b| b.2)
            .collect();
        if !unnamed.is_empty() {
            reasons.push(format!(
                "{} data-from-the-future block(s) of files name no stamped write (blocks {})",
                unnamed.len(),
                blocks_text(&unnamed)
            ));
        }
        if !future.is_empty() && future.iter().all(|b| !b.4) {
            reasons.push("no data-from-the-future block names the stamped write it holds".into());
        }
    }

    // Run-level outcomes.
    for outcome in &c.outcomes {
        match outcome {
            Outcome::HarnessError => {}
            Outcome::FalseSuccess
            | Outcome::FailedCleanly
            | Outcome::GuestOops
            | Outcome::GuestHang
            | Outcome::VolumeVanished => {
                if !expect.outcomes.contains(outcome) && !expect.allow_outcomes.contains(outcome) {
                    reasons.push(format!(
                        "outcome {}: {}",
                        outcome.name(),
                        outcome_detail(*outcome, c, rec)
                    ));
                }
            }
        }
    }
    for outcome in &expect.outcomes {
        if !c.outcomes.contains(outcome) {
            reasons.push(format!(
                "expected outcome {}, which did not occur",
                outcome.name()
            ));
        }
    }
    for g in &c.generations {
        if g.previous_damaged {
            reasons.push(format!(
                "volume {} generation {}: the failed backup damaged the previous generation at the target",
                g.volume, g.generation
            ));
        }
    }

    // Post-run checks: expected ones must have run; any that ran must have passed.
    let mut wanted: Vec<CheckKind> = Vec::new();
    if expect.fsck {
        wanted.push(CheckKind::Fsck);
    }
    if expect.remount {
        wanted.push(CheckKind::Remount);
    }
    for s in &expect.skipped {
        wanted.push(match s {
            Skipped::Floppy => CheckKind::SkippedFloppy,
            Skipped::HangDisk => CheckKind::SkippedHangDisk,
        });
    }
    for kind in wanted {
        if !rec.events.checks.iter().any(|r| r.kind == kind) {
            errors.push(format!(
                "the scenario expects the {kind:?} check, and the run did not record it"
            ));
        }
    }
    for check in &rec.events.checks {
        if !check.passed {
            reasons.push(format!("check {:?} failed: {}", check.kind, check.detail));
        }
    }

    if !errors.is_empty() {
        Verdict::CouldNotRun { errors }
    } else if reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail { reasons }
    }
}

fn outcome_detail(outcome: Outcome, c: &Classification, rec: &Recording) -> String {
    match outcome {
        Outcome::FalseSuccess => {
            let g = c
                .generations
                .iter()
                .find(|g| g.outcomes.contains(&Outcome::FalseSuccess));
            match g {
                Some(g) if !g.committed => format!(
                    "volume {} generation {}: success claimed, nothing committed",
                    g.volume, g.generation
                ),
                Some(g) => format!(
                    "volume {} generation {}: success claimed on a backup with {} wrong block(s)",
                    g.volume,
                    g.generation,
                    g.findings.len()
                ),
                None => String::new(),
            }
        }
        Outcome::FailedCleanly => "the backup failed without claiming success".into(),
        Outcome::GuestOops => rec
            .events
            .console
            .iter()
            .find(|f| f.kind != ConsoleKind::HungTask)
            .map(|f| format!("console.log:{}: {}", f.line_no, f.line.trim()))
            .unwrap_or_default(),
        Outcome::GuestHang => {
            if rec.events.watchdog_fired {
                "the watchdog ended the guest".into()
            } else {
                rec.events
                    .console
                    .iter()
                    .find(|f| f.kind == ConsoleKind::HungTask)
                    .map(|f| format!("console.log:{}: {}", f.line_no, f.line.trim()))
                    .unwrap_or_default()
            }
        }
        Outcome::VolumeVanished => format!("vanished: {}", rec.events.vanished.join(", ")),
        Outcome::HarnessError => rec.events.harness_errors.join("; "),
    }
}

/// A classification and its verdict; a recording that cannot be classified is a harness
/// error, never a product failure.
#[derive(Debug)]
pub struct Evaluation {
    pub classification: Option<Classification>,
    pub verdict: Verdict,
}

pub fn evaluate(rec: &Recording) -> Evaluation {
    match classify(rec) {
        Ok(c) => {
            let verdict = verdict(&c, rec);
            Evaluation {
                classification: Some(c),
                verdict,
            }
        }
        Err(e) => {
            let mut errors = rec.events.harness_errors.clone();
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            errors.push(text);
            Evaluation {
                classification: None,
                verdict: Verdict::CouldNotRun { errors },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bw_guest::stamp::Stamp;

    fn h(n: u8) -> BlockHash {
        BlockHash([n; 16])
    }

    fn input(truth: &BlockHash) -> BlockInput<'_> {
        BlockInput {
            kind: BackupKind::Full,
            truth,
            snapshot: None,
            live: None,
            transport: None,
            target: TargetBlock::NotRecorded,
            sent: false,
            previous: None,
            stamp: StampOrder::Unknown,
            excluded: false,
        }
    }

    #[test]
    fn stages_not_recorded_never_get_blamed() {
        let (t, x) = (h(1), h(2));
        // Only the target recorded, and it differs: nobody to blame.
        let b = BlockInput {
            target: TargetBlock::Held(Some(&x)),
            ..input(&t)
        };
        assert_eq!(classify_block(&b).0, BlockClass::Unattributed);
        // The snapshot differs and no live read exists: corrupt, not future.
        let b = BlockInput {
            snapshot: Some(Some(&x)),
            ..input(&t)
        };
        assert_eq!(classify_block(&b).0, BlockClass::CorruptSnapshot);
        // ... unless a stamp says the data was written after the instant.
        let b = BlockInput {
            snapshot: Some(Some(&x)),
            stamp: StampOrder::Later,
            ..input(&t)
        };
        assert_eq!(classify_block(&b).0, BlockClass::DataFromTheFuture);
        // Nothing recorded but truth: ok.
        assert_eq!(classify_block(&input(&t)).0, BlockClass::Ok);
    }

    #[test]
    fn an_uncommitted_backup_is_not_missing_blocks() {
        let t = h(1);
        let b = BlockInput {
            snapshot: Some(None),
            transport: Some(None),
            target: TargetBlock::NotCommitted,
            ..input(&t)
        };
        assert_eq!(classify_block(&b).0, BlockClass::Ok);
        // But data from the future seen at the snapshot is still named.
        let x = h(2);
        let b = BlockInput {
            snapshot: Some(Some(&x)),
            live: Some(Live::Equal),
            target: TargetBlock::NotCommitted,
            ..input(&t)
        };
        assert_eq!(classify_block(&b).0, BlockClass::DataFromTheFuture);
    }

    /// The agent reads the live block right before and right after its snapshot read: a
    /// snapshot equal to either is post-snapshot data, even when the workload wrote the
    /// block again in between (so the two live reads differ).
    #[test]
    fn snapshot_equal_to_either_bracketing_live_read_is_from_the_future() {
        let (t, leaked, later, other) = (h(1), h(2), h(3), h(4));
        let with = |live| BlockInput {
            snapshot: Some(Some(&leaked)),
            live: Some(live),
            ..input(&t)
        };
        for live in [
            Live::Bracketed {
                before: leaked,
                after: later,
            },
            Live::Bracketed {
                before: later,
                after: leaked,
            },
        ] {
            assert_eq!(
                classify_block(&with(live)).0,
                BlockClass::DataFromTheFuture,
                "{live:?}"
            );
        }
        let (class, why) = classify_block(&with(Live::Bracketed {
            before: later,
            after: other,
        }));
        assert_eq!(class, BlockClass::CorruptSnapshot);
        assert!(why.contains("before") && why.contains("after"), "{why}");
    }

    #[test]
    fn stamp_order_uses_truths_stamp_then_the_instant() {
        let s = |seq, time_ns| Stamp {
            lba: 5,
            seq,
            time_ns,
            run: 1,
            writer: 1,
        };
        let e = |held, truth| StampEvidence { held, truth };
        assert_eq!(
            StampOrder::of(Some(&e(s(9, 0), Some(s(4, 0)))), None),
            StampOrder::Later
        );
        assert_eq!(
            StampOrder::of(Some(&e(s(2, 0), Some(s(4, 0)))), None),
            StampOrder::Earlier
        );
        assert_eq!(
            StampOrder::of(Some(&e(s(9, 700), None)), Some(500)),
            StampOrder::Later
        );
        assert_eq!(
            StampOrder::of(Some(&e(s(9, 300), None)), Some(500)),
            StampOrder::Unknown
        );
        assert_eq!(StampOrder::of(None, Some(500)), StampOrder::Unknown);
        // A stamp from another workload run says nothing about order.
        let other = Stamp { run: 2, ..s(1, 0) };
        assert_eq!(
            StampOrder::of(Some(&e(s(9, 0), Some(other))), None),
            StampOrder::Unknown
        );
    }

    #[test]
    fn names_and_codes_are_stable() {
        for (i, c) in BlockClass::ALL.iter().enumerate() {
            assert_eq!(c.code() as usize, i);
            assert_eq!(BlockClass::from_name(c.name()), Some(*c));
            assert_eq!(
                serde_json::to_string(c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
        for o in Outcome::ALL {
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.name())
            );
        }
        assert_eq!(Verdict::Pass.exit_code(), 0);
        assert_eq!(Verdict::Fail { reasons: vec![] }.exit_code(), 1);
        assert_eq!(Verdict::CouldNotRun { errors: vec![] }.exit_code(), 2);
    }
}
