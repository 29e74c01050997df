//! Streaming, parallel encoding of a file into segments and fragments.
//!
//! Segments are encoded on all cores, one more in flight than there are cores (at most as many
//! as the encoder may lend out: in the upload engine 2, shared with the rebuilt fragments
//! waiting for the link), and the hashes of one segment are
//! spread over the cores too, so a one-segment file uses every core. Buffers are recycled: memory stays at about 96 MiB per
//! segment in flight whatever the file size.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, mpsc};

use rayon::prelude::*;

use super::crypto::{ChunkDigest, FileKey, HEADER_LEN};
use super::{
    DATA_FRAGMENTS, Erasure, FRAGMENT_SIZE, FRAGMENTS, FileManifest, FormatError, Hash, Layout, MasterKey, Mode,
    PARITY_FRAGMENTS, SEGMENT_SIZE, SegmentManifest, ZERO_FRAGMENT_HASH, sha256,
};

/// Where the file's bytes come from. Reads may run on several threads at once.
pub trait ChunkSource: Sync {
    /// The caller's error type; it must hold format errors too.
    type Error: From<FormatError> + Send;
    /// Fills `buf` with the file's bytes starting at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
}

impl ChunkSource for [u8] {
    type Error = FormatError;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        buf.copy_from_slice(&self[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

/// The 12 fragments of one segment, in the encoder's buffers.
struct Fragments<'a> {
    segment: &'a [u8],
    parity: &'a [u8],
}

impl<'a> Fragments<'a> {
    /// The bytes of fragment `i` (8 MiB): data fragments are quarters of the segment.
    fn fragment(&self, i: usize) -> &'a [u8] {
        if i < DATA_FRAGMENTS {
            &self.segment[i * FRAGMENT_SIZE..(i + 1) * FRAGMENT_SIZE]
        } else {
            &self.parity[(i - DATA_FRAGMENTS) * FRAGMENT_SIZE..(i - DATA_FRAGMENTS + 1) * FRAGMENT_SIZE]
        }
    }
}

/// One encoded segment, lent to the sink of [`Encoder::encode`].
pub struct EncodedSegment<'a> {
    /// Segment index in the file.
    pub index: usize,
    /// Hashes of the segment and its fragments.
    pub manifest: SegmentManifest,
    fragments: Fragments<'a>,
}

impl EncodedSegment<'_> {
    /// The bytes of fragment `i` (8 MiB).
    pub fn fragment(&self, i: usize) -> &[u8] {
        self.fragments.fragment(i)
    }
}

/// The 12 fragments of one segment rebuilt by [`Encoder::regenerate`], owned and cheap to clone
/// (for sending them without copying): the buffers go back to the encoder when the last clone
/// is dropped.
#[derive(Clone)]
pub struct SharedFragments(Arc<Lease>);

impl SharedFragments {
    /// The bytes of fragment `i` (8 MiB).
    pub fn fragment(&self, i: usize) -> &[u8] {
        Fragments { segment: &self.0.segment, parity: &self.0.parity }.fragment(i)
    }
}

/// Buffers lent out by the pool, given back when dropped, whatever path drops them (an error,
/// a panic, a push given up).
struct Lease {
    buffers: Option<Buffers>,
    pool: Arc<Pool>,
}

impl std::ops::Deref for Lease {
    type Target = Buffers;
    fn deref(&self) -> &Buffers {
        self.buffers.as_ref().expect("buffers are only taken on drop")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Buffers {
        self.buffers.as_mut().expect("buffers are only taken on drop")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(b) = self.buffers.take() {
            self.pool.give(b);
        }
    }
}

/// What [`Encoder::encode`] learns besides the manifest: the key seed, which lets
/// [`Encoder::regenerate`] rebuild the fragments without another pass over the whole file.
pub type Seed = [u8; 32];

struct Buffers {
    segment: Vec<u8>,
    parity: Vec<u8>,
}

/// Recycled segment buffers (allocating 96 MiB per segment would be dominated by page faults),
/// at most `limit` of them lent out at once: what bounds the memory of encoding and of the
/// fragments rebuilt for pushes together.
struct Pool {
    state: Mutex<Lent>,
    returned: Condvar,
    limit: usize,
}

#[derive(Default)]
struct Lent {
    free: Vec<Buffers>,
    out: usize,
    /// Takers waiting for buffers.
    waiting: usize,
}

/// Encodes files, keeping its segment buffers (about 96 MiB each) between files; drop it or
/// call [`Encoder::release_buffers`] to give the memory back.
pub struct Encoder {
    pool: Arc<Pool>,
    erasure: Erasure,
}

impl Default for Encoder {
    /// An encoder with one segment in flight more than there are cores.
    fn default() -> Encoder {
        Encoder::holding_at_most(rayon::current_num_threads() + 1)
    }
}

/// How often a wait for buffers looks whether to give up.
const GIVE_UP_LOOK: std::time::Duration = std::time::Duration::from_millis(100);

impl Pool {
    /// Buffers for one segment, once fewer than `limit` are lent out; `None` if `give_up` says
    /// so while waiting (asked with the pool unlocked).
    fn take(self: &Arc<Self>, give_up: &dyn Fn() -> bool) -> Option<Lease> {
        self.take_within(self.limit, give_up)
    }

