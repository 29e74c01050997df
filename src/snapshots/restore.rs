//! Finding a tree's snapshots on chain and bringing the newest readable one back into an empty
//! data dir. Only what the chain offers is used: the account's `UserHoldFileList` and the owner
//! names of the `File` records, whose tag tells this key's snapshots from any other's.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::fetch::{FetchError, Fetcher};
use crate::format::{
    Dir, Hash, Home, NameKey, NameKind, Root, Snapshot, SnapshotError, StoredTree, THIS_COMMIT, TreeRef, refs_of,
};
use crate::protocol::{Chain, ChainError};
use crate::store::{Adopted, Restored, Store};

/// File records asked for at once while looking for snapshots, and such batches in flight.
const READ_BATCH: usize = 500;
const BATCHES_IN_FLIGHT: usize = 4;

/// A snapshot of this tree on chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Found {
    /// Its generation.
    pub generation: u64,
    /// Its FID.
    pub fid: Hash,
    /// Its segments.
    pub segments: usize,
    /// Whether the chain has it active (else its deal is still open).
    pub active: bool,
    /// The block at which it became active.
    pub completion: u32,
    /// Whether it is a commit (a pack holding the tree) rather than a snapshot file.
    pub commit: bool,
}

/// A file the account holds in the territory under a name of this tree's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// Its FID.
    pub fid: Hash,
    /// What the name says it is.
    pub kind: NameKind,
    /// A snapshot's generation or a pack's number.
    pub number: Option<u64>,
    /// Its segments.
    pub segments: usize,
    /// Whether the chain has it active.
    pub active: bool,
    /// The block at which it became active.
    pub completion: u32,
}

/// The snapshots of the tree of this account in `territory` named with `names`, newest first
/// (ties of generation: the larger FID first, the rule of docs/FORMAT.md).
pub async fn find(chain: &dyn Chain, territory: &[u8], names: &NameKey) -> Result<Vec<Found>, ChainError> {
    Finder::default().find(chain, territory, names).await
}

/// The snapshots among a tree's files `named`, newest first (ties of generation: the larger FID
/// first, the rule of docs/FORMAT.md).
pub fn snapshots_of(named: &[Named]) -> Vec<Found> {
    let mut found: Vec<Found> = named
        .iter()
        .filter(|n| n.kind.is_tree())
        .map(|n| Found {
            generation: n.number.unwrap_or_default(),
            fid: n.fid,
            segments: n.segments,
            active: n.active,
            completion: n.completion,
            commit: n.kind == NameKind::Commit,
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse((f.generation, f.fid.0)));
    found
}

/// Looks for a tree's files on chain again and again, reading each held file's record once: the
/// name an owner gave a FID and the block it became active at never change, so a FID is not
/// read again. Only snapshots are read each time (their deals become active).
#[derive(Default)]
pub struct Finder {
    known: std::sync::Mutex<HashMap<Hash, Option<Named>>>,
}

impl Finder {
    /// As [`find`], reading only the records of FIDs not seen before.
    pub async fn find(&self, chain: &dyn Chain, territory: &[u8], names: &NameKey) -> Result<Vec<Found>, ChainError> {
        Ok(snapshots_of(&self.named(chain, territory, names).await?))
    }

    /// Every file the account holds in `territory` under a name of `names`.
    pub async fn named(&self, chain: &dyn Chain, territory: &[u8], names: &NameKey) -> Result<Vec<Named>, ChainError> {
        let held: HashSet<Hash> = held_in(chain, territory).await?.into_iter().collect();
        let mut known = std::mem::take(&mut *crate::sync::lock(&self.known));
        known.retain(|fid, n| held.contains(fid) && n.is_none_or(|n| !n.kind.is_tree()));
        let unread: Vec<Hash> = held.into_iter().filter(|fid| !known.contains_key(fid)).collect();
        let failed = read_names(chain, &unread, territory, names, |fid, named, _| {
            known.insert(fid, named);
        })
        .await;
        let named = known.values().flatten().copied().collect();
        *crate::sync::lock(&self.known) = known;
        match failed {
            Err(e) => Err(e),
            Ok(()) => Ok(named),
        }
    }
}

/// The FIDs the account holds in `territory`, in the order the hold list has them: the order
/// they were stored in (the runtime pushes each new hold onto its end).
async fn held_in(chain: &dyn Chain, territory: &[u8]) -> Result<Vec<Hash>, ChainError> {
    let me = chain.account();
    Ok(chain.held_files(&me).await?.into_iter().filter(|h| h.territory == territory).map(|h| h.fid).collect())
}

/// Reads the `File` records of `fids`, several batches at once, and gives `each` what the name
/// of each one on chain says it is, and, for a file of this key held by this account alone, in
/// `territory` only, the block it became active at: its hold joined the list then. (A file
/// another account stored first, under another key or in plaintext, completed before this
/// account's hold of it was made.) Stops at the first failed read (what was read is given).
async fn read_names(
    chain: &dyn Chain,
    fids: &[Hash],
    territory: &[u8],
    names: &NameKey,
    mut each: impl FnMut(Hash, Option<Named>, Option<u32>),
) -> Result<(), ChainError> {
    let me = chain.account();
    let batches: Vec<Vec<Hash>> = fids.chunks(READ_BATCH).map(<[Hash]>::to_vec).collect();
    let mut reads = futures_util::stream::iter(batches)
        .map(|fids: Vec<Hash>| async move {
            let files = chain.files(&fids).await;
            (fids, files)
        })
        .buffer_unordered(BATCHES_IN_FLIGHT);
    while let Some((fids, files)) = reads.next().await {
        for (&fid, file) in fids.iter().zip(files?) {
            if let Some(file) = file {
                let named = named_of(&file, fid, &me, territory, names);
                let only_hold = file.owners.len() == 1 && file.held_by(&me, territory);
                let held_since = (named.is_some() && only_hold && file.active).then_some(file.completion);
                each(fid, named, held_since);
            }
        }
    }
    Ok(())
}

/// Records read first from the tail of the hold list; each read back reads twice as many, up to
/// [`BATCHES_IN_FLIGHT`] batches of [`READ_BATCH`].
const FIRST_TAIL: usize = 32;

/// A search for a tree's newest snapshot that reads the account's hold list from its tail. The
/// list is in completion order, and a root names the newest tree its writer had stored when it
/// wrote it (`Root::stored`): a newer tree was written later, so stored after that one, and is
/// read once the search has read back to it (docs/FORMAT.md, "Finding the newest tree").
pub struct TailSearch<'a> {
    chain: &'a dyn Chain,
    territory: Vec<u8>,
    names: &'a NameKey,
    /// The FIDs held in the territory, in completion order.
    held: Vec<Hash>,
    /// `held[unread..]` has been read.
    unread: usize,
    /// What the files read are, by their place in `held`.
    named: Vec<(usize, Named)>,
    /// How many records the next read back reads.
    batch: usize,
    /// The earliest block at which a file read joined the hold list, among the files whose
    /// block that is known of (of this key, held once, by this account, in this territory).
    earliest_hold: Option<u32>,
}

