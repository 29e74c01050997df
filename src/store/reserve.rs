//! The database's reserve. sled refuses every call, reads too, from its first failed write until
//! it is reopened, so a full disk must never reach it: a full data dir would then refuse the
//! very unlinks, renames and truncations that give space back. Two things keep room for it:
//! - its log file has blocks allocated past its end (`fallocate` with `KEEP_SIZE`), as many as
//!   the reserve's size, topped up now and then: its appends land there and need no new blocks,
//!   so writers that nothing can hold back (kernel passthrough) cannot take them;
//! - while the disk has room, the data dir holds `DATA/reserve`, a file of [`Reserve::size`]
//!   allocated bytes, released before sled writes once free space falls below a low mark, for
//!   whatever else sled writes (its snapshots). It is made again once there is room for it
//!   several times over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::disk;

/// Below this much free space, the reserve is released before the database writes.
const LOW: u64 = 8 << 20;

/// The reserve file and whether it is in place.
pub(super) struct Reserve {
    /// The data dir.
    dir: PathBuf,
    path: PathBuf,
    size: u64,
    held: AtomicBool,
}

impl Reserve {
    /// The reserve of the data dir `dir`: 1/64 of its disk, between 4 and 64 MiB. Made now if
    /// there is room for it.
    pub(super) fn open(dir: &Path) -> Reserve {
        let path = dir.join("reserve");
        let held = std::fs::metadata(&path).is_ok();
        let size = size_for(dir);
        let reserve = Reserve { dir: dir.to_path_buf(), path, size, held: AtomicBool::new(held) };
        reserve.before_write();
        reserve.refill();
        reserve
    }

    /// Called before the database writes: releases the reserve if the disk is nearly full.
    pub(super) fn before_write(&self) {
        if !self.held.load(Ordering::Relaxed) {
            return;
        }
        let Ok(free) = disk::available(&self.dir) else { return };
        if free < LOW && self.held.swap(false, Ordering::AcqRel) {
            match std::fs::remove_file(&self.path) {
                Ok(()) => log::warn!(
                    "the disk holding {} is full: released its {} MiB reserve so that removing files \
                     can give space back",
                    self.dir.display(),
                    self.size >> 20
                ),
                Err(e) => log::error!("releasing {}: {e}", self.path.display()),
            }
        }
    }

    /// Whether new file content must wait: the reserve is released and what is free is no more
    /// than it and the low mark, which are the database's.
    pub(super) fn holds_back_content(&self) -> bool {
        !self.held.load(Ordering::Relaxed) && disk::available(&self.dir).is_ok_and(|free| free < self.size + LOW)
    }

    /// Whether `len` more bytes fit and leave the database a reserve's room. A few bytes that
    /// a truncation needs (`essential`: at most 1 MiB) may use it.
    pub(super) fn has_room_for(&self, len: u64, essential: bool) -> bool {
        if essential && len <= 1 << 20 {
            return true;
        }
        let room = if self.held.load(Ordering::Relaxed) { LOW } else { self.size + LOW };
        disk::available(&self.dir).map_or(true, |free| free >= len.saturating_add(room))
    }

    /// Keeps blocks allocated past the end of the database's log file `log` (see the module
    /// docs). A disk too full for them keeps what is there.
    pub(super) fn keep_room_after(&self, log: &Path) {
        use std::os::fd::AsRawFd;
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(log) else { return };
        let Ok(len) = f.metadata().map(|m| m.len()) else { return };
        // SAFETY: fallocate on a descriptor we own; KEEP_SIZE changes neither size nor content.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, len as i64, self.size as i64) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            crate::log_limited!(log::Level::Debug, "log room", "keeping room after {}: {e}", log.display());
        }
    }

    /// Makes the reserve again if it is released and the disk has room for it four times over.
    pub(super) fn refill(&self) {
        if self.held.load(Ordering::Relaxed) || disk::available(&self.dir).map_or(true, |f| f < 4 * self.size + LOW) {
            return;
        }
        match allocate(&self.path, self.size) {
            Ok(()) => {
                self.held.store(true, Ordering::Release);
                log::info!("made the {} MiB reserve {}", self.size >> 20, self.path.display());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                crate::log_limited!(log::Level::Warn, "reserve", "making {}: {e}", self.path.display());
            }
        }
    }
}

/// The reserve's size for a data dir `dir`: 1/64 of its disk, between 4 and 64 MiB.
fn size_for(dir: &Path) -> u64 {
    let total = disk::statvfs(dir).map(|st| st.f_blocks.saturating_mul(st.f_frsize)).unwrap_or(0);
    (total / 64).clamp(4 << 20, 64 << 20)
}

/// What the database of a data dir `dir` keeps free on its disk (its reserve and the low mark):
/// other writers there (the embedded devnet's nodes) stop before it.
pub fn kept_free(dir: &Path) -> u64 {
    size_for(dir) + LOW
}

/// Creates `path` with `size` bytes allocated on disk (not a hole: a hole frees nothing).
fn allocate(path: &Path, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // SAFETY: fallocate on a descriptor we own, for the duration of the call.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as i64) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    f.sync_all()
}
