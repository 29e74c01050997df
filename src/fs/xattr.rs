//! Extended attributes: `user.*` are stored like any metadata; `user.cess.*` are cessfs's own,
//! computed from the upload record, listed (so `getfattr -d` shows them) and read-only, except
//! `user.cess.evict`, which is write-only and drops a stored file's cached content. Other
//! namespaces (security, trusted, system) have no values here and cannot be set.

use super::{Fs, FsError, FsResult};
use crate::format::FRAGMENTS;
use crate::protocol::{PushedBytes, utc};
use crate::store::{Batch, Kind, Timestamp, UploadRecord, UploadState};
use crate::sync::lock;

/// The short text of `user.cess.progress`; `chain_down`: since when the chain does not answer.
/// `pushed`: how far its push has come, while it is pushed.
fn progress(
    up: &UploadRecord,
    chain_down: Option<&(std::time::SystemTime, String)>,
    pushed: Option<PushedBytes>,
) -> String {
    if let Some((since, why)) = chain_down.filter(|_| !up.state.settled()) {
        return format!(
            "waiting: the chain is unreachable since {} ({why}); the upload resumes when it answers",
            utc(*since)
        );
    }
    let waiting = |what: &str| match (&up.error, up.attempts) {
        (Some(e), n) if n > 0 => format!("{what}; attempt {n} failed ({e}), retrying"),
        _ => what.to_string(),
    };
    match up.state {
        UploadState::Staged => waiting("waiting for the file to settle"),
        UploadState::Encoding => waiting(&format!("encoding {} bytes", up.size)),
        UploadState::Declared => waiting("storage order placed"),
        UploadState::Pushing | UploadState::Confirming => {
            let bytes = pushed.map_or(String::new(), |p| format!(" ({} of {} MiB)", p.sent >> 20, p.total >> 20));
            waiting(&format!("pushed {}/{FRAGMENTS}{bytes}, reported {}/{FRAGMENTS}", up.pushed, up.reported))
        }
        UploadState::Active => format!("stored: {} on {FRAGMENTS} miners", crate::words::count(up.segments, "segment")),
        UploadState::Failed => format!("failed after {}", crate::words::count(up.attempts.max(1), "attempt")),
        UploadState::Local => "empty: no bytes to store on CESS".to_string(),
        UploadState::Packed => "in a pack being filled".to_string(),
    }
}

/// Setting this attribute (to anything) drops the cached content of an active file.
pub const EVICT: &[u8] = b"user.cess.evict";
/// The root's bandwidth limit, readable and writable (`cessfs bwlimit`).
pub const BWLIMIT: &[u8] = b"user.cess.bwlimit";
/// The root's collection of garbage on CESS: set to `dry-run` (list) or `run` (delete) to start
/// one (EBUSY while one runs); read, the state of the last one and its report (`cessfs gc`).
pub const GC: &[u8] = b"user.cess.gc";
/// Every node's id across machines (docs/FORMAT.md, "Node keys"), read-only and, as CephFS's
/// virtual attributes, not listed: `cp -a` and `rsync -X` copy what is listed, and a copy is
/// another node.
pub const NODE: &[u8] = b"user.cess.node";
/// The namespace cessfs keeps for itself.
pub const CESS_PREFIX: &[u8] = b"user.cess.";
const USER_PREFIX: &[u8] = b"user.";
/// Largest value Linux accepts.
const XATTR_SIZE_MAX: usize = 64 << 10;
/// Longest name Linux accepts.
const XATTR_NAME_MAX: usize = 255;

