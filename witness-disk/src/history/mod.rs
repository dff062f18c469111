//! The write history: every request the guest sent to one witness disk, recorded
//! compactly on the host, and the markers (instants, fault firings) between them.
//!
//! The file format (version 1, all integers little-endian):
//!
//! ```text
//! magic    8 bytes   "BWHIST\r\n"
//! version  u16       FORMAT_VERSION
//! hlen     u32       length of the header
//! header   hlen      JSON, see [`Header`]
//! record*            kind u8, body length (LEB128 varint), body
//! end                the record of kind 0xFF, see [`End`]; always the last
//! ```
//!
//! A history always ends with its end record, which counts the records before it and
//! carries the xxh3-64 of every byte before it. A file without one was cut short (the
//! backend died, the disk filled): [`History::open`] refuses it with
//! [`HistoryError::Truncated`]; [`History::open_partial`] reads what is there and says so.
//! The body encodings are in `codec.rs`; witness-disk/README.md walks through them.
//!
//! Records are written when a request is finished (completed, dropped or torn), so they
//! are in finishing order, not submit order; sort by `seq` for the order of submission.
//! Each request that changed the disk's content (write, discard, write-zeroes, a torn
//! write) has an `applied` number: the order in which the changes were applied. Writes
//! that touch the same 4 KiB block are applied one at a time, so for each block the
//! versions are totally ordered by `applied`, and each version's hash is the block's
//! whole content right after that request.

mod codec;
mod reader;
mod writer;

use std::ops::Range;
use std::path::PathBuf;

pub use reader::HistoryReader;
pub use writer::{HistoryWriter, WriterStats};

use crate::hash::{zero_block_hash, BlockHash, BLOCK_SIZE};

/// The first bytes of every history file.
pub const MAGIC: [u8; 8] = *b"BWHIST\r\n";

/// The version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// What the history says about itself and the disk, written first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Equal to the version word before the header.
    pub format_version: u16,
    /// The block the hashes cover (4096).
    pub block_size: u64,
    /// The unit of virtio-blk offsets (512).
    pub sector_size: u64,
    /// The disk's size.
    pub disk_bytes: u64,
    /// The block hash: "xxh3-128" (seed 0, little-endian bytes of the u128).
    pub hash: String,
    /// Every `*_ns` time in the history counts from this origin. Its wall-clock time, in
    /// nanoseconds since the Unix epoch.
    pub origin_wall_ns: u64,
    /// The origin on the host's CLOCK_MONOTONIC, to line the history up with other
    /// recordings of the same run.
    pub origin_monotonic_ns: u64,
    /// The serial the guest reads with get-id.
    pub serial: String,
    /// The raw image served (the base layer).
    pub image: PathBuf,
    /// The most queues the backend offered; the guest used at most this many.
    pub max_queues: u16,
    /// The seeded completion schedule, if one was on.
    pub schedule: Option<crate::schedule::Schedule>,
    /// Name and version of the writer.
    pub writer: String,
}

/// A request's operation, from the virtio-blk request type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    GetId,
    /// A request type the backend does not serve (answered "unsupported").
    Other(u32),
    /// A descriptor chain too short to hold a request header.
    Malformed,
}

impl Op {
    /// True for the operations that change the disk's content.
    pub fn modifies(self) -> bool {
        match self {
            Op::Write | Op::Discard | Op::WriteZeroes => true,
            Op::Read | Op::Flush | Op::GetId | Op::Other(_) | Op::Malformed => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write-zeroes",
            Op::GetId => "get-id",
            Op::Other(_) => "other",
            Op::Malformed => "malformed",
        }
    }
}

/// Request flags. virtio-blk has no FUA: a guest's FUA write reaches the disk as a write
/// followed by a flush request, and its pre-flush as a flush request before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flags(pub u8);

impl Flags {
    /// write-zeroes with VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
    pub const UNMAP: u8 = 1;
    /// The legacy VIRTIO_BLK_T_BARRIER bit was set on the request type.
    pub const BARRIER: u8 = 2;

    pub fn unmap(self) -> bool {
        self.0 & Self::UNMAP != 0
    }