impl<'a> TailSearch<'a> {
    /// Reads the hold list, and no `File` record yet.
    pub async fn start(
        chain: &'a dyn Chain,
        territory: &[u8],
        names: &'a NameKey,
    ) -> Result<TailSearch<'a>, ChainError> {
        let held = held_in(chain, territory).await?;
        let unread = held.len();
        Ok(TailSearch {
            chain,
            territory: territory.to_vec(),
            names,
            held,
            unread,
            named: Vec::new(),
            batch: FIRST_TAIL,
            earliest_hold: None,
        })
    }

    /// Reads the records of the next files back from the tail. `false`: every one was read.
    pub async fn read_back(&mut self) -> Result<bool, ChainError> {
        if self.unread == 0 {
            return Ok(false);
        }
        let from = self.unread.saturating_sub(self.batch);
        self.read_range(from).await?;
        self.batch = (self.batch * 2).min(READ_BATCH * BATCHES_IN_FLIGHT);
        Ok(true)
    }

    /// Reads the records of every file not read yet.
    pub async fn read_all(&mut self) -> Result<(), ChainError> {
        self.read_range(0).await
    }

    /// Reads `held[from..unread]`.
    async fn read_range(&mut self, from: usize) -> Result<(), ChainError> {
        let places: HashMap<Hash, usize> = (from..self.unread).map(|i| (self.held[i], i)).collect();
        let mut read = Vec::new();
        let mut earliest = self.earliest_hold;
        read_names(self.chain, &self.held[from..self.unread], &self.territory, self.names, |fid, named, since| {
            read.extend(named.zip(places.get(&fid).copied()).map(|(n, at)| (at, n)));
            if let Some(since) = since {
                earliest = Some(earliest.map_or(since, |e| e.min(since)));
            }
        })
        .await?;
        self.named.extend(read);
        self.earliest_hold = earliest;
        self.unread = from;
        Ok(())
    }

    /// Whether every record was read.
    pub fn whole(&self) -> bool {
        self.unread == 0
    }

    /// Whether what was stored after tree `stored` was read: the tree is among the files read;
    /// or a file of this key read joined the hold list before the tree's storage order was
    /// declared (the list is in completion order, and a newer tree was stored after this one);
    /// or every file was read.
    pub fn reached(&self, stored: &StoredTree) -> bool {
        self.whole()
            || self.named.iter().any(|(_, n)| n.kind.is_tree() && n.number == Some(stored.generation))
            || stored.declared_at.zip(self.earliest_hold).is_some_and(|(declared, held)| held < declared)
    }

    /// The files read that are this tree's.
    pub fn named(&self) -> Vec<Named> {
        self.named.iter().map(|(_, n)| *n).collect()
    }

    /// The tree's snapshots among the files read, newest first.
    pub fn found(&self) -> Vec<Found> {
        snapshots_of(&self.named())
    }

    /// Logs how far back it read.
    pub fn log_reach(&self) {
        let (read, held) = (self.held.len() - self.unread, self.held.len());
        log::info!("looked for the tree in {read} of the {held} files the territory holds, from the newest");
    }
}

