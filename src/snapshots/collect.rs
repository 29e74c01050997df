//! The collector: FIDs of this tree on chain that nothing refers to, found and deleted.
//!
//! Mark: every FID a record of this data dir refers to (files and their earlier versions still
//! kept, packs, commits, kept trees, deletions under way); a record that cannot be read fails
//! the collection, so nothing counts as garbage then. Candidates: FIDs the account holds in the
//! territory under a file or pack name of this key, active since the lineage began (the block
//! at which the tree's oldest kept snapshot became active when it was restored, or the newest
//! block of the key's files when it began here: a `--fresh` tree's predecessors are never
//! touched). The unmarked candidates are queued for deletion; the reaper sends them, many to a
//! transaction, each after its own look at the tree on chain.
//!
//! Nothing is collected while the tree may have another live writer: a snapshot of this key
//! active since the lineage began that this mount does not keep, or before this mount wrote the
//! newest snapshot on chain itself (a machine thought lost that comes back then finds a newer
//! tree than its own and stops, before it refers to any of these FIDs again).
//!
//! It runs at two moments:
//! - The sweep after a restore. A machine lost before its next snapshot leaves FIDs on chain
//!   that it declared after its last one: held and charged, referred to by nothing. The tree
//!   restored on another machine deletes them once no other mount has written the tree for a
//!   while (`sweep_after`; the lost machine may not be lost). A file or pack of this key stored
//!   after the restore that nothing here knows stops it: another mount went on uploading.
//! - When asked (`cessfs gc`, `user.cess.gc` on the root), with `--dry-run` listing only. A
//!   candidate goes once it was found unmarked at least the grace period ago (`gc_grace`, by
//!   this data dir's clock: the first collection that finds it starts it), so that a file
//!   another mount just stored, not in a tree yet, is left alone.

use serde::{Deserialize, Serialize};

use super::restore::Named;
use super::watch::TreeWatch;
use crate::format::{Hash, NameKind};
use crate::store::{Store, StoreError, Timestamp};

/// The meta record of a sweep to come.
const PENDING: &[u8] = b"sweep-pending";

/// A sweep to come, recorded when a tree is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The block the restored lineage began at ([`super::restore::Chosen::lineage_from`]).
    pub lineage_from: u32,
    /// When the tree was restored (Unix seconds).
    pub restored_at: i64,
    /// The newest block at which a file of the tree held then became active: files stored
    /// later are another mount's.
    pub restored_block: u32,
}

/// The record of a sweep recorded before `restored_block` was.
#[derive(Deserialize)]
struct PendingV1 {
    lineage_from: u32,
    restored_at: i64,
}

/// The meta record that schedules the sweep of a tree restored now (written with the restore).
pub fn pending_meta(lineage_from: u32, restored_block: u32) -> (&'static [u8], Vec<u8>) {
    let pending = Pending { lineage_from, restored_at: Timestamp::now().secs, restored_block };
    (PENDING, postcard::to_stdvec(&pending).unwrap_or_default())
}

/// The sweep to come, if any. One recorded before `restored_block` was sweeps as it did then.
pub fn pending(store: &Store) -> Result<Option<Pending>, StoreError> {
    let Some(v) = store.meta(PENDING)? else { return Ok(None) };
    if let Ok(p) = postcard::from_bytes::<Pending>(&v) {
        return Ok(Some(p));
    }
    Ok(postcard::from_bytes::<PendingV1>(&v).ok().map(|p| Pending {
        lineage_from: p.lineage_from,
        restored_at: p.restored_at,
        restored_block: u32::MAX,
    }))
}

/// Records the sweep as done.
pub fn done(store: &Store) -> Result<(), StoreError> {
    store.remove_meta(PENDING)
}

/// The meta record of the block the tree's lineage began at, for collections on demand.
const LINEAGE_FROM: &[u8] = b"lineage-from";
/// The meta record of when each unmarked candidate was first found (grace periods).
const FIRST_FOUND: &[u8] = b"gc-first-found";

/// The meta record of the block the lineage of a tree beginning now began at (written with the
/// restore, or when a new or fresh tree begins).
pub fn lineage_meta(lineage_from: u32) -> (&'static [u8], Vec<u8>) {
    (LINEAGE_FROM, lineage_from.to_be_bytes().to_vec())
}

/// What a sweep did.
#[derive(Debug, PartialEq, Eq)]
pub enum Swept {
    /// These many FIDs were queued for deletion.
    Queued(usize),
    /// Nothing was, for this reason; a later sweep may.
    Waiting(String),
    /// Nothing was: this mount has not written the newest snapshot on chain yet.
    NotYet,
}

