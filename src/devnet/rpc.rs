//! The devnet's RPC: `POST /rpc/<call>` with JSON parameters, answered `{"ok": …}` or
//! `{"err": ChainError}`; extrinsics carry `Account` and `Signature` headers (sr25519 over the
//! body) and are refused without them. `GET /nodes` lists the nodes with their counters (bytes
//! in and out, PUTs, GETs, refusals: what moved, for tests and benchmarks) and `POST
//! /nodes/<i>/fault` switches node faults for tests; `POST /control/deletions` holds `delete_files` calls back until released (a
//! deletion waiting for its block, as on a real chain), `POST /control/declarations` holds
//! `upload_declaration` calls in its pool (included once released, whether or not their sender
//! still waits; `POST /rpc/tx_pending` says whether one is still there). Both need the control token. [`DevnetChain`] is the client, behind the same [`Chain`] trait as the real
//! chain client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Fault, Ledger, Node, NodeView};
use crate::format::{Hash, SegmentManifest};
use crate::http::{self, Reply, Server, json};
use crate::protocol::{
    AccountId, BatchReceipt, BeforeSend, Chain, ChainError, DealInfo, FileInfo, HeldFile, MinerInfo, SentTx, Signer,
    TerritoryInfo, TxReceipt, UserBrief, verify,
};

