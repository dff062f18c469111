//! Judging one backup against the history: the spans each block's content is consistent
//! with, the best cut (see [`super::sweep`]), and one verdict per block against that cut,
//! each with the rule that decided it.
//!
//! The cut T is the first instant of the earliest span that explains the most blocks.
//! A block whose content matches versions only on one side of T is data from the past
//! (before) or from the future (after); when it matches versions on both sides it is
//! named with both. The version named on each side is the one nearest to T: the latest
//! before it, the earliest after it.

use std::collections::BTreeMap;
use std::fmt;

use rayon::prelude::*;
use serde::Serialize;

use super::input::{Backup, BackupError, ContentHash};
use super::sweep::{self, Event};
use super::time::{Moment, Span};
use super::truth::{self, Truth};
use super::versions::{Oracle, Version, WriteRef};

/// The class of one block against the cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OracleClass {
    Consistent,
    DataFromTheFuture,
    DataFromThePast,
    /// Matches an older and a newer version, neither possible at the cut.
    PastOrFuture,
    /// Matches no version of the block.
    Corrupt,
    Excluded,
}

impl OracleClass {
    pub const ALL: [OracleClass; 6] = [
        OracleClass::Consistent,
        OracleClass::DataFromTheFuture,
        OracleClass::DataFromThePast,
        OracleClass::PastOrFuture,
        OracleClass::Corrupt,
        OracleClass::Excluded,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            OracleClass::Consistent => "consistent",
            OracleClass::DataFromTheFuture => "data-from-the-future",
            OracleClass::DataFromThePast => "data-from-the-past",
            OracleClass::PastOrFuture => "past-or-future",
            OracleClass::Corrupt => "corrupt",
            OracleClass::Excluded => "excluded",
        }
    }

    /// Whether the block counts against the backup.
    pub const fn is_problem(self) -> bool {
        match self {
            OracleClass::Consistent | OracleClass::Excluded => false,
            OracleClass::DataFromTheFuture
            | OracleClass::DataFromThePast
            | OracleClass::PastOrFuture
            | OracleClass::Corrupt => true,
        }
    }
}

impl fmt::Display for OracleClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A block holding data written after the cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Leak {
    /// The version the block holds (k: after the block's k-th write).
    pub version: u32,
    /// The write that made it: submitted after the cut, so it leaked.
    pub write: WriteRef,
    /// Its submission after the cut; None when the cut is before the history.
    pub after_cut_ns: Option<u64>,
    /// Its submission after the end of the span of equally good cuts: at least this
    /// long after any of them.
    pub after_span_ns: u64,
    /// Whether a write to this block was in flight at the cut.
    pub block_in_flight_at_cut: bool,
}

/// A block holding data a write completed before the cut had replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Stale {
    /// The version the block holds.
    pub version: u32,
    /// The first later write of the block to complete: it completed before the cut and
    /// is missing from the backup.
    pub missing: WriteRef,
    /// How long before the cut it completed.
    pub before_cut_ns: u64,
}

/// The verdict on one block, with its evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "class")]
pub enum Verdict {
    Consistent {
        /// The version it holds (the oldest possible at the cut, when its content is
        /// shared by several).
        version: u32,
        block_in_flight_at_cut: bool,
    },
    DataFromTheFuture(Leak),
    DataFromThePast(Stale),
    PastOrFuture {
        stale: Stale,
        leak: Leak,
    },
    Corrupt {
        /// How many versions of the block the history holds.
        versions: u32,
    },
    Excluded,
}

impl Verdict {
    pub const fn class(&self) -> OracleClass {
        match self {
            Verdict::Consistent { .. } => OracleClass::Consistent,
            Verdict::DataFromTheFuture(_) => OracleClass::DataFromTheFuture,
            Verdict::DataFromThePast(_) => OracleClass::DataFromThePast,
            Verdict::PastOrFuture { .. } => OracleClass::PastOrFuture,
            Verdict::Corrupt { .. } => OracleClass::Corrupt,
            Verdict::Excluded => OracleClass::Excluded,
        }
    }
}

/// One block's verdict and the rule that decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockVerdict {
    pub block: u64,
    pub verdict: Verdict,
    pub reason: &'static str,
}

