//! Decoding: any 4 intact fragments of a segment give back its file bytes, or an error; never
//! wrong bytes. Every fragment is checked against its hash before use, the rebuilt segment against
//! the segment hash, and encrypted segments against their GCM-SIV tag.

use std::ops::Range;
use std::sync::Mutex;

use rayon::prelude::*;

use super::crypto::{FileKey, header_seed};
use super::{
    DATA_FRAGMENTS, Erasure, FRAGMENT_SIZE, FRAGMENTS, FileManifest, FormatError, Layout, MasterKey, Mode,
    PARITY_FRAGMENTS, SEGMENT_SIZE, SegmentManifest, ZERO_FRAGMENT_HASH, sha256,
};

/// A decoded segment: its 32 MiB buffer, where the file bytes lie in it, and which of the
/// supplied fragments failed their hash check.
pub struct DecodedSegment {
    buffer: Vec<u8>,
    chunk: Range<usize>,
    /// Indices of supplied fragments whose bytes did not match their hash.
    pub corrupt: Vec<usize>,
}

impl DecodedSegment {
    /// A segment's worth of file bytes read some other way (a packed blob).
    pub fn of_bytes(bytes: Vec<u8>) -> DecodedSegment {
        DecodedSegment { chunk: 0..bytes.len(), buffer: bytes, corrupt: Vec::new() }
    }

    /// The key seed in its header (encrypted segments).
    pub fn seed(&self) -> Option<[u8; 32]> {
        header_seed(&self.buffer).map(|(_, seed)| seed)
    }

    /// The file bytes this segment carries.
    pub fn data(&self) -> &[u8] {
        &self.buffer[self.chunk.clone()]
    }

    /// Gives the buffer back for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buffer
    }
}

/// Decodes the segments of one file.
pub struct FileDecoder {
    layout: Layout,
    master: Option<MasterKey>,
    erasure: Erasure,
    key: Mutex<Option<std::sync::Arc<FileKey>>>,
}

impl FileDecoder {
    /// A decoder for a file of `size` bytes laid out in `mode`, encrypted under `master` (a
    /// mode other than plain without a key fails at the first segment).
    pub fn new(size: u64, master: Option<&MasterKey>, mode: Mode) -> Result<FileDecoder, FormatError> {
        Ok(FileDecoder {
            layout: Layout::new(size, mode)?,
            master: master.cloned(),
            erasure: Erasure::default(),
            key: Mutex::new(None),
        })
    }

    /// The file's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The key of the file whose segments carry `seed` (encrypted files), to open its blocks
    /// one by one (format version 3).
    pub fn key(&self, seed: &[u8; 32]) -> Option<std::sync::Arc<FileKey>> {
        let master = self.master.as_ref()?;
        if self.layout.mode() != Mode::Blocks {
            return None;
        }
        self.file_key(master, super::FORMAT_V3, seed)
    }

    /// Decodes segment `index` from whichever of its fragments are supplied (`None` = missing),
    /// preferring data fragments. All-zero fragments need not be supplied. `buffer` is reused
    /// for the segment.
    pub fn decode_segment(
        &self,
        index: usize,
        expected: &SegmentManifest,
        fragments: &[Option<&[u8]>; FRAGMENTS],
        buffer: Vec<u8>,
    ) -> Result<DecodedSegment, FormatError> {
        let (chosen, corrupt) = choose_intact(index, expected, fragments)?;
        self.rebuild(index, expected, fragments, chosen, corrupt, buffer)
    }

    /// [`FileDecoder::decode_segment`] from fragments the caller has already checked against
    /// their hashes (as a reader does when each arrives, to know whether to fetch another one):
    /// the first 4 supplied are used. A segment rebuilt with parity is checked against its hash;
    /// one made of the 4 data fragments is their concatenation, which their hashes vouch for.
    /// Decryption checks the result again.
    pub fn decode_verified_segment(
        &self,
        index: usize,
        expected: &SegmentManifest,
        fragments: &[Option<&[u8]>; FRAGMENTS],
        buffer: Vec<u8>,
    ) -> Result<DecodedSegment, FormatError> {
        let chosen: Vec<usize> = (0..FRAGMENTS)
            .filter(|&i| fragments[i].is_some() || expected.fragments[i] == ZERO_FRAGMENT_HASH)
            .take(DATA_FRAGMENTS)
            .collect();
        if chosen.len() < DATA_FRAGMENTS {
            return Err(FormatError::TooFewFragments {
                segment: index,
                intact: chosen.len(),
                corrupt: 0,
                missing: FRAGMENTS - chosen.len(),
            });
        }
        self.rebuild(index, expected, fragments, chosen, Vec::new(), buffer)
    }