/// The candidates of this tree since block `since` that nothing here refers to, or why none may
/// be collected now.
async fn unmarked(
    store: &std::sync::Arc<Store>,
    watch: &TreeWatch,
    since: impl Fn(&Named) -> bool,
) -> anyhow::Result<Result<Vec<Named>, Swept>> {
    let tree = watch.tree();
    let named = watch.finder().named(&*tree.chain, &tree.territory, &tree.names).await?;
    let kept = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || super::watch::ours(&store).map(|(ours, _, _)| ours)).await??
    };
    let baseline = super::baseline(store)?;
    let newest = named.iter().filter(|n| n.kind.is_tree()).max_by_key(|n| (n.number, n.fid.0));
    match newest {
        Some(n) if n.active && kept.contains(&n.fid) && n.number.unwrap_or_default() > baseline => {}
        _ => return Ok(Err(Swept::NotYet)),
    }
    crate::hooks::reached_async("sweep").await;
    let named = watch.finder().named(&*tree.chain, &tree.territory, &tree.names).await?;
    let since = |n: &&Named| !n.active || since(n);
    if let Some(other) = named.iter().filter(since).find(|n| n.kind.is_tree() && !kept.contains(&n.fid)) {
        return Ok(Err(Swept::Waiting(format!(
            "tree snapshot {} is not one this mount keeps: another mount may write this tree",
            other.number.unwrap_or_default()
        ))));
    }
    let contents: Vec<Named> =
        named.into_iter().filter(|n| since(&n) && matches!(n.kind, NameKind::File | NameKind::Pack)).collect();
    let fids: Vec<Hash> = contents.iter().map(|n| n.fid).collect();
    let unknown: std::collections::HashSet<Hash> = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.unknown_fids(&fids)).await??.into_iter().collect()
    };
    Ok(Ok(contents.into_iter().filter(|n| unknown.contains(&n.fid)).collect()))
}

/// Queues `fids` for deletion, those that nothing here refers to still. Returns how many.
async fn queue(store: &std::sync::Arc<Store>, fids: Vec<Hash>) -> anyhow::Result<usize> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || store.delete_unknown(&fids)).await??)
}

/// The sweep after a restore: looks for the FIDs of `pending` (see the module docs) and queues
/// them for deletion.
pub async fn sweep(store: &std::sync::Arc<Store>, watch: &TreeWatch, pending: Pending) -> anyhow::Result<Swept> {
    let found = unmarked(store, watch, |n| n.completion > pending.lineage_from).await?;
    let candidates = match found {
        Ok(candidates) => candidates,
        Err(why) => return Ok(why),
    };
    if let Some(late) = candidates.iter().find(|n| !n.active || n.completion > pending.restored_block) {
        return Ok(Swept::Waiting(format!(
            "{} of this tree was stored after the restore by another mount (fid {}): another mount may write this tree",
            if late.kind == NameKind::Pack { "a pack" } else { "a file" },
            late.fid
        )));
    }
    let queued = queue(store, candidates.into_iter().map(|n| n.fid).collect()).await?;
    Ok(Swept::Queued(queued))
}

/// A FID a collection found that nothing refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Garbage {
    /// The FID.
    pub fid: Hash,
    /// `file` or `pack`.
    pub kind: &'static str,
    /// Bytes of territory it takes.
    pub space: u64,
    /// Whether its grace period is over (else it stays, for now).
    pub due: bool,
}

/// What a collection on demand found, and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Collection {
    /// Only listed (`--dry-run`).
    pub dry_run: bool,
    /// The FIDs nothing refers to.
    pub garbage: Vec<Garbage>,
    /// How many of them were queued for deletion now.
    pub queued: usize,
    /// Bytes of territory the due ones free.
    pub frees: u64,
    /// Why nothing was collected, if so.
    pub waiting: Option<String>,
}

/// The block the lineage began at: as recorded when the tree began here; for a data dir from
/// before that record, the block the oldest snapshot this mount keeps became active at.
fn lineage_from(store: &Store, named: &[Named]) -> Result<Option<u32>, StoreError> {
    if let Some(v) = store.meta(LINEAGE_FROM)?
        && let Ok(bytes) = <[u8; 4]>::try_from(&v[..])
    {
        return Ok(Some(u32::from_be_bytes(bytes)));
    }
    if let Some(p) = pending(store)? {
        return Ok(Some(p.lineage_from));
    }
    let (ours, _, _) = super::watch::ours(store)?;
    Ok(named.iter().filter(|n| n.kind.is_tree() && n.active && ours.contains(&n.fid)).map(|n| n.completion).min())
}

