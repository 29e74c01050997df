//! The sweep and collections on demand: FIDs of this tree on chain that nothing refers to,
//! found and queued for deletion.
//!
//! Mark: every FID a record of this data dir refers to (files and their earlier versions still
//! kept, packs, commits, kept trees, deletions under way); a record that cannot be read fails
//! the collection, so nothing counts as garbage then. Candidates: FIDs the account holds in the
//! territory under a file or pack name of this key, active since the lineage began (the block
//! at which the tree's oldest kept snapshot became active when it was restored, or the newest
//! block of the key's files when it began here: a `--fresh` tree's predecessors are never
//! touched). The unmarked candidates are queued for deletion; the reaper sends them, many to a
//! transaction, each after its own look at the tree on chain.
//!
//! Nothing is collected while the tree may have another live writer: a snapshot of this key
//! active since the lineage began that this mount does not keep, or before this mount wrote the
//! newest snapshot on chain itself (a machine thought lost that comes back then finds a newer
//! tree than its own and stops, before it refers to any of these FIDs again).
//!
//! It runs at two moments:
//! - The sweep after a restore. A machine lost before its next snapshot leaves FIDs on chain
//!   that it declared after its last one: held and charged, referred to by nothing. The tree
//!   restored on another machine deletes them once no other mount has written the tree for a
//!   while (`sweep_after`; the lost machine may not be lost). A file or pack of this key stored
//!   after the restore that nothing here knows stops it: another mount went on uploading.
//! - When asked (`cessfs gc`, `user.cess.gc` on the root; `--dry-run` lists only), at once,
//!   and as often as asked: the FIDs of the window between the lineage's start and the block
//!   at which the tree began in this data dir (restored: a lost machine's; a new or `--fresh`
//!   tree has an empty window). A FID of this key stored later that nothing here knows is
//!   another mount's (one that writes no tree, or stopped writing it): kept, and counted.

use std::time::Duration;

use serde::Serialize;

use crate::format::{Hash, NameKind};
use crate::snapshots::restore::Named;
use crate::snapshots::watch::TreeWatch;
use crate::store::lineage::{self, Pending};
use crate::store::{Store, off_runtime};

/// What a sweep did.
#[derive(Debug, PartialEq, Eq)]
pub enum Swept {
    /// These many FIDs were queued for deletion.
    Queued(usize),
    /// Nothing was, for this reason; a later sweep may.
    Waiting(String),
    /// Nothing was: this mount has not written the newest snapshot on chain yet.
    NotYet,
}

/// Why no candidate may be collected now.
enum Blocked {
    /// This mount has not written the newest snapshot on chain yet.
    NotYet,
    /// For this reason.
    Waiting(String),
}

/// The candidates of this tree since block `since` that nothing here refers to, or why none may
/// be collected now.
async fn unmarked(
    store: &std::sync::Arc<Store>,
    watch: &TreeWatch,
    since: impl Fn(&Named) -> bool,
) -> anyhow::Result<Result<Vec<Named>, Blocked>> {
    let tree = watch.tree();
    let named = watch.finder().named(&*tree.chain, &tree.territory, &tree.names).await?;
    if let Some(why) = store.unreadable_records() {
        return Ok(Err(Blocked::Waiting(why)));
    }
    // The trees this mount keeps, and those it is deleting: neither is another writer's.
    let ours = |s: &Store| crate::snapshots::watch::ours(s).map(|(ours, deleting, _)| &ours | &deleting);
    let kept = off_runtime(store, ours).await?;
    let baseline = crate::snapshots::baseline(store)?;
    let newest = named.iter().filter(|n| n.kind.is_tree()).max_by_key(|n| (n.number, n.fid.0));
    match newest {
        Some(n) if n.active && kept.contains(&n.fid) && n.number.unwrap_or_default() > baseline => {}
        _ => return Ok(Err(Blocked::NotYet)),
    }
    crate::hooks::reached_async("sweep").await;
    let named = watch.finder().named(&*tree.chain, &tree.territory, &tree.names).await?;
    let since = |n: &&Named| !n.active || since(n);
    if let Some(other) = named.iter().filter(since).find(|n| n.kind.is_tree() && !kept.contains(&n.fid)) {
        return Ok(Err(Blocked::Waiting(format!(
            "tree snapshot {} is not one this mount keeps: another mount may write this tree",
            other.number.unwrap_or_default()
        ))));
    }
    let contents: Vec<Named> =
        named.into_iter().filter(|n| since(&n) && matches!(n.kind, NameKind::File | NameKind::Pack)).collect();
    let fids: Vec<Hash> = contents.iter().map(|n| n.fid).collect();
    let unknown: std::collections::HashSet<Hash> =
        off_runtime(store, move |s| s.unknown_fids(&fids)).await?.into_iter().collect();
    Ok(Ok(contents.into_iter().filter(|n| unknown.contains(&n.fid)).collect()))
}