/// A backup judged against the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Judgement {
    /// T: the first instant of `span`.
    pub cut: Moment,
    /// The cuts as good as T: every instant in it explains the same blocks.
    pub span: Span,
    /// Blocks consistent at T.
    pub explained: u64,
    /// Blocks not excluded.
    pub judged: u64,
    /// Other, later spans that explain as many blocks (a different set of them).
    pub other_best_spans: u64,
    /// One per block, in block order.
    pub blocks: Vec<BlockVerdict>,
    /// What every block must hold at T.
    pub truth: Truth,
}

impl Judgement {
    /// Whether the backup is one consistent cut: every judged block is explained.
    pub fn is_consistent(&self) -> bool {
        self.explained == self.judged
    }

    pub fn counts(&self) -> BTreeMap<OracleClass, u64> {
        let mut counts = BTreeMap::new();
        for b in &self.blocks {
            *counts.entry(b.verdict.class()).or_insert(0) += 1;
        }
        counts
    }

    /// The blocks that count against the backup, in block order.
    pub fn problems(&self) -> impl Iterator<Item = &BlockVerdict> {
        self.blocks
            .iter()
            .filter(|b| b.verdict.class().is_problem())
    }
}

/// Where the versions a block's content matches lie against the cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Version `k` is possible at the cut (the oldest such).
    At(usize),
    /// All matches end at or before the cut; the latest, and the write that ended it.
    Before(usize, u32),
    /// All matches start after the cut; the earliest, and its writer.
    After(usize, u32),
    Both {
        before: (usize, u32),
        after: (usize, u32),
    },
}

/// None: the content matches no version.
fn place(versions: &[Version], hash: &ContentHash, t: Moment) -> Option<Placement> {
    let (mut at, mut before, mut after) = (None, None, None);
    for (k, v) in versions.iter().enumerate().filter(|(_, v)| v.hash == *hash) {
        match (v.end(), v.writer()) {
            (Some((end, ender)), _) if end <= t => before = Some((k, ender)),
            (_, Some(writer)) if v.span.from > t => {
                after = after.or(Some((k, writer)));
            }
            // Neither ended by t nor started after it (version 0 never starts after
            // a cut): it holds t.
            _ => at = at.or(Some(k)),
        }
    }
    match (at, before, after) {
        (Some(k), _, _) => Some(Placement::At(k)),
        (None, Some((k, w)), None) => Some(Placement::Before(k, w)),
        (None, None, Some((k, w))) => Some(Placement::After(k, w)),
        (None, Some(before), Some(after)) => Some(Placement::Both { before, after }),
        (None, None, None) => None,
    }
}

/// The disjoint, non-touching spans of instants at which a block holding `hash` is
/// consistent: the union of its matching versions' spans. Both ends of the spans grow
/// with the version number, so one pass merges them.
fn consistent_spans<'v>(
    versions: &'v [Version],
    hash: &'v ContentHash,
) -> impl Iterator<Item = Span> + 'v {
    let mut matches = versions
        .iter()
        .filter(move |v| v.hash == *hash && !v.span.is_empty())
        .map(|v| v.span)
        .peekable();
    std::iter::from_fn(move || {
        let mut cur = matches.next()?;
        while let Some(next) = matches.next_if(|n| n.from <= cur.until) {
            cur.until = cur.until.max(next.until);
        }
        Some(cur)
    })
}

