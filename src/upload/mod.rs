//! The upload engine: takes closed files from the store's upload queue to `active` on CESS.
//!
//! Per file, a persisted state machine keyed by inode (store/outbox.rs):
//! `staged` → (quiet delay) `encoding` → `declared` → `pushing` → `confirming` → `active`, or
//! `failed` with a reason, or `local` for empty files. Every step is idempotent and starts by
//! looking at the chain: an existing `File` is a fly upload (no data moves), an existing deal is
//! resumed (only the columns not yet reported are pushed), and a FID is never declared twice.
//! After a crash every record resumes where it was. Transient failures back off exponentially
//! (1 s doubling to 5 min); permanent ones end in `failed` until the file changes or is renamed,
//! but for those of the territory (missing, full, frozen), tried again when it changes and every
//! 10 minutes.
//!
//! The scheduler learns which records changed from the store's catalog and keeps when each needs
//! work in a heap, so no per-event work grows with the number of files. Store calls run in
//! blocking threads (`Inner::db`), never on the runtime's workers.
//!
//! Encoding runs one file at a time on all cores; pushes and confirmations of several files
//! overlap. Memory: the encoder's buffers (about 96 MiB per core plus one) and, while pushing,
//! up to three rebuilt segments (96 MiB each) per file: a segment's buffers are sent as they
//! are and live until its slowest column has sent it.

mod error;
mod job;
mod placement;
mod push;
mod window;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Semaphore, watch};

pub use error::UploadError;

use crate::format::{Encoder, FileManifest, Hash, MasterKey};
use crate::miner::MinerClient;
use crate::protocol::{AccountId, Chain, Signer};
use crate::store::{Store, StoreError, Timestamp, UploadRecord, UploadState};
use crate::sync::lock;

/// How the engine works.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Wait this long after the last close before uploading (temp files renamed or deleted
    /// within it are never uploaded).
    pub quiet_delay: Duration,
    /// Files worked on at once.
    pub parallel: usize,
    /// The territory files are stored in.
    pub territory: Vec<u8>,
    /// The encryption key; `None` stores files in the plaintext layout.
    pub master: Option<MasterKey>,
    /// When a request to a miner counts as stalled.
    pub stall: crate::miner::StallRule,
    /// The link's pace (bandwidth limit, a reader first), shared with the cold reads.
    pub pace: Option<Arc<crate::pace::Pace>>,
    /// How long miners get to report a pushed column before it goes to other miners.
    pub report_timeout: Duration,
    /// How often to look at the chain while waiting for reports.
    pub poll: Duration,
    /// Files of fewer bytes than this go into packs (encrypted mode; 0: none do).
    pub pack_below: u64,
    /// Whether the tree's writer seals the open pack with each tree, as a commit, and merges
    /// under-full packs into it: the engine then seals packs only when full, and merges
    /// nothing, unless another mount writes the tree (this one then writes no commits).
    pub commits: bool,
    /// Bytes of the territory's charge a declaration leaves free, except one of a round of the
    /// tree that gives room back ([`kept_free`]).
    pub kept_free: u128,
    /// How long a landed declaration may take to show in the territory as the chain's reads
    /// see it (finalized blocks; none on a devnet: [`Chain::reads_lag`]).
    pub finality_lag: Duration,
}

/// Room in the territory that a file checked against it takes: from the check until its
/// declaration shows in the chain's reads (`finality_lag` after it landed).
#[derive(Debug, Clone, Copy)]
struct Promise {
    room: u128,
    landed: Option<Instant>,
}

/// The territory's charge a declaration leaves free: one segment's while tree snapshots are
/// written (`trees`). A removed file's FID stays while a kept tree names it, so a territory
/// filled to the last byte could never take the round that no longer names it, and the room
/// the file took would never come back; that round may take this room
/// ([`Store::round_frees`]). `df` leaves it out too.
pub fn kept_free(trees: bool) -> u128 {
    match trees {
        true => crate::protocol::charged_space(1),
        false => 0,
    }
}

