//! Re-reading stored blocks against their expected hashes: used by a session before it
//! commits and by `bw-target verify` for committed generations.

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use super::store::{io_err, Store, StoreError, MANIFEST_FORMAT};
use crate::wire::{block_digest, BlockDigest, HASH_LEN, MAX_BAD_BLOCKS};

/// Result of re-reading a set of blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockCheck {
    /// Blocks that did not match, ascending, at most `MAX_BAD_BLOCKS`.
    pub bad: Vec<u64>,
    pub bad_total: u64,
    pub checked: u64,
}

impl BlockCheck {
    /// Adds another check's findings; a block found bad by both counts once.
    pub fn merge(&mut self, other: BlockCheck) {
        for b in other.bad {
            if !self.bad.contains(&b) {
                self.bad_total += 1;
                if self.bad.len() < MAX_BAD_BLOCKS {
                    self.bad.push(b);
                }
            }
        }
        self.bad.sort_unstable();
        self.checked += other.checked;
    }
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    // OR-folding 64-byte chunks vectorises; this runs over every block of every image.
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// The hash of a block of zeros of `len` bytes.
pub fn zero_hash(len: usize) -> BlockDigest {
    block_digest(&vec![0u8; len])
}

/// Hash of a stored block: zero blocks (holes) skip hashing and use `zero`.
pub fn block_hash(b: &[u8], zero: &BlockDigest) -> BlockDigest {
    if is_zero(b) {
        *zero
    } else {
        block_digest(b)
    }
}

/// Re-reads the blocks in `ranges` (`[first block, count]`) of `img` and compares each
/// with its entry in the hash file (`HASH_LEN` zero bytes there mean "expect zeros").
pub fn check_blocks(
    img: &File,
    img_path: &Path,
    hashes: &File,
    hashes_path: &Path,
    block_size: u32,
    ranges: &[[u64; 2]],
) -> Result<BlockCheck, StoreError> {
    use std::os::unix::fs::FileExt;
    let bs = block_size as usize;
    let zero = zero_hash(bs);
    let per_read = ((1usize << 20) / bs).max(1) as u64;
    // Work items of at most 1 MiB, spread over the cores.
    let mut items = Vec::new();
    for r in ranges {
        let mut b = r[0];
        let end = r[0] + r[1];
        while b < end {
            let n = per_read.min(end - b);
            items.push((b, n));
            b += n;
        }
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
        .min(items.len().max(1));
    let results: Vec<Result<BlockCheck, StoreError>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let items = &items;
                sc.spawn(move || {
                    let mut data = vec![0u8; per_read as usize * bs];
                    let mut exp = vec![0u8; per_read as usize * HASH_LEN];
                    let mut out = BlockCheck::default();
                    for &(first, n) in items.iter().skip(t).step_by(threads) {
                        let d = &mut data[..n as usize * bs];
                        img.read_exact_at(d, first * bs as u64)
                            .map_err(io_err("re-read", img_path))?;
                        let e = &mut exp[..n as usize * HASH_LEN];
                        hashes
                            .read_exact_at(e, first * HASH_LEN as u64)
                            .map_err(io_err("read hashes", hashes_path))?;
                        for i in 0..n as usize {
                            let mut want = [0u8; HASH_LEN];
                            want.copy_from_slice(&e[i * HASH_LEN..(i + 1) * HASH_LEN]);
                            if want == [0u8; HASH_LEN] {
                                want = zero;
                            }
                            if block_hash(&d[i * bs..(i + 1) * bs], &zero) != want {
                                out.bad_total += 1;
                                out.bad.push(first + i as u64);
                            }
                        }
                        out.checked += n;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Ok(BlockCheck::default())))
            .collect()
    });
    let mut all = BlockCheck::default();
    for r in results {
        let r = r?;
        all.bad.extend(r.bad);
        all.bad_total += r.bad_total;
        all.checked += r.checked;
    }
    all.bad.sort_unstable();
    all.bad.truncate(MAX_BAD_BLOCKS);
    Ok(all)
}

/// `bw-target verify` result for one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationCheck {
    pub volume: String,
    pub generation: u32,
    pub blocks: u64,
    pub bad_total: u64,
    /// First bad blocks (at most 100).
    pub bad_blocks: Vec<u64>,
    /// Set when the generation could not be checked at all.
    pub error: Option<String>,
}

impl GenerationCheck {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.bad_total == 0
    }
}

/// Re-reads every block of one committed generation against its hash file.
pub fn verify_generation(store: &Store, volume: &str, generation: u32) -> GenerationCheck {
    let mut c = GenerationCheck {
        volume: volume.to_string(),
        generation,
        blocks: 0,
        bad_total: 0,
        bad_blocks: Vec::new(),
        error: None,
    };
    match verify_inner(store, volume, generation) {
        Ok((blocks, check)) => {
            c.blocks = blocks;
            c.bad_total = check.bad_total;
            c.bad_blocks = check.bad.into_iter().take(100).collect();
        }
        Err(e) => c.error = Some(super::error_chain(&e)),
    }
    c
}

fn verify_inner(
    store: &Store,
    volume: &str,
    generation: u32,
) -> Result<(u64, BlockCheck), StoreError> {
    let m = store
        .manifest(volume, generation)?
        .ok_or_else(|| StoreError::NoGeneration {
            volume: volume.to_string(),
            generation,
        })?;
    let paths = store.paths(volume, generation)?;
    if m.format != MANIFEST_FORMAT {
        return Err(StoreError::Io {
            op: "check the store format of",
            path: paths.json.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "store format {} (this target reads {MANIFEST_FORMAT}, with 16-byte block hashes)",
                    m.format
                ),
            ),
        });
    }
    let img = File::open(&paths.img).map_err(io_err("open", &paths.img))?;
    let hashes = File::open(&paths.hashes).map_err(io_err("open", &paths.hashes))?;
    let blocks = m.volume_size / u64::from(m.block_size);
    let ilen = img.metadata().map_err(io_err("stat", &paths.img))?.len();
    let hlen = hashes
        .metadata()
        .map_err(io_err("stat", &paths.hashes))?
        .len();
    if ilen != m.volume_size || hlen != blocks * HASH_LEN as u64 {
        return Err(StoreError::Io {
            op: "check sizes of",
            path: paths.img.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "image is {ilen} bytes and hash file {hlen} bytes; manifest says {} bytes, {blocks} blocks",
                    m.volume_size
                ),
            ),
        });
    }
    let check = check_blocks(
        &img,
        &paths.img,
        &hashes,
        &paths.hashes,
        m.block_size,
        &[[0, blocks]],
    )?;
    Ok((blocks, check))
}
