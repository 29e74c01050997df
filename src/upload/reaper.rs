//! The reaper: deletes the FIDs queued in tombstones from the chain, one at a time, each once
//! nothing here needs it (`Store::claim_deletion`). A deletion is recorded as sent before its
//! transaction goes, so that after a restart it is followed to its end, with its FID claimed
//! meanwhile; a tombstone is settled only if it is still the one the attempt read.

use std::sync::Arc;
use std::time::Duration;

use super::{Inner, backoff, later, until};
use crate::format::Hash;
use crate::protocol::ChainError;
use crate::store::{Deletion, Store, Tombstone};

/// A deletion claimed in the store ([`Store::claim_deletion`]), ended when dropped unless
/// `kept` (its outcome is not known yet). Kept too if the attempt is dropped half-way (at
/// shutdown): the tombstone, marked sent, claims it again at the next start.
struct ClaimedDeletion<'a> {
    store: &'a Store,
    fid: Hash,
    kept: bool,
}

impl Drop for ClaimedDeletion<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.store.end_deletion(&self.fid);
        }
    }
}

/// How long a landed deletion may take to show in the chain's reads (finalized blocks) before
/// the reaper looks again later.
const DELETION_SEEN_WITHIN: Duration = Duration::from_secs(60);

/// How old the look at the tree's snapshots on chain may be when a FID is deleted.
const TREE_SEEN_WITHIN: Duration = Duration::from_secs(60);

/// What one attempt did: the tombstone to keep (`None`: done), and whether the claim may end.
struct Attempt {
    retry: Option<Tombstone>,
    settled: bool,
}