/// What the name `me` gave file `fid` in `territory` says it is, if it is a name of `names`.
fn named_of(
    file: &crate::protocol::FileInfo,
    fid: Hash,
    me: &crate::protocol::AccountId,
    territory: &[u8],
    names: &NameKey,
) -> Option<Named> {
    file.owners
        .iter()
        .filter(|o| o.user == *me && o.territory_name == territory)
        .find_map(|o| names.parse(&o.file_name))
        .map(|(kind, number)| Named {
            fid,
            kind,
            number,
            segments: file.segments.len(),
            active: file.active,
            completion: file.completion,
        })
}

/// Why a snapshot was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Its bytes are damaged or not a snapshot of this key: an older one may serve.
    #[error("{0}")]
    Damaged(String),
    /// It could not be fetched now (the chain or the miners): trying later may work, and an
    /// older snapshot would bring back an older tree.
    #[error("{0}")]
    Unavailable(FetchError),
    /// A file holding its directories is no longer on chain: a restore takes an older one; what
    /// it refers to is not known, so nothing may be deleted on its account.
    #[error("a file holding its directories is gone: {0}")]
    Lost(String),
}

/// A tree read from CESS.
pub struct ReadTree {
    /// The tree.
    pub snapshot: Snapshot,
    /// The seed its snapshot file's segments carry (`None`: a commit).
    pub seed: Option<[u8; 32]>,
    /// Where its directory blobs are (none for a whole snapshot).
    pub dirs: Vec<(Hash, Home)>,
    /// The newest tree its writer had stored when it wrote it (`Root::stored`; none for a
    /// whole snapshot).
    pub stored: Option<StoredTree>,
}

/// Reads snapshot `found` from CESS: a commit's or a snapshot file's tree, whole or in
/// directory blobs (format/tree.rs).
pub async fn read(fetcher: &Fetcher, found: &Found) -> Result<ReadTree, ReadError> {
    match open(fetcher, found).await? {
        Opened::Whole(tree) => Ok(*tree),
        Opened::Root { root, own, seed } => read_dirs(fetcher, &root, own).await.map(|t| ReadTree { seed, ..t }),
    }
}

/// A tree's file as fetched.
enum Opened {
    /// A whole snapshot, read.
    Whole(Box<ReadTree>),
    /// The root of a tree in directory blobs: its bytes, the file holding it (with what of it
    /// was fetched) and the seed of a tree file's segments.
    Root { root: Vec<u8>, own: std::sync::Arc<Held>, seed: Option<[u8; 32]> },
}

/// Fetches the file of snapshot `found`: a whole snapshot is read, a root is found.
async fn open(fetcher: &Fetcher, found: &Found) -> Result<Opened, ReadError> {
    let damaged = |e: SnapshotError| ReadError::Damaged(e.to_string());
    let whole = |bytes: &[u8], seed| {
        let snapshot = Snapshot::decode(bytes).map_err(damaged)?;
        Ok(Opened::Whole(Box::new(ReadTree { snapshot, seed, dirs: Vec::new(), stored: None })))
    };
    if found.commit {
        let (tree, segment) = fetcher.commit_tree(&found.fid).await.map_err(unreadable)?;
        if Root::is_root(&tree) {
            return Ok(Opened::Root { root: tree, own: Held::with_piece(found.fid, None, 0, segment), seed: None });
        }
        let snapshot = Snapshot::decode(&tree).map_err(damaged)?.resolve_commit(found.fid);
        return Ok(Opened::Whole(Box::new(ReadTree { snapshot, seed: None, dirs: Vec::new(), stored: None })));
    }
    // The first segment says whether the file is a tree file, and where its root is: only the
    // segments holding that are fetched now.
    let (first, seed) = fetcher.tree_file_segment(&found.fid, found.segments, 0).await.map_err(unreadable)?;
    if !Root::is_root(&first) {
        let mut bytes = first;
        for s in 1..found.segments {
            bytes.extend(fetcher.tree_file_segment(&found.fid, found.segments, s).await.map_err(unreadable)?.0);
        }
        return whole(&bytes, seed);
    }
    let keys = fetcher.blob_keys().ok_or(ReadError::Unavailable(FetchError::NoKey(found.fid)))?;
    let (id, place) = crate::format::tree_file_root_place(&first).map_err(damaged)?;
    let own = Held::with_piece(found.fid, Some(found.segments as u32), 0, first);
    let sealed = own.bytes(fetcher, place).await?;
    let root = crate::format::open_tree_file_root(keys, &id, &sealed).map_err(damaged)?;
    Ok(Opened::Root { root, own, seed })
}

/// The root directory of a tree in directory blobs, read to restore the tree lazily.
struct LazyStart {
    /// The root directory and its entries, as a snapshot (with the files holding them).
    snapshot: Snapshot,
    /// The root's subdirectories, still on CESS, and the hard-linked nodes among its entries.
    dir: crate::format::OneDir,
    /// The blobs read, and where each is.
    homes: Vec<(Hash, Home)>,
    /// The tree files holding its blobs.
    tree_files: Vec<(Hash, u32)>,
    /// Nodes in the whole tree.
    nodes: u64,
    /// The newest tree its writer had stored when it wrote it (newer trees were stored after
    /// that one).
    stored: Option<StoredTree>,
    /// Reads the rest, holding what it fetched already.
    loader: std::sync::Arc<super::load::DirLoader>,
}

