//! The devnet's fragment store: one copy of each fragment's bytes, shared by its nodes, so the
//! embedded network costs about what was stored (the 4 data fragments of a segment), not 12
//! fragments on 16 loopback nodes.
//!
//! Bytes live in `DEVNET/fragments/<hash>`; a node holds a fragment by a hard link to them in its
//! own directory (`<fid dir>/<hash>`), so the link count is the reference count, kept by the file
//! system through crashes; [`FragmentStore::collect`] removes what no node links any more. A
//! parity fragment is held as its segment's data: `<fid dir>/<hash>.parity/` holds links to the 4
//! data fragments and its row, and is computed when served. One pushed before its segment's data
//! fragments are all here is kept whole until they are, or until any 4 fragments of the segment
//! are, which give back the data ([`FragmentStore::rebuild_data`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::{DATA_FRAGMENTS, Erasure, FRAGMENT_SIZE, FRAGMENTS, Hash, PARITY_FRAGMENTS};

/// The store of one devnet.
pub struct FragmentStore {
    dir: PathBuf,
    /// What the disk must keep free: the data dir's database reserve (or none for a devnet of
    /// its own); nodes refuse fragments before it.
    keep_free: u64,
    /// Bytes being written now, counted against the room left until they are on disk.
    writing: Mutex<u64>,
    /// Makes temporary names unique (nodes write the same fragment at once).
    temp: AtomicU64,
}

/// Room taken for bytes being written ([`FragmentStore::take_room`]), given back when dropped.
struct Room<'a> {
    writing: &'a Mutex<u64>,
    bytes: u64,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        *crate::sync::lock(self.writing) -= self.bytes;
    }
}

/// Where a fragment held as parity keeps its row.
const ROW: &str = "row";

/// The name of a fragment held as parity in a node's fid dir.
fn parity_name(hash: &Hash) -> String {
    format!("{}.parity", hash.to_hex())
}

/// What `hash` is in a file of `segments` (each its 12 fragment hashes): `Some((segment, row))`
/// for a parity fragment that is not also a data fragment anywhere in it, `None` otherwise.
pub fn parity_place(segments: &[[Hash; FRAGMENTS]], hash: &Hash) -> Option<(usize, usize)> {
    if segments.iter().any(|s| s[..DATA_FRAGMENTS].contains(hash)) {
        return None;
    }
    segments.iter().enumerate().find_map(|(i, s)| Some((i, s.iter().position(|h| h == hash)?)))
}

impl FragmentStore {
    /// The store in `dir`, stopping `keep_free` bytes short of a full disk.
    pub fn open(dir: &Path, keep_free: u64) -> io::Result<FragmentStore> {
        std::fs::create_dir_all(dir)?;
        Ok(FragmentStore { dir: dir.to_path_buf(), keep_free, writing: Mutex::new(0), temp: AtomicU64::new(0) })
    }

    fn path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    /// Whether the store has the bytes of `hash`.
    pub fn has(&self, hash: &Hash) -> bool {
        self.path(hash).exists()
    }

