//! Classification: for every block, the first recording stage that diverges from truth
//! ([`block`]); per generation and per recording, the findings and the run-level outcomes
//! ([`generation`]); and the verdict of a run against the scenario's expectations
//! ([`verdict`]).
//!
//! Outcome enums are matched exhaustively, and "could not run" ([`Verdict::CouldNotRun`])
//! is a different variant from "ran and diverged" ([`Verdict::Fail`]).
//!
//! [`Verdict::CouldNotRun`]: crate::model::Verdict::CouldNotRun
//! [`Verdict::Fail`]: crate::model::Verdict::Fail

pub mod block;
pub mod generation;
pub mod verdict;

pub use block::{classify_block, BlockInput, StampOrder};
pub use generation::{
    block_input, classify, classify_generation, Classification, ClassifyError, Finding,
    GenerationResult, WriteNote,
};
pub use verdict::{evaluate, verdict, Evaluation};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackupKind, BlockClass, BlockHash, HASH_LEN};
    use crate::record::{Live, StampEvidence, TargetBlock};
    use bw_guest::stamp::{Piece, Stamp};

    fn h(n: u8) -> BlockHash {
        BlockHash([n; HASH_LEN])
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
            partial: None,
        }
    }

    #[test]
    fn newer_stamped_data_that_first_shows_at_the_transport_is_from_the_future() {
        let (t, x) = (h(1), h(2));
        let crossed = |stamp| BlockInput {
            snapshot: Some(Some(&t)),
            live: Some(Live::Differs(x)),
            transport: Some(Some(&x)),
            target: TargetBlock::Held(Some(&x)),
            stamp,
            ..input(&t)
        };
        assert_eq!(
            classify_block(&crossed(StampOrder::Later)).0,
            BlockClass::DataFromTheFuture
        );
        assert_eq!(
            classify_block(&crossed(StampOrder::Unknown)).0,
            BlockClass::DataFromTheFuture,
            "equal to the live disk"
        );
        assert_eq!(
            classify_block(&crossed(StampOrder::Earlier)).0,
            BlockClass::DataFromTheFuture,
            "equal to the live disk"
        );
        let garbled = BlockInput {
            transport: Some(Some(&h(7))),
            target: TargetBlock::Held(Some(&h(7))),
            ..crossed(StampOrder::Unknown)
        };
        assert_eq!(classify_block(&garbled).0, BlockClass::TransportCorruption);
        let live_equal = BlockInput {
            live: Some(Live::Equal),
            ..crossed(StampOrder::Unknown)
        };
        assert_eq!(
            classify_block(&live_equal).0,
            BlockClass::TransportCorruption
        );
    }

    #[test]
    fn a_block_shared_with_the_cow_file_is_judged_on_its_other_bytes() {
        let (t, x) = (h(1), h(2));
        // Every stage differs from truth in the COW bytes; only the target's bytes
        // outside them decide.
        let shared = |outside, stamp| BlockInput {
            snapshot: Some(Some(&x)),
            live: Some(Live::Differs(h(5))),
            transport: Some(Some(&x)),
            target: TargetBlock::Held(Some(&x)),
            partial: Some(outside),
            stamp,
            ..input(&t)
        };
        assert_eq!(
            classify_block(&shared(Some(true), StampOrder::Unknown)).0,
            BlockClass::Excluded
        );
        assert_eq!(
            classify_block(&shared(None, StampOrder::Unknown)).0,
            BlockClass::Excluded
        );
        assert_eq!(
            classify_block(&shared(Some(false), StampOrder::Unknown)).0,
            BlockClass::Unattributed
        );
        assert_eq!(
            classify_block(&shared(Some(false), StampOrder::Later)).0,
            BlockClass::DataFromTheFuture
        );
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
    fn stamp_order_of_a_block_of_pieces() {
        let p = |at, seq, time_ns| Piece {
            at,
            len: 1024,
            stamp: Stamp {
                lba: 5,
                seq,
                time_ns,
                run: 1,
                writer: 1,
            },
        };
        let truth = vec![p(0, 4, 0), p(1024, 4, 0), p(2048, 4, 0), p(3072, 4, 0)];
        // One piece rewritten after truth: the block holds a later write.
        let one_later = StampEvidence {
            held: vec![p(0, 4, 0), p(1024, 9, 0), p(2048, 4, 0), p(3072, 4, 0)],
            truth: truth.clone(),
        };
        assert_eq!(StampOrder::of(Some(&one_later), None), StampOrder::Later);
        // Pieces compare with truth's piece at their own place only.
        let older = StampEvidence {
            held: vec![p(2048, 2, 0)],
            truth,
        };
        assert_eq!(StampOrder::of(Some(&older), None), StampOrder::Earlier);
        // A stamped piece beside metadata, no truth stamp: the instant decides.
        let beside = StampEvidence {
            held: vec![p(3072, 9, 700)],
            truth: vec![],
        };
        assert_eq!(StampOrder::of(Some(&beside), Some(500)), StampOrder::Later);
        let note = WriteNote {
            seq: 9,
            lba: 5,
            at: 3072,
            len: 1024,
            time_ns: 700,
            writer: 1,
            after_instant_ns: Some(200),
        };
        assert_eq!(
            note.to_string(),
            "write #9 (writer 1) at LBA 5 bytes 3072..4096, 0.000 ms after the snapshot instant"
        );
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
        let whole = |stamp| Piece {
            at: 0,
            len: 4096,
            stamp,
        };
        let e = |held: Stamp, truth: Option<Stamp>| StampEvidence {
            held: vec![whole(held)],
            truth: truth.into_iter().map(whole).collect(),
        };
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
}
