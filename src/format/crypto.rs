//! Encrypted segments (format version 1): keys, the per-file key derivation and AES-256-GCM-SIV.
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
//! segment_i = "CFS" 0x01 || seed || AES-256-GCM-SIV(file_key, nonce_i, aad_i, chunk_i) || zeros
//! nonce_i  = le32(i) || 8 zero bytes
//! aad_i    = "CFS" 0x01 || le64(size) || le32(i) || le32(n)
//! ```

use std::ops::Range;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{FormatError, Layout, SEGMENT_SIZE};

/// First bytes of every encrypted segment: "CFS" and the format version.
pub const MAGIC: [u8; 4] = *b"CFS\x01";
/// Bytes before the ciphertext: magic and seed.
pub const HEADER_LEN: usize = MAGIC.len() + 32;
/// Bytes of the GCM-SIV tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes of a segment that do not carry file content.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The user's 32-byte master key: every file key is derived from it.
#[derive(Clone)]
pub struct MasterKey {
    seed_key: [u8; 32],
    file_key: [u8; 32],
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
            seed_key: hmac(&master, &[b"cessfs/v1/seed-key"]),
            file_key: hmac(&master, &[b"cessfs/v1/file-key"]),
            fingerprint: fingerprint[..8].try_into().unwrap_or_default(),
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

    /// The file seed: a keyed digest of the file size and its chunks' digests ([`chunk_digest`]).
    pub(super) fn seed(&self, size: u64, chunk_digests: &[[u8; 32]]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.seed_key).expect("HMAC takes keys of any length");
        mac.update(&size.to_le_bytes());
        for d in chunk_digests {
            mac.update(d);
        }
        mac.finalize().into_bytes().into()
    }

    /// The key of the file whose segments carry `seed`.
    pub fn file_key(&self, seed: &[u8; 32]) -> FileKey {
        let key = hmac(&self.file_key, &[seed]);
        FileKey { seed: *seed, cipher: Aes256GcmSiv::new(&key.into()) }
    }
}

/// The key of one file, with the seed it came from.
pub struct FileKey {
    seed: [u8; 32],
    cipher: Aes256GcmSiv,
}

impl FileKey {
    /// The seed this key was derived from (carried in every segment header).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Turns `segment` (32 MiB), whose bytes `HEADER_LEN..HEADER_LEN + len` hold the file bytes
    /// of segment `index`, into its encrypted form, in place.
    pub(super) fn seal(&self, layout: &Layout, index: usize, len: usize, segment: &mut [u8]) {
        debug_assert_eq!(segment.len(), SEGMENT_SIZE);
        let end = HEADER_LEN + len;
        segment[..MAGIC.len()].copy_from_slice(&MAGIC);
        segment[MAGIC.len()..HEADER_LEN].copy_from_slice(&self.seed);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(index), &aad(layout, index), (&mut segment[HEADER_LEN..end]).into())
            .expect("a segment is far below the GCM-SIV message limit");
        segment[end..end + TAG_LEN].copy_from_slice(&tag);
        segment[end + TAG_LEN..].fill(0);
    }

    /// Decrypts segment `index` in place and returns where its file bytes lie.
    pub(super) fn open(&self, layout: &Layout, index: usize, segment: &mut [u8]) -> Result<Range<usize>, FormatError> {
        let chunk = layout.chunk(index);
        let end = HEADER_LEN + (chunk.end - chunk.start) as usize;
        let tag = Tag::try_from(&segment[end..end + TAG_LEN]).expect("TAG_LEN bytes");
        self.cipher
            .decrypt_inout_detached(&nonce(index), &aad(layout, index), (&mut segment[HEADER_LEN..end]).into(), &tag)
            .map_err(|_| FormatError::Decrypt { segment: index })?;
        Ok(HEADER_LEN..end)
    }
}

/// The digest of a plaintext chunk that goes into the file seed.
pub(super) fn chunk_digest(chunk: &[u8]) -> [u8; 32] {
    *blake3::hash(chunk).as_bytes()
}

/// The seed in the header of an encrypted segment, if it has the version-1 header.
pub(super) fn header_seed(segment: &[u8]) -> Option<[u8; 32]> {
    if segment.len() < HEADER_LEN || segment[..MAGIC.len()] != MAGIC {
        return None;
    }
    segment[MAGIC.len()..HEADER_LEN].try_into().ok()
}

fn nonce(index: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(index as u32).to_le_bytes());
    n.into()
}

fn aad(layout: &Layout, index: usize) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[..4].copy_from_slice(&MAGIC);
    a[4..12].copy_from_slice(&layout.size().to_le_bytes());
    a[12..16].copy_from_slice(&(index as u32).to_le_bytes());
    a[16..20].copy_from_slice(&(layout.segments() as u32).to_le_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Mode;

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
        assert_eq!(header_seed(&seg), Some(*key.seed()));
        assert!(seg[HEADER_LEN + 1000 + TAG_LEN..].iter().all(|&b| b == 0));
        let mut copy = seg.clone();
        let range = key.open(&layout, 0, &mut copy).unwrap();
        assert_eq!(&copy[range], &chunk[..]);
        seg[HEADER_LEN + 3] ^= 1;
        assert_eq!(key.open(&layout, 0, &mut seg), Err(FormatError::Decrypt { segment: 0 }));
    }
}
