//! Sending columns to miners: the fragments are rebuilt from the file (no hashing: the deal has
//! the hashes) one segment at a time, and each column streams to its miner in its own task.
//! A column whose miner fails stops there; the caller sends it whole to another miner.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Inner, UploadError};
use crate::format::{FRAGMENTS, Hash, Seed, SegmentManifest, ZERO_FRAGMENT_HASH};
use crate::miner::MinerError;
use crate::protocol::MinerInfo;
use crate::store::FileSource;

/// What became of each column: its miner and whether it holds the whole column now.
pub(super) type Pushed = Vec<(usize, MinerInfo, Result<(), MinerError>)>;

/// Sends `columns` (column index, miner) of file `fid` (`size` bytes, encrypted with `seed`).
pub(super) async fn push_columns(
    inner: &Arc<Inner>,
    ino: u64,
    fid: &Hash,
    size: u64,
    seed: Option<Seed>,
    segments: &[SegmentManifest],
    columns: Vec<(usize, MinerInfo)>,
) -> Result<Pushed, UploadError> {
    let mut senders = Vec::with_capacity(columns.len());
    let mut tasks = Vec::with_capacity(columns.len());
    for (column, miner) in columns {
        // One segment in flight per column: memory stays at one segment's fragments.
        let (tx, mut rx) = mpsc::channel::<(usize, Bytes)>(1);
        senders.push((column, tx));
        let (inner, fid) = (inner.clone(), *fid);
        let hashes: Vec<Hash> = segments.iter().map(|s| s.fragments[column]).collect();
        tasks.push(tokio::spawn(async move {
            let endpoint = miner.endpoint.clone().unwrap_or_default();
            let mut result = Ok(());
            while let Some((segment, data)) = rx.recv().await {
                if result.is_ok() {
                    result = inner.miners.put_fragment(&endpoint, &fid, &hashes[segment], data).await;
                }
            }
            (column, miner, result)
        }));
    }
    let source: PathBuf = inner.store.upload_source(ino);
    let (regen, hashes) = (inner.clone(), segments.to_vec());
    let produced = tokio::task::spawn_blocking(move || -> Result<(), UploadError> {
        let file = FileSource::<UploadError>::new(std::fs::File::open(source)?);
        let master = regen.config.master.as_ref().zip(seed.as_ref());
        regen.encoder.regenerate(&file, size, master, 0..hashes.len(), |index, fragments| {
            for (column, tx) in &senders {
                // The miner writes the all-zero fragment itself: it travels empty.
                let data = if hashes[index].fragments[*column] == ZERO_FRAGMENT_HASH {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(fragments.fragment(*column))
                };
                // A column task that stopped on an error has let go of its receiver.
                let _ = tx.blocking_send((index, data));
            }
            Ok(())
        })
    })
    .await
    .expect("rebuilding fragments does not panic");
    let mut outcome = Vec::with_capacity(FRAGMENTS);
    for t in tasks {
        outcome.push(t.await.expect("column tasks do not panic"));
    }
    produced?;
    Ok(outcome)
}
