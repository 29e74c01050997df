//! The file id: the CESS Go SDK's Merkle root of the segment hashes.

use sha2::{Digest, Sha256};

use super::Hash;

fn pair(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The FID of a file with these segment hashes: one segment gives SHA-256(d || d); several are
/// paired left to right, parent = SHA-256(left || right), an unpaired last node hashed with
/// itself, until one node is left (`BuildSimpleMerkelRootHash` / `BuildMerkelRootHash`).
pub fn merkle_fid(segments: &[Hash]) -> Hash {
    assert!(!segments.is_empty(), "a file has at least one segment");
    let mut level: Vec<Hash> = segments.to_vec();
    loop {
        level = level.chunks(2).map(|p| pair(&p[0], p.get(1).unwrap_or(&p[0]))).collect();
        if level.len() == 1 {
            return level[0];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::sha256;

    #[test]
    fn single_segment_hashes_itself() {
        let d = sha256(b"x");
        assert_eq!(merkle_fid(&[d]), pair(&d, &d));
    }

    #[test]
    fn three_segments_duplicate_the_odd_node() {
        let (a, b, c) = (sha256(b"a"), sha256(b"b"), sha256(b"c"));
        assert_eq!(merkle_fid(&[a, b, c]), pair(&pair(&a, &b), &pair(&c, &c)));
    }
}
