//! The byte formats `bw-pipe` speaks with the harness, each with a streaming decoder
//! the host uses (bytes arrive from a virtio-serial port in pieces of any size).
//!
//! **Reader records** (port `bw.reader`): a session header, then one record per block
//! the reader read, then an end record.
//!
//! ```text
//! header:  "BWR1" | u32 le name length | name | u64 le block count
//! record:  u64 le block | u8 tag | payload
//!          tag 0 EQUAL:       4096 snapshot bytes (the live read was the same)
//!          tag 1 DIFFERS:     4096 snapshot bytes, 4096 live bytes
//!          tag 2 LIVE_ERROR:  4096 snapshot bytes (the live read failed)
//!          tag 3 SNAP_ERROR:  nothing (the snapshot read failed, e.g. an invalidated
//!                             dm snapshot answers EIO)
//! end:     u64 le u64::MAX | u8 255 | u64 le records written
//! ```
//!
//! **Channel** (port `bw.channel`, where a product streams its backup through the
//! harness): either the raw volume image from byte 0, or extents:
//!
//! ```text
//! "BWX1 extents\n"
//! "EXTENT <offset> <length>\n" then <length> bytes     (repeated; multiples of 4 KiB)
//! "END\n"
//! ```
//!
//! A raw stream is told from an extents stream by its first 13 bytes.
//!
//! **Instant** (port `bw.instant`): JSON lines. The product (through `bw-pipe instant`)
//! says `{"type":"instant","instant_ns":N}` while its volumes are frozen; the harness
//! takes its truth and answers `{"type":"continue"}` or `{"type":"abort","reason":...}`.

use serde::{Deserialize, Serialize};

/// The 4 KiB unit of every record.
pub const BLOCK: usize = 4096;
pub const READER_MAGIC: &[u8; 4] = b"BWR1";
pub const READER_PORT: &str = "bw.reader";
pub const CHANNEL_PORT: &str = "bw.channel";
pub const INSTANT_PORT: &str = "bw.instant";
/// The first line of an extents stream on the channel.
pub const EXTENTS_MAGIC: &[u8] = b"BWX1 extents\n";
/// Longest header line of an extents stream.
const MAX_LINE: usize = 128;

pub const TAG_EQUAL: u8 = 0;
pub const TAG_DIFFERS: u8 = 1;
pub const TAG_LIVE_ERROR: u8 = 2;
pub const TAG_SNAP_ERROR: u8 = 3;
pub const TAG_END: u8 = 255;

/// The instant handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum InstantMessage {
    /// The volumes are frozen and the snapshot exists: take the truth now.
    Instant {
        /// CLOCK_MONOTONIC ns in the guest.
        instant_ns: u64,
    },
    Continue,
    Abort {
        reason: String,
    },
}

/// The session header of a reader stream.
pub fn reader_header(volume: &str, blocks: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + volume.len());
    out.extend_from_slice(READER_MAGIC);
    out.extend_from_slice(&(volume.len() as u32).to_le_bytes());
    out.extend_from_slice(volume.as_bytes());
    out.extend_from_slice(&blocks.to_le_bytes());
    out
}

/// The end record of a reader stream.
pub fn reader_end(records: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.extend_from_slice(&u64::MAX.to_le_bytes());
    out.push(TAG_END);
    out.extend_from_slice(&records.to_le_bytes());
    out
}

/// One decoded reader event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaderEvent {
    Start {
        volume: String,
        blocks: u64,
    },
    /// A block: its snapshot bytes and, when the live read differed, the live bytes.
    Block {
        block: u64,
        snapshot: Option<Box<[u8]>>,
        live: LiveRead,
    },
    End {
        records: u64,
    },
}

/// What the live read of a block found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveRead {
    Equal,
    Differs(Box<[u8]>),
    /// Not read (it failed, or the snapshot read failed first).
    NotRead,
}

