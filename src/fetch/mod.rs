//! Cold reads: a segment of an active file, rebuilt from the miners.
//!
//! The File record on chain names each fragment's hash and miner; Sminer (or the pinned miner
//! list) gives the miner's endpoint. The 4 data fragments are asked first, all at once (all-zero
//! ones are known without asking, and a data fragment whose tail is padding is fetched with a
//! Range for its used prefix only); every fragment is checked against its hash as it arrives,
//! and a missing, failing or lying miner is routed around with parity fragments until 4 good
//! ones are in; one arriving at less than half the rate of the others gets a parity fragment
//! asked for alongside it (on a slow link all arrive slowly, and nothing more is asked). A
//! request fails when it stops moving, never for taking long ([`StallRule`]). The segment is
//! then rebuilt, checked against its hash, and decrypted. With fewer than 4 good fragments the
//! read fails; it never returns wrong bytes.
//!
//! A segment of format version 3 (32 sealed blocks of 1 MiB) is fetched block by block instead,
//! by ranged reads of the data fragments, from the block its reader wants first; readers get
//! each block as soon as its tag opens it ([`Fetcher::range`]). A block whose miner fails or
//! lies is rebuilt from the same range of 4 other fragments; if that does not open either, the
//! segment is fetched whole as above.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use thiserror::Error;
use tokio::sync::OnceCell;

use crate::format::{
    BLOCK_CAPACITY, BLOCK_SIZE, BLOCKS, BlobKeys, BlobPlace, DATA_FRAGMENTS, DecodedSegment, Erasure, FRAGMENT_SIZE,
    FRAGMENTS, FileDecoder, FileKey, FormatError, Hash, Layout, MasterKey, Mode, SEGMENT_SIZE, Seed, SegmentManifest,
    ZERO_FRAGMENT_HASH, sha256,
};
use crate::metrics;
use crate::miner::{MinerClient, Moved, StallRule};
use crate::pace::Pace;
use crate::protocol::{AccountId, Chain, ChainError, FileInfo, Signer};
use crate::sync::lock;

/// Why a segment could not be read.
#[derive(Debug, Error, Clone)]
pub enum FetchError {
    /// The chain could not be asked.
    #[error("{0}")]
    Chain(#[from] ChainError),
    /// The file is not stored on CESS (any more).
    #[error("file {0} is not on the chain")]
    NotStored(Hash),
    /// The file was stored encrypted and this mount has no key.
    #[error("file {0} is encrypted and this mount has no encryption key")]
    NoKey(Hash),
    /// Not enough good fragments.
    #[error("segment {segment} of file {fid}: only {good} good fragments of the 4 needed ({detail})")]
    TooFewFragments {
        /// The FID.
        fid: Hash,
        /// The segment.
        segment: usize,
        /// Good fragments found.
        good: usize,
        /// What went wrong with the others.
        detail: String,
    },
    /// Every open file that wanted the segment closed before it came.
    #[error("the read was given up")]
    Abandoned,
    /// A bug (a decoding task that panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// The segment does not decode (wrong key, tampered data).
    #[error("segment {segment} of file {fid}: {error}")]
    Decode {
        /// The FID.
        fid: Hash,
        /// The segment.
        segment: usize,
        /// The format error (a wrong encryption key shows as a decryption failure).
        error: FormatError,
    },
}

/// How often the fragments of a read are compared, and how long a fragment is asked before it
/// can count as slow.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// A fragment arriving at less than this share of the median rate of its segment's fragments
/// is slow: another one is asked for as well. Fragments sharing one slow link arrive at the same
/// rate, so a slow link asks for nothing more; one slow miner among fast ones does.
const SLOW_SHARE: f64 = 0.5;

/// How long a fragment may bring no byte at all while others of its segment move.
const NO_BYTE_GRACE: Duration = Duration::from_secs(2);

/// The most fragments a block is rebuilt from: every 4 of 6 (15 tries) leaves out up to 2
/// fragments that lie.
const REBUILD_AT_MOST: usize = DATA_FRAGMENTS + 2;

/// Blocks of format version 3 asked at once for one segment: enough to keep a link of a few
/// hundred ms of round trip full with 1 MiB requests.
const BLOCKS_IN_FLIGHT: usize = 4;

/// How a stored file's segments are laid out, as its local record knows it.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// The file's size.
    pub size: u64,
    /// Its layout.
    pub mode: Mode,
    /// The seed its encrypted segments carry: a block of another file under the same key would
    /// open with that file's seed, so blocks are opened with this one only.
    pub seed: Option<Seed>,
}

/// One segment being fetched: its result for every reader, and (format version 3) the blocks
/// opened so far, for readers that want a part of it now.
#[derive(Default)]
struct InFlight {
    segment: OnceCell<Result<Arc<DecodedSegment>, FetchError>>,
    /// The block its first reader wants: fetched first, the others after it.
    from: usize,
    /// Plaintext of each block, once opened.
    blocks: Mutex<Vec<Option<Bytes>>>,
    /// Rung when a block opened, and when the segment is done.
    arrived: tokio::sync::Notify,
    /// The open files (inodes) whose reads wait for it, or that it is fetched ahead for.
    wanted_by: Mutex<std::collections::HashSet<u64>>,
    /// Set once the last of those closed: the fetch stops.
    abandoned: std::sync::atomic::AtomicBool,
    /// Rung when it is abandoned.
    cancel: tokio::sync::Notify,
    /// Whether someone runs it, or is about to ([`Fetcher::expect`], [`Fetcher::segment`]).
    driven: std::sync::atomic::AtomicBool,
}

