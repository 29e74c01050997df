//! The local store: namespace and metadata in sled, file bytes in plain content files.
//!
//! Layout of the data dir:
//! ```text
//! DATA/db/            sled: inodes, directory entries, xattrs, upload records (records.rs)
//! DATA/content/<ino>  the bytes of each regular file, 16 hex digits
//! ```
//! Durability order: a content file is fsynced before the record that points to it is committed
//! and sled is flushed ([`Store::sync`]). Every namespace change is one sled batch, so the tree is
//! consistent after a crash at any point. After a failed flush the store is poisoned: every later
//! commit fails, because sled's state on disk is no longer known.
//! Why content is in plain files and not in sled: docs/STORE.md.

mod abandoned;
mod catalog;
mod dirs;
pub mod lineage;
mod loading;
mod outbox;
mod packs;
mod placements;
mod records;
mod reserve;
mod residency;
mod source;
mod tree;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

pub use abandoned::AbandonedDeal;
pub use catalog::resident_bytes;
pub use loading::{LazyRoot, LoadedDir, Loading};
pub use outbox::{DealGuard, Deletion, FidPin, PackedBlob, StoredVersion, Tombstone, UploadRecord, UploadState};
pub use packs::{CommitOutcome, CommitTree, PackRecord, PackSummary};
pub use placements::Placement;
pub use records::{InodeRecord, Kind, ROOT_INO, Timestamp};
pub use reserve::kept_free;
pub use residency::Residency;
pub use source::{FileSource, sparse_extents};
pub use tree::{Adopted, KeptSnapshot, Restored, SnapshotSummary};

use crate::format::NodeKey;
use records::{decode, decode_dirent, decode_inode, encode_dirent, encode_inode, key};

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled failed.
    #[error("metadata database: {0}")]
    Sled(#[from] sled::Error),
    /// A content file operation failed.
    #[error("content file: {0}")]
    Io(#[from] io::Error),
    /// A record could not be decoded.
    #[error("corrupt {what} record")]
    Corrupt {
        /// The record type.
        what: &'static str,
    },
    /// An earlier flush failed; writes are refused until restart.
    #[error("the store is poisoned by an earlier failed flush; restart cessfs")]
    Poisoned,
    /// The record would take a FID whose deletion from the chain is under way.
    #[error(
        "the same bytes (fid {0}) are being deleted from the chain for a file removed earlier; stored again once that is done"
    )]
    BeingDeleted(crate::format::Hash),
    /// The upload of an inode is no longer in the state a step expected.
    #[error("the upload of inode {0} moved on meanwhile")]
    MovedOn(u64),
    /// A hard-linked file of a restored tree changed while the tree loads: a tree round waits
    /// for the load to end (store/loading.rs).
    #[error(
        "a hard-linked file changed while the restored tree loads: the next tree round waits until it is loaded whole"
    )]
    WaitsForLoad,
}