/// A malformed reader stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("reader stream: expected the BWR1 magic, found {found:?}")]
    BadMagic { found: Vec<u8> },
    #[error("reader stream: unknown record tag {tag} at block {block}")]
    BadTag { block: u64, tag: u8 },
    #[error("reader stream: a volume name of {len} bytes")]
    BadName { len: u32 },
    #[error("channel: bad extent header {line:?}")]
    BadExtent { line: String },
    #[error("channel: extent at {offset}+{length} is not in 4 KiB units")]
    Unaligned { offset: u64, length: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderState {
    Header,
    Records,
}

/// Decodes reader streams (one session after another) from bytes as they arrive.
#[derive(Debug)]
pub struct ReaderDecoder {
    buf: Vec<u8>,
    state: ReaderState,
}

impl Default for ReaderDecoder {
    fn default() -> Self {
        ReaderDecoder {
            buf: Vec::new(),
            state: ReaderState::Header,
        }
    }
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

impl ReaderDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the bytes so far hold one.
    pub fn next_event(&mut self) -> Result<Option<ReaderEvent>, WireError> {
        match self.state {
            ReaderState::Header => {
                if self.buf.len() < 8 {
                    return Ok(None);
                }
                if &self.buf[..4] != READER_MAGIC {
                    let found = self.buf[..4].to_vec();
                    // Resynchronise on the next magic, so one bad session does not
                    // poison the rest of the run.
                    let skip = self.buf[1..]
                        .windows(4)
                        .position(|w| w == READER_MAGIC)
                        .map_or(self.buf.len(), |p| p + 1);
                    self.buf.drain(..skip);
                    return Err(WireError::BadMagic { found });
                }
                let len = u32::from_le_bytes(self.buf[4..8].try_into().expect("4 bytes"));
                if len > 4096 {
                    self.buf.drain(..4);
                    return Err(WireError::BadName { len });
                }
                let need = 8 + len as usize + 8;
                if self.buf.len() < need {
                    return Ok(None);
                }
                let volume = String::from_utf8_lossy(&self.buf[8..8 + len as usize]).into_owned();
                let blocks = le64(&self.buf[8 + len as usize..]);
                self.buf.drain(..need);
                self.state = ReaderState::Records;
                Ok(Some(ReaderEvent::Start { volume, blocks }))
            }
            ReaderState::Records => {
                if self.buf.len() < 9 {
                    return Ok(None);
                }
                let block = le64(&self.buf);
                let tag = self.buf[8];
                let payload = match tag {
                    TAG_EQUAL | TAG_LIVE_ERROR => BLOCK,
                    TAG_DIFFERS => 2 * BLOCK,
                    TAG_SNAP_ERROR => 0,
                    TAG_END => 8,
                    other => {
                        self.state = ReaderState::Header;
                        self.buf.clear();
                        return Err(WireError::BadTag { block, tag: other });
                    }
                };
                if self.buf.len() < 9 + payload {
                    return Ok(None);
                }
                let body = &self.buf[9..9 + payload];
                let event = match tag {
                    TAG_END => {
                        self.state = ReaderState::Header;
                        ReaderEvent::End {
                            records: le64(body),
                        }
                    }
                    TAG_SNAP_ERROR => ReaderEvent::Block {
                        block,
                        snapshot: None,
                        live: LiveRead::NotRead,
                    },
                    TAG_EQUAL => ReaderEvent::Block {
                        block,
                        snapshot: Some(body.into()),
                        live: LiveRead::Equal,
                    },
                    TAG_LIVE_ERROR => ReaderEvent::Block {
                        block,
                        snapshot: Some(body.into()),
                        live: LiveRead::NotRead,
                    },
                    _ => ReaderEvent::Block {
                        block,
                        snapshot: Some(body[..BLOCK].into()),
                        live: LiveRead::Differs(body[BLOCK..].into()),
                    },
                };
                self.buf.drain(..9 + payload);
                Ok(Some(event))
            }
        }
    }
}

/// One decoded piece of a channel stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEvent {
    /// Bytes of the volume starting at `offset` (any length; a raw stream's bytes come in
    /// order from 0).
    Data { offset: u64, bytes: Vec<u8> },
    /// An extents stream began.
    ExtentsStart,
    /// An extent header: `length` bytes at `offset` follow.
    Extent { offset: u64, length: u64 },
    /// An extents stream ended properly.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChannelState {
    /// Not yet known whether raw or extents.
    Sniff,
    Raw {
        at: u64,
    },
    ExtentHeader,
    ExtentData {
        at: u64,
        left: u64,
    },
    Done,
}

/// Decodes one channel session from bytes as they arrive.
#[derive(Debug)]
pub struct ChannelDecoder {
    buf: Vec<u8>,
    state: ChannelState,
}

