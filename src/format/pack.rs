//! Packs: the bytes of many small files in one CESS file, so that each costs what it weighs
//! instead of a whole segment (96 MiB of territory). Pack format version 1:
//!
//! A pack is one segment (32 MiB) stored in the plaintext layout, so its 4 data fragments are
//! its quarters: fragment `q` holds bytes `q × 8 MiB .. (q + 1) × 8 MiB`. Each file's content is
//! a *blob*, sealed on its own so that it reads alone:
//!
//! ```text
//! blob id  = HMAC-SHA256(k_id, content)            k_id   = HMAC-SHA256(k_blob, "id")
//! blob key = HMAC-SHA256(k_seal, blob id)          k_seal = HMAC-SHA256(k_blob, "seal")
//! sealed   = AES-256-GCM-SIV(blob key, 0^12, "CFSB" 01 ‖ le64(len), content) ‖ tag
//! ```
//!
//! A key seals exactly one plaintext (equal contents are one blob), so the fixed nonce never
//! meets a second message. A sealed blob lies inside one quarter, so reading it is one ranged
//! `GET /fragment` of one data fragment; its tag rejects wrong bytes, and the reader then
//! rebuilds the segment from any 4 of its 12 fragments, each checked against its hash.
//!
//! ```text
//! header   bytes 0..32: "CFSPACK" 02 ‖ le64(number) ‖ le32(index offset) ‖ le32(index len)
//!                       ‖ le32(tree offset) ‖ le32(tree len)            (tree len 0: no tree)
//! index    sealed as a blob of id HMAC(k_id, "index" ‖ le64(number)), in the first quarter with
//!          room: le32(count) ‖ count × (blob id ‖ le32(offset) ‖ le32(sealed len))
//! tree     a commit's tree snapshot, sealed as a blob of id HMAC(k_id, "tree" ‖ le64(number))
//! ```
//!
//! Version 1 (still read) had 8 zero bytes for the tree's place and the index at the segment's
//! end. Readers find a blob by the location the tree snapshot records (pack FID, offset, length,
//! blob id); the index lets a pack be read without the tree (merges, repairs).

use aes_gcm_siv::Aes256GcmSiv;
use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use serde::{Deserialize, Serialize};

use super::crypto::{TAG_LEN, hmac};
use super::{DATA_FRAGMENTS, FRAGMENT_SIZE, FormatError, Hash, SEGMENT_SIZE};

/// The first bytes of a pack: "CFSPACK" and the pack format version written.
pub const PACK_MAGIC: [u8; 8] = *b"CFSPACK\x02";
/// The first bytes of a pack of version 1 (no tree; read, no longer written).
const PACK_MAGIC_V1: [u8; 8] = *b"CFSPACK\x01";
/// Bytes of a pack's header.
pub const PACK_HEADER_LEN: usize = 32;
/// Most blobs in one pack (bounds its index to about 2.5 MiB).
pub const MAX_BLOBS: u32 = 65_536;
/// Bytes of an index entry.
const INDEX_ENTRY: usize = 32 + 4 + 4;
/// The largest content a blob holds: a sealed blob fits one quarter beside the header.
pub const MAX_BLOB: usize = FRAGMENT_SIZE - PACK_HEADER_LEN - TAG_LEN;

/// The keys of blobs (from a territory's key: [`super::MasterKey::blobs`]).
#[derive(Clone)]
pub struct BlobKeys {
    id_key: [u8; 32],
    seal_key: [u8; 32],
}

impl std::fmt::Debug for BlobKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobKeys(..)")
    }
}

fn aad(len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..5].copy_from_slice(b"CFSB\x01");
    a[5..].copy_from_slice(&(len as u64).to_le_bytes());
    a
}

impl BlobKeys {
    pub(super) fn new(key: [u8; 32]) -> BlobKeys {
        BlobKeys { id_key: hmac(&key, &[b"id"]), seal_key: hmac(&key, &[b"seal"]) }
    }

