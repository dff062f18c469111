//! One generation, then a whole recording: every block classified, the findings that
//! are not ok, and the run-level outcomes (what the pipeline claimed against what it
//! did).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::block::{classify_block, BlockInput, StampOrder};
use crate::console::Trouble;
use crate::model::{BackupKind, BlockClass, Outcome};
use crate::record::{Claim, GenerationRecord, RecordError, Recording, TruthState};

/// A write a stamped block holds (one per stamped piece), and when it was made relative
/// to the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteNote {
    pub seq: u64,
    pub lba: u64,
    /// The piece's bytes inside the 4 KiB block: `at`, `len` (0, 4096 for a whole block).
    pub at: u32,
    pub len: u32,
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
        if self.len as usize != bw_guest::stamp::BLOCK_SIZE {
            write!(f, " bytes {}..{}", self.at, self.at + self.len)?;
        }
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
    /// The writes the block's stamped pieces name, in block order.
    pub write: Vec<WriteNote>,
    pub fault_site: bool,
}

impl Finding {
    /// The writes the block names, as one line ("" when it names none).
    pub fn writes_text(&self) -> String {
        let notes: Vec<String> = self.write.iter().map(WriteNote::to_string).collect();
        notes.join("; ")
    }
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
    /// Findings that belong to no block of the volume (a target image longer than the
    /// volume): the class and why. Counted in `counts`.
    pub beyond: Vec<(BlockClass, String)>,
    /// Where the pipeline's word on its COW file disagrees with the harness's.
    pub cow_findings: Vec<String>,
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
        partial: g.partial.get(&block).map(|p| p.outside_equal),
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
            let held = g.stamps.get(&block).map_or(&[][..], |e| &e.held[..]);
            let write = held
                .iter()
                .map(|p| WriteNote {
                    seq: p.stamp.seq,
                    lba: p.stamp.lba,
                    at: p.at,
                    len: p.len,
                    time_ns: p.stamp.time_ns,
                    writer: p.stamp.writer,
                    after_instant_ns: g.snapshot_instant_ns.map(|i| {
                        (i128::from(p.stamp.time_ns) - i128::from(i))
                            .clamp(i64::MIN.into(), i64::MAX.into()) as i64
                    }),
                })
                .collect();
            findings.push(Finding {
                block,
                class,
                why: why.to_owned(),
                write,
                fault_site: g.fault_sites.contains(&block),
            });
        }
    }

    // A stored image longer than the volume holds blocks that belong to nothing.
    let mut beyond = Vec::new();
    if let Some(bytes) = g.target_bytes {
        let volume = g.blocks * crate::model::BLOCK as u64;
        if g.committed && bytes > volume {
            beyond.push((
                BlockClass::TargetCorruption,
                format!(
                    "the target's image is {} bytes longer than the volume ({bytes} bytes for {volume})",
                    bytes - volume
                ),
            ));
        }
    }
    for (class, _) in &beyond {
        *counts.entry(*class).or_default() += 1;
    }

    // Only what the pipeline said counts as a claim: a generation committed by a target
    // that then went silent is judged by its blocks, not called a false success.
    let claimed_success = g.agent == Claim::Success || g.target_claim == Claim::Success;
    let wrong = findings.iter().any(|f| f.class.is_problem()) || !beyond.is_empty();
    let mut outcomes = BTreeSet::new();
    if claimed_success && (wrong || !g.committed) {
        outcomes.insert(Outcome::FalseSuccess);
    }
    // No instant was ever announced, yet the pipeline committed or claimed success:
    // nothing proves what it copied. (Where the harness failed to take its truth, the
    // run's harness error says so instead.)
    let unannounced = g.truth_state == TruthState::NeverAnnounced;
    if unannounced && (claimed_success || g.committed) {
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
        beyond,
        cow_findings: g.cow_findings.clone(),
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
            Trouble::Oops | Trouble::Bug | Trouble::Warn | Trouble::Lockdep | Trouble::Panic => {
                outcomes.insert(Outcome::GuestOops);
            }
            Trouble::HungTask => {
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