/// Reads the root directory of the tree of `root` (held in `own`, as [`Opened::Root`]).
async fn start_lazily(
    fetcher: &std::sync::Arc<Fetcher>,
    names: &NameKey,
    root: &[u8],
    own: std::sync::Arc<Held>,
) -> Result<LazyStart, ReadError> {
    let root = Root::decode(root).map_err(|e| ReadError::Damaged(e.to_string()))?;
    if root.node.kind != crate::format::NodeKind::Dir {
        return Err(ReadError::Damaged("the tree's root is not a directory".into()));
    }
    let mut tree_files: Vec<(Hash, u32)> = root.files.iter().map(|f| (f.fid, f.segments)).collect();
    tree_files.extend(own.segments.map(|segments| (own.fid, segments)));
    let runtime = tokio::runtime::Handle::current();
    let loader = super::load::DirLoader::new(fetcher.clone(), names.clone(), runtime, &tree_files);
    let own_fid = own.fid;
    loader.keep(own);
    let mut start = root.dir;
    if start.fid == THIS_COMMIT {
        start.fid = own_fid;
    }
    let loaded = loader.read(&start).await?;
    let mut snapshot = loaded.dir.snapshot.clone();
    snapshot.nodes[0] = crate::format::Node { id: 1, ..root.node.clone() };
    (snapshot.generation, snapshot.writer, snapshot.written_at) = (root.generation, root.writer, root.written_at);
    let mut holders: Vec<Hash> =
        loaded.homes.iter().map(|(_, h)| h.0.fid).chain(tree_files.iter().map(|f| f.0)).collect();
    holders.sort();
    holders.dedup();
    holders.retain(|f| *f != own_fid);
    snapshot.holders = holders;
    let loader = std::sync::Arc::new(loader);
    Ok(LazyStart {
        snapshot,
        dir: loaded.dir,
        homes: loaded.homes,
        tree_files,
        nodes: root.nodes,
        stored: root.stored,
        loader,
    })
}

/// A fetch failure as a reason not to read a snapshot. Too few good fragments is no verdict on
/// the snapshot (miners down or away answer so too): it could not be fetched now, so a restore
/// does not take an older tree for it, nor the watch take it as referring to nothing.
fn unreadable(e: FetchError) -> ReadError {
    match e {
        FetchError::Decode { .. } => ReadError::Damaged(e.to_string()),
        e => ReadError::Unavailable(e),
    }
}

/// Reads the tree of `root` from its directory blobs. `own`: the file holding the root. The
/// blobs are read file by file, the file with the most of them wanted first, each piece of a
/// file fetched once.
async fn read_dirs(fetcher: &Fetcher, root: &[u8], own: std::sync::Arc<Held>) -> Result<ReadTree, ReadError> {
    let damaged = |e: SnapshotError| ReadError::Damaged(e.to_string());
    let own_fid = own.fid;
    let keys = fetcher.blob_keys().ok_or(ReadError::Unavailable(FetchError::NoKey(own_fid)))?;
    let root = Root::decode(root).map_err(damaged)?;
    let mut files: HashMap<Hash, u32> = root.files.iter().map(|f| (f.fid, f.segments)).collect();
    if let Some(segments) = own.segments {
        files.insert(own_fid, segments);
    }
    let mut start = root.dir;
    if start.fid == THIS_COMMIT {
        start.fid = own_fid;
    }
    let mut wanted: HashMap<Hash, Vec<TreeRef>> = HashMap::from([(start.fid, vec![start])]);
    let mut seen = HashSet::from([start.id]);
    let mut dirs = HashMap::new();
    let mut homes = Vec::new();
    // Kept until the tree is read: a later blob may refer to a file again.
    let mut fetched = HashMap::from([(own_fid, own)]);
    while let Some(holder) = wanted.iter().max_by_key(|(_, refs)| refs.len()).map(|(fid, _)| *fid) {
        let mut refs = wanted.remove(&holder).unwrap_or_default();
        let file = fetched.entry(holder).or_insert_with(|| Held::new(holder, files.get(&holder).copied())).clone();
        while let Some(r) = refs.pop() {
            let dir = file.open(fetcher, keys, &r).await?;
            for child in refs_of(&dir).into_iter().filter(|c| seen.insert(c.id)) {
                match child.fid == holder {
                    true => refs.push(child),
                    false => wanted.entry(child.fid).or_default().push(child),
                }
            }
            homes.push((r.id, (r, files.get(&holder).copied())));
            dirs.insert(r.id, dir);
        }
    }
    let holders = fetched.into_keys().filter(|fid| *fid != own_fid).collect();
    let snapshot = crate::format::assemble(&root, &dirs, holders).map_err(damaged)?;
    Ok(ReadTree { snapshot, seed: None, dirs: homes, stored: root.stored })
}

