//! Which chain the client talks to, from the settings: a devnet started with the mount, a devnet
//! started with `cessfs devnet` (http://), or a CESS chain (ws:// or wss://).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::chain::CessChain;
use crate::config::Settings;
use crate::devnet::{Devnet, DevnetChain, DevnetConfig};
use crate::protocol::{Chain, Signer};

/// The chain client, the account it signs with, and the embedded devnet if it runs one.
pub struct Network {
    /// The chain.
    pub chain: Arc<dyn Chain>,
    /// The account.
    pub signer: Signer,
    devnet: Option<Devnet>,
}

impl Network {
    /// Connects as the settings say. An embedded devnet keeps its state in `data_dir/devnet`
    /// and writes its RPC URL and nodes to `data_dir/devnet/devnet.json`.
    pub async fn connect(settings: &Settings, data_dir: &Path) -> anyhow::Result<Network> {
        match settings.chain.as_deref() {
            None | Some("embedded") => {
                let signer = settings.signer(true)?;
                let dir = data_dir.join("devnet");
                let mut config = DevnetConfig::new(signer.account(), &settings.territory());
                if let Some(gib) = settings.devnet_territory_gib {
                    config.territory_gib = gib;
                }
                let devnet = Devnet::start(&dir, &config).await.context("starting the embedded devnet")?;
                let chain = Arc::new(DevnetChain::new(&devnet.rpc_url(), signer.clone()));
                let info = serde_json::json!({ "rpc": devnet.rpc_url(), "nodes": devnet.nodes().iter().map(|n| n.endpoint()).collect::<Vec<_>>() });
                std::fs::write(dir.join("devnet.json"), serde_json::to_vec_pretty(&info)?)?;
                log::info!("embedded devnet: RPC {}, {} storage nodes", devnet.rpc_url(), devnet.nodes().len());
                Ok(Network { chain, signer, devnet: Some(devnet) })
            }
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                let signer = settings.signer(true)?;
                let chain = DevnetChain::new(url, signer.clone());
                chain.miners().await.with_context(|| format!("reaching the devnet at {url}"))?;
                Ok(Network { chain: Arc::new(chain), signer, devnet: None })
            }
            Some(url) if url.starts_with("ws://") || url.starts_with("wss://") => {
                let signer = settings.signer(false)?;
                let chain = CessChain::connect(url, signer.clone(), settings.pinned_miners()?)
                    .await
                    .with_context(|| format!("connecting to the CESS chain at {url}"))?;
                log::info!("connected to the CESS chain at {url} as {}", signer.account());
                Ok(Network { chain: Arc::new(chain), signer, devnet: None })
            }
            Some(url) => bail!("unsupported chain URL {url:?}: use ws://, wss:// or http:// (a cessfs devnet)"),
        }
    }

    /// Stops the embedded devnet, if any.
    pub async fn shutdown(self) {
        if let Some(d) = self.devnet {
            d.stop().await;
        }
    }
}
