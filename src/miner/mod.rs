//! One HTTP client for storage miners: real cess-miner nodes and the devnet's nodes alike.
//! Requests are signed with the account's sr25519 key (protocol::miner); every answer is checked
//! (the JSON `code`, the byte count, and on GET the caller checks the hash). Requests fail when
//! they stop moving ([`StallRule`]), never because the link is slow: bodies go out in small
//! frames through a bounded send buffer and answers are read as they arrive, so what moved is
//! what the link carried.

mod stall;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{Method, Request, header};
use thiserror::Error;

pub use stall::{Moved, StallRule};

use crate::format::{FRAGMENT_SIZE, Hash};
use crate::pace::Pace;
use crate::protocol::Signer;
use crate::protocol::miner::{self as proto, Reply};
use crate::sync::lock;

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
    /// Far slower than the other miners of its file, on the same link: replaced by a spare.
    #[error("{endpoint} was replaced: {percent}% of its column was sent when the other miners had theirs")]
    Slow {
        /// The miner's endpoint.
        endpoint: String,
        /// How much of its column it had taken.
        percent: u32,
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
/// the stall rule, and drain at the tail of a fragment with nothing counted. 64 KiB keeps the
/// tail (with hyper's own buffer, about 200 KiB) within a minute at the 4 KiB/s floor, and a
/// connection at 3 Mbit/s over 300 ms round trips; fragments go to 12 miners at once.
const SEND_BUFFER: usize = 64 * 1024;

/// How long connecting may take, and how often it is tried, before a miner counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TRIES: u32 = 3;

/// The longest answer that is not a fragment (a JSON error): more is malformed.
const MAX_ANSWER: usize = 64 * 1024;

/// The body of a fragment upload: one multipart part `file`, named after the fragment's hash.
/// The fragment's bytes are sent as they are, between the part's head and tail, without being
/// copied (unless detached: [`Detach`]). An all-zero fragment travels empty: the miner writes it
/// itself.
#[derive(Clone)]
pub struct FragmentBody {
    hash: Hash,
    head: Bytes,
    data: FragmentData,
    tail: Bytes,
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
        let data = FragmentData(Arc::new(Mutex::new(Lent { bytes: data, own: false })));
        FragmentBody { hash, head: head.into(), data, tail: tail.into() }
    }

    /// A handle that gives the fragment's bytes buffers of their own, for as long as the body
    /// (or a request sending it) lives.
    pub fn detach_handle(&self) -> Detach {
        Detach(Arc::downgrade(&self.data.0))
    }

    fn len(&self) -> u64 {
        (self.head.len() + lock(&self.data.0).bytes.len() + self.tail.len()) as u64
    }

    fn pieces(&self) -> [Piece; 3] {
        [Piece::Bytes(self.head.clone()), Piece::Lent(self.data.clone(), 0), Piece::Bytes(self.tail.clone())]
    }
}

/// A fragment's bytes, shared by the requests sending it: lent from the buffers they were
/// rebuilt in until detached.
#[derive(Clone)]
struct FragmentData(Arc<Mutex<Lent>>);

struct Lent {
    bytes: Bytes,
    /// A copy of their own: detaching again copies nothing.
    own: bool,
}

/// Detaches a fragment's bytes from the buffers they were rebuilt in, if they are still being
/// sent: a copy of the fragment alone (8 MiB) replaces them, so the segment's buffers (96 MiB)
/// can go back while a slow miner still takes its fragment.
#[derive(Clone)]
pub struct Detach(std::sync::Weak<Mutex<Lent>>);

impl Detach {
    /// Whether the fragment is still being sent (or waits to be).
    pub fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// Gives the fragment's bytes a copy of their own; returns whether it copied.
    pub fn detach(&self) -> bool {
        let Some(data) = self.0.upgrade() else { return false };
        let mut lent = lock(&data);
        if lent.own || lent.bytes.is_empty() {
            return false;
        }
        lent.bytes = Bytes::copy_from_slice(&lent.bytes);
        lent.own = true;
        true
    }
}

/// A piece of a request body: bytes, or a fragment's bytes from an offset.
enum Piece {
    Bytes(Bytes),
    Lent(FragmentData, usize),
}

impl Piece {
    fn left(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::Lent(data, at) => lock(&data.0).bytes.len().saturating_sub(*at),
        }
    }

    /// The next `n` bytes at most, as a slice (not a copy).
    fn take(&mut self, n: usize) -> Bytes {
        match self {
            Piece::Bytes(b) => b.split_to(b.len().min(n)),
            Piece::Lent(data, at) => {
                let lent = lock(&data.0);
                let end = (*at + n).min(lent.bytes.len());
                let frame = lent.bytes.slice(*at..end);
                *at = end;
                frame
            }
        }
    }
}

