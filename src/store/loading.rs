//! A restored tree loaded directory by directory. The restore of a tree in directory blobs
//! writes the root directory and marks each directory under it as still on CESS (`e` ino →
//! where its blob is). A directory is loaded the first time it is listed, looked in or changed
//! (fs), or by the loader in the background (snapshots/load.rs), in one batch each.
//!
//! Until every directory is loaded the tree is not whole: nothing is deleted from the chain,
//! since what the rest refers to is not known yet. Rounds go on, referring to the directories
//! not loaded where they are (a snapshot build reads `e` with each directory; a load is no
//! change of the tree). Meanwhile the FIDs the loaded part refers to gather under `q`, and the
//! inodes of hard-linked nodes under `n` (by their tree-wide id). Once whole, the FIDs join the
//! records of the restored snapshot and of those written since, and the older snapshots of its
//! lineage are adopted, in one batch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::records::{decode, encode, key};
use super::tree::{Adopted, KeptSnapshot, put_node, restored_upload, store_kind};
use super::{Batch, Kind, Store, StoreError};
use crate::format::{Hash, Home, NodeKind, OneDir, TreeRef};

/// The meta record of a tree being loaded ([`Loading`]).
pub(super) const LOADING: &[u8] = b"tree-loading";
/// The meta record of when the tree began to be loaded here (seconds).
const LOADING_SINCE: &[u8] = b"tree-loading-since";
/// Keys removed in one batch when the records of a load are forgotten.
const FORGET_CHUNK: usize = 20_000;

/// A restored tree being loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loading {
    /// Its generation.
    pub generation: u64,
    /// The hidden inode of the snapshot it was restored from (set by the restore).
    pub snapshot: u64,
    /// The territory its files are in.
    pub territory: Vec<u8>,
    /// The tree files holding its directory blobs, and their segments.
    pub tree_files: Vec<(Hash, u32)>,
    /// Nodes in the whole tree, as its root says.
    pub nodes: u64,
    /// Nodes loaded so far (the root directory's included).
    pub loaded: u64,
}

/// The root of a tree restored to be loaded directory by directory.
pub struct LazyRoot {
    /// The load to record.
    pub loading: Loading,
    /// The root's subdirectories (their nodes in the restored snapshot), still on CESS.
    pub dirs: Vec<(u64, TreeRef)>,
    /// The node in the restored snapshot of each tree-wide hard-link id.
    pub shared: Vec<(u64, u64)>,
}

/// A hard-linked node loaded before: its inode and record.
type Linked = (u64, super::InodeRecord);

/// A directory read from CESS, to load.
pub struct LoadedDir {
    /// The directory.
    pub dir: OneDir,
    /// The blobs it was read from, and where each is.
    pub homes: Vec<(Hash, Home)>,
    /// The chain name of each FID its files refer to.
    pub names: HashMap<Hash, Vec<u8>>,
}

/// The inodes and content files made for a directory read from CESS, before it is loaded:
/// made outside the namespace lock, since they take fsyncs.
pub struct PreparedDir {
    /// The inode of each node of the directory.
    inos: HashMap<u64, u64>,
}

/// The inode of a loaded node's record.
fn loaded_ino(v: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(v.try_into().map_err(|_| StoreError::Corrupt { what: "loaded node" })?))
}

impl Batch {
    /// Marks directory `ino` as still on CESS, in blob `dir` (a snapshot build reads it with
    /// the node).
    pub(super) fn put_pending_dir(&mut self, ino: u64, dir: &TreeRef) {
        self.0.insert(&key::pending_dir(ino), encode(dir));
        self.1.tree.push(super::tree::TreeChange::Node(ino));
    }

    /// Marks directory `ino` as loaded, or given up (removed, never read).
    pub fn forget_pending_dir(&mut self, ino: u64) {
        self.0.remove(&key::pending_dir(ino));
        self.1.tree.push(super::tree::TreeChange::Node(ino));
    }

