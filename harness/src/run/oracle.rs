//! The history oracle in every witness-disk run: each backed-up volume's history
//! becomes the oracle's input, and every generation is judged twice, the truth image at
//! the announced instant and the committed backup, each checked against that truth.
//! The cut, the per-class counts and the agreement go into the recording; the nightly
//! fails when they disagree. Block hashes here are xxh3-128 (the history's), whatever
//! the rest of the recording uses.

use crate::model::BlockHash;
use std::fmt::Write as _;
use std::path::Path;

use crate::oracle::adapter::{self, Adapted};
use crate::oracle::{
    Announced, AnnouncedCheck, Backup, BlockVerdict, ContentHash, Judgement, Oracle, Verdict,
};
use crate::record::{Exclusion, OracleJudgement, OracleRecord};

use super::chain;

/// How many example lines a judgement keeps.
const EXAMPLES: usize = 8;

/// Reads a volume's history and turns it into the oracle's input.
pub(super) fn load(history: &Path, initial: Vec<ContentHash>) -> Result<Adapted, String> {
    let h = witness_disk::History::open(history)
        .map_err(|e| format!("reading {}: {}", history.display(), chain(&e)))?;
    adapter::history(&h, initial).map_err(|e| chain(&e))
}

/// The oracle's hashes of a recording's: both are xxh3-128 of the block, stored as the
/// u128's little-endian bytes.
pub(super) fn content(hashes: &[BlockHash]) -> Vec<ContentHash> {
    hashes.iter().map(|h| ContentHash(h.0)).collect()
}

/// Judges one generation: the truth image taken at the announced instant (`instant_ns`,
/// on the history's clock) and, when one was committed, the backup, each by the block
/// hashes the run already took of it (the same xxh3-128 the history records).
pub(super) fn judge(
    oracle: &Oracle,
    moved_submits: u64,
    instant_ns: u64,
    truth_hashes: &[BlockHash],
    backup_hashes: Option<&[BlockHash]>,
    excluded: &[Exclusion],
) -> Result<OracleRecord, String> {
    let truth = content(truth_hashes);
    let announced = Announced {
        instant_ns,
        truth: truth.clone(),
    };
    let ranges: Vec<std::ops::Range<u64>> = excluded.iter().map(|e| e.start..e.end).collect();
    let one = |hashes: Vec<ContentHash>| -> Result<OracleJudgement, String> {
        let backup = Backup {
            hashes,
            excluded: ranges.clone(),
        };
        let j = oracle.judge(&backup).map_err(|e| chain(&e))?;
        let check = oracle
            .check_announced(&j, &backup, &announced)
            .map_err(|e| chain(&e))?;
        Ok(summarise(&j, &check))
    };
    let truth_judged = one(truth.clone())?;
    let backup_judged = match backup_hashes {
        Some(b) => {
            let hashes = content(b);
            // A backup that holds wrong blocks pulls the oracle's best cut away from the
            // instant (the cut that explains the most blocks is no longer the one the
            // pipeline took), so its blocks cannot agree with the truth at the instant
            // one by one. There the check is that both see it: the plain comparison
            // finds a judged block that differs from the truth, and the oracle flags
            // blocks too. A backup equal to the truth must agree block by block.
            let differs = hashes
                .iter()
                .zip(&truth)
                .enumerate()
                .any(|(b, (x, t))| x != t && !ranges.iter().any(|r| r.contains(&(b as u64))));
            let mut j = one(hashes)?;
            if differs {
                let flagged = j.counts.keys().any(|c| {
                    c != crate::oracle::OracleClass::Consistent.name()
                        && c != crate::oracle::OracleClass::Excluded.name()
                });
                j.agrees = flagged;
            }
            Some(j)
        }
        None => None,
    };
    Ok(OracleRecord {
        instant_ns,
        moved_submits,
        truth: truth_judged,
        backup: backup_judged,
    })
}

fn summarise(j: &Judgement, check: &AnnouncedCheck) -> OracleJudgement {
    let mut examples: Vec<String> = check
        .disagreements
        .iter()
        .take(EXAMPLES)
        .map(|d| {
            format!(
                "block {}: disagrees ({}): {}",
                d.block,
                serde_json::to_value(d.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                d.reason
            )
        })
        .collect();
    for b in j.problems().take(EXAMPLES.saturating_sub(examples.len())) {
        examples.push(problem_line(b));
    }
    let place = serde_json::to_value(check.place)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    OracleJudgement {
        cut_ns: j.cut.ns(),
        span: format!("[{}, {})", j.span.from, j.span.until),
        explained: j.explained,
        judged: j.judged,
        counts: j
            .counts()
            .into_iter()
            .map(|(c, n)| (c.name().to_string(), n))
            .collect(),
        place,
        agrees: check.agrees(),
        disagreements: check.disagreements.len() as u64,
        examples,
    }
}

/// One problem block as a line: its class and the write it names.
pub(super) fn problem_line(b: &BlockVerdict) -> String {
    let mut s = format!("block {}: {}", b.block, b.verdict.class());
    match b.verdict {
        Verdict::DataFromTheFuture(l) => {
            let _ = write!(s, ", write #{} leaked", l.write.seq);
            if let Some(ns) = l.after_cut_ns {
                let _ = write!(s, " ({:.3} ms after the cut)", ns as f64 / 1e6);
            }
        }
        Verdict::DataFromThePast(st) => {
            let _ = write!(
                s,
                ", write #{} missing (completed {:.3} ms before the cut)",
                st.missing.seq,
                st.before_cut_ns as f64 / 1e6
            );
        }
        Verdict::PastOrFuture { stale, leak } => {
            let _ = write!(
                s,
                ", write #{} missing or write #{} leaked",
                stale.missing.seq, leak.write.seq
            );
        }
        Verdict::Corrupt { versions } => {
            let _ = write!(s, ", matches none of its {versions} versions");
        }
        Verdict::Consistent { .. } | Verdict::Excluded => {}
    }
    let _ = write!(s, ": {}", b.reason);
    s
}