/// The most segments a tree file is read with: a tree of 10,000,000 files takes about 30.
const MAX_TREE_FILE_SEGMENTS: u32 = 64;

/// A CESS file holding directory blobs: a commit (one segment, fetched whole) or a tree file,
/// whose segments are fetched one by one as blobs in them are wanted. Each piece is kept
/// without the zeros that end it (a commit's segment is mostly zeros), put back where a blob
/// reaches them.
pub(super) struct Held {
    fid: Hash,
    /// A tree file's segments; `None`: a commit.
    segments: Option<u32>,
    /// Each piece's bytes once fetched: the commit's segment, or each segment of the tree file.
    pieces: Vec<tokio::sync::OnceCell<Vec<u8>>>,
    /// Bytes of the pieces fetched so far.
    size: std::sync::atomic::AtomicUsize,
}

impl Held {
    /// File `fid`: a tree file of `segments`, or a commit; nothing fetched yet. A count past
    /// [`MAX_TREE_FILE_SEGMENTS`] (a damaged root or record) reads as that many: blobs beyond
    /// are outside the file.
    pub(super) fn new(fid: Hash, segments: Option<u32>) -> std::sync::Arc<Held> {
        let count = segments.unwrap_or(1).clamp(1, MAX_TREE_FILE_SEGMENTS);
        let pieces = (0..count).map(|_| tokio::sync::OnceCell::new()).collect();
        std::sync::Arc::new(Held { fid, segments, pieces, size: Default::default() })
    }

    /// File `fid` as [`Held::new`], with its piece `index` fetched already as `bytes`.
    fn with_piece(fid: Hash, segments: Option<u32>, index: usize, bytes: Vec<u8>) -> std::sync::Arc<Held> {
        let held = Held::new(fid, segments);
        if let Some(piece) = held.pieces.get(index) {
            let bytes = trimmed(bytes);
            held.size.fetch_add(bytes.len(), std::sync::atomic::Ordering::Relaxed);
            let _ = piece.set(bytes);
        }
        held
    }

    /// Bytes of each piece: a tree file's segment's plaintext, or a commit's segment.
    fn piece_len(&self) -> usize {
        match self.segments {
            Some(_) => crate::format::snapshot_len_of(1) as usize,
            None => crate::format::SEGMENT_SIZE,
        }
    }

    /// Its FID.
    pub(super) fn fid(&self) -> Hash {
        self.fid
    }

    /// Bytes fetched so far, kept in memory.
    pub(super) fn size(&self) -> usize {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes `range` of the file, fetching the pieces they are in that are not here yet. A
    /// file the chain no longer holds is [`ReadError::Lost`].
    async fn bytes(&self, fetcher: &Fetcher, range: std::ops::Range<usize>) -> Result<Vec<u8>, ReadError> {
        let per = self.piece_len();
        if range.end > per * self.pieces.len() {
            return Err(ReadError::Damaged(format!("bytes {range:?} outside file {}", self.fid)));
        }
        let mut pieces = Vec::new();
        for index in range.start / per..range.end.div_ceil(per) {
            pieces.push(self.piece(fetcher, index).await?.as_slice());
        }
        Ok(cut(per, &pieces, range))
    }

    /// Piece `index`, fetched once.
    async fn piece(&self, fetcher: &Fetcher, index: usize) -> Result<&Vec<u8>, ReadError> {
        let gone = |e: FetchError| match e {
            FetchError::NotStored(_) => ReadError::Lost(e.to_string()),
            e => unreadable(e),
        };
        let cell = self.pieces.get(index).ok_or_else(|| ReadError::Damaged(format!("no piece {index}")))?;
        cell.get_or_try_init(|| async {
            let bytes = match self.segments {
                Some(segments) => fetcher.tree_file_segment(&self.fid, segments as usize, index).await.map_err(gone)?.0,
                None => fetcher.pack_segment(&self.fid).await.map_err(gone)?,
            };
            let bytes = trimmed(bytes);
            self.size.fetch_add(bytes.len(), std::sync::atomic::Ordering::Relaxed);
            Ok(bytes)
        })
        .await
    }

    /// Opens directory blob `r` in it (`r.fid` is this file), fetching what it needs.
    pub(super) async fn open(
        &self,
        fetcher: &Fetcher,
        keys: &crate::format::BlobKeys,
        r: &TreeRef,
    ) -> Result<Dir, ReadError> {
        let start = r.offset as usize;
        let sealed = self.bytes(fetcher, start..start.saturating_add(r.len as usize)).await?;
        let content = keys.open(&r.id, &sealed).map_err(|e| ReadError::Damaged(e.to_string()))?;
        Ok(Dir::decode(&content).map_err(|e| ReadError::Damaged(e.to_string()))?.resolved(r.fid))
    }
}

/// Bytes `range` of a file cut in pieces of `per` bytes, from `pieces`: those `range` reaches,
/// each without the zeros that end it.
fn cut(per: usize, pieces: &[&[u8]], range: std::ops::Range<usize>) -> Vec<u8> {
    let first = range.start / per;
    let mut out = Vec::with_capacity(range.len());
    for (i, piece) in pieces.iter().enumerate() {
        let at = (first + i) * per;
        let (from, to) = (range.start.max(at) - at, range.end.min(at + per) - at);
        let have = piece.get(from.min(piece.len())..to.min(piece.len())).unwrap_or_default();
        out.extend_from_slice(have);
        out.resize(out.len() + (to - from) - have.len(), 0);
    }
    out
}

/// `bytes` without the zeros that end them.
fn trimmed(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1));
    bytes.shrink_to_fit();
    bytes
}

