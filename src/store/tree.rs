//! The tree as a snapshot, and back: what a snapshot records of the store, the hidden inodes
//! that hold snapshot files on their way to CESS, and the FIDs kept snapshots refer to (never
//! deleted from the chain while one does).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::loading::Loading;
use super::records::{decode, encode, key};
use super::{
    Batch, InodeRecord, Kind, ROOT_INO, Residency, Store, StoreError, StoredVersion, Timestamp, UploadRecord,
    UploadState,
};
use crate::format::{Hash, Layout, Link, Location, Mode, Node, NodeKind, Snapshot};
use crate::sync::lock;

/// The meta record of a restore begun and not ended (its generation).
const RESTORING: &[u8] = b"restoring";
/// Names or nodes a restore writes in one batch.
const RESTORE_CHUNK: usize = 20_000;

/// The meta record of the generation a read-only view shows.
const VIEW_GENERATION: &[u8] = b"view-generation";

/// The meta record present while an upload waits for room in the territory.
const ROOM_WANTED: &[u8] = b"room-wanted";

/// A snapshot this tree keeps: its generation and the FIDs it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSnapshot {
    /// Its generation.
    pub generation: u64,
    /// The FIDs of the files it refers to ([`crate::format::THIS_COMMIT`]: its own, until
    /// its commit is stored and that is known).
    pub fids: Vec<Hash>,
}

impl KeptSnapshot {
    /// The record of `snapshot`.
    pub fn of(snapshot: &Snapshot) -> KeptSnapshot {
        let mut fids: Vec<Hash> = snapshot.nodes.iter().filter_map(|n| n.location.fid().copied()).collect();
        fids.extend(&snapshot.holders);
        fids.extend(snapshot.unloaded.dirs.values().map(|(r, _)| r.fid));
        KeptSnapshot { generation: snapshot.generation, fids }
    }
}

/// A [`KeptSnapshot`] record read up to its generation, without the FIDs that follow.
#[derive(Deserialize)]
struct KeptHead {
    generation: u64,
}

/// The state of a tree's snapshots, for `user.cess.snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The newest snapshot written: its generation and upload state.
    pub newest: Option<(u64, UploadState)>,
    /// Its FID, once encoded.
    pub newest_fid: Option<Hash>,
    /// The newest active one.
    pub newest_active: Option<u64>,
    /// Snapshots kept (in flight or active).
    pub kept: usize,
    /// Segments the kept snapshots' files take.
    pub segments: u64,
    /// FIDs of removed or replaced files that stay on chain because a kept snapshot refers to
    /// them (deleted once none does).
    pub held_back: usize,
    /// The CESS files holding the newest tree's directory blobs.
    pub tree_files: usize,
}

/// What a restore brought back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes.
    pub specials: u64,
}

impl Restored {
    /// What came back, in words: "3 files, 2 directories, 1 symlink".
    pub fn counts(&self) -> String {
        use crate::words::{count, count_as};
        let mut out = format!("{}, {}", count(self.files, "file"), count_as(self.dirs, "directory", "directories"));
        if self.symlinks > 0 {
            out.push_str(&format!(", {}", count(self.symlinks, "symlink")));
        }
        if self.specials > 0 {
            out.push_str(&format!(", {} (FIFOs, sockets, devices)", count(self.specials, "special file")));
        }
        out
    }
}

fn time(t: Timestamp) -> (i64, u32) {
    (t.secs, t.nanos)
}

fn timestamp((secs, nanos): (i64, u32)) -> Timestamp {
    Timestamp { secs, nanos: nanos.min(999_999_999) }
}

/// What a commit changes of the tree a snapshot shows: an inode's node (its record, xattrs or
/// upload), or one entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum TreeChange {
    /// The node of an inode.
    Node(u64),
    /// The entry `name` of directory `parent`.
    Entry(u64, Vec<u8>),
}

/// A commit under way: counted as begun now; it holds the gate shared, and when it ends (its
/// changes applied) it tells a snapshot being built what of the tree it changed.
pub(super) struct Applying<'a> {
    store: &'a Store,
    changed: Vec<TreeChange>,
    /// Its changes are a load's ([`Batch::as_load`]): not counted as changes of the tree.
    load: bool,
    _gate: std::sync::RwLockReadGuard<'a, ()>,
}

impl Applying<'_> {
    /// Notes what of the tree the commit changes; `load`: as a load of what was restored.
    pub(super) fn changes(&mut self, changes: &[TreeChange], load: bool) {
        self.changed.extend_from_slice(changes);
        self.load = load;
    }
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        if !self.changed.is_empty() && !self.load {
            self.store.tree_commits.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(journal) = lock(&self.store.journal).as_mut() {
            journal.extend(self.changed.drain(..));
        }
    }
}

/// Rounds of catching up with commits before a snapshot's last one, under the gate.
const CATCH_UP_ROUNDS: usize = 8;

/// One inode as a snapshot build read it: its node (`None`: left out, a file not stored yet, or
/// gone) and, for a directory, its entries (name to child).
type Read = (Option<Node>, std::collections::BTreeMap<Vec<u8>, u64>);

/// What a snapshot build reads of a tree being loaded, with the tree.
struct Load {
    loading: Loading,
    /// [`Store::loaded_nodes`].
    linked: HashMap<u64, u64>,
    /// [`Store::linked_changed`].
    linked_changed: bool,
}

/// The tree as a snapshot build reads it, per inode read.
#[derive(Default)]
struct Walk {
    read: HashMap<u64, Read>,
    /// The directories read that are still on CESS (a tree being loaded), and where.
    unloaded: HashMap<u64, crate::format::TreeRef>,
    /// The open pack whose blobs the tree refers to as [`crate::format::THIS_COMMIT`].
    commit: Option<u64>,
}

impl Walk {
    /// Reads inode `ino`: its node and entries.
    fn read_one(&mut self, store: &Store, ino: u64) -> Result<(), StoreError> {
        let read = match store.inode(ino)? {
            None => (None, Default::default()),
            Some(rec) => {
                let node = store.node(ino, ino, &rec, self.commit)?;
                let entries = match rec.kind {
                    Kind::Dir => store.dir_entries(ino)?.into_iter().map(|(name, child, _)| (name, child)).collect(),
                    _ => Default::default(),
                };
                (node, entries)
            }
        };
        self.read.insert(ino, read);
        self.read_unloaded(store, ino)
    }