/// A caller that waits for a fetch and asked for it for no open file: no close abandons it
/// meanwhile (each holds a number of its own among the inodes that want it).
struct Held<'a>(&'a InFlight, u64);

impl<'a> Held<'a> {
    fn new(slot: &'a InFlight) -> Held<'a> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // Above every inode number.
        let token = u64::MAX - NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&slot.wanted_by).insert(token);
        Held(slot, token)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        lock(&self.0.wanted_by).remove(&self.1);
    }
}

impl InFlight {
    /// Returns once the fetch is abandoned.
    async fn abandoned(&self) {
        loop {
            let cancel = self.cancel.notified();
            tokio::pin!(cancel);
            cancel.as_mut().enable();
            if self.abandoned.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            cancel.await;
        }
    }
}

type Slot = Arc<InFlight>;

/// Fetches and decodes segments of stored files.
pub struct Fetcher {
    chain: Arc<dyn Chain>,
    miners: MinerClient,
    master: Option<MasterKey>,
    /// Miner endpoints, refreshed every minute or when a miner is unknown.
    endpoints: Mutex<(Option<Instant>, HashMap<AccountId, String>)>,
    files: Mutex<HashMap<Hash, Arc<FileInfo>>>,
    /// Segments being fetched (or prefetched, waiting for their reader), so each is fetched once.
    inflight: Mutex<HashMap<(Hash, usize), Slot>>,
    /// Rebuilds a block from the same range of other fragments.
    erasure: Erasure,
}

impl Fetcher {
    /// A fetcher asking `chain` for file records, signing miner requests as `signer`, decrypting
    /// with `master` (plaintext if `None`).
    pub fn new(
        chain: Arc<dyn Chain>,
        signer: Signer,
        master: Option<MasterKey>,
        stall: StallRule,
        pace: Option<Arc<Pace>>,
    ) -> Fetcher {
        Fetcher {
            chain,
            miners: MinerClient::new(signer, stall, pace),
            master,
            endpoints: Mutex::new((None, HashMap::new())),
            files: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            erasure: Erasure::default(),
        }
    }

    async fn file(&self, fid: &Hash) -> Result<Arc<FileInfo>, FetchError> {
        if let Some(f) = lock(&self.files).get(fid) {
            return Ok(f.clone());
        }
        let file = self.chain.file(fid).await?.ok_or(FetchError::NotStored(*fid))?;
        if let Some(s) = file.segments.iter().position(|s| s.fragments.len() != FRAGMENTS) {
            let n = file.segments[s].fragments.len();
            return Err(
                ChainError::Decode(format!("file {fid}: segment {s} lists {n} fragments, not {FRAGMENTS}")).into()
            );
        }
        let file = Arc::new(file);
        let mut files = lock(&self.files);
        if files.len() > 256 {
            files.clear();
        }
        files.insert(*fid, file.clone());
        Ok(file)
    }

    async fn endpoint(&self, miner: &AccountId) -> Option<String> {
        {
            let known = lock(&self.endpoints);
            let fresh = known.0.is_some_and(|t| t.elapsed() < Duration::from_secs(60));
            if fresh && let Some(e) = known.1.get(miner) {
                return Some(e.clone());
            }
        }
        // A stale list, or a miner it does not know: ask the chain again.
        if let Ok(list) = self.chain.miners().await {
            let map = list.into_iter().filter_map(|m| Some((m.account, m.endpoint?))).collect();
            *lock(&self.endpoints) = (Some(Instant::now()), map);
        }
        lock(&self.endpoints).1.get(miner).cloned()
    }

    /// Fetches fragment `index` of `segment`: the used prefix of a padded data fragment (the rest
    /// is zeros), checked against its hash. `Err` says what went wrong, naming the miner.
    async fn fragment(
        &self,
        fid: &Hash,
        file: &FileInfo,
        segment: usize,
        index: usize,
        used: usize,
        moved: &Moved,
    ) -> Result<Bytes, String> {
        let info = &file.segments[segment].fragments[index];
        let endpoint =
            self.endpoint(&info.miner).await.ok_or_else(|| format!("miner {} has no endpoint", info.miner))?;
        let prefix =
            (index < DATA_FRAGMENTS).then(|| used.saturating_sub(index * FRAGMENT_SIZE)).filter(|&n| n < FRAGMENT_SIZE);
        let bytes = self
            .miners
            .get_fragment(&endpoint, fid, &info.hash, prefix.map(|n| 0..n), moved)
            .await
            .map_err(|e| format!("miner {}: {e}", info.miner))?;
        // A whole fragment is used as it arrived; a prefix is padded with the zeros it stands for.
        let data = match bytes.len() {
            FRAGMENT_SIZE => bytes,
            _ => {
                let mut padded = Vec::with_capacity(FRAGMENT_SIZE);
                padded.extend_from_slice(&bytes);
                padded.resize(FRAGMENT_SIZE, 0);
                Bytes::from(padded)
            }
        };
        let hashed = tokio::task::spawn_blocking(move || {
            let actual = sha256(&data);
            (data, actual)
        })
        .await;
        let data = hashed.map_err(|e| e.to_string())?;
        if data.1 != info.hash {
            log::warn!(
                "miner {} ({endpoint}) served fragment {index} of segment {segment} of {fid} with the wrong hash; using others",
                info.miner
            );
            metrics::WASTED_BYTES.add("down", moved.get());
            return Err(format!("miner {} served corrupt data", info.miner));
        }
        Ok(data.0)
    }

