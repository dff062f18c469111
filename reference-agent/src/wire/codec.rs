//! Byte layout of frames: encoding and decoding (see docs/wire-protocol.md).
//!
//! Frame = 20-byte header + payload. Header: magic "BWWP", version u8, kind u8, flags
//! u16 (zero), payload length u32, body CRC-32 u32, header CRC-32 u32 (over bytes
//! 0..16). All integers little-endian. The body CRC covers the whole payload, except for
//! block frames where it covers the fixed fields and hashes but not the data (a per-block
//! xxh3-128 covers each block of data, so a flipped data bit is NACKed, not fatal). So a
//! block frame's head can be built without touching its data, and the data sent from
//! where it was read.

use super::frame::{
    Accept, Ack, BackupKind, BlockView, End, ErrorCode, ErrorFrame, FailReason, Frame, FrameKind,
    Nack, NackReason, Outcome, SessionHeader, SessionId, SessionResult,
};
use super::{
    crc32, BlockDigest, WireError, BLOCK_META_LEN, HASH_LEN, HEADER_LEN, MAGIC, MAX_BAD_BLOCKS,
    MAX_BLOCK_DATA, MAX_BLOCK_PAYLOAD, MAX_CONTROL_PAYLOAD, MAX_HASHES, MAX_MESSAGE, VERSION,
};

/// A decoded frame; block frames borrow their data from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameView<'a> {
    Block(BlockView<'a>),
    Other(Frame),
}

impl FrameView<'_> {
    pub fn kind(&self) -> FrameKind {
        match self {
            FrameView::Block(_) => FrameKind::Block,
            FrameView::Other(f) => f.kind(),
        }
    }

    pub fn to_owned_frame(&self) -> Frame {
        match self {
            FrameView::Block(b) => Frame::Block(b.to_owned_frame()),
            FrameView::Other(f) => f.clone(),
        }
    }
}

