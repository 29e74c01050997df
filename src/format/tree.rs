//! Trees in directory blobs (snapshot format version 3): a root names the blob of the root
//! directory; a directory's blob holds its entries, each with its node and, for a directory,
//! where that directory's blob is. Blobs are content-addressed and sealed as pack blobs
//! (format/pack.rs), so an unchanged directory is referred to where it already is and a commit
//! carries only the directories a change touched, and their ancestors. A directory of more than
//! [`CHUNK_ABOVE`] entries is cut into chunks by name-hash ranges, so an edit in it rewrites one
//! chunk and the list of chunks.
//!
//! ```text
//! root (a commit's tree)   "CFSTREE" 0x03 ‖ postcard(Root)
//! directory blob content   "CFSDIR" 0x00 0x01 ‖ zstd frame of postcard(Dir) ‖ postcard(keys)
//! tree file (plaintext)    "CFSTREE" 0x03 ‖ root id [32] ‖ le32(root offset) ‖ le32(root length)
//!                          ‖ sealed blobs ‖ sealed root ‖ zeros to whole segments
//! ```
//!
//! A reference's FID [`THIS_COMMIT`] is the CESS file holding the blob that contains it (the
//! commit or tree file it was written in, which cannot name itself); so is a file's
//! `Packed { fid: THIS_COMMIT }` inside a directory blob.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::snapshot::{Link, MAX_TREE_BYTES, Snapshot, SnapshotError, THIS_COMMIT, Time, unzstd, zstd};
use super::{BlobKeys, Hash, Location, Node, NodeKey, NodeKind};

/// First bytes of a root and of a tree file.
pub const MAGIC_V3: [u8; 8] = *b"CFSTREE\x03";
/// First bytes of a directory blob's content.
const DIR_MAGIC: [u8; 8] = *b"CFSDIR\x00\x01";
/// Bytes of a tree file's header.
pub const TREE_FILE_HEADER: usize = 48;
/// The most nodes a tree is read with, whatever its root says (far above any tree
/// [`MAX_TREE_BYTES`] of whole snapshot could hold).
const MAX_TREE_NODES: u64 = MAX_TREE_BYTES / 16;
/// A directory of more entries than this is cut into chunks.
pub const CHUNK_ABOVE: usize = 256;
/// An entry whose name hash has these low bits all zero ends a chunk (about 128 entries each).
const CHUNK_MASK: u64 = 0x7f;
/// No chunk has more entries than this, whatever the hashes.
const CHUNK_MAX: usize = 1024;

/// Where a directory blob is: in CESS file `fid` ([`THIS_COMMIT`]: the file holding the
/// reference) at `offset`, `len` sealed bytes, sealed as blob `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TreeRef {
    /// The commit or tree file holding it.
    pub fid: Hash,
    /// Its blob id (its key derives from it).
    pub id: Hash,
    /// Its first byte in that file (a commit's segment, a tree file's plaintext).
    pub offset: u32,
    /// Its sealed length.
    pub len: u32,
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name.
    pub name: Vec<u8>,
    /// What it names. `id` is 0 for a node of one name; a node of several names (hard links)
    /// has one id, unique in the tree, under each of them. Its `key` follows the directory
    /// ([`Dir::plain`]).
    pub node: Node,
    /// A directory's blob.
    pub dir: Option<TreeRef>,
}

/// A directory blob's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dir {
    /// Entries, sorted by name (or, in a chunk, by name hash).
    Entries(Vec<Entry>),
    /// A large directory: its chunks in name-hash order, each an `Entries` blob.
    Chunks(Vec<TreeRef>),
}

/// A CESS file holding directory blobs that is a tree file (not a commit): a reader fetches it
/// by segments, in format version 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFile {
    /// Its FID.
    pub fid: Hash,
    /// Its segments.
    pub segments: u32,
}

/// The root of a tree at one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Its generation (as [`Snapshot::generation`]).
    pub generation: u64,
    /// The mount that wrote it (as [`Snapshot::writer`]).
    pub writer: [u8; 16],
    /// When it was written.
    pub written_at: Time,
    /// The generation of the tree this one was written after, if any.
    pub parent: Option<u64>,
    /// The tree files that directory blobs of this tree are in.
    pub files: Vec<TreeFile>,
    /// Nodes in the tree, the root included.
    pub nodes: u64,
    /// The root directory's node.
    pub node: Node,
    /// The root directory's blob.
    pub dir: TreeRef,
    /// The newest tree its writer had stored on CESS when it wrote this one: a newer tree was
    /// stored after that one (docs/FORMAT.md, "Finding the newest tree"). It follows the rest of
    /// the root (roots written before it end without it: `None`).
    #[serde(skip)]
    pub stored: Option<StoredTree>,
}

/// The newest tree a writer had stored on CESS when it wrote a root ([`Root::stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTree {
    /// Its generation.
    pub generation: u64,
    /// The block its storage order was declared in, at or before the block it became active in
    /// (`None` in roots written before it, and when its writer does not know it).
    pub declared_at: Option<u32>,
}

/// Where a tree comes in its writer's history: [`Root::parent`] and [`Root::stored`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ancestry {
    /// The generation written before.
    pub parent: Option<u64>,
    /// The newest tree stored when it is written.
    pub stored: Option<StoredTree>,
}

