//! SHA-256 digests, shown and stored as 64 lowercase hex characters as the chain does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest: a segment, fragment or file id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Hash(Sha256::digest(data).into())
}

impl Hash {
    /// The 64 lowercase hex characters the chain stores (`cp_cess_common::Hash`).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The hex form as the 64 ASCII bytes of the chain's `Hash([u8; 64])`.
    pub fn to_hex_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        hex::encode_to_slice(self.0, &mut out).expect("64 bytes hold 32 bytes of hex");
        out
    }

    /// Parses 64 hex characters as the chain stores them; uppercase is refused, as the chain's
    /// `Hash::binary` refuses it.
    pub fn from_hex_bytes(hex_bytes: &[u8]) -> Option<Hash> {
        if hex_bytes.len() != 64 || hex_bytes.iter().any(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_bytes, &mut out).ok()?;
        Some(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl FromStr for Hash {
    type Err = String;
    fn from_str(s: &str) -> Result<Hash, String> {
        Hash::from_hex_bytes(s.as_bytes()).ok_or_else(|| format!("not 64 lowercase hex characters: {s:?}"))
    }
}

/// Hex text in human-readable formats (JSON), the 32 raw bytes in binary ones (the stores).
impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&self.to_hex()) } else { self.0.serialize(s) }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        if d.is_human_readable() {
            String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(Hash)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_is_hex_in_json_and_raw_in_postcard() {
        let h = sha256(b"x");
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{}\"", h.to_hex()));
        let raw = postcard::to_stdvec(&h).unwrap();
        assert_eq!(raw.len(), 32);
        assert_eq!(postcard::from_bytes::<Hash>(&raw).unwrap(), h);
    }

    #[test]
    fn hex_round_trip_and_case() {
        let h = sha256(b"abc");
        assert_eq!(h.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Hash::from_hex_bytes(&h.to_hex_bytes()), Some(h));
        assert_eq!(Hash::from_hex_bytes(h.to_hex().to_uppercase().as_bytes()), None);
        assert_eq!(Hash::from_hex_bytes(b"00"), None);
    }
}
