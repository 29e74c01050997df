use thiserror::Error;

use super::{Hash, MAX_SEGMENTS};

/// Why a file cannot be encoded, or a segment cannot be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// CESS cannot store an empty file.
    #[error("an empty file cannot be stored on CESS")]
    EmptyFile,
    /// The file needs more segments than the chain accepts.
    #[error("a file of {size} bytes needs {segments} segments; CESS takes at most {MAX_SEGMENTS} per file")]
    TooLarge {
        /// File size in bytes.
        size: u64,
        /// Segments it would need.
        segments: u64,
    },
    /// Fewer than 4 fragments of a segment were present and intact.
    #[error("segment {segment}: only {intact} intact fragments of the 4 needed ({corrupt} corrupt, {missing} missing)")]
    TooFewFragments {
        /// Segment index.
        segment: usize,
        /// Fragments whose hash matched.
        intact: usize,
        /// Fragments whose hash did not match.
        corrupt: usize,
        /// Fragments not supplied.
        missing: usize,
    },
    /// The reconstructed segment does not hash to the recorded segment hash.
    #[error("segment {segment}: reconstructed bytes hash to {actual}, expected {expected}")]
    SegmentHash {
        /// Segment index.
        segment: usize,
        /// The recorded hash.
        expected: Hash,
        /// The hash of what was rebuilt.
        actual: Hash,
    },
    /// The segment is not in the encrypted layout this version reads.
    #[error("segment {segment}: not a cessfs encrypted segment (unknown header or format version)")]
    NotEncrypted {
        /// Segment index.
        segment: usize,
    },
    /// Authentication failed: a wrong key, or tampered ciphertext.
    #[error("segment {segment}: decryption failed: wrong key or tampered data")]
    Decrypt {
        /// Segment index.
        segment: usize,
    },
    /// A segment index or buffer that does not fit the file's layout.
    #[error("segment {segment} does not fit a file of {size} bytes")]
    Layout {
        /// Segment index.
        segment: usize,
        /// File size in bytes.
        size: u64,
    },
    /// A packed blob, or a pack's index, did not open: a wrong key, wrong bytes, or no pack.
    #[error("pack: {0}")]
    Pack(String),
}
