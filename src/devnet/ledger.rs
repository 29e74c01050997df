//! The devnet's chain state, in its own sled database, with the semantics of the CESS pallets the
//! client uses (FileBank, StorageHandler, Sminer; PROTOCOL.md §3): the same checks in the same
//! order and the same error names. Every successful extrinsic is a new block.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::format::{FRAGMENT_SIZE, FRAGMENTS, Hash, MAX_SEGMENTS, SegmentManifest};
use crate::protocol::{
    AccountId, ChainError, CompleteInfo, DealInfo, FileInfo, FragmentInfo, HeldFile, MinerInfo, SegmentInfo,
    TerritoryInfo, TerritoryState, TxReceipt, UserBrief, charged_space,
};

/// Blocks in a day (6 s blocks).
pub const ONE_DAY: u32 = 14_400;
const GIB: u128 = 1 << 30;

/// What a miner is, as Sminer keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MinerRecord {
    endpoint: Option<String>,
    state: String,
    idle_space: u128,
    lock_space: u128,
}

/// Something that happened on the devnet chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// `FileBank.UploadDeclaration`.
    UploadDeclaration {
        /// Signer.
        operator: AccountId,
        /// Owner.
        owner: AccountId,
        /// The FID.
        deal_hash: Hash,
    },
    /// `FileBank.TransferReport`.
    TransferReport {
        /// Reporting miner.
        acc: AccountId,
        /// The FID.
        deal_hash: Hash,
    },
    /// `FileBank.StorageCompleted`.
    StorageCompleted {
        /// The FID.
        file_hash: Hash,
    },
    /// `FileBank.DeleteFile`.
    DeleteFile {
        /// Signer.
        operator: AccountId,
        /// Owner.
        owner: AccountId,
        /// The FID.
        file_hash: Hash,
    },
    /// `Utility.ItemCompleted`: an item of a batch went through.
    ItemCompleted,
    /// `Utility.ItemFailed`: an item of a batch was refused.
    ItemFailed {
        /// Why.
        error: ChainError,
    },
    /// `Utility.BatchCompleted`.
    BatchCompleted,
    /// `Utility.BatchCompletedWithErrors`.
    BatchCompletedWithErrors,
}

/// The devnet ledger.
pub struct Ledger {
    tree: sled::Tree,
    _db: sled::Db,
    extrinsic: Mutex<()>,
    dir: std::path::PathBuf,
    deleted: tokio::sync::broadcast::Sender<Hash>,
}

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![tag];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// The key of one entry of `UserHoldFileList[owner]`: (territory, fid).
fn hold_key(owner: &AccountId, fid: &Hash, territory: &[u8]) -> Vec<u8> {
    key(b'h', &[&owner.0, &fid.0, territory])
}

/// A hold's value: the file's segment count, and where the hold comes in the list (the block
/// it was made in, then its place in that block). The runtime pushes each hold onto the end of
/// `UserHoldFileList`, so the list is in completion order; a hold without a place (ledgers
/// before this) comes first.
fn hold_value(segments: usize, block: u32, place: u32) -> Vec<u8> {
    let at = (u64::from(block) << 32) | u64::from(place);
    [&(segments as u32).to_le_bytes()[..], &at.to_be_bytes()].concat()
}

fn storage(e: sled::Error) -> ChainError {
    ChainError::Unreachable(format!("devnet ledger storage: {e}"))
}

