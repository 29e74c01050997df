//! Tree snapshots: the whole namespace of a tree (every inode's metadata, every name, where each
//! regular file's bytes are) as one file, stored on CESS like any other (so encrypted with the
//! territory's key) under a snapshot name (`names.rs`).
//!
//! ```text
//! "CFSTREE" 0x01 ‖ le64(n) ‖ n bytes: zstd(postcard(Snapshot)) ‖ zeros
//! ```
//!
//! The zeros fill the file to whole segments (`segments × chunk capacity`), so a reader knows
//! its size from the segment count alone (the chain's declared size is whole segments).

use serde::{Deserialize, Serialize};

use super::Hash;

/// First bytes of a snapshot file: "CFSTREE" and the snapshot format version: 1, or 2 for a
/// tree with sparse files (`Location::Sparse`), which a reader of version 1 cannot read.
const MAGIC: [u8; 8] = *b"CFSTREE\x01";
/// [`MAGIC`] of version 2.
const MAGIC_SPARSE: [u8; 8] = *b"CFSTREE\x02";
/// The largest snapshot decoded (its encoded tree): far above 100,000 files' worth.
pub(super) const MAX_TREE_BYTES: u64 = 1 << 30;

/// File bytes an encrypted segment carries.
const CHUNK: u64 = (super::SEGMENT_SIZE - super::crypto::OVERHEAD) as u64;

/// The size of the snapshot file of `encoded` bytes: whole encrypted segments.
pub fn snapshot_file_len(encoded: u64) -> u64 {
    encoded.div_ceil(CHUNK).max(1) * CHUNK
}

/// The size of a snapshot file stored in `segments` segments.
pub fn snapshot_len_of(segments: usize) -> u64 {
    segments as u64 * CHUNK
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
pub type Time = (i64, u32);

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// Empty: nothing stored.
    Empty,
    /// Stored on CESS under `fid` (the size is the node's).
    Fid {
        /// The file id.
        fid: Hash,
        /// Its encryption format version.
        format: u8,
        /// Its key seed (also in every segment's header); `None`: plaintext layout.
        seed: Option<[u8; 32]>,
    },
    /// Its bytes, in the snapshot itself.
    Inline(Vec<u8>),
    /// A blob in the pack stored on CESS under `fid` (format/pack.rs).
    Packed {
        /// The pack's FID; [`THIS_COMMIT`] in a tree that a commit holds: that commit (it
        /// cannot name its own FID).
        fid: Hash,
        /// The blob's id (its key derives from it).
        id: Hash,
        /// Its first byte in the pack's segment.
        offset: u32,
        /// Its sealed length.
        len: u32,
    },
    /// A sparse file: its data ranges, end to end, stored on CESS under `fid` (format/extents.rs);
    /// the rest of the node's size reads as zeros.
    Sparse {
        /// The file id of its data.
        fid: Hash,
        /// Its encryption format version.
        format: u8,
        /// Its key seed.
        seed: Option<[u8; 32]>,
        /// Where the data lies in the file: `(offset, length)`, sorted, apart.
        extents: Vec<(u64, u64)>,
    },
}

impl Location {
    /// The FID it refers to, if any.
    pub fn fid(&self) -> Option<&Hash> {
        match self {
            Location::Fid { fid, .. } | Location::Packed { fid, .. } | Location::Sparse { fid, .. } => Some(fid),
            Location::Empty | Location::Inline(_) => None,
        }
    }
}

/// The pack FID that stands for the commit holding the tree: all zeros.
pub const THIS_COMMIT: Hash = Hash([0; 32]);

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its number in this snapshot (names refer to it; hard links share it). The root is 1.
    pub id: u64,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits with setuid, setgid and sticky.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last access.
    pub atime: Time,
    /// Last content change.
    pub mtime: Time,
    /// Last status change.
    pub ctime: Time,
    /// Creation.
    pub crtime: Time,
    /// A symlink's target.
    pub target: Vec<u8>,
    /// A device's number.
    pub rdev: u32,
    /// Extended attributes (`user.` ones and the like; none of cessfs's own).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A regular file's bytes.
    pub location: Location,
    /// Its id across machines, where the tree says it ([`NodeKey`]): directory blobs do, whole
    /// snapshots do not.
    #[serde(skip)]
    pub key: Option<NodeKey>,
}

