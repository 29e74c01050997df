//! Open files: handles, reads and writes, the commits that make them durable, truncation, and
//! poisoning.
//!
//! An inode open at least once has one [`OpenFile`], shared by its handles. Its mode is decided
//! when it is first opened and kept until its last handle closes: either every handle is served
//! by kernel passthrough (whole content, passthrough allowed) or none is, since the kernel
//! refuses to mix the two on one inode.
//!
//! Before the bytes of an existing file change, it is marked open for writing (durably), after
//! its deal's bytes, if a deal is in flight, were set aside (outside every lock). A file whose
//! content could not be made durable (a failed fdatasync: the kernel may have dropped the dirty
//! pages) is poisoned, as fjall and redb do: never uploaded, and writes get EIO until it is
//! removed or rewritten from scratch (`O_TRUNC`, or a truncation to 0).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::cache::{ColdSource, Presence};
use super::{Attr, Caller, Fs, FsError, FsResult, Opened, SetAttr, check_size, content_meta, resolve};
use crate::metrics;
use crate::store::{Batch, InodeRecord, Kind, Timestamp, UploadRecord, UploadState};
use crate::sync::lock;

/// An inode while it has handles.
pub(super) struct OpenFile {
    pub(super) file: Arc<File>,
    pub(super) state: Mutex<OpenState>,
    /// Where missing segments come from, for a file whose content was evicted.
    pub(super) cold: Option<ColdSource>,
    /// Which segments the content file holds.
    pub(super) presence: Mutex<Presence>,
    /// Whether the kernel serves this inode's handles (see the module docs).
    pub(super) passthrough: bool,
    /// Where its readers read, for the read-ahead.
    pub(super) reads: Mutex<super::cache::Sequence>,
}

/// While a file is open, its content file's own size and mtime are the file's: writes (ours or
/// the kernel's, through passthrough), truncates and utimens all land there.
pub(super) struct OpenState {
    pub(super) handles: u32,
    pub(super) writers: u32,
    /// Count of changes to the bytes; `committed` is its value at the last commit.
    pub(super) changes: u64,
    pub(super) committed: u64,
    /// Size and mtime of the content file at the last commit: a passthrough writer's changes
    /// (which the daemon never sees) show up as a difference.
    pub(super) committed_meta: (u64, Timestamp),
    /// The content file was created and its name may not be durable yet.
    pub(super) new_content: bool,
    /// Unlinked while open: removed at the last release.
    pub(super) unlinked: bool,
    /// Why the content may be damaged: writes fail until it is rewritten from scratch.
    pub(super) poisoned: Option<String>,
}

impl OpenFile {
    /// A file just created, empty, with its content file `file`.
    pub(super) fn created(file: Arc<File>, mtime: Timestamp, passthrough: bool) -> OpenFile {
        OpenFile {
            file,
            state: Mutex::new(OpenState {
                handles: 0,
                writers: 0,
                changes: 1,
                committed: 0,
                committed_meta: (0, mtime),
                new_content: true,
                unlinked: false,
                poisoned: None,
            }),
            cold: None,
            presence: Mutex::new(Presence::whole()),
            passthrough,
            reads: Mutex::default(),
        }
    }

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

    /// Fails with why, if the content may be damaged.
    fn check_poison(&self) -> FsResult<()> {
        match &lock(&self.state).poisoned {
            Some(why) => Err(FsError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }
}

/// One open handle.
pub(super) struct Handle {
    pub(super) ino: u64,
    pub(super) write: bool,
}

/// What a commit of a file's content is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// A flush or fsync: writers stay open.
    Durable,
    /// The last writer closes: the open-for-writing mark goes too.
    LastWriter,
}

impl Fs {
    fn handle(&self, fh: u64) -> FsResult<(u64, bool, Arc<OpenFile>)> {
        let handles = lock(&self.handles);
        let h = handles.get(&fh).ok_or(FsError::BadHandle)?;
        let of = self.open_file(h.ino).ok_or(FsError::BadHandle)?;
        if h.write && of.passthrough {
            of.notice_kernel_writes()?;
        }
        Ok((h.ino, h.write, of))
    }

    /// The open file of `fh`, for the cache's reads.
    pub(super) fn handle_file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.handle(fh).map(|(_, _, of)| of)
    }