/// The local store. See the module docs.
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    content_dir: PathBuf,
    content_dir_handle: File,
    /// Content files created, and how many of them have durable names (sync_content_dir).
    content_dir_created: std::sync::atomic::AtomicU64,
    content_dir_synced: std::sync::Mutex<u64>,
    poisoned: AtomicBool,
    doorbell: tokio::sync::Notify,
    /// Serialises the start and end of deals against content changes and unlinks (outbox.rs).
    deal_lock: std::sync::Mutex<()>,
    /// One file packed at a time: packs are filled in order.
    packer: std::sync::Mutex<()>,
    /// The index of upload and residency records; they are written under its lock.
    catalog: std::sync::Mutex<catalog::Catalog>,
    /// Rung when a FID is queued for deletion.
    tombstone_bell: tokio::sync::Notify,
    /// One copy of a deal's bytes per inode at a time (outbox.rs).
    copying: crate::sync::Holds,
    /// Room kept for the database on a full disk (reserve.rs).
    reserve: reserve::Reserve,
    db_dir: PathBuf,
    /// Commits begun: unchanged, nothing changed.
    commits: std::sync::atomic::AtomicU64,
    /// Commits that changed what a snapshot shows ([`Store::tree_commits`]).
    tree_commits: std::sync::atomic::AtomicU64,
    /// Held shared by every commit, exclusively by the last step of a snapshot's build (tree.rs).
    gate: std::sync::RwLock<()>,
    /// While a snapshot is built: the inodes whose part of the tree commits changed (tree.rs).
    journal: std::sync::Mutex<Option<std::collections::HashSet<tree::TreeChange>>>,
    /// Snapshots being built and staged: no FID is deleted meanwhile (tree.rs).
    building: std::sync::atomic::AtomicUsize,
    /// A restored tree is still being loaded: no FID is deleted meanwhile (loading.rs).
    loading: AtomicBool,
    /// The FIDs kept snapshots refer to, once read (tree.rs).
    /// (bumped on every change of the kept snapshots, so a set read before one is not kept)
    kept_fids: std::sync::Mutex<(u64, Option<std::sync::Arc<std::collections::HashSet<crate::format::Hash>>>)>,
    /// The FIDs the tree's snapshots on chain that this mount neither keeps nor deletes refer
    /// to, as last seen (snapshots/watch.rs): none of them is deleted.
    refs_on_chain: std::sync::Mutex<std::sync::Arc<std::collections::HashSet<crate::format::Hash>>>,
    /// Another mount writes this tree: nothing is deleted, nothing evicted.
    another_writer: AtomicBool,
    /// Why deletions from the chain wait, if they do (shown by `cessfs status`).
    deletions_wait: std::sync::Mutex<Option<String>>,
    /// One snapshot build at a time: they share the journal.
    builder: std::sync::Mutex<()>,
    /// Held while kept snapshots' records are read and written back ([`Store::kept_records`]).
    kept_records: std::sync::Mutex<()>,
    /// This data dir's part of the keys of the nodes made in it ([`Store::node_key`]).
    node_origin: [u8; 8],
}

/// A set of changes that [`Store::commit`] applies atomically.
#[derive(Default)]
pub struct Batch(sled::Batch, Touched);

/// What a batch changes that the catalog follows.
#[derive(Default)]
struct Touched {
    /// Inodes whose upload record or residency is written, and whether the upload is.
    inodes: Vec<(u64, bool)>,
    /// A FID was queued for deletion.
    tombstones: bool,
    /// The upload records written (`None`: removed), as they will be once committed.
    uploads: std::collections::HashMap<u64, Option<UploadRecord>>,
    /// What of the tree a snapshot shows changes: nodes, and directory entries.
    tree: Vec<tree::TreeChange>,
    /// The batch loads a directory of a restored tree: it shows what was restored, no change.
    load: bool,
}

/// The meta record of this data dir's node origin ([`Store::node_key`]).
const NODE_ORIGIN: &[u8] = b"node-origin";

/// This data dir's node origin: read, or drawn the first time, never that of
/// [`NodeKey::ROOT`] or [`NodeKey::STAND_IN`] (the store syncs before any node is made with it).
fn node_origin(tree: &sled::Tree) -> Result<[u8; 8], StoreError> {
    if let Some(v) = tree.get(key::meta(NODE_ORIGIN))? {
        return <[u8; 8]>::try_from(&v[..]).map_err(|_| StoreError::Corrupt { what: "node origin" });
    }
    let mut origin = NodeKey::ROOT.origin;
    while origin == NodeKey::ROOT.origin || origin == NodeKey::STAND_IN {
        origin = rand::random();
    }
    tree.insert(key::meta(NODE_ORIGIN), &origin[..])?;
    Ok(origin)
}

