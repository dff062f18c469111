//! The verifying re-read of a session's image, run behind the session's writes on a
//! thread of its own. The image's writer ([`super::storage`]) hands over runs of blocks
//! once they are written, with the hash each block's frame carried; the worker has them
//! written back to the device if they went through the page cache, reads them back from
//! the device (O_DIRECT, or through a dropped page cache where the filesystem has no
//! O_DIRECT), and checks every block. So the re-read overlaps the transfer, and at the
//! end only the last runs remain.
//!
//! Blocks written a second time after their check (the wrong-offset fault's stray
//! writes) are the session's to check again after the fsync.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::store::{io_err, StoreError};
use super::verify::BlockCheck;
use crate::sender::BUF_ALIGN;
use crate::wire::{block_digest, BlockDigest};

/// Bytes per read of the image.
const READ_BYTES: usize = 4 << 20;

/// Consecutive stored blocks and the hash each must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub hashes: Vec<BlockDigest>,
}

/// The re-read worker of one session.
pub struct Reread {
    jobs: Option<Sender<Vec<Run>>>,
    worker: Option<JoinHandle<Result<BlockCheck, StoreError>>>,
    cancel: Arc<AtomicBool>,
    checked: Arc<AtomicU64>,
}

impl Reread {
    /// Starts the worker on the image at `path`, of blocks of `block_size` bytes.
    /// `from_disk`: read back from the device rather than from the page cache.
    pub fn start(path: &Path, block_size: u32, from_disk: bool) -> Result<Reread, StoreError> {
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let image = Image::open(path, from_disk)?;
        let checked = Arc::new(AtomicU64::new(0));
        let worker_cancel = cancel.clone();
        let worker_checked = checked.clone();
        let bs = block_size as usize;
        let worker = std::thread::Builder::new()
            .name("bw-target-reread".into())
            .spawn(move || work(image, bs, rx, &worker_cancel, &worker_checked))
            .map_err(io_err("start the re-read worker for", path))?;
        Ok(Reread {
            jobs: Some(tx),
            worker: Some(worker),
            cancel,
            checked,
        })
    }

    /// Blocks checked so far.
    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// Where to send runs once they are written (the worker ends when every sender
    /// is gone).
    pub fn sender(&self) -> Option<Sender<Vec<Run>>> {
        self.jobs.clone()
    }

    /// Hands over runs that are written.
    pub fn check(&self, runs: Vec<Run>) {
        if let Some(tx) = &self.jobs {
            // A worker that is gone has failed; `finish` reports why.
            let _ = tx.send(runs);
        }
    }

    /// Waits for every run handed over (by every sender) to be checked.
    pub fn finish(mut self) -> Result<BlockCheck, StoreError> {
        self.jobs = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Err(StoreError::Io {
                op: "re-read",
                path: PathBuf::from("(session image)"),
                source: io::Error::other("the re-read worker stopped unexpectedly"),
            }),
        }
    }
}

