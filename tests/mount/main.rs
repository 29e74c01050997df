//! Tests on real cessfs mounts, driven with real syscalls and real tools. One binary, so the
//! crate links once.

mod cli;
mod cold;
mod commits;
mod common;
mod durability;
mod file_managers;
mod gc;
mod keys;
mod link;
mod model;
mod packs;
mod pjdfstest;
mod posix;
mod safety;
mod service;
mod sparse;
mod tree;
mod upload;
