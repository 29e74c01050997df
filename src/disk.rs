//! Space on the local disk, as statvfs(3) reports it.

use std::io;
use std::path::Path;

/// statvfs(3) of the file system holding `path`.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statvfs is a valid value for statvfs(3) to fill in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is valid for writes.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Bytes an unprivileged writer can still put on the file system holding `path`.
pub fn available(path: &Path) -> io::Result<u64> {
    statvfs(path).map(|st| st.f_bavail.saturating_mul(st.f_frsize))
}
