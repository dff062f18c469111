//! The manifest digest: sha256 over the ordered list of (offset, length, hash) of every
//! block of a session, computed the same way by sender and target.

use sha2::{Digest, Sha256};

/// Running manifest digest. For every block in sequence order it absorbs the block's byte
/// offset (u64 LE), its length (u32 LE) and its sha256.
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
    pub fn add_block(&mut self, offset: u64, len: u32, hash: &[u8; 32]) {
        self.hasher.update(offset.to_le_bytes());
        self.hasher.update(len.to_le_bytes());
        self.hasher.update(hash);
        self.blocks += 1;
    }

    /// Absorbs the blocks of one frame: `hashes` is 32 bytes per block of `block_len`.
    pub fn add_frame(&mut self, offset: u64, block_len: u32, hashes: &[u8]) {
        for (i, h) in hashes.chunks_exact(32).enumerate() {
            let mut a = [0u8; 32];
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
        let h1 = [1u8; 32];
        let h2 = [2u8; 32];
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
