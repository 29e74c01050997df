//! What the client needs from the chain, as a trait that the real chain client (subxt) and the
//! embedded devnet both implement, with the records they return.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::AccountId;
use crate::format::{DATA_FRAGMENTS, FRAGMENTS, Hash, SegmentManifest};

/// `UserBrief`: who declares a file, under which name, in which territory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBrief {
    /// The owner.
    pub user: AccountId,
    /// The file's name on chain (3 to 63 bytes).
    pub file_name: Vec<u8>,
    /// The territory charged for it.
    pub territory_name: Vec<u8>,
}

/// `TerritoryState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TerritoryState {
    /// Uploads allowed.
    Active,
    /// Past its deadline: no uploads, still renewable.
    Frozen,
    /// Gone: its files are deleted.
    Expired,
    /// Offered for sale.
    OnConsignment,
}

/// `TerritoryInfo`: a user's paid storage space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerritoryInfo {
    /// Bytes bought.
    pub total_space: u128,
    /// Bytes of stored files.
    pub used_space: u128,
    /// Bytes locked by deals in progress.
    pub locked_space: u128,
    /// Bytes still free.
    pub remaining_space: u128,
    /// Block after which the territory freezes.
    pub deadline: u32,
    /// State.
    pub state: TerritoryState,
}

impl TerritoryInfo {
    /// Bytes of file content that `charged` bytes of territory hold: the chain charges every
    /// fragment, 12 for each 4 that carry data.
    pub fn content_bytes(charged: u128) -> u64 {
        let stored = charged * DATA_FRAGMENTS as u128 / FRAGMENTS as u128;
        u64::try_from(stored).unwrap_or(u64::MAX)
    }

    /// Bytes of file content the territory takes in all, and can still take (none unless it is
    /// active), `kept_free` bytes of its charge aside (the room declarations leave for a round
    /// of the tree: upload/mod.rs).
    pub fn content_space(&self, kept_free: u128) -> (u64, u64) {
        let free = match self.state {
            TerritoryState::Active => self.remaining_space.saturating_sub(kept_free),
            _ => 0,
        };
        (Self::content_bytes(self.total_space), Self::content_bytes(free))
    }
}

/// `CompleteInfo`: a miner that reported holding column `index - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteInfo {
    /// Column index plus one (1..=12).
    pub index: u8,
    /// The miner.
    pub miner: AccountId,
}

/// `DealInfo`: a declared file whose fragments are still being stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealInfo {
    /// File size in bytes.
    pub file_size: u128,
    /// The declared segments and fragment hashes.
    pub segments: Vec<SegmentManifest>,
    /// The declaring user.
    pub user: UserBrief,
    /// Columns reported so far.
    pub complete_list: Vec<CompleteInfo>,
}

/// `FragmentInfo`: one stored fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentInfo {
    /// Fragment hash.
    pub hash: Hash,
    /// Whether the network considers it available.
    pub avail: bool,
    /// The miner holding it.
    pub miner: AccountId,
}

/// `SegmentInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Segment hash.
    pub hash: Hash,
    /// Its 12 fragments.
    pub fragments: Vec<FragmentInfo>,
}

/// `FileInfo`: a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Segments, with where each fragment is.
    pub segments: Vec<SegmentInfo>,
    /// Its owners (each with the name and territory they declared it under).
    pub owners: Vec<UserBrief>,
    /// File size in bytes.
    pub file_size: u128,
    /// Block at which it became active.
    pub completion: u32,
    /// `FileState::Active` (the only state current runtimes write).
    pub active: bool,
}

impl FileInfo {
    /// Whether `who` holds it in `territory`. (A FID an account holds in another territory
    /// belongs to another tree.)
    pub fn held_by(&self, who: &AccountId, territory: &[u8]) -> bool {
        self.owners.iter().any(|o| o.user == *who && o.territory_name == territory)
    }
}

/// `UserFileSliceInfo`: a file an account holds, in one of its territories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFile {
    /// The FID.
    pub fid: Hash,
    /// The territory it is charged to.
    pub territory: Vec<u8>,
    /// The space it is charged (not its size).
    pub charged: u128,
}

/// `MinerInfo`, the part a client uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinerInfo {
    /// The miner's account.
    pub account: AccountId,
    /// Its HTTP endpoint, if the runtime records one.
    pub endpoint: Option<String>,
    /// `positive`, `frozen`, `exit`, `lock`, `offline`, `not ready`.
    pub state: String,
    /// Free space it can take fragments into.
    pub idle_space: u128,
}

/// Where a transaction landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxReceipt {
    /// Transaction hash (`0x…`) or devnet transaction id.
    pub tx_hash: String,
    /// Block number it is in.
    pub block: u32,
}

/// Where a batch of deletions landed, and what became of each ([`Chain::delete_files`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReceipt {
    /// The transaction.
    pub receipt: TxReceipt,
    /// Each deletion's outcome, in the order asked: `Err` is the pallet's refusal of that one
    /// (the others went on).
    pub items: Vec<Result<(), ChainError>>,
}