impl Root {
    /// The root's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC_V3.to_vec();
        out.extend(postcard::to_stdvec(self).expect("roots always serialize"));
        let generation = self.stored.map(|s| s.generation);
        out.extend(postcard::to_stdvec(&generation).expect("generations always serialize"));
        if let Some(declared_at) = self.stored.and_then(|s| s.declared_at) {
            out.extend(postcard::to_stdvec(&declared_at).expect("blocks always serialize"));
        }
        out
    }

    /// Reads a root.
    pub fn decode(bytes: &[u8]) -> Result<Root, SnapshotError> {
        let damaged = |e: postcard::Error| SnapshotError::Damaged(format!("the tree's root: {e}"));
        let rest = bytes.strip_prefix(&MAGIC_V3[..]).ok_or(SnapshotError::NotASnapshot)?;
        let (mut root, rest): (Root, _) = postcard::take_from_bytes(rest).map_err(damaged)?;
        if !rest.is_empty() {
            let (generation, rest): (Option<u64>, _) = postcard::take_from_bytes(rest).map_err(damaged)?;
            let declared_at = match rest.is_empty() {
                true => None,
                false => Some(postcard::from_bytes::<u32>(rest).map_err(damaged)?),
            };
            root.stored = generation.map(|generation| StoredTree { generation, declared_at });
        }
        Ok(root)
    }

    /// Whether tree bytes are a root of this version.
    pub fn is_root(bytes: &[u8]) -> bool {
        bytes.starts_with(&MAGIC_V3)
    }
}

impl Dir {
    /// The blob content of a directory.
    pub fn encode(&self) -> Vec<u8> {
        compress(&self.plain())
    }

    /// What a directory blob's zstd frame holds: postcard of the directory, then, for entries
    /// that all have a [`NodeKey`], postcard of their keys in entry order (readers from before
    /// keys stop at the directory and read it as before).
    fn plain(&self) -> Vec<u8> {
        let mut plain = postcard::to_stdvec(self).expect("directories always serialize");
        if let Dir::Entries(entries) = self {
            let keys: Option<Vec<NodeKey>> = entries.iter().map(|e| e.node.key).collect();
            if let Some(keys) = keys.filter(|k| !k.is_empty()) {
                plain.extend(postcard::to_stdvec(&keys).expect("keys always serialize"));
            }
        }
        plain
    }

    /// Reads a directory blob's content.
    pub fn decode(content: &[u8]) -> Result<Dir, SnapshotError> {
        let damaged = |e: &dyn std::fmt::Display| SnapshotError::Damaged(format!("a directory blob: {e}"));
        let packed = content.strip_prefix(&DIR_MAGIC[..]).ok_or_else(|| damaged(&"no directory header"))?;
        let plain = unzstd(packed).map_err(|e| damaged(&e))?;
        let (mut dir, rest): (Dir, _) = postcard::take_from_bytes(&plain).map_err(|e| damaged(&e))?;
        if !rest.is_empty() {
            let keys: Vec<NodeKey> = postcard::from_bytes(rest).map_err(|e| damaged(&e))?;
            match &mut dir {
                Dir::Entries(entries) if entries.len() == keys.len() => {
                    entries.iter_mut().zip(keys).for_each(|(e, key)| e.node.key = Some(key));
                }
                _ => return Err(damaged(&"node keys that do not match its entries")),
            }
        }
        Ok(dir)
    }

    /// The same directory read from CESS file `holder`: references to [`THIS_COMMIT`] name it.
    pub fn resolved(self, holder: Hash) -> Dir {
        self.renamed(THIS_COMMIT, holder)
    }

    /// The directory as written in CESS file `holder`, which it then refers to as
    /// [`THIS_COMMIT`].
    fn relative_to(&self, holder: Hash) -> Dir {
        self.clone().renamed(holder, THIS_COMMIT)
    }

    /// Whether it refers to the file holding it (blobs placed with it).
    fn refers_to_this_file(&self) -> bool {
        self.all_fids().any(|f| f == THIS_COMMIT)
    }

    /// Every FID it names, once for each reference.
    fn all_fids(&self) -> Box<dyn Iterator<Item = Hash> + '_> {
        match self {
            Dir::Entries(entries) => Box::new(entries.iter().flat_map(|e| {
                let packed = match &e.node.location {
                    Location::Packed { fid, .. } => Some(*fid),
                    _ => None,
                };
                e.dir.map(|r| r.fid).into_iter().chain(packed)
            })),
            Dir::Chunks(chunks) => Box::new(chunks.iter().map(|r| r.fid)),
        }
    }

    /// The CESS files it refers to (blobs of directories and of packed files).
    fn fids(&self) -> Vec<Hash> {
        let mut out: Vec<Hash> = self.all_fids().collect();
        out.sort();
        out.dedup();
        out.retain(|f| *f != THIS_COMMIT);
        out
    }

    fn renamed(mut self, from: Hash, to: Hash) -> Dir {
        let fix = |fid: &mut Hash| {
            if *fid == from {
                *fid = to;
            }
        };
        match &mut self {
            Dir::Entries(entries) => {
                for e in entries {
                    if let Some(r) = &mut e.dir {
                        fix(&mut r.fid);
                    }
                    if let Location::Packed { fid, .. } = &mut e.node.location {
                        fix(fid);
                    }
                }
            }
            Dir::Chunks(chunks) => chunks.iter_mut().for_each(|r| fix(&mut r.fid)),
        }
        self
    }
}