/// What a restore did, for the person who asked for it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The generation restored.
    pub generation: u64,
    /// When it was written (Unix seconds).
    pub written_at: i64,
    /// What came back.
    pub restored: Restored,
    /// The newer generations that could not be read, and why.
    pub skipped: Vec<(u64, String)>,
    /// The nodes of the whole tree, if only its root directory came back yet (the rest is
    /// loaded in the background).
    pub loading: Option<u64>,
}

/// A snapshot read from CESS, with where it is.
struct ReadBack {
    found: Found,
    snapshot: Snapshot,
    seed: Option<[u8; 32]>,
}

/// The snapshot a restore brings back, read from CESS with the older ones of its lineage: all
/// the network part of a restore, before anything is written. A tree in directory blobs is
/// read only down to its root directory: the rest, and the older snapshots, are read after
/// the mount shows the root (snapshots/load.rs).
pub struct Chosen {
    newest: ReadBack,
    /// Where the newest tree's directory blobs read so far are.
    dirs: Vec<(Hash, Home)>,
    older: Vec<ReadBack>,
    skipped: Vec<(u64, String)>,
    /// The tree's root directory, if the tree is loaded lazily.
    lazy: Option<LazyStart>,
}

/// The newest snapshot of the tree that reads back, as `open` reads it, with the snapshots
/// newer than it that do not (generation, why). `open` also says the generation its writer had
/// stored when it wrote it, if it says. The hold list in `search` is read from its tail only as
/// far as it takes to know which is the newest: back to that generation, or whole.
async fn newest_settled<'a, T>(
    search: &mut TailSearch<'_>,
    mut open: impl FnMut(Found) -> BoxFuture<'a, Result<(T, Option<StoredTree>), ReadError>>,
) -> anyhow::Result<(Option<(Found, T)>, Vec<(u64, String)>)> {
    let mut skipped: Vec<(u64, String)> = Vec::new();
    let mut passed: HashSet<Hash> = HashSet::new();
    // Read while the search goes on: a newer snapshot may turn up further back.
    let mut opened: HashMap<Hash, (T, Option<StoredTree>)> = HashMap::new();
    loop {
        let found = search.found();
        let Some(f) = found.iter().find(|f| f.active && !passed.contains(&f.fid)) else {
            if search.read_back().await? {
                continue;
            }
            break;
        };
        let read = match opened.remove(&f.fid) {
            Some(read) => Ok(read),
            None => open(f.clone()).await,
        };
        let (read, bound) = match read {
            Ok(read) => read,
            Err(ReadError::Damaged(why) | ReadError::Lost(why)) => {
                log::warn!("tree snapshot {} cannot be read ({why}); trying the one before", f.generation);
                passed.insert(f.fid);
                skipped.push((f.generation, why));
                continue;
            }
            Err(ReadError::Unavailable(e)) => {
                anyhow::bail!("tree snapshot {} of this territory could not be fetched now ({e})", f.generation)
            }
        };
        // It is the newest once what was stored after the tree its writer had stored when it
        // wrote it is read; without such a tree (a whole snapshot, a root from before the rule,
        // one written before any tree of its writer was stored), once every record is.
        if !(search.whole() || bound.is_some_and(|stored| search.reached(&stored))) {
            opened.insert(f.fid, (read, bound));
            match bound {
                Some(_) => search.read_back().await?,
                None => search.read_all().await.map(|()| true)?,
            };
            continue;
        }
        skipped.retain(|(g, _)| *g >= f.generation);
        return Ok((Some((f.clone(), read)), skipped));
    }
    skipped.sort_by_key(|(g, _)| std::cmp::Reverse(*g));
    if let Some((generation, why)) = skipped.first() {
        anyhow::bail!("no tree snapshot of this territory could be read (the newest, {generation}: {why})");
    }
    Ok((None, skipped))
}

/// The newest snapshot of the tree that reads back, read whole (a read-only view shows it),
/// from the tail of the hold list in `search` ([`newest_settled`]).
pub async fn newest_whole(search: &mut TailSearch<'_>, fetcher: &Fetcher) -> anyhow::Result<Option<(Found, ReadTree)>> {
    let open = |f: Found| -> BoxFuture<'_, _> {
        Box::pin(async move {
            read(fetcher, &f).await.map(|t| {
                let stored = t.stored;
                (t, stored)
            })
        })
    };
    let (newest, _) = newest_settled(search, open).await?;
    Ok(newest)
}

