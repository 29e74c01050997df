//! POSIX semantics over the local store: synchronous and free of fuser types, so the model
//! tests can drive it without a kernel. `fuse.rs` adapts it to the kernel.
//!
//! Files: `namespace.rs` (names, directories), `handles.rs` (open files: reads, writes, commits,
//! truncation), `cache.rs` (evicted content and its fetching), `xattr.rs`, `space.rs` (statfs
//! and metrics), `types.rs` (what calls take and return), `error.rs` (the one errno table).
//!
//! Durability: `flush` (every `close`) and `fsync` return once the file's bytes and metadata are
//! durable: the content file is fdatasynced, then its record and its upload-queue entry are
//! committed in one sled batch and sled is flushed. Namespace changes are one batch each, durable
//! within the store's flush interval, or at once when a file in them is closed or fsynced. A
//! failed fdatasync poisons that file (`handles.rs`).
//!
//! Locking: `ns` serialises every read-modify-write of records (namespace changes, setattr,
//! commits of file content), and is only ever held for record reads and writes and cheap
//! metadata calls: copies, fsyncs, sled flushes, fetches and removals of content run outside it,
//! and the records are checked again under it afterwards. Data reads and writes of open files
//! take only their `OpenFile`'s locks, never `ns`. Lock order: `ns`, then the `open` map, then an
//! `OpenFile`'s state, then its presence.

mod cache;
mod error;
pub mod fuse;
mod handles;
mod namespace;
mod space;
mod types;
mod xattr;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use cache::ColdReader;
pub use error::FsError;
pub use types::{
    Attr, Caller, Collector, DirEntry, FsConfig, Opened, SetAttr, SnapshotFlags, StatFs, StorageSpace, TimeSet,
    TreeLoader,
};

use crate::format::{Layout, Mode};
use crate::protocol::ChainHealth;
use crate::store::{InodeRecord, Kind, Store, Timestamp};
use crate::sync::lock;
use handles::{Handle, OpenFile};

/// Longest name in a directory.
pub const NAME_MAX: usize = 255;

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

/// The filesystem.
pub struct Fs {
    store: Arc<Store>,
    config: FsConfig,
    ns: Mutex<()>,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// Whether open files may be handed to the kernel (decided at FUSE init).
    passthrough: AtomicBool,
    /// Reads of evicted content from the network (none: evicted content cannot be read).
    cold: Option<Arc<ColdReader>>,
    /// The space of the territory files are stored in, once known.
    storage: Mutex<Option<StorageSpace>>,
    /// Whether the chain answers (for what the upload attributes say).
    chain_health: Option<Arc<ChainHealth>>,
    pushes: Option<Arc<crate::protocol::Pushes>>,
    /// Set when the tree is kept in snapshots.
    snapshots: Option<Arc<SnapshotFlags>>,
    /// The link's pace, on a mount with a network.
    pace: Option<Arc<crate::pace::Pace>>,
    /// Collects the tree's garbage on CESS when asked, on a mount that writes the tree.
    collector: Option<Arc<dyn Collector>>,
    /// Reads directories of a restored tree still on CESS, while it is loaded.
    tree_loader: Option<Arc<dyn TreeLoader>>,
}

/// The one rule for a name in a directory: 1 to 255 bytes, any but `/` and NUL, not `.` or `..`.
fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid);
    }
    Ok(())
}

fn resolve(t: TimeSet) -> Timestamp {
    match t {
        TimeSet::Now => Timestamp::now(),
        TimeSet::At(t) => t,
    }
}

/// Size and mtime of a content file.
fn content_meta(file: &File) -> FsResult<(u64, Timestamp)> {
    let meta = file.metadata()?;
    Ok((meta.len(), meta.modified()?.into()))
}

fn check_size(size: u64) -> FsResult<()> {
    if size > Layout::max_size(Mode::Encrypted) { Err(FsError::FileTooBig) } else { Ok(()) }
}

impl Fs {
    /// The filesystem over `store`.
    pub fn new(store: Arc<Store>, config: FsConfig) -> Fs {
        let passthrough = AtomicBool::new(config.passthrough);
        Fs {
            store,
            config,
            ns: Mutex::new(()),
            open: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough,
            cold: None,
            storage: Mutex::new(None),
            chain_health: None,
            pushes: None,
            snapshots: None,
            pace: None,
            collector: None,
            tree_loader: None,
        }
    }