/// A directory blob's content from its postcard encoding.
fn compress(plain: &[u8]) -> Vec<u8> {
    let mut out = DIR_MAGIC.to_vec();
    out.extend(zstd(plain));
    out
}

/// The ids of directory blobs worked out before, by the SHA-256 of what their zstd frame holds
/// ([`Dir::plain`]): the compressed content (so the id) depends on it alone, so an unchanged
/// directory's id is known without compressing it again. For one territory's blob keys.
#[derive(Default)]
pub struct DirIds(HashMap<Hash, Hash>);

impl DirIds {
    /// Ids kept at most; past it they are all forgotten (and worked out again).
    const MAX: usize = 1 << 20;

    /// The id of `dir`'s blob, and its content if it had to be made.
    fn id(&mut self, keys: &BlobKeys, dir: &Dir) -> (Hash, Option<Vec<u8>>) {
        let plain = dir.plain();
        let digest = super::sha256(&plain);
        if let Some(id) = self.0.get(&digest) {
            return (*id, None);
        }
        let content = compress(&plain);
        let id = keys.id(&content);
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(digest, id);
        (id, Some(content))
    }
}

/// The header of a tree file whose root, sealed as `root_id`, lies at `offset`.
pub fn tree_file_header(root_id: &Hash, offset: u32, len: u32) -> [u8; TREE_FILE_HEADER] {
    let mut h = [0u8; TREE_FILE_HEADER];
    h[..8].copy_from_slice(&MAGIC_V3);
    h[8..40].copy_from_slice(&root_id.0);
    h[40..44].copy_from_slice(&offset.to_le_bytes());
    h[44..48].copy_from_slice(&len.to_le_bytes());
    h
}

/// Where the root of a tree file whose plaintext begins with `start` is: its blob id and its
/// bytes in the file. [`SnapshotError::NotASnapshot`] if `start` is no tree file's header.
pub fn tree_file_root_place(start: &[u8]) -> Result<(Hash, std::ops::Range<usize>), SnapshotError> {
    let header =
        start.get(..TREE_FILE_HEADER).filter(|h| h.starts_with(&MAGIC_V3)).ok_or(SnapshotError::NotASnapshot)?;
    let id = Hash(header[8..40].try_into().unwrap_or_default());
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize;
    let (offset, len) = (le32(&header[40..44]), le32(&header[44..48]));
    let end = offset.checked_add(len).ok_or_else(|| tree_file_damaged("root outside"))?;
    Ok((id, offset..end))
}

/// The root of a tree file, sealed as blob `id`, opened with `keys`.
pub fn open_tree_file_root(keys: &BlobKeys, id: &Hash, sealed: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    keys.open(id, sealed).map_err(|e| tree_file_damaged(&e.to_string()))
}

/// The root a tree file's plaintext holds, opened with `keys`.
pub fn tree_file_root(keys: &BlobKeys, file: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    let (id, place) = tree_file_root_place(file)?;
    let sealed = file.get(place).ok_or_else(|| tree_file_damaged("root outside"))?;
    open_tree_file_root(keys, &id, sealed)
}

fn tree_file_damaged(why: &str) -> SnapshotError {
    SnapshotError::Damaged(format!("a tree file: {why}"))
}

/// What writing a tree did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The root's bytes ([`Root::encode`]).
    pub root: Vec<u8>,
    /// Directory blobs placed new, and their sealed bytes.
    pub placed: Vec<(Hash, u32, u32)>,
    /// Sealed bytes placed new.
    pub new_bytes: u64,
    /// Directory blobs referred to where they already were.
    pub reused: usize,
    /// The CESS files holding the blobs referred to where they were (not the one written).
    pub holders: Vec<Hash>,
    /// Sealed bytes of directory blobs the tree has in each file, [`THIS_COMMIT`] for the one
    /// written.
    pub holder_bytes: BTreeMap<Hash, u64>,
}

/// Where a directory blob already is: its reference, and the segments of its tree file if it is
/// in one (`None`: in a commit).
pub type Home = (TreeRef, Option<u32>);

/// What a tree being loaded directory by directory has not read yet ([`Snapshot::unloaded`]): a
/// round written meanwhile refers to those directories where they are, as they were restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unloaded {
    /// The directories not read (by node id), each with where its blob is (a resolved FID).
    pub dirs: BTreeMap<u64, Home>,
    /// At least the nodes below them that are not in the snapshot (counted into the root's
    /// `nodes`, which a reader takes as the most it reads).
    pub nodes: u64,
    /// Nodes of a tree-wide hard-link id (node → that id), which names under those directories
    /// may share: they keep that id however few of their names the snapshot has.
    pub linked: BTreeMap<u64, u64>,
    /// The tree files of the tree being loaded, and their segments: blobs below those
    /// directories may be in any of them, so the root lists them all.
    pub tree_files: Vec<(Hash, u32)>,
    /// A hard-linked node changed since the load began: its names not loaded still show it as
    /// it was, so the tree is not to be written until they are.
    pub linked_changed: bool,
}