impl Inner {
    /// Deletes queued FIDs from the chain, one at a time, until the engine stops.
    pub(super) async fn reap_tombstones(self: Arc<Self>) {
        let mut stop = self.stop.clone();
        loop {
            if *stop.borrow() {
                return;
            }
            let mut next = Duration::from_secs(300);
            self.follow_abandoned_deals().await;
            match self.db(|s| s.tombstones()).await {
                Ok(mut stones) => {
                    let due = |t: &Tombstone| t.retry_at.map(until).is_none_or(|w| w.is_zero());
                    // What the tree's snapshots on chain refer to is looked at first, at most a
                    // minute before: nothing may go until it is known.
                    let mut waits = None;
                    if stones.iter().any(|(_, t)| due(t))
                        && let Some(watch) = &self.watch
                        && let Err(why) = watch.look_within(TREE_SEEN_WITHIN).await
                    {
                        crate::log_limited!(log::Level::Warn, "deletions wait", "deletions wait: {why}");
                        next = TREE_SEEN_WITHIN;
                        stones.clear();
                        waits = Some(why);
                    }
                    for (fid, t) in stones {
                        if *stop.borrow() {
                            return;
                        }
                        if let Some(wait) = t.retry_at.map(until).filter(|w| !w.is_zero()) {
                            next = next.min(wait);
                            continue;
                        }
                        let (read, fid_copy) = (t.clone(), fid);
                        let Attempt { retry, .. } = self.delete(&fid, t, &mut waits).await;
                        if let Some(retry) = &retry {
                            next = next.min(retry.retry_at.map(until).unwrap_or_default());
                        }
                        if let Err(e) = self.db(move |s| s.settle_tombstone(&fid_copy, &read, retry)).await {
                            log::error!("tombstone of {fid}: {e}");
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

    /// Deletes `fid` from the chain unless something still needs it; `waits` is set to why
    /// deletions wait, if they do for a reason `cessfs status` shows.
    async fn delete(&self, fid: &Hash, read: Tombstone, waits: &mut Option<String>) -> Attempt {
        let later_by = |d: Duration| {
            let t = Tombstone { retry_at: Some(later(d)), ..read.clone() };
            Attempt { retry: Some(t), settled: true }
        };
        let fid_copy = *fid;
        let decided = self.db(move |s| s.claim_deletion(&fid_copy)).await;
        crate::hooks::reached_async("reaper-decided").await;
        match decided {
            Ok(Deletion::Claimed) => {}
            Ok(Deletion::InUse) => {
                log::info!("{fid} is in use here (a file or a kept tree snapshot): not deleted");
                return Attempt { retry: None, settled: true };
            }
            Ok(Deletion::OnChain) => {
                log::info!(
                    "{fid} is in a tree snapshot on chain that this mount does not keep: asked again in an hour"
                );
                return later_by(Duration::from_secs(3600));
            }
            // A snapshot being built may refer to it: ask again in a moment.
            Ok(Deletion::Held) => return later_by(Duration::from_secs(1)),
            Ok(Deletion::Stopped) => return later_by(Duration::from_secs(600)),
            // Queued by a record that lets go of it in a moment (a file moving to its newer
            // version, or to another pack): asked again then.
            Ok(Deletion::Replacing) => return later_by(Duration::from_secs(5)),
            Ok(Deletion::Pinned) => {
                log::info!("{fid} is being taken as stored by an upload: asked again in 5 s");
                return later_by(Duration::from_secs(5));
            }
            Ok(Deletion::InDoubt(why)) => {
                crate::log_limited!(log::Level::Warn, "deletion in doubt", "{fid} is not deleted now: {why}");
                *waits = Some(why);
                return later_by(Duration::from_secs(60));
            }
            Err(e) => {
                log::error!("checking whether {fid} is in use: {e}");
                return later_by(Duration::from_secs(60));
            }
        }
        let mut claim = ClaimedDeletion { store: &self.store, fid: *fid, kept: true };
        let attempt = self.delete_claimed(fid, read).await;
        claim.kept = !attempt.settled;
        attempt
    }

    /// Whether the chain, as its reads see it, holds `fid` for this tree (`None`: unknown now).
    async fn held_here_now(&self, fid: &Hash) -> Option<bool> {
        let file = self.chain.file(fid).await.ok()?;
        Some(file.is_some_and(|f| self.held_here(&f)))
    }

    /// Deletes `fid`, claimed, from the chain (see [`Attempt`]): the claim may end once the
    /// chain's reads no longer show it held here, or no deletion sent can still land.
    async fn delete_claimed(&self, fid: &Hash, read: Tombstone) -> Attempt {
        let fid_copy = *fid;
        // A deletion sent before (by this run or one before a restart) may still land.
        let sent_before = self.db(move |s| s.deletion_sent(&fid_copy)).await.unwrap_or(true);
        let retry = |d: Duration, error: Option<String>, failed: bool| {
            let mut t = read.clone();
            t.attempts += u32::from(failed);
            t.retry_at = Some(later(d));
            t.error = error.or(t.error);
            t
        };
        // `delete_file` drops the account's every hold of the FID: one it also holds in another
        // territory (plaintext mode shares FIDs) belongs to another tree too, and stays.
        let me = self.chain.account();
        match self.chain.file(fid).await {
            Ok(Some(file)) if file.owners.iter().any(|o| o.user == me && o.territory_name != self.config.territory) => {
                log::info!("{fid} is also held in another territory of this account: not deleted from the chain");
                let t = retry(Duration::from_secs(600), None, false);
                return Attempt { retry: sent_before.then_some(t), settled: !sent_before };
            }
            Ok(Some(file)) if self.held_here(&file) => {}
            Ok(_) => {
                log::info!("{fid} is not on the chain any more");
                return Attempt { retry: None, settled: true };
            }
            Err(e) => {
                let attempts = read.attempts + 1;
                let t = retry(backoff(attempts), Some(format!("reading the file before deleting it: {e}")), true);
                return Attempt { retry: Some(t), settled: !sent_before };
            }
        }
        if let Err(e) = self.db(move |s| s.mark_deletion_sent(&fid_copy)).await {
            log::error!("recording the deletion of {fid} before sending it: {e}");
            return Attempt { retry: Some(retry(Duration::from_secs(60), None, false)), settled: !sent_before };
        }
        log::info!("deleting {fid} from the chain");
        match self.chain.delete_file(fid).await {
            Ok(r) => {
                log::info!("deleted {fid} from the chain (tx {}, block {})", r.tx_hash, r.block);
                // The territory has room again: files that failed for want of it go now, not
                // when the watcher next reads the territory, which may also see a file that
                // became active meanwhile and miss the net gain.
                self.territory_changed.notify_one();
                // Reads follow finalized blocks, a few behind the one the deletion is in: until
                // they see it, a file of the same bytes would still find the FID held.
                let seen = tokio::time::Instant::now() + DELETION_SEEN_WITHIN;
                while self.held_here_now(fid).await != Some(false) {
                    if tokio::time::Instant::now() > seen {
                        return Attempt { retry: Some(retry(Duration::from_secs(10), None, false)), settled: false };
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Attempt { retry: None, settled: true }
            }
            Err(ChainError::Dispatch { error, .. }) if error == "NonExistent" || error == "NotOwner" => {
                log::info!("{fid} is not on the chain any more");
                Attempt { retry: None, settled: true }
            }
            // Sent, and how it ended is not known (no block seen, the connection lost): it may
            // still land, so the claim stays until a later attempt sees.
            Err(e) if e.is_transient() && !matches!(e, ChainError::Refused { .. }) => {
                crate::log_limited!(
                    log::Level::Warn,
                    &format!("delete: {e}"),
                    "deleting {fid} from the chain failed, retrying: {e}"
                );
                let t = retry(backoff(read.attempts + 1), Some(e.to_string()), true);
                Attempt { retry: Some(t), settled: false }
            }
            // Refused by the pool (the account cannot pay the fee, say): the space stays charged
            // until it can, so it is asked again, slowly. A pool may also drop a transaction it
            // passed on already, so the claim stays until a later attempt sees how it ended.
            Err(e @ ChainError::Refused { .. }) => {
                crate::log_limited!(
                    log::Level::Warn,
                    "delete refused",
                    "deleting {fid} from the chain refused, asked again in 10 minutes: {e}"
                );
                Attempt { retry: Some(retry(Duration::from_secs(600), Some(e.to_string()), true)), settled: false }
            }
            Err(e) => {
                log::error!("deleting {fid} from the chain refused: {e}");
                Attempt { retry: None, settled: true }
            }
        }
    }
}