    /// Lets directories of a restored tree still on CESS be loaded when first used.
    pub fn set_tree_loader(&mut self, loader: Arc<dyn TreeLoader>) {
        self.tree_loader = Some(loader);
    }

    /// Loads directory `ino` if it is still on CESS (a restored tree being loaded): read from
    /// CESS outside `ns`, then written under it. Every call that lists, looks in or changes a
    /// directory calls this first; nothing makes a directory pending again.
    fn loaded(&self, ino: u64) -> FsResult<()> {
        let Some(dir) = self.store.pending_dir(ino)? else { return Ok(()) };
        let loader = self.tree_loader.as_ref().ok_or(FsError::NoNetwork)?;
        let read = loader.read_dir(&dir)?;
        self.apply_loaded_dir(ino, &dir, &read)
    }

    /// Writes directory `ino`, read from its blob `from`, unless it was loaded meanwhile: its
    /// inodes' content files first, outside `ns`, then its records under it.
    pub fn apply_loaded_dir(
        &self,
        ino: u64,
        from: &crate::format::TreeRef,
        read: &crate::store::LoadedDir,
    ) -> FsResult<()> {
        let prepared = self.store.prepare_loaded_dir(read)?;
        let ns = lock(&self.ns);
        let unused = self.store.load_dir(ino, from, read, &prepared);
        drop(ns);
        for ino in unused? {
            self.store.remove_content(ino)?;
        }
        Ok(())
    }

    /// Records the space of the territory files are stored in, which `statfs` reports.
    pub fn set_storage_space(&self, space: StorageSpace) {
        *lock(&self.storage) = Some(space);
    }

    /// Shows the link (`user.cess.link`) and lets the bandwidth limit change
    /// (`user.cess.bwlimit` on the root).
    pub fn set_pace(&mut self, pace: Arc<crate::pace::Pace>) {
        self.pace = Some(pace);
    }

    /// Lets the upload attributes say when the chain does not answer.
    pub fn set_chain_health(&mut self, health: Arc<ChainHealth>) {
        self.chain_health = Some(health);
    }

    /// Lets the upload attributes say how far a push has come.
    pub fn set_pushes(&mut self, pushes: Arc<crate::protocol::Pushes>) {
        self.pushes = Some(pushes);
    }

    /// Runs collections when `user.cess.gc` is set on the root.
    pub fn set_collector(&mut self, collector: Arc<dyn Collector>) {
        self.collector = Some(collector);
    }

    /// Shows the state of the tree's snapshots in `user.cess.snapshot` on the root.
    pub fn set_snapshot_flags(&mut self, flags: Arc<SnapshotFlags>) {
        self.snapshots = Some(flags);
    }

    /// Lets reads fetch evicted content from the network.
    pub fn set_cold_reader(&mut self, cold: ColdReader) {
        self.cold = Some(Arc::new(cold));
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Turns passthrough on or off (the adapter calls this once it knows what the kernel allows).
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    fn attr_of(&self, ino: u64, rec: &InodeRecord) -> FsResult<Attr> {
        let mut attr = Attr {
            ino,
            kind: rec.kind,
            size: rec.size,
            perm: rec.perm,
            nlink: rec.nlink,
            uid: rec.uid,
            gid: rec.gid,
            atime: rec.atime,
            mtime: rec.mtime,
            ctime: rec.ctime,
            crtime: rec.crtime,
            rdev: rec.rdev(),
            allocated: rec.size,
        };
        if let Some(of) = self.open_file(ino) {
            let meta = of.file.metadata()?;
            (attr.size, attr.mtime, attr.allocated) = (meta.len(), meta.modified()?.into(), meta.blocks() * 512);
            if lock(&of.state).unlinked {
                attr.nlink = 0;
            }
        } else if rec.kind == Kind::File {
            attr.allocated =
                std::fs::symlink_metadata(self.store.content_path(ino)).map_or(rec.size, |m| m.blocks() * 512);
        }
        // Not all here (evicted, or being fetched): what it stores.
        if rec.kind == Kind::File
            && self.store.residency(ino)?.is_some()
            && let Some(up) = self.store.upload(ino)?
        {
            attr.allocated = attr.allocated.max(up.object_size());
        }
        Ok(attr)
    }

    fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        lock(&self.open).get(&ino).cloned()
    }

    /// `stat` of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        self.attr_of(ino, &rec)
    }

    /// The child `name` of `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        self.loaded(parent)?;
        let (ino, _) = self.store.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        self.getattr(ino)
    }
}