    /// The id of a blob of `content`: equal contents, one blob.
    pub fn id(&self, content: &[u8]) -> Hash {
        Hash(hmac(&self.id_key, &[content]))
    }

    fn cipher(&self, id: &Hash) -> Aes256GcmSiv {
        Aes256GcmSiv::new(&hmac(&self.seal_key, &[&id.0]).into())
    }

    /// `content` sealed as blob `id` (its length plus [`TAG_LEN`]).
    pub fn seal(&self, id: &Hash, content: &[u8]) -> Vec<u8> {
        let payload = Payload { msg: content, aad: &aad(content.len()) };
        self.cipher(id).encrypt(&[0u8; 12].into(), payload).expect("a blob is far below the GCM-SIV message limit")
    }

    /// The content of blob `id` from its sealed bytes; an error for wrong bytes or a wrong key.
    pub fn open(&self, id: &Hash, sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
        let len = sealed.len().checked_sub(TAG_LEN).ok_or_else(|| FormatError::Pack("a blob too short".into()))?;
        let payload = Payload { msg: sealed, aad: &aad(len) };
        self.cipher(id)
            .decrypt(&[0u8; 12].into(), payload)
            .map_err(|_| FormatError::Pack(format!("blob {id} did not open: wrong bytes or a wrong key")))
    }

    fn index_id(&self, number: u64) -> Hash {
        Hash(hmac(&self.id_key, &[b"index", &number.to_le_bytes()]))
    }

    fn tree_id(&self, number: u64) -> Hash {
        Hash(hmac(&self.id_key, &[b"tree", &number.to_le_bytes()]))
    }

    /// The tree snapshot `tree` sealed for the commit of pack `number`.
    pub fn seal_tree(&self, number: u64, tree: &[u8]) -> Vec<u8> {
        self.seal(&self.tree_id(number), tree)
    }
}

/// Where a sealed blob lies in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPlace {
    /// Its first byte in the segment.
    pub offset: u32,
    /// Its sealed length.
    pub len: u32,
}

impl BlobPlace {
    /// The data fragment holding it, and where in that fragment (end exclusive).
    pub fn in_fragment(&self) -> (usize, std::ops::Range<usize>) {
        let (offset, len) = (self.offset as usize, self.len as usize);
        (offset / FRAGMENT_SIZE, offset % FRAGMENT_SIZE..offset % FRAGMENT_SIZE + len)
    }

    /// Its bytes in the whole segment, if they lie inside it.
    pub fn range(&self) -> Option<std::ops::Range<usize>> {
        let end = (self.offset as usize).checked_add(self.len as usize)?;
        (end <= SEGMENT_SIZE).then_some(self.offset as usize..end)
    }
}

/// The sealed length of a blob of `size` content bytes.
pub fn sealed_len(size: usize) -> usize {
    size + TAG_LEN
}

fn index_len(blobs: u32) -> usize {
    sealed_len(4 + INDEX_ENTRY * blobs as usize)
}

/// The room of a pack being filled: bytes used in each quarter, and blobs placed. The last
/// quarter keeps room for the index of every blob placed and one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSpace {
    used: [u32; DATA_FRAGMENTS],
    blobs: u32,
}

impl Default for PackSpace {
    fn default() -> PackSpace {
        PackSpace { used: [PACK_HEADER_LEN as u32, 0, 0, 0], blobs: 0 }
    }
}

impl PackSpace {
    /// Blobs placed.
    pub fn blobs(&self) -> u32 {
        self.blobs
    }

    /// Bytes placed (header and blobs).
    pub fn used(&self) -> u64 {
        self.used.iter().map(|&u| u64::from(u)).sum()
    }

