//! An in-memory index of the upload and residency records, built by one scan at open and kept
//! exact on every write of those records (they are written under its lock), so that no
//! per-event work grows with the number of files: FIDs to inodes, the cached bytes of stored
//! files and their least-recently-used order, counts and bytes by upload state, and the inodes
//! whose upload changed since the engine last looked.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{PackedBlob, Residency, Timestamp, UploadRecord, UploadState};
use crate::format::Hash;

/// What the catalog keeps of one inode with an upload record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    state: UploadState,
    size: u64,
    fid: Option<Hash>,
    retired: bool,
    /// Bytes of content cached locally, for an active file (others are not a cache).
    cached: u64,
    /// Its place in the eviction order, if it has cached bytes.
    order: Option<Order>,
    /// The older FIDs it keeps until its newer version is active.
    replaces: Vec<Hash>,
    /// Its blob, if packed.
    blob: Option<PackedBlob>,
}

/// Least recently used first: files not used since the mount (as old as their upload), then
/// by last use.
type Order = (bool, i128, u64);

/// Bytes of a file's content held locally.
pub fn resident_bytes(size: u64, segments: u32, residency: Option<&Residency>) -> u64 {
    match residency {
        None => size,
        Some(r) => (size.saturating_mul(r.count() as u64)).div_ceil(segments.max(1) as u64).min(size),
    }
}

fn nanos(t: Timestamp) -> i128 {
    t.secs as i128 * 1_000_000_000 + t.nanos as i128
}

const STATES: [UploadState; 9] = [
    UploadState::Staged,
    UploadState::Encoding,
    UploadState::Declared,
    UploadState::Pushing,
    UploadState::Confirming,
    UploadState::Active,
    UploadState::Failed,
    UploadState::Local,
    UploadState::Packed,
];

fn state_index(s: UploadState) -> usize {
    STATES.iter().position(|x| *x == s).unwrap_or(0)
}

/// The index. See the module docs.
#[derive(Default)]
pub(super) struct Catalog {
    entries: HashMap<u64, Entry>,
    by_fid: HashMap<Hash, Vec<u64>>,
    /// Older FIDs records keep until their newer version is active (`replaces`), and how many.
    replaced: HashMap<Hash, usize>,
    order: BTreeSet<Order>,
    /// Last use of files used since the mount.
    used: HashMap<u64, i128>,
    cached: u64,
    states: [(u64, u64); 9],
    changed: HashSet<u64>,
    /// Files by the id of their blob (equal contents are packed once).
    blobs: HashMap<Hash, HashSet<u64>>,
    /// Files waiting in each pack (by the pack's hidden inode).
    packed: HashMap<u64, HashSet<u64>>,
    /// Stored packs by FID: the files in them, and the sealed bytes those take.
    live: HashMap<Hash, (HashSet<u64>, u64)>,
    /// FIDs whose deletion from the chain is under way (`Store::claim_deletion`).
    deleting: HashSet<Hash>,
    /// Inodes whose upload record cannot be read: the FIDs they need are not known.
    unreadable: HashSet<u64>,
    /// FIDs an upload is about to take as stored (`Store::pin_fid`), and how many times.
    pinned: HashMap<Hash, usize>,
}

