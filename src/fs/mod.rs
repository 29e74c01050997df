//! POSIX semantics over the local store: synchronous and free of fuser types, so the model
//! tests can drive it without a kernel. `fuse.rs` adapts it to the kernel.
//!
//! Durability: `flush` (every `close`) and `fsync` return once the file's bytes and metadata are
//! durable: the content file is fdatasynced, then its record and its upload-queue entry are
//! committed in one sled batch and sled is flushed. Namespace changes are one batch each, durable
//! within sled's flush interval, or at once when a file in them is closed or fsynced.
//!
//! Locking: `ns` serialises every read-modify-write of records (namespace changes, setattr,
//! commits of file content). Data reads and writes of open files take only their `OpenFile`
//! lock, never `ns`. Lock order: `ns`, then the `open` map, then an `OpenFile`'s state.

mod cache;
mod error;
pub mod fuse;
mod xattr;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use cache::ColdReader;
pub use error::FsError;

use crate::format::{Layout, Mode};
use crate::metrics;
use crate::store::{Batch, InodeRecord, Kind, ROOT_INO, Residency, Store, Timestamp, UploadRecord};

/// Longest name in a directory.
pub const NAME_MAX: usize = 255;

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

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

struct OpenFile {
    file: Arc<File>,
    state: Mutex<OpenState>,
    /// Where missing segments come from, for a file whose content was evicted.
    cold: Option<cache::ColdSource>,
    /// The segments present, while some are missing; `None` once the content is whole (or the
    /// file closed: fetches finishing late then leave it alone).
    residency: Mutex<Option<Residency>>,
}

/// While a file is open, its content file's own size and mtime are the file's: writes (ours or
/// the kernel's, through passthrough), truncates and utimens all land there.
struct OpenState {
    handles: u32,
    writers: u32,
    /// Count of changes to the bytes; `committed` is its value at the last commit.
    changes: u64,
    committed: u64,
    /// Size and mtime of the content file at the last commit: a passthrough writer's changes
    /// (which the daemon never sees) show up as a difference.
    committed_meta: (u64, Timestamp),
    /// The content file was created and its name may not be durable yet.
    new_content: bool,
    /// Unlinked while open: removed at the last release.
    unlinked: bool,
}

impl OpenFile {
    /// The kernel writes passthrough handles (and shared mappings, even after the last close)
    /// without telling us: a content file that moved on since the last commit has been written.
    /// Data-dir file systems with multigrain timestamps (ext4, xfs, btrfs on Linux 6.13+) give
    /// every write after a stat a new mtime, so same-size overwrites are seen too.
    fn notice_kernel_writes(&self) -> FsResult<()> {
        let meta = content_meta(&self.file)?;
        let mut st = lock(&self.state);
        if meta != st.committed_meta && st.changes == st.committed {
            st.changes += 1;
        }
        Ok(())
    }
}

struct Handle {
    ino: u64,
    write: bool,
    passthrough: bool,
}

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
    /// When each file was last read or opened, for least-recently-used eviction.
    access: Mutex<HashMap<u64, Instant>>,
    /// The space of the territory files are stored in, once known.
    storage: Mutex<Option<StorageSpace>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

/// Records loaded for one operation, modified in place and written back together, so that an
/// inode touched twice (a rename within one directory) is written once, with both changes.
struct Changes<'a> {
    store: &'a Store,
    records: HashMap<u64, InodeRecord>,
    batch: Batch,
}

impl<'a> Changes<'a> {
    fn new(store: &'a Store) -> Self {
        Changes { store, records: HashMap::new(), batch: Batch::default() }
    }

    fn get(&mut self, ino: u64) -> FsResult<&mut InodeRecord> {
        if !self.records.contains_key(&ino) {
            let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
            self.records.insert(ino, rec);
        }
        Ok(self.records.get_mut(&ino).expect("just inserted"))
    }

    fn dir(&mut self, ino: u64) -> FsResult<&mut InodeRecord> {
        let rec = self.get(ino)?;
        if rec.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(rec)
    }

    fn touch_dir(&mut self, ino: u64, now: Timestamp) -> FsResult<()> {
        let d = self.get(ino)?;
        d.mtime = now;
        d.ctime = now;
        Ok(())
    }