/// Queues `fids` for deletion, those that nothing here refers to still. Returns how many.
async fn queue(store: &std::sync::Arc<Store>, fids: Vec<Hash>) -> anyhow::Result<usize> {
    off_runtime(store, move |s| s.delete_unknown(&fids)).await
}

/// The sweep after a restore: looks for the FIDs of `pending` (see the module docs) and queues
/// them for deletion.
pub async fn sweep(store: &std::sync::Arc<Store>, watch: &TreeWatch, pending: Pending) -> anyhow::Result<Swept> {
    let candidates = match unmarked(store, watch, |n| n.completion > pending.lineage_from).await? {
        Ok(candidates) => candidates,
        Err(Blocked::NotYet) => return Ok(Swept::NotYet),
        Err(Blocked::Waiting(why)) => return Ok(Swept::Waiting(why)),
    };
    if let Some(late) = candidates.iter().find(|n| !n.active || n.completion > pending.restored_block) {
        return Ok(Swept::Waiting(format!(
            "{} of this tree was stored after the restore by another mount (fid {}): another mount may write this tree",
            if late.kind == NameKind::Pack { "a pack" } else { "a file" },
            late.fid
        )));
    }
    let queued = queue(store, candidates.into_iter().map(|n| n.fid).collect()).await?;
    Ok(Swept::Queued(queued))
}

/// The sweep after a restore (see the module docs), run once its time comes.
pub struct Sweeper {
    /// The data dir.
    pub store: std::sync::Arc<Store>,
    /// The tree's snapshots on chain.
    pub watch: std::sync::Arc<TreeWatch>,
    /// Where it says why it waits, and whether another mount writes the tree.
    pub flags: std::sync::Arc<crate::fs::SnapshotFlags>,
    /// How long after the restore (the lost machine may not be lost).
    pub after: Duration,
}

impl Sweeper {
    /// Sweeps the restored tree once `after` has passed since the restore and the tree is
    /// whole (its load widens the lineage the sweep looks back to, so the record is read
    /// afresh each time), until it is done, another mount writes the tree, or `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut next = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = stop.changed() => return,
            }
            next = Duration::from_secs(1);
            let pending = match lineage::pending(&self.store) {
                Ok(Some(pending)) => pending,
                Ok(None) => return,
                Err(e) => {
                    log::error!("reading the data dir: {e}");
                    next = Duration::from_secs(60);
                    continue;
                }
            };
            if crate::sync::lock(&self.flags.stopped).is_some() {
                return;
            }
            let due = pending.restored_at.saturating_add(self.after.as_secs() as i64);
            if let Ok(wait @ 1..) = u64::try_from(due - crate::store::Timestamp::now().secs) {
                next = Duration::from_secs(wait);
                continue;
            }
            if !self.store.tree_loading() {
                next = self.sweep(pending).await.max(Duration::from_secs(1));
            }
        }
    }

    /// Sweeps the restored tree; returns when to look again.
    async fn sweep(&self, pending: Pending) -> Duration {
        let waiting = |why: Option<String>| *crate::sync::lock(&self.flags.sweep_waits) = why;
        match sweep(&self.store, &self.watch, pending).await {
            Ok(Swept::Queued(n)) => {
                waiting(None);
                log::info!(
                    "swept the restored tree: {} that no snapshot refers to (declared after the last snapshot \
                     of the machine it was restored from) queued for deletion",
                    crate::words::count(n as u64, "FID")
                );
                if let Err(e) = lineage::done(&self.store) {
                    log::error!("recording the sweep: {e}");
                }
                Duration::from_secs(1)
            }
            Ok(Swept::NotYet) => Duration::from_secs(30),
            Ok(Swept::Waiting(why)) => {
                crate::log_limited!(log::Level::Info, "sweep", "the restored tree is not swept yet: {why}");
                waiting(Some(why));
                Duration::from_secs(600)
            }
            Err(e) => {
                crate::log_limited!(log::Level::Warn, "sweep", "sweeping the restored tree: {e:#}");
                Duration::from_secs(60)
            }
        }
    }
}

/// A FID a collection found that nothing refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Garbage {
    /// The FID.
    pub fid: Hash,
    /// `file` or `pack`.
    pub kind: &'static str,
    /// Bytes of territory it takes.
    pub space: u64,
}

/// What a collection on demand found, and did: its report (docs/XATTRS.md `user.cess.gc`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Collection {
    /// Only listed (`--dry-run`).
    pub dry_run: bool,
    /// How many FIDs of the window nothing refers to.
    pub unreferenced: usize,
    /// Those FIDs (a report lists the first [`LISTED`]).
    #[serde(rename = "fids")]
    pub garbage: Vec<Garbage>,
    /// Bytes of territory they take.
    pub frees: u64,
    /// How many of them were queued for deletion.
    pub queued: usize,
    /// FIDs of this key stored since the tree began here that nothing here knows: another
    /// mount's, kept.
    pub others: usize,
    /// Why nothing was collected, if so.
    pub waiting: Option<String>,
}