fn file_bank(error: &str) -> ChainError {
    ChainError::dispatch("FileBank", error)
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Ledger, sled::Error> {
        let db = sled::Config::new().path(dir).cache_capacity(16 << 20).open()?;
        let (deleted, _) = tokio::sync::broadcast::channel(1024);
        Ok(Ledger {
            tree: db.open_tree("ledger")?,
            _db: db,
            extrinsic: Mutex::new(()),
            dir: dir.to_path_buf(),
            deleted,
        })
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, ChainError> {
        match self.tree.get(k).map_err(storage)? {
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(|e| ChainError::Decode(e.to_string())),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&self, batch: &mut sled::Batch, k: &[u8], v: &T) {
        batch.insert(k, postcard::to_stdvec(v).expect("ledger records serialize"));
    }

    /// The current block number.
    pub fn block(&self) -> u32 {
        self.get::<u32>(b"block").ok().flatten().unwrap_or(0)
    }

    /// Commits one extrinsic: its changes, its events, a new block. Returns the receipt.
    fn seal(&self, mut batch: sled::Batch, what: &str, events: Vec<Event>) -> Result<TxReceipt, ChainError> {
        // sled refuses everything after a failed write: a nearly full disk refuses the block
        // instead, and the ledger goes on once there is room.
        if crate::disk::available(&self.dir).is_ok_and(|free| free < 1 << 20) {
            return Err(ChainError::Unreachable(format!(
                "the disk holding the devnet ledger {} is full",
                self.dir.display()
            )));
        }
        let block = self.block() + 1;
        self.put(&mut batch, b"block", &block);
        for (i, e) in events.into_iter().enumerate() {
            self.put(&mut batch, &key(b'e', &[&block.to_be_bytes(), &(i as u32).to_be_bytes()]), &e);
        }
        self.tree.apply_batch(batch).map_err(storage)?;
        self.tree.flush().map_err(storage)?;
        let tx = crate::format::sha256(format!("{block}:{what}").as_bytes());
        Ok(TxReceipt { tx_hash: format!("0x{}", tx.to_hex()), block })
    }

    /// The FIDs whose file leaves the chain from now on (its last owner deleted it): the
    /// nodes let go of their fragments.
    pub fn deletions(&self) -> tokio::sync::broadcast::Receiver<Hash> {
        self.deleted.subscribe()
    }

    /// Every event so far, with its block.
    pub fn events(&self) -> Vec<(u32, Event)> {
        self.tree
            .scan_prefix([b'e'])
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| {
                let block = u32::from_be_bytes(k[1..5].try_into().ok()?);
                Some((block, postcard::from_bytes(&v).ok()?))
            })
            .collect()
    }

    // ── StorageHandler ───────────────────────────────────────────────────────────────────

    /// Every territory of `owner`: (name, record).
    pub fn territories(&self, owner: &AccountId) -> Result<Vec<(Vec<u8>, TerritoryInfo)>, ChainError> {
        let prefix = key(b't', &[&owner.0]);
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(storage)?;
            let t = postcard::from_bytes(&v).map_err(|e| ChainError::Decode(format!("a territory record: {e}")))?;
            out.push((k[prefix.len()..].to_vec(), t));
        }
        Ok(out)
    }

    /// `StorageHandler.Territory[(owner, name)]`.
    pub fn territory(&self, owner: &AccountId, name: &[u8]) -> Result<Option<TerritoryInfo>, ChainError> {
        self.get(&key(b't', &[&owner.0, name]))
    }

    /// `mint_territory(gib_count, name, days)`: a new territory of `gib` GiB for `days` days.
    pub fn mint_territory(&self, owner: &AccountId, name: &[u8], gib: u32, days: u32) -> Result<TxReceipt, ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        if days < 30 {
            return Err(ChainError::dispatch("StorageHandler", "BoundariesNotMet"));
        }
        if name.len() > 63 {
            return Err(ChainError::dispatch("StorageHandler", "BoundedVecError"));
        }
        if self.territory(owner, name)?.is_some() {
            return Err(ChainError::dispatch("StorageHandler", "PurchasedSpace"));
        }
        let space = gib as u128 * GIB;
        let info = TerritoryInfo {
            total_space: space,
            used_space: 0,
            locked_space: 0,
            remaining_space: space,
            deadline: self.block() + days * ONE_DAY,
            state: TerritoryState::Active,
        };
        let mut b = sled::Batch::default();
        self.put(&mut b, &key(b't', &[&owner.0, name]), &info);
        self.seal(b, "mint_territory", Vec::new())
    }

    /// `StorageHandler::expanding_territory`: `gib` more GiB for the days left.
    pub fn expand_territory(&self, owner: &AccountId, name: &[u8], gib: u32) -> Result<TxReceipt, ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        let Some(mut info) = self.territory(owner, name)? else {
            return Err(ChainError::dispatch("StorageHandler", "NotHaveTerritory"));
        };
        if info.state != TerritoryState::Active {
            return Err(ChainError::dispatch("StorageHandler", "NotActive"));
        }
        let space = gib as u128 * GIB;
        info.total_space += space;
        info.remaining_space += space;
        let mut b = sled::Batch::default();
        self.put(&mut b, &key(b't', &[&owner.0, name]), &info);
        self.seal(b, "expanding_territory", Vec::new())
    }

    // ── Sminer ───────────────────────────────────────────────────────────────────────────

    /// Registers (or updates) a positive miner with `idle_space` bytes at `endpoint`.
    pub fn register_miner(&self, account: &AccountId, endpoint: &str, idle_space: u128) -> Result<(), ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        let k = key(b'm', &[&account.0]);
        let mut rec: MinerRecord = self.get(&k)?.unwrap_or(MinerRecord {
            endpoint: None,
            state: "positive".into(),
            idle_space,
            lock_space: 0,
        });
        rec.endpoint = Some(endpoint.to_string());
        let mut b = sled::Batch::default();
        self.put(&mut b, &k, &rec);
        self.seal(b, "update_endpoint", Vec::new()).map(|_| ())
    }

    /// Every miner (`Sminer.AllMiner` with `MinerItems`).
    pub fn miners(&self) -> Result<Vec<MinerInfo>, ChainError> {
        self.tree
            .scan_prefix([b'm'])
            .map(|kv| {
                let (k, v) = kv.map_err(storage)?;
                let rec: MinerRecord = postcard::from_bytes(&v).map_err(|e| ChainError::Decode(e.to_string()))?;
                let acc: [u8; 32] = k
                    .get(1..33)
                    .and_then(|a| a.try_into().ok())
                    .ok_or_else(|| ChainError::Decode("a miner key of the wrong length".into()))?;
                Ok(MinerInfo {
                    account: AccountId(acc),
                    endpoint: rec.endpoint,
                    state: rec.state,
                    idle_space: rec.idle_space,
                })
            })
            .collect()
    }

    // ── FileBank ─────────────────────────────────────────────────────────────────────────

    /// `FileBank.File[fid]`.
    pub fn file(&self, fid: &Hash) -> Result<Option<FileInfo>, ChainError> {
        self.get(&key(b'f', &[&fid.0]))
    }

    /// `FileBank.UserHoldFileList[owner]`.
    pub fn held_files(&self, owner: &AccountId) -> Result<Vec<HeldFile>, ChainError> {
        let prefix = key(b'h', &[&owner.0]);
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(storage)?;
            let rest = &k[prefix.len()..];
            let fid: [u8; 32] = rest
                .get(..32)
                .and_then(|f| f.try_into().ok())
                .ok_or_else(|| ChainError::Decode("a hold key of the wrong length".into()))?;
            let territory = rest[32..].to_vec();
            // A hold keeps the file's segment count (ledgers before it: read from the file).
            let segments = match v.get(..4).and_then(|n| <[u8; 4]>::try_from(n).ok()) {
                Some(n) => u32::from_le_bytes(n) as usize,
                None => self.file(&Hash(fid))?.map_or(0, |f| f.segments.len()),
            };
            let at = v.get(4..12).and_then(|at| <[u8; 8]>::try_from(at).ok()).map_or(0, u64::from_be_bytes);
            out.push((at, HeldFile { fid: Hash(fid), territory, charged: charged_space(segments) }));
        }
        out.sort_by_key(|(at, _)| *at);
        Ok(out.into_iter().map(|(_, held)| held).collect())
    }

    /// Stores `count` active one-segment files of random FIDs for `owner` in `territory`, in one
    /// block, as genesis storage would hold them: a devnet that starts as the chain of an account
    /// with many files (to try finding a tree among them). Their fragments are listed on `miners`
    /// in turn but held by none, and nothing is charged for them. Done once per ledger.
    pub fn preload_files(
        &self,
        owner: &AccountId,
        territory: &[u8],
        miners: &[AccountId],
        count: usize,
    ) -> Result<(), ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        if count == 0 || miners.is_empty() || self.tree.contains_key(b"preloaded").map_err(storage)? {
            return Ok(());
        }
        let block = self.block() + 1;
        let mut b = sled::Batch::default();
        for i in 0..count {
            let fid = Hash(rand::random());
            let segment = SegmentInfo {
                hash: Hash(rand::random()),
                fragments: (0..FRAGMENTS)
                    .map(|j| FragmentInfo {
                        hash: Hash(rand::random()),
                        avail: true,
                        miner: miners[(i + j) % miners.len()],
                    })
                    .collect(),
            };
            let user = UserBrief {
                user: *owner,
                file_name: format!("preloaded-{i:07}.bin").into_bytes(),
                territory_name: territory.to_vec(),
            };
            let file = FileInfo {
                segments: vec![segment],
                owners: vec![user],
                file_size: 1 << 20,
                completion: block,
                active: true,
            };
            self.put(&mut b, &key(b'f', &[&fid.0]), &file);
            b.insert(hold_key(owner, &fid, territory), hold_value(1, block, i as u32));
        }
        b.insert(&b"preloaded"[..], &count.to_le_bytes()[..]);
        self.seal(b, &format!("preload {count} files"), Vec::new())?;
        Ok(())
    }

    /// `FileBank.DealMap[fid]`.
    pub fn deal(&self, fid: &Hash) -> Result<Option<DealInfo>, ChainError> {
        self.get(&key(b'd', &[&fid.0]))
    }

    /// The charge of a file of `segments` segments in its territory, after the territory checks
    /// of `upload_declaration`.
    fn usable_territory(&self, user: &UserBrief, need: u128) -> Result<TerritoryInfo, ChainError> {
        let t = self
            .territory(&user.user, &user.territory_name)?
            .ok_or_else(|| ChainError::dispatch("StorageHandler", "NotHaveTerritory"))?;
        if t.state != TerritoryState::Active {
            return Err(ChainError::dispatch("StorageHandler", "NotActive"));
        }
        if t.deadline <= self.block() {
            return Err(file_bank("Expired"));
        }
        // Strictly greater: a territory can never be filled to the last byte.
        if t.remaining_space <= need {
            return Err(file_bank("InsufficientAvailableSpace"));
        }
        Ok(t)
    }

    /// `upload_declaration(file_hash, deal_info, user_brief, file_size)`.
    pub fn upload_declaration(
        &self,
        origin: &AccountId,
        fid: &Hash,
        segments: &[SegmentManifest],
        user: &UserBrief,
        file_size: u128,
    ) -> Result<TxReceipt, ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        if origin != &user.user {
            return Err(file_bank("NoPermission"));
        }
        if segments.is_empty() || segments.len() > MAX_SEGMENTS || user.territory_name.len() > 63 {
            return Err(file_bank("BoundedVecError"));
        }
        // check_file_spec: 12 fragments per segment, and a name of 3 to 63 bytes.
        if segments.iter().any(|s| s.fragments.len() != FRAGMENTS) || !(3..=63).contains(&user.file_name.len()) {
            return Err(file_bank("SpecError"));
        }
        let need = charged_space(segments.len());
        let mut t = self.usable_territory(user, need)?;
        let tkey = key(b't', &[&user.user.0, &user.territory_name]);
        let mut b = sled::Batch::default();
        let events = vec![Event::UploadDeclaration { operator: *origin, owner: user.user, deal_hash: *fid }];
        if let Some(mut file) = self.file(fid)? {
            // Fly upload: the content is already stored; this user becomes an owner, once per
            // territory (add_user_hold_fileslice refuses a second hold of one).
            let hold = hold_key(&user.user, fid, &user.territory_name);
            if self.tree.contains_key(&hold).map_err(storage)? {
                return Err(file_bank("Existed"));
            }
            t.remaining_space -= need;
            t.used_space += need;
            file.owners.push(user.clone());
            self.put(&mut b, &key(b'f', &[&fid.0]), &file);
            b.insert(hold, hold_value(segments.len(), self.block() + 1, 0));
        } else {
            // As the runtime does, an existing deal is overwritten and the space locked again:
            // clients must look DealMap up first.
            t.remaining_space -= need;
            t.locked_space += need;
            let deal =
                DealInfo { file_size, segments: segments.to_vec(), user: user.clone(), complete_list: Vec::new() };
            self.put(&mut b, &key(b'd', &[&fid.0]), &deal);
        }
        self.put(&mut b, &tkey, &t);
        self.seal(b, &format!("upload_declaration {fid}"), events)
    }

    /// `transfer_report(index, deal_hash)`, sent by a miner holding column `index - 1`.
    pub fn transfer_report(&self, miner: &AccountId, index: u8, fid: &Hash) -> Result<TxReceipt, ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        if !(1..=FRAGMENTS as u8).contains(&index) {
            return Err(file_bank("SpecError"));
        }
        let mkey = key(b'm', &[&miner.0]);
        let mut m: MinerRecord = self.get(&mkey)?.ok_or_else(|| file_bank("MinerStateError"))?;
        if m.state != "positive" {
            return Err(file_bank("MinerStateError"));
        }
        let dkey = key(b'd', &[&fid.0]);
        let mut deal: DealInfo = self.get(&dkey)?.ok_or_else(|| file_bank("NonExistent"))?;
        if deal.complete_list.iter().any(|c| c.index == index || c.miner == *miner) {
            return Err(file_bank("Existed"));
        }
        let column = (FRAGMENT_SIZE * deal.segments.len()) as u128;
        if m.idle_space < column {
            return Err(file_bank("Overflow"));
        }
        m.idle_space -= column;
        m.lock_space += column;
        deal.complete_list.push(CompleteInfo { index, miner: *miner });
        let mut events = vec![Event::TransferReport { acc: *miner, deal_hash: *fid }];
        let mut b = sled::Batch::default();
        self.put(&mut b, &mkey, &m);
        if deal.complete_list.len() == FRAGMENTS {
            let block = self.block() + 1;
            let miner_of = |j: usize| {
                deal.complete_list.iter().find(|c| c.index as usize == j + 1).map(|c| c.miner).expect("12 reports")
            };
            let file = FileInfo {
                segments: deal
                    .segments
                    .iter()
                    .map(|s| SegmentInfo {
                        hash: s.hash,
                        fragments: (0..FRAGMENTS)
                            .map(|j| FragmentInfo { hash: s.fragments[j], avail: true, miner: miner_of(j) })
                            .collect(),
                    })
                    .collect(),
                owners: vec![deal.user.clone()],
                file_size: deal.file_size,
                completion: block,
                active: true,
            };
            let need = charged_space(deal.segments.len());
            let tkey = key(b't', &[&deal.user.user.0, &deal.user.territory_name]);
            if let Some(mut t) = self.get::<TerritoryInfo>(&tkey)? {
                t.locked_space = t.locked_space.saturating_sub(need);
                t.used_space += need;
                self.put(&mut b, &tkey, &t);
            }
            self.put(&mut b, &key(b'f', &[&fid.0]), &file);
            b.insert(
                hold_key(&deal.user.user, fid, &deal.user.territory_name),
                hold_value(deal.segments.len(), block, 0),
            );
            b.remove(dkey);
            events.push(Event::StorageCompleted { file_hash: *fid });
        } else {
            self.put(&mut b, &dkey, &deal);
        }
        self.seal(b, &format!("transfer_report {index} {fid} {miner}"), events)
    }

    /// `delete_file(owner, file_hash)`.
    pub fn delete_file(&self, origin: &AccountId, owner: &AccountId, fid: &Hash) -> Result<TxReceipt, ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        let (b, event) = self.deletion(origin, owner, fid)?;
        let receipt = self.seal(b, &format!("delete_file {fid}"), vec![event])?;
        self.announce_gone(fid)?;
        Ok(receipt)
    }

    /// `Utility.force_batch` of `delete_file(owner, file_hash)` for each of `fids`, in one
    /// block: each item applied on its own (one refused does not stop the others), its
    /// `ItemCompleted` or `ItemFailed` event in order, then `BatchCompleted` or
    /// `BatchCompletedWithErrors`. (Items are applied one by one so that each sees the one
    /// before: a crash of the devnet in the middle keeps the items before it.)
    pub fn delete_files(
        &self,
        origin: &AccountId,
        owner: &AccountId,
        fids: &[Hash],
    ) -> Result<crate::protocol::BatchReceipt, ChainError> {
        let _x = crate::sync::lock(&self.extrinsic);
        let mut events = Vec::new();
        let mut items = Vec::new();
        for fid in fids {
            match self.deletion(origin, owner, fid) {
                Ok((b, event)) => {
                    self.tree.apply_batch(b).map_err(storage)?;
                    events.extend([event, Event::ItemCompleted]);
                    items.push(Ok(()));
                }
                Err(e @ ChainError::Dispatch { .. }) => {
                    events.push(Event::ItemFailed { error: e.clone() });
                    items.push(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        let failed = items.iter().any(Result::is_err);
        events.push(if failed { Event::BatchCompletedWithErrors } else { Event::BatchCompleted });
        let receipt = self.seal(sled::Batch::default(), &format!("force_batch of {} deletions", fids.len()), events)?;
        for (fid, _) in fids.iter().zip(&items).filter(|(_, item)| item.is_ok()) {
            self.announce_gone(fid)?;
        }
        Ok(crate::protocol::BatchReceipt { receipt, items })
    }

    /// Tells the nodes that `fid` left the chain, if its last owner deleted it.
    fn announce_gone(&self, fid: &Hash) -> Result<(), ChainError> {
        if self.get::<FileInfo>(&key(b'f', &[&fid.0]))?.is_none() {
            let _ = self.deleted.send(*fid);
        }
        Ok(())
    }

    /// The changes and the event of `delete_file(owner, file_hash)`, not applied.
    fn deletion(&self, origin: &AccountId, owner: &AccountId, fid: &Hash) -> Result<(sled::Batch, Event), ChainError> {
        if origin != owner {
            return Err(file_bank("NoPermission"));
        }
        let fkey = key(b'f', &[&fid.0]);
        let mut file: FileInfo = self.get(&fkey)?.ok_or_else(|| file_bank("NonExistent"))?;
        if !file.owners.iter().any(|u| u.user == *owner) {
            return Err(file_bank("NotOwner"));
        }
        // As the pallet does: every ownership of the account goes, each territory charged back,
        // and every hold of the FID leaves its list.
        let need = charged_space(file.segments.len());
        let mut b = sled::Batch::default();
        for brief in file.owners.iter().filter(|u| u.user == *owner) {
            let tkey = key(b't', &[&owner.0, &brief.territory_name]);
            if let Some(mut t) = self.get::<TerritoryInfo>(&tkey)? {
                t.used_space = t.used_space.saturating_sub(need);
                t.remaining_space += need;
                self.put(&mut b, &tkey, &t);
            }
        }
        file.owners.retain(|u| u.user != *owner);
        for hold in self.tree.scan_prefix(key(b'h', &[&owner.0, &fid.0])).keys() {
            b.remove(hold.map_err(storage)?);
        }
        if file.owners.is_empty() {
            for column in 0..FRAGMENTS {
                let miner = file.segments[0].fragments[column].miner;
                let mkey = key(b'm', &[&miner.0]);
                if let Some(mut m) = self.get::<MinerRecord>(&mkey)? {
                    let space = (FRAGMENT_SIZE * file.segments.len()) as u128;
                    m.lock_space = m.lock_space.saturating_sub(space);
                    m.idle_space += space;
                    self.put(&mut b, &mkey, &m);
                }
            }
            b.remove(fkey);
        } else {
            self.put(&mut b, &fkey, &file);
        }
        Ok((b, Event::DeleteFile { operator: *origin, owner: *owner, file_hash: *fid }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Signer;

    fn manifest(segments: usize) -> Vec<SegmentManifest> {
        (0..segments)
            .map(|s| SegmentManifest {
                hash: crate::format::sha256(&[s as u8]),
                fragments: std::array::from_fn(|j| crate::format::sha256(&[s as u8, j as u8])),
            })
            .collect()
    }

    /// A ledger where //Alice has 1 GiB territories `territories` and `count` miners are
    /// registered.
    fn ledger(territories: &[&[u8]], count: usize) -> (tempfile::TempDir, Ledger, AccountId, Vec<AccountId>) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let alice = Signer::from_uri("//Alice").unwrap().account();
        for t in territories {
            l.mint_territory(&alice, t, 1, 30).unwrap();
        }
        let miners: Vec<AccountId> =
            (1..=count).map(|i| Signer::from_uri(&format!("//Miner{i}")).unwrap().account()).collect();
        for m in &miners {
            l.register_miner(m, "http://127.0.0.1:1", 1 << 40).unwrap();
        }
        (dir, l, alice, miners)
    }

    #[test]
    fn declaration_reports_and_deletion_follow_the_pallet() {
        let (_dir, l, alice, miners) = ledger(&[b"t"], 13);
        let fid = crate::format::sha256(b"fid");
        let user = UserBrief { user: alice, file_name: b"name.txt".to_vec(), territory_name: b"t".to_vec() };
        // 1 GiB holds at most 10 segments: remaining must stay strictly above 96 MiB x segments.
        let err = l.upload_declaration(&alice, &fid, &manifest(11), &user, 1).unwrap_err();
        assert_eq!(err, ChainError::dispatch("FileBank", "InsufficientAvailableSpace"));
        let short = UserBrief { file_name: b"ab".to_vec(), ..user.clone() };
        assert_eq!(l.upload_declaration(&alice, &fid, &manifest(1), &short, 1).unwrap_err(), file_bank("SpecError"));
        assert_eq!(
            l.upload_declaration(&miners[0], &fid, &manifest(1), &user, 1).unwrap_err(),
            file_bank("NoPermission")
        );
        l.upload_declaration(&alice, &fid, &manifest(2), &user, 100).unwrap();
        assert_eq!(l.territory(&alice, b"t").unwrap().unwrap().locked_space, charged_space(2));
        for (j, m) in miners.iter().take(11).enumerate() {
            l.transfer_report(m, j as u8 + 1, &fid).unwrap();
        }
        assert_eq!(l.transfer_report(&miners[12], 1, &fid).unwrap_err(), file_bank("Existed"));
        assert_eq!(l.transfer_report(&miners[0], 12, &fid).unwrap_err(), file_bank("Existed"));
        assert!(l.file(&fid).unwrap().is_none());
        l.transfer_report(&miners[11], 12, &fid).unwrap();
        let file = l.file(&fid).unwrap().unwrap();
        assert_eq!(file.segments[1].fragments[3].miner, miners[3]);
        assert!(l.deal(&fid).unwrap().is_none());
        let t = l.territory(&alice, b"t").unwrap().unwrap();
        assert_eq!((t.locked_space, t.used_space), (0, charged_space(2)));
        assert!(l.events().iter().any(|(_, e)| *e == Event::StorageCompleted { file_hash: fid }));
        l.delete_file(&alice, &alice, &fid).unwrap();
        assert!(l.file(&fid).unwrap().is_none());
        assert_eq!(l.territory(&alice, b"t").unwrap().unwrap().used_space, 0);
        assert_eq!(l.delete_file(&alice, &alice, &fid).unwrap_err(), file_bank("NonExistent"));
    }

    #[test]
    fn holds_are_per_territory_and_deletion_drops_them_all() {
        let (_dir, l, alice, miners) = ledger(&[b"one", b"two"], 12);
        let fid = crate::format::sha256(b"fid");
        let one = UserBrief { user: alice, file_name: b"name.txt".to_vec(), territory_name: b"one".to_vec() };
        let two = UserBrief { territory_name: b"two".to_vec(), ..one.clone() };
        l.upload_declaration(&alice, &fid, &manifest(1), &one, 1).unwrap();
        for (j, m) in miners.iter().enumerate() {
            l.transfer_report(m, j as u8 + 1, &fid).unwrap();
        }
        assert_eq!(l.upload_declaration(&alice, &fid, &manifest(1), &one, 1).unwrap_err(), file_bank("Existed"));
        l.upload_declaration(&alice, &fid, &manifest(1), &two, 1).unwrap();
        let held: Vec<Vec<u8>> = l.held_files(&alice).unwrap().into_iter().map(|h| h.territory).collect();
        assert_eq!(held, vec![b"one".to_vec(), b"two".to_vec()]);
        l.delete_file(&alice, &alice, &fid).unwrap();
        assert!(l.held_files(&alice).unwrap().is_empty(), "every hold of the FID goes");
        assert!(l.file(&fid).unwrap().is_none());
        for t in [&b"one"[..], b"two"] {
            assert_eq!(l.territory(&alice, t).unwrap().unwrap().used_space, 0);
        }
    }

    /// As the runtime pushes each hold onto the end of `UserHoldFileList`, the list is in the
    /// order files completed, whatever their FIDs, and a deletion keeps the others' order.
    #[test]
    fn the_hold_list_is_in_completion_order() {
        let (_dir, l, alice, miners) = ledger(&[b"t"], 12);
        let user = UserBrief { user: alice, file_name: b"name.txt".to_vec(), territory_name: b"t".to_vec() };
        let fids: Vec<Hash> = (0..4u8).map(|i| crate::format::sha256(&[i])).collect();
        let mut order = fids.clone();
        order.sort_by_key(|f| std::cmp::Reverse(f.0));
        for fid in &order {
            l.upload_declaration(&alice, fid, &manifest(1), &user, 1).unwrap();
        }
        // Completed in another order than declared.
        order.swap(0, 3);
        for fid in &order {
            for (j, m) in miners.iter().enumerate() {
                l.transfer_report(m, j as u8 + 1, fid).unwrap();
            }
        }
        let held = |l: &Ledger| l.held_files(&alice).unwrap().into_iter().map(|h| h.fid).collect::<Vec<_>>();
        assert_eq!(held(&l), order);
        l.delete_file(&alice, &alice, &order[1]).unwrap();
        order.remove(1);
        assert_eq!(held(&l), order);
    }

    /// A batch of deletions is one block: each item on its own, a refused one not stopping the
    /// rest, each seeing the ones before (the territory is charged back for both).
    #[test]
    fn a_batch_of_deletions_is_one_block_and_reports_each_item() {
        let (_dir, l, alice, miners) = ledger(&[b"t"], 12);
        let user = UserBrief { user: alice, file_name: b"name.txt".to_vec(), territory_name: b"t".to_vec() };
        let fids: Vec<Hash> = (0..3u8).map(|i| crate::format::sha256(&[i])).collect();
        for fid in [fids[0], fids[2]] {
            l.upload_declaration(&alice, &fid, &manifest(1), &user, 1).unwrap();
            for (j, m) in miners.iter().enumerate() {
                l.transfer_report(m, j as u8 + 1, &fid).unwrap();
            }
        }
        assert_eq!(l.territory(&alice, b"t").unwrap().unwrap().used_space, charged_space(2));
        let block = l.block();
        let done = l.delete_files(&alice, &alice, &fids).unwrap();
        assert_eq!(done.receipt.block, block + 1, "one block");
        assert_eq!(done.items, vec![Ok(()), Err(file_bank("NonExistent")), Ok(())]);
        assert!(fids.iter().all(|f| l.file(f).unwrap().is_none()));
        assert_eq!(l.territory(&alice, b"t").unwrap().unwrap().used_space, 0);
        let events: Vec<Event> = l.events().into_iter().filter(|(b, _)| *b == block + 1).map(|(_, e)| e).collect();
        assert_eq!(events.len(), 6);
        assert_eq!(events[1], Event::ItemCompleted);
        assert_eq!(events[2], Event::ItemFailed { error: file_bank("NonExistent") });
        assert_eq!(events[5], Event::BatchCompletedWithErrors);
    }
}
