//! One session being received by the target: writes blocks into a temporary image, keeps
//! the per-block hashes and the manifest digest, applies the fault options, has the image
//! written and re-read behind the writes ([`super::storage`]), and at the end verifies and
//! commits atomically (or fails and leaves the store as it was).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::storage::Storage;
use super::store::{
    drop_cache, io_err, sparse_copy, sync_dir, GenPaths, GenerationManifest, Store, StoreError,
    MANIFEST_FORMAT,
};
use super::verify::{check_blocks, is_zero, BlockCheck};
use super::TargetFaults;
use crate::wire::{
    BackupKind, BlockView, End, FailReason, ManifestDigest, NackReason, Outcome, SessionHeader,
    WireError, HASH_LEN, MAX_BAD_BLOCKS,
};

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Refused(String),
    #[error("open session storage")]
    Storage(#[from] StoreError),
}

/// What to do after a block frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Written; `next_seq` advanced.
    Stored,
    /// Already have it, or dropped while waiting for a resend.
    Ignored,
    /// Ask for a resend from `seq`.
    Nack(u64, NackReason),
}

/// A session-ending problem while receiving blocks.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("malformed block frame")]
    Protocol(#[from] WireError),
    #[error("store block")]
    Storage(#[from] StoreError),
}

/// What to do after the end frame.
#[derive(Debug)]
pub enum EndOutcome {
    /// Frames are missing: resend from this one.
    Nack(u64),
    /// The session is over.
    Done(Outcome),
}

/// Counters for the session report.
#[derive(Debug, Clone)]
pub struct SessionCounters {
    pub started: Instant,
    pub nacks: u64,
    pub ignored: u64,
    pub resumes: u64,
    pub verified: bool,
    /// Blocks an injected fault touched: for wrong-offset, the block meant and the block
    /// written instead (capped at [`MAX_FAULT_SITES`]).
    pub fault_sites: Vec<u64>,
}

/// Most fault sites a session report lists.
pub const MAX_FAULT_SITES: usize = 4096;

pub struct Receiving {
    pub header: SessionHeader,
    tmp: GenPaths,
    fin: GenPaths,
    volume_dir: std::path::PathBuf,
    img: File,
    hashes: File,
    pub next_seq: u64,
    pub blocks: u64,
    digest: ManifestDigest,
    /// Received blocks as merged runs.
    sent: Vec<[u64; 2]>,
    /// The sequence number already NACKed as missing (only once until it arrives).
    missing_nacked: Option<u64>,
    hash_run_start: u64,
    hash_run: Vec<u8>,
    /// Blocks stored so far, for the 1-in-N fault.
    stored_blocks: u64,
    faults: TargetFaults,
    /// A new full image: zero blocks can stay holes.
    fresh: bool,
    /// Writes the image and re-reads it behind the writes.
    storage: Storage,
    /// Re-read from the device rather than the page cache.
    reread_from_disk: bool,
    /// Blocks written again outside their frame (the wrong-offset fault), to check again
    /// at the end: the re-read behind the writes may have checked them before.
    strays: Vec<u64>,
    pub counters: SessionCounters,
}

impl Receiving {
    /// Creates the temporary image (sparse, or a copy of the parent for an incremental)
    /// and starts the re-read; `reread_from_disk` makes it read the device, not the cache.
    pub fn open(
        store: &Store,
        header: &SessionHeader,
        faults: TargetFaults,
        reread_from_disk: bool,
    ) -> Result<Receiving, OpenError> {
        let vol = &header.volume_id;
        let fin = store.paths(vol, header.generation)?;
        if fin.json.exists() {
            return Err(OpenError::Refused(format!(
                "generation {} of volume {vol} is already committed",
                header.generation
            )));
        }
        let volume_dir = store.volume_dir(vol)?;
        std::fs::create_dir_all(&volume_dir).map_err(io_err("create", &volume_dir))?;
        let tmp = store.tmp_paths(vol, header.generation, header.session)?;
        let blocks = header.block_count();
        let (img, hashes, fresh) = match header.kind {
            BackupKind::Full => {
                let img = create_sized(&tmp.img, header.volume_size)?;
                let hashes = create_sized(&tmp.hashes, blocks * HASH_LEN as u64)?;
                (img, hashes, true)
            }
            BackupKind::Incremental { parent } => {
                let pm = store.manifest(vol, parent)?.ok_or_else(|| {
                    OpenError::Refused(format!(
                        "parent generation {parent} of volume {vol} is not committed"
                    ))
                })?;
                if pm.format != MANIFEST_FORMAT {
                    return Err(OpenError::Refused(format!(
                        "parent generation {parent} of volume {vol} is in store format {} (this target writes {MANIFEST_FORMAT}, with 16-byte block hashes); back up in full",
                        pm.format
                    )));
                }
                if pm.volume_size != header.volume_size || pm.block_size != header.block_size {
                    return Err(OpenError::Refused(format!(
                        "parent generation {parent} has {} bytes in blocks of {}; this session says {} in blocks of {}",
                        pm.volume_size, pm.block_size, header.volume_size, header.block_size
                    )));
                }
                let pp = store.paths(vol, parent)?;
                let img = sparse_copy(&pp.img, &tmp.img)?;
                let hashes = match sparse_copy(&pp.hashes, &tmp.hashes) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp.img);
                        return Err(e.into());
                    }
                };
                (img, hashes, false)
            }
        };
        let verify = (!faults.skip_verify).then_some(reread_from_disk);
        let storage = match Storage::start(&tmp.img, header.block_size, verify) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp.img);
                let _ = std::fs::remove_file(&tmp.hashes);
                return Err(e.into());
            }
        };
        Ok(Receiving {
            header: header.clone(),
            tmp,
            fin,
            volume_dir,
            img,
            hashes,
            next_seq: 0,
            blocks: 0,
            digest: ManifestDigest::new(),
            sent: Vec::new(),
            missing_nacked: None,
            hash_run_start: 0,
            hash_run: Vec::new(),
            stored_blocks: 0,
            faults,
            fresh,
            storage,
            reread_from_disk,
            strays: Vec::new(),
            counters: SessionCounters {
                started: Instant::now(),
                nacks: 0,
                ignored: 0,
                resumes: 0,
                verified: false,
                fault_sites: Vec::new(),
            },
        })
    }

    /// Handles one block frame.
    pub fn block(&mut self, b: &BlockView<'_>) -> Result<BlockOutcome, BlockError> {
        self.header.check_block(b)?;
        if b.seq < self.next_seq {
            self.counters.ignored += 1;
            return Ok(BlockOutcome::Ignored);
        }
        if b.seq > self.next_seq {
            self.counters.ignored += 1;
            if self.missing_nacked == Some(self.next_seq) {
                return Ok(BlockOutcome::Ignored);
            }
            self.missing_nacked = Some(self.next_seq);
            self.counters.nacks += 1;
            return Ok(BlockOutcome::Nack(self.next_seq, NackReason::Missing));
        }
        if !b.mismatched_blocks().is_empty() {
            // Frames already in flight behind this one must not NACK again.
            self.missing_nacked = Some(self.next_seq);
            self.counters.nacks += 1;
            return Ok(BlockOutcome::Nack(b.seq, NackReason::HashMismatch));
        }
        self.write(b)?;
        let bs = u64::from(self.header.block_size);
        let first = b.offset / bs;
        let n = b.hash_count() as u64;
        self.push_hashes(first, b.hashes)?;
        self.storage.stored(first, b.hashes)?;
        self.digest
            .add_frame(b.offset, self.header.block_size, b.hashes);
        match self.sent.last_mut() {
            Some(last) if last[0] + last[1] == first => last[1] += n,
            _ => self.sent.push([first, n]),
        }
        self.next_seq += 1;
        self.blocks += n;
        self.missing_nacked = None;
        Ok(BlockOutcome::Stored)
    }

    fn write(&mut self, b: &BlockView<'_>) -> Result<(), StoreError> {
        let bs = self.header.block_size as usize;
        let n = b.hash_count();
        // Runs of blocks written where they belong; a fault or a skipped hole ends a run.
        let mut run_start: Option<usize> = None;
        for i in 0..=n {
            let special = if i < n {
                self.stored_blocks += 1;
                let wrong = self
                    .faults
                    .wrong_offset_every
                    .is_some_and(|every| every > 0 && self.stored_blocks.is_multiple_of(every));
                let hole = self.fresh && is_zero(b.block(i));
                if wrong {
                    let off = b.offset + (i * bs) as u64;
                    self.write_wrong(off, b.block(i))?;
                }
                wrong || hole
            } else {
                true
            };
            if special {
                if let Some(s) = run_start.take() {
                    let off = b.offset + (s * bs) as u64;
                    self.storage.write_at(off, &b.data[s * bs..i * bs])?;
                }
            } else if run_start.is_none() {
                run_start = Some(i);
            }
        }
        Ok(())
    }

    /// The wrong-offset fault: the block lands one block off (after, or before at the end).
    fn write_wrong(&mut self, off: u64, data: &[u8]) -> Result<(), StoreError> {
        let bs = u64::from(self.header.block_size);
        let wrong = if off + 2 * bs <= self.header.volume_size {
            off + bs
        } else if off >= bs {
            off - bs
        } else {
            off
        };
        if self.counters.fault_sites.len() + 2 <= MAX_FAULT_SITES {
            self.counters.fault_sites.extend([off / bs, wrong / bs]);
        }
        self.strays.push(wrong / bs);
        self.storage.write_at(wrong, data)
    }

    fn push_hashes(&mut self, first: u64, hashes: &[u8]) -> Result<(), StoreError> {
        let run_end = self.hash_run_start + (self.hash_run.len() / HASH_LEN) as u64;
        if !self.hash_run.is_empty() && (run_end != first || self.hash_run.len() >= 1 << 20) {
            self.flush_hashes()?;
        }
        if self.hash_run.is_empty() {
            self.hash_run_start = first;
        }
        self.hash_run.extend_from_slice(hashes);
        Ok(())
    }

    fn flush_hashes(&mut self) -> Result<(), StoreError> {
        if !self.hash_run.is_empty() {
            self.hashes
                .write_all_at(&self.hash_run, self.hash_run_start * HASH_LEN as u64)
                .map_err(io_err("write", &self.tmp.hashes))?;
            self.hash_run.clear();
        }
        Ok(())
    }

    /// Handles the end frame: checks counts and the manifest digest, then commits.
    pub fn end(&mut self, e: &End) -> EndOutcome {
        if e.frame_count > self.next_seq {
            self.counters.nacks += 1;
            return EndOutcome::Nack(self.next_seq);
        }
        let fail = |reason, message: String| {
            EndOutcome::Done(Outcome::Failed {
                reason,
                message,
                bad_blocks: Vec::new(),
                bad_total: 0,
            })
        };
        if e.frame_count != self.next_seq || e.block_count != self.blocks {
            return fail(
                FailReason::Manifest,
                format!(
                    "end frame says {} frames and {} blocks; received {} frames and {} blocks",
                    e.frame_count, e.block_count, self.next_seq, self.blocks
                ),
            );
        }
        if e.manifest_digest != self.digest.finish() {
            return fail(
                FailReason::Manifest,
                "manifest digest of the end frame differs from the blocks received".into(),
            );
        }
        match self.commit(e) {
            Ok(o) => EndOutcome::Done(o),
            Err(err) => fail(FailReason::Storage, super::error_chain(&err)),
        }
    }

    fn commit(&mut self, e: &End) -> Result<Outcome, StoreError> {
        self.flush_hashes()?;
        self.storage.finish_writes()?;
        self.img
            .sync_all()
            .map_err(io_err("fsync", &self.tmp.img))?;
        self.hashes
            .sync_all()
            .map_err(io_err("fsync", &self.tmp.hashes))?;
        // Most of the image was re-read while it arrived; this waits for the rest.
        if let Some(mut check) = self.storage.finish_checks()? {
            check.merge(self.recheck_strays()?);
            if check.bad_total > 0 {
                return Ok(Outcome::Failed {
                    reason: FailReason::Verification,
                    message: format!(
                        "re-read of {} stored blocks found {} that do not match their frame hashes",
                        check.checked, check.bad_total
                    ),
                    bad_total: check.bad_total,
                    bad_blocks: check.bad.into_iter().take(MAX_BAD_BLOCKS).collect(),
                });
            }
            self.counters.verified = true;
        }
        if self.faults.crash_before_commit {
            // The fault the harness asked for: die with everything written but not renamed.
            std::process::abort();
        }
        let h = &self.header;
        let name = |p: &std::path::Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let manifest = GenerationManifest {
            format: MANIFEST_FORMAT,
            volume: h.volume_id.clone(),
            generation: h.generation,
            kind: h.kind.name().to_string(),
            parent: h.kind.parent(),
            session: h.session.to_string(),
            volume_size: h.volume_size,
            block_size: h.block_size,
            frames: e.frame_count,
            blocks: self.blocks,
            manifest_digest: hex::encode(e.manifest_digest),
            sent: self.sent.clone(),
            committed_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            verified: self.counters.verified,
            image: name(&self.fin.img),
            hashes: name(&self.fin.hashes),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| StoreError::Json {
            path: self.tmp.json.clone(),
            source,
        })?;
        let jf = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp.json)
            .map_err(io_err("create", &self.tmp.json))?;
        jf.write_all_at(&json, 0)
            .and_then(|_| jf.sync_all())
            .map_err(io_err("write", &self.tmp.json))?;
        // The manifest goes last: a generation exists exactly when its json does.
        for (from, to) in [
            (&self.tmp.img, &self.fin.img),
            (&self.tmp.hashes, &self.fin.hashes),
            (&self.tmp.json, &self.fin.json),
        ] {
            std::fs::rename(from, to).map_err(io_err("rename into place", to))?;
        }
        sync_dir(&self.volume_dir)?;
        Ok(Outcome::Committed {
            generation: h.generation,
            block_count: self.blocks,
        })
    }

    /// Checks again, after the fsync, every block a stray write touched, against the
    /// hash file (which holds every block's expected hash by now).
    fn recheck_strays(&mut self) -> Result<BlockCheck, StoreError> {
        if self.strays.is_empty() {
            return Ok(BlockCheck::default());
        }
        self.strays.sort_unstable();
        self.strays.dedup();
        if self.reread_from_disk {
            drop_cache(&self.img);
        }
        let ranges: Vec<[u64; 2]> = self.strays.iter().map(|&b| [b, 1]).collect();
        let mut check = check_blocks(
            &self.img,
            &self.tmp.img,
            &self.hashes,
            &self.tmp.hashes,
            self.header.block_size,
            &ranges,
        )?;
        // Counted already by the re-read behind the writes, when they were sent.
        check.checked = 0;
        Ok(check)
    }

    /// Removes the temporary files (failed, aborted or expired session).
    pub fn discard(&self) {
        for p in [&self.tmp.img, &self.tmp.hashes, &self.tmp.json] {
            // Missing files are fine: a commit may have renamed some already.
            let _ = std::fs::remove_file(p);
        }
    }
}

