use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::devnet::{Devnet, DevnetConfig, LinkSpec, NodeLink, node_link};
use crate::protocol::Signer;

#[derive(Args)]
pub struct DevnetArgs {
    /// Where the devnet keeps its ledger and the nodes' fragments [default: DATA_DIR/devnet].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The RPC address mounts connect to (--chain http://ADDR).
    #[arg(long, default_value = "127.0.0.1:9944", value_name = "ADDR")]
    rpc: SocketAddr,
    /// Port of the first storage node; node i listens on PORT + i - 1 (0: any free ports).
    #[arg(long, default_value_t = 15001, value_name = "PORT")]
    node_port: u16,
    /// Storage nodes (12 hold a file; the rest are spares).
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// The account that gets a territory, as a secret URI.
    #[arg(long, default_value = "//Alice", value_name = "SURI")]
    owner: String,
    /// Its territory's name.
    #[arg(long, default_value = "cessfs")]
    territory: String,
    /// Its territory's size in GiB.
    #[arg(long, default_value_t = 1024)]
    territory_gib: u32,
    /// Start with N files already stored for the account in its territory (random content
    /// nobody holds, nothing charged), to try a tree among the many files of a large account.
    #[arg(long, default_value_t = 0, value_name = "N")]
    held_files: usize,
    /// Shape the link between clients and all nodes as a home link is: `up=20M,down=100M,rtt=60ms`
    /// (rates in bits per second; one bucket per direction, shared) [default: not shaped].
    #[arg(long, value_name = "LINK", value_parser = |s: &str| s.parse::<LinkSpec>())]
    link: Option<LinkSpec>,
    /// A node with a link of its own on top: `3=1M` (a slow miner), `5=stall` (one that never
    /// moves a byte). Repeatable.
    #[arg(long, value_name = "NODE=RATE", value_parser = node_link)]
    node_link: Vec<(usize, NodeLink)>,
}

pub fn run(args: DevnetArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    let dir = args.dir.unwrap_or_else(|| crate::config::Settings::default().data_dir().join("devnet"));
    super::mount::private_files();
    super::mount::create_private_dir(&dir)?;
    let owner = Signer::from_uri(&args.owner).map_err(anyhow::Error::msg)?.account();
    let mut config = DevnetConfig::new(owner, args.territory.as_bytes());
    config.nodes = args.nodes.max(1);
    config.rpc_addr = args.rpc;
    config.node_base_port = args.node_port;
    config.territory_gib = args.territory_gib;
    config.held_files = args.held_files;
    config.link = args.link.unwrap_or_default();
    if let Some((n, _)) = args.node_link.iter().find(|(n, _)| *n > config.nodes) {
        anyhow::bail!("--node-link {n}=...: there are {} nodes", config.nodes);
    }
    config.node_links = args.node_link;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let devnet = Devnet::start(&dir, &config).await?;
        println!("devnet RPC {} (data {})", devnet.rpc_url(), dir.display());
        for (i, n) in devnet.nodes().iter().enumerate() {
            println!("node {:>2} {} {}", i + 1, n.account(), n.endpoint());
        }
        println!("territory {:?} of {} GiB for {owner}", args.territory, args.territory_gib);
        println!("mount with: cessfs mount DIR --chain {}", devnet.rpc_url());
        let info = serde_json::json!({ "rpc": devnet.rpc_url(), "nodes": devnet.nodes().iter().map(|n| n.endpoint()).collect::<Vec<_>>() });
        std::fs::write(dir.join("devnet.json"), serde_json::to_vec_pretty(&info)?)?;
        tokio::signal::ctrl_c().await?;
        devnet.stop().await;
        Ok(())
    })
}