    /// Reads whether directory `ino` is still on CESS (its load changes its node).
    fn read_unloaded(&mut self, store: &Store, ino: u64) -> Result<(), StoreError> {
        match store.pending_dir(ino)? {
            Some(r) => self.unloaded.insert(ino, r),
            None => self.unloaded.remove(&ino),
        };
        Ok(())
    }

    /// Reads every inode reachable from the root that was not read yet.
    fn fill(&mut self, store: &Store) -> Result<(), StoreError> {
        let mut seen: HashSet<u64> = HashSet::from([ROOT_INO]);
        let mut queue = std::collections::VecDeque::from([ROOT_INO]);
        while let Some(ino) = queue.pop_front() {
            if !self.read.contains_key(&ino) {
                self.read_one(store, ino)?;
            }
            let Some((Some(_), entries)) = self.read.get(&ino) else { continue };
            for child in entries.values() {
                if seen.insert(*child) {
                    queue.push_back(*child);
                }
            }
        }
        Ok(())
    }

    /// Reads again what `changed` names of what was read before (a node, one entry), and reads
    /// the children new to it (with what lies below). What is no longer reachable is left out
    /// at the end. The work is that of the changes, however large their directories.
    fn catch_up(&mut self, store: &Store, changed: HashSet<TreeChange>) -> Result<(), StoreError> {
        let mut new = Vec::new();
        for change in changed {
            match change {
                TreeChange::Node(ino) => {
                    if let Some((node, _)) = self.read.get_mut(&ino) {
                        *node = match store.inode(ino)? {
                            Some(rec) => store.node(ino, ino, &rec, self.commit)?,
                            None => None,
                        };
                        self.read_unloaded(store, ino)?;
                    }
                }
                TreeChange::Entry(parent, name) => {
                    if let Some((_, entries)) = self.read.get_mut(&parent) {
                        match store.lookup(parent, &name)? {
                            Some((child, _)) => {
                                entries.insert(name, child);
                                new.push(child);
                            }
                            None => {
                                entries.remove(&name);
                            }
                        }
                    }
                }
            }
        }
        while let Some(ino) = new.pop() {
            if self.read.contains_key(&ino) {
                continue;
            }
            self.read_one(store, ino)?;
            let entries = self.read.get(&ino).map(|(_, e)| e.values().copied());
            new.extend(entries.into_iter().flatten().filter(|c| !self.read.contains_key(c)));
        }
        Ok(())
    }

    /// The snapshot of what was read: the nodes reachable from the root, breadth first (the root
    /// first), and the names of those present; with `load` (the tree being loaded, and the
    /// nodes of a tree-wide hard-link id), where the directories not loaded yet are.
    fn snapshot(mut self, generation: u64, writer: [u8; 16], load: Option<Load>) -> Snapshot {
        let mut seen: HashSet<u64> = HashSet::from([ROOT_INO]);
        let mut nodes = Vec::new();
        let mut links = Vec::new();
        let mut queue = std::collections::VecDeque::from([ROOT_INO]);
        while let Some(ino) = queue.pop_front() {
            let Some((Some(node), entries)) = self.read.remove(&ino) else { continue };
            nodes.push(node);
            for (name, child) in entries {
                if seen.insert(child) {
                    queue.push_back(child);
                }
                links.push(Link { parent: ino, name, child });
            }
        }
        // Names of files left out go too.
        let present: HashSet<u64> = nodes.iter().map(|n| n.id).collect();
        links.retain(|l| present.contains(&l.child));
        let mut unloaded = crate::format::Unloaded::default();
        if let Some(Load { loading, linked, linked_changed }) = load {
            let segments: HashMap<Hash, u32> = loading.tree_files.iter().copied().collect();
            for (ino, r) in self.unloaded.into_iter().filter(|(ino, _)| present.contains(ino)) {
                unloaded.dirs.insert(ino, (r, segments.get(&r.fid).copied()));
            }
            // Nodes not loaded yet, and the hard-linked ones (their names loaded may all be gone).
            unloaded.nodes = loading.nodes.saturating_sub(loading.loaded) + linked.len() as u64;
            unloaded.linked = linked.into_iter().filter(|(ino, _)| present.contains(ino)).collect();
            unloaded.tree_files = loading.tree_files;
            unloaded.linked_changed = linked_changed;
        }
        Snapshot { generation, writer, written_at: time(Timestamp::now()), nodes, links, holders: Vec::new(), unloaded }
    }
}

/// Stops recording changes for a snapshot build when dropped.
struct Journal<'a>(&'a Store);

impl Drop for Journal<'_> {
    fn drop(&mut self) {
        *lock(&self.0.journal) = None;
    }
}

/// While it lives, no FID is deleted from the chain: a snapshot being built may refer to it.
pub struct DeletionHold<'a>(&'a Store);

