//! The oracle's index of a history: for every block, its versions in the order the
//! backend applied them (version 0 is the starting content, version k the content after
//! the block's k-th write), each with its hash and the span of cut instants at which a
//! crash-consistent snapshot may hold it. Built once per history; judging a backup
//! against it ([`crate::oracle::judge`]) is a scan of these versions.
//!
//! The span of version k is `[submit(w_k), min over j > k of complete(w_j))`: it may be
//! there once its write was submitted, and no longer once any later write to the block
//! has completed (the backend applies a block's writes in order, so a later write that
//! completed brings every earlier one with it). With completions in order this is the
//! `[submit(w_k), complete(w_k+1))` of the design; the minimum keeps it right when the
//! backend reorders completions. Version 0 starts at [`Moment::START`]; a version no
//! completed write follows lasts until [`Moment::END`]. Because submissions per block are
//! in order, both ends grow with k, so the versions possible at one instant are a
//! contiguous run.

use serde::Serialize;

use super::input::{ContentHash, History, HistoryError, Write};
use super::time::{Moment, Span};

/// No write: version 0's writer, or the ender of a version nothing completed after.
const NONE: u32 = u32::MAX;

/// One version of one block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Version {
    pub hash: ContentHash,
    /// The cut instants at which a snapshot may hold this version.
    pub span: Span,
    /// Index into the history's writes; [`NONE`] for version 0.
    writer: u32,
    /// The later write whose completion ends `span`; [`NONE`] when it lasts to the end.
    ender: u32,
}

impl Version {
    /// The index of the write that made this version; None for version 0.
    pub fn writer(&self) -> Option<u32> {
        (self.writer != NONE).then_some(self.writer)
    }

    /// When the version stops being possible, and the write whose completion ends it;
    /// None when it is possible until the end of the history.
    pub fn end(&self) -> Option<(Moment, u32)> {
        (self.ender != NONE).then_some((self.span.until, self.ender))
    }
}

/// A write named in a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WriteRef {
    pub seq: u64,
    pub submit_ns: u64,
    /// None: the write never completed (it was still in flight when the history ended).
    pub complete_ns: Option<u64>,
}

impl WriteRef {
    fn of(w: &Write) -> WriteRef {
        WriteRef {
            seq: w.seq,
            submit_ns: w.submit_ns,
            complete_ns: w.complete_ns,
        }
    }
}

/// A validated history with its per-block version index. Judge backups with
/// [`Oracle::judge`], take the truth at an instant with [`Oracle::truth_at`].
pub struct Oracle<'h> {
    history: &'h History,
    /// Block b's versions are `versions[offsets[b]..offsets[b + 1]]`.
    offsets: Vec<usize>,
    versions: Vec<Version>,
}

