//! The target's on-disk store: one directory per volume, one sparse raw image, one
//! per-block hash file and one JSON manifest per generation, temporary names while a
//! session is open, and the cleanup of leftovers at start.
//!
//! ```text
//! DIR/<volume-id>/gen-000003.img      sparse raw image of the whole volume
//! DIR/<volume-id>/gen-000003.hashes   xxh3-128 per block; 16 zero bytes = never written
//! DIR/<volume-id>/gen-000003.json     GenerationManifest; written last: the commit mark
//! DIR/<volume-id>/.tmp-gen-000003-<session>.{img,hashes,json}   while receiving
//! ```
//!
//! A generation exists exactly when its `.json` exists; an `.img` or `.hashes` without
//! it is the remnant of a crash between renames and is removed at start.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::SessionId;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("manifest {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("volume {volume} has no committed generation {generation}")]
    NoGeneration { volume: String, generation: u32 },
    #[error("bad volume id: {what}")]
    BadVolume { what: String },
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Format version of [`GenerationManifest`] and its files (2: 16-byte xxh3-128 block
/// hashes; 1 had 32-byte sha256).
pub const MANIFEST_FORMAT: u32 = 2;

/// What `gen-NNNNNN.json` says about a committed generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationManifest {
    pub format: u32,
    pub volume: String,
    pub generation: u32,
    /// "full" or "incremental".
    pub kind: String,
    pub parent: Option<u32>,
    pub session: String,
    pub volume_size: u64,
    pub block_size: u32,
    pub frames: u64,
    /// Blocks received in this session.
    pub blocks: u64,
    /// Hex sha256 manifest digest (see the wire protocol).
    pub manifest_digest: String,
    /// Blocks received in this session as merged `[first block, count]` runs.
    pub sent: Vec<[u64; 2]>,
    pub committed_unix_ms: u64,
    /// False when the target committed without re-reading (`--fault-skip-verify`).
    pub verified: bool,
    /// Image file name, next to this manifest.
    pub image: String,
    /// Per-block hash file name, next to this manifest.
    pub hashes: String,
}

/// File names of one generation.
#[derive(Debug, Clone)]
pub struct GenPaths {
    pub img: PathBuf,
    pub hashes: PathBuf,
    pub json: PathBuf,
}

/// The store root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn gen_stem(generation: u32) -> String {
    format!("gen-{generation:06}")
}

impl Store {
    /// Opens (creating) the store. Does not clean; see [`Store::clean_leftovers`].
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(root).map_err(io_err("create store directory", root))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn volume_dir(&self, volume: &str) -> Result<PathBuf, StoreError> {
        crate::wire::validate_volume_id(volume).map_err(|what| StoreError::BadVolume { what })?;
        Ok(self.root.join(volume))
    }

    pub fn paths(&self, volume: &str, generation: u32) -> Result<GenPaths, StoreError> {
        let dir = self.volume_dir(volume)?;
        let stem = gen_stem(generation);
        Ok(GenPaths {
            img: dir.join(format!("{stem}.img")),
            hashes: dir.join(format!("{stem}.hashes")),
            json: dir.join(format!("{stem}.json")),
        })
    }

    pub fn tmp_paths(
        &self,
        volume: &str,
        generation: u32,
        session: SessionId,
    ) -> Result<GenPaths, StoreError> {
        let dir = self.volume_dir(volume)?;
        let stem = format!(".tmp-{}-{session}", gen_stem(generation));
        Ok(GenPaths {
            img: dir.join(format!("{stem}.img")),
            hashes: dir.join(format!("{stem}.hashes")),
            json: dir.join(format!("{stem}.json")),
        })
    }