impl Drop for DeletionHold<'_> {
    fn drop(&mut self) {
        self.0.building.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Store {
    /// How many commits the store has begun since it opened: unchanged, nothing changed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// How many commits since the store opened changed what a snapshot shows (a node, an
    /// entry, an upload): not a cached segment, an eviction or a kept snapshot's record.
    pub fn tree_commits(&self) -> u64 {
        self.tree_commits.load(Ordering::Acquire)
    }

    pub(super) fn applying(&self) -> Applying<'_> {
        let gate = self.gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.commits.fetch_add(1, Ordering::AcqRel);
        Applying { store: self, changed: Vec::new(), load: false, _gate: gate }
    }

    /// Held while kept snapshots' records are read and written back: from a round's build to
    /// its staging, a prune, a commit's record naming its FID, the end of a load (which adds
    /// what it found to each). Taken before the packer and the deal locks.
    pub fn kept_records(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.kept_records)
    }

    /// Holds deletions from the chain back until the guard is dropped (a snapshot is built and
    /// staged meanwhile: a FID it read must not go before it protects it).
    pub fn hold_deletions(&self) -> DeletionHold<'_> {
        self.building.fetch_add(1, Ordering::AcqRel);
        DeletionHold(self)
    }

    /// Holds deletions from the chain back for good, and eviction: another mount writes this
    /// tree, and what this one would delete may be in the other's snapshots, while what only
    /// this one refers to may be deleted by the other.
    pub fn stop_deletions(&self) {
        if !self.another_writer.swap(true, Ordering::AcqRel) {
            self.building.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records why deletions from the chain wait (`None`: they do not).
    pub fn set_deletions_wait(&self, why: Option<String>) {
        *lock(&self.deletions_wait) = why;
    }

    /// Why deletions from the chain wait, if they do.
    pub fn deletions_wait(&self) -> Option<String> {
        lock(&self.deletions_wait).clone()
    }

    /// Whether another mount writes this tree ([`Store::stop_deletions`]).
    pub fn another_writer(&self) -> bool {
        self.another_writer.load(Ordering::Acquire)
    }

    /// Records the FIDs that the tree's snapshots on chain which this mount neither keeps nor
    /// deletes refer to: none of them is deleted.
    pub fn set_refs_on_chain(&self, fids: HashSet<Hash>) {
        *lock(&self.refs_on_chain) = Arc::new(fids);
    }

    /// Whether a snapshot of the tree on chain, not kept here, refers to `fid`.
    pub(super) fn referred_on_chain(&self, fid: &Hash) -> bool {
        lock(&self.refs_on_chain).contains(fid)
    }

    /// The snapshot generation a read-only view shows.
    pub fn view_generation(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.meta(VIEW_GENERATION)?.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(u64::from_be_bytes))
    }

    /// Records the generation a read-only view shows.
    pub fn set_view_generation(&self, generation: u64) -> Result<(), StoreError> {
        self.set_meta(VIEW_GENERATION, &generation.to_be_bytes())
    }

    /// Whether deletions from the chain are held back now.
    pub fn deletions_held(&self) -> bool {
        self.building.load(Ordering::Acquire) > 0 || self.tree_loading()
    }

    /// The tree as it is, as a snapshot of `generation` by `writer`. A regular file appears once
    /// its content is active on CESS (or empty): until then it is left out, and the next
    /// snapshot has it.
    ///
    /// sled has no point-in-time reads, so the tree is walked while commits go on, each telling
    /// which inodes' part of the tree it changed; those are read again, a few rounds, and the
    /// last round runs with commits held at the gate: the snapshot is the tree as it was then.
    /// Commits wait only for that round, which reads what changed since the one before.
    ///
    /// With `commit` (the open pack, which the tree goes into), a file whose blob waits in it
    /// appears with it, as [`crate::format::THIS_COMMIT`]'s.
    pub fn build_snapshot(
        &self,
        generation: u64,
        writer: [u8; 16],
        commit: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        let _one = lock(&self.builder);
        *lock(&self.journal) = Some(HashSet::new());
        let _journal = Journal(self);
        let take = || lock(&self.journal).as_mut().map(std::mem::take).unwrap_or_default();
        let step =
            |name, since: std::time::Instant| crate::metrics::SNAPSHOT_BUILD_SECONDS.observe(name, since.elapsed());
        let mut walk = Walk { commit, ..Walk::default() };
        let started = std::time::Instant::now();
        walk.fill(self)?;
        step("walk", started);
        let started = std::time::Instant::now();
        for _ in 0..CATCH_UP_ROUNDS {
            let changed = take();
            if changed.is_empty() {
                break;
            }
            walk.catch_up(self, changed)?;
        }
        step("catch_up", started);
        // No commit takes the gate while holding it (a read lock is never taken twice in one
        // thread), so this waits only for the commits under way.
        let gate = self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = std::time::Instant::now();
        walk.catch_up(self, take())?;
        // What is loaded is read with the tree, as of the same instant.
        let load = match self.loading_tree()? {
            Some(loading) => {
                let linked = self.loaded_nodes()?;
                let linked_changed = self.linked_changed(&loading, &linked)?;
                Some(Load { loading, linked, linked_changed })
            }
            None => None,
        };
        drop(gate);
        step("held", held);
        Ok(walk.snapshot(generation, writer, load))
    }

    /// The node of inode `ino`, or `None` for a regular file not on CESS yet (nor in pack
    /// `commit`, whose blobs the tree's commit holds).
    fn node(&self, ino: u64, id: u64, rec: &InodeRecord, commit: Option<u64>) -> Result<Option<Node>, StoreError> {
        let kind = match rec.kind {
            Kind::File => NodeKind::File,
            Kind::Dir => NodeKind::Dir,
            Kind::Symlink => NodeKind::Symlink,
            Kind::Fifo => NodeKind::Fifo,
            Kind::Socket => NodeKind::Socket,
            Kind::CharDevice => NodeKind::CharDevice,
            Kind::BlockDevice => NodeKind::BlockDevice,
        };
        let mut size = rec.size;
        let location = match rec.kind {
            Kind::File if rec.size == 0 => Location::Empty,
            // The last stored version stands for a newer one on its way (being written, or
            // uploading, or failed): its FID stays on chain until the newer one is active.
            Kind::File => {
                let up = self.upload(ino)?;
                let in_commit = up
                    .as_ref()
                    .filter(|u| u.state == UploadState::Packed)
                    .and_then(|u| u.blob.filter(|b| Some(b.pack) == commit).map(|b| (u.size, b)));
                if let Some((packed_size, blob)) = in_commit {
                    size = packed_size;
                    let (offset, len) = (blob.place.offset, blob.place.len);
                    Location::Packed { fid: crate::format::THIS_COMMIT, id: blob.id, offset, len }
                } else {
                    let stored = up.and_then(|u| u.stored_version().or(u.previous));
                    let Some(stored) = stored else { return Ok(None) };
                    size = stored.size;
                    let (fid, format, seed) = (stored.fid, stored.format, stored.seed);
                    match (stored.blob, stored.extents) {
                        (Some((id, place)), _) => Location::Packed { fid, id, offset: place.offset, len: place.len },
                        (None, Some(extents)) => {
                            Location::Sparse { fid, format, seed, extents: extents.ranges().to_vec() }
                        }
                        (None, None) => Location::Fid { fid, format, seed },
                    }
                }
            }
            _ => Location::Empty,
        };
        let mut xattrs = Vec::new();
        for name in self.xattr_names(ino)? {
            if let Some(value) = self.xattr(ino, &name)? {
                xattrs.push((name, value));
            }
        }
        Ok(Some(Node {
            id,
            kind,
            perm: rec.perm,
            uid: rec.uid,
            gid: rec.gid,
            size,
            atime: time(rec.atime),
            mtime: time(rec.mtime),
            ctime: time(rec.ctime),
            crtime: time(rec.crtime),
            target: if rec.kind == Kind::Symlink { rec.target.clone() } else { Vec::new() },
            rdev: rec.rdev(),
            xattrs,
            location,
            key: Some(self.node_key(ino, rec)),
        }))
    }

    /// Writes the snapshot file `bytes` (padded with zeros to whole segments) as hidden inode,
    /// durably, and queues its upload under `name`. Returns the inode.
    pub fn stage_snapshot(&self, kept: &KeptSnapshot, bytes: &[u8], name: &[u8]) -> Result<u64, StoreError> {
        let ino = self.allocate_ino()?;
        let size = crate::format::snapshot_file_len(bytes.len() as u64);
        let mut file = self.create_content(ino)?;
        let written = file.write_all(bytes).and_then(|()| file.set_len(size)).and_then(|()| file.sync_all());
        if let Err(e) = written.map_err(StoreError::from).and_then(|()| self.sync_content_dir()) {
            self.remove_content(ino)?;
            return Err(e);
        }
        self.keep_hidden_snapshot(ino, size, name, kept, &UploadRecord::staged(1), None)?;
        Ok(ino)
    }

    /// Adds to `b` the records that keep `adopted` (restored from CESS, active there) as a
    /// hidden inode whose content is not cached: its FIDs are protected and it is dropped in its
    /// turn. Its content file (a hole) is made now; a crash before `b` is committed leaves it a
    /// stray, removed at the next open.
    pub(super) fn adopt_into(&self, b: &mut Batch, adopted: &Adopted<'_>, territory: &[u8]) -> Result<u64, StoreError> {
        let ino = self.allocate_ino()?;
        let (size, format) = match adopted.commit {
            true => (crate::format::SEGMENT_SIZE as u64, crate::format::FORMAT_PLAIN),
            false => (crate::format::snapshot_len_of(adopted.segments as usize), crate::format::FORMAT_V2),
        };
        self.create_content(ino)?.set_len(size)?;
        let stored = StoredVersion { fid: adopted.fid, size, seed: adopted.seed, format, blob: None, extents: None };
        let up = UploadRecord::stored(stored, adopted.segments, territory, adopted.name.clone());
        let cold = Residency::empty(adopted.segments);
        hidden_snapshot(b, ino, size, &adopted.name, &KeptSnapshot::of(adopted.snapshot), &up, Some(&cold));
        Ok(ino)
    }

    /// Records hidden inode `ino` (its content file made, `size` bytes) as the kept snapshot
    /// `kept` named `name` on chain, with its upload record and residency, durably.
    fn keep_hidden_snapshot(
        &self,
        ino: u64,
        size: u64,
        name: &[u8],
        kept: &KeptSnapshot,
        up: &UploadRecord,
        residency: Option<&Residency>,
    ) -> Result<(), StoreError> {
        let mut b = Batch::default();
        hidden_snapshot(&mut b, ino, size, name, kept, up, residency);
        self.commit(b)?;
        self.kept_snapshots_changed();
        self.sync()
    }

    /// The snapshots this tree keeps (hidden inode and record), oldest first.
    pub fn kept_snapshots(&self) -> Result<Vec<(u64, KeptSnapshot)>, StoreError> {
        let mut out: Vec<(u64, KeptSnapshot)> = self.records_by_ino(key::SNAPSHOT_PREFIX, "snapshot")?;
        out.sort_by_key(|(_, s)| s.generation);
        Ok(out)
    }

    /// The kept snapshots' hidden inodes and generations, oldest first: their records read
    /// without the FIDs they list (a million of them at a million files).
    pub fn kept_generations(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out: Vec<(u64, u64)> = self
            .records_by_ino::<KeptHead>(key::SNAPSHOT_PREFIX, "snapshot")?
            .into_iter()
            .map(|(ino, h)| (ino, h.generation))
            .collect();
        out.sort_by_key(|&(_, generation)| generation);
        Ok(out)
    }

    /// Whether kept snapshot `ino` (a round of the tree on its way) no longer refers to a FID
    /// that the newest stored tree refers to and nothing else here needs: storing it lets that
    /// FID go (once the older trees do), and so gives room back in the territory.
    pub fn round_frees(&self, ino: u64) -> Result<bool, StoreError> {
        if self.snapshot_generation(ino)?.is_none() {
            return Ok(false);
        }
        let kept = self.kept_snapshots()?;
        let Some((_, round)) = kept.iter().find(|(i, _)| *i == ino) else { return Ok(false) };
        let mut stored = None;
        for (i, snapshot) in &kept {
            if *i != ino && self.upload(*i)?.is_some_and(|u| u.state == UploadState::Active) {
                stored = Some(snapshot);
            }
        }
        let Some(stored) = stored else { return Ok(false) };
        let named: HashSet<&Hash> = round.fids.iter().collect();
        // A commit stores the files whose blobs it carries: the versions they replace (the
        // under-full packs it empties) go once it is stored.
        let members = lock(&self.catalog).pack_members(ino);
        let mut replacing: HashMap<Hash, usize> = HashMap::new();
        for member in &members {
            for fid in self.upload(*member)?.map(|u| u.replaces).unwrap_or_default() {
                *replacing.entry(fid).or_default() += 1;
            }
        }
        let apart: HashSet<u64> = kept.iter().map(|(i, _)| *i).chain(members).collect();
        let catalog = lock(&self.catalog);
        Ok(stored.fids.iter().any(|f| {
            *f != crate::format::THIS_COMMIT
                && !named.contains(f)
                && !catalog.needed_apart_from_replacing(f, &apart, replacing.get(f).copied().unwrap_or(0))
        }))
    }

    /// Notes whether an upload waits for room in the territory. While one does, only the
    /// newest stored tree is kept (snapshots/mod.rs): the older ones may refer to removed
    /// files, whose room comes back only once no kept tree does.
    pub fn set_room_wanted(&self, wanted: bool) -> Result<(), StoreError> {
        match (wanted, self.room_wanted()?) {
            (true, false) => self.set_meta(ROOM_WANTED, &[]),
            (false, true) => self.remove_meta(ROOM_WANTED),
            _ => Ok(()),
        }
    }

    /// Whether an upload waits for room in the territory ([`Store::set_room_wanted`]).
    pub fn room_wanted(&self) -> Result<bool, StoreError> {
        Ok(self.meta(ROOM_WANTED)?.is_some())
    }

    /// The state of the kept snapshots.
    pub fn snapshot_summary(&self) -> Result<SnapshotSummary, StoreError> {
        let mut summary = SnapshotSummary::default();
        let mut snapshots = HashSet::new();
        for (ino, generation) in self.kept_generations()? {
            snapshots.insert(ino);
            let up = self.upload(ino)?;
            summary.segments += up.as_ref().map_or(0, |u| u64::from(u.segments));
            summary.newest_fid = up.as_ref().and_then(|u| u.fid);
            let state = up.map_or(UploadState::Failed, |u| u.state);
            if state == UploadState::Active {
                summary.newest_active = Some(generation);
            }
            summary.newest = Some((generation, state));
            summary.kept += 1;
        }
        summary.tree_files = self.tree_holders(summary.newest_fid)?.len();
        let kept = self.kept_snapshot_fids()?;
        let catalog = lock(&self.catalog);
        // A commit's FID is held by its own hidden inode too: that does not make it needed.
        summary.held_back = kept.iter().filter(|f| !catalog.needed_apart_from(f, &snapshots)).count();
        Ok(summary)
    }

    /// The generation of the snapshot hidden inode `ino` holds, if it holds one.
    pub fn snapshot_generation(&self, ino: u64) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tree
            .get(key::snapshot(ino))?
            .map(|v| decode::<KeptHead>(&v, "snapshot"))
            .transpose()?
            .map(|s| s.generation))
    }

    /// Every FID a kept snapshot refers to.
    pub fn kept_snapshot_fids(&self) -> Result<Arc<HashSet<Hash>>, StoreError> {
        let version = {
            let cached = lock(&self.kept_fids);
            if let Some(set) = cached.1.clone() {
                return Ok(set);
            }
            cached.0
        };
        let set: HashSet<Hash> = self.kept_snapshots()?.into_iter().flat_map(|(_, s)| s.fids).collect();
        let set = Arc::new(set);
        let mut cached = lock(&self.kept_fids);
        if cached.0 == version {
            cached.1 = Some(set.clone());
        }
        Ok(set)
    }

    /// Forgets the FIDs of kept snapshots read so far (they changed).
    pub(super) fn kept_snapshots_changed(&self) {
        let mut cached = lock(&self.kept_fids);
        *cached = (cached.0 + 1, None);
    }

    /// Forgets the snapshot of hidden inode `ino`: its file is deleted from the chain, and so is
    /// every FID it alone still referred to.
    pub fn drop_snapshot(&self, ino: u64) -> Result<(), StoreError> {
        let Some(dropped) =
            self.tree.get(key::snapshot(ino))?.map(|v| decode::<KeptSnapshot>(&v, "snapshot")).transpose()?
        else {
            return Ok(());
        };
        let deals = self.deals();
        let mut b = Batch::default();
        self.forget_snapshot(&mut b, ino, &dropped)?;
        self.retire(&deals, &mut b, ino, None)?;
        b.remove_inode(ino);
        b.put_residency(ino, None);
        self.commit(b)?;
        self.kept_snapshots_changed();
        drop(deals);
        self.remove_content(ino)
    }

    /// Puts in `b` that snapshot `ino` (record `dropped`) is no longer kept, and the deletion of
    /// every FID it alone still referred to.
    pub(super) fn forget_snapshot(&self, b: &mut Batch, ino: u64, dropped: &KeptSnapshot) -> Result<(), StoreError> {
        b.0.remove(&key::snapshot(ino));
        let others: HashSet<Hash> =
            self.kept_snapshots()?.into_iter().filter(|(i, _)| *i != ino).flat_map(|(_, s)| s.fids).collect();
        let catalog_uses = |fid: &Hash| lock(&self.catalog).needed(fid);
        let own = crate::format::THIS_COMMIT;
        for fid in dropped.fids.iter().filter(|f| **f != own && !others.contains(f) && !catalog_uses(f)) {
            b.put_tombstone(fid);
        }
        Ok(())
    }

    /// Fills an empty store with `snapshot` in one step that completes or leaves the store as it
    /// was: every node, name and xattr (regular files stored on CESS are present and cold,
    /// fetched on read; `chain_name` gives the name a FID was declared under, for the records;
    /// `territory` is where the files are), the snapshots to keep (`adopted`, the restored one
    /// among them), and the facts `meta` about the data dir, in one batch, made durable.
    /// `lazy`: `snapshot` is the root directory of a tree loaded directory by directory
    /// (loading.rs), the first of `adopted` the snapshot it is restored from.
    pub fn restore_snapshot(
        &self,
        snapshot: &Snapshot,
        territory: &[u8],
        chain_name: impl Fn(&Hash) -> Vec<u8>,
        adopted: &[Adopted<'_>],
        meta: &[(&[u8], Vec<u8>)],
        lazy: Option<&super::LazyRoot>,
    ) -> Result<Restored, StoreError> {
        let mut inos: HashMap<u64, u64> = HashMap::from([(1, ROOT_INO)]);
        for n in &snapshot.nodes[1..] {
            inos.insert(n.id, self.allocate_ino()?);
        }
        // Marked first: a crash before the end leaves a data dir that the next open empties.
        self.set_meta(RESTORING, &snapshot.generation.to_be_bytes())?;
        self.sync()?;
        let mut b = Batch::default();
        let restored =
            self.fill_except(snapshot, &inos, &mut b, territory, &chain_name, &HashSet::new(), Some(RESTORE_CHUNK))?;
        self.commit(b)?;
        self.sync_content_dir()?;
        self.sync()?;
        crate::hooks::reached("restore-files");
        let mut b = Batch::default();
        let mut hidden = Vec::new();
        for a in adopted {
            hidden.push(self.adopt_into(&mut b, a, territory)?);
        }
        if let (Some(lazy), Some(&snapshot)) = (lazy, hidden.first()) {
            b.put_lazy_root(lazy, &inos, snapshot);
        }
        for (name, value) in meta {
            b.put_meta(name, value);
        }
        b.0.remove(key::meta(RESTORING));
        self.sync_content_dir()?;
        self.commit(b)?;
        self.kept_snapshots_changed();
        self.note_loading()?;
        self.sync()?;
        Ok(restored)
    }

    /// Empties a data dir holding part of a restore that a crash cut short: every record of its
    /// tree goes (the root stays, without names), and their content files are then strays,
    /// removed at open. The mount restores again from the start.
    pub(super) fn forget_partial_restore(&self) -> Result<(), StoreError> {
        if self.meta(RESTORING)?.is_none() {
            return Ok(());
        }
        log::warn!("the data dir holds part of a restore cut short: it is emptied, and the tree is restored again");
        let mut b = Batch::default();
        let prefixes = [
            key::INODE_PREFIX,
            key::DIRENT_PREFIX,
            b"x",
            key::UPLOAD_PREFIX,
            key::RESIDENCY_PREFIX,
            key::SNAPSHOT_PREFIX,
            key::DIR_HOME_PREFIX,
            key::PENDING_DIR_PREFIX,
            key::LOADED_NODE_PREFIX,
            key::LOADING_FID_PREFIX,
        ];
        for prefix in prefixes {
            for k in self.tree.scan_prefix(prefix).keys() {
                let k = k?;
                if k[..] != key::inode(ROOT_INO)[..] {
                    b.0.remove(k);
                }
            }
        }
        b.0.remove(key::meta(RESTORING));
        b.0.remove(key::meta(super::loading::LOADING));
        self.commit(b)?;
        self.sync()
    }

    /// Makes the tree of this store (a read-only view) `snapshot`'s, each node at the inode it
    /// had in the view before ([`Store::view_inos`]), so names and open files the kernel knows
    /// stay what they were: what is gone goes, everything else is written again, and a file
    /// whose bytes did not change keeps its cached copy.
    pub fn replace_tree(
        &self,
        snapshot: &Snapshot,
        territory: &[u8],
        chain_name: impl Fn(&Hash) -> Vec<u8>,
    ) -> Result<Restored, StoreError> {
        let inos = self.view_inos(snapshot)?;
        let wanted: HashMap<u64, &Node> = snapshot.nodes.iter().map(|n| (inos[&n.id], n)).collect();
        let mut b = Batch::default();
        for k in self.tree.scan_prefix(key::DIRENT_PREFIX).keys() {
            b.0.remove(k?);
        }
        let (mut gone, mut same, mut moved) = (Vec::new(), HashSet::new(), Vec::new());
        for k in self.tree.scan_prefix(key::INODE_PREFIX).keys() {
            let ino = key::ino_of(&k?)?;
            for name in self.xattr_names(ino)? {
                b.remove_xattr(ino, &name);
            }
            let same_bytes = match (wanted.get(&ino).map(|n| &n.location), self.upload(ino)?) {
                (Some(Location::Fid { fid, .. }), Some(up)) => up.fid == Some(*fid) && up.extents.is_none(),
                // One FID holds the data of sparse files of any size: the size must match too.
                (Some(Location::Sparse { fid, extents, .. }), Some(up)) => {
                    up.fid == Some(*fid)
                        && wanted.get(&ino).is_some_and(|n| n.size == up.size)
                        && up.extents.as_ref().is_some_and(|e| e.ranges() == &extents[..])
                }
                // A small file is the same blob (its id derives from its bytes), perhaps moved
                // to another pack: the bytes stay, the record says where they are now.
                (Some(Location::Packed { fid, id, offset, len }), Some(up)) => {
                    let place = crate::format::BlobPlace { offset: *offset, len: *len };
                    let same_blob =
                        up.blob.is_some_and(|b| b.id == *id) && wanted.get(&ino).is_some_and(|n| n.size == up.size);
                    if same_blob && (up.fid != Some(*fid) || up.blob.is_some_and(|b| b.place != place)) {
                        moved.push((ino, self.residency(ino)?));
                    }
                    same_blob
                }
                _ => false,
            };
            if same_bytes {
                same.insert(ino);
                continue;
            }
            if !wanted.contains_key(&ino) {
                b.remove_inode(ino);
            }
            b.remove_upload(ino);
            b.put_residency(ino, None);
            gone.push(ino);
        }
        // Content files of files gone or changed go before the new ones are made.
        for &ino in &gone {
            self.remove_content(ino)?;
        }
        let restored = self.fill_except(snapshot, &inos, &mut b, territory, &chain_name, &same, None)?;
        for (ino, residency) in moved {
            restored_upload(&mut b, ino, wanted[&ino], territory, &chain_name);
            b.put_residency(ino, residency.as_ref());
        }
        self.sync_content_dir()?;
        self.commit(b)?;
        self.sync()?;
        Ok(restored)
    }

    /// The inode of each node of `snapshot` in a read-only view: the one the node of its key
    /// has now (a whole snapshot's nodes stand in by their writer's inode numbers,
    /// [`crate::format::NodeKey::standing_in`]), or a new one, never one in use. A node without
    /// a key (a tree in directory blobs from before keys, which numbers its nodes afresh each
    /// time) is always new.
    fn view_inos(&self, snapshot: &Snapshot) -> Result<HashMap<u64, u64>, StoreError> {
        let (mut by_key, mut used) = (HashMap::new(), HashSet::new());
        for kv in self.tree.scan_prefix(key::INODE_PREFIX) {
            let (k, v) = kv?;
            let ino = key::ino_of(&k)?;
            used.insert(ino);
            if let Some(key) = super::records::decode_inode(&v)?.key {
                by_key.insert(key, ino);
            }
        }
        let mut inos = HashMap::from([(1, ROOT_INO)]);
        let mut taken = HashSet::from([ROOT_INO]);
        let mut new = Vec::new();
        for n in &snapshot.nodes[1..] {
            match n.key.and_then(|k| by_key.get(&k).copied()) {
                Some(ino) if taken.insert(ino) => {
                    inos.insert(n.id, ino);
                }
                _ => new.push(n.id),
            }
        }
        for id in new {
            let mut ino = self.allocate_ino()?;
            while used.contains(&ino) || !taken.insert(ino) {
                ino = self.allocate_ino()?;
            }
            inos.insert(id, ino);
        }
        Ok(inos)
    }

    /// Writes every node and name of `snapshot` into `b` (node ids mapped by `inos`), making
    /// the content files; the files of `keep` keep their content and upload record as they are.
    /// `chunk`: commits `b` after as many names or nodes (sled takes gigabytes for a batch of a
    /// large tree).
    #[allow(clippy::too_many_arguments)]
    fn fill_except(
        &self,
        snapshot: &Snapshot,
        inos: &HashMap<u64, u64>,
        b: &mut Batch,
        territory: &[u8],
        chain_name: &impl Fn(&Hash) -> Vec<u8>,
        keep: &HashSet<u64>,
        chunk: Option<usize>,
    ) -> Result<Restored, StoreError> {
        let mut written = 0usize;
        let mut step = |b: &mut Batch| -> Result<(), StoreError> {
            written += 1;
            if chunk.is_some_and(|c| written.is_multiple_of(c)) {
                self.commit(std::mem::take(b))?;
                self.sync()?;
            }
            Ok(())
        };
        let mut nlink: HashMap<u64, u32> = HashMap::new();
        let mut parent: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        let kinds: HashMap<u64, NodeKind> = snapshot.nodes.iter().map(|n| (n.id, n.kind)).collect();
        for l in &snapshot.links {
            let kind = kinds[&l.child];
            *nlink.entry(l.child).or_default() += 1;
            parent.insert(l.child, (l.parent, l.name.clone()));
            if kind == NodeKind::Dir {
                *subdirs.entry(l.parent).or_default() += 1;
            }
            b.put_dirent(inos[&l.parent], &l.name, inos[&l.child], store_kind(kind));
            step(b)?;
        }
        let mut restored = Restored::default();
        for n in &snapshot.nodes {
            let ino = inos[&n.id];
            let kind = store_kind(n.kind);
            let (up, name) = parent.get(&n.id).map_or((ROOT_INO, Vec::new()), |(p, name)| (inos[p], name.clone()));
            let links = match kind {
                Kind::Dir => 2 + subdirs.get(&n.id).copied().unwrap_or(0),
                _ => nlink.get(&n.id).copied().unwrap_or(1),
            };
            put_node(b, ino, n, links, up, name);
            match kind {
                Kind::Dir => restored.dirs += 1,
                Kind::Symlink => restored.symlinks += 1,
                Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => restored.specials += 1,
                Kind::File => {
                    restored.files += 1;
                    if !keep.contains(&ino) {
                        self.restore_file(b, ino, n, territory, chain_name)?;
                    }
                }
            }
            step(b)?;
        }
        Ok(restored)
    }

    /// A regular file of a snapshot: its content file and upload record.
    fn restore_file(
        &self,
        b: &mut Batch,
        ino: u64,
        n: &Node,
        territory: &[u8],
        chain_name: &impl Fn(&Hash) -> Vec<u8>,
    ) -> Result<(), StoreError> {
        self.restored_content(ino, n)?;
        restored_upload(b, ino, n, territory, chain_name);
        Ok(())
    }

    /// The content file of regular file `n` of a snapshot, as inode `ino`: its bytes if the
    /// snapshot holds them, else a hole of its size (cold).
    pub(super) fn restored_content(&self, ino: u64, n: &Node) -> Result<(), StoreError> {
        let file = self.create_content(ino)?;
        match &n.location {
            Location::Empty => {}
            Location::Inline(bytes) => {
                (&file).write_all(bytes)?;
                file.sync_all()?;
            }
            Location::Fid { .. } | Location::Sparse { .. } | Location::Packed { .. } => file.set_len(n.size)?,
        }
        Ok(())
    }
}