impl Oracle<'_> {
    /// Judges `backup`: finds the best cut and classifies every block against it.
    pub fn judge(&self, backup: &Backup) -> Result<Judgement, BackupError> {
        let blocks = self.blocks();
        if backup.hashes.len() as u64 != blocks {
            return Err(BackupError::Length {
                what: "backup",
                blocks,
                got: backup.hashes.len(),
            });
        }
        let excluded = excluded_map(backup, blocks)?;

        let mut events: Vec<Event> = (0..blocks as usize)
            .into_par_iter()
            .filter(|&b| !excluded[b])
            .flat_map_iter(|b| {
                consistent_spans(self.versions(b), &backup.hashes[b]).flat_map(Event::of)
            })
            .collect();
        let best = sweep::best_cut(&mut events);
        drop(events);
        let t = best.span.from;
        let truth = self.truth_at(t);

        let verdicts: Vec<BlockVerdict> = (0..blocks as usize)
            .into_par_iter()
            .map(|b| {
                let vs = self.versions(b);
                let in_flight = truth::possible_at(vs, t).len() > 1;
                let placement = match excluded[b] {
                    true => None,
                    false => place(vs, &backup.hashes[b], t),
                };
                let (verdict, reason) =
                    self.decide(excluded[b], placement, in_flight, vs.len(), best.span);
                BlockVerdict {
                    block: b as u64,
                    verdict,
                    reason,
                }
            })
            .collect();
        let judged = excluded.iter().filter(|e| !**e).count() as u64;
        Ok(Judgement {
            cut: t,
            span: best.span,
            explained: best.explained,
            judged,
            other_best_spans: best.other_best_spans,
            blocks: verdicts,
            truth,
        })
    }

    /// One rule per case.
    fn decide(
        &self,
        excluded: bool,
        placement: Option<Placement>,
        in_flight: bool,
        versions: usize,
        span: Span,
    ) -> (Verdict, &'static str) {
        let t = span.from;
        match (excluded, placement) {
            (true, _) => (Verdict::Excluded, "excluded by the caller"),
            (false, None) => (
                Verdict::Corrupt {
                    versions: versions as u32,
                },
                "matches no version of the block in the history",
            ),
            (false, Some(Placement::At(k))) => {
                let verdict = Verdict::Consistent {
                    version: k as u32,
                    block_in_flight_at_cut: in_flight,
                };
                match (k, in_flight) {
                    (_, true) => (
                        verdict,
                        "a write to it was in flight at the cut; it holds one of the versions possible then",
                    ),
                    (0, false) => (
                        verdict,
                        "holds its starting content; no write to it was submitted by the cut",
                    ),
                    (_, false) => (verdict, "holds the last write to it completed before the cut"),
                }
            }
            (false, Some(Placement::Before(k, ender))) => (
                Verdict::DataFromThePast(self.stale(k, ender, t)),
                "every version it matches was replaced by a write completed before the cut",
            ),
            (false, Some(Placement::After(k, writer))) => (
                Verdict::DataFromTheFuture(self.leak(k, writer, span, in_flight)),
                "every version it matches was written by a write submitted after the cut",
            ),
            (false, Some(Placement::Both { before, after })) => (
                Verdict::PastOrFuture {
                    stale: self.stale(before.0, before.1, t),
                    leak: self.leak(after.0, after.1, span, in_flight),
                },
                "it matches a version replaced before the cut and one written after it, none possible at the cut",
            ),
        }
    }

    fn stale(&self, version: usize, ender: u32, t: Moment) -> Stale {
        let missing = self.write_ref(ender);
        Stale {
            version: version as u32,
            missing,
            // The missing write completed at or before t, so t is an instant here.
            before_cut_ns: t.ns_since(missing.complete_ns.unwrap_or(0)),
        }
    }

    fn leak(&self, version: usize, writer: u32, span: Span, in_flight: bool) -> Leak {
        let write = self.write_ref(writer);
        Leak {
            version: version as u32,
            write,
            after_cut_ns: span.from.ns().map(|t| write.submit_ns.saturating_sub(t)),
            // The write was submitted after the cut and outside the span, so at or after
            // its end, which is therefore an instant.
            after_span_ns: span
                .until
                .ns()
                .map_or(0, |u| write.submit_ns.saturating_sub(u)),
            block_in_flight_at_cut: in_flight,
        }
    }
}

/// One flag per block; checks the ranges.
pub(crate) fn excluded_map(backup: &Backup, blocks: u64) -> Result<Vec<bool>, BackupError> {
    let mut map = vec![false; blocks as usize];
    for r in &backup.excluded {
        if r.start > r.end || r.end > blocks {
            return Err(BackupError::Exclusion {
                start: r.start,
                end: r.end,
                blocks,
            });
        }
        map[r.start as usize..r.end as usize].fill(true);
    }
    Ok(map)
}