struct Inner {
    store: Arc<Store>,
    chain: Arc<dyn Chain>,
    miners: MinerClient,
    encoder: Encoder,
    /// One encoding at a time: it uses every core.
    cpu: Semaphore,
    config: UploadConfig,
    running: Mutex<HashSet<u64>>,
    /// Manifests computed in this run, so a declaration right after encoding needs no re-read.
    manifests: Mutex<HashMap<u64, Arc<FileManifest>>>,
    /// Miners that took a column and did not report it, or lost it, per FID: not chosen again
    /// for it while others can take it.
    laggards: Mutex<HashMap<Hash, HashSet<AccountId>>>,
    /// The inode pushing each FID's deal now (files of equal bytes share it).
    pushing: Mutex<HashMap<Hash, u64>>,
    /// Rung when a push ends: an inode waiting for the deal of its FID goes on.
    push_ended: tokio::sync::Notify,
    /// How far each push has come, shown in the files' attributes.
    pushes: Arc<crate::protocol::Pushes>,
    /// How many fragments go at once, over all pushes.
    window: Arc<window::Window>,
    /// Turns true at shutdown: encodings and pushes stop at their next step.
    stop: watch::Receiver<bool>,
    /// Rung when the territory changed: files that failed for its sake are tried again.
    territory_changed: Arc<tokio::sync::Notify>,
    /// Taken from a file's look at the territory's room until its record is declared: two
    /// files looking at once would both take the last room.
    territory_check: tokio::sync::Mutex<()>,
    /// The room each file checked against the territory takes, until the territory shows it.
    room_promised: Mutex<HashMap<u64, Promise>>,
    /// Reads the blobs of evicted files when their packs are merged.
    fetcher: Option<Arc<crate::fetch::Fetcher>>,
    /// The tree's snapshots on chain: nothing they refer to is deleted (encrypted mode).
    watch: Option<Arc<crate::snapshots::watch::TreeWatch>>,
}

/// The upload engine.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

/// How often a step that waits for something under way (a block, a deletion) looks again.
const WAIT_PACE: Duration = Duration::from_secs(5);

/// How often under-full packs are looked for.
const PACK_MERGE_EVERY: Duration = Duration::from_secs(60);

/// How often a file that failed for its territory's sake (missing, full, frozen) is tried again
/// when nothing about the territory was seen to change.
const TERRITORY_RECHECK: Duration = Duration::from_secs(600);

/// When each inode's upload needs work next: a heap by time, with the latest time per inode
/// (older heap entries of an inode are skipped when they come up). Per change O(log n).
#[derive(Default)]
struct Schedule {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    due: HashMap<u64, Instant>,
}

impl Schedule {
    /// Sets when `ino` needs work (`None`: not until its record changes).
    fn set(&mut self, ino: u64, at: Option<Instant>) {
        match at {
            Some(at) if self.due.get(&ino) != Some(&at) => {
                self.due.insert(ino, at);
                self.heap.push(Reverse((at, ino)));
            }
            Some(_) => {}
            None => {
                self.due.remove(&ino);
            }
        }
    }

