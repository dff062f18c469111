//! The sender's pipeline: reading a frame's blocks, hashing them and building the frame's
//! head run on threads of their own, joined by bounded queues, so the slowest stage sets
//! the pace while the sending stage (the caller's thread) writes the previous frame.
//!
//! ```text
//! reader ──(READ_DEPTH frames)──► hasher ──(READY_DEPTH frames)──► sending stage
//!   ▲                                                                   │
//!   └──────────────── frame buffers come back for reuse ◄───────────────┘
//! ```
//!
//! The sending stage moves the reader with a seek (go-back-N after a NACK, a resume on a
//! new connection): each seek starts a new epoch, and frames of an older epoch still in
//! the queues are dropped as they come out, so every frame sent after a seek was read
//! again from the source. The stages end when the [`Pipeline`] is dropped: every queue
//! then reports a closed peer.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::Scope;
use std::time::{Duration, Instant};

use super::{FramePlan, NotingSource};
use crate::wire::{
    block_digest, encode_block_head, BlockDigest, BLOCK_META_LEN, HASH_LEN, HEADER_LEN,
};

/// Frames read and waiting for the hasher.
const READ_DEPTH: usize = 4;
/// Frames hashed and framed, waiting for the sending stage.
const READY_DEPTH: usize = 4;
/// Alignment of frame buffers: O_DIRECT reads land in them without a bounce copy.
pub const BUF_ALIGN: usize = 4096;

/// A frame-sized buffer whose start is aligned to [`BUF_ALIGN`], reused across frames.
pub struct FrameBuf {
    bytes: Vec<u8>,
    start: usize,
    cap: usize,
}

impl FrameBuf {
    pub fn new(cap: usize) -> FrameBuf {
        // Over-allocate and start at the first aligned byte; the vector never grows, so
        // the start stays put.
        let bytes = vec![0u8; cap + BUF_ALIGN];
        let start = bytes.as_ptr().align_offset(BUF_ALIGN).min(BUF_ALIGN);
        FrameBuf { bytes, start, cap }
    }

    pub fn get(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len.min(self.cap)]
    }

    pub fn get_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + len.min(self.cap)]
    }
}

/// Busy time of each background stage, in nanoseconds.
#[derive(Default)]
pub struct StageClock {
    read_ns: AtomicU64,
    hash_ns: AtomicU64,
}

impl StageClock {
    fn add(counter: &AtomicU64, d: Duration) {
        counter.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn read(&self) -> Duration {
        Duration::from_nanos(self.read_ns.load(Ordering::Relaxed))
    }

    pub fn hash(&self) -> Duration {
        Duration::from_nanos(self.hash_ns.load(Ordering::Relaxed))
    }
}

/// Where the reader goes next.
struct Seek {
    epoch: u64,
    seq: u64,
}

/// A frame as the reader produced it.
struct Read<N> {
    epoch: u64,
    seq: u64,
    first_block: u64,
    len: usize,
    buf: FrameBuf,
    note: io::Result<N>,
}

/// A frame ready to send: its data, the hash of each block, the encoded frame head
/// (everything but the data), and the source's note.
pub struct Ready<N> {
    pub seq: u64,
    pub first_block: u64,
    pub len: usize,
    pub buf: FrameBuf,
    pub hashes: Vec<BlockDigest>,
    pub head: Vec<u8>,
    /// The read failed: no hashes, no head.
    pub note: io::Result<N>,
    epoch: u64,
}

/// The background stages stopped before the frame came (a stage panicked).
#[derive(Debug)]
pub struct StagesGone;

/// The sending stage's handle on the pipeline.
pub struct Pipeline<N> {
    seek_tx: Sender<Seek>,
    ready_rx: Receiver<Ready<N>>,
    free_tx: Sender<FrameBuf>,
    epoch: u64,
    /// Sequence number of the next frame of the current epoch.
    next: u64,
}

impl<N: Send> Pipeline<N> {
    /// Starts the reader and the hasher in `scope`, reading from frame 0 at once.
    pub fn start<'scope, 'env, S>(
        scope: &'scope Scope<'scope, 'env>,
        plan: &'env FramePlan,
        block_size: u32,
        source: &'env mut S,
        clock: Arc<StageClock>,
    ) -> io::Result<Pipeline<N>>
    where
        S: NotingSource<Note = N>,
        N: 'env,
    {
        let (seek_tx, seek_rx) = mpsc::channel();
        let (free_tx, free_rx) = mpsc::channel();
        let (read_tx, read_rx) = mpsc::sync_channel(READ_DEPTH);
        let (ready_tx, ready_rx) = mpsc::sync_channel(READY_DEPTH);
        let frame_bytes = (plan.frame_blocks * u64::from(block_size)) as usize;
        let reader_clock = clock.clone();
        std::thread::Builder::new()
            .name("bw-send-read".into())
            .spawn_scoped(scope, move || {
                read_stage(
                    plan,
                    block_size as usize,
                    frame_bytes,
                    source,
                    seek_rx,
                    free_rx,
                    read_tx,
                    &reader_clock,
                )
            })?;
        std::thread::Builder::new()
            .name("bw-send-hash".into())
            .spawn_scoped(scope, move || {
                hash_stage(block_size as usize, read_rx, ready_tx, &clock)
            })?;
        // Fails only when the reader is gone, which `take` then reports.
        let _ = seek_tx.send(Seek { epoch: 0, seq: 0 });
        Ok(Pipeline {
            seek_tx,
            ready_rx,
            free_tx,
            epoch: 0,
            next: 0,
        })
    }