/// A transaction signed and about to be sent: what is recorded before it goes, so that after a
/// crash it is followed to its end instead of being sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTx {
    /// Its hash (`0x…`).
    pub hash: String,
    /// The block it was signed against.
    pub block: u32,
    /// The last block that may include it (it is mortal).
    pub until: u32,
}

/// Called with a transaction once it is signed, before it is sent; an error stops it there.
pub type BeforeSend<'a> =
    &'a (dyn Fn(SentTx) -> futures_util::future::BoxFuture<'static, Result<(), ChainError>> + Send + Sync);

/// A chain failure.
#[derive(Debug, Clone, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainError {
    /// The chain could not be reached (connection refused, dropped, timed out).
    #[error("chain unreachable: {0}")]
    Unreachable(String),
    /// The runtime refused the call.
    #[error("{pallet}.{error}{}", explain(error))]
    Dispatch {
        /// Pallet name.
        pallet: String,
        /// Error name, as the runtime's metadata names it.
        error: String,
    },
    /// An answer that does not decode as expected.
    #[error("unexpected chain data: {0}")]
    Decode(String),
    /// A transaction was taken but no block seen to include it yet: it may still land (a slow
    /// chain), so it is waited for rather than sent again.
    #[error("waiting for a block: {0}")]
    Pending(String),
    /// The node's transaction pool would not take a transaction (before any block).
    #[error("transaction refused: {reason}")]
    Refused {
        /// Why, in words.
        reason: String,
        /// Whether the same transaction may be taken later.
        transient: bool,
    },
}

fn explain(error: &str) -> &'static str {
    match error {
        "InsufficientAvailableSpace" => ": the territory has not enough free space for this file",
        "SpecError" => ": refused by the chain's rules (12 fragments a segment, a name of 3 to 63 bytes)",
        "NoPermission" => ": this account may not act for the file's owner",
        "NonExistent" => ": no such file on chain",
        "NotOwner" => ": this account does not own the file",
        "NotActive" => ": the territory is not active (frozen, expired or on sale)",
        "Expired" => ": the territory has expired",
        "NotHaveTerritory" => ": no territory of that name for this account",
        "InsufficientBalance" => ": not enough balance",
        _ => "",
    }
}

impl ChainError {
    /// A refusal of the runtime, by pallet and error name.
    pub fn dispatch(pallet: &str, error: &str) -> ChainError {
        ChainError::Dispatch { pallet: pallet.to_string(), error: error.to_string() }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChainError::Unreachable(_) | ChainError::Pending(_) | ChainError::Refused { transient: true, .. }
        )
    }
}

/// The chain, as the upload engine and the reader use it.
#[async_trait]
pub trait Chain: Send + Sync {
    /// The account that signs this client's transactions.
    fn account(&self) -> AccountId;
    /// How long a transaction in a block may take to show in this client's reads, which follow
    /// finalized blocks: a minute on a CESS chain.
    fn reads_lag(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }
    /// The territory `name` of `owner`.
    async fn territory(&self, owner: &AccountId, name: &[u8]) -> Result<Option<TerritoryInfo>, ChainError>;
    /// `FileBank.File[fid]`.
    async fn file(&self, fid: &Hash) -> Result<Option<FileInfo>, ChainError>;
    /// `FileBank.File` of each of `fids`, in order (a client may read them in fewer round trips
    /// than one each).
    async fn files(&self, fids: &[Hash]) -> Result<Vec<Option<FileInfo>>, ChainError> {
        use futures_util::StreamExt;
        let reads =
            futures_util::stream::iter(fids.iter().copied()).map(|fid: Hash| async move { self.file(&fid).await });
        reads.buffered(16).collect::<Vec<_>>().await.into_iter().collect()
    }
    /// `FileBank.DealMap[fid]`.
    async fn deal(&self, fid: &Hash) -> Result<Option<DealInfo>, ChainError>;
    /// Every registered miner.
    async fn miners(&self) -> Result<Vec<MinerInfo>, ChainError>;
    /// `FileBank.UserHoldFileList[owner]`: every file `owner` holds, with its territory.
    async fn held_files(&self, owner: &AccountId) -> Result<Vec<HeldFile>, ChainError>;
    /// `FileBank.upload_declaration`, returning once it is in a block; `before_send` is called
    /// once it is signed, before it goes (again if it is signed again).
    async fn upload_declaration(
        &self,
        fid: &Hash,
        segments: &[SegmentManifest],
        user: &UserBrief,
        file_size: u64,
        before_send: BeforeSend<'_>,
    ) -> Result<TxReceipt, ChainError>;
    /// Whether transaction `sent`, whose effect is not seen on chain, may still be included.
    async fn may_land(&self, sent: &SentTx) -> Result<bool, ChainError>;
    /// `FileBank.delete_file` of this account's copy of each of `fids`, all in one transaction
    /// (`Utility.force_batch`: one refused does not stop the others), returning once it is in a
    /// block, with each one's outcome.
    async fn delete_files(&self, fids: &[Hash]) -> Result<BatchReceipt, ChainError>;
}
