//! A devnet storage node: the cess-miner v0.8 fragment protocol (`PUT/GET /fragment`, checks in
//! cess-miner's order, errors as HTTP 200 with the code in the JSON body) and its reporting:
//! once it holds fragment `j` of every segment of a file, it sends `transfer_report(j + 1, fid)`.
//! What it holds is in `DIR/report/<fid>/` until the file is active, then in `DIR/file/<fid>/`
//! until the file is deleted; the bytes are in the devnet's shared store (fragments.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::buffers::{ALIGN, AlignedBuf, CAPACITY, Pool, write_fragment};
use super::fragments::{self, FragmentStore, parity_place};
use super::ledger::Ledger;
use super::link::{self, Link};
use crate::format::{DATA_FRAGMENTS, FRAGMENT_SIZE, FRAGMENTS, Hash, ZERO_FRAGMENT_HASH, sha256};
use crate::http::{Reply, Server, json};
use crate::protocol::miner::{self as proto, msg};
use crate::protocol::{AccountId, Signer};

/// A fault a node can be switched into, to test clients (the rig's fault switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// Healthy.
    None,
    /// Port closed, connections dropped, no reports.
    Down,
    /// Every fragment request answers code 500.
    Refuse,
    /// Accepts connections and never answers.
    Timeout,
    /// Takes the first bytes of a fragment upload, then reads no more and never answers (a
    /// miner whose link died mid-transfer); answers no download.
    Stall,
    /// Takes fragment uploads at 256 KiB/s (a miner far slower than the others).
    Slow,
    /// GET serves the fragment with one bit flipped.
    Corrupt,
    /// Stores fragments but never reports.
    NoReport,
    /// Loses what it holds of files not yet active (a disk replaced mid-upload), then works.
    Lost,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!("unknown fault {s:?}: none, down, refuse, timeout, stall, slow, corrupt, noreport or lost")
        })
    }
}

/// What a node has seen, for tests and benchmarks to assert on what moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounters {
    /// Bytes of request bodies received.
    pub bytes_in: u64,
    /// Bytes of fragments served (on a shaped link, as they pass it).
    pub bytes_out: u64,
    /// Fragment uploads (signed PUTs).
    pub puts: u64,
    /// Fragment downloads (signed GETs).
    pub gets: u64,
    /// Requests answered with an error code.
    pub refusals: u64,
    /// Uploads it stopped reading mid-transfer ([`Fault::Stall`]).
    #[serde(default)]
    pub stalls: u64,
    /// The most uploads in progress at once on the whole devnet, every node counted (the same
    /// on each node; a sum keeps it).
    #[serde(default)]
    pub most_puts_at_once: u64,
}

/// The nodes' counters added up: what moved through the whole devnet.
impl std::iter::Sum for NodeCounters {
    fn sum<I: Iterator<Item = NodeCounters>>(iter: I) -> NodeCounters {
        iter.fold(NodeCounters::default(), |a, c| NodeCounters {
            bytes_in: a.bytes_in + c.bytes_in,
            bytes_out: a.bytes_out + c.bytes_out,
            puts: a.puts + c.puts,
            gets: a.gets + c.gets,
            refusals: a.refusals + c.refusals,
            stalls: a.stalls + c.stalls,
            most_puts_at_once: a.most_puts_at_once.max(c.most_puts_at_once),
        })
    }
}

/// [`NodeCounters`] as they are counted.
#[derive(Default)]
struct Counting {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    puts: AtomicU64,
    gets: AtomicU64,
    refusals: AtomicU64,
    stalls: AtomicU64,
}

impl Counting {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn read(&self) -> NodeCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeCounters {
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            puts: get(&self.puts),
            gets: get(&self.gets),
            refusals: get(&self.refusals),
            stalls: get(&self.stalls),
            most_puts_at_once: 0,
        }
    }
}

/// Uploads in progress on the whole devnet, and the most there were at once.
#[derive(Default)]
pub(super) struct PutsAtOnce {
    now: AtomicU64,
    most: AtomicU64,
}

/// An upload in progress, counted in [`PutsAtOnce`] until it is answered.
struct PutInProgress<'a>(&'a PutsAtOnce);

