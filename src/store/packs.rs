//! Packs as the store keeps them (format/pack.rs): a pack is a hidden inode whose content file
//! is its segment. While open it takes blobs, each written and synced before the file's record
//! names it; sealed (when full, or once no file came for a moment) it gets its header and index
//! and is uploaded like any file, in the plaintext layout. When its upload is active the files
//! in it become active under its FID and the hidden inode goes: from then on the files' records
//! alone hold the pack's FID, which leaves the chain when the last of them (and the last kept
//! snapshot referring to it) does.

use std::collections::HashSet;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use serde::{Deserialize, Serialize};

use super::records::{decode, encode, key};
use super::{Batch, KeptSnapshot, PackedBlob, Store, StoreError, Timestamp, UploadRecord, UploadState};
use crate::format::{BlobKeys, BlobPlace, FORMAT_PLAIN, FRAGMENTS, Hash, NameKey, PackSpace, SEGMENT_SIZE, sealed_len};
use crate::sync::lock;

/// The meta record of the number the next pack takes.
const NEXT_PACK: &[u8] = b"next-pack";

/// A pack being filled or on its way to CESS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRecord {
    /// Its number (in its name on chain and its header).
    pub number: u64,
    /// Its room.
    pub space: PackSpace,
    /// Whether it was sealed (its upload record then exists).
    pub sealed: bool,
    /// When the last blob went in.
    pub last_add: Timestamp,
}

/// A tree to seal in a commit ([`Store::seal_commit`]).
pub struct CommitTree {
    /// Its record as a kept snapshot.
    pub kept: KeptSnapshot,
    /// The tree's root ([`crate::format::Root::encode`]).
    pub bytes: Vec<u8>,
    /// The directory blobs placed in the commit: id, offset, sealed length.
    pub dirs: Vec<(Hash, u32, u32)>,
    /// The commit's name on chain.
    pub name: Vec<u8>,
}

/// What [`Store::seal_commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Nothing: the tree did not change.
    Unchanged,
    /// The commit was sealed in this hidden inode.
    Sealed(u64),
    /// The tree does not fit a pack: nothing was written (the open pack was sealed alone).
    TooLarge,
}

/// The state of the packs, for `user.cess.packs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackSummary {
    /// The open pack's files and bytes, if one is being filled.
    pub filling: Option<(u32, u64)>,
    /// Packs sealed and on their way to CESS.
    pub uploading: usize,
    /// Those of them whose upload failed and waits to be tried again (for room in the
    /// territory, say): no round of the tree waits for them (a commit is taken back).
    pub waiting: usize,
    /// Stored packs holding files here.
    pub stored: usize,
    /// The sealed bytes of the files in them.
    pub live: u64,
    /// Stored packs less than half full.
    pub underfull: usize,
}

impl Store {
    /// The state of the packs.
    pub fn pack_summary(&self) -> Result<PackSummary, StoreError> {
        let mut summary = PackSummary::default();
        for (_, pack) in self.packs()? {
            match pack.sealed {
                true => summary.uploading += 1,
                false => summary.filling = Some((pack.space.blobs(), pack.space.used())),
            }
        }
        summary.waiting = self.waiting_packs()?.len();
        let half = SEGMENT_SIZE as u64 / 2;
        for (_, _, bytes) in self.stored_packs() {
            summary.stored += 1;
            summary.live += bytes;
            summary.underfull += usize::from(bytes < half);
        }
        Ok(summary)
    }

    /// The sealed packs (commits included) whose upload failed and waits to be tried again.
    pub fn waiting_packs(&self) -> Result<Vec<u64>, StoreError> {
        let mut waiting = Vec::new();
        for (ino, pack) in self.packs()? {
            if pack.sealed && self.upload(ino)?.is_some_and(|u| u.state == UploadState::Failed) {
                waiting.push(ino);
            }
        }
        Ok(waiting)
    }

    /// The pack hidden inode `ino` holds, if it holds one.
    pub fn pack(&self, ino: u64) -> Result<Option<PackRecord>, StoreError> {
        self.tree.get(key::pack(ino))?.map(|v| decode(&v, "pack")).transpose()
    }

    /// The packs not yet stored (hidden inode and record).
    pub fn packs(&self) -> Result<Vec<(u64, PackRecord)>, StoreError> {
        self.records_by_ino(key::PACK_PREFIX, "pack")
    }

