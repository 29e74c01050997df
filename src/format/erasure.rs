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
}