    /// The fetch of segment `segment` of `fid`, made now if none is under way, starting (format
    /// version 3) at block `from`.
    /// (An abandoned fetch is not joined: a new one takes its place.)
    fn slot(&self, fid: &Hash, segment: usize, from: usize) -> Slot {
        let mut inflight = lock(&self.inflight);
        let live = |s: &&Slot| !s.abandoned.load(std::sync::atomic::Ordering::Acquire);
        match inflight.get(&(*fid, segment)).filter(live) {
            Some(slot) => slot.clone(),
            None => {
                let slot = Arc::new(InFlight { from, ..InFlight::default() });
                inflight.insert((*fid, segment), slot.clone());
                slot
            }
        }
    }

    /// Marks segment `segment` of `fid` as wanted by open file `ino`, fetched from block `from`
    /// on (a reader's), so that [`Fetcher::range`] waits for the fetch [`Fetcher::segment`]
    /// makes. Returns whether no fetch of it was under way: the caller starts one.
    pub fn expect(&self, fid: &Hash, segment: usize, from: usize, ino: u64) -> bool {
        let slot = self.slot(fid, segment, from);
        let mut wanted = lock(&slot.wanted_by);
        let idle = !slot.driven.swap(true, std::sync::atomic::Ordering::AcqRel);
        wanted.insert(ino);
        idle
    }

    /// Open file `ino` of `fid` closed: the fetches only it wanted stop (a reader gone, a file
    /// manager that looked at the first bytes), so the link carries what is still read.
    pub fn abandon(&self, fid: &Hash, ino: u64) {
        let inflight = lock(&self.inflight);
        for slot in inflight.iter().filter(|((f, _), _)| f == fid).map(|(_, s)| s) {
            let mut wanted = lock(&slot.wanted_by);
            if wanted.remove(&ino) && wanted.is_empty() {
                slot.abandoned.store(true, std::sync::atomic::Ordering::Release);
                slot.cancel.notify_waiters();
            }
        }
    }

    /// Segment `segment` of file `fid`, decoded (its plaintext is [`DecodedSegment::data`]),
    /// fetched once however many readers ask at the same time. The result stays for late
    /// readers until [`Fetcher::forget`]. `abandonable`: for the open files that asked for it
    /// ([`Fetcher::expect`]), and stopped once they all closed; otherwise its caller waits for
    /// it, and no close stops it meanwhile.
    pub async fn segment(
        &self,
        fid: &Hash,
        stored: &Stored,
        segment: usize,
        abandonable: bool,
    ) -> Result<Arc<DecodedSegment>, FetchError> {
        let slot = self.slot(fid, segment, 0);
        slot.driven.store(true, std::sync::atomic::Ordering::Release);
        let _held = (!abandonable).then(|| Held::new(&slot));
        let result = slot
            .segment
            .get_or_init(|| async {
                let fetch = async {
                    let blocks = match (stored.mode, stored.seed) {
                        (Mode::Blocks, Some(seed)) => self.fetch_blocks(fid, stored, &seed, segment, &slot).await,
                        _ => None,
                    };
                    match blocks {
                        Some(decoded) => decoded,
                        None => self.fetch(fid, stored, segment).await,
                    }
                };
                tokio::select! {
                    fetched = fetch => fetched.map(Arc::new),
                    () = slot.abandoned() => Err(FetchError::Abandoned),
                }
            })
            .await
            .clone();
        slot.arrived.notify_waiters();
        if result.is_err() {
            // The record may be what was wrong (the file moved, a miner left): ask again next time.
            lock(&self.files).remove(fid);
        }
        result
    }

