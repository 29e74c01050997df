//! Tree snapshots on CESS: the writer that keeps the newest tree there ([`Writer`]) and the
//! search for the newest snapshot of a tree, to restore on a fresh machine ([`restore`]).
//!
//! A snapshot is written once changes settle: the tree changed since the last one, no upload is
//! under way (a snapshot refers to a file only once it is active), and nothing changed for the
//! quiet delay; or, while changes keep coming, once `interval` has passed since the first one.
//! Its file goes to CESS as a hidden inode, through the upload engine, so a crash resumes its
//! deal byte for byte. Once a snapshot is active, all but the newest `keep` active ones are
//! dropped, and with them the FIDs only they referred to.

pub mod load;
pub mod merge;
pub mod restore;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::format::{BlobKeys, Hash, NameKey, Snapshot, Written};
use crate::fs::SnapshotFlags;
use crate::store::{CommitOutcome, CommitTree, KeptSnapshot, Store, StoreError, UploadState};

/// When snapshots are written and how many are kept.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// No change for this long: the tree has settled.
    pub quiet: Duration,
    /// The longest a change waits for a snapshot while changes keep coming.
    pub interval: Duration,
    /// Active snapshots kept.
    pub keep: usize,
    /// How long after a restore the tree is swept of FIDs no snapshot refers to
    /// ([`crate::collect::Sweeper`]).
    pub sweep_after: Duration,
    /// How often the tree's snapshots on chain are looked at for another writer, besides
    /// before each snapshot is written.
    pub look_every: Duration,
}

/// The meta record of the digest of the last tree written (generation and time left out).
const LAST_TREE: &[u8] = b"snapshot-tree";
/// The meta record of the digest of the last tree's root as written: its directory's blob id
/// and its node ([`root_digest`]).
const LAST_ROOT: &[u8] = b"snapshot-root";
/// The most files besides its own that a tree's directory blobs are left in: past it, those of
/// the files holding the fewest are written again (up to [`EMPTY_BUDGET`] bytes), so old
/// commits do not stay on chain for a directory each.
const MAX_TREE_HOLDERS: usize = 8;
/// The most bytes of directory blobs a round writes again to empty older files.
const EMPTY_BUDGET: u64 = 4 << 20;

/// Of the files holding the last tree's directories, those whose blobs this round writes again
/// ([`MAX_TREE_HOLDERS`]): past it, the ones holding the fewest bytes, within [`EMPTY_BUDGET`],
/// down to half of it (so that it is not every round).
fn holders_to_empty(mut held: Vec<(Hash, u64)>) -> std::collections::HashSet<Hash> {
    held.sort_by_key(|(_, bytes)| *bytes);
    // The files of the last tree stay, with this round's own: at most MAX_TREE_HOLDERS of them.
    let mut over = match held.len() > MAX_TREE_HOLDERS {
        true => held.len() - MAX_TREE_HOLDERS / 2,
        false => 0,
    };
    let mut budget = EMPTY_BUDGET;
    let mut out = std::collections::HashSet::new();
    for (fid, bytes) in held {
        if over == 0 || bytes > budget {
            break;
        }
        budget -= bytes;
        over -= 1;
        out.insert(fid);
    }
    out
}
/// The meta record of the newest snapshot generation on chain when this tree began (restored,
/// fresh or new): snapshots up to it are the past, not another writer.
pub const BASELINE: &[u8] = b"snapshot-baseline";

/// The newest generation on chain when this tree began ([`BASELINE`]; 0 if none was).
pub(crate) fn baseline(store: &Store) -> Result<u64, StoreError> {
    Ok(store.meta(BASELINE)?.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map_or(0, u64::from_be_bytes))
}
/// The meta record of this data dir's writer id: 8 bytes of the tree's lineage (drawn when a
/// tree begins, new or `--fresh`; carried on by a restore), then 8 of this data dir's own.
const WRITER: &[u8] = b"snapshot-writer";

/// Bytes of a writer id that name its lineage.
const LINEAGE: usize = 8;

/// Whether two writer ids are of one lineage: one tree, restored from machine to machine.
pub fn same_lineage(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a[..LINEAGE] == b[..LINEAGE]
}