    /// Puts the content of `ino`, whose upload record is `rec` (being encoded), in a pack: a
    /// blob of an equal content already packed, or a new blob in the open pack (sealing it and
    /// opening another when full). `false` if the file changed meanwhile (it is staged again).
    pub fn pack_file(
        &self,
        ino: u64,
        rec: &UploadRecord,
        keys: &BlobKeys,
        names: &NameKey,
    ) -> Result<bool, StoreError> {
        let content = std::fs::read(self.content_path(ino))?;
        if content.len() as u64 != rec.size {
            return Ok(false);
        }
        self.pack_content(ino, rec, rec.clone(), &content, keys, names, &HashSet::new())
    }

    /// The content of stored packed file `ino` if it is whole here and is its blob `id`, else
    /// `None` (fetch it from its pack). Read under the rule a reader uses: present before the
    /// read and still after it (an eviction records the content gone before it takes it away),
    /// and checked against its id, as restic checks the blobs it repacks.
    pub fn local_blob(&self, ino: u64, id: &Hash, keys: &BlobKeys) -> Result<Option<Vec<u8>>, StoreError> {
        if self.residency(ino)?.is_some() {
            return Ok(None);
        }
        crate::hooks::reached("merge-read");
        let content = std::fs::read(self.content_path(ino))?;
        let whole = self.residency(ino)?.is_none();
        Ok((whole && keys.id(&content) == *id).then_some(content))
    }

    /// Moves stored file `ino` (record `rec`, `content` its bytes) out of its pack, into the
    /// open one: its old pack's FID goes once the new pack is stored and nothing else refers to
    /// it. Equal contents in the packs `leaving` are not reused. `false` if the file changed, or
    /// if `content` is not its blob's (never packed: it would stand for the file's bytes).
    pub fn repack_file(
        &self,
        ino: u64,
        rec: &UploadRecord,
        content: &[u8],
        keys: &BlobKeys,
        names: &NameKey,
        leaving: &HashSet<Hash>,
    ) -> Result<bool, StoreError> {
        let Some(stored) = rec.stored_version().filter(|s| s.blob.is_some()) else { return Ok(false) };
        if stored.blob.is_some_and(|(id, _)| keys.id(content) != id) {
            log::error!("inode {ino}: the bytes read to pack it again are not its own: left in its pack");
            return Ok(false);
        }
        let mut next = rec.clone();
        next.replaces.push(stored.fid);
        next.previous = Some(stored);
        self.pack_content(ino, rec, next, content, keys, names, leaving)
    }

    /// Packs `content` for `ino`, whose record `rec` becomes `next` with its blob: one of an
    /// equal content already packed (not in `leaving`), or a new one in the open pack.
    #[allow(clippy::too_many_arguments)]
    fn pack_content(
        &self,
        ino: u64,
        rec: &UploadRecord,
        mut next: UploadRecord,
        content: &[u8],
        keys: &BlobKeys,
        names: &NameKey,
        leaving: &HashSet<Hash>,
    ) -> Result<bool, StoreError> {
        let _packer = lock(&self.packer);
        let id = keys.id(content);
        (next.seed, next.segments, next.updated_at) = (None, 1, Timestamp::now());
        let same = lock(&self.catalog).blob_holder(&id, ino);
        if let Some(other) = same.map(|o| self.upload(o)).transpose()?.flatten()
            && other.blob.is_some_and(|b| b.id == id)
            && matches!(other.state, UploadState::Active | UploadState::Packed)
            && other.fid.is_none_or(|fid| !leaving.contains(&fid))
        {
            (next.state, next.blob, next.fid) = (other.state, other.blob, other.fid);
            (next.territory, next.file_name) = (other.territory.clone(), other.file_name.clone());
            (next.tx, next.block, next.pushed, next.reported) =
                (other.tx.clone(), other.block, other.pushed, other.reported);
            let mut obsolete = Vec::new();
            if next.state == UploadState::Active {
                obsolete = take_replaced(&mut next);
                obsolete.retain(|f| Some(*f) != next.fid);
            }
            return self.commit_packed(ino, rec, &next, Batch::default(), obsolete);
        }
        let sealed = keys.seal(&id, content);
        let (pack, mut record, place) = loop {
            let (pack, mut record) = match self.packs()?.into_iter().find(|(_, p)| !p.sealed) {
                Some(open) => open,
                None => self.open_pack(names)?,
            };
            if let Some(place) = record.space.place(sealed.len()) {
                break (pack, record, place);
            }
            self.seal_pack(pack, &record, keys, None)?;
        };
        let file = self.open_content(pack)?;
        file.write_all_at(&sealed, u64::from(place.offset))?;
        file.sync_data()?;
        record.last_add = Timestamp::now();
        let mut b = Batch::default();
        b.0.insert(&key::pack(pack), encode(&record));
        b.0.insert(key::blob(pack, &id), encode(&place));
        (next.state, next.fid, next.blob) = (UploadState::Packed, None, Some(PackedBlob { pack, id, place }));
        self.commit_packed(ino, rec, &next, b, Vec::new())
    }

