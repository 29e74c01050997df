//! Loading a restored tree directory by directory (store/loading.rs): [`DirLoader`] reads a
//! directory's blobs from the CESS files holding them, for the filesystem when a directory is
//! first opened and for [`Load`], which loads the rest in the background and then ends the
//! load (adopting the older snapshots of the tree's lineage).
//!
//! A file holding blobs (a commit's segment, a tree file's segments as blobs in them are
//! wanted) is fetched once and kept while it may serve the next directories, within
//! [`HELD_BYTES`]: a tree's directories sit together in few files, and the loader takes them in
//! inode order, which is the order the restore found them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::restore::{Found, Held, ReadError, read};
use crate::fetch::Fetcher;
use crate::format::{Dir, Hash, NameKey, TreeRef, one_dir};
use crate::fs::{Fs, FsError};
use crate::store::{Adopted, LoadedDir, Store};
use crate::sync::lock;

/// Bytes of fetched files kept for the directories to come (past it the oldest go; a file is
/// at most a few segments).
const HELD_BYTES: usize = 256 << 20;
/// Directories taken from the store at once by the background load.
const LOAD_BATCH: usize = 256;
/// How long the background load waits after a directory could not be read.
const RETRY: Duration = Duration::from_secs(30);

/// Reads directories of a tree from CESS.
pub struct DirLoader {
    fetcher: Arc<Fetcher>,
    names: NameKey,
    runtime: tokio::runtime::Handle,
    /// The tree files among the files holding blobs (the others are commits), by segments.
    tree_files: HashMap<Hash, u32>,
    held: std::sync::Mutex<HeldFiles>,
}

/// The files read, each piece fetched once however many readers want it at once.
#[derive(Default)]
struct HeldFiles {
    files: HashMap<Hash, Arc<Held>>,
    /// Files read, oldest first, and their bytes fetched.
    order: VecDeque<(Hash, usize)>,
    bytes: usize,
}

impl HeldFiles {
    /// Notes that `fid` holds `size` bytes fetched; forgets the oldest past [`HELD_BYTES`].
    fn fetched(&mut self, fid: Hash, size: usize) {
        match self.order.iter_mut().find(|(f, _)| *f == fid) {
            Some((_, was)) => {
                self.bytes = self.bytes - *was + size;
                *was = size;
            }
            None => {
                self.order.push_back((fid, size));
                self.bytes += size;
            }
        }
        while self.bytes > HELD_BYTES && self.order.len() > 1 {
            if let Some((old, size)) = self.order.pop_front() {
                self.files.remove(&old);
                self.bytes -= size;
            }
        }
    }
}

impl DirLoader {
    /// A loader of a tree whose blobs are in `tree_files` (with their segments) and commits.
    pub fn new(
        fetcher: Arc<Fetcher>,
        names: NameKey,
        runtime: tokio::runtime::Handle,
        tree_files: &[(Hash, u32)],
    ) -> DirLoader {
        DirLoader {
            fetcher,
            names,
            runtime,
            tree_files: tree_files.iter().copied().collect(),
            held: Default::default(),
        }
    }

    /// Forgets the files fetched (the load has ended).
    fn forget(&self) {
        *lock(&self.held) = HeldFiles::default();
    }

    /// Keeps `held`, a file read already.
    pub(super) fn keep(&self, held: Arc<Held>) {
        let mut files = lock(&self.held);
        let (fid, size) = (held.fid(), held.size());
        files.files.insert(fid, held);
        files.fetched(fid, size);
    }

    /// Reads the directory of blob `dir` (and its chunks).
    pub async fn read(&self, dir: &TreeRef) -> Result<LoadedDir, ReadError> {
        let damaged = |e: crate::format::SnapshotError| ReadError::Damaged(e.to_string());
        let mut homes = Vec::new();
        let entries = match self.blob(dir, &mut homes).await? {
            Dir::Entries(entries) => entries,
            Dir::Chunks(chunks) => {
                let mut all = Vec::new();
                for c in &chunks {
                    match self.blob(c, &mut homes).await? {
                        Dir::Entries(entries) => all.extend(entries),
                        Dir::Chunks(_) => return Err(ReadError::Damaged("a chunk of chunks".into())),
                    }
                }
                all
            }
        };
        let dir = one_dir(&entries).map_err(damaged)?;
        let names = dir
            .snapshot
            .nodes
            .iter()
            .filter_map(|n| n.location.fid())
            .map(|fid| (*fid, self.names.file_name(fid)))
            .collect();
        Ok(LoadedDir { dir, homes, names })
    }

    /// Opens blob `r`, noting where it is in `homes`.
    async fn blob(&self, r: &TreeRef, homes: &mut Vec<(Hash, crate::format::Home)>) -> Result<Dir, ReadError> {
        let keys = self.fetcher.blob_keys().ok_or(ReadError::Unavailable(crate::fetch::FetchError::NoKey(r.fid)))?;
        let held = self.file(r.fid);
        let dir = held.open(&self.fetcher, keys, r).await;
        let mut files = lock(&self.held);
        // One forgotten meanwhile (past HELD_BYTES) is not counted again.
        if files.files.get(&r.fid).is_some_and(|h| Arc::ptr_eq(h, &held)) {
            files.fetched(r.fid, held.size());
        }
        drop(files);
        let dir = dir?;
        homes.push((r.id, (*r, self.tree_files.get(&r.fid).copied())));
        Ok(dir)
    }

    /// File `fid`, as read so far.
    fn file(&self, fid: Hash) -> Arc<Held> {
        let segments = self.tree_files.get(&fid).copied();
        lock(&self.held).files.entry(fid).or_insert_with(|| Held::new(fid, segments)).clone()
    }
}

