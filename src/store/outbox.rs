//! The upload queue: one persistent record per regular file whose content is on its way to CESS
//! (or is there), keyed by inode, not name, so renames never disturb it; and tombstones, the FIDs
//! to delete from the chain.
//!
//! Deals cannot be cancelled on chain, so once a file is declared its bytes must stay available
//! until the deal completes, whatever the user does to the file. The store arbitrates with one
//! lock between the upload engine ([`Store::begin_deal`]) and the filesystem
//! ([`Store::before_content_change`], [`Store::retire`]): a file that is being written is never
//! declared, and a file with a deal in flight is copied aside (`content/<ino>.deal`) before its
//! bytes change or its name goes away.

use serde::{Deserialize, Serialize};

use super::records::{decode, encode, key};
use super::{Batch, Store, StoreError, Timestamp};
use crate::format::{Extents, Hash};
use crate::sync::lock;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

/// Where a file's content is on its way to CESS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadState {
    /// Closed and durable locally, waiting for the quiet delay.
    Staged,
    /// Being encoded (encrypted, erasure-coded, hashed).
    Encoding,
    /// Its storage order is being placed on chain.
    Declared,
    /// Its fragments are being sent to miners.
    Pushing,
    /// Waiting for the miners' reports.
    Confirming,
    /// Stored on CESS.
    Active,
    /// Stopped on an error that retrying will not fix (see `error`).
    Failed,
    /// Kept locally only: CESS cannot store empty files.
    Local,
    /// Its content is a blob in a pack (`blob`) on its way to CESS: the pack's upload carries
    /// it, and makes it `active` with the pack.
    Packed,
}

impl UploadState {
    /// The word `user.cess.status` shows.
    pub fn word(&self) -> &'static str {
        match self {
            UploadState::Staged => "staged",
            UploadState::Encoding => "encoding",
            UploadState::Declared => "declared",
            UploadState::Pushing => "pushing",
            UploadState::Confirming => "confirming",
            UploadState::Active => "active",
            UploadState::Failed => "failed",
            UploadState::Local => "local",
            UploadState::Packed => "packed",
        }
    }

    /// Whether a deal is open on chain for this upload: its bytes must stay available.
    pub fn deal_in_flight(&self) -> bool {
        matches!(self, UploadState::Declared | UploadState::Pushing | UploadState::Confirming)
    }

    /// Whether the upload engine has nothing more to do.
    pub fn settled(&self) -> bool {
        matches!(self, UploadState::Active | UploadState::Failed | UploadState::Local)
    }
}

/// The upload record of one inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Current state.
    pub state: UploadState,
    /// The inode's `content_version` being uploaded.
    pub content_version: u64,
    /// A newer content version, staged while this one's deal was in flight; it goes next.
    pub newer: Option<u64>,
    /// When the content was closed (the quiet delay counts from here).
    pub staged_at: Timestamp,
    /// File size in bytes.
    pub size: u64,
    /// The file id, once encoded.
    pub fid: Option<Hash>,
    /// The key seed of the encoding, to rebuild fragments without another pass over the file.
    pub seed: Option<[u8; 32]>,
    /// Number of segments.
    pub segments: u32,
    /// The territory charged.
    pub territory: Vec<u8>,
    /// The name declared on chain.
    pub file_name: Vec<u8>,
    /// The declaration's transaction.
    pub tx: Option<String>,
    /// The block it landed in.
    pub block: Option<u32>,
    /// Columns fully sent to a miner.
    pub pushed: u8,
    /// Columns reported on chain.
    pub reported: u8,
    /// What went wrong last.
    pub error: Option<String>,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// Not before this time (back-off after a transient failure).
    pub retry_at: Option<Timestamp>,
    /// Older FIDs of this file to delete from the chain once this version is active.
    pub replaces: Vec<Hash>,
    /// The inode is gone: finish the deal, then delete the file from the chain.
    pub retired: bool,
    /// Last change of this record.
    pub updated_at: Timestamp,
    /// The encryption format version of its FID ([`crate::format::FORMAT_V2`] for new content;
    /// deals begun under version 1 finish under it).
    pub format: u8,
    /// The last version that was active, while a newer one is not: tree snapshots refer to it
    /// meanwhile (its FID stays on chain, in `replaces`).
    pub previous: Option<StoredVersion>,
    /// Where its content went when packed (store/packs.rs): `fid` is then its pack's, once the
    /// pack is stored.
    pub blob: Option<PackedBlob>,
    /// Its declaration, signed and sent, while its outcome is not seen on chain: it may still
    /// land, so no other is sent until it can land no more (a second would lock the
    /// territory's space again and start the deal over).
    pub declaring: Option<crate::protocol::SentTx>,
    /// A sparse file's data ranges: `fid` holds them end to end (`None`: the whole file). Chosen
    /// when encoding begins, with the format, and kept until its deal ends.
    pub extents: Option<Extents>,
}

