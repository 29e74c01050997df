//! Which chain the client talks to, from the settings: a devnet started with the mount, a devnet
//! started with `cessfs devnet` (http://), or a CESS chain (ws:// or wss://).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use async_trait::async_trait;

use crate::chain::CessChain;
use crate::config::Settings;
use crate::devnet::{Devnet, DevnetChain, DevnetConfig};
use crate::format::{Hash, SegmentManifest};
use crate::metrics;
use crate::protocol::{
    AccountId, Chain, ChainError, DealInfo, FileInfo, HeldFile, MinerInfo, Signer, TerritoryInfo, TxReceipt, UserBrief,
};

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
    /// and writes its RPC URL and nodes to `data_dir/devnet/devnet.json`. Every chain call is
    /// timed for the metrics.
    pub async fn connect(settings: &Settings, data_dir: &Path) -> anyhow::Result<Network> {
        let mut network = Self::connect_untimed(settings, data_dir).await?;
        network.chain = Arc::new(Timed(network.chain));
        Ok(network)
    }

    async fn connect_untimed(settings: &Settings, data_dir: &Path) -> anyhow::Result<Network> {
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

/// A chain whose every call is timed into [`metrics::CHAIN_CALL_SECONDS`].
struct Timed(Arc<dyn Chain>);

async fn timed<T>(call: &'static str, f: impl Future<Output = Result<T, ChainError>>) -> Result<T, ChainError> {
    let start = Instant::now();
    let result = f.await;
    metrics::CHAIN_CALL_SECONDS.observe(call, start.elapsed());
    if result.is_err() {
        metrics::CHAIN_CALL_ERRORS.add(call, 1);
    }
    result
}

#[async_trait]
impl Chain for Timed {
    fn account(&self) -> AccountId {
        self.0.account()
    }

    async fn territory(&self, owner: &AccountId, name: &[u8]) -> Result<Option<TerritoryInfo>, ChainError> {
        timed("territory", self.0.territory(owner, name)).await
    }

    async fn file(&self, fid: &Hash) -> Result<Option<FileInfo>, ChainError> {
        timed("file", self.0.file(fid)).await
    }

    async fn deal(&self, fid: &Hash) -> Result<Option<DealInfo>, ChainError> {
        timed("deal", self.0.deal(fid)).await
    }

    async fn miners(&self) -> Result<Vec<MinerInfo>, ChainError> {
        timed("miners", self.0.miners()).await
    }

    async fn held_files(&self, owner: &AccountId) -> Result<Vec<HeldFile>, ChainError> {
        timed("held_files", self.0.held_files(owner)).await
    }

    async fn upload_declaration(
        &self,
        fid: &Hash,
        segments: &[SegmentManifest],
        user: &UserBrief,
        file_size: u64,
    ) -> Result<TxReceipt, ChainError> {
        timed("upload_declaration", self.0.upload_declaration(fid, segments, user, file_size)).await
    }

    async fn delete_file(&self, fid: &Hash) -> Result<TxReceipt, ChainError> {
        timed("delete_file", self.0.delete_file(fid)).await
    }
}
