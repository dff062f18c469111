//! The point-in-time layers: the base image and one copy-on-write overlay per instant,
//! like a chain of QEMU's blockdev-snapshot-sync, in the simplest format that works.
//!
//! On disk, in the backend's state directory:
//!
//! ```text
//! layers.json     the manifest (see [`Manifest`])
//! layer-N.raw     overlay N: a sparse raw file as large as the disk; a block that
//!                 overlay N holds sits at its own offset
//! layer-N.map     overlay N's block bitmap: "BWLAYMAP", u32 version, u32 reserved,
//!                 u64 block count, then one bit per 4 KiB block (u64 words, LE,
//!                 bit b%64 of word b/64), set = the overlay holds the block
//! ```
//!
//! Layer 0 is the base image itself, written in place until the first instant. Instant
//! N freezes every layer below it and starts overlay N, which takes every later write
//! until instant N+1. So generation N (the disk as it was at instant N) is the base
//! plus overlays 1..N-1, each block read from the highest layer that holds it, and the
//! final state is the base plus every overlay. A frozen overlay's map is written when
//! it freezes; the top overlay's map when the backend closes its layers (a backend that
//! died leaves the final state unknown, but every generation intact).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use crate::hash::BLOCK_SIZE;

const MAP_MAGIC: [u8; 8] = *b"BWLAYMAP";
const MAP_VERSION: u32 = 1;
/// Version of layers.json.
pub const MANIFEST_VERSION: u32 = 1;
const MANIFEST: &str = "layers.json";

/// Why layers could not be made, changed or read.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the image {path} is {bytes} bytes; a witness disk needs a non-empty whole number of 4 KiB blocks")]
    Size { path: PathBuf, bytes: u64 },
    #[error("the state directory {dir} already holds layers; give every backend a fresh one")]
    NotFresh { dir: PathBuf },
    #[error("{path} is not a valid layer manifest")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not a valid layer map: {what}")]
    Map { path: PathBuf, what: String },
    #[error("generation {asked} does not exist: the backend took {instants} instants")]
    NoGeneration { asked: u32, instants: u32 },
    #[error("the final state is unknown: the backend did not close its layers (it died?); every generation is still readable")]
    NotClosed,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One bit per block; set bits are never cleared.
pub struct Bitmap {
    words: Vec<AtomicU64>,
    blocks: u64,
}

impl Bitmap {
    pub fn new(blocks: u64) -> Bitmap {
        Bitmap {
            words: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            blocks,
        }
    }

    pub fn get(&self, block: u64) -> bool {
        self.words[(block / 64) as usize].load(Ordering::Acquire) & (1 << (block % 64)) != 0
    }

    pub fn set(&self, block: u64) {
        self.words[(block / 64) as usize].fetch_or(1 << (block % 64), Ordering::AcqRel);
    }

    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }

    fn save(&self, path: &Path) -> Result<(), LayerError> {
        let mut buf = Vec::with_capacity(24 + self.words.len() * 8);
        buf.extend_from_slice(&MAP_MAGIC);
        buf.extend_from_slice(&MAP_VERSION.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&self.blocks.to_le_bytes());
        for w in &self.words {
            buf.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
        }
        let tmp = path.with_extension("map.tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&buf).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    fn load(path: &Path, blocks: u64) -> Result<Bitmap, LayerError> {
        let mut buf = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io_err(path))?;
        let bad = |what: &str| LayerError::Map {
            path: path.to_path_buf(),
            what: what.into(),
        };
        if buf.len() < 24 || buf[..8] != MAP_MAGIC {
            return Err(bad("bad magic"));
        }
        if u32::from_le_bytes(buf[8..12].try_into().expect("4")) != MAP_VERSION {
            return Err(bad("unknown version"));
        }
        if u64::from_le_bytes(buf[16..24].try_into().expect("8")) != blocks {
            return Err(bad("block count differs from the disk's"));
        }
        let words = &buf[24..];
        if words.len() as u64 != blocks.div_ceil(64) * 8 {
            return Err(bad("wrong length"));
        }
        Ok(Bitmap {
            words: words
                .chunks_exact(8)
                .map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().expect("8"))))
                .collect(),
            blocks,
        })
    }
}

struct Overlay {
    file: File,
    bits: Bitmap,
}