/// A file's content as a blob in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBlob {
    /// The pack's hidden inode.
    pub pack: u64,
    /// The blob's id (its key derives from it).
    pub id: Hash,
    /// Where it lies in the pack.
    pub place: crate::format::BlobPlace,
}

/// A version of a file's content stored on CESS: what reading it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// Its FID.
    pub fid: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// Its key seed (`None`: plaintext layout).
    pub seed: Option<[u8; 32]>,
    /// Its encryption format version.
    pub format: u8,
    /// Its blob (id and place) in the pack `fid`, if packed.
    pub blob: Option<(Hash, crate::format::BlobPlace)>,
    /// A sparse file's data ranges (the record keeps them apart: [`UploadRecord`]).
    #[serde(skip)]
    pub extents: Option<Extents>,
}

impl StoredVersion {
    /// The bytes `fid` holds: the data ranges of a sparse file, else all of it.
    pub fn object_size(&self) -> u64 {
        self.extents.as_ref().map_or(self.size, Extents::data_len)
    }
}

/// The version byte of upload records: 6 since they end with the data ranges. Records of
/// versions 1 (without `format` and `previous`: all of format version 1), 2 (without `previous`),
/// 3 (without the blobs), 4 (without `declaring`) and 5 (without the ranges) are those bytes with
/// fewer fields at the end; [`Store::open`] rewrites them, since records are swapped by comparing
/// their bytes.
const UPLOAD_RECORD_VERSION: u8 = 6;

/// Encodes an upload record.
pub(super) fn encode_upload(rec: &UploadRecord) -> Vec<u8> {
    let mut out = vec![UPLOAD_RECORD_VERSION];
    // `previous`'s ranges follow the record, so that records without them decode.
    let previous_extents = rec.previous.as_ref().and_then(|p| p.extents.as_ref());
    out.extend(postcard::to_stdvec(&(rec, previous_extents)).expect("records always serialize"));
    out
}

/// Decodes an upload record of any version.
pub(super) fn decode_upload(bytes: &[u8]) -> Result<UploadRecord, StoreError> {
    let corrupt = || StoreError::Corrupt { what: "upload" };
    // The fields a version lacks, as postcard writes them: format 1, `previous` None, no blobs,
    // no declaration, no ranges. A version 3 record ends with `previous`: its blob and the
    // record's follow (one zero left over if `previous` is None, which postcard ignores).
    const NO_RANGES: [u8; 2] = [0, 0];
    let tail: &[u8] = match bytes.first() {
        Some(&UPLOAD_RECORD_VERSION) => &[],
        Some(&5) => &NO_RANGES,
        Some(&4) => &[0, 0, 0],
        Some(&3) | Some(&2) => &[0, 0, 0, 0, 0],
        Some(&1) => &[crate::format::FORMAT_V1, 0, 0, 0, 0, 0],
        _ => return Err(corrupt()),
    };
    let (mut rec, previous_extents): (UploadRecord, Option<Extents>) =
        postcard::from_bytes(&[&bytes[1..], tail].concat()).map_err(|_| corrupt())?;
    if let Some(previous) = rec.previous.as_mut() {
        previous.extents = previous_extents;
    }
    Ok(rec)
}

impl UploadRecord {
    /// A record for content version `content_version`, just closed.
    pub fn staged(content_version: u64) -> UploadRecord {
        let now = Timestamp::now();
        UploadRecord {
            state: UploadState::Staged,
            content_version,
            newer: None,
            staged_at: now,
            size: 0,
            fid: None,
            seed: None,
            segments: 0,
            territory: Vec::new(),
            file_name: Vec::new(),
            tx: None,
            block: None,
            pushed: 0,
            reported: 0,
            error: None,
            attempts: 0,
            retry_at: None,
            replaces: Vec::new(),
            retired: false,
            updated_at: now,
            format: crate::format::FORMAT_V2,
            previous: None,
            blob: None,
            declaring: None,
            extents: None,
        }
    }

    /// The version this record has stored on CESS, if it is active.
    pub fn stored_version(&self) -> Option<StoredVersion> {
        let fid = self.fid.filter(|_| self.state == UploadState::Active)?;
        let blob = self.blob.map(|b| (b.id, b.place));
        let extents = self.extents.clone();
        Some(StoredVersion { fid, size: self.size, seed: self.seed, format: self.format, blob, extents })
    }

    /// The bytes its FID holds (or will): the data ranges of a sparse file, else all of it.
    pub fn object_size(&self) -> u64 {
        self.extents.as_ref().map_or(self.size, Extents::data_len)
    }