impl PutsAtOnce {
    fn enter(&self) -> PutInProgress<'_> {
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(now, Ordering::AcqRel);
        PutInProgress(self)
    }
}

impl Drop for PutInProgress<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

struct State {
    index: usize,
    signer: Signer,
    dir: PathBuf,
    ledger: Arc<Ledger>,
    store: Arc<FragmentStore>,
    buffers: Arc<Pool>,
    fault: Mutex<Fault>,
    reports: mpsc::UnboundedSender<Hash>,
    counting: Counting,
    /// Uploads in progress on the whole devnet.
    puts: Arc<PutsAtOnce>,
    /// The links its traffic passes (the shared one, its own), if shaped.
    links: Vec<Arc<Link>>,
}

/// A storage node of the devnet.
pub struct Node {
    state: Arc<State>,
    addr: SocketAddr,
    server: tokio::sync::Mutex<Option<Server>>,
}

fn safe_name(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The part `field` of a multipart body that carries a file name (Go's FormFile ignores others).
fn multipart_file<'a>(body: &'a [u8], content_type: &str, field: &str) -> Option<&'a [u8]> {
    let boundary = content_type.split(';').find_map(|p| p.trim().strip_prefix("boundary="))?.trim_matches('"');
    let delim = format!("--{boundary}");
    let next = format!("\r\n--{boundary}");
    let mut pos = memchr::memmem::find(body, delim.as_bytes())?;
    loop {
        let after = pos + delim.len();
        if body.get(after..after + 2)? == b"--" {
            return None;
        }
        let head_start = after + 2;
        let head_end = head_start + memchr::memmem::find(&body[head_start..], b"\r\n\r\n")?;
        let data_start = head_end + 4;
        let data_end = data_start + memchr::memmem::find(&body[data_start..], next.as_bytes())?;
        let head = String::from_utf8_lossy(&body[head_start..head_end]).to_ascii_lowercase();
        if head.contains(&format!("name=\"{field}\"")) && head.contains("filename=") {
            return Some(&body[data_start..data_end]);
        }
        pos = data_end + 2;
    }
}

/// [`multipart_file`], checking first for the common case: a single part of `expected` bytes
/// (8 MiB of data need not be scanned for the boundary).
fn multipart_file_sized<'a>(body: &'a [u8], content_type: &str, field: &str, expected: usize) -> Option<&'a [u8]> {
    let head_end = memchr::memmem::find(body, b"\r\n\r\n")? + 4;
    let boundary = content_type.split(';').find_map(|p| p.trim().strip_prefix("boundary="))?.trim_matches('"');
    let tail = format!("\r\n--{boundary}--");
    if body.get(head_end + expected..head_end + expected + tail.len()) == Some(tail.as_bytes()) {
        let head = String::from_utf8_lossy(&body[..head_end]).to_ascii_lowercase();
        if head.starts_with(&format!("--{}", boundary.to_ascii_lowercase()))
            && head.contains(&format!("name=\"{field}\""))
            && head.contains("filename=")
        {
            return Some(&body[head_end..head_end + expected]);
        }
    }
    multipart_file(body, content_type, field)
}

impl State {
    /// A JSON answer (HTTP 200, the code in the body, as cess-miner answers), counted.
    fn reply(&self, code: i32, message: &str) -> Reply {
        if code != 200 {
            Counting::add(&self.counting.refusals, 1);
        }
        json(StatusCode::OK, &proto::Reply::new(code, message))
    }

    fn fault(&self) -> Fault {
        *crate::sync::lock(&self.fault)
    }

