//! The embedded local CESS network: a ledger with the FileBank / StorageHandler / Sminer
//! semantics the client relies on (ledger.rs), served over a small JSON RPC on loopback
//! (rpc.rs; [`DevnetChain`] is its client and implements [`crate::protocol::Chain`]), and
//! storage nodes that speak the real miner protocol (node.rs). `cessfs mount` runs one in-process
//! when no chain is configured; `cessfs devnet` runs one on its own for several mounts or tools.
//!
//! Layout of its directory: `ledger/` (sled), `fragments/<hash>` (the bytes, one copy each),
//! `nodes/<i>/{report,file}/<fid>/` (what each node holds: fragments.rs).

mod buffers;
mod fragments;
mod ledger;
mod link;
mod node;
mod rpc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use ledger::{Event, Ledger};
pub use link::{LinkSpec, NodeLink, node_link};
pub use node::{Fault, Node, NodeCounters};
pub use rpc::DevnetChain;

use crate::protocol::{AccountId, Signer};

/// How to set up a devnet.
#[derive(Debug, Clone)]
pub struct DevnetConfig {
    /// Storage nodes (12 are needed per file; the rest are spares).
    pub nodes: usize,
    /// Where the RPC listens (port 0: any free port).
    pub rpc_addr: SocketAddr,
    /// First node port; node `i` listens on `base + i - 1` (0: any free ports).
    pub node_base_port: u16,
    /// The account that gets a territory at start.
    pub owner: AccountId,
    /// The territory's name.
    pub territory: Vec<u8>,
    /// Its size in GiB.
    pub territory_gib: u32,
    /// Idle space of each node, in bytes.
    pub node_space: u128,
    /// How long a node waits after a fragment arrives before checking what it can report.
    pub report_delay: Duration,
    /// Files the owner holds in its territory from the start ([`Ledger::preload_files`]).
    pub held_files: usize,
    /// The link between the client and all nodes (link.rs; default: not shaped).
    pub link: LinkSpec,
    /// Nodes (1-based) with a link of their own on top of it.
    pub node_links: Vec<(usize, NodeLink)>,
}

impl DevnetConfig {
    /// 16 nodes on any free loopback ports, a 1 TiB territory for `owner`.
    pub fn new(owner: AccountId, territory: &[u8]) -> DevnetConfig {
        DevnetConfig {
            nodes: 16,
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_base_port: 0,
            owner,
            territory: territory.to_vec(),
            territory_gib: 1024,
            node_space: 4 << 40,
            report_delay: Duration::from_millis(10),
            held_files: 0,
            link: LinkSpec::default(),
            node_links: Vec::new(),
        }
    }
}

/// A new random token for node control, written to the devnet's dir readable by its owner
/// only: chain calls are signed, but the fault switches would let any local user stop the nodes.
fn control_token(dir: &Path) -> std::io::Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token = hex::encode(bytes);
    let path = Devnet::control_token_path(dir);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

/// One node as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// 1-based index.
    pub index: usize,
    /// Its account.
    pub account: AccountId,
    /// Its endpoint.
    pub endpoint: String,
    /// Its fault switch.
    pub fault: Fault,
    /// Where it keeps fragments.
    pub dir: PathBuf,
    /// What it has seen (bytes in and out, PUTs, GETs, refusals).
    #[serde(default)]
    pub counters: NodeCounters,
}

/// A running devnet.
pub struct Devnet {
    ledger: Arc<Ledger>,
    nodes: Arc<Vec<Node>>,
    rpc: crate::http::Server,
}