    fn insert(&mut self, ino: u64, rec: InodeRecord) {
        self.records.insert(ino, rec);
    }

    fn forget(&mut self, ino: u64) {
        self.records.remove(&ino);
        self.batch.remove_inode(ino);
    }

    fn commit(mut self) -> FsResult<HashMap<u64, InodeRecord>> {
        for (ino, rec) in &self.records {
            self.batch.put_inode(*ino, rec);
        }
        self.store.commit(self.batch)?;
        Ok(self.records)
    }
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
            access: Mutex::new(HashMap::new()),
            storage: Mutex::new(None),
        }
    }

    /// Records the space of the territory files are stored in, which `statfs` reports.
    pub fn set_storage_space(&self, space: StorageSpace) {
        *lock(&self.storage) = Some(space);
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
        };
        if let Some(of) = self.open_file(ino) {
            (attr.size, attr.mtime) = content_meta(&of.file)?;
            if lock(&of.state).unlinked {
                attr.nlink = 0;
            }
        }
        Ok(attr)
    }

    fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        lock(&self.open).get(&ino).cloned()
    }

    fn handle(&self, fh: u64) -> FsResult<(u64, bool, Arc<OpenFile>)> {
        let handles = lock(&self.handles);
        let h = handles.get(&fh).ok_or(FsError::BadHandle)?;
        let of = self.open_file(h.ino).ok_or(FsError::BadHandle)?;
        if h.write && h.passthrough {
            of.notice_kernel_writes()?;
        }
        Ok((h.ino, h.write, of))
    }

    // ── lookup and attributes ─────────────────────────────────────────────────────────────

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
        let (ino, _) = self.store.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        self.getattr(ino)
    }

    /// chmod, chown, truncate and utimens. Permission checks are the kernel's
    /// (`default_permissions`).
    pub fn setattr(&self, ino: u64, set: &SetAttr, caller: Caller) -> FsResult<Attr> {
        // Evicted bytes that stay in the file must be fetched before its size changes.
        let keep = match set.size {
            Some(size) => self.localize(ino, size)?,
            None => None,
        };
        let result = self.setattr_locked(ino, set, caller);
        if let Some(fh) = keep {
            self.release(fh)?;
        }
        result
    }

    fn setattr_locked(&self, ino: u64, set: &SetAttr, caller: Caller) -> FsResult<Attr> {
        let _ns = lock(&self.ns);
        let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        let now = Timestamp::now();
        let mut batch = Batch::default();
        if let Some(mode) = set.mode {
            rec.perm = (mode & 0o7777) as u16;
        }
        if set.uid.is_some() || set.gid.is_some() {
            if let Some(uid) = set.uid {
                rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
            }
            // As Linux does: a chown drops setuid, and setgid on group-executable files.
            if rec.kind == Kind::File && caller.uid != 0 {
                rec.perm &= !(libc::S_ISUID as u16);
                if rec.perm & 0o010 != 0 {
                    rec.perm &= !(libc::S_ISGID as u16);
                }
            }
        }
        let of = self.open_file(ino);
        if let Some(size) = set.size {
            match rec.kind {
                Kind::Dir => return Err(FsError::IsDir),
                Kind::Symlink => return Err(FsError::Invalid),
                Kind::File => {}
            }
            check_size(size)?;
            match &of {
                // A writer commits the change when it closes.
                Some(of) if lock(&of.state).writers > 0 => {
                    of.file.set_len(size)?;
                    lock(&of.state).changes += 1;
                }
                _ => {
                    self.store.before_content_change(ino)?;
                    let file = match &of {
                        Some(of) => of.file.clone(),
                        None => Arc::new(self.store.open_content(ino)?),
                    };
                    file.set_len(size)?;
                    file.sync_data()?;
                    rec.size = size;
                    rec.mtime = now;
                    rec.content_version += 1;
                    batch.put_upload(ino, &UploadRecord::restaged(self.store.upload(ino)?, rec.content_version));
                    if let Some(of) = &of {
                        file.set_modified(now.into())?;
                        lock(&of.state).committed_meta = content_meta(&file)?;
                        self.mark_whole(ino, of, &mut batch);
                    }
                }
            }
        }
        if let Some(t) = set.atime {
            rec.atime = resolve(t);
        }
        if let Some(t) = set.mtime {
            let t = resolve(t);
            rec.mtime = t;
            if let Some(of) = &of {
                of.file.set_modified(t.into())?;
            }
        }
        rec.ctime = now;
        batch.put_inode(ino, &rec);
        self.store.commit(batch)?;
        self.store.ring();
        self.attr_of(ino, &rec)
    }

    // ── creating and removing names ──────────────────────────────────────────────────────

    fn new_record(&self, kind: Kind, perm: u32, parent: &InodeRecord, name: &[u8], caller: Caller) -> InodeRecord {
        let now = Timestamp::now();
        // A setgid directory hands its group down, and its setgid bit to subdirectories.
        let inherit = parent.perm & libc::S_ISGID as u16 != 0;
        let mut perm = (perm & 0o7777) as u16;
        if inherit && kind == Kind::Dir {
            perm |= libc::S_ISGID as u16;
        }
        InodeRecord {
            kind,
            perm,
            uid: caller.uid,
            gid: if inherit { parent.gid } else { caller.gid },
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: 0,
            target: Vec::new(),
            content_version: 0,
            name: name.to_vec(),
        }
    }

    fn add_entry(&self, parent: u64, name: &[u8], make: impl FnOnce(&InodeRecord) -> InodeRecord) -> FsResult<Attr> {
        check_name(name)?;
        let _ns = lock(&self.ns);
        let mut ch = Changes::new(&self.store);
        let parent_rec = ch.dir(parent)?.clone();
        if self.store.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = self.store.allocate_ino()?;
        let mut rec = make(&parent_rec);
        let now = rec.ctime;
        if rec.kind == Kind::Dir {
            rec.parent = parent;
            ch.get(parent)?.nlink += 1;
        }
        ch.batch.put_dirent(parent, name, ino, rec.kind);
        ch.touch_dir(parent, now)?;
        let attr = self.attr_of(ino, &rec)?;
        ch.insert(ino, rec);
        ch.commit()?;
        Ok(attr)
    }

    /// mkdir.
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, caller: Caller) -> FsResult<Attr> {
        self.add_entry(parent, name, |p| self.new_record(Kind::Dir, mode, p, name, caller))
    }

    /// symlink: `name` in `parent` pointing at `target`.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], caller: Caller) -> FsResult<Attr> {
        if target.len() > libc::PATH_MAX as usize {
            return Err(FsError::NameTooLong);
        }
        self.add_entry(parent, name, |p| {
            let mut rec = self.new_record(Kind::Symlink, 0o777, p, name, caller);
            rec.size = target.len() as u64;
            rec.target = target.to_vec();
            rec
        })
    }

    /// readlink.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if rec.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        Ok(rec.target)
    }

    /// Creates and opens a regular file (O_CREAT). With `exclusive`, an existing name is an error;
    /// without, it opens the existing file.
    pub fn create(&self, parent: u64, name: &[u8], mode: u32, flags: i32, caller: Caller) -> FsResult<(Attr, Opened)> {
        check_name(name)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let guard = lock(&self.ns);
        if let Some((ino, _)) = self.store.lookup(parent, name)? {
            drop(guard);
            if flags & libc::O_EXCL != 0 {
                return Err(FsError::Exists);
            }
            let opened = self.open(ino, flags)?;
            return Ok((self.getattr(ino)?, opened));
        }
        let mut ch = Changes::new(&self.store);
        let parent_rec = ch.dir(parent)?.clone();
        let ino = self.store.allocate_ino()?;
        let rec = self.new_record(Kind::File, mode, &parent_rec, name, caller);
        let file = Arc::new(self.store.create_content(ino)?);
        ch.batch.put_dirent(parent, name, ino, Kind::File);
        if write {
            ch.batch.put_writing(ino);
        }
        ch.touch_dir(parent, rec.ctime)?;
        let attr = self.attr_of(ino, &rec)?;
        ch.insert(ino, rec.clone());
        if let Err(e) = ch.commit() {
            self.store.remove_content(ino)?;
            return Err(e);
        }
        file.set_modified(rec.mtime.into())?;
        let of = Arc::new(OpenFile {
            file,
            state: Mutex::new(OpenState {
                handles: 0,
                writers: 0,
                changes: 1,
                committed: 0,
                committed_meta: (0, rec.mtime),
                new_content: true,
                unlinked: false,
            }),
            cold: None,
            residency: Mutex::new(None),
        });
        lock(&self.open).insert(ino, of.clone());
        let opened = self.register_handle(ino, &of, write);
        Ok((attr, opened))
    }

    /// link: a new name for `ino`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        let _ns = lock(&self.ns);
        let mut ch = Changes::new(&self.store);
        ch.dir(parent)?;
        if self.store.lookup(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let now = Timestamp::now();
        let rec = ch.get(ino)?;
        if rec.kind == Kind::Dir {
            return Err(FsError::NotPermitted);
        }
        rec.nlink += 1;
        rec.ctime = now;
        rec.name = name.to_vec();
        let kind = rec.kind;
        ch.batch.put_dirent(parent, name, ino, kind);
        ch.touch_dir(parent, now)?;
        let records = ch.commit()?;
        self.attr_of(ino, &records[&ino])
    }

    /// Drops one link of a non-directory in `ch`; a file with no link left is removed now, or
    /// at its last close if it is open, and its upload retired (`heir`: the file renamed over
    /// it). Returns the inode to purge after the commit.
    fn drop_link(&self, ch: &mut Changes<'_>, ino: u64, now: Timestamp, heir: Option<u64>) -> FsResult<Option<u64>> {
        let rec = ch.get(ino)?;
        rec.nlink = rec.nlink.saturating_sub(1);
        rec.ctime = now;
        if rec.nlink > 0 {
            return Ok(None);
        }
        if let Some(of) = self.open_file(ino) {
            let mut st = lock(&of.state);
            if st.handles > 0 {
                st.unlinked = true;
                ch.batch.put_orphan(ino);
                self.store.retire(&mut ch.batch, ino, true, heir)?;
                return Ok(None);
            }
        }
        self.store.retire(&mut ch.batch, ino, false, heir)?;
        ch.forget(ino);
        Ok(Some(ino))
    }

    /// unlink.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let _ns = lock(&self.ns);
        let (ino, kind) = self.store.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        if kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let now = Timestamp::now();
        let mut ch = Changes::new(&self.store);
        ch.batch.remove_dirent(parent, name);
        ch.touch_dir(parent, now)?;
        let purge = self.drop_link(&mut ch, ino, now, None)?;
        ch.commit()?;
        self.store.ring();
        if let Some(ino) = purge {
            self.store.purge(ino)?;
        }
        Ok(())
    }

    /// rmdir.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(FsError::Invalid);
        }
        let _ns = lock(&self.ns);
        let (ino, kind) = self.store.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        if kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.store.dir_is_empty(ino)? {
            return Err(FsError::NotEmpty);
        }
        let now = Timestamp::now();
        let mut ch = Changes::new(&self.store);
        ch.batch.remove_dirent(parent, name);
        ch.touch_dir(parent, now)?;
        ch.get(parent)?.nlink -= 1;
        ch.forget(ino);
        ch.commit()?;
        self.store.purge(ino)?;
        Ok(())
    }

    /// Whether directory `dir` is `ancestor` or lies below it.
    fn is_within(&self, mut dir: u64, ancestor: u64) -> FsResult<bool> {
        loop {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.store.inode(dir)?.ok_or(FsError::NotFound)?.parent;
        }
    }

    /// rename, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(&self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32) -> FsResult<()> {
        let (noreplace, exchange) = (flags & libc::RENAME_NOREPLACE != 0, flags & libc::RENAME_EXCHANGE != 0);
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(FsError::Unsupported);
        }
        if noreplace && exchange {
            return Err(FsError::Invalid);
        }
        check_name(new_name)?;
        let _ns = lock(&self.ns);
        let (src, src_kind) = self.store.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let dst = self.store.lookup(new_parent, new_name)?;
        let mut ch = Changes::new(&self.store);
        ch.dir(new_parent)?;
        if src_kind == Kind::Dir && parent != new_parent && self.is_within(new_parent, src)? {
            return Err(FsError::Invalid);
        }
        let now = Timestamp::now();
        let mut purge = None;
        match dst {
            Some((dst, _)) if dst == src => return Ok(()),
            Some((dst, dst_kind)) if exchange => {
                if dst_kind == Kind::Dir && parent != new_parent && self.is_within(parent, dst)? {
                    return Err(FsError::Invalid);
                }
                ch.batch.put_dirent(parent, name, dst, dst_kind);
                ch.batch.put_dirent(new_parent, new_name, src, src_kind);
                self.reparent(&mut ch, src, src_kind, parent, new_parent)?;
                self.reparent(&mut ch, dst, dst_kind, new_parent, parent)?;
                ch.get(dst)?.ctime = now;
            }
            None if exchange => return Err(FsError::NotFound),
            Some(_) if noreplace => return Err(FsError::Exists),
            Some((dst, dst_kind)) => {
                match (src_kind == Kind::Dir, dst_kind == Kind::Dir) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if !self.store.dir_is_empty(dst)? => return Err(FsError::NotEmpty),
                    _ => {}
                }
                if dst_kind == Kind::Dir {
                    ch.get(new_parent)?.nlink -= 1;
                    ch.forget(dst);
                    purge = Some(dst);
                } else {
                    purge = self.drop_link(&mut ch, dst, now, (src_kind == Kind::File).then_some(src))?;
                }
                ch.batch.remove_dirent(parent, name);
                ch.batch.put_dirent(new_parent, new_name, src, src_kind);
                self.reparent(&mut ch, src, src_kind, parent, new_parent)?;
            }
            None => {
                ch.batch.remove_dirent(parent, name);
                ch.batch.put_dirent(new_parent, new_name, src, src_kind);
                self.reparent(&mut ch, src, src_kind, parent, new_parent)?;
            }
        }
        let moved = ch.get(src)?;
        moved.ctime = now;
        moved.name = new_name.to_vec();
        if exchange && let Some((dst, _)) = dst {
            ch.get(dst)?.name = name.to_vec();
        }
        ch.touch_dir(parent, now)?;
        ch.touch_dir(new_parent, now)?;
        // A failed upload may have failed for its name: a new name is a new chance.
        if let Some(mut up) = self.store.upload(src)?
            && up.state == crate::store::UploadState::Failed
        {
            let version = up.content_version;
            up = UploadRecord::restaged(Some(up), version);
            ch.batch.put_upload(src, &up);
        }
        ch.commit()?;
        self.store.ring();
        if let Some(ino) = purge {
            self.store.purge(ino)?;
        }
        Ok(())
    }

    /// Moves directory `ino` from `from` to `to`: its parent pointer and both link counts.
    fn reparent(&self, ch: &mut Changes<'_>, ino: u64, kind: Kind, from: u64, to: u64) -> FsResult<()> {
        if kind == Kind::Dir && from != to {
            ch.get(ino)?.parent = to;
            ch.get(from)?.nlink -= 1;
            ch.get(to)?.nlink += 1;
        }
        Ok(())
    }

    // ── open files ───────────────────────────────────────────────────────────────────────

    fn register_handle(&self, ino: u64, of: &Arc<OpenFile>, write: bool) -> Opened {
        // The kernel reads passthrough files itself: only whole content may be handed over.
        let passthrough = self.passthrough.load(Ordering::Relaxed) && lock(&of.residency).is_none();
        {
            let mut st = lock(&of.state);
            st.handles += 1;
            if write {
                st.writers += 1;
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { ino, write, passthrough });
        Opened { fh, passthrough: passthrough.then(|| of.file.clone()) }
    }

    /// open of a regular file. Writing to a file whose content was evicted fetches it first
    /// (all of it, unless `O_TRUNC` drops it anyway).
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = write && flags & libc::O_TRUNC != 0;
        let keep = match write && !truncate {
            true => self.localize(ino, u64::MAX)?,
            false => None,
        };
        let opened = self.open_locked(ino, write, truncate);
        if let Some(fh) = keep {
            self.release(fh)?;
        }
        self.touch(ino);
        opened
    }

    fn open_locked(&self, ino: u64, write: bool, truncate: bool) -> FsResult<Opened> {
        let _ns = lock(&self.ns);
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        match rec.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::Invalid),
            Kind::File => {}
        }
        let of = match self.open_file(ino) {
            Some(of) => of,
            None => {
                let (cold, residency) = self.cold_source(ino)?;
                let file = self.store.open_content(ino)?;
                // utimens of a closed file changes only its record.
                if content_meta(&file)?.1 != rec.mtime {
                    file.set_modified(rec.mtime.into())?;
                }
                let of = Arc::new(OpenFile {
                    file: Arc::new(file),
                    state: Mutex::new(OpenState {
                        handles: 0,
                        writers: 0,
                        changes: 0,
                        committed: 0,
                        committed_meta: (rec.size, rec.mtime),
                        new_content: false,
                        unlinked: rec.nlink == 0,
                    }),
                    cold,
                    residency: Mutex::new(residency),
                });
                lock(&self.open).insert(ino, of.clone());
                of
            }
        };
        if write && lock(&of.state).writers == 0 {
            self.store.before_content_change(ino)?;
            // The mark must be durable before the first byte of an existing file changes, so that
            // a crash never leaves changed bytes behind a record of the old content.
            let mut b = Batch::default();
            b.put_writing(ino);
            if truncate {
                self.mark_whole(ino, &of, &mut b);
            }
            self.store.commit(b)?;
            self.store.sync()?;
        }
        if truncate {
            of.file.set_len(0)?;
            lock(&of.state).changes += 1;
        }
        Ok(self.register_handle(ino, &of, write))
    }

    /// read.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (ino, _, of) = self.handle(fh)?;
        let fetched = self.ensure_present(ino, &of, offset..offset.saturating_add(size as u64))?;
        metrics::CACHE_READS.add(if fetched == 0 { "hit" } else { "miss" }, 1);
        let len = of.file.metadata()?.len().saturating_sub(offset).min(size as u64) as usize;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match of.file.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        buf.truncate(done);
        metrics::READ_BYTES.add(done as u64);
        Ok(buf)
    }

    /// write at `offset`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (_, write, of) = self.handle(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        let end = offset + data.len() as u64;
        check_size(end)?;
        if let Err(e) = of.file.write_all_at(data, offset) {
            if e.raw_os_error() != Some(libc::ENOSPC) || self.make_cache_room(data.len() as u64, true) == 0 {
                return Err(e.into());
            }
            of.file.write_all_at(data, offset)?;
        }
        lock(&of.state).changes += 1;
        Ok(data.len() as u32)
    }

    /// fallocate: allocate (possibly growing the file), punch holes, zero ranges.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let (_, write, of) = self.handle(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        let supported = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !supported != 0 {
            return Err(FsError::Unsupported);
        }
        let end = offset.checked_add(length).ok_or(FsError::Invalid)?;
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            check_size(end)?;
        }
        // SAFETY: plain syscall on a file descriptor we own for the duration of the call.
        let r = unsafe { libc::fallocate(of.file.as_raw_fd(), mode, offset as i64, length as i64) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EOPNOTSUPP) { FsError::Unsupported } else { e.into() });
        }
        lock(&of.state).changes += 1;
        Ok(())
    }

    /// flush (every close): makes a written file durable and queues it for upload.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let (ino, write, of) = self.handle(fh)?;
        if write { self.commit_content(ino, &of) } else { Ok(()) }
    }

    /// fsync.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let (ino, write, of) = self.handle(fh)?;
        if write { self.commit_content(ino, &of) } else { Ok(self.store.sync()?) }
    }

    /// Makes the bytes and size of an open file durable, then its record and upload entry.
    fn commit_content(&self, ino: u64, of: &OpenFile) -> FsResult<()> {
        let (changes, new_content) = {
            let st = lock(&of.state);
            if st.changes == st.committed && !st.new_content {
                return Ok(());
            }
            (st.changes, st.new_content)
        };
        of.file.sync_data()?;
        if new_content {
            self.store.sync_content_dir()?;
        }
        let meta = {
            let _ns = lock(&self.ns);
            let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
            (rec.size, rec.mtime) = content_meta(&of.file)?;
            rec.ctime = Timestamp::now();
            rec.content_version += 1;
            let mut b = Batch::default();
            b.put_inode(ino, &rec);
            if !lock(&of.state).unlinked {
                b.put_upload(ino, &UploadRecord::restaged(self.store.upload(ino)?, rec.content_version));
            }
            self.store.commit(b)?;
            (rec.size, rec.mtime)
        };
        self.store.sync()?;
        self.store.ring();
        let mut st = lock(&of.state);
        st.committed = st.committed.max(changes);
        st.committed_meta = meta;
        st.new_content = false;
        Ok(())
    }

    /// release: the last handle of an inode closes its content file; an unlinked inode goes.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let handle = lock(&self.handles).remove(&fh).ok_or(FsError::BadHandle)?;
        let of = self.open_file(handle.ino).ok_or(FsError::BadHandle)?;
        let last_writer = handle.write && {
            let mut st = lock(&of.state);
            st.writers -= 1;
            st.writers == 0
        };
        if last_writer {
            if handle.passthrough {
                of.notice_kernel_writes()?;
            }
            self.commit_content(handle.ino, &of)?;
            let mut b = Batch::default();
            b.remove_writing(handle.ino);
            self.store.commit(b)?;
            self.store.ring();
        }
        let _ns = lock(&self.ns);
        let mut open = lock(&self.open);
        let mut st = lock(&of.state);
        st.handles -= 1;
        if st.handles == 0 {
            open.remove(&handle.ino);
            lock(&of.residency).take();
            if st.unlinked {
                drop(st);
                drop(open);
                self.store.purge(handle.ino)?;
            }
        }
        Ok(())
    }

    // ── directories ──────────────────────────────────────────────────────────────────────

    /// opendir: a snapshot of the entries, so offsets stay valid while the directory changes.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if rec.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut entries = vec![
            DirEntry { ino, kind: Kind::Dir, name: b".".to_vec() },
            DirEntry { ino: rec.parent, kind: Kind::Dir, name: b"..".to_vec() },
        ];
        entries.extend(self.store.dir_entries(ino)?.into_iter().map(|(name, ino, kind)| DirEntry { ino, kind, name }));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// The snapshot of an open directory.
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        lock(&self.dirs).get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// releasedir.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// fsyncdir: makes every namespace change durable.
    pub fn fsyncdir(&self) -> FsResult<()> {
        Ok(self.store.sync()?)
    }

    /// statfs: the territory's space once known (what can be stored, bounded by what the staging
    /// disk can take now), else the space of the disk holding the staging area.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let st = self.store.disk_space()?;
        let frsize = st.f_frsize.max(1);
        // Cached copies of active files give their space back on demand.
        let evictable = self.evictable_bytes() / frsize;
        let (local_free, local_avail) = (st.f_bfree + evictable, st.f_bavail + evictable);
        let (blocks, bfree, bavail) = match *lock(&self.storage) {
            Some(space) => {
                let free = space.free / frsize;
                (space.total / frsize, free.min(local_free), free.min(local_avail))
            }
            None => (st.f_blocks, local_free, local_avail),
        };
        Ok(StatFs {
            blocks,
            bfree: bfree.min(blocks),
            bavail: bavail.min(blocks),
            files: st.f_files.max(1 << 20),
            ffree: st.f_ffree.max(1),
            bsize: st.f_bsize as u32,
            frsize: frsize as u32,
        })
    }
}