impl Catalog {
    /// Records what the store now holds for `ino`: its upload record and its residency.
    pub(super) fn refresh(&mut self, ino: u64, up: Option<&UploadRecord>, residency: Option<&Residency>) {
        let new = up.map(|u| {
            let stored = u.state == UploadState::Active && !u.retired;
            let cached = if stored { resident_bytes(u.object_size(), u.segments, residency) } else { 0 };
            let order = (cached > 0).then(|| match self.used.get(&ino) {
                Some(t) => (true, *t, ino),
                None => (false, nanos(u.updated_at), ino),
            });
            Entry {
                state: u.state,
                size: u.size,
                fid: u.fid,
                retired: u.retired,
                cached,
                order,
                replaces: u.replaces.clone(),
                blob: u.blob.filter(|_| !u.retired),
            }
        });
        let old = match &new {
            Some(e) => self.entries.insert(ino, e.clone()),
            None => self.entries.remove(&ino),
        };
        if let Some(old) = old {
            if let Some(blob) = old.blob {
                remove_from(&mut self.blobs, &blob.id, ino);
                if old.state == UploadState::Packed {
                    remove_from(&mut self.packed, &blob.pack, ino);
                }
                if let (UploadState::Active, Some(fid)) = (old.state, old.fid)
                    && let Some((files, bytes)) = self.live.get_mut(&fid)
                    && files.remove(&ino)
                {
                    *bytes -= u64::from(blob.place.len);
                    if files.is_empty() {
                        self.live.remove(&fid);
                    }
                }
            }
            for fid in &old.replaces {
                if let Some(n) = self.replaced.get_mut(fid) {
                    *n -= 1;
                    if *n == 0 {
                        self.replaced.remove(fid);
                    }
                }
            }
            self.cached -= old.cached;
            let s = &mut self.states[state_index(old.state)];
            *s = (s.0 - 1, s.1 - old.size);
            if let Some(o) = old.order {
                self.order.remove(&o);
            }
            if let Some(fid) = old.fid
                && new.as_ref().is_none_or(|n| n.fid != Some(fid))
                && let Some(inos) = self.by_fid.get_mut(&fid)
            {
                inos.retain(|i| *i != ino);
                if inos.is_empty() {
                    self.by_fid.remove(&fid);
                }
            }
        }
        if let Some(new) = new {
            if let Some(blob) = new.blob {
                self.blobs.entry(blob.id).or_default().insert(ino);
                if new.state == UploadState::Packed {
                    self.packed.entry(blob.pack).or_default().insert(ino);
                }
                if let (UploadState::Active, Some(fid)) = (new.state, new.fid) {
                    let (files, bytes) = self.live.entry(fid).or_default();
                    if files.insert(ino) {
                        *bytes += u64::from(blob.place.len);
                    }
                }
            }
            for fid in &new.replaces {
                *self.replaced.entry(*fid).or_default() += 1;
            }
            self.cached += new.cached;
            let s = &mut self.states[state_index(new.state)];
            *s = (s.0 + 1, s.1 + new.size);
            if let Some(o) = new.order {
                self.order.insert(o);
            }
            if let Some(fid) = new.fid {
                let inos = self.by_fid.entry(fid).or_default();
                if !inos.contains(&ino) {
                    inos.push(ino);
                }
            }
        } else {
            self.used.remove(&ino);
        }
    }

