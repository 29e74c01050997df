//! Merging under-full packs (less than half of their segment live): the files in them are
//! packed again into the open pack (an evicted one read back from its pack first), and each old
//! pack leaves the chain once its files are stored elsewhere and no kept tree refers to it.
//!
//! Two rules decide which packs go ([`Rule`]). With commits, a merge rides along: the packs are
//! emptied into the commit about to be sealed, which is declared anyway, so a merge never costs
//! a declaration of its own. Without (no tree written here), a merge is worth its own pack only
//! when it leaves fewer packs.

use std::collections::HashSet;
use std::sync::Arc;

use crate::fetch::Fetcher;
use crate::format::{BlobKeys, Hash, NameKey, SEGMENT_SIZE};
use crate::store::{Store, StoreError, UploadState};

/// Room kept free in a pack that merged files fill: the index, and with commits the tree too
/// (any tree that fits a quarter, which is what a commit takes).
const KEPT_FREE: u64 = 4 << 20;
const KEPT_FREE_FOR_A_TREE: u64 = KEPT_FREE + crate::format::FRAGMENT_SIZE as u64;

/// Which under-full packs a merge empties, the emptiest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// As many as fit the open pack's room, one or more: the commit sealing it goes anyway.
    IntoCommit,
    /// As many as fit one pack together, and only if that is two or more.
    Alone,
}

/// What a merge needs: where the files are, how their blobs are read and sealed.
pub struct Merger {
    /// The store.
    pub store: Arc<Store>,
    /// Reads evicted files' blobs from their packs.
    pub fetcher: Arc<Fetcher>,
    /// The tree's blob keys.
    pub keys: BlobKeys,
    /// The tree's name key (a pack opened for the merged files is named with it).
    pub names: NameKey,
}

/// What a merge moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merged {
    /// Packs emptied.
    pub packs: usize,
    /// Files packed again.
    pub moved: usize,
    /// Files the emptied packs held.
    pub files: usize,
}

impl Merger {
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> anyhow::Result<T> {
        crate::store::off_runtime(&self.store, f).await
    }

    /// Merges the under-full packs `rule` picks; stops early once `stop` says so (what is not
    /// moved yet is looked at again next time).
    pub async fn merge(&self, rule: Rule, stop: &tokio::sync::watch::Receiver<bool>) -> anyhow::Result<Merged> {
        let half = SEGMENT_SIZE as u64 / 2;
        let mut underfull: Vec<_> =
            self.db(|s| Ok(s.stored_packs())).await?.into_iter().filter(|p| p.2 < half).collect();
        underfull.sort_by_key(|p| p.2);
        let room = match rule {
            Rule::IntoCommit => self.db(|s| s.open_pack_room()).await?.saturating_sub(KEPT_FREE_FOR_A_TREE),
            Rule::Alone => SEGMENT_SIZE as u64 - KEPT_FREE,
        };
        let mut total = 0;
        underfull.retain(|p| {
            total += p.2;
            total <= room
        });
        if underfull.len() < if rule == Rule::Alone { 2 } else { 1 } {
            return Ok(Merged::default());
        }
        let leaving: HashSet<Hash> = underfull.iter().map(|p| p.0).collect();
        let mut merged = Merged { packs: underfull.len(), ..Merged::default() };
        for (fid, inos, _) in underfull {
            for ino in inos {
                if *stop.borrow() {
                    return Ok(merged);
                }
                merged.files += 1;
                let Some(rec) = self.db(move |s| s.upload(ino)).await? else { continue };
                let Some(blob) = rec.blob.filter(|_| rec.state == UploadState::Active && rec.fid == Some(fid)) else {
                    continue;
                };
                let keys = self.keys.clone();
                let content = match self.db(move |s| s.local_blob(ino, &blob.id, &keys)).await? {
                    Some(local) => local,
                    None => self.fetcher.blob(&fid, &blob.id, blob.place, rec.size).await?,
                };
                if content.len() as u64 != rec.size {
                    continue;
                }
                let (keys, names, leaving) = (self.keys.clone(), self.names.clone(), leaving.clone());
                if self.db(move |s| s.repack_file(ino, &rec, &content, &keys, &names, &leaving)).await? {
                    merged.moved += 1;
                }
            }
        }
        log::info!(
            "merged {} under-full packs: {} of their {} files packed again",
            merged.packs,
            merged.moved,
            merged.files
        );
        Ok(merged)
    }
}