    /// The room of a pack holding only the blobs at `places` (a sealed pack's blobs, its tree
    /// and index taken out): each quarter used up to its last blob's end. `None` if a place is
    /// not inside one quarter.
    pub fn holding(places: impl IntoIterator<Item = BlobPlace>) -> Option<PackSpace> {
        let mut space = PackSpace::default();
        for place in places {
            let (q, r) = place.in_fragment();
            if q >= DATA_FRAGMENTS || r.end > FRAGMENT_SIZE || (q == 0 && r.start < PACK_HEADER_LEN) {
                return None;
            }
            space.used[q] = space.used[q].max(r.end as u32);
            space.blobs += 1;
        }
        Some(space)
    }

    /// Places a sealed blob of `len` bytes in the first quarter with room; `None` if the pack
    /// has none.
    pub fn place(&mut self, len: usize) -> Option<BlobPlace> {
        if self.blobs >= MAX_BLOBS {
            return None;
        }
        let index = index_len(self.blobs + 1);
        let last = DATA_FRAGMENTS - 1;
        for q in 0..DATA_FRAGMENTS {
            let room = if q == last { FRAGMENT_SIZE - index } else { FRAGMENT_SIZE };
            let used = self.used[q] as usize;
            if used + len <= room && (q == last || self.used[last] as usize <= FRAGMENT_SIZE - index) {
                self.used[q] += len as u32;
                self.blobs += 1;
                return Some(BlobPlace { offset: (q * FRAGMENT_SIZE + used) as u32, len: len as u32 });
            }
        }
        None
    }

    /// Places the sealed index (`len` bytes) in the first quarter with room, which the room
    /// kept in the last quarter guarantees; `None` only for an index longer than that room.
    fn place_index(&mut self, len: usize) -> Option<usize> {
        let q = (0..DATA_FRAGMENTS).find(|&q| self.used[q] as usize + len <= FRAGMENT_SIZE)?;
        let offset = q * FRAGMENT_SIZE + self.used[q] as usize;
        self.used[q] += len as u32;
        Some(offset)
    }

    /// Data fragments (quarters) holding anything: a pack pushes these and the 8 parity ones.
    pub fn quarters_used(&self) -> usize {
        self.used.iter().filter(|&&u| u > 0).count()
    }
}

/// The header and the sealed index of pack `number` holding `blobs` (and a commit's sealed tree
/// at `tree`), placed in `space`: write the header at offset 0 and the index at the offset
/// returned.
pub fn seal_index(
    keys: &BlobKeys,
    number: u64,
    blobs: &[(Hash, BlobPlace)],
    space: &mut PackSpace,
    tree: Option<BlobPlace>,
) -> Result<([u8; PACK_HEADER_LEN], usize, Vec<u8>), FormatError> {
    let mut plain = Vec::with_capacity(4 + INDEX_ENTRY * blobs.len());
    plain.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    for (id, place) in blobs {
        plain.extend_from_slice(&id.0);
        plain.extend_from_slice(&place.offset.to_le_bytes());
        plain.extend_from_slice(&place.len.to_le_bytes());
    }
    let index = keys.seal(&keys.index_id(number), &plain);
    let offset = space.place_index(index.len()).ok_or_else(|| FormatError::Pack("no room for the index".into()))?;
    let tree = tree.unwrap_or(BlobPlace { offset: 0, len: 0 });
    let mut header = [0u8; PACK_HEADER_LEN];
    header[..8].copy_from_slice(&PACK_MAGIC);
    header[8..16].copy_from_slice(&number.to_le_bytes());
    header[16..20].copy_from_slice(&(offset as u32).to_le_bytes());
    header[20..24].copy_from_slice(&(index.len() as u32).to_le_bytes());
    header[24..28].copy_from_slice(&tree.offset.to_le_bytes());
    header[28..32].copy_from_slice(&tree.len.to_le_bytes());
    Ok((header, offset, index))
}

/// What a pack's header says.
struct PackHeader {
    number: u64,
    index: BlobPlace,
    tree: Option<BlobPlace>,
}