    fn rebuild(
        &self,
        index: usize,
        expected: &SegmentManifest,
        fragments: &[Option<&[u8]>; FRAGMENTS],
        chosen: Vec<usize>,
        corrupt: Vec<usize>,
        mut buffer: Vec<u8>,
    ) -> Result<DecodedSegment, FormatError> {
        if index >= self.layout.segments() {
            return Err(FormatError::Layout { segment: index, size: self.layout.size() });
        }
        buffer.resize(SEGMENT_SIZE, 0);
        let mut have_data = [false; DATA_FRAGMENTS];
        let mut parity: [Option<Vec<u8>>; PARITY_FRAGMENTS] = Default::default();
        for &i in &chosen {
            let bytes = fragments[i];
            if i < DATA_FRAGMENTS {
                let dst = &mut buffer[i * FRAGMENT_SIZE..(i + 1) * FRAGMENT_SIZE];
                match bytes {
                    Some(b) => dst.copy_from_slice(b),
                    None => dst.fill(0),
                }
                have_data[i] = true;
            } else {
                parity[i - DATA_FRAGMENTS] = Some(bytes.map_or_else(|| vec![0; FRAGMENT_SIZE], <[u8]>::to_vec));
            }
        }
        if chosen.iter().any(|&i| i >= DATA_FRAGMENTS) {
            self.erasure.reconstruct(&mut buffer, have_data, &mut parity);
            let actual = sha256(&buffer);
            if actual != expected.hash {
                return Err(FormatError::SegmentHash { segment: index, expected: expected.hash, actual });
            }
        }
        let chunk = match (self.layout.mode(), &self.master) {
            (Mode::Plain, _) => {
                let range = self.layout.chunk(index);
                0..(range.end - range.start) as usize
            }
            (_, None) => return Err(FormatError::Decrypt { segment: index }),
            (_, Some(master)) => {
                let (version, seed) = header_seed(&buffer)
                    .filter(|(v, _)| Mode::of(*v, true) == self.layout.mode())
                    .ok_or(FormatError::NotEncrypted { segment: index })?;
                let key = self.file_key(master, version, &seed).ok_or(FormatError::NotEncrypted { segment: index })?;
                key.open(&self.layout, index, &mut buffer)?
            }
        };
        Ok(DecodedSegment { buffer, chunk, corrupt })
    }

    fn file_key(&self, master: &MasterKey, version: u8, seed: &[u8; 32]) -> Option<std::sync::Arc<FileKey>> {
        let mut cached = crate::sync::lock(&self.key);
        match cached.as_ref() {
            Some(k) if k.seed() == seed && k.version() == version => Some(k.clone()),
            _ => {
                let k = std::sync::Arc::new(master.file_key_of(version, seed)?);
                *cached = Some(k.clone());
                Some(k)
            }
        }
    }
}

/// Picks 4 fragments whose bytes match their hashes, data fragments first, checking candidates in
/// parallel. All-zero fragments count as present. Returns the chosen indices and the corrupt ones.
fn choose_intact(
    segment: usize,
    expected: &SegmentManifest,
    fragments: &[Option<&[u8]>; FRAGMENTS],
) -> Result<(Vec<usize>, Vec<usize>), FormatError> {
    let mut candidates = (0..FRAGMENTS)
        .filter(|&i| {
            expected.fragments[i] == ZERO_FRAGMENT_HASH || fragments[i].is_some_and(|f| f.len() == FRAGMENT_SIZE)
        })
        .peekable();
    let mut chosen = Vec::with_capacity(DATA_FRAGMENTS);
    let mut corrupt: Vec<usize> =
        (0..FRAGMENTS).filter(|&i| fragments[i].is_some_and(|f| f.len() != FRAGMENT_SIZE)).collect();
    while chosen.len() < DATA_FRAGMENTS && candidates.peek().is_some() {
        let batch: Vec<usize> = candidates.by_ref().take(DATA_FRAGMENTS - chosen.len()).collect();
        let intact: Vec<bool> = batch
            .par_iter()
            .map(|&i| match fragments[i] {
                _ if expected.fragments[i] == ZERO_FRAGMENT_HASH => fragments[i].is_none_or(is_zero),
                Some(f) => sha256(f) == expected.fragments[i],
                None => false,
            })
            .collect();
        for (i, ok) in batch.into_iter().zip(intact) {
            if ok { chosen.push(i) } else { corrupt.push(i) }
        }
    }
    if chosen.len() < DATA_FRAGMENTS {
        corrupt.sort_unstable();
        return Err(FormatError::TooFewFragments {
            segment,
            intact: chosen.len(),
            corrupt: corrupt.len(),
            missing: FRAGMENTS - chosen.len() - corrupt.len(),
        });
    }
    chosen.sort_unstable();
    corrupt.sort_unstable();
    Ok((chosen, corrupt))
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Decodes a whole file whose fragments `fetch(segment, fragment)` supplies, feeding its bytes in
/// order to `sink`, a window of segments at a time on all cores. The file is in the format
/// version `master` writes (plaintext without a key).
pub fn decode_file<F, B, K>(
    manifest: &FileManifest,
    master: Option<&MasterKey>,
    fetch: F,
    mut sink: K,
) -> Result<(), FormatError>
where
    F: Fn(usize, usize) -> Option<B> + Sync,
    B: AsRef<[u8]> + Send,
    K: FnMut(&[u8]),
{
    let decoder = FileDecoder::new(manifest.size, master, master.map_or(Mode::Plain, |m| Mode::of(m.version(), true)))?;
    if manifest.segments.len() != decoder.layout().segments() {
        return Err(FormatError::Layout { segment: manifest.segments.len(), size: manifest.size });
    }
    let window = rayon::current_num_threads().max(1);
    let buffers = Mutex::new(Vec::<Vec<u8>>::new());
    for first in (0..manifest.segments.len()).step_by(window) {
        let last = (first + window).min(manifest.segments.len());
        let decoded: Vec<DecodedSegment> = (first..last)
            .into_par_iter()
            .map(|s| {
                let owned: Vec<Option<B>> = (0..FRAGMENTS).map(|f| fetch(s, f)).collect();
                let borrowed: [Option<&[u8]>; FRAGMENTS] =
                    std::array::from_fn(|f| owned[f].as_ref().map(|b| b.as_ref()));
                let buffer = crate::sync::lock(&buffers).pop().unwrap_or_default();
                decoder.decode_segment(s, &manifest.segments[s], &borrowed, buffer)
            })
            .collect::<Result<_, _>>()?;
        for d in decoded {
            sink(d.data());
            crate::sync::lock(&buffers).push(d.into_buffer());
        }
    }
    Ok(())
}
