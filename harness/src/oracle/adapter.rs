//! The oracle's input from what a witness disk recorded: a volume's write history
//! (`witness_disk::History`) becomes [`History`], and an image file becomes its block
//! hashes, with the hash the history uses (`witness_disk::hash`, xxh3-128), whatever
//! hash the rest of the harness compares with.
//!
//! Every request that changed content is a write: write, discard and write-zeroes, and
//! the parts of a torn or dropped write that landed (complete: never). Its sequence
//! number is the backend's `applied` number, the order in which changes were applied,
//! so each block's versions are in order. A write held by the seeded schedule lands
//! when it is due, not when it was submitted, so a later write to the same block may
//! land first; a version cannot exist before the version it replaced was submitted, so
//! such a write's submit time is moved up to that one's (counted in
//! [`Adapted::moved_submits`]). Without a schedule nothing moves.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::input::{BlockWrite, ContentHash, History, Write};

/// Bytes each worker reads at a time.
const SEGMENT: usize = 1 << 20;
const BLOCK: u64 = witness_disk::hash::BLOCK_SIZE;

/// Why a history or an image could not become oracle input.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("the history describes a disk of {bytes} bytes, not a whole number of 4 KiB blocks")]
    DiskSize { bytes: u64 },
    #[error("the starting image has {got} blocks; the history's disk has {blocks}")]
    InitialLength { blocks: u64, got: usize },
    #[error("cannot read image {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A history as oracle input.
#[derive(Clone, Debug)]
pub struct Adapted {
    pub history: History,
    /// Writes whose submit time was moved up to the write they overtook.
    pub moved_submits: u64,
}

/// Turns a witness disk's history into the oracle's: `initial` is every block's hash
/// before the first request (the image the backend was started on).
pub fn history(
    h: &witness_disk::History,
    initial: Vec<ContentHash>,
) -> Result<Adapted, AdapterError> {
    let bytes = h.header.disk_bytes;
    if !bytes.is_multiple_of(BLOCK) {
        return Err(AdapterError::DiskSize { bytes });
    }
    let blocks = bytes / BLOCK;
    if initial.len() as u64 != blocks {
        return Err(AdapterError::InitialLength {
            blocks,
            got: initial.len(),
        });
    }
    let mut changes: Vec<&witness_disk::history::RequestRecord> = h
        .requests()
        .filter(|r| r.applied.is_some() && !r.runs.is_empty())
        .collect();
    changes.sort_by_key(|r| r.applied);
    // Block → the (possibly moved) submit time of the last write applied to it.
    let mut last_submit: HashMap<u64, u64> = HashMap::new();
    let mut moved_submits = 0;
    let mut writes = Vec::with_capacity(changes.len());
    for r in changes {
        let versions: Vec<(u64, witness_disk::hash::BlockHash)> = r.block_versions().collect();
        let earliest = versions
            .iter()
            .filter_map(|(b, _)| last_submit.get(b))
            .copied()
            .max()
            .unwrap_or(0);
        let submit_ns = r.submit_ns.max(earliest);
        if submit_ns != r.submit_ns {
            moved_submits += 1;
        }
        for (b, _) in &versions {
            last_submit.insert(*b, submit_ns);
        }
        let complete_ns = match r.outcome.completed() {
            true => r.complete_ns.map(|c| c.max(submit_ns)),
            false => None,
        };
        writes.push(Write {
            seq: r.applied.unwrap_or_default(),
            submit_ns,
            complete_ns,
            blocks: versions
                .into_iter()
                .map(|(block, hash)| BlockWrite {
                    block,
                    hash: ContentHash(hash),
                })
                .collect(),
        });
    }
    Ok(Adapted {
        history: History {
            blocks,
            initial,
            writes,
        },
        moved_submits,
    })
}