impl Drop for Reread {
    fn drop(&mut self) {
        // A session given up: stop the worker at its next read and wait for it, so no
        // thread outlives the files it reads. (Other senders must be gone by now.)
        self.cancel.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The image as the worker reads it.
struct Image {
    file: File,
    path: PathBuf,
    /// Opened with O_DIRECT: reads come from the device.
    direct: bool,
    from_disk: bool,
    buf: Vec<u8>,
    buf_start: usize,
}

impl Image {
    fn open(path: &Path, from_disk: bool) -> Result<Image, StoreError> {
        let direct = if from_disk {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        let (file, direct) = match direct {
            Some(f) => (f, true),
            // No O_DIRECT here (tmpfs, some FUSE): read through a dropped page cache.
            None => (File::open(path).map_err(io_err("open", path))?, false),
        };
        // Room for a whole read plus the lead of an unaligned one, after aligning.
        let buf = vec![0u8; READ_BYTES + 2 * BUF_ALIGN];
        let buf_start = buf.as_ptr().align_offset(BUF_ALIGN).min(BUF_ALIGN);
        Ok(Image {
            file,
            path: path.to_path_buf(),
            direct,
            from_disk,
            buf,
            buf_start,
        })
    }

    /// Makes sure bytes `[off, off + len)` are on the device before they are read back.
    fn write_back(&self, off: u64, len: u64) -> Result<(), StoreError> {
        if !self.from_disk {
            return Ok(());
        }
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
        let r =
            unsafe { libc::sync_file_range(self.file.as_raw_fd(), off as i64, len as i64, flags) };
        if r != 0 {
            return Err(io_err("write back", &self.path)(io::Error::last_os_error()));
        }
        if !self.direct {
            // SAFETY: advisory call on a descriptor we own.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    off as i64,
                    len as i64,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
        Ok(())
    }

    /// Reads `len` (at most `READ_BYTES`) bytes at `off`. O_DIRECT reads go from the
    /// aligned 4 KiB boundary below `off`; a refused direct read falls back to the
    /// page cache for the rest of the session.
    fn read(&mut self, off: u64, len: usize) -> Result<&[u8], StoreError> {
        if self.direct {
            let lead = (off % BUF_ALIGN as u64) as usize;
            let want = (lead + len).div_ceil(BUF_ALIGN) * BUF_ALIGN;
            if self.buf_start + want <= self.buf.len() {
                let start = self.buf_start;
                match read_full(
                    &self.file,
                    &mut self.buf[start..start + want],
                    off - lead as u64,
                ) {
                    Ok(got) if got >= lead + len => {
                        return Ok(&self.buf[start + lead..start + lead + len]);
                    }
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(io_err("re-read", &self.path)(e)),
                }
            }
            self.direct = false;
            let f = File::open(&self.path).map_err(io_err("open", &self.path))?;
            self.file = f;
        }
        let start = self.buf_start;
        let b = &mut self.buf[start..start + len];
        self.file
            .read_exact_at(b, off)
            .map_err(io_err("re-read", &self.path))?;
        Ok(&self.buf[start..start + len])
    }
}

/// Reads into `buf` at `off` until it is full or the file ends; returns the bytes read.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn work(
    mut image: Image,
    bs: usize,
    jobs: Receiver<Vec<Run>>,
    cancel: &AtomicBool,
    progress: &AtomicU64,
) -> Result<BlockCheck, StoreError> {
    let mut out = BlockCheck::default();
    let per_read = (READ_BYTES / bs).max(1);
    for runs in jobs {
        for run in &runs {
            if cancel.load(Ordering::Relaxed) {
                return Ok(out);
            }
            let off = run.first * bs as u64;
            image.write_back(off, (run.hashes.len() * bs) as u64)?;
            for (k, want) in run.hashes.chunks(per_read).enumerate() {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(out);
                }
                let first = run.first + (k * per_read) as u64;
                let data = image.read(first * bs as u64, want.len() * bs)?;
                for (i, (block, h)) in data.chunks_exact(bs).zip(want).enumerate() {
                    if block_digest(block) != *h {
                        out.bad_total += 1;
                        if out.bad.len() < crate::wire::MAX_BAD_BLOCKS {
                            out.bad.push(first + i as u64);
                        }
                    }
                }
                out.checked += want.len() as u64;
                progress.fetch_add(want.len() as u64, Ordering::Relaxed);
            }
        }
    }
    out.bad.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(b: u64) -> Vec<u8> {
        (0..4096u32).map(|i| (i as u64 ^ b) as u8 | 1).collect()
    }

    fn runs(hashes: &[BlockDigest], first: u64, per: usize) -> Vec<Run> {
        hashes
            .chunks(per)
            .enumerate()
            .map(|(k, h)| Run {
                first: first + (k * per) as u64,
                hashes: h.to_vec(),
            })
            .collect()
    }

    #[test]
    fn finds_blocks_that_differ_from_their_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = File::create(&path).unwrap();
        let blocks = 3000u64;
        let mut hashes = Vec::new();
        for b in 0..blocks {
            let data = block(b);
            f.write_all_at(&data, b * 4096).unwrap();
            hashes.push(block_digest(&data));
        }
        // Two blocks on the image that do not match what their frames said.
        f.write_all_at(&[0u8; 4096], 7 * 4096).unwrap();
        f.write_all_at(&[9u8; 4096], 2999 * 4096).unwrap();
        for from_disk in [true, false] {
            let r = Reread::start(&path, 4096, from_disk).unwrap();
            let other = r.sender().unwrap();
            let all = runs(&hashes, 0, 64);
            let (a, b) = all.split_at(20);
            r.check(a.to_vec());
            other.send(b.to_vec()).unwrap();
            drop(other);
            let check = r.finish().unwrap();
            assert_eq!(check.checked, blocks);
            assert_eq!(check.bad, vec![7, 2999]);
            assert_eq!(check.bad_total, 2);
        }
    }

    #[test]
    fn small_blocks_read_back_from_unaligned_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = File::create(&path).unwrap();
        let data: Vec<u8> = (0..512 * 9).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        let r = Reread::start(&path, 512, true).unwrap();
        let hashes: Vec<BlockDigest> = (3..9)
            .map(|b| block_digest(&data[b * 512..(b + 1) * 512]))
            .collect();
        r.check(runs(&hashes, 3, 64));
        let check = r.finish().unwrap();
        assert_eq!((check.checked, check.bad_total), (6, 0));
    }

    #[test]
    fn dropping_a_reread_stops_its_worker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        File::create(&path).unwrap().set_len(64 << 20).unwrap();
        let r = Reread::start(&path, 4096, true).unwrap();
        let zero = block_digest(&[0u8; 4096]);
        r.check(runs(&vec![zero; 16384], 0, 256));
        drop(r);
    }
}
