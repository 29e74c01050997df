use thiserror::Error;

use crate::format::FormatError;
use crate::miner::MinerError;
use crate::protocol::ChainError;
use crate::store::StoreError;

/// Why an upload step failed. Its Display is what `user.cess.error` shows.
#[derive(Debug, Error)]
pub enum UploadError {
    /// The chain refused or could not be reached.
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// The file cannot be encoded (too large for one CESS file).
    #[error("{0}")]
    Format(#[from] FormatError),
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    /// No territory of that name for the account.
    #[error("territory {name:?} does not exist for {account}: mint it (cessfs territory mint) or configure another")]
    NoTerritory {
        /// Territory name.
        name: String,
        /// The account.
        account: String,
    },
    /// The territory cannot take uploads.
    #[error("territory {name:?} is {state}: renew it (cessfs territory renew)")]
    TerritoryUnusable {
        /// Territory name.
        name: String,
        /// Why.
        state: String,
    },
    /// The territory is too small for this file.
    #[error(
        "territory {name:?} has {remaining} bytes free; this file needs more than {needed} (96 MiB per 32 MiB segment){}: expand it (cessfs territory expand) or remove files",
        kept_for_tree(*kept_free)
    )]
    TerritoryFull {
        /// Territory name.
        name: String,
        /// Free bytes.
        remaining: u128,
        /// Bytes the file locks.
        needed: u128,
        /// Bytes left free for a round of the tree that gives room back.
        kept_free: u128,
    },
    /// Not enough usable miners to place 12 columns.
    #[error(
        "only {} (positive, with an endpoint and {needed_space} bytes idle) for {needed} columns",
        crate::words::count(*found as u64, "usable storage miner")
    )]
    NotEnoughMiners {
        /// Usable miners.
        found: usize,
        /// Columns to place.
        needed: usize,
        /// Idle space each needs.
        needed_space: u128,
    },
    /// The bytes read are not the declared ones: the file changed while it was read.
    #[error("the file changed while it was read; reading its declared bytes again")]
    Changed,
    /// cessfs is shutting down: the step resumes at the next start.
    #[error("stopped for shutdown")]
    ShuttingDown,
    /// A bug: a record without what its state implies, or a panic.
    #[error("{0}")]
    Internal(String),
    /// Some columns could not be stored on any miner this round.
    #[error("{columns} columns could not be stored: {last}")]
    Push {
        /// Columns left.
        columns: usize,
        /// The last miner error.
        last: MinerError,
    },
}

impl UploadError {
    /// Whether the upload failed for its territory's sake (missing, full, frozen, expired): it
    /// may succeed once the territory changes.
    pub fn waits_for_territory(&self) -> bool {
        match self {
            UploadError::NoTerritory { .. }
            | UploadError::TerritoryUnusable { .. }
            | UploadError::TerritoryFull { .. } => true,
            UploadError::Chain(ChainError::Dispatch { error, .. }) => {
                matches!(error.as_str(), "InsufficientAvailableSpace" | "NotActive" | "Expired" | "NotHaveTerritory")
            }
            _ => false,
        }
    }

    /// Whether the upload failed for want of room in the territory (not a missing, frozen or
    /// expired one): removing files may make that room.
    pub fn waits_for_room(&self) -> bool {
        match self {
            UploadError::TerritoryFull { .. } => true,
            UploadError::Chain(ChainError::Dispatch { error, .. }) => error == "InsufficientAvailableSpace",
            _ => false,
        }
    }

    /// Whether nothing went wrong: the step waits for something under way (a block, a
    /// deletion of the same bytes) and looks again.
    pub fn is_wait(&self) -> bool {
        matches!(self, UploadError::Chain(ChainError::Pending(_)) | UploadError::Store(StoreError::BeingDeleted(_)))
    }

    /// Whether retrying later may succeed; permanent errors end in `failed`.
    pub fn is_transient(&self) -> bool {
        match self {
            UploadError::Chain(e) => e.is_transient(),
            UploadError::Store(_)
            | UploadError::Io(_)
            | UploadError::NotEnoughMiners { .. }
            | UploadError::ShuttingDown
            | UploadError::Changed
            | UploadError::Push { .. } => true,
            UploadError::Format(_)
            | UploadError::Internal(_)
            | UploadError::NoTerritory { .. }
            | UploadError::TerritoryUnusable { .. }
            | UploadError::TerritoryFull { .. } => false,
        }
    }
}

/// What [`UploadError::TerritoryFull`] says of the room left free for the tree.
fn kept_for_tree(kept_free: u128) -> String {
    match kept_free {
        0 => String::new(),
        room => format!(", and {} MiB stay free for a round of the tree that gives room back", room >> 20),
    }
}