impl<'h> Oracle<'h> {
    /// Validates `history` and indexes its versions. Time and memory are linear in the
    /// blocks plus the blocks written, plus sorting the writes by sequence number.
    pub fn new(history: &'h History) -> Result<Oracle<'h>, HistoryError> {
        let blocks = history.blocks;
        if history.initial.len() as u64 != blocks {
            return Err(HistoryError::InitialLength {
                blocks,
                got: history.initial.len(),
            });
        }
        if history.writes.len() as u64 >= u64::from(NONE) {
            return Err(HistoryError::TooManyWrites {
                writes: history.writes.len(),
                max: u64::from(NONE) - 1,
            });
        }
        for w in &history.writes {
            check_write(w, blocks)?;
        }

        let mut order: Vec<u32> = (0..history.writes.len() as u32).collect();
        order.sort_unstable_by_key(|&i| history.writes[i as usize].seq);
        if let Some(pair) = order
            .windows(2)
            .find(|p| history.writes[p[0] as usize].seq == history.writes[p[1] as usize].seq)
        {
            return Err(HistoryError::DuplicateSeq {
                seq: history.writes[pair[0] as usize].seq,
            });
        }

        // Block b gets 1 + (writes covering it) versions.
        let mut counts = vec![1usize; blocks as usize];
        for w in &history.writes {
            for bw in &w.blocks {
                counts[bw.block as usize] += 1;
            }
        }
        let mut offsets = Vec::with_capacity(blocks as usize + 1);
        offsets.push(0usize);
        for c in counts {
            offsets.push(offsets[offsets.len() - 1] + c);
        }
        let total = offsets[blocks as usize];

        let mut versions = Vec::with_capacity(total);
        let mut cursor = Vec::with_capacity(blocks as usize);
        for (b, hash) in history.initial.iter().enumerate() {
            cursor.push(offsets[b] + 1);
            versions.resize(
                offsets[b + 1],
                Version {
                    hash: *hash,
                    span: Span::ALL,
                    writer: NONE,
                    ender: NONE,
                },
            );
        }
        for &wi in &order {
            let w = &history.writes[wi as usize];
            let from = Moment::at_checked(w.submit_ns);
            for bw in &w.blocks {
                let b = bw.block as usize;
                let pos = cursor[b];
                let prev = versions[pos - 1];
                if prev.writer == wi {
                    return Err(HistoryError::BlockTwiceInWrite {
                        seq: w.seq,
                        block: bw.block,
                    });
                }
                if let Some(p) = prev.writer() {
                    let earlier = &history.writes[p as usize];
                    if earlier.submit_ns > w.submit_ns {
                        return Err(HistoryError::SubmitOrder {
                            block: bw.block,
                            seq: w.seq,
                            submit_ns: w.submit_ns,
                            earlier_seq: earlier.seq,
                            earlier_ns: earlier.submit_ns,
                        });
                    }
                }
                versions[pos] = Version {
                    hash: bw.hash,
                    span: Span {
                        from,
                        until: Moment::END,
                    },
                    writer: wi,
                    ender: NONE,
                };
                cursor[b] = pos + 1;
            }
        }

        // Each version ends at the earliest completion among the block's later writes;
        // on a tie the lower sequence number is named.
        for b in 0..blocks as usize {
            let mut end = (Moment::END, NONE);
            for v in versions[offsets[b]..offsets[b + 1]].iter_mut().rev() {
                v.span.until = end.0;
                v.ender = end.1;
                if let Some(c) = v
                    .writer()
                    .and_then(|w| history.writes[w as usize].complete_ns)
                {
                    let c = Moment::at_checked(c);
                    if c <= end.0 {
                        end = (c, v.writer);
                    }
                }
            }
        }
        Ok(Oracle {
            history,
            offsets,
            versions,
        })
    }

    pub fn blocks(&self) -> u64 {
        self.history.blocks
    }

    /// Block versions in the index (version 0 of every block included).
    pub fn version_count(&self) -> usize {
        self.versions.len()
    }

    /// Block `b`'s versions, version 0 first.
    pub(crate) fn versions(&self, b: usize) -> &[Version] {
        &self.versions[self.offsets[b]..self.offsets[b + 1]]
    }

    /// The write at `index` in the history, as a verdict names it.
    pub(crate) fn write_ref(&self, index: u32) -> WriteRef {
        WriteRef::of(&self.history.writes[index as usize])
    }
}

fn check_write(w: &Write, blocks: u64) -> Result<(), HistoryError> {
    let out_of_range = |what, ns| HistoryError::TimeOutOfRange {
        seq: w.seq,
        what,
        ns,
        max: Moment::LATEST_NS,
    };
    if w.submit_ns > Moment::LATEST_NS {
        return Err(out_of_range("submit", w.submit_ns));
    }
    if let Some(c) = w.complete_ns {
        if c > Moment::LATEST_NS {
            return Err(out_of_range("complete", c));
        }
        if c < w.submit_ns {
            return Err(HistoryError::CompleteBeforeSubmit {
                seq: w.seq,
                submit_ns: w.submit_ns,
                complete_ns: c,
            });
        }
    }
    match w.blocks.iter().find(|bw| bw.block >= blocks) {
        Some(bw) => Err(HistoryError::BlockOutOfRange {
            seq: w.seq,
            block: bw.block,
            blocks,
        }),
        None => Ok(()),
    }
}
