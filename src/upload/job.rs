//! The steps of one file's upload. Each looks at the chain before acting, so it can be repeated
//! after a crash or a failure without declaring twice.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Inner, UploadError, lock, placement, push};
use crate::format::{FRAGMENT_SIZE, FRAGMENTS, FileManifest, Hash, SEGMENT_SIZE, Seed};
use crate::metrics;
use crate::protocol::{AccountId, ChainError, SentTx, TerritoryState, UserBrief, charged_space};
use crate::store::{Batch, FileSource, Timestamp, UploadRecord, UploadState};

/// The error of a record whose state needs a FID it lacks (a corrupt record).
fn missing_fid(state: &str) -> UploadError {
    UploadError::Internal(format!("the upload record is {state} but has no FID"))
}

/// What to do after a step.
enum Flow {
    /// Look at the record again and take the next step.
    Continue,
    /// Nothing to do now; the scheduler comes back when the record is due or the doorbell rings.
    Wait,
}

/// ` "name"`: the record's name on chain, for log lines, once it has one.
fn chain_name_of(rec: &UploadRecord) -> String {
    if rec.file_name.is_empty() { String::new() } else { format!(" {:?}", String::from_utf8_lossy(&rec.file_name)) }
}

/// The size declared on chain: in encrypted mode, whole segments, so the chain learns no more
/// of a file's size than its segment count shows anyway; the true size is kept in the tree.
fn declared_size(rec: &UploadRecord) -> u64 {
    if rec.seed.is_some() { rec.segments as u64 * SEGMENT_SIZE as u64 } else { rec.size }
}

impl Inner {
    /// The name a file of this FID, called `name` here, is declared under: opaque in encrypted
    /// mode (a tree snapshot's carries its generation), readable (shortened where needed) in
    /// plaintext mode.
    fn chain_name(&self, fid: &crate::format::Hash, name: &[u8], snapshot: Option<u64>) -> Vec<u8> {
        match (self.config.master.as_ref().and_then(|m| m.names()), snapshot) {
            (Some(names), Some(generation)) => names.snapshot_name(generation),
            (Some(names), None) => names.file_name(fid),
            (None, _) => crate::format::readable_name(name),
        }
    }

    /// Whether this tree holds `file`: the account owns it in this territory. (A FID the
    /// account holds in another territory belongs to another tree.)
    pub(super) fn held_here(&self, file: &crate::protocol::FileInfo) -> bool {
        file.held_by(&self.chain.account(), &self.config.territory)
    }

    /// Takes the upload of `ino` as far as it goes now.
    pub(super) async fn advance(self: &Arc<Self>, ino: u64) -> Result<(), UploadError> {
        let advanced = self.advance_steps(ino).await;
        let declared =
            self.db(move |s| s.upload(ino)).await.is_ok_and(|r| r.is_some_and(|r| r.state == UploadState::Declared));
        // A check that led to no declaration takes no room.
        let mut promises = lock(&self.room_promised);
        if !declared && promises.get(&ino).is_some_and(|p| p.landed.is_none()) {
            promises.remove(&ino);
        }
        drop(promises);
        advanced
    }

