//! cessfs: a FUSE filesystem for the CESS decentralized storage network.
//!
//! Files saved in the mount are staged in a crash-safe local cache, then encrypted, erasure-coded
//! and stored on CESS storage miners in the background. See the README for the big picture.

#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod format;
pub mod fs;
pub mod mountpoint;
pub mod store;