    /// Marks the batch as a load: what it writes was restored, not changed.
    fn as_load(&mut self) {
        self.1.load = true;
    }

    /// Records the state of a restore that loads its tree directory by directory: the root's
    /// subdirectories (`inos` maps the restored snapshot's nodes to inodes) and the load,
    /// whose snapshot is hidden inode `snapshot`.
    pub(super) fn put_lazy_root(&mut self, lazy: &LazyRoot, inos: &HashMap<u64, u64>, snapshot: u64) {
        for (node, dir) in &lazy.dirs {
            self.put_pending_dir(inos[node], dir);
        }
        for (tree_id, node) in &lazy.shared {
            self.0.insert(&key::loaded_node(*tree_id), &inos[node].to_be_bytes());
        }
        let loading = Loading { snapshot, ..lazy.loading.clone() };
        self.put_meta(LOADING, &encode(&loading));
        self.put_meta(LOADING_SINCE, &super::Timestamp::now().secs.to_be_bytes());
    }
}

impl Store {
    /// Whether a restored tree is still being loaded.
    pub fn tree_loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    /// Notes whether the records say a tree is being loaded (at open, after a restore).
    pub(super) fn note_loading(&self) -> Result<(), StoreError> {
        let loading = self.meta(LOADING)?.is_some();
        self.loading.store(loading, Ordering::Release);
        if !loading {
            self.forget_loading_records()?;
        }
        Ok(())
    }

    /// The tree being loaded, if one is.
    pub fn loading_tree(&self) -> Result<Option<Loading>, StoreError> {
        self.meta(LOADING)?.map(|v| decode(&v, "tree being loaded")).transpose()
    }

    /// Where directory `ino`'s blob is, if it is still on CESS.
    pub fn pending_dir(&self, ino: u64) -> Result<Option<TreeRef>, StoreError> {
        if !self.tree_loading() {
            return Ok(None);
        }
        self.tree.get(key::pending_dir(ino))?.map(|v| decode(&v, "directory on CESS")).transpose()
    }

    /// Up to `at_most` directories still on CESS of inodes after `after`, the oldest first
    /// (nearest the root).
    pub fn pending_dirs(&self, after: u64, at_most: usize) -> Result<Vec<u64>, StoreError> {
        let from = key::pending_dir(after.saturating_add(1));
        let to = key::pending_dir(u64::MAX);
        let keys = self.tree.range(from..=to).keys().take(at_most);
        keys.map(|k| key::ino_of(&k?)).collect()
    }

    /// Makes the inodes and content files of directory `loaded`, durably, for [`Store::load_dir`].
    pub fn prepare_loaded_dir(&self, loaded: &LoadedDir) -> Result<PreparedDir, StoreError> {
        let mut inos = HashMap::new();
        for n in &loaded.dir.snapshot.nodes[1..] {
            let ino = self.allocate_ino()?;
            if n.kind == NodeKind::File {
                self.restored_content(ino, n)?;
            }
            inos.insert(n.id, ino);
        }
        self.sync_content_dir()?;
        Ok(PreparedDir { inos })
    }

