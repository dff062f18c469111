//! The wire protocol between `bw-agent` and `bw-target`, also parsed by the harness's
//! transport proxy: frame types, their byte layout, encoding, decoding, limits, the
//! manifest digest and an incremental frame buffer with resynchronisation.
//!
//! The byte layout is documented in `docs/wire-protocol.md`; this module is its one
//! implementation. Decoding never panics: every malformed input is a [`WireError`].

mod codec;
mod crc;
mod frame;
mod hash;
mod manifest;
mod stream;

pub use codec::{
    clip_message, decode, decode_view, encode_block, encode_block_head, sync_offset, FrameView,
};
pub use crc::crc32;
pub use frame::{
    validate_volume_id, Accept, Ack, BackupKind, BlockFrame, BlockView, End, ErrorCode, ErrorFrame,
    FailReason, Frame, FrameKind, Nack, NackReason, Outcome, SessionHeader, SessionId,
    SessionResult,
};
pub use hash::{block_digest, BlockDigest, HASH_LEN};
pub use manifest::ManifestDigest;
pub use stream::{FrameBuffer, Item};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"BWWP";
/// The protocol version this build speaks (byte 4 of every frame header). Version 2
/// carries 16-byte xxh3-128 block hashes where version 1 carried 32-byte sha256.
pub const VERSION: u8 = 2;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 20;
/// Largest data part of one block frame.
pub const MAX_BLOCK_DATA: usize = 1 << 20;
/// Smallest block size a session may declare.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size a session may declare.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Most hashes one block frame may carry (one per block of the smallest size).
pub const MAX_HASHES: usize = MAX_BLOCK_DATA / MIN_BLOCK_SIZE as usize;
/// Fixed part of a block frame's payload before the hashes.
pub const BLOCK_META_LEN: usize = 24;
/// Largest payload of a block frame.
pub const MAX_BLOCK_PAYLOAD: usize = BLOCK_META_LEN + HASH_LEN * MAX_HASHES + MAX_BLOCK_DATA;
/// Largest payload of any other frame.
pub const MAX_CONTROL_PAYLOAD: usize = 64 * 1024;
/// Largest whole frame on the wire.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BLOCK_PAYLOAD;
/// Longest volume id.
pub const MAX_VOLUME_ID: usize = 64;
/// Longest message string in an error or result frame (longer ones are cut on encode).
pub const MAX_MESSAGE: usize = 4096;
/// Most bad blocks a result frame lists (the total is carried separately).
pub const MAX_BAD_BLOCKS: usize = 4096;
/// Largest volume a session may declare (2^60 bytes).
pub const MAX_VOLUME_SIZE: u64 = 1 << 60;

/// A malformed frame or a frame that breaks a session's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {found:02x?} (expected \"BWWP\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {version} (this build speaks {VERSION})")]
    UnsupportedVersion { version: u8 },
    #[error("frame header checksum mismatch (header says {expected:08x}, computed {found:08x})")]
    HeaderChecksum { expected: u32, found: u32 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("reserved frame flags set: {flags:#06x}")]
    ReservedFlags { flags: u16 },
    #[error("{kind} frame payload of {len} bytes exceeds the limit of {max}")]
    Oversize {
        kind: FrameKind,
        len: usize,
        max: usize,
    },
    #[error(
        "{kind} frame body checksum mismatch (header says {expected:08x}, computed {found:08x})"
    )]
    BodyChecksum {
        kind: FrameKind,
        expected: u32,
        found: u32,
    },
    #[error("malformed {kind} frame: {what}")]
    Malformed { kind: FrameKind, what: String },
    #[error("no valid frame in the first {skipped} bytes of the stream")]
    NoFrame { skipped: u64 },
    #[error(
        "block frame seq {seq}: offset {offset} is not a multiple of the block size {block_size}"
    )]
    Misaligned {
        seq: u64,
        offset: u64,
        block_size: u32,
    },
    #[error("block frame seq {seq}: {len} bytes at offset {offset} lie outside the volume of {volume_size} bytes")]
    OutsideVolume {
        seq: u64,
        offset: u64,
        len: u64,
        volume_size: u64,
    },
    #[error("block frame seq {seq}: {len} data bytes with {hashes} hashes does not match the session block size {block_size}")]
    BlockLength {
        seq: u64,
        len: usize,
        hashes: usize,
        block_size: u32,
    },
}

impl WireError {
    /// Damage in transit (a checksum or the magic failed), as opposed to a peer that
    /// breaks the rules: the session survives a reconnect.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            WireError::BadMagic { .. }
                | WireError::HeaderChecksum { .. }
                | WireError::BodyChecksum { .. }
        )
    }

    pub(crate) fn malformed(kind: FrameKind, what: impl Into<String>) -> Self {
        WireError::Malformed {
            kind,
            what: what.into(),
        }
    }
}