    /// The next inode due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<u64> {
        while let Some(Reverse((at, ino))) = self.heap.peek().copied() {
            if self.due.get(&ino) != Some(&at) {
                self.heap.pop();
                continue;
            }
            if at > now {
                return None;
            }
            self.heap.pop();
            self.due.remove(&ino);
            return Some(ino);
        }
        None
    }

    /// When the next inode is due.
    fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, ino))) = self.heap.peek().copied() {
            if self.due.get(&ino) == Some(&at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

impl Engine {
    /// An engine working from `store`'s queue against `chain`, signing miner requests as `signer`,
    /// reading blobs of evicted files with `fetcher` when it merges packs, deleting nothing the
    /// tree's snapshots on chain refer to (`tree`). The engine stops when `stop` turns true.
    pub fn new(
        store: Arc<Store>,
        chain: Arc<dyn Chain>,
        signer: Signer,
        config: UploadConfig,
        fetcher: Option<Arc<crate::fetch::Fetcher>>,
        tree: Option<Arc<crate::snapshots::watch::TreeWatch>>,
        stop: watch::Receiver<bool>,
    ) -> Engine {
        Engine(Arc::new(Inner {
            miners: MinerClient::new(signer, config.stall, config.pace.clone()),
            window: window::Window::new(config.pace.clone()),
            store,
            chain,
            encoder: Encoder::holding_at_most(push::SEGMENTS_HELD),
            cpu: Semaphore::new(1),
            config,
            running: Mutex::new(HashSet::new()),
            manifests: Mutex::new(HashMap::new()),
            laggards: Mutex::new(HashMap::new()),
            pushing: Mutex::new(HashMap::new()),
            push_ended: tokio::sync::Notify::new(),
            pushes: Arc::default(),
            stop,
            territory_changed: Arc::default(),
            territory_check: tokio::sync::Mutex::new(()),
            room_promised: Mutex::default(),
            fetcher,
            watch: tree,
        }))
    }

    /// How far each push has come (for `user.cess.progress`).
    pub fn pushes(&self) -> Arc<crate::protocol::Pushes> {
        self.0.pushes.clone()
    }

    /// Tells the engine that the territory changed (expanded, renewed, minted): files that
    /// failed for its sake are tried again now.
    pub fn territory_changed(&self) {
        self.0.territory_changed.notify_one();
    }

    /// Works the queue until the engine's stop signal turns true; then waits up to `grace` for
    /// the files in progress to reach a safe point (they resume at the next start otherwise).
    pub async fn run(&self, grace: Duration) {
        let inner = &self.0;
        let mut stop = inner.stop.clone();
        let mut jobs = tokio::task::JoinSet::new();
        let mut schedule = Schedule::default();
        // Files that failed for the territory's sake, tried again when it changes.
        let mut waiting_for_territory: HashSet<u64> = HashSet::new();
        // Files due while their job was running: looked at again when it ends.
        let mut again: HashSet<u64> = HashSet::new();
        let reaper = crate::collect::Reaper::new(
            inner.store.clone(),
            inner.chain.clone(),
            inner.watch.clone(),
            inner.config.territory.clone(),
            inner.territory_changed.clone(),
        );
        let reaper = tokio::spawn(reaper.run(inner.stop.clone()));
        let mut idle_since: Option<std::time::Instant> = None;
        // Under-full packs are looked for when a pack was stored or went, and once a minute; one
        // merge at a time.
        let mut merging: Option<tokio::task::JoinHandle<()>> = None;
        let mut merged_at = Instant::now();
        let mut packs_seen = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            match inner.db(|s| Ok(s.changed_uploads())).await {
                Ok(changed) => {
                    let read =
                        inner.db(move |s| Ok(changed.into_iter().map(|ino| (ino, s.upload(ino))).collect::<Vec<_>>()));
                    let mut records = Vec::new();
                    for (ino, rec) in read.await.unwrap_or_default() {
                        match rec {
                            Ok(rec) => records.push((ino, rec)),
                            // Unreadable now: looked at again in a while.
                            Err(e) => {
                                crate::log_limited!(
                                    log::Level::Error,
                                    "upload record",
                                    "inode {ino}: upload record unreadable: {e}"
                                );
                                schedule.set(ino, Some(Instant::now() + Duration::from_secs(60)));
                            }
                        }
                    }
                    for (ino, rec) in records {
                        // Declared before a restart: its room counts until it is seen.
                        if let Some(r) = rec.as_ref().filter(|r| r.state == UploadState::Declared) {
                            let room = crate::protocol::charged_space(r.segments as usize);
                            lock(&inner.room_promised).entry(ino).or_insert(Promise { room, landed: None });
                        }
                        let due = rec.as_ref().and_then(|r| inner.due_in(r));
                        schedule.set(ino, due.map(|d| Instant::now() + d));
                        match rec {
                            Some(r) if r.state == UploadState::Failed && r.retry_at.is_some() => {
                                waiting_for_territory.insert(ino)
                            }
                            _ => waiting_for_territory.remove(&ino),
                        };
                    }
                }
                Err(e) => crate::log_limited!(log::Level::Error, "upload queue", "upload queue unreadable: {e}"),
            }
            let now = Instant::now();
            while lock(&inner.running).len() < inner.config.parallel {
                let Some(ino) = schedule.pop_due(now) else { break };
                if !lock(&inner.running).insert(ino) {
                    again.insert(ino);
                    continue;
                }
                let inner = inner.clone();
                jobs.spawn(async move {
                    inner.job(ino).await;
                    ino
                });
            }
            // Give the encoder's buffers back once nothing has run for a while.
            if jobs.is_empty() {
                let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    inner.encoder.release_buffers();
                }
            } else {
                idle_since = None;
            }
            // An open pack is sealed even with packing turned off since: its files wait for it.
            let commits = inner.config.commits && !inner.store.another_writer();
            if let Some(keys) = inner.config.master.as_ref().and_then(|m| m.blobs()).filter(|_| !commits) {
                let (keys, quiet) = (keys.clone(), inner.pack_quiet());
                if let Err(e) = inner.db(move |s| s.seal_quiet_pack(quiet, &keys)).await {
                    crate::log_limited!(log::Level::Error, "pack", "sealing a pack: {e}");
                }
            }
            let packs = inner.db(|s| Ok(s.stored_pack_count())).await.unwrap_or(packs_seen);
            if inner.packing().is_some()
                && !commits
                && (packs != packs_seen || merged_at.elapsed() >= PACK_MERGE_EVERY)
                && merging.as_ref().is_none_or(|m| m.is_finished())
            {
                (merged_at, packs_seen) = (Instant::now(), packs);
                merging = Some(tokio::spawn(inner.clone().merge_packs()));
            }
            let slot_free = lock(&inner.running).len() < inner.config.parallel;
            let wake = match schedule.next() {
                Some(at) if slot_free => at.saturating_duration_since(Instant::now()),
                _ => Duration::from_secs(5),
            };
            // An open pack is sealed once quiet.
            let wake = if inner.config.master.is_some() { wake.min(Duration::from_millis(500)) } else { wake };
            tokio::select! {
                _ = inner.store.doorbell().notified() => {}
                _ = tokio::time::sleep(wake) => {}
                _ = inner.territory_changed.notified() => {
                    let waiting: Vec<u64> = waiting_for_territory.iter().copied().collect();
                    if let Err(e) = inner.db(move |s| s.bring_retries_forward(&waiting)).await {
                        log::error!("trying again the files that failed for the territory: {e}");
                    }
                }
                Some(joined) = jobs.join_next(), if !jobs.is_empty() => {
                    if let Some(ino) = report_join(joined) && again.remove(&ino) {
                        schedule.set(ino, Some(Instant::now()));
                    }
                }
                _ = stop.changed() => break,
            }
        }
        if !jobs.is_empty() {
            log::info!("waiting up to {}s for {} uploads to reach a safe point", grace.as_secs(), jobs.len());
            let drained = async {
                while let Some(joined) = jobs.join_next().await {
                    report_join(joined);
                }
            };
            if tokio::time::timeout(grace, drained).await.is_err() {
                log::info!("uploads still in progress resume at the next mount");
                jobs.abort_all();
                while jobs.join_next().await.is_some() {}
            }
        }
        if let Err(e) = reaper.await {
            log::error!("the deletion task ended abnormally: {e}");
        }
        if let Some(Err(e)) = match merging {
            Some(m) => Some(m.await),
            None => None,
        } {
            log::error!("the pack merge ended abnormally: {e}");
        }
    }

    /// The store the engine works from.
    pub fn store(&self) -> &Arc<Store> {
        &self.0.store
    }
}