fn create_sized(p: &std::path::Path, len: u64) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .map_err(io_err("create", p))?;
    f.set_len(len).map_err(io_err("size", p))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{block_digest, decode_view, encode_block, FrameView, SessionId};
    use std::time::Duration;

    /// Feeds one block frame to the session, as a connection would.
    fn feed(r: &mut Receiving, seq: u64, first: u64, blocks: &[Vec<u8>]) -> BlockOutcome {
        let hashes: Vec<_> = blocks.iter().map(|b| block_digest(b)).collect();
        let mut bytes = Vec::new();
        encode_block(&mut bytes, seq, first * 4096, &hashes, &blocks.concat()).unwrap();
        let Some((FrameView::Block(b), _)) = decode_view(&bytes).unwrap() else {
            panic!("not a block frame")
        };
        r.block(&b).unwrap()
    }

    /// The stray write of the wrong-offset fault lands in a block the re-read has
    /// already checked (the last block's goes one block back): it is checked again
    /// after the fsync, so the session fails naming both blocks.
    #[test]
    fn a_stray_write_into_checked_blocks_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let total = 2049u64;
        let header = SessionHeader {
            session: SessionId([5; 16]),
            volume_id: "v".into(),
            volume_size: total * 4096,
            block_size: 4096,
            generation: 1,
            kind: BackupKind::Full,
            resume: false,
        };
        let faults = TargetFaults {
            wrong_offset_every: Some(total),
            ..TargetFaults::default()
        };
        let mut r = Receiving::open(&store, &header, faults, true).unwrap();
        let block = |b: u64| vec![(b % 251) as u8 | 1; 4096];
        let mut digest = ManifestDigest::new();
        let mut seq = 0;
        for first in (0..total - 1).step_by(64) {
            let blocks: Vec<_> = (first..first + 64).map(block).collect();
            assert_eq!(feed(&mut r, seq, first, &blocks), BlockOutcome::Stored);
            for (i, b) in blocks.iter().enumerate() {
                digest.add_block((first + i as u64) * 4096, 4096, &block_digest(b));
            }
            seq += 1;
        }
        // Every block so far is handed over; wait until the re-read has checked them.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while r.storage.checked() < total - 1 {
            assert!(
                std::time::Instant::now() < until,
                "the re-read never got there"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let last = block(total - 1);
        assert_eq!(
            feed(&mut r, seq, total - 1, std::slice::from_ref(&last)),
            BlockOutcome::Stored
        );
        digest.add_block((total - 1) * 4096, 4096, &block_digest(&last));
        let end = End {
            session: header.session,
            frame_count: seq + 1,
            block_count: total,
            manifest_digest: digest.finish(),
        };
        match r.end(&end) {
            EndOutcome::Done(Outcome::Failed {
                reason: FailReason::Verification,
                bad_blocks,
                bad_total,
                ..
            }) => {
                assert_eq!(bad_blocks, vec![total - 2, total - 1]);
                assert_eq!(bad_total, 2);
            }
            other => panic!("expected a verification failure, got {other:?}"),
        }
        r.discard();
    }
}
