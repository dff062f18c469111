//! Writing a session's image. The connection's thread stages frame data into aligned
//! buffers of [`STAGE_BYTES`]; a writer thread writes each buffer with O_DIRECT where
//! the store's filesystem allows it (no copy into the page cache, and no backup data
//! crowding it out), through the page cache where it does not (tmpfs) or where a write
//! is not aligned to 4 KiB. Once written, runs of blocks go on, with their hashes, to
//! the verifying re-read ([`super::reread`]), in [`CHECK_BYTES`] chunks.
//!
//! Order is kept end to end: one queue carries writes and checks, and the writer
//! forwards a check only after the writes queued before it, so a block is read back
//! only after it was written, and a stray write (the wrong-offset fault) lands after the
//! writes that came before it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::reread::{Reread, Run};
use super::store::{io_err, StoreError};
use super::verify::BlockCheck;
use crate::sender::BUF_ALIGN;
use crate::wire::{BlockDigest, HASH_LEN};

/// Bytes staged before a buffer goes to the writer.
pub const STAGE_BYTES: usize = 8 << 20;
/// Stored bytes handed to the re-read at a time: large enough for efficient reads,
/// small enough that the last one costs little at the end.
pub const CHECK_BYTES: u64 = 8 << 20;
/// Staging buffers per session: one filling, the others being written.
const BUFFERS: usize = 3;

/// An aligned buffer of [`STAGE_BYTES`].
struct StageBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl StageBuf {
    fn new() -> StageBuf {
        let bytes = vec![0u8; STAGE_BYTES + BUF_ALIGN];
        let start = bytes.as_ptr().align_offset(BUF_ALIGN).min(BUF_ALIGN);
        StageBuf { bytes, start }
    }

    fn get(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len]
    }

    fn get_mut(&mut self, from: usize, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start + from..self.start + from + len]
    }
}

enum Job {
    Write { buf: StageBuf, off: u64, len: usize },
    Check(Vec<Run>),
}

/// Data being staged: where it goes and how much there is.
struct Staged {
    buf: StageBuf,
    off: u64,
    len: usize,
}

/// The write path of one session's image.
pub struct Storage {
    path: PathBuf,
    jobs: Option<Sender<Job>>,
    writer: Option<JoinHandle<Result<(), StoreError>>>,
    /// Buffers the writer is done with.
    free: Receiver<StageBuf>,
    allocated: usize,
    staged: Option<Staged>,
    /// None with the skip-verify fault.
    reread: Option<Reread>,
    /// Stored runs not yet handed to the re-read.
    unchecked: Vec<Run>,
    unchecked_blocks: u64,
    check_blocks: u64,
}

impl Storage {
    /// Starts the writer (and, with `verify = Some(from_disk)`, the re-read) for the
    /// image at `path`, which exists with its final size.
    pub fn start(
        path: &Path,
        block_size: u32,
        verify: Option<bool>,
    ) -> Result<Storage, StoreError> {
        let reread = match verify {
            Some(from_disk) => Some(Reread::start(path, block_size, from_disk)?),
            None => None,
        };
        let out = Output::open(path)?;
        let (jobs, job_rx) = mpsc::channel();
        let (free_tx, free) = mpsc::channel();
        let checks = reread.as_ref().and_then(Reread::sender);
        let writer = std::thread::Builder::new()
            .name("bw-target-write".into())
            .spawn(move || write_stage(out, job_rx, free_tx, checks))
            .map_err(io_err("start the writer for", path))?;
        Ok(Storage {
            path: path.to_path_buf(),
            jobs: Some(jobs),
            writer: Some(writer),
            free,
            allocated: 0,
            staged: None,
            reread,
            unchecked: Vec::new(),
            unchecked_blocks: 0,
            check_blocks: (CHECK_BYTES / u64::from(block_size)).max(1),
        })
    }

