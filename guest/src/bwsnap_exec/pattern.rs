//! Self-describing 512-byte stamps: a sector written by the model test says which
//! write (tag) it came from and which sector it was meant for, and every other byte
//! follows from those two, so a damaged, misplaced or stale sector is told apart from
//! the expected one without the host sending data.

use super::protocol::{Content, Run};

pub const SECTOR: usize = 512;
const WORDS: usize = SECTOR / 8;
/// "BWMODEL1", little-endian.
const MAGIC: u64 = u64::from_le_bytes(*b"BWMODEL1");

/// splitmix64 finaliser: the fill word `i` of a stamp.
fn mix(tag: u64, sector: u64, i: u64) -> u64 {
    let mut z = tag
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(sector.rotate_left(32))
        .wrapping_add(i.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(buf: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// Writes the stamp of `tag` for absolute sector `sector` into `out` (512 bytes).
pub fn stamp(out: &mut [u8], tag: u64, sector: u64) {
    debug_assert_eq!(out.len(), SECTOR);
    out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&tag.to_le_bytes());
    out[16..24].copy_from_slice(&sector.to_le_bytes());
    for i in 3..WORDS {
        out[i * 8..i * 8 + 8].copy_from_slice(&mix(tag, sector, i as u64).to_le_bytes());
    }
}

/// What sector `sector` holds, given its 512 bytes.
pub fn decode(buf: &[u8], sector: u64) -> Content {
    debug_assert_eq!(buf.len(), SECTOR);
    if buf.iter().all(|&b| b == 0) {
        return Content::Zero;
    }
    let (magic, tag, meant) = (word(buf, 0), word(buf, 1), word(buf, 2));
    if magic == MAGIC && (3..WORDS).all(|i| word(buf, i) == mix(tag, meant, i as u64)) {
        if meant == sector {
            return Content::Tag(tag);
        }
        return Content::Moved { tag, sector: meant };
    }
    Content::Foreign(fnv(buf))
}

/// FNV-1a over little-endian 64-bit words (what `bwtool hash` computes per block).
pub fn fnv(buf: &[u8]) -> u64 {
    buf.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(0x100_0000_01b3)
    })
}

/// Appends `content` to run-length encoded `runs`.
pub fn push(runs: &mut Vec<Run>, content: Content) {
    match runs.last_mut() {
        Some(last) if last.content == content => last.count += 1,
        _ => runs.push(Run { content, count: 1 }),
    }
}

/// The runs expanded, one entry per sector.
pub fn expand(runs: &[Run]) -> Vec<Content> {
    runs.iter()
        .flat_map(|r| std::iter::repeat_n(r.content, r.count as usize))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_decodes_to_its_tag_and_damage_is_seen() {
        let mut buf = vec![0u8; SECTOR];
        assert_eq!(decode(&buf, 7), Content::Zero);
        stamp(&mut buf, 42, 7);
        assert_eq!(decode(&buf, 7), Content::Tag(42));
        assert_eq!(decode(&buf, 8), Content::Moved { tag: 42, sector: 7 });
        for byte in [0, 9, 17, 200, 511] {
            let mut bad = buf.clone();
            bad[byte] ^= 1;
            assert!(
                matches!(decode(&bad, 7), Content::Foreign(_) | Content::Moved { .. }),
                "flip at {byte}: {:?}",
                decode(&bad, 7)
            );
            assert_ne!(decode(&bad, 7), Content::Tag(42), "flip at {byte}");
        }
        let mut other = vec![0u8; SECTOR];
        stamp(&mut other, 43, 7);
        assert_eq!(decode(&other, 7), Content::Tag(43));
        assert_ne!(buf, other);
    }

    #[test]
    fn runs_merge_equal_neighbours_and_expand_back() {
        let seq = [
            Content::Tag(1),
            Content::Tag(1),
            Content::Zero,
            Content::Tag(1),
            Content::Zero,
            Content::Zero,
        ];
        let mut runs = Vec::new();
        for c in seq {
            push(&mut runs, c);
        }
        assert_eq!(runs.len(), 4);
        assert_eq!(expand(&runs), seq);
    }

    #[test]
    fn fnv_matches_a_known_value() {
        // FNV-1a offset basis, one zero word: the basis times the prime.
        assert_eq!(
            fnv(&[0u8; 8]),
            0xcbf2_9ce4_8422_2325u64.wrapping_mul(0x100_0000_01b3)
        );
    }
}