impl Batch {
    /// Writes an inode record.
    pub fn put_inode(&mut self, ino: u64, rec: &InodeRecord) {
        self.0.insert(&key::inode(ino), encode_inode(rec));
        self.1.tree.push(tree::TreeChange::Node(ino));
    }
    /// Removes an inode record.
    pub fn remove_inode(&mut self, ino: u64) {
        self.0.remove(&key::inode(ino));
        self.1.tree.push(tree::TreeChange::Node(ino));
    }
    /// Adds or replaces a directory entry.
    pub fn put_dirent(&mut self, parent: u64, name: &[u8], ino: u64, kind: Kind) {
        self.0.insert(key::dirent(parent, name), &encode_dirent(ino, kind));
        self.1.tree.push(tree::TreeChange::Entry(parent, name.to_vec()));
    }
    /// Removes a directory entry.
    pub fn remove_dirent(&mut self, parent: u64, name: &[u8]) {
        self.0.remove(key::dirent(parent, name));
        self.1.tree.push(tree::TreeChange::Entry(parent, name.to_vec()));
    }
    /// Sets an extended attribute.
    pub fn put_xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) {
        self.0.insert(key::xattr(ino, name), value);
        self.1.tree.push(tree::TreeChange::Node(ino));
    }
    /// Removes an extended attribute.
    pub fn remove_xattr(&mut self, ino: u64, name: &[u8]) {
        self.0.remove(key::xattr(ino, name));
        self.1.tree.push(tree::TreeChange::Node(ino));
    }
    /// Writes the upload record of an inode.
    pub fn put_upload(&mut self, ino: u64, rec: &UploadRecord) {
        self.0.insert(&key::upload(ino), outbox::encode_upload(rec));
        self.1.inodes.push((ino, true));
        self.1.uploads.insert(ino, Some(rec.clone()));
        self.1.tree.push(tree::TreeChange::Node(ino));
    }
    /// Records a fact about the data dir ([`Store::meta`]).
    pub fn put_meta(&mut self, name: &[u8], value: &[u8]) {
        self.0.insert(key::meta(name), value);
    }
    /// Removes the upload record of an inode.
    pub fn remove_upload(&mut self, ino: u64) {
        self.0.remove(&key::upload(ino));
        self.1.inodes.push((ino, true));
        self.1.uploads.insert(ino, None);
        self.1.tree.push(tree::TreeChange::Node(ino));
    }
    /// Marks an unlinked inode that is still open, to be removed at the next start.
    pub fn put_orphan(&mut self, ino: u64) {
        self.0.insert(&key::orphan(ino), &[]);
    }
    /// Marks a regular file open for writing: after a crash, its content is re-staged, first cut
    /// to `truncate_to` if given (a truncation whose bytes beyond were never fetched).
    pub fn put_writing(&mut self, ino: u64, truncate_to: Option<u64>) {
        match truncate_to {
            Some(size) => self.0.insert(&key::writing(ino), &size.to_be_bytes()),
            None => self.0.insert(&key::writing(ino), &[]),
        }
    }
    /// Clears the open-for-writing mark; the upload engine looks at the file again (it waits
    /// for files being written).
    pub fn remove_writing(&mut self, ino: u64) {
        self.0.remove(&key::writing(ino));
        self.1.inodes.push((ino, true));
    }
    /// Marks the content of `ino` as possibly damaged (`why`): it is never uploaded and refuses
    /// writes until it is removed or rewritten from scratch.
    pub fn put_poisoned(&mut self, ino: u64, why: &str) {
        self.0.insert(&key::poisoned(ino), why.as_bytes());
    }
    /// Clears the damaged mark: the content was replaced.
    pub fn remove_poisoned(&mut self, ino: u64) {
        self.0.remove(&key::poisoned(ino));
    }
}

/// Runs `f` on `store` in a blocking thread: sled calls (and the locks around them) never
/// stall a runtime's workers.
pub async fn off_runtime<T: Send + 'static>(
    store: &std::sync::Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
}

