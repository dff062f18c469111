//! Frame types of the wire protocol and the session-level rules a block frame must obey.

use std::fmt;

use super::{
    block_digest, BlockDigest, WireError, HASH_LEN, MAX_BLOCK_SIZE, MAX_VOLUME_ID, MAX_VOLUME_SIZE,
    MIN_BLOCK_SIZE,
};

/// A backup session's identity, chosen by the agent; kept across reconnects.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A random (version 4 style) id from the kernel's random source.
    pub fn random() -> std::io::Result<SessionId> {
        let mut b = [0u8; 16];
        let mut filled = 0;
        while filled < b.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `b`.
            let n =
                unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            filled += n as usize;
        }
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        Ok(SessionId(b))
    }

    /// The all-zero id, used in error frames that concern no session.
    pub const NIL: SessionId = SessionId([0; 16]);

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl std::str::FromStr for SessionId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let compact: String = s.chars().filter(|c| *c != '-').collect();
        let bytes = hex::decode(&compact).map_err(|e| format!("bad session id {s:?}: {e}"))?;
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("bad session id {s:?}: expected 16 bytes"))?;
        Ok(SessionId(arr))
    }
}

/// Frame kind, byte 5 of the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Header = 1,
    Accept = 2,
    Block = 3,
    Ack = 4,
    Nack = 5,
    End = 6,
    Result = 7,
    Error = 8,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Header,
            2 => FrameKind::Accept,
            3 => FrameKind::Block,
            4 => FrameKind::Ack,
            5 => FrameKind::Nack,
            6 => FrameKind::End,
            7 => FrameKind::Result,
            8 => FrameKind::Error,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Header => "header",
            FrameKind::Accept => "accept",
            FrameKind::Block => "block",
            FrameKind::Ack => "ack",
            FrameKind::Nack => "nack",
            FrameKind::End => "end",
            FrameKind::Result => "result",
            FrameKind::Error => "error",
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Full or incremental backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    Full,
    /// Builds on the committed generation `parent` of the same volume.
    Incremental {
        parent: u32,
    },
}

impl BackupKind {
    pub fn name(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental { .. } => "incremental",
        }
    }

    pub fn parent(self) -> Option<u32> {
        match self {
            BackupKind::Full => None,
            BackupKind::Incremental { parent } => Some(parent),
        }
    }
}

/// Agent → target, first frame of every connection: what is being backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeader {
    pub session: SessionId,
    pub volume_id: String,
    pub volume_size: u64,
    pub block_size: u32,
    pub generation: u32,
    pub kind: BackupKind,
    /// Set when the agent reconnects to continue a session it already started.
    pub resume: bool,
}

impl SessionHeader {
    /// The session-level rules that hold for every header, on encode and on decode.
    pub fn validate(&self) -> Result<(), WireError> {
        let bad = |what: String| Err(WireError::malformed(FrameKind::Header, what));
        validate_volume_id(&self.volume_id)
            .map_err(|what| WireError::malformed(FrameKind::Header, what))?;
        if !self.block_size.is_power_of_two()
            || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size)
        {
            return bad(format!(
                "block size {} is not a power of two in {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}",
                self.block_size
            ));
        }
        if self.volume_size == 0
            || self.volume_size > MAX_VOLUME_SIZE
            || !self.volume_size.is_multiple_of(u64::from(self.block_size))
        {
            return bad(format!(
                "volume size {} is not a non-zero multiple of the block size {} up to 2^60",
                self.volume_size, self.block_size
            ));
        }
        if self.generation == 0 {
            return bad("generation 0 is reserved; generations start at 1".into());
        }
        if let BackupKind::Incremental { parent } = self.kind {
            if parent == 0 || parent >= self.generation {
                return bad(format!(
                    "incremental generation {} needs a parent in 1..{}, got {parent}",
                    self.generation, self.generation
                ));
            }
        }
        Ok(())
    }

    /// Number of blocks in the volume.
    pub fn block_count(&self) -> u64 {
        self.volume_size / u64::from(self.block_size)
    }

    /// Checks a block frame against this session: aligned, whole blocks, inside the volume.
    pub fn check_block(&self, block: &BlockView<'_>) -> Result<(), WireError> {
        let bs = u64::from(self.block_size);
        if !block.offset.is_multiple_of(bs) {
            return Err(WireError::Misaligned {
                seq: block.seq,
                offset: block.offset,
                block_size: self.block_size,
            });
        }
        let n = block.hash_count();
        if n == 0 || block.data.len() != n * self.block_size as usize {
            return Err(WireError::BlockLength {
                seq: block.seq,
                len: block.data.len(),
                hashes: n,
                block_size: self.block_size,
            });
        }
        let len = block.data.len() as u64;
        if block
            .offset
            .checked_add(len)
            .is_none_or(|end| end > self.volume_size)
        {
            return Err(WireError::OutsideVolume {
                seq: block.seq,
                offset: block.offset,
                len,
                volume_size: self.volume_size,
            });
        }
        Ok(())
    }

    /// Whether a resume header describes the same backup as the original one.
    pub fn same_backup(&self, other: &SessionHeader) -> bool {
        self.session == other.session
            && self.volume_id == other.volume_id
            && self.volume_size == other.volume_size
            && self.block_size == other.block_size
            && self.generation == other.generation
            && self.kind == other.kind
    }
}

