//! A standalone devnet (`cessfs devnet`) for the benchmarks that count what the network saw:
//! its nodes' counters and its ledger's events, read over its RPC.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cessfs::devnet::{DevnetChain, Event, NodeCounters};

/// A standalone devnet, stopped on drop.
pub struct Devnet {
    child: Child,
    /// Its RPC URL (`--chain` for a mount).
    pub rpc: String,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

impl Devnet {
    /// Starts one in `dir` with `args` (`--link …`, `--held-files N`), each of `node_links` a
    /// `--node-link`.
    pub fn start(dir: &Path, args: &[&str], node_links: &[&str]) -> Devnet {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cessfs"));
        cmd.arg("devnet").arg("--dir").arg(dir).args(["--rpc", "127.0.0.1:0", "--node-port", "0"]).args(args);
        for n in node_links {
            cmd.args(["--node-link", n]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("cessfs devnet");
        let info = dir.join("devnet.json");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !info.exists() {
            assert!(Instant::now() < deadline, "the devnet did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&info).expect("devnet.json")).expect("json");
        let rpc = info["rpc"].as_str().expect("rpc").to_string();
        Devnet { child, rpc, runtime: tokio::runtime::Runtime::new().expect("runtime") }
    }

    /// A client signing as the devnet's account (//Alice).
    pub fn client(&self) -> DevnetChain {
        DevnetChain::new(&self.rpc, cessfs::protocol::Signer::from_uri("//Alice").expect("dev key"))
    }

    /// Runs a client call.
    pub fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// The nodes' counters, summed.
    pub fn moved(&self) -> NodeCounters {
        let nodes = self.run(self.client().nodes()).expect("nodes");
        nodes.iter().map(|n| n.counters).sum()
    }

    /// Storage orders declared so far.
    pub fn declarations(&self) -> usize {
        let events = self.run(self.client().events()).expect("events");
        events.iter().filter(|(_, e)| matches!(e, Event::UploadDeclaration { .. })).count()
    }

    /// The current block (one per transaction on the devnet).
    pub fn block(&self) -> u32 {
        let events = self.run(self.client().events()).expect("events");
        events.last().map_or(0, |(b, _)| *b)
    }
}