/// The meta record of a writer id for this data dir that carries on the lineage of `restored`'s
/// writer.
pub(crate) fn lineage_writer(restored: &[u8; 16]) -> (&'static [u8], Vec<u8>) {
    let mut writer: [u8; 16] = rand::random();
    writer[..LINEAGE].copy_from_slice(&restored[..LINEAGE]);
    (WRITER, writer.to_vec())
}

/// This data dir's writer id, if it has written a tree.
pub(crate) fn writer_id(store: &Store) -> Result<Option<[u8; 16]>, StoreError> {
    Ok(store.meta(WRITER)?.and_then(|v| <[u8; 16]>::try_from(&v[..]).ok()))
}

/// The tree a writer keeps on chain: where, and under which names.
pub struct TreeOnChain {
    /// The chain.
    pub chain: Arc<dyn crate::protocol::Chain>,
    /// The tree's territory.
    pub territory: Vec<u8>,
    /// The tree's name key.
    pub names: NameKey,
    /// The tree's blob keys, commits are sealed with (`None`: no commits, `--commits false` or a
    /// key without packs: trees go in snapshot files).
    pub blobs: Option<BlobKeys>,
}

/// Writes snapshots of one tree (see the module docs).
pub struct Writer {
    store: Arc<Store>,
    flags: Arc<SnapshotFlags>,
    watch: Arc<watch::TreeWatch>,
    config: SnapshotConfig,
    writer: [u8; 16],
    /// The ids of the tree's directory blobs worked out so far.
    dir_ids: std::sync::Mutex<crate::format::DirIds>,
}

impl Writer {
    /// A writer for the tree of `store`, kept on chain as `watch` sees it.
    pub fn new(
        store: Arc<Store>,
        flags: Arc<SnapshotFlags>,
        watch: Arc<watch::TreeWatch>,
        config: SnapshotConfig,
    ) -> Result<Writer, StoreError> {
        let writer = match writer_id(&store)? {
            Some(w) => w,
            None => {
                let w: [u8; 16] = rand::random();
                store.set_meta(WRITER, &w)?;
                w
            }
        };
        Ok(Writer { store, flags, watch, config, writer, dir_ids: Default::default() })
    }

