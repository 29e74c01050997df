//! One HTTP client for storage miners: real cess-miner nodes and the devnet's nodes alike.
//! Requests are signed with the account's sr25519 key (protocol::miner); every answer is checked
//! (the JSON `code`, the byte count, and on GET the caller checks the hash). Requests fail when
//! they stop moving ([`StallRule`]), never because the link is slow: bodies go out in small
//! frames through a bounded send buffer and answers are read as they arrive, so what moved is
//! what the link carried.

mod stall;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{Method, Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use thiserror::Error;

pub use stall::{Moved, StallRule};

use crate::format::{FRAGMENT_SIZE, Hash};
use crate::pace::Pace;
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
    /// The request stopped moving (see [`StallRule`]).
    #[error("{endpoint} stalled: {moved} bytes moved in the last {secs}s")]
    Stalled {
        /// The miner's endpoint.
        endpoint: String,
        /// Bytes moved over the window.
        moved: u64,
        /// The window.
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

/// Body frames: small enough that what was handed to the connection is close to what left.
const FRAME: usize = 64 * 1024;

/// The kernel's send buffer per connection (it doubles it): bytes queued there are invisible to
/// the stall rule. 256 KiB keeps a connection at 13 Mbit/s over 300 ms round trips, and fragments
/// go to several miners at once.
const SEND_BUFFER: usize = 256 * 1024;

/// How long connecting may take, and how often it is tried, before a miner counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TRIES: u32 = 3;

/// The longest answer that is not a fragment (a JSON error): more is malformed.
const MAX_ANSWER: usize = 64 * 1024;

/// The body of a fragment upload: one multipart part `file`, named after the fragment's hash.
/// The fragment's bytes are sent as they are, between the part's head and tail, without being
/// copied. An all-zero fragment travels empty: the miner writes it itself.
#[derive(Clone)]
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

/// A request body sent in frames of at most [`FRAME`] bytes (slices, not copies), paced by the
/// bandwidth limit and counted as the connection takes them (a frame waiting for the limit
/// counts as moving: the wait is ours, not the miner's).
struct Frames {
    left: VecDeque<Bytes>,
    moved: Moved,
    pace: Option<Arc<Pace>>,
    waiting: Option<(Bytes, std::pin::Pin<Box<tokio::time::Sleep>>)>,
}

impl Frames {
    fn new(pieces: impl IntoIterator<Item = Bytes>, moved: Moved, pace: Option<Arc<Pace>>) -> Frames {
        Frames { left: pieces.into_iter().filter(|p| !p.is_empty()).collect(), moved, pace, waiting: None }
    }

    /// The next frame's size: under a limit, about a second of it, so that no frame waits long.
    fn frame_size(&self) -> usize {
        let limit = self.pace.as_ref().and_then(|p| p.current().up);
        limit.map_or(FRAME, |rate| (rate as usize).clamp(4096, FRAME))
    }
}

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some((_, sleep)) = &mut this.waiting {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (frame, _) = this.waiting.take().expect("a waiting frame");
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(frame))));
        }
        let size = this.frame_size();
        let Some(piece) = this.left.front_mut() else { return Poll::Ready(None) };
        let frame = piece.split_to(piece.len().min(size));
        if piece.is_empty() {
            this.left.pop_front();
        }
        this.moved.add(frame.len());
        match this.pace.as_ref().and_then(|p| p.reserve_up(frame.len())) {
            Some(at) if at > tokio::time::Instant::now() => {
                let mut sleep = Box::pin(tokio::time::sleep_until(at));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(frame))));
                }
                this.waiting = Some((frame, sleep));
                Poll::Pending
            }
            _ => Poll::Ready(Some(Ok(hyper::body::Frame::data(frame)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left.is_empty() && self.waiting.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let waiting = self.waiting.as_ref().map_or(0, |(f, _)| f.len() as u64);
        hyper::body::SizeHint::with_exact(waiting + self.left.iter().map(|b| b.len() as u64).sum::<u64>())
    }
}

/// Signs and sends fragment requests.
pub struct MinerClient {
    http: Client<HttpConnector, Frames>,
    signer: Signer,
    stall: StallRule,
    pace: Option<Arc<Pace>>,
    counter: AtomicU64,
}

/// A miner endpoint as a base URL (see [`proto::endpoint_url`]).
fn base_url(endpoint: &str) -> String {
    proto::endpoint_url(endpoint.as_bytes()).unwrap_or_default()
}

/// An answer: its status, whether it is JSON, and its body.
struct Answer {
    status: u16,
    json: bool,
    body: Bytes,
}

impl MinerClient {
    /// A client signing with `signer`, failing requests by `stall`, paced by `pace` if given.
    pub fn new(signer: Signer, stall: StallRule, pace: Option<Arc<Pace>>) -> MinerClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT.min(stall.window)));
        connector.set_nodelay(true);
        connector.set_send_buffer_size(Some(SEND_BUFFER));
        let http = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http1_max_buf_size(FRAME * 2)
            .build(connector);
        MinerClient { http, signer, stall, pace, counter: AtomicU64::new(0) }
    }

    /// A signed request for fragment `fragment` of `fid`.
    fn signed(&self, method: Method, url: &str, fid: &Hash, fragment: &Hash) -> hyper::http::request::Builder {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let message = format!("cessfs{}{n}", now.as_nanos());
        Request::builder()
            .method(method)
            .uri(url)
            .header(proto::FID, fid.to_hex())
            .header(proto::FRAGMENT, fragment.to_hex())
            .header(proto::ACCOUNT, self.signer.account().to_string())
            .header(proto::SIGNATURE, hex::encode(self.signer.sign(message.as_bytes())))
            .header(proto::MESSAGE, message)
    }

    /// Sends the request `build` makes (again, if connecting fails), reading an answer of at
    /// most `limit` bytes as it arrives, all under the stall rule, counting in `moved`.
    async fn exchange(
        &self,
        endpoint: &str,
        upload: bool,
        limit: usize,
        moved: &Moved,
        build: impl Fn(Moved) -> Result<Request<Frames>, hyper::http::Error>,
    ) -> Result<Answer, MinerError> {
        let connect_error = |reason: String| MinerError::Connect { endpoint: endpoint.to_string(), reason };
        let mut tries = 0;
        loop {
            tries += 1;
            let req = build(moved.clone()).map_err(|e| connect_error(format!("a request it cannot take: {e}")))?;
            let exchange = async {
                let resp = self.http.request(req).await?;
                let status = resp.status().as_u16();
                let json = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/json"));
                let mut body = resp.into_body();
                let mut got = BytesMut::with_capacity(limit.min(FRAGMENT_SIZE));
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(Failure::Read)?;
                    if let Some(data) = frame.data_ref() {
                        moved.add(data.len());
                        if got.len() + data.len() > limit.max(MAX_ANSWER) {
                            return Err(Failure::TooLong);
                        }
                        got.extend_from_slice(data);
                        // Under a limit, the next bytes are taken once these have passed it
                        // (TCP holds the miner back meanwhile).
                        if let Some(pace) = &self.pace {
                            pace.down(data.len()).await;
                        }
                    }
                }
                Ok(Answer { status, json, body: got.freeze() })
            };
            let failure = match stall::watch(self.stall_rule(upload), moved, exchange).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(failure)) => failure,
                Err(stalled) => {
                    return Err(MinerError::Stalled {
                        endpoint: endpoint.to_string(),
                        moved: stalled.moved,
                        secs: self.stall.window.as_secs(),
                    });
                }
            };
            match failure {
                Failure::Send(e) if e.is_connect() && tries < CONNECT_TRIES => {
                    log::debug!("connecting to {endpoint} failed ({}); trying again", chain_of(&e));
                    tokio::time::sleep(Duration::from_millis(500 * tries as u64)).await;
                }
                Failure::Send(e) if e.is_connect() => {
                    return Err(connect_error(format!("{} (tried {tries} times)", chain_of(&e))));
                }
                Failure::Send(e) => return Err(connect_error(chain_of(&e))),
                Failure::Read(e) => return Err(connect_error(format!("the answer broke off: {}", chain_of(&e)))),
                Failure::TooLong => {
                    return Err(MinerError::Malformed {
                        endpoint: endpoint.to_string(),
                        what: format!("an answer longer than {} bytes", limit.max(MAX_ANSWER)),
                    });
                }
            }
        }
    }

    /// The stall rule of a request: under a bandwidth limit, its floor is at most a 16th of the
    /// limit, so that fragments sharing a low limit are not taken for stalled.
    fn stall_rule(&self, upload: bool) -> StallRule {
        let limit = self.pace.as_ref().map(|p| p.current()).and_then(|l| if upload { l.up } else { l.down });
        StallRule { floor: limit.map_or(self.stall.floor, |l| self.stall.floor.min(l / 16).max(1)), ..self.stall }
    }

    /// Stores a fragment of file `fid` on the miner (see [`FragmentBody`]). While a cold read
    /// waits on the network, it waits first (a reader first).
    pub async fn put_fragment(&self, endpoint: &str, fid: &Hash, body: FragmentBody) -> Result<(), MinerError> {
        if let Some(pace) = &self.pace {
            pace.reader_first().await;
        }
        let url = format!("{}/fragment", base_url(endpoint));
        let len = body.len();
        let answer = self
            .exchange(endpoint, true, MAX_ANSWER, &Moved::default(), |moved| {
                self.signed(Method::PUT, &url, fid, &body.hash)
                    .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
                    .header(header::CONTENT_LENGTH, len)
                    .body(Frames::new(body.pieces.clone(), moved, self.pace.clone()))
            })
            .await?;
        let reply: Reply = serde_json::from_slice(&answer.body).map_err(|_| MinerError::Malformed {
            endpoint: endpoint.to_string(),
            what: format!("HTTP {} without a JSON answer", answer.status),
        })?;
        if reply.code != 200 {
            return Err(MinerError::Refused { endpoint: endpoint.to_string(), code: reply.code, msg: reply.msg });
        }
        crate::metrics::PUSHED_BYTES.add(len);
        Ok(())
    }

    /// Fetches fragment `fragment` of `fid`, or its bytes `range` (end exclusive), counting
    /// what arrives in `moved` as it does.
    pub async fn get_fragment(
        &self,
        endpoint: &str,
        fid: &Hash,
        fragment: &Hash,
        range: Option<Range<usize>>,
        moved: &Moved,
    ) -> Result<Bytes, MinerError> {
        let url = format!("{}/fragment", base_url(endpoint));
        let want = range.as_ref().map_or(FRAGMENT_SIZE, |r| r.end - r.start);
        let _reading = self.pace.as_ref().map(|p| p.reading());
        let answer = self
            .exchange(endpoint, false, want, moved, |moved| {
                let mut req = self.signed(Method::GET, &url, fid, fragment);
                if let Some(r) = &range {
                    req = req.header(header::RANGE, proto::range_header(r, FRAGMENT_SIZE));
                }
                req.body(Frames::new([], moved, None))
            })
            .await?;
        let status = answer.status;
        if answer.json || !(status == 200 || status == 206) {
            let reply: Option<Reply> = serde_json::from_slice(&answer.body).ok();
            let (code, msg) = reply.map_or((status as i32, format!("HTTP {status}")), |r| (r.code, r.msg));
            return Err(MinerError::Refused { endpoint: endpoint.to_string(), code, msg });
        }
        if answer.body.len() != want {
            return Err(MinerError::Malformed {
                endpoint: endpoint.to_string(),
                what: format!("{} bytes instead of {want}", answer.body.len()),
            });
        }
        Ok(answer.body)
    }
}

/// Why one exchange failed, before it is said as a [`MinerError`].
enum Failure {
    Send(hyper_util::client::legacy::Error),
    Read(hyper::Error),
    TooLong,
}

impl From<hyper_util::client::legacy::Error> for Failure {
    fn from(e: hyper_util::client::legacy::Error) -> Failure {
        Failure::Send(e)
    }
}

/// An error with its sources, as one line.
fn chain_of(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line = format!("{line}: {s}");
        source = s.source();
    }
    line
}
