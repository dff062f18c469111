//! Low-level I/O the workload needs beyond std: the monotonic clock, block-aligned buffers
//! for O_DIRECT, allocation of new file ranges, syncfs, and the unstamped payload.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::stamp::BLOCK_SIZE;

/// CLOCK_MONOTONIC in ns: the clock the agent uses for the snapshot instant.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One block with the alignment O_DIRECT needs.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; BLOCK_SIZE]);

/// A buffer of whole, 4096-aligned blocks.
pub(crate) struct BlockBuf(Vec<Block>);

impl BlockBuf {
    pub(crate) fn new(blocks: usize) -> BlockBuf {
        BlockBuf(vec![Block([0; BLOCK_SIZE]); blocks])
    }

    pub(crate) fn block_mut(&mut self, index: usize) -> &mut [u8; BLOCK_SIZE] {
        &mut self.0[index].0
    }

    /// The first `blocks` blocks as bytes.
    pub(crate) fn bytes(&self, blocks: usize) -> &[u8] {
        let blocks = &self.0[..blocks];
        // SAFETY: Block is repr(C) with size == alignment == 4096 and no padding, so the
        // slice is blocks.len() * 4096 contiguous initialised bytes.
        unsafe {
            std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
        }
    }
}

/// Opens a file for writing, with O_DIRECT when `direct`.
pub(crate) fn open_write(path: &Path, create_new: bool, direct: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(create_new).mode(0o644);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

/// Gives `len` bytes at `offset` of the file physical blocks, so FIEMAP can name them and
/// O_DIRECT writes land in them. fallocate where the filesystem has it; ext2 (no extents)
/// does not, so there zeros go through the page cache and fdatasync places them.
pub(crate) fn allocate(path: &Path, file: &File, offset: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on a descriptor we own.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => break,
            _ => return Err(err),
        }
    }
    let buffered = OpenOptions::new().write(true).open(path)?;
    let zeros = vec![0u8; 64 * BLOCK_SIZE];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        buffered.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    buffered.sync_data()
}

/// The block size of the filesystem holding `file` (statvfs f_bsize).
pub(crate) fn fs_block_size(file: &File) -> io::Result<u64> {
    // SAFETY: statvfs is plain old data; fstatvfs fills it from a descriptor we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0 {
        Ok(st.f_bsize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// syncfs(2) on the filesystem holding `dir`.
pub(crate) fn syncfs(dir: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The content of an unstamped block: distinct per (run, writer, seq), so every write
/// really changes the block and a snapshot module has something to copy.
pub(crate) fn fill_plain(block: &mut [u8; BLOCK_SIZE], run: u64, writer: u32, seq: u64) {
    let mut state = run ^ (u64::from(writer) << 48) ^ seq.wrapping_mul(0xd6e8_feb8_6659_fd93);
    for chunk in block.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// Whether an error is the filesystem being full.
pub(crate) fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_contiguous() {
        let mut buf = BlockBuf::new(3);
        buf.block_mut(1)[0] = 7;
        let bytes = buf.bytes(3);
        assert_eq!(bytes.as_ptr() as usize % BLOCK_SIZE, 0);
        assert_eq!(bytes.len(), 3 * BLOCK_SIZE);
        assert_eq!(bytes[BLOCK_SIZE], 7);
    }

    #[test]
    fn plain_blocks_differ_per_write() {
        let mut a = [0u8; BLOCK_SIZE];
        let mut b = [0u8; BLOCK_SIZE];
        fill_plain(&mut a, 1, 0, 5);
        fill_plain(&mut b, 1, 0, 6);
        assert_ne!(a, b);
        fill_plain(&mut b, 1, 0, 5);
        assert_eq!(a, b);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_ns() >= a + 2_000_000);
    }
}
