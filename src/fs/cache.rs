//! Content of active files is a cache: evicted in least-recently-used order once the cached bytes
//! pass the limit, and fetched back segment by segment when read (fetch/). Content that is not
//! active yet is never evicted: it exists nowhere else.

use std::ops::Range;
use std::sync::Arc;

use std::os::unix::fs::FileExt;

use super::handles::OpenFile;
use super::{Fs, FsError, FsResult};
use crate::fetch::{Fetcher, Stored};
use crate::format::{DecodedSegment, Extents, Hash, Layout, Mode, SEGMENT_SIZE};
use crate::store::{Batch, Kind, Residency, Store, UploadRecord, UploadState};
use crate::sync::lock;

/// Disk space eviction keeps free for new files when the disk holding the cache fills up.
const DISK_RESERVE: u64 = 256 << 20;

/// Reads segments from the network for the (synchronous) filesystem. A read waits as long as
/// its segment's fragments keep moving: each miner request fails when it stops moving (the stall
/// rule), each chain read within its limit, and the fetch when too few fragments are left; never
/// on a wall-clock deadline, which a slow link (or a low `bwlimit`) would turn into EIO.
pub struct ColdReader {
    /// The fetcher.
    pub fetcher: Arc<Fetcher>,
    /// The runtime it runs on (FUSE threads are not runtime threads, so they may block on it).
    pub runtime: tokio::runtime::Handle,
    /// How many segments past a read are fetched ahead for sequential readers, at most.
    pub read_ahead: usize,
}

/// Seconds of the downlink a sequential reader's read-ahead may queue (at least one segment,
/// so that the link does not idle while the reader reads one).
const READ_AHEAD_LINK_SECS: f64 = 8.0;
/// How far from the end of the last read a read still continues it: the kernel's read-ahead
/// (4 MiB) sends its reads out of order.
const SEQUENTIAL_SLACK: u64 = 8 << 20;

/// Readers of one open file followed at once (two players of one video, `cmp` of two parts).
const READ_STREAMS: usize = 4;

/// Where the readers of an open file read, as the read-ahead sees it (mountpoint-s3's
/// prefetcher): each stream of reads has a window that grows by a segment with each read that
/// continues it, up to what the link brings in a few seconds; a read that continues none starts a
/// stream of its own with no window (a seek in a video fetches its segment, not the ones after it).
#[derive(Default)]
pub(super) struct Sequence {
    /// Where each stream's last read ended, and its window; the most recent last.
    streams: Vec<(u64, usize)>,
}

impl Sequence {
    /// Notes a read of `range`; returns how many segments past it to fetch ahead, `cap` at most.
    fn read(&mut self, range: &Range<u64>, cap: usize) -> usize {
        let continues = |next: u64| range.start + SEQUENTIAL_SLACK >= next && range.start <= next + SEQUENTIAL_SLACK;
        let (next, window) = match self.streams.iter().position(|&(next, _)| continues(next)) {
            Some(i) => {
                let (next, window) = self.streams.remove(i);
                (next.max(range.end), (window + 1).min(cap))
            }
            None => {
                if self.streams.len() == READ_STREAMS {
                    self.streams.remove(0);
                }
                (range.end, 0)
            }
        };
        self.streams.push((next, window));
        window
    }

    /// Segments fetched ahead of its readers now, at most.
    pub(super) fn window(&self) -> usize {
        self.streams.iter().map(|&(_, w)| w).max().unwrap_or(0)
    }
}

/// Where a file's bytes lie in the object its FID holds: at the same offsets, or (a sparse
/// file) its data ranges end to end.
#[derive(Debug, Clone, Default)]
pub(super) struct ObjectMap(Option<Arc<Extents>>);

impl ObjectMap {
    /// The object bytes that hold file bytes `file`, within an object of `size` bytes.
    fn object_range(&self, file: Range<u64>, size: u64) -> Range<u64> {
        match &self.0 {
            Some(extents) => extents.object_range(file),
            None => file.start.min(size)..file.end.min(size),
        }
    }

    /// `lseek` for data (`data`) or a hole from `offset`, below the file's `size`, as the stored
    /// data lies: a dense file is data to its end.
    fn seek(&self, offset: u64, data: bool, size: u64) -> Option<u64> {
        match (&self.0, data) {
            (Some(extents), true) => extents.next_data(offset),
            (Some(extents), false) => Some(extents.next_hole(offset, size)),
            (None, true) => Some(offset),
            (None, false) => Some(size),
        }
    }

