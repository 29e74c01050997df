//! Accounts (sr25519 public keys), their SS58 addresses, and signing.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use blake2::{Blake2b512, Digest};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subxt_signer::SecretUri;
use subxt_signer::sr25519::{Keypair, PublicKey, Signature};

/// The CESS network's SS58 prefix: addresses start with `cX`.
pub const SS58_PREFIX: u16 = 11330;

/// An account: a 32-byte sr25519 public key (the chain's `AccountId32`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 32]);

fn checksum(payload: &[u8]) -> [u8; 2] {
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(payload);
    let d = h.finalize();
    [d[0], d[1]]
}

impl AccountId {
    /// The SS58 address with `prefix`.
    pub fn to_ss58_with(&self, prefix: u16) -> String {
        let mut payload = if prefix < 64 {
            vec![prefix as u8]
        } else {
            vec![((prefix & 0b1111_1100) as u8 >> 2) | 0b0100_0000, (prefix >> 8) as u8 | ((prefix & 0b11) as u8) << 6]
        };
        payload.extend_from_slice(&self.0);
        let sum = checksum(&payload);
        payload.extend_from_slice(&sum);
        bs58::encode(payload).into_string()
    }

    /// Parses an SS58 address of any prefix; returns the account and the prefix.
    pub fn from_ss58(address: &str) -> Result<(AccountId, u16), String> {
        let bad = || format!("not an SS58 account address: {address:?}");
        let raw = bs58::decode(address).into_vec().map_err(|_| bad())?;
        let (prefix, prefix_len) = match raw.first() {
            Some(&b) if b < 64 => (b as u16, 1),
            Some(&b) if b < 128 && raw.len() > 1 => {
                let b1 = raw[1];
                ((((b & 0b0011_1111) as u16) << 2) | (b1 >> 6) as u16 | (((b1 & 0b0011_1111) as u16) << 8), 2)
            }
            _ => return Err(bad()),
        };
        if raw.len() != prefix_len + 32 + 2 || checksum(&raw[..prefix_len + 32]) != raw[prefix_len + 32..] {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[prefix_len..prefix_len + 32]);
        Ok((AccountId(key), prefix))
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ss58_with(SS58_PREFIX))
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({self})")
    }
}

impl FromStr for AccountId {
    type Err = String;
    fn from_str(s: &str) -> Result<AccountId, String> {
        AccountId::from_ss58(s).map(|(a, _)| a)
    }
}

/// Addresses of accounts seen lately, both ways: a chain's records name the same few miners
/// over and over, and SS58 (base58 and a Blake2 checksum) is slow enough to dominate reading
/// many of them.
#[derive(Default)]
struct Addresses {
    by_text: HashMap<String, AccountId>,
    by_account: HashMap<AccountId, String>,
}

static ADDRESSES: std::sync::LazyLock<std::sync::Mutex<Addresses>> = std::sync::LazyLock::new(Default::default);

/// Accounts the address cache holds before it starts over.
const ADDRESSES_KEPT: usize = 4096;

/// Remembers `text` as the address of `account`; it prints so only in this chain's prefix.
fn remember(account: AccountId, text: String, prefix: u16) {
    let mut known = crate::sync::lock(&ADDRESSES);
    if known.by_text.len() >= ADDRESSES_KEPT {
        *known = Addresses::default();
    }
    if prefix == SS58_PREFIX {
        known.by_account.insert(account, text.clone());
    }
    known.by_text.insert(text, account);
}

impl Serialize for AccountId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let known = crate::sync::lock(&ADDRESSES).by_account.get(self).cloned();
        let text = known.unwrap_or_else(|| {
            let text = self.to_string();
            remember(*self, text.clone(), SS58_PREFIX);
            text
        });
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AccountId, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        if let Some(account) = crate::sync::lock(&ADDRESSES).by_text.get(text.as_ref()) {
            return Ok(*account);
        }
        let (account, prefix) = AccountId::from_ss58(&text).map_err(serde::de::Error::custom)?;
        remember(account, text.into_owned(), prefix);
        Ok(account)
    }
}

/// An sr25519 key pair that signs extrinsics and miner requests.
#[derive(Clone)]
pub struct Signer {
    keypair: Keypair,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.account())
    }
}

impl Signer {
    /// A key from a secret URI: a mnemonic, a `0x` hex seed, or a dev path such as `//Alice`,
    /// each optionally followed by derivation junctions.
    pub fn from_uri(uri: &str) -> Result<Signer, String> {
        let suri = SecretUri::from_str(uri.trim()).map_err(|e| format!("not a secret key or mnemonic: {e}"))?;
        let keypair = Keypair::from_uri(&suri).map_err(|e| format!("not a usable key: {e}"))?;
        Ok(Signer { keypair })
    }

    /// The account this key signs for.
    pub fn account(&self) -> AccountId {
        AccountId(self.keypair.public_key().0)
    }

    /// An sr25519 signature of `message` (signing context "substrate", as Substrate signs).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.keypair.sign(message).0
    }

    /// The key pair, for subxt.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

/// Whether `signature` is `account`'s sr25519 signature of `message`.
pub fn verify(account: &AccountId, message: &[u8], signature: &[u8; 64]) -> bool {
    subxt_signer::sr25519::verify(&Signature(*signature), message, &PublicKey(account.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alice_addresses() {
        let alice = Signer::from_uri("//Alice").unwrap().account();
        assert_eq!(alice.to_ss58_with(42), "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
        let cess = alice.to_string();
        assert!(cess.starts_with("cX"), "{cess}");
        assert_eq!(AccountId::from_ss58(&cess).unwrap(), (alice, SS58_PREFIX));
        assert_eq!(AccountId::from_ss58("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY").unwrap(), (alice, 42));
        assert!(AccountId::from_ss58("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ").is_err());
    }

    #[test]
    fn sign_and_verify() {
        let s = Signer::from_uri("//Miner1").unwrap();
        let sig = s.sign(b"hello");
        assert!(verify(&s.account(), b"hello", &sig));
        assert!(!verify(&s.account(), b"hellO", &sig));
    }
}