    pub(super) fn register_handle(&self, ino: u64, of: &Arc<OpenFile>, write: bool) -> Opened {
        {
            let mut st = lock(&of.state);
            st.handles += 1;
            if write {
                st.writers += 1;
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { ino, write });
        Opened { fh, passthrough: of.passthrough.then(|| of.file.clone()) }
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
        let opened = self.open_handle(ino, write, truncate.then_some(0));
        if let Some(fh) = keep {
            self.release(fh)?;
        }
        self.touch(ino);
        opened
    }

    /// The open file of `ino`, made if it has none yet. Called under `ns`.
    fn open_file_locked(&self, ino: u64) -> FsResult<Arc<OpenFile>> {
        if let Some(of) = self.open_file(ino) {
            return Ok(of);
        }
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        match rec.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::File => {}
            // The kernel opens FIFOs, sockets and devices itself.
            _ => return Err(FsError::Invalid),
        }
        let (cold, presence) = self.cold_source(ino)?;
        let file = self.store.open_content(ino)?;
        // utimens of a closed file changes only its record.
        if content_meta(&file)?.1 != rec.mtime {
            file.set_modified(rec.mtime.into())?;
        }
        let passthrough = self.passthrough_for(&presence, rec.perm);
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
                poisoned: self.store.poisoned(ino)?,
            }),
            cold,
            presence: Mutex::new(presence),
            passthrough,
            reads: Mutex::default(),
        });
        lock(&self.open).insert(ino, of.clone());
        Ok(of)
    }

    /// Whether a file opened now is served by passthrough: only whole content may be handed to
    /// the kernel (it reads the content file itself), and not while the disk is down to the
    /// database's reserve (the kernel's writes would not be held back by [`Fs::write`]'s check),
    /// and not with setuid or setgid bits (which writes by others clear: the daemon sees those
    /// writes, the kernel's passthrough does not clear them).
    pub(super) fn passthrough_for(&self, presence: &Presence, perm: u16) -> bool {
        self.passthrough.load(Ordering::Relaxed)
            && presence.is_whole()
            && perm & SUID_SGID == 0
            && !self.store.content_space_exhausted()
    }

    /// Clears setuid, and setgid if group-executable, as a write, truncation or chown by someone
    /// without CAP_FSETID does (the kernel leaves it to the filesystem: `HANDLE_KILLPRIV_V2`).
    pub fn kill_suid_sgid(&self, ino: u64) -> FsResult<()> {
        if self.store.inode(ino)?.is_none_or(|r| r.perm & SUID_SGID == 0) {
            return Ok(());
        }
        let _ns = lock(&self.ns);
        let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        drop_privileges(&mut rec);
        rec.ctime = Timestamp::now();
        let mut batch = Batch::default();
        batch.put_inode(ino, &rec);
        Ok(self.store.commit(batch)?)
    }

    /// Opens a handle of `ino`. A first writer marks the file open for writing, durably, before
    /// its bytes can change; `truncate_to` cuts the content to that size (and a truncation to 0
    /// clears a poisoned file). For a writer, the content up to `truncate_to` (all of it without)
    /// must be present: callers fetch it first.
    fn open_handle(&self, ino: u64, write: bool, truncate_to: Option<u64>) -> FsResult<Opened> {
        let (opened, of, marked) = loop {
            if write && let Some(of) = self.open_file(ino) {
                // The bytes fetched for this writer must be durable before the mark that says
                // the content file is whole (a truncation's mark says so too).
                self.persist_presence(ino, &of)?;
            }
            // A file rewritten from scratch that nobody has open gives its content file to the
            // deal and starts empty (under `ns`, so that no handle opens it meanwhile: renames,
            // no copy); otherwise all of it is copied, outside every lock.
            let from_scratch = write && truncate_to == Some(0) && self.open_file(ino).is_none();
            if write && !from_scratch && self.store.needs_deal_copy(ino)? {
                self.store.set_deal_bytes_aside(ino)?;
            }
            let _ns = lock(&self.ns);
            if from_scratch && self.open_file(ino).is_none() && self.store.needs_deal_copy(ino)? {
                self.store.move_deal_bytes_aside(ino)?;
            }
            let of = self.open_file_locked(ino)?;
            match self.prepare_writer(ino, &of, write, truncate_to) {
                Ok(Some(marked)) => break (self.register_handle(ino, &of, write), of, marked),
                Ok(None) => self.discard_unused(ino, &of),
                Err(e) => {
                    self.discard_unused(ino, &of);
                    return Err(e);
                }
            }
        };
        // The mark is durable before the first byte of an existing file changes, so that a
        // crash never leaves changed bytes behind a record of the old content.
        let prepared = if marked { self.store.sync().map_err(FsError::from) } else { Ok(()) };
        let prepared = prepared.and_then(|()| {
            if let Some(size) = truncate_to {
                // Under the presence lock: a fetch finishing late must not write past the cut.
                {
                    let mut presence = lock(&of.presence);
                    of.file.set_len(size)?;
                    presence.make_whole();
                }
                let mut st = lock(&of.state);
                st.changes += 1;
                if size == 0 {
                    st.poisoned = None;
                }
            }
            Ok(())
        });
        if let Err(e) = prepared {
            let _ = self.release(opened.fh);
            return Err(e);
        }
        Ok(opened)
    }

    /// Checks under `ns` that `of` may take a new handle, and marks a first writer. `None`: the
    /// deal's bytes must be set aside first (outside the lock).
    fn prepare_writer(&self, ino: u64, of: &OpenFile, write: bool, truncate_to: Option<u64>) -> FsResult<Option<bool>> {
        if !write {
            return Ok(Some(false));
        }
        if truncate_to != Some(0) {
            of.check_poison()?;
        }
        if lock(&of.state).writers > 0 {
            return Ok(Some(false));
        }
        if let Some(s) = lock(&of.presence).first_missing_below(truncate_to.unwrap_or(u64::MAX)) {
            return Err(FsError::NotFetched { ino, segment: s });
        }
        if !self.store.begin_write(ino, truncate_to)? {
            return Ok(None);
        }
        if truncate_to.is_some() {
            lock(&of.presence).set_stored_whole();
        }
        Ok(Some(true))
    }

    /// Drops `of` from the open files if no handle took it. Called under `ns`.
    fn discard_unused(&self, ino: u64, of: &Arc<OpenFile>) {
        let mut open = lock(&self.open);
        if lock(&of.state).handles == 0 && open.get(&ino).is_some_and(|o| Arc::ptr_eq(o, of)) {
            open.remove(&ino);
        }
    }

    /// read, for process `reader` (a cold read answers EINTR once that process is being killed).
    pub fn read(&self, fh: u64, offset: u64, size: u32, reader: u32) -> FsResult<Vec<u8>> {
        let (ino, _, of) = self.handle(fh)?;
        let fetched = self.ensure_present(ino, &of, offset..offset.saturating_add(size as u64), Some(reader))?;
        metrics::CACHE_READS.add(if fetched.waited == 0 { "hit" } else { "miss" }, 1);
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
        fetched.fill(offset, &mut buf);
        metrics::READ_BYTES.add(done as u64);
        Ok(buf)
    }

    /// write at `offset`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (_, write, of) = self.handle(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        of.check_poison()?;
        let end = offset + data.len() as u64;
        check_size(end)?;
        self.check_content_space(data.len() as u64)?;
        if let Err(e) = of.file.write_all_at(data, offset) {
            if e.raw_os_error() != Some(libc::ENOSPC) || self.make_cache_room(data.len() as u64, true) == 0 {
                return Err(e.into());
            }
            of.file.write_all_at(data, offset)?;
        }
        lock(&of.state).changes += 1;
        Ok(data.len() as u32)
    }

    /// Refuses new content (ENOSPC) once the disk is down to the database's reserve, unless
    /// evicting cached copies makes room: unlinks and renames need that room to give space back.
    fn check_content_space(&self, incoming: u64) -> FsResult<()> {
        if self.store.content_space_exhausted()
            && (self.make_cache_room(incoming, true) == 0 || self.store.content_space_exhausted())
        {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
        Ok(())
    }

    /// lseek with `SEEK_DATA` or `SEEK_HOLE` (the kernel answers the others): where the content
    /// file has data while it is all here, else where the file's stored data lies (a sparse
    /// file's map), so that `cp` and `tar` copy a sparse file as one.
    pub fn seek_data(&self, fh: u64, offset: i64, whence: i32) -> FsResult<u64> {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(FsError::Invalid);
        }
        let of = self.handle_file(fh)?;
        let size = of.file.metadata()?.len();
        let offset = u64::try_from(offset).ok().filter(|&o| o < size).ok_or(FsError::NoData)?;
        if let Some(found) = lock(&of.presence).seek(offset, whence == libc::SEEK_DATA, size) {
            return found.ok_or(FsError::NoData);
        }
        // SAFETY: lseek on the content file's descriptor, which `of` keeps open; its reads and
        // writes are positional, so moving its offset changes nothing else.
        let r = unsafe { libc::lseek(of.file.as_raw_fd(), offset as i64, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ENXIO) { FsError::NoData } else { e.into() });
        }
        Ok(r as u64)
    }

    /// fallocate: allocate (possibly growing the file), punch holes, zero ranges.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let (_, write, of) = self.handle(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        of.check_poison()?;
        let supported = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !supported != 0 {
            return Err(FsError::Unsupported);
        }
        let end = offset.checked_add(length).ok_or(FsError::Invalid)?;
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            check_size(end)?;
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE == 0 {
            self.check_content_space(length)?;
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
        if write { self.commit_content(ino, &of, Commit::Durable) } else { Ok(()) }
    }

    /// fsync.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let (ino, write, of) = self.handle(fh)?;
        if write { self.commit_content(ino, &of, Commit::Durable) } else { Ok(self.store.sync()?) }
    }

    /// Makes the bytes and size of an open file durable, then its record and upload entry.
    fn commit_content(&self, ino: u64, of: &OpenFile, commit: Commit) -> FsResult<()> {
        let (changes, pending, poisoned) = {
            let st = lock(&of.state);
            (st.changes, st.changes != st.committed || st.new_content, st.poisoned.clone())
        };
        if poisoned.is_some() || !pending {
            if commit == Commit::LastWriter {
                let mut b = Batch::default();
                b.remove_writing(ino);
                self.store.commit(b)?;
            }
            return poisoned.map_or(Ok(()), |why| Err(FsError::Poisoned(why)));
        }
        let new_content = lock(&of.state).new_content;
        if let Err(e) = of.file.sync_data() {
            return Err(self.poison(ino, of, format!("writing its content to disk failed ({e})")));
        }
        if new_content && let Err(e) = self.store.sync_content_dir() {
            return Err(self.poison(ino, of, format!("recording its content file on disk failed ({e})")));
        }
        let meta = {
            let _ns = lock(&self.ns);
            let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
            (rec.size, rec.mtime) = content_meta(&of.file)?;
            rec.ctime = Timestamp::now();
            rec.content_version += 1;
            let mut b = Batch::default();
            b.put_inode(ino, &rec);
            b.remove_poisoned(ino);
            match commit {
                // A truncation the mark recorded is done and made durable now.
                Commit::Durable => b.put_writing(ino, None),
                Commit::LastWriter => b.remove_writing(ino),
            }
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

    /// Poisons `ino` because its content could not be made durable (`why`): it is never
    /// uploaded (its upload fails with `why`; a deal in flight finishes with its set-aside
    /// bytes), and writes get EIO until it is removed or rewritten from scratch.
    fn poison(&self, ino: u64, of: &OpenFile, why: String) -> FsError {
        let why = format!("the local copy may be damaged: {why}; remove the file or rewrite it from scratch");
        log::error!("inode {ino}: {why}");
        lock(&of.state).poisoned = Some(why.clone());
        let recorded = (|| -> FsResult<()> {
            let _ns = lock(&self.ns);
            let mut b = Batch::default();
            b.put_poisoned(ino, &why);
            // An unlinked file's upload was retired with its name: nothing to fail.
            if !lock(&of.state).unlinked {
                let mut up = self.store.upload(ino)?.unwrap_or_else(|| UploadRecord::staged(0));
                if up.state.deal_in_flight() {
                    up.newer = None;
                } else {
                    // The version on chain stays until a good one replaces it or the file goes.
                    if let Some(stored) = up.stored_version() {
                        up.replaces.push(stored.fid);
                        up.previous = Some(stored);
                    }
                    up.state = UploadState::Failed;
                    up.retry_at = None;
                }
                up.error = Some(why.clone());
                up.updated_at = Timestamp::now();
                b.put_upload(ino, &up);
            }
            self.store.commit(b)?;
            Ok(self.store.sync()?)
        })();
        if let Err(e) = recorded {
            log::error!("inode {ino}: recording that its content may be damaged failed: {e}");
        }
        FsError::Poisoned(why)
    }

    /// release: the last handle of an inode closes its content file; an unlinked inode goes.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let handle = lock(&self.handles).remove(&fh).ok_or(FsError::BadHandle)?;
        let ino = handle.ino;
        let of = self.open_file(ino).ok_or(FsError::BadHandle)?;
        let last_writer = handle.write && {
            let mut st = lock(&of.state);
            st.writers -= 1;
            st.writers == 0
        };
        let mut result = Ok(());
        if last_writer {
            if of.passthrough {
                result = of.notice_kernel_writes();
            }
            result = result.and_then(|()| self.commit_content(ino, &of, Commit::LastWriter));
            self.store.ring();
        }
        let last = {
            let mut st = lock(&of.state);
            st.handles -= 1;
            st.handles == 0
        };
        if !last {
            return result;
        }
        // What was fetched is recorded while the file is still open, so that no eviction can
        // come between.
        if let Err(e) = self.persist_presence(ino, &of) {
            log::warn!("inode {ino}: recording its fetched segments: {e}");
        }
        let purge = {
            let _ns = lock(&self.ns);
            let mut open = lock(&self.open);
            let st = lock(&of.state);
            let gone = st.handles == 0 && open.get(&ino).is_some_and(|o| Arc::ptr_eq(o, &of));
            if gone {
                open.remove(&ino);
                lock(&of.presence).close();
                if let (Some(source), Some(cold)) = (&of.cold, &self.cold) {
                    cold.fetcher.abandon(&source.fid(), ino);
                }
            }
            gone && st.unlinked
        };
        if purge {
            self.store.purge(ino)?;
        }
        result
    }

    // ── attributes and truncation ────────────────────────────────────────────────────────

    /// chmod, chown, truncate and utimens. Permission checks are the kernel's
    /// (`default_permissions`).
    pub fn setattr(&self, ino: u64, set: &SetAttr, caller: Caller) -> FsResult<Attr> {
        if let Some(size) = set.size {
            self.truncate(ino, size)?;
        }
        let _ns = lock(&self.ns);
        let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        let now = Timestamp::now();
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
            // As Linux does (since 2.2.13, root included): a chown of anything but a directory
            // drops setuid, and setgid if group-executable.
            if rec.kind != Kind::Dir {
                drop_privileges(&mut rec);
            }
        }
        if set.size.is_some() && set.mode.is_none() && caller.uid != 0 {
            drop_privileges(&mut rec);
        }
        if let Some(t) = set.atime {
            rec.atime = resolve(t);
        }
        if let Some(t) = set.mtime {
            let t = resolve(t);
            rec.mtime = t;
            if let Some(of) = self.open_file(ino) {
                of.file.set_modified(t.into())?;
            }
        }
        rec.ctime = now;
        let mut batch = Batch::default();
        batch.put_inode(ino, &rec);
        self.store.commit(batch)?;
        self.attr_of(ino, &rec)
    }

    /// Truncates or extends `ino` to `size`, as a writer that opens, cuts and closes: durable
    /// on return, and queued for upload. Evicted bytes that stay are fetched first.
    fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        match rec.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::File => {}
            _ => return Err(FsError::Invalid),
        }
        check_size(size)?;
        let keep = self.localize(ino, size)?;
        let result = self.open_handle(ino, true, Some(size)).and_then(|opened| {
            let cut = self.handle_file(opened.fh).and_then(|of| Ok(of.file.set_modified(Timestamp::now().into())?));
            let closed = self.release(opened.fh);
            cut.and(closed)
        });
        if let Some(fh) = keep {
            self.release(fh)?;
        }
        result
    }

    /// The segments of `ino` whose fetched bytes are durable as the content file holds them, and
    /// what still needs fetching (see [`Presence`]). A failed fdatasync forgets what it could
    /// not make durable: those segments are fetched again.
    pub(super) fn persist_presence(&self, ino: u64, of: &OpenFile) -> FsResult<()> {
        let Some(now) = lock(&of.presence).unrecorded() else { return Ok(()) };
        if let Err(e) = of.file.sync_data() {
            lock(&of.presence).forget_unrecorded();
            return Err(e.into());
        }
        let _ns = lock(&self.ns);
        let mut presence = lock(&of.presence);
        // Changed meanwhile (truncated, made whole by a writer's mark): that path records it.
        if presence.unrecorded().as_ref() != Some(&now) || self.store.inode(ino)?.is_none() {
            return Ok(());
        }
        let mut b = Batch::default();
        b.put_residency(ino, now.as_ref());
        self.store.commit(b)?;
        presence.recorded(now);
        Ok(())
    }
}

/// The setuid and setgid bits.
const SUID_SGID: u16 = (libc::S_ISUID | libc::S_ISGID) as u16;

/// Drops setuid, and setgid if the group may execute (else setgid means mandatory locking).
fn drop_privileges(rec: &mut InodeRecord) {
    rec.perm &= !(libc::S_ISUID as u16);
    if rec.perm & 0o010 != 0 {
        rec.perm &= !(libc::S_ISGID as u16);
    }
}