#[derive(Serialize, Deserialize)]
struct TerritoryQuery {
    owner: AccountId,
    name: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct OwnerQuery {
    owner: AccountId,
}

#[derive(Serialize, Deserialize)]
struct FidQuery {
    fid: Hash,
}

#[derive(Serialize, Deserialize)]
struct FidsQuery {
    fids: Vec<Hash>,
}

#[derive(Serialize, Deserialize)]
struct Declaration {
    fid: Hash,
    segments: Vec<SegmentManifest>,
    user: UserBrief,
    file_size: u64,
    /// The transaction's hash, as the sender recorded it.
    #[serde(default)]
    tx: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct TxQuery {
    tx: String,
}

#[derive(Serialize, Deserialize)]
struct Deletion {
    owner: AccountId,
    fids: Vec<Hash>,
}

#[derive(Serialize, Deserialize)]
struct Mint {
    name: Vec<u8>,
    gib: u32,
    days: u32,
}

#[derive(Serialize, Deserialize)]
struct Expansion {
    name: Vec<u8>,
    gib: u32,
}

#[derive(Serialize, Deserialize)]
struct FaultSwitch {
    fault: Fault,
}

#[derive(Serialize, Deserialize)]
struct HoldSwitch {
    held: bool,
}

/// What the control token guards, besides the nodes.
struct Control {
    token: Arc<str>,
    /// Whether `delete_files` calls wait in the pool (until switched off).
    deletions_held: tokio::sync::watch::Sender<bool>,
    /// Whether `upload_declaration` calls wait in the pool (until switched off).
    declarations_held: tokio::sync::watch::Sender<bool>,
    /// The declarations taken and not yet in a block, by transaction hash: each is included once
    /// declarations are not held, whether its sender still waits or is gone, as a chain's pool
    /// does.
    pool: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer<T> {
    Ok(T),
    Err(ChainError),
}

const SIGNATURE_HEADER: &str = "Signature";
const ACCOUNT_HEADER: &str = "Account";

fn answer<T: Serialize>(r: Result<T, ChainError>) -> Reply {
    json(StatusCode::OK, &r.map_or_else(Answer::Err, Answer::Ok))
}

fn bad_request(what: String) -> Reply {
    json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": what }))
}

/// The signer of an extrinsic request, if its signature over the body verifies.
fn origin(req_headers: &hyper::HeaderMap, body: &[u8]) -> Option<AccountId> {
    let account: AccountId = req_headers.get(ACCOUNT_HEADER)?.to_str().ok()?.parse().ok()?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(req_headers.get(SIGNATURE_HEADER)?.to_str().ok()?, &mut sig).ok()?;
    verify(&account, body, &sig).then_some(account)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("ledger calls do not panic")
}

/// Runs ledger call `f` once `held` is off, as a chain's pool includes a transaction whether
/// its sender still waits or not, and answers with its outcome if the sender still waits.
async fn when_released<T: Serialize + Send + 'static>(
    held: &tokio::sync::watch::Sender<bool>,
    f: impl FnOnce() -> Result<T, ChainError> + Send + 'static,
) -> Reply {
    let (included, outcome) = tokio::sync::oneshot::channel();
    let mut released = held.subscribe();
    tokio::spawn(async move {
        let _ = released.wait_for(|held| !*held).await;
        let _ = included.send(blocking(f).await);
    });
    answer(outcome.await.unwrap_or_else(|_| Err(ChainError::Unreachable("the devnet stopped".into()))))
}

/// The header that carries the control token (`Devnet::control_token_path`).
const CONTROL_HEADER: &str = "Devnet-Control";

async fn handle(ledger: Arc<Ledger>, nodes: Arc<Vec<Node>>, control: Arc<Control>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let Some(body) = http::body(req, 64 << 20).await else { return bad_request("body too large".into()) };
    macro_rules! params {
        ($t:ty) => {
            match serde_json::from_slice::<$t>(&body) {
                Ok(p) => p,
                Err(e) => return bad_request(format!("bad parameters: {e}")),
            }
        };
    }
    let signed = || origin(&headers, &body).ok_or_else(|| ChainError::dispatch("System", "BadOrigin"));
    let controlled = || headers.get(CONTROL_HEADER).and_then(|v| v.to_str().ok()) == Some(&*control.token);
    let forbidden =
        || json(StatusCode::FORBIDDEN, &serde_json::json!({ "error": "control needs the devnet's control token" }));
    let l = ledger.clone();
    match (method, path.as_str()) {
        (Method::POST, "/rpc/territory") => {
            let q = params!(TerritoryQuery);
            answer(blocking(move || l.territory(&q.owner, &q.name)).await)
        }
        (Method::POST, "/rpc/file") => {
            let q = params!(FidQuery);
            answer(blocking(move || l.file(&q.fid)).await)
        }
        (Method::POST, "/rpc/files") => {
            let q = params!(FidsQuery);
            answer(blocking(move || q.fids.iter().map(|fid| l.file(fid)).collect::<Result<Vec<_>, _>>()).await)
        }
        (Method::POST, "/rpc/deal") => {
            let q = params!(FidQuery);
            answer(blocking(move || l.deal(&q.fid)).await)
        }
        (Method::POST, "/rpc/miners") => answer(blocking(move || l.miners()).await),
        (Method::POST, "/rpc/held_files") => {
            let q = params!(OwnerQuery);
            answer(blocking(move || l.held_files(&q.owner)).await)
        }
        (Method::POST, "/rpc/events") => answer(Ok(l.events())),
        (Method::POST, "/rpc/territories") => {
            let q = params!(OwnerQuery);
            answer(blocking(move || l.territories(&q.owner)).await)
        }
        (Method::POST, "/rpc/block") => answer(Ok(l.block())),
        (Method::POST, "/rpc/upload_declaration") => {
            let d = params!(Declaration);
            let who = match signed() {
                Ok(w) => w,
                Err(e) => return answer::<()>(Err(e)),
            };
            if let Some(tx) = &d.tx {
                crate::sync::lock(&control.pool).insert(tx.clone());
            }
            let pool = control.clone();
            when_released(&control.declarations_held, move || {
                let Declaration { fid, segments, user, file_size, tx } = d;
                let result = l.upload_declaration(&who, &fid, &segments, &user, file_size as u128);
                if let Some(tx) = tx {
                    crate::sync::lock(&pool.pool).remove(&tx);
                }
                result
            })
            .await
        }
        (Method::POST, "/rpc/pool") => answer(Ok(crate::sync::lock(&control.pool).len())),
        (Method::POST, "/rpc/tx_pending") => {
            let q = params!(TxQuery);
            answer(Ok(crate::sync::lock(&control.pool).contains(&q.tx)))
        }
        (Method::POST, "/control/declarations") => {
            if !controlled() {
                return forbidden();
            }
            let h = params!(HoldSwitch);
            control.declarations_held.send_replace(h.held);
            json(StatusCode::OK, &h)
        }
        (Method::POST, "/rpc/delete_files") => {
            let d = params!(Deletion);
            let who = match signed() {
                Ok(w) => w,
                Err(e) => return answer::<()>(Err(e)),
            };
            // `pooled` counts declarations only.
            when_released(&control.deletions_held, move || l.delete_files(&who, &d.owner, &d.fids)).await
        }
        (Method::POST, "/control/deletions") => {
            if !controlled() {
                return forbidden();
            }
            let h = params!(HoldSwitch);
            control.deletions_held.send_replace(h.held);
            json(StatusCode::OK, &h)
        }
        (Method::POST, "/rpc/mint_territory") => {
            let m = params!(Mint);
            let who = match signed() {
                Ok(w) => w,
                Err(e) => return answer::<()>(Err(e)),
            };
            answer(blocking(move || l.mint_territory(&who, &m.name, m.gib, m.days)).await)
        }
        (Method::POST, "/rpc/expand_territory") => {
            let x = params!(Expansion);
            let who = match signed() {
                Ok(w) => w,
                Err(e) => return answer::<()>(Err(e)),
            };
            answer(blocking(move || l.expand_territory(&who, &x.name, x.gib)).await)
        }
        (Method::GET, "/nodes") => json(StatusCode::OK, &views(&nodes)),
        (Method::POST, p) if p.starts_with("/nodes/") && p.ends_with("/fault") => {
            if !controlled() {
                return forbidden();
            }
            let index: Option<usize> = p.trim_start_matches("/nodes/").trim_end_matches("/fault").parse().ok();
            let Some(node) = index.and_then(|i| i.checked_sub(1)).and_then(|i| nodes.get(i)) else {
                return bad_request(format!("no node in {p}"));
            };
            let f = params!(FaultSwitch);
            match node.set_fault(f.fault).await {
                Ok(()) => json(StatusCode::OK, &views(&nodes)),
                Err(e) => bad_request(format!("switching the fault: {e}")),
            }
        }
        (_, p) => bad_request(format!("no such call {p}")),
    }
}

fn views(nodes: &[Node]) -> Vec<NodeView> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeView {
            index: i + 1,
            account: n.account(),
            endpoint: n.endpoint(),
            fault: n.fault(),
            dir: n.dir().to_path_buf(),
            counters: n.counters(),
        })
        .collect()
}