/// A node's id across machines: the data dir that made it (8 bytes drawn with the data dir)
/// and its inode number there. Every name of a node carries it, and a restore keeps it, so a
/// node renamed, moved or restored elsewhere is still known as the same node (a merge of two
/// writers' trees tells a moved node from a new one by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeKey {
    /// The data dir that made the node.
    pub origin: [u8; 8],
    /// Its inode number there.
    pub serial: u64,
}

impl NodeKey {
    /// Every tree's root, whichever data dir holds it (no origin is all zeros).
    pub const ROOT: NodeKey = NodeKey { origin: [0; 8], serial: 1 };
    /// The origin of [`NodeKey::standing_in`] (no data dir draws it).
    pub const STAND_IN: [u8; 8] = [0xff; 8];

    /// What stands in for the key of node `id` of a whole snapshot (which carries no keys) in a
    /// read-only view: its writer's inode number. Never written to CESS, never shown.
    pub fn standing_in(id: u64) -> NodeKey {
        NodeKey { origin: Self::STAND_IN, serial: id }
    }

    /// Whether it is a key of a node, not [`NodeKey::standing_in`] for one.
    pub fn is_key(&self) -> bool {
        self.origin != Self::STAND_IN
    }

    /// The id the names of a hard-linked node with this key share in directory blobs: the
    /// first 8 bytes (little-endian) of SHA-256(origin ‖ le64(serial)), top bit set (ids from
    /// before keys are inode numbers), so the same on every machine.
    pub fn link_id(&self) -> u64 {
        let digest = super::sha256(&[&self.origin[..], &self.serial.to_le_bytes()].concat());
        u64::from_le_bytes(digest.0[..8].try_into().unwrap_or_default()) | 1 << 63
    }

    /// 32 hex characters: the origin, then the serial (big-endian).
    pub fn to_hex(&self) -> String {
        let mut bytes = self.origin.to_vec();
        bytes.extend(self.serial.to_be_bytes());
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Node {
    /// A node of `kind` with nothing set: owned by root, times zero, empty.
    pub fn bare(id: u64, kind: NodeKind) -> Node {
        Node {
            id,
            kind,
            perm: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: 0,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
            crtime: (0, 0),
            target: Vec::new(),
            rdev: 0,
            xattrs: Vec::new(),
            location: Location::Empty,
            key: None,
        }
    }
}

/// One name: `name` in directory `parent` is node `child`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The directory's node.
    pub parent: u64,
    /// The name (1 to 255 bytes, no `/`, no NUL).
    pub name: Vec<u8>,
    /// The node it names.
    pub child: u64,
}

/// A tree at one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its generation: larger is newer; never repeats within a tree.
    pub generation: u64,
    /// The mount that wrote it (a random id per data dir).
    pub writer: [u8; 16],
    /// When it was written.
    pub written_at: Time,
    /// Every inode, the root (id 1) first.
    pub nodes: Vec<Node>,
    /// Every name.
    pub links: Vec<Link>,
    /// The CESS files holding its directory blobs (format/tree.rs), apart from the one holding
    /// its root; none for a tree read from one file. Not part of the encoding.
    #[serde(skip)]
    pub holders: Vec<Hash>,
    /// Directories of a tree being loaded that are not read yet: written where they are.
    /// Not part of the encoding (a whole snapshot has none).
    #[serde(skip)]
    pub unloaded: super::tree::Unloaded,
}

/// Why bytes are not a snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not the snapshot layout, or a version this code does not read.
    #[error("not a cessfs tree snapshot (unknown header or version)")]
    NotASnapshot,
    /// The layout is right but its content does not decode.
    #[error("the tree snapshot is damaged: {0}")]
    Damaged(String),
}

/// `plain` as one zstd frame (whole snapshots and directory blobs).
pub(super) fn zstd(plain: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(plain, ruzstd::encoding::CompressionLevel::Fastest)
}