/// Writes `snapshot` as directory blobs: each directory's blob is looked up with `reuse` (by
/// id) and referred to there, or sealed and handed to `place`, which puts it in the file being
/// written and says where (`None`: no room; the tree is then not written). `before`: where it
/// comes in its writer's history. Directories are written children first, so a parent names
/// where its children are. `ids` keeps the ids worked out, for the next write with the same keys.
pub fn write_tree(
    snapshot: &Snapshot,
    keys: &BlobKeys,
    before: Ancestry,
    ids: &mut DirIds,
    reuse: &mut dyn FnMut(&Hash) -> Option<Home>,
    place: &mut dyn FnMut(&Hash, Vec<u8>) -> Option<u32>,
) -> Option<Written> {
    let unloaded = &snapshot.unloaded;
    let nodes: HashMap<u64, &Node> = snapshot.nodes.iter().map(|n| (n.id, n)).collect();
    let mut children: HashMap<u64, Vec<&Link>> = HashMap::new();
    let mut names: HashMap<u64, u32> = HashMap::new();
    for l in &snapshot.links {
        children.entry(l.parent).or_default().push(l);
        *names.entry(l.child).or_default() += 1;
    }
    let mut out = Written::default();
    let mut files: BTreeMap<Hash, u32> = BTreeMap::new();
    // Blobs placed by this write: an equal directory (the same nodes, keys included) is one blob.
    let mut placed: HashMap<Hash, TreeRef> = HashMap::new();
    let mut blob = |dir: &Dir, out: &mut Written, files: &mut BTreeMap<Hash, u32>| -> Option<TreeRef> {
        let (id, content) = ids.id(keys, dir);
        if let Some(r) = placed.get(&id) {
            return Some(*r);
        }
        // As it is, or as written in a file it refers to (where that file was itself); one that
        // refers to the file being written is new.
        let mut found = None;
        if !dir.refers_to_this_file() {
            found = reuse(&id);
            for holder in dir.fids() {
                if found.is_some() {
                    break;
                }
                found = reuse(&ids.id(keys, &dir.relative_to(holder)).0).filter(|(r, _)| r.fid == holder);
            }
        }
        if let Some(home) = found {
            return Some(reused(out, files, home));
        }
        let sealed = keys.seal(&id, &content.unwrap_or_else(|| dir.encode()));
        let len = sealed.len() as u32;
        let offset = place(&id, sealed)?;
        out.new_bytes += u64::from(len);
        *out.holder_bytes.entry(THIS_COMMIT).or_default() += u64::from(len);
        out.placed.push((id, offset, len));
        let r = TreeRef { fid: THIS_COMMIT, id, offset, len };
        placed.insert(id, r);
        Some(r)
    };
    // Directories in an order where each comes after all below it: breadth first, reversed.
    let mut order = vec![1u64];
    let mut i = 0;
    while i < order.len() {
        let dir = order[i];
        i += 1;
        for l in children.get(&dir).into_iter().flatten() {
            if nodes.get(&l.child).is_some_and(|n| n.kind == NodeKind::Dir) {
                order.push(l.child);
            }
        }
    }
    if !unloaded.dirs.is_empty() {
        for &(fid, segments) in &unloaded.tree_files {
            files.insert(fid, segments);
            out.holders.push(fid);
        }
    }
    let mut refs: HashMap<u64, TreeRef> = HashMap::new();
    for &dir in order.iter().rev() {
        if let Some(&home) = unloaded.dirs.get(&dir) {
            refs.insert(dir, reused(&mut out, &mut files, home));
            continue;
        }
        let mut entries = Vec::new();
        for l in children.get(&dir).into_iter().flatten() {
            let Some(&node) = nodes.get(&l.child) else { continue };
            let mut node = node.clone();
            if let Some(&id) = unloaded.linked.get(&l.child) {
                node.id = id;
            } else if names.get(&l.child).copied().unwrap_or(0) < 2 {
                node.id = 0;
            } else if let Some(key) = node.key {
                node.id = key.link_id();
            }
            let dir_ref = refs.get(&l.child).copied();
            entries.push(Entry { name: l.name.clone(), node, dir: dir_ref });
        }
        let r = if entries.len() > CHUNK_ABOVE {
            let mut chunks = Vec::new();
            for chunk in chunks_of(entries) {
                chunks.push(blob(&Dir::Entries(chunk), &mut out, &mut files)?);
            }
            blob(&Dir::Chunks(chunks), &mut out, &mut files)?
        } else {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            blob(&Dir::Entries(entries), &mut out, &mut files)?
        };
        refs.insert(dir, r);
    }
    let mut node = (*nodes.get(&1)?).clone();
    node.id = 0;
    out.holders.sort();
    out.holders.dedup();
    let root = Root {
        generation: snapshot.generation,
        writer: snapshot.writer,
        written_at: snapshot.written_at,
        parent: before.parent,
        files: files.into_iter().map(|(fid, segments)| TreeFile { fid, segments }).collect(),
        nodes: snapshot.nodes.len() as u64 + unloaded.nodes,
        node,
        dir: *refs.get(&1)?,
        stored: before.stored,
    };
    out.root = root.encode();
    Some(out)
}

/// Notes a directory blob referred to where it already is (`home`), and returns its reference.
fn reused(out: &mut Written, files: &mut BTreeMap<Hash, u32>, (r, segments): Home) -> TreeRef {
    out.reused += 1;
    out.holders.push(r.fid);
    *out.holder_bytes.entry(r.fid).or_default() += u64::from(r.len);
    if let Some(segments) = segments {
        files.insert(r.fid, segments);
    }
    r
}