    /// The record of a file stored on CESS as `stored` (restored from a snapshot: nothing to
    /// upload), in `segments` segments, declared in `territory` under `file_name`.
    pub fn stored(stored: StoredVersion, segments: u32, territory: &[u8], file_name: Vec<u8>) -> UploadRecord {
        let mut up = UploadRecord::staged(1);
        up.state = UploadState::Active;
        (up.size, up.fid, up.seed, up.format) = (stored.size, Some(stored.fid), stored.seed, stored.format);
        up.extents = stored.extents;
        if let Some((id, place)) = stored.blob {
            up.blob = Some(PackedBlob { pack: 0, id, place });
        }
        up.segments = segments;
        up.territory = territory.to_vec();
        up.file_name = file_name;
        (up.pushed, up.reported) = (crate::format::FRAGMENTS as u8, crate::format::FRAGMENTS as u8);
        up
    }

    /// The record after content version `version` is closed: a new upload, unless a deal is in
    /// flight, which finishes first. An active FID is remembered, to be deleted once the new
    /// version is active.
    pub fn restaged(old: Option<UploadRecord>, version: u64) -> UploadRecord {
        let Some(mut old) = old else { return UploadRecord::staged(version) };
        if old.state.deal_in_flight() {
            old.newer = Some(version);
            old.updated_at = Timestamp::now();
            return old;
        }
        let mut r = UploadRecord::staged(version);
        // A pack tried again stays in the plaintext layout.
        if old.format == crate::format::FORMAT_PLAIN {
            r.format = old.format;
        }
        let stored = old.stored_version();
        r.replaces = old.replaces;
        r.previous = old.previous;
        if let Some(stored) = stored {
            r.replaces.push(stored.fid);
            r.previous = Some(stored);
        }
        r
    }
}

/// A FID to delete from the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// Not before this time.
    pub retry_at: Option<Timestamp>,
    /// What went wrong last.
    pub error: Option<String>,
    /// When it was queued: an attempt settles the tombstone it read, not one queued again
    /// meanwhile (by a file that let go of the FID while the attempt found it in use).
    pub queued_at: Timestamp,
}

/// Decodes a tombstone; one written before `queued_at` reads as queued at the epoch (and is
/// rewritten at open, since tombstones are settled by comparing their bytes).
pub(super) fn decode_tombstone(bytes: &[u8]) -> Result<Tombstone, StoreError> {
    decode(bytes, "tombstone").or_else(|_| decode(&[bytes, &[0, 0]].concat(), "tombstone"))
}

/// Whether a queued FID may be deleted from the chain now ([`Store::claim_deletion`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// Claimed: delete it, then end the claim.
    Claimed,
    /// A file or a kept snapshot needs it: the deletion is dropped (what needs it queues it
    /// again when it lets go).
    InUse,
    /// A snapshot of the tree on chain that this mount does not keep refers to it: asked again
    /// in a while (that snapshot may leave the chain, and nothing here would queue it again).
    OnChain,
    /// A snapshot is being built and may refer to it: ask again in a moment.
    Held,
    /// Another mount writes this tree: nothing is deleted.
    Stopped,
    /// Needed only as a version a record keeps until its newer one is active: ask again soon.
    Replacing,
    /// An upload is about to take it as stored ([`Store::pin_fid`]): ask again soon.
    Pinned,
    /// What needs it cannot be told now (a record that cannot be read): when in doubt, keep,
    /// and ask again later.
    InDoubt(String),
}

impl Batch {
    /// Queues `fid` for deletion from the chain.
    pub fn put_tombstone(&mut self, fid: &Hash) {
        let t = Tombstone { attempts: 0, retry_at: None, error: None, queued_at: Timestamp::now() };
        self.0.insert(key::tombstone(fid), encode(&t));
        self.1.tombstones = true;
    }
}

impl Store {
    /// Wakes the upload engine: something in the queue changed.
    pub fn ring(&self) {
        self.doorbell.notify_one();
    }

    /// What the upload engine waits on.
    pub fn doorbell(&self) -> &tokio::sync::Notify {
        &self.doorbell
    }