/// Adds to `b` the upload record (and residency) of regular file `n` of a snapshot, as inode
/// `ino`: stored where the snapshot says, or staged if the snapshot holds its bytes.
pub(super) fn restored_upload(
    b: &mut Batch,
    ino: u64,
    n: &Node,
    territory: &[u8],
    chain_name: &impl Fn(&Hash) -> Vec<u8>,
) {
    let mut up = UploadRecord::staged(1);
    match &n.location {
        Location::Empty | Location::Inline(_) => {}
        Location::Fid { fid, format, seed } | Location::Sparse { fid, format, seed, .. } => {
            let extents = match &n.location {
                // Checked when the snapshot was read.
                Location::Sparse { extents, .. } => crate::format::Extents::new(extents.clone(), n.size),
                _ => None,
            };
            let object_size = extents.as_ref().map_or(n.size, |e| e.data_len());
            let mode = Mode::of(*format, seed.is_some());
            let segments = Layout::new(object_size, mode).map(|l| l.segments() as u32).unwrap_or(0);
            let stored = StoredVersion { fid: *fid, size: n.size, seed: *seed, format: *format, blob: None, extents };
            up = UploadRecord::stored(stored, segments, territory, chain_name(fid));
            b.put_residency(ino, Some(&Residency::empty(segments)));
        }
        Location::Packed { fid, id, offset, len } => {
            let place = crate::format::BlobPlace { offset: *offset, len: *len };
            let blob = Some((*id, place));
            let stored = StoredVersion {
                fid: *fid,
                size: n.size,
                seed: None,
                format: crate::format::FORMAT_V2,
                blob,
                extents: None,
            };
            up = UploadRecord::stored(stored, 1, territory, chain_name(fid));
            b.put_residency(ino, Some(&Residency::empty(1)));
        }
    }
    b.put_upload(ino, &up);
}

