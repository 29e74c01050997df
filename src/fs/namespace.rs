//! Names: creating, linking, renaming and removing entries, and directory listings. Each
//! change is one sled batch under `ns`; removing a file's content happens after it, outside.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::cache::Presence;
use super::handles::OpenFile;
use super::{Attr, Caller, DirEntry, Fs, FsError, FsResult, Opened, check_name};
use crate::store::{Batch, DealGuard, InodeRecord, Kind, ROOT_INO, Store, Timestamp, UploadRecord, UploadState};
use crate::sync::lock;

/// Records loaded for one operation, modified in place and written back together, so that an
/// inode touched twice (a rename within one directory) is written once, with both changes.
struct Changes<'a> {
    store: &'a Store,
    records: HashMap<u64, InodeRecord>,
    batch: Batch,
    /// The deal lock, once an upload is retired in this change: held until it is committed.
    deals: Option<DealGuard<'a>>,
}

impl<'a> Changes<'a> {
    fn new(store: &'a Store) -> Self {
        Changes { store, records: HashMap::new(), batch: Batch::default(), deals: None }
    }

    fn get(&mut self, ino: u64) -> FsResult<&mut InodeRecord> {
        match self.records.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                Ok(e.insert(self.store.inode(ino)?.ok_or(FsError::NotFound)?))
            }
        }
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
            key: None,
        }
    }

    fn add_entry(&self, parent: u64, name: &[u8], make: impl FnOnce(&InodeRecord) -> InodeRecord) -> FsResult<Attr> {
        check_name(name)?;
        self.loaded(parent)?;
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

    /// mknod of a FIFO, socket or device node (`mode` says which, with its permissions; `rdev`
    /// a device's number). Regular files are [`Fs::create`]d.
    pub fn mknod(&self, parent: u64, name: &[u8], mode: u32, rdev: u32, caller: Caller) -> FsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => return Err(FsError::Invalid),
        };
        self.add_entry(parent, name, |p| {
            let mut rec = self.new_record(kind, mode, p, name, caller);
            if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
                rec.target = rdev.to_le_bytes().to_vec();
            }
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
        self.loaded(parent)?;
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
            ch.batch.put_writing(ino, None);
        }
        ch.touch_dir(parent, rec.ctime)?;
        let attr = self.attr_of(ino, &rec)?;
        ch.insert(ino, rec.clone());
        if let Err(e) = ch.commit() {
            self.store.remove_content(ino)?;
            return Err(e);
        }
        file.set_modified(rec.mtime.into())?;
        let of = Arc::new(OpenFile::created(file, rec.mtime, self.passthrough_for(&Presence::whole(), rec.perm)));
        lock(&self.open).insert(ino, of.clone());
        let opened = self.register_handle(ino, &of, write);
        Ok((attr, opened))
    }

    /// link: a new name for `ino`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        self.loaded(parent)?;
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
        let store = ch.store;
        let deals = ch.deals.get_or_insert_with(|| store.deals());
        self.store.retire(deals, &mut ch.batch, ino, heir)?;
        if let Some(of) = self.open_file(ino) {
            let mut st = lock(&of.state);
            if st.handles > 0 {
                st.unlinked = true;
                ch.batch.put_orphan(ino);
                return Ok(None);
            }
        }
        ch.forget(ino);
        Ok(Some(ino))
    }

    /// unlink.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.loaded(parent)?;
        let ns = lock(&self.ns);
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
        drop(ns);
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
        self.loaded(parent)?;
        // Whether it is empty is known once it is loaded. One that can never be read (its blob
        // damaged, or its file gone from the chain) is given up whole: what it held cannot be
        // reached, and the tree it keeps from being whole can then be (docs/SEMANTICS.md).
        let mut unreadable = None;
        if let Some((dir, Kind::Dir)) = self.store.lookup(parent, name)? {
            let blob = self.store.pending_dir(dir)?;
            match self.loaded(dir) {
                Err(FsError::TreeNotLoaded(why)) => unreadable = blob.map(|blob| (dir, blob, why)),
                loaded => loaded?,
            }
        }
        let ns = lock(&self.ns);
        let (ino, kind) = self.store.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        if kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        // Still that directory, still on CESS in the blob that could not be read.
        let pending = self.store.pending_dir(ino)?;
        let given_up = unreadable.as_ref().filter(|(dir, blob, _)| *dir == ino && pending == Some(*blob)).map(|u| &u.2);
        if given_up.is_none() && pending.is_some() {
            // Renamed here since the look before: that one is loaded now.
            drop(ns);
            return self.rmdir(parent, name);
        }
        if given_up.is_none() && !self.store.dir_is_empty(ino)? {
            return Err(FsError::NotEmpty);
        }
        let now = Timestamp::now();
        let mut ch = Changes::new(&self.store);
        if let Some(why) = given_up {
            log::warn!(
                "directory {:?} of the restored tree cannot be read ({why}) and was removed: what it held is given up",
                String::from_utf8_lossy(name)
            );
            ch.batch.forget_pending_dir(ino);
        }
        ch.batch.remove_dirent(parent, name);
        ch.touch_dir(parent, now)?;
        ch.get(parent)?.nlink -= 1;
        ch.forget(ino);
        ch.commit()?;
        drop(ns);
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
        self.loaded(parent)?;
        self.loaded(new_parent)?;
        // A directory renamed over must be empty, which is known once it is loaded.
        if let Some((target, Kind::Dir)) = self.store.lookup(new_parent, new_name)? {
            self.loaded(target)?;
        }
        check_name(new_name)?;
        let ns = lock(&self.ns);
        let (src, src_kind) = self.store.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        let dst = self.store.lookup(new_parent, new_name)?;
        if let Some((target, Kind::Dir)) = dst
            && self.store.pending_dir(target)?.is_some()
        {
            // Renamed there since the look before: that one is loaded now.
            drop(ns);
            return self.rename(parent, name, new_parent, new_name, flags);
        }
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
        // A failed upload may have failed for its name: a new name is a new chance. (Renamed
        // over a stored file, its record already carries that file's FIDs in this batch.)
        if let Some(mut up) = self.store.upload_after(&ch.batch, src)?
            && up.state == UploadState::Failed
        {
            let version = up.newer.unwrap_or(up.content_version);
            up = UploadRecord::restaged(Some(up), version);
            ch.batch.put_upload(src, &up);
        }
        ch.commit()?;
        drop(ns);
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

    // ── directories ──────────────────────────────────────────────────────────────────────

    /// opendir: a snapshot of the entries, so offsets stay valid while the directory changes.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        self.loaded(ino)?;
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
}
