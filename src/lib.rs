//! cessfs: a FUSE filesystem for the CESS decentralized storage network.
//!
//! Files saved in the mount are staged in a crash-safe local store (`store`, served by `fs`),
//! then encoded (`format`) and stored on CESS storage miners (`miner`) under a storage order on
//! the chain (`protocol::Chain`: the embedded `devnet` or a CESS chain) by the `upload` engine.
//! `daemon` wires a mount together; `cli` is the command line. See the README.

#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod chain;
pub mod cli;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod devnet;
pub mod disk;
pub mod fetch;
pub mod format;
pub mod fs;
pub mod hooks;
pub mod http;
pub mod keys;
pub mod logline;
pub mod metrics;
pub mod miner;
pub mod mountpoint;
pub mod network;
pub mod pace;
pub mod protocol;
pub mod snapshots;
pub mod store;
pub mod sync;
pub mod upload;
pub mod words;