    /// The bytes the open pack has room for (a whole pack's if none is open).
    pub fn open_pack_room(&self) -> Result<u64, StoreError> {
        let open = self.packs()?.into_iter().find(|(_, p)| !p.sealed);
        Ok(SEGMENT_SIZE as u64 - open.map_or(PackSpace::default().used(), |(_, p)| p.space.used()))
    }

    /// How many stored packs hold files here.
    pub fn stored_pack_count(&self) -> usize {
        lock(&self.catalog).stored_pack_count()
    }

    /// Stored packs: FID, the files in them, and the sealed bytes those take.
    pub fn stored_packs(&self) -> Vec<(Hash, Vec<u64>, u64)> {
        lock(&self.catalog).stored_packs()
    }

    /// Commits `b` (the pack's room and the blob, kept either way) and tombstones for the
    /// versions `next` replaces, then swaps the record of `ino` from `rec` to `next` if it is
    /// still `rec` and not being written. (A tombstone whose FID the record still needs is
    /// dropped by the deleter.)
    fn commit_packed(
        &self,
        ino: u64,
        rec: &UploadRecord,
        next: &UploadRecord,
        mut b: Batch,
        obsolete: Vec<Hash>,
    ) -> Result<bool, StoreError> {
        let _deals = self.deals();
        obsolete.iter().for_each(|fid| b.put_tombstone(fid));
        self.commit(b)?;
        Ok(!self.is_writing(ino)? && self.swap_upload_locked(ino, rec, Some(next))?)
    }

    /// A new open pack: its hidden inode, its content file (a hole of one segment), its record.
    fn open_pack(&self, names: &NameKey) -> Result<(u64, PackRecord), StoreError> {
        // Numbers start anywhere, so that a restored tree or a second machine does not repeat them.
        let next = self.meta(NEXT_PACK)?.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(u64::from_be_bytes);
        let number = next.unwrap_or_else(|| rand::random::<u64>() >> 16);
        let ino = self.allocate_ino()?;
        self.create_content(ino)?.set_len(SEGMENT_SIZE as u64)?;
        self.sync_content_dir()?;
        let record = PackRecord { number, space: PackSpace::default(), sealed: false, last_add: Timestamp::now() };
        let mut b = Batch::default();
        b.put_inode(ino, &super::tree::hidden_inode(SEGMENT_SIZE as u64, &names.pack_name(number)));
        b.0.insert(&key::pack(ino), encode(&record));
        b.0.insert(key::meta(NEXT_PACK), (number + 1).to_be_bytes().to_vec());
        self.commit(b)?;
        Ok((ino, record))
    }