    /// Every upload record.
    pub fn uploads(&self) -> Result<Vec<(u64, UploadRecord)>, StoreError> {
        self.tree
            .scan_prefix(key::UPLOAD_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key::ino_of(&k)?, decode_upload(&v)?))
            })
            .collect()
    }

    /// Rewrites the upload records of version 1 in the current version.
    pub(super) fn migrate_upload_records(&self) -> Result<(), StoreError> {
        let mut b = Batch::default();
        let mut count = 0;
        for kv in self.tree.scan_prefix(key::UPLOAD_PREFIX) {
            let (k, v) = kv?;
            if v.first() == Some(&UPLOAD_RECORD_VERSION) {
                continue;
            }
            match decode_upload(&v) {
                Ok(rec) => {
                    b.put_upload(key::ino_of(&k)?, &rec);
                    count += 1;
                }
                Err(e) => log::error!("an upload record is unreadable and left as it is: {e}"),
            }
        }
        if count > 0 {
            self.commit(b)?;
            log::info!("rewrote {count} upload records in the current layout");
        }
        Ok(())
    }

    /// Replaces (or with `None`, removes) the upload record of `ino` if it is still `old`.
    /// Returns whether it was: the filesystem may have staged a newer version in between.
    pub fn swap_upload(&self, ino: u64, old: &UploadRecord, new: Option<&UploadRecord>) -> Result<bool, StoreError> {
        let _deal = lock(&self.deal_lock);
        self.swap_upload_locked(ino, old, new)
    }

    pub(super) fn swap_upload_locked(
        &self,
        ino: u64,
        old: &UploadRecord,
        new: Option<&UploadRecord>,
    ) -> Result<bool, StoreError> {
        if self.poisoned.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Poisoned);
        }
        self.reserve.before_write();
        let mut applying = self.applying();
        let mut catalog = lock(&self.catalog);
        if let Some(fid) = new.and_then(|n| catalog.needs_deleted(n)) {
            return Err(StoreError::BeingDeleted(fid));
        }
        let swapped =
            self.tree.compare_and_swap(key::upload(ino), Some(encode_upload(old)), new.map(encode_upload))?.is_ok();
        if swapped {
            applying.changes(&[super::tree::TreeChange::Node(ino)], false);
            self.refresh(&mut catalog, ino, true);
            drop(catalog);
            self.ring();
        }
        Ok(swapped)
    }

    /// Whether another inode's upload of `fid` is active (the same bytes under the same key).
    pub fn fid_active_elsewhere(&self, fid: &Hash, ino: u64) -> Result<Option<UploadRecord>, StoreError> {
        let others: Vec<u64> =
            lock(&self.catalog).holders(fid).filter(|&(i, active, _)| i != ino && active).map(|(i, _, _)| i).collect();
        for other in others {
            if let Some(r) = self.upload(other)?.filter(|r| r.fid == Some(*fid) && r.state == UploadState::Active) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Claims `fid` for its deletion from the chain, unless something here still needs it. While
    /// claimed, no upload record takes it ([`Store::swap_upload`] answers
    /// [`StoreError::BeingDeleted`]): a file with the same bytes written meanwhile is not
    /// adopted as held, nor declared, until [`Store::end_deletion`], once the deletion landed.
    /// A FID claimed already (a deletion sent before a restart) stays claimed: its deletion is
    /// followed to its end.
    pub fn claim_deletion(&self, fid: &Hash) -> Result<Deletion, StoreError> {
        let kept = self.kept_snapshot_fids()?.contains(fid);
        let on_chain = self.referred_on_chain(fid);
        let mut catalog = lock(&self.catalog);
        Ok(if catalog.claimed(fid) {
            Deletion::Claimed
        } else if self.another_writer() {
            Deletion::Stopped
        } else if self.deletions_held() {
            // Checked under the catalog lock: a snapshot whose build began before a claim reads
            // the record that still needs the FID; one that begins after it finds it claimed.
            Deletion::Held
        } else if let Some(why) = catalog.doubt() {
            Deletion::InDoubt(why)
        } else if kept {
            Deletion::InUse
        } else if on_chain {
            Deletion::OnChain
        } else if catalog.pinned(fid) {
            Deletion::Pinned
        } else if catalog.only_replaced(fid) {
            Deletion::Replacing
        } else if catalog.claim_deletion(fid) {
            Deletion::Claimed
        } else {
            Deletion::InUse
        })
    }

    /// Keeps `fid` from being claimed for deletion while the pin lives. An upload that finds its
    /// FID stored (on chain, or for another file here) takes it under a pin made before it
    /// looked: a deletion cannot then land between the look and the record that takes it.
    /// [`StoreError::BeingDeleted`] if a deletion is under way already.
    pub fn pin_fid(self: &std::sync::Arc<Self>, fid: &Hash) -> Result<FidPin, StoreError> {
        if !lock(&self.catalog).pin(fid) {
            return Err(StoreError::BeingDeleted(*fid));
        }
        Ok(FidPin { store: self.clone(), fid: *fid })
    }

    /// Ends the claim of [`Store::claim_deletion`]: the chain no longer holds the FID here, or
    /// no deletion of it can still land (its sent mark goes too).
    pub fn end_deletion(&self, fid: &Hash) {
        if let Err(e) = self.tree.remove(key::deletion_sent(fid)) {
            log::error!("{fid}: forgetting its sent deletion: {e}");
        }
        lock(&self.catalog).end_deletion(fid);
    }

    /// Whether a deletion of `fid` was sent whose end is not known yet.
    pub fn deletion_sent(&self, fid: &Hash) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(key::deletion_sent(fid))?)
    }

    /// Records durably, before the transaction goes, that a deletion of each of `fids` is sent:
    /// its FID stays claimed, across restarts too, until the chain shows how it ended. Its own
    /// key, so that the FID queued again meanwhile does not clear it.
    pub fn mark_deletion_sent(&self, fids: &[Hash]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        fids.iter().for_each(|fid| b.insert(key::deletion_sent(fid), &[]));
        self.tree.apply_batch(b)?;
        self.sync()
    }

    /// Rewrites tombstones written before `queued_at` in the current layout.
    pub(super) fn migrate_tombstones(&self) -> Result<(), StoreError> {
        for kv in self.tree.scan_prefix(key::TOMBSTONE_PREFIX) {
            let (k, v) = kv?;
            if decode::<Tombstone>(&v, "tombstone").is_err()
                && let Ok(t) = decode_tombstone(&v)
            {
                self.tree.insert(k, encode(&t))?;
            }
        }
        Ok(())
    }

    /// Those of `fids` that nothing here refers to: no record, kept snapshot or queued deletion.
    pub fn unknown_fids(&self, fids: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        let kept = self.kept_snapshot_fids()?;
        let unknown: Vec<Hash> = {
            let catalog = lock(&self.catalog);
            fids.iter().filter(|fid| !catalog.knows(fid) && !kept.contains(fid)).copied().collect()
        };
        let mut out = Vec::new();
        for fid in unknown {
            if !self.tree.contains_key(key::tombstone(&fid))? {
                out.push(fid);
            }
        }
        Ok(out)
    }

    /// Why some FIDs here are not known for sure: upload records that cannot be read, or a
    /// restored tree not loaded whole yet.
    pub fn unreadable_records(&self) -> Option<String> {
        if self.tree_loading() {
            return Some("the restored tree is still being loaded from CESS".into());
        }
        lock(&self.catalog).doubt()
    }

    /// Queues for deletion those of `fids` that nothing here refers to: FIDs of this tree
    /// declared elsewhere. Returns how many.
    pub fn delete_unknown(&self, fids: &[Hash]) -> Result<usize, StoreError> {
        let unknown = self.unknown_fids(fids)?;
        let mut b = Batch::default();
        unknown.iter().for_each(|fid| b.put_tombstone(fid));
        self.commit(b)?;
        Ok(unknown.len())
    }

    /// Holds the deal lock: no deal starts or ends while it lives (for [`Store::retire`]).
    pub fn deals(&self) -> DealGuard<'_> {
        DealGuard { _held: lock(&self.deal_lock) }
    }

    /// Makes the failed uploads of `inos` that wait for a time to try again due now.
    pub fn bring_retries_forward(&self, inos: &[u64]) -> Result<(), StoreError> {
        for &ino in inos {
            if let Some(rec) = self.upload(ino)?.filter(|r| r.state == UploadState::Failed && r.retry_at.is_some()) {
                let due = UploadRecord { retry_at: Some(Timestamp::now()), ..rec.clone() };
                self.swap_upload(ino, &rec, Some(&due))?;
            }
        }
        Ok(())
    }

    /// Waits for a FID to be queued for deletion.
    pub fn tombstone_bell(&self) -> &tokio::sync::Notify {
        &self.tombstone_bell
    }

    /// The inodes whose upload record changed since the last call (all of them, the first time).
    pub fn changed_uploads(&self) -> Vec<u64> {
        lock(&self.catalog).take_changed()
    }

    /// Bytes of cached content of stored files: what eviction can free.
    pub fn cached_bytes(&self) -> u64 {
        lock(&self.catalog).cached()
    }

    /// Up to `n` files with cached content, least recently used first.
    pub fn eviction_order(&self, n: usize) -> Vec<u64> {
        lock(&self.catalog).eviction_order(n)
    }

    /// Notes a use of `ino` (its place in the eviction order).
    pub fn touch(&self, ino: u64) {
        lock(&self.catalog).touch(ino);
    }

    /// Files and bytes by upload state.
    pub fn upload_states(&self) -> Vec<(UploadState, u64, u64)> {
        lock(&self.catalog).states()
    }

    /// Every FID waiting for deletion.
    pub fn tombstones(&self) -> Result<Vec<(Hash, Tombstone)>, StoreError> {
        self.tree
            .scan_prefix(key::TOMBSTONE_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key::fid_of(&k)?, decode_tombstone(&v)?))
            })
            .collect()
    }

    /// Records the outcome of the deletion attempt that read `read`: done (`None`) or to retry.
    /// A tombstone queued again meanwhile is left for its own attempt.
    pub fn settle_tombstone(&self, fid: &Hash, read: &Tombstone, outcome: Option<Tombstone>) -> Result<(), StoreError> {
        let swapped =
            self.tree.compare_and_swap(key::tombstone(fid), Some(encode(read)), outcome.map(|t| encode(&t)))?;
        if swapped.is_err() {
            log::info!("{fid} was queued for deletion again meanwhile: looked at again");
        }
        Ok(())
    }

    /// Whether `ino` is open for writing right now.
    pub fn is_writing(&self, ino: u64) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(key::writing(ino))?)
    }

    /// Records durably, before it goes, that the declaration `sent` of the deal of `ino` (in
    /// state `declared`, FID `fid`) is signed and about to be sent.
    pub fn declaration_sent(&self, ino: u64, fid: &Hash, sent: crate::protocol::SentTx) -> Result<(), StoreError> {
        let _deal = lock(&self.deal_lock);
        let current = self.upload(ino)?.filter(|r| r.state == UploadState::Declared && r.fid == Some(*fid));
        let Some(current) = current else { return Err(StoreError::MovedOn(ino)) };
        let next = UploadRecord { declaring: Some(sent), ..current.clone() };
        if !self.swap_upload_locked(ino, &current, Some(&next))? {
            return Err(StoreError::MovedOn(ino));
        }
        self.sync()
    }

    /// The point of no return of an upload: moves `rec` (which must still be current, with no
    /// writer open) to `Declared`, durably. From here on the filesystem keeps its bytes.
    pub fn begin_deal(&self, ino: u64, rec: &UploadRecord, declared: &UploadRecord) -> Result<bool, StoreError> {
        let _deal = lock(&self.deal_lock);
        if self.is_writing(ino)? || !self.swap_upload_locked(ino, rec, Some(declared))? {
            return Ok(false);
        }
        self.sync()?;
        Ok(true)
    }

    /// Moves a record out of a deal (to `new`, or removes it) if it is still `old`, and drops
    /// the bytes set aside for the deal with it, so that set-aside bytes exist only while their
    /// deal is in flight. Returns whether it was still `old`.
    pub fn end_deal(&self, ino: u64, old: &UploadRecord, new: Option<&UploadRecord>) -> Result<bool, StoreError> {
        let _deal = lock(&self.deal_lock);
        if !self.swap_upload_locked(ino, old, new)? {
            return Ok(false);
        }
        remove_if_present(&self.deal_snapshot_path(ino))?;
        if let Some(fid) = &old.fid {
            self.forget_placements(fid)?;
        }
        Ok(true)
    }

    /// Where the bytes of a deal in flight are kept once the file has moved on.
    pub fn deal_snapshot_path(&self, ino: u64) -> std::path::PathBuf {
        self.content_dir.join(format!("{ino:016x}.deal"))
    }

    /// The bytes the upload of `ino` must send: the set-aside copy if there is one.
    pub fn upload_source(&self, ino: u64) -> std::path::PathBuf {
        let snapshot = self.deal_snapshot_path(ino);
        if snapshot.exists() { snapshot } else { self.content_path(ino) }
    }

    /// Whether the bytes of `ino` may change now: its deal, if one is in flight, has its bytes
    /// set aside. If so, marks it open for writing (in the same critical section, so no deal can
    /// start between the check and the mark: [`Store::begin_deal`] refuses files being written).
    /// If not, the caller makes the copy with [`Store::set_deal_bytes_aside`] and asks again.
    /// With `truncate_to`, the mark records the truncation that follows, and the content counts
    /// as whole: bytes beyond it that were never fetched are cut, even after a crash.
    pub fn begin_write(&self, ino: u64, truncate_to: Option<u64>) -> Result<bool, StoreError> {
        let _deal = lock(&self.deal_lock);
        if self.needs_deal_copy(ino)? {
            return Ok(false);
        }
        let mut b = Batch::default();
        b.put_writing(ino, truncate_to);
        if truncate_to.is_some() {
            b.put_residency(ino, None);
        }
        self.commit(b)?;
        Ok(true)
    }

    /// Whether `ino` has a deal in flight whose bytes are not set aside yet.
    pub fn needs_deal_copy(&self, ino: u64) -> Result<bool, StoreError> {
        Ok(self.upload(ino)?.is_some_and(|r| r.state.deal_in_flight()) && !self.deal_snapshot_path(ino).exists())
    }

    /// Copies the content of `ino` aside for its deal in flight (`content/<ino>.deal`), without
    /// holding any lock the filesystem or the engine waits on: the copy of a large file takes
    /// seconds. One copy per inode at a time; a deal that finished meanwhile gets none.
    pub fn set_deal_bytes_aside(&self, ino: u64) -> Result<(), StoreError> {
        let _copying = self.copying.hold(ino);
        if !self.needs_deal_copy(ino)? {
            return Ok(());
        }
        // What the copy takes: the data (holes stay holes).
        let len = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(self.content_path(ino))?) * 512;
        if !self.has_room_for(len, true) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
        let snapshot = self.deal_snapshot_path(ino);
        let tmp = snapshot.with_extension("tmp");
        let copied = copy_durably(&self.content_path(ino), &tmp);
        if let Err(e) = copied {
            remove_if_present(&tmp)?;
            return Err(e.into());
        }
        let placed = self.put_deal_bytes_aside(ino, |snapshot| std::fs::rename(&tmp, snapshot), remove_if_present);
        if !placed.as_ref().is_ok_and(|p| *p) {
            remove_if_present(&tmp)?;
        }
        placed?;
        log::info!("inode {ino} changes while its deal is in flight: its declared bytes are kept aside");
        Ok(())
    }

    /// For a file about to be rewritten from scratch (truncated to 0) and not open: its content
    /// file itself becomes the deal's bytes, and an empty one takes its place (no copy, so a
    /// rewrite works on a full disk, and quickly under the namespace lock).
    pub fn move_deal_bytes_aside(&self, ino: u64) -> Result<(), StoreError> {
        let _copying = self.copying.hold(ino);
        if !self.needs_deal_copy(ino)? {
            return Ok(());
        }
        let content = self.content_path(ino);
        let back = |snapshot: &std::path::Path| std::fs::rename(snapshot, &content);
        let place = |snapshot: &std::path::Path| {
            std::fs::rename(&content, snapshot)?;
            let fresh =
                OpenOptions::new().write(true).create_new(true).mode(0o600).open(&content).and_then(|f| f.sync_all());
            if let Err(e) = fresh {
                let _ = std::fs::remove_file(&content);
                back(snapshot)?;
                return Err(e);
            }
            Ok(())
        };
        self.put_deal_bytes_aside(ino, place, |snapshot| Ok(back(snapshot)?))?;
        log::info!("inode {ino} is rewritten while its deal is in flight: its declared bytes are kept aside");
        Ok(())
    }

    /// Puts a deal's bytes in place with `place` (given their path) if the deal is still in
    /// flight, durably, under the deal lock: no writer can start before they are there for good.
    /// Returns whether they were put there. If their name cannot be made durable, `undo` puts
    /// things back as they were (no writer started yet).
    fn put_deal_bytes_aside(
        &self,
        ino: u64,
        place: impl FnOnce(&std::path::Path) -> std::io::Result<()>,
        undo: impl FnOnce(&std::path::Path) -> Result<(), StoreError>,
    ) -> Result<bool, StoreError> {
        let _deal = lock(&self.deal_lock);
        if !self.upload(ino)?.is_some_and(|r| r.state.deal_in_flight()) {
            return Ok(false);
        }
        let snapshot = self.deal_snapshot_path(ino);
        place(&snapshot)?;
        if let Err(e) = self.content_dir_handle.sync_all() {
            undo(&snapshot)?;
            return Err(e.into());
        }
        Ok(true)
    }

    /// Called in the batch that removes the last name of `ino`: decides what becomes of its
    /// upload. A deal in flight finishes with its bytes set aside (the content file itself is
    /// moved aside: handles still open read it by descriptor, and writers only exist once a copy
    /// is aside) and is then deleted from the chain. FIDs the file had on chain are deleted,
    /// unless another file uses them; when `heir` replaces it (a rename over it), only once the
    /// heir's upload is active, so a saved file is never absent from CESS.
    /// The caller holds the deal lock (`_deals`) until the batch is committed, so that no deal
    /// starts between the decision and the commit.
    pub fn retire(
        &self,
        _deals: &DealGuard<'_>,
        batch: &mut Batch,
        ino: u64,
        heir: Option<u64>,
    ) -> Result<(), StoreError> {
        // An unreadable record goes with its file (what it needed is not known: left on chain).
        let rec = self.upload(ino).or_else(|e| match e {
            StoreError::Corrupt { .. } => {
                log::error!("inode {ino} is removed with its unreadable upload record: its FIDs stay on chain");
                batch.remove_upload(ino);
                Ok(None)
            }
            e => Err(e),
        })?;
        let Some(mut rec) = rec else { return Ok(()) };
        let mut obsolete = std::mem::take(&mut rec.replaces);
        if rec.state.deal_in_flight() {
            let snapshot = self.deal_snapshot_path(ino);
            if !snapshot.exists() {
                std::fs::rename(self.content_path(ino), &snapshot)?;
                if let Err(e) = self.content_dir_handle.sync_all() {
                    std::fs::rename(&snapshot, self.content_path(ino))?;
                    return Err(e.into());
                }
            }
            rec.retired = true;
            rec.newer = None;
            batch.put_upload(ino, &rec);
        }
        let heir = match heir {
            Some(h) => {
                self.upload_after(batch, h)?.filter(|r| !r.retired && r.state != UploadState::Active).map(|r| (h, r))
            }
            None => None,
        };
        if !rec.state.deal_in_flight() {
            // A FID another record holds too (a commit's hidden inode, a file of equal bytes)
            // stays; an heir still names it, so that snapshots show the replaced file until the
            // heir is stored (the deleter then finds it in use).
            if let (UploadState::Active, Some(fid)) = (rec.state, rec.fid)
                && (heir.is_some() || self.fid_active_elsewhere(&fid, ino)?.is_none())
            {
                obsolete.push(fid);
            }
            batch.remove_upload(ino);
        }
        match heir {
            Some((h, mut r)) if !obsolete.is_empty() => {
                r.replaces.extend(obsolete);
                // Until the heir is stored, snapshots show the file it replaced under its name.
                if let Some(stored) = rec.stored_version() {
                    r.previous.get_or_insert(stored);
                }
                batch.put_upload(h, &r);
            }
            _ => obsolete.iter().for_each(|fid| batch.put_tombstone(fid)),
        }
        Ok(())
    }
}