    /// Bytes `want` of the chunk of segment `segment` of `fid` from the fetch under way (see
    /// [`Fetcher::expect`]), as soon as the blocks holding them opened, and whether all of the
    /// segment is in (then [`Fetcher::segment`] has it at once); `None` if no fetch of it is
    /// under way.
    pub async fn range(
        &self,
        fid: &Hash,
        segment: usize,
        want: Range<usize>,
    ) -> Option<Result<(Vec<u8>, bool), FetchError>> {
        let slot = lock(&self.inflight).get(&(*fid, segment)).cloned()?;
        let first = want.start / BLOCK_CAPACITY;
        let last = want.end.saturating_sub(1) / BLOCK_CAPACITY;
        loop {
            let arrived = slot.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            // Blocks first: those that opened serve their readers even if the segment fails.
            {
                let blocks = lock(&slot.blocks);
                let got: Option<Vec<&Bytes>> = (first..=last).map(|j| blocks.get(j).and_then(Option::as_ref)).collect();
                if let Some(got) = got {
                    let joined: Vec<u8> = got.iter().flat_map(|b| b.iter().copied()).collect();
                    let from = want.start - first * BLOCK_CAPACITY;
                    let whole = blocks.iter().all(Option::is_some);
                    return joined.get(from..from + want.len()).map(|b| Ok((b.to_vec(), whole)));
                }
            }
            match slot.segment.get() {
                Some(Ok(decoded)) => return decoded.data().get(want.clone()).map(|b| Ok((b.to_vec(), true))),
                Some(Err(e)) => return Some(Err(e.clone())),
                None => {}
            }
            arrived.await;
        }
    }

    /// The keys of packed blobs and directory blobs, if this fetcher has a territory's key.
    pub fn blob_keys(&self) -> Option<&BlobKeys> {
        self.master.as_ref().and_then(|m| m.blobs())
    }

    /// The segment of pack (or commit) `fid`, fetched whole: the quarters it leaves empty are
    /// all zero, known without a fetch.
    pub async fn pack_segment(&self, fid: &Hash) -> Result<Vec<u8>, FetchError> {
        let pack = Stored { size: SEGMENT_SIZE as u64, mode: Mode::Plain, seed: None };
        // Forgotten whatever the outcome: a failure is not the answer to the next ask.
        let segment = self.segment(fid, &pack, 0, false).await;
        self.forget(fid, 0);
        Ok(segment?.data().to_vec())
    }

    /// The tree snapshot's bytes that commit `fid` holds, and the commit's segment.
    pub async fn commit_tree(&self, fid: &Hash) -> Result<(Vec<u8>, Vec<u8>), FetchError> {
        let keys = self.blob_keys().ok_or(FetchError::NoKey(*fid))?;
        let decode = |error| FetchError::Decode { fid: *fid, segment: 0, error };
        let segment = self.pack_segment(fid).await?;
        let tree = crate::format::read_tree(keys, &segment).map_err(decode)?;
        let tree = tree.ok_or_else(|| decode(FormatError::Pack("a pack without a tree".into())))?;
        Ok((tree, segment))
    }

    /// The plaintext of segment `segment` of snapshot or tree file `fid` of `segments` segments
    /// (format version 2: one sealed message per segment; bytes `segment * snapshot_len_of(1)`
    /// on of the file's plaintext), and the seed it carries.
    pub async fn tree_file_segment(
        &self,
        fid: &Hash,
        segments: usize,
        segment: usize,
    ) -> Result<(Vec<u8>, Option<[u8; 32]>), FetchError> {
        let size = crate::format::snapshot_len_of(segments);
        let stored = Stored { size, mode: Mode::Encrypted, seed: None };
        let fetched = self.segment(fid, &stored, segment, false).await;
        self.forget(fid, segment);
        let fetched = fetched?;
        Ok((fetched.data().to_vec(), fetched.seed()))
    }

    /// The content of blob `id` at `place` in pack `fid`: one ranged read of the data fragment
    /// holding it, opened with its key; if that miner fails or its bytes do not open, the pack's
    /// segment is rebuilt from any 4 of its fragments (each checked against its hash) and the
    /// blob cut from it. The blob's tag checks it either way: never wrong bytes.
    pub async fn blob(&self, fid: &Hash, id: &Hash, place: BlobPlace, size: u64) -> Result<Vec<u8>, FetchError> {
        let keys = self.blob_keys().ok_or(FetchError::NoKey(*fid))?;
        let decode = |error| FetchError::Decode { fid: *fid, segment: 0, error };
        let range =
            place.range().ok_or_else(|| decode(FormatError::Pack(format!("a blob outside the pack: {place:?}"))))?;
        let file = self.file(fid).await?;
        let (index, in_fragment) = place.in_fragment();
        if let Some(info) = file.segments.first().and_then(|s| s.fragments.get(index)) {
            let moved = Moved::default();
            let fetched = match self.endpoint(&info.miner).await {
                Some(endpoint) => self
                    .miners
                    .get_fragment(&endpoint, fid, &info.hash, Some(in_fragment), &moved)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no endpoint".to_string()),
            };
            match fetched.map(|bytes| keys.open(id, &bytes)) {
                Ok(Ok(content)) if content.len() as u64 == size => {
                    metrics::FETCHED_BYTES.add(content.len() as u64);
                    return Ok(content);
                }
                Ok(Ok(_)) => {
                    metrics::WASTED_BYTES.add("down", moved.get());
                    log::warn!("blob {id} of pack {fid} is not of the size the tree says; rebuilding the pack")
                }
                Ok(Err(e)) => {
                    metrics::WASTED_BYTES.add("down", moved.get());
                    log::warn!("miner {} served blob {id} of pack {fid} wrong ({e}); rebuilding the pack", info.miner)
                }
                Err(e) => log::debug!("blob {id} of pack {fid} from miner {}: {e}; rebuilding the pack", info.miner),
            }
        }
        let pack = Stored { size: SEGMENT_SIZE as u64, mode: Mode::Plain, seed: None };
        let segment = self.segment(fid, &pack, 0, false).await;
        self.forget(fid, 0);
        let content = keys.open(id, &segment?.data()[range]).map_err(decode)?;
        if content.len() as u64 != size {
            return Err(decode(FormatError::Pack(format!("blob {id} has {} bytes, not {size}", content.len()))));
        }
        Ok(content)
    }

