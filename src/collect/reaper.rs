//! The reaper: deletes the FIDs queued in tombstones from the chain, each once nothing here
//! needs it (`Store::claim_deletion`), many in one transaction (`Chain::delete_files`). A
//! deletion is recorded as sent before its transaction goes, so that after a restart it is
//! followed to its end, with its FID claimed meanwhile; a tombstone is settled only if it is
//! still the one the attempt read.

use std::sync::Arc;
use std::time::Duration;

use crate::format::Hash;
use crate::protocol::{Chain, ChainError, FileInfo, backoff};
use crate::snapshots::watch::TreeWatch;
use crate::store::{Deletion, Store, StoreError, Timestamp, Tombstone};

/// How long a landed deletion may take to show in the chain's reads (finalized blocks) before
/// the reaper looks again later.
const DELETION_SEEN_WITHIN: Duration = Duration::from_secs(60);

/// The most FIDs deleted in one transaction. `delete_file` rewrites the account's whole
/// `UserHoldFileList`, so a batch weighs with the hold list's length: 100 keeps a batch far
/// inside a block's weight at the 100,000 held files of `cargo bench --bench snapshot`
/// (measured on the devnet, which counts no weight; see the README for the rig).
pub const DELETE_BATCH: usize = 100;

/// How old the look at the tree's snapshots on chain may be when a FID is deleted.
const TREE_SEEN_WITHIN: Duration = Duration::from_secs(60);

/// What one attempt did: the tombstone to keep (`None`: done), and whether the claim may end.
struct Attempt {
    retry: Option<Tombstone>,
    settled: bool,
}

/// Deletes what the tombstones queue, for the tree of one territory.
pub struct Reaper {
    store: Arc<Store>,
    chain: Arc<dyn Chain>,
    /// The tree's snapshots on chain (encrypted mode): nothing they refer to is deleted.
    watch: Option<Arc<TreeWatch>>,
    territory: Vec<u8>,
    /// Rung when deletions landed: the territory has room again.
    freed: Arc<tokio::sync::Notify>,
}

impl Reaper {
    /// A reaper for the tree of `store` in `territory`, ringing `freed` when deletions land.
    pub fn new(
        store: Arc<Store>,
        chain: Arc<dyn Chain>,
        watch: Option<Arc<TreeWatch>>,
        territory: Vec<u8>,
        freed: Arc<tokio::sync::Notify>,
    ) -> Reaper {
        Reaper { store, chain, watch, territory, freed }
    }

