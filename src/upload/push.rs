//! Sending columns to miners: the fragments are rebuilt from the file (no hashing: the deal has
//! the hashes) one segment at a time, and each column streams to its miner in its own task,
//! straight from the segment's buffers (no copy). Rebuilding waits for the slowest column (each
//! column queues one fragment), and a segment is rebuilt only once the encoder may lend out
//! another segment's buffers (they stay lent out until its last fragment is sent; the engine's
//! encoder lends [`SEGMENTS_HELD`] at most, to pushes and encodings together). While someone
//! waits for buffers, a segment with at most [`DETACH_LEFT`] fragments still going copies them
//! out and gives its buffers back, so a slow miner holds 8 MiB, not 96, and memory stays
//! bounded however slow the link and however many files push at once.
//! A column whose miner fails stops there; the caller sends it whole to another miner. Each
//! fragment a miner takes is recorded ([`Placement`]), so a column resumes after its last
//! taken segment, in this run or the next.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::window::Held;
use super::{Inner, UploadError};
use crate::format::{FRAGMENT_SIZE, FRAGMENTS, Hash, Mode, SegmentManifest, SharedFragments, ZERO_FRAGMENT_HASH};
use crate::metrics;
use crate::miner::{Detach, FragmentBody, MinerError, Moved};
use crate::protocol::{MinerInfo, PushedBytes};
use crate::store::{FileSource, Placement, UploadRecord};
use crate::sync::lock;

/// Segments held at once by all pushes and encodings: 2 × 96 MiB, so that one segment is
/// rebuilt while another goes out, and uploading stays within 256 MiB at any rate.
pub(super) const SEGMENTS_HELD: usize = 2;

/// One fragment of a rebuilt segment, as bytes to send: the segment's buffers stay lent out
/// until every fragment of it is sent.
struct Fragment {
    fragments: SharedFragments,
    index: usize,
}

impl AsRef<[u8]> for Fragment {
    fn as_ref(&self) -> &[u8] {
        self.fragments.fragment(self.index)
    }
}

/// What became of each column: its miner and whether it holds the whole column now.
pub(super) type Pushed = Vec<(usize, MinerInfo, Result<(), MinerError>)>;

/// A column to send: its index, its miner, and the first segment that miner lacks.
pub(super) struct Assignment {
    pub column: usize,
    pub miner: MinerInfo,
    pub from: usize,
}