    /// Whether a segment is being fetched (or was, and is not forgotten yet).
    pub fn busy(&self, fid: &Hash, segment: usize) -> bool {
        lock(&self.inflight).contains_key(&(*fid, segment))
    }

    /// Drops the result of a segment once its bytes are cached (a fetch not finished, one
    /// that took the place of an abandoned one, stays for its readers).
    pub fn forget(&self, fid: &Hash, segment: usize) {
        let mut inflight = lock(&self.inflight);
        if inflight.get(&(*fid, segment)).is_some_and(|s| s.segment.get().is_some()) {
            inflight.remove(&(*fid, segment));
        }
    }

    /// A segment of format version 3 fetched block by block, from its reader's block on, each
    /// published in `slot` as it opens; `None` if a block could not be had that way (the segment
    /// is then fetched whole).
    async fn fetch_blocks(
        &self,
        fid: &Hash,
        stored: &Stored,
        seed: &Seed,
        segment: usize,
        slot: &InFlight,
    ) -> Option<Result<DecodedSegment, FetchError>> {
        let file = match self.file(fid).await {
            Ok(file) => file,
            Err(e) => return Some(Err(e)),
        };
        let Some(master) = self.master.as_ref() else { return Some(Err(FetchError::NoKey(*fid))) };
        let decoder = FileDecoder::new(stored.size, Some(master), Mode::Blocks).ok()?;
        let (key, layout) = (decoder.key(seed)?, *decoder.layout());
        file.segments.get(segment)?;
        let count = layout.blocks(segment);
        lock(&slot.blocks).resize(count, None);
        let from = slot.from.min(count.saturating_sub(1));
        let missing: Vec<usize> = (from..count).chain(0..from).filter(|&j| lock(&slot.blocks)[j].is_none()).collect();
        let mut order = missing.into_iter();
        let at = BlockAt { fid, file: &file, segment, layout: &layout, key: &key, seed };
        let block = |j| self.block(&at, j);
        // The reader's block alone first: beside others it would share the link with them.
        let mut pending: FuturesUnordered<_> = order.by_ref().take(1).map(block).collect();
        while let Some((j, got)) = pending.next().await {
            match got {
                Ok(plain) => {
                    metrics::FETCHED_BYTES.add(plain.len() as u64);
                    lock(&slot.blocks)[j] = Some(plain);
                    slot.arrived.notify_waiters();
                }
                Err(e) => {
                    log::warn!("block {j} of segment {segment} of {fid}: {e}; fetching the segment whole");
                    return None;
                }
            }
            let room = BLOCKS_IN_FLIGHT - pending.len();
            pending.extend(order.by_ref().take(room).map(block));
        }
        let blocks = std::mem::take(&mut *lock(&slot.blocks));
        let mut data = Vec::with_capacity(count * BLOCK_CAPACITY);
        for b in blocks {
            data.extend_from_slice(&b?);
        }
        Some(Ok(DecodedSegment::of_bytes(data)))
    }

    /// Block `j` of a segment (format version 3): one ranged read of the data fragment holding
    /// it, opened with the file's key. If its miner fails or its bytes do not open, the block is
    /// rebuilt from the same range of 4 other fragments and opened again; if it sends nothing
    /// for NO_BYTE_GRACE, that rebuild runs alongside and the first to open wins. Never wrong
    /// bytes: the tag decides.
    async fn block(&self, at: &BlockAt<'_>, j: usize) -> (usize, Result<Bytes, String>) {
        let (fid, segment) = (at.fid, at.segment);
        let per_fragment = BLOCKS / DATA_FRAGMENTS;
        let (holder, start) = (j / per_fragment, (j % per_fragment) * BLOCK_SIZE);
        let range = start..start + at.layout.sealed_block_len(segment, j);
        let moved = Moved::default();
        let direct = async {
            let sealed = self.fragment_range(at, holder, range.clone(), &moved).await?;
            at.open(j, sealed).map_err(|e| {
                let miner = at.file.segments[segment].fragments[holder].miner;
                metrics::WASTED_BYTES.add("down", range.len() as u64);
                log::warn!("miner {miner} served block {j} of segment {segment} of {fid} wrong ({e}); using others");
                format!("miner {miner} served it wrong")
            })
        };
        tokio::pin!(direct);
        let asked = Instant::now();
        let quiet = async {
            while moved.get() > 0 || asked.elapsed() < NO_BYTE_GRACE {
                tokio::time::sleep(LOOK_EVERY).await;
            }
        };
        let e = tokio::select! {
            got = &mut direct => match got {
                Ok(plain) => return (j, Ok(plain)),
                Err(e) => e,
            },
            () = quiet => {
                log::info!("block {j} of segment {segment} of {fid}: no byte from its miner in {NO_BYTE_GRACE:?}; rebuilding it alongside");
                let rebuild = self.rebuild_block(at, j, holder, range.clone(), true);
                tokio::pin!(rebuild);
                let (first, other) = tokio::select! {
                    got = &mut direct => (got, None),
                    got = &mut rebuild => (got, Some(())),
                };
                return match (first, other) {
                    (Ok(plain), _) => (j, Ok(plain)),
                    (Err(_), None) => (j, rebuild.await),
                    // Its miner still sends nothing: the whole segment is fetched instead,
                    // checked fragment by fragment, rather than waiting out the stall window.
                    (Err(e), Some(())) if moved.get() == 0 => (j, Err(e)),
                    (Err(_), Some(())) => (j, direct.await),
                };
            }
        };
        log::info!("block {j} of segment {segment} of {fid}: {e}; rebuilding it from other fragments");
        (j, self.rebuild_block(at, j, holder, range.clone(), false).await.map_err(|again| format!("{e}; {again}")))
    }