/// Reads the newest snapshot of the tree that reads back, and the older snapshots of its
/// lineage, reading the hold list from its tail in `search` only as far as it takes to know
/// which is the newest. `None`: the territory holds no snapshot of this tree.
pub async fn choose(
    search: &mut TailSearch<'_>,
    fetcher: &std::sync::Arc<Fetcher>,
    names: &NameKey,
) -> anyhow::Result<Option<Chosen>> {
    let restored = |e: anyhow::Error| {
        anyhow::anyhow!(
            "{e}; nothing was restored: mount again once the chain and the miners answer (or use --fresh to \
             start an empty tree)"
        )
    };
    let open = |f: Found| -> BoxFuture<'_, _> {
        Box::pin(async move {
            start(fetcher, names, &f).await.map(|s| {
                let bound = s.as_ref().err().and_then(|lazy| lazy.stored);
                (s, bound)
            })
        })
    };
    let opened = newest_settled(search, open).await.map_err(restored)?;
    let (Some((f, start)), skipped) = opened else { return Ok(None) };
    let ReadTree { snapshot, seed, dirs, stored: _ } = match start {
        Ok(read) => read,
        Err(lazy) => {
            let newest = ReadBack { found: f, snapshot: lazy.snapshot.clone(), seed: None };
            let dirs = lazy.homes.clone();
            return Ok(Some(Chosen { newest, dirs, older: Vec::new(), skipped, lazy: Some(lazy) }));
        }
    };
    // The older ones of its lineage are kept too, and dropped in their turn with what only
    // they refer to; another lineage's (a `--fresh` tree's predecessor) are its own past. A
    // whole snapshot was settled by reading every record.
    let mut older = Vec::new();
    for o in search.found().iter().filter(|o| o.active && (o.generation, o.fid.0) < (f.generation, f.fid.0)) {
        match read(fetcher, o).await {
            Ok(old) if !super::same_lineage(&old.snapshot.writer, &snapshot.writer) => {
                log::info!("tree snapshot {} is an earlier tree's (before --fresh): left as it is", o.generation);
            }
            Ok(old) => older.push(ReadBack { found: o.clone(), snapshot: old.snapshot, seed: old.seed }),
            Err(e) => log::warn!("the older tree snapshot {} is left as it is: {e}", o.generation),
        }
    }
    let newest = ReadBack { found: f, snapshot, seed };
    Ok(Some(Chosen { newest, dirs, older, skipped, lazy: None }))
}

/// Reads snapshot `f` as far as a restore reads it before choosing it: a whole snapshot
/// whole, a tree in directory blobs down to its root directory.
async fn start(
    fetcher: &std::sync::Arc<Fetcher>,
    names: &NameKey,
    f: &Found,
) -> Result<Result<ReadTree, LazyStart>, ReadError> {
    match open(fetcher, f).await? {
        Opened::Whole(tree) => Ok(Ok(*tree)),
        Opened::Root { root, own, seed: _ } => start_lazily(fetcher, names, &root, own).await.map(Err),
    }
}

/// The record that keeps snapshot `found` of tree `snapshot` (its seed `seed`).
pub(super) fn adopted<'a>(
    found: &Found,
    snapshot: &'a Snapshot,
    seed: Option<[u8; 32]>,
    names: &NameKey,
) -> Adopted<'a> {
    let generation = found.generation;
    Adopted {
        snapshot,
        fid: found.fid,
        seed,
        segments: found.segments as u32,
        name: if found.commit { names.commit_name(generation) } else { names.snapshot_name(generation) },
        commit: found.commit,
    }
}

impl Chosen {
    /// The generation it restores.
    pub fn generation(&self) -> u64 {
        self.newest.found.generation
    }

    /// The block at which the oldest kept snapshot of its lineage became active: files of that
    /// lineage that became active later and that no snapshot refers to were declared by its
    /// lost machine after its last snapshot (see [`super::sweep`]). A tree loaded lazily has
    /// not read its older snapshots yet: its own block stands until its load ends
    /// ([`super::load`]), and nothing is swept before.
    pub fn lineage_from(&self) -> u32 {
        self.older.iter().map(|o| o.found.completion).fold(self.newest.found.completion, u32::min)
    }

    /// Reads the rest of a tree restored lazily, holding what the restore fetched already.
    pub fn loader(&self) -> Option<std::sync::Arc<super::load::DirLoader>> {
        self.lazy.as_ref().map(|lazy| lazy.loader.clone())
    }

