//! The witness record stream: what the agent saw for every block it sent, written to the
//! `bw.witness` port and read by the harness's recording layer. Owns the byte format,
//! a writer, and a reader that survives truncation and stale bytes.
//!
//! Stream: an 8-byte stream header (magic `BWWTNS`, version u16 LE), then records. Each
//! record: tag u8, payload length u32 LE, CRC-32 of the payload u32 LE, payload. A new
//! stream header may appear between records (the agent reopens the port for every run).
//!
//! | tag | record | payload |
//! |---|---|---|
//! | 1 | session start | JSON [`SessionStart`] |
//! | 2 | block | 67 bytes, [`BlockRecord`] |
//! | 3 | session end | JSON [`SessionEnd`] |

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::wire::{crc32, BlockDigest, HASH_LEN};

/// Stream magic.
pub const STREAM_MAGIC: [u8; 6] = *b"BWWTNS";
/// Stream format version (2: 16-byte xxh3-128 hashes and the live reads before and
/// after each snapshot read; 1 had 32-byte sha256 and one live read).
pub const STREAM_VERSION: u16 = 2;
/// Bytes of the stream header.
pub const STREAM_HEADER_LEN: usize = 8;
/// Bytes of a record header (tag, length, CRC).
pub const RECORD_HEADER_LEN: usize = 9;
/// Bytes of a block record's payload.
pub const BLOCK_RECORD_LEN: usize = 16 + 3 * HASH_LEN + 3;
/// Largest record payload a reader accepts (JSON records with many COW extents).
pub const MAX_RECORD_LEN: usize = 16 << 20;

const TAG_START: u8 = 1;
const TAG_BLOCK: u8 = 2;
const TAG_END: u8 = 3;

/// A byte range of the volume (COW file extents are reported this way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// Identity of the snapshot module that served the session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub srcversion: String,
    /// Module parameters as read from /sys/module/NAME/parameters (fault knobs included).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// Full or incremental, as the witness records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WitnessKind {
    Full,
    Incremental,
}

/// Written once per volume before its block records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStart {
    /// Index of the volume in this backup set; block records refer to it.
    pub volume_index: u32,
    /// The wire protocol's volume id.
    pub volume_id: String,
    /// The live block device, e.g. /dev/vdb.
    pub device: String,
    /// The snapshot device read, e.g. /dev/bwsnap0.
    #[serde(default)]
    pub snapshot_device: Option<String>,
    pub generation: u32,
    pub kind: WitnessKind,
    #[serde(default)]
    pub parent_generation: Option<u32>,
    pub block_size: u32,
    pub volume_size: u64,
    /// The wire session id (canonical text form).
    pub session: String,
    /// The snapshot instant, guest CLOCK_MONOTONIC nanoseconds.
    pub instant_monotonic_ns: u64,
    /// Byte ranges of the COW file on the volume (don't-care blocks for the harness).
    #[serde(default)]
    pub cow_extents: Vec<ByteRange>,
    #[serde(default)]
    pub module: ModuleInfo,
}

/// How the live device compared with the snapshot read. The agent reads each block from
/// the live device right before and, when that differs, right after its snapshot read:
/// a workload write between two reads cannot make leaked live data look like corruption,
/// since data that equals either live read is post-snapshot data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LiveCompare {
    /// Both live reads differ from the snapshot read; their hashes are in
    /// [`BlockRecord::live_before`] and [`BlockRecord::live_after`].
    Differs = 0,
    /// The live read before the snapshot read equals it (no hash computed, no read after).
    Equal = 1,
    /// No live read was made, or one failed.
    NotRead = 2,
    /// The read before differs (its hash in [`BlockRecord::live_before`]); the read
    /// after equals the snapshot read.
    EqualAfter = 3,
}

/// Where the module says it served a snapshot read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Unknown = 0,
    Live = 1,
    Cow = 2,
    Error = 3,
}