    /// Loads directory `ino` from `loaded`, read from its blob `from`, with the inodes of
    /// `prepared`: its names, their inodes (a hard-linked node loaded before gains a link
    /// instead), and its subdirectories, still on CESS. Nothing if it was loaded already.
    /// Returns the prepared inodes not taken, whose content files the caller removes (after
    /// the namespace lock, which it holds: loads are namespace changes).
    pub fn load_dir(
        &self,
        ino: u64,
        from: &TreeRef,
        loaded: &LoadedDir,
        prepared: &PreparedDir,
    ) -> Result<Vec<u64>, StoreError> {
        let mut unused = Vec::new();
        if self.pending_dir(ino)? != Some(*from) {
            return Ok(prepared.inos.values().copied().collect());
        }
        let mut loading = self.loading_tree()?.ok_or(StoreError::Corrupt { what: "tree being loaded" })?;
        let Some(mut dir) = self.inode(ino)? else {
            // Gone (removed once loaded elsewhere, which cannot be): nothing to load.
            let mut b = Batch::default();
            b.forget_pending_dir(ino);
            b.as_load();
            self.commit(b)?;
            return Ok(prepared.inos.values().copied().collect());
        };

        let one = &loaded.dir;
        let tree_ids: HashMap<u64, u64> = one.shared.iter().map(|&(tree_id, node)| (node, tree_id)).collect();
        let mut links: HashMap<u64, (u32, &[u8])> = HashMap::new();
        for l in &one.snapshot.links {
            links.entry(l.child).or_insert((0, &l.name)).0 += 1;
        }
        let chain_name = |fid: &Hash| loaded.names.get(fid).cloned().unwrap_or_default();
        let mut b = Batch::default();
        let mut inos = HashMap::new();
        for n in &one.snapshot.nodes[1..] {
            let (count, name) = links.get(&n.id).copied().unwrap_or((1, b""));
            let tree_id = tree_ids.get(&n.id).copied();
            let (seen, linked) = match tree_id {
                Some(t) => self.loaded_node(t, store_kind(n.kind))?,
                None => (false, None),
            };
            // A node of a hard-link id seen before is counted once.
            loading.loaded += u64::from(!seen);
            let made = *prepared.inos.get(&n.id).ok_or(StoreError::Corrupt { what: "prepared directory" })?;
            let child = match linked {
                Some((child, mut rec)) => {
                    rec.nlink += count;
                    b.put_inode(child, &rec);
                    unused.push(made);
                    child
                }
                None => {
                    let child = made;
                    let nlink = if n.kind == NodeKind::Dir { 2 } else { count };
                    put_node(&mut b, child, n, nlink, ino, name.to_vec());
                    if n.kind == NodeKind::File {
                        restored_upload(&mut b, child, n, &loading.territory, &chain_name);
                    }
                    if let Some(t) = tree_id {
                        b.0.insert(&key::loaded_node(t), &child.to_be_bytes());
                    }
                    child
                }
            };
            inos.insert(n.id, child);
        }
        // A tree of more nodes than its root says refers to a directory twice (or in a cycle):
        // it is damaged, and loading it would never end.
        if loading.loaded > loading.nodes {
            return Err(StoreError::Corrupt { what: "tree with more nodes than its root says" });
        }
        let kinds: HashMap<u64, NodeKind> = one.snapshot.nodes.iter().map(|n| (n.id, n.kind)).collect();
        for l in &one.snapshot.links {
            b.put_dirent(ino, &l.name, inos[&l.child], store_kind(kinds[&l.child]));
        }
        for (node, sub) in &one.dirs {
            b.put_pending_dir(inos[node], sub);
        }
        dir.nlink = 2 + one.dirs.len() as u32;
        b.put_inode(ino, &dir);
        b.forget_pending_dir(ino);
        b.as_load();
        let fids = KeptSnapshot::of(&one.snapshot).fids.into_iter().chain(loaded.homes.iter().map(|(_, h)| h.0.fid));
        for fid in fids {
            b.0.insert(key::loading_fid(&fid), &[]);
        }
        b.put_read_dir_homes(&loaded.homes);
        b.put_meta(LOADING, &encode(&loading));
        self.commit(b)?;
        Ok(unused)
    }

    /// The nodes of a tree-wide hard-link id loaded so far: inode → that id.
    pub(super) fn loaded_nodes(&self) -> Result<HashMap<u64, u64>, StoreError> {
        let mut out = HashMap::new();
        for kv in self.tree.scan_prefix(key::LOADED_NODE_PREFIX) {
            let (k, v) = kv?;
            out.insert(loaded_ino(&v)?, key::ino_of(&k)?);
        }
        Ok(out)
    }