    /// Block `j`, held in data fragment `holder` at `range`, rebuilt from the same range of 4
    /// other fragments and opened. A range cannot be checked against its fragment's hash, only
    /// the block's tag can: if the 4 do not open it, one more fragment is asked and every 4 of
    /// those in hand are tried, up to [`REBUILD_AT_MOST`] fragments (one miner lying among them
    /// is left out so). `hedge`: asked beside a quiet miner (its bytes count so).
    async fn rebuild_block(
        &self,
        at: &BlockAt<'_>,
        j: usize,
        holder: usize,
        range: Range<usize>,
        hedge: bool,
    ) -> Result<Bytes, String> {
        let info = &at.file.segments[at.segment];
        let mut others = (0..FRAGMENTS).filter(|&i| i != holder);
        let mut pending = FuturesUnordered::new();
        let ask = |i: usize| {
            let range = range.clone();
            async move {
                if info.fragments[i].hash == ZERO_FRAGMENT_HASH {
                    return (i, Ok(vec![0; range.len()]));
                }
                (i, self.fragment_range(at, i, range, &Moved::default()).await)
            }
        };
        // One spare beside the 4: a miner that never answers then holds nothing up (rebuilds
        // are rare, so the range it costs is too).
        pending.extend(others.by_ref().take(DATA_FRAGMENTS + 1).map(ask));
        // The ranges in hand, in the order they came.
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut last = String::from("no rebuild tried");
        while got.len() < REBUILD_AT_MOST {
            match pending.next().await {
                Some((i, Ok(bytes))) => {
                    if hedge {
                        metrics::HEDGED_BYTES.add(bytes.len() as u64);
                    }
                    got.push((i, bytes));
                    if got.len() < DATA_FRAGMENTS {
                        continue;
                    }
                    match self.open_rebuilt(at, j, holder, &got) {
                        Ok(plain) => return Ok(plain),
                        Err(e) => last = e,
                    }
                    // One of them lies: one more, and every 4 with it.
                    pending.extend(others.next().map(ask));
                }
                Some((_, Err(_))) => pending.extend(others.next().map(ask)),
                None => break,
            }
        }
        Err(if got.len() < DATA_FRAGMENTS { format!("only {} other fragments answered", got.len()) } else { last })
    }

    /// Block `j` of fragment `holder`, rebuilt from each 4 of the ranges `got` that take its
    /// newest (the others were tried before it came) until one opens.
    fn open_rebuilt(
        &self,
        at: &BlockAt<'_>,
        j: usize,
        holder: usize,
        got: &[(usize, Vec<u8>)],
    ) -> Result<Bytes, String> {
        let Some((newest, earlier)) = got.split_last() else { return Err("nothing to rebuild from".into()) };
        let mut last = String::from("no 4 fragments to rebuild from");
        let n = earlier.len();
        for a in 0..n {
            for b in a + 1..n {
                for c in b + 1..n {
                    let mut shards: [Option<Vec<u8>>; FRAGMENTS] = Default::default();
                    for (i, bytes) in [&earlier[a], &earlier[b], &earlier[c], newest] {
                        shards[*i] = Some(bytes.clone());
                    }
                    if !self.erasure.reconstruct_range(&mut shards) {
                        continue;
                    }
                    let Some(sealed) = shards[holder].take() else { continue };
                    match at.open(j, sealed) {
                        Ok(plain) => {
                            if got.len() > DATA_FRAGMENTS {
                                log::warn!(
                                    "block {j} of segment {} of {}: rebuilt leaving out fragments that did not authenticate",
                                    at.segment,
                                    at.fid
                                );
                            }
                            return Ok(plain);
                        }
                        Err(e) => last = format!("rebuilt: {e}"),
                    }
                }
            }
        }
        Err(last)
    }