impl crate::fs::TreeLoader for DirLoader {
    fn read_dir(&self, dir: &TreeRef) -> Result<LoadedDir, FsError> {
        self.runtime.block_on(self.read(dir)).map_err(|e| match e {
            ReadError::Unavailable(e) => FsError::Fetch(e),
            e => FsError::TreeNotLoaded(e.to_string()),
        })
    }
}

/// The background load of a restored tree (see the module docs).
pub struct Load {
    /// The filesystem the directories are loaded through.
    pub fs: Arc<Fs>,
    /// Its store.
    pub store: Arc<Store>,
    /// Reads the directories.
    pub loader: Arc<DirLoader>,
    /// Reads the older snapshots to adopt.
    pub fetcher: Arc<Fetcher>,
    /// Where to look for them.
    pub chain: Arc<dyn crate::protocol::Chain>,
    /// The tree's name key.
    pub names: NameKey,
    /// Where the mount says why the load waits (`user.cess.snapshot`'s `load_waits`).
    pub flags: Arc<crate::fs::SnapshotFlags>,
}

/// How a pass over the directories still on CESS went.
enum Pass {
    /// Every directory was loaded and the load ended.
    Ended,
    /// Some could not be read now (the first, and why): try again later.
    Failed(u64, String),
    /// The mount is stopping.
    Stopped,
}

impl Load {
    /// Loads every directory still on CESS, then ends the load; until `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        crate::hooks::reached_async("restore-load").await;
        let started = Instant::now();
        loop {
            let why = match self.pass(&mut stop).await {
                Ok(Pass::Ended) => break,
                Ok(Pass::Stopped) => return,
                Ok(Pass::Failed(ino, why)) => format!("directory inode {ino} could not be read: {why}"),
                Err(e) => format!("{e:#}"),
            };
            crate::log_limited!(
                log::Level::Warn,
                "tree load",
                "loading the restored tree: {why}; trying again in {} s (nothing is deleted from the chain meanwhile)",
                RETRY.as_secs()
            );
            *lock(&self.flags.load_waits) = Some(why);
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = stop.changed() => return,
            }
        }
        *lock(&self.flags.load_waits) = None;
        self.loader.forget();
        log::info!("the restored tree is loaded whole, in {:.1} s", started.elapsed().as_secs_f64());
    }

    /// Loads every directory still on CESS, in inode order, going past those that cannot be
    /// read now; then ends the load if none is left.
    async fn pass(&self, stop: &mut tokio::sync::watch::Receiver<bool>) -> anyhow::Result<Pass> {
        let mut after = 0;
        let mut failed = None;
        loop {
            let store = self.store.clone();
            let pending = tokio::task::spawn_blocking(move || store.pending_dirs(after, LOAD_BATCH)).await??;
            let Some(&last) = pending.last() else { break };
            after = last;
            for ino in pending {
                if *stop.borrow() {
                    return Ok(Pass::Stopped);
                }
                let Some(dir) = self.store.pending_dir(ino)? else { continue };
                let read = tokio::select! {
                    read = self.loader.read(&dir) => read,
                    _ = stop.changed() => return Ok(Pass::Stopped),
                };
                let loaded = match read {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        failed.get_or_insert((ino, e.to_string()));
                        continue;
                    }
                };
                let fs = self.fs.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || fs.apply_loaded_dir(ino, &dir, &loaded)).await? {
                    failed.get_or_insert((ino, e.to_string()));
                }
            }
        }
        if let Some((ino, why)) = failed {
            return Ok(Pass::Failed(ino, why));
        }
        Ok(if self.finish().await? { Pass::Ended } else { Pass::Failed(0, "a directory was left".into()) })
    }

    /// Adopts the older snapshots of the lineage and ends the load. `false`: a directory is
    /// still on CESS.
    async fn finish(&self) -> anyhow::Result<bool> {
        let Some(loading) = self.store.loading_tree()? else { return Ok(true) };
        // The restore read the hold list only as far back as it took to find the newest tree:
        // the older ones are looked for now, in every record.
        let found = super::restore::find(&*self.chain, &loading.territory, &self.names).await?;
        let older: Vec<Found> = found.into_iter().filter(|f| f.active && f.generation < loading.generation).collect();
        let writer = super::writer_id(&self.store)?;
        let mut read_back = Vec::new();
        for o in &older {
            match read(&self.fetcher, o).await {
                Ok(old) if writer.is_some_and(|w| super::same_lineage(&old.snapshot.writer, &w)) => {
                    read_back.push((o, old));
                }
                Ok(_) => {
                    log::info!("tree snapshot {} is an earlier tree's (before --fresh): left as it is", o.generation)
                }
                // Not fetched now: the load ends once it is, to keep it.
                Err(ReadError::Unavailable(e)) => {
                    anyhow::bail!("the older tree snapshot {} could not be fetched now: {e}", o.generation)
                }
                Err(e) => log::warn!("the older tree snapshot {} is left as it is: {e}", o.generation),
            }
        }
        let names = &self.names;
        let adopted: Vec<Adopted<'_>> = read_back
            .iter()
            .map(|(found, old)| super::restore::adopted(found, &old.snapshot, old.seed, names))
            .collect();
        // The sweep and the collections look back to the oldest snapshot of the lineage.
        let oldest = read_back.iter().map(|(found, _)| found.completion).min();
        let meta = match oldest {
            Some(block) => {
                let from = crate::store::lineage::pending(&self.store)?.map_or(block, |p| p.lineage_from.min(block));
                crate::store::lineage::lineage_meta(&self.store, from)?
            }
            None => Vec::new(),
        };
        Ok(tokio::task::block_in_place(|| self.store.finish_loading(&adopted, &meta))?)
    }
}