    /// Seals the open pack as a commit with the tree `build` makes for it: `build` gets the open
    /// pack (`None`: none is open), whose blobs the tree refers to as
    /// [`crate::format::THIS_COMMIT`], and a function that places a sealed directory blob in the
    /// commit and says where (`None`: no room); it says what to write (`None`: nothing, the tree
    /// did not change). No blob goes in and no pack is sealed meanwhile. A tree whose blobs do
    /// not fit the pack's room is [`CommitOutcome::TooLarge`], and the pack is then sealed alone
    /// if it holds blobs: the tree is to be written in a file of its own.
    pub fn seal_commit(
        &self,
        keys: &BlobKeys,
        names: &NameKey,
        build: impl FnOnce(
            Option<u64>,
            &mut dyn FnMut(&Hash, Vec<u8>) -> Option<u32>,
        ) -> Result<Option<CommitTree>, StoreError>,
    ) -> Result<CommitOutcome, StoreError> {
        let _packer = lock(&self.packer);
        let open = self.packs()?.into_iter().find(|(_, p)| !p.sealed);
        let mut space = open.as_ref().map_or_else(PackSpace::default, |(_, p)| p.space);
        let mut dirs: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut full = false;
        let mut place = |_: &Hash, sealed: Vec<u8>| match space.place(sealed.len()) {
            Some(at) => {
                dirs.push((at.offset, sealed));
                Some(at.offset)
            }
            None => {
                full = true;
                None
            }
        };
        let built = build(open.as_ref().map(|(ino, _)| *ino), &mut place)?;
        let tree = match built {
            Some(tree) if !full => tree,
            None if !full => return Ok(CommitOutcome::Unchanged),
            _ => return self.too_large(open, keys),
        };
        let Some(root_at) = space.place(sealed_len(tree.bytes.len())) else { return self.too_large(open, keys) };
        let (pack, record) = match open {
            Some(open) => open,
            None => self.open_pack(names)?,
        };
        let record = PackRecord { space, ..record };
        let file = self.open_content(pack)?;
        for (offset, sealed) in &dirs {
            file.write_all_at(sealed, u64::from(*offset))?;
        }
        file.write_all_at(&keys.seal_tree(record.number, &tree.bytes), u64::from(root_at.offset))?;
        crate::hooks::reached("commit-tree-written");
        self.seal_pack(pack, &record, keys, Some((root_at, &tree)))?;
        Ok(CommitOutcome::Sealed(pack))
    }

    /// A tree too large for the commit: the open pack, if it holds blobs, is sealed alone.
    fn too_large(&self, open: Option<(u64, PackRecord)>, keys: &BlobKeys) -> Result<CommitOutcome, StoreError> {
        if let Some((pack, record)) = open.filter(|(_, r)| r.space.blobs() > 0) {
            self.seal_pack(pack, &record, keys, None)?;
        }
        Ok(CommitOutcome::TooLarge)
    }

    /// Seals pack `pack` (with a commit's tree, written at its place): header and index written
    /// and synced, its upload queued.
    fn seal_pack(
        &self,
        pack: u64,
        record: &PackRecord,
        keys: &BlobKeys,
        commit: Option<(BlobPlace, &CommitTree)>,
    ) -> Result<(), StoreError> {
        let mut blobs = Vec::new();
        let mut b = Batch::default();
        for kv in self.tree.scan_prefix(key::blob_prefix(pack)) {
            let (k, v) = kv?;
            let id = Hash(k.get(9..41).and_then(|s| s.try_into().ok()).ok_or(StoreError::Corrupt { what: "blob" })?);
            blobs.push((id, decode::<BlobPlace>(&v, "blob")?));
            b.0.remove(k);
        }
        if let Some((_, tree)) = commit {
            blobs.extend(tree.dirs.iter().map(|&(id, offset, len)| (id, BlobPlace { offset, len })));
            b.put_dir_homes(pack, false, &tree.dirs);
        }
        let count = blobs.len();
        let space = self.seal_blobs(&self.open_content(pack)?, record, keys, commit.map(|(place, _)| place), blobs)?;
        let up = sealed_upload();
        b.0.insert(&key::pack(pack), encode(&PackRecord { sealed: true, space, ..record.clone() }));
        match commit {
            Some((_, tree)) => {
                super::tree::hidden_snapshot(&mut b, pack, SEGMENT_SIZE as u64, &tree.name, &tree.kept, &up, None);
            }
            None => b.put_upload(pack, &up),
        }
        self.commit(b)?;
        let fragments = space.quarters_used() + crate::format::PARITY_FRAGMENTS;
        let blobs = crate::words::count(count as u64, "blob");
        match commit {
            Some((_, tree)) => {
                self.kept_snapshots_changed();
                log::info!(
                    "commit {} sealed ({blobs} and the tree, inode {pack}, {fragments} fragments); on its way to CESS",
                    tree.kept.generation
                );
            }
            None => log::info!(
                "pack {} sealed ({blobs}, inode {pack}, {fragments} fragments); on its way to CESS",
                record.number
            ),
        }
        Ok(())
    }

