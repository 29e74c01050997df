//! The records the store keeps, and how they are keyed. All records live in one sled tree so that
//! a namespace change (an inode, its directory entries, its upload record) commits atomically in
//! one batch. Keys start with a one-byte prefix; inode numbers are big-endian so scans are ordered.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::format::NodeKey;

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Version byte in front of every encoded record.
const RECORD_VERSION: u8 = 1;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file; its bytes are in a content file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; its target is in the record.
    Symlink,
    /// A named pipe (FIFO): a local object, never uploaded.
    Fifo,
    /// A UNIX socket's name: a local object, never uploaded.
    Socket,
    /// A character device node; its device number is in the record ([`InodeRecord::rdev`]).
    CharDevice,
    /// A block device node; its device number is in the record.
    BlockDevice,
}

impl Kind {
    /// Whether this is a FIFO, socket or device node: an entry with no content of its own.
    pub fn is_special(self) -> bool {
        matches!(self, Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice)
    }
}

/// A point in time with nanoseconds, as POSIX timestamps are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds, 0..1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from(std::time::SystemTime::now())
    }

    /// The time `d` from now.
    pub fn after(d: std::time::Duration) -> Timestamp {
        Timestamp::from(std::time::SystemTime::now() + d)
    }

    /// The time from now until this one, zero if past.
    pub fn remaining(self) -> std::time::Duration {
        std::time::SystemTime::from(self).duration_since(std::time::SystemTime::now()).unwrap_or_default()
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Timestamp {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
                if nanos == 0 {
                    Timestamp { secs: -secs, nanos: 0 }
                } else {
                    Timestamp { secs: -secs - 1, nanos: 1_000_000_000 - nanos }
                }
            }
        }
    }
}

impl From<Timestamp> for std::time::SystemTime {
    fn from(t: Timestamp) -> std::time::SystemTime {
        let base = if t.secs >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.secs as u64)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(t.secs.unsigned_abs())
        };
        base + std::time::Duration::from_nanos(t.nanos as u64)
    }
}

/// Everything `stat` shows about an inode, and a symlink's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits, with setuid, setgid and sticky (no file type bits).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Size in bytes (symlink: target length).
    pub size: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// The parent directory (directories only: they have exactly one).
    pub parent: u64,
    /// A symlink's target; a device node's number (4 bytes, little-endian).
    pub target: Vec<u8>,
    /// Bumped on every change of a regular file's bytes; the upload queue refers to it.
    pub content_version: u64,
    /// The name it was last given (a file's name on chain; hard links share one record).
    pub name: Vec<u8>,
    /// Its id across machines as a restore read it from the tree (`None`: made here, or read
    /// from a tree without keys: [`crate::store::Store::node_key`]). It follows the rest of the
    /// record ([`encode_inode`]).
    #[serde(skip)]
    pub key: Option<NodeKey>,
}

impl InodeRecord {
    /// A device node's number (0 for anything else).
    pub fn rdev(&self) -> u32 {
        match self.kind {
            Kind::CharDevice | Kind::BlockDevice => <[u8; 4]>::try_from(&self.target[..]).map_or(0, u32::from_le_bytes),
            _ => 0,
        }
    }
}

/// Encodes a record with its version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_stdvec(value).expect("records always serialize"));
    out
}

/// Decodes a record written by [`encode`].
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(|_| StoreError::Corrupt { what }),
        _ => Err(StoreError::Corrupt { what }),
    }
}

/// An inode record's bytes: [`encode`] of it, then postcard of its key, an `Option` (records
/// from before keys end without it; a reader from before keys stops before it, and one that
/// writes the record back drops it).
pub fn encode_inode(rec: &InodeRecord) -> Vec<u8> {
    let mut out = encode(rec);
    out.extend(postcard::to_stdvec(&rec.key).expect("keys always serialize"));
    out
}

/// Decodes an inode record written by [`encode_inode`].
pub fn decode_inode(bytes: &[u8]) -> Result<InodeRecord, StoreError> {
    let corrupt = |_| StoreError::Corrupt { what: "inode" };
    let Some((&RECORD_VERSION, rest)) = bytes.split_first() else {
        return Err(StoreError::Corrupt { what: "inode" });
    };
    let (mut rec, rest): (InodeRecord, _) = postcard::take_from_bytes(rest).map_err(corrupt)?;
    if !rest.is_empty() {
        rec.key = postcard::from_bytes(rest).map_err(corrupt)?;
    }
    Ok(rec)
}