impl metrics::Gauges for Fs {
    fn render(&self, out: &mut String) {
        let mut per_state: std::collections::BTreeMap<&str, (u64, u64)> = std::collections::BTreeMap::new();
        for (_, up) in self.store.uploads().unwrap_or_default() {
            let entry = per_state.entry(up.state.word()).or_default();
            entry.0 += 1;
            entry.1 += up.size;
        }
        let files: Vec<_> = per_state.iter().map(|(state, (n, _))| (*state, *n)).collect();
        let bytes: Vec<_> = per_state.iter().map(|(state, (_, b))| (*state, *b)).collect();
        metrics::gauge(out, "cessfs_files", "Files by upload state.", "state", &files);
        metrics::gauge(out, "cessfs_file_bytes", "Bytes of files by upload state.", "state", &bytes);
        let cached = [("", self.evictable_bytes())];
        metrics::gauge(out, "cessfs_cache_bytes", "Bytes of stored files cached locally (evictable).", "", &cached);
        let limit = [("", self.config.cache_size)];
        metrics::gauge(out, "cessfs_cache_limit_bytes", "The cache size limit.", "", &limit);
        if let Some(space) = *lock(&self.storage) {
            let total = [("", space.total)];
            metrics::gauge(out, "cessfs_territory_bytes", "The territory's size, in bytes of content.", "", &total);
            let free = [("", space.free)];
            metrics::gauge(out, "cessfs_territory_free_bytes", "What the territory can still take.", "", &free);
        }
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