    pub fn barrier(self) -> bool {
        self.0 & Self::BARRIER != 0
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Completed with VIRTIO_BLK_S_OK.
    Ok,
    /// Completed with VIRTIO_BLK_S_IOERR (a malformed request, one beyond the end, an
    /// injected eio, a host I/O error).
    IoError,
    /// Completed with VIRTIO_BLK_S_UNSUPP.
    Unsupported,
    /// Never completed: held (hang, delay) when its queue was stopped (guest reset) or
    /// the backend shut down. A write that was executing then may have landed; its
    /// versions say so.
    Dropped,
    /// An injected torn write: its first blocks landed (see its versions), it was never
    /// completed.
    Torn,
    /// Completed without a status: the chain had no writable byte for one.
    Unanswerable,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::IoError => "io-error",
            Outcome::Unsupported => "unsupported",
            Outcome::Dropped => "dropped",
            Outcome::Torn => "torn",
            Outcome::Unanswerable => "unanswerable",
        }
    }

    /// True when the guest was told the request finished.
    pub fn completed(self) -> bool {
        match self {
            Outcome::Ok | Outcome::IoError | Outcome::Unsupported | Outcome::Unanswerable => true,
            Outcome::Dropped | Outcome::Torn => false,
        }
    }
}

/// Consecutive blocks' contents after a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Run {
    /// One hash per block, from `first_block` on.
    Hashed {
        first_block: u64,
        hashes: Vec<BlockHash>,
    },
    /// `count` blocks of zeroes (discard, write-zeroes).
    Zero { first_block: u64, count: u64 },
}

impl Run {
    pub fn blocks(&self) -> Range<u64> {
        match self {
            Run::Hashed {
                first_block,
                hashes,
            } => *first_block..first_block + hashes.len() as u64,
            Run::Zero { first_block, count } => *first_block..first_block + count,
        }
    }
}

/// One request, as the backend saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// Order of submission (when the backend took it from its queue), from 0.
    pub seq: u64,
    /// The virtqueue it came on.
    pub queue: u16,
    pub op: Op,
    pub flags: Flags,
    pub outcome: Outcome,
    /// Byte offset and length on the disk. Flush and get-id: 0 and 0. A malformed
    /// request: what its header said, or 0 and 0.
    pub offset: u64,
    pub len: u64,
    /// When the backend took it from the queue.
    pub submit_ns: u64,
    /// When the backend put it in the used ring; `None` if it never did.
    pub complete_ns: Option<u64>,
    /// The order in which content changes were applied (see the module docs); `None`
    /// for a request that changed nothing.
    pub applied: Option<u64>,
    /// The content after the request of every 4 KiB block it changed, in block order.
    pub runs: Vec<Run>,
}

impl RequestRecord {
    /// The 4 KiB blocks the byte range touches.
    pub fn blocks(&self) -> Range<u64> {
        if self.len == 0 {
            return self.offset / BLOCK_SIZE..self.offset / BLOCK_SIZE;
        }
        self.offset / BLOCK_SIZE..(self.offset + self.len).div_ceil(BLOCK_SIZE)
    }

    /// (block, hash of its content right after this request) for every block it changed.
    pub fn block_versions(&self) -> impl Iterator<Item = (u64, BlockHash)> + '_ {
        self.runs
            .iter()
            .flat_map(|run| -> Box<dyn Iterator<Item = _>> {
                match run {
                    Run::Hashed {
                        first_block,
                        hashes,
                    } => Box::new(
                        hashes
                            .iter()
                            .enumerate()
                            .map(move |(i, h)| (first_block + i as u64, *h)),
                    ),
                    Run::Zero { first_block, count } => {
                        let zero = zero_block_hash();
                        Box::new((*first_block..first_block + count).map(move |b| (b, zero)))
                    }
                }
            })
    }
}

/// Something that happened between requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkerRecord {
    pub t_ns: u64,
    /// Requests submitted before the marker have `seq < next_seq`.
    pub next_seq: u64,
    /// Content changes applied before the marker have `applied < next_applied`: for an
    /// instant, exactly the changes in its frozen generation.
    pub next_applied: u64,
    pub marker: Marker,
}

/// The kinds of marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A point-in-time instant: generation `generation` froze here.
    Instant { generation: u32, label: String },
    /// A fault was armed; `spec` is its JSON.
    FaultArmed { fault: u32, spec: String },
    /// A fault fired on request `seq`.
    FaultFired { fault: u32, seq: u64 },
    /// A fault was released; `released` held requests were let go.
    FaultReleased { fault: u32, released: u64 },
    /// Anything else worth knowing when reading the history (connection, queue resets).
    Note { text: String },
}

/// A history record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Request(RequestRecord),
    Marker(MarkerRecord),
}