/// The name hash that orders a large directory's entries and cuts it into chunks.
fn name_hash(name: &[u8]) -> u64 {
    let h = super::sha256(name);
    u64::from_le_bytes(h.0[..8].try_into().unwrap_or_default())
}

/// `entries` in name-hash order, cut after each entry whose hash ends in [`CHUNK_MASK`] zero
/// bits (and after [`CHUNK_MAX`]): a name added or removed changes one chunk.
fn chunks_of(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut keyed: Vec<(u64, Entry)> = entries.into_iter().map(|e| (name_hash(&e.name), e)).collect();
    keyed.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    let mut chunks = vec![Vec::new()];
    for (hash, e) in keyed {
        let last = chunks.last_mut().expect("one chunk at least");
        last.push(e);
        if hash & CHUNK_MASK == 0 || last.len() >= CHUNK_MAX {
            chunks.push(Vec::new());
        }
    }
    chunks.retain(|c| !c.is_empty());
    chunks
}

/// Assembles the snapshot of `root` from its directories `dirs` (each read from its holder and
/// [`Dir::resolved`], by blob id), numbering its nodes afresh (the root 1). `holders`: the
/// CESS files the blobs were read from. The snapshot is checked as [`Snapshot::decode`] checks.
pub fn assemble(root: &Root, dirs: &HashMap<Hash, Dir>, holders: Vec<Hash>) -> Result<Snapshot, SnapshotError> {
    let damaged = |why: &str| SnapshotError::Damaged(why.to_string());
    let mut nodes = vec![Node { id: 1, ..root.node.clone() }];
    let mut links = Vec::new();
    let mut linked: HashMap<u64, u64> = HashMap::new();
    let mut stack = vec![(1u64, root.dir)];
    while let Some((parent, r)) = stack.pop() {
        let entries: Vec<&Entry> = match dirs.get(&r.id).ok_or_else(|| damaged("a directory blob missing"))? {
            Dir::Entries(entries) => entries.iter().collect(),
            Dir::Chunks(chunks) => {
                let mut all = Vec::new();
                for c in chunks {
                    match dirs.get(&c.id) {
                        Some(Dir::Entries(entries)) => all.extend(entries.iter()),
                        _ => return Err(damaged("a chunk that is not a list of entries")),
                    }
                }
                all
            }
        };
        for e in entries {
            let (id, new) = number_node(&mut nodes, &mut linked, e);
            if new && e.node.kind == NodeKind::Dir {
                stack.push((id, e.dir.ok_or_else(|| damaged("a directory without its blob"))?));
            }
            links.push(Link { parent, name: e.name.clone(), child: id });
            if nodes.len() as u64 > root.nodes.clamp(1, MAX_TREE_NODES) {
                return Err(damaged("more nodes than its root says"));
            }
        }
    }
    let snapshot = Snapshot {
        generation: root.generation,
        writer: root.writer,
        written_at: root.written_at,
        nodes,
        links,
        holders,
        unloaded: Default::default(),
    };
    snapshot.check()?;
    Ok(snapshot)
}

/// One directory of a tree read on its own (a restore loads a tree directory by directory):
/// `snapshot` holds the directory (node 1) and what its entries name (nodes 2 on, one per
/// node: names of one hard-linked node share it), checked as a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneDir {
    /// The directory and its entries.
    pub snapshot: Snapshot,
    /// Each subdirectory's node in `snapshot`, and where its blob is.
    pub dirs: Vec<(u64, TreeRef)>,
    /// The node in `snapshot` of each entry's tree-wide hard-link id (ids other than 0).
    pub shared: Vec<(u64, u64)>,
}

