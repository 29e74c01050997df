//! Which segments of a file's content are held locally. A file without a residency record is
//! whole on disk (every file that is not yet active is). Once active, its content is a cache: it
//! can be evicted, leaving a sparse content file of the right size and a record saying which
//! segments are present; reads fetch the missing ones from the miners.

use serde::{Deserialize, Serialize};

use super::records::{decode, encode, key};
use super::{Batch, Store, StoreError};

/// The segments of a file present in its content file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residency {
    /// Number of segments of the file.
    pub segments: u32,
    /// One bit per segment.
    present: Vec<u8>,
}

impl Residency {
    /// Nothing present.
    pub fn empty(segments: u32) -> Residency {
        Residency { segments, present: vec![0; (segments as usize).div_ceil(8)] }
    }

    /// Whether segment `i` is present.
    pub fn has(&self, i: usize) -> bool {
        self.present.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Marks segment `i` present.
    pub fn set(&mut self, i: usize) {
        if let Some(b) = self.present.get_mut(i / 8) {
            *b |= 1 << (i % 8);
        }
    }

    /// How many segments are present.
    pub fn count(&self) -> u32 {
        self.present.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether every segment is present.
    pub fn complete(&self) -> bool {
        self.count() >= self.segments
    }
}

impl Batch {
    /// Records which segments of `ino` are present (`None`: all of them).
    pub fn put_residency(&mut self, ino: u64, r: Option<&Residency>) {
        self.1.inodes.push((ino, false));
        match r {
            Some(r) if !r.complete() => self.0.insert(&key::residency(ino), encode(r)),
            _ => self.0.remove(&key::residency(ino)),
        }
    }
}

impl Store {
    /// Which segments of `ino` are present; `None` means the whole content is.
    pub fn residency(&self, ino: u64) -> Result<Option<Residency>, StoreError> {
        self.tree.get(key::residency(ino))?.map(|v| decode(&v, "residency")).transpose()
    }

    /// Every file with missing segments.
    pub fn residencies(&self) -> Result<Vec<(u64, Residency)>, StoreError> {
        self.records_by_ino(key::RESIDENCY_PREFIX, "residency")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let mut r = Residency::empty(10);
        assert!(!r.has(9) && r.count() == 0 && !r.complete());
        for i in 0..10 {
            r.set(i);
        }
        assert!(r.has(9) && r.complete());
        r.set(99);
        assert_eq!(r.count(), 10);
    }
}