fn read_header(segment: &[u8]) -> Result<PackHeader, FormatError> {
    let bad = |why: &str| FormatError::Pack(why.to_string());
    let header = segment.get(..PACK_HEADER_LEN).ok_or_else(|| bad("no header"))?;
    let magic: [u8; 8] = header[..8].try_into().unwrap_or_default();
    let version = match magic {
        PACK_MAGIC => 2,
        PACK_MAGIC_V1 => 1,
        _ => return Err(bad("not a pack of format version 1 or 2")),
    };
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
    let number = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let index = BlobPlace { offset: le32(&header[16..20]), len: le32(&header[20..24]) };
    let tree = BlobPlace { offset: le32(&header[24..28]), len: le32(&header[28..32]) };
    Ok(PackHeader { number, index, tree: (version == 2 && tree.len > 0).then_some(tree) })
}

/// The tree snapshot a commit's segment holds (`None`: a pack without one).
pub fn read_tree(keys: &BlobKeys, segment: &[u8]) -> Result<Option<Vec<u8>>, FormatError> {
    let header = read_header(segment)?;
    let Some(tree) = header.tree else { return Ok(None) };
    let range = tree.range().ok_or_else(|| FormatError::Pack("a tree outside the segment".into()))?;
    keys.open(&keys.tree_id(header.number), &segment[range]).map(Some)
}