/// A collection on demand (see the module docs): lists the FIDs of the window that nothing
/// refers to and, unless `dry_run`, queues them for deletion.
pub async fn collect(store: &std::sync::Arc<Store>, watch: &TreeWatch, dry_run: bool) -> anyhow::Result<Collection> {
    let mut collection = Collection { dry_run, ..Collection::default() };
    let Some((from, began)) = lineage::window(store)? else {
        collection.waiting = Some(
            "this data dir's tree began before cessfs recorded where its lineage starts: \
             nothing is collected on demand (a restore's sweep still runs)"
                .into(),
        );
        return Ok(collection);
    };
    let candidates = match unmarked(store, watch, |n| n.completion > from).await? {
        Ok(candidates) => candidates,
        Err(blocked) => {
            collection.waiting = Some(match blocked {
                Blocked::NotYet => "this mount has not written the newest tree snapshot on CESS yet".into(),
                Blocked::Waiting(why) => why,
            });
            return Ok(collection);
        }
    };
    let (garbage, others): (Vec<Named>, Vec<Named>) =
        candidates.into_iter().partition(|n| n.active && n.completion <= began);
    (collection.unreferenced, collection.others) = (garbage.len(), others.len());
    for n in &garbage {
        let space = crate::protocol::charged_space(n.segments) as u64;
        let kind = if n.kind == NameKind::Pack { "pack" } else { "file" };
        collection.garbage.push(Garbage { fid: n.fid, kind, space });
        collection.frees += space;
    }
    if !dry_run && !garbage.is_empty() {
        collection.queued = queue(store, garbage.iter().map(|n| n.fid).collect()).await?;
        log::info!(
            "collected {} that nothing refers to: queued for deletion",
            crate::words::count(collection.queued as u64, "FID")
        );
    }
    Ok(collection)
}

/// The last collection on demand: its number, whether it runs, and its report once done.
type Last = std::sync::Arc<std::sync::Mutex<(u64, bool, Option<serde_json::Value>)>>;

/// Collections on demand for the filesystem (`user.cess.gc` on the root): one at a time, in
/// the background, so that no FUSE thread waits on the chain.
pub struct OnDemand {
    store: std::sync::Arc<Store>,
    watch: std::sync::Arc<TreeWatch>,
    flags: std::sync::Arc<crate::fs::SnapshotFlags>,
    runtime: tokio::runtime::Handle,
    stop: tokio::sync::watch::Receiver<bool>,
    last: Last,
}

/// FIDs listed in a report, at most: the rest are counted (an attribute holds 64 KiB).
const LISTED: usize = 200;

impl OnDemand {
    /// Collections of `store`'s tree, on `runtime`, until `stop`.
    pub fn new(
        store: std::sync::Arc<Store>,
        watch: std::sync::Arc<TreeWatch>,
        flags: std::sync::Arc<crate::fs::SnapshotFlags>,
        runtime: tokio::runtime::Handle,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> OnDemand {
        OnDemand { store, watch, flags, runtime, stop, last: Last::default() }
    }

    async fn report(store: &std::sync::Arc<Store>, watch: &TreeWatch, dry_run: bool) -> serde_json::Value {
        match collect(store, watch, dry_run).await {
            Ok(mut c) => {
                c.garbage.truncate(LISTED);
                serde_json::to_value(&c).unwrap_or_default()
            }
            Err(e) => serde_json::json!({ "dry_run": dry_run, "error": format!("{e:#}") }),
        }
    }
}

impl crate::fs::Collector for OnDemand {
    fn start(&self, dry_run: bool) -> bool {
        let mut last = crate::sync::lock(&self.last);
        if last.1 {
            return false;
        }
        last.0 += 1;
        last.1 = true;
        let (number, state) = (last.0, self.last.clone());
        let stopped = crate::sync::lock(&self.flags.stopped).clone();
        let (store, watch, mut stop) = (self.store.clone(), self.watch.clone(), self.stop.clone());
        // It ends with the mount: one cut short has queued nothing (the queue is one batch).
        self.runtime.spawn(async move {
            let report = match stopped {
                Some(why) => serde_json::json!({
                    "dry_run": dry_run,
                    "error": format!("{why}: this mount deletes nothing from the chain"),
                }),
                None => tokio::select! {
                    report = OnDemand::report(&store, &watch, dry_run) => report,
                    _ = stop.changed() => serde_json::json!({ "dry_run": dry_run, "error": "the mount is stopping" }),
                },
            };
            *crate::sync::lock(&state) = (number, false, Some(report));
        });
        true
    }

    fn state(&self) -> serde_json::Value {
        let last = crate::sync::lock(&self.last);
        let mut state = last.2.clone().unwrap_or_else(|| serde_json::json!({}));
        state["run"] = last.0.into();
        state["running"] = last.1.into();
        state
    }
}