/// Sends the `columns` of the file of upload record `rec`, whose FID is `fid`.
pub(super) async fn push_columns(
    inner: &Arc<Inner>,
    ino: u64,
    fid: &Hash,
    rec: &UploadRecord,
    segments: &[SegmentManifest],
    columns: Vec<Assignment>,
    pace: &mut Option<f64>,
) -> Result<Pushed, UploadError> {
    let (size, seed, extents) = (rec.object_size(), rec.seed, rec.extents.clone());
    let layout = crate::format::Layout::new(size, Mode::of(rec.format, seed.is_some()))?;
    if layout.segments() != segments.len() {
        return Err(UploadError::Chain(crate::protocol::ChainError::Decode(format!(
            "the deal of {fid} lists {} segments; a file of {size} bytes has {}",
            segments.len(),
            layout.segments()
        ))));
    }
    // What the whole file sends, all-zero fragments aside (they travel empty).
    let file_bytes = segments
        .iter()
        .map(|s| s.fragments.iter().filter(|&&h| h != ZERO_FRAGMENT_HASH).count() * FRAGMENT_SIZE)
        .sum::<usize>() as u64;
    let mut senders = Vec::with_capacity(columns.len());
    // Owned here: dropped (the job stopped), they are aborted with it.
    let mut tasks = tokio::task::JoinSet::new();
    let mut assigned = Vec::with_capacity(columns.len());
    let first = columns.iter().map(|a| a.from).min().unwrap_or(0);
    let mut progress = Vec::with_capacity(columns.len());
    for Assignment { column, miner, from } in columns {
        assigned.push((column, miner.clone()));
        // One segment in flight per column: memory stays at one segment's fragments.
        let (tx, mut rx) = mpsc::channel::<(usize, FragmentBody)>(1);
        senders.push((column, from, tx));
        let (inner, fid) = (inner.clone(), *fid);
        let (moved, (replace, mut replaced)) = (Moved::default(), tokio::sync::oneshot::channel::<u32>());
        let taken = Arc::new(AtomicU64::new(0));
        let held = Held::default();
        progress.push(ColumnProgress {
            column,
            // All-zero fragments travel empty.
            bytes: (segments.iter().skip(from).filter(|s| s.fragments[column] != ZERO_FRAGMENT_HASH).count()
                * FRAGMENT_SIZE) as u64,
            moved: moved.clone(),
            taken: taken.clone(),
            held: held.clone(),
            failed: false,
            replace: Some(replace),
        });
        tasks.spawn(async move {
            let endpoint = miner.endpoint.clone().unwrap_or_default();
            // A column stops at its first failure: its receiver goes, and the producer stops
            // rebuilding once every column has stopped.
            let mut result = Ok(());
            while let Some((segment, body)) = rx.recv().await {
                // Its deal given up (abandon_removed_deals): nothing more goes.
                if !inner.store.has_upload(ino) {
                    break;
                }
                let account = miner.account.to_string();
                // A slot of the window is taken with the fragment in hand and no cold read
                // waiting, so that whoever holds one is sending.
                let send = async {
                    inner.miners.reader_first().await;
                    let _slot = inner.window.slot(&moved, &held).await;
                    inner.miners.put_fragment(&endpoint, &fid, body, &moved).await
                };
                result = tokio::select! {
                    pushed = send => pushed,
                    Ok(percent) = &mut replaced, if !replaced.is_terminated() => {
                        Err(MinerError::Slow { endpoint: endpoint.clone(), percent })
                    }
                };
                match result {
                    Ok(()) => {
                        metrics::FRAGMENTS_PUSHED.add(&account, 1);
                        taken.store(moved.get(), Ordering::Relaxed);
                    }
                    Err(_) => {
                        metrics::FRAGMENT_PUSH_FAILURES.add(&account, 1);
                        break;
                    }
                }
                let placement = Placement { miner: miner.account.0, segments: segment as u32 + 1 };
                match inner.db(move |s| s.record_placement(ino, &fid, column as u8, &placement)).await {
                    Ok(true) => {}
                    // The deal ended or was given up meanwhile: nothing more goes.
                    Ok(false) => break,
                    Err(e) => log::warn!("column {column} of {fid}: recording its progress: {e}"),
                }
                crate::hooks::reached_async("column-placed").await;
            }
            (column, miner, result)
        });
    }
    let key = inner.key_for(rec.format)?;
    // Each rebuilt segment's fragments, to detach the last few from its buffers.
    let out: Arc<Mutex<Vec<Vec<Detach>>>> = Arc::default();
    let (regen, hashes, registry) = (inner.clone(), segments.to_vec(), out.clone());
    let produced = tokio::task::spawn_blocking(move || -> Result<(), UploadError> {
        let file = FileSource::<UploadError>::new(std::fs::File::open(regen.store.upload_source(ino))?, extents);
        let master = key.as_ref().zip(seed.as_ref());
        let stop = || {
            if *regen.stop.borrow() {
                Err(UploadError::ShuttingDown)
            } else if !regen.store.has_upload(ino) {
                Err(UploadError::Changed)
            } else {
                Ok(())
            }
        };
        regen.encoder.regenerate(&file, size, master, first..hashes.len(), &stop, |index, fragments| {
            let mut sent = false;
            lock(&registry).push(Vec::with_capacity(senders.len()));
            for (column, from, tx) in &senders {
                // Taken by its miner before (this run or an earlier one): still waited for.
                if index < *from {
                    sent |= !tx.is_closed();
                    continue;
                }
                let hash = hashes[index].fragments[*column];
                let data = if hash == ZERO_FRAGMENT_HASH {
                    Bytes::new()
                } else {
                    Bytes::from_owner(Fragment { fragments: fragments.clone(), index: *column })
                };
                let body = FragmentBody::new(hash, data);
                // Registered before it is sent: a send may wait on a slow column.
                if let Some(segment) = lock(&registry).last_mut() {
                    segment.push(body.detach_handle());
                }
                // A column that failed has dropped its receiver: the send fails, nothing waits.
                sent |= tx.blocking_send((index, body)).is_ok();
            }
            if !sent {
                return Err(UploadError::Internal("every column failed".into()));
            }
            Ok(())
        })
    });
    let mut outcome = Vec::with_capacity(FRAGMENTS);
    let started = tokio::time::Instant::now();
    let mut done_after = Vec::new();
    let mut look = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(done)) => {
                    if let Some(p) = progress.iter_mut().find(|p| p.column == done.0) {
                        p.replace = None;
                        p.failed = done.2.is_err();
                        // A column of all-zero fragments says nothing of the link.
                        if done.2.is_ok() && p.bytes > 0 {
                            done_after.push(p.held.get().as_secs_f64() / p.bytes as f64);
                        }
                    }
                    outcome.push(done);
                }
                Some(Err(e)) => log::error!("a column push of {fid} ended abnormally: {e}"),
            },
            _ = look.tick() => {
                inner.window.look();
                if inner.encoder.short_of_buffers() {
                    detach_the_last_fragments(&out);
                }
                replace_the_long_tail(&mut progress, &done_after, started.elapsed(), *pace);
                let left: u64 = progress.iter().map(ColumnProgress::left).sum();
                inner.pushes.set(ino, PushedBytes { sent: file_bytes.saturating_sub(left), total: file_bytes });
            }
        }
    }
    // A column whose task panicked counts as not pushed.
    for (column, miner) in assigned {
        if !outcome.iter().any(|(c, _, _)| *c == column) {
            let failure = MinerError::Malformed {
                endpoint: miner.endpoint.clone().unwrap_or_default(),
                what: "the push task failed".into(),
            };
            outcome.push((column, miner, Err(failure)));
        }
    }
    if done_after.len() >= 4 {
        done_after.sort_by(f64::total_cmp);
        *pace = Some(done_after[done_after.len() / 2]);
    }
    let produced = produced
        .await
        .map_err(|e| UploadError::Internal(format!("rebuilding the fragments of {fid}: {e}")))
        .and_then(|r| r);
    // Every column failed: the outcome says why, and the rebuild stopped for that reason.
    if outcome.iter().any(|(_, _, r)| r.is_ok()) {
        produced?;
    }
    Ok(outcome)
}