    /// Runs until `stop`; then writes a last snapshot locally if the tree changed (the next
    /// mount uploads it). Changes made before a crash count as changes at the start.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut seen = this.store.commits();
        let mut tree_seen = this.store.tree_commits();
        let mut first_change = Some(Instant::now());
        let mut last_change = Instant::now();
        let mut retry_at = Instant::now();
        // Another writer is looked for at once (this mount may have been away), then now and then.
        let mut look_at = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => break,
            }
            // Only a change of what a snapshot shows calls for a round: a cached segment or an
            // eviction does not (the tree is built again for a round, whole).
            let tree_now = this.store.tree_commits();
            if tree_now != tree_seen {
                tree_seen = tree_now;
                last_change = Instant::now();
                first_change.get_or_insert(last_change);
            }
            let now = this.store.commits();
            if now != seen {
                seen = now;
                // A snapshot may have become active: older ones may go.
                let me = this.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.prune()).await {
                    crate::log_limited!(log::Level::Error, "snapshot prune", "dropping old tree snapshots: {e}");
                }
            }
            if Instant::now() >= look_at {
                look_at = Instant::now() + this.config.look_every;
                if let Err(e) = this.watch.look().await {
                    crate::log_limited!(log::Level::Info, "tree watch", "{e}");
                }
                if this.watch.stopped() {
                    break;
                }
            }
            let Some(since) = first_change else { continue };
            let settled = this.round_due() && last_change.elapsed() >= this.config.quiet;
            if (!settled && since.elapsed() < this.config.interval) || Instant::now() < retry_at {
                continue;
            }
            if this.waits_for_load() {
                retry_at = Instant::now() + Duration::from_secs(30);
                continue;
            }
            // A snapshot written over another writer's would clobber its tree; an unreachable
            // chain is no answer (the snapshot waits in the queue anyway).
            if let Err(e) = this.watch.look().await {
                crate::log_limited!(log::Level::Info, "tree watch", "{e}");
            }
            if this.watch.stopped() {
                break;
            }
            this.merge_into_commit(&stop).await;
            crate::hooks::reached_async("commit-merged").await;
            let me = this.clone();
            match tokio::task::spawn_blocking(move || me.write()).await {
                Ok(Ok(())) => first_change = None,
                Ok(Err(e)) => {
                    round_not_written(&e);
                    retry_at = Instant::now() + Duration::from_secs(30);
                }
                Err(e) => log::error!("writing a tree snapshot: {e}"),
            }
        }
        if crate::sync::lock(&this.flags.stopped).is_some() {
            // Another mount writes this tree: wait for the end, writing nothing.
            let _ = stop.changed().await;
            return;
        }
        if this.waits_for_load() {
            return;
        }
        let me = this.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.write()).await {
            log::error!("writing the last tree snapshot: {e}");
        }
    }

    /// Whether the round waits for the tree being loaded to be whole: a tree being loaded is
    /// written with its directories not loaded yet where they are, unless a hard-linked node
    /// changed meanwhile (store/loading.rs).
    fn waits_for_load(&self) -> bool {
        let why = match self.store.hard_link_changed_while_loading() {
            Ok(false) => return false,
            Ok(true) => StoreError::WaitsForLoad,
            Err(e) => e,
        };
        round_not_written(&why);
        true
    }

    /// Empties under-full packs into the open pack when it holds blobs, so the commit about to
    /// be sealed carries them ([`merge::Rule::IntoCommit`]). A commit of the tree alone does not.
    async fn merge_into_commit(&self, stop: &tokio::sync::watch::Receiver<bool>) {
        let tree = self.watch.tree();
        let Some(keys) = tree.blobs.clone() else { return };
        let store = self.store.clone();
        let filling = tokio::task::spawn_blocking(move || store.pack_summary()).await;
        if !matches!(filling, Ok(Ok(s)) if s.filling.is_some_and(|(blobs, _)| blobs > 0)) {
            return;
        }
        let merger = merge::Merger {
            store: self.store.clone(),
            fetcher: self.watch.fetcher().clone(),
            keys,
            names: tree.names.clone(),
        };
        if let Err(e) = merger.merge(merge::Rule::IntoCommit, stop).await {
            crate::log_limited!(log::Level::Warn, "pack merge", "merging under-full packs into the commit: {e:#}");
        }
    }

    /// Whether a round of changes may be written now (once quiet): with commits, when no pack
    /// is on its way (one commit at a time: changes gather for the next meanwhile) and either
    /// blobs wait in the open pack or no upload is under way (a tree that only a large file's
    /// upload changes waits for it, with the others of its burst); without, when no upload is
    /// under way.
    fn round_due(&self) -> bool {
        let uploads_settled =
            || self.store.upload_states().iter().all(|(state, files, _)| *files == 0 || state.settled());
        if self.watch.tree().blobs.is_none() {
            return uploads_settled();
        }
        let packs = match self.store.pack_summary() {
            Ok(packs) => packs,
            Err(e) => {
                crate::log_limited!(log::Level::Error, "snapshot", "reading the packs: {e}");
                return false;
            }
        };
        // A pack whose upload failed holds up no round, nor do the files waiting in it: the round
        // may be what frees the room it waits for (a commit that waits is taken back by the
        // round: `take_back_waiting`).
        let waiting_in_packs = || {
            self.store.upload_states().iter().all(|(state, files, _)| {
                *files == 0 || state.settled() || (*state == UploadState::Packed && packs.waiting > 0)
            })
        };
        packs.uploading == packs.waiting && (packs.filling.is_some_and(|(blobs, _)| blobs > 0) || waiting_in_packs())
    }

    /// Takes back the commits whose upload failed before they were declared (for want of room,
    /// say) if the tree moved on from the one they hold: the round written now replaces them.
    /// `true` if it did not: the newest waits as it is, and nothing is to be written.
    fn take_back_waiting(&self, tree: &TreeOnChain) -> Result<bool, StoreError> {
        let Some(keys) = &tree.blobs else { return Ok(false) };
        let kept = self.store.kept_generations()?;
        let packs = self.store.waiting_packs()?;
        let waiting: Vec<u64> = kept.iter().map(|&(ino, _)| ino).filter(|ino| packs.contains(ino)).collect();
        let Some(&newest) = waiting.last() else { return Ok(false) };
        // The last tree written is the newest waiting commit's, unless a newer one was written.
        let last_written = kept.last().is_some_and(|&(ino, _)| ino == newest);
        if last_written {
            let snapshot = self.store.build_snapshot(0, self.writer, Some(newest))?;
            if self.store.meta(LAST_TREE)?.as_deref() == Some(&tree_digest(&snapshot, None).0[..]) {
                return Ok(true);
            }
        }
        for ino in waiting {
            // Tried again meanwhile: this round waits for how that ends (it holds up the round).
            if !self.store.take_back_commit(ino, keys, &tree.names)? {
                return Err(StoreError::MovedOn(ino));
            }
        }
        Ok(false)
    }

    /// The newest of the `kept` trees that is stored on CESS: a tree newer than the one written
    /// now is stored after it, whatever was on its way ([`restore::TailSearch`]).
    fn newest_stored(&self, kept: &[(u64, u64)]) -> Result<Option<crate::format::StoredTree>, StoreError> {
        for &(ino, generation) in kept.iter().rev() {
            if let Some(u) = self.store.upload(ino)?.filter(|u| u.state == crate::store::UploadState::Active) {
                return Ok(Some(crate::format::StoredTree { generation, declared_at: u.block }));
            }
        }
        Ok(None)
    }

    /// Writes the tree if it differs from the last one written: in a commit with the blobs of
    /// the open pack, or in a snapshot file of its own if it does not fit one.
    fn write(&self) -> Result<(), StoreError> {
        // A load that ends meanwhile adds what it found to the kept records, this round's too.
        let _records = self.store.kept_records();
        let tree = self.watch.tree();
        let covered = self.store.tree_commits();
        if self.take_back_waiting(tree)? {
            self.flags.covered.fetch_max(covered, Ordering::AcqRel);
            return Ok(());
        }
        let kept = self.store.kept_generations()?;
        let last = kept.last().map_or(0, |&(_, generation)| generation);
        let now = crate::store::Timestamp::now();
        let now_ms = now.secs.max(0) as u64 * 1000 + u64::from(now.nanos / 1_000_000);
        let generation = (last + 1).max(now_ms);
        // No FID the tree refers to may leave the chain before the snapshot protects it.
        let _hold = self.store.hold_deletions();
        let covered = self.store.tree_commits();
        // The blobs of the commit that holds the last tree are that tree's own.
        let last_fid = match kept.last() {
            Some((ino, _)) => self.store.upload(*ino)?.and_then(|u| u.fid),
            None => None,
        };
        let before = crate::format::Ancestry {
            parent: kept.last().map(|&(_, generation)| generation),
            stored: self.newest_stored(&kept)?,
        };
        let emptying = holders_to_empty(self.store.tree_holders(last_fid)?);
        if !emptying.is_empty() {
            log::info!(
                "the tree's directories in {} are written again with this round, so that few files hold it",
                crate::words::count(emptying.len() as u64, "older commit")
            );
        }
        // The files holding the tree written, and its bytes in each.
        let mut holders = None;
        // The digest of the tree written, and what it took.
        let mut made = None;
        let outcome = match &tree.blobs {
            Some(keys) => {
                let sealed = self.store.seal_commit(keys, &tree.names, |pack, place| {
                    let Some((snapshot, digest)) = self.tree_to_write(generation, pack, last_fid, kept.is_empty())?
                    else {
                        return Ok(None);
                    };
                    let mut ids = crate::sync::lock(&self.dir_ids);
                    let written = self.store.write_dirs(&snapshot, keys, before, &emptying, &mut ids, place)?;
                    let Some(written) = written else { return Ok(None) };
                    // Every directory where it was, the root's among them: the tree written last
                    // (a load since changes what is read, not what is written).
                    let root = root_digest(&written.root);
                    if written.placed.is_empty()
                        && !snapshot.refers_to_its_commit()
                        && root.is_some()
                        && self.store.meta(LAST_ROOT)?.as_deref() == root.as_ref().map(|r| &r.0[..])
                    {
                        return Ok(None);
                    }
                    made = Some((digest, Made::of(&written)));
                    holders = Some(written.holder_bytes.clone());
                    let name = tree.names.commit_name(generation);
                    Ok(Some(commit_tree(snapshot, written, name, true)))
                });
                // No commit now: the small files waiting in the open pack go without one.
                if sealed.is_err()
                    && let Err(e) = self.store.seal_quiet_pack(Duration::ZERO, keys)
                {
                    log::error!("sealing the open pack without its tree: {e}");
                }
                sealed?
            }
            None => CommitOutcome::TooLarge,
        };
        let ino = match outcome {
            CommitOutcome::Unchanged => None,
            CommitOutcome::Sealed(ino) => Some(ino),
            CommitOutcome::TooLarge => match self.tree_to_write(generation, None, last_fid, kept.is_empty())? {
                Some((snapshot, digest)) => {
                    let name = tree.names.snapshot_name(generation);
                    let (ino, what) = match &tree.blobs {
                        Some(keys) => {
                            let (ino, what, held) = self.stage_tree_file(snapshot, keys, before, &emptying, name)?;
                            holders = Some(held);
                            (ino, what)
                        }
                        None => {
                            let bytes = snapshot.encode();
                            let what = Made { bytes: bytes.len() as u64, dirs: None, root: None };
                            (self.store.stage_snapshot(&KeptSnapshot::of(&snapshot), &bytes, &name)?, what)
                        }
                    };
                    made = Some((digest, what));
                    Some(ino)
                }
                None => None,
            },
        };
        let (Some(ino), Some((digest, what))) = (ino, made) else {
            self.flags.covered.fetch_max(covered, Ordering::AcqRel);
            return Ok(());
        };
        self.store.set_meta(LAST_TREE, &digest.0)?;
        match what.root {
            Some(root) => self.store.set_meta(LAST_ROOT, &root.0)?,
            None => self.store.remove_meta(LAST_ROOT)?,
        }
        self.store.set_tree_holders(&holders.unwrap_or_default())?;
        self.flags.covered.fetch_max(covered, Ordering::AcqRel);
        crate::metrics::TREE_BYTES_WRITTEN.add(what.bytes);
        let what = match what.dirs {
            Some((new, reused)) => format!(
                "{} bytes: {} new, {} where they were",
                what.bytes,
                crate::words::count(new as u64, "directory blob"),
                reused
            ),
            None => format!("{} bytes", what.bytes),
        };
        match outcome {
            CommitOutcome::Sealed(_) => log::info!("tree {generation} written ({what}) in commit inode {ino}"),
            _ => log::info!(
                "tree {generation} written ({what}) in a file of its own (inode {ino}{}); on its way to CESS",
                if tree.blobs.is_some() { ", too large for a commit" } else { "" }
            ),
        }
        // Older snapshot files whose deal has not begun will never be needed: this one replaces
        // them. (A commit holds blobs too: it goes its way.)
        for &(old, old_generation) in &kept {
            let state = self.store.upload(old)?.map(|u| u.state);
            let unstarted =
                matches!(state, Some(UploadState::Staged | UploadState::Encoding | UploadState::Failed) | None);
            if unstarted && self.store.pack(old)?.is_none() {
                log::info!("tree snapshot {old_generation} was not stored yet and is replaced by {generation}");
                self.store.drop_snapshot(old)?;
            }
        }
        Ok(())
    }

    /// The tree to write as of now, if it differs from the last one written, and its digest.
    /// `pack`: the open pack that the commit holding it seals (its blobs are the tree's own);
    /// `last`: the FID of the commit holding the last tree written.
    fn tree_to_write(
        &self,
        generation: u64,
        pack: Option<u64>,
        last: Option<Hash>,
        nothing_kept: bool,
    ) -> Result<Option<(Snapshot, Hash)>, StoreError> {
        let snapshot = self.store.build_snapshot(generation, self.writer, pack)?;
        // The last tree as written named its commit's blobs as its own: so do they count here.
        let unchanged = self.store.meta(LAST_TREE)?.as_deref() == Some(&tree_digest(&snapshot, last).0[..]);
        let digest = tree_digest(&snapshot, None);
        // An empty tree with nothing kept before has nothing to keep; blobs waiting for this
        // commit always go.
        if (nothing_kept && snapshot.links.is_empty()) || (unchanged && !snapshot.refers_to_its_commit()) {
            return Ok(None);
        }
        if !snapshot.unloaded.dirs.is_empty() && snapshot.unloaded.linked_changed {
            return Err(StoreError::WaitsForLoad);
        }
        // What a restore would refuse is never stored.
        if let Err(e) = snapshot.check() {
            log::error!("a tree came out unreadable ({e}): not stored; the small files waiting go without it");
            return Err(StoreError::Corrupt { what: "tree snapshot" });
        }
        Ok(Some((snapshot, digest)))
    }

    /// Writes the tree `snapshot` in a tree file of its own (format/tree.rs): the directory
    /// blobs not stored already, and the root. Returns its hidden inode.
    fn stage_tree_file(
        &self,
        snapshot: Snapshot,
        keys: &BlobKeys,
        before: crate::format::Ancestry,
        emptying: &std::collections::HashSet<Hash>,
        name: Vec<u8>,
    ) -> Result<(u64, Made, std::collections::BTreeMap<Hash, u64>), StoreError> {
        let mut file = vec![0u8; crate::format::TREE_FILE_HEADER];
        let mut place = |_: &Hash, sealed: Vec<u8>| {
            let at = u32::try_from(file.len()).ok()?;
            file.extend(sealed);
            Some(at)
        };
        let mut ids = crate::sync::lock(&self.dir_ids);
        let written = self.store.write_dirs(&snapshot, keys, before, emptying, &mut ids, &mut place)?;
        let written = written.ok_or(StoreError::Corrupt { what: "tree larger than 4 GiB" })?;
        let root_id = keys.id(&written.root);
        let sealed = keys.seal(&root_id, &written.root);
        let too_large = || StoreError::Corrupt { what: "tree larger than 4 GiB" };
        let root_at = u32::try_from(file.len()).map_err(|_| too_large())?;
        let root_len = u32::try_from(sealed.len()).map_err(|_| too_large())?;
        file.extend(sealed);
        file[..crate::format::TREE_FILE_HEADER]
            .copy_from_slice(&crate::format::tree_file_header(&root_id, root_at, root_len));
        let made = Made {
            bytes: file.len() as u64,
            dirs: Some((written.placed.len(), written.reused)),
            root: root_digest(&written.root),
        };
        let (placed, held) = (written.placed.clone(), written.holder_bytes.clone());
        let tree = commit_tree(snapshot, written, name, false);
        let ino = self.store.stage_snapshot(&tree.kept, &file, &tree.name)?;
        let mut b = crate::store::Batch::default();
        b.put_dir_homes(ino, true, &placed);
        self.store.commit(b)?;
        Ok((ino, made, held))
    }

    /// Drops the snapshots older than the newest `keep` active ones; while an upload waits for
    /// room in the territory, those older than the newest active one (they may refer to removed
    /// files, whose room comes back only once no kept tree does).
    fn prune(&self) -> Result<(), StoreError> {
        let _records = self.store.kept_records();
        let kept = self.store.kept_generations()?;
        let mut active = Vec::new();
        for &(ino, generation) in &kept {
            if self.store.upload(ino)?.is_some_and(|u| u.state == UploadState::Active) {
                active.push(generation);
            }
        }
        let room_wanted = self.store.room_wanted()?;
        let keep = if room_wanted { 1 } else { self.config.keep.max(1) };
        let Some(&cutoff) = active.iter().rev().nth(keep - 1) else { return Ok(()) };
        let mut dropped = false;
        for &(ino, generation) in kept.iter().filter(|&&(_, generation)| generation < cutoff) {
            // A commit on its way holds blobs: it goes once stored.
            if self.store.pack(ino)?.is_some() {
                continue;
            }
            match room_wanted {
                true => log::info!(
                    "tree snapshot {generation} deleted: an upload waits for room in the territory, and only the newest stored tree is kept meanwhile"
                ),
                false => log::info!("tree snapshot {generation} is older than the {keep} kept: deleted"),
            }
            self.store.drop_snapshot(ino)?;
            dropped = true;
        }
        if dropped {
            self.store.forget_stale_dir_homes()?;
        }
        Ok(())
    }
}

