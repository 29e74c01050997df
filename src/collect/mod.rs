//! The collector: what leaves the chain, decided in one place.
//!
//! - **Candidates.** Every path that lets go of a FID (unlink, a rename over a file, a newer
//!   version stored, a tree no longer kept, a pack emptied, a deal given up that completed after
//!   all) queues it as a tombstone, with the change or just before it. The sweep
//!   after a restore and a collection on demand ([`sweep`]) queue the FIDs of this key held in
//!   the territory in the window a lost machine left that nothing here knows.
//! - **Mark.** [`crate::store::Store::claim_deletion`] claims a candidate only if no local
//!   record, kept tree, tree of this key on chain or upload about to take it may need it, and
//!   nothing while a record cannot be read, a restored tree is loading or another mount writes
//!   the tree: when in doubt, keep.
//! - **Delete.** The [`Reaper`] deletes the claimed FIDs, many to a transaction, each after a
//!   look at the tree on chain within the minute; a deletion is recorded as sent before it goes.
//!
//! The territory is not listed and swept whole, as restic's prune lists a repository: another
//! mount of the same key and territory (one with `--snapshots false`, or one that stopped writing
//! the tree) may hold FIDs nothing here knows. Uploads and FUSE calls never wait on it, except a
//! file whose bytes' FID is being deleted, which waits for that deletion to land.

mod reaper;
pub mod sweep;

pub use reaper::{DELETE_BATCH, Reaper};
pub use sweep::{OnDemand, Sweeper};