    /// The steps of [`Inner::advance`].
    async fn advance_steps(self: &Arc<Self>, ino: u64) -> Result<(), UploadError> {
        for _ in 0..16 {
            let Some(rec) = self.db(move |s| s.upload(ino)).await? else { return Ok(()) };
            let flow = match rec.state {
                UploadState::Staged | UploadState::Encoding => self.encode_step(ino, rec).await?,
                UploadState::Declared => self.declare_step(ino, rec).await?,
                UploadState::Pushing => self.push_step(ino, rec).await?,
                UploadState::Confirming => self.confirm_step(ino, rec).await?,
                UploadState::Active => self.active_step(ino, rec).await?,
                UploadState::Failed => self.retry_step(ino, rec).await?,
                UploadState::Local | UploadState::Packed => Flow::Wait,
            };
            if let Flow::Wait = flow {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Changes the record of `ino` with `change`, as long as it is still about version `of` in
    /// state `from` (what the filesystem adds meanwhile, a newer version or an heir's FIDs, is
    /// kept). Returns the new record, or `None` if the file moved on.
    async fn update(
        &self,
        ino: u64,
        of: &UploadRecord,
        change: impl Fn(&mut UploadRecord),
    ) -> Result<Option<UploadRecord>, UploadError> {
        loop {
            let Some(cur) = self.db(move |s| s.upload(ino)).await? else { return Ok(None) };
            if cur.content_version != of.content_version || cur.state != of.state || cur.retired != of.retired {
                return Ok(None);
            }
            let mut next = cur.clone();
            change(&mut next);
            next.updated_at = Timestamp::now();
            if next.state != cur.state {
                next.attempts = 0;
                next.error = None;
                next.retry_at = None;
                log::info!(
                    "inode {ino}{}: {} → {}{}",
                    chain_name_of(&next),
                    cur.state.word(),
                    next.state.word(),
                    next.fid.map(|f| format!(" (fid {f})")).unwrap_or_default()
                );
            }
            let (old, new) = (cur.clone(), next.clone());
            if self.db(move |s| s.swap_upload(ino, &old, Some(&new))).await? {
                if next.state == UploadState::Active && cur.state != UploadState::Active {
                    metrics::UPLOADED_FILES.add(1);
                    metrics::UPLOADED_BYTES.add(next.size);
                }
                return Ok(Some(next));
            }
        }
    }

    /// Encodes the whole file in a blocking task: its manifest and key seed.
    async fn encode(
        self: &Arc<Self>,
        ino: u64,
        rec: &UploadRecord,
    ) -> Result<(Arc<FileManifest>, Option<Seed>), UploadError> {
        let key = self.key_for(rec.format)?;
        let _cpu = self.cpu.acquire().await.map_err(|_| UploadError::ShuttingDown)?;
        let inner = self.clone();
        let (size, extents) = (rec.object_size(), rec.extents.clone());
        let encoded = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(inner.store.upload_source(ino))?;
            let source = FileSource::<UploadError>::new(file, extents);
            let (manifest, seed) = inner.encoder.encode_with_seed(&source, size, key.as_ref(), |_| {
                if *inner.stop.borrow() { Err(UploadError::ShuttingDown) } else { Ok(()) }
            })?;
            Ok((Arc::new(manifest), seed))
        })
        .await;
        encoded.map_err(|e| UploadError::Internal(format!("encoding inode {ino}: {e}")))?
    }

    /// The manifest of the declared file: from this run, or encoded again (its bytes are kept).
    async fn manifest(self: &Arc<Self>, ino: u64, rec: &UploadRecord) -> Result<Arc<FileManifest>, UploadError> {
        if let Some(m) = lock(&self.manifests).get(&ino).filter(|m| Some(m.fid) == rec.fid) {
            return Ok(m.clone());
        }
        let (manifest, _) = self.encode(ino, rec).await?;
        // The file may have changed while it was read (its bytes set aside meanwhile): read again.
        if Some(manifest.fid) != rec.fid {
            return Err(UploadError::Changed);
        }
        lock(&self.manifests).insert(ino, manifest.clone());
        Ok(manifest)
    }

    /// Checks that the territory can take file `ino` of `segments` segments, leaving
    /// [`super::kept_free`] free unless it is a round of the tree that gives room back.
    async fn check_territory(&self, ino: u64, segments: usize) -> Result<(), UploadError> {
        let name = String::from_utf8_lossy(&self.config.territory).into_owned();
        let me = self.chain.account();
        let t = self
            .chain
            .territory(&me, &self.config.territory)
            .await?
            .ok_or_else(|| UploadError::NoTerritory { name: name.clone(), account: me.to_string() })?;
        if t.state != TerritoryState::Active {
            return Err(UploadError::TerritoryUnusable { name, state: format!("{:?}", t.state).to_lowercase() });
        }
        let needed = charged_space(segments);
        let promised: u128 = {
            let mut promises = lock(&self.room_promised);
            let lag = self.config.finality_lag;
            promises.retain(|_, p| p.landed.is_none_or(|at| at.elapsed() < lag));
            promises.iter().filter(|(i, _)| **i != ino).map(|(_, p)| p.room).sum()
        };
        let remaining = t.remaining_space.saturating_sub(promised);
        let kept_free = self.config.kept_free;
        if remaining > needed + kept_free {
            // Room for this file and a round after it: nothing waits for room any more.
            if kept_free > 0 {
                self.db(|s| s.set_room_wanted(false)).await?;
            }
        } else if remaining <= needed || kept_free == 0 || !self.db(move |s| s.round_frees(ino)).await? {
            return Err(UploadError::TerritoryFull { name, remaining, needed, kept_free });
        }
        lock(&self.room_promised).insert(ino, super::Promise { room: needed, landed: None });
        Ok(())
    }

    /// `staged` or `encoding`: encode, then decide: already stored (here or on chain), an
    /// earlier deal of ours to resume, or a new declaration.
    async fn encode_step(self: &Arc<Self>, ino: u64, rec: UploadRecord) -> Result<Flow, UploadError> {
        if rec.state == UploadState::Staged && !self.due_in(&rec).is_some_and(|d| d.is_zero()) {
            return Ok(Flow::Wait);
        }
        // Open for writing, gone, or changed since staged: the filesystem stages it again.
        let (inode, writing) =
            self.db(move |s| Ok((s.inode(ino)?, s.is_writing(ino)? || s.poisoned(ino)?.is_some()))).await?;
        let Some(inode) = inode else { return Ok(Flow::Wait) };
        if writing {
            return Ok(Flow::Wait);
        }
        if inode.content_version != rec.content_version {
            // A newer version is closed but its record lags (a failure kept the old version):
            // it is the one to upload.
            let version = inode.content_version;
            let (old, new) = (rec.clone(), UploadRecord::restaged(Some(rec), version));
            self.db(move |s| s.swap_upload(ino, &old, Some(&new))).await?;
            return Ok(Flow::Continue);
        }
        let territory = self.config.territory.clone();
        let snapshot = self.db(move |s| s.snapshot_generation(ino)).await?;
        // The format is chosen when encoding begins, and kept: a deal resumes in it. Tree
        // snapshots are read whole, in version 2, and so is a file too large for version 3's
        // blocks (their headers take 1,664 bytes more per segment); packs keep the plaintext
        // layout.
        let blocks_fit = inode.size <= crate::format::Layout::max_size(crate::format::Mode::Blocks);
        let format = match rec.format {
            crate::format::FORMAT_PLAIN => crate::format::FORMAT_PLAIN,
            _ if snapshot.is_some() || !blocks_fit => crate::format::FORMAT_V2,
            _ => crate::format::FORMAT_NEWEST,
        };
        let begins = rec.state == UploadState::Staged;
        let hidden = self.db(move |s| Ok(s.snapshot_generation(ino)?.is_some() || s.pack(ino)?.is_some())).await?;
        let packs = self.packing().is_some() && !hidden && inode.size < self.config.pack_below;
        // A sparse file stores its data only (not in the plaintext layout, which other clients
        // read as one whole file); its ranges are chosen with the format, and kept.
        let extents = match format {
            _ if !begins || packs || hidden || inode.size == 0 => None,
            crate::format::FORMAT_PLAIN => None,
            _ => {
                let (path, size, mode) =
                    (self.store.content_path(ino), inode.size, crate::format::Mode::of(format, true));
                let found = tokio::task::spawn_blocking(move || {
                    crate::store::sparse_extents(&std::fs::File::open(path)?, size, mode)
                })
                .await;
                found.map_err(|e| UploadError::Internal(format!("the data ranges of inode {ino}: {e}")))??
            }
        };
        let encoding = self
            .update(ino, &rec, |r| {
                r.state = if inode.size == 0 { UploadState::Local } else { UploadState::Encoding };
                r.size = inode.size;
                r.territory = territory.clone();
                if begins {
                    r.format = format;
                    r.extents = extents.clone();
                }
            })
            .await?;
        let Some(encoding) = encoding.filter(|r| r.state == UploadState::Encoding) else { return Ok(Flow::Wait) };
        if let Some(keys) = self.packing().filter(|_| packs) {
            let names = self.config.master.as_ref().and_then(|m| m.names()).cloned();
            let (keys, names) = (keys.clone(), names.ok_or_else(|| UploadError::Internal("no name key".into()))?);
            let packed = self.db(move |s| s.pack_file(ino, &encoding, &keys, &names)).await?;
            log::info!("inode {ino}: encoding → packed{}", if packed { "" } else { " (it changed meanwhile)" });
            return Ok(Flow::Continue);
        }
        let (manifest, seed) = self.encode(ino, &encoding).await?;
        let fid = manifest.fid;
        lock(&self.manifests).insert(ino, manifest.clone());
        let segments = manifest.segments.len() as u32;
        // A pack's (and a commit's) hidden inode is named by its name on chain.
        let chain_name = if hidden && (snapshot.is_none() || encoding.format == crate::format::FORMAT_PLAIN) {
            inode.name.clone()
        } else {
            self.chain_name(&fid, &inode.name, snapshot)
        };
        let encoded = |r: &mut UploadRecord| {
            r.fid = Some(fid);
            r.seed = seed;
            r.segments = segments;
            r.file_name = chain_name.clone();
        };
        // Found stored (for another file here, or on chain), it is taken as such under a pin
        // made before the look: no deletion of it lands in between.
        let _pin = self.store.pin_fid(&fid)?;
        // The same bytes under the same key are stored for another file here already.
        if let Some(other) = self.db(move |s| s.fid_active_elsewhere(&fid, ino)).await? {
            crate::hooks::reached_async("upload-held").await;
            self.update(ino, &encoding, |r| {
                encoded(r);
                r.state = UploadState::Active;
                (r.tx, r.block) = (other.tx.clone(), other.block);
                (r.pushed, r.reported) = (FRAGMENTS as u8, FRAGMENTS as u8);
            })
            .await?;
            return Ok(Flow::Continue);
        }
        if let Some(file) = self.chain.file(&fid).await?
            && self.held_here(&file)
        {
            crate::hooks::reached_async("upload-held").await;
            self.update(ino, &encoding, |r| {
                encoded(r);
                r.state = UploadState::Active;
                (r.pushed, r.reported) = (FRAGMENTS as u8, FRAGMENTS as u8);
            })
            .await?;
            return Ok(Flow::Continue);
        }
        let resume = self.chain.deal(&fid).await?.is_some();
        let _checking = match resume {
            true => None,
            false => Some(self.territory_check.lock().await),
        };
        if !resume {
            self.check_territory(ino, manifest.segments.len()).await?;
        }
        // The point of no return: refused if the file was opened for writing meanwhile.
        let current = self.db(move |s| s.upload(ino)).await?;
        let Some(current) = current.filter(|c| *c == encoding) else { return Ok(Flow::Continue) };
        let mut declared = current.clone();
        encoded(&mut declared);
        declared.state = if resume { UploadState::Pushing } else { UploadState::Declared };
        declared.updated_at = Timestamp::now();
        let (cur, next) = (current.clone(), declared.clone());
        if self.db(move |s| s.begin_deal(ino, &cur, &next)).await? {
            log::info!(
                "inode {ino}{}: encoding → {} (fid {fid}){}",
                chain_name_of(&declared),
                declared.state.word(),
                if resume { ", resuming its deal" } else { "" }
            );
        }
        Ok(Flow::Continue)
    }

    /// `declared`: place the storage order, unless it is there already, or one sent earlier may
    /// still land.
    async fn declare_step(self: &Arc<Self>, ino: u64, rec: UploadRecord) -> Result<Flow, UploadError> {
        let fid = rec.fid.ok_or_else(|| missing_fid("declared"))?;
        let me = self.chain.account();
        let existing = self.chain.file(&fid).await?;
        if existing.as_ref().is_some_and(|f| self.held_here(f)) {
            self.update(ino, &rec, |r| {
                r.state = UploadState::Active;
                (r.pushed, r.reported, r.declaring) = (FRAGMENTS as u8, FRAGMENTS as u8, None);
            })
            .await?;
            return Ok(Flow::Continue);
        }
        if existing.is_none() && self.chain.deal(&fid).await?.is_some() {
            self.update(ino, &rec, |r| (r.state, r.declaring) = (UploadState::Pushing, None)).await?;
            return Ok(Flow::Continue);
        }
        // A declaration sent before (this run or one before a crash) whose effect is not seen:
        // followed until it can land no more, then the chain is looked at once again (it may
        // have landed just before), and only then is another sent.
        if let Some(sent) = &rec.declaring {
            if self.chain.may_land(sent).await? {
                return Err(ChainError::Pending(format!(
                    "the declaration sent at block {} (tx {}) may still land: it is followed before another is sent",
                    sent.block, sent.hash
                ))
                .into());
            }
            log::info!("inode {ino}: the declaration {} of {fid} can no longer land", sent.hash);
            self.update(ino, &rec, |r| r.declaring = None).await?;
            return Ok(Flow::Continue);
        }
        let manifest = self.manifest(ino, &rec).await?;
        let user = UserBrief { user: me, file_name: rec.file_name.clone(), territory_name: rec.territory.clone() };
        let inner = self.clone();
        let record = move |sent: SentTx| -> futures_util::future::BoxFuture<'static, Result<(), ChainError>> {
            let inner = inner.clone();
            Box::pin(async move {
                let hash = sent.hash.clone();
                inner.db(move |s| s.declaration_sent(ino, &fid, sent)).await.map_err(|e| ChainError::Refused {
                    reason: format!("the declaration could not be recorded before it is sent: {e}"),
                    transient: true,
                })?;
                log::info!("inode {ino}: declaration of {fid} recorded and sent (tx {hash})");
                Ok(())
            })
        };
        let declared =
            self.chain.upload_declaration(&fid, &manifest.segments, &user, declared_size(&rec), &record).await;
        let receipt = match declared {
            Ok(r) => {
                // The territory shows the room it took once the chain's reads see this block.
                if let Some(promise) = lock(&self.room_promised).get_mut(&ino) {
                    promise.landed = Some(tokio::time::Instant::now());
                }
                r
            }
            // Sent, and how it ended is not known (a pool may also drop what it passed on): it
            // is followed next time, until it can land no more.
            Err(e) if e.is_transient() => return Err(e.into()),
            // Refused: no deal exists, so nothing holds the bytes any more.
            Err(e) => {
                let current = self.db(move |s| s.upload(ino)).await?;
                if let Some(current) = current.filter(|c| c.state == UploadState::Declared) {
                    let failed = UploadRecord {
                        state: UploadState::Failed,
                        declaring: None,
                        updated_at: Timestamp::now(),
                        ..current.clone()
                    };
                    self.db(move |s| s.end_deal(ino, &current, Some(&failed))).await?;
                }
                return Err(e.into());
            }
        };
        // A fly upload (the bytes are on CESS already) is active at once.
        let fly = existing.is_some();
        self.update(ino, &rec, |r| {
            r.state = if fly { UploadState::Active } else { UploadState::Pushing };
            (r.tx, r.block, r.declaring) = (Some(receipt.tx_hash.clone()), Some(receipt.block), None);
            if fly {
                (r.pushed, r.reported) = (FRAGMENTS as u8, FRAGMENTS as u8);
            }
        })
        .await?;
        Ok(Flow::Continue)
    }

