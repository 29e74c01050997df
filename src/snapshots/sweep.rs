//! The sweep after a restore. A machine lost before its next snapshot leaves FIDs on chain that
//! it declared after its last one: held and charged, referred to by nothing. The tree restored
//! on another machine finds them with the chain alone and deletes them, once no other mount has
//! written the tree for a while (`sweep_after`; the lost machine may not be lost).
//!
//! Swept: FIDs the account holds in the territory under a file or pack name of this key, active
//! since the lineage began (the block at which the oldest kept snapshot of the restored one's
//! writer became active, so a `--fresh` tree's predecessors are never touched) and stored
//! before the restore, that nothing in this data dir refers to. Nothing is swept while the tree
//! may have another live writer: a snapshot of this key active since the lineage began that
//! this mount does not keep, or a file or pack of this key stored after the restore that
//! nothing here knows (another mount went on uploading: these may be its files).

use serde::{Deserialize, Serialize};

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
pub async fn sweep(store: &std::sync::Arc<Store>, watch: &TreeWatch, pending: Pending) -> anyhow::Result<Swept> {
    let tree = watch.tree();
    let named = watch.finder().named(&*tree.chain, &tree.territory, &tree.names).await?;
    let kept = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || super::watch::ours(&store).map(|(ours, _, _)| ours)).await??
    };
    // Only once this mount wrote the newest snapshot on chain itself: a machine thought lost
    // that comes back then finds a newer tree than its own and stops, before it refers to any
    // of these FIDs again.
    let baseline = super::baseline(store)?;
    let newest = named.iter().filter(|n| n.kind.is_tree()).max_by_key(|n| (n.number, n.fid.0));
    match newest {
        Some(n) if n.active && kept.contains(&n.fid) && n.number.unwrap_or_default() > baseline => {}
        _ => return Ok(Swept::NotYet),
    }
    crate::hooks::reached_async("sweep").await;
    let named = watch.finder().named(&*tree.chain, &tree.territory, &tree.names).await?;
    let since = |n: &&super::restore::Named| !n.active || n.completion > pending.lineage_from;
    if let Some(other) = named.iter().filter(since).find(|n| n.kind.is_tree() && !kept.contains(&n.fid)) {
        return Ok(Swept::Waiting(format!(
            "tree snapshot {} is not one this mount keeps: another mount may write this tree",
            other.number.unwrap_or_default()
        )));
    }
    let contents: Vec<&super::restore::Named> =
        named.iter().filter(since).filter(|n| matches!(n.kind, NameKind::File | NameKind::Pack)).collect();
    let fids: Vec<Hash> = contents.iter().map(|n| n.fid).collect();
    let unknown: std::collections::HashSet<Hash> = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.unknown_fids(&fids)).await??.into_iter().collect()
    };
    let after_restore = |n: &&&super::restore::Named| !n.active || n.completion > pending.restored_block;
    if let Some(late) = contents.iter().filter(|n| unknown.contains(&n.fid)).find(after_restore) {
        return Ok(Swept::Waiting(format!(
            "{} of this tree was stored after the restore by another mount (fid {}): another mount may write this tree",
            if late.kind == NameKind::Pack { "a pack" } else { "a file" },
            late.fid
        )));
    }
    let candidates: Vec<Hash> = contents.iter().filter(|n| unknown.contains(&n.fid)).map(|n| n.fid).collect();
    let store = store.clone();
    let queued = tokio::task::spawn_blocking(move || store.delete_unknown(&candidates)).await??;
    Ok(Swept::Queued(queued))
}