/// The bytes of zstd frame `packed`, if it holds no more than [`MAX_TREE_BYTES`].
pub(super) fn unzstd(packed: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let decoder = ruzstd::decoding::StreamingDecoder::new(packed).map_err(|e| e.to_string())?;
    let mut plain = Vec::new();
    decoder.take(MAX_TREE_BYTES + 1).read_to_end(&mut plain).map_err(|e| e.to_string())?;
    if plain.len() as u64 > MAX_TREE_BYTES {
        return Err("larger than any tree cessfs writes".into());
    }
    Ok(plain)
}

impl Snapshot {
    /// A tree of `nodes` and `links`, read from one file, all of it loaded.
    pub fn new(generation: u64, writer: [u8; 16], written_at: Time, nodes: Vec<Node>, links: Vec<Link>) -> Snapshot {
        Snapshot { generation, writer, written_at, nodes, links, holders: Vec::new(), unloaded: Default::default() }
    }

    /// The snapshot file's bytes, before padding to whole segments.
    pub fn encode(&self) -> Vec<u8> {
        let packed = zstd(&postcard::to_stdvec(self).expect("snapshots always serialize"));
        let mut out = Vec::with_capacity(16 + packed.len());
        let sparse = self.nodes.iter().any(|n| matches!(n.location, Location::Sparse { .. }));
        out.extend_from_slice(if sparse { &MAGIC_SPARSE } else { &MAGIC });
        out.extend_from_slice(&(packed.len() as u64).to_le_bytes());
        out.extend_from_slice(&packed);
        out
    }