    /// Why the writer is gone: its own error when it failed.
    fn gone(&mut self) -> StoreError {
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => io_err("write", &self.path)(io::Error::other("the image writer stopped")),
        }
    }

    /// Queues `data` for writing at byte `off`.
    pub fn write_at(&mut self, mut off: u64, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            let joins = self
                .staged
                .as_ref()
                .is_some_and(|s| s.off + s.len as u64 == off && s.len < STAGE_BYTES);
            if !joins {
                self.flush_staged()?;
                let buf = self.take_buffer()?;
                self.staged = Some(Staged { buf, off, len: 0 });
            }
            let Some(s) = self.staged.as_mut() else {
                return Err(io_err("stage", &self.path)(io::Error::other(
                    "no staging buffer",
                )));
            };
            let n = data.len().min(STAGE_BYTES - s.len);
            s.buf.get_mut(s.len, n).copy_from_slice(&data[..n]);
            s.len += n;
            off += n as u64;
            data = &data[n..];
            if s.len == STAGE_BYTES {
                self.flush_staged()?;
            }
        }
        Ok(())
    }

    /// A free buffer: a returned one, a new one while fewer than `BUFFERS` exist, or
    /// the next one the writer returns.
    fn take_buffer(&mut self) -> Result<StageBuf, StoreError> {
        if let Ok(b) = self.free.try_recv() {
            return Ok(b);
        }
        if self.allocated < BUFFERS {
            self.allocated += 1;
            return Ok(StageBuf::new());
        }
        // Fails only when the writer is gone (it failed).
        match self.free.recv() {
            Ok(b) => Ok(b),
            Err(_) => Err(self.gone()),
        }
    }

    fn flush_staged(&mut self) -> Result<(), StoreError> {
        let Some(s) = self.staged.take() else {
            return Ok(());
        };
        if s.len == 0 {
            return Ok(());
        }
        let job = Job::Write {
            buf: s.buf,
            off: s.off,
            len: s.len,
        };
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self.gone())
        }
    }

    /// Notes that the blocks from `first` on (`HASH_LEN` bytes of hash each) were
    /// queued for writing; they are checked once written.
    pub fn stored(&mut self, first: u64, hashes: &[u8]) -> Result<(), StoreError> {
        if self.reread.is_none() {
            return Ok(());
        }
        let list = hashes.chunks_exact(HASH_LEN).map(|h| {
            let mut a: BlockDigest = [0u8; HASH_LEN];
            a.copy_from_slice(h);
            a
        });
        match self.unchecked.last_mut() {
            Some(r) if r.first + r.hashes.len() as u64 == first => r.hashes.extend(list),
            _ => self.unchecked.push(Run {
                first,
                hashes: list.collect(),
            }),
        }
        self.unchecked_blocks += (hashes.len() / HASH_LEN) as u64;
        if self.unchecked_blocks >= self.check_blocks {
            self.hand_over_checks()?;
        }
        Ok(())
    }

    fn hand_over_checks(&mut self) -> Result<(), StoreError> {
        if self.unchecked.is_empty() {
            return Ok(());
        }
        // The data of these runs must be queued before their check.
        self.flush_staged()?;
        let runs = std::mem::take(&mut self.unchecked);
        self.unchecked_blocks = 0;
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|tx| tx.send(Job::Check(runs)).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self.gone())
        }
    }

    /// Blocks the re-read has checked so far.
    pub fn checked(&self) -> u64 {
        self.reread.as_ref().map_or(0, Reread::checked)
    }

    /// Writes everything queued and waits for the writer: the image holds every write
    /// (call before the fsync). Checks still run.
    pub fn finish_writes(&mut self) -> Result<(), StoreError> {
        self.hand_over_checks()?;
        self.flush_staged()?;
        self.jobs = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io_err("write", &self.path)(io::Error::other(
                "the image writer stopped unexpectedly",
            ))),
            None => Ok(()),
        }
    }

    /// Waits for the re-read of every stored block (after [`Storage::finish_writes`]);
    /// None with the skip-verify fault.
    pub fn finish_checks(&mut self) -> Result<Option<BlockCheck>, StoreError> {
        match self.reread.take() {
            Some(r) => r.finish().map(Some),
            None => Ok(None),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // A session given up: let the writer finish what it has and stop, then stop the
        // re-read (its own drop cancels it).
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.reread = None;
    }
}

/// The image as the writer writes it.
struct Output {
    path: PathBuf,
    /// Opened with O_DIRECT, while the filesystem takes direct writes.
    direct: Option<File>,
    buffered: File,
}

impl Output {
    fn open(path: &Path) -> Result<Output, StoreError> {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        let buffered = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        Ok(Output {
            path: path.to_path_buf(),
            direct,
            buffered,
        })
    }

    fn write(&mut self, data: &[u8], off: u64) -> Result<(), StoreError> {
        let aligned = off.is_multiple_of(BUF_ALIGN as u64)
            && data.len().is_multiple_of(BUF_ALIGN)
            && (data.as_ptr() as usize).is_multiple_of(BUF_ALIGN);
        if let (true, Some(d)) = (aligned, &self.direct) {
            match d.write_all_at(data, off) {
                Ok(()) => return Ok(()),
                // This filesystem or device refuses it after all: go through the cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(io_err("write", &self.path)(e)),
            }
        }
        self.buffered
            .write_all_at(data, off)
            .map_err(io_err("write", &self.path))
    }
}

