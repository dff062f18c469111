//! The stamped data format: data that says which write made it, piece by piece.
//!
//! `bw-workload --stamped` writes every data block as stamped pieces, one per filesystem
//! block (1, 2 or 4 KiB; 4 KiB on a raw device or where filesystem blocks are larger).
//! Each piece names the device byte offset it was written to, the write's sequence number
//! and time, the run and the writer, and carries a checksum over itself. A 4 KiB device
//! block therefore decodes into the pieces it holds, each naming its own write: on a 1 KiB
//! ext2 one device block may hold four pieces of four different writes, or one stamped
//! piece beside three blocks of metadata. When a backup holds a block it should not (data
//! from the future), the harness decodes it and names the very writes, and how long after
//! the snapshot instant they were made.
//!
//! Layout of a piece (little-endian), at its start:
//!
//! | bytes  | field |
//! |--------|-------|
//! | 0..8   | magic `BWSTAMP2` |
//! | 8..16  | offset: byte offset on the device the piece was written to |
//! | 16..24 | seq: write sequence number, from 1, per workload run (one per 4 KiB of file data, shared by its pieces) |
//! | 24..32 | time_ns: CLOCK_MONOTONIC of the guest when the write was issued |
//! | 32..40 | run: the workload's seed, so pieces of different runs are told apart |
//! | 40..44 | writer: workload instance id |
//! | 44..48 | len: the piece's length in bytes, 1024, 2048 or 4096 |
//! | 48..56 | checksum: first 8 bytes of sha256 over bytes 0..48 and 56..len |
//! | 56..len| payload, pseudo-random from (run, seq, offset) |
//!
//! A piece is aligned to its length on the device, so it never straddles two 4 KiB
//! blocks, and it is only accepted at the place inside its block that it names.

use sha2::{Digest, Sha256};

/// Size of a device block; the tracking granularity of the whole project.
pub const BLOCK_SIZE: usize = 4096;
/// The smallest piece: the smallest ext2/ext4/xfs block.
pub const MIN_PIECE: usize = 1024;
/// First bytes of every stamped piece.
pub const MAGIC: [u8; 8] = *b"BWSTAMP2";
const LEN: std::ops::Range<usize> = 44..48;
const CHECKSUM: std::ops::Range<usize> = 48..56;
const HEADER: usize = 56;

/// What a stamp says about the write that made a piece. `lba` is the 4 KiB device block
/// the piece lies in; [`Piece::at`] says where inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub lba: u64,
    pub seq: u64,
    pub time_ns: u64,
    pub run: u64,
    pub writer: u32,
}

/// One stamped piece of a 4 KiB device block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Piece {
    /// Byte offset of the piece inside its 4 KiB block: a multiple of `len`.
    pub at: u32,
    /// 1024, 2048 or 4096.
    pub len: u32,
    pub stamp: Stamp,
}

/// Why a block or a piece did not decode as stamped, or a piece could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("block is {0} bytes, a device block is 4096")]
    Size(usize),
    #[error("no stamp magic: not written by a stamped workload")]
    NoMagic,
    #[error("stamp checksum mismatch: the piece was changed after it was written")]
    Checksum,
    #[error("a piece of {len} bytes at byte {at} of a block is not a 1, 2 or 4 KiB piece aligned to its length")]
    Geometry { at: usize, len: usize },
    #[error("the piece at byte {at} of its block says it was written to byte {claims}")]
    Misplaced { at: usize, claims: usize },
    #[error("the block holds pieces smaller than 4 KiB ({pieces} stamped)")]
    Split { pieces: usize },
}

impl Stamp {
    /// Fills `block` with this stamp as one whole 4 KiB piece (a raw device, or a
    /// filesystem with 4 KiB blocks).
    pub fn write_into(&self, block: &mut [u8; BLOCK_SIZE]) {
        let whole = Piece {
            at: 0,
            len: BLOCK_SIZE as u32,
            stamp: *self,
        };
        // A whole aligned block is always a valid piece.
        let _ = whole.write_into(block);
    }