    fn report_dir(&self, fid: &str) -> PathBuf {
        self.dir.join("report").join(fid)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        if self.fault() == Fault::Timeout || (self.fault() == Fault::Stall && req.method() == Method::GET) {
            std::future::pending::<()>().await;
        }
        for link in &self.links {
            link.request().await;
        }
        if req.uri().path() != "/fragment" || !(req.method() == Method::PUT || req.method() == Method::GET) {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(crate::http::whole(Bytes::from_static(b"404 page not found")))
                .expect("a valid response");
        }
        let (account, message, signature) =
            (header(&req, proto::ACCOUNT), header(&req, proto::MESSAGE), header(&req, proto::SIGNATURE));
        if !proto::check_signature(account, message.as_bytes(), signature) {
            Counting::add(&self.counting.refusals, 1);
            return json(StatusCode::FORBIDDEN, &proto::Reply::new(403, msg::SIGNATURE));
        }
        if self.fault() == Fault::Refuse {
            return self.reply(500, msg::SYSTEM);
        }
        if req.method() == Method::PUT {
            Counting::add(&self.counting.puts, 1);
            let puts = self.puts.clone();
            let _in_progress = puts.enter();
            self.put(req).await
        } else {
            Counting::add(&self.counting.gets, 1);
            self.get(req).await
        }
    }

    async fn put(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let (fid, fragment) = (header(&req, proto::FID).to_string(), header(&req, proto::FRAGMENT).to_string());
        if !safe_name(&fid) || !safe_name(&fragment) {
            return self.reply(400, msg::BAD_NAME);
        }
        let Ok(hash) = fragment.parse::<Hash>() else { return self.reply(400, msg::BAD_NAME) };
        let dir = self.report_dir(&fid);
        if fragments::holds(&dir, &hash) {
            // Read to its end first: a client still sending must get the answer, not a connection
            // closed under its body (a broken pipe).
            let mut body = req.into_body();
            while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
            return self.reply(200, msg::OK);
        }
        let fid_hash = fid.parse::<Hash>().ok();
        let content_type = header(&req, "content-type").to_string();
        let mut buf = self.buffers.take();
        let answer = self.clone().receive(req, &content_type, hash, fid_hash, &mut buf).await;
        let answer = match answer {
            Ok(Received { at, parity }) => {
                let state = self.clone();
                let (done, buf_back) = tokio::task::spawn_blocking(move || {
                    let r = std::fs::create_dir_all(&dir).and_then(|()| {
                        if let Some((row, segment)) = parity {
                            let data = &segment[..DATA_FRAGMENTS];
                            let incoming = Some((row, &buf.as_slice()[at..at + FRAGMENT_SIZE]));
                            // A rebuild that fails keeps the fragment whole.
                            let rebuilt = state.store.rebuild_data(&segment, incoming).unwrap_or_else(|e| {
                                log::warn!("node {}: rebuilding a segment's data: {e}", state.index);
                                false
                            });
                            if state.store.hold_as_parity(&dir, &hash, row, data)?
                                || (rebuilt && state.store.hold_as_parity(&dir, &hash, row, data)?)
                            {
                                return Ok(true);
                            }
                        }
                        state.store.hold(&hash, &dir.join(hash.to_hex()), |to| write_fragment(to, &buf, at))
                    });
                    (r, buf)
                })
                .await
                .expect("writing a fragment does not panic");
                buf = buf_back;
                match done {
                    Ok(true) => {
                        if let Some(f) = fid_hash {
                            let _ = self.reports.send(f);
                        }
                        self.reply(200, msg::OK)
                    }
                    // As a full miner would: the disk keeps what the data dir's database needs.
                    Ok(false) => {
                        crate::log_limited!(
                            log::Level::Warn,
                            "devnet full",
                            "node {}: refusing fragments: the disk holding the devnet is nearly full",
                            self.index
                        );
                        self.reply(500, msg::NO_SPACE)
                    }
                    Err(e) => {
                        log::warn!("node {}: storing {fragment}: {e}", self.index);
                        self.reply(500, msg::SYSTEM)
                    }
                }
            }
            Err(r) => r,
        };
        self.buffers.give(buf);
        answer
    }