impl Default for ChannelDecoder {
    fn default() -> Self {
        ChannelDecoder {
            buf: Vec::new(),
            state: ChannelState::Sniff,
        }
    }
}

/// `EXTENT <offset> <length>` or `END`.
fn parse_extent_line(line: &[u8]) -> Result<Option<(u64, u64)>, WireError> {
    let text = String::from_utf8_lossy(line);
    let bad = || WireError::BadExtent {
        line: text.chars().take(80).collect(),
    };
    let mut words = text.split_whitespace();
    match words.next() {
        Some("END") if words.next().is_none() => Ok(None),
        Some("EXTENT") => {
            let offset: u64 = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let length: u64 = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            if words.next().is_some() {
                return Err(bad());
            }
            if !offset.is_multiple_of(BLOCK as u64) || !length.is_multiple_of(BLOCK as u64) {
                return Err(WireError::Unaligned { offset, length });
            }
            Ok(Some((offset, length)))
        }
        _ => Err(bad()),
    }
}

impl ChannelDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether an extents stream has ended.
    pub fn done(&self) -> bool {
        self.state == ChannelState::Done
    }

    /// Bytes held back (an unfinished header, or bytes after the end).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next event the bytes so far hold.
    pub fn next_event(&mut self) -> Result<Option<ChannelEvent>, WireError> {
        loop {
            match self.state {
                ChannelState::Sniff => {
                    let n = self.buf.len().min(EXTENTS_MAGIC.len());
                    if self.buf[..n] != EXTENTS_MAGIC[..n] {
                        self.state = ChannelState::Raw { at: 0 };
                        continue;
                    }
                    if n < EXTENTS_MAGIC.len() {
                        return Ok(None);
                    }
                    self.buf.drain(..EXTENTS_MAGIC.len());
                    self.state = ChannelState::ExtentHeader;
                    return Ok(Some(ChannelEvent::ExtentsStart));
                }
                ChannelState::Raw { at } => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let bytes = std::mem::take(&mut self.buf);
                    self.state = ChannelState::Raw {
                        at: at + bytes.len() as u64,
                    };
                    return Ok(Some(ChannelEvent::Data { offset: at, bytes }));
                }
                ChannelState::ExtentHeader => {
                    let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                        if self.buf.len() > MAX_LINE {
                            let line = String::from_utf8_lossy(&self.buf[..MAX_LINE]).into_owned();
                            self.buf.clear();
                            return Err(WireError::BadExtent { line });
                        }
                        return Ok(None);
                    };
                    let line: Vec<u8> = self.buf.drain(..=nl).collect();
                    return match parse_extent_line(&line[..nl])? {
                        None => {
                            self.state = ChannelState::Done;
                            Ok(Some(ChannelEvent::End))
                        }
                        Some((offset, length)) => {
                            self.state = ChannelState::ExtentData {
                                at: offset,
                                left: length,
                            };
                            Ok(Some(ChannelEvent::Extent { offset, length }))
                        }
                    };
                }
                ChannelState::ExtentData { at, left } => {
                    if left == 0 {
                        self.state = ChannelState::ExtentHeader;
                        continue;
                    }
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (left as usize).min(self.buf.len());
                    let bytes: Vec<u8> = self.buf.drain(..n).collect();
                    self.state = ChannelState::ExtentData {
                        at: at + n as u64,
                        left: left - n as u64,
                    };
                    return Ok(Some(ChannelEvent::Data { offset: at, bytes }));
                }
                ChannelState::Done => return Ok(None),
            }
        }
    }
}