/// A request body sent in frames of at most [`FRAME`] bytes (slices, not copies), paced by the
/// bandwidth limit and counted as the connection takes them (a frame waiting for the limit
/// counts as moving: the wait is ours, not the miner's).
struct Frames {
    left: VecDeque<Piece>,
    moved: Moved,
    pace: Option<Arc<Pace>>,
    waiting: Option<(Bytes, std::pin::Pin<Box<tokio::time::Sleep>>)>,
}

impl Frames {
    fn new(pieces: impl IntoIterator<Item = Piece>, moved: Moved, pace: Option<Arc<Pace>>) -> Frames {
        Frames { left: pieces.into_iter().filter(|p| p.left() > 0).collect(), moved, pace, waiting: None }
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
            this.moved.paced();
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (frame, _) = this.waiting.take().expect("a waiting frame");
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(frame))));
        }
        let size = this.frame_size();
        let Some(piece) = this.left.front_mut() else { return Poll::Ready(None) };
        let frame = piece.take(size);
        if piece.left() == 0 {
            this.left.pop_front();
        }
        this.moved.add(frame.len());
        match this.pace.as_ref().and_then(|p| p.reserve_up(frame.len())) {
            Some(at) if at > tokio::time::Instant::now() => {
                this.moved.paced();
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
        hyper::body::SizeHint::with_exact(waiting + self.left.iter().map(|p| p.left() as u64).sum::<u64>())
    }
}

/// Signs and sends fragment requests, each on a connection of its own that goes with it: a
/// request given up (stalled) closes its connection and lets go of its body at once, however
/// stuck the socket is (a pooled connection's task would hold 8 MiB on a dead socket).
pub struct MinerClient {
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
        MinerClient { signer, stall, pace, counter: AtomicU64::new(0) }
    }

    /// A connection to `endpoint`, with a bounded send buffer.
    async fn connect(&self, endpoint: &str) -> Result<tokio::net::TcpStream, String> {
        let uri: hyper::Uri = base_url(endpoint).parse().map_err(|e| format!("not a URL ({e})"))?;
        let host = uri.host().ok_or("no host in the URL")?;
        let port = uri.port_u16().unwrap_or(80);
        let addrs: Vec<_> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let mut last = format!("{host} has no address");
        for addr in addrs {
            let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
            let socket = socket.map_err(|e| e.to_string())?;
            socket.set_send_buffer_size(SEND_BUFFER as u32).map_err(|e| e.to_string())?;
            match tokio::time::timeout(CONNECT_TIMEOUT.min(self.stall.window), socket.connect(addr)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true).map_err(|e| e.to_string())?;
                    return Ok(stream);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => {
                    last = format!("{addr}: no answer within {}s", CONNECT_TIMEOUT.min(self.stall.window).as_secs())
                }
            }
        }
        Err(last)
    }

    /// A signed request for fragment `fragment` of `fid` at `endpoint`.
    fn signed(&self, method: Method, endpoint: &str, fid: &Hash, fragment: &Hash) -> hyper::http::request::Builder {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let message = format!("cessfs{}{n}", now.as_nanos());
        let host = base_url(endpoint).parse::<hyper::Uri>().ok().and_then(|u| u.authority().map(|a| a.to_string()));
        Request::builder()
            .method(method)
            .uri("/fragment")
            .header(header::HOST, host.unwrap_or_default())
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
                let stream = self.connect(endpoint).await.map_err(Failure::Connect)?;
                let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
                    .max_buf_size(FRAME)
                    .handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(Failure::Send)?;
                // The connection is driven here, beside the request, and dropped with it.
                let request = async {
                    let resp = sender.send_request(req).await.map_err(Failure::Send)?;
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
                                moved.paced();
                                pace.down(data.len()).await;
                                moved.paced();
                            }
                        }
                    }
                    Ok(Answer { status, json, body: got.freeze() })
                };
                let (mut request, mut connection) = (std::pin::pin!(request), std::pin::pin!(connection));
                let mut connected = true;
                loop {
                    tokio::select! {
                        answer = &mut request => break answer,
                        // Its end (or failure) shows in the request too.
                        _ = &mut connection, if connected => connected = false,
                    }
                }
            };
            let failure = match stall::watch(self.stall, moved, exchange).await {
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
                Failure::Connect(e) if tries < CONNECT_TRIES => {
                    log::debug!("connecting to {endpoint} failed ({e}); trying again");
                    tokio::time::sleep(Duration::from_millis(500 * tries as u64)).await;
                }
                Failure::Connect(e) => return Err(connect_error(format!("{e} (tried {tries} times)"))),
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

    /// Waits while a cold read waits on the network (a reader first): uploads call it before
    /// they start a fragment.
    pub async fn reader_first(&self) {
        if let Some(pace) = &self.pace {
            pace.reader_first().await;
        }
    }

    /// Stores a fragment of file `fid` on the miner (see [`FragmentBody`]), counting what goes
    /// in `moved`.
    pub async fn put_fragment(
        &self,
        endpoint: &str,
        fid: &Hash,
        body: FragmentBody,
        moved: &Moved,
    ) -> Result<(), MinerError> {
        let mut spent = Spent::new(moved, "up");
        let len = body.len();
        let answer = self
            .exchange(endpoint, MAX_ANSWER, moved, |moved| {
                self.signed(Method::PUT, endpoint, fid, &body.hash)
                    .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
                    .header(header::CONTENT_LENGTH, len)
                    .body(Frames::new(body.pieces(), moved, self.pace.clone()))
            })
            .await
            .inspect_err(|e| spent.stalled(e))?;
        let reply: Reply = serde_json::from_slice(&answer.body).map_err(|_| MinerError::Malformed {
            endpoint: endpoint.to_string(),
            what: format!("HTTP {} without a JSON answer", answer.status),
        })?;
        if reply.code != 200 {
            return Err(MinerError::Refused { endpoint: endpoint.to_string(), code: reply.code, msg: reply.msg });
        }
        crate::metrics::PUSHED_BYTES.add(len);
        spent.kept = true;
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
        let want = range.as_ref().map_or(FRAGMENT_SIZE, |r| r.end - r.start);
        let _reading = self.pace.as_ref().map(|p| p.reading());
        let mut spent = Spent::new(moved, "down");
        let answer = self
            .exchange(endpoint, want, moved, |moved| {
                let mut req = self.signed(Method::GET, endpoint, fid, fragment);
                if let Some(r) = &range {
                    req = req.header(header::RANGE, proto::range_header(r, FRAGMENT_SIZE));
                }
                req.body(Frames::new([], moved, None))
            })
            .await
            .inspect_err(|e| spent.stalled(e))?;
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
        spent.kept = true;
        Ok(answer.body)
    }
}