impl Record {
    /// Bytes this record takes in a history file (kind, length and body).
    pub fn encoded_len(&self) -> usize {
        let mut buf = Vec::new();
        codec::encode(self, &mut buf);
        buf.len()
    }
}

/// Why the backend stopped recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The vhost-user connection ended (QEMU exited).
    Disconnected,
    /// The control socket's shutdown.
    Shutdown,
    /// QEMU never connected before the deadline.
    NeverConnected,
    /// The backend failed; its log says why.
    Failed,
}

/// The last record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    /// Records before this one.
    pub records: u64,
    pub requests: u64,
    pub markers: u64,
    pub t_ns: u64,
    pub reason: EndReason,
    /// xxh3-64 of every byte of the file before this record.
    pub digest: u64,
}

/// Why a history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read or write the history {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a witness-disk history (bad magic)")]
    NotAHistory { path: PathBuf },
    #[error(
        "{path} is history format version {found}; this reader knows version {FORMAT_VERSION}"
    )]
    Version { path: PathBuf, found: u16 },
    #[error("the header of {path} is not valid")]
    Header {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} was cut short after {records} complete records (byte {offset}): the backend did not finish it")]
    Truncated {
        path: PathBuf,
        records: u64,
        offset: u64,
    },
    #[error("{path} is corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

/// A whole history in memory.
#[derive(Clone, Debug)]
pub struct History {
    pub header: Header,
    pub records: Vec<Record>,
    /// `None` only from [`History::open_partial`] on a history that was cut short.
    pub end: Option<End>,
}

impl History {
    /// Reads a finished history. A history that was cut short is an error
    /// ([`HistoryError::Truncated`]), never a silently partial result.
    pub fn open(path: impl Into<PathBuf>) -> Result<History, HistoryError> {
        let mut reader = HistoryReader::open(path)?;
        let records = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
        let end = reader.end().cloned();
        debug_assert!(end.is_some());
        Ok(History {
            header: reader.header().clone(),
            records,
            end,
        })
    }

    /// Reads a history that may have been cut short (for triage of a backend that
    /// died): every complete record, and `end: None` if the end record is missing.
    /// Corruption before the cut is still an error.
    pub fn open_partial(path: impl Into<PathBuf>) -> Result<History, HistoryError> {
        let mut reader = HistoryReader::open(path)?;
        let mut records = Vec::new();
        for r in reader.by_ref() {
            match r {
                Ok(rec) => records.push(rec),
                Err(HistoryError::Truncated { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(History {
            header: reader.header().clone(),
            records,
            end: reader.end().cloned(),
        })
    }

    /// True when the backend finished the history.
    pub fn is_complete(&self) -> bool {
        self.end.is_some()
    }

    pub fn requests(&self) -> impl Iterator<Item = &RequestRecord> {
        self.records.iter().filter_map(|r| match r {
            Record::Request(q) => Some(q),
            Record::Marker(_) => None,
        })
    }

    pub fn markers(&self) -> impl Iterator<Item = &MarkerRecord> {
        self.records.iter().filter_map(|r| match r {
            Record::Marker(m) => Some(m),
            Record::Request(_) => None,
        })
    }

    /// The requests in submission order.
    pub fn requests_by_seq(&self) -> Vec<&RequestRecord> {
        let mut v: Vec<_> = self.requests().collect();
        v.sort_by_key(|r| r.seq);
        v
    }

    /// The instants, in order: (generation, label, the marker).
    pub fn instants(&self) -> Vec<(u32, &str, &MarkerRecord)> {
        self.markers()
            .filter_map(|m| match &m.marker {
                Marker::Instant { generation, label } => Some((*generation, label.as_str(), m)),
                Marker::FaultArmed { .. }
                | Marker::FaultFired { .. }
                | Marker::FaultReleased { .. }
                | Marker::Note { .. } => None,
            })
            .collect()
    }

    /// How often each fault fired, by fault id.
    pub fn fired_counts(&self) -> std::collections::BTreeMap<u32, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for m in self.markers() {
            if let Marker::FaultFired { fault, .. } = m.marker {
                *counts.entry(fault).or_insert(0) += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for o in [
            Outcome::Ok,
            Outcome::IoError,
            Outcome::Unsupported,
            Outcome::Dropped,
            Outcome::Torn,
            Outcome::Unanswerable,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
        }
        for op in [
            Op::Read,
            Op::Write,
            Op::Flush,
            Op::Discard,
            Op::WriteZeroes,
            Op::GetId,
        ] {
            assert_eq!(serde_json::to_value(op).unwrap(), op.name());
        }
    }
}
