//! Appends records to a history file. Shared by the queue threads: each record is encoded
//! outside the lock and appended under it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use xxhash_rust::xxh3::Xxh3;

use super::codec::{encode, encode_end};
use super::{End, EndReason, Header, HistoryError, Record, FORMAT_VERSION, MAGIC};

/// The open history of a running backend.
pub struct HistoryWriter {
    path: PathBuf,
    /// Guarded by its mutex: the file, the running digest and the counts.
    state: Mutex<State>,
}

struct State {
    out: BufWriter<File>,
    /// xxh3-64 of every byte written so far (the end record carries it).
    digest: Xxh3,
    bytes: u64,
    records: u64,
    requests: u64,
    markers: u64,
    /// The first write error; after one, nothing more is written and no end record
    /// either, so a reader sees the history as cut short.
    failed: Option<std::io::ErrorKind>,
    finished: bool,
}

/// What the writer has written so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriterStats {
    pub bytes: u64,
    pub records: u64,
    pub requests: u64,
    pub markers: u64,
    pub failed: bool,
}

impl HistoryWriter {
    /// Creates (or truncates) `path` and writes the magic, version and header.
    pub fn create(path: &Path, header: &Header) -> Result<HistoryWriter, HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let json = serde_json::to_vec(header).expect("the header serialises");
        let mut start = Vec::with_capacity(14 + json.len());
        start.extend_from_slice(&MAGIC);
        start.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        start.extend_from_slice(&(json.len() as u32).to_le_bytes());
        start.extend_from_slice(&json);
        out.write_all(&start).map_err(io)?;
        let mut digest = Xxh3::new();
        digest.update(&start);
        Ok(HistoryWriter {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                out,
                digest,
                bytes: start.len() as u64,
                records: 0,
                requests: 0,
                markers: 0,
                failed: None,
                finished: false,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record. A write error is logged once and leaves the history without
    /// its end record (so it reads as cut short); the disk keeps serving.
    pub fn append(&self, record: &Record) {
        let mut buf = Vec::with_capacity(96);
        encode(record, &mut buf);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.failed.is_some() || st.finished {
            return;
        }
        if let Err(e) = st.out.write_all(&buf) {
            log::error!("history {}: write failed: {e}", self.path.display());
            st.failed = Some(e.kind());
            return;
        }
        st.digest.update(&buf);
        st.bytes += buf.len() as u64;
        st.records += 1;
        match record {
            Record::Request(_) => st.requests += 1,
            Record::Marker(_) => st.markers += 1,
        }
    }

    /// Pushes buffered records to the file (not to stable storage).
    pub fn flush(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.failed.is_none() && !st.finished {
            if let Err(e) = st.out.flush() {
                log::error!("history {}: flush failed: {e}", self.path.display());
                st.failed = Some(e.kind());
            }
        }
    }

    pub fn stats(&self) -> WriterStats {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        WriterStats {
            bytes: st.bytes,
            records: st.records,
            requests: st.requests,
            markers: st.markers,
            failed: st.failed.is_some(),
        }
    }

    /// Writes the end record and syncs the file. Later appends are ignored. Fails (and
    /// leaves the history reading as cut short) if any write failed before.
    pub fn finish(&self, t_ns: u64, reason: EndReason) -> Result<End, HistoryError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let io = |source| HistoryError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(kind) = st.failed {
            return Err(io(std::io::Error::new(
                kind,
                "an earlier write failed; the history has no end record",
            )));
        }
        let end = End {
            records: st.records,
            requests: st.requests,
            markers: st.markers,
            t_ns,
            reason,
            digest: st.digest.digest(),
        };
        if st.finished {
            return Ok(end);
        }
        let mut buf = Vec::new();
        encode_end(&end, &mut buf);
        st.out.write_all(&buf).map_err(io)?;
        st.out.flush().map_err(io)?;
        st.out.get_ref().sync_data().map_err(io)?;
        st.bytes += buf.len() as u64;
        st.finished = true;
        Ok(end)
    }
}