    /// Reads a snapshot file (padding included).
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let rest = bytes
            .strip_prefix(&MAGIC[..])
            .or_else(|| bytes.strip_prefix(&MAGIC_SPARSE[..]))
            .ok_or(SnapshotError::NotASnapshot)?;
        let len = rest.get(..8).and_then(|l| l.try_into().ok()).map(u64::from_le_bytes);
        let packed = len
            .and_then(|n| rest.get(8..8usize.checked_add(usize::try_from(n).ok()?)?))
            .ok_or_else(|| SnapshotError::Damaged("shorter than its length says".into()))?;
        let tree = unzstd(packed).map_err(SnapshotError::Damaged)?;
        let snapshot: Snapshot = postcard::from_bytes(&tree).map_err(|e| SnapshotError::Damaged(e.to_string()))?;
        snapshot.check()?;
        Ok(snapshot)
    }

    /// The tree a commit of FID `commit` holds, its blobs named by that FID.
    pub fn resolve_commit(self, commit: Hash) -> Snapshot {
        self.with_pack_renamed(THIS_COMMIT, commit)
    }

    /// The tree with the blobs of pack `from` named as pack `to`'s.
    pub fn with_pack_renamed(mut self, from: Hash, to: Hash) -> Snapshot {
        for n in &mut self.nodes {
            if let Location::Packed { fid, .. } = &mut n.location
                && *fid == from
            {
                *fid = to;
            }
        }
        self
    }

    /// Whether the tree refers to blobs of the commit holding it.
    pub fn refers_to_its_commit(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.location, Location::Packed { fid: THIS_COMMIT, .. }))
    }

    /// Checks what a restore relies on: the root first, unique ids, names that POSIX allows
    /// between nodes that exist, directories as parents.
    pub(crate) fn check(&self) -> Result<(), SnapshotError> {
        let bad = |what: &str| Err(SnapshotError::Damaged(what.to_string()));
        let mut kinds = std::collections::HashMap::new();
        for n in &self.nodes {
            if kinds.insert(n.id, n.kind).is_some() {
                return bad("two nodes with one id");
            }
            if let Location::Sparse { extents, .. } = &n.location
                && super::Extents::new(extents.clone(), n.size).is_none_or(|e| e.data_len() == 0)
            {
                return bad("a sparse file whose data ranges are not sorted, apart and within its size");
            }
        }
        if self.nodes.first().map(|n| (n.id, n.kind)) != Some((1, NodeKind::Dir)) {
            return bad("the root is not the first node");
        }
        let mut linked = std::collections::HashMap::new();
        for l in &self.links {
            *linked.entry(l.child).or_insert(0u32) += 1;
        }
        for n in &self.nodes[1..] {
            match linked.get(&n.id) {
                None => return bad("a node without a name"),
                Some(&count) if count > 1 && n.kind == NodeKind::Dir => return bad("a directory with two names"),
                _ => {}
            }
        }
        for l in &self.links {
            if l.name.is_empty() || l.name.len() > 255 || l.name.iter().any(|&b| b == b'/' || b == 0) {
                return bad("a name POSIX does not allow");
            }
            if matches!(&l.name[..], b"." | b"..") || l.child == 1 {
                return bad("a link to the root or a dot name");
            }
            if kinds.get(&l.parent) != Some(&NodeKind::Dir) || !kinds.contains_key(&l.child) {
                return bad("a name in no directory, or of no node");
            }
        }
        let mut names = std::collections::HashSet::new();
        if !self.links.iter().all(|l| names.insert((l.parent, &l.name[..]))) {
            return bad("one name twice in a directory");
        }
        // Every node hangs from the root (no directory cycles).
        let mut children: std::collections::HashMap<u64, Vec<u64>> = std::collections::HashMap::new();
        for l in &self.links {
            children.entry(l.parent).or_default().push(l.child);
        }
        let mut reached = std::collections::HashSet::from([1u64]);
        let mut stack = vec![1u64];
        while let Some(dir) = stack.pop() {
            for &c in children.get(&dir).into_iter().flatten() {
                if reached.insert(c) {
                    stack.push(c);
                }
            }
        }
        if reached.len() != kinds.len() {
            return bad("a node the root does not reach");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, kind: NodeKind, location: Location) -> Node {
        Node {
            id,
            kind,
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            size: 3,
            atime: (1, 2),
            mtime: (-5, 999_999_999),
            ctime: (3, 4),
            crtime: (5, 6),
            target: Vec::new(),
            rdev: 0,
            xattrs: vec![(b"user.tag".to_vec(), b"v".to_vec())],
            location,
            key: None,
        }
    }

    fn sample() -> Snapshot {
        let fid = Location::Fid { fid: Hash([9; 32]), format: 2, seed: Some([3; 32]) };
        Snapshot::new(
            7,
            [1; 16],
            (1_800_000_000, 0),
            vec![
                node(1, NodeKind::Dir, Location::Empty),
                node(2, NodeKind::File, fid),
                node(3, NodeKind::File, Location::Inline(b"abc".to_vec())),
            ],
            vec![
                Link { parent: 1, name: "长名字".repeat(20).into_bytes(), child: 2 },
                Link { parent: 1, name: b"hard".to_vec(), child: 2 },
                Link { parent: 1, name: b"x".to_vec(), child: 3 },
            ],
        )
    }

    #[test]
    fn a_snapshot_round_trips_through_its_padded_file() {
        let s = sample();
        let mut bytes = s.encode();
        bytes.resize(bytes.len() + 1000, 0);
        assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let bytes = sample().encode();
        assert_eq!(Snapshot::decode(b"CFSTREE\x03"), Err(SnapshotError::NotASnapshot));
        for cut in [0, 8, 12, 16, bytes.len() - 1] {
            assert!(Snapshot::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 16..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let _ = Snapshot::decode(&b);
        }
        let mut s = sample();
        s.links.push(Link { parent: 2, name: b"in a file".to_vec(), child: 3 });
        assert!(Snapshot::decode(&s.encode()).is_err());
        let mut s = sample();
        s.links[0].name = b"a/b".to_vec();
        assert!(Snapshot::decode(&s.encode()).is_err());
        let mut s = sample();
        s.links[1].name = s.links[0].name.clone();
        assert!(Snapshot::decode(&s.encode()).is_err(), "one name twice");
        let mut s = sample();
        s.nodes.push(node(4, NodeKind::Dir, Location::Empty));
        s.nodes.push(node(5, NodeKind::Dir, Location::Empty));
        s.links.push(Link { parent: 4, name: b"b".to_vec(), child: 5 });
        s.links.push(Link { parent: 5, name: b"a".to_vec(), child: 4 });
        assert!(Snapshot::decode(&s.encode()).is_err(), "a cycle apart from the root");
    }
}