    /// Where object bytes `object` go in the file: `(file offset, object range)` pieces.
    fn file_pieces(&self, object: Range<u64>) -> Vec<(u64, Range<u64>)> {
        match &self.0 {
            Some(extents) => extents.pieces(object).collect(),
            None => vec![(object.start, object)],
        }
    }
}

/// Where the bytes of a file that is not whole locally come from.
#[derive(Debug, Clone)]
pub(super) struct ColdSource {
    fid: Hash,
    /// Its object (a sparse file's data ranges) as the fetcher reads it.
    stored: Stored,
    layout: Layout,
    /// A packed file's blob: its id and place in the pack `fid`.
    blob: Option<(Hash, crate::format::BlobPlace)>,
    map: ObjectMap,
}

/// Why a file cannot be evicted.
fn not_evictable(reason: &str) -> FsError {
    FsError::NotEvictable(reason.to_string())
}

/// Which segments an open file's content holds, as the file sees them (`now`) and as its record
/// in the store says (`stored`). Fetched segments are written to the content file at once and
/// recorded only after an fdatasync ([`Fs::persist_presence`]), so the record never claims
/// bytes a crash could have lost; a crash before loses only the knowledge, and they are fetched
/// again. `None` is all of them.
pub(super) struct Presence {
    now: Option<Residency>,
    stored: Option<Residency>,
    layout: Option<Layout>,
    map: ObjectMap,
    /// The file was closed: fetches finishing late leave it alone.
    closed: bool,
}

impl Presence {
    /// Content that is all here.
    pub(super) fn whole() -> Presence {
        Presence { now: None, stored: None, layout: None, map: ObjectMap::default(), closed: false }
    }

    fn from_record(stored: Option<Residency>, source: &ColdSource) -> Presence {
        let (layout, map) = (Some(source.layout), source.map.clone());
        Presence { now: stored.clone(), stored, layout, map, closed: false }
    }

    /// Whether the whole content is here.
    pub(super) fn is_whole(&self) -> bool {
        self.now.is_none()
    }

    fn missing(&self, s: usize) -> bool {
        self.now.as_ref().is_some_and(|r| !r.has(s))
    }

    /// The first missing segment holding file bytes below `limit`.
    pub(super) fn first_missing_below(&self, limit: u64) -> Option<usize> {
        let (now, layout) = (self.now.as_ref()?, self.layout.as_ref()?);
        let limit = self.map.object_range(0..limit, layout.size()).end;
        (0..now.segments as usize).find(|&s| !now.has(s) && layout.chunk(s).start < limit)
    }

    /// `lseek` for data or a hole from `offset` (below `size`) while not all of the content is
    /// here: from the stored data's map (its content file's holes include bytes not fetched
    /// yet). `None`: all is here, the content file answers.
    pub(super) fn seek(&self, offset: u64, data: bool, size: u64) -> Option<Option<u64>> {
        self.now.as_ref()?;
        Some(self.map.seek(offset, data, size))
    }

    /// The content was replaced (truncated): all of it is here.
    pub(super) fn make_whole(&mut self) {
        self.now = None;
    }

    /// The store's record says all of it is here (committed with the truncation's mark).
    pub(super) fn set_stored_whole(&mut self) {
        self.stored = None;
    }

    /// What to record, if the record is behind.
    pub(super) fn unrecorded(&self) -> Option<Option<Residency>> {
        (self.now != self.stored).then(|| self.now.clone())
    }

    /// `now` was recorded.
    pub(super) fn recorded(&mut self, now: Option<Residency>) {
        self.stored = now;
    }

    /// The fetched bytes could not be made durable: fetch them again.
    pub(super) fn forget_unrecorded(&mut self) {
        if self.now != self.stored {
            self.now = self.stored.clone();
        }
    }

    /// The file closed.
    pub(super) fn close(&mut self) {
        self.closed = true;
    }
}

