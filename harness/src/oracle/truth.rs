//! The truth the history implies at one instant: for every block, the hash a
//! crash-consistent snapshot taken then must hold, or, when a write to the block was in
//! flight at that instant, every hash it may hold. A pipeline that cannot announce its
//! instant is judged against the truth at the oracle's cut.

use std::ops::Range;

use rayon::prelude::*;
use serde::Serialize;

use super::input::{Backup, BackupError, ContentHash};
use super::judge::Judgement;
use super::time::Moment;
use super::versions::{Oracle, Version};

/// What one block must hold at an instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expected {
    /// No write to the block was in flight (or those in flight wrote the same content).
    One(ContentHash),
    /// Writes to the block were in flight: any of these distinct hashes, oldest first.
    Either(Vec<ContentHash>),
}

impl Expected {
    pub fn allows(&self, hash: &ContentHash) -> bool {
        self.hashes().contains(hash)
    }

    pub fn hashes(&self) -> &[ContentHash] {
        match self {
            Expected::One(h) => std::slice::from_ref(h),
            Expected::Either(hs) => hs,
        }
    }
}

/// Every block's expected content at `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Truth {
    pub at: Moment,
    pub blocks: Vec<Expected>,
}

/// The versions of a block possible at `t`: a contiguous run, because both ends of the
/// versions' spans grow with the version number. Never empty: consecutive spans overlap
/// or touch, version 0 starts at the beginning and the last version lasts to the end.
pub(crate) fn possible_at(versions: &[Version], t: Moment) -> Range<usize> {
    // END is no instant; asked for it, answer for the latest one, after every event.
    let t = t.min(Moment::LAST);
    let first = versions.partition_point(|v| v.span.until <= t);
    let end = versions.partition_point(|v| v.span.from <= t);
    first..end.max(first)
}

/// The distinct hashes of `versions`, in version order.
pub(crate) fn expected(versions: &[Version]) -> Expected {
    match versions {
        [] => Expected::Either(Vec::new()),
        [one] => Expected::One(one.hash),
        [first, rest @ ..] if rest.iter().all(|v| v.hash == first.hash) => {
            Expected::One(first.hash)
        }
        several => {
            let mut hashes: Vec<ContentHash> = Vec::with_capacity(several.len());
            for v in several {
                if !hashes.contains(&v.hash) {
                    hashes.push(v.hash);
                }
            }
            Expected::Either(hashes)
        }
    }
}

impl Oracle<'_> {
    /// The truth the history implies at `t`.
    pub fn truth_at(&self, t: Moment) -> Truth {
        let blocks = (0..self.blocks() as usize)
            .into_par_iter()
            .map(|b| {
                let vs = self.versions(b);
                expected(&vs[possible_at(vs, t)])
            })
            .collect();
        Truth { at: t, blocks }
    }
}

/// The truth of a backup at the oracle's cut: for a pipeline that cannot announce its
/// snapshot instant (a product that freezes and snapshots on its own), the history is
/// the truth. See [`Oracle::truth_at_cut`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutTruth {
    /// The backup judged: the cut, its span, every block's verdict.
    pub judgement: Judgement,
    /// Per block, the content a snapshot taken at the cut holds: the one version possible
    /// then, or, while a write to the block was in flight, the backup's own content when
    /// it is one of the possible versions (else the oldest of them).
    pub hashes: Vec<ContentHash>,
}

impl Oracle<'_> {
    /// Judges `backup` and gives the truth at the cut it finds: what a truth image taken
    /// at that instant would hash to, block by block (xxh3-128, as the history). A
    /// recording built on these hashes classifies the backup as if the pipeline had
    /// announced the cut as its instant.
    pub fn truth_at_cut(&self, backup: &Backup) -> Result<CutTruth, BackupError> {
        let judgement = self.judge(backup)?;
        let hashes = judgement
            .truth
            .blocks
            .iter()
            .zip(&backup.hashes)
            .map(|(expected, held)| match expected {
                Expected::One(h) => *h,
                Expected::Either(hs) if hs.contains(held) => *held,
                Expected::Either(hs) => hs.first().copied().unwrap_or(*held),
            })
            .collect();
        Ok(CutTruth { judgement, hashes })
    }
}
