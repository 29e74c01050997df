//! Reed-Solomon 4 + 8 over GF(2^8) with klauspost/reedsolomon's default (Vandermonde-derived,
//! systematic) matrix, as the CESS Go SDK, DeOSS and the gateways compute it.

use reed_solomon_erasure::galois_8::ReedSolomon;

use super::{DATA_FRAGMENTS, FRAGMENT_SIZE, PARITY_FRAGMENTS, SEGMENT_SIZE};

/// Column stripe for encoding: small enough that the 12 stripes stay in cache.
const STRIPE: usize = 64 << 10;

/// The CESS erasure code.
pub struct Erasure {
    rs: ReedSolomon,
}

impl Default for Erasure {
    fn default() -> Self {
        Erasure { rs: ReedSolomon::new(DATA_FRAGMENTS, PARITY_FRAGMENTS).expect("4 + 8 is a valid code") }
    }
}

impl Erasure {
    /// Computes the 8 parity shards of `data` (4 shards of equal length, contiguous) into
    /// `parity` (8 shards of the same length, contiguous).
    pub fn encode(&self, data: &[u8], parity: &mut [u8]) {
        let shard = data.len() / DATA_FRAGMENTS;
        assert!(shard > 0 && data.len() == shard * DATA_FRAGMENTS && parity.len() == shard * PARITY_FRAGMENTS);
        let data_shards: Vec<&[u8]> = data.chunks_exact(shard).collect();
        let mut parity_shards: Vec<&mut [u8]> = parity.chunks_exact_mut(shard).collect();
        let mut start = 0;
        while start < shard {
            let end = (start + STRIPE).min(shard);
            let d: Vec<&[u8]> = data_shards.iter().map(|s| &s[start..end]).collect();
            let mut p: Vec<&mut [u8]> = parity_shards.iter_mut().map(|s| &mut s[start..end]).collect();
            self.rs.encode_sep(&d, &mut p).expect("shards have equal lengths");
            start = end;
        }
    }

    /// Rebuilds the data fragments of a 32 MiB `segment` in place. `have_data[i]` says whether
    /// data fragment `i` is already in place; `parity[j]` holds parity fragment `j` if present.
    /// Needs at least 4 fragments in all.
    pub fn reconstruct(
        &self,
        segment: &mut [u8],
        have_data: [bool; DATA_FRAGMENTS],
        parity: &mut [Option<Vec<u8>>; PARITY_FRAGMENTS],
    ) {
        assert_eq!(segment.len(), SEGMENT_SIZE);
        if have_data.iter().all(|&h| h) {
            return;
        }
        let mut shards: Vec<(&mut [u8], bool)> = segment.chunks_exact_mut(FRAGMENT_SIZE).zip(have_data).collect();
        for p in parity.iter_mut() {
            match p {
                Some(v) => shards.push((v.as_mut_slice(), true)),
                None => shards.push((&mut [][..], false)),
            }
        }
        self.rs.reconstruct_data(&mut shards).expect("at least 4 shards of 8 MiB are present");
    }

    /// Rebuilds the missing data shards among `shards`, the same byte range of a segment's 12
    /// fragments (Reed-Solomon works byte by byte, so a range rebuilds alone). Needs 4 present,
    /// all of one length; `false` otherwise.
    pub fn reconstruct_range(&self, shards: &mut [Option<Vec<u8>>; DATA_FRAGMENTS + PARITY_FRAGMENTS]) -> bool {
        self.rs.reconstruct_data(&mut shards[..]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_rows_match_klauspost() {
        // Parity row r of the systematic matrix is what encoding the unit vector e_c gives at
        // column c: PROTOCOL.md §2.2 lists the rows klauspost v1.12.4 produces.
        let rows = [
            [27, 28, 18, 20],
            [28, 27, 20, 18],
            [18, 20, 27, 28],
            [20, 18, 28, 27],
            [245, 232, 196, 216],
            [232, 245, 216, 196],
            [196, 216, 245, 232],
            [216, 196, 232, 245],
        ];
        let e = Erasure::default();
        for c in 0..4 {
            let mut data = [0u8; 4];
            data[c] = 1;
            let mut parity = [0u8; 8];
            e.encode(&data, &mut parity);
            for r in 0..8 {
                assert_eq!(parity[r], rows[r][c], "row {r} col {c}");
            }
        }
    }

    #[test]
    fn a_range_rebuilds_from_the_same_range_of_4_fragments() {
        let e = Erasure::default();
        let data: Vec<u8> = (0..4 * 64).map(|i| (i * 7 + 3) as u8).collect();
        let mut parity = vec![0u8; 8 * 64];
        e.encode(&data, &mut parity);
        let piece = |all: &[u8], i: usize| all[i * 64 + 10..i * 64 + 20].to_vec();
        let mut shards: [Option<Vec<u8>>; 12] = Default::default();
        shards[1] = Some(piece(&data, 1));
        shards[5] = Some(piece(&parity, 1));
        shards[9] = Some(piece(&parity, 5));
        shards[11] = Some(piece(&parity, 7));
        assert!(e.reconstruct_range(&mut shards));
        assert_eq!(shards[2].as_deref(), Some(&piece(&data, 2)[..]));
        let mut three: [Option<Vec<u8>>; 12] = Default::default();
        (three[1], three[5], three[9]) = (shards[1].clone(), shards[5].clone(), shards[9].clone());
        assert!(!e.reconstruct_range(&mut three), "3 of 12 do not rebuild");
    }
}
