//! Extended attributes: `user.*` are stored like any metadata; `user.cess.*` are cessfs's own,
//! computed from the upload record, listed (so `getfattr -d` shows them) and read-only. Other
//! namespaces (security, trusted, system) have no values here and cannot be set.

use super::{Fs, FsError, FsResult, lock};
use crate::store::{Batch, Kind, Timestamp};

/// The namespace cessfs keeps for itself.
pub const CESS_PREFIX: &[u8] = b"user.cess.";
const USER_PREFIX: &[u8] = b"user.";
/// Largest value Linux accepts.
const XATTR_SIZE_MAX: usize = 64 << 10;
/// Longest name Linux accepts.
const XATTR_NAME_MAX: usize = 255;

impl Fs {
    /// The cessfs attributes of `ino`: empty for anything but a regular file with an upload
    /// record.
    fn cess_attributes(&self, ino: u64) -> FsResult<Vec<(&'static str, String)>> {
        Ok(match self.store.upload(ino)? {
            Some(up) => vec![("user.cess.status", up.state.word().to_string())],
            None => Vec::new(),
        })
    }

    /// getxattr.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if name.starts_with(CESS_PREFIX) {
            return self
                .cess_attributes(ino)?
                .into_iter()
                .find(|(n, _)| n.as_bytes() == name)
                .map(|(_, v)| v.into_bytes())
                .ok_or(FsError::NoAttr);
        }
        self.store.xattr(ino, name)?.ok_or(FsError::NoAttr)
    }

    /// listxattr: NUL-terminated names, cessfs's first.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        let mut out = Vec::new();
        for (name, _) in self.cess_attributes(ino)? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        for name in self.store.xattr_names(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// setxattr, with `XATTR_CREATE` / `XATTR_REPLACE`.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::AttrTooBig);
        }
        if name.starts_with(CESS_PREFIX) {
            return Err(FsError::ReadOnlyAttr);
        }
        if !name.starts_with(USER_PREFIX) || name.len() == USER_PREFIX.len() {
            return Err(FsError::Unsupported);
        }
        let _ns = lock(&self.ns);
        let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if rec.kind == Kind::Symlink {
            // Linux allows user.* only on regular files and directories.
            return Err(FsError::NotPermitted);
        }
        let exists = self.store.xattr(ino, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        rec.ctime = Timestamp::now();
        let mut b = Batch::default();
        b.put_xattr(ino, name, value);
        b.put_inode(ino, &rec);
        Ok(self.store.commit(b)?)
    }

    /// removexattr.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        if name.starts_with(CESS_PREFIX) {
            return Err(FsError::ReadOnlyAttr);
        }
        let _ns = lock(&self.ns);
        let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if self.store.xattr(ino, name)?.is_none() {
            return Err(FsError::NoAttr);
        }
        rec.ctime = Timestamp::now();
        let mut b = Batch::default();
        b.remove_xattr(ino, name);
        b.put_inode(ino, &rec);
        Ok(self.store.commit(b)?)
    }
}