impl Inner {
    /// When a file that found no room looks at the territory again, unless it changes first:
    /// once the room a landed declaration took stops counting twice (its promise ends as the
    /// chain's reads show it), else in 10 minutes.
    fn territory_recheck(&self) -> Duration {
        let lag = self.config.finality_lag;
        let ends = lock(&self.room_promised)
            .values()
            .filter_map(|p| p.landed)
            .map(|at| (at + lag).saturating_duration_since(Instant::now()))
            .min();
        ends.map_or(TERRITORY_RECHECK, |d| (d + Duration::from_secs(1)).min(TERRITORY_RECHECK))
    }

    /// Runs `f` on the store in a blocking thread: sled calls (and the locks the filesystem
    /// holds around them) never stall the runtime's workers.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, UploadError> {
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || f(&store)).await;
        done.map_err(|e| UploadError::Internal(format!("a store call ended abnormally: {e}")))?
            .map_err(UploadError::from)
    }

    /// When the record needs work: `None` for never (until something changes it).
    fn due_in(&self, rec: &UploadRecord) -> Option<Duration> {
        let retry = rec.retry_at.map(Timestamp::remaining).unwrap_or_default();
        match rec.state {
            // Failed for the territory's sake: tried again at `retry_at` (or when it changes).
            UploadState::Failed => rec.retry_at.map(Timestamp::remaining),
            UploadState::Local | UploadState::Packed => None,
            // A stored pack is finished (its files made active) as soon as it is stored.
            UploadState::Active if rec.format == crate::format::FORMAT_PLAIN => Some(Duration::ZERO),
            UploadState::Active if rec.newer.is_none() && !rec.retired && rec.replaces.is_empty() => None,
            UploadState::Active => Some(Duration::ZERO),
            UploadState::Staged => {
                let settled = rec.staged_at.into_system_time() + self.config.quiet_delay;
                let quiet = settled.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                Some(quiet.max(retry))
            }
            _ => Some(retry),
        }
    }

    /// One file's upload as far as it goes now. A panic in it (a bug: inputs from disk, chain
    /// and miners are checked) fails the file with the panic's message and frees its slot.
    async fn job(self: Arc<Self>, ino: u64) {
        use futures_util::FutureExt;
        /// Frees the job's slot however it ends.
        struct Slot<'a>(&'a Inner, u64);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                lock(&self.0.running).remove(&self.1);
                self.0.store.ring();
            }
        }
        let _slot = Slot(&self, ino);
        let work = async {
            let version = self.db(move |s| s.upload(ino)).await.ok().flatten().map(|r| r.content_version);
            match std::panic::AssertUnwindSafe(self.advance(ino)).catch_unwind().await {
                Ok(Ok(())) => {}
                // Stopped at shutdown: it resumes at the next start, no attempt lost.
                Ok(Err(UploadError::ShuttingDown)) => {}
                Ok(Err(e)) => self.record_failure(ino, version, e).await,
                Err(panic) => self.record_failure(ino, version, UploadError::Internal(panic_message(&panic))).await,
            }
        };
        if let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await {
            log::error!("inode {ino}: recording an upload failure failed: {}", panic_message(&panic));
        }
    }

    /// The keys of packed blobs and the names of packs, if small files are packed.
    fn packing(&self) -> Option<&crate::format::BlobKeys> {
        self.config.master.as_ref().and_then(|m| m.blobs()).filter(|_| self.config.pack_below > 0)
    }

    /// Merges under-full packs into the open pack if that leaves fewer packs (no commits here:
    /// [`crate::snapshots::merge`]). Stops at shutdown.
    async fn merge_packs(self: Arc<Self>) {
        let Some(keys) = self.packing().cloned() else { return };
        let (Some(names), Some(fetcher)) = (self.config.master.as_ref().and_then(|m| m.names()), &self.fetcher) else {
            return;
        };
        let merger = crate::snapshots::merge::Merger {
            store: self.store.clone(),
            fetcher: fetcher.clone(),
            keys,
            names: names.clone(),
        };
        if let Err(e) = merger.merge(crate::snapshots::merge::Rule::Alone, &self.stop).await {
            crate::log_limited!(log::Level::Warn, "pack merge", "merging under-full packs: {e:#}");
        }
    }

    /// How long an open pack waits for more files before it is sealed.
    fn pack_quiet(&self) -> Duration {
        self.config.quiet_delay.max(Duration::from_secs(1))
    }

    /// The key that writes content of format version `format` (`None`: plaintext mode).
    fn key_for(&self, format: u8) -> Result<Option<MasterKey>, UploadError> {
        let Some(master) = self.config.master.as_ref().filter(|_| format != crate::format::FORMAT_PLAIN) else {
            return Ok(None);
        };
        let key = master.writing(format);
        key.map(Some).ok_or_else(|| UploadError::Internal(format!("no keys for encryption format version {format}")))
    }

    /// Records a failure: a transient one is retried after a back-off, a permanent one ends the
    /// upload in `failed` (one for the territory's sake is tried again when it changes, and
    /// every 10 minutes).
    async fn record_failure(&self, ino: u64, version: Option<u64>, e: UploadError) {
        let rec = match self.db(move |s| s.upload(ino)).await {
            // The failure was of an earlier version: the newer one gets its own chance.
            Ok(Some(rec)) if version.is_some_and(|v| v != rec.content_version) => return,
            Ok(Some(rec)) => rec,
            Ok(None) => return,
            Err(err) => {
                crate::log_limited!(log::Level::Error, "record failure", "inode {ino}: recording {e}: {err}");
                return;
            }
        };
        let mut next = rec.clone();
        // A wait is not a failure: it looks again at a steady pace, without backing off.
        if !e.is_wait() {
            next.attempts += 1;
        }
        next.error = Some(e.to_string());
        next.updated_at = Timestamp::now();
        if e.is_transient() {
            let wait = if e.is_wait() { WAIT_PACE } else { crate::protocol::backoff(next.attempts) };
            next.retry_at = Some(Timestamp::after(wait));
            let (level, what) = if e.is_wait() {
                (log::Level::Info, "waits, looking again".to_string())
            } else {
                (log::Level::Warn, format!("failed (attempt {}), retrying", next.attempts))
            };
            crate::log_limited!(
                level,
                &format!("upload {}: {e}", rec.state.word()),
                "inode {ino}: {} {what} in {}s: {e}",
                rec.state.word(),
                wait.as_secs()
            );
        } else if rec.state.deal_in_flight() {
            // A declared deal cannot be cancelled: keep trying, slowly.
            next.retry_at = Some(Timestamp::after(Duration::from_secs(300)));
            log::error!("inode {ino}: {e}; the deal stays open and is retried");
        } else if e.waits_for_territory() {
            if e.waits_for_room()
                && let Err(e) = self.db(|s| s.set_room_wanted(true)).await
            {
                log::error!("recording that an upload waits for room: {e}");
            }
            next.state = UploadState::Failed;
            next.retry_at = Some(Timestamp::after(self.territory_recheck()));
            next.error = Some(format!("{e}; tried again when the territory changes, and at least every 10 minutes"));
            crate::log_limited!(
                log::Level::Error,
                &format!("territory: {e}"),
                "inode {ino}: {} → failed: {e}",
                rec.state.word()
            );
        } else {
            next.state = UploadState::Failed;
            // A pack never changes, and its files wait for it: it is tried again in a while.
            let pack = rec.format == crate::format::FORMAT_PLAIN;
            next.retry_at = pack.then(|| Timestamp::after(TERRITORY_RECHECK));
            log::error!("inode {ino}: {} → failed: {e}", rec.state.word());
        }
        if let Err(e) = self.db(move |s| s.swap_upload(ino, &rec, Some(&next))).await {
            crate::log_limited!(log::Level::Error, "record failure", "inode {ino}: recording the failure: {e}");
        }
    }
}

