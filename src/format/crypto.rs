//! Encrypted segments: keys, the per-file key derivation and AES-256-GCM-SIV. Format version 2
//! derives the keys of each territory from the master key, so equal bytes in two territories are
//! two FIDs; version 1 (one set of keys per master key) is still read, and still written for the
//! deals that began under it.
//!
//! Encryption must be deterministic, so that re-processing a file after a crash yields the same
//! FID and resumes its deal instead of paying for a second one. It is built like SIV: a keyed
//! digest of the whole plaintext (the file *seed*) selects the per-file key, and the seed travels
//! in the clear in every segment header, so any single segment can be decrypted with the master
//! key alone. The seed reveals nothing but equality of content, which deterministic encryption
//! reveals anyway; a per-file key opens exactly one file. The chunk digests use BLAKE3 because
//! this pass over the plaintext comes on top of the four SHA-256 passes the network requires, and
//! BLAKE3 costs a third of SHA-256 here; decoders never compute them.
//!
//! ```text
//! k_seed   = HMAC-SHA256(master, "cessfs/v1/seed-key")
//! k_file   = HMAC-SHA256(master, "cessfs/v1/file-key")
//! seed     = HMAC-SHA256(k_seed, le64(size) || BLAKE3(chunk_0) || ... || BLAKE3(chunk_n-1))
//! file_key = HMAC-SHA256(k_file, seed)
//! segment_i = "CFS" v || seed || AES-256-GCM-SIV(file_key, nonce_i, aad_i, chunk_i) || zeros
//! nonce_i  = le32(i) || 8 zero bytes
//! aad_i    = "CFS" v || le64(size) || le32(i) || le32(n)
//! ```
//!
//! Version 2 (`v` = 0x02) takes `k_seed` and `k_file` from the territory's key instead:
//!
//! ```text
//! k_root      = HMAC-SHA256(master, "cessfs/v2/root")
//! k_territory = HMAC-SHA256(k_root, "territory" || territory name)
//! k_seed      = HMAC-SHA256(k_territory, "seed-key")
//! k_file      = HMAC-SHA256(k_territory, "file-key")
//! k_name      = HMAC-SHA256(k_territory, "name-key")
//! k_blob      = HMAC-SHA256(k_territory, "blob-key")      (packs: format/pack.rs)
//! ```
//!
//! Version 3 (`v` = 0x03, version 2's keys) seals each segment as 32 blocks of 1 MiB, each
//! opened on its own, so a reader fetches the block it wants with one ranged read of the data
//! fragment holding it:
//!
//! ```text
//! block_ij = "CFS" 3 || seed || AES-256-GCM-SIV(file_key, nonce_ij, aad_ij, part j of chunk_i) || zeros
//! nonce_ij = le32(i) || le32(j) || 3 || 3 zero bytes
//! aad_ij   = "CFS" 3 || le64(size) || le32(i) || le32(n) || le32(j)
//! ```

use std::ops::Range;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::names::NameKey;
use super::pack::BlobKeys;
use super::{FormatError, Layout, SEGMENT_SIZE};

/// First bytes of every encrypted segment: "CFS" and the format version.
const MAGIC_PREFIX: [u8; 3] = *b"CFS";
/// The format version of keys per master key.
pub const FORMAT_V1: u8 = 1;
/// The format version of keys per territory, one sealed message per segment: tree snapshots.
pub const FORMAT_V2: u8 = 2;
/// Version 2's keys, each segment sealed in blocks of 1 MiB: what new files are written with.
pub const FORMAT_V3: u8 = 3;
/// The newest format version, which new files are written in.
pub const FORMAT_NEWEST: u8 = FORMAT_V3;
/// The plaintext layout, whatever the mode: packs, whose blobs are sealed one by one.
pub const FORMAT_PLAIN: u8 = 0;
/// Bytes before the ciphertext: magic and seed.
pub const HEADER_LEN: usize = MAGIC_PREFIX.len() + 1 + 32;
/// Bytes of the GCM-SIV tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes of a segment (a block, in version 3) that do not carry file content.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Bytes of a sealed block (version 3): 32 per segment, 8 per data fragment.
pub const BLOCK_SIZE: usize = 1 << 20;
/// File bytes a full block carries.
pub const BLOCK_CAPACITY: usize = BLOCK_SIZE - OVERHEAD;
/// Blocks in a segment.
pub const BLOCKS: usize = SEGMENT_SIZE / BLOCK_SIZE;

