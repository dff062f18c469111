//! The truth of a product that cannot announce its instant (`instant = "oracle"`): the
//! history oracle's cut over the witness disk's write history.
//!
//! Which image the cut is found on: the product's snapshot device as the harness's own
//! reader read it, when the reader read every block of it (a full backup with the
//! reader on), else the backup as the harness re-read it at the target. The snapshot
//! device is the product's own point in time: a copier that then read past it (the live
//! volume) is judged against that point, as if the product had announced it, so its
//! leaked blocks are data from the future. Judged on its own, such a backup is a fuzzy
//! image whose best cut lies in the middle of the copy, and the blocks on either side of
//! that cut would be misplaced (the snapshot device would look corrupt).
//!
//! The truth per block is [`Oracle::truth_at_cut`]'s: the one content possible at the
//! cut, or, while a write was in flight there, the image's own content when it is one
//! of the possible ones. A block the oracle cannot explain at the cut gets the content
//! the cut expects, never the image's, so it differs from what the image holds: an
//! image that is no single cut never classifies clean.

use crate::model::BlockHash;
use crate::oracle::{Backup, BackupError, CutTruth, Expected, Judgement, Oracle};
use crate::record::{CutImage, CutJudgement, CutRecord};

use super::oracle::{content, problem_line};

/// How many example lines a judgement keeps.
const EXAMPLES: usize = 8;

/// Why a generation has no truth at the cut.
#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error("volume {volume} has no witness-disk history to judge it by")]
    NoHistory { volume: String },
    #[error("volume {volume} is not its whole disk, and the history is the disk's")]
    NotWholeDisk { volume: String },
    #[error("nothing of generation {generation} of volume {volume} was read whole to judge: no complete snapshot read by the harness's reader and nothing committed")]
    NothingToJudge { volume: String, generation: u32 },
    #[error("the history oracle refused {image} of volume {volume}")]
    Oracle {
        volume: String,
        image: &'static str,
        #[source]
        source: BackupError,
    },
}

/// What the run read of one generation, for the cut.
pub(super) struct Images<'a> {
    /// The reader's snapshot hashes, when it read every block of the volume.
    pub snapshot: Option<Vec<BlockHash>>,
    /// The harness's re-read of the committed backup.
    pub backup: Option<&'a [BlockHash]>,
}

/// The truth of one generation at the cut, and its record.
pub(super) struct AtCut {
    pub truth: Vec<BlockHash>,
    pub record: CutRecord,
}

/// Judges the generation at the cut of the image chosen as above.
pub(super) fn truth(
    oracle: &Oracle,
    moved_submits: u64,
    volume: &str,
    generation: u32,
    images: &Images,
) -> Result<AtCut, CutError> {
    let (image, hashes) = match (&images.snapshot, images.backup) {
        (Some(s), _) => (CutImage::SnapshotDevice, content(s)),
        (None, Some(b)) => (CutImage::Backup, content(b)),
        (None, None) => {
            return Err(CutError::NothingToJudge {
                volume: volume.to_string(),
                generation,
            })
        }
    };
    let refused = |image: CutImage| {
        move |source| CutError::Oracle {
            volume: volume.to_string(),
            image: image.describe(),
            source,
        }
    };
    let cut = oracle
        .truth_at_cut(&Backup {
            hashes,
            excluded: Vec::new(),
        })
        .map_err(refused(image))?;
    let backup = match (image, images.backup) {
        (CutImage::SnapshotDevice, Some(b)) => Some(summarise(
            &oracle
                .judge(&Backup {
                    hashes: content(b),
                    excluded: Vec::new(),
                })
                .map_err(refused(CutImage::Backup))?,
        )),
        (CutImage::SnapshotDevice, None) | (CutImage::Backup, _) => None,
    };
    Ok(record(image, &cut, backup, moved_submits))
}