/// One block as the agent saw it (fixed 67-byte binary payload, little-endian):
/// volume index u32, generation u32, block u64, snapshot hash [16], live-before hash [16]
/// and live-after hash [16] (zeros unless that read differs, see [`LiveCompare`]), live
/// compare u8, source u8, fault u8. Hashes are the wire protocol's block hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRecord {
    pub volume_index: u32,
    pub generation: u32,
    /// Block number (byte offset / block size).
    pub block: u64,
    pub snapshot: BlockDigest,
    pub live_before: BlockDigest,
    pub live_after: BlockDigest,
    pub live: LiveCompare,
    pub source: Source,
    /// Non-zero when the module reports that an injected fault touched this read.
    pub fault: u8,
}

impl BlockRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.volume_index.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&self.snapshot);
        out.extend_from_slice(&self.live_before);
        out.extend_from_slice(&self.live_after);
        out.push(self.live as u8);
        out.push(self.source as u8);
        out.push(self.fault);
    }

    fn decode(p: &[u8]) -> Result<BlockRecord, String> {
        if p.len() != BLOCK_RECORD_LEN {
            return Err(format!(
                "block record of {} bytes, expected {BLOCK_RECORD_LEN}",
                p.len()
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let hash_at = |i: usize| {
            let mut h = [0u8; HASH_LEN];
            h.copy_from_slice(&p[i..i + HASH_LEN]);
            h
        };
        let mut block = [0u8; 8];
        block.copy_from_slice(&p[8..16]);
        let tail = 16 + 3 * HASH_LEN;
        let live = match p[tail] {
            0 => LiveCompare::Differs,
            1 => LiveCompare::Equal,
            2 => LiveCompare::NotRead,
            3 => LiveCompare::EqualAfter,
            v => return Err(format!("live compare value {v}")),
        };
        let source = match p[tail + 1] {
            0 => Source::Unknown,
            1 => Source::Live,
            2 => Source::Cow,
            3 => Source::Error,
            v => return Err(format!("source value {v}")),
        };
        Ok(BlockRecord {
            volume_index: u32_at(0),
            generation: u32_at(4),
            block: u64::from_le_bytes(block),
            snapshot: hash_at(16),
            live_before: hash_at(16 + HASH_LEN),
            live_after: hash_at(16 + 2 * HASH_LEN),
            live,
            source,
            fault: p[tail + 2],
        })
    }
}

/// What the target finally said, as the agent records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionVerdict {
    Committed,
    Failed,
}

/// Written once per volume after its block records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub volume_index: u32,
    pub generation: u32,
    /// Block records written for this session.
    pub blocks: u64,
    pub result: SessionVerdict,
    #[serde(default)]
    pub message: Option<String>,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Boxed: it is large and rare; block records are many and small.
    SessionStart(Box<SessionStart>),
    Block(BlockRecord),
    SessionEnd(SessionEnd),
}