type HmacSha256 = Hmac<Sha256>;

pub(super) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The two keys of one format version: the seed's and the file keys'.
#[derive(Clone)]
struct ContentKeys {
    seed_key: [u8; 32],
    file_key: [u8; 32],
}

/// The keys of a territory (format version 2): its content keys and its name key.
#[derive(Clone)]
struct TerritoryKeys {
    content: ContentKeys,
    names: NameKey,
    blobs: BlobKeys,
}

/// The user's 32-byte master key: every file key is derived from it. Bound to a territory
/// ([`MasterKey::for_territory`]) it writes format version 2; it reads both versions.
#[derive(Clone)]
pub struct MasterKey {
    /// The format version it writes.
    writes: u8,
    root: [u8; 32],
    v1: ContentKeys,
    territory: Option<TerritoryKeys>,
    fingerprint: [u8; 8],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A master key from its 32 bytes.
    pub fn from_bytes(master: [u8; 32]) -> MasterKey {
        let fingerprint = hmac(&master, &[b"cessfs/v1/fingerprint"]);
        MasterKey {
            writes: FORMAT_V1,
            root: hmac(&master, &[b"cessfs/v2/root"]),
            v1: ContentKeys {
                seed_key: hmac(&master, &[b"cessfs/v1/seed-key"]),
                file_key: hmac(&master, &[b"cessfs/v1/file-key"]),
            },
            territory: None,
            fingerprint: fingerprint[..8].try_into().unwrap_or_default(),
        }
    }

    /// This key bound to `territory`: it writes the newest format version, with that territory's keys.
    pub fn for_territory(&self, territory: &[u8]) -> MasterKey {
        let t = hmac(&self.root, &[b"territory", territory]);
        let keys = TerritoryKeys {
            content: ContentKeys { seed_key: hmac(&t, &[b"seed-key"]), file_key: hmac(&t, &[b"file-key"]) },
            names: NameKey::new(hmac(&t, &[b"name-key"])),
            blobs: BlobKeys::new(hmac(&t, &[b"blob-key"])),
        };
        MasterKey { territory: Some(keys), writes: FORMAT_NEWEST, ..self.clone() }
    }

    /// This key writing `version` (1, or 2 and 3 once bound to a territory); `None` if it cannot.
    pub fn writing(&self, version: u8) -> Option<MasterKey> {
        match version {
            FORMAT_V1 => Some(MasterKey { territory: None, writes: FORMAT_V1, ..self.clone() }),
            FORMAT_V2 | FORMAT_V3 if self.territory.is_some() => Some(MasterKey { writes: version, ..self.clone() }),
            _ => None,
        }
    }

    /// The format version this key writes.
    pub fn version(&self) -> u8 {
        self.writes
    }

    /// The key of names on chain (bound to a territory only).
    pub fn names(&self) -> Option<&NameKey> {
        self.territory.as_ref().map(|t| &t.names)
    }

    /// The keys of packed blobs (bound to a territory only).
    pub fn blobs(&self) -> Option<&BlobKeys> {
        self.territory.as_ref().map(|t| &t.blobs)
    }

    fn content(&self, version: u8) -> Option<&ContentKeys> {
        match version {
            FORMAT_V1 => Some(&self.v1),
            FORMAT_V2 | FORMAT_V3 => self.territory.as_ref().map(|t| &t.content),
            _ => None,
        }
    }

    /// A short name of the key that reveals nothing of it (16 hex characters of a keyed
    /// digest): what a data dir records to tell keys apart.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// Parses a key file: 64 hex characters (surrounding whitespace ignored) or 32 raw bytes.
    pub fn parse(contents: &[u8]) -> Result<MasterKey, String> {
        let text = contents.trim_ascii();
        let mut key = [0u8; 32];
        if text.len() == 64 && hex::decode_to_slice(text, &mut key).is_ok() {
            return Ok(MasterKey::from_bytes(key));
        }
        if contents.len() == 32 {
            key.copy_from_slice(contents);
            return Ok(MasterKey::from_bytes(key));
        }
        Err(format!("a key file holds 64 hex characters or 32 raw bytes; this one has {} bytes", contents.len()))
    }