/// Serves the RPC for `ledger` and `nodes` on `addr`.
pub(super) async fn serve(
    addr: SocketAddr,
    ledger: Arc<Ledger>,
    nodes: Arc<Vec<Node>>,
    token: String,
) -> std::io::Result<Server> {
    let control = Arc::new(Control {
        token: token.into(),
        deletions_held: tokio::sync::watch::Sender::new(false),
        declarations_held: tokio::sync::watch::Sender::new(false),
        pool: Default::default(),
    });
    Server::start(addr, move |req| handle(ledger.clone(), nodes.clone(), control.clone(), req)).await
}

/// The client side of the devnet RPC: the devnet as a [`Chain`].
pub struct DevnetChain {
    url: String,
    http: reqwest::Client,
    signer: Signer,
    control: Option<String>,
}

impl DevnetChain {
    /// A client of the devnet at `url`, signing as `signer`.
    pub fn new(url: &str, signer: Signer) -> DevnetChain {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client without TLS always builds");
        DevnetChain { url: url.trim_end_matches('/').to_string(), http, signer, control: None }
    }

    /// The same client, allowed to switch node faults with the devnet's control `token`.
    pub fn with_control(mut self, token: &str) -> DevnetChain {
        self.control = Some(token.trim().to_string());
        self
    }

    async fn call<P: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        params: &P,
        sign: bool,
    ) -> Result<T, ChainError> {
        let body = serde_json::to_vec(params).expect("parameters serialize");
        let mut req = self.http.post(format!("{}/rpc/{name}", self.url));
        if sign {
            req = req
                .header(ACCOUNT_HEADER, self.signer.account().to_string())
                .header(SIGNATURE_HEADER, hex::encode(self.signer.sign(&body)));
        }
        let resp = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| ChainError::Unreachable(format!("devnet at {}: {e}", self.url)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ChainError::Unreachable(format!("devnet at {}: {e}", self.url)))?;
        match serde_json::from_slice::<Answer<T>>(&bytes) {
            Ok(Answer::Ok(v)) => Ok(v),
            Ok(Answer::Err(e)) => Err(e),
            Err(e) => Err(ChainError::Decode(format!("devnet {name} answered HTTP {status}: {e}"))),
        }
    }

    /// Every territory of `owner`: (name, record).
    pub async fn territories(&self, owner: &AccountId) -> Result<Vec<(Vec<u8>, TerritoryInfo)>, ChainError> {
        self.call("territories", &OwnerQuery { owner: *owner }, false).await
    }

    /// The devnet's block number.
    pub async fn block(&self) -> Result<u32, ChainError> {
        self.call("block", &(), false).await
    }

    /// Every event the devnet recorded, with its block.
    pub async fn events(&self) -> Result<Vec<(u32, super::Event)>, ChainError> {
        self.call("events", &(), false).await
    }

    /// The devnet's nodes and their fault switches.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ChainError> {
        let url = format!("{}/nodes", self.url);
        let resp = self.http.get(&url).send().await.map_err(|e| ChainError::Unreachable(format!("{url}: {e}")))?;
        resp.json().await.map_err(|e| ChainError::Decode(format!("{url}: {e}")))
    }

    /// Switches node `index` (1-based) into `fault`.
    pub async fn set_fault(&self, index: usize, fault: Fault) -> Result<Vec<NodeView>, ChainError> {
        self.control(&format!("nodes/{index}/fault"), &FaultSwitch { fault }).await
    }

    /// Holds `delete_files` calls in the pool (they land once released, sender or not) until
    /// called with `false`.
    pub async fn hold_deletions(&self, held: bool) -> Result<(), ChainError> {
        self.control::<_, HoldSwitch>("control/deletions", &HoldSwitch { held }).await.map(drop)
    }

    /// How many declarations wait in the pool.
    pub async fn pooled(&self) -> Result<usize, ChainError> {
        self.call("pool", &(), false).await
    }

    /// Holds `upload_declaration` calls in the pool (they land once released, sender or not)
    /// until called with `false`.
    pub async fn hold_declarations(&self, held: bool) -> Result<(), ChainError> {
        self.control::<_, HoldSwitch>("control/declarations", &HoldSwitch { held }).await.map(drop)
    }

    /// A control request (with the control token) to `path`.
    async fn control<P: Serialize, T: DeserializeOwned>(&self, path: &str, params: &P) -> Result<T, ChainError> {
        let url = format!("{}/{path}", self.url);
        let mut req = self.http.post(&url);
        if let Some(token) = &self.control {
            req = req.header(CONTROL_HEADER, token);
        }
        let resp = req.json(params).send().await.map_err(|e| ChainError::Unreachable(format!("{url}: {e}")))?;
        if resp.status() == StatusCode::FORBIDDEN {
            return Err(ChainError::dispatch("Devnet", "ControlTokenRequired"));
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let said = resp.text().await.unwrap_or_default();
            return Err(ChainError::Refused { reason: format!("{url}: {status}: {said}"), transient: false });
        }
        resp.json().await.map_err(|e| ChainError::Decode(format!("{url}: {e}")))
    }

    /// `mint_territory` for this account.
    pub async fn mint_territory(&self, name: &[u8], gib: u32, days: u32) -> Result<TxReceipt, ChainError> {
        self.call("mint_territory", &Mint { name: name.to_vec(), gib, days }, true).await
    }

    /// `expand_territory` for this account.
    pub async fn expand_territory(&self, name: &[u8], gib: u32) -> Result<TxReceipt, ChainError> {
        self.call("expand_territory", &Expansion { name: name.to_vec(), gib }, true).await
    }
}