    /// Reads the stamp of a block written whole by one write; a block of smaller pieces
    /// is [`StampError::Split`] (use [`decode_block`] for those).
    pub fn decode(block: &[u8]) -> Result<Stamp, StampError> {
        let piece = Piece::decode_at(block, 0);
        match piece {
            Ok(p) if p.len as usize == BLOCK_SIZE => Ok(p.stamp),
            Ok(_) => Err(StampError::Split {
                pieces: decode_block(block)?.len(),
            }),
            Err(e) => Err(e),
        }
    }
}

impl Piece {
    /// Byte offset of the piece on its device.
    pub fn device_offset(&self) -> u64 {
        self.stamp.lba * BLOCK_SIZE as u64 + u64::from(self.at)
    }

    /// The piece for `len` bytes written at byte `offset` of the device; `offset` must be
    /// a multiple of `len`, and `len` 1, 2 or 4 KiB.
    pub fn at_offset(
        offset: u64,
        len: usize,
        seq: u64,
        time_ns: u64,
        run: u64,
        writer: u32,
    ) -> Result<Piece, StampError> {
        let at = (offset % BLOCK_SIZE as u64) as usize;
        check_geometry(at, len)?;
        Ok(Piece {
            at: at as u32,
            len: len as u32,
            stamp: Stamp {
                lba: offset / BLOCK_SIZE as u64,
                seq,
                time_ns,
                run,
                writer,
            },
        })
    }

    /// Fills `out` (exactly `len` bytes) with this piece.
    pub fn write_into(&self, out: &mut [u8]) -> Result<(), StampError> {
        let len = self.len as usize;
        check_geometry(self.at as usize, len)?;
        if out.len() != len {
            return Err(StampError::Geometry {
                at: self.at as usize,
                len: out.len(),
            });
        }
        let s = &self.stamp;
        fill_payload(s.run, s.seq, self.device_offset(), &mut out[HEADER..]);
        out[0..8].copy_from_slice(&MAGIC);
        out[8..16].copy_from_slice(&self.device_offset().to_le_bytes());
        out[16..24].copy_from_slice(&s.seq.to_le_bytes());
        out[24..32].copy_from_slice(&s.time_ns.to_le_bytes());
        out[32..40].copy_from_slice(&s.run.to_le_bytes());
        out[40..44].copy_from_slice(&s.writer.to_le_bytes());
        out[LEN].copy_from_slice(&self.len.to_le_bytes());
        let sum = checksum(out);
        out[CHECKSUM].copy_from_slice(&sum);
        Ok(())
    }

    /// Reads the piece that starts at byte `at` of a 4 KiB device `block`, checking magic,
    /// length, alignment, checksum and that it sits where it says.
    pub fn decode_at(block: &[u8], at: usize) -> Result<Piece, StampError> {
        if block.len() != BLOCK_SIZE {
            return Err(StampError::Size(block.len()));
        }
        check_geometry(at, MIN_PIECE)?;
        let len = header_len(&block[at..])?;
        check_geometry(at, len)?;
        let piece = Piece::decode(&block[at..at + len])?;
        if piece.at as usize != at {
            return Err(StampError::Misplaced {
                at,
                claims: piece.at as usize,
            });
        }
        Ok(piece)
    }