/// Copies `from` to a new file `to` and makes it durable. The copy is written with direct I/O
/// where the file system takes it: gigabytes of dirty pages would otherwise join the journal's
/// ordered data (ext4), and every other file's fsync would wait for them.
fn copy_durably(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const PIECE: usize = 1 << 20;
    const ALIGN: usize = 4096;
    let src = std::fs::File::open(from)?;
    let len = src.metadata()?.len();
    let direct =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_DIRECT).open(to);
    let dst = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            std::fs::copy(from, to)?;
            return std::fs::File::open(to)?.sync_all();
        }
        Err(e) => return Err(e),
    };
    let mut raw = vec![0u8; PIECE + ALIGN];
    let start = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[start..start + PIECE];
    // Holes stay holes: only the data ranges are copied, each from its block's start.
    for (at, range_len) in crate::disk::data_ranges(&src, len)? {
        let (mut done, end) = (at - at % ALIGN as u64, at + range_len);
        while done < end {
            let want = PIECE.min((end - done) as usize);
            src.read_exact_at(&mut buf[..want], done)?;
            // Direct writes go in whole blocks: the last one is padded, and the length cut after.
            let padded = want.next_multiple_of(ALIGN);
            buf[want..padded].fill(0);
            dst.write_all_at(&buf[..padded], done)?;
            done += want as u64;
        }
    }
    dst.set_len(len)?;
    dst.sync_all()
}