    /// Restores it into the empty `store` in one step (it completes, or a crash leaves the data
    /// dir as empty as before and the next mount starts over), with the facts `meta` about the
    /// data dir and a writer id that carries its lineage on. A tree loaded lazily is restored
    /// down to its root directory, and recorded as being loaded.
    pub fn restore(
        &self,
        store: &Store,
        territory: &[u8],
        names: &NameKey,
        mut meta: Vec<(&[u8], Vec<u8>)>,
    ) -> Result<Outcome, crate::store::StoreError> {
        let adopted: Vec<Adopted<'_>> = std::iter::once(&self.newest)
            .chain(&self.older)
            .map(|r| adopted(&r.found, &r.snapshot, r.seed, names))
            .collect();
        meta.push(super::lineage_writer(&self.newest.snapshot.writer));
        let snapshot = &self.newest.snapshot;
        let lazy = self.lazy.as_ref().map(|lazy| crate::store::LazyRoot {
            loading: crate::store::Loading {
                generation: snapshot.generation,
                snapshot: 0,
                territory: territory.to_vec(),
                tree_files: lazy.tree_files.clone(),
                nodes: lazy.nodes,
                loaded: snapshot.nodes.len() as u64,
            },
            dirs: lazy.dir.dirs.clone(),
            shared: lazy.dir.shared.clone(),
        });
        let chain_name = |fid: &Hash| names.file_name(fid);
        let restored = store.restore_snapshot(snapshot, territory, chain_name, &adopted, &meta, lazy.as_ref())?;
        // The next tree refers to these directories where they are (a crash before costs only
        // writing them again).
        store.put_read_dirs(&self.dirs)?;
        Ok(Outcome {
            generation: self.generation(),
            written_at: snapshot.written_at.0,
            restored,
            skipped: self.skipped.clone(),
            loading: self.lazy.as_ref().map(|lazy| lazy.nodes),
        })
    }
}

/// A read-only view of a tree: its store shows one snapshot, the newest active one (or a
/// pinned generation), and follows newer ones.
pub struct Follower {
    /// The chain.
    pub chain: std::sync::Arc<dyn Chain>,
    /// Reads snapshots from the miners.
    pub fetcher: std::sync::Arc<Fetcher>,
    /// The view's store.
    pub store: std::sync::Arc<Store>,
    /// The tree's territory.
    pub territory: Vec<u8>,
    /// The tree's name key.
    pub names: NameKey,
    /// A generation to show and stay on.
    pub pinned: Option<u64>,
    /// Looks for snapshots.
    pub finder: Finder,
}

impl Follower {
    /// Brings the view to the newest snapshot (or the pinned one) if it shows another. Returns
    /// what it now shows.
    pub async fn sync(&self) -> anyhow::Result<Option<u64>> {
        let shown = self.store.view_generation()?;
        let (want, tree) = if shown.is_none() && self.pinned.is_none() {
            // A view that shows nothing yet finds the newest tree from the tail of the hold
            // list; the later looks read every record once, then the new ones.
            let mut search = TailSearch::start(&*self.chain, &self.territory, &self.names).await?;
            let newest = newest_whole(&mut search, &self.fetcher).await?;
            search.log_reach();
            match newest {
                Some(newest) => newest,
                None => return Ok(shown),
            }
        } else {
            let found = self.finder.find(&*self.chain, &self.territory, &self.names).await?;
            let want = match self.pinned {
                Some(g) => found.iter().find(|f| f.generation == g && f.active).ok_or_else(|| {
                    anyhow::anyhow!(
                        "no active tree snapshot of generation {g} in this territory (see cessfs snapshots)"
                    )
                })?,
                None => match found.iter().find(|f| f.active) {
                    Some(f) => f,
                    None => return Ok(shown),
                },
            };
            if shown == Some(want.generation) {
                return Ok(shown);
            }
            (want.clone(), read(&self.fetcher, want).await?)
        };
        let whole = tree.dirs.is_empty();
        let mut snapshot = tree.snapshot;
        // A whole snapshot names its nodes by its writer's inode numbers, the same from one
        // generation to the next: they stand in for keys in the view.
        if whole {
            for n in snapshot.nodes.iter_mut().filter(|n| n.key.is_none()) {
                n.key = Some(crate::format::NodeKey::standing_in(n.id));
            }
        }
        let store = self.store.clone();
        let (territory, names) = (self.territory.clone(), self.names.clone());
        let restored = tokio::task::spawn_blocking(move || {
            let restored = store.replace_tree(&snapshot, &territory, |fid| names.file_name(fid))?;
            store.set_view_generation(snapshot.generation)?;
            Ok::<_, crate::store::StoreError>(restored)
        })
        .await??;
        log::info!("showing tree snapshot {} ({})", want.generation, restored.counts());
        Ok(Some(want.generation))
    }

    /// Looks for a newer snapshot every `interval` until `stop`.
    pub async fn run(self, interval: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.sync().await {
                crate::log_limited!(log::Level::Warn, "follow", "looking for a newer tree snapshot: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob read from a tree file's pieces comes out as written: across a segment's end, and
    /// with the zeros each piece was kept without put back.
    #[test]
    fn bytes_are_cut_from_the_pieces_they_are_in() {
        let per: usize = 10;
        let file: Vec<u8> = (1..=30u8).map(|b| if (9..=10).contains(&b) || b > 25 { 0 } else { b }).collect();
        let kept: Vec<Vec<u8>> = file.chunks(per).map(|c| trimmed(c.to_vec())).collect();
        assert_eq!(kept[0].len(), 8, "the zeros ending the first piece are not kept");
        for (start, end) in [(0usize, 30usize), (5, 15), (9, 11), (12, 18), (20, 30), (29, 30)] {
            let pieces: Vec<&[u8]> = kept[start / per..end.div_ceil(per)].iter().map(Vec::as_slice).collect();
            assert_eq!(cut(per, &pieces, start..end), file[start..end], "bytes {start}..{end}");
        }
    }
}