    /// Reads a piece from exactly its bytes, wherever they were found (a block of a file,
    /// say): magic, length and checksum are checked, the place is what the piece claims.
    pub fn decode(bytes: &[u8]) -> Result<Piece, StampError> {
        let len = header_len(bytes)?;
        if len != bytes.len() {
            return Err(StampError::Geometry { at: 0, len });
        }
        if bytes[CHECKSUM] != checksum(bytes) {
            return Err(StampError::Checksum);
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        let offset = u64_at(8);
        let at = (offset % BLOCK_SIZE as u64) as usize;
        check_geometry(at, len)?;
        Ok(Piece {
            at: at as u32,
            len: len as u32,
            stamp: Stamp {
                lba: offset / BLOCK_SIZE as u64,
                seq: u64_at(16),
                time_ns: u64_at(24),
                run: u64_at(32),
                writer: u32::from_le_bytes(bytes[40..44].try_into().unwrap_or([0; 4])),
            },
        })
    }
}

/// The length a piece's header claims, once its magic is checked.
fn header_len(bytes: &[u8]) -> Result<usize, StampError> {
    if bytes.len() < HEADER {
        return Err(StampError::Size(bytes.len()));
    }
    if bytes[0..8] != MAGIC {
        return Err(StampError::NoMagic);
    }
    Ok(u32::from_le_bytes(bytes[LEN].try_into().unwrap_or([0; 4])) as usize)
}

/// The valid stamped pieces of a 4 KiB device block, in block order. Parts of the block
/// that hold no valid piece (metadata, unstamped data, a damaged piece) are left out; an
/// empty list means nothing in the block names a write.
pub fn decode_block(block: &[u8]) -> Result<Vec<Piece>, StampError> {
    if block.len() != BLOCK_SIZE {
        return Err(StampError::Size(block.len()));
    }
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < BLOCK_SIZE {
        match Piece::decode_at(block, at) {
            Ok(piece) => {
                at += piece.len as usize;
                pieces.push(piece);
            }
            Err(_) => at += MIN_PIECE,
        }
    }
    Ok(pieces)
}

/// A piece is 1, 2 or 4 KiB and aligned to its length inside its block.
fn check_geometry(at: usize, len: usize) -> Result<(), StampError> {
    let sized = matches!(len, 1024 | 2048 | 4096);
    if sized && at.is_multiple_of(len) && at + len <= BLOCK_SIZE {
        Ok(())
    } else {
        Err(StampError::Geometry { at, len })
    }
}

fn checksum(piece: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(&piece[..CHECKSUM.start]);
    h.update(&piece[CHECKSUM.end..]);
    let digest = h.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// A cheap deterministic payload (splitmix64 stream): distinct for every write and piece,
/// so two writes to the same place never produce the same bytes.
fn fill_payload(run: u64, seq: u64, offset: u64, out: &mut [u8]) {
    let mut state = run
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(seq.rotate_left(17))
        .wrapping_add(offset.rotate_left(29));
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

    fn piece(offset: u64, len: usize, seq: u64, writer: u32) -> Piece {
        Piece::at_offset(offset, len, seq, 1000 + seq, 42, writer).unwrap()
    }

    #[test]
    fn round_trip() {
        let mut block = [0u8; BLOCK_SIZE];
        sample().write_into(&mut block);
        assert_eq!(Stamp::decode(&block), Ok(sample()));
        let whole = Piece {
            at: 0,
            len: 4096,
            stamp: sample(),
        };
        assert_eq!(decode_block(&block), Ok(vec![whole]));
    }

    #[test]
    fn any_changed_byte_fails_the_checksum() {
        let mut block = [0u8; BLOCK_SIZE];
        sample().write_into(&mut block);
        for at in [8, 43, 48, 56, 2000, BLOCK_SIZE - 1] {
            let mut bad = block;
            bad[at] ^= 0x10;
            assert_eq!(Stamp::decode(&bad), Err(StampError::Checksum), "byte {at}");
        }
        // A changed length no longer frames a piece at all.
        let mut bad = block;
        bad[47] ^= 0x10;
        assert!(matches!(
            Stamp::decode(&bad),
            Err(StampError::Geometry { .. })
        ));
        assert_eq!(decode_block(&bad), Ok(vec![]));
    }

    #[test]
    fn unstamped_and_short_blocks_are_told_apart() {
        assert_eq!(Stamp::decode(&[0u8; BLOCK_SIZE]), Err(StampError::NoMagic));
        assert_eq!(Stamp::decode(&[0u8; 512]), Err(StampError::Size(512)));
        assert_eq!(decode_block(&[0u8; BLOCK_SIZE]), Ok(vec![]));
        assert_eq!(decode_block(&[0u8; 512]), Err(StampError::Size(512)));
    }

    #[test]
    fn different_writes_differ_in_payload() {
        let mut a = [0u8; BLOCK_SIZE];
        let mut b = [0u8; BLOCK_SIZE];
        sample().write_into(&mut a);
        Stamp { seq: 4, ..sample() }.write_into(&mut b);
        assert_ne!(a[HEADER..], b[HEADER..]);
    }

    /// A 1 KiB-block filesystem: four pieces of three writes by two writers, each named.
    #[test]
    fn a_block_of_1k_pieces_names_each_write() {
        let base = 5 * BLOCK_SIZE as u64;
        let pieces = [
            piece(base, 1024, 10, 1),
            piece(base + 1024, 1024, 11, 1),
            piece(base + 2048, 1024, 4, 2),
            piece(base + 3072, 1024, 10, 1),
        ];
        let mut block = [0u8; BLOCK_SIZE];
        for (i, p) in pieces.iter().enumerate() {
            p.write_into(&mut block[i * 1024..][..1024]).unwrap();
        }
        assert_eq!(decode_block(&block).unwrap(), pieces);
        assert!(pieces.iter().all(|p| p.stamp.lba == 5));
        assert_eq!(pieces[2].device_offset(), base + 2048);
        assert_eq!(Stamp::decode(&block), Err(StampError::Split { pieces: 4 }));
        // Two pieces of one write differ, since their offsets do.
        assert_ne!(block[HEADER..1024], block[3072 + HEADER..]);
    }

    #[test]
    fn stamped_and_unstamped_parts_of_a_block() {
        let base = 9 * BLOCK_SIZE as u64;
        let mut block = [0xA5u8; BLOCK_SIZE];
        let two = piece(base + 2048, 2048, 7, 3);
        two.write_into(&mut block[2048..]).unwrap();
        let one = piece(base + 1024, 1024, 8, 3);
        one.write_into(&mut block[1024..2048]).unwrap();
        assert_eq!(decode_block(&block).unwrap(), vec![one, two]);
        // A damaged piece drops out; its neighbours still decode.
        block[1500] ^= 1;
        assert_eq!(decode_block(&block).unwrap(), vec![two]);
        assert_eq!(Piece::decode_at(&block, 1024), Err(StampError::Checksum));
    }

    #[test]
    fn pieces_only_count_where_they_say_they_are() {
        let mut block = [0u8; BLOCK_SIZE];
        // Written for byte 1024 of its block, found at byte 3072.
        piece(1024, 1024, 1, 0)
            .write_into(&mut block[3072..])
            .unwrap();
        assert_eq!(
            Piece::decode_at(&block, 3072),
            Err(StampError::Misplaced {
                at: 3072,
                claims: 1024
            })
        );
        assert_eq!(decode_block(&block).unwrap(), vec![]);
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert_eq!(
            Piece::at_offset(1024, 2048, 1, 0, 0, 0),
            Err(StampError::Geometry {
                at: 1024,
                len: 2048
            })
        );
        assert_eq!(
            Piece::at_offset(0, 512, 1, 0, 0, 0),
            Err(StampError::Geometry { at: 0, len: 512 })
        );
        let p = piece(0, 1024, 1, 0);
        assert_eq!(
            p.write_into(&mut [0u8; 2048]),
            Err(StampError::Geometry { at: 0, len: 2048 })
        );
        // A header claiming a length that does not fit is not a piece.
        let mut block = [0u8; BLOCK_SIZE];
        piece(3072, 1024, 1, 0)
            .write_into(&mut block[3072..])
            .unwrap();
        block[3072 + 44..3072 + 48].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(
            Piece::decode_at(&block, 3072),
            Err(StampError::Geometry {
                at: 3072,
                len: 4096
            })
        );
    }
}