    /// Takes room for `fragments` more fragments, if they fit beside those being written and
    /// leave the disk what it must keep free.
    fn take_room(&self, fragments: usize) -> Option<Room<'_>> {
        let bytes = (fragments * FRAGMENT_SIZE) as u64;
        let mut writing = crate::sync::lock(&self.writing);
        let free = crate::disk::available(&self.dir).unwrap_or(u64::MAX);
        if free < bytes.saturating_add(*writing).saturating_add(self.keep_free) {
            return None;
        }
        *writing += bytes;
        Some(Room { writing: &self.writing, bytes })
    }

    /// A temporary name beside `path`, unique among concurrent writers.
    fn temp_beside(&self, path: &Path, what: &str) -> PathBuf {
        let n = self.temp.fetch_add(1, Ordering::Relaxed);
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        path.with_file_name(format!("{name}-{n}.{what}"))
    }

    /// Makes `to` a link to the bytes of `hash`, written by `write` (to the path it is given)
    /// if the store has none. `Ok(false)`: the store has none and no room for them.
    pub fn hold(&self, hash: &Hash, to: &Path, write: impl Fn(&Path) -> io::Result<()>) -> io::Result<bool> {
        let path = self.path(hash);
        // The bytes may go between the look and the link (collected as no node held them): they
        // are written again.
        for _ in 0..3 {
            match std::fs::hard_link(&path, to) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let Some(_room) = self.take_room(1) else { return Ok(false) };
            let tmp = self.temp_beside(to, "incoming");
            if let Err(e) = write(&tmp) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            // A link, not a rename: bytes another node stored meanwhile are kept, not replaced by
            // a second copy of the same.
            let linked = std::fs::hard_link(&tmp, &path);
            std::fs::remove_file(&tmp)?;
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("{hash} keeps being collected while stored")))
    }

    /// Holds the parity fragment `hash` (row `row` of a segment whose data fragments are `data`)
    /// in `fid_dir` as links to its segment's data, if the store has them all. Returns whether
    /// it does.
    pub fn hold_as_parity(&self, fid_dir: &Path, hash: &Hash, row: usize, data: &[Hash]) -> io::Result<bool> {
        let target = fid_dir.join(parity_name(hash));
        if target.exists() {
            return Ok(true);
        }
        let tmp = self.temp_beside(&target, "incoming");
        std::fs::create_dir(&tmp)?;
        for (i, d) in data.iter().enumerate() {
            match std::fs::hard_link(self.path(d), tmp.join(i.to_string())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::remove_dir_all(&tmp)?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        let placed = std::fs::write(tmp.join(ROW), row.to_string()).and_then(|()| std::fs::rename(&tmp, &target));
        if placed.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another node's request for the same fragment got there first.
            if target.exists() {
                return Ok(true);
            }
        }
        placed.map(|()| true)
    }

    /// Makes the store hold the 4 data fragments of a segment whose 12 fragment hashes are
    /// `segment`, rebuilt from any 4 of its fragments it has whole (with `incoming`: the bytes
    /// of row `row`, not stored yet). Returns whether it now has them all: a segment pushed
    /// parity first then takes 4 fragments' room, not 12.
    pub fn rebuild_data(&self, segment: &[Hash; FRAGMENTS], incoming: Option<(usize, &[u8])>) -> io::Result<bool> {
        let have_data: [bool; DATA_FRAGMENTS] = std::array::from_fn(|i| self.has(&segment[i]));
        if have_data.iter().all(|h| *h) {
            return Ok(true);
        }
        let missing = have_data.iter().filter(|h| !**h).count();
        let Some(_room) = self.take_room(missing) else { return Ok(false) };
        let mut parity: [Option<Vec<u8>>; PARITY_FRAGMENTS] = Default::default();
        let mut count = have_data.iter().filter(|h| **h).count();
        for (j, slot) in parity.iter_mut().enumerate() {
            if count == DATA_FRAGMENTS {
                break;
            }
            let row = DATA_FRAGMENTS + j;
            *slot = match incoming {
                Some((r, bytes)) if r == row => Some(bytes.to_vec()),
                _ => std::fs::read(self.path(&segment[row])).ok(),
            }
            .filter(|b| b.len() == FRAGMENT_SIZE);
            count += usize::from(slot.is_some());
        }
        if count < DATA_FRAGMENTS {
            return Ok(false);
        }
        let mut data = vec![0u8; DATA_FRAGMENTS * FRAGMENT_SIZE];
        for (i, chunk) in data.chunks_exact_mut(FRAGMENT_SIZE).enumerate().filter(|(i, _)| have_data[*i]) {
            match std::fs::read(self.path(&segment[i])) {
                Ok(bytes) if bytes.len() == FRAGMENT_SIZE => chunk.copy_from_slice(&bytes),
                _ => return Ok(false),
            }
        }
        Erasure::default().reconstruct(&mut data, have_data, &mut parity);
        for (i, chunk) in data.chunks_exact(FRAGMENT_SIZE).enumerate().filter(|(i, _)| !have_data[*i]) {
            if crate::format::sha256(chunk) != segment[i] {
                return Err(io::Error::other(format!("rebuilt data fragment {i} does not hash to {}", segment[i])));
            }
            let tmp = self.temp_beside(&self.path(&segment[i]), "rebuilt");
            if let Err(e) = std::fs::write(&tmp, chunk) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            let linked = std::fs::hard_link(&tmp, self.path(&segment[i]));
            std::fs::remove_file(&tmp)?;
            match linked {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Ok(true)
    }

    /// Removes the bytes no node holds any more. Returns how many fragments went.
    pub fn collect(&self) -> io::Result<usize> {
        use std::os::unix::fs::MetadataExt;
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            // Fragments only: a rebuilt one being written has a name of its own until it is in.
            let fragment = entry.file_name().to_str().is_some_and(|n| n.parse::<Hash>().is_ok());
            if fragment && entry.metadata().is_ok_and(|m| m.nlink() == 1) && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The bytes of fragment `hash` as held in `fid_dir`, if held there (computed, for one held
    /// as parity).
    pub fn read(&self, fid_dir: &Path, hash: &Hash) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(fid_dir.join(hash.to_hex())) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let parity = fid_dir.join(parity_name(hash));
        let row = match std::fs::read_to_string(parity.join(ROW)) {
            Ok(row) => row,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let row = row
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|r| r.checked_sub(DATA_FRAGMENTS))
            .filter(|r| *r < PARITY_FRAGMENTS)
            .ok_or_else(|| io::Error::other(format!("{}: not a parity row", parity.display())))?;
        let mut data = vec![0u8; DATA_FRAGMENTS * FRAGMENT_SIZE];
        for (i, chunk) in data.chunks_exact_mut(FRAGMENT_SIZE).enumerate() {
            let bytes = std::fs::read(parity.join(i.to_string()))?;
            if bytes.len() != FRAGMENT_SIZE {
                return Err(io::Error::other(format!("{}: a data fragment of the wrong size", parity.display())));
            }
            chunk.copy_from_slice(&bytes);
        }
        let mut parities = vec![0u8; PARITY_FRAGMENTS * FRAGMENT_SIZE];
        Erasure::default().encode(&data, &mut parities);
        parities.truncate((row + 1) * FRAGMENT_SIZE);
        Ok(Some(parities.split_off(row * FRAGMENT_SIZE)))
    }
}

/// Whether a node holds fragment `hash` in `fid_dir` (whole, or as parity).
pub fn holds(fid_dir: &Path, hash: &Hash) -> bool {
    fid_dir.join(hash.to_hex()).exists() || fid_dir.join(parity_name(hash)).exists()
}

/// Moves what a node holds of `hash` from `from` to `to` (fid dirs on one file system).
pub fn move_held(from: &Path, to: &Path, hash: &Hash) -> io::Result<()> {
    for name in [hash.to_hex(), parity_name(hash)] {
        let source = from.join(&name);
        if !source.exists() {
            continue;
        }
        if to.join(&name).exists() {
            remove_held(&source)?;
        } else {
            std::fs::rename(&source, to.join(&name))?;
        }
    }
    Ok(())
}

/// Removes one entry of a fid dir: a link, or a parity dir.
fn remove_held(path: &Path) -> io::Result<()> {
    if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }
}
