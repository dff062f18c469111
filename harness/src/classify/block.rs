//! One block: every recording point of a block against truth, and the first stage that
//! diverges. One rule per case, and every decision carries its reason.

use bw_guest::stamp::Piece;

use crate::model::{BackupKind, BlockClass, BlockHash};
use crate::record::{Live, StampEvidence, TargetBlock};

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
    /// Orders each held piece against truth's piece at the same place (same workload
    /// run and writer) or, failing that, against the snapshot instant. One later piece
    /// makes the block later; otherwise one earlier piece makes it earlier.
    pub fn of(evidence: Option<&StampEvidence>, instant_ns: Option<u64>) -> StampOrder {
        let Some(e) = evidence else {
            return StampOrder::Unknown;
        };
        let orders: Vec<StampOrder> = e
            .held
            .iter()
            .map(|h| Self::of_piece(h, &e.truth, instant_ns))
            .collect();
        if orders.contains(&StampOrder::Later) {
            StampOrder::Later
        } else if orders.contains(&StampOrder::Earlier) {
            StampOrder::Earlier
        } else {
            StampOrder::Unknown
        }
    }

    fn of_piece(held: &Piece, truth: &[Piece], instant_ns: Option<u64>) -> StampOrder {
        let h = &held.stamp;
        let same_place = truth
            .iter()
            .find(|t| (t.at, t.len) == (held.at, held.len))
            .map(|t| t.stamp);
        if let Some(t) = same_place {
            if t.run == h.run && t.writer == h.writer && t.lba == h.lba {
                return match h.seq.cmp(&t.seq) {
                    std::cmp::Ordering::Greater => StampOrder::Later,
                    std::cmp::Ordering::Less => StampOrder::Earlier,
                    std::cmp::Ordering::Equal => StampOrder::Unknown,
                };
            }
        }
        match instant_ns {
            Some(i) if h.time_ns > i => StampOrder::Later,
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
    /// The COW file covers part of the block: None when it does not; else whether the
    /// bytes outside it equal truth at the target (None: nothing to compare with).
    pub partial: Option<Option<bool>>,
}

/// Classifies one block; the second value says which rule decided.
pub fn classify_block(b: &BlockInput) -> (BlockClass, &'static str) {
    if b.excluded {
        return (BlockClass::Excluded, "excluded");
    }
    // Part COW file (a filesystem block smaller than 4 KiB): every stage's hash covers
    // the COW bytes too, so the rest is judged byte by byte at the target.
    if let Some(outside) = b.partial {
        return match (outside, b.stamp) {
            (Some(true), _) => (
                BlockClass::Excluded,
                "shares its 4 KiB with the COW file; every byte outside it equals truth at the target",
            ),
            (None, _) => (
                BlockClass::Excluded,
                "shares its 4 KiB with the COW file; nothing committed to judge the rest by",
            ),
            (Some(false), StampOrder::Later) => (
                BlockClass::DataFromTheFuture,
                "beside the COW file, the target holds a stamped write made after the snapshot instant",
            ),
            (Some(false), StampOrder::Earlier) => (
                BlockClass::DataFromThePast,
                "beside the COW file, the target holds a stamped write older than the truth's",
            ),
            (Some(false), StampOrder::Unknown) => (
                BlockClass::Unattributed,
                "shares its 4 KiB with the COW file, and the bytes outside it differ from truth at the target",
            ),
        };
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
            // Equal to either of two bracketing live reads is post-snapshot data: a
            // workload write between the snapshot read and one live read must not
            // make it look corrupt.
            return match b.live.and_then(|l| l.matches_snapshot(s)) {
                Some(true) => (
                    BlockClass::DataFromTheFuture,
                    "snapshot differs from truth and equals the live disk",
                ),
                Some(false) if matches!(b.live, Some(Live::Bracketed { .. })) => (
                    BlockClass::CorruptSnapshot,
                    "snapshot differs from truth and from the live disk right before and right after its read",
                ),
                Some(false) => (
                    BlockClass::CorruptSnapshot,
                    "snapshot differs from truth and from the live disk",
                ),
                None => (
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
            // A stamped write from after the instant is newer data, wherever it first
            // shows: a copier that read past its snapshot (a driven pipeline's product
            // reading the live device) is seen only once its bytes cross.
            if b.stamp == StampOrder::Later {
                return (
                    BlockClass::DataFromTheFuture,
                    "crossed the transport holding a stamped write made after the snapshot instant, which the snapshot device did not hold: the copy read newer data than its snapshot",
                );
            }
            let live_holds_it = match (b.live, b.snapshot) {
                (Some(Live::Differs(h)), Some(Some(_))) => &h == x,
                (Some(Live::Bracketed { before, after }), Some(Some(_))) => {
                    &before == x || &after == x
                }
                _ => false,
            };
            if live_holds_it {
                return (
                    BlockClass::DataFromTheFuture,
                    "crossed the transport equal to the live disk, not to the snapshot device the harness read: the copy read the live volume",
                );
            }
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
