//! Where a tree's lineage begins, for the collector (collect/sweep.rs): the sweep to come after
//! a restore, and the window a collection on demand looks in. Written with the restore, or when
//! a tree begins; a tree loaded lazily rewrites them once it knows where its lineage begins.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, Timestamp};

/// The meta record of a sweep to come.
const PENDING: &[u8] = b"sweep-pending";

/// A sweep to come, recorded when a tree is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The block the restored lineage began at (`snapshots::restore::Chosen::lineage_from`).
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

/// The meta record of the window a collection on demand looks in: the block the tree's
/// lineage began at, and the block at which the tree began in this data dir.
const WINDOW: &[u8] = b"collect-window";

/// The meta record of the window of a tree beginning now (written with the restore, or when a
/// new or fresh tree begins): FIDs active after `lineage_from` and up to `began`.
pub fn window_meta(lineage_from: u32, began: u32) -> (&'static [u8], Vec<u8>) {
    (WINDOW, [lineage_from.to_be_bytes(), began.to_be_bytes()].concat())
}

/// A meta record to write: its name and value.
pub type MetaRecord = (&'static [u8], Vec<u8>);

/// The sweep and window records of a restored tree whose lineage turned out to begin at block
/// `lineage_from` (a tree loaded lazily learns it once it has read its older snapshots), to
/// write with the end of its load.
pub fn lineage_meta(store: &Store, lineage_from: u32) -> Result<Vec<MetaRecord>, StoreError> {
    let mut meta = Vec::new();
    if let Some(p) = pending(store)? {
        let p = Pending { lineage_from, ..p };
        meta.push((PENDING, postcard::to_stdvec(&p).unwrap_or_default()));
    }
    if let Some((_, began)) = window(store)? {
        meta.push(window_meta(lineage_from, began));
    }
    Ok(meta)
}

/// The window recorded when the tree began here; for a data dir from before that record, its
/// restore's sweep's, if it is still to come.
pub fn window(store: &Store) -> Result<Option<(u32, u32)>, StoreError> {
    if let Some(v) = store.meta(WINDOW)?
        && let (Some(from), Some(began)) = (v.get(..4), v.get(4..8))
        && let (Ok(from), Ok(began)) = (<[u8; 4]>::try_from(from), <[u8; 4]>::try_from(began))
    {
        return Ok(Some((u32::from_be_bytes(from), u32::from_be_bytes(began))));
    }
    Ok(pending(store)?.map(|p| (p.lineage_from, p.restored_block)))
}
