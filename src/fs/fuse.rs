//! The kernel side: a thin `fuser::Filesystem` over [`Fs`]. Each callback converts arguments,
//! calls `Fs`, and replies; the only state here is the passthrough backing ids, which are a
//! kernel resource.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags,
    PollNotifier, RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{Attr, Caller, Fs, FsError, NAME_MAX, Opened, SetAttr, TimeSet};
use crate::metrics;
use crate::store::{Kind, Timestamp};
use crate::sync::lock;

/// How long the kernel may cache attributes and entries. Only this daemon changes the tree, and
/// it answers every change, so the kernel's copy stays right; the timeout bounds staleness of
/// the upload status the kernel never caches anyway.
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

/// The FUSE adapter.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    want_passthrough: bool,
    /// The backing id of each passthrough handle. The kernel requires every passthrough open of
    /// an inode to use the same backing file, so handles of one inode share one id, which closes
    /// when the last of them does.
    backing: Mutex<Backing>,
}

#[derive(Default)]
struct Backing {
    by_handle: HashMap<u64, Arc<BackingId>>,
    by_inode: HashMap<u64, std::sync::Weak<BackingId>>,
}

fn errno(e: &FsError, op: &str) -> Errno {
    crate::log_limited!(e.log_level(), &format!("{op}: {e}"), "{op}: {e}");
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.allocated.div_ceil(512),
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from(t)),
    }
}

macro_rules! reply_or {
    ($reply:expr, $op:expr, $result:expr, |$v:pat_param| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(e) => $reply.error(errno(&e, $op)),
        }
    };
}

impl FuseAdapter {
    /// An adapter over `fs`; passthrough is used if wanted and the kernel and privileges allow.
    pub fn new(fs: Arc<Fs>, want_passthrough: bool) -> FuseAdapter {
        FuseAdapter { fs, want_passthrough, backing: Mutex::new(Backing::default()) }
    }