#[async_trait]
impl Chain for DevnetChain {
    fn account(&self) -> AccountId {
        self.signer.account()
    }

    /// A devnet's reads show its last block.
    fn reads_lag(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    async fn territory(&self, owner: &AccountId, name: &[u8]) -> Result<Option<TerritoryInfo>, ChainError> {
        self.call("territory", &TerritoryQuery { owner: *owner, name: name.to_vec() }, false).await
    }

    async fn file(&self, fid: &Hash) -> Result<Option<FileInfo>, ChainError> {
        self.call("file", &FidQuery { fid: *fid }, false).await
    }

    async fn files(&self, fids: &[Hash]) -> Result<Vec<Option<FileInfo>>, ChainError> {
        self.call("files", &FidsQuery { fids: fids.to_vec() }, false).await
    }

    async fn deal(&self, fid: &Hash) -> Result<Option<DealInfo>, ChainError> {
        self.call("deal", &FidQuery { fid: *fid }, false).await
    }

    async fn miners(&self) -> Result<Vec<MinerInfo>, ChainError> {
        self.call("miners", &(), false).await
    }

    async fn held_files(&self, owner: &AccountId) -> Result<Vec<HeldFile>, ChainError> {
        self.call("held_files", &OwnerQuery { owner: *owner }, false).await
    }

    async fn upload_declaration(
        &self,
        fid: &Hash,
        segments: &[SegmentManifest],
        user: &UserBrief,
        file_size: u64,
        before_send: BeforeSend<'_>,
    ) -> Result<TxReceipt, ChainError> {
        // The devnet includes a transaction once its pool has it: it never dies of age, and one
        // it does not hold is not on its way. Its id is drawn here, as a signature would make it.
        let block = self.block().await?;
        let tx = format!("0x{}", crate::format::sha256(&rand::random::<[u8; 32]>()).to_hex());
        before_send(SentTx { hash: tx.clone(), block, until: block }).await?;
        let d = Declaration { fid: *fid, segments: segments.to_vec(), user: user.clone(), file_size, tx: Some(tx) };
        self.call("upload_declaration", &d, true).await
    }

    async fn may_land(&self, sent: &SentTx) -> Result<bool, ChainError> {
        self.call("tx_pending", &TxQuery { tx: sent.hash.clone() }, false).await
    }

    async fn delete_files(&self, fids: &[Hash]) -> Result<BatchReceipt, ChainError> {
        self.call("delete_files", &Deletion { owner: self.signer.account(), fids: fids.to_vec() }, true).await
    }
}
