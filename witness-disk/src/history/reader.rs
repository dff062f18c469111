//! Streams the records of a history file, checking the end record's counts and digest.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::PathBuf;

use xxhash_rust::xxh3::Xxh3;

use super::codec::{
    decode_end, decode_marker, decode_request, KIND_END, KIND_MARKER, KIND_REQUEST,
};
use super::{End, Header, HistoryError, Record, FORMAT_VERSION, MAGIC};

/// No record body is longer (a 4 GiB write's hashes are 16 MiB).
const MAX_BODY: u64 = 64 << 20;

/// An iterator over the records of a history. After the last record it checks the end
/// record; a file cut short yields [`HistoryError::Truncated`] once, then ends.
pub struct HistoryReader {
    path: PathBuf,
    input: BufReader<File>,
    header: Header,
    offset: u64,
    digest: Xxh3,
    records: u64,
    requests: u64,
    markers: u64,
    end: Option<End>,
    done: bool,
}

/// One framed record: kind, the kind and length bytes as read, the body.
struct Frame {
    kind: u8,
    head: Vec<u8>,
    body: Vec<u8>,
}

enum Read1 {
    Byte(u8),
    Eof,
}

impl HistoryReader {
    /// Opens a history and reads its header.
    pub fn open(path: impl Into<PathBuf>) -> Result<HistoryReader, HistoryError> {
        let path = path.into();
        let file = File::open(&path).map_err(|source| HistoryError::Io {
            path: path.clone(),
            source,
        })?;
        let mut input = BufReader::with_capacity(256 << 10, file);
        let mut start = [0u8; 14];
        if let Err(e) = input.read_exact(&mut start) {
            return Err(match e.kind() {
                ErrorKind::UnexpectedEof => HistoryError::NotAHistory { path },
                _ => HistoryError::Io { path, source: e },
            });
        }
        if start[..8] != MAGIC {
            return Err(HistoryError::NotAHistory { path });
        }
        let version = u16::from_le_bytes([start[8], start[9]]);
        if version != FORMAT_VERSION {
            return Err(HistoryError::Version {
                path,
                found: version,
            });
        }
        let hlen = u32::from_le_bytes(start[10..14].try_into().expect("4 bytes"));
        if u64::from(hlen) > MAX_BODY {
            return Err(HistoryError::Corrupt {
                path,
                offset: 10,
                what: format!("header length {hlen} is absurd"),
            });
        }
        let mut json = vec![0u8; hlen as usize];
        if let Err(e) = input.read_exact(&mut json) {
            return Err(match e.kind() {
                ErrorKind::UnexpectedEof => HistoryError::Truncated {
                    path,
                    records: 0,
                    offset: 14,
                },
                _ => HistoryError::Io { path, source: e },
            });
        }
        let header: Header =
            serde_json::from_slice(&json).map_err(|source| HistoryError::Header {
                path: path.clone(),
                source,
            })?;
        let mut digest = Xxh3::new();
        digest.update(&start);
        digest.update(&json);
        Ok(HistoryReader {
            path,
            input,
            header,
            offset: 14 + u64::from(hlen),
            digest,
            records: 0,
            requests: 0,
            markers: 0,
            end: None,
            done: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The end record, once the iterator has reached it.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    fn byte(&mut self) -> Result<Read1, HistoryError> {
        let mut b = [0u8; 1];
        loop {
            match self.input.read(&mut b) {
                Ok(0) => return Ok(Read1::Eof),
                Ok(_) => return Ok(Read1::Byte(b[0])),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(HistoryError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }

    fn truncated(&self, record_start: u64) -> HistoryError {
        HistoryError::Truncated {
            path: self.path.clone(),
            records: self.records,
            offset: record_start,
        }
    }

    fn corrupt(&self, offset: u64, what: impl Into<String>) -> HistoryError {
        HistoryError::Corrupt {
            path: self.path.clone(),
            offset,
            what: what.into(),
        }
    }

    /// Reads one framed record: `Ok(None)` at a clean end of file.
    fn frame(&mut self) -> Result<Option<Frame>, HistoryError> {
        let start = self.offset;
        let kind = match self.byte()? {
            Read1::Eof => return Ok(None),
            Read1::Byte(k) => k,
        };
        let mut head = vec![kind];
        let mut len: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = match self.byte()? {
                Read1::Eof => return Err(self.truncated(start)),
                Read1::Byte(b) => b,
            };
            head.push(b);
            len |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                break;
            }
            if shift >= 63 {
                return Err(self.corrupt(start, "record length varint too long"));
            }
        }
        if len > MAX_BODY {
            return Err(self.corrupt(start, format!("record length {len} is absurd")));
        }
        let mut body = vec![0u8; len as usize];
        if let Err(e) = self.input.read_exact(&mut body) {
            return Err(match e.kind() {
                ErrorKind::UnexpectedEof => self.truncated(start),
                _ => HistoryError::Io {
                    path: self.path.clone(),
                    source: e,
                },
            });
        }
        self.offset += head.len() as u64 + len;
        Ok(Some(Frame { kind, head, body }))
    }

    fn next_record(&mut self) -> Result<Option<Record>, HistoryError> {
        loop {
            let start = self.offset;
            let Some(Frame { kind, head, body }) = self.frame()? else {
                return match self.end {
                    Some(_) => Ok(None),
                    None => Err(self.truncated(start)),
                };
            };
            if self.end.is_some() {
                return Err(self.corrupt(start, "bytes after the end record"));
            }
            match kind {
                KIND_END => {
                    let end = decode_end(&body).map_err(|w| self.corrupt(start, w))?;
                    let digest = self.digest.digest();
                    if end.digest != digest {
                        return Err(self.corrupt(
                            start,
                            format!(
                                "digest {:016x} does not match the content ({digest:016x})",
                                end.digest
                            ),
                        ));
                    }
                    if (end.records, end.requests, end.markers)
                        != (self.records, self.requests, self.markers)
                    {
                        return Err(self.corrupt(
                            start,
                            format!(
                                "the end record counts {} records, the file holds {}",
                                end.records, self.records
                            ),
                        ));
                    }
                    self.end = Some(end);
                    continue;
                }
                KIND_REQUEST | KIND_MARKER => {
                    self.digest.update(&head);
                    self.digest.update(&body);
                    self.records += 1;
                    let rec = if kind == KIND_REQUEST {
                        self.requests += 1;
                        decode_request(&body).map(Record::Request)
                    } else {
                        self.markers += 1;
                        decode_marker(&body).map(Record::Marker)
                    };
                    return rec.map(Some).map_err(|w| self.corrupt(start, w));
                }
                other => {
                    return Err(self.corrupt(start, format!("unknown record kind 0x{other:02x}")))
                }
            }
        }
    }
}

impl Iterator for HistoryReader {
    type Item = Result<Record, HistoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
