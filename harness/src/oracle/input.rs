//! What the oracle is given: the write history of one volume (its starting content and
//! every write with its times and the hash of each block it left), the backup image's
//! block hashes with the blocks the caller does not care about, and optionally an
//! instant the pipeline announced with the truth taken at it. These are the oracle's own
//! types; a recorder's log is turned into them by an adapter.

use std::fmt;
use std::ops::Range;

use serde::{Serialize, Serializer};

/// The hash of one 4 KiB block: xxh3-128 (seed 0) over its 4096 bytes, stored as the
/// u128's 16 little-endian bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ContentHash(pub [u8; 16]);

impl ContentHash {
    /// Hashes one block's bytes.
    pub fn of_block(data: &[u8]) -> ContentHash {
        ContentHash::from_u128(xxhash_rust::xxh3::xxh3_128(data))
    }

    pub const fn from_u128(v: u128) -> ContentHash {
        ContentHash(v.to_le_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One block a write covered, and its hash after the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockWrite {
    pub block: u64,
    pub hash: ContentHash,
}

/// One write request of the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Unique; per block, the order in which the backend applied the writes.
    pub seq: u64,
    /// When the request reached the backend, ns from the recording's origin.
    pub submit_ns: u64,
    /// When the guest was told it completed; None: it never completed.
    pub complete_ns: Option<u64>,
    pub blocks: Vec<BlockWrite>,
}

/// The write history of one volume of `blocks` 4 KiB blocks.
///
/// Requirements (checked by [`crate::oracle::Oracle::new`]): `initial` has one hash per
/// block; sequence numbers are unique; a write lists a block at most once, completes no
/// earlier than it was submitted, and stays on the volume; the writes to one block are
/// submitted in sequence order (the backend serialises them). Completions may come in
/// any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub blocks: u64,
    /// Every block's hash before the first write (version 0).
    pub initial: Vec<ContentHash>,
    /// In any order.
    pub writes: Vec<Write>,
}

/// A run of a volume's blocks on its disk: `blocks` blocks from `volume_block` of the
/// volume are at `disk_block` of the disk (a linear LVM logical volume's segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub volume_block: u64,
    pub disk_block: u64,
    pub blocks: u64,
}

impl History {
    /// The history of a volume laid out as `extents` on this history's disk, which must
    /// cover the volume's `blocks` blocks exactly once: the disk's writes to those
    /// extents, renumbered; writes elsewhere on the disk (another volume, a snapshot's
    /// store) are left out. Only a layout that stayed put for the whole history gives a
    /// true history (a linear volume, not a thin one whose blocks move as they are
    /// provisioned).
    pub fn restrict(&self, extents: &[Extent], blocks: u64) -> Result<History, HistoryError> {
        let mut by_disk: Vec<Extent> = extents.to_vec();
        by_disk.sort_by_key(|e| e.disk_block);
        let mut covered = vec![false; blocks as usize];
        for e in &by_disk {
            if e.disk_block + e.blocks > self.blocks || e.volume_block + e.blocks > blocks {
                return Err(HistoryError::ExtentOutOfRange {
                    extent: *e,
                    disk_blocks: self.blocks,
                    volume_blocks: blocks,
                });
            }
            for c in &mut covered[e.volume_block as usize..(e.volume_block + e.blocks) as usize] {
                if std::mem::replace(c, true) {
                    return Err(HistoryError::ExtentOverlap { extent: *e });
                }
            }
        }
        if let Some(hole) = covered.iter().position(|c| !c) {
            return Err(HistoryError::ExtentHole { block: hole as u64 });
        }
        for w in by_disk.windows(2) {
            if w[0].disk_block + w[0].blocks > w[1].disk_block {
                return Err(HistoryError::ExtentOverlap { extent: w[1] });
            }
        }
        let volume_block = |disk_block: u64| -> Option<u64> {
            let i = by_disk.partition_point(|e| e.disk_block <= disk_block);
            let e = by_disk[..i].last()?;
            (disk_block < e.disk_block + e.blocks)
                .then(|| e.volume_block + (disk_block - e.disk_block))
        };
        let mut initial = vec![ContentHash([0; 16]); blocks as usize];
        for e in &by_disk {
            for i in 0..e.blocks {
                initial[(e.volume_block + i) as usize] = self
                    .initial
                    .get((e.disk_block + i) as usize)
                    .copied()
                    .ok_or(HistoryError::InitialLength {
                        blocks: self.blocks,
                        got: self.initial.len(),
                    })?;
            }
        }
        let writes = self
            .writes
            .iter()
            .filter_map(|w| {
                let blocks: Vec<BlockWrite> = w
                    .blocks
                    .iter()
                    .filter_map(|b| {
                        volume_block(b.block).map(|block| BlockWrite {
                            block,
                            hash: b.hash,
                        })
                    })
                    .collect();
                (!blocks.is_empty()).then(|| Write {
                    blocks,
                    ..w.clone()
                })
            })
            .collect();
        Ok(History {
            blocks,
            initial,
            writes,
        })
    }
}