    /// The file seed: a keyed digest of the file size and its chunks' digests ([`ChunkDigest`]).
    pub(super) fn seed(&self, size: u64, chunk_digests: &[[u8; 32]]) -> [u8; 32] {
        let keys = self.content(self.version()).unwrap_or(&self.v1);
        let mut mac = HmacSha256::new_from_slice(&keys.seed_key).expect("HMAC takes keys of any length");
        mac.update(&size.to_le_bytes());
        for d in chunk_digests {
            mac.update(d);
        }
        mac.finalize().into_bytes().into()
    }

    /// The key of the file whose segments carry `seed`, in the version this key writes.
    pub fn file_key(&self, seed: &[u8; 32]) -> FileKey {
        self.file_key_of(self.version(), seed).expect("a key has the keys of the version it writes")
    }

    /// The key of a file of format `version` whose segments carry `seed`; `None` if this key
    /// lacks that version's keys (version 2 of a key bound to no territory).
    pub fn file_key_of(&self, version: u8, seed: &[u8; 32]) -> Option<FileKey> {
        let key = hmac(&self.content(version)?.file_key, &[seed]);
        Some(FileKey { version, seed: *seed, cipher: Aes256GcmSiv::new(&key.into()) })
    }
}

/// The key of one file, with the seed it came from.
pub struct FileKey {
    version: u8,
    seed: [u8; 32],
    cipher: Aes256GcmSiv,
}

impl FileKey {
    /// The format version of the segments this key seals.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The seed this key was derived from (carried in every segment header).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Turns `segment` (32 MiB), whose bytes `HEADER_LEN..HEADER_LEN + len` hold the file bytes
    /// of segment `index`, into its encrypted form, in place.
    pub(super) fn seal(&self, layout: &Layout, index: usize, len: usize, segment: &mut [u8]) {
        debug_assert_eq!(segment.len(), SEGMENT_SIZE);
        if self.version == FORMAT_V3 {
            return self.seal_blocks(layout, index, len, segment);
        }
        let end = HEADER_LEN + len;
        segment[..4].copy_from_slice(&magic(self.version));
        segment[4..HEADER_LEN].copy_from_slice(&self.seed);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce(index),
                &aad(self.version, layout, index),
                (&mut segment[HEADER_LEN..end]).into(),
            )
            .expect("a segment is far below the GCM-SIV message limit");
        segment[end..end + TAG_LEN].copy_from_slice(&tag);
        segment[end + TAG_LEN..].fill(0);
    }

    /// Decrypts segment `index` in place and returns where its file bytes lie.
    pub(super) fn open(&self, layout: &Layout, index: usize, segment: &mut [u8]) -> Result<Range<usize>, FormatError> {
        if (self.version == FORMAT_V3) != (layout.mode() == super::Mode::Blocks) {
            return Err(FormatError::Decrypt { segment: index });
        }
        if self.version == FORMAT_V3 {
            return self.open_blocks(layout, index, segment);
        }
        let chunk = layout.chunk(index);
        let end = HEADER_LEN + (chunk.end - chunk.start) as usize;
        let tag = Tag::try_from(&segment[end..end + TAG_LEN]).expect("TAG_LEN bytes");
        self.cipher
            .decrypt_inout_detached(
                &nonce(index),
                &aad(self.version, layout, index),
                (&mut segment[HEADER_LEN..end]).into(),
                &tag,
            )
            .map_err(|_| FormatError::Decrypt { segment: index })?;
        Ok(HEADER_LEN..end)
    }
}

