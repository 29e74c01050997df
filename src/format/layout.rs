//! Where each byte of a file goes: which segment, and where in it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{FormatError, MAX_SEGMENTS, SEGMENT_SIZE, crypto};

/// Plaintext (the golden-vector layout other CESS clients read) or encrypted (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Segments are the file's raw bytes, zero-padded.
    Plain,
    /// Segments carry AES-256-GCM-SIV ciphertext (docs/FORMAT.md), one message each (format
    /// versions 1 and 2).
    Encrypted,
    /// Segments carry 32 blocks of 1 MiB, each sealed on its own (format version 3).
    Blocks,
}

impl Mode {
    /// The layout of a file of format `version`, stored with a key (`encrypted`) or without.
    pub fn of(version: u8, encrypted: bool) -> Mode {
        match (encrypted, version) {
            (false, _) => Mode::Plain,
            (true, crypto::FORMAT_V3) => Mode::Blocks,
            (true, _) => Mode::Encrypted,
        }
    }
}

/// How a file of a given size is cut into segments in a given mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    mode: Mode,
    segments: usize,
}

impl Layout {
    /// The layout of a file of `size` bytes; errors for an empty file or one over 1000 segments.
    pub fn new(size: u64, mode: Mode) -> Result<Layout, FormatError> {
        if size == 0 {
            return Err(FormatError::EmptyFile);
        }
        let capacity = chunk_capacity(mode) as u64;
        let segments = size.div_ceil(capacity);
        if segments > MAX_SEGMENTS as u64 {
            return Err(FormatError::TooLarge { size, segments });
        }
        Ok(Layout { size, mode, segments: segments as usize })
    }

    /// The largest file this mode can store in one FID.
    pub fn max_size(mode: Mode) -> u64 {
        chunk_capacity(mode) as u64 * MAX_SEGMENTS as u64
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Plain or encrypted.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// File bytes carried by each segment but the last.
    pub fn chunk_capacity(&self) -> usize {
        chunk_capacity(self.mode)
    }

    /// The file bytes carried by segment `index`.
    pub fn chunk(&self, index: usize) -> Range<u64> {
        let cap = self.chunk_capacity() as u64;
        let start = index as u64 * cap;
        start.min(self.size)..(start + cap).min(self.size)
    }

    /// The segment holding file offset `offset`.
    pub fn segment_of(&self, offset: u64) -> usize {
        (offset / self.chunk_capacity() as u64) as usize
    }

    /// Bytes of segment `index` that can be non-zero: the rest is padding. Readers that know
    /// this can fetch only a prefix of a data fragment and check it against its hash.
    pub fn used_len(&self, index: usize) -> usize {
        let chunk = self.chunk(index);
        let len = (chunk.end - chunk.start) as usize;
        match self.mode {
            Mode::Plain => len,
            Mode::Encrypted => crypto::HEADER_LEN + len + crypto::TAG_LEN,
            Mode::Blocks => match self.blocks(index) {
                0 => 0,
                n => (n - 1) * crypto::BLOCK_SIZE + self.sealed_block_len(index, n - 1),
            },
        }
    }

    /// Blocks of segment `index` that carry file bytes (format version 3; 0 in other modes).
    pub fn blocks(&self, index: usize) -> usize {
        let chunk = self.chunk(index);
        match self.mode {
            Mode::Blocks => ((chunk.end - chunk.start) as usize).div_ceil(crypto::BLOCK_CAPACITY),
            _ => 0,
        }
    }

    /// The file bytes of block `block` of segment `index`, as offsets in the segment's chunk
    /// (empty past the used blocks).
    pub fn block(&self, index: usize, block: usize) -> Range<usize> {
        let len = (self.chunk(index).end - self.chunk(index).start) as usize;
        let start = (block * crypto::BLOCK_CAPACITY).min(len);
        start..(start + crypto::BLOCK_CAPACITY).min(len)
    }

    /// Bytes of block `block` of segment `index` as sealed: header, ciphertext and tag.
    pub fn sealed_block_len(&self, index: usize, block: usize) -> usize {
        match self.block(index, block).len() {
            0 => 0,
            n => crypto::OVERHEAD + n,
        }
    }
}

fn chunk_capacity(mode: Mode) -> usize {
    match mode {
        Mode::Plain => SEGMENT_SIZE,
        Mode::Encrypted => SEGMENT_SIZE - crypto::OVERHEAD,
        Mode::Blocks => crypto::BLOCKS * crypto::BLOCK_CAPACITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_counts() {
        let seg = SEGMENT_SIZE as u64;
        assert_eq!(Layout::new(0, Mode::Plain), Err(FormatError::EmptyFile));
        assert_eq!(Layout::new(1, Mode::Plain).unwrap().segments(), 1);
        assert_eq!(Layout::new(seg, Mode::Plain).unwrap().segments(), 1);
        assert_eq!(Layout::new(seg + 1, Mode::Plain).unwrap().segments(), 2);
        assert_eq!(Layout::new(seg, Mode::Encrypted).unwrap().segments(), 2);
        let max = Layout::max_size(Mode::Encrypted);
        assert_eq!(Layout::new(max, Mode::Encrypted).unwrap().segments(), MAX_SEGMENTS);
        assert!(matches!(Layout::new(max + 1, Mode::Encrypted), Err(FormatError::TooLarge { .. })));
        let l = Layout::new(seg + 5, Mode::Plain).unwrap();
        assert_eq!(l.chunk(1), seg..seg + 5);
        assert_eq!(l.used_len(1), 5);
        assert_eq!(l.segment_of(seg), 1);
    }

    #[test]
    fn blocks_of_a_segment() {
        let cap = crypto::BLOCK_CAPACITY;
        let l = Layout::new((32 * cap + 5) as u64, Mode::Blocks).unwrap();
        assert_eq!((l.segments(), l.blocks(0), l.blocks(1)), (2, 32, 1));
        assert_eq!(l.used_len(0), SEGMENT_SIZE);
        assert_eq!(l.block(1, 0), 0..5);
        assert_eq!(l.sealed_block_len(1, 0), crypto::OVERHEAD + 5);
        assert_eq!(l.used_len(1), crypto::OVERHEAD + 5);
        assert_eq!(l.block(0, 31), 31 * cap..32 * cap);
        assert_eq!((l.block(1, 1), l.sealed_block_len(1, 1)), (5..5, 0));
        assert_eq!(Mode::of(crypto::FORMAT_V3, true), Mode::Blocks);
        assert_eq!(Mode::of(crypto::FORMAT_V2, true), Mode::Encrypted);
        assert_eq!(Mode::of(crypto::FORMAT_V3, false), Mode::Plain);
        assert!(Layout::max_size(Mode::Blocks) < Layout::max_size(Mode::Encrypted));
    }
}