/// A collection on demand (see the module docs): lists the FIDs of this tree that nothing
/// refers to and, unless `dry_run`, queues for deletion those whose grace period is over.
pub async fn collect(
    store: &std::sync::Arc<Store>,
    watch: &TreeWatch,
    grace: std::time::Duration,
    dry_run: bool,
) -> anyhow::Result<Collection> {
    let mut collection = Collection { dry_run, ..Collection::default() };
    let tree = watch.tree();
    let named = watch.finder().named(&*tree.chain, &tree.territory, &tree.names).await?;
    let Some(since) = lineage_from(store, &named)? else {
        collection.waiting = Some("this mount has not written a tree snapshot to CESS yet".into());
        return Ok(collection);
    };
    let candidates = match unmarked(store, watch, |n| n.completion > since).await? {
        Ok(candidates) => candidates,
        Err(Swept::NotYet) => {
            collection.waiting = Some("this mount has not written the newest tree snapshot on CESS yet".into());
            return Ok(collection);
        }
        Err(Swept::Waiting(why)) => {
            collection.waiting = Some(why);
            return Ok(collection);
        }
        Err(Swept::Queued(_)) => return Ok(collection),
    };
    // When each was first found unmarked: the grace period counts from there.
    let now = Timestamp::now().secs;
    let earlier: std::collections::HashMap<Hash, i64> = store
        .meta(FIRST_FOUND)?
        .and_then(|v| postcard::from_bytes::<Vec<(Hash, i64)>>(&v).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let first_found: Vec<(Hash, i64)> =
        candidates.iter().map(|n| (n.fid, earlier.get(&n.fid).copied().unwrap_or(now))).collect();
    store.set_meta(FIRST_FOUND, &postcard::to_stdvec(&first_found)?)?;
    for (n, (_, found_at)) in candidates.iter().zip(&first_found) {
        let space = crate::protocol::charged_space(n.segments) as u64;
        let due = n.active && now.saturating_sub(*found_at) >= grace.as_secs() as i64;
        let kind = if n.kind == NameKind::Pack { "pack" } else { "file" };
        collection.garbage.push(Garbage { fid: n.fid, kind, space, due });
    }
    let due: Vec<Hash> = collection.garbage.iter().filter(|g| g.due).map(|g| g.fid).collect();
    collection.frees = collection.garbage.iter().filter(|g| g.due).map(|g| g.space).sum();
    if !dry_run && !due.is_empty() {
        collection.queued = queue(store, due).await?;
        log::info!(
            "collected {} that nothing refers to: queued for deletion",
            crate::words::count(collection.queued as u64, "FID")
        );
    }
    Ok(collection)
}

/// Collections on demand for the filesystem (`user.cess.gc` on the root).
pub struct OnDemand {
    /// The data dir.
    pub store: std::sync::Arc<Store>,
    /// The tree on chain.
    pub watch: std::sync::Arc<TreeWatch>,
    /// Whether this mount stopped writing the tree.
    pub flags: std::sync::Arc<crate::fs::SnapshotFlags>,
    /// The runtime collections run on (FUSE threads are not its threads).
    pub runtime: tokio::runtime::Handle,
    /// `gc_grace`.
    pub grace: std::time::Duration,
}

/// FIDs listed in a report, at most: the rest are counted (an attribute holds 64 KiB).
const LISTED: usize = 200;

impl crate::fs::Collector for OnDemand {
    fn collect(&self, dry_run: bool) -> Result<serde_json::Value, String> {
        if let Some(why) = crate::sync::lock(&self.flags.stopped).clone() {
            return Err(format!("{why}: this mount deletes nothing from the chain"));
        }
        let c = self
            .runtime
            .block_on(collect(&self.store, &self.watch, self.grace, dry_run))
            .map_err(|e| format!("{e:#}"))?;
        Ok(serde_json::json!({
            "dry_run": c.dry_run,
            "unreferenced": c.garbage.len(),
            "due": c.garbage.iter().filter(|g| g.due).count(),
            "frees": c.frees,
            "queued": c.queued,
            "grace_secs": self.grace.as_secs(),
            "waiting": c.waiting,
            "fids": c.garbage.iter().take(LISTED).collect::<Vec<_>>(),
        }))
    }
}
