//! Hashing an image per 4 KiB block: xxh3-128 of every block ([`BlockHash::of`]), in
//! parallel (rayon), reading with large positioned reads so each worker streams its own
//! segment of the file. This is the hot path of every run (truth, target re-read) and of
//! `bench hash`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::model::{BlockHash, BLOCK};

/// Bytes each worker reads and hashes at a time: large enough that a read is cheap per
/// byte, small enough (a core's L2) that the data is hashed from cache right after the
/// copy (measured with sha256: 1 MiB gave 0.94 of openssl's limit, 4 MiB 0.82).
const SEGMENT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot open image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read image {path} at byte {offset}")]
    Read {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Hashes one block.
pub fn hash_block(data: &[u8]) -> BlockHash {
    BlockHash::of(data)
}

/// Hashes a buffer per 4 KiB block, in parallel. A short last block is zero-padded.
pub fn hash_bytes(data: &[u8]) -> Vec<BlockHash> {
    data.par_chunks(BLOCK).map(hash_padded).collect()
}

fn hash_padded(chunk: &[u8]) -> BlockHash {
    if chunk.len() == BLOCK {
        hash_block(chunk)
    } else {
        let mut block = [0u8; BLOCK];
        block[..chunk.len()].copy_from_slice(chunk);
        hash_block(&block)
    }
}

/// Hashes an image file per 4 KiB block. A size that is not a multiple of 4 KiB gets a
/// zero-padded last block.
pub fn hash_image(path: &Path) -> Result<Vec<BlockHash>, HashError> {
    hash_image_with_progress(path, &|_| {})
}

/// Like [`hash_image`], calling `progress` with the bytes hashed so far (from any
/// worker thread, roughly every segment).
pub fn hash_image_with_progress(
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<BlockHash>, HashError> {
    let file = File::open(path).map_err(|source| HashError::Open {
        path: path.to_owned(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| HashError::Open {
            path: path.to_owned(),
            source,
        })?
        .len();
    let blocks = len.div_ceil(BLOCK as u64) as usize;
    let mut out = vec![BlockHash([0; 16]); blocks];
    let per_segment = SEGMENT / BLOCK;
    let done = AtomicU64::new(0);
    out.par_chunks_mut(per_segment)
        .enumerate()
        .try_for_each_init(
            || vec![0u8; SEGMENT],
            |buf, (i, hashes)| {
                let offset = (i * SEGMENT) as u64;
                let want = (len - offset).min(SEGMENT as u64) as usize;
                let buf = &mut buf[..want];
                file.read_exact_at(buf, offset)
                    .map_err(|source| HashError::Read {
                        path: path.to_owned(),
                        offset,
                        source,
                    })?;
                for (h, chunk) in hashes.iter_mut().zip(buf.chunks(BLOCK)) {
                    *h = hash_padded(chunk);
                }
                progress(done.fetch_add(want as u64, Ordering::Relaxed) + want as u64);
                Ok(())
            },
        )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// xxh3-128 of 4096 zero bytes and of "abc", little-endian, as the xxHash reference
    /// C library computes them (python-xxhash 3.x, `xxh3_128(data).intdigest()`).
    const ZERO_BLOCK: &str = "ba89c648e16fd79395e47e9e4fdce83e";

    #[test]
    fn known_digests() {
        assert_eq!(hash_block(&[0u8; 4096]).hex(), ZERO_BLOCK);
        assert_eq!(hash_block(b"abc").hex(), "50392f89945faf7885613a73b65ab006");
    }

    /// The harness hashes truth and the target re-read itself; the reference pipeline's
    /// agent, target and witness hash with their own code. Both must give the same hash for
    /// the same bytes, or every block would look corrupt.
    #[test]
    fn harness_and_pipeline_hash_alike() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for len in [0, 1, 3, 512, 4095, 4096, 4097, 65536] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(
                BlockHash::of(&data).0,
                reference_agent::wire::block_digest(&data),
                "{len} bytes"
            );
        }
        assert_eq!(
            BlockHash::of(&[0u8; 4096]).0,
            reference_agent::wire::block_digest(&[0u8; 4096])
        );
    }

    #[test]
    fn image_hashes_match_per_block_hashes() {
        let mut data = vec![0u8; 3 * SEGMENT + 5 * BLOCK + 100];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
        }
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&data).unwrap();
        let seen = AtomicU64::new(0);
        let hashes = hash_image_with_progress(file.path(), &|n| {
            seen.fetch_max(n, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(hashes.len(), data.len().div_ceil(BLOCK));
        assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64);
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            let mut block = chunk.to_vec();
            block.resize(BLOCK, 0);
            assert_eq!(hashes[i], BlockHash::of(&block), "block {i}");
        }
        assert_eq!(hash_bytes(&data), hashes);
    }

    #[test]
    fn zero_image_and_empty_image() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 * BLOCK as u64).unwrap();
        let hashes = hash_image(file.path()).unwrap();
        assert!(hashes.iter().all(|h| h.hex() == ZERO_BLOCK));
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(hash_image(empty.path()).unwrap().is_empty());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = hash_image(Path::new("/nonexistent/img.raw")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/img.raw"));
    }
}