/// Writes fetched segment `s` into an open file's content, unless the content changed
/// meanwhile (truncated, made whole, closed): the presence lock orders the two.
/// Writes fetched segment `s` into an open file's content, unless the content changed
/// meanwhile (truncated, made whole, closed): the presence lock orders the two. A cached copy
/// never takes the database's reserve: without room, it is not written (`Ok(false)`); a writer's
/// bytes (`essential`) are, if small.
fn install(
    store: &Store,
    of: &OpenFile,
    source: &ColdSource,
    s: usize,
    data: &[u8],
    essential: bool,
) -> FsResult<bool> {
    let mut p = lock(&of.presence);
    if p.closed || !p.missing(s) {
        return Ok(true);
    }
    if !store.has_room_for(data.len() as u64, essential) {
        return Ok(false);
    }
    let start = source.layout.chunk(s).start;
    for (at, part) in source.map.file_pieces(start..start + data.len() as u64) {
        of.file.write_all_at(&data[(part.start - start) as usize..(part.end - start) as usize], at)?;
    }
    if let Some(r) = p.now.as_mut() {
        r.set(s);
        if r.complete() {
            p.now = None;
        }
    }
    Ok(true)
}

/// File bytes a read got from the network without keeping them: a segment without room to
/// keep it, or the blocks of one still on its way.
enum Piece {
    Segment(Arc<DecodedSegment>),
    Blocks(Vec<u8>),
}

impl Piece {
    fn data(&self) -> &[u8] {
        match self {
            Piece::Segment(s) => s.data(),
            Piece::Blocks(b) => b,
        }
    }
}

/// What a read found: how many segments it waited for, and the bytes it got that are not in
/// the content file (served from memory), each with its object offset.
pub(super) struct Fetched {
    pub(super) waited: usize,
    uncached: Vec<(u64, Piece)>,
    map: ObjectMap,
}

impl Fetched {
    /// Puts the bytes got from memory into `buf`, the bytes of `of` from `offset` (read from its
    /// content file, where they are a hole).
    pub(super) fn fill(&self, offset: u64, buf: &mut [u8]) {
        for (start, piece) in &self.uncached {
            let data = piece.data();
            for (at, part) in self.map.file_pieces(*start..start + data.len() as u64) {
                let end = at + (part.end - part.start);
                let (from, to) = (offset.max(at), end.min(offset + buf.len() as u64));
                if from < to {
                    let in_data = (part.start - start + from - at) as usize..(part.start - start + to - at) as usize;
                    buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(&data[in_data]);
                }
            }
        }
    }
}

impl ColdSource {
    /// The FID its bytes are read from.
    pub(super) fn fid(&self) -> Hash {
        self.fid
    }
}

impl ColdReader {
    /// Fetches segment `s` of an open file into its content. Returns the segment if there was no room to keep it.
    fn load(
        &self,
        store: &Store,
        of: &OpenFile,
        source: &ColdSource,
        s: usize,
        essential: bool,
        abandonable: bool,
    ) -> FsResult<Option<Arc<DecodedSegment>>> {
        let fetch = async {
            match source.blob {
                Some((id, place)) => self
                    .fetcher
                    .blob(&source.fid, &id, place, source.stored.size)
                    .await
                    .map(|b| Arc::new(DecodedSegment::of_bytes(b))),
                None => self.fetcher.segment(&source.fid, &source.stored, s, abandonable).await,
            }
        };
        let result = match self.runtime.block_on(fetch) {
            Ok(decoded) => {
                install(store, of, source, s, decoded.data(), essential).map(|kept| (!kept).then_some(decoded))
            }
            Err(e) => Err(e.into()),
        };
        self.fetcher.forget(&source.fid, s);
        result
    }

    /// Waits for `fetch` for process `reader`, giving up with EINTR once that process is being
    /// killed (Ctrl-C on a program reading a cold file): the kernel keeps such a process until
    /// its read is answered, and fuser answers the kernel's interrupts ENOSYS, so it is looked
    /// at here. What only that reader wanted stops when its file closes, as the process exits.
    fn wait_for<T>(&self, reader: Option<u32>, fetch: impl std::future::Future<Output = T>) -> FsResult<T> {
        let Some(pid) = reader else { return Ok(self.runtime.block_on(fetch)) };
        self.runtime.block_on(async {
            tokio::select! {
                done = fetch => Ok(done),
                () = being_killed(pid) => Err(FsError::Interrupted),
            }
        })
    }