    /// Volume ids with a directory in the store, sorted.
    pub fn volumes(&self) -> Result<Vec<String>, StoreError> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err("list", &self.root))? {
            let e = e.map_err(io_err("list", &self.root))?;
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(name) = e.file_name().to_str() {
                    if crate::wire::validate_volume_id(name).is_ok() {
                        v.push(name.to_string());
                    }
                }
            }
        }
        v.sort();
        Ok(v)
    }

    /// Committed generations of a volume, ascending.
    pub fn generations(&self, volume: &str) -> Result<Vec<u32>, StoreError> {
        let dir = self.volume_dir(volume)?;
        let mut g = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(g),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io_err("list", &dir))?;
            if let Some(n) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                g.push(n);
            }
        }
        g.sort_unstable();
        Ok(g)
    }

    /// The manifest of a committed generation, `None` when it does not exist.
    pub fn manifest(
        &self,
        volume: &str,
        generation: u32,
    ) -> Result<Option<GenerationManifest>, StoreError> {
        let p = self.paths(volume, generation)?.json;
        let text = match fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| StoreError::Json { path: p, source })
    }

    /// Removes temporary files and uncommitted generation files left by a crash.
    /// Returns what it removed.
    pub fn clean_leftovers(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        for vol in self.volumes()? {
            let dir = self.root.join(&vol);
            for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let e = e.map_err(io_err("list", &dir))?;
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                let orphan = name.starts_with(".tmp-gen-")
                    || ((name.ends_with(".img") || name.ends_with(".hashes"))
                        && name.starts_with("gen-")
                        && !dir
                            .join(format!(
                                "{}.json",
                                name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name)
                            ))
                            .exists());
                if orphan {
                    let p = e.path();
                    fs::remove_file(&p).map_err(io_err("remove leftover", &p))?;
                    removed.push(p);
                }
            }
        }
        Ok(removed)
    }
}

/// Copies `src` to a new file `dst` keeping holes (SEEK_DATA/SEEK_HOLE), using
/// copy_file_range for the data (which may share extents on filesystems that can).
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<File, StoreError> {
    let s = File::open(src).map_err(io_err("open", src))?;
    let len = s.metadata().map_err(io_err("stat", src))?.len();
    let d = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io_err("create", dst))?;
    d.set_len(len).map_err(io_err("size", dst))?;
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(s.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole up to the end
            }
            return Err(io_err("seek data", src)(e));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(s.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io_err("seek hole", src)(io::Error::last_os_error()));
        }
        copy_range(&s, &d, data as u64, (hole - data) as u64, src, dst)?;
        pos = hole;
    }
    Ok(d)
}

fn copy_range(
    s: &File,
    d: &File,
    mut off: u64,
    mut len: u64,
    src: &Path,
    dst: &Path,
) -> Result<(), StoreError> {
    while len > 0 {
        let mut in_off = off as i64;
        let mut out_off = off as i64;
        // SAFETY: both descriptors are open; the offsets are valid pointers to locals.
        let n = unsafe {
            libc::copy_file_range(
                s.as_raw_fd(),
                &mut in_off,
                d.as_raw_fd(),
                &mut out_off,
                len.min(1 << 30) as usize,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // Not supported across these files: copy by hand.
                Some(libc::EXDEV)
                | Some(libc::ENOSYS)
                | Some(libc::EINVAL)
                | Some(libc::EOPNOTSUPP) => copy_by_hand(s, d, off, len, src, dst),
                _ => Err(io_err("copy_file_range", dst)(e)),
            };
        }
        if n == 0 {
            return copy_by_hand(s, d, off, len, src, dst);
        }
        off += n as u64;
        len -= n as u64;
    }
    Ok(())
}

fn copy_by_hand(
    s: &File,
    d: &File,
    mut off: u64,
    len: u64,
    src: &Path,
    dst: &Path,
) -> Result<(), StoreError> {
    let end = off + len;
    let mut buf = vec![0u8; 1 << 20];
    while off < end {
        let n = ((end - off) as usize).min(buf.len());
        s.read_exact_at(&mut buf[..n], off)
            .map_err(io_err("read", src))?;
        d.write_all_at(&buf[..n], off)
            .map_err(io_err("write", dst))?;
        off += n as u64;
    }
    Ok(())
}

/// fsync of a directory, so renames in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Drops cached pages of a file so the next read comes from the disk. Clean pages only:
/// call after fsync.
pub fn drop_cache(f: &File) {
    // SAFETY: fadvise on a descriptor we own; advisory, failure only costs a cached read.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}