/// What writing a tree took: its bytes, and the directory blobs written and referred to where
/// they were (`None`: a whole snapshot).
struct Made {
    bytes: u64,
    dirs: Option<(usize, usize)>,
    /// [`root_digest`] of a tree in directory blobs.
    root: Option<Hash>,
}

impl Made {
    fn of(written: &Written) -> Made {
        Made {
            bytes: written.new_bytes + written.root.len() as u64,
            dirs: Some((written.placed.len(), written.reused)),
            root: root_digest(&written.root),
        }
    }
}

/// Logs why a round was not written: waiting for a load to end is expected, the rest is not.
fn round_not_written(e: &StoreError) {
    let level = match e {
        StoreError::WaitsForLoad => log::Level::Info,
        _ => log::Level::Error,
    };
    crate::log_limited!(level, "snapshot", "writing a tree snapshot: {e}");
}

/// What a root written says of its tree: its directory's blob id (which names every directory
/// below, where it is) and its node.
fn root_digest(root: &[u8]) -> Option<Hash> {
    let root = crate::format::Root::decode(root).ok()?;
    let mut bytes = root.dir.id.0.to_vec();
    bytes.extend(postcard::to_stdvec(&root.node).ok()?);
    Some(crate::format::sha256(&bytes))
}

/// The commit (or tree file: `commit` false) of tree `snapshot` written as `written`: it refers
/// to the files its nodes name and to the other files holding its directory blobs (its own is
/// kept by being a kept tree).
fn commit_tree(mut snapshot: Snapshot, written: Written, name: Vec<u8>, commit: bool) -> CommitTree {
    snapshot.holders = written.holders;
    let dirs = if commit { written.placed } else { Vec::new() };
    CommitTree { kept: KeptSnapshot::of(&snapshot), bytes: written.root, name, dirs }
}