    /// Frame `seq`, waiting at most `wait`: `Ok(None)` when it is not ready yet. Asking
    /// for another frame than the next one in order moves the reader there first.
    pub fn take(&mut self, seq: u64, wait: Duration) -> Result<Option<Ready<N>>, StagesGone> {
        if seq != self.next {
            self.epoch += 1;
            self.next = seq;
            self.seek_tx
                .send(Seek {
                    epoch: self.epoch,
                    seq,
                })
                .map_err(|_| StagesGone)?;
        }
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let r = match self.ready_rx.recv_timeout(left) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err(StagesGone),
            };
            if r.epoch != self.epoch {
                // Read before the last seek: that frame is read again.
                self.give_back(r.buf);
                continue;
            }
            debug_assert_eq!(r.seq, self.next, "the reader delivers frames in order");
            self.next = r.seq + 1;
            return Ok(Some(r));
        }
    }

    /// Returns a frame's buffer for the reader to reuse.
    pub fn give_back(&self, buf: FrameBuf) {
        // The reader may be gone already; the buffer is then simply freed.
        let _ = self.free_tx.send(buf);
    }
}

/// Reads frames in order from the last seek on, until told otherwise or the plan ends.
#[allow(clippy::too_many_arguments)]
fn read_stage<S: NotingSource>(
    plan: &FramePlan,
    bs: usize,
    frame_bytes: usize,
    source: &mut S,
    seeks: Receiver<Seek>,
    free: Receiver<FrameBuf>,
    out: SyncSender<Read<S::Note>>,
    clock: &StageClock,
) {
    // (epoch, next sequence number) while there is something to read.
    let mut at: Option<(u64, u64)> = None;
    loop {
        let seek = if at.is_some() {
            match seeks.try_recv() {
                Ok(s) => Some(s),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        } else {
            match seeks.recv() {
                Ok(s) => Some(s),
                Err(_) => return,
            }
        };
        if let Some(s) = seek {
            at = Some((s.epoch, s.seq));
            continue;
        }
        let Some((epoch, seq)) = at else { continue };
        if seq >= plan.frames {
            at = None;
            continue;
        }
        let (first_block, blocks) = plan.frame(seq);
        let len = blocks as usize * bs;
        let mut buf = free
            .try_recv()
            .unwrap_or_else(|_| FrameBuf::new(frame_bytes));
        let t = Instant::now();
        let note = source.read_noting(first_block, buf.get_mut(len));
        StageClock::add(&clock.read_ns, t.elapsed());
        // After a failed read, wait for the sending stage to decide (it fails the session).
        at = if note.is_ok() {
            Some((epoch, seq + 1))
        } else {
            None
        };
        let frame = Read {
            epoch,
            seq,
            first_block,
            len,
            buf,
            note,
        };
        if out.send(frame).is_err() {
            return;
        }
    }
}

/// Hashes every block of each frame and encodes the frame's head.
fn hash_stage<N>(
    bs: usize,
    input: Receiver<Read<N>>,
    out: SyncSender<Ready<N>>,
    clock: &StageClock,
) {
    for r in input {
        let t = Instant::now();
        let mut hashes = Vec::new();
        let mut head = Vec::new();
        if r.note.is_ok() {
            let data = r.buf.get(r.len);
            hashes = data.chunks_exact(bs).map(block_digest).collect();
            head.reserve(HEADER_LEN + BLOCK_META_LEN + HASH_LEN * hashes.len());
            // The plan keeps frames within the protocol's limits; should it not, the
            // sending stage sees an empty head and fails the session.
            let _ = encode_block_head(&mut head, r.seq, r.first_block * bs as u64, &hashes, r.len);
        }
        StageClock::add(&clock.hash_ns, t.elapsed());
        let ready = Ready {
            seq: r.seq,
            first_block: r.first_block,
            len: r.len,
            buf: r.buf,
            hashes,
            head,
            note: r.note,
            epoch: r.epoch,
        };
        if out.send(ready).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_buffers_are_aligned() {
        for cap in [4096, 65536, 256 * 1024 + 512] {
            let mut b = FrameBuf::new(cap);
            assert_eq!(b.get_mut(cap).as_ptr() as usize % BUF_ALIGN, 0);
            assert_eq!(b.get(cap).len(), cap);
        }
    }
}
