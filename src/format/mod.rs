//! The CESS data format: what the network stores for a file, and back. Pure: no I/O, no async.
//!
//! A file becomes `segments` of 32 MiB (the last one zero-padded); each segment becomes 12
//! fragments of 8 MiB by Reed-Solomon over GF(2^8) with klauspost's default matrix (4 data
//! fragments, the contiguous quarters of the segment, then 8 parity fragments). Every segment and
//! fragment is named by its SHA-256 in lowercase hex; the file id (FID) is the Go SDK's Merkle root
//! of the segment hashes. In encrypted mode (the default) each segment carries an AES-256-GCM-SIV
//! ciphertext of a slice of the file instead of the raw bytes; see docs/FORMAT.md for the layout.
//!
//! [`Encoder`] and [`FileDecoder`] stream a file segment by segment on all cores, with memory
//! bounded by a few segments. The caller supplies the bytes ([`ChunkSource`]) and consumes the
//! fragments, so this module never touches a file or a socket.

mod crypto;
mod decode;
mod encode;
mod erasure;
mod error;
mod extents;
mod fid;
mod hash;
mod layout;
mod names;
mod pack;
mod snapshot;
mod tree;

pub use crypto::{
    BLOCK_CAPACITY, BLOCK_SIZE, BLOCKS, FORMAT_NEWEST, FORMAT_PLAIN, FORMAT_V1, FORMAT_V2, FORMAT_V3, FileKey,
    MasterKey,
};
pub use decode::{DecodedSegment, FileDecoder, decode_file};
pub use encode::{ChunkSource, EncodedSegment, Encoder, Seed, SharedFragments};
pub use erasure::Erasure;
pub use error::FormatError;
pub use extents::Extents;
pub use fid::merkle_fid;
pub use hash::{Hash, sha256};
pub use layout::{Layout, Mode};
pub use names::{CHAIN_NAME_LEN, NameKey, NameKind, readable_name};
pub use pack::{
    BlobKeys, BlobPlace, MAX_BLOB, MAX_BLOBS, PACK_HEADER_LEN, PackSpace, read_index, read_tree, seal_index, sealed_len,
};
pub use snapshot::{
    Link, Location, Node, NodeKey, NodeKind, Snapshot, SnapshotError, THIS_COMMIT, snapshot_file_len, snapshot_len_of,
};
pub use tree::{
    Ancestry, CHUNK_ABOVE, Dir, DirIds, Entry, Home, OneDir, Root, StoredTree, TREE_FILE_HEADER, TreeFile, TreeRef,
    Unloaded, Written, assemble, one_dir, open_tree_file_root, refs_of, tree_file_header, tree_file_root,
    tree_file_root_place, write_tree,
};

use serde::{Deserialize, Serialize};

/// Bytes in a segment, the unit the network stores (32 MiB).
pub const SEGMENT_SIZE: usize = 32 << 20;
/// Bytes in a fragment (8 MiB).
pub const FRAGMENT_SIZE: usize = 8 << 20;
/// Data fragments per segment.
pub const DATA_FRAGMENTS: usize = 4;
/// Parity fragments per segment.
pub const PARITY_FRAGMENTS: usize = 8;
/// Fragments per segment; fragment `i` of every segment forms column `i`, held by one miner.
pub const FRAGMENTS: usize = DATA_FRAGMENTS + PARITY_FRAGMENTS;
/// Most segments the chain accepts in one file (`SegmentCount`).
pub const MAX_SEGMENTS: usize = 1000;

/// SHA-256 of an all-zero fragment: miners create it themselves and readers never fetch it.
pub const ZERO_FRAGMENT_HASH: Hash = Hash([
    0x2d, 0xae, 0xb1, 0xf3, 0x60, 0x95, 0xb4, 0x4b, 0x31, 0x84, 0x10, 0xb3, 0xf4, 0xe8, 0xb5, 0xd9, 0x89, 0xdc, 0xc7,
    0xbb, 0x02, 0x3d, 0x14, 0x26, 0xc4, 0x92, 0xda, 0xb0, 0xa3, 0x05, 0x3e, 0x74,
]);

/// What one segment is stored as: its hash and the hashes of its 12 fragments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentManifest {
    /// SHA-256 of the 32 MiB segment.
    pub hash: Hash,
    /// SHA-256 of each fragment, data fragments first.
    pub fragments: [Hash; FRAGMENTS],
}

/// What a file is stored as on the network, in the shape of the golden vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    /// The file id.
    pub fid: Hash,
    /// The file's size in bytes (before segmenting and encryption).
    pub size: u64,
    /// Every segment, in order.
    pub segments: Vec<SegmentManifest>,
}

impl FileManifest {
    /// Builds the manifest of a file from its segments, computing the FID.
    pub fn new(size: u64, segments: Vec<SegmentManifest>) -> FileManifest {
        let hashes: Vec<Hash> = segments.iter().map(|s| s.hash).collect();
        FileManifest { fid: merkle_fid(&hashes), size, segments }
    }
}
