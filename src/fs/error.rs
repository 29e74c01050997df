//! The only place that names an errno.

use std::io;

use thiserror::Error;

use crate::store::StoreError;

/// Why a filesystem operation failed.
#[derive(Debug, Error)]
pub enum FsError {
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// The name is taken.
    #[error("file exists")]
    Exists,
    /// A directory was needed.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was needed.
    #[error("is a directory")]
    IsDir,
    /// The directory has entries.
    #[error("directory not empty")]
    NotEmpty,
    /// A name longer than 255 bytes.
    #[error("file name too long")]
    NameTooLong,
    /// An argument that makes no sense (a directory moved into itself, an unknown flag).
    #[error("invalid argument")]
    Invalid,
    /// Not allowed for this caller or this kind of inode (hard link to a directory, chown by a
    /// non-owner).
    #[error("operation not permitted")]
    NotPermitted,
    /// `user.cess.*` attributes belong to cessfs.
    #[error("user.cess.* attributes are read-only")]
    ReadOnlyAttr,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoAttr,
    /// The caller's buffer is too small.
    #[error("result too large for the buffer")]
    Range,
    /// An attribute value over 64 KiB.
    #[error("attribute value too large")]
    AttrTooBig,
    /// Not supported by cessfs (documented in docs/SEMANTICS.md).
    #[error("operation not supported")]
    Unsupported,
    /// The file handle is not open (or not for this operation).
    #[error("bad file handle")]
    BadHandle,
    /// Beyond the largest file CESS stores.
    #[error("file too large")]
    FileTooBig,
    /// The local store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Content that is not cached could not be read back from the network.
    #[error("reading from CESS: {0}")]
    Fetch(String),
    /// Eviction asked for a file whose content is not (only) a cache.
    #[error("cannot evict: {0}")]
    NotEvictable(String),
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> FsError {
        FsError::Store(StoreError::Io(e))
    }
}

impl FsError {
    /// The errno the kernel gets.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid => libc::EINVAL,
            FsError::NotPermitted => libc::EPERM,
            FsError::ReadOnlyAttr => libc::EPERM,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::AttrTooBig => libc::E2BIG,
            FsError::Unsupported => libc::EOPNOTSUPP,
            FsError::BadHandle => libc::EBADF,
            FsError::FileTooBig => libc::EFBIG,
            FsError::Fetch(_) => libc::EIO,
            FsError::NotEvictable(_) => libc::EBUSY,
            // Disk full and quota pass through; anything else from the disk or sled is EIO.
            FsError::Store(StoreError::Io(e)) => match e.raw_os_error() {
                Some(code @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) => code,
                _ => libc::EIO,
            },
            FsError::Store(StoreError::Sled(_) | StoreError::Corrupt { .. } | StoreError::Poisoned) => libc::EIO,
        }
    }

    /// How loudly to log it: expected answers are debug, local failures are errors.
    pub fn log_level(&self) -> log::Level {
        match self {
            FsError::NotFound
            | FsError::Exists
            | FsError::NotDir
            | FsError::IsDir
            | FsError::NotEmpty
            | FsError::NameTooLong
            | FsError::NoAttr
            | FsError::Range => log::Level::Debug,
            FsError::Invalid
            | FsError::NotPermitted
            | FsError::ReadOnlyAttr
            | FsError::AttrTooBig
            | FsError::Unsupported
            | FsError::BadHandle
            | FsError::FileTooBig
            | FsError::NotEvictable(_) => log::Level::Info,
            FsError::Store(_) | FsError::Fetch(_) => log::Level::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        assert_eq!(FsError::ReadOnlyAttr.errno(), libc::EPERM);
        assert_eq!(FsError::NoAttr.errno(), libc::ENODATA);
        assert_eq!(FsError::from(io::Error::from_raw_os_error(libc::ENOSPC)).errno(), libc::ENOSPC);
        assert_eq!(FsError::from(io::Error::from_raw_os_error(libc::EACCES)).errno(), libc::EIO);
        assert_eq!(FsError::Store(StoreError::Poisoned).errno(), libc::EIO);
    }
}