/// The number and the blobs of the pack `segment`, from its header and index.
pub fn read_index(keys: &BlobKeys, segment: &[u8]) -> Result<(u64, Vec<(Hash, BlobPlace)>), FormatError> {
    let bad = |why: &str| FormatError::Pack(why.to_string());
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
    let PackHeader { number, index: place, .. } = read_header(segment)?;
    let range = place.range().ok_or_else(|| bad("an index outside the segment"))?;
    let plain = keys.open(&keys.index_id(number), &segment[range])?;
    let count = plain.get(..4).map(le32).ok_or_else(|| bad("an empty index"))? as usize;
    let entries = plain.get(4..).unwrap_or_default();
    if entries.len() != count * INDEX_ENTRY {
        return Err(bad("an index of the wrong length"));
    }
    let blobs = entries
        .chunks_exact(INDEX_ENTRY)
        .map(|e| {
            let id = Hash(e[..32].try_into().unwrap_or_default());
            (id, BlobPlace { offset: le32(&e[32..36]), len: le32(&e[36..40]) })
        })
        .collect();
    Ok((number, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> BlobKeys {
        BlobKeys::new([5; 32])
    }

    #[test]
    fn a_blob_opens_alone_and_only_with_its_bytes_and_key() {
        let k = keys();
        let id = k.id(b"hello");
        assert_eq!(id, k.id(b"hello"), "equal contents, one blob");
        assert_ne!(id, BlobKeys::new([6; 32]).id(b"hello"), "another key, another id");
        let sealed = k.seal(&id, b"hello");
        assert_eq!(sealed.len(), sealed_len(5));
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(k.open(&id, &sealed).unwrap(), b"hello");
        let mut bad = sealed.clone();
        bad[2] ^= 1;
        assert!(k.open(&id, &bad).is_err());
        assert!(BlobKeys::new([6; 32]).open(&id, &sealed).is_err());
        assert!(k.open(&id, &sealed[..3]).is_err());
    }

    #[test]
    fn blobs_stay_inside_one_quarter_and_leave_room_for_the_index() {
        let mut space = PackSpace::default();
        let mut placed = Vec::new();
        while let Some(p) = space.place(3 << 20) {
            let (q, r) = p.in_fragment();
            assert!(r.end <= FRAGMENT_SIZE, "quarter {q}: {r:?}");
            placed.push(p);
        }
        assert_eq!(placed.len(), 8, "two 3 MiB blobs per quarter");
        assert_eq!(placed[0].offset as usize, PACK_HEADER_LEN);
        let small = space.place(1 << 20).expect("a smaller blob still fits");
        assert_eq!(small.in_fragment().0, 0);
        assert!(space.place(FRAGMENT_SIZE).is_none());
        let mut full = PackSpace::default();
        let last = full.place(MAX_BLOB + TAG_LEN);
        assert_eq!(last.map(|p| p.offset as usize), Some(PACK_HEADER_LEN), "the largest blob fits quarter 0");
        let tiny = (0..MAX_BLOBS + 5).filter_map(|_| full.place(17)).count();
        assert_eq!(tiny as u32, MAX_BLOBS - 1);
    }

    #[test]
    fn a_pack_taken_back_has_the_room_its_blobs_leave() {
        let mut space = PackSpace::default();
        let kept: Vec<BlobPlace> = (0..5).filter_map(|_| space.place(3 << 20)).collect();
        let before = space;
        let tree = space.place(1 << 20).unwrap();
        assert_eq!(PackSpace::holding(kept.iter().copied()), Some(before), "the tree's room comes back");
        assert_ne!(PackSpace::holding(kept.iter().copied().chain([tree])), Some(before));
        assert_eq!(PackSpace::holding([]), Some(PackSpace::default()));
        let across = BlobPlace { offset: (FRAGMENT_SIZE - 10) as u32, len: 20 };
        assert_eq!(PackSpace::holding([across]), None, "a blob across two quarters is no pack's");
        assert_eq!(PackSpace::holding([BlobPlace { offset: 4, len: 20 }]), None, "nor one over the header");
        let beyond = BlobPlace { offset: SEGMENT_SIZE as u32, len: 20 };
        assert_eq!(PackSpace::holding([beyond]), None);
    }

    #[test]
    fn the_index_reads_back_from_a_whole_pack() {
        let k = keys();
        let mut space = PackSpace::default();
        let mut segment = vec![0u8; SEGMENT_SIZE];
        let mut blobs = Vec::new();
        for i in 0..100u32 {
            let content = vec![i as u8; 1000 + i as usize * 3000];
            let id = k.id(&content);
            let sealed = k.seal(&id, &content);
            let place = space.place(sealed.len()).unwrap();
            segment[place.range().unwrap()].copy_from_slice(&sealed);
            blobs.push((id, place));
        }
        let tree = k.seal_tree(42, b"a tree");
        let tree_place = space.place(tree.len()).unwrap();
        segment[tree_place.range().unwrap()].copy_from_slice(&tree);
        let (header, offset, index) = seal_index(&k, 42, &blobs, &mut space, Some(tree_place)).unwrap();
        segment[..PACK_HEADER_LEN].copy_from_slice(&header);
        segment[offset..offset + index.len()].copy_from_slice(&index);
        let index_range = offset..offset + index.len();
        for place in blobs.iter().map(|(_, p)| *p).chain([tree_place]) {
            let r = place.range().unwrap();
            assert!(r.end <= index_range.start || index_range.end <= r.start, "the index overlaps {r:?}");
        }
        assert_eq!(index_range.start / FRAGMENT_SIZE, (index_range.end - 1) / FRAGMENT_SIZE, "in one quarter");
        assert_eq!(space.quarters_used(), 2, "100 blobs of up to 300 KB and the index fill two quarters");
        assert_eq!(read_tree(&k, &segment).unwrap().as_deref(), Some(&b"a tree"[..]));
        let (number, read) = read_index(&k, &segment).unwrap();
        assert_eq!((number, &read), (42, &blobs));
        for (i, (id, place)) in read.iter().enumerate() {
            assert_eq!(k.open(id, &segment[place.range().unwrap()]).unwrap(), vec![i as u8; 1000 + i * 3000]);
        }
        segment[offset + 1] ^= 1;
        assert!(read_index(&k, &segment).is_err());
        segment[tree_place.offset as usize] ^= 1;
        assert!(read_tree(&k, &segment).is_err(), "a tree's tag rejects wrong bytes");
        assert!(read_index(&k, &vec![0u8; SEGMENT_SIZE]).is_err());
    }
}
