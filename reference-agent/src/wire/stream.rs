//! Incremental frame parsing over a byte stream: bytes arrive in pieces, frames come out
//! whole. Optionally skips stale bytes until the first valid frame (resynchronisation at
//! the start of a connection, where a previous writer may have left half a frame).

use super::codec::{decode_view, sync_offset, FrameView};
use super::{WireError, MAX_FRAME_LEN};

/// What [`FrameBuffer::next_item`] found.
#[derive(Debug)]
pub enum Item<'a> {
    /// A whole frame and its exact bytes.
    Frame { view: FrameView<'a>, raw: &'a [u8] },
    /// Bytes skipped while resynchronising (never part of a frame).
    Skipped(&'a [u8]),
}

/// A receive buffer that yields whole frames.
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    syncing: bool,
    skipped: u64,
    /// Bytes skipped since syncing was last turned on.
    sync_skipped: u64,
}

impl Default for FrameBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBuffer {
    /// Minimum free space offered to a reader.
    const READ_CHUNK: usize = 256 * 1024;

    pub fn new() -> Self {
        FrameBuffer {
            buf: vec![0; MAX_FRAME_LEN + Self::READ_CHUNK],
            start: 0,
            end: 0,
            syncing: false,
            skipped: 0,
            sync_skipped: 0,
        }
    }

    /// When on, bytes that cannot start a valid frame are skipped (and reported) until a
    /// frame decodes; then it turns itself off. Skipping more than a whole frame's worth
    /// without finding one is an error ([`WireError::NoFrame`]): that is not stale
    /// bytes but a peer that does not speak the protocol.
    pub fn set_syncing(&mut self, on: bool) {
        self.syncing = on;
        self.sync_skipped = 0;
    }

    pub fn is_syncing(&self) -> bool {
        self.syncing
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Total bytes skipped while resynchronising.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Consumes up to `n` buffered bytes without parsing them and returns them (a relay
    /// forwards bytes it cannot parse as they are).
    pub fn discard(&mut self, n: usize) -> &[u8] {
        let at = self.start;
        let n = n.min(self.end - self.start);
        self.start += n;
        self.skipped += n as u64;
        &self.buf[at..at + n]
    }

    /// Drops everything buffered (after a connection is replaced).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Free space at the tail for a reader to fill (at least 256 KiB); pair with
    /// [`FrameBuffer::commit`].
    pub fn space(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < Self::READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < Self::READ_CHUNK {
                // Many small frames left unconsumed: grow rather than offer no space.
                self.buf.resize(self.end + Self::READ_CHUNK, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the last [`FrameBuffer::space`] as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends bytes (for callers that already hold them).
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let space = self.space();
            let n = space.len().min(bytes.len());
            space[..n].copy_from_slice(&bytes[..n]);
            self.commit(n);
            bytes = &bytes[n..];
        }
    }

    /// The next frame or skipped run; `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Item<'_>>, WireError> {
        let FrameBuffer {
            buf,
            start,
            end,
            syncing,
            skipped,
            sync_skipped,
        } = self;
        // Only the cursor fields change below; the bytes are shared with what is returned.
        let buf: &Vec<u8> = buf;
        if *syncing && *sync_skipped > MAX_FRAME_LEN as u64 {
            return Err(WireError::NoFrame {
                skipped: *sync_skipped,
            });
        }
        if *start == *end {
            return Ok(None);
        }
        let at = *start;
        let avail = &buf[at..*end];
        if *syncing {
            let off = sync_offset(avail);
            if off > 0 {
                *start += off;
                *skipped += off as u64;
                *sync_skipped += off as u64;
                return Ok(Some(Item::Skipped(&avail[..off])));
            }
        }
        match decode_view(avail) {
            Ok(None) => Ok(None),
            Ok(Some((view, n))) => {
                *syncing = false;
                *start += n;
                Ok(Some(Item::Frame {
                    view,
                    raw: &avail[..n],
                }))
            }
            Err(e) if *syncing && e.is_damage() => {
                *start += 1;
                *skipped += 1;
                *sync_skipped += 1;
                Ok(Some(Item::Skipped(&avail[..1])))
            }
            Err(e) => Err(e),
        }
    }

    /// The next frame, skipping (and counting) resync bytes; `Ok(None)` = need more bytes.
    pub fn next_frame(&mut self) -> Result<Option<FrameView<'_>>, WireError> {
        let FrameBuffer {
            buf,
            start,
            end,
            syncing,
            skipped,
            sync_skipped,
        } = self;
        let buf: &Vec<u8> = buf;
        loop {
            if *syncing && *sync_skipped > MAX_FRAME_LEN as u64 {
                return Err(WireError::NoFrame {
                    skipped: *sync_skipped,
                });
            }
            if *start == *end {
                return Ok(None);
            }
            let avail = &buf[*start..*end];
            if *syncing {
                let off = sync_offset(avail);
                if off > 0 {
                    *start += off;
                    *skipped += off as u64;
                    *sync_skipped += off as u64;
                    continue;
                }
            }
            match decode_view(avail) {
                Ok(None) => return Ok(None),
                Ok(Some((view, n))) => {
                    *syncing = false;
                    *start += n;
                    return Ok(Some(view));
                }
                Err(e) if *syncing && e.is_damage() => {
                    *start += 1;
                    *skipped += 1;
                    *sync_skipped += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ack, Frame, SessionId};

    fn ack(n: u64) -> Vec<u8> {
        Frame::Ack(Ack {
            session: SessionId([7; 16]),
            next_seq: n,
        })
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn frames_arrive_in_pieces() {
        let mut bytes = ack(1);
        bytes.extend(ack(2));
        let mut fb = FrameBuffer::new();
        let mut got = Vec::new();
        for b in &bytes {
            fb.push(&[*b]);
            while let Some(v) = fb.next_frame().unwrap() {
                got.push(v.to_owned_frame());
            }
        }
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Frame::Ack(Ack { next_seq: 2, .. })));
        assert_eq!(fb.buffered(), 0);
    }

    #[test]
    fn resync_skips_stale_bytes_only_when_asked() {
        let mut bytes = b"BWxx garbage BW".to_vec();
        let stale = bytes.len();
        bytes.extend(ack(5));
        let mut fb = FrameBuffer::new();
        fb.push(&bytes);
        assert!(fb.next_frame().is_err());
        fb.set_syncing(true);
        let f = fb.next_frame().unwrap().unwrap().to_owned_frame();
        assert!(matches!(f, Frame::Ack(Ack { next_seq: 5, .. })));
        assert_eq!(fb.skipped(), stale as u64);
        assert!(!fb.is_syncing());
    }
}