/// Volume ids name directories on the target: a short, safe charset.
pub fn validate_volume_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_VOLUME_ID {
        return Err(format!(
            "volume id {id:?} must be 1..={MAX_VOLUME_ID} bytes long"
        ));
    }
    if id.starts_with('.') {
        return Err(format!("volume id {id:?} must not start with '.'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "volume id {id:?} contains {c:?}; allowed are A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// Target → agent: the session is accepted; send from `next_seq` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    pub session: SessionId,
    pub next_seq: u64,
}

/// Agent → target: `data` holds `hashes.len()` equal-sized blocks starting at byte
/// `offset`; `hashes[i]` is the hash ([`block_digest`]) of block i.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFrame {
    pub seq: u64,
    pub offset: u64,
    pub hashes: Vec<BlockDigest>,
    pub data: Vec<u8>,
}

/// A decoded block frame borrowing from the receive buffer (no copy of the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockView<'a> {
    pub seq: u64,
    pub offset: u64,
    /// `HASH_LEN * hash_count` bytes: the hash of each block, in order.
    pub hashes: &'a [u8],
    pub data: &'a [u8],
}

impl<'a> BlockView<'a> {
    pub fn hash_count(&self) -> usize {
        self.hashes.len() / HASH_LEN
    }

    /// Bytes per block in this frame.
    pub fn block_len(&self) -> usize {
        match self.hash_count() {
            0 => 0,
            n => self.data.len() / n,
        }
    }

    /// The claimed hash of block `i` of the frame.
    pub fn hash(&self, i: usize) -> BlockDigest {
        let mut h = [0u8; HASH_LEN];
        if let Some(s) = self.hashes.get(i * HASH_LEN..(i + 1) * HASH_LEN) {
            h.copy_from_slice(s);
        }
        h
    }

    /// Data of block `i` of the frame.
    pub fn block(&self, i: usize) -> &'a [u8] {
        let bl = self.block_len();
        self.data.get(i * bl..(i + 1) * bl).unwrap_or(&[])
    }

    /// Indices of the blocks whose data does not match the claimed hash.
    pub fn mismatched_blocks(&self) -> Vec<usize> {
        (0..self.hash_count())
            .filter(|&i| block_digest(self.block(i)) != self.hash(i))
            .collect()
    }

    pub fn to_owned_frame(&self) -> BlockFrame {
        BlockFrame {
            seq: self.seq,
            offset: self.offset,
            hashes: (0..self.hash_count()).map(|i| self.hash(i)).collect(),
            data: self.data.to_vec(),
        }
    }
}

/// Target → agent: every frame with a smaller sequence number is received and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub session: SessionId,
    pub next_seq: u64,
}