/// Adds to `b` the inode record and xattrs of node `n` as inode `ino`, of `nlink` links, named
/// `name` in directory `parent` (recorded for a directory only).
pub(super) fn put_node(b: &mut Batch, ino: u64, n: &Node, nlink: u32, parent: u64, name: Vec<u8>) {
    let kind = store_kind(n.kind);
    let rec = InodeRecord {
        kind,
        perm: n.perm & 0o7777,
        uid: n.uid,
        gid: n.gid,
        nlink,
        size: match kind {
            Kind::Symlink => n.target.len() as u64,
            k if k.is_special() => 0,
            _ => n.size,
        },
        atime: timestamp(n.atime),
        mtime: timestamp(n.mtime),
        ctime: timestamp(n.ctime),
        crtime: timestamp(n.crtime),
        parent: if kind == Kind::Dir { parent } else { 0 },
        target: match kind {
            Kind::Symlink => n.target.clone(),
            Kind::CharDevice | Kind::BlockDevice => n.rdev.to_le_bytes().to_vec(),
            _ => Vec::new(),
        },
        content_version: 1,
        name,
        key: n.key,
    };
    b.put_inode(ino, &rec);
    for (name, value) in &n.xattrs {
        b.put_xattr(ino, name, value);
    }
}

/// A snapshot active on CESS to keep, as a restore finds it.
pub struct Adopted<'a> {
    /// Its tree.
    pub snapshot: &'a Snapshot,
    /// Its FID.
    pub fid: Hash,
    /// The seed its segments carry.
    pub seed: Option<[u8; 32]>,
    /// Its segments.
    pub segments: u32,
    /// Its name on chain.
    pub name: Vec<u8>,
    /// Whether it is a commit (a pack in the plaintext layout) rather than a snapshot file.
    pub commit: bool,
}