impl Store {
    /// Every record under `prefix` (a one-byte tag followed by an inode number), decoded as `what`.
    fn records_by_ino<T>(&self, prefix: &[u8], what: &'static str) -> Result<Vec<(u64, T)>, StoreError>
    where
        T: for<'de> serde::Deserialize<'de>,
    {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key::ino_of(&k)?, decode(&v, what)?))
            })
            .collect()
    }

    /// Opens (or creates) the store under `data_dir`; the root directory is owned by `uid:gid`.
    /// Finishes what a crash interrupted (see [`Store::recover`]).
    pub fn open(data_dir: &Path, uid: u32, gid: u32) -> Result<Store, StoreError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir)?;
        let content_dir = data_dir.join("content");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&content_dir)?;
        let reserve = reserve::Reserve::open(data_dir);
        // No background flush: sled writes only in commits and syncs, after the reserve check.
        // The daemon syncs every half second.
        let db = sled::Config::new().path(data_dir.join("db")).cache_capacity(32 << 20).flush_every_ms(None).open()?;
        let tree = db.open_tree("fs")?;
        let node_origin = node_origin(&tree)?;
        let store = Store {
            content_dir_handle: File::open(&content_dir)?,
            content_dir,
            db,
            tree,
            content_dir_created: std::sync::atomic::AtomicU64::new(0),
            content_dir_synced: std::sync::Mutex::new(0),
            poisoned: AtomicBool::new(false),
            doorbell: tokio::sync::Notify::new(),
            deal_lock: std::sync::Mutex::new(()),
            packer: std::sync::Mutex::new(()),
            catalog: std::sync::Mutex::new(catalog::Catalog::default()),
            tombstone_bell: tokio::sync::Notify::new(),
            copying: crate::sync::Holds::default(),
            reserve,
            db_dir: data_dir.join("db"),
            commits: std::sync::atomic::AtomicU64::new(0),
            tree_commits: std::sync::atomic::AtomicU64::new(0),
            gate: std::sync::RwLock::new(()),
            journal: std::sync::Mutex::new(None),
            building: std::sync::atomic::AtomicUsize::new(0),
            loading: AtomicBool::new(false),
            kept_fids: std::sync::Mutex::new((0, None)),
            refs_on_chain: Default::default(),
            another_writer: AtomicBool::new(false),
            deletions_wait: std::sync::Mutex::new(None),
            builder: std::sync::Mutex::new(()),
            kept_records: std::sync::Mutex::new(()),
            node_origin,
        };
        if store.inode(ROOT_INO)?.is_none() {
            let now = Timestamp::now();
            let root = InodeRecord {
                kind: Kind::Dir,
                perm: 0o755,
                uid,
                gid,
                nlink: 2,
                size: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                parent: ROOT_INO,
                target: Vec::new(),
                content_version: 0,
                name: Vec::new(),
                key: None,
            };
            let mut b = Batch::default();
            b.put_inode(ROOT_INO, &root);
            store.commit(b)?;
        }
        store.forget_partial_restore()?;
        store.note_loading()?;
        store.recover()?;
        store.sync()?;
        store.build_catalog()?;
        store.refill_reserve();
        Ok(store)
    }

    /// A new inode number; numbers are never reused.
    pub fn allocate_ino(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()? + ROOT_INO + 1)
    }

    /// The id across machines of inode `ino` of record `rec`: the key it was restored with, or
    /// this data dir's origin and its inode number (inode numbers are never reused in a data
    /// dir, and the origin is drawn with it).
    pub fn node_key(&self, ino: u64, rec: &InodeRecord) -> NodeKey {
        match rec.key {
            _ if ino == ROOT_INO => NodeKey::ROOT,
            Some(key) => key,
            None => NodeKey { origin: self.node_origin, serial: ino },
        }
    }

    /// The record of inode `ino`.
    pub fn inode(&self, ino: u64) -> Result<Option<InodeRecord>, StoreError> {
        self.tree.get(key::inode(ino))?.map(|v| decode_inode(&v)).transpose()
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<(u64, Kind)>, StoreError> {
        self.tree.get(key::dirent(parent, name))?.map(|v| decode_dirent(&v)).transpose()
    }

    /// Every entry of directory `parent`, sorted by name.
    pub fn dir_entries(&self, parent: u64) -> Result<Vec<(Vec<u8>, u64, Kind)>, StoreError> {
        let prefix = key::dirent_prefix(parent);
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let (ino, kind) = decode_dirent(&v)?;
                Ok((k[prefix.len()..].to_vec(), ino, kind))
            })
            .collect()
    }

    /// Whether directory `parent` has no entries.
    pub fn dir_is_empty(&self, parent: u64) -> Result<bool, StoreError> {
        Ok(self.tree.scan_prefix(key::dirent_prefix(parent)).next().transpose()?.is_none())
    }

    /// The value of extended attribute `name` of `ino`.
    pub fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key::xattr(ino, name))?.map(|v| v.to_vec()))
    }

    /// The names of the extended attributes of `ino`.
    pub fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = key::xattr_prefix(ino);
        self.tree.scan_prefix(prefix).keys().map(|k| Ok(k?[prefix.len()..].to_vec())).collect()
    }

    /// The upload record of `ino`.
    pub fn upload(&self, ino: u64) -> Result<Option<UploadRecord>, StoreError> {
        self.tree.get(key::upload(ino))?.map(|v| outbox::decode_upload(&v)).transpose()
    }

    /// The upload record of `ino` as it will be once `batch` is committed: a change that writes
    /// a record twice builds on its own first write, not on the committed one.
    pub fn upload_after(&self, batch: &Batch, ino: u64) -> Result<Option<UploadRecord>, StoreError> {
        match batch.1.uploads.get(&ino) {
            Some(staged) => Ok(staged.clone()),
            None => self.upload(ino),
        }
    }

    /// A fact about the data dir (`meta(b"key")`: the fingerprint of the key its files use).
    pub fn meta(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key::meta(name))?.map(|v| v.to_vec()))
    }

    /// Records a fact about the data dir, durably.
    pub fn set_meta(&self, name: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.0.insert(key::meta(name), value);
        self.commit(b)?;
        self.sync()
    }

    /// Forgets a fact about the data dir, durably.
    pub fn remove_meta(&self, name: &[u8]) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.0.remove(key::meta(name));
        self.commit(b)?;
        self.sync()
    }

    /// Whether anything of this data dir went to CESS under its key: a file encoded for upload,
    /// a FID to delete, or evicted content.
    pub fn stored_anything(&self) -> Result<bool, StoreError> {
        let encoded = self.uploads()?.iter().any(|(_, r)| r.fid.is_some());
        let other = |prefix: &[u8]| self.tree.scan_prefix(prefix).next().transpose().map(|kv| kv.is_some());
        Ok(encoded || other(key::TOMBSTONE_PREFIX)? || other(key::RESIDENCY_PREFIX)?)
    }

    /// Why the content of `ino` may be damaged, if it may be.
    pub fn poisoned(&self, ino: u64) -> Result<Option<String>, StoreError> {
        Ok(self.tree.get(key::poisoned(ino))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Applies `batch` atomically (not yet durable: see [`Store::sync`]).
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(StoreError::Poisoned);
        }
        self.reserve.before_write();
        let mut applying = self.applying();
        let Batch(batch, touched) = batch;
        applying.changes(&touched.tree, touched.load);
        if touched.inodes.is_empty() {
            self.tree.apply_batch(batch)?;
        } else {
            let mut catalog = crate::sync::lock(&self.catalog);
            self.tree.apply_batch(batch)?;
            let mut uploads = false;
            for &(ino, upload) in &touched.inodes {
                self.refresh(&mut catalog, ino, upload);
                uploads |= upload;
            }
            drop(catalog);
            if uploads {
                self.ring();
            }
        }
        if touched.tombstones {
            self.tombstone_bell.notify_one();
        }
        Ok(())
    }

    /// Brings the catalog's view of `ino` up to date with its records (`upload`: its upload
    /// record was written). Called under the catalog lock, right after the write.
    fn refresh(&self, catalog: &mut catalog::Catalog, ino: u64, upload: bool) {
        // An unreadable record keeps what the catalog knew of it, and holds deletions back.
        let up = match self.upload(ino) {
            Ok(up) => up,
            Err(e) => {
                log::error!("inode {ino}: upload record unreadable: {e}");
                catalog.set_unreadable(ino, true);
                return;
            }
        };
        catalog.set_unreadable(ino, false);
        let residency = self.residency(ino).unwrap_or_default();
        catalog.refresh(ino, up.as_ref(), residency.as_ref());
        if upload {
            catalog.mark_changed(ino);
        }
    }

    /// Builds the catalog from one scan of the records.
    fn build_catalog(&self) -> Result<(), StoreError> {
        let residencies: std::collections::HashMap<u64, Residency> = self.residencies()?.into_iter().collect();
        let mut catalog = crate::sync::lock(&self.catalog);
        for kv in self.tree.scan_prefix(key::UPLOAD_PREFIX) {
            let (k, v) = kv?;
            // A record that does not decode is left out (and logged), not the whole mount; what
            // it needs is not known, so nothing is deleted from the chain meanwhile.
            let Ok(ino) = key::ino_of(&k) else {
                log::error!("an upload record's key is malformed: {k:?}; left out");
                continue;
            };
            match outbox::decode_upload(&v) {
                Ok(up) => {
                    catalog.refresh(ino, Some(&up), residencies.get(&ino));
                    catalog.mark_changed(ino);
                }
                Err(e) => {
                    log::error!("the upload record of inode {ino} is unreadable: {e}; no FID is deleted until it is");
                    catalog.set_unreadable(ino, true);
                }
            }
        }
        // A deletion sent before a crash may still land: its FID stays claimed until the
        // reaper sees how it ended (`Store::claim_deletion`), whatever needs it now.
        for k in self.tree.scan_prefix(key::DELETION_SENT_PREFIX).keys() {
            let Ok(fid) = key::fid_of(&k?) else { continue };
            if catalog.needed(&fid) {
                log::error!("{fid}: a deletion sent before the last shutdown may still land, and a file here needs it");
            }
            catalog.force_claim(&fid);
        }
        Ok(())
    }

    /// Makes every committed change durable. A failure poisons the store.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(StoreError::Poisoned);
        }
        self.reserve.before_write();
        if let Err(e) = self.db.flush() {
            self.poisoned.store(true, Ordering::Relaxed);
            log::error!("metadata flush failed, refusing further writes: {e}");
            return Err(e.into());
        }
        Ok(())
    }

    /// Deletes every record of an inode but its upload record (see [`Store::retire`]), and its
    /// content file.
    pub fn purge(&self, ino: u64) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.remove_inode(ino);
        b.remove_writing(ino);
        b.remove_poisoned(ino);
        b.put_residency(ino, None);
        b.0.remove(&key::orphan(ino));
        for name in self.xattr_names(ino)? {
            b.remove_xattr(ino, &name);
        }
        self.commit(b)?;
        self.remove_content(ino)
    }

    // ── content files ───────────────────────────────────────────────────────────────────────

    /// Where the bytes of `ino` are kept.
    pub fn content_path(&self, ino: u64) -> PathBuf {
        self.content_dir.join(format!("{ino:016x}"))
    }

    /// Creates the empty content file of a new regular file.
    pub fn create_content(&self, ino: u64) -> Result<File, StoreError> {
        let f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(self.content_path(ino))?;
        self.content_dir_created.fetch_add(1, Ordering::AcqRel);
        Ok(f)
    }

    /// Opens the content file of `ino` for reading and writing.
    pub fn open_content(&self, ino: u64) -> Result<File, StoreError> {
        Ok(OpenOptions::new().read(true).write(true).open(self.content_path(ino))?)
    }

    /// Removes the content file of `ino` (absent is fine).
    pub fn remove_content(&self, ino: u64) -> Result<(), StoreError> {
        outbox::remove_if_present(&self.content_path(ino))
    }

    /// Replaces the content file of `ino` with an empty one of `size` bytes (all hole) in one
    /// rename. Returns the old file, open: its blocks are freed when the caller drops it.
    pub fn replace_content_with_hole(&self, ino: u64, size: u64) -> Result<File, StoreError> {
        let path = self.content_path(ino);
        let old = File::open(&path)?;
        let hole = path.with_extension("evict");
        let made = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&hole)
            .and_then(|f| f.set_len(size))
            .and_then(|()| std::fs::rename(&hole, &path));
        if let Err(e) = made {
            outbox::remove_if_present(&hole)?;
            return Err(e.into());
        }
        Ok(old)
    }

    /// Makes the names of newly created content files durable.
    /// Returns once every file created before the call has a durable name (a caller never
    /// returns early because another one's fsync is still under way).
    pub fn sync_content_dir(&self) -> Result<(), StoreError> {
        let created = self.content_dir_created.load(Ordering::Acquire);
        let mut synced = crate::sync::lock(&self.content_dir_synced);
        if *synced >= created {
            return Ok(());
        }
        self.content_dir_handle.sync_all()?;
        *synced = created;
        Ok(())
    }

    /// Bytes and inodes of the file system holding the data dir.
    pub fn disk_space(&self) -> Result<libc::statvfs, StoreError> {
        Ok(crate::disk::statvfs(&self.content_dir)?)
    }

    /// Whether new file content must wait for space: the disk is nearly full and what is left
    /// is the database's (its reserve is released).
    pub fn content_space_exhausted(&self) -> bool {
        self.reserve.holds_back_content()
    }

    /// Whether `len` more bytes fit on the disk and leave the database its reserve's room (a few
    /// bytes a truncation needs, `essential`, may use it).
    pub fn has_room_for(&self, len: u64, essential: bool) -> bool {
        self.reserve.has_room_for(len, essential)
    }

    /// Makes the database's reserve again once the disk has room, and keeps room after its log
    /// (called now and then).
    pub fn refill_reserve(&self) {
        self.reserve.refill();
        self.reserve.keep_room_after(&self.db_dir.join("db"));
    }

    /// Gives back a live file its content file if a crash lost it: an unlink that moved it
    /// aside for a deal (`.deal`) and did not commit, or a name that never became durable (an
    /// empty file then, its loss logged).
    fn restore_content_file(&self, ino: u64) -> Result<(), StoreError> {
        let path = self.content_path(ino);
        if path.exists() {
            return Ok(());
        }
        let deal = self.deal_snapshot_path(ino);
        if deal.exists() {
            log::warn!(
                "inode {ino}: its content was set aside for a deal by an unlink that did not happen; taking it back"
            );
            std::fs::copy(&deal, &path)?;
        } else {
            log::error!("inode {ino}: its content file is missing after a crash; it is empty now");
            OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        }
        File::open(&path)?.sync_all()?;
        self.content_dir_handle.sync_all()?;
        Ok(())
    }

    /// Finishes what a crash interrupted: removes unlinked inodes that were open, re-stages
    /// files that were open for writing (their content may have changed after the last commit),
    /// and removes content files that no record points to.
    fn recover(&self) -> Result<(), StoreError> {
        self.migrate_upload_records()?;
        self.migrate_tombstones()?;
        for k in self.tree.scan_prefix(key::ORPHAN_PREFIX).keys() {
            let ino = key::ino_of(&k?)?;
            log::info!("removing inode {ino}, unlinked while open before the last shutdown");
            self.purge(ino)?;
        }
        for kv in self.tree.scan_prefix(key::WRITING_PREFIX) {
            let (k, v) = kv?;
            let ino = key::ino_of(&k)?;
            let mut b = Batch::default();
            b.remove_writing(ino);
            if let Some(why) = self.poisoned(ino)? {
                log::warn!("inode {ino} stays as it was: {why}");
            } else if let Some(mut rec) = self.inode(ino)? {
                self.restore_content_file(ino)?;
                let content = self.open_content(ino)?;
                if let Ok(size) = <[u8; 8]>::try_from(&v[..]) {
                    content.set_len(u64::from_be_bytes(size))?;
                    content.sync_data()?;
                }
                let meta = content.metadata()?;
                rec.size = meta.len();
                rec.mtime = meta.modified()?.into();
                rec.content_version += 1;
                b.put_inode(ino, &rec);
                b.put_upload(ino, &UploadRecord::restaged(self.upload(ino)?, rec.content_version));
                // A writer had the whole content (fetched first, or cut by the mark's truncation).
                b.put_residency(ino, None);
                log::info!("re-staging inode {ino}: it was open for writing at the last shutdown");
            }
            self.commit(b)?;
        }
        for entry in std::fs::read_dir(&self.content_dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            let (hex, deal) = match name.strip_suffix(".deal") {
                Some(h) => (h, true),
                None => (name, false),
            };
            let keep = match u64::from_str_radix(hex, 16) {
                Ok(ino) if deal => {
                    let up = self.upload(ino)?.filter(|r| r.state.deal_in_flight());
                    if up.as_ref().is_some_and(|r| !r.retired) && self.inode(ino)?.is_some() {
                        self.restore_content_file(ino)?;
                    }
                    up.is_some()
                }
                Ok(ino) => self.inode(ino)?.is_some(),
                Err(_) => false,
            };
            // A stray file is only wasted space: one that cannot go now (a read-only disk) waits.
            if !keep {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => log::info!("removed stray content file {}", entry.path().display()),
                    Err(e) => log::warn!("stray content file {} left: {e}", entry.path().display()),
                }
            }
        }
        Ok(())
    }
}