/// A base image and overlays above it, read block by block from the highest layer that
/// holds each block. The live backend writes to the top; offline views only read.
pub struct Stack {
    disk_bytes: u64,
    blocks: u64,
    base: File,
    overlays: Vec<Overlay>,
}

impl Stack {
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The file holding `block`'s current content.
    fn source(&self, block: u64) -> &File {
        self.overlays
            .iter()
            .rev()
            .find(|o| o.bits.get(block))
            .map_or(&self.base, |o| &o.file)
    }

    fn top(&self) -> (&File, Option<&Bitmap>) {
        match self.overlays.last() {
            Some(o) => (&o.file, Some(&o.bits)),
            None => (&self.base, None),
        }
    }

    /// Reads `buf.len()` bytes at `offset`; the range must lie on the disk.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if self.overlays.is_empty() {
            return self.base.read_exact_at(buf, offset);
        }
        // Runs of consecutive blocks with the same source, one pread each.
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / BLOCK_SIZE;
            let src = self.source(block);
            let mut end = (block + 1) * BLOCK_SIZE;
            while end < offset + buf.len() as u64
                && std::ptr::eq(self.source(end / BLOCK_SIZE), src)
            {
                end += BLOCK_SIZE;
            }
            let n = (end.min(offset + buf.len() as u64) - pos) as usize;
            src.read_exact_at(&mut buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    /// True while there is no overlay: every block is read from the base image.
    pub fn is_flat(&self) -> bool {
        self.overlays.is_empty()
    }

    /// Reads from the base image straight into `iov` (preadv; short reads continue).
    /// Only for a flat stack. The iovecs may point into guest memory: the kernel writes
    /// there, no Rust reference to it is made.
    pub fn read_base_vectored(&self, offset: u64, iov: &mut [libc::iovec]) -> std::io::Result<()> {
        debug_assert!(self.is_flat());
        let fd = self.base.as_raw_fd();
        let mut iov = &mut iov[..];
        let mut pos = offset;
        while !iov.is_empty() {
            let n = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            // SAFETY: every iovec describes memory that stays mapped for this call (guest
            // memory pinned by the caller's guard); the kernel writes only within them.
            let got = unsafe { libc::preadv(fd, iov.as_ptr(), n, pos as libc::off_t) };
            if got < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            pos += got as u64;
            let mut left = got as usize;
            while left > 0 {
                let first = &mut iov[0];
                if left >= first.iov_len {
                    left -= first.iov_len;
                    iov = &mut iov[1..];
                } else {
                    // SAFETY: advancing within the same buffer.
                    first.iov_base = unsafe { (first.iov_base as *mut u8).add(left) }.cast();
                    first.iov_len -= left;
                    left = 0;
                }
            }
            while iov.first().is_some_and(|v| v.iov_len == 0) {
                iov = &mut iov[1..];
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` into the top layer. A partial block the top overlay
    /// does not hold yet is copied up first. Caller holds the write locks of every block
    /// the range touches.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let (top, bits) = self.top();
        let Some(bits) = bits else {
            return top.write_all_at(data, offset);
        };
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let block_start = block * BLOCK_SIZE;
            let block_end = block_start + BLOCK_SIZE;
            if pos == block_start && end >= block_end {
                // Whole blocks: straight to the top.
                let mut run_end = block_end;
                while run_end + BLOCK_SIZE <= end {
                    run_end += BLOCK_SIZE;
                }
                let from = (pos - offset) as usize;
                top.write_all_at(&data[from..from + (run_end - pos) as usize], pos)?;
                for b in block..run_end / BLOCK_SIZE {
                    bits.set(b);
                }
                pos = run_end;
            } else {
                let upto = end.min(block_end);
                let from = (pos - offset) as usize;
                let part = &data[from..from + (upto - pos) as usize];
                if bits.get(block) {
                    top.write_all_at(part, pos)?;
                } else {
                    let mut whole = vec![0u8; BLOCK_SIZE as usize];
                    self.read_at(block_start, &mut whole)?;
                    let at = (pos - block_start) as usize;
                    whole[at..at + part.len()].copy_from_slice(part);
                    top.write_all_at(&whole, block_start)?;
                    bits.set(block);
                }
                pos = upto;
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeroes: whole blocks by punching a hole in
    /// the top layer, partial blocks by writing zeroes. Caller holds the blocks' write
    /// locks.
    pub fn zero_at(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = offset + len;
        let first_whole = offset.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let last_whole = end / BLOCK_SIZE * BLOCK_SIZE;
        if first_whole >= last_whole {
            return self.write_at(offset, &vec![0u8; len as usize]);
        }
        if offset < first_whole {
            self.write_at(offset, &vec![0u8; (first_whole - offset) as usize])?;
        }
        let (top, bits) = self.top();
        punch_or_zero(top, first_whole, last_whole - first_whole)?;
        if let Some(bits) = bits {
            for b in first_whole / BLOCK_SIZE..last_whole / BLOCK_SIZE {
                bits.set(b);
            }
        }
        if last_whole < end {
            self.write_at(last_whole, &vec![0u8; (end - last_whole) as usize])?;
        }
        Ok(())
    }

    /// fdatasync of the layer that takes writes.
    pub fn sync_top(&self) -> std::io::Result<()> {
        self.top().0.sync_data()
    }

    /// Blocks held by the top overlay (0 while writes go to the base).
    pub fn top_blocks(&self) -> u64 {
        self.top().1.map_or(0, Bitmap::count)
    }
}

/// Punches a hole (reads as zeroes afterwards); writes zeroes where the filesystem
/// cannot punch.
fn punch_or_zero(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a file descriptor we own, with plain integer arguments.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            let zeroes = vec![0u8; 1 << 20];
            let mut pos = offset;
            while pos < offset + len {
                let n = (offset + len - pos).min(zeroes.len() as u64) as usize;
                file.write_all_at(&zeroes[..n], pos)?;
                pos += n as u64;
            }
            Ok(())
        }
        _ => Err(err),
    }
}

/// The manifest, layers.json.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub block_size: u64,
    pub disk_bytes: u64,
    /// The base image (layer 0), written in place until the first instant.
    pub base: PathBuf,
    /// Overlay N is `layers[N-1]`, started at instant N.
    pub layers: Vec<LayerEntry>,
    /// True once the backend closed its layers: the top overlay's map is written and
    /// the final state can be read.
    pub closed: bool,
}

/// One overlay.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerEntry {
    /// N: started by instant N.
    pub layer: u32,
    /// The instant's label.
    pub label: String,
    /// Data and map files, relative to the state directory.
    pub data: String,
    pub map: String,
    /// True once a later instant froze it (its map is written then).
    pub frozen: bool,
}

impl Manifest {
    /// Instants taken (= generations that exist).
    pub fn instants(&self) -> u32 {
        self.layers.len() as u32
    }
}

/// The layers of a running backend: one writer stack behind a lock that instants take.
pub struct LiveLayers {
    dir: PathBuf,
    /// Writes and reads hold it shared; an instant holds it exclusively, so no write
    /// straddles an instant.
    stack: RwLock<Stack>,
    /// Guarded: the manifest as last written.
    manifest: Mutex<Manifest>,
}

impl LiveLayers {
    /// Opens the base image for writing and starts an empty state directory.
    pub fn create(base: &Path, dir: &Path) -> Result<LiveLayers, LayerError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if dir.join(MANIFEST).exists() {
            return Err(LayerError::NotFresh {
                dir: dir.to_path_buf(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(base)
            .map_err(io_err(base))?;
        let disk_bytes = file.metadata().map_err(io_err(base))?.len();
        if disk_bytes == 0 || !disk_bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(LayerError::Size {
                path: base.to_path_buf(),
                bytes: disk_bytes,
            });
        }
        let base_abs = std::fs::canonicalize(base).map_err(io_err(base))?;
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            block_size: BLOCK_SIZE,
            disk_bytes,
            base: base_abs,
            layers: vec![],
            closed: false,
        };
        let live = LiveLayers {
            dir: dir.to_path_buf(),
            stack: RwLock::new(Stack {
                disk_bytes,
                blocks: disk_bytes / BLOCK_SIZE,
                base: file,
                overlays: vec![],
            }),
            manifest: Mutex::new(manifest.clone()),
        };
        live.write_manifest(&manifest)?;
        Ok(live)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shared access for reads and writes.
    pub fn stack(&self) -> RwLockReadGuard<'_, Stack> {
        self.stack.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), LayerError> {
        let path = self.dir.join(MANIFEST);
        let tmp = self.dir.join("layers.json.tmp");
        let json = serde_json::to_vec_pretty(m).expect("the manifest serialises");
        std::fs::write(&tmp, json).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Instant: waits for writes in progress, freezes every layer, starts the next
    /// overlay. `at_instant` runs while no write can happen (record the marker there),
    /// with the number of the generation that froze.
    pub fn instant<T>(
        &self,
        label: &str,
        at_instant: impl FnOnce(u32) -> T,
    ) -> Result<(u32, T), LayerError> {
        let mut stack = self.stack.write().unwrap_or_else(|p| p.into_inner());
        let mut manifest = self.manifest.lock().unwrap_or_else(|p| p.into_inner());
        let generation = manifest.instants() + 1;
        // What the frozen layer holds must be on stable storage before it is the truth.
        stack.sync_top().map_err(io_err(&manifest.base))?;
        if let (Some(top), Some(entry)) = (stack.overlays.last(), manifest.layers.last_mut()) {
            top.bits.save(&self.dir.join(&entry.map))?;
            entry.frozen = true;
        }
        let data = format!("layer-{generation}.raw");
        let map = format!("layer-{generation}.map");
        let path = self.dir.join(&data);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(stack.disk_bytes).map_err(io_err(&path))?;
        let blocks = stack.blocks;
        stack.overlays.push(Overlay {
            file,
            bits: Bitmap::new(blocks),
        });
        manifest.layers.push(LayerEntry {
            layer: generation,
            label: label.to_string(),
            data,
            map,
            frozen: false,
        });
        self.write_manifest(&manifest)?;
        let out = at_instant(generation);
        Ok((generation, out))
    }

    /// Instants taken so far.
    pub fn instants(&self) -> u32 {
        self.manifest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .instants()
    }

    /// Syncs the top layer, writes its map and marks the manifest closed, so the final
    /// state can be read. Writes after this still land but are not described.
    pub fn close(&self) -> Result<(), LayerError> {
        let stack = self.stack.write().unwrap_or_else(|p| p.into_inner());
        let mut manifest = self.manifest.lock().unwrap_or_else(|p| p.into_inner());
        stack.sync_top().map_err(io_err(&manifest.base))?;
        if let (Some(top), Some(entry)) = (stack.overlays.last(), manifest.layers.last()) {
            top.bits.save(&self.dir.join(&entry.map))?;
        }
        manifest.closed = true;
        self.write_manifest(&manifest)
    }
}

/// Which image to read from the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The disk as it was at instant N (N from 1).
    At(u32),
    /// The disk as the backend left it.
    Final,
}

/// The layers of a backend, read after the fact (or while it runs: a generation never
/// changes once its instant has passed).
pub struct Layers {
    dir: PathBuf,
    pub manifest: Manifest,
}

impl Layers {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Layers, LayerError> {
        let dir = dir.into();
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(io_err(&path))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|source| LayerError::Manifest {
                path: path.clone(),
                source,
            })?;
        Ok(Layers { dir, manifest })
    }

    /// A read-only stack for a generation.
    pub fn view(&self, which: Generation) -> Result<Stack, LayerError> {
        let m = &self.manifest;
        let overlays = match which {
            Generation::At(n) if n >= 1 && n <= m.instants() => n as usize - 1,
            Generation::At(n) => {
                return Err(LayerError::NoGeneration {
                    asked: n,
                    instants: m.instants(),
                })
            }
            Generation::Final if m.closed => m.layers.len(),
            Generation::Final => return Err(LayerError::NotClosed),
        };
        let base = File::open(&m.base).map_err(io_err(&m.base))?;
        let blocks = m.disk_bytes / BLOCK_SIZE;
        let mut stack = Stack {
            disk_bytes: m.disk_bytes,
            blocks,
            base,
            overlays: vec![],
        };
        for entry in &m.layers[..overlays] {
            let data = self.dir.join(&entry.data);
            let map = self.dir.join(&entry.map);
            stack.overlays.push(Overlay {
                file: File::open(&data).map_err(io_err(&data))?,
                bits: Bitmap::load(&map, blocks)?,
            });
        }
        Ok(stack)
    }

    /// Writes a generation as one sparse raw file.
    pub fn materialise(&self, which: Generation, out: &Path) -> Result<(), LayerError> {
        let stack = self.view(which)?;
        let file = File::create(out).map_err(io_err(out))?;
        file.set_len(stack.disk_bytes).map_err(io_err(out))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < stack.disk_bytes {
            let n = (stack.disk_bytes - pos).min(buf.len() as u64) as usize;
            stack
                .read_at(pos, &mut buf[..n])
                .map_err(io_err(&self.dir))?;
            if buf[..n].iter().any(|b| *b != 0) {
                file.write_all_at(&buf[..n], pos).map_err(io_err(out))?;
            }
            pos += n as u64;
        }
        file.sync_data().map_err(io_err(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, blocks: u64, fill: u8) -> PathBuf {
        let p = dir.join("base.raw");
        std::fs::write(&p, vec![fill; (blocks * BLOCK_SIZE) as usize]).unwrap();
        p
    }

    fn read(stack: &Stack, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        stack.read_at(offset, &mut b).unwrap();
        b
    }

    #[test]
    fn generations_freeze_and_the_final_state_has_every_write() {
        let tmp = tempfile::tempdir().unwrap();
        let base = image(tmp.path(), 8, 0xAA);
        let state = tmp.path().join("state");
        let live = LiveLayers::create(&base, &state).unwrap();
        // Before any instant, writes land in the base.
        live.stack().write_at(0, &[1u8; 4096]).unwrap();
        let (g1, ()) = live.instant("one", |_| ()).unwrap();
        assert_eq!(g1, 1);
        // A partial write into a block the overlay lacks copies the block up.
        live.stack().write_at(4096 + 100, &[2u8; 10]).unwrap();
        live.stack().zero_at(2 * 4096, 2 * 4096 + 512).unwrap();
        let (g2, ()) = live.instant("two", |_| ()).unwrap();
        assert_eq!(g2, 2);
        live.stack().write_at(7 * 4096, &[3u8; 4096]).unwrap();
        // The live view shows everything.
        let s = live.stack();
        assert_eq!(read(&s, 0, 4096), vec![1u8; 4096]);
        let b1 = read(&s, 4096, 4096);
        assert_eq!(&b1[..100], &[0xAA; 100][..]);
        assert_eq!(&b1[100..110], &[2u8; 10][..]);
        assert_eq!(&b1[110..], &[0xAA; 4096 - 110][..]);
        assert_eq!(
            read(&s, 2 * 4096, 2 * 4096 + 512),
            vec![0u8; 2 * 4096 + 512]
        );
        assert_eq!(read(&s, 4 * 4096 + 512, 10), vec![0xAA; 10]);
        drop(s);

        let layers = Layers::open(&state).unwrap();
        assert!(matches!(
            layers.view(Generation::Final),
            Err(LayerError::NotClosed)
        ));
        let g1 = layers.view(Generation::At(1)).unwrap();
        assert_eq!(read(&g1, 0, 4096), vec![1u8; 4096]);
        assert_eq!(read(&g1, 4096, 8192), vec![0xAA; 8192]);
        let g2 = layers.view(Generation::At(2)).unwrap();
        assert_eq!(read(&g2, 4096 + 100, 10), vec![2u8; 10]);
        assert_eq!(read(&g2, 7 * 4096, 4096), vec![0xAA; 4096]);
        assert!(matches!(
            layers.view(Generation::At(3)),
            Err(LayerError::NoGeneration {
                asked: 3,
                instants: 2
            })
        ));

        live.close().unwrap();
        let layers = Layers::open(&state).unwrap();
        let out = tmp.path().join("final.raw");
        layers.materialise(Generation::Final, &out).unwrap();
        let flat = std::fs::read(&out).unwrap();
        assert_eq!(&flat[7 * 4096..], &[3u8; 4096][..]);
        assert_eq!(&flat[..4096], &[1u8; 4096][..]);
        assert_eq!(&flat[4 * 4096 + 512..4 * 4096 + 522], &[0xAA; 10][..]);
    }

    #[test]
    fn images_that_are_not_whole_blocks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("odd.raw");
        std::fs::write(&p, vec![0u8; 4096 + 512]).unwrap();
        let err = LiveLayers::create(&p, &tmp.path().join("s")).err().unwrap();
        assert!(matches!(err, LayerError::Size { bytes: 4608, .. }), "{err}");
        let empty = tmp.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        assert!(LiveLayers::create(&empty, &tmp.path().join("s2")).is_err());
    }

    #[test]
    fn a_used_state_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = image(tmp.path(), 2, 0);
        let state = tmp.path().join("state");
        let _live = LiveLayers::create(&base, &state).unwrap();
        assert!(matches!(
            LiveLayers::create(&base, &state),
            Err(LayerError::NotFresh { .. })
        ));
    }
}
