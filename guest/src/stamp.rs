//! The stamped block format: a 4 KiB block that says which write made it.
//!
//! `bw-workload --stamped` writes every block with a header naming the block's LBA on the
//! device, the write's sequence number and time, and a checksum over the whole block. When
//! a backup holds a block it should not (data from the future), the harness decodes the
//! stamp and names the very write, and how long after the snapshot instant it was made.
//!
//! Layout (little-endian), at the start of the block:
//!
//! | bytes  | field |
//! |--------|-------|
//! | 0..8   | magic `BWSTAMP1` |
//! | 8..16  | lba: 4 KiB block number on the device the block was written to |
//! | 16..24 | seq: write sequence number, from 1, per workload run |
//! | 24..32 | time_ns: CLOCK_MONOTONIC of the guest when the write was issued |
//! | 32..40 | run: the workload's seed, so blocks of different runs are told apart |
//! | 40..44 | writer: workload instance id |
//! | 44..48 | reserved, zero |
//! | 48..56 | checksum: first 8 bytes of sha256 over bytes 0..48 and 56..4096 |
//! | 56..   | payload, pseudo-random from (run, seq, lba) |

use sha2::{Digest, Sha256};

/// Size of a stamped block; the tracking granularity of the whole project.
pub const BLOCK_SIZE: usize = 4096;
/// First bytes of every stamped block.
pub const MAGIC: [u8; 8] = *b"BWSTAMP1";
const CHECKSUM: std::ops::Range<usize> = 48..56;

/// What a stamp says about the write that made a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub lba: u64,
    pub seq: u64,
    pub time_ns: u64,
    pub run: u64,
    pub writer: u32,
}

/// Why a block did not decode as a stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("block is {0} bytes, a stamped block is 4096")]
    Size(usize),
    #[error("no stamp magic: not written by a stamped workload")]
    NoMagic,
    #[error("stamp checksum mismatch: the block was changed after it was written")]
    Checksum,
}

impl Stamp {
    /// Fills `block` with this stamp and its payload.
    pub fn write_into(&self, block: &mut [u8; BLOCK_SIZE]) {
        fill_payload(self, &mut block[56..]);
        block[0..8].copy_from_slice(&MAGIC);
        block[8..16].copy_from_slice(&self.lba.to_le_bytes());
        block[16..24].copy_from_slice(&self.seq.to_le_bytes());
        block[24..32].copy_from_slice(&self.time_ns.to_le_bytes());
        block[32..40].copy_from_slice(&self.run.to_le_bytes());
        block[40..44].copy_from_slice(&self.writer.to_le_bytes());
        block[44..48].fill(0);
        let sum = checksum(block);
        block[CHECKSUM].copy_from_slice(&sum);
    }

    /// Reads the stamp of a block, checking magic and checksum.
    pub fn decode(block: &[u8]) -> Result<Stamp, StampError> {
        if block.len() != BLOCK_SIZE {
            return Err(StampError::Size(block.len()));
        }
        if block[0..8] != MAGIC {
            return Err(StampError::NoMagic);
        }
        if block[CHECKSUM] != checksum(block) {
            return Err(StampError::Checksum);
        }
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
        Ok(Stamp {
            lba: u64_at(8),
            seq: u64_at(16),
            time_ns: u64_at(24),
            run: u64_at(32),
            writer: u32::from_le_bytes(block[40..44].try_into().unwrap()),
        })
    }
}

fn checksum(block: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(&block[..CHECKSUM.start]);
    h.update(&block[CHECKSUM.end..]);
    h.finalize()[..8].try_into().unwrap()
}

/// A cheap deterministic payload (splitmix64 stream): distinct for every write, so two
/// writes to the same block never produce the same bytes.
fn fill_payload(stamp: &Stamp, out: &mut [u8]) {
    let mut state = stamp
        .run
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(stamp.seq.rotate_left(17))
        .wrapping_add(stamp.lba.rotate_left(41));
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stamp {
        Stamp {
            lba: 77,
            seq: 3,
            time_ns: 123_456_789,
            run: 42,
            writer: 1,
        }
    }

    #[test]
    fn round_trip() {
        let mut block = [0u8; BLOCK_SIZE];
        sample().write_into(&mut block);
        assert_eq!(Stamp::decode(&block), Ok(sample()));
    }

    #[test]
    fn any_changed_byte_fails_the_checksum() {
        let mut block = [0u8; BLOCK_SIZE];
        sample().write_into(&mut block);
        for at in [8, 47, 56, 2000, BLOCK_SIZE - 1] {
            let mut bad = block;
            bad[at] ^= 0x10;
            assert_eq!(Stamp::decode(&bad), Err(StampError::Checksum), "byte {at}");
        }
    }

    #[test]
    fn unstamped_and_short_blocks_are_told_apart() {
        assert_eq!(Stamp::decode(&[0u8; BLOCK_SIZE]), Err(StampError::NoMagic));
        assert_eq!(Stamp::decode(&[0u8; 512]), Err(StampError::Size(512)));
    }

    #[test]
    fn different_writes_differ_in_payload() {
        let mut a = [0u8; BLOCK_SIZE];
        let mut b = [0u8; BLOCK_SIZE];
        sample().write_into(&mut a);
        Stamp { seq: 4, ..sample() }.write_into(&mut b);
        assert_ne!(a[56..], b[56..]);
    }
}