    /// Runs `f` on the store in a blocking thread.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> anyhow::Result<T> {
        crate::store::off_runtime(&self.store, f).await
    }

    /// Whether this tree holds `file`: the account owns it in this territory.
    fn held_here(&self, file: &FileInfo) -> bool {
        file.held_by(&self.chain.account(), &self.territory)
    }

    /// Deletes queued FIDs from the chain, one at a time, until `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let mut next = Duration::from_secs(300);
            self.follow_abandoned_deals().await;
            match self.db(|s| s.tombstones()).await {
                Ok(mut stones) => {
                    let due = |t: &Tombstone| t.retry_at.map(Timestamp::remaining).is_none_or(|w| w.is_zero());
                    // What the tree's snapshots on chain refer to is looked at first, at most a
                    // minute before: nothing may go until it is known.
                    let mut waits = None;
                    if stones.iter().any(|(_, t)| due(t))
                        && let Err(why) = self.tree_looked_at().await
                    {
                        next = TREE_SEEN_WITHIN;
                        stones.clear();
                        waits = Some(why);
                    }
                    let mut claimed = Vec::new();
                    for (fid, t) in stones {
                        if *stop.borrow() {
                            return;
                        }
                        if let Some(wait) = t.retry_at.map(Timestamp::remaining).filter(|w| !w.is_zero()) {
                            next = next.min(wait);
                            continue;
                        }
                        match self.claim(&fid, &t, &mut waits).await {
                            Some(retry) => self.settle(fid, t, retry, &mut next).await,
                            None => claimed.push((fid, t)),
                        }
                    }
                    for batch in claimed.chunks(DELETE_BATCH) {
                        // The claims stay until the process ends (a deletion sent before may
                        // still land: its record stays too), and the tombstones for the next run.
                        if *stop.borrow() {
                            return;
                        }
                        // Each batch goes within a minute of a look (the batches before may
                        // have taken that long), and not once another writer is found: else its
                        // claims wait too.
                        let stopped = || match self.store.another_writer() {
                            true => Err("another mount writes this tree".to_string()),
                            false => Ok(()),
                        };
                        if let Err(why) = self.tree_looked_at().await.and_then(|()| stopped()) {
                            for (fid, read) in batch {
                                self.release_unsent(fid);
                                let retry =
                                    Tombstone { retry_at: Some(Timestamp::after(TREE_SEEN_WITHIN)), ..read.clone() };
                                self.settle(*fid, read.clone(), Some(retry), &mut next).await;
                            }
                            waits = Some(why);
                            continue;
                        }
                        let attempts = self.delete_claimed(batch).await;
                        for ((fid, read), attempt) in batch.iter().zip(attempts) {
                            if attempt.settled {
                                self.store.end_deletion(fid);
                            }
                            self.settle(*fid, read.clone(), attempt.retry, &mut next).await;
                        }
                    }
                    self.store.set_deletions_wait(waits);
                }
                Err(e) => crate::log_limited!(log::Level::Error, "tombstones", "the deletion queue is unreadable: {e}"),
            }
            tokio::select! {
                _ = self.store.tombstone_bell().notified() => {}
                _ = tokio::time::sleep(next.max(Duration::from_millis(200))) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Looks on chain at the deals given up ([`Store::abandon_removed_deals`]): one completed
    /// after all is a file to delete; one gone (its territory expired) is forgotten.
    async fn follow_abandoned_deals(&self) {
        let deals = match self.db(|s| s.abandoned_deals()).await {
            Ok(deals) => deals,
            Err(e) => return log::error!("the abandoned deals are unreadable: {e}"),
        };
        let me = self.chain.account();
        for (fid, deal) in deals {
            // The deal first: one that completes between the two reads is then seen as a file.
            let open = self.chain.deal(&fid).await;
            let delete = match (open, self.chain.file(&fid).await) {
                (_, Ok(Some(file)))
                    if file.owners.iter().any(|o| o.user == me && o.territory_name == deal.territory) =>
                {
                    true
                }
                (Ok(None), Ok(None)) => false,
                _ => continue,
            };
            if delete {
                log::info!("the abandoned deal of {fid} completed after all: the file is deleted");
            }
            if let Err(e) = self.db(move |s| s.forget_abandoned(&fid, delete)).await {
                log::error!("the abandoned deal of {fid}: {e}");
            }
        }
    }

    /// Looks at the tree's snapshots on chain unless that was done within a minute: nothing may
    /// go until what they refer to is known. An error says why deletions wait, and is logged.
    async fn tree_looked_at(&self) -> Result<(), String> {
        let looked = match &self.watch {
            Some(watch) => watch.look_within(TREE_SEEN_WITHIN).await,
            None => Ok(()),
        };
        if let Err(why) = &looked {
            crate::log_limited!(log::Level::Warn, "deletions wait", "deletions wait: {why}");
        }
        looked
    }

    /// Ends the claim of `fid` unless a deletion of it was sent before whose end is not known:
    /// that one stays claimed, and recorded, until a later attempt sees how it ended.
    fn release_unsent(&self, fid: &Hash) {
        if !self.store.deletion_sent(fid).unwrap_or(true) {
            self.store.end_deletion(fid);
        }
    }

    /// Records how an attempt on `fid` ended: the tombstone `read` is replaced by `retry`
    /// (`None`: done), if it is still the one read.
    async fn settle(&self, fid: Hash, read: Tombstone, retry: Option<Tombstone>, next: &mut Duration) {
        if let Some(retry) = &retry {
            *next = (*next).min(retry.retry_at.map(Timestamp::remaining).unwrap_or_default());
        }
        if let Err(e) = self.db(move |s| s.settle_tombstone(&fid, &read, retry)).await {
            log::error!("tombstone of {fid}: {e}");
        }
    }

    /// Claims `fid` for its deletion unless something still needs it: `None` once claimed,
    /// else the tombstone to keep (`Some(None)`: none, it is done). `waits` is set to why
    /// deletions wait, if they do for a reason `cessfs status` shows.
    async fn claim(&self, fid: &Hash, read: &Tombstone, waits: &mut Option<String>) -> Option<Option<Tombstone>> {
        let later_by = |d: Duration| Some(Some(Tombstone { retry_at: Some(Timestamp::after(d)), ..read.clone() }));
        let fid_copy = *fid;
        crate::hooks::reached_async("reaper-deciding").await;
        let decided = self.db(move |s| s.claim_deletion(&fid_copy)).await;
        crate::hooks::reached_async("reaper-decided").await;
        match decided {
            Ok(Deletion::Claimed) => None,
            Ok(Deletion::InUse) => {
                // Once a minute for a FID: merged files tombstone the pack they leave, one each.
                let key = format!("in use {fid}");
                crate::log_limited!(
                    log::Level::Info,
                    &key,
                    "{fid} is in use here (a file or a kept tree snapshot): not deleted"
                );
                Some(None)
            }
            Ok(Deletion::OnChain) => {
                log::info!(
                    "{fid} is in a tree snapshot on chain that this mount does not keep: asked again in an hour"
                );
                later_by(Duration::from_secs(3600))
            }
            // A snapshot being built may refer to it: ask again in a moment.
            Ok(Deletion::Held) => later_by(Duration::from_secs(1)),
            Ok(Deletion::Stopped) => later_by(Duration::from_secs(600)),
            // Queued by a record that lets go of it in a moment (a file moving to its newer
            // version, or to another pack): asked again then.
            Ok(Deletion::Replacing) => later_by(Duration::from_secs(5)),
            Ok(Deletion::Pinned) => {
                log::info!("{fid} is being taken as stored by an upload: asked again in 5 s");
                later_by(Duration::from_secs(5))
            }
            Ok(Deletion::InDoubt(why)) => {
                crate::log_limited!(log::Level::Warn, "deletion in doubt", "{fid} is not deleted now: {why}");
                *waits = Some(why);
                later_by(Duration::from_secs(60))
            }
            Err(e) => {
                log::error!("checking whether {fid} is in use: {e}");
                later_by(Duration::from_secs(60))
            }
        }
    }

    /// Which of `fids` the chain, as its reads see it, still holds for this tree (`None`:
    /// unknown now).
    async fn held_here_now(&self, fids: &[Hash]) -> Option<Vec<bool>> {
        let files = self.chain.files(fids).await.ok()?;
        Some(files.iter().map(|f| f.as_ref().is_some_and(|f| self.held_here(f))).collect())
    }

    /// Deletes the claimed FIDs of `batch` (with the tombstones read) from the chain in one
    /// transaction; returns each one's [`Attempt`]: a claim may end once the chain's reads no
    /// longer show the FID held here, or no deletion sent can still land.
    async fn delete_claimed(&self, batch: &[(Hash, Tombstone)]) -> Vec<Attempt> {
        let fids: Vec<Hash> = batch.iter().map(|(fid, _)| *fid).collect();
        // A deletion sent before (by this run or one before a restart) may still land.
        let sent_before = {
            let fids = fids.clone();
            self.db(move |s| fids.iter().map(|f| s.deletion_sent(f)).collect::<Result<Vec<bool>, _>>())
                .await
                .unwrap_or_else(|_| vec![true; batch.len()])
        };
        let retry = |i: usize, d: Duration, error: Option<String>, failed: bool| {
            let mut t = batch[i].1.clone();
            t.attempts += u32::from(failed);
            t.retry_at = Some(Timestamp::after(d));
            t.error = error.or(t.error);
            t
        };
        let mut attempts: Vec<Option<Attempt>> = (0..batch.len()).map(|_| None).collect();
        // `delete_file` drops the account's every hold of the FID: one it also holds in another
        // territory (plaintext mode shares FIDs) belongs to another tree too, and stays.
        let me = self.chain.account();
        let files = match self.chain.files(&fids).await {
            Ok(files) => files,
            Err(e) => {
                let why = format!("reading the files before deleting them: {e}");
                return (0..batch.len())
                    .map(|i| {
                        let t = retry(i, backoff(batch[i].1.attempts + 1), Some(why.clone()), true);
                        Attempt { retry: Some(t), settled: !sent_before[i] }
                    })
                    .collect();
            }
        };
        let mut to_delete = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let fid = fids[i];
            attempts[i] = match file {
                Some(file) if file.owners.iter().any(|o| o.user == me && o.territory_name != self.territory) => {
                    log::info!("{fid} is also held in another territory of this account: not deleted from the chain");
                    let t = retry(i, Duration::from_secs(600), None, false);
                    Some(Attempt { retry: sent_before[i].then_some(t), settled: !sent_before[i] })
                }
                Some(file) if self.held_here(file) => {
                    to_delete.push(i);
                    None
                }
                _ => {
                    log::info!("{fid} is not on the chain any more");
                    Some(Attempt { retry: None, settled: true })
                }
            };
        }
        if !to_delete.is_empty() {
            let sending: Vec<Hash> = to_delete.iter().map(|&i| fids[i]).collect();
            let outcomes = self.send_deletions(&sending).await;
            for (&i, outcome) in to_delete.iter().zip(outcomes) {
                attempts[i] = Some(match outcome {
                    Sent::Done => Attempt { retry: None, settled: true },
                    Sent::Retry { after, error, failed } => {
                        Attempt { retry: Some(retry(i, after, error, failed)), settled: false }
                    }
                    Sent::Unsent(after) => {
                        Attempt { retry: Some(retry(i, after, None, false)), settled: !sent_before[i] }
                    }
                    Sent::Backoff(error) => {
                        let after = backoff(batch[i].1.attempts + 1);
                        Attempt { retry: Some(retry(i, after, Some(error), true)), settled: false }
                    }
                });
            }
        }
        attempts.into_iter().map(|a| a.unwrap_or(Attempt { retry: None, settled: true })).collect()
    }

    /// Sends the deletion of `fids`, held here, in one transaction, and follows it until the
    /// chain's reads show them gone: each one's outcome, in order.
    async fn send_deletions(&self, fids: &[Hash]) -> Vec<Sent> {
        let all = |sent: Sent| fids.iter().map(|_| sent.clone()).collect();
        let marked = fids.to_vec();
        if let Err(e) = self.db(move |s| s.mark_deletion_sent(&marked)).await {
            log::error!("recording the deletions before sending them: {e}");
            return all(Sent::Unsent(Duration::from_secs(60)));
        }
        crate::hooks::reached_async("deletion-marked").await;
        match fids {
            [fid] => log::info!("deleting {fid} from the chain"),
            _ => log::info!("deleting {} FIDs from the chain in one transaction", fids.len()),
        }
        let receipt = match self.chain.delete_files(fids).await {
            Ok(r) => r,
            // Sent, and how it ended is not known (no block seen, the connection lost): it may
            // still land, so the claims stay until a later attempt sees.
            Err(e) if e.is_transient() && !matches!(e, ChainError::Refused { .. }) => {
                crate::log_limited!(
                    log::Level::Warn,
                    &format!("delete: {e}"),
                    "deleting {} from the chain failed, retrying: {e}",
                    crate::words::count(fids.len() as u64, "FID")
                );
                return all(Sent::Backoff(e.to_string()));
            }
            // Refused by the pool (the account cannot pay the fee, say): the space stays charged
            // until it can, so it is asked again, slowly. A pool may also drop a transaction it
            // passed on already, so the claims stay until a later attempt sees how it ended.
            Err(e @ ChainError::Refused { .. }) => {
                crate::log_limited!(
                    log::Level::Warn,
                    "delete refused",
                    "deleting from the chain refused, asked again in 10 minutes: {e}"
                );
                return all(Sent::Retry { after: Duration::from_secs(600), error: Some(e.to_string()), failed: true });
            }
            // The whole transaction refused (not one item): nothing was deleted; asked again
            // slowly rather than forgotten, the claims kept until then.
            Err(e) => {
                log::error!(
                    "deleting {} from the chain refused, asked again in 10 minutes: {e}",
                    crate::words::count(fids.len() as u64, "FID")
                );
                return all(Sent::Retry { after: Duration::from_secs(600), error: Some(e.to_string()), failed: true });
            }
        };
        crate::hooks::reached_async("deletion-landed").await;
        let (tx, block) = (&receipt.receipt.tx_hash, receipt.receipt.block);
        let mut outcomes = Vec::with_capacity(fids.len());
        let mut deleted = Vec::new();
        for (fid, item) in fids.iter().zip(&receipt.items) {
            match item {
                Ok(()) => {
                    log::info!("deleted {fid} from the chain (tx {tx}, block {block})");
                    deleted.push(*fid);
                }
                Err(ChainError::Dispatch { error, .. }) if error == "NonExistent" || error == "NotOwner" => {
                    log::info!("{fid} is not on the chain any more");
                }
                Err(e) => log::error!("deleting {fid} from the chain refused: {e}"),
            }
            outcomes.push(Sent::Done);
        }
        // The territory has room again: files that failed for want of it go now, not when the
        // watcher next reads the territory, which may also see a file that became active
        // meanwhile and miss the net gain.
        if !deleted.is_empty() {
            self.freed.notify_one();
        }
        // Reads follow finalized blocks, a few behind the one the deletions are in: until they
        // see them, a file of the same bytes would still find the FID held.
        let seen = tokio::time::Instant::now() + DELETION_SEEN_WITHIN;
        while !deleted.is_empty() {
            if let Some(held) = self.held_here_now(&deleted).await {
                deleted = deleted.into_iter().zip(held).filter(|(_, held)| *held).map(|(fid, _)| fid).collect();
            }
            if deleted.is_empty() {
                break;
            }
            if tokio::time::Instant::now() > seen {
                for (fid, outcome) in fids.iter().zip(outcomes.iter_mut()) {
                    if deleted.contains(fid) {
                        *outcome = Sent::Retry { after: Duration::from_secs(10), error: None, failed: false };
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        outcomes
    }
}

/// What became of one deletion sent in a batch.
#[derive(Debug, Clone)]
enum Sent {
    /// Done: deleted, gone already, or refused for good.
    Done,
    /// Its outcome is not known yet: asked again after `after`, its claim kept.
    Retry { after: Duration, error: Option<String>, failed: bool },
    /// Not sent (its record could not be written): asked again after this.
    Unsent(Duration),
    /// Sent, its outcome not known: asked again after the tombstone's back-off, its claim kept.
    Backoff(String),
}