/// Why the target asks for a frame again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// The frame's data did not match its hash (transport damage).
    HashMismatch = 1,
    /// A later frame arrived first: this one was lost.
    Missing = 2,
}

impl NackReason {
    pub fn name(self) -> &'static str {
        match self {
            NackReason::HashMismatch => "hash-mismatch",
            NackReason::Missing => "missing",
        }
    }
}

/// Target → agent: resend from `seq` on (go-back-N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    pub session: SessionId,
    pub seq: u64,
    pub reason: NackReason,
}

/// Agent → target: all frames are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub session: SessionId,
    pub frame_count: u64,
    pub block_count: u64,
    /// [`super::ManifestDigest`] over every block in sequence order.
    pub manifest_digest: [u8; 32],
}

/// Why a session failed on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The target's re-read of what it wrote did not match the frames' hashes.
    Verification = 1,
    /// The end frame's block count or manifest digest differs from what was received.
    Manifest = 2,
    /// The target could not write or read its store.
    Storage = 3,
    /// The agent broke the protocol.
    Protocol = 4,
    /// The agent aborted the session.
    Aborted = 5,
}

impl FailReason {
    pub fn name(self) -> &'static str {
        match self {
            FailReason::Verification => "verification",
            FailReason::Manifest => "manifest",
            FailReason::Storage => "storage",
            FailReason::Protocol => "protocol",
            FailReason::Aborted => "aborted",
        }
    }
}

/// What the target did with a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        generation: u32,
        block_count: u64,
    },
    Failed {
        reason: FailReason,
        message: String,
        /// Block numbers (offset / block size) at fault, at most `MAX_BAD_BLOCKS`.
        bad_blocks: Vec<u64>,
        /// How many blocks were at fault in all (may exceed the list).
        bad_total: u64,
    },
}

/// Target → agent: the final word on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResult {
    pub session: SessionId,
    pub outcome: Outcome,
}

/// Error codes of an [`ErrorFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer sent something that breaks the protocol; the connection is closed.
    Malformed = 1,
    /// A resume named a session the target does not know (e.g. it restarted).
    UnknownSession = 2,
    /// The target will not take this session (generation exists, parent missing, ...).
    Refused = 3,
    /// The target hit an internal error.
    Internal = 4,
    /// The agent gives up on the session (e.g. it cannot read its source).
    Aborted = 5,
    /// The same volume and generation is already being received.
    Busy = 6,
    /// A frame arrived damaged (a checksum failed): the receiver closes the connection
    /// and the session can be resumed on a new one.
    Damaged = 7,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnknownSession,
            3 => ErrorCode::Refused,
            4 => ErrorCode::Internal,
            5 => ErrorCode::Aborted,
            6 => ErrorCode::Busy,
            7 => ErrorCode::Damaged,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownSession => "unknown-session",
            ErrorCode::Refused => "refused",
            ErrorCode::Internal => "internal",
            ErrorCode::Aborted => "aborted",
            ErrorCode::Busy => "busy",
            ErrorCode::Damaged => "damaged",
        }
    }
}

/// Either direction: a refusal or a protocol error. After `UnknownSession` the agent may
/// start the session over on the same connection; after `Damaged` it reconnects and
/// resumes; after any other code the session is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The session concerned, [`SessionId::NIL`] when none.
    pub session: SessionId,
    pub code: ErrorCode,
    pub message: String,
}

/// Any frame, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Header(SessionHeader),
    Accept(Accept),
    Block(BlockFrame),
    Ack(Ack),
    Nack(Nack),
    End(End),
    Result(SessionResult),
    Error(ErrorFrame),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Header(_) => FrameKind::Header,
            Frame::Accept(_) => FrameKind::Accept,
            Frame::Block(_) => FrameKind::Block,
            Frame::Ack(_) => FrameKind::Ack,
            Frame::Nack(_) => FrameKind::Nack,
            Frame::End(_) => FrameKind::End,
            Frame::Result(_) => FrameKind::Result,
            Frame::Error(_) => FrameKind::Error,
        }
    }
}