    /// The backing id for passthrough handle `fh` of `ino`: the inode's, or a new one.
    fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        open: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut backing = lock(&self.backing);
        let id = match backing.by_inode.get(&ino).and_then(|w| w.upgrade()) {
            Some(id) => id,
            None => match open() {
                Ok(id) => {
                    let id = Arc::new(id);
                    backing.by_inode.insert(ino, Arc::downgrade(&id));
                    id
                }
                Err(e) => {
                    log::warn!("passthrough refused for inode {ino}, serving it through the daemon: {e}");
                    return None;
                }
            },
        };
        backing.by_handle.insert(fh, id.clone());
        Some(id)
    }

    /// Handle `fh` of `ino` closed: its backing id goes with the inode's last passthrough handle.
    fn drop_backing(&self, ino: u64, fh: u64) {
        let mut backing = lock(&self.backing);
        if backing.by_handle.remove(&fh).is_some() && backing.by_inode.get(&ino).is_some_and(|w| w.strong_count() == 0)
        {
            backing.by_inode.remove(&ino);
        }
    }

    fn entry(&self, reply: ReplyEntry, result: Result<Attr, FsError>, op: &'static str) {
        reply_or!(reply, op, result, |a| reply.entry(&TTL, &file_attr(&a), Generation(0)));
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Without it the kernel asks for security.capability before every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if config.add_capabilities(cap).is_err() {
                log::debug!("kernel lacks {cap:?}");
            }
        }
        // Writes up to 1 MiB per request (the kernel's cap on max_pages).
        let _ = config.set_max_write(MAX_WRITE);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let passthrough = self.want_passthrough
            && root
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        log::info!(
            "open files are served {}",
            if passthrough {
                "by kernel passthrough"
            } else {
                "through the daemon (passthrough needs root and Linux 6.9+)"
            }
        );
        self.fs.set_passthrough(passthrough);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.fsyncdir() {
            log::error!("final metadata flush failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.fs.lookup(parent.0, name.as_bytes()), "lookup");
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_or!(reply, "getattr", self.fs.getattr(ino.0), |a| reply.attr(&TTL, &file_attr(&a)));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr { mode, uid, gid, size, atime: atime.map(time_set), mtime: mtime.map(time_set) };
        reply_or!(reply, "setattr", self.fs.setattr(ino.0, &set, caller(req)), |a| reply.attr(&TTL, &file_attr(&a)));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply_or!(reply, "readlink", self.fs.readlink(ino.0), |t| reply.data(&t));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.entry(reply, self.fs.mkdir(parent.0, name.as_bytes(), mode & !umask, caller(req)), "mkdir");
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_or!(reply, "unlink", self.fs.unlink(parent.0, name.as_bytes()), |()| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_or!(reply, "rmdir", self.fs.rmdir(parent.0, name.as_bytes()), |()| reply.ok());
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let (name, mode) = (name.as_bytes(), mode & !umask);
        if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            // mknod(2) of a regular file: created and closed at once.
            let created = self.fs.create(
                parent.0,
                name,
                mode & 0o7777,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY,
                caller(req),
            );
            let entry = created.and_then(|(attr, opened)| self.fs.release(opened.fh).map(|()| attr));
            return self.entry(reply, entry, "mknod");
        }
        self.entry(reply, self.fs.mknod(parent.0, name, mode, rdev, caller(req)), "mknod");
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = self.fs.symlink(parent.0, link_name.as_bytes(), target.as_os_str().as_bytes(), caller(req));
        self.entry(reply, r, "symlink");
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.fs.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags.bits());
        reply_or!(reply, "rename", r, |()| reply.ok());
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.fs.link(ino.0, newparent.0, newname.as_bytes()), "link");
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened: Opened = match self.fs.open(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(&e, "open")),
        };
        // An O_TRUNC open by someone else than root cuts privileges as a truncation does (the
        // kernel's FUSE_OPEN_KILL_SUIDGID, which fuser does not pass on).
        if flags.0 & libc::O_TRUNC != 0
            && flags.0 & libc::O_ACCMODE != libc::O_RDONLY
            && req.uid() != 0
            && let Err(e) = self.fs.kill_suid_sgid(ino.0)
        {
            let _ = self.fs.release(opened.fh);
            return reply.error(errno(&e, "open"));
        }
        let backing =
            opened.passthrough.as_ref().and_then(|f| self.backing_for(ino.0, opened.fh, || reply.open_backing(&**f)));
        match backing {
            Some(id) => reply.opened_passthrough(FileHandle(opened.fh), FopenFlags::empty(), &id),
            None => reply.opened(FileHandle(opened.fh), FopenFlags::empty()),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (attr, opened) = match self.fs.create(parent.0, name.as_bytes(), mode & !umask, flags, caller(req)) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(&e, "create")),
        };
        let fh = FileHandle(opened.fh);
        let backing = opened
            .passthrough
            .as_ref()
            .and_then(|f| self.backing_for(attr.ino, opened.fh, || reply.open_backing(&**f)));
        match backing {
            Some(id) => reply.created_passthrough(&TTL, &file_attr(&attr), Generation(0), fh, FopenFlags::empty(), &id),
            None => reply.created(&TTL, &file_attr(&attr), Generation(0), fh, FopenFlags::empty()),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply_or!(reply, "read", self.fs.read(fh.0, offset, size, req.pid()), |d| reply.data(&d));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.fs.kill_suid_sgid(ino.0)
        {
            return reply.error(errno(&e, "write"));
        }
        reply_or!(reply, "write", self.fs.write(fh.0, offset, data), |n| reply.written(n));
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply_or!(reply, "flush", self.fs.flush(fh.0), |()| reply.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.fs.release(fh.0);
        self.drop_backing(ino.0, fh.0);
        reply_or!(reply, "release", r, |()| reply.ok());
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_or!(reply, "fsync", self.fs.fsync(fh.0), |()| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply_or!(reply, "opendir", self.fs.opendir(ino.0), |fh| reply.opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.fs.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e, "readdir")),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let entries = match self.fs.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e, "readdirplus")),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            // An entry removed since opendir is skipped.
            let Ok(attr) = self.fs.getattr(e.ino) else { continue };
            let name = OsStr::from_bytes(&e.name);
            if reply.add(INodeNo(e.ino), i as u64 + 1, name, &TTL, &file_attr(&attr), Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_or!(reply, "fsyncdir", self.fs.fsyncdir(), |()| reply.ok());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply_or!(reply, "statfs", self.fs.statfs(), |s| reply.statfs(
            s.blocks,
            s.bfree,
            s.bavail,
            s.files,
            s.ffree,
            s.bsize,
            NAME_MAX as u32,
            s.frsize
        ));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_or!(reply, "setxattr", self.fs.setxattr(ino.0, name.as_bytes(), value, flags), |()| reply.ok());
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_or!(reply, "getxattr", self.fs.getxattr(ino.0, name.as_bytes()), |v| xattr_reply(reply, size, &v));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_or!(reply, "listxattr", self.fs.listxattr(ino.0), |v| xattr_reply(reply, size, &v));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_or!(reply, "removexattr", self.fs.removexattr(ino.0, name.as_bytes()), |()| reply.ok());
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are the kernel's (default_permissions); this is only reached for F_OK.
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_or!(reply, "fallocate", self.fs.fallocate(fh.0, offset, length, mode), |()| reply.ok());
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself).
    fn lseek(&self, _: &Request, _: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        reply_or!(reply, "lseek", self.fs.seek_data(fh.0, offset, whence), |found| reply.offset(found as i64));
    }

    // Requests cessfs does not implement: counted for the metrics, answered ENOSYS. The kernel
    // falls back by itself for copy_file_range and poll.

    fn getlk(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: LockOwner,
        _: u64,
        _: u64,
        _: i32,
        _: u32,
        reply: ReplyLock,
    ) {
        reply.error(unsupported("getlk"));
    }

    #[rustfmt::skip]
    fn setlk(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, _: u64, _: u64, _: i32, _: u32, _: bool, reply: ReplyEmpty) {
        reply.error(unsupported("setlk"));
    }

    fn bmap(&self, _: &Request, _: INodeNo, _: u32, _: u64, reply: ReplyBmap) {
        reply.error(unsupported("bmap"));
    }

    #[rustfmt::skip]
    fn ioctl(&self, _: &Request, _: INodeNo, _: FileHandle, _: IoctlFlags, _: u32, _: &[u8], _: u32, reply: ReplyIoctl) {
        reply.error(unsupported("ioctl"));
    }

    #[rustfmt::skip]
    fn poll(&self, _: &Request, _: INodeNo, _: FileHandle, _: PollNotifier, _: PollEvents, _: PollFlags, reply: ReplyPoll) {
        reply.error(unsupported("poll"));
    }


    #[rustfmt::skip]
    fn copy_file_range(&self, _: &Request, _: INodeNo, _: FileHandle, _: u64, _: INodeNo, _: FileHandle, _: u64, _: u64, _: CopyFileRangeFlags, reply: ReplyWrite) {
        reply.error(unsupported("copy_file_range"));
    }
}

/// Counts a request cessfs does not implement; the errno to answer it with.
fn unsupported(op: &'static str) -> Errno {
    log::debug!("{op}: not implemented");
    metrics::FUSE_UNSUPPORTED.add(op, 1);
    Errno::ENOSYS
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}
