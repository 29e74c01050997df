//! What the tree's snapshots on chain say to a mount that writes or deletes: until several
//! writers of one tree are supported, a mount deletes no FID that any snapshot of the tree on
//! chain refers to, and a mount that finds a snapshot newer than its own written by another
//! stops writing snapshots and deleting (it keeps its local copies too: the other may delete
//! what only this one refers to).
//!
//! One look reads the account's hold list and the `File` records of FIDs not seen before
//! ([`Finder`]), then each active snapshot of the tree that this mount neither keeps nor is
//! deleting, once per mount (a snapshot never changes), for the FIDs it refers to. A snapshot
//! that cannot be fetched now fails the look: nothing is deleted until one succeeds. One that
//! reads as damaged refers to nothing anyone can use, and is logged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TreeOnChain;
use super::restore::{Finder, Found, ReadError, read};
use crate::fetch::Fetcher;
use crate::format::Hash;
use crate::fs::SnapshotFlags;
use crate::store::{KeptSnapshot, Store, StoreError};
use crate::sync::lock;

/// Looks at the tree's snapshots on chain (see the module docs).
pub struct TreeWatch {
    store: Arc<Store>,
    flags: Arc<SnapshotFlags>,
    tree: TreeOnChain,
    fetcher: Arc<Fetcher>,
    finder: Finder,
    /// Whether this mount writes the tree (else it only keeps from deleting what others use).
    writes: bool,
    /// The writer of each snapshot read, and the FIDs it refers to (`None`: it reads as
    /// damaged).
    read: Mutex<HashMap<Hash, Option<Written>>>,
    /// When the last look succeeded.
    looked: Mutex<Option<Instant>>,
    /// One look at a time.
    looking: tokio::sync::Mutex<()>,
}

impl TreeWatch {
    /// A watch of `tree` for the mount of `store`; `writes`: it writes the tree's snapshots.
    pub fn new(
        store: Arc<Store>,
        flags: Arc<SnapshotFlags>,
        tree: TreeOnChain,
        fetcher: Arc<Fetcher>,
        writes: bool,
    ) -> TreeWatch {
        TreeWatch {
            store,
            flags,
            tree,
            fetcher,
            finder: Finder::default(),
            writes,
            read: Mutex::new(HashMap::new()),
            looked: Mutex::new(None),
            looking: tokio::sync::Mutex::new(()),
        }
    }

    /// The finder the watch reads the chain with (the sweep reads it too).
    pub fn finder(&self) -> &Finder {
        &self.finder
    }

    /// The fetcher the watch reads snapshots with.
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// The tree on chain.
    pub fn tree(&self) -> &TreeOnChain {
        &self.tree
    }

    /// [`TreeWatch::look`], unless one succeeded within `fresh`.
    pub async fn look_within(&self, fresh: Duration) -> Result<(), String> {
        if lock(&self.looked).is_some_and(|at| at.elapsed() < fresh) {
            return Ok(());
        }
        self.look().await
    }

    /// Looks at the tree's snapshots on chain: records in the store the FIDs those it neither
    /// keeps nor deletes refer to, and stops this mount if another writes the tree. An error
    /// says why it could not look (nothing may be deleted meanwhile).
    pub async fn look(&self) -> Result<(), String> {
        let _one = self.looking.lock().await;
        let started = Instant::now();
        let found = self
            .finder
            .find(&*self.tree.chain, &self.tree.territory, &self.tree.names)
            .await
            .map_err(|e| format!("looking for the tree's snapshots on chain: {e}"))?;
        let store = self.store.clone();
        let (ours, deleting, floor) = tokio::task::spawn_blocking(move || ours(&store))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let me = super::writer_id(&self.store).map_err(|e| e.to_string())?;
        let baseline = super::baseline(&self.store).map_err(|e| e.to_string())?;
        if self.writes
            && let Some(why) = newer_elsewhere(&found, &ours, floor)
        {
            self.stop(why);
        }
        let mut refs = HashSet::new();
        for f in found.iter().filter(|f| f.active && !ours.contains(&f.fid) && !deleting.contains(&f.fid)) {
            // This data dir's own trees, and its lineage's from before it took the tree up, are
            // its past (a dropped commit stays on chain while a later tree refers to it): what
            // they refer to is its to delete. Another writer's are not, whatever their lineage.
            if let Some(written) = self.refs_of(f).await?
                && !(me == Some(written.writer)
                    || me.is_some_and(|me| super::same_lineage(&me, &written.writer)) && f.generation <= baseline)
            {
                refs.extend(written.fids.iter().copied());
            }
        }
        self.store.set_refs_on_chain(refs);
        *lock(&self.looked) = Some(started);
        Ok(())
    }

