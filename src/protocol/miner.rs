//! The storage miners' fragment protocol (cess-miner v0.8 `PUT/GET {endpoint}/fragment`), the
//! parts shared by the client and the devnet's nodes.
//!
//! Every request carries `Account` (SS58), `Message` and `Signature` (hex sr25519 signature of the
//! raw message bytes); a PUT is multipart with one part `file` that has a file name, plus `Fid`
//! and `Fragment` headers; a GET may carry `Range: bytes=S-E/T` whose end `E` is exclusive.
//! Answers are HTTP 200 with a JSON body `{code, msg, data}` whose `code` is the real status,
//! except a bad signature (HTTP 403) and a range read (HTTP 206 with the bytes).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{AccountId, verify};

/// Header: the file id.
pub const FID: &str = "Fid";
/// Header: the fragment hash.
pub const FRAGMENT: &str = "Fragment";
/// Header: the signing account (SS58).
pub const ACCOUNT: &str = "Account";
/// Header: the signed message.
pub const MESSAGE: &str = "Message";
/// Header: the hex signature of the message.
pub const SIGNATURE: &str = "Signature";
/// The multipart part holding the fragment.
pub const FILE_PART: &str = "file";

/// Messages of cess-miner's node/common/errors.go.
pub mod msg {
    /// Success.
    pub const OK: &str = "ok";
    /// Internal failure.
    pub const SYSTEM: &str = "system error";
    /// The body is not 8 MiB.
    pub const SIZE: &str = "the fragment size is wrong";
    /// The body does not hash to the Fragment header.
    pub const HASH: &str = "the fragment hash is wrong";
    /// The fragment is not in the file's deal.
    pub const FID: &str = "fragment does not match fid";
    /// No such fragment.
    pub const NOT_FOUND: &str = "not found";
    /// Fid or Fragment malformed.
    pub const BAD_NAME: &str = "invalid fid or fragment";
    /// Fid or Fragment missing.
    pub const EMPTY: &str = "empty fid or fragment";
    /// Signature check failed.
    pub const SIGNATURE: &str = "invalid signature";
    /// Range header malformed.
    pub const RANGE: &str = "invalid range request";
    /// The miner's disk is full (the devnet's word: cess-miner answers a failed write as
    /// [`SYSTEM`]).
    pub const NO_SPACE: &str = "no space left for fragments";
    /// No `file` part with a file name.
    pub const NO_FILE: &str = "[FormFile] http: no such file";
}

/// The JSON body of a miner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The real status.
    pub code: i32,
    /// What happened.
    pub msg: String,
    /// Unused by the fragment calls.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    /// An answer with `code` and `msg`.
    pub fn new(code: i32, msg: &str) -> Reply {
        Reply { code, msg: msg.to_string(), data: None }
    }
}

/// The Range header for bytes `start..end` of a fragment of `total` bytes (end exclusive).
pub fn range_header(range: &Range<usize>, total: usize) -> String {
    format!("bytes={}-{}/{total}", range.start, range.end)
}

/// Parses a Range header as cess-miner does: `bytes=S-E/T` or `bytes S-E/T`, `E` exclusive and
/// at most `size`.
pub fn parse_range(value: &str, size: usize) -> Option<Range<usize>> {
    let rest = value.strip_prefix("bytes=").or_else(|| value.strip_prefix("bytes "))?;
    let (span, _total) = rest.split_once('/')?;
    let (s, e) = span.split_once('-')?;
    let (start, end): (usize, usize) = (s.parse().ok()?, e.parse().ok()?);
    (start <= end && end <= size).then_some(start..end)
}

/// Checks the `Account`/`Message`/`Signature` headers: a hex (optionally `0x`) sr25519 signature
/// of the raw message, or of `<Bytes>message</Bytes>` as polkadot.js signs; the account in SS58
/// with prefix 11330 or 42.
pub fn check_signature(account: &str, message: &[u8], signature: &str) -> bool {
    let Ok((account, prefix)) = AccountId::from_ss58(account) else { return false };
    if prefix != super::SS58_PREFIX && prefix != 42 || message.is_empty() {
        return false;
    }
    let mut sig = [0u8; 64];
    if hex::decode_to_slice(signature.trim_start_matches("0x"), &mut sig).is_err() {
        return false;
    }
    let wrapped = [b"<Bytes>".as_slice(), message, b"</Bytes>"].concat();
    verify(&account, message, &sig) || verify(&account, &wrapped, &sig)
}

/// A miner's endpoint as a base URL, however it was written (on chain, in a config): cut at the
/// first NUL, trimmed, no trailing slash, `http://` added when it has no scheme (as the Go SDK
/// reads `MinerInfo.endpoint`); `None` if empty.
pub fn endpoint_url(raw: &[u8]) -> Option<String> {
    let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
    let text = String::from_utf8_lossy(raw).trim().trim_end_matches('/').to_string();
    match text.as_str() {
        "" => None,
        t if t.contains("://") => Some(text),
        t => Some(format!("http://{t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Signer;

    #[test]
    fn endpoints_become_base_urls() {
        assert_eq!(endpoint_url(b"1.2.3.4:15001\0\0").as_deref(), Some("http://1.2.3.4:15001"));
        assert_eq!(endpoint_url(b"http://h:1/\0\0garbage").as_deref(), Some("http://h:1"));
        assert_eq!(endpoint_url(b"https://m.example/").as_deref(), Some("https://m.example"));
        assert_eq!(endpoint_url(b" \0"), None);
    }

    #[test]
    fn ranges_end_exclusive() {
        assert_eq!(parse_range("bytes=0-100/8388608", 8388608), Some(0..100));
        assert_eq!(parse_range("bytes 5-5/10", 10), Some(5..5));
        assert_eq!(parse_range("bytes=0-99", 100), None, "RFC form without total");
        assert_eq!(parse_range("bytes=0-101/100", 100), None);
        assert_eq!(range_header(&(3..9), 16), "bytes=3-9/16");
    }

    #[test]
    fn signatures_raw_and_wrapped() {
        let s = Signer::from_uri("//Alice").unwrap();
        let sig = hex::encode(s.sign(b"msg"));
        let acc = s.account().to_string();
        assert!(check_signature(&acc, b"msg", &sig));
        assert!(check_signature(&acc, b"msg", &format!("0x{sig}")));
        assert!(check_signature(&s.account().to_ss58_with(42), b"msg", &sig));
        let wrapped = hex::encode(s.sign(b"<Bytes>msg</Bytes>"));
        assert!(check_signature(&acc, b"msg", &wrapped));
        assert!(!check_signature(&acc, b"other", &sig));
        assert!(!check_signature(&s.account().to_ss58_with(0), b"msg", &sig), "other networks' prefixes");
    }
}