impl Fs {
    /// The cessfs attributes of `ino` (docs/XATTRS.md): empty for anything but a regular file
    /// with an upload record.
    fn cess_attributes(&self, ino: u64) -> FsResult<Vec<(&'static str, String)>> {
        if ino == crate::store::ROOT_INO {
            let mut attrs = vec![("user.cess.packs", self.packs_json()?.to_string())];
            let abandoned = self.store.abandoned_deals()?;
            if !abandoned.is_empty() {
                let space: u64 = abandoned.iter().map(|(_, d)| d.locked()).sum();
                let json = serde_json::json!({ "deals": abandoned.len(), "space": space });
                attrs.push(("user.cess.abandoned", json.to_string()));
            }
            if let Some(flags) = &self.snapshots {
                attrs.push(("user.cess.snapshot", self.snapshot_json(flags)?.to_string()));
            }
            if let Some(collector) = &self.collector {
                attrs.push(("user.cess.gc", collector.state().to_string()));
            }
            if let Some(pace) = &self.pace {
                attrs.push(("user.cess.bwlimit", pace.limit().to_string()));
                attrs.push(("user.cess.link", self.link_json(pace).to_string()));
            }
            return Ok(attrs);
        }
        let Some(up) = self.store.upload(ino)? else { return Ok(Vec::new()) };
        let chain_down = self.chain_health.as_ref().and_then(|h| h.unreachable_since());
        // A file waiting in a sealed pack shows the pack's upload.
        let pack = match (up.state, up.blob) {
            (UploadState::Packed, Some(blob)) => self.store.upload(blob.pack)?.map(|p| (blob.pack, p)),
            _ => None,
        };
        let (shown_ino, shown) = pack.as_ref().map_or((ino, &up), |(i, p)| (*i, p));
        let pushed = self.pushes.as_ref().and_then(|p| p.get(shown_ino));
        let progress = |up: &UploadRecord| progress(up, chain_down.as_ref(), pushed);
        let mut attrs = vec![("user.cess.status", shown.state.word().to_string())];
        if let Some(fid) = shown.fid {
            attrs.push(("user.cess.fid", fid.to_hex()));
        }
        attrs.push(("user.cess.progress", progress(shown)));
        if let Some(tx) = &shown.tx {
            attrs.push(("user.cess.tx", tx.clone()));
        }
        if let Some(block) = shown.block {
            attrs.push(("user.cess.block", block.to_string()));
        }
        if !up.territory.is_empty() {
            attrs.push(("user.cess.territory", String::from_utf8_lossy(&up.territory).into_owned()));
        }
        if let Some(e) = &shown.error {
            attrs.push(("user.cess.error", e.clone()));
        }
        let placed = up.blob.map(|b| {
            let (fragment, range) = b.place.in_fragment();
            (b, fragment, range)
        });
        if let Some((b, fragment, range)) = &placed {
            let where_ =
                format!("{} bytes at {} (data fragment {fragment}, bytes {range:?})", b.place.len, b.place.offset);
            attrs.push(("user.cess.pack", where_));
        }
        let cached = match self.residency(ino)? {
            None => "yes".to_string(),
            Some(r) if r.count() == 0 => "no".to_string(),
            Some(r) => format!("partly ({}/{} segments)", r.count(), r.segments),
        };
        attrs.push(("user.cess.cached", cached.clone()));
        // A merge moves its blob to another pack: the same bytes stay stored where they were
        // until the new pack is.
        let moving = up.state != UploadState::Active
            && up.blob.zip(up.previous.as_ref().and_then(|p| p.blob)).is_some_and(|(new, (old, _))| new.id == old);
        let json = serde_json::json!({
            "status": shown.state.word(),
            "moving": moving,
            "fid": shown.fid.map(|f| f.to_hex()),
            "size": up.size,
            "segments": shown.segments,
            "pushed": shown.pushed,
            "pushed_bytes": pushed.map(|p| p.sent),
            "push_bytes": pushed.map(|p| p.total),
            "reported": shown.reported,
            "progress": progress(shown),
            "tx": shown.tx,
            "block": shown.block,
            "pack": placed.map(|(b, fragment, _)| serde_json::json!({
                "offset": b.place.offset,
                "length": b.place.len,
                "data_fragment": fragment,
            })),
            "sparse": shown.extents.as_ref().map(|e| serde_json::json!({
                "data_bytes": e.data_len(),
                "ranges": e.ranges().len(),
            })),
            "territory": String::from_utf8_lossy(&up.territory),
            "name_on_chain": String::from_utf8_lossy(&up.file_name),
            "chain_unreachable_since": chain_down.as_ref().map(|(since, _)| utc(*since)),
            "error": shown.error,
            "cached": cached,
            "read_ahead": self.open_file(ino).filter(|of| of.cold.is_some()).map(|of| lock(&of.reads).window()),
            "attempts": up.attempts,
            "newer_version_waiting": up.newer.is_some(),
            "staged_at": up.staged_at.secs,
            "updated_at": up.updated_at.secs,
        });
        attrs.push(("user.cess.json", json.to_string()));
        Ok(attrs)
    }

    /// `user.cess.packs`: the state of the packs of small files.
    fn packs_json(&self) -> FsResult<serde_json::Value> {
        let p = self.store.pack_summary()?;
        let segment = crate::format::SEGMENT_SIZE as u64;
        Ok(serde_json::json!({
            "filling": p.filling.map(|(files, bytes)| serde_json::json!({"files": files, "bytes": bytes})),
            "uploading": p.uploading,
            "waiting": p.waiting,
            "stored": p.stored,
            "live_share": if p.stored == 0 { 0.0 } else { p.live as f64 / (p.stored as u64 * segment) as f64 },
            "underfull": p.underfull,
            "space": (p.stored + p.uploading) as u64 * (crate::format::FRAGMENT_SIZE * FRAGMENTS) as u64,
        }))
    }

    /// `user.cess.link`: the bandwidth limit in force and the rates over the last seconds.
    fn link_json(&self, pace: &crate::pace::Pace) -> serde_json::Value {
        let (now, rates) = (pace.current(), pace.rates());
        serde_json::json!({
            "bwlimit": pace.limit().to_string(),
            "up_limit": now.up,
            "down_limit": now.down,
            "up": rates.up.round() as u64,
            "down": rates.down.round() as u64,
            "push_window": pace.push_window(),
        })
    }

