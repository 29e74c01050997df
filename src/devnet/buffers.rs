//! Page-aligned, reused buffers for the nodes' fragments, so that a fragment goes to disk by
//! direct I/O: no copy into the page cache, and no fresh memory to fault in per fragment.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;

use crate::format::FRAGMENT_SIZE;

/// The alignment of direct I/O.
pub const ALIGN: usize = 4096;
/// Room for a fragment plus its multipart framing.
pub const CAPACITY: usize = FRAGMENT_SIZE + (64 << 10);

/// A page-aligned buffer of [`CAPACITY`] bytes.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
}

// SAFETY: the buffer is plain owned memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout() -> Layout {
        Layout::from_size_align(CAPACITY, ALIGN).expect("a valid layout")
    }

    fn new() -> AlignedBuf {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(Self::layout()) };
        AlignedBuf { ptr: NonNull::new(ptr).expect("allocation of a fragment buffer") }
    }

    /// The whole buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to CAPACITY initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), CAPACITY) }
    }

    /// The whole buffer, read-only.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), CAPACITY) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

/// A pool of buffers shared by the nodes.
#[derive(Default)]
pub struct Pool(Mutex<Vec<AlignedBuf>>);

impl Pool {
    /// A buffer, recycled if one is free.
    pub fn take(&self) -> AlignedBuf {
        crate::sync::lock(&self.0).pop().unwrap_or_else(AlignedBuf::new)
    }

    /// Gives a buffer back.
    pub fn give(&self, b: AlignedBuf) {
        let mut free = crate::sync::lock(&self.0);
        if free.len() < 32 {
            free.push(b);
        }
    }
}

/// Writes the [`FRAGMENT_SIZE`] bytes of `buf` at `at` (a multiple of [`ALIGN`]) to `path`
/// atomically (temp file, rename), by direct I/O where the file system allows it.
pub fn write_fragment(path: &Path, buf: &AlignedBuf, at: usize) -> std::io::Result<()> {
    debug_assert!(at.is_multiple_of(ALIGN));
    let tmp = path.with_extension("tmp");
    let data = &buf.as_slice()[at..at + FRAGMENT_SIZE];
    let direct =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&tmp);
    let mut file = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => std::fs::File::create(&tmp)?,
        Err(e) => return Err(e),
    };
    file.write_all(data)?;
    std::fs::rename(&tmp, path)
}
