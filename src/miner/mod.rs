//! One HTTP client for storage miners: real cess-miner nodes and the devnet's nodes alike.
//! Requests are signed with the account's sr25519 key (protocol::miner); every answer is checked
//! (the JSON `code`, the byte count, and on GET the caller checks the hash).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use crate::format::{FRAGMENT_SIZE, Hash};
use crate::protocol::Signer;
use crate::protocol::miner::{self as proto, Reply};

/// Why a miner request failed. All are the miner's problem: another miner may do.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MinerError {
    /// No connection.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The miner's endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("{endpoint} did not answer within {secs}s")]
    Timeout {
        /// The miner's endpoint.
        endpoint: String,
        /// The timeout.
        secs: u64,
    },
    /// The miner answered with an error code.
    #[error("{endpoint} refused: {code} {msg}")]
    Refused {
        /// The miner's endpoint.
        endpoint: String,
        /// The JSON code (or HTTP status).
        code: i32,
        /// Its message.
        msg: String,
    },
    /// The answer had the wrong size or shape.
    #[error("{endpoint} sent a malformed answer: {what}")]
    Malformed {
        /// The miner's endpoint.
        endpoint: String,
        /// What was wrong.
        what: String,
    },
}

/// The multipart boundary of fragment uploads (fragments are hashes' preimages: a fixed
/// boundary cannot collide in practice, and the miner reads exactly one part).
const BOUNDARY: &str = "cessfs-fragment-6f3e1c2b9a";

/// The body of a fragment upload: one multipart part `file`, named after the fragment's hash.
/// The fragment's bytes are sent as they are, between the part's head and tail, without being
/// copied. An all-zero fragment travels empty: the miner writes it itself.
pub struct FragmentBody {
    hash: Hash,
    pieces: [Bytes; 3],
}

impl FragmentBody {
    /// The body for fragment `hash` holding `data` (empty for the all-zero fragment).
    pub fn new(hash: Hash, data: Bytes) -> FragmentBody {
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            proto::FILE_PART,
            hash.to_hex()
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        FragmentBody { hash, pieces: [head.into(), data, tail.into()] }
    }

    fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len() as u64).sum()
    }
}

/// A body sent as a few byte strings in turn, its length known in advance.
struct Pieces(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

/// Signs and sends fragment requests.
pub struct MinerClient {
    http: reqwest::Client,
    signer: Signer,
    timeout: Duration,
    counter: AtomicU64,
}

/// A miner endpoint as a base URL (see [`proto::endpoint_url`]).
fn base_url(endpoint: &str) -> String {
    proto::endpoint_url(endpoint.as_bytes()).unwrap_or_default()
}

impl MinerClient {
    /// A client signing with `signer`, giving each request `timeout` (DeOSS uses one minute).
    pub fn new(signer: Signer, timeout: Duration) -> MinerClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client without TLS always builds");
        MinerClient { http, signer, timeout, counter: AtomicU64::new(0) }
    }

    fn signed(&self, req: reqwest::RequestBuilder, fid: &Hash, fragment: &Hash) -> reqwest::RequestBuilder {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let message = format!("cessfs{}{n}", now.as_nanos());
        req.header(proto::FID, fid.to_hex())
            .header(proto::FRAGMENT, fragment.to_hex())
            .header(proto::ACCOUNT, self.signer.account().to_string())
            .header(proto::SIGNATURE, hex::encode(self.signer.sign(message.as_bytes())))
            .header(proto::MESSAGE, message)
    }

    fn transport_error(&self, endpoint: &str, e: reqwest::Error) -> MinerError {
        if e.is_timeout() {
            MinerError::Timeout { endpoint: endpoint.to_string(), secs: self.timeout.as_secs() }
        } else {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            MinerError::Connect { endpoint: endpoint.to_string(), reason }
        }
    }

    /// Stores a fragment of file `fid` on the miner (see [`FragmentBody`]).
    pub async fn put_fragment(&self, endpoint: &str, fid: &Hash, body: FragmentBody) -> Result<(), MinerError> {
        let url = format!("{}/fragment", base_url(endpoint));
        let (fragment, len) = (body.hash, body.len());
        let req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap(Pieces(body.pieces.into())));
        let resp = self.signed(req, fid, &fragment).send().await.map_err(|e| self.transport_error(endpoint, e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(endpoint, e))?;
        let reply: Reply = serde_json::from_slice(&bytes).map_err(|_| MinerError::Malformed {
            endpoint: endpoint.to_string(),
            what: format!("HTTP {status} without a JSON answer"),
        })?;
        if reply.code != 200 {
            return Err(MinerError::Refused { endpoint: endpoint.to_string(), code: reply.code, msg: reply.msg });
        }
        crate::metrics::PUSHED_BYTES.add(len);
        Ok(())
    }

    /// Fetches fragment `fragment` of `fid`, or its bytes `range` (end exclusive).
    pub async fn get_fragment(
        &self,
        endpoint: &str,
        fid: &Hash,
        fragment: &Hash,
        range: Option<Range<usize>>,
    ) -> Result<Bytes, MinerError> {
        let url = format!("{}/fragment", base_url(endpoint));
        let mut req = self.http.get(&url);
        if let Some(r) = &range {
            req = req.header(reqwest::header::RANGE, proto::range_header(r, FRAGMENT_SIZE));
        }
        let resp = self.signed(req, fid, fragment).send().await.map_err(|e| self.transport_error(endpoint, e))?;
        let status = resp.status().as_u16();
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(endpoint, e))?;
        if is_json || !(status == 200 || status == 206) {
            let reply: Option<Reply> = serde_json::from_slice(&bytes).ok();
            let (code, msg) = reply.map_or((status as i32, format!("HTTP {status}")), |r| (r.code, r.msg));
            return Err(MinerError::Refused { endpoint: endpoint.to_string(), code, msg });
        }
        let want = range.map_or(FRAGMENT_SIZE, |r| r.end - r.start);
        if bytes.len() != want {
            return Err(MinerError::Malformed {
                endpoint: endpoint.to_string(),
                what: format!("{} bytes instead of {want}", bytes.len()),
            });
        }
        Ok(bytes)
    }
}