    /// Bytes `range` of fragment `index` of the segment, as its miner serves them.
    async fn fragment_range(
        &self,
        at: &BlockAt<'_>,
        index: usize,
        range: Range<usize>,
        moved: &Moved,
    ) -> Result<Vec<u8>, String> {
        let info = &at.file.segments[at.segment].fragments[index];
        let endpoint =
            self.endpoint(&info.miner).await.ok_or_else(|| format!("miner {} has no endpoint", info.miner))?;
        let got = self.miners.get_fragment(&endpoint, at.fid, &info.hash, Some(range.clone()), moved).await;
        let miner = info.miner.to_string();
        match got {
            Ok(bytes) if bytes.len() == range.len() => {
                metrics::FRAGMENTS_FETCHED.add(&miner, 1);
                Ok(bytes.to_vec())
            }
            Ok(bytes) => {
                metrics::WASTED_BYTES.add("down", moved.get());
                metrics::FRAGMENT_FETCH_FAILURES.add(&miner, 1);
                Err(format!("miner {miner} sent {} bytes for a range of {}", bytes.len(), range.len()))
            }
            Err(e) => {
                metrics::FRAGMENT_FETCH_FAILURES.add(&miner, 1);
                Err(format!("miner {miner}: {e}"))
            }
        }
    }

    async fn fetch(&self, fid: &Hash, stored: &Stored, segment: usize) -> Result<DecodedSegment, FetchError> {
        let size = stored.size;
        let file = self.file(fid).await?;
        let decode_err = |error| FetchError::Decode { fid: *fid, segment, error };
        let key = match stored.mode {
            Mode::Plain => None,
            _ => Some(self.master.as_ref().ok_or(FetchError::NoKey(*fid))?),
        };
        let decoder = FileDecoder::new(size, key, stored.mode).map_err(decode_err)?;
        let seg = file.segments.get(segment).ok_or(FetchError::Decode {
            fid: *fid,
            segment,
            error: FormatError::Layout { segment, size },
        })?;
        let expected = SegmentManifest {
            hash: seg.hash,
            fragments: std::array::from_fn(|j| seg.fragments.get(j).map_or(Hash::default(), |f| f.hash)),
        };
        let used = decoder.layout().used_len(segment);
        let mut got: [Option<Bytes>; FRAGMENTS] = Default::default();
        let mut errors = Vec::new();
        // All-zero fragments are known; the others are asked for, data fragments first. Each
        // failure brings in the next fragment, and so does a fragment slower than its share
        // (see SLOW_SHARE), so a miner that hangs or trickles costs a look, not a stall.
        let mut good = (0..FRAGMENTS).filter(|&j| expected.fragments[j] == ZERO_FRAGMENT_HASH).count();
        let mut candidates = (0..FRAGMENTS).filter(|&j| expected.fragments[j] != ZERO_FRAGMENT_HASH);
        let rates = Rates::default();
        let ask = |j: usize, hedge: bool| {
            let want = if j < DATA_FRAGMENTS {
                used.saturating_sub(j * FRAGMENT_SIZE).clamp(1, FRAGMENT_SIZE)
            } else {
                FRAGMENT_SIZE
            };
            let (file, moved) = (&file, rates.asked(j, want));
            async move {
                let _hedge = hedge.then(|| Hedge(moved.clone()));
                let result = self.fragment(fid, file, segment, j, used, &moved).await;
                let miner = file.segments[segment].fragments[j].miner.to_string();
                match &result {
                    Ok(_) => metrics::FRAGMENTS_FETCHED.add(&miner, 1),
                    Err(_) => metrics::FRAGMENT_FETCH_FAILURES.add(&miner, 1),
                }
                (j, result)
            }
        };
        let mut asked: Vec<usize> = candidates.by_ref().take(DATA_FRAGMENTS - good).collect();
        let mut pending: FuturesUnordered<_> = asked.iter().map(|&j| ask(j, false)).collect();
        let mut ask_next = |asked: &mut Vec<usize>, hedge: bool| {
            let next = candidates.next();
            asked.extend(next);
            next.map(|j| ask(j, hedge))
        };
        while good < DATA_FRAGMENTS {
            match tokio::time::timeout(LOOK_EVERY, pending.next()).await {
                Ok(Some((j, result))) => {
                    asked.retain(|&a| a != j);
                    rates.finished(j, result.is_ok());
                    match result {
                        Ok(data) => {
                            got[j] = Some(data);
                            good += 1;
                        }
                        Err(e) => {
                            errors.push(format!("fragment {j}: {e}"));
                            pending.extend(ask_next(&mut asked, false));
                        }
                    }
                }
                Ok(None) => break,
                Err(_look) => {
                    let slow = rates.newly_slow();
                    if slow.is_empty() {
                        continue;
                    }
                    let miners: Vec<String> =
                        slow.iter().map(|&j| file.segments[segment].fragments[j].miner.to_string()).collect();
                    crate::log_limited!(
                        log::Level::Info,
                        &format!("slow miners {miners:?}"),
                        "segment {segment} of {fid}: {} slower than its share of the link; asking another",
                        miners.join(", ")
                    );
                    for _ in &slow {
                        pending.extend(ask_next(&mut asked, true));
                    }
                }
            }
        }
        drop(pending);
        if good < DATA_FRAGMENTS {
            log::error!("cannot read segment {segment} of {fid}: {}", errors.join("; "));
            return Err(FetchError::TooFewFragments { fid: *fid, segment, good, detail: errors.join("; ") });
        }
        let out = tokio::task::spawn_blocking(move || {
            let refs: [Option<&[u8]>; FRAGMENTS] = std::array::from_fn(|j| got[j].as_deref());
            decoder.decode_verified_segment(segment, &expected, &refs, Vec::new())
        })
        .await
        .map_err(|e| FetchError::Internal(format!("decoding segment {segment} of {fid}: {e}")))?;
        if let Ok(decoded) = &out {
            metrics::FETCHED_BYTES.add(decoded.data().len() as u64);
        }
        out.map_err(|error| {
            if let FormatError::Decrypt { .. } = error {
                log::error!(
                    "segment {segment} of {fid} does not decrypt: is this the encryption key it was stored with?"
                );
            }
            decode_err(error)
        })
    }
}