/// A digest of what a snapshot says of the tree, its generation, writer and time aside, and
/// the blobs of the commit `commit` taken as the commit's own (as that commit's tree has them).
fn tree_digest(s: &Snapshot, commit: Option<Hash>) -> Hash {
    let body = Snapshot { generation: 0, writer: [0; 16], written_at: (0, 0), ..s.clone() };
    let body = match commit {
        Some(fid) => body.with_pack_renamed(fid, crate::format::THIS_COMMIT),
        None => body,
    };
    let mut bytes = postcard::to_stdvec(&body).unwrap_or_default();
    // Directories not loaded yet are what they were restored as, where they are.
    for (node, (r, _)) in &s.unloaded.dirs {
        bytes.extend(node.to_le_bytes());
        bytes.extend(r.id.0);
    }
    crate::format::sha256(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_holding_the_fewest_bytes_are_emptied_within_the_budget() {
        let fid = |i: u8| Hash([i; 32]);
        let few: Vec<(Hash, u64)> = (0..8).map(|i| (fid(i), 100)).collect();
        assert!(holders_to_empty(few).is_empty(), "8 files besides this round's own stay");
        let mut many: Vec<(Hash, u64)> = (0..11).map(|i| (fid(i), 1000 * u64::from(i) + 1)).collect();
        many.push((fid(99), EMPTY_BUDGET));
        let emptied = holders_to_empty(many);
        assert_eq!(emptied, (0..8).map(fid).collect(), "the 8 holding the fewest bytes: 4 stay");
        let heavy: Vec<(Hash, u64)> = (0..10).map(|i| (fid(i), EMPTY_BUDGET)).collect();
        assert_eq!(holders_to_empty(heavy).len(), 1, "no more than the budget");
    }
}