    /// Starts fetching segment `s` in the background, for a reader that will want it soon.
    fn prefetch(self: &Arc<Self>, store: Arc<Store>, ino: u64, of: Arc<OpenFile>, source: ColdSource, s: usize) {
        let this = self.clone();
        self.runtime.spawn_blocking(move || match this.load(&store, &of, &source, s, false, true) {
            Err(FsError::Fetch(e @ crate::fetch::FetchError::Abandoned)) => {
                log::info!("segment {s} of inode {ino}: {e}: the file was closed before it came")
            }
            Err(e) => log::debug!("read-ahead of segment {s} of inode {ino}: {e}"),
            Ok(_) => {}
        });
    }
}

/// How often a cold read looks whether its reader is being killed.
const KILLED_LOOK: std::time::Duration = std::time::Duration::from_millis(200);

/// Returns once process (or thread) `pid` is being killed or is gone: a fatal signal shows as
/// SIGKILL pending in its `/proc` status (the kernel turns an unhandled Ctrl-C into one). A
/// process this daemon cannot see (pid 0 for the kernel's own reads, `hidepid`) is never taken
/// for killed: its read waits as it would without this.
async fn being_killed(pid: u32) {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let killed = |status: &str| {
        status.lines().any(|line| {
            let pending = line.strip_prefix("SigPnd:").or_else(|| line.strip_prefix("ShdPnd:"));
            pending.and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok()).is_some_and(|m| m & SIGKILL_BIT != 0)
        })
    };
    if status().is_none() {
        return std::future::pending().await;
    }
    while status().is_some_and(|s| !killed(&s)) {
        tokio::time::sleep(KILLED_LOOK).await;
    }
}

impl Fs {
    /// Where to fetch `ino`'s content from, if it is not all here (read at open).
    pub(super) fn cold_source(&self, ino: u64) -> FsResult<(Option<ColdSource>, Presence)> {
        let Some(residency) = self.store.residency(ino)? else { return Ok((None, Presence::whole())) };
        // A stored file moving to another pack reads from its old one meanwhile.
        let stored = self.store.upload(ino)?.and_then(|u| match u.state {
            UploadState::Active => u.stored_version(),
            UploadState::Packed => u.previous,
            _ => None,
        });
        let Some(stored) = stored else { return Err(FsError::NotCached(ino)) };
        let mode = Mode::of(stored.format, stored.seed.is_some());
        let size = stored.object_size();
        let layout = Layout::new(size, mode).map_err(|_| FsError::NotCached(ino))?;
        let kept = Stored { size, mode, seed: stored.seed };
        let map = ObjectMap(stored.extents.map(Arc::new));
        let source = ColdSource { fid: stored.fid, stored: kept, layout, blob: stored.blob, map };
        let presence = Presence::from_record(Some(residency), &source);
        Ok((Some(source), presence))
    }