impl FileKey {
    /// [`FileKey::seal`] in version 3: the chunk's bytes moved apart into their blocks, each
    /// block sealed on its own, unused blocks zero.
    fn seal_blocks(&self, layout: &Layout, index: usize, len: usize, segment: &mut [u8]) {
        use rayon::prelude::*;
        let parts = len.div_ceil(BLOCK_CAPACITY);
        // From the last block back: each moves right, past the bytes of the blocks before it.
        for j in (0..parts).rev() {
            let from = HEADER_LEN + j * BLOCK_CAPACITY;
            let n = (len - j * BLOCK_CAPACITY).min(BLOCK_CAPACITY);
            segment.copy_within(from..from + n, j * BLOCK_SIZE + HEADER_LEN);
        }
        segment.par_chunks_mut(BLOCK_SIZE).enumerate().for_each(|(j, block)| {
            if j >= parts {
                return block.fill(0);
            }
            let n = (len - j * BLOCK_CAPACITY).min(BLOCK_CAPACITY);
            let end = HEADER_LEN + n;
            block[..4].copy_from_slice(&magic(FORMAT_V3));
            block[4..HEADER_LEN].copy_from_slice(&self.seed);
            let tag = self
                .cipher
                .encrypt_inout_detached(
                    &block_nonce(index, j),
                    &block_aad(layout, index, j),
                    (&mut block[HEADER_LEN..end]).into(),
                )
                .expect("a block is far below the GCM-SIV message limit");
            block[end..end + TAG_LEN].copy_from_slice(&tag);
            block[end + TAG_LEN..].fill(0);
        });
    }

    /// [`FileKey::open`] in version 3: every used block opened, their bytes moved together.
    fn open_blocks(&self, layout: &Layout, index: usize, segment: &mut [u8]) -> Result<Range<usize>, FormatError> {
        use rayon::prelude::*;
        let parts = layout.blocks(index);
        segment
            .par_chunks_mut(BLOCK_SIZE)
            .take(parts)
            .enumerate()
            .try_for_each(|(j, block)| self.open_block(layout, index, j, block).map(drop))?;
        let mut len = 0;
        for j in 0..parts {
            let n = layout.block(index, j).len();
            segment.copy_within(j * BLOCK_SIZE + HEADER_LEN..j * BLOCK_SIZE + HEADER_LEN + n, HEADER_LEN + len);
            len += n;
        }
        Ok(HEADER_LEN..HEADER_LEN + len)
    }

    /// Opens block `block` of segment `index` (version 3) in place: `sealed` holds at least its
    /// sealed bytes ([`Layout::sealed_block_len`]). Returns where its file bytes lie.
    pub fn open_block(
        &self,
        layout: &Layout,
        index: usize,
        block: usize,
        sealed: &mut [u8],
    ) -> Result<Range<usize>, FormatError> {
        let n = layout.block(index, block).len();
        let end = HEADER_LEN + n;
        let fail = FormatError::Decrypt { segment: index };
        if self.version != FORMAT_V3 || sealed.len() < end + TAG_LEN || n == 0 {
            return Err(fail);
        }
        let tag = Tag::try_from(&sealed[end..end + TAG_LEN]).expect("TAG_LEN bytes");
        self.cipher
            .decrypt_inout_detached(
                &block_nonce(index, block),
                &block_aad(layout, index, block),
                (&mut sealed[HEADER_LEN..end]).into(),
                &tag,
            )
            .map_err(|_| fail)?;
        Ok(HEADER_LEN..end)
    }
}

/// The digest of a plaintext chunk that goes into the file seed (unkeyed BLAKE3), taken over
/// its bytes in pieces.
pub(super) type ChunkDigest = blake3::Hasher;

/// The format version and seed in the header of an encrypted segment, if it has a header of a
/// version this code reads.
pub(super) fn header_seed(segment: &[u8]) -> Option<(u8, [u8; 32])> {
    let header = segment.get(..HEADER_LEN)?;
    let version = header[3];
    if header[..3] != MAGIC_PREFIX || !(FORMAT_V1..=FORMAT_V3).contains(&version) {
        return None;
    }
    Some((version, header[4..].try_into().ok()?))
}

fn magic(version: u8) -> [u8; 4] {
    [MAGIC_PREFIX[0], MAGIC_PREFIX[1], MAGIC_PREFIX[2], version]
}

fn nonce(index: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(index as u32).to_le_bytes());
    n.into()
}

/// The nonce of block `block` of segment `index`: its byte 8 (3) sets it apart from every
/// nonce of versions 1 and 2, which share the keys.
fn block_nonce(index: usize, block: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(index as u32).to_le_bytes());
    n[4..8].copy_from_slice(&(block as u32).to_le_bytes());
    n[8] = FORMAT_V3;
    n.into()
}