    /// Reads a fragment upload into `buf` and runs cess-miner's checks in its order: the
    /// all-zero fragment needs no body and no deal; otherwise the part must be 8 MiB, hash to
    /// `hash`, and be listed in the file's deal.
    async fn receive(
        self: Arc<Self>,
        req: Request<Incoming>,
        content_type: &str,
        hash: Hash,
        fid: Option<Hash>,
        buf: &mut AlignedBuf,
    ) -> Result<Received, Reply> {
        if hash == ZERO_FRAGMENT_HASH {
            buf.as_mut_slice()[..FRAGMENT_SIZE].fill(0);
            return Ok(Received { at: 0, parity: None });
        }
        let stalled = || {
            let stalls = self.fault() == Fault::Stall;
            if stalls {
                Counting::add(&self.counting.stalls, 1);
            }
            stalls
        };
        let slow = || self.fault() == Fault::Slow;
        let range = read_body(req, buf, &self.links, stalled, slow).await.ok_or_else(|| self.reply(400, msg::SIZE))?;
        Counting::add(&self.counting.bytes_in, range.len() as u64);
        let body = &buf.as_slice()[range];
        let part = multipart_file_sized(body, content_type, proto::FILE_PART, FRAGMENT_SIZE)
            .ok_or_else(|| self.reply(400, msg::NO_FILE))?;
        if part.len() != FRAGMENT_SIZE {
            return Err(self.reply(400, msg::SIZE));
        }
        let mut at = part.as_ptr() as usize - buf.as_slice().as_ptr() as usize;
        if !at.is_multiple_of(ALIGN) {
            buf.as_mut_slice().copy_within(at..at + FRAGMENT_SIZE, 0);
            at = 0;
        }
        let taken = std::mem::replace(buf, self.buffers.take());
        let (actual, taken) =
            tokio::task::spawn_blocking(move || (sha256(&taken.as_slice()[at..at + FRAGMENT_SIZE]), taken))
                .await
                .expect("hashing does not panic");
        self.buffers.give(std::mem::replace(buf, taken));
        if actual != hash {
            return Err(self.reply(400, msg::HASH));
        }
        let Some(fid) = fid else { return Err(self.reply(400, msg::FID)) };
        let ledger = self.ledger.clone();
        match tokio::task::spawn_blocking(move || ledger.deal(&fid)).await {
            Ok(Ok(Some(d))) if d.segments.iter().any(|s| s.fragments.contains(&hash)) => {
                let segments: Vec<_> = d.segments.iter().map(|s| s.fragments).collect();
                let parity = parity_place(&segments, &hash).map(|(s, row)| (row, segments[s]));
                Ok(Received { at, parity })
            }
            Ok(Ok(_)) => Err(self.reply(400, msg::FID)),
            _ => Err(self.reply(403, "failed to connect to rpc, please try again later.")),
        }
    }

    async fn get(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let (fid, fragment) = (header(&req, proto::FID), header(&req, proto::FRAGMENT));
        if fid.is_empty() || fragment.is_empty() {
            return self.reply(400, msg::EMPTY);
        }
        if fid.len() != 64 || fragment.len() != 64 || !safe_name(fid) || !safe_name(fragment) {
            return self.reply(400, msg::BAD_NAME);
        }
        let Ok(hash) = fragment.parse::<Hash>() else { return self.reply(400, msg::BAD_NAME) };
        let (state, fid) = (self.clone(), fid.to_string());
        let read = move || {
            // A fragment moves from report/ to file/ when its file becomes active.
            for place in ["file", "report", "file"] {
                if let Ok(Some(d)) = state.store.read(&state.dir.join(place).join(&fid), &hash) {
                    return Some(d);
                }
            }
            None
        };
        let data = tokio::task::spawn_blocking(read).await.ok().flatten();
        let Some(mut data) = data else { return self.reply(404, msg::NOT_FOUND) };
        let mut status = StatusCode::OK;
        if let Some(range) = req.headers().get(hyper::header::RANGE) {
            let Some(r) = range.to_str().ok().and_then(|v| proto::parse_range(v, data.len())) else {
                return self.reply(416, msg::RANGE);
            };
            data = data[r].to_vec();
            status = StatusCode::PARTIAL_CONTENT;
        }
        if self.fault() == Fault::Corrupt && !data.is_empty() {
            let mid = data.len() / 2;
            data[mid] ^= 0x01;
        }
        let body = if self.links.is_empty() {
            Counting::add(&self.counting.bytes_out, data.len() as u64);
            crate::http::whole(data)
        } else {
            // Counted as it passes the link: a client that hangs up does not get the rest.
            let state = self.clone();
            link::shaped(data.into(), self.links.clone(), move |n| Counting::add(&state.counting.bytes_out, n as u64))
        };
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .expect("a valid response")
    }