/// Reads one directory from its `entries` (a blob's, or its chunks' in order); its own node is
/// a bare directory (its parent's entry has its attributes).
pub fn one_dir(entries: &[Entry]) -> Result<OneDir, SnapshotError> {
    let damaged = |why: &str| SnapshotError::Damaged(why.to_string());
    let bare = Node::bare(1, NodeKind::Dir);
    let mut nodes = vec![bare];
    let (mut links, mut dirs, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    let mut linked: HashMap<u64, u64> = HashMap::new();
    for e in entries {
        let (id, new) = number_node(&mut nodes, &mut linked, e);
        if new && e.node.id != 0 {
            shared.push((e.node.id, id));
        }
        if new && e.node.kind == NodeKind::Dir {
            dirs.push((id, e.dir.ok_or_else(|| damaged("a directory without its blob"))?));
        }
        links.push(Link { parent: 1, name: e.name.clone(), child: id });
        if nodes.len() as u64 > MAX_TREE_NODES {
            return Err(damaged("a directory of more nodes than any tree"));
        }
    }
    let snapshot = Snapshot::new(0, [0; 16], (0, 0), nodes, links);
    snapshot.check()?;
    Ok(OneDir { snapshot, dirs, shared })
}

/// Numbers the node entry `e` names, in `nodes`: a new node, or the one its hard-link id named
/// before (`linked`: hard-link id → node). Returns its number and whether it is new.
fn number_node(nodes: &mut Vec<Node>, linked: &mut HashMap<u64, u64>, e: &Entry) -> (u64, bool) {
    let shared = (e.node.id != 0).then_some(e.node.id);
    if let Some(&id) = shared.and_then(|s| linked.get(&s)) {
        return (id, false);
    }
    let id = nodes.len() as u64 + 1;
    nodes.push(Node { id, ..e.node.clone() });
    if let Some(s) = shared {
        linked.insert(s, id);
    }
    (id, true)
}

/// The references `dir` makes to other directory blobs.
pub fn refs_of(dir: &Dir) -> Vec<TreeRef> {
    match dir {
        Dir::Entries(entries) => entries.iter().filter_map(|e| e.dir).collect(),
        Dir::Chunks(chunks) => chunks.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> BlobKeys {
        BlobKeys::new([7; 32])
    }

    fn node(id: u64, kind: NodeKind, location: Location) -> Node {
        Node {
            id,
            kind,
            perm: 0o755,
            uid: 1000,
            gid: 1000,
            size: 4,
            atime: (1, 2),
            mtime: (3, 4),
            ctime: (5, 6),
            crtime: (7, 8),
            target: Vec::new(),
            rdev: 0,
            xattrs: Vec::new(),
            location,
            key: None,
        }
    }

    /// A tree of a root, a directory of `big` files, a hard link and a small directory.
    fn tree(big: u64) -> Snapshot {
        let mut nodes = vec![node(1, NodeKind::Dir, Location::Empty), node(2, NodeKind::Dir, Location::Empty)];
        let mut links = vec![Link { parent: 1, name: b"big".to_vec(), child: 2 }];
        for i in 0..big {
            let id = 10 + i;
            let fid = Location::Fid { fid: Hash([i as u8; 32]), format: 3, seed: Some([1; 32]) };
            nodes.push(node(id, NodeKind::File, fid));
            links.push(Link { parent: 2, name: format!("note-{i}.md").into_bytes(), child: id });
        }
        nodes.push(node(3, NodeKind::Dir, Location::Empty));
        links.push(Link { parent: 1, name: b"small".to_vec(), child: 3 });
        links.push(Link { parent: 3, name: b"hard".to_vec(), child: 10 });
        let packed = Location::Packed { fid: Hash([6; 32]), id: Hash([5; 32]), offset: 32, len: 20 };
        nodes.push(node(4, NodeKind::File, packed));
        links.push(Link { parent: 3, name: b"packed".to_vec(), child: 4 });
        Snapshot::new(9, [2; 16], (10, 11), nodes, links)
    }

    /// A holder in memory: blobs placed end to end, homes by id.
    #[derive(Default)]
    struct Holder {
        bytes: Vec<u8>,
        homes: HashMap<Hash, Home>,
        ids: DirIds,
    }

    impl Holder {
        fn write(&mut self, s: &Snapshot, fid: Hash) -> Written {
            let start = self.bytes.len();
            let homes = self.homes.clone();
            let mut bytes = std::mem::take(&mut self.bytes);
            let ids = &mut self.ids;
            let written =
                write_tree(s, &keys(), Ancestry::default(), ids, &mut |id| homes.get(id).copied(), &mut |_, sealed| {
                    let at = bytes.len() as u32;
                    bytes.extend(sealed);
                    Some(at)
                })
                .unwrap();
            for (id, offset, len) in &written.placed {
                self.homes.insert(*id, (TreeRef { fid, id: *id, offset: *offset, len: *len }, None));
            }
            assert!(written.placed.iter().all(|(_, o, _)| *o as usize >= start));
            self.bytes = bytes;
            written
        }

        /// The directories of `root`, by blob id.
        fn dirs(&self, root: &Root) -> HashMap<Hash, Dir> {
            let mut dirs = HashMap::new();
            let mut queue = vec![root.dir];
            while let Some(r) = queue.pop() {
                let sealed = &self.bytes[r.offset as usize..(r.offset + r.len) as usize];
                let dir = Dir::decode(&keys().open(&r.id, sealed).unwrap()).unwrap();
                queue.extend(refs_of(&dir));
                dirs.insert(r.id, dir);
            }
            dirs
        }

        fn read(&self, root: &[u8]) -> Snapshot {
            let root = Root::decode(root).unwrap();
            assemble(&root, &self.dirs(&root), Vec::new()).unwrap()
        }
    }

    /// Names and nodes (ids aside) of a snapshot, as a map from path to node.
    fn paths(s: &Snapshot) -> BTreeMap<Vec<u8>, Node> {
        let nodes: HashMap<u64, &Node> = s.nodes.iter().map(|n| (n.id, n)).collect();
        let mut path: HashMap<u64, Vec<u8>> = HashMap::from([(1, Vec::new())]);
        let mut out = BTreeMap::new();
        let mut links = s.links.clone();
        while !links.is_empty() {
            links.retain(|l| match path.get(&l.parent).cloned() {
                Some(mut p) => {
                    p.push(b'/');
                    p.extend(&l.name);
                    out.insert(p.clone(), Node { id: 0, ..nodes[&l.child].clone() });
                    path.insert(l.child, p);
                    false
                }
                None => true,
            });
        }
        out
    }

    #[test]
    fn a_tree_reads_back_as_written_with_its_hard_links() {
        let s = tree(3000);
        let mut holder = Holder::default();
        let written = holder.write(&s, Hash([1; 32]));
        let back = holder.read(&written.root);
        assert_eq!(paths(&back), paths(&s));
        assert_eq!(back.nodes.len(), s.nodes.len(), "one node for the hard link");
        assert!(written.placed.len() > 4, "the large directory is cut into chunks");
    }

    /// A tree being loaded is written with the directories not loaded yet where they are: it
    /// reads back whole, with one node for a hard link into one of them.
    #[test]
    fn a_tree_being_loaded_refers_to_what_it_has_not_loaded_where_it_is() {
        let mut full = tree(300);
        let mut holder = Holder::default();
        let first = holder.write(&full, Hash([1; 32]));
        let root = Root::decode(&first.root).unwrap();
        let Dir::Entries(top) = &holder.dirs(&root)[&root.dir.id] else { panic!("a root of 2 entries") };
        let big = top.iter().find(|e| e.name == b"big").and_then(|e| e.dir).unwrap();
        // "big" not loaded: of its files, only the one hard-linked from "small" is in the tree.
        let mut partial = full.clone();
        partial.links.retain(|l| l.parent != 2);
        let named: std::collections::HashSet<u64> = partial.links.iter().map(|l| l.child).collect();
        partial.nodes.retain(|n| n.id == 1 || named.contains(&n.id));
        partial.unloaded = Unloaded {
            dirs: BTreeMap::from([(2, (big, None))]),
            nodes: 299,
            linked: [(10, 10)].into(),
            tree_files: vec![(Hash([8; 32]), 2)],
            linked_changed: false,
        };
        for s in [&mut full, &mut partial] {
            s.nodes.push(node(999, NodeKind::File, Location::Empty));
            s.links.push(Link { parent: 3, name: b"new".to_vec(), child: 999 });
        }
        let second = holder.write(&partial, Hash([2; 32]));
        assert_eq!(second.placed.len(), 2, "small and the root: {second:?}");
        assert!(second.holders.contains(&big.fid) && second.holders.contains(&Hash([8; 32])), "{second:?}");
        let back = holder.read(&second.root);
        assert_eq!(paths(&back), paths(&full));
        assert_eq!(back.nodes.len(), full.nodes.len(), "one node for the hard link");
        let root = Root::decode(&second.root).unwrap();
        assert_eq!(root.nodes, full.nodes.len() as u64);
        assert_eq!(root.files, [TreeFile { fid: Hash([8; 32]), segments: 2 }], "every tree file of the restored tree");
    }

    #[test]
    fn one_edit_writes_one_chunk_and_its_ancestors() {
        let mut s = tree(3000);
        let mut holder = Holder::default();
        let first = holder.write(&s, Hash([1; 32]));
        let n = s.nodes.iter_mut().find(|n| n.id == 1500).unwrap();
        n.size += 7;
        let second = holder.write(&s, Hash([2; 32]));
        // The chunk, the list of chunks, the root directory.
        assert_eq!(second.placed.len(), 3, "{second:?}");
        assert!(second.reused > 0 && second.new_bytes * 4 < first.new_bytes);
        assert_eq!(paths(&holder.read(&second.root)), paths(&s));
        // Unchanged: nothing new, though the second commit referred to its own blobs as its own.
        assert!(holder.write(&s, Hash([3; 32])).placed.is_empty());
    }

    #[test]
    fn equal_directories_are_one_blob_and_one_naming_its_own_file_is_new() {
        let mut s = tree(2);
        for i in 0..3 {
            s.nodes.push(node(100 + i, NodeKind::Dir, Location::Empty));
            s.links.push(Link { parent: 1, name: format!("empty-{i}").into_bytes(), child: 100 + i });
        }
        let mut holder = Holder::default();
        let first = holder.write(&s, Hash([1; 32]));
        // The root, "big", "small" and one blob for the three empty directories.
        assert_eq!(first.placed.len(), 4, "{first:?}");
        assert_eq!(paths(&holder.read(&first.root)), paths(&s));
        // A file in the pack being written makes its directory new, whatever is stored.
        let in_this = Location::Packed { fid: THIS_COMMIT, id: Hash([5; 32]), offset: 32, len: 20 };
        s.nodes.iter_mut().find(|n| n.id == 4).unwrap().location = in_this;
        let second = holder.write(&s, Hash([2; 32]));
        let again = holder.write(&s, Hash([3; 32]));
        assert_eq!(second.placed.len(), 2, "the small directory and the root");
        assert_eq!(again.placed.len(), 2, "still new: it names the file being written");
    }

    #[test]
    fn a_tree_file_opens_at_its_root() {
        let s = tree(300);
        let mut holder = Holder { bytes: vec![0; TREE_FILE_HEADER], ..Holder::default() };
        let written = holder.write(&s, Hash([1; 32]));
        let root_id = keys().id(&written.root);
        let sealed = keys().seal(&root_id, &written.root);
        let at = holder.bytes.len() as u32;
        holder.bytes.extend(&sealed);
        holder.bytes[..TREE_FILE_HEADER].copy_from_slice(&tree_file_header(&root_id, at, sealed.len() as u32));
        holder.bytes.resize(holder.bytes.len() + 1000, 0);
        let root = tree_file_root(&keys(), &holder.bytes).unwrap();
        assert_eq!(paths(&holder.read(&root)), paths(&s));
        assert_eq!(tree_file_root(&keys(), b"CFSTREE\x01"), Err(SnapshotError::NotASnapshot));
        holder.bytes[at as usize] ^= 1;
        assert!(tree_file_root(&keys(), &holder.bytes).is_err(), "a damaged root");
    }

    #[test]
    fn this_commit_names_the_file_holding_the_blob() {
        let dir = Dir::Entries(vec![Entry {
            name: b"a".to_vec(),
            node: node(0, NodeKind::File, Location::Packed { fid: THIS_COMMIT, id: Hash([5; 32]), offset: 1, len: 2 }),
            dir: None,
        }]);
        let Dir::Entries(e) = dir.resolved(Hash([8; 32])) else { panic!() };
        assert_eq!(e[0].node.location.fid(), Some(&Hash([8; 32])));
    }

    /// The newest tree stored follows the rest of a root: a root without it (written before it
    /// was) reads as naming none, and a reader before it reads a root with it.
    #[test]
    fn a_root_names_the_newest_tree_stored_after_the_rest() {
        let s = tree(2);
        let mut holder = Holder::default();
        let root = Root::decode(&holder.write(&s, Hash([1; 32])).root).unwrap();
        let stored = StoredTree { generation: 7, declared_at: Some(300) };
        let with = Root { stored: Some(stored), parent: Some(9), ..root.clone() };
        let bytes = with.encode();
        assert_eq!(Root::decode(&bytes).unwrap(), with);
        let before: Vec<u8> = [&MAGIC_V3[..], &postcard::to_stdvec(&with).unwrap()].concat();
        assert_eq!(bytes[..before.len()], before[..], "the rest as before");
        assert_eq!(Root::decode(&before).unwrap(), Root { stored: None, ..with.clone() });
        assert!(Root::decode(&[&before[..], &[2]].concat()).is_err(), "damaged after the rest");
        // A root from before `declared_at` ends after the generation.
        let generation_only = [&before[..], &[1, 7]].concat();
        let without_block = Some(StoredTree { declared_at: None, ..stored });
        assert_eq!(Root::decode(&generation_only).unwrap(), Root { stored: without_block, ..with.clone() });
        assert_eq!(Root { stored: without_block, ..with.clone() }.encode(), generation_only);
        assert!(Root::decode(&[&generation_only[..], &[0xff]].concat()).is_err(), "damaged after the generation");
    }

    /// Node keys follow each directory: they read back with their nodes (one for a hard link's
    /// names), a blob without them reads as before, and a reader from before keys reads a blob
    /// with them.
    #[test]
    fn node_keys_follow_the_directory_they_name() {
        let mut s = tree(300);
        for n in &mut s.nodes {
            n.key = Some(NodeKey { origin: [3; 8], serial: n.id * 7 });
        }
        let mut holder = Holder::default();
        let written = holder.write(&s, Hash([1; 32]));
        let back = holder.read(&written.root);
        assert_eq!(paths(&back), paths(&s), "every node with its key");
        let hard: Vec<_> =
            paths(&back).into_iter().filter(|(p, _)| p.ends_with(b"hard") || p.ends_with(b"note-0.md")).collect();
        assert_eq!(hard.len(), 2);
        assert_eq!(hard[0].1.key, Some(NodeKey { origin: [3; 8], serial: 70 }));
        assert_eq!(hard[0].1.key, hard[1].1.key, "the names of a hard link: one key");
        let linked = |holder: &Holder| {
            let dirs = holder.dirs(&Root::decode(&written.root).unwrap());
            let ids: Vec<u64> = dirs
                .values()
                .flat_map(|d| match d {
                    Dir::Entries(e) => e.iter().map(|e| e.node.id).filter(|&id| id != 0).collect(),
                    Dir::Chunks(_) => Vec::new(),
                })
                .collect();
            ids
        };
        let key = NodeKey { origin: [3; 8], serial: 70 };
        assert_eq!(linked(&holder), vec![key.link_id(); 2], "its id derives from its key: equal on every machine");

        let dir = Dir::Entries(vec![Entry { name: b"a".to_vec(), node: back.nodes[1].clone(), dir: None }]);
        let plain = dir.plain();
        let before: Dir = postcard::from_bytes(&plain).unwrap();
        let Dir::Entries(e) = &before else { panic!() };
        assert_eq!(e[0].node.key, None, "a reader from before keys reads the directory");
        assert_eq!(Dir::decode(&dir.encode()).unwrap(), dir);
        assert_eq!(Dir::decode(&compress(&postcard::to_stdvec(&dir).unwrap())).unwrap(), before);
        let key = NodeKey { origin: [1; 8], serial: 1 };
        let with = |keys: &[NodeKey]| [postcard::to_stdvec(&dir).unwrap(), postcard::to_stdvec(keys).unwrap()].concat();
        assert_eq!(with(&[back.nodes[1].key.unwrap()]), plain);
        assert!(Dir::decode(&compress(&with(&[key, key]))).is_err(), "two keys for one entry");
        assert!(Dir::decode(&compress(&[&postcard::to_stdvec(&dir).unwrap()[..], &[0xff]].concat())).is_err());
    }

    #[test]
    fn damaged_directories_are_refused() {
        assert!(Dir::decode(b"CFSDIR\x00\x01garbage").is_err());
        assert!(Root::decode(b"CFSTREE\x03\xff").is_err());
        let s = tree(2);
        let mut holder = Holder::default();
        let written = holder.write(&s, Hash([1; 32]));
        let root = Root::decode(&written.root).unwrap();
        // A root that says fewer nodes than its directories hold.
        let short = Root { nodes: 2, ..root.clone() };
        assert!(assemble(&short, &holder.dirs(&root), Vec::new()).is_err());
        assert!(assemble(&root, &HashMap::new(), Vec::new()).is_err());
    }
}