/// Key prefixes, one per record type.
pub mod key {
    /// `i` ino → [`InodeRecord`](super::InodeRecord)
    pub fn inode(ino: u64) -> [u8; 9] {
        tagged(b'i', ino)
    }
    /// Prefix of every inode record.
    pub const INODE_PREFIX: &[u8] = b"i";
    /// Prefix of every directory entry.
    pub const DIRENT_PREFIX: &[u8] = b"d";
    /// `d` parent name → child ino and kind
    pub fn dirent(parent: u64, name: &[u8]) -> Vec<u8> {
        let mut k = tagged(b'd', parent).to_vec();
        k.extend_from_slice(name);
        k
    }
    /// All entries of a directory start with this.
    pub fn dirent_prefix(parent: u64) -> [u8; 9] {
        tagged(b'd', parent)
    }
    /// `x` ino name → xattr value
    pub fn xattr(ino: u64, name: &[u8]) -> Vec<u8> {
        let mut k = tagged(b'x', ino).to_vec();
        k.extend_from_slice(name);
        k
    }
    /// All xattrs of an inode start with this.
    pub fn xattr_prefix(ino: u64) -> [u8; 9] {
        tagged(b'x', ino)
    }
    /// `u` ino → upload record (the outbox)
    pub fn upload(ino: u64) -> [u8; 9] {
        tagged(b'u', ino)
    }
    /// Prefix of every upload record.
    pub const UPLOAD_PREFIX: &[u8] = b"u";
    /// `c` ino → residency: which segments of an evicted (or partly fetched) file are present.
    pub fn residency(ino: u64) -> [u8; 9] {
        tagged(b'c', ino)
    }
    /// Prefix of every residency record.
    pub const RESIDENCY_PREFIX: &[u8] = b"c";
    /// `z` fid → tombstone: a FID to delete from the chain.
    pub fn tombstone(fid: &crate::format::Hash) -> Vec<u8> {
        let mut k = vec![b'z'];
        k.extend_from_slice(&fid.0);
        k
    }
    /// Prefix of every tombstone.
    pub const TOMBSTONE_PREFIX: &[u8] = b"z";
    /// `y` fid → () : a deletion of the FID was sent and how it ended is not known yet.
    pub fn deletion_sent(fid: &crate::format::Hash) -> Vec<u8> {
        let mut k = vec![b'y'];
        k.extend_from_slice(&fid.0);
        k
    }
    /// Prefix of every sent-deletion mark.
    pub const DELETION_SENT_PREFIX: &[u8] = b"y";
    /// `a` fid → abandoned deal: a removed file's deal given up for want of local space.
    pub fn abandoned(fid: &crate::format::Hash) -> Vec<u8> {
        let mut k = vec![b'a'];
        k.extend_from_slice(&fid.0);
        k
    }
    /// Prefix of every abandoned deal.
    pub const ABANDONED_PREFIX: &[u8] = b"a";
    /// `l` fid column → placement: where a column of a deal in flight went, and how far.
    pub fn placement(fid: &crate::format::Hash, column: u8) -> Vec<u8> {
        let mut k = placement_prefix(fid);
        k.push(column);
        k
    }
    /// All placements of a deal start with this.
    pub fn placement_prefix(fid: &crate::format::Hash) -> Vec<u8> {
        let mut k = vec![b'l'];
        k.extend_from_slice(&fid.0);
        k
    }
    /// `o` ino → () : unlinked inodes still open when recorded, removed at the next start.
    pub fn orphan(ino: u64) -> [u8; 9] {
        tagged(b'o', ino)
    }
    /// Prefix of every orphan marker.
    pub const ORPHAN_PREFIX: &[u8] = b"o";
    /// `w` ino → () : regular files open for writing; after a crash their content is re-staged.
    pub fn writing(ino: u64) -> [u8; 9] {
        tagged(b'w', ino)
    }
    /// Prefix of every open-for-writing marker.
    pub const WRITING_PREFIX: &[u8] = b"w";
    /// `m` name → value: facts about the data dir (the fingerprint of its key).
    pub fn meta(name: &[u8]) -> Vec<u8> {
        let mut k = vec![b'm'];
        k.extend_from_slice(name);
        k
    }
    /// `s` ino → [`KeptSnapshot`](super::KeptSnapshot): the hidden inodes holding tree snapshots.
    pub fn snapshot(ino: u64) -> [u8; 9] {
        tagged(b's', ino)
    }
    /// Prefix of every snapshot record.
    pub const SNAPSHOT_PREFIX: &[u8] = b"s";
    /// `p` ino → why: files whose content may be damaged (a failed fsync), never uploaded.
    pub fn poisoned(ino: u64) -> [u8; 9] {
        tagged(b'p', ino)
    }

    /// `k` ino → [`PackRecord`](super::PackRecord): the hidden inodes holding packs.
    pub fn pack(ino: u64) -> [u8; 9] {
        tagged(b'k', ino)
    }
    /// Prefix of every pack record.
    pub const PACK_PREFIX: &[u8] = b"k";
    /// `b` pack blob-id → place: the blobs of a pack being filled (its index once sealed).
    pub fn blob(pack: u64, id: &crate::format::Hash) -> Vec<u8> {
        let mut k = tagged(b'b', pack).to_vec();
        k.extend_from_slice(&id.0);
        k
    }
    /// All blobs of a pack being filled start with this.
    pub fn blob_prefix(pack: u64) -> [u8; 9] {
        tagged(b'b', pack)
    }