    /// `pushing`: send every column not yet reported to a miner of its own, resuming where an
    /// earlier push left it (a column its miner holds whole is not sent again); a miner that
    /// fails is replaced by a spare, for up to three rounds.
    async fn push_step(self: &Arc<Self>, ino: u64, rec: UploadRecord) -> Result<Flow, UploadError> {
        let fid = rec.fid.ok_or_else(|| missing_fid("pushing"))?;
        // Files of equal bytes share one FID and one deal: one of them pushes it at a time.
        let _claim = self.claim_push(fid, ino).await?;
        let Some(deal) = self.chain.deal(&fid).await? else {
            let stored = self.chain.file(&fid).await?.is_some();
            if !stored {
                // The deal is gone (expired): a new one starts from nothing.
                self.db(move |s| s.forget_placements(&fid)).await?;
            }
            self.update(ino, &rec, |r| r.state = if stored { UploadState::Confirming } else { UploadState::Declared })
                .await?;
            return Ok(Flow::Continue);
        };
        let segments = deal.segments.len();
        let mut placed = self.db(move |s| s.placements(&fid)).await?;
        let miners = self.chain.miners().await?;
        // A miner that lost what it took (a disk replaced, a restart that dropped its uploads)
        // is sent its column again from the start.
        let reported = |column: u8| deal.complete_list.iter().any(|d| d.index == column + 1);
        placed.retain(|(column, _)| !reported(*column));
        let checks = placed.iter().map(|(column, p)| {
            let miner = miners.iter().find(|m| m.account.0 == p.miner);
            let deal = &deal.segments;
            async move {
                match miner {
                    Some(m) => push::still_held(self, &fid, deal, *column as usize, p.segments as usize, m).await,
                    None => true,
                }
            }
        });
        let held_still = futures_util::future::join_all(checks).await;
        let mut lost = Vec::new();
        for ((column, p), held) in placed.iter().zip(held_still) {
            if !held {
                log::warn!(
                    "inode {ino}: miner {} no longer holds column {column} of {fid}; sending it again",
                    AccountId(p.miner)
                );
                // It lost this deal's bytes once: another miner takes the column if one can.
                lock(&self.laggards).entry(fid).or_default().insert(AccountId(p.miner));
                lost.push(*column);
            }
        }
        for column in lost {
            self.db(move |s| s.forget_placement(&fid, column)).await?;
            placed.retain(|(c, _)| *c != column);
        }
        let mut exclude: HashSet<_> = deal.complete_list.iter().map(|c| c.miner).collect();
        // A miner holding part of a column keeps it; no other column goes to it.
        exclude.extend(placed.iter().map(|(_, p)| AccountId(p.miner)));
        let laggards = lock(&self.laggards).get(&fid).cloned().unwrap_or_default();
        let unreported: Vec<usize> =
            (0..FRAGMENTS).filter(|c| !deal.complete_list.iter().any(|d| d.index as usize == c + 1)).collect();
        let mut held = 0;
        let mut resumed = Vec::new();
        let mut left = Vec::new();
        for column in unreported {
            let place = placed.iter().find(|(c, _)| *c as usize == column).map(|(_, p)| *p);
            let miner = place.and_then(|p| miners.iter().find(|m| m.account.0 == p.miner && m.endpoint.is_some()));
            match (place, miner) {
                // Its miner has every fragment of it: its report is waited for (confirm_step).
                (Some(p), Some(_)) if p.segments as usize >= segments => held += 1,
                (Some(p), Some(m)) => {
                    resumed.push(push::Assignment { column, miner: m.clone(), from: p.segments as usize })
                }
                _ => left.push(column),
            }
        }
        let mut candidates =
            placement::candidates(miners.clone(), segments, &exclude.union(&laggards).copied().collect());
        if candidates.len() < left.len() && !laggards.is_empty() {
            // Better a miner that was slow to report than no push at all: they are asked again.
            log::warn!(
                "inode {ino}: {} miners left for {} columns of {fid} without the {} that did not report; asking those again",
                candidates.len(),
                left.len(),
                laggards.len()
            );
            lock(&self.laggards).remove(&fid);
            candidates = placement::candidates(miners, segments, &exclude);
        }
        if candidates.len() < left.len() {
            return Err(UploadError::NotEnoughMiners {
                found: candidates.len(),
                needed: left.len(),
                needed_space: (FRAGMENT_SIZE * segments) as u128,
            });
        }
        if held + resumed.len() > 0 {
            log::info!(
                "inode {ino}: resuming the push of {fid}: {held} columns held by their miners, {} resumed, {} to send",
                resumed.len(),
                left.len()
            );
        }
        let mut pushed = FRAGMENTS - left.len() - resumed.len();
        let _shown = ShownPush(&self.pushes, ino);
        let mut last = None;
        // The time a column of this file takes on this link, once a round shows it.
        let mut pace = None;
        for _round in 0..3 {
            if (left.is_empty() && resumed.is_empty()) || candidates.len() < left.len() {
                break;
            }
            let mut assignment = std::mem::take(&mut resumed);
            let fresh = candidates.drain(..left.len());
            assignment.extend(left.iter().zip(fresh).map(|(&column, miner)| push::Assignment {
                column,
                miner,
                from: 0,
            }));
            let outcome = push::push_columns(self, ino, &fid, &rec, &deal.segments, assignment, &mut pace).await?;
            left.clear();
            for (column, miner, result) in outcome {
                match result {
                    Ok(()) => {
                        pushed += 1;
                        lock(&self.laggards).entry(fid).or_default().insert(miner.account);
                    }
                    Err(e) => {
                        log::warn!("inode {ino}: column {column} could not go to miner {}: {e}", miner.account);
                        self.db(move |s| s.forget_placement(&fid, column as u8)).await?;
                        last = Some(e);
                        left.push(column);
                    }
                }
            }
            // Miners report while others are still pushed to: the count is the deal's.
            let reported = match self.chain.deal(&fid).await {
                Ok(Some(deal)) => deal.complete_list.len() as u8,
                Ok(None) => FRAGMENTS as u8,
                Err(_) => rec.reported,
            };
            let counted = |r: &mut UploadRecord| (r.pushed, r.reported) = (pushed as u8, reported);
            if self.update(ino, &rec, counted).await?.is_none() {
                return Ok(Flow::Continue);
            }
        }
        if let (false, Some(last)) = (left.is_empty(), last) {
            return Err(UploadError::Push { columns: left.len(), last });
        }
        let pushing = UploadRecord { pushed: pushed as u8, ..rec };
        self.update(ino, &pushing, |r| r.state = UploadState::Confirming).await?;
        Ok(Flow::Continue)
    }

