//! The manifest digest: sha256 over the ordered list of (offset, length, hash) of every
//! block of a session, computed the same way by sender and target. It absorbs 28 bytes
//! per block, so even in a guest without SHA instructions it costs next to nothing.

use sha2::{Digest, Sha256};

use super::{BlockDigest, HASH_LEN};

/// Running manifest digest. For every block in sequence order it absorbs the block's byte
/// offset (u64 LE), its length (u32 LE) and its block hash (16 bytes).
#[derive(Clone, Default)]
pub struct ManifestDigest {
    hasher: Sha256,
    blocks: u64,
}

impl ManifestDigest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Absorbs one block.
    pub fn add_block(&mut self, offset: u64, len: u32, hash: &BlockDigest) {
        self.hasher.update(offset.to_le_bytes());
        self.hasher.update(len.to_le_bytes());
        self.hasher.update(hash);
        self.blocks += 1;
    }

    /// Absorbs the blocks of one frame: `hashes` is `HASH_LEN` bytes per block of
    /// `block_len`.
    pub fn add_frame(&mut self, offset: u64, block_len: u32, hashes: &[u8]) {
        for (i, h) in hashes.chunks_exact(HASH_LEN).enumerate() {
            let mut a = [0u8; HASH_LEN];
            a.copy_from_slice(h);
            self.add_block(offset + i as u64 * u64::from(block_len), block_len, &a);
        }
    }

    /// Blocks absorbed so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn finish(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_content_matter() {
        let h1 = [1u8; HASH_LEN];
        let h2 = [2u8; HASH_LEN];
        let mut a = ManifestDigest::new();
        a.add_block(0, 4096, &h1);
        a.add_block(4096, 4096, &h2);
        let mut b = ManifestDigest::new();
        b.add_block(4096, 4096, &h2);
        b.add_block(0, 4096, &h1);
        assert_ne!(a.finish(), b.finish());
        let mut c = ManifestDigest::new();
        let mut both = h1.to_vec();
        both.extend_from_slice(&h2);
        c.add_frame(0, 4096, &both);
        assert_eq!(a.finish(), c.finish());
        assert_eq!(c.blocks(), 2);
    }
}