    /// cess-miner's report loop for one file: report the first whole, unreported column; once
    /// the file is active, keep what the chain assigned to this node and drop the rest. Parity
    /// kept whole goes over to its segment's data once the store has them. Returns whether it
    /// let go of fragments.
    fn check(&self, fid: &Hash) -> std::io::Result<bool> {
        let dir = self.report_dir(&fid.to_hex());
        if !dir.exists() || matches!(self.fault(), Fault::NoReport | Fault::Down) {
            return Ok(false);
        }
        let me = self.signer.account();
        let ledger = &self.ledger;
        let file = ledger.file(fid).ok().flatten();
        let deal = if file.is_some() { None } else { ledger.deal(fid).ok().flatten() };
        let segments: Vec<[Hash; FRAGMENTS]> = match (&file, &deal) {
            (Some(f), _) => f
                .segments
                .iter()
                .filter_map(|s| s.fragments.iter().map(|f| f.hash).collect::<Vec<_>>().try_into().ok())
                .collect(),
            (None, Some(d)) => d.segments.iter().map(|s| s.fragments).collect(),
            (None, None) => {
                std::fs::remove_dir_all(&dir)?;
                return Ok(true);
            }
        };
        let released = self.hold_parity_as_data(&dir, &segments)?;
        if let Some(file) = file {
            let file_dir = self.dir.join("file").join(fid.to_hex());
            std::fs::create_dir_all(&file_dir)?;
            for seg in &file.segments {
                for frag in seg.fragments.iter().filter(|f| f.miner == me) {
                    fragments::move_held(&dir, &file_dir, &frag.hash)?;
                }
            }
            std::fs::remove_dir_all(&dir)?;
            return Ok(true);
        }
        let Some(deal) = deal else { return Ok(released) };
        if deal.complete_list.iter().any(|c| c.miner == me) {
            return Ok(released);
        }
        let holds = |j: usize| deal.segments.iter().all(|s| fragments::holds(&dir, &s.fragments[j]));
        for j in 0..FRAGMENTS {
            let index = j as u8 + 1;
            if deal.complete_list.iter().any(|c| c.index == index) || !holds(j) {
                continue;
            }
            match ledger.transfer_report(&me, index, fid) {
                Ok(r) => {
                    log::debug!("node {}: reported column {index} of {fid} in block {}", self.index, r.block);
                    return Ok(released);
                }
                Err(e) => log::debug!("node {}: transfer_report({index}, {fid}) failed: {e}", self.index),
            }
        }
        Ok(released)
    }

    /// Holds as its segment's data each parity fragment of `fid_dir` kept whole, once the store
    /// has them or any 4 fragments of the segment to rebuild them from. Returns whether any went over.
    fn hold_parity_as_data(&self, fid_dir: &Path, segments: &[[Hash; FRAGMENTS]]) -> std::io::Result<bool> {
        let mut released = false;
        for entry in std::fs::read_dir(fid_dir)? {
            let Some(hash) = entry?.file_name().to_str().and_then(|n| n.parse::<Hash>().ok()) else { continue };
            let Some((s, row)) = parity_place(segments, &hash).filter(|_| hash != ZERO_FRAGMENT_HASH) else {
                continue;
            };
            let data = &segments[s][..DATA_FRAGMENTS];
            if self.store.hold_as_parity(fid_dir, &hash, row, data)?
                || (self.store.rebuild_data(&segments[s], None)?
                    && self.store.hold_as_parity(fid_dir, &hash, row, data)?)
            {
                std::fs::remove_file(fid_dir.join(hash.to_hex()))?;
                released = true;
            }
        }
        Ok(released)
    }

    /// Lets go of what this node holds of files no longer on chain: `fids`, or every file it
    /// holds. Returns whether it let go of any.
    fn drop_deleted(&self, fids: Option<Vec<Hash>>) -> std::io::Result<bool> {
        let files = self.dir.join("file");
        let fids = fids.unwrap_or_else(|| fids_in(&files));
        let mut released = false;
        for fid in fids {
            let dir = files.join(fid.to_hex());
            if dir.exists() && matches!(self.ledger.file(&fid), Ok(None)) {
                std::fs::remove_dir_all(&dir)?;
                log::debug!("node {}: dropped the fragments of {fid}, deleted from the chain", self.index);
                released = true;
            }
        }
        Ok(released)
    }