/// A pin on a FID ([`Store::pin_fid`]), let go when dropped.
pub struct FidPin {
    store: std::sync::Arc<Store>,
    fid: Hash,
}

impl Drop for FidPin {
    fn drop(&mut self) {
        lock(&self.store.catalog).unpin(&self.fid);
    }
}

/// The deal lock, held ([`Store::deals`]).
pub struct DealGuard<'a> {
    _held: std::sync::MutexGuard<'a, ()>,
}

/// Removes `path`; absent is fine.
pub(super) fn remove_if_present(path: &std::path::Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_records_of_version_one_read_as_format_one_and_are_rewritten() {
        let mut rec = UploadRecord::staged(3);
        rec.fid = Some(Hash([4; 32]));
        let current = encode_upload(&rec);
        // A version 1 record: the same fields without the trailing format, previous, blob,
        // declaration and ranges.
        let old = [&[1u8][..], &current[1..current.len() - 6]].concat();
        let read = decode_upload(&old).unwrap();
        assert_eq!(read.format, crate::format::FORMAT_V1);
        assert_eq!(UploadRecord { format: rec.format, ..read }, rec);
        // Versions 2 (without previous, blob, declaration and ranges), 3 (without blob,
        // declaration and ranges), 4 (without declaration and ranges) and 5 (without ranges).
        let v2 = [&[2u8][..], &current[1..current.len() - 5]].concat();
        assert_eq!(decode_upload(&v2).unwrap(), rec);
        let v3 = [&[3u8][..], &current[1..current.len() - 4]].concat();
        assert_eq!(decode_upload(&v3).unwrap(), rec);
        let v4 = [&[4u8][..], &current[1..current.len() - 3]].concat();
        assert_eq!(decode_upload(&v4).unwrap(), rec);
        let v5 = [&[5u8][..], &current[1..current.len() - 2]].concat();
        assert_eq!(decode_upload(&v5).unwrap(), rec);
        // A version 3 record with a previous version: without its blob, nor the record's.
        let mut with_previous = rec.clone();
        with_previous.previous = Some(StoredVersion {
            fid: Hash([5; 32]),
            size: 9,
            seed: Some([6; 32]),
            format: 2,
            blob: None,
            extents: None,
        });
        let bytes = encode_upload(&with_previous);
        let v3 = [&[3u8][..], &bytes[1..bytes.len() - 5]].concat();
        assert_eq!(decode_upload(&v3).unwrap(), with_previous);
        // A sparse file's ranges, its own and its previous version's.
        let mut sparse = with_previous.clone();
        sparse.extents = Extents::new(vec![(4, 2)], 9);
        if let Some(p) = sparse.previous.as_mut() {
            p.extents = Extents::new(vec![(0, 1), (7, 2)], 9);
        }
        assert_eq!(decode_upload(&encode_upload(&sparse)).unwrap(), sparse);
        // A declaration on its way.
        let mut declaring = rec.clone();
        declaring.declaring = Some(crate::protocol::SentTx { hash: "0x01".into(), block: 7, until: 39 });
        assert_eq!(decode_upload(&encode_upload(&declaring)).unwrap(), declaring);
        assert_eq!(decode_upload(&current).unwrap(), rec);
        assert!(decode_upload(&[9, 1]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 0, 0).unwrap();
        store.tree.insert(key::upload(7), old).unwrap();
        store.migrate_upload_records().unwrap();
        let raw = store.tree.get(key::upload(7)).unwrap().unwrap();
        assert_eq!(raw[0], UPLOAD_RECORD_VERSION);
        assert_eq!(store.upload(7).unwrap().unwrap().format, crate::format::FORMAT_V1);
    }
}