    /// Buffers for one segment, once fewer than `limit` are lent out; counted as waiting
    /// meanwhile ([`Encoder::short_of_buffers`]).
    fn take_within(self: &Arc<Self>, limit: usize, give_up: &dyn Fn() -> bool) -> Option<Lease> {
        let mut counted = false;
        loop {
            {
                let mut lent = crate::sync::lock(&self.state);
                if lent.out >= limit {
                    if !counted {
                        lent.waiting += 1;
                        counted = true;
                    }
                    lent = self.returned.wait_timeout(lent, GIVE_UP_LOOK).map_or_else(|e| e.into_inner().0, |(l, _)| l);
                }
                if lent.out < limit {
                    if counted {
                        lent.waiting -= 1;
                    }
                    lent.out += 1;
                    let buffers = lent.free.pop().unwrap_or_else(|| Buffers {
                        segment: vec![0; SEGMENT_SIZE],
                        parity: vec![0; FRAGMENT_SIZE * PARITY_FRAGMENTS],
                    });
                    return Some(Lease { buffers: Some(buffers), pool: self.clone() });
                }
            }
            if give_up() {
                if counted {
                    crate::sync::lock(&self.state).waiting -= 1;
                }
                return None;
            }
        }
    }

    /// Buffers for a segment being encoded, waiting as long as it takes. Pushes give theirs
    /// back promptly while someone waits: a segment held up by a slow miner detaches the few
    /// fragments it still sends (see the upload engine's pushes).
    fn take_for_encoding(self: &Arc<Self>) -> Lease {
        loop {
            if let Some(b) = self.take_within(self.limit, &|| false) {
                return b;
            }
        }
    }

    /// Gives `b` back for reuse.
    fn give(&self, b: Buffers) {
        let mut lent = crate::sync::lock(&self.state);
        lent.out = lent.out.saturating_sub(1);
        lent.free.push(b);
        self.returned.notify_one();
    }
}

impl Encoder {
    /// An encoder that lends out at most `segments` segments' buffers at once (at least 1),
    /// however many files it encodes and rebuilds for at the same time.
    pub fn holding_at_most(segments: usize) -> Encoder {
        let pool = Pool { state: Mutex::default(), returned: Condvar::new(), limit: segments.max(1) };
        Encoder { pool: Arc::new(pool), erasure: Erasure::default() }
    }

    /// Whether an encoding or a rebuild waits for buffers: every one the encoder may lend out
    /// is lent.
    pub fn short_of_buffers(&self) -> bool {
        crate::sync::lock(&self.pool.state).waiting > 0
    }

    /// Frees the buffers kept for the next file.
    pub fn release_buffers(&self) {
        crate::sync::lock(&self.pool.state).free.clear();
    }