    /// The files whose fragments this node still reports on.
    fn scan(&self) -> Vec<Hash> {
        fids_in(&self.dir.join("report"))
    }
}

/// The FIDs a node keeps a directory for under `dir` (`report/` or `file/`).
fn fids_in(dir: &Path) -> Vec<Hash> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Copies a request body into `buf` and returns where it is. When the first part's head comes
/// whole in the first chunk, the body is placed so that the part's bytes start at [`ALIGN`]
/// (a fragment upload's single part can then go to disk from there); otherwise at 0. `None`
/// if it does not fit (no fragment upload is larger).
/// A fragment upload that passed the checks.
struct Received {
    /// Where the fragment is in the buffer: a multiple of [`ALIGN`], for direct I/O.
    at: usize,
    /// For a parity fragment: its row and its segment's fragments.
    parity: Option<(usize, [Hash; FRAGMENTS])>,
}

/// Bytes a second a [`Fault::Slow`] node takes.
const SLOW_RATE: f64 = 256.0 * 1024.0;

/// Reads a fragment upload's body into `buf`; once `stalled` says so after a frame, it reads no
/// more, for good; while `slow` says so, at [`SLOW_RATE`].
async fn read_body(
    req: Request<Incoming>,
    buf: &mut AlignedBuf,
    links: &[Arc<Link>],
    stalled: impl Fn() -> bool,
    slow: impl Fn() -> bool,
) -> Option<std::ops::Range<usize>> {
    use http_body_util::BodyExt;
    let mut body = req.into_body();
    let (mut start, mut end) = (None, 0);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else { continue };
        let at = *start.get_or_insert_with(|| {
            let head = &data[..data.len().min(ALIGN)];
            memchr::memmem::find(head, b"\r\n\r\n").map_or(0, |h| ALIGN - (h + 4))
        });
        let to = end.max(at) + data.len();
        if to > CAPACITY {
            return None;
        }
        buf.as_mut_slice()[to - data.len()..to].copy_from_slice(&data);
        end = to;
        for link in links {
            link.upload(data.len()).await;
        }
        if stalled() {
            std::future::pending::<()>().await;
        }
        if slow() {
            tokio::time::sleep(Duration::from_secs_f64(data.len() as f64 / SLOW_RATE)).await;
        }
    }
    let start = start.unwrap_or(0);
    Some(start..end.max(start))
}