    /// `t` blob-id → where a directory blob of the tree is (store/dirs.rs).
    pub fn dir_home(id: &crate::format::Hash) -> Vec<u8> {
        let mut k = DIR_HOME_PREFIX.to_vec();
        k.extend_from_slice(&id.0);
        k
    }
    /// Prefix of every directory blob's home.
    pub const DIR_HOME_PREFIX: &[u8] = b"t";

    /// `e` ino → where a directory's blob is, while it is still on CESS (store/loading.rs).
    pub fn pending_dir(ino: u64) -> [u8; 9] {
        tagged(b'e', ino)
    }
    /// Prefix of every directory still on CESS.
    pub const PENDING_DIR_PREFIX: &[u8] = b"e";
    /// `n` tree-wide node id → ino: a hard-linked node of a tree being loaded.
    pub fn loaded_node(tree_id: u64) -> [u8; 9] {
        tagged(b'n', tree_id)
    }
    /// Prefix of every loaded hard-linked node.
    pub const LOADED_NODE_PREFIX: &[u8] = b"n";
    /// `q` fid → () : a FID the loaded part of a tree being loaded refers to.
    pub fn loading_fid(fid: &crate::format::Hash) -> Vec<u8> {
        let mut k = LOADING_FID_PREFIX.to_vec();
        k.extend_from_slice(&fid.0);
        k
    }
    /// Prefix of every FID of a tree being loaded.
    pub const LOADING_FID_PREFIX: &[u8] = b"q";

    fn tagged(tag: u8, ino: u64) -> [u8; 9] {
        let mut k = [tag; 9];
        k[1..].copy_from_slice(&ino.to_be_bytes());
        k
    }

    /// The inode number in a key made by the functions above.
    pub fn ino_of(key: &[u8]) -> Result<u64, super::StoreError> {
        let corrupt = super::StoreError::Corrupt { what: "key" };
        Ok(u64::from_be_bytes(
            key.get(1..9).ok_or(corrupt)?.try_into().map_err(|_| super::StoreError::Corrupt { what: "key" })?,
        ))
    }

    /// The FID in a tombstone or sent-deletion key.
    pub fn fid_of(key: &[u8]) -> Result<crate::format::Hash, super::StoreError> {
        let bytes: [u8; 32] =
            key.get(1..33).and_then(|b| b.try_into().ok()).ok_or(super::StoreError::Corrupt { what: "key" })?;
        Ok(crate::format::Hash(bytes))
    }
}

/// A directory entry's value: the child and its kind.
pub fn encode_dirent(ino: u64, kind: Kind) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&ino.to_be_bytes());
    v[8] = match kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Fifo => 3,
        Kind::Socket => 4,
        Kind::CharDevice => 5,
        Kind::BlockDevice => 6,
    };
    v
}

/// Decodes [`encode_dirent`].
pub fn decode_dirent(v: &[u8]) -> Result<(u64, Kind), StoreError> {
    let corrupt = StoreError::Corrupt { what: "directory entry" };
    if v.len() != 9 {
        return Err(corrupt);
    }
    let kind = match v[8] {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        3 => Kind::Fifo,
        4 => Kind::Socket,
        5 => Kind::CharDevice,
        6 => Kind::BlockDevice,
        _ => return Err(corrupt),
    };
    let ino: [u8; 8] = v[..8].try_into().map_err(|_| StoreError::Corrupt { what: "directory entry" })?;
    Ok((u64::from_be_bytes(ino), kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_before_and_after_epoch() {
        for t in [Timestamp { secs: 5, nanos: 7 }, Timestamp { secs: -5, nanos: 7 }, Timestamp { secs: -1, nanos: 0 }] {
            assert_eq!(Timestamp::from(std::time::SystemTime::from(t)), t);
        }
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = InodeRecord {
            kind: Kind::Symlink,
            perm: 0o777,
            uid: 1,
            gid: 2,
            nlink: 1,
            size: 3,
            atime: Timestamp::now(),
            mtime: Timestamp::now(),
            ctime: Timestamp::now(),
            crtime: Timestamp::now(),
            parent: 0,
            target: b"abc".to_vec(),
            content_version: 0,
            name: b"link".to_vec(),
            key: None,
        };
        assert_eq!(decode_inode(&encode_inode(&r)).unwrap(), r);
        assert!(decode_inode(&[9, 1, 2]).is_err());
        let keyed = InodeRecord { key: Some(NodeKey { origin: [4; 8], serial: 300 }), ..r.clone() };
        let bytes = encode_inode(&keyed);
        assert_eq!(decode_inode(&bytes).unwrap(), keyed);
        assert_eq!(decode::<InodeRecord>(&bytes, "inode").unwrap(), r, "a reader from before keys");
        assert!(decode_inode(&[&encode(&r)[..], &[0xff]].concat()).is_err(), "a damaged key");
        assert_eq!(decode_dirent(&encode_dirent(42, Kind::Dir)).unwrap(), (42, Kind::Dir));
    }
}