struct RawHeader {
    kind: FrameKind,
    payload_len: usize,
    body_crc: u32,
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks as much of a frame header as `buf` holds; `Ok(None)` means "need more bytes".
///
/// Order matters for telling damage from a peer that breaks the rules: the magic, then
/// the header CRC, and only then the version and the other fields. So a flipped bit
/// anywhere in the header is a checksum error, and a version or kind error means an
/// intact header that says something this build does not accept. The 20-byte header
/// layout is the same in every protocol version.
fn parse_header(buf: &[u8]) -> Result<Option<RawHeader>, WireError> {
    let m = buf.len().min(MAGIC.len());
    if buf[..m] != MAGIC[..m] {
        let mut found = [0u8; 4];
        found[..m].copy_from_slice(&buf[..m]);
        return Err(WireError::BadMagic { found });
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let expected = le_u32(&buf[16..20]);
    let found = crc32(&buf[..16]);
    if expected != found {
        return Err(WireError::HeaderChecksum { expected, found });
    }
    if buf[4] != VERSION {
        return Err(WireError::UnsupportedVersion { version: buf[4] });
    }
    let kind = FrameKind::from_u8(buf[5]).ok_or(WireError::UnknownKind { kind: buf[5] })?;
    let flags = le_u16(&buf[6..8]);
    if flags != 0 {
        return Err(WireError::ReservedFlags { flags });
    }
    let payload_len = le_u32(&buf[8..12]) as usize;
    let max = match kind {
        FrameKind::Block => MAX_BLOCK_PAYLOAD,
        _ => MAX_CONTROL_PAYLOAD,
    };
    if payload_len > max {
        return Err(WireError::Oversize {
            kind,
            len: payload_len,
            max,
        });
    }
    Ok(Some(RawHeader {
        kind,
        payload_len,
        body_crc: le_u32(&buf[12..16]),
    }))
}

/// Decodes the frame at the start of `buf` without copying block data.
///
/// `Ok(None)`: `buf` is a valid beginning of a frame but too short; read more.
/// `Ok(Some((frame, len)))`: the frame and how many bytes of `buf` it used.
pub fn decode_view(buf: &[u8]) -> Result<Option<(FrameView<'_>, usize)>, WireError> {
    let Some(h) = parse_header(buf)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + h.payload_len;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[HEADER_LEN..total];
    let covered = match h.kind {
        FrameKind::Block => block_covered_len(payload)?,
        _ => payload.len(),
    };
    let found = crc32(&payload[..covered]);
    if found != h.body_crc {
        return Err(WireError::BodyChecksum {
            kind: h.kind,
            expected: h.body_crc,
            found,
        });
    }
    let view = decode_payload(h.kind, payload)?;
    Ok(Some((view, total)))
}

/// Decodes and copies the frame at the start of `buf` (see [`decode_view`]).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    Ok(decode_view(buf)?.map(|(v, n)| (v.to_owned_frame(), n)))
}

/// Offset of the first position in `buf` where a frame could start: a whole header with
/// the magic and a valid header CRC (any version, so a newer peer gets a clear error
/// rather than silence) or, at the tail, a prefix of the magic. `buf.len()` when there is
/// none. Used to skip stale bytes at the start of a connection.
pub fn sync_offset(buf: &[u8]) -> usize {
    let mut i = 0;
    while i < buf.len() {
        let rest = &buf[i..];
        if rest[0] == MAGIC[0] {
            if rest.len() < HEADER_LEN {
                let m = rest.len().min(MAGIC.len());
                if rest[..m] == MAGIC[..m] {
                    return i;
                }
            } else if rest[..4] == MAGIC && crc32(&rest[..16]) == le_u32(&rest[16..20]) {
                return i;
            }
        }
        i += 1;
    }
    buf.len()
}

fn block_covered_len(payload: &[u8]) -> Result<usize, WireError> {
    let bad = |what: &str| WireError::malformed(FrameKind::Block, what);
    if payload.len() < BLOCK_META_LEN {
        return Err(bad("payload shorter than the fixed block fields"));
    }
    let n = le_u32(&payload[20..24]) as usize;
    if n == 0 || n > MAX_HASHES {
        return Err(WireError::malformed(
            FrameKind::Block,
            format!("hash count {n} is not in 1..={MAX_HASHES}"),
        ));
    }
    let covered = BLOCK_META_LEN + HASH_LEN * n;
    if covered > payload.len() {
        return Err(bad("hash count runs past the payload"));
    }
    Ok(covered)
}

/// Sequential reader over a payload; every short read is a `Malformed` error.
struct Cursor<'a> {
    kind: FrameKind,
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::malformed(self.kind, "payload too short"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(le_u16(self.take(2)?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(le_u32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn arr32(&mut self) -> Result<[u8; 32], WireError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn session(&mut self) -> Result<SessionId, WireError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(SessionId(a))
    }
    fn string(&mut self, max: usize) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(WireError::malformed(
                self.kind,
                format!("string of {n} bytes exceeds {max}"),
            ));
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| WireError::malformed(self.kind, "string is not UTF-8"))
    }
    fn zero(&mut self, n: usize, what: &str) -> Result<(), WireError> {
        if self.take(n)?.iter().any(|b| *b != 0) {
            return Err(WireError::malformed(
                self.kind,
                format!("reserved {what} is not zero"),
            ));
        }
        Ok(())
    }
    fn end(&self) -> Result<(), WireError> {
        if !self.buf.is_empty() {
            return Err(WireError::malformed(
                self.kind,
                format!("{} trailing bytes", self.buf.len()),
            ));
        }
        Ok(())
    }
}

fn decode_payload(kind: FrameKind, payload: &[u8]) -> Result<FrameView<'_>, WireError> {
    let mut c = Cursor { kind, buf: payload };
    let frame = match kind {
        FrameKind::Block => {
            let seq = c.u64()?;
            let offset = c.u64()?;
            let len = c.u32()? as usize;
            let n = c.u32()? as usize;
            let hashes = c.take(HASH_LEN * n)?;
            if len == 0 || len > MAX_BLOCK_DATA || !len.is_multiple_of(n) {
                return Err(WireError::malformed(
                    kind,
                    format!(
                        "data length {len} is not a non-zero multiple of the hash count {n} up to {MAX_BLOCK_DATA}"
                    ),
                ));
            }
            let data = c.take(len)?;
            c.end()?;
            return Ok(FrameView::Block(BlockView {
                seq,
                offset,
                hashes,
                data,
            }));
        }
        FrameKind::Header => {
            let session = c.session()?;
            let volume_size = c.u64()?;
            let block_size = c.u32()?;
            let generation = c.u32()?;
            let k = c.u8()?;
            let resume = match c.u8()? {
                0 => false,
                1 => true,
                v => return Err(WireError::malformed(kind, format!("resume flag {v}"))),
            };
            c.zero(2, "field")?;
            let parent = c.u32()?;
            let backup = match (k, parent) {
                (0, 0) => BackupKind::Full,
                (0, p) => {
                    return Err(WireError::malformed(
                        kind,
                        format!("full backup with parent generation {p}"),
                    ))
                }
                (1, p) => BackupKind::Incremental { parent: p },
                (k, _) => return Err(WireError::malformed(kind, format!("backup kind {k}"))),
            };
            let volume_id = c.string(super::MAX_VOLUME_ID)?;
            c.end()?;
            let h = SessionHeader {
                session,
                volume_id,
                volume_size,
                block_size,
                generation,
                kind: backup,
                resume,
            };
            h.validate()?;
            Frame::Header(h)
        }
        FrameKind::Accept => {
            let session = c.session()?;
            let next_seq = c.u64()?;
            c.end()?;
            Frame::Accept(Accept { session, next_seq })
        }
        FrameKind::Ack => {
            let session = c.session()?;
            let next_seq = c.u64()?;
            c.end()?;
            Frame::Ack(Ack { session, next_seq })
        }
        FrameKind::Nack => {
            let session = c.session()?;
            let seq = c.u64()?;
            let reason = match c.u8()? {
                1 => NackReason::HashMismatch,
                2 => NackReason::Missing,
                r => return Err(WireError::malformed(kind, format!("nack reason {r}"))),
            };
            c.zero(3, "bytes")?;
            c.end()?;
            Frame::Nack(Nack {
                session,
                seq,
                reason,
            })
        }
        FrameKind::End => {
            let session = c.session()?;
            let frame_count = c.u64()?;
            let block_count = c.u64()?;
            let manifest_digest = c.arr32()?;
            c.end()?;
            Frame::End(End {
                session,
                frame_count,
                block_count,
                manifest_digest,
            })
        }
        FrameKind::Result => {
            let session = c.session()?;
            let status = c.u8()?;
            let reason = c.u8()?;
            c.zero(2, "bytes")?;
            let generation = c.u32()?;
            let block_count = c.u64()?;
            let bad_total = c.u64()?;
            let bad_count = c.u32()? as usize;
            if bad_count > MAX_BAD_BLOCKS {
                return Err(WireError::malformed(
                    kind,
                    format!("{bad_count} bad blocks listed, at most {MAX_BAD_BLOCKS}"),
                ));
            }
            let mut bad_blocks = Vec::with_capacity(bad_count);
            for _ in 0..bad_count {
                bad_blocks.push(c.u64()?);
            }
            let message = c.string(MAX_MESSAGE)?;
            c.end()?;
            let outcome = match status {
                0 => {
                    if reason != 0 || bad_total != 0 || bad_count != 0 || !message.is_empty() {
                        return Err(WireError::malformed(
                            kind,
                            "committed result carries failure fields",
                        ));
                    }
                    Outcome::Committed {
                        generation,
                        block_count,
                    }
                }
                1 => {
                    let reason = match reason {
                        1 => FailReason::Verification,
                        2 => FailReason::Manifest,
                        3 => FailReason::Storage,
                        4 => FailReason::Protocol,
                        5 => FailReason::Aborted,
                        r => return Err(WireError::malformed(kind, format!("failure reason {r}"))),
                    };
                    if generation != 0 || block_count != 0 || bad_total < bad_count as u64 {
                        return Err(WireError::malformed(
                            kind,
                            "failed result carries inconsistent counts",
                        ));
                    }
                    Outcome::Failed {
                        reason,
                        message,
                        bad_blocks,
                        bad_total,
                    }
                }
                s => return Err(WireError::malformed(kind, format!("result status {s}"))),
            };
            Frame::Result(SessionResult { session, outcome })
        }
        FrameKind::Error => {
            let session = c.session()?;
            let code = c.u16()?;
            let code = ErrorCode::from_u16(code)
                .ok_or_else(|| WireError::malformed(kind, format!("error code {code}")))?;
            let message = c.string(MAX_MESSAGE)?;
            c.end()?;
            Frame::Error(ErrorFrame {
                session,
                code,
                message,
            })
        }
    };
    Ok(FrameView::Other(frame))
}

fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    start
}

/// Fills in the header of the frame that starts at `start` and runs to the end of `out`
/// plus `pending` bytes the caller appends or sends after it (block data).
fn finish(out: &mut [u8], start: usize, kind: FrameKind, covered: usize, pending: usize) {
    let payload_len = out.len() - start - HEADER_LEN + pending;
    let body = &out[start + HEADER_LEN..start + HEADER_LEN + covered];
    let body_crc = crc32(body);
    let h = &mut out[start..start + HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = kind as u8;
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&body_crc.to_le_bytes());
    let head_crc = crc32(&h[..16]);
    h[16..20].copy_from_slice(&head_crc.to_le_bytes());
}

fn put_string(out: &mut Vec<u8>, kind: FrameKind, s: &str, max: usize) -> Result<(), WireError> {
    if s.len() > max {
        return Err(WireError::malformed(
            kind,
            format!("string of {} bytes exceeds {max}", s.len()),
        ));
    }
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Appends a block frame to `out` without building a [`BlockFrame`] first.
pub fn encode_block(
    out: &mut Vec<u8>,
    seq: u64,
    offset: u64,
    hashes: &[BlockDigest],
    data: &[u8],
) -> Result<(), WireError> {
    out.reserve(HEADER_LEN + BLOCK_META_LEN + HASH_LEN * hashes.len() + data.len());
    encode_block_head(out, seq, offset, hashes, data.len())?;
    out.extend_from_slice(data);
    Ok(())
}

/// Appends everything of a block frame but its `data_len` bytes of data, which the
/// caller sends right after (the body CRC does not cover block data, so the head is
/// complete without it). Appends nothing on error.
pub fn encode_block_head(
    out: &mut Vec<u8>,
    seq: u64,
    offset: u64,
    hashes: &[BlockDigest],
    data_len: usize,
) -> Result<(), WireError> {
    let n = hashes.len();
    if n == 0 || n > MAX_HASHES {
        return Err(WireError::malformed(
            FrameKind::Block,
            format!("hash count {n} is not in 1..={MAX_HASHES}"),
        ));
    }
    if data_len == 0 || data_len > MAX_BLOCK_DATA || !data_len.is_multiple_of(n) {
        return Err(WireError::malformed(
            FrameKind::Block,
            format!(
                "data length {data_len} is not a non-zero multiple of the hash count {n} up to {MAX_BLOCK_DATA}"
            ),
        ));
    }
    let start = begin(out);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for h in hashes {
        out.extend_from_slice(h);
    }
    let covered = BLOCK_META_LEN + HASH_LEN * n;
    finish(out, start, FrameKind::Block, covered, data_len);
    Ok(())
}

impl Frame {
    /// Appends the encoded frame to `out`. Fails (and appends nothing) when the frame
    /// breaks a rule the decoder enforces, so whatever encodes also decodes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if let Frame::Block(b) = self {
            return encode_block(out, b.seq, b.offset, &b.hashes, &b.data);
        }
        let kind = self.kind();
        let start = begin(out);
        let r = self.encode_payload(out);
        if let Err(e) = r {
            out.truncate(start);
            return Err(e);
        }
        let len = out.len() - start - HEADER_LEN;
        if len > MAX_CONTROL_PAYLOAD {
            out.truncate(start);
            return Err(WireError::Oversize {
                kind,
                len,
                max: MAX_CONTROL_PAYLOAD,
            });
        }
        finish(out, start, kind, len, 0);
        Ok(())
    }

    /// The encoded frame as a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }

    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let kind = self.kind();
        match self {
            // `encode` hands block frames to `encode_block` before reaching here.
            Frame::Block(_) => {
                return Err(WireError::malformed(kind, "encoded through encode_block"))
            }
            Frame::Header(h) => {
                h.validate()?;
                out.extend_from_slice(&h.session.0);
                out.extend_from_slice(&h.volume_size.to_le_bytes());
                out.extend_from_slice(&h.block_size.to_le_bytes());
                out.extend_from_slice(&h.generation.to_le_bytes());
                let (k, parent) = match h.kind {
                    BackupKind::Full => (0u8, 0u32),
                    BackupKind::Incremental { parent } => (1, parent),
                };
                out.push(k);
                out.push(u8::from(h.resume));
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&parent.to_le_bytes());
                put_string(out, kind, &h.volume_id, super::MAX_VOLUME_ID)?;
            }
            Frame::Accept(a) => {
                out.extend_from_slice(&a.session.0);
                out.extend_from_slice(&a.next_seq.to_le_bytes());
            }
            Frame::Ack(a) => {
                out.extend_from_slice(&a.session.0);
                out.extend_from_slice(&a.next_seq.to_le_bytes());
            }
            Frame::Nack(n) => {
                out.extend_from_slice(&n.session.0);
                out.extend_from_slice(&n.seq.to_le_bytes());
                out.push(n.reason as u8);
                out.extend_from_slice(&[0, 0, 0]);
            }
            Frame::End(e) => {
                out.extend_from_slice(&e.session.0);
                out.extend_from_slice(&e.frame_count.to_le_bytes());
                out.extend_from_slice(&e.block_count.to_le_bytes());
                out.extend_from_slice(&e.manifest_digest);
            }
            Frame::Result(r) => {
                out.extend_from_slice(&r.session.0);
                match &r.outcome {
                    Outcome::Committed {
                        generation,
                        block_count,
                    } => {
                        out.extend_from_slice(&[0, 0, 0, 0]);
                        out.extend_from_slice(&generation.to_le_bytes());
                        out.extend_from_slice(&block_count.to_le_bytes());
                        out.extend_from_slice(&0u64.to_le_bytes());
                        out.extend_from_slice(&0u32.to_le_bytes());
                        put_string(out, kind, "", MAX_MESSAGE)?;
                    }
                    Outcome::Failed {
                        reason,
                        message,
                        bad_blocks,
                        bad_total,
                    } => {
                        if bad_blocks.len() > MAX_BAD_BLOCKS || *bad_total < bad_blocks.len() as u64
                        {
                            return Err(WireError::malformed(
                                kind,
                                format!(
                                    "{} bad blocks listed (at most {MAX_BAD_BLOCKS}) with a total of {bad_total}",
                                    bad_blocks.len()
                                ),
                            ));
                        }
                        out.extend_from_slice(&[1, *reason as u8, 0, 0]);
                        out.extend_from_slice(&0u32.to_le_bytes());
                        out.extend_from_slice(&0u64.to_le_bytes());
                        out.extend_from_slice(&bad_total.to_le_bytes());
                        out.extend_from_slice(&(bad_blocks.len() as u32).to_le_bytes());
                        for b in bad_blocks {
                            out.extend_from_slice(&b.to_le_bytes());
                        }
                        put_string(out, kind, message, MAX_MESSAGE)?;
                    }
                }
            }
            Frame::Error(e) => {
                out.extend_from_slice(&e.session.0);
                out.extend_from_slice(&(e.code as u16).to_le_bytes());
                put_string(out, kind, &e.message, MAX_MESSAGE)?;
            }
        }
        Ok(())
    }
}

/// Cuts a message to the protocol's limit on a character boundary.
pub fn clip_message(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl ErrorFrame {
    /// An error frame with the message clipped to the protocol's limit.
    pub fn new(session: SessionId, code: ErrorCode, message: &str) -> ErrorFrame {
        ErrorFrame {
            session,
            code,
            message: clip_message(message),
        }
    }
}