/// Every 4 KiB block's hash of an image (a short last block is zero-padded), in
/// parallel.
pub fn image_hashes(path: &Path) -> Result<Vec<ContentHash>, AdapterError> {
    let read = |source| AdapterError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    let segments = len.div_ceil(SEGMENT as u64);
    let parts: Vec<Vec<ContentHash>> = (0..segments)
        .into_par_iter()
        .map(|s| {
            let offset = s * SEGMENT as u64;
            let n = (len - offset).min(SEGMENT as u64) as usize;
            let mut buf = vec![0u8; n.div_ceil(BLOCK as usize) * BLOCK as usize];
            file.read_exact_at(&mut buf[..n], offset)?;
            Ok(buf
                .chunks(BLOCK as usize)
                .map(|b| ContentHash(witness_disk::hash::block_hash(b)))
                .collect())
        })
        .collect::<Result<_, std::io::Error>>()
        .map_err(read)?;
    Ok(parts.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use witness_disk::history::{
        Flags, Header, Op, Outcome, Record, RequestRecord, Run, FORMAT_VERSION,
    };

    fn header(blocks: u64) -> Header {
        Header {
            format_version: FORMAT_VERSION,
            block_size: 4096,
            sector_size: 512,
            disk_bytes: blocks * 4096,
            hash: "xxh3-128".into(),
            origin_wall_ns: 0,
            origin_monotonic_ns: 0,
            serial: "bw-d0".into(),
            image: "d0.raw".into(),
            max_queues: 1,
            schedule: None,
            writer: "test".into(),
        }
    }

    fn h(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn write(
        seq: u64,
        applied: Option<u64>,
        submit: u64,
        complete: Option<u64>,
        outcome: Outcome,
        runs: Vec<Run>,
    ) -> Record {
        Record::Request(RequestRecord {
            seq,
            queue: 0,
            op: Op::Write,
            flags: Flags::default(),
            outcome,
            offset: 0,
            len: 0,
            submit_ns: submit,
            complete_ns: complete,
            applied,
            runs,
        })
    }

    #[test]
    fn writes_become_oracle_writes_in_applied_order() {
        let hist = witness_disk::History {
            header: header(4),
            records: vec![
                // A held write (seq 0) applied after a later one (seq 1) to block 1.
                write(
                    1,
                    Some(0),
                    20,
                    Some(25),
                    Outcome::Ok,
                    vec![Run::Hashed {
                        first_block: 1,
                        hashes: vec![h(2)],
                    }],
                ),
                write(
                    0,
                    Some(1),
                    10,
                    Some(40),
                    Outcome::Ok,
                    vec![Run::Hashed {
                        first_block: 1,
                        hashes: vec![h(1), h(3)],
                    }],
                ),
                // A failed write changed nothing.
                write(2, None, 50, Some(51), Outcome::IoError, vec![]),
                // A torn write landed one block and never completed.
                write(
                    3,
                    Some(2),
                    60,
                    None,
                    Outcome::Torn,
                    vec![Run::Zero {
                        first_block: 3,
                        count: 1,
                    }],
                ),
            ],
            end: None,
        };
        let a = history(&hist, vec![ContentHash::default(); 4]).unwrap();
        let w = &a.history.writes;
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[0].seq, w[0].submit_ns, w[0].complete_ns),
            (0, 20, Some(25))
        );
        // Moved up to the write it overtook.
        assert_eq!(
            (w[1].seq, w[1].submit_ns, w[1].complete_ns),
            (1, 20, Some(40))
        );
        assert_eq!(a.moved_submits, 1);
        assert_eq!(
            w[1].blocks,
            vec![
                BlockWrite {
                    block: 1,
                    hash: ContentHash(h(1))
                },
                BlockWrite {
                    block: 2,
                    hash: ContentHash(h(3))
                }
            ]
        );
        assert_eq!(w[2].complete_ns, None);
        assert_eq!(
            w[2].blocks[0].hash,
            ContentHash(witness_disk::hash::zero_block_hash())
        );
        // The oracle takes it.
        assert!(crate::oracle::Oracle::new(&a.history).is_ok());
    }

    #[test]
    fn a_starting_image_of_another_size_is_refused() {
        let hist = witness_disk::History {
            header: header(4),
            records: vec![],
            end: None,
        };
        let err = history(&hist, vec![ContentHash::default(); 3]).unwrap_err();
        assert!(err.to_string().contains("3 blocks"), "{err}");
    }

    #[test]
    fn image_hashes_are_xxh3_of_each_block() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.raw");
        let mut data = vec![0u8; 3 * 4096 + 100];
        data[4096] = 1;
        std::fs::write(&p, &data).unwrap();
        let got = image_hashes(&p).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], ContentHash::of_block(&[0u8; 4096]));
        assert_eq!(got[1], ContentHash::of_block(&data[4096..8192]));
        let mut last = [0u8; 4096];
        last[..100].copy_from_slice(&data[3 * 4096..]);
        assert_eq!(got[3], ContentHash::of_block(&last));
        assert!(image_hashes(&dir.path().join("none")).is_err());
    }
}