/// A segment whose fragments still being sent are this few has them copied out of its
/// buffers when the encoder is short of buffers, so that they go back.
const DETACH_LEFT: usize = 2;

/// Detaches the fragments of each rebuilt segment in `out` that has at most [`DETACH_LEFT`]
/// still being sent: a slow miner then holds its own fragment (8 MiB), not the segment's
/// buffers (96 MiB) that an encoding or the next segment waits for.
fn detach_the_last_fragments(out: &Mutex<Vec<Vec<Detach>>>) {
    let tails: Vec<Vec<Detach>> = {
        let mut segments = lock(out);
        segments.retain(|s| s.iter().any(Detach::alive));
        segments
            .iter()
            .filter(|s| s.iter().filter(|d| d.alive()).count() <= DETACH_LEFT)
            .map(|s| s.iter().filter(|d| d.alive()).cloned().collect())
            .collect()
    };
    let copied = tails.iter().flatten().filter(|d| d.detach()).count();
    if copied > 0 {
        log::debug!("copied {copied} fragments still being sent out of their segments' buffers");
    }
}

/// Whether `miner` still holds what it took of `column` (its fragments of the first `taken`
/// segments): a 1-byte ranged read of the last non-zero one. Only a miner that answers that it
/// does not have it (404, as cess-miner answers) is taken at its word; one that cannot be asked
/// now may still report the column, and is replaced if it does not.
pub(super) async fn still_held(
    inner: &Inner,
    fid: &Hash,
    segments: &[SegmentManifest],
    column: usize,
    taken: usize,
    miner: &MinerInfo,
) -> bool {
    let last = segments[..taken.min(segments.len())]
        .iter()
        .rev()
        .map(|s| s.fragments[column])
        .find(|&h| h != ZERO_FRAGMENT_HASH);
    let (Some(hash), Some(endpoint)) = (last, miner.endpoint.as_deref()) else { return true };
    let asked = inner.miners.get_fragment(endpoint, fid, &hash, Some(0..1), &Moved::default()).await;
    !matches!(asked, Err(MinerError::Refused { code: 404, .. }))
}