/// Writing a witness stream failed.
#[derive(Debug, thiserror::Error)]
pub enum WitnessWriteError {
    #[error("write witness record")]
    Io(#[source] io::Error),
    #[error("encode witness {record} record")]
    Json {
        record: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes a witness stream: the stream header on creation, then records.
pub struct WitnessWriter<W: Write> {
    w: W,
    buf: Vec<u8>,
}

impl<W: Write> WitnessWriter<W> {
    /// Writes the stream header. Wrap an unbuffered port in a `BufWriter`.
    pub fn new(mut w: W) -> Result<Self, WitnessWriteError> {
        let mut h = STREAM_MAGIC.to_vec();
        h.extend_from_slice(&STREAM_VERSION.to_le_bytes());
        w.write_all(&h).map_err(WitnessWriteError::Io)?;
        Ok(WitnessWriter {
            w,
            buf: Vec::with_capacity(256),
        })
    }

    fn put(&mut self, tag: u8) -> Result<(), WitnessWriteError> {
        let mut head = [0u8; RECORD_HEADER_LEN];
        head[0] = tag;
        head[1..5].copy_from_slice(&(self.buf.len() as u32).to_le_bytes());
        head[5..9].copy_from_slice(&crc32(&self.buf).to_le_bytes());
        self.w.write_all(&head).map_err(WitnessWriteError::Io)?;
        self.w.write_all(&self.buf).map_err(WitnessWriteError::Io)
    }

    pub fn session_start(&mut self, s: &SessionStart) -> Result<(), WitnessWriteError> {
        self.buf = serde_json::to_vec(s).map_err(|source| WitnessWriteError::Json {
            record: "session start",
            source,
        })?;
        self.put(TAG_START)
    }

    pub fn block(&mut self, b: &BlockRecord) -> Result<(), WitnessWriteError> {
        self.buf.clear();
        b.encode(&mut self.buf);
        self.put(TAG_BLOCK)
    }

    /// Block records for many blocks (a frame's), written in one go: the same bytes as
    /// [`WitnessWriter::block`] for each, for a fraction of the calls.
    pub fn blocks(&mut self, records: &[BlockRecord]) -> Result<(), WitnessWriteError> {
        let mut out = Vec::with_capacity(records.len() * (RECORD_HEADER_LEN + BLOCK_RECORD_LEN));
        for r in records {
            self.buf.clear();
            r.encode(&mut self.buf);
            out.push(TAG_BLOCK);
            out.extend_from_slice(&(self.buf.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32(&self.buf).to_le_bytes());
            out.extend_from_slice(&self.buf);
        }
        self.w.write_all(&out).map_err(WitnessWriteError::Io)
    }

    pub fn session_end(&mut self, e: &SessionEnd) -> Result<(), WitnessWriteError> {
        self.buf = serde_json::to_vec(e).map_err(|source| WitnessWriteError::Json {
            record: "session end",
            source,
        })?;
        self.put(TAG_END)
    }

    pub fn flush(&mut self) -> Result<(), WitnessWriteError> {
        self.w.flush().map_err(WitnessWriteError::Io)
    }

    pub fn get_ref(&self) -> &W {
        &self.w
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

/// Something wrong in a witness stream; the reader reports it and goes on where it can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessIssue {
    #[error("witness stream does not start with a stream header at byte {offset}")]
    NoStreamHeader { offset: u64 },
    #[error("witness stream version {version} at byte {offset} is not supported (expected {STREAM_VERSION})")]
    Version { offset: u64, version: u16 },
    #[error("corrupt witness record at byte {offset}: {why}; skipped {skipped} bytes to the next stream header")]
    Corrupt {
        offset: u64,
        why: String,
        skipped: u64,
    },
    #[error(
        "witness stream truncated at byte {offset}: a record needs {needed} bytes, {have} present"
    )]
    Truncated {
        offset: u64,
        needed: usize,
        have: usize,
    },
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessEvent {
    Record(Record),
    Issue(WitnessIssue),
}

/// Push-based decoder: feed bytes as they arrive, take events out.
#[derive(Default)]
pub struct WitnessDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    /// Stream offset of `buf[pos]`.
    base: u64,
    seen_header: bool,
    /// Set while skipping to the next stream header after corruption: where it began.
    resync: Option<(u64, String)>,
}

impl WitnessDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.base += n as u64;
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<WitnessEvent> {
        loop {
            if let Some((offset, why)) = self.resync.clone() {
                let found = self
                    .avail()
                    .windows(STREAM_MAGIC.len())
                    .position(|w| w == STREAM_MAGIC);
                match found {
                    Some(i) => {
                        self.consume(i);
                        self.resync = None;
                        return Some(WitnessEvent::Issue(WitnessIssue::Corrupt {
                            offset,
                            why,
                            skipped: self.base - offset,
                        }));
                    }
                    None => {
                        // Keep a tail that might be the start of the magic.
                        let len = self.avail().len();
                        let keep = (STREAM_MAGIC.len() - 1).min(len);
                        self.consume(len - keep);
                        return None;
                    }
                }
            }
            let a = self.avail();
            if a.is_empty() {
                return None;
            }
            if a.starts_with(&STREAM_MAGIC[..STREAM_MAGIC.len().min(a.len())]) {
                if a.len() < STREAM_HEADER_LEN {
                    return None;
                }
                let version = u16::from_le_bytes([a[6], a[7]]);
                let offset = self.base;
                self.consume(STREAM_HEADER_LEN);
                if version != STREAM_VERSION {
                    self.resync = Some((offset, format!("stream version {version}")));
                    return Some(WitnessEvent::Issue(WitnessIssue::Version {
                        offset,
                        version,
                    }));
                }
                self.seen_header = true;
                continue;
            }
            let offset = self.base;
            if !self.seen_header {
                self.resync = Some((offset, "no stream header".into()));
                return Some(WitnessEvent::Issue(WitnessIssue::NoStreamHeader { offset }));
            }
            if a.len() < RECORD_HEADER_LEN {
                return None;
            }
            let tag = a[0];
            let len = u32::from_le_bytes([a[1], a[2], a[3], a[4]]) as usize;
            let crc = u32::from_le_bytes([a[5], a[6], a[7], a[8]]);
            if !matches!(tag, TAG_START | TAG_BLOCK | TAG_END) || len > MAX_RECORD_LEN {
                self.consume(1);
                self.resync = Some((offset, format!("record tag {tag} length {len}")));
                continue;
            }
            if a.len() < RECORD_HEADER_LEN + len {
                return None;
            }
            let payload = &a[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
            if crc32(payload) != crc {
                self.consume(1);
                self.resync = Some((offset, "record checksum mismatch".into()));
                continue;
            }
            let rec = match tag {
                TAG_BLOCK => BlockRecord::decode(payload).map(Record::Block),
                TAG_START => serde_json::from_slice(payload)
                    .map(|s| Record::SessionStart(Box::new(s)))
                    .map_err(|e| format!("session start JSON: {e}")),
                _ => serde_json::from_slice(payload)
                    .map(Record::SessionEnd)
                    .map_err(|e| format!("session end JSON: {e}")),
            };
            self.consume(RECORD_HEADER_LEN + len);
            return Some(match rec {
                Ok(r) => WitnessEvent::Record(r),
                Err(why) => WitnessEvent::Issue(WitnessIssue::Corrupt {
                    offset,
                    why,
                    skipped: 0,
                }),
            });
        }
    }

    /// Call at end of stream: reports a trailing partial record (or skipped tail).
    pub fn finish(&mut self) -> Option<WitnessIssue> {
        let resync = self.resync.take();
        let a = self.avail();
        let have = a.len();
        let issue = if let Some((offset, why)) = resync {
            Some(WitnessIssue::Corrupt {
                offset,
                why,
                skipped: self.base + have as u64 - offset,
            })
        } else if have == 0 {
            None
        } else {
            let needed = if have < RECORD_HEADER_LEN || a[0] == STREAM_MAGIC[0] {
                RECORD_HEADER_LEN.max(STREAM_HEADER_LEN)
            } else {
                RECORD_HEADER_LEN + u32::from_le_bytes([a[1], a[2], a[3], a[4]]) as usize
            };
            Some(WitnessIssue::Truncated {
                offset: self.base,
                needed,
                have,
            })
        };
        self.consume(have);
        issue
    }
}

/// Everything read from a witness stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WitnessLog {
    pub records: Vec<Record>,
    /// Problems met, in stream order (a truncation is the last one).
    pub issues: Vec<WitnessIssue>,
}

/// Decodes a complete witness stream held in memory.
pub fn read_all(bytes: &[u8]) -> WitnessLog {
    let mut d = WitnessDecoder::new();
    d.push(bytes);
    let mut log = WitnessLog::default();
    while let Some(e) = d.next_event() {
        match e {
            WitnessEvent::Record(r) => log.records.push(r),
            WitnessEvent::Issue(i) => log.issues.push(i),
        }
    }
    log.issues.extend(d.finish());
    log
}

/// Reads a witness stream from `r` to its end.
pub fn read_from(mut r: impl Read) -> io::Result<WitnessLog> {
    let mut d = WitnessDecoder::new();
    let mut log = WitnessLog::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        d.push(&buf[..n]);
        while let Some(e) = d.next_event() {
            match e {
                WitnessEvent::Record(r) => log.records.push(r),
                WitnessEvent::Issue(i) => log.issues.push(i),
            }
        }
    }
    log.issues.extend(d.finish());
    Ok(log)
}