    /// `user.cess.snapshot`: the state of the tree's snapshots.
    fn snapshot_json(&self, flags: &super::SnapshotFlags) -> FsResult<serde_json::Value> {
        let summary = self.store.snapshot_summary()?;
        // A read-only view writes no tree: what changes it is the tree it follows.
        let view = self.store.view_generation()?;
        let written = |generation: u64| utc(std::time::UNIX_EPOCH + std::time::Duration::from_millis(generation));
        Ok(serde_json::json!({
            "generation": summary.newest.map(|(g, _)| g),
            "status": summary.newest.map(|(_, state)| state.word()),
            "written_at": summary.newest.map(|(g, _)| written(g)),
            "fid": summary.newest_fid.map(|f| f.to_hex()),
            "active_generation": summary.newest_active,
            "changes_waiting": view.is_none()
                && self.store.tree_commits() > flags.covered.load(std::sync::atomic::Ordering::Acquire),
            "kept": summary.kept,
            "space": summary.segments * (crate::format::FRAGMENT_SIZE * FRAGMENTS) as u64,
            "held_back_fids": summary.held_back,
            "tree_files": summary.tree_files,
            "stopped": lock(&flags.stopped).clone(),
            "sweep_waits": lock(&flags.sweep_waits).clone(),
            "load_waits": lock(&flags.load_waits).clone(),
            "deletions_wait": self.store.deletions_wait(),
            "dirs_to_load": self.store.tree_loading().then(|| self.store.pending_dirs(0, usize::MAX)).transpose()?.map(|d| d.len()),
            "read_only_view_of": view,
        }))
    }

    /// getxattr.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if name == NODE {
            // A view knows only the keys its tree carries.
            let view = ino != crate::store::ROOT_INO && self.store.view_generation()?.is_some();
            let key = match view {
                true => rec.key.filter(|k| k.is_key()).ok_or(FsError::NoAttr)?,
                false => self.store.node_key(ino, &rec),
            };
            return Ok(key.to_hex().into_bytes());
        }
        if name.starts_with(CESS_PREFIX) {
            return self
                .cess_attributes(ino)?
                .into_iter()
                .find(|(n, _)| n.as_bytes() == name)
                .map(|(_, v)| v.into_bytes())
                .ok_or(FsError::NoAttr);
        }
        self.store.xattr(ino, name)?.ok_or(FsError::NoAttr)
    }

    /// listxattr: NUL-terminated names, cessfs's first.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        let mut out = Vec::new();
        for (name, _) in self.cess_attributes(ino)? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        for name in self.store.xattr_names(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// setxattr, with `XATTR_CREATE` / `XATTR_REPLACE`.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::AttrTooBig);
        }
        if name == EVICT {
            return self.evict(ino).map(|_| ());
        }
        if name == BWLIMIT && ino == crate::store::ROOT_INO {
            let pace = self.pace.as_ref().ok_or(FsError::Unsupported)?;
            let text = std::str::from_utf8(value).map_err(|_| FsError::Invalid)?;
            let limit = text.parse().map_err(|e| {
                log::warn!("bandwidth limit {text:?} refused: {e}");
                FsError::Invalid
            })?;
            log::info!("bandwidth limit now {text}");
            pace.set_limit(limit);
            return Ok(());
        }
        if name == GC && ino == crate::store::ROOT_INO {
            let collector = self.collector.as_ref().ok_or(FsError::Unsupported)?;
            let dry_run = match value {
                b"dry-run" => true,
                b"run" => false,
                _ => return Err(FsError::Invalid),
            };
            return if collector.start(dry_run) { Ok(()) } else { Err(FsError::Busy) };
        }
        if name.starts_with(CESS_PREFIX) {
            return Err(FsError::ReadOnlyAttr);
        }
        if !name.starts_with(USER_PREFIX) || name.len() == USER_PREFIX.len() {
            return Err(FsError::Unsupported);
        }
        let _ns = lock(&self.ns);
        let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if !matches!(rec.kind, Kind::File | Kind::Dir) {
            // Linux allows user.* only on regular files and directories.
            return Err(FsError::NotPermitted);
        }
        let exists = self.store.xattr(ino, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        rec.ctime = Timestamp::now();
        let mut b = Batch::default();
        b.put_xattr(ino, name, value);
        b.put_inode(ino, &rec);
        Ok(self.store.commit(b)?)
    }

    /// removexattr.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        if name.starts_with(CESS_PREFIX) {
            return Err(FsError::ReadOnlyAttr);
        }
        let _ns = lock(&self.ns);
        let mut rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        if self.store.xattr(ino, name)?.is_none() {
            return Err(FsError::NoAttr);
        }
        rec.ctime = Timestamp::now();
        let mut b = Batch::default();
        b.remove_xattr(ino, name);
        b.put_inode(ino, &rec);
        Ok(self.store.commit(b)?)
    }
}