    /// Writes the header and index of pack `record` holding `blobs` (and a commit's tree at
    /// `tree`) into `file`, durably. Returns its room as sealed.
    fn seal_blobs(
        &self,
        file: &std::fs::File,
        record: &PackRecord,
        keys: &BlobKeys,
        tree: Option<BlobPlace>,
        mut blobs: Vec<(Hash, BlobPlace)>,
    ) -> Result<PackSpace, StoreError> {
        blobs.sort_by_key(|(_, p)| p.offset);
        let mut space = record.space;
        let (header, offset, index) = crate::format::seal_index(keys, record.number, &blobs, &mut space, tree)
            .map_err(|_| StoreError::Corrupt { what: "pack room" })?;
        file.write_all_at(&header, 0)?;
        file.write_all_at(&index, offset as u64)?;
        file.sync_all()?;
        Ok(space)
    }

    /// Takes back commit `pack`, sealed but never declared (its upload failed before a storage
    /// order was sent: for want of room in the territory, say), once a newer round replaces its
    /// tree: a commit that waits would hold up every round, the one that frees room included.
    /// Its tree goes; the blobs of files in it stay where they are in a plain pack sealed again
    /// (a new index, so a new FID), which waits for room as any pack does; with none, it goes
    /// whole. `false` if it is not such a commit (any more).
    pub fn take_back_commit(&self, pack: u64, keys: &BlobKeys, names: &NameKey) -> Result<bool, StoreError> {
        let _packer = lock(&self.packer);
        let Some(record) = self.pack(pack)?.filter(|p| p.sealed) else { return Ok(false) };
        let Some(rec) = self.upload(pack)?.filter(|u| u.state == UploadState::Failed && u.declaring.is_none()) else {
            return Ok(false);
        };
        let Some(kept) =
            self.tree.get(key::snapshot(pack))?.map(|v| decode::<KeptSnapshot>(&v, "snapshot")).transpose()?
        else {
            return Ok(false);
        };
        let mut blobs: Vec<(Hash, BlobPlace)> = Vec::new();
        let members = lock(&self.catalog).pack_members(pack);
        for ino in members {
            if let Some(blob) = self.upload(ino)?.and_then(|u| u.blob).filter(|b| b.pack == pack)
                && !blobs.iter().any(|(id, _)| *id == blob.id)
            {
                blobs.push((blob.id, blob.place));
            }
        }
        // The new segment is written beside the old one, and takes its place once the records
        // say so (a crash in between leaves the old one: a pack too, with a tree nothing reads).
        let aside = self.content_path(pack).with_extension("retake");
        let mut space = PackSpace::default();
        if !blobs.is_empty() {
            space =
                PackSpace::holding(blobs.iter().map(|(_, p)| *p)).ok_or(StoreError::Corrupt { what: "pack room" })?;
            let old = self.open_content(pack)?;
            let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&aside)?;
            file.set_len(SEGMENT_SIZE as u64)?;
            for (_, place) in &blobs {
                let mut sealed = vec![0; place.len as usize];
                old.read_exact_at(&mut sealed, u64::from(place.offset))?;
                file.write_all_at(&sealed, u64::from(place.offset))?;
            }
            let record = PackRecord { space, ..record.clone() };
            space = self.seal_blobs(&file, &record, keys, None, blobs.clone())?;
        }
        let deals = self.deals();
        if self.upload(pack)?.as_ref() != Some(&rec) {
            super::outbox::remove_if_present(&aside)?;
            return Ok(false);
        }
        let mut b = Batch::default();
        self.forget_snapshot(&mut b, pack, &kept)?;
        if blobs.is_empty() {
            b.remove_upload(pack);
            b.remove_inode(pack);
            b.put_residency(pack, None);
            b.0.remove(&key::pack(pack));
        } else {
            b.put_upload(pack, &sealed_upload());
            b.put_inode(pack, &super::tree::hidden_inode(SEGMENT_SIZE as u64, &names.pack_name(record.number)));
            b.0.insert(&key::pack(pack), encode(&PackRecord { space, ..record.clone() }));
        }
        self.commit(b)?;
        self.kept_snapshots_changed();
        drop(deals);
        match blobs.is_empty() {
            true => self.remove_content(pack)?,
            false => {
                std::fs::rename(&aside, self.content_path(pack))?;
                self.content_dir_handle.sync_all()?;
            }
        }
        log::info!(
            "commit {} (inode {pack}) was never declared and a newer round replaces its tree: taken back{}",
            kept.generation,
            match blobs.len() {
                0 => String::new(),
                n => format!(", its {} sealed again as pack {}", crate::words::count(n as u64, "blob"), record.number),
            }
        );
        Ok(true)
    }

    /// Seals the open pack if no file went in for `quiet`.
    pub fn seal_quiet_pack(&self, quiet: std::time::Duration, keys: &BlobKeys) -> Result<(), StoreError> {
        let _packer = lock(&self.packer);
        let Some((pack, record)) = self.packs()?.into_iter().find(|(_, p)| !p.sealed) else { return Ok(()) };
        let idle = std::time::SystemTime::now().duration_since(record.last_add.into()).unwrap_or_default();
        if record.space.blobs() > 0 && idle >= quiet {
            self.seal_pack(pack, &record, keys, None)?;
        }
        Ok(())
    }

    /// Pack `pack` is stored, as its record `rec` says: the files in it become active under its
    /// FID (the versions they replace leave the chain) and its hidden inode goes. With no file
    /// left in it, the pack leaves the chain too (unless a kept snapshot refers to it). A
    /// commit's hidden inode stays, as the kept snapshot it is, and leaves with it.
    /// Returns how many files became active (`None`: a commit finished before).
    pub fn finish_pack(&self, pack: u64, rec: &UploadRecord) -> Result<Option<usize>, StoreError> {
        let _records = self.kept_records();
        let _packer = lock(&self.packer);
        let Some(fid) = rec.fid.filter(|_| rec.state == UploadState::Active) else { return Ok(None) };
        let commit = self.tree.get(key::snapshot(pack))?.is_some();
        if commit && self.pack(pack)?.is_none() {
            return Ok(None);
        }
        let members = lock(&self.catalog).pack_members(pack);
        let deals = self.deals();
        let mut live = 0;
        for ino in members {
            let Some(old) = self.upload(ino)? else { continue };
            if old.state != UploadState::Packed || old.blob.is_none_or(|blob| blob.pack != pack) {
                continue;
            }
            let mut up = old.clone();
            (up.state, up.fid, up.territory, up.file_name) =
                (UploadState::Active, Some(fid), rec.territory.clone(), rec.file_name.clone());
            (up.tx, up.block, up.pushed, up.reported) = (rec.tx.clone(), rec.block, FRAGMENTS as u8, FRAGMENTS as u8);
            up.updated_at = Timestamp::now();
            let mut b = Batch::default();
            for obsolete in take_replaced(&mut up).iter().filter(|f| **f != fid) {
                b.put_tombstone(obsolete);
            }
            self.commit(b)?;
            // Changed meanwhile (a new version staged): that version goes its own way.
            if self.swap_upload_locked(ino, &old, Some(&up))? {
                live += 1;
            }
        }
        let mut b = Batch::default();
        b.0.remove(&key::pack(pack));
        // A commit's tree that refers to its own blobs refers to its FID, known now.
        let kept = self.tree.get(key::snapshot(pack))?.map(|v| decode::<KeptSnapshot>(&v, "snapshot")).transpose()?;
        if let Some(mut kept) = kept.filter(|k| k.fids.contains(&crate::format::THIS_COMMIT)) {
            kept.fids.iter_mut().filter(|f| **f == crate::format::THIS_COMMIT).for_each(|f| *f = fid);
            b.0.insert(&key::snapshot(pack), encode(&kept));
        }
        if !commit {
            if live == 0 {
                b.put_tombstone(&fid);
            }
            b.remove_upload(pack);
            b.remove_inode(pack);
            b.put_residency(pack, None);
        }
        self.commit(b)?;
        if commit {
            self.kept_snapshots_changed();
        }
        drop(deals);
        self.forget_placements(&fid)?;
        if !commit {
            self.remove_content(pack)?;
        }
        Ok(Some(live))
    }
}

/// The upload record of a pack just sealed.
fn sealed_upload() -> UploadRecord {
    let mut up = UploadRecord::staged(1);
    (up.format, up.size) = (FORMAT_PLAIN, SEGMENT_SIZE as u64);
    up
}

/// The FIDs a record that just became active replaced (to delete), taken from it, and its
/// previous version forgotten.
fn take_replaced(up: &mut UploadRecord) -> Vec<Hash> {
    up.previous = None;
    std::mem::take(&mut up.replaces)
}