/// The bytes one request moves, counted as wasted unless it is kept: failed, refused, stalled or
/// given up (dropped) part way.
struct Spent<'a> {
    moved: &'a Moved,
    from: u64,
    direction: &'static str,
    kept: bool,
}

impl<'a> Spent<'a> {
    fn new(moved: &'a Moved, direction: &'static str) -> Spent<'a> {
        Spent { moved, from: moved.get(), direction, kept: false }
    }

    /// Counts the request as stalled if that is why it failed.
    fn stalled(&self, e: &MinerError) {
        if let MinerError::Stalled { .. } = e {
            crate::metrics::STALLED_REQUESTS.add(self.direction, 1);
        }
    }
}

impl Drop for Spent<'_> {
    fn drop(&mut self) {
        if !self.kept {
            crate::metrics::WASTED_BYTES.add(self.direction, self.moved.get().saturating_sub(self.from));
        }
    }
}

/// Why one exchange failed, before it is said as a [`MinerError`].
enum Failure {
    Connect(String),
    Send(hyper::Error),
    Read(hyper::Error),
    TooLong,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// Buffers that note when they are given back.
    struct Buffers(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for Buffers {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Buffers {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_fragment_detached_while_it_is_sent_gives_its_buffers_back_and_sends_the_same_bytes() {
        let given_back = Arc::new(AtomicBool::new(false));
        let data: Vec<u8> = (0..3 * FRAME + 5).map(|i| (i % 251) as u8).collect();
        let body = FragmentBody::new(Hash::default(), Bytes::from_owner(Buffers(data.clone(), given_back.clone())));
        let (detach, head) = (body.detach_handle(), body.head.len());
        let mut frames = Frames::new(body.pieces(), Moved::default(), None);
        drop(body);
        let mut sent = Vec::new();
        // The part's head, then a frame of the fragment.
        for _ in 0..2 {
            let frame = frames.frame().await.expect("a frame").expect("infallible");
            sent.extend_from_slice(&frame.into_data().expect("data"));
        }
        assert!(detach.alive() && !given_back.load(Ordering::SeqCst));
        assert!(detach.detach(), "copied");
        assert!(given_back.load(Ordering::SeqCst), "the buffers went back");
        assert!(!detach.detach(), "a copy is not copied again");
        while let Some(frame) = frames.frame().await {
            sent.extend_from_slice(&frame.expect("infallible").into_data().expect("data"));
        }
        assert!(sent[head..head + data.len()] == data[..], "the same bytes");
        drop(frames);
        assert!(!detach.alive() && !detach.detach(), "a fragment sent is let go");
    }
}