/// Parses an extents list: one `<offset> <length>` pair per line, in bytes, 4 KiB
/// aligned; blank lines and `#` comments are skipped.
pub fn parse_extents(text: &str) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut w = line.split_whitespace();
        let parse = |w: Option<&str>| w.and_then(|x| x.parse::<u64>().ok());
        let (Some(offset), Some(length), None) = (parse(w.next()), parse(w.next()), w.next())
        else {
            return Err(format!(
                "line {}: expected `<offset> <length>`, found {line:?}",
                i + 1
            ));
        };
        if !offset.is_multiple_of(BLOCK as u64) || !length.is_multiple_of(BLOCK as u64) {
            return Err(format!(
                "line {}: {offset} {length} is not in 4 KiB units",
                i + 1
            ));
        }
        out.push((offset, length));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK]
    }

    #[test]
    fn reader_stream_round_trips_in_any_pieces() {
        let mut bytes = reader_header("data", 4);
        for (b, tag, payload) in [
            (0u64, TAG_EQUAL, block(1)),
            (1, TAG_DIFFERS, [block(2), block(3)].concat()),
            (2, TAG_SNAP_ERROR, vec![]),
            (3, TAG_LIVE_ERROR, block(4)),
        ] {
            bytes.extend_from_slice(&b.to_le_bytes());
            bytes.push(tag);
            bytes.extend_from_slice(&payload);
        }
        bytes.extend(reader_end(4));
        for piece in [1, 7, 4096, 100_000] {
            let mut d = ReaderDecoder::default();
            let mut events = Vec::new();
            for chunk in bytes.chunks(piece) {
                d.push(chunk);
                while let Some(e) = d.next_event().unwrap() {
                    events.push(e);
                }
            }
            assert_eq!(events.len(), 6, "piece {piece}");
            assert_eq!(
                events[0],
                ReaderEvent::Start {
                    volume: "data".into(),
                    blocks: 4
                }
            );
            assert_eq!(
                events[2],
                ReaderEvent::Block {
                    block: 1,
                    snapshot: Some(block(2).into()),
                    live: LiveRead::Differs(block(3).into())
                }
            );
            assert_eq!(
                events[3],
                ReaderEvent::Block {
                    block: 2,
                    snapshot: None,
                    live: LiveRead::NotRead
                }
            );
            assert_eq!(events[5], ReaderEvent::End { records: 4 });
        }
    }

    #[test]
    fn a_bad_reader_stream_is_named() {
        let mut d = ReaderDecoder::default();
        d.push(b"XXXXXXXXXXXXXXXX");
        assert!(matches!(d.next_event(), Err(WireError::BadMagic { .. })));
        let mut d = ReaderDecoder::default();
        d.push(&reader_header("v", 1));
        d.push(&[0u8; 8]);
        d.push(&[9]);
        assert!(d.next_event().unwrap().is_some());
        assert_eq!(d.next_event(), Err(WireError::BadTag { block: 0, tag: 9 }));
    }

    fn drain(d: &mut ChannelDecoder) -> Vec<ChannelEvent> {
        let mut out = Vec::new();
        while let Some(e) = d.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn raw_channel_bytes_come_in_order() {
        let mut d = ChannelDecoder::default();
        d.push(b"\0\0ab");
        let mut events = drain(&mut d);
        d.push(b"cd");
        events.extend(drain(&mut d));
        assert_eq!(
            events,
            [
                ChannelEvent::Data {
                    offset: 0,
                    bytes: b"\0\0ab".to_vec()
                },
                ChannelEvent::Data {
                    offset: 4,
                    bytes: b"cd".to_vec()
                }
            ]
        );
        assert!(!d.done());
    }

    #[test]
    fn extents_stream_in_pieces() {
        let mut bytes = EXTENTS_MAGIC.to_vec();
        bytes.extend_from_slice(b"EXTENT 8192 4096\n");
        bytes.extend(block(7));
        bytes.extend_from_slice(b"END\n");
        let mut d = ChannelDecoder::default();
        let mut data = Vec::new();
        for chunk in bytes.chunks(5) {
            d.push(chunk);
            for e in drain(&mut d) {
                match e {
                    ChannelEvent::Data { offset, bytes } => data.push((offset, bytes.len())),
                    ChannelEvent::ExtentsStart
                    | ChannelEvent::Extent { .. }
                    | ChannelEvent::End => {}
                }
            }
        }
        assert!(d.done());
        assert_eq!(data.iter().map(|(_, n)| n).sum::<usize>(), BLOCK);
        assert_eq!(data[0].0, 8192);
    }

    #[test]
    fn bad_extent_headers_are_named() {
        let mut d = ChannelDecoder::default();
        d.push(EXTENTS_MAGIC);
        d.push(b"EXTENT 1 4096\n");
        assert!(d.next_event().is_ok());
        assert_eq!(
            d.next_event(),
            Err(WireError::Unaligned {
                offset: 1,
                length: 4096
            })
        );
        assert_eq!(
            parse_extents("0 4096\n# c\n\n8192 8192\n").unwrap().len(),
            2
        );
        assert!(parse_extents("0 100\n").is_err());
        assert!(parse_extents("zero\n").is_err());
    }
}