/// The message of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
    format!("internal error: {}", text.unwrap_or_else(|| "a panic".into()))
}

/// The inode of a job that ended; logs one that ended abnormally (jobs catch their own panics).
fn report_join(joined: Result<u64, tokio::task::JoinError>) -> Option<u64> {
    match joined {
        Ok(ino) => Some(ino),
        Err(e) => {
            if e.is_panic() {
                log::error!("an upload task panicked: {e}");
            }
            None
        }
    }
}

impl Timestamp {
    fn into_system_time(self) -> std::time::SystemTime {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SegmentManifest;
    use crate::protocol::{ChainError, DealInfo, FileInfo, HeldFile, MinerInfo, TerritoryInfo, TxReceipt, UserBrief};
    use crate::store::{Batch, InodeRecord, Kind};

    /// A chain whose answers are a bug: every read panics (fault injection, as a chain client
    /// with a decoding bug would).
    struct PanickingChain(AccountId);

    #[async_trait::async_trait]
    impl Chain for PanickingChain {
        fn account(&self) -> AccountId {
            self.0
        }
        async fn territory(&self, _: &AccountId, _: &[u8]) -> Result<Option<TerritoryInfo>, ChainError> {
            panic!("territory decoder bug")
        }
        async fn file(&self, _: &Hash) -> Result<Option<FileInfo>, ChainError> {
            panic!("file decoder bug")
        }
        async fn deal(&self, _: &Hash) -> Result<Option<DealInfo>, ChainError> {
            panic!("deal decoder bug")
        }
        async fn miners(&self) -> Result<Vec<MinerInfo>, ChainError> {
            panic!("miners decoder bug")
        }
        async fn held_files(&self, _: &AccountId) -> Result<Vec<HeldFile>, ChainError> {
            panic!("hold list decoder bug")
        }
        async fn upload_declaration(
            &self,
            _: &Hash,
            _: &[SegmentManifest],
            _: &UserBrief,
            _: u64,
            _: crate::protocol::BeforeSend<'_>,
        ) -> Result<TxReceipt, ChainError> {
            panic!("declaration bug")
        }
        async fn may_land(&self, _: &crate::protocol::SentTx) -> Result<bool, ChainError> {
            panic!("pool bug")
        }
        async fn delete_files(&self, _: &[Hash]) -> Result<crate::protocol::BatchReceipt, ChainError> {
            panic!("deletion bug")
        }
    }

    fn stage(store: &Store, ino: u64, bytes: &[u8]) {
        std::fs::write(store.content_path(ino), bytes).unwrap();
        let now = Timestamp::now();
        let rec = InodeRecord {
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: bytes.len() as u64,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: 1,
            target: Vec::new(),
            content_version: 1,
            name: format!("file{ino}").into_bytes(),
            key: None,
        };
        let mut b = Batch::default();
        b.put_inode(ino, &rec);
        b.put_upload(ino, &UploadRecord::staged(1));
        store.commit(b).unwrap();
    }

    /// Jobs that panic fail their file with the panic's message and free their slot: with one
    /// slot, both files get their turn.
    #[test]
    fn a_panicking_job_fails_its_file_and_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 0, 0).unwrap());
        stage(&store, 100, b"first file");
        stage(&store, 101, b"second file");
        let signer = Signer::from_uri("//Alice").unwrap();
        let config = UploadConfig {
            quiet_delay: Duration::ZERO,
            parallel: 1,
            territory: b"t".to_vec(),
            master: None,
            stall: crate::miner::StallRule::over(Duration::from_secs(1)),
            pace: None,
            report_timeout: Duration::from_secs(1),
            poll: Duration::from_millis(10),
            pack_below: 0,
            commits: false,
            kept_free: 0,
            finality_lag: Duration::ZERO,
        };
        let (stop, stopped) = watch::channel(false);
        let chain = Arc::new(PanickingChain(signer.account()));
        let engine = Engine::new(store.clone(), chain, signer, config, None, None, stopped);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let failed = rt.block_on(async {
            let run = tokio::spawn(async move { engine.run(Duration::from_secs(1)).await });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let failed = loop {
                let records = store.uploads().unwrap();
                if records.iter().all(|(_, r)| r.state == UploadState::Failed) {
                    break records;
                }
                assert!(tokio::time::Instant::now() < deadline, "files still not failed: {records:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            stop.send(true).unwrap();
            run.await.unwrap();
            failed
        });
        assert_eq!(failed.len(), 2);
        for (_, r) in failed {
            let error = r.error.unwrap_or_default();
            assert!(error.contains("internal error") && error.contains("decoder bug"), "{error}");
        }
    }
}