    /// Whether a node of `linked` ([`Store::loaded_nodes`]) changed since `loading` began here
    /// (content, attributes or names; or every name of it loaded so far is gone): its names not
    /// loaded yet still show it as restored, so no round is written before they load (a reader
    /// takes any one of its names' nodes).
    pub(super) fn linked_changed(&self, loading: &Loading, linked: &HashMap<u64, u64>) -> Result<bool, StoreError> {
        let since = match self.meta(LOADING_SINCE)? {
            Some(v) => i64::from_be_bytes(v[..].try_into().map_err(|_| StoreError::Corrupt { what: "load start" })?),
            None => (loading.generation / 1000) as i64,
        };
        for &ino in linked.keys() {
            if !self.inode(ino)?.is_some_and(|rec| rec.nlink > 0 && rec.ctime.secs < since) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a hard-linked node of the tree being loaded changed ([`Store::linked_changed`]).
    pub fn hard_link_changed_while_loading(&self) -> Result<bool, StoreError> {
        let Some(loading) = self.loading_tree()? else { return Ok(false) };
        self.linked_changed(&loading, &self.loaded_nodes()?)
    }

    /// Whether a node of tree-wide hard-link id `tree_id` was loaded before, and the inode it
    /// was loaded as with its record, if that is still there (its names loaded so far may all
    /// be gone). A node of that id loaded as another kind, or a directory (which has one name),
    /// makes the tree damaged.
    fn loaded_node(&self, tree_id: u64, kind: Kind) -> Result<(bool, Option<Linked>), StoreError> {
        let Some(v) = self.tree.get(key::loaded_node(tree_id))? else { return Ok((false, None)) };
        let ino = loaded_ino(&v)?;
        let Some(rec) = self.inode(ino)?.filter(|r| r.nlink > 0) else { return Ok((true, None)) };
        if rec.kind != kind || kind == Kind::Dir {
            return Err(StoreError::Corrupt { what: "tree naming one node as two kinds, or a directory twice" });
        }
        Ok((true, Some((ino, rec))))
    }

    /// Ends the load of a whole tree: the FIDs it refers to join its snapshot's record, `older`
    /// (the older snapshots of its lineage) are adopted, and the facts `meta` written, in one
    /// batch. `false`: a directory is still on CESS.
    pub fn finish_loading(&self, older: &[Adopted<'_>], meta: &[(&[u8], Vec<u8>)]) -> Result<bool, StoreError> {
        let _records = self.kept_records();
        let Some(loading) = self.loading_tree()? else { return Ok(true) };
        if self.tree.scan_prefix(key::PENDING_DIR_PREFIX).next().is_some() {
            return Ok(false);
        }
        let mut b = Batch::default();
        // The restored tree, and each written while it loaded (whose directories not loaded
        // then refer to what the load found since), keep every FID the load found.
        let mut found = Vec::new();
        for k in self.tree.scan_prefix(key::LOADING_FID_PREFIX).keys() {
            found.push(key::fid_of(&k?)?);
        }
        for (ino, mut kept) in self.kept_snapshots()? {
            if ino != loading.snapshot && kept.generation <= loading.generation {
                continue;
            }
            kept.fids.extend(&found);
            kept.fids.sort();
            kept.fids.dedup();
            b.0.insert(&key::snapshot(ino), encode(&kept));
        }
        for a in older {
            self.adopt_into(&mut b, a, &loading.territory)?;
        }
        for (name, value) in meta {
            b.put_meta(name, value);
        }
        b.0.remove(key::meta(LOADING));
        b.0.remove(key::meta(LOADING_SINCE));
        self.sync_content_dir()?;
        self.commit(b)?;
        self.loading.store(false, Ordering::Release);
        self.kept_snapshots_changed();
        self.sync()?;
        self.forget_loading_records()?;
        Ok(true)
    }

    /// Removes what a load gathered once it has ended (or a partial restore is forgotten).
    fn forget_loading_records(&self) -> Result<(), StoreError> {
        for prefix in [key::LOADING_FID_PREFIX, key::LOADED_NODE_PREFIX, key::PENDING_DIR_PREFIX] {
            loop {
                let keys: Vec<sled::IVec> =
                    self.tree.scan_prefix(prefix).keys().take(FORGET_CHUNK).collect::<Result<_, _>>()?;
                if keys.is_empty() {
                    break;
                }
                let mut b = Batch::default();
                keys.into_iter().for_each(|k| b.0.remove(k));
                self.commit(b)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Entry, Location, Node, one_dir};
    use crate::store::ROOT_INO;

    fn node(id: u64, kind: NodeKind, location: Location) -> Node {
        let size = if kind == NodeKind::File { 10 } else { 0 };
        Node { size, location, ..Node::bare(id, kind) }
    }

    fn dir(name: &str, blob: u8) -> Entry {
        let r = TreeRef { fid: Hash([9; 32]), id: Hash([blob; 32]), offset: 0, len: 1 };
        Entry { name: name.into(), node: node(0, NodeKind::Dir, Location::Empty), dir: Some(r) }
    }

    fn file(name: &str, id: u64, fid: u8) -> Entry {
        let location = Location::Fid { fid: Hash([fid; 32]), format: crate::format::FORMAT_V2, seed: Some([1; 32]) };
        Entry { name: name.into(), node: node(id, NodeKind::File, location), dir: None }
    }

    /// Restores a tree of `nodes` nodes lazily: the root directory of `entries`.
    fn restore(store: &Store, entries: &[Entry], nodes: u64) {
        let one = one_dir(entries).unwrap();
        let adopted = Adopted {
            snapshot: &one.snapshot,
            fid: Hash([9; 32]),
            seed: None,
            segments: 1,
            name: b"commit".to_vec(),
            commit: true,
        };
        let loading = Loading {
            generation: 1,
            snapshot: 0,
            territory: b"t".to_vec(),
            tree_files: Vec::new(),
            nodes,
            loaded: one.snapshot.nodes.len() as u64,
        };
        let lazy = LazyRoot { loading, dirs: one.dirs.clone(), shared: one.shared.clone() };
        store.restore_snapshot(&one.snapshot, b"t", |_| b"n".to_vec(), &[adopted], &[], Some(&lazy)).unwrap();
    }

    /// Loads directory `ino` (still on CESS) with `entries`.
    fn load(store: &Store, ino: u64, entries: &[Entry]) -> Result<Vec<u64>, StoreError> {
        let from = store.pending_dir(ino)?.expect("on CESS");
        let loaded = LoadedDir { dir: one_dir(entries).unwrap(), homes: Vec::new(), names: HashMap::new() };
        let prepared = store.prepare_loaded_dir(&loaded)?;
        store.load_dir(ino, &from, &loaded, &prepared)
    }

    fn child(store: &Store, parent: u64, name: &str) -> u64 {
        store.lookup(parent, name.as_bytes()).unwrap().expect("a name").0
    }

    /// A node hard-linked from two directories is one inode of two links once both are loaded;
    /// deletions wait until the tree is whole, and then every FID the tree refers to is kept.
    #[test]
    fn a_hard_link_across_directories_is_one_inode_and_the_whole_tree_is_kept() {
        let dir_ = tempfile::tempdir().unwrap();
        let store = Store::open(dir_.path(), 0, 0).unwrap();
        restore(&store, &[dir("a", 1), dir("b", 2), file("top", 0, 3)], 6);
        assert!(store.tree_loading() && store.deletions_held());
        let (a, b) = (child(&store, ROOT_INO, "a"), child(&store, ROOT_INO, "b"));
        assert_eq!(store.pending_dirs(0, 10).unwrap(), [a, b]);
        assert!(store.dir_entries(a).unwrap().is_empty(), "not loaded yet");
        assert_eq!(load(&store, a, &[file("f", 7, 4), file("own", 0, 5)]).unwrap(), Vec::<u64>::new());
        assert_eq!(store.pending_dirs(a, 10).unwrap(), [b]);
        assert_eq!(load(&store, b, &[file("g", 7, 4)]).unwrap().len(), 1, "the prepared inode not taken");
        let (f, g) = (child(&store, a, "f"), child(&store, b, "g"));
        assert_eq!(f, g);
        assert_eq!(store.inode(f).unwrap().unwrap().nlink, 2);
        assert_eq!(store.pending_dir(b).unwrap(), None, "loaded once");
        assert!(store.finish_loading(&[], &[]).unwrap());
        assert!(!store.tree_loading() && !store.deletions_held());
        let kept = store.kept_snapshot_fids().unwrap();
        for fid in [3, 4, 5] {
            assert!(kept.contains(&Hash([fid; 32])), "FID {fid} kept");
        }
        assert!(store.tree.scan_prefix(key::LOADING_FID_PREFIX).next().is_none(), "the load's records gone");
    }

    /// A round built while the tree loads names the directories not loaded yet, and where they
    /// are; a load is no change of the tree; once whole, a tree kept since the restore keeps
    /// every FID the load found.
    #[test]
    fn a_round_built_while_loading_names_what_is_not_loaded_and_keeps_what_the_load_finds() {
        let dir_ = tempfile::tempdir().unwrap();
        let store = Store::open(dir_.path(), 0, 0).unwrap();
        restore(&store, &[dir("a", 1), dir("b", 2), file("top", 0, 3)], 6);
        let (a, b) = (child(&store, ROOT_INO, "a"), child(&store, ROOT_INO, "b"));
        let s = store.build_snapshot(2, [0; 16], None).unwrap();
        assert_eq!(s.unloaded.dirs.keys().copied().collect::<Vec<_>>(), [a, b]);
        assert_eq!(s.unloaded.dirs[&b].0.id, Hash([2; 32]));
        assert_eq!(s.unloaded.nodes, 2, "6 nodes, 4 loaded");
        let round = KeptSnapshot { generation: 2, fids: Vec::new() };
        store.stage_snapshot(&round, b"round", b"round").unwrap();
        let changes = store.tree_commits();
        load(&store, a, &[file("f", 7, 4), file("own", 0, 5)]).unwrap();
        assert_eq!(store.tree_commits(), changes, "a load is no change");
        let s = store.build_snapshot(3, [0; 16], None).unwrap();
        assert_eq!(s.unloaded.dirs.keys().copied().collect::<Vec<_>>(), [b]);
        assert_eq!(
            s.unloaded.linked.iter().map(|(&ino, &id)| (ino, id)).collect::<Vec<_>>(),
            [(child(&store, a, "f"), 7)]
        );
        assert_eq!(s.unloaded.nodes, 1, "6 nodes, 6 loaded, one hard-linked");
        assert!(!store.hard_link_changed_while_loading().unwrap(), "as restored");
        load(&store, b, &[file("g", 7, 4)]).unwrap();
        assert!(store.finish_loading(&[], &[]).unwrap());
        let kept = store.kept_snapshots().unwrap();
        let (_, round) = kept.iter().find(|(_, k)| k.generation == 2).unwrap();
        for fid in [4, 5] {
            assert!(round.fids.contains(&Hash([fid; 32])), "FID {fid} kept by the round");
        }
        assert!(store.build_snapshot(4, [0; 16], None).unwrap().unloaded.dirs.is_empty());
    }

    /// A directory referred to twice gives the tree more nodes than its root says: the second
    /// load fails as damaged, and the load does not end.
    #[test]
    fn a_directory_referred_to_twice_makes_the_tree_damaged() {
        let dir_ = tempfile::tempdir().unwrap();
        let store = Store::open(dir_.path(), 0, 0).unwrap();
        restore(&store, &[dir("a", 1), dir("b", 1)], 4);
        let (a, b) = (child(&store, ROOT_INO, "a"), child(&store, ROOT_INO, "b"));
        load(&store, a, &[file("x", 0, 3)]).unwrap();
        assert!(matches!(load(&store, b, &[file("x", 0, 3)]), Err(StoreError::Corrupt { .. })));
        assert!(!store.finish_loading(&[], &[]).unwrap());
        assert!(store.tree_loading());
    }
}
