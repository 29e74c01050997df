//! Where the tree's directory blobs are (format/tree.rs), by blob id: the commit or tree file
//! holding each, so that a tree written later refers to an unchanged directory there instead of
//! writing it again. A home is used only while its file is stored and a kept tree refers to it
//! (so it stays on chain); a missing or stale one only costs writing that directory again.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::records::{decode, encode, key};
use super::{Batch, Store, StoreError, UploadState};
use crate::format::{BlobKeys, DirIds, Hash, Home, Snapshot, TreeRef, Written};

/// Where one directory blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct DirHome {
    holder: Holder,
    offset: u32,
    len: u32,
}

/// The CESS file holding a directory blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Holder {
    /// A commit (`file`: false) or tree file this data dir wrote, by its hidden inode.
    Inode { ino: u64, file: bool },
    /// A stored file: a commit (`segments`: `None`) or a tree file of that many segments.
    Stored { fid: Hash, segments: Option<u32> },
}

impl Batch {
    /// Records where directory blobs read from CESS are.
    pub(super) fn put_read_dir_homes(&mut self, dirs: &[(Hash, Home)]) {
        for (id, (r, segments)) in dirs {
            let home =
                DirHome { holder: Holder::Stored { fid: r.fid, segments: *segments }, offset: r.offset, len: r.len };
            self.0.insert(key::dir_home(id), encode(&home));
        }
    }

    /// Records that directory blobs `placed` (id, offset, sealed length) are in the commit or
    /// tree file (`file`) of hidden inode `ino`.
    pub fn put_dir_homes(&mut self, ino: u64, file: bool, placed: &[(Hash, u32, u32)]) {
        for &(id, offset, len) in placed {
            let home = DirHome { holder: Holder::Inode { ino, file }, offset, len };
            self.0.insert(key::dir_home(&id), encode(&home));
        }
    }
}

/// The meta record of the files holding the last tree's directory blobs, and its bytes in each
/// ([`crate::format::THIS_COMMIT`]: the one it was written in).
const TREE_HOLDERS: &[u8] = b"tree-holders";

impl Store {
    /// The files holding the last tree written's directory blobs, and its bytes in each; `last`:
    /// the file it was written in, if stored.
    pub fn tree_holders(&self, last: Option<Hash>) -> Result<Vec<(Hash, u64)>, StoreError> {
        let Some(v) = self.meta(TREE_HOLDERS)? else { return Ok(Vec::new()) };
        // Only a hint of which files to empty: a record that does not read is none.
        let held: Vec<(Hash, u64)> = decode(&v, "tree holders").unwrap_or_default();
        Ok(held
            .into_iter()
            .filter_map(|(fid, bytes)| match fid == crate::format::THIS_COMMIT {
                true => last.map(|l| (l, bytes)),
                false => Some((fid, bytes)),
            })
            .collect())
    }

    /// Records the files holding the tree just written, and its bytes in each.
    pub fn set_tree_holders(&self, held: &std::collections::BTreeMap<Hash, u64>) -> Result<(), StoreError> {
        let held: Vec<(Hash, u64)> = held.iter().map(|(f, b)| (*f, *b)).collect();
        self.set_meta(TREE_HOLDERS, &encode(&held))
    }

    /// Writes `snapshot` as directory blobs ([`crate::format::write_tree`]), referring to those
    /// stored already where they are, except in the files `emptying`; new ones go to `place`.
    /// `None`: `place` had no room.
    pub fn write_dirs(
        &self,
        snapshot: &Snapshot,
        keys: &BlobKeys,
        before: crate::format::Ancestry,
        emptying: &HashSet<Hash>,
        ids: &mut DirIds,
        place: &mut dyn FnMut(&Hash, Vec<u8>) -> Option<u32>,
    ) -> Result<Option<Written>, StoreError> {
        let kept = self.kept_tree_files()?;
        let mut failed = None;
        let mut reuse = |id: &Hash| match self.dir_home(id, &kept) {
            Ok(home) => home.filter(|(r, _)| !emptying.contains(&r.fid)),
            Err(e) => {
                failed.get_or_insert(e);
                None
            }
        };
        let written = crate::format::write_tree(snapshot, keys, before, ids, &mut reuse, place);
        match failed {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// The files a kept tree refers to, and the kept trees' own: those a tree may refer to.
    fn kept_tree_files(&self) -> Result<HashSet<Hash>, StoreError> {
        let mut kept: HashSet<Hash> = self.kept_snapshot_fids()?.iter().copied().collect();
        for (ino, _) in self.kept_generations()? {
            kept.extend(self.upload(ino)?.and_then(|u| u.fid));
        }
        Ok(kept)
    }

    /// Forgets the homes of directory blobs in files that no kept tree keeps any more (a changed
    /// directory's home is never looked up again). Returns how many went.
    pub fn forget_stale_dir_homes(&self) -> Result<usize, StoreError> {
        let kept = self.kept_tree_files()?;
        let mut b = Batch::default();
        let mut stale = 0;
        for kv in self.tree.scan_prefix(key::DIR_HOME_PREFIX) {
            let (k, v) = kv?;
            let gone = match decode::<DirHome>(&v, "directory home").map(|h| h.holder) {
                Ok(Holder::Inode { ino, .. }) => self.snapshot_generation(ino)?.is_none(),
                Ok(Holder::Stored { fid, .. }) => !kept.contains(&fid),
                Err(_) => true,
            };
            if gone {
                b.0.remove(k);
                stale += 1;
            }
        }
        self.commit(b)?;
        Ok(stale)
    }

    /// Where directory blob `id` is, if a tree may refer to it there: in a stored file that a
    /// kept tree refers to. A home in a file this data dir wrote becomes its FID once stored.
    fn dir_home(&self, id: &Hash, kept: &HashSet<Hash>) -> Result<Option<Home>, StoreError> {
        let Some(v) = self.tree.get(key::dir_home(id))? else { return Ok(None) };
        let home: DirHome = decode(&v, "directory home")?;
        let (fid, segments) = match home.holder {
            Holder::Stored { fid, segments } => (fid, segments),
            // Its own hidden inode keeps it on chain while it is there.
            Holder::Inode { ino, file } => {
                if self.snapshot_generation(ino)?.is_none() {
                    self.tree.remove(key::dir_home(id))?;
                    return Ok(None);
                }
                let stored = self.upload(ino)?.filter(|u| u.state == UploadState::Active);
                let Some((fid, segments)) = stored.and_then(|u| Some((u.fid?, file.then_some(u.segments)))) else {
                    return Ok(None);
                };
                let resolved = DirHome { holder: Holder::Stored { fid, segments }, ..home };
                self.tree.insert(key::dir_home(id), encode(&resolved))?;
                return Ok(Some((TreeRef { fid, id: *id, offset: home.offset, len: home.len }, segments)));
            }
        };
        if !kept.contains(&fid) {
            self.tree.remove(key::dir_home(id))?;
            return Ok(None);
        }
        Ok(Some((TreeRef { fid, id: *id, offset: home.offset, len: home.len }, segments)))
    }

    /// Records where the directory blobs of a tree read from CESS are.
    pub fn put_read_dirs(&self, dirs: &[(Hash, Home)]) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.put_read_dir_homes(dirs);
        self.commit(b)
    }
}
