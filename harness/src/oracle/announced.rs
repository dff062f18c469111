//! The oracle against an announced instant: when the pipeline says when it took its
//! snapshot and the harness took its own truth then (the QMP snapshot under FIFREEZE),
//! the instant must be one of the oracle's best cuts, and the oracle's per-block
//! verdicts must agree with a plain comparison of the backup against that truth. This
//! is the oracle's own test on the reference pipeline.

use std::fmt;

use serde::Serialize;

use super::input::{Announced, Backup, BackupError};
use super::judge::{Judgement, OracleClass};
use super::time::Moment;
use super::versions::Oracle;

/// Where the announced instant lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstantPlace {
    /// In the span of the oracle's cut.
    InSpan,
    /// Elsewhere, but it explains as many blocks as the cut: the tie broke the other way.
    InOtherBestSpan,
    /// It explains fewer blocks than the cut.
    Outside,
}

/// How the oracle and the truth at the instant disagree on one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisagreementKind {
    /// The truth holds content the history does not allow at the instant: the truth,
    /// the recording or the instant is wrong.
    TruthNotInHistory,
    /// The oracle flags the block, but it equals the truth.
    FlaggedButEqualsTruth,
    /// The oracle's cut explains the block, but at the instant it is wrong.
    ConsistentButWrongAtInstant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    pub block: u64,
    pub kind: DisagreementKind,
    pub class: OracleClass,
    pub reason: &'static str,
}

/// The oracle checked against an announced instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AnnouncedCheck {
    pub instant: Moment,
    pub place: InstantPlace,
    /// Judged blocks whose backup content the history allows at the instant.
    pub explained_at_instant: u64,
    /// Judged blocks consistent at the oracle's cut.
    pub explained_at_cut: u64,
    /// In block order.
    pub disagreements: Vec<Disagreement>,
}

impl AnnouncedCheck {
    /// The instant is one of the best cuts and every block's verdict agrees.
    pub fn agrees(&self) -> bool {
        let placed = match self.place {
            InstantPlace::InSpan | InstantPlace::InOtherBestSpan => true,
            InstantPlace::Outside => false,
        };
        placed && self.disagreements.is_empty()
    }
}

impl fmt::Display for AnnouncedCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.place {
            InstantPlace::InSpan => "lies in the span of the oracle's cut",
            InstantPlace::InOtherBestSpan => "lies in another span as good as the oracle's cut",
            InstantPlace::Outside => "explains fewer blocks than the oracle's cut",
        };
        write!(
            f,
            "announced instant {} {place} ({} blocks explained there, {} at the cut); {} block(s) disagree",
            self.instant,
            self.explained_at_instant,
            self.explained_at_cut,
            self.disagreements.len()
        )
    }
}

/// What the oracle said about a block, for the comparison.
enum Said {
    Excluded,
    Consistent,
    Flagged,
}

/// None when the oracle and the truth agree on the block. One rule per case.
fn compare(
    said: Said,
    truth_allowed: bool,
    backup_equals_truth: bool,
    backup_allowed: bool,
) -> Option<(DisagreementKind, &'static str)> {
    match (said, truth_allowed, backup_equals_truth, backup_allowed) {
        // Excluded from both.
        (Said::Excluded, ..) => None,
        (Said::Consistent | Said::Flagged, false, ..) => Some((
            DisagreementKind::TruthNotInHistory,
            "the truth holds content the history does not allow at the announced instant",
        )),
        // Both right.
        (Said::Consistent, true, true, _) => None,
        // A write was in flight at the instant: backup and truth hold different
        // versions, both allowed.
        (Said::Consistent, true, false, true) => None,
        (Said::Consistent, true, false, false) => Some((
            DisagreementKind::ConsistentButWrongAtInstant,
            "the oracle's cut explains the block, but the history does not allow it at the announced instant",
        )),
        (Said::Flagged, true, true, _) => Some((
            DisagreementKind::FlaggedButEqualsTruth,
            "the oracle flags the block, but it equals the truth at the announced instant",
        )),
        // Both find it wrong.
        (Said::Flagged, true, false, _) => None,
    }
}

impl Oracle<'_> {
    /// Checks `judgement` (of `backup`) against the truth taken at an announced instant.
    pub fn check_announced(
        &self,
        judgement: &Judgement,
        backup: &Backup,
        announced: &Announced,
    ) -> Result<AnnouncedCheck, BackupError> {
        let blocks = self.blocks();
        for (what, got) in [
            ("backup", backup.hashes.len()),
            ("truth at the announced instant", announced.truth.len()),
            ("judgement", judgement.blocks.len()),
        ] {
            if got as u64 != blocks {
                return Err(BackupError::Length { what, blocks, got });
            }
        }
        let instant = Moment::at(announced.instant_ns).ok_or(BackupError::InstantOutOfRange {
            ns: announced.instant_ns,
            max: Moment::LATEST_NS,
        })?;
        let at_instant = self.truth_at(instant);

        let mut explained_at_instant = 0u64;
        let mut disagreements = Vec::new();
        for (b, verdict) in judgement.blocks.iter().enumerate() {
            let class = verdict.verdict.class();
            let said = match class {
                OracleClass::Excluded => Said::Excluded,
                OracleClass::Consistent => Said::Consistent,
                OracleClass::DataFromTheFuture
                | OracleClass::DataFromThePast
                | OracleClass::PastOrFuture
                | OracleClass::Corrupt => Said::Flagged,
            };
            let expected = &at_instant.blocks[b];
            let backup_allowed = expected.allows(&backup.hashes[b]);
            if class != OracleClass::Excluded && backup_allowed {
                explained_at_instant += 1;
            }
            if let Some((kind, reason)) = compare(
                said,
                expected.allows(&announced.truth[b]),
                backup.hashes[b] == announced.truth[b],
                backup_allowed,
            ) {
                disagreements.push(Disagreement {
                    block: b as u64,
                    kind,
                    class,
                    reason,
                });
            }
        }
        let place = match (
            judgement.span.contains(instant),
            explained_at_instant >= judgement.explained,
        ) {
            (true, _) => InstantPlace::InSpan,
            (false, true) => InstantPlace::InOtherBestSpan,
            (false, false) => InstantPlace::Outside,
        };
        Ok(AnnouncedCheck {
            instant,
            place,
            explained_at_instant,
            explained_at_cut: judgement.explained,
            disagreements,
        })
    }
}
