//! Deals given up. CESS cannot cancel a deal: the territory space it locked returns only when
//! its last column is reported. A removed file whose deal cannot go on for want of local space
//! gives its bytes back anyway, so that `rm` always frees space: the deal is abandoned, kept as
//! `a fid → AbandonedDeal` (shown by `cessfs status`), and followed on chain by the reaper: one
//! that completes after all is a file to delete, one that is gone is forgotten.

use serde::{Deserialize, Serialize};

use super::outbox::remove_if_present;
use super::records::{decode, encode, key};
use super::{Batch, Store, StoreError, Timestamp};
use crate::format::{FRAGMENT_SIZE, FRAGMENTS, Hash};
use crate::sync::lock;

/// A deal given up, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbandonedDeal {
    /// The territory whose space it locks.
    pub territory: Vec<u8>,
    /// Its segments.
    pub segments: u32,
    /// When it was given up.
    pub at: Timestamp,
}

impl AbandonedDeal {
    /// The territory space it locks, in bytes (12 fragments of 8 MiB per segment).
    pub fn locked(&self) -> u64 {
        u64::from(self.segments) * (FRAGMENT_SIZE * FRAGMENTS) as u64
    }
}

impl Store {
    /// Gives up the deals in flight of removed files and lets go of their bytes. Returns the
    /// bytes given back.
    pub fn abandon_removed_deals(&self) -> Result<u64, StoreError> {
        let _deals = self.deals();
        let inos = lock(&self.catalog).retired_deals();
        let mut freed = 0;
        for ino in inos {
            let Some(rec) = self.upload(ino)?.filter(|r| r.retired && r.state.deal_in_flight()) else { continue };
            let mut batch = Batch::default();
            batch.remove_upload(ino);
            let deal = AbandonedDeal { territory: rec.territory.clone(), segments: rec.segments, at: Timestamp::now() };
            if let Some(fid) = rec.fid {
                batch.0.insert(key::abandoned(&fid), encode(&deal));
            }
            self.commit(batch)?;
            if let Some(fid) = &rec.fid {
                self.forget_placements(fid)?;
            }
            let path = self.deal_snapshot_path(ino);
            let bytes = std::fs::metadata(&path).map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
            remove_if_present(&path)?;
            freed += bytes;
            log::warn!(
                "the disk is full: gave up the deal of a removed file ({}), {} MiB back; the {} MiB of territory \
                 {} it locks stay locked on chain (CESS cannot cancel a deal)",
                rec.fid.map_or_else(|| format!("inode {ino}"), |f| f.to_hex()),
                bytes >> 20,
                deal.locked() >> 20,
                String::from_utf8_lossy(&deal.territory),
            );
        }
        Ok(freed)
    }

    /// Whether `ino` still has an upload: a deal given up meanwhile stops its pushes.
    pub fn has_upload(&self, ino: u64) -> bool {
        lock(&self.catalog).has_upload(ino)
    }

    /// Every deal given up.
    pub fn abandoned_deals(&self) -> Result<Vec<(Hash, AbandonedDeal)>, StoreError> {
        self.tree
            .scan_prefix(key::ABANDONED_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key::fid_of(&k)?, decode(&v, "abandoned deal")?))
            })
            .collect()
    }

    /// Forgets the deal given up for `fid`: gone from the chain, or (`delete`) completed after
    /// all, so its file is queued for deletion.
    pub fn forget_abandoned(&self, fid: &Hash, delete: bool) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.0.remove(key::abandoned(fid));
        if delete {
            batch.put_tombstone(fid);
        }
        self.commit(batch)
    }
}
