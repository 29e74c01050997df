//! The sweep after a restore. A machine lost before its next snapshot leaves FIDs on chain that
//! it declared after its last one: held and charged, referred to by nothing. The tree restored
//! on another machine finds them with the chain alone and deletes them, once no other mount has
//! written the tree for a while (`sweep_after`; the lost machine may not be lost).
//!
//! Swept: FIDs the account holds in the territory under a file or pack name of this key, active
//! since the lineage began (the block at which the oldest kept snapshot of the restored one's
//! writer became active, so a `--fresh` tree's predecessors are never touched), that nothing
//! in this data dir refers to. Nothing is swept while a snapshot of this key active since then
//! is not one this mount keeps: another mount writes the tree, and these may be its files.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::TreeOnChain;
use super::restore::Finder;
use crate::format::{Hash, NameKind};
use crate::store::{Store, StoreError, Timestamp};

/// The meta record of a sweep to come.
const PENDING: &[u8] = b"sweep-pending";

/// A sweep to come, recorded when a tree is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The block the restored lineage began at ([`super::restore::Outcome::lineage_from`]).
    pub lineage_from: u32,
    /// When the tree was restored (Unix seconds).
    pub restored_at: i64,
}

/// Records that the tree just restored is to be swept.
pub fn schedule(store: &Store, lineage_from: u32) -> Result<(), StoreError> {
    let pending = Pending { lineage_from, restored_at: Timestamp::now().secs };
    store.set_meta(PENDING, &postcard::to_stdvec(&pending).unwrap_or_default())
}

/// The sweep to come, if any.
pub fn pending(store: &Store) -> Result<Option<Pending>, StoreError> {
    Ok(store.meta(PENDING)?.and_then(|v| postcard::from_bytes(&v).ok()))
}

/// Records the sweep as done.
pub fn done(store: &Store) -> Result<(), StoreError> {
    store.remove_meta(PENDING)
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

/// Looks for the FIDs of `pending` (see the module docs) and queues them for deletion.
pub async fn sweep(
    store: &std::sync::Arc<Store>,
    tree: &TreeOnChain,
    finder: &Finder,
    pending: Pending,
) -> anyhow::Result<Swept> {
    let named = finder.named(&*tree.chain, &tree.territory, &tree.names).await?;
    let kept = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> Result<HashSet<Hash>, StoreError> {
            let mut fids = HashSet::new();
            for (ino, _) in store.kept_snapshots()? {
                fids.extend(store.upload(ino)?.and_then(|u| u.fid));
            }
            Ok(fids)
        })
        .await??
    };
    // Only once this mount wrote the newest snapshot on chain itself: a machine thought lost
    // that comes back then finds a newer tree than its own and stops, before it refers to any
    // of these FIDs again.
    let baseline = super::baseline(store)?;
    let newest = named.iter().filter(|n| n.kind == NameKind::Snapshot).max_by_key(|n| (n.number, n.fid.0));
    match newest {
        Some(n) if n.active && kept.contains(&n.fid) && n.number.unwrap_or_default() > baseline => {}
        _ => return Ok(Swept::NotYet),
    }
    let since = |n: &&super::restore::Named| !n.active || n.completion > pending.lineage_from;
    if let Some(other) = named.iter().filter(since).find(|n| n.kind == NameKind::Snapshot && !kept.contains(&n.fid)) {
        return Ok(Swept::Waiting(format!(
            "tree snapshot {} is not one this mount keeps: another mount may write this tree",
            other.number.unwrap_or_default()
        )));
    }
    let candidates: Vec<Hash> = named
        .iter()
        .filter(since)
        .filter(|n| n.active && matches!(n.kind, NameKind::File | NameKind::Pack))
        .map(|n| n.fid)
        .collect();
    let store = store.clone();
    let queued = tokio::task::spawn_blocking(move || store.delete_unknown(&candidates)).await??;
    Ok(Swept::Queued(queued))
}