/// The backup image to judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// One hash per block of the volume.
    pub hashes: Vec<ContentHash>,
    /// Blocks the caller does not care about (a COW file's extents, ...): judged
    /// excluded, and left out of the search for the cut.
    pub excluded: Vec<Range<u64>>,
}

/// An instant the pipeline announced, with the truth taken at it (e.g. a QMP snapshot
/// while the filesystems were frozen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    pub instant_ns: u64,
    /// One hash per block of the volume.
    pub truth: Vec<ContentHash>,
}

/// Why a history cannot be judged against.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "the history's starting content has {got} block hashes for a volume of {blocks} blocks"
    )]
    InitialLength { blocks: u64, got: usize },
    #[error("the history holds {writes} writes; the oracle handles at most {max}")]
    TooManyWrites { writes: usize, max: u64 },
    #[error("write #{seq} covers block {block}, beyond the volume's {blocks} blocks")]
    BlockOutOfRange { seq: u64, block: u64, blocks: u64 },
    #[error("write #{seq}: {what} time {ns} ns is past the clock's range (at most {max} ns)")]
    TimeOutOfRange {
        seq: u64,
        what: &'static str,
        ns: u64,
        max: u64,
    },
    #[error(
        "write #{seq} completes at {complete_ns} ns, before it was submitted at {submit_ns} ns"
    )]
    CompleteBeforeSubmit {
        seq: u64,
        submit_ns: u64,
        complete_ns: u64,
    },
    #[error(
        "extent {extent:?} of the volume lies past the disk's {disk_blocks} or the volume's \
         {volume_blocks} blocks"
    )]
    ExtentOutOfRange {
        extent: Extent,
        disk_blocks: u64,
        volume_blocks: u64,
    },
    #[error("extent {extent:?} overlaps another extent of the volume")]
    ExtentOverlap { extent: Extent },
    #[error("the volume's extents leave its block {block} unmapped")]
    ExtentHole { block: u64 },
    #[error("two writes carry sequence number {seq}")]
    DuplicateSeq { seq: u64 },
    #[error("write #{seq} lists block {block} twice")]
    BlockTwiceInWrite { seq: u64, block: u64 },
    #[error(
        "block {block}: write #{seq} was submitted at {submit_ns} ns, before the earlier write \
         #{earlier_seq} at {earlier_ns} ns (writes to one block must be submitted in sequence order)"
    )]
    SubmitOrder {
        block: u64,
        seq: u64,
        submit_ns: u64,
        earlier_seq: u64,
        earlier_ns: u64,
    },
}

/// Why a backup (or an announced truth) cannot be judged against the history.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("the {what} has {got} block hashes for a volume of {blocks} blocks")]
    Length {
        what: &'static str,
        blocks: u64,
        got: usize,
    },
    #[error("excluded blocks {start}..{end} are not a range within the volume's {blocks} blocks")]
    Exclusion { start: u64, end: u64, blocks: u64 },
    #[error("the announced instant {ns} ns is past the clock's range (at most {max} ns)")]
    InstantOutOfRange { ns: u64, max: u64 },
}