impl Node {
    /// Starts node `index` (signing as `signer`) on `addr`, holding fragments in `dir` (their bytes
    /// in `store`, received through `buffers`); reports `debounce` after a fragment arrives, and rescans every 2 s.
    pub(super) async fn start(
        index: usize,
        signer: Signer,
        dir: PathBuf,
        (ledger, store, buffers, puts): (Arc<Ledger>, Arc<FragmentStore>, Arc<Pool>, Arc<PutsAtOnce>),
        links: Vec<Arc<Link>>,
        addr: SocketAddr,
        debounce: Duration,
    ) -> std::io::Result<Node> {
        let (reports, mut pending) = mpsc::unbounded_channel::<Hash>();
        let mut deletions = ledger.deletions();
        let fault = Mutex::new(Fault::None);
        let counting = Counting::default();
        let state =
            Arc::new(State { index, signer, dir, ledger, store, buffers, fault, reports, counting, puts, links });
        let reporter = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            // Files deleted while the devnet was stopped are looked for first.
            let mut deleted: Option<Option<Vec<Hash>>> = Some(None);
            loop {
                let mut fids = tokio::select! {
                    Some(fid) = pending.recv() => vec![fid],
                    gone = deletions.recv() => {
                        use tokio::sync::broadcast::error::RecvError;
                        match gone {
                            Ok(fid) => {
                                if let Some(list) = deleted.get_or_insert_with(|| Some(Vec::new())) {
                                    list.push(fid);
                                }
                            }
                            Err(RecvError::Lagged(_)) => deleted = Some(None),
                            Err(RecvError::Closed) => return,
                        }
                        Vec::new()
                    }
                    _ = tick.tick() => Vec::new(),
                    else => return,
                };
                tokio::time::sleep(debounce).await;
                while let Ok(fid) = pending.try_recv() {
                    fids.push(fid);
                }
                let Some(state) = reporter.upgrade() else { return };
                let gone = deleted.take();
                let work = move || {
                    let mut released = false;
                    if let Some(gone) = gone {
                        match state.drop_deleted(gone) {
                            Ok(r) => released |= r,
                            Err(e) => log::warn!("node {}: dropping deleted files: {e}", state.index),
                        }
                    }
                    if fids.is_empty() {
                        fids = state.scan();
                    }
                    fids.sort();
                    fids.dedup();
                    for fid in fids {
                        match state.check(&fid) {
                            Ok(r) => released |= r,
                            Err(e) => log::warn!("node {}: checking {fid}: {e}", state.index),
                        }
                    }
                    if released && let Err(e) = state.store.collect() {
                        log::warn!("node {}: collecting fragments no node holds: {e}", state.index);
                    }
                };
                let _ = tokio::task::spawn_blocking(work).await;
            }
        });
        let node = Node { addr, state, server: tokio::sync::Mutex::new(None) };
        let addr = node.serve().await?;
        Ok(Node { addr, ..node })
    }

    async fn serve(&self) -> std::io::Result<SocketAddr> {
        let state = self.state.clone();
        let receive_buffer = (!self.state.links.is_empty()).then_some(link::RECEIVE_BUFFER);
        let server = Server::start_with(self.addr, receive_buffer, move |req| state.clone().handle(req)).await?;
        let addr = server.addr();
        *self.server.lock().await = Some(server);
        Ok(addr)
    }

    /// The node's account.
    pub fn account(&self) -> AccountId {
        self.state.signer.account()
    }

    /// The node's endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it has seen so far.
    pub fn counters(&self) -> NodeCounters {
        NodeCounters { most_puts_at_once: self.state.puts.most.load(Ordering::Acquire), ..self.state.counting.read() }
    }

    /// Its current fault.
    pub fn fault(&self) -> Fault {
        self.state.fault()
    }

    /// Switches the node into `fault`; `Down` closes its port, anything else opens it again.
    pub async fn set_fault(&self, fault: Fault) -> std::io::Result<()> {
        if fault == Fault::Lost {
            for fid in self.state.scan() {
                std::fs::remove_dir_all(self.state.report_dir(&fid.to_hex()))?;
            }
        }
        *crate::sync::lock(&self.state.fault) = fault;
        let running = self.server.lock().await.is_some();
        match (fault, running) {
            (Fault::Down, true) => {
                if let Some(s) = self.server.lock().await.take() {
                    s.stop().await;
                }
            }
            (Fault::Down, false) | (_, true) => {}
            (_, false) => {
                self.serve().await?;
            }
        }
        if fault != Fault::Down {
            for fid in self.state.scan() {
                let _ = self.state.reports.send(fid);
            }
        }
        Ok(())
    }

    /// Where this node keeps its fragments.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_fast_path_agrees() {
        let mut body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".to_vec();
        body.extend_from_slice(&[7u8; 10]);
        body.extend_from_slice(b"\r\n--XX--\r\n");
        let ct = "multipart/form-data; boundary=XX";
        assert_eq!(multipart_file_sized(&body, ct, "file", 10), Some(&[7u8; 10][..]));
        assert_eq!(multipart_file_sized(&body, ct, "file", 9), multipart_file(&body, ct, "file"));
    }

    #[test]
    fn multipart_needs_a_named_file_part() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nno\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\nDATA\r\n--XX--\r\n";
        assert_eq!(multipart_file(body, "multipart/form-data; boundary=XX", "file"), Some(&b"DATA"[..]));
        let unnamed = b"--XX\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nDATA\r\n--XX--\r\n";
        assert_eq!(multipart_file(unnamed, "multipart/form-data; boundary=XX", "file"), None);
    }
}