/// Adds to `b` the records of hidden inode `ino` (`size` bytes) as the kept snapshot `kept`
/// named `name` on chain, with its upload record and residency.
pub(super) fn hidden_snapshot(
    b: &mut Batch,
    ino: u64,
    size: u64,
    name: &[u8],
    kept: &KeptSnapshot,
    up: &UploadRecord,
    residency: Option<&Residency>,
) {
    b.put_inode(ino, &hidden_inode(size, name));
    b.0.insert(&key::snapshot(ino), encode(kept));
    b.put_upload(ino, up);
    b.put_residency(ino, residency);
}

/// The inode record of a hidden inode (a snapshot's or a pack's file): in no directory, named
/// by its name on chain.
pub(super) fn hidden_inode(size: u64, name: &[u8]) -> InodeRecord {
    let now = Timestamp::now();
    InodeRecord {
        kind: Kind::File,
        perm: 0o600,
        uid: 0,
        gid: 0,
        nlink: 0,
        size,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        parent: 0,
        target: Vec::new(),
        content_version: 1,
        name: name.to_vec(),
        key: None,
    }
}

pub(super) fn store_kind(kind: NodeKind) -> Kind {
    match kind {
        NodeKind::File => Kind::File,
        NodeKind::Dir => Kind::Dir,
        NodeKind::Symlink => Kind::Symlink,
        NodeKind::Fifo => Kind::Fifo,
        NodeKind::Socket => Kind::Socket,
        NodeKind::CharDevice => Kind::CharDevice,
        NodeKind::BlockDevice => Kind::BlockDevice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, parent: u64) -> InodeRecord {
        let mut rec = hidden_inode(0, b"");
        (rec.kind, rec.nlink, rec.parent) = (kind, if kind == Kind::Dir { 2 } else { 1 }, parent);
        rec
    }

    /// Snapshots built while files keep moving between directories (each move one commit) are
    /// each the tree at one instant: every file named exactly once, never twice or not at all.
    #[test]
    fn a_snapshot_built_during_commits_is_the_tree_at_one_instant() {
        const FILES: u64 = 2000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 0, 0).unwrap();
        let dirs = [store.allocate_ino().unwrap(), store.allocate_ino().unwrap()];
        let mut b = Batch::default();
        for (i, d) in dirs.iter().enumerate() {
            b.put_inode(*d, &record(Kind::Dir, ROOT_INO));
            b.put_dirent(ROOT_INO, format!("d{i}").as_bytes(), *d, Kind::Dir);
        }
        for f in 0..FILES {
            let ino = store.allocate_ino().unwrap();
            b.put_inode(ino, &record(Kind::File, 0));
            b.put_dirent(dirs[0], f.to_string().as_bytes(), ino, Kind::File);
        }
        store.commit(b).unwrap();
        /// Stops the mover however the checks end (a failed one too: the scope waits for it).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let _stop = Stop(&stop);
            s.spawn(|| {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (from, to) = if round.is_multiple_of(2) { (dirs[0], dirs[1]) } else { (dirs[1], dirs[0]) };
                    for (i, (name, ino, kind)) in store.dir_entries(from).unwrap().into_iter().enumerate() {
                        let mut b = Batch::default();
                        b.remove_dirent(from, &name);
                        b.put_dirent(to, &name, ino, kind);
                        store.commit(b).unwrap();
                        // As the daemon's flusher does: sled's log is written out now and then.
                        if i % 200 == 0 {
                            store.sync().unwrap();
                        }
                    }
                    round += 1;
                }
            });
            for _ in 0..20 {
                let snapshot = store.build_snapshot(1, [0; 16], None).unwrap();
                let named: Vec<u64> =
                    snapshot.links.iter().filter(|l| dirs.contains(&l.parent)).map(|l| l.child).collect();
                let distinct: HashSet<u64> = named.iter().copied().collect();
                assert_eq!((named.len() as u64, distinct.len() as u64), (FILES, FILES), "every file once");
                Snapshot::decode(&snapshot.encode()).expect("a valid tree");
            }
        });
    }

    /// A view finds each node's inode by its key from one generation to the next, whatever the
    /// tree numbers it; new nodes, nodes without a key and a second node of one key get inodes
    /// not in use; the root stays the root.
    #[test]
    fn a_view_keeps_each_node_at_its_inode_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 0, 0).unwrap();
        let key = |serial| Some(crate::format::NodeKey { origin: [7; 8], serial });
        let tree = |files: &[(&str, Option<crate::format::NodeKey>)]| {
            let mut nodes = vec![Node::bare(1, NodeKind::Dir)];
            let mut links = Vec::new();
            for (i, (name, k)) in files.iter().enumerate() {
                let id = i as u64 + 2;
                nodes.push(Node { key: *k, ..Node::bare(id, NodeKind::File) });
                links.push(Link { parent: 1, name: name.as_bytes().to_vec(), child: id });
            }
            Snapshot::new(1, [0; 16], (0, 0), nodes, links)
        };
        let inos = |store: &Store| -> HashMap<String, u64> {
            let entries = store.dir_entries(ROOT_INO).unwrap();
            entries.into_iter().map(|(name, ino, _)| (String::from_utf8(name).unwrap(), ino)).collect()
        };
        store.replace_tree(&tree(&[("b", key(3)), ("c", key(4)), ("old", None)]), b"t", |_| Vec::new()).unwrap();
        let first = inos(&store);
        let second = tree(&[("a", key(9)), ("b", key(3)), ("c2", key(4)), ("d", key(4)), ("old", None)]);
        store.replace_tree(&second, b"t", |_| Vec::new()).unwrap();
        let now = inos(&store);
        assert_eq!(now["b"], first["b"], "numbered 3rd now, 2nd before: the same inode");
        assert_eq!(now["c2"], first["c"], "renamed: the same inode");
        let used: HashSet<u64> = first.values().copied().chain([ROOT_INO]).collect();
        for new in ["a", "d", "old"] {
            assert!(!used.contains(&now[new]), "{new}: a new inode, not one in use");
        }
        assert_eq!(now.values().collect::<HashSet<_>>().len(), 5, "{now:?}");
        assert_eq!(store.inode(ROOT_INO).unwrap().map(|r| r.kind), Some(Kind::Dir));
        assert_eq!(store.inode(now["b"]).unwrap().and_then(|r| r.key), key(3));
    }
}