impl Devnet {
    /// Starts a devnet whose state lives in `dir`.
    pub async fn start(dir: &Path, config: &DevnetConfig) -> anyhow::Result<Devnet> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating devnet dir {}", dir.display()))?;
        let ledger_dir = dir.join("ledger");
        let ledger = Arc::new(
            Ledger::open(&ledger_dir).with_context(|| format!("opening devnet ledger {}", ledger_dir.display()))?,
        );
        let mut nodes = Vec::with_capacity(config.nodes);
        let buffers = Arc::new(buffers::Pool::default());
        // The disk is a data dir's, or shares one: its database's reserve is left alone.
        let store = fragments::FragmentStore::open(&dir.join("fragments"), crate::store::kept_free(dir))
            .with_context(|| format!("opening the devnet's fragment store in {}", dir.display()))?;
        let store = Arc::new(store);
        let shared = (config.link != LinkSpec::default()).then(|| Arc::new(link::Link::shared(&config.link)));
        let puts = Arc::new(node::PutsAtOnce::default());
        for i in 1..=config.nodes {
            let signer = Signer::from_uri(&format!("//Miner{i}")).map_err(anyhow::Error::msg)?;
            let port = if config.node_base_port == 0 { 0 } else { config.node_base_port + i as u16 - 1 };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let node_dir = dir.join("nodes").join(i.to_string());
            let own = config.node_links.iter().filter(|(n, _)| *n == i).map(|(_, l)| Arc::new(link::Link::own(*l)));
            let links = shared.iter().cloned().chain(own).collect();
            let state = (ledger.clone(), store.clone(), buffers.clone(), puts.clone());
            let node = Node::start(i, signer, node_dir, state, links, addr, config.report_delay)
                .await
                .with_context(|| format!("starting devnet node {i} on {addr}"))?;
            ledger.register_miner(&node.account(), &node.endpoint(), config.node_space)?;
            nodes.push(node);
        }
        if ledger.territory(&config.owner, &config.territory)?.is_none() {
            ledger.mint_territory(&config.owner, &config.territory, config.territory_gib, 365)?;
        }
        let miners: Vec<AccountId> = nodes.iter().map(|n| n.account()).collect();
        ledger.preload_files(&config.owner, &config.territory, &miners, config.held_files)?;
        let nodes = Arc::new(nodes);
        let token = control_token(dir).context("writing the devnet's control token")?;
        let rpc = rpc::serve(config.rpc_addr, ledger.clone(), nodes.clone(), token)
            .await
            .with_context(|| format!("starting the devnet RPC on {}", config.rpc_addr))?;
        Ok(Devnet { ledger, nodes, rpc })
    }

    /// The file holding the token that node control (fault switches) asks for.
    pub fn control_token_path(dir: &Path) -> PathBuf {
        dir.join("control.token")
    }

    /// The RPC URL clients connect to.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.rpc.addr())
    }

    /// The ledger, for tools and tests in the same process.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Stops the RPC and every node.
    pub async fn stop(self) {
        self.rpc.stop().await;
        for n in self.nodes.iter() {
            let _ = n.set_fault(Fault::Down).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::format::{Encoder, FRAGMENT_SIZE, Hash};
    use crate::miner::{FragmentBody, MinerClient};
    use crate::protocol::UserBrief;
    use crate::protocol::miner::{self as proto, Reply};

    /// A node takes a fragment whether the client's body puts it page-aligned or not (a field
    /// before the file part, as other clients may send), serves it back intact, and refuses one
    /// that does not hash to its name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_stores_fragments_from_any_multipart_body() {
        let dir = tempfile::tempdir().unwrap();
        let alice = Signer::from_uri("//Alice").unwrap();
        let devnet = Devnet::start(dir.path(), &DevnetConfig::new(alice.account(), b"t")).await.unwrap();
        let data: Vec<u8> = (0..FRAGMENT_SIZE as u32 + 5).map(|i| (i * 7 + i / 4099) as u8).collect();
        let manifest = Encoder::default().encode(&data[..], data.len() as u64, None, |_| Ok(())).unwrap();
        let user = UserBrief { user: alice.account(), file_name: b"frag.bin".to_vec(), territory_name: b"t".to_vec() };
        devnet.ledger().upload_declaration(&alice.account(), &manifest.fid, &manifest.segments, &user, 0).unwrap();
        let (fid, hashes) = (manifest.fid, manifest.segments[0].fragments);
        let endpoint = devnet.nodes()[0].endpoint();
        let client = MinerClient::new(alice.clone(), crate::miner::StallRule::over(Duration::from_secs(30)), None);

        // Fragment 0 through the client's own body.
        let first = &data[..FRAGMENT_SIZE];
        client
            .put_fragment(&endpoint, &fid, FragmentBody::new(hashes[0], first.to_vec().into()), &Default::default())
            .await
            .unwrap();
        let back = client.get_fragment(&endpoint, &fid, &hashes[0], None, &Default::default()).await.unwrap();
        assert!(back == first, "fragment 0 comes back as sent");

        // Fragment 1 (the 5 bytes left, zero-padded) after a text field: not page-aligned.
        let mut second = data[FRAGMENT_SIZE..].to_vec();
        second.resize(FRAGMENT_SIZE, 0);
        let put = |hash: Hash, fragment: &[u8]| {
            let mut body = b"--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n".to_vec();
            body.extend_from_slice(b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n");
            body.extend_from_slice(fragment);
            body.extend_from_slice(b"\r\n--B--\r\n");
            let message = "a-message";
            reqwest::Client::new()
                .put(format!("{endpoint}/fragment"))
                .header("content-type", "multipart/form-data; boundary=B")
                .header(proto::FID, fid.to_hex())
                .header(proto::FRAGMENT, hash.to_hex())
                .header(proto::ACCOUNT, alice.account().to_string())
                .header(proto::MESSAGE, message)
                .header(proto::SIGNATURE, hex::encode(alice.sign(message.as_bytes())))
                .body(body)
                .send()
        };
        let reply: Reply = put(hashes[1], &second).await.unwrap().json().await.unwrap();
        assert_eq!((reply.code, reply.msg.as_str()), (200, proto::msg::OK));
        let back = client.get_fragment(&endpoint, &fid, &hashes[1], None, &Default::default()).await.unwrap();
        assert!(back == second, "fragment 1 comes back as sent");

        // Fragment 4's name on other bytes.
        let reply: Reply = put(hashes[4], &second).await.unwrap().json().await.unwrap();
        assert_eq!((reply.code, reply.msg.as_str()), (400, proto::msg::HASH));
        assert!(client.get_fragment(&endpoint, &fid, &hashes[4], None, &Default::default()).await.is_err());
        devnet.stop().await;
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes keep one copy of a segment's data between them (parity is computed when
    /// served, and kept whole only while it came before its data), serve every fragment back
    /// as pushed, and let go of all of it once the file is deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_keep_one_copy_of_the_data_and_let_go_of_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        let alice = Signer::from_uri("//Alice").unwrap();
        let devnet = Devnet::start(dir.path(), &DevnetConfig::new(alice.account(), b"t")).await.unwrap();
        let data: Vec<u8> = (0..3 * FRAGMENT_SIZE as u32).map(|i| (i ^ (i >> 11) ^ (i >> 19)) as u8).collect();
        let mut fragments = Vec::new();
        let manifest = Encoder::default()
            .encode(&data[..], data.len() as u64, None, |s| {
                fragments = (0..12).map(|i| s.fragment(i).to_vec()).collect();
                Ok(())
            })
            .unwrap();
        let user = UserBrief { user: alice.account(), file_name: b"one.bin".to_vec(), territory_name: b"t".to_vec() };
        let ledger = devnet.ledger();
        ledger.upload_declaration(&alice.account(), &manifest.fid, &manifest.segments, &user, 0).unwrap();
        let (fid, hashes) = (manifest.fid, manifest.segments[0].fragments);
        let client = MinerClient::new(alice.clone(), crate::miner::StallRule::over(Duration::from_secs(30)), None);
        // Parity first: it is kept whole until its segment's data are all here.
        for i in (0..12).rev() {
            let endpoint = devnet.nodes()[i].endpoint();
            // As the client does, a push whose connection broke is sent again (seen about once in
            // five runs here under load: the connection closed while the body was being written).
            let mut pushed = Err(None);
            for _ in 0..3 {
                let body = FragmentBody::new(hashes[i], fragments[i].clone().into());
                match client.put_fragment(&endpoint, &fid, body, &Default::default()).await {
                    Ok(()) => pushed = Ok(()),
                    Err(e @ crate::miner::MinerError::Connect { .. }) => {
                        pushed = Err(Some(e));
                        continue;
                    }
                    Err(e) => pushed = Err(Some(e)),
                }
                break;
            }
            pushed.unwrap_or_else(|e| panic!("fragment {i}: {e:?}"));
        }
        wait_for("the file to be active", || ledger.file(&fid).unwrap().is_some()).await;
        let store = dir.path().join("fragments");
        let segment = 4 * FRAGMENT_SIZE as u64;
        wait_for("parity to be held as data", || crate::disk::usage(std::slice::from_ref(&store)) <= segment).await;
        let file = ledger.file(&fid).unwrap().unwrap();
        for (i, f) in file.segments[0].fragments.iter().enumerate() {
            let node = devnet.nodes().iter().find(|n| n.account() == f.miner).unwrap();
            let back = client.get_fragment(&node.endpoint(), &fid, &f.hash, None, &Default::default()).await.unwrap();
            assert!(back == fragments[i], "fragment {i} served as pushed");
        }
        let kept = crate::disk::usage(&[store.clone(), dir.path().join("nodes")]);
        // (and a block for each parity fragment's row number)
        assert!(kept <= segment + 8 * 4096, "one copy of the data: {kept} bytes");

        ledger.delete_file(&alice.account(), &alice.account(), &fid).unwrap();
        wait_for("the fragments to go", || crate::disk::usage(std::slice::from_ref(&store)) == 0).await;
        for node in devnet.nodes() {
            assert!(!node.dir().join("file").join(fid.to_hex()).exists(), "node {} let go", node.endpoint());
        }
        devnet.stop().await;
    }
}