fn block_aad(layout: &Layout, index: usize, block: usize) -> [u8; 24] {
    let mut a = [0u8; 24];
    a[..20].copy_from_slice(&aad(FORMAT_V3, layout, index));
    a[20..].copy_from_slice(&(block as u32).to_le_bytes());
    a
}

fn aad(version: u8, layout: &Layout, index: usize) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[..4].copy_from_slice(&magic(version));
    a[4..12].copy_from_slice(&layout.size().to_le_bytes());
    a[12..16].copy_from_slice(&(index as u32).to_le_bytes());
    a[16..20].copy_from_slice(&(layout.segments() as u32).to_le_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Mode;

    fn chunk_digest(chunk: &[u8]) -> [u8; 32] {
        *ChunkDigest::new().update(chunk).finalize().as_bytes()
    }

    #[test]
    fn parse_key_file_forms() {
        let hex_key = "11".repeat(32);
        assert!(MasterKey::parse(format!("{hex_key}\n").as_bytes()).is_ok());
        assert!(MasterKey::parse(&[7u8; 32]).is_ok());
        assert!(MasterKey::parse(b"short").is_err());
    }

    #[test]
    fn seal_open_and_tamper() {
        let master = MasterKey::from_bytes([1; 32]);
        let layout = Layout::new(1000, Mode::Encrypted).unwrap();
        let chunk = vec![9u8; 1000];
        let key = master.file_key(&master.seed(1000, &[chunk_digest(&chunk)]));
        let mut seg = vec![0xffu8; SEGMENT_SIZE];
        seg[HEADER_LEN..HEADER_LEN + 1000].copy_from_slice(&chunk);
        key.seal(&layout, 0, 1000, &mut seg);
        assert_eq!(header_seed(&seg), Some((FORMAT_V1, *key.seed())));
        assert!(seg[HEADER_LEN + 1000 + TAG_LEN..].iter().all(|&b| b == 0));
        let mut copy = seg.clone();
        let range = key.open(&layout, 0, &mut copy).unwrap();
        assert_eq!(&copy[range], &chunk[..]);
        seg[HEADER_LEN + 3] ^= 1;
        assert_eq!(key.open(&layout, 0, &mut seg), Err(FormatError::Decrypt { segment: 0 }));
    }

    #[test]
    fn territories_have_their_own_keys_and_version_one_stays_readable() {
        let master = MasterKey::from_bytes([1; 32]);
        assert_eq!(master.for_territory(b"alpha").version(), FORMAT_V3);
        let v2 = |t: &[u8]| master.for_territory(t).writing(FORMAT_V2).unwrap();
        let (a, b) = (v2(b"alpha"), v2(b"beta"));
        let digests = [chunk_digest(b"same bytes")];
        assert_eq!(a.version(), FORMAT_V2);
        assert_ne!(a.seed(10, &digests), b.seed(10, &digests), "equal bytes, two territories, two seeds");
        assert_eq!(master.seed(10, &digests), a.writing(FORMAT_V1).unwrap().seed(10, &digests));
        assert!(master.writing(FORMAT_V2).is_none());
        let layout = Layout::new(10, Mode::Encrypted).unwrap();
        let key = a.file_key(&a.seed(10, &digests));
        let mut seg = vec![0u8; SEGMENT_SIZE];
        seg[HEADER_LEN..HEADER_LEN + 10].copy_from_slice(b"same bytes");
        key.seal(&layout, 0, 10, &mut seg);
        let (version, seed) = header_seed(&seg).unwrap();
        assert_eq!(version, FORMAT_V2);
        assert!(b.file_key_of(version, &seed).unwrap().open(&layout, 0, &mut seg.clone()).is_err());
        assert!(a.file_key_of(version, &seed).unwrap().open(&layout, 0, &mut seg).is_ok());
        assert!(a.file_key_of(FORMAT_V3, &seed).unwrap().open(&layout, 0, &mut seg.clone()).is_err());
        assert_ne!(a.names().unwrap().tag(), b.names().unwrap().tag());
    }
}