    /// The inodes whose upload record names `fid`, with whether each is active (and not
    /// retired) and whether it still needs the FID on chain (not retired, not failed).
    pub(super) fn holders(&self, fid: &Hash) -> impl Iterator<Item = (u64, bool, bool)> + '_ {
        self.by_fid.get(fid).into_iter().flatten().filter_map(|ino| {
            let e = self.entries.get(ino)?;
            let active = e.state == UploadState::Active && !e.retired;
            Some((*ino, active, !e.retired && e.state != UploadState::Failed))
        })
    }

    /// Whether `ino` has an upload record.
    pub(super) fn has_upload(&self, ino: u64) -> bool {
        self.entries.contains_key(&ino)
    }

    /// Removed files whose deal is in flight (their bytes are set aside for it).
    pub(super) fn retired_deals(&self) -> Vec<u64> {
        self.entries.iter().filter(|(_, e)| e.retired && e.state.deal_in_flight()).map(|(ino, _)| *ino).collect()
    }

    /// Whether a file still needs `fid` on chain: as its content (not retired, not failed), or
    /// as the last good version it keeps until a newer one is active.
    pub(super) fn needed(&self, fid: &Hash) -> bool {
        self.holders(fid).any(|(_, _, needed)| needed) || self.replaced.contains_key(fid)
    }

    /// [`Catalog::needed`], by a record of an inode other than `apart`.
    pub(super) fn needed_apart_from(&self, fid: &Hash, apart: &HashSet<u64>) -> bool {
        self.holders(fid).any(|(ino, _, needed)| needed && !apart.contains(&ino)) || self.replaced.contains_key(fid)
    }

    /// [`Catalog::needed_apart_from`], but for `replacing` of the records that keep it as the
    /// version they replace (a round that stores those records lets it go).
    pub(super) fn needed_apart_from_replacing(&self, fid: &Hash, apart: &HashSet<u64>, replacing: usize) -> bool {
        self.holders(fid).any(|(ino, _, needed)| needed && !apart.contains(&ino))
            || self.replaced.get(fid).is_some_and(|&n| n > replacing)
    }

    /// Claims `fid` for a deletion from the chain, unless a record needs it.
    pub(super) fn claim_deletion(&mut self, fid: &Hash) -> bool {
        !self.needed(fid) && self.deleting.insert(*fid)
    }

    /// Pins `fid` (no claim while pinned), unless it is claimed already.
    pub(super) fn pin(&mut self, fid: &Hash) -> bool {
        if self.deleting.contains(fid) {
            return false;
        }
        *self.pinned.entry(*fid).or_default() += 1;
        true
    }

    /// Lets go of one pin of `fid`.
    pub(super) fn unpin(&mut self, fid: &Hash) {
        if let Some(n) = self.pinned.get_mut(fid) {
            *n -= 1;
            if *n == 0 {
                self.pinned.remove(fid);
            }
        }
    }

    /// Whether an upload is about to take `fid` as stored.
    pub(super) fn pinned(&self, fid: &Hash) -> bool {
        self.pinned.contains_key(fid)
    }

    /// Claims `fid` for a deletion whatever needs it (one sent before a restart may land).
    pub(super) fn force_claim(&mut self, fid: &Hash) {
        self.deleting.insert(*fid);
    }

    /// Whether `fid` is claimed for a deletion.
    pub(super) fn claimed(&self, fid: &Hash) -> bool {
        self.deleting.contains(fid)
    }

    /// Notes whether the upload record of `ino` can be read.
    pub(super) fn set_unreadable(&mut self, ino: u64, unreadable: bool) {
        match unreadable {
            true => self.unreadable.insert(ino),
            false => self.unreadable.remove(&ino),
        };
    }

    /// Why no FID can be said to be free now, if none can: some upload record cannot be read.
    pub(super) fn doubt(&self) -> Option<String> {
        let ino = self.unreadable.iter().min()?;
        Some(format!(
            "{} cannot be read (inode {ino}): nothing is deleted from the chain until it can",
            crate::words::count(self.unreadable.len() as u64, "upload record")
        ))
    }

    /// Ends the claim of [`Catalog::claim_deletion`].
    pub(super) fn end_deletion(&mut self, fid: &Hash) {
        self.deleting.remove(fid);
    }

    /// Whether `up` would need a FID whose deletion is under way: such a record must wait for
    /// the deletion to land, or it would claim bytes about to be gone.
    pub(super) fn needs_deleted(&self, up: &UploadRecord) -> Option<Hash> {
        up.fid.filter(|fid| !up.retired && up.state != UploadState::Failed && self.deleting.contains(fid))
    }

    /// Whether any record refers to `fid`: a file's content or kept version, or a stored pack.
    pub(super) fn knows(&self, fid: &Hash) -> bool {
        self.by_fid.contains_key(fid) || self.replaced.contains_key(fid) || self.live.contains_key(fid)
    }

    /// A file other than `ino` whose content is blob `id`.
    pub(super) fn blob_holder(&self, id: &Hash, ino: u64) -> Option<u64> {
        self.blobs.get(id)?.iter().copied().find(|&i| i != ino)
    }

    /// The files waiting in pack `pack`.
    pub(super) fn pack_members(&self, pack: u64) -> Vec<u64> {
        self.packed.get(&pack).map(|m| m.iter().copied().collect()).unwrap_or_default()
    }

    /// How many stored packs hold files here.
    pub(super) fn stored_pack_count(&self) -> usize {
        self.live.len()
    }

    /// Stored packs: FID, the files in them, and the sealed bytes those take.
    pub(super) fn stored_packs(&self) -> Vec<(Hash, Vec<u64>, u64)> {
        self.live.iter().map(|(fid, (files, bytes))| (*fid, files.iter().copied().collect(), *bytes)).collect()
    }

    /// Whether `fid` is needed only as the version records keep until their newer one is
    /// active (which then deletes it).
    pub(super) fn only_replaced(&self, fid: &Hash) -> bool {
        self.replaced.contains_key(fid) && !self.holders(fid).any(|(_, _, needed)| needed)
    }

    /// Notes a use of `ino` now (its place in the eviction order).
    pub(super) fn touch(&mut self, ino: u64) {
        let now = nanos(Timestamp::now());
        self.used.insert(ino, now);
        if let Some(e) = self.entries.get_mut(&ino)
            && let Some(old) = e.order.replace((true, now, ino))
        {
            self.order.remove(&old);
            self.order.insert((true, now, ino));
        }
    }

    /// Bytes of cached content of stored files (what eviction can free).
    pub(super) fn cached(&self) -> u64 {
        self.cached
    }

    /// Up to `n` files with cached content, least recently used first.
    pub(super) fn eviction_order(&self, n: usize) -> Vec<u64> {
        self.order.iter().take(n).map(|(_, _, ino)| *ino).collect()
    }

    /// Files and bytes by upload state.
    pub(super) fn states(&self) -> Vec<(UploadState, u64, u64)> {
        STATES.iter().zip(self.states).filter(|(_, (n, _))| *n > 0).map(|(s, (n, b))| (*s, n, b)).collect()
    }

    /// Notes that the upload record of `ino` was written.
    pub(super) fn mark_changed(&mut self, ino: u64) {
        self.changed.insert(ino);
    }

    /// The inodes whose upload changed since the last call.
    pub(super) fn take_changed(&mut self) -> Vec<u64> {
        self.changed.drain().collect()
    }
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<u64>>, key: &K, ino: u64) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&ino);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: UploadState, fid: u8, size: u64) -> UploadRecord {
        let mut r = UploadRecord::staged(1);
        r.state = state;
        r.fid = Some(Hash([fid; 32]));
        r.size = size;
        r.segments = 1;
        r
    }

    #[test]
    fn counts_fids_cached_bytes_and_order_follow_every_change() {
        let mut c = Catalog::default();
        c.refresh(1, Some(&record(UploadState::Active, 7, 100)), None);
        c.refresh(2, Some(&record(UploadState::Staged, 7, 50)), None);
        c.refresh(3, Some(&record(UploadState::Active, 8, 30)), None);
        assert_eq!(c.cached(), 130);
        assert_eq!(c.holders(&Hash([7; 32])).collect::<Vec<_>>(), vec![(1, true, true), (2, false, true)]);
        c.touch(1);
        assert_eq!(c.eviction_order(10), vec![3, 1], "used files go last");
        c.refresh(1, Some(&record(UploadState::Active, 7, 100)), Some(&Residency::empty(1)));
        assert_eq!((c.cached(), c.eviction_order(10)), (30, vec![3]), "an evicted file leaves the order");
        c.refresh(2, Some(&record(UploadState::Staged, 9, 50)), None);
        assert_eq!(c.holders(&Hash([7; 32])).count(), 1, "a FID no longer named is forgotten");
        c.refresh(3, None, None);
        assert_eq!(c.cached(), 0);
        let states: Vec<_> = c.states().into_iter().map(|(s, n, b)| (s.word(), n, b)).collect();
        assert_eq!(states, vec![("staged", 1, 50), ("active", 1, 100)]);
        c.mark_changed(2);
        assert_eq!(c.take_changed(), vec![2]);
        assert!(c.take_changed().is_empty());
    }
}