/// A column being sent, as its push is watched for a long tail.
struct ColumnProgress {
    column: usize,
    /// Bytes it sends in all.
    bytes: u64,
    moved: Moved,
    /// What `moved` was when its miner last took a fragment.
    taken: Arc<AtomicU64>,
    /// Its time on the link.
    held: Held,
    /// It ended in failure: what its miner took is all it sent.
    failed: bool,
    /// Tells its task to give up (with the share it had sent); `None` once it ended.
    replace: Option<tokio::sync::oneshot::Sender<u32>>,
}

impl ColumnProgress {
    /// Bytes it still sends: a failed column's bytes in the request that failed do not count.
    fn left(&self) -> u64 {
        let sent = if self.failed { self.taken.load(Ordering::Relaxed) } else { self.moved.get() };
        self.bytes.saturating_sub(sent)
    }
}

/// Past this, a column left waiting costs more than the bytes a spare sends again.
const TAIL_GRACE: Duration = Duration::from_secs(10);

/// A column is replaced when two thirds of the columns pushed with it are done (or, in a later
/// round with fewer columns, by the median pace of `earlier` rounds), it had the link
/// [`TAIL_GRACE`] longer than its bytes take at the median pace of those done (seconds per byte
/// on the link: columns resumed part way carry fewer bytes), and either at its pace it would take
/// twice that, or what it still needs at its pace (over [`TAIL_GRACE`]) is twice what a spare
/// would need at the pace the push gives each column sending now.
/// Times are a column's time holding a slot of the window (a column waiting for one is not
/// slow). On one link the others show what the link gives, so this is its miner's slowness
/// (Storj's long-tail cancellation), not the link's: while all columns move, a column at its
/// share of the link needs no more than a spare would.
fn replace_the_long_tail(progress: &mut [ColumnProgress], done: &[f64], elapsed: Duration, earlier: Option<f64>) {
    let carrying = progress.iter().filter(|p| p.bytes > 0).count();
    let first_round = carrying >= 4 && done.len() * 3 >= carrying * 2;
    let median = if first_round {
        let mut paces = done.to_vec();
        paces.sort_by(f64::total_cmp);
        paces[paces.len() / 2]
    } else if let Some(earlier) = earlier {
        earlier
    } else {
        return;
    };
    let grace = TAIL_GRACE.as_secs_f64();
    let sent = |p: &ColumnProgress| p.moved.get().min(p.bytes) as f64;
    // What this push moves a second, shared by the columns sending now (each tail column is
    // swapped for one spare).
    let pushed_per_sec = progress.iter().map(sent).sum::<f64>() / elapsed.as_secs_f64().max(1e-3);
    let still = |p: &ColumnProgress| p.replace.is_some() && p.bytes > 0;
    let sending = progress.iter().filter(|p| still(p) && p.held.holding()).count().max(1);
    for p in progress.iter_mut().filter(|p| still(p)) {
        let secs = p.held.get().as_secs_f64();
        let expected = median * p.bytes as f64;
        if secs < expected + grace {
            continue;
        }
        let share = (sent(p) / p.bytes as f64).min(1.0);
        let projected = secs / share.max(1e-3);
        let needs = projected - secs;
        let spare_needs = p.bytes as f64 * sending as f64 / pushed_per_sec.max(1.0);
        let behind = first_round && needs >= grace && needs > 2.0 * spare_needs;
        if (projected >= 2.0 * expected || behind)
            && let Some(replace) = p.replace.take()
        {
            let _ = replace.send((share * 100.0) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Columns of `bytes` each that moved `moved` bytes (`None`: done), those still sending for
    /// `had` on the link.
    fn columns(
        bytes: u64,
        moved: &[Option<u64>],
        had: Duration,
    ) -> (Vec<ColumnProgress>, Vec<tokio::sync::oneshot::Receiver<u32>>) {
        let (mut progress, mut told) = (Vec::new(), Vec::new());
        for (column, m) in moved.iter().enumerate() {
            let (replace, rx) = tokio::sync::oneshot::channel();
            let counted = Moved::default();
            counted.add(m.unwrap_or(bytes) as usize);
            progress.push(ColumnProgress {
                column,
                bytes,
                moved: counted,
                taken: Arc::default(),
                held: Held::sending_for(had),
                failed: false,
                replace: m.is_some().then_some(replace),
            });
            told.push(rx);
        }
        (progress, told)
    }

    fn replaced(told: &mut [tokio::sync::oneshot::Receiver<u32>]) -> Vec<usize> {
        told.iter_mut().enumerate().filter_map(|(i, rx)| rx.try_recv().is_ok().then_some(i)).collect()
    }

    #[test]
    fn a_miner_at_half_pace_when_the_others_are_done_is_replaced() {
        // 11 columns of 16 MiB done after about 130 s; one at 1 Mbit/s has 9 MiB of its column:
        // at its pace it needs 110 s more, a spare alone on the link 12 s.
        let mut moved = vec![None; 11];
        moved.push(Some(9 * MIB));
        let (mut progress, mut told) = columns(16 * MIB, &moved, Duration::from_secs(140));
        let done = vec![130.0 / (16 * MIB) as f64; 11];
        replace_the_long_tail(&mut progress, &done, Duration::from_secs(140), None);
        assert_eq!(replaced(&mut told), vec![11]);
    }

    #[test]
    fn columns_with_more_to_send_than_resumed_ones_are_judged_by_their_bytes() {
        // After a restart, 8 columns resumed with their last 2 fragments are done in 20 s; 4
        // columns sent whole (16 fragments) are 90% through after 160 s: at the same pace.
        let (mut progress, mut told) = columns(16 * MIB, &[None; 8], Duration::from_secs(20));
        let (fresh, fresh_told) = columns(128 * MIB, &[Some(128 * MIB * 9 / 10); 4], Duration::from_secs(160));
        progress.extend(fresh);
        told.extend(fresh_told);
        replace_the_long_tail(&mut progress, &[20.0 / (16 * MIB) as f64; 8], Duration::from_secs(160), None);
        assert_eq!(replaced(&mut told), Vec::<usize>::new());
    }

    #[test]
    fn columns_a_little_behind_or_all_moving_are_kept() {
        // Two thirds done; the others 95% through, a second from done.
        let mut moved = vec![None; 8];
        moved.extend([Some(7 * MIB + 3 * MIB / 5); 4]);
        let (mut progress, mut told) = columns(8 * MIB, &moved, Duration::from_secs(22));
        replace_the_long_tail(&mut progress, &[12.0 / (8 * MIB) as f64; 8], Duration::from_secs(22), None);
        assert_eq!(replaced(&mut told), Vec::<usize>::new());
        // None done: the link is shared, whatever each one's pace.
        let (mut progress, mut told) = columns(8 * MIB, &[Some(MIB); 12], Duration::from_secs(100));
        replace_the_long_tail(&mut progress, &[], Duration::from_secs(100), None);
        assert_eq!(replaced(&mut told), Vec::<usize>::new());
    }
}