fn write_stage(
    mut out: Output,
    jobs: Receiver<Job>,
    free: Sender<StageBuf>,
    checks: Option<Sender<Vec<Run>>>,
) -> Result<(), StoreError> {
    for job in jobs {
        match job {
            Job::Write { buf, off, len } => {
                out.write(buf.get(len), off)?;
                // The session may be gone; the buffer is then freed.
                let _ = free.send(buf);
            }
            Job::Check(runs) => {
                if let Some(c) = &checks {
                    let _ = c.send(runs);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::block_digest;

    fn block(b: u64, bs: usize) -> Vec<u8> {
        (0..bs)
            .map(|i| (i as u64 ^ b.wrapping_mul(31)) as u8 | 1)
            .collect()
    }

    /// Writes blocks as a session would (runs, a hole, a stray write), then checks the
    /// image and the re-read's findings.
    #[test]
    fn writes_land_in_order_and_are_checked() {
        for bs in [4096usize, 512] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("img");
            let blocks = 5000u64;
            File::create(&path)
                .unwrap()
                .set_len(blocks * bs as u64)
                .unwrap();
            let mut st = Storage::start(&path, bs as u32, Some(true)).unwrap();
            let mut want = vec![0u8; blocks as usize * bs];
            for first in (0..blocks).step_by(64) {
                let n = 64.min(blocks - first);
                let mut data = Vec::new();
                let mut hashes = Vec::new();
                for b in first..first + n {
                    let d = block(b, bs);
                    hashes.extend_from_slice(&block_digest(&d));
                    data.extend_from_slice(&d);
                }
                // Block 100 is never written (left a hole, as a fault would leave it);
                // the others in two runs around it.
                if (first..first + n).contains(&100) {
                    let k = (100 - first) as usize;
                    st.write_at(first * bs as u64, &data[..k * bs]).unwrap();
                    st.write_at(101 * bs as u64, &data[(k + 1) * bs..]).unwrap();
                    want[first as usize * bs..100 * bs].copy_from_slice(&data[..k * bs]);
                    want[101 * bs..(first + n) as usize * bs]
                        .copy_from_slice(&data[(k + 1) * bs..]);
                } else {
                    st.write_at(first * bs as u64, &data).unwrap();
                    want[first as usize * bs..(first + n) as usize * bs].copy_from_slice(&data);
                }
                st.stored(first, &hashes).unwrap();
            }
            // A stray write after everything: lands last.
            let stray = vec![0xAB; bs];
            st.write_at(7 * bs as u64, &stray).unwrap();
            want[7 * bs..8 * bs].copy_from_slice(&stray);
            st.finish_writes().unwrap();
            let check = st.finish_checks().unwrap().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), want, "block size {bs}");
            assert_eq!(check.checked, blocks, "block size {bs}");
            // The hole is found; the stray may or may not have been checked over.
            assert!(check.bad.contains(&100), "{:?}", check.bad);
            assert!(
                check.bad.iter().all(|&b| b == 100 || b == 7),
                "{:?}",
                check.bad
            );
        }
    }

    /// A store on tmpfs (no O_DIRECT before Linux 6.6, and no device behind it) works
    /// the same. (Writes not aligned to 4 KiB take the page-cache path on any
    /// filesystem: the 512-byte case of the test above.)
    #[test]
    fn a_store_on_tmpfs_works_the_same() {
        let dir = tempfile::Builder::new()
            .prefix("bw-storage")
            .tempdir_in("/dev/shm")
            .expect("/dev/shm (tmpfs) is there on Linux");
        let path = dir.path().join("img");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let mut st = Storage::start(&path, 4096, Some(true)).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        st.write_at(0, &data).unwrap();
        let hashes: Vec<u8> = data.chunks(4096).flat_map(block_digest).collect();
        st.stored(0, &hashes).unwrap();
        st.finish_writes().unwrap();
        let check = st.finish_checks().unwrap().unwrap();
        assert_eq!((check.checked, check.bad_total), (256, 0));
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn without_verification_nothing_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let mut st = Storage::start(&path, 4096, None).unwrap();
        st.write_at(0, &vec![5u8; 1 << 20]).unwrap();
        st.stored(0, &[0u8; 256 * HASH_LEN]).unwrap();
        st.finish_writes().unwrap();
        assert_eq!(st.finish_checks().unwrap(), None);
        assert_eq!(std::fs::read(&path).unwrap(), vec![5u8; 1 << 20]);
    }
}
