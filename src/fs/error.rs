//! The only place that names an errno.

use std::io;

use thiserror::Error;

use crate::fetch::FetchError;
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
    Fetch(#[from] FetchError),
    /// A directory of a restored tree could not be read from CESS (damaged, or its file gone).
    #[error("a directory of the restored tree cannot be read from CESS: {0}")]
    TreeNotLoaded(String),
    /// Evicted content with nothing on CESS to read it from (the record that says where is gone).
    #[error("inode {0} has evicted content but no active upload to read it from")]
    NotCached(u64),
    /// Evicted content, and this mount has no network to read it from.
    #[error("this mount has no network to read evicted content from")]
    NoNetwork,
    /// Part of the content a writer needs was not fetched.
    #[error("segment {segment} of inode {ino} is not fetched")]
    NotFetched {
        /// The inode.
        ino: u64,
        /// The segment.
        segment: usize,
    },
    /// The content may be damaged (a failed fsync): writes are refused.
    #[error("{0}")]
    Poisoned(String),
    /// Eviction asked for a file whose content is not (only) a cache.
    #[error("cannot evict: {0}")]
    NotEvictable(String),
    /// No data (or no hole) at or after an offset, or an offset past the end (`lseek`).
    #[error("no data past the offset")]
    NoData,
    /// A collection of the tree's garbage runs already.
    #[error("a collection runs already")]
    Busy,
    /// The process waiting for a cold read is being killed (Ctrl-C): answered at once.
    #[error("the reader was interrupted")]
    Interrupted,
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
            FsError::Fetch(_) | FsError::NotCached(_) | FsError::NoNetwork | FsError::NotFetched { .. } => libc::EIO,
            FsError::TreeNotLoaded(_) => libc::EIO,
            FsError::Poisoned(_) => libc::EIO,
            FsError::NotEvictable(_) | FsError::Busy => libc::EBUSY,
            FsError::NoData => libc::ENXIO,
            FsError::Interrupted => libc::EINTR,
            // Disk full and quota pass through; anything else from the disk or sled is EIO.
            FsError::Store(StoreError::Io(e)) => match e.raw_os_error() {
                Some(code @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) => code,
                _ => libc::EIO,
            },
            FsError::Store(
                StoreError::Sled(_)
                | StoreError::Corrupt { .. }
                | StoreError::Poisoned
                | StoreError::BeingDeleted(_)
                | StoreError::MovedOn(_)
                | StoreError::WaitsForLoad,
            ) => libc::EIO,
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
            | FsError::Range
            | FsError::Interrupted => log::Level::Debug,
            FsError::Invalid
            | FsError::NotPermitted
            | FsError::ReadOnlyAttr
            | FsError::AttrTooBig
            | FsError::Unsupported
            | FsError::BadHandle
            | FsError::FileTooBig
            | FsError::NotEvictable(_)
            | FsError::Busy
            | FsError::NoData => log::Level::Info,
            FsError::Store(_)
            | FsError::Fetch(_)
            | FsError::NotCached(_)
            | FsError::NoNetwork
            | FsError::TreeNotLoaded(_)
            | FsError::NotFetched { .. }
            | FsError::Poisoned(_) => log::Level::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Hash;

    /// Every variant, with the errno it must give: a new variant fails to compile here until it
    /// is listed.
    #[test]
    fn errno_table() {
        let io = |code| FsError::from(io::Error::from_raw_os_error(code));
        let cases: Vec<(FsError, i32)> = vec![
            (FsError::NotFound, libc::ENOENT),
            (FsError::Exists, libc::EEXIST),
            (FsError::NotDir, libc::ENOTDIR),
            (FsError::IsDir, libc::EISDIR),
            (FsError::NotEmpty, libc::ENOTEMPTY),
            (FsError::NameTooLong, libc::ENAMETOOLONG),
            (FsError::Invalid, libc::EINVAL),
            (FsError::NotPermitted, libc::EPERM),
            (FsError::ReadOnlyAttr, libc::EPERM),
            (FsError::NoAttr, libc::ENODATA),
            (FsError::Range, libc::ERANGE),
            (FsError::AttrTooBig, libc::E2BIG),
            (FsError::Unsupported, libc::EOPNOTSUPP),
            (FsError::BadHandle, libc::EBADF),
            (FsError::FileTooBig, libc::EFBIG),
            (io(libc::ENOSPC), libc::ENOSPC),
            (io(libc::EDQUOT), libc::EDQUOT),
            (io(libc::EFBIG), libc::EFBIG),
            (io(libc::EACCES), libc::EIO),
            (FsError::Store(StoreError::Poisoned), libc::EIO),
            (FsError::Store(StoreError::Corrupt { what: "inode" }), libc::EIO),
            (FsError::Store(StoreError::BeingDeleted(Hash::default())), libc::EIO),
            (FsError::Fetch(FetchError::NotStored(Hash::default())), libc::EIO),
            (FsError::NotCached(1), libc::EIO),
            (FsError::NoNetwork, libc::EIO),
            (FsError::TreeNotLoaded(String::new()), libc::EIO),
            (FsError::NotFetched { ino: 1, segment: 0 }, libc::EIO),
            (FsError::Poisoned("why".into()), libc::EIO),
            (FsError::NotEvictable("open".into()), libc::EBUSY),
            (FsError::Busy, libc::EBUSY),
            (FsError::NoData, libc::ENXIO),
            (FsError::Interrupted, libc::EINTR),
        ];
        let variants: std::collections::HashSet<_> = cases.iter().map(|(e, _)| std::mem::discriminant(e)).collect();
        assert_eq!(variants.len(), 26, "every variant of FsError is in the table");
        for (e, errno) in &cases {
            assert_eq!(e.errno(), *errno, "{e:?}");
            // Exhaustive: adding a variant breaks this match until the table above lists it.
            match e {
                FsError::NotFound
                | FsError::Exists
                | FsError::NotDir
                | FsError::IsDir
                | FsError::NotEmpty
                | FsError::NameTooLong
                | FsError::Invalid
                | FsError::NotPermitted
                | FsError::ReadOnlyAttr
                | FsError::NoAttr
                | FsError::Range
                | FsError::AttrTooBig
                | FsError::Unsupported
                | FsError::BadHandle
                | FsError::FileTooBig
                | FsError::Store(_)
                | FsError::Fetch(_)
                | FsError::NotCached(_)
                | FsError::TreeNotLoaded(_)
                | FsError::NoNetwork
                | FsError::NotFetched { .. }
                | FsError::Poisoned(_)
                | FsError::NotEvictable(_)
                | FsError::Busy
                | FsError::NoData
                | FsError::Interrupted => {}
            }
        }
    }
}