    /// Who wrote snapshot `f` and the FIDs it refers to, read once (`None`: it reads as
    /// damaged).
    async fn refs_of(&self, f: &Found) -> Result<Option<Written>, String> {
        if let Some(known) = lock(&self.read).get(&f.fid) {
            return Ok(known.clone());
        }
        let refs = match read(&self.fetcher, f).await {
            Ok(tree) => {
                Some(Written { writer: tree.snapshot.writer, fids: Arc::new(KeptSnapshot::of(&tree.snapshot).fids) })
            }
            Err(ReadError::Damaged(why)) => {
                log::warn!("tree snapshot {} on chain cannot be read ({why}): it refers to nothing", f.generation);
                None
            }
            Err(ReadError::Unavailable(e)) => {
                return Err(format!("tree snapshot {} on chain could not be fetched now: {e}", f.generation));
            }
            // What it refers to is not known: nothing is deleted while it is on chain.
            Err(e @ ReadError::Lost(_)) => return Err(format!("tree snapshot {} on chain: {e}", f.generation)),
        };
        lock(&self.read).insert(f.fid, refs.clone());
        Ok(refs)
    }

    /// Stops this mount: another writes the tree.
    fn stop(&self, why: String) {
        let mut stopped = lock(&self.flags.stopped);
        if stopped.is_none() {
            log::warn!(
                "{why}: this mount stops writing tree snapshots and deleting files from the chain, and keeps its \
                 local copies (remount it on a fresh data dir to take up the newer tree)"
            );
            *stopped = Some(why);
            self.store.stop_deletions();
        }
    }

    /// Whether this mount stopped for another writer.
    pub fn stopped(&self) -> bool {
        lock(&self.flags.stopped).is_some()
    }
}

/// Who wrote a snapshot on chain, and the FIDs it refers to.
#[derive(Clone)]
struct Written {
    writer: [u8; 16],
    fids: Arc<Vec<Hash>>,
}

/// The FIDs of the trees this mount keeps (and of the commits it no longer keeps that still
/// hold its files or its kept trees' directories: their trees are its past), those it is
/// deleting, and the generation below which a snapshot is not another writer's (its newest
/// kept, or the newest on chain when the tree began here).
pub(crate) fn ours(store: &Store) -> Result<(HashSet<Hash>, HashSet<Hash>, u64), StoreError> {
    let mut fids: HashSet<Hash> = store.stored_packs().into_iter().map(|(fid, _, _)| fid).collect();
    fids.extend(store.kept_snapshot_fids()?.iter());
    let mut floor = super::baseline(store)?;
    for (ino, kept) in store.kept_snapshots()? {
        fids.extend(store.upload(ino)?.and_then(|u| u.fid));
        floor = floor.max(kept.generation);
    }
    let deleting = store.tombstones()?.into_iter().map(|(fid, _)| fid).collect();
    Ok((fids, deleting, floor))
}

/// Why another mount writes this tree, if the newest snapshot on chain says so: it is not one
/// of `ours` and is newer than `floor`.
fn newer_elsewhere(found: &[Found], ours: &HashSet<Hash>, floor: u64) -> Option<String> {
    let newest = found.first()?;
    (!ours.contains(&newest.fid) && newest.generation > floor).then(|| {
        let written = std::time::UNIX_EPOCH + Duration::from_millis(newest.generation);
        format!(
            "another mount wrote tree snapshot {} ({}), newer than this mount's",
            newest.generation,
            crate::protocol::utc(written)
        )
    })
}