    /// Encodes a file of `size` bytes read from `source`: encrypted with a key derived from
    /// `master`, or in plaintext (the golden-vector layout) when `master` is `None`. `sink` receives
    /// every segment in order, with its fragments, on the calling thread; the manifest (FID and
    /// hashes) is returned. Segments are encoded on rayon's pool, one more in flight than it has
    /// threads (at most the encoder's limit), so call this from outside that pool.
    pub fn encode<S, F>(
        &self,
        source: &S,
        size: u64,
        master: Option<&MasterKey>,
        sink: F,
    ) -> Result<FileManifest, S::Error>
    where
        S: ChunkSource + ?Sized,
        F: FnMut(&EncodedSegment<'_>) -> Result<(), S::Error>,
    {
        self.encode_with_seed(source, size, master, sink).map(|(manifest, _)| manifest)
    }

    /// [`Encoder::encode`], also returning the key seed (`None` in plaintext mode).
    pub fn encode_with_seed<S, F>(
        &self,
        source: &S,
        size: u64,
        master: Option<&MasterKey>,
        mut sink: F,
    ) -> Result<(FileManifest, Option<Seed>), S::Error>
    where
        S: ChunkSource + ?Sized,
        F: FnMut(&EncodedSegment<'_>) -> Result<(), S::Error>,
    {
        let mode = master.map_or(Mode::Plain, |m| Mode::of(m.version(), true));
        let layout = Layout::new(size, mode)?;
        let (pool, erasure) = (&self.pool, &self.erasure);
        let seed = match master {
            Some(m) => Some(file_seed(source, &layout, m)?),
            None => None,
        };
        let key = master.zip(seed.as_ref()).map(|(m, seed)| m.file_key(seed));
        let in_flight = (rayon::current_num_threads() + 1).min(pool.limit);
        let (done_tx, done_rx) = mpsc::channel();
        let mut segments = Vec::with_capacity(layout.segments());
        rayon::in_place_scope(|scope| {
            // Buffers are taken here, in segment order, so a later segment never holds the
            // buffers an earlier one waits for.
            let spawn = |index: usize, mut b: Lease| {
                let done = done_tx.clone();
                let (layout, key) = (&layout, key.as_ref());
                scope.spawn(move |_| {
                    let manifest = encode_segment(source, layout, key, erasure, index, &mut b);
                    // The receiver is gone only if an earlier segment failed; nothing waits for this one.
                    let _ = done.send((index, manifest, b));
                });
            };
            // The first segment waits for buffers; more go in flight at once only if buffers
            // are free now (pushes may hold the others for a while).
            let mut next = 0;
            while next < in_flight.min(layout.segments()) {
                let b = if next == 0 { Some(pool.take_for_encoding()) } else { pool.take(&|| true) };
                let Some(b) = b else { break };
                spawn(next, b);
                next += 1;
            }
            let mut ready = BTreeMap::new();
            while segments.len() < layout.segments() {
                let (index, manifest, b) = done_rx.recv().expect("a spawned segment always reports");
                ready.insert(index, (manifest, b));
                while let Some((manifest, b)) = ready.remove(&segments.len()) {
                    let fragments = Fragments { segment: &b.segment, parity: &b.parity };
                    let seg = EncodedSegment { index: segments.len(), manifest: manifest?, fragments };
                    sink(&seg)?;
                    segments.push(seg.manifest);
                    drop(b);
                    if next < layout.segments() {
                        spawn(next, pool.take_for_encoding());
                        next += 1;
                    }
                }
            }
            Ok::<(), S::Error>(())
        })?;
        Ok((FileManifest::new(size, segments), seed))
    }

    /// Rebuilds the fragments of segments `which` of a file encoded before, from its bytes and
    /// the key seed that encoding returned, without hashing: for sending fragments whose hashes
    /// are known already. One segment at a time, on the calling thread; each is handed over in
    /// buffers of its own, lent out until the sink drops the last clone, and each waits for its
    /// buffers while the encoder has lent out all it may. `stop` says why to stop, before each
    /// segment and while waiting.
    pub fn regenerate<S, F>(
        &self,
        source: &S,
        size: u64,
        master: Option<(&MasterKey, &Seed)>,
        which: impl IntoIterator<Item = usize>,
        stop: &dyn Fn() -> Result<(), S::Error>,
        mut sink: F,
    ) -> Result<(), S::Error>
    where
        S: ChunkSource + ?Sized,
        F: FnMut(usize, SharedFragments) -> Result<(), S::Error>,
    {
        let mode = master.map_or(Mode::Plain, |(m, _)| Mode::of(m.version(), true));
        let layout = Layout::new(size, mode)?;
        let key = master.map(|(m, seed)| m.file_key(seed));
        for index in which {
            if index >= layout.segments() {
                return Err(FormatError::Layout { segment: index, size }.into());
            }
            stop()?;
            let mut b = loop {
                if let Some(b) = self.pool.take(&|| stop().is_err()) {
                    break b;
                }
                stop()?;
            };
            fill_segment(source, &layout, key.as_ref(), index, &mut b)?;
            let Buffers { segment, parity } = &mut *b;
            self.erasure.encode(segment, parity);
            sink(index, SharedFragments(Arc::new(b)))?;
        }
        Ok(())
    }
}

/// Bytes read at a time for the seed's digests: a small buffer per core, outside the pool (the
/// seed comes before any segment is encoded, while pushes may hold every pooled buffer).
const SEED_READ: usize = 1 << 20;

/// The seed of the file's key: a keyed digest over the digest of every plaintext chunk.
fn file_seed<S: ChunkSource + ?Sized>(source: &S, layout: &Layout, master: &MasterKey) -> Result<[u8; 32], S::Error> {
    let digests: Vec<[u8; 32]> = (0..layout.segments())
        .into_par_iter()
        .map(|i| {
            let range = layout.chunk(i);
            let (mut digest, mut buf, mut at) = (ChunkDigest::new(), vec![0u8; SEED_READ], range.start);
            while at < range.end {
                let n = (range.end - at).min(SEED_READ as u64) as usize;
                source.read_at(at, &mut buf[..n])?;
                digest.update(&buf[..n]);
                at += n as u64;
            }
            Ok(*digest.finalize().as_bytes())
        })
        .collect::<Result<_, S::Error>>()?;
    Ok(master.seed(layout.size(), &digests))
}

/// Puts segment `index` (plain or sealed) into `b.segment`.
fn fill_segment<S: ChunkSource + ?Sized>(
    source: &S,
    layout: &Layout,
    key: Option<&FileKey>,
    index: usize,
    b: &mut Buffers,
) -> Result<(), S::Error> {
    let range = layout.chunk(index);
    let len = (range.end - range.start) as usize;
    match key {
        None => {
            source.read_at(range.start, &mut b.segment[..len])?;
            b.segment[len..].fill(0);
        }
        Some(key) => {
            source.read_at(range.start, &mut b.segment[HEADER_LEN..HEADER_LEN + len])?;
            key.seal(layout, index, len, &mut b.segment);
        }
    }
    Ok(())
}

fn encode_segment<S: ChunkSource + ?Sized>(
    source: &S,
    layout: &Layout,
    key: Option<&FileKey>,
    erasure: &Erasure,
    index: usize,
    b: &mut Buffers,
) -> Result<SegmentManifest, S::Error> {
    fill_segment(source, layout, key, index, b)?;
    let used = layout.used_len(index);
    let segment = &b.segment;
    let parity = &mut b.parity;
    let mut fragments = [Hash::default(); FRAGMENTS];
    let (data_hashes, parity_hashes) = fragments.split_at_mut(DATA_FRAGMENTS);
    let (hash, ()) = rayon::join(
        || {
            let (hash, ()) = rayon::join(
                || sha256(segment),
                || {
                    data_hashes.par_iter_mut().enumerate().for_each(|(i, h)| {
                        let start = i * FRAGMENT_SIZE;
                        *h = if start >= used {
                            ZERO_FRAGMENT_HASH
                        } else {
                            sha256(&segment[start..start + FRAGMENT_SIZE])
                        };
                    })
                },
            );
            hash
        },
        || {
            erasure.encode(segment, parity);
            parity_hashes.par_iter_mut().zip(parity.par_chunks_exact(FRAGMENT_SIZE)).for_each(|(h, p)| *h = sha256(p));
        },
    );
    Ok(SegmentManifest { hash, fragments })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of 3 segments (plaintext layout).
    fn three_segments() -> Vec<u8> {
        (0..2 * SEGMENT_SIZE + 5).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn one_segment_of_buffers_encodes_a_file_of_several() {
        let data = three_segments();
        let bounded = Encoder::holding_at_most(1).encode(&data[..], data.len() as u64, None, |_| Ok(())).unwrap();
        let free = Encoder::default().encode(&data[..], data.len() as u64, None, |_| Ok(())).unwrap();
        assert_eq!(bounded.fid, free.fid);
    }

    #[test]
    fn rebuilding_waits_for_lent_buffers_and_stops_when_told() {
        let data = three_segments();
        let encoder = Encoder::holding_at_most(1);
        let mut kept = Vec::new();
        // Asked before each segment, then while waiting: it says stop from its third answer on.
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let stop = || match asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 | 1 => Ok(()),
            _ => Err(FormatError::Layout { segment: 99, size: 0 }),
        };
        // The first segment's buffers stay lent out: the second waits, until told to stop.
        let result = encoder.regenerate(&data[..], data.len() as u64, None, 0..3, &stop, |index, fragments| {
            kept.push((index, fragments));
            Ok(())
        });
        assert!(matches!(result, Err(FormatError::Layout { segment: 99, .. })), "{result:?}");
        assert_eq!(kept.len(), 1);
        // Given back, they are lent again.
        drop(kept);
        let mut rebuilt = 0;
        encoder
            .regenerate(&data[..], data.len() as u64, None, 0..3, &|| Ok(()), |_, _| {
                rebuilt += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(rebuilt, 3);
    }
}