/// The truth hashes and record of a [`CutTruth`].
pub(super) fn record(
    image: CutImage,
    cut: &CutTruth,
    backup: Option<CutJudgement>,
    moved_submits: u64,
) -> AtCut {
    let in_flight = cut
        .judgement
        .truth
        .blocks
        .iter()
        .filter(|e| matches!(e, Expected::Either(_)))
        .count() as u64;
    AtCut {
        truth: cut.hashes.iter().map(|h| BlockHash(h.0)).collect(),
        record: CutRecord {
            image,
            judgement: summarise(&cut.judgement),
            in_flight,
            backup,
            moved_submits,
        },
    }
}

fn summarise(j: &Judgement) -> CutJudgement {
    CutJudgement {
        cut_ns: j.cut.ns(),
        span: format!("[{}, {})", j.span.from, j.span.until),
        explained: j.explained,
        judged: j.judged,
        counts: j
            .counts()
            .into_iter()
            .map(|(c, n)| (c.name().to_string(), n))
            .collect(),
        examples: j.problems().take(EXAMPLES).map(problem_line).collect(),
    }
}

/// Whether the oracle found the backup wrong where no judged block of it differs from
/// the truth: the plain comparison would then pass what the oracle fails. By
/// construction it cannot happen (see the module doc); checked so that it never
/// passes silently.
pub(super) fn unseen_by_comparison(
    record: &CutRecord,
    truth: &[BlockHash],
    target: Option<&[Option<BlockHash>]>,
) -> bool {
    let backup = match record.image {
        CutImage::Backup => Some(&record.judgement),
        CutImage::SnapshotDevice => record.backup.as_ref(),
    };
    let (Some(j), Some(target)) = (backup, target) else {
        return false;
    };
    let differs = truth
        .iter()
        .zip(target)
        .any(|(t, held)| held.as_ref() != Some(t));
    !j.consistent() && !differs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BackupKind;
    use crate::oracle::{BlockWrite, ContentHash, History, Write};
    use crate::record::{Claim, GenerationRecord};

    fn h(n: u128) -> BlockHash {
        BlockHash(n.to_le_bytes())
    }

    /// Four blocks: 1, 2, 3, 4 at first; block 1 becomes 21 (write 1, 10..20 ns) and
    /// block 3 becomes 43 (write 2, 30..40 ns). A snapshot between 20 and 30 ns holds
    /// 1, 21, 3, 4.
    fn history() -> History {
        let w = |seq, submit, complete, block, n: u128| Write {
            seq,
            submit_ns: submit,
            complete_ns: Some(complete),
            blocks: vec![BlockWrite {
                block,
                hash: ContentHash::from_u128(n),
            }],
        };
        History {
            blocks: 4,
            initial: [1u128, 2, 3, 4]
                .iter()
                .map(|&n| ContentHash::from_u128(n))
                .collect(),
            writes: vec![w(1, 10, 20, 1, 21), w(2, 30, 40, 3, 43)],
        }
    }

    fn at(images: &Images) -> AtCut {
        let hist = history();
        let oracle = Oracle::new(&hist).unwrap();
        truth(&oracle, 0, "data", 1, images).unwrap()
    }

    /// A generation as assembly builds it: the cut's truth, the target's re-read.
    fn classified(
        truth: Vec<BlockHash>,
        target: &[BlockHash],
    ) -> crate::classify::GenerationResult {
        let mut g = GenerationRecord::new(1, BackupKind::Full, truth);
        g.agent = Claim::Success;
        g.committed = true;
        g.target = Some(target.iter().map(|t| Some(*t)).collect());
        crate::classify::classify_generation("data", &g)
    }

    #[test]
    fn a_consistent_backup_is_its_own_truth_and_classifies_clean() {
        let backup = [h(1), h(21), h(3), h(4)];
        let got = at(&Images {
            snapshot: None,
            backup: Some(&backup),
        });
        assert_eq!(got.truth, backup);
        assert_eq!(got.record.image, CutImage::Backup);
        assert!(got.record.judgement.consistent());
        assert_eq!(got.record.judgement.explained, 4);
        // The cut is the first instant that explains every block: write 1's submission,
        // with write 1 still in flight; the truth there is the backup's own content.
        assert_eq!(got.record.judgement.cut_ns, Some(10));
        assert_eq!(got.record.in_flight, 1);
        assert!(!unseen_by_comparison(
            &got.record,
            &got.truth,
            Some(&backup.map(Some))
        ));
        let c = classified(got.truth, &backup);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert!(c.outcomes.is_empty());
    }

    #[test]
    fn a_backup_no_single_cut_explains_is_never_a_pass() {
        // Block 1 from before write 1, block 3 from after write 2: whichever cut is
        // chosen, one block is wrong at it.
        let backup = [h(1), h(2), h(3), h(43)];
        let got = at(&Images {
            snapshot: None,
            backup: Some(&backup),
        });
        assert!(!got.record.judgement.consistent());
        assert_eq!(got.record.judgement.explained, 3);
        // The truth at the cut differs from the backup exactly where the oracle
        // found a problem, so the plain comparison sees it too.
        let differ: Vec<usize> = (0..4).filter(|&b| got.truth[b] != backup[b]).collect();
        assert_eq!(differ.len(), 1, "{:?} vs {:?}", got.truth, backup);
        assert!(!unseen_by_comparison(
            &got.record,
            &got.truth,
            Some(&backup.map(Some))
        ));
        let c = classified(got.truth, &backup);
        assert_eq!(c.findings.len(), 1);
        assert!(c.findings.iter().all(|f| f.class.is_problem()));
        assert!(c.outcomes.contains(&crate::model::Outcome::FalseSuccess));
    }

    #[test]
    fn the_snapshot_device_read_whole_is_the_cut_and_the_backup_is_judged_beside_it() {
        // The product's snapshot is the consistent image between 20 and 30 ns; its copy
        // read block 3 from the live volume after write 2: data from the future.
        let snapshot = vec![h(1), h(21), h(3), h(4)];
        let backup = [h(1), h(21), h(3), h(43)];
        let got = at(&Images {
            snapshot: Some(snapshot.clone()),
            backup: Some(&backup),
        });
        assert_eq!(got.record.image, CutImage::SnapshotDevice);
        assert_eq!(got.truth, snapshot);
        assert!(got.record.judgement.consistent());
        // On its own the backup is a consistent cut too (after write 2): only the
        // snapshot device says which instant the product took.
        let b = got.record.backup.as_ref().expect("the backup is judged");
        assert!(b.consistent());
        let c = classified(got.truth, &backup);
        assert_eq!(c.findings.len(), 1);
        assert_eq!(c.findings[0].block, 3);
        assert!(c.outcomes.contains(&crate::model::Outcome::FalseSuccess));
    }

    #[test]
    fn nothing_read_whole_is_an_error_naming_the_generation() {
        let hist = history();
        let oracle = Oracle::new(&hist).unwrap();
        let e = truth(
            &oracle,
            0,
            "data",
            2,
            &Images {
                snapshot: None,
                backup: None,
            },
        )
        .err()
        .expect("refused");
        assert_eq!(
            e.to_string(),
            "nothing of generation 2 of volume data was read whole to judge: no complete snapshot read by the harness's reader and nothing committed"
        );
    }

    #[test]
    fn a_block_in_flight_at_the_cut_takes_the_image_content_when_possible() {
        // Write 3 to block 0 never completes: from its submission on, block 0 may hold
        // either content.
        let mut hist = history();
        hist.writes.push(Write {
            seq: 3,
            submit_ns: 25,
            complete_ns: None,
            blocks: vec![BlockWrite {
                block: 0,
                hash: ContentHash::from_u128(50),
            }],
        });
        let oracle = Oracle::new(&hist).unwrap();
        let backup = [h(50), h(21), h(3), h(4)];
        let got = truth(
            &oracle,
            0,
            "data",
            1,
            &Images {
                snapshot: None,
                backup: Some(&backup),
            },
        )
        .unwrap();
        assert!(got.record.judgement.consistent());
        assert_eq!(got.record.judgement.cut_ns, Some(25));
        // Write 3 to block 0 is in flight at 25 ns (write 1 completed at 20).
        assert_eq!(got.record.in_flight, 1);
        assert_eq!(got.truth, backup);
    }
}
