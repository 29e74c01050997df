//! Where the columns of a deal in flight went: `l fid column → Placement`, the miner a column
//! is being sent to and how many of its segments' fragments that miner has taken. A push that
//! fails, stops or crashes resumes from here: a column its miner holds whole is not sent again,
//! and one it holds in part goes on from the next segment. Kept until the deal ends. Each is
//! synced as it is written: a flush costs far less than the 8 MiB it saves sending again.

use serde::{Deserialize, Serialize};

use super::records::{decode, encode, key};
use super::{Store, StoreError};
use crate::format::Hash;

/// How far a column went to its miner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The miner's account (its 32 bytes).
    pub miner: [u8; 32],
    /// The segments whose fragment of this column the miner took, from the first.
    pub segments: u32,
}

impl Store {
    /// The placements of the deal of `fid`, by column.
    pub fn placements(&self, fid: &Hash) -> Result<Vec<(u8, Placement)>, StoreError> {
        self.tree
            .scan_prefix(key::placement_prefix(fid))
            .map(|kv| {
                let (k, v) = kv?;
                let column = *k.last().ok_or(StoreError::Corrupt { what: "placement key" })?;
                Ok((column, decode(&v, "placement")?))
            })
            .collect()
    }

    /// Records that column `column` of `fid` went to its miner this far, if the upload of
    /// `ino` still pushes that FID (a deal given up or ended meanwhile keeps no record: under the
    /// deal lock, as those are). Returns whether it was recorded.
    pub fn record_placement(
        &self,
        ino: u64,
        fid: &Hash,
        column: u8,
        placement: &Placement,
    ) -> Result<bool, StoreError> {
        let deals = self.deals();
        let pushing = self.upload(ino)?.is_some_and(|r| r.fid == Some(*fid) && r.state.deal_in_flight());
        if pushing {
            self.tree.insert(key::placement(fid, column), encode(placement))?;
            drop(deals);
            self.sync()?;
        }
        Ok(pushing)
    }

    /// Forgets where column `column` of `fid` went (its miner failed: it starts over elsewhere).
    pub fn forget_placement(&self, fid: &Hash, column: u8) -> Result<(), StoreError> {
        self.tree.remove(key::placement(fid, column))?;
        self.sync()
    }

    /// Forgets every placement of `fid`'s deal (it ended, or its miners are being replaced).
    pub fn forget_placements(&self, fid: &Hash) -> Result<(), StoreError> {
        for k in self.tree.scan_prefix(key::placement_prefix(fid)).keys() {
            self.tree.remove(k?)?;
        }
        self.sync()
    }
}
