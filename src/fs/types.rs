//! What the filesystem's calls take and return: plain types, free of fuser's.

use std::fs::File;
use std::sync::Arc;

use crate::store::{Kind, Timestamp};

/// How the filesystem is set up.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Whether open files may be served by kernel passthrough (the adapter decides at init).
    pub passthrough: bool,
    /// Most bytes of active files' content to keep cached.
    pub cache_size: u64,
}

/// What `stat` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// A device node's number.
    pub rdev: u32,
    /// Bytes of data it holds (`du`): a regular file's allocated content, or, when it is not
    /// all here, its stored data (a sparse file's data ranges); else its size.
    pub allocated: u64,
}

/// An opened file.
pub struct Opened {
    /// The handle for later calls.
    pub fh: u64,
    /// The content file, when the kernel may serve this handle's reads and writes itself.
    pub passthrough: Option<Arc<File>>,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The entry's inode.
    pub ino: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: Vec<u8>,
}

/// The space of a territory in bytes of file content (the chain charges 3 bytes per byte: 12
/// fragments of which 4 carry data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageSpace {
    /// Bytes bought.
    pub total: u64,
    /// Bytes that can still be stored.
    pub free: u64,
}

/// Space figures for `statfs`.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// A time to set with `utimens`.
#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    /// The current time.
    Now,
    /// This time.
    At(Timestamp),
}

/// The changes of a `setattr`.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// What the snapshot writer tells the filesystem, for `user.cess.snapshot` on the root.
#[derive(Debug, Default)]
pub struct SnapshotFlags {
    /// The store's count of commits that change the tree ([`crate::store::Store::tree_commits`])
    /// up to which the tree is in a snapshot: later ones are changes waiting for the next.
    pub covered: std::sync::atomic::AtomicU64,
    /// Why this mount stopped writing snapshots, if it did.
    pub stopped: std::sync::Mutex<Option<String>>,
    /// Why the restored tree is not swept yet, if it waits for something.
    pub sweep_waits: std::sync::Mutex<Option<String>>,
    /// Why the restored tree's load waits, if it does (a directory that cannot be read now).
    pub load_waits: std::sync::Mutex<Option<String>>,
}

/// Reads the directories of a restored tree still on CESS (store/loading.rs): given by the
/// daemon to a mount whose tree is being loaded.
pub trait TreeLoader: Send + Sync {
    /// Reads the directory of blob `dir` from CESS (blocking: FUSE threads wait on it).
    fn read_dir(&self, dir: &crate::format::TreeRef) -> Result<crate::store::LoadedDir, super::FsError>;
}

/// Collects this tree's garbage on CESS when asked (`user.cess.gc` on the root): the snapshot
/// writer's collector, given by the daemon. Collections run in the background.
pub trait Collector: Send + Sync {
    /// Starts a collection (`dry_run`: lists only); `false` if one is running.
    fn start(&self, dry_run: bool) -> bool;
    /// The last collection: its number (`run`), whether it is `running`, and its report.
    fn state(&self) -> serde_json::Value;
}