    /// Makes the bytes `range` of an open file present locally, fetching missing segments (and
    /// starting on the next ones, for sequential readers: see [`Sequence`]), for process
    /// `reader` (`None`: made local for a change, without read-ahead). Returns how many segments
    /// the caller waited for.
    pub(super) fn ensure_present(
        &self,
        ino: u64,
        of: &Arc<OpenFile>,
        range: Range<u64>,
        reader: Option<u32>,
    ) -> FsResult<Fetched> {
        let read_ahead = reader.is_some();
        let Some(source) = &of.cold else {
            return Ok(Fetched { waited: 0, uncached: Vec::new(), map: ObjectMap::default() });
        };
        let mut fetched = Fetched { waited: 0, uncached: Vec::new(), map: source.map.clone() };
        let size = source.stored.size;
        // From here on, offsets are the object's (a sparse file's holes need no fetch).
        let range = source.map.object_range(range, size);
        if range.start >= size || range.is_empty() {
            return Ok(fetched);
        }
        let missing = |s: usize| lock(&of.presence).missing(s);
        let first = source.layout.segment_of(range.start);
        let last = source.layout.segment_of(range.end.min(size) - 1);
        let needed: Vec<usize> = (first..=last).filter(|&s| missing(s)).collect();
        let writer = !read_ahead;
        let read_ahead = if read_ahead { lock(&of.reads).read(&range, self.read_ahead_cap()) } else { 0 };
        let ahead: Vec<usize> = (last + 1..source.layout.segments())
            .take(read_ahead)
            .filter(|&s| missing(s) && self.cold.as_ref().is_some_and(|c| !c.fetcher.busy(&source.fid, s)))
            .collect();
        let ino_reads = (!writer).then_some(ino);
        if needed.is_empty() && ahead.is_empty() {
            return Ok(fetched);
        }
        let cold = self.cold.as_ref().ok_or(FsError::NoNetwork)?;
        // Room first, so that the cache stays within its limit once these segments are in.
        self.make_cache_room((needed.len() + ahead.len()) as u64 * SEGMENT_SIZE as u64, false);
        // What the reader waits for first: read-ahead started alongside would slow the first byte.
        for &s in &needed {
            let chunk = source.layout.chunk(s);
            // Sealed in blocks: the segment comes in the background, from the reader's block on,
            // and the reader gets its bytes as soon as their blocks are in.
            if !writer && source.layout.mode() == Mode::Blocks && source.blob.is_none() {
                let want = (range.start.max(chunk.start) - chunk.start) as usize
                    ..(range.end.min(chunk.end) - chunk.start) as usize;
                if cold.fetcher.expect(&source.fid, s, want.start / crate::format::BLOCK_CAPACITY, ino) {
                    cold.prefetch(self.store.clone(), ino, of.clone(), source.clone(), s);
                }
                match cold.wait_for(reader, cold.fetcher.range(&source.fid, s, want.clone()))? {
                    // The read that completes the segment keeps it before it returns, so that a
                    // file read to its end and closed at once stays cached.
                    Some(Ok((_, true))) if missing(s) => {}
                    Some(Ok((bytes, _))) => {
                        fetched.uncached.push((chunk.start + want.start as u64, Piece::Blocks(bytes)));
                        continue;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    // Fetched and kept meanwhile, or not to be had so: read as below.
                    None if !missing(s) => continue,
                    None => {}
                }
            }
            // Without read-ahead, it is for a writer (`localize`), which needs it kept.
            if let Some(segment) = cold.load(&self.store, of, source, s, writer, false)? {
                if writer {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
                }
                fetched.uncached.push((chunk.start, Piece::Segment(segment)));
            }
        }
        for &s in &ahead {
            // Wanted by this open file: dropped if it closes first.
            if ino_reads.is_none_or(|ino| cold.fetcher.expect(&source.fid, s, 0, ino)) {
                cold.prefetch(self.store.clone(), ino, of.clone(), source.clone(), s);
            }
        }
        fetched.waited = needed.len();
        Ok(fetched)
    }

    /// The most segments to fetch ahead now: what the downlink brought in the last seconds
    /// carries in [`READ_AHEAD_LINK_SECS`] (one when nothing came), at most the configured
    /// read-ahead.
    fn read_ahead_cap(&self) -> usize {
        let most = self.cold.as_ref().map_or(0, |c| c.read_ahead);
        let link = match &self.pace {
            Some(pace) => (pace.rates().down * READ_AHEAD_LINK_SECS / SEGMENT_SIZE as f64) as usize,
            None => most,
        };
        link.max(1).min(most)
    }

    /// Makes bytes `0..end` of closed or open file `ino` local before its content changes (no
    /// read-ahead: segments past `end` may be cut away). Returns a read handle, to release after
    /// the change, that keeps the file from eviction.
    pub(super) fn localize(&self, ino: u64, end: u64) -> FsResult<Option<u64>> {
        if self.store.residency(ino)?.is_none() {
            return Ok(None);
        }
        let opened = self.open(ino, libc::O_RDONLY)?;
        let fetched = self.handle_file(opened.fh).and_then(|of| self.ensure_present(ino, &of, 0..end, None).map(drop));
        if let Err(e) = fetched {
            let _ = self.release(opened.fh);
            return Err(e);
        }
        Ok(Some(opened.fh))
    }

    /// Which segments of `ino` are here (`None`: all of them), as an open file sees them.
    pub(super) fn residency(&self, ino: u64) -> FsResult<Option<Residency>> {
        match self.open_file(ino) {
            Some(of) => Ok(lock(&of.presence).now.clone()),
            None => Ok(self.store.residency(ino)?),
        }
    }

    /// Notes that `ino` was used now (for the eviction order).
    pub(super) fn touch(&self, ino: u64) {
        self.store.touch(ino);
    }

    /// Drops the local content of active, closed file `ino`, keeping its size; reads fetch it
    /// back. Returns the bytes freed. At every instant the file is either whole on disk or
    /// durably recorded as not cached: the record is made durable first, then the content file
    /// is swapped for an empty one of the same size (the old one's blocks are freed outside
    /// `ns`).
    pub fn evict(&self, ino: u64) -> FsResult<u64> {
        let (up, size, freed) = {
            let _ns = lock(&self.ns);
            let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
            if rec.kind != Kind::File {
                return Err(not_evictable("not a regular file"));
            }
            let up = self.store.upload(ino)?.ok_or_else(|| not_evictable("not stored on CESS"))?;
            match up {
                UploadRecord { state: UploadState::Active, retired: false, newer: None, .. } => {}
                UploadRecord { state, .. } => {
                    return Err(not_evictable(&format!("{} (only active files are evicted)", state.word())));
                }
            }
            if self.open_file(ino).is_some() {
                return Err(not_evictable("open"));
            }
            if self.store.another_writer() {
                return Err(not_evictable("another mount writes this tree: local copies are kept"));
            }
            let residency = self.store.residency(ino)?;
            let freed = crate::store::resident_bytes(up.object_size(), up.segments, residency.as_ref());
            let mut b = Batch::default();
            b.put_residency(ino, Some(&Residency::empty(up.segments)));
            self.store.commit(b)?;
            (up, rec.size, freed)
        };
        self.store.sync()?;
        let old = {
            let _ns = lock(&self.ns);
            let unchanged = self.store.upload(ino)?.as_ref() == Some(&up)
                && self.store.residency(ino)? == Some(Residency::empty(up.segments));
            if !unchanged || self.open_file(ino).is_some() || self.store.another_writer() {
                // Opened, written or fetched meanwhile: the bytes stay (reads fetch what the
                // record says is missing, the same bytes again).
                return Ok(0);
            }
            self.store.replace_content_with_hole(ino, size)?
        };
        drop(old);
        log::info!("evicted the local copy of inode {ino} ({freed} bytes); reads fetch it from CESS");
        Ok(freed)
    }

    /// Evicts least recently used active files until the cached content is within the limit,
    /// and the disk keeps some room for new files.
    pub fn enforce_cache_limit(&self) {
        self.make_cache_room(0, false);
    }

    /// Evicts so that `incoming` more bytes keep the cache within its limit and leave the disk
    /// its reserve (`disk_full`: a write just found no room, whatever statfs says; then, if
    /// evicting is not enough, removed files give up their deals in flight and their bytes).
    /// Returns the bytes freed.
    pub(super) fn make_cache_room(&self, incoming: u64, disk_full: bool) -> u64 {
        let before = self.store.cached_bytes();
        let room = match disk_full {
            true => 0,
            false => self.store.disk_space().map_or(u64::MAX, |st| st.f_bavail * st.f_frsize),
        };
        let limit = self.config.cache_size.min((before + room).saturating_sub(DISK_RESERVE)).saturating_sub(incoming);
        // Files that cannot go now (open, just changed) are passed over; each round looks at the
        // next ones in order.
        let mut passed = 0;
        while self.store.cached_bytes() > limit {
            let candidates = self.store.eviction_order(passed + 16);
            if candidates.len() <= passed {
                break;
            }
            for ino in &candidates[passed..] {
                if self.store.cached_bytes() <= limit {
                    break;
                }
                match self.evict(*ino) {
                    Ok(freed) if freed > 0 => {}
                    Ok(_) => passed += 1,
                    Err(e) => {
                        log::debug!("not evicting inode {ino}: {e}");
                        passed += 1;
                    }
                }
            }
        }
        let evicted = before.saturating_sub(self.store.cached_bytes());
        if !disk_full || evicted >= incoming.max(1) {
            return evicted;
        }
        match self.store.abandon_removed_deals() {
            Ok(given_back) => evicted + given_back,
            Err(e) => {
                log::error!("giving up the deals of removed files: {e}");
                evicted
            }
        }
    }

    /// Bytes of cached content of active files (what eviction can free).
    pub fn evictable_bytes(&self) -> u64 {
        self.store.cached_bytes()
    }
}
