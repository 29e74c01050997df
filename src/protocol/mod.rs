//! The CESS vocabulary shared by the client and the embedded devnet: accounts and signatures,
//! what the chain stores (territories, deals, files, miners) behind the [`Chain`] trait, and the
//! storage miners' HTTP protocol (see ../shared/cess/PROTOCOL.md, summarised in docs/); and
//! what the client's network side tells the filesystem of its calls: the chain's health, how far
//! each push has come.

mod account;
mod chain;
mod health;
pub mod miner;
mod pushes;

pub use account::{AccountId, SS58_PREFIX, Signer, verify};
pub use chain::{
    BatchReceipt, BeforeSend, Chain, ChainError, CompleteInfo, DealInfo, FileInfo, FragmentInfo, HeldFile, MinerInfo,
    SegmentInfo, SentTx, TerritoryInfo, TerritoryState, TxReceipt, UserBrief,
};
pub use health::{ChainHealth, utc};

/// Back-off after `attempts` failures in a row of a call to the chain or the miners: 1 s
/// doubling, at most 5 minutes.
pub fn backoff(attempts: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << attempts.saturating_sub(1).min(9)).min(std::time::Duration::from_secs(300))
}
pub use pushes::{PushedBytes, Pushes};

/// Bytes of territory space a file of `segments` segments locks: 12 fragments of 8 MiB each.
pub fn charged_space(segments: usize) -> u128 {
    (segments as u128) * (crate::format::FRAGMENTS * crate::format::FRAGMENT_SIZE) as u128
}