/// The blocks of one segment of a file of format version 3, and how they open.
struct BlockAt<'a> {
    fid: &'a Hash,
    file: &'a FileInfo,
    segment: usize,
    layout: &'a Layout,
    key: &'a FileKey,
    seed: &'a Seed,
}

impl BlockAt<'_> {
    /// The file bytes of block `j`, from its `sealed` bytes as a miner served them (or as they
    /// were rebuilt): they must carry the file's own seed and open under its key.
    fn open(&self, j: usize, mut sealed: Vec<u8>) -> Result<Bytes, String> {
        if sealed.get(4..36) != Some(&self.seed[..]) {
            return Err("its block is of another file".into());
        }
        let plain = self.key.open_block(self.layout, self.segment, j, &mut sealed).map_err(|e| e.to_string())?;
        Ok(Bytes::from(sealed).slice(plain))
    }
}

/// A fragment asked beside a slow one: the bytes it brings are counted as hedged, whether it is
/// used or given up once 4 others arrived.
struct Hedge(Moved);

impl Drop for Hedge {
    fn drop(&mut self) {
        metrics::HEDGED_BYTES.add(self.0.get());
    }
}

/// How fast each asked fragment of one segment arrives, as a share of its bytes a second from
/// its first byte (so a short ranged fragment compares with whole ones, and a far miner's round
/// trip is not taken for slowness).
#[derive(Default)]
struct Rates(Mutex<HashMap<usize, Rate>>);

struct Rate {
    asked: Instant,
    /// The bytes it brings.
    want: usize,
    moved: Moved,
    /// When its first bytes were seen (at a look, or when it arrived).
    first: Option<Instant>,
    /// Its share a second, once it arrived.
    finished: Option<f64>,
    /// Whether another fragment was asked because of it.
    hedged: bool,
}

impl Rate {
    /// The share of its bytes a second, since its first byte.
    fn now(&self) -> Option<f64> {
        self.finished.or_else(|| {
            let first = self.first?;
            Some(self.moved.get() as f64 / self.want.max(1) as f64 / first.elapsed().as_secs_f64().max(1e-3))
        })
    }
}

impl Rates {
    /// Fragment `j`, `want` bytes, is asked for now: its counter.
    fn asked(&self, j: usize, want: usize) -> Moved {
        let moved = Moved::default();
        let rate =
            Rate { asked: Instant::now(), want, moved: moved.clone(), first: None, finished: None, hedged: false };
        lock(&self.0).insert(j, rate);
        moved
    }

    /// Fragment `j` arrived, or failed (its rate then says nothing of the link).
    fn finished(&self, j: usize, arrived: bool) {
        let mut all = lock(&self.0);
        match all.get_mut(&j) {
            Some(r) if arrived => {
                let first = *r.first.get_or_insert(r.asked);
                r.finished = Some(1.0 / first.elapsed().as_secs_f64().max(1e-3));
            }
            _ => drop(all.remove(&j)),
        }
    }

    /// Fragments still coming and not yet hedged that are slow: no byte after NO_BYTE_GRACE
    /// while another fragment moves, or, once moving, less than SLOW_SHARE of the median rate
    /// of those moving. Each is marked hedged.
    fn newly_slow(&self) -> Vec<usize> {
        let mut all = lock(&self.0);
        for r in all.values_mut().filter(|r| r.first.is_none() && r.moved.get() > 0) {
            r.first = Some(Instant::now());
        }
        let mut rates: Vec<f64> = all.values().filter_map(Rate::now).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates.get(rates.len() / 2).copied();
        let mut slow = Vec::new();
        for (&j, r) in all.iter_mut().filter(|(_, r)| r.finished.is_none() && !r.hedged) {
            let is_slow = match (r.first, r.now(), median) {
                (None, _, Some(_)) => r.asked.elapsed() >= NO_BYTE_GRACE,
                (Some(first), Some(rate), Some(median)) => {
                    rates.len() >= 2 && first.elapsed() >= LOOK_EVERY && rate < median * SLOW_SHARE
                }
                _ => false,
            };
            if is_slow {
                r.hedged = true;
                slow.push(j);
            }
        }
        slow
    }
}