    /// `confirming`: follow the miners' reports until the file is active; columns not reported
    /// in time go to other miners.
    async fn confirm_step(self: &Arc<Self>, ino: u64, mut rec: UploadRecord) -> Result<Flow, UploadError> {
        let fid = rec.fid.ok_or_else(|| missing_fid("confirming"))?;
        let deadline = tokio::time::Instant::now() + self.config.report_timeout;
        loop {
            if self.chain.file(&fid).await?.is_some_and(|f| self.held_here(&f)) {
                self.update(ino, &rec, |r| {
                    r.state = UploadState::Active;
                    (r.pushed, r.reported) = (FRAGMENTS as u8, FRAGMENTS as u8);
                })
                .await?;
                return Ok(Flow::Continue);
            }
            if let Some(deal) = self.chain.deal(&fid).await? {
                let reported = deal.complete_list.len() as u8;
                if reported != rec.reported {
                    match self.update(ino, &rec, |r| r.reported = reported).await? {
                        Some(next) => rec = next,
                        None => return Ok(Flow::Continue),
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    log::warn!(
                        "inode {ino}: {reported}/{FRAGMENTS} columns of {fid} reported after {}s; the rest go to other miners",
                        self.config.report_timeout.as_secs()
                    );
                    // The miners that took a column and did not report it are not asked again.
                    let reporters: HashSet<_> = deal.complete_list.iter().map(|c| c.miner).collect();
                    let placed = self.db(move |s| s.placements(&fid)).await?;
                    {
                        let mut laggards = lock(&self.laggards);
                        let laggards = laggards.entry(fid).or_default();
                        laggards.extend(placed.iter().map(|(_, p)| AccountId(p.miner)));
                        laggards.retain(|m| !reporters.contains(m));
                    }
                    self.db(move |s| s.forget_placements(&fid)).await?;
                    self.update(ino, &rec, |r| {
                        r.state = UploadState::Pushing;
                        r.pushed = reported;
                    })
                    .await?;
                    return Ok(Flow::Continue);
                }
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }

    /// `active`: delete older versions from the chain, then start the next version, or finish a
    /// file that was deleted while its deal was open.
    async fn active_step(&self, ino: u64, rec: UploadRecord) -> Result<Flow, UploadError> {
        let fid = rec.fid.ok_or_else(|| missing_fid("active"))?;
        if rec.format == crate::format::FORMAT_PLAIN {
            let live = self.db(move |s| s.finish_pack(ino, &rec)).await?;
            lock(&self.manifests).remove(&ino);
            lock(&self.laggards).remove(&fid);
            if let Some(live) = live {
                log::info!("pack {fid} stored: {} active", crate::words::count(live as u64, "file"));
            }
            return Ok(Flow::Wait);
        }
        let next = if rec.retired {
            None
        } else if let Some(version) = rec.newer {
            let mut staged = UploadRecord::staged(version);
            staged.replaces.push(fid);
            staged.previous = rec.stored_version();
            Some(staged)
        } else {
            Some(UploadRecord { replaces: Vec::new(), previous: None, ..rec.clone() })
        };
        let (old, new) = (rec.clone(), next.clone());
        let ended = self
            .db(move |s| {
                let mut batch = Batch::default();
                for obsolete in old.replaces.iter().filter(|f| **f != fid) {
                    batch.put_tombstone(obsolete);
                }
                if old.retired && s.fid_active_elsewhere(&fid, ino)?.is_none() {
                    batch.put_tombstone(&fid);
                }
                s.commit(batch)?;
                s.end_deal(ino, &old, new.as_ref())
            })
            .await?;
        if ended {
            lock(&self.manifests).remove(&ino);
            lock(&self.laggards).remove(&fid);
            if rec.retired {
                log::info!("inode {ino}: its deal finished after it was deleted; deleting {fid} from the chain");
            }
        }
        Ok(if next.is_some_and(|n| n.state == UploadState::Staged) { Flow::Continue } else { Flow::Wait })
    }

    /// `failed` for the territory's sake, and its time to try again came (or the territory
    /// changed, which brings it forward): staged again, to be tried from the start. Other
    /// failures wait for a change of the file.
    async fn retry_step(&self, ino: u64, rec: UploadRecord) -> Result<Flow, UploadError> {
        if !rec.retry_at.is_some_and(|t| t.remaining().is_zero()) {
            return Ok(Flow::Wait);
        }
        let mut next = UploadRecord::restaged(Some(rec.clone()), rec.newer.unwrap_or(rec.content_version));
        // Tried now: the quiet delay was long over.
        next.staged_at = rec.staged_at;
        next.error = rec.error.clone();
        let swapped = self.db(move |s| s.swap_upload(ino, &rec, Some(&next))).await?;
        Ok(if swapped { Flow::Continue } else { Flow::Wait })
    }
}

/// The push of a deal by one inode; the next waiting inode of the same FID goes on when it ends.
struct PushClaim<'a>(&'a Inner, Hash);

impl Drop for PushClaim<'_> {
    fn drop(&mut self) {
        lock(&self.0.pushing).remove(&self.1);
        self.0.push_ended.notify_waiters();
    }
}

impl Inner {
    /// Waits until no other inode pushes the deal of `fid`, then takes it for `ino`.
    async fn claim_push(&self, fid: Hash, ino: u64) -> Result<PushClaim<'_>, UploadError> {
        let mut stop = self.stop.clone();
        loop {
            let ended = self.push_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let owner = *lock(&self.pushing).entry(fid).or_insert(ino);
            if owner == ino {
                return Ok(PushClaim(self, fid));
            }
            log::info!("inode {ino}: inode {owner} pushes the same bytes ({fid}); waiting for it");
            tokio::select! {
                _ = ended => {}
                _ = stop.wait_for(|s| *s) => return Err(UploadError::ShuttingDown),
            }
        }
    }
}

/// Shows the push of an inode in its attributes while it lives (see push.rs).
struct ShownPush<'a>(&'a crate::protocol::Pushes, u64);

impl Drop for ShownPush<'_> {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}
