//! FS_IOC_FIEMAP: where a file's blocks are on the filesystem's device, so a stamped
//! piece can carry its own device offset. Only mappings that an O_DIRECT overwrite keeps
//! in place are accepted; anything else (delayed allocation, inline or encoded data,
//! shared extents that would be copied on write, pieces that are not whole filesystem
//! blocks aligned on the device) is an error, because a stamp naming the wrong place is
//! worse than none. Unwritten extents (fallocate) are fine: a write converts them in place.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

use super::BLOCK;

/// _IOWR('f', 11, struct fiemap), struct fiemap being 32 bytes.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// UNKNOWN, DELALLOC, ENCODED, DATA_ENCRYPTED, NOT_ALIGNED, DATA_INLINE, DATA_TAIL, SHARED:
/// the physical address is unknown, not block-aligned, or would move on the next write.
const UNTRUSTED: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000;
const EXTENTS_PER_CALL: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Extent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Request {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [Extent; EXTENTS_PER_CALL],
}

/// Why the physical place of a file range could not be named.
#[derive(Debug, thiserror::Error)]
pub enum FiemapError {
    #[error("FIEMAP failed (does the filesystem support it?)")]
    Ioctl(#[source] io::Error),
    #[error("file offset {offset} has no physical block (a hole)")]
    Hole { offset: u64 },
    #[error("file offset {offset} is in an extent with flags {flags:#x}: its place on the device is not fixed")]
    Untrusted { offset: u64, flags: u32 },
    #[error("file offset {offset} lies at device byte {physical}, not a whole {piece}-byte block aligned on the device")]
    Unaligned {
        offset: u64,
        physical: u64,
        piece: u64,
    },
    #[error("range of {blocks} blocks at offset {offset} is not 4 KiB-aligned, or pieces of {piece} bytes do not divide 4 KiB")]
    BadRange {
        offset: u64,
        blocks: u64,
        piece: u64,
    },
}

/// The device byte offset of each `piece`-byte piece of the `blocks` 4 KiB blocks at byte
/// `offset` of `file`, in file order (4096 / `piece` per block). `piece` is the
/// filesystem block size capped at 4 KiB; every piece must lie whole in one extent and be
/// aligned to its size on the device. Delayed allocations are flushed first
/// (FIEMAP_FLAG_SYNC).
pub fn physical_pieces(
    file: &File,
    offset: u64,
    blocks: u64,
    piece: u64,
) -> Result<Vec<u64>, FiemapError> {
    let bad_range = FiemapError::BadRange {
        offset,
        blocks,
        piece,
    };
    if !offset.is_multiple_of(BLOCK) || !matches!(piece, 1024 | 2048 | 4096) {
        return Err(bad_range);
    }
    let Some(end) = blocks
        .checked_mul(BLOCK)
        .and_then(|len| len.checked_add(offset))
    else {
        return Err(bad_range);
    };
    let extents = extents(file, offset, end)?;
    let mut places = Vec::with_capacity((blocks * (BLOCK / piece)) as usize);
    let mut next = extents.iter().peekable();
    let mut at = offset;
    while at < end {
        // Extents come sorted by logical offset; skip those ending before this piece.
        while next.peek().is_some_and(|e| e.logical + e.length <= at) {
            next.next();
        }
        let extent = match next.peek() {
            Some(e) if e.logical <= at => e,
            _ => return Err(FiemapError::Hole { offset: at }),
        };
        if extent.flags & UNTRUSTED != 0 {
            return Err(FiemapError::Untrusted {
                offset: at,
                flags: extent.flags,
            });
        }
        let physical = extent.physical + (at - extent.logical);
        if !physical.is_multiple_of(piece) || at + piece > extent.logical + extent.length {
            return Err(FiemapError::Unaligned {
                offset: at,
                physical,
                piece,
            });
        }
        places.push(physical);
        at += piece;
    }
    Ok(places)
}

/// Every extent of a whole file as (device byte offset, length), merged where
/// contiguous; an extent whose place is not fixed (delayed allocation, inline data) is
/// an error, as it is for stamps.
pub fn physical_ranges(file: &File) -> Result<Vec<(u64, u64)>, FiemapError> {
    let len = file.metadata().map_err(FiemapError::Ioctl)?.len();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents(file, 0, len.max(1))? {
        if e.flags & UNTRUSTED != 0 {
            return Err(FiemapError::Untrusted {
                offset: e.logical,
                flags: e.flags,
            });
        }
        match out.last_mut() {
            Some((at, n)) if *at + *n == e.physical => *n += e.length,
            _ => out.push((e.physical, e.length)),
        }
    }
    Ok(out)
}

/// The extents overlapping [start, end), with logically and physically contiguous
/// neighbours merged (a 1 KiB-block filesystem may report a 4 KiB block in pieces).
fn extents(file: &File, start: u64, end: u64) -> Result<Vec<Extent>, FiemapError> {
    let mut out: Vec<Extent> = Vec::new();
    let mut from = start;
    let mut flags = FIEMAP_FLAG_SYNC;
    while from < end {
        let mut req = Box::new(Request {
            start: from,
            length: end - from,
            flags,
            mapped_extents: 0,
            extent_count: EXTENTS_PER_CALL as u32,
            reserved: 0,
            extents: [Extent::default(); EXTENTS_PER_CALL],
        });
        // SAFETY: `req` is a struct fiemap header followed by room for extent_count
        // extents, which is what the kernel reads and writes.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut *req as *mut Request) };
        if rc != 0 {
            return Err(FiemapError::Ioctl(io::Error::last_os_error()));
        }
        flags = 0;
        let got = &req.extents[..(req.mapped_extents as usize).min(EXTENTS_PER_CALL)];
        let Some(last) = got.last() else { break };
        for e in got {
            match out.last_mut() {
                Some(prev)
                    if prev.logical + prev.length == e.logical
                        && prev.physical + prev.length == e.physical
                        && prev.flags & UNTRUSTED == e.flags & UNTRUSTED =>
                {
                    prev.length += e.length;
                    prev.flags |= e.flags & FIEMAP_EXTENT_LAST;
                }
                _ => out.push(*e),
            }
        }
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            break;
        }
        from = last.logical + last.length;
    }
    Ok(out)
}
