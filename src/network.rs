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
    AccountId, BatchReceipt, BeforeSend, Chain, ChainError, ChainHealth, DealInfo, FileInfo, HeldFile, MinerInfo,
    SentTx, Signer, TerritoryInfo, TxReceipt, UserBrief,
};

/// The chain client, the account it signs with, and the embedded devnet if it runs one.
pub struct Network {
    /// The chain.
    pub chain: Arc<dyn Chain>,
    /// The account.
    pub signer: Signer,
    /// Whether the chain answers, as its calls see it.
    pub health: Arc<ChainHealth>,
    devnet: Option<Devnet>,
}

impl Network {
    /// Connects as the settings say. An embedded devnet keeps its state in `data_dir/devnet`
    /// and writes its RPC URL and nodes to `data_dir/devnet/devnet.json`. Every chain call is
    /// timed for the metrics and watched for the chain's health. With `offline_ok` (a data dir
    /// mounted before), a chain that does not answer is no error: the mount works from what is
    /// local, and calls reach the chain once it answers.
    pub async fn connect(settings: &Settings, data_dir: &Path, offline_ok: bool) -> anyhow::Result<Network> {
        let health = Arc::new(ChainHealth::default());
        let (chain, signer, devnet) = Self::connect_untimed(settings, data_dir, offline_ok, &health).await?;
        let chain = Arc::new(Observed { chain, health: health.clone() });
        Ok(Network { chain, signer, health, devnet })
    }

    async fn connect_untimed(
        settings: &Settings,
        data_dir: &Path,
        offline_ok: bool,
        health: &ChainHealth,
    ) -> anyhow::Result<(Arc<dyn Chain>, Signer, Option<Devnet>)> {
        // An unreachable chain, where that is no error: noted, and the mount goes on.
        let offline = |e: ChainError, url: &str| -> anyhow::Result<()> {
            if offline_ok && e.is_transient() {
                log::warn!("the chain at {url} does not answer ({e}): mounting from what is local");
                health.record::<()>(&Err(e));
                Ok(())
            } else {
                Err(e.into())
            }
        };
        match settings.chain.as_deref() {
            None | Some("embedded") => {
                let signer = settings.signer(true)?;
                let dir = data_dir.join("devnet");
                let mut config = DevnetConfig::new(signer.account(), &settings.territory());
                if let Some(gib) = settings.devnet_territory_gib {
                    config.territory_gib = gib;
                }
                if let Some(link) = &settings.devnet_link {
                    config.link = link.parse().map_err(|e| anyhow::anyhow!("devnet_link: {e}"))?;
                }
                let devnet = Devnet::start(&dir, &config).await.context("starting the embedded devnet")?;
                let chain = Arc::new(DevnetChain::new(&devnet.rpc_url(), signer.clone()));
                let info = serde_json::json!({ "rpc": devnet.rpc_url(), "nodes": devnet.nodes().iter().map(|n| n.endpoint()).collect::<Vec<_>>() });
                std::fs::write(dir.join("devnet.json"), serde_json::to_vec_pretty(&info)?)?;
                log::info!("embedded devnet: RPC {}, {} storage nodes", devnet.rpc_url(), devnet.nodes().len());
                Ok((chain, signer, Some(devnet)))
            }
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                let signer = settings.signer(true)?;
                let chain = DevnetChain::new(url, signer.clone());
                if let Err(e) = chain.miners().await {
                    offline(e, url).with_context(|| format!("reaching the devnet at {url}"))?;
                }
                Ok((Arc::new(chain), signer, None))
            }
            Some(url) if url.starts_with("ws://") || url.starts_with("wss://") => {
                let signer = settings.signer(false)?;
                let chain = CessChain::new(url, signer.clone(), settings.pinned_miners()?);
                match chain.connect().await {
                    Ok(()) => log::info!("connected to the CESS chain at {url} as {}", signer.account()),
                    Err(e) => offline(e, url).with_context(|| format!("connecting to the CESS chain at {url}"))?,
                }
                Ok((Arc::new(chain), signer, None))
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

/// A chain whose every call is timed into [`metrics::CHAIN_CALL_SECONDS`] and recorded in its
/// health; right after a failure to reach it, calls fail at once ([`ChainHealth::refusal`]).
struct Observed {
    chain: Arc<dyn Chain>,
    health: Arc<ChainHealth>,
}

impl Observed {
    async fn call<T>(
        &self,
        call: &'static str,
        f: impl Future<Output = Result<T, ChainError>>,
    ) -> Result<T, ChainError> {
        if let Some(e) = self.health.refusal() {
            return Err(e);
        }
        let start = Instant::now();
        let result = f.await;
        metrics::CHAIN_CALL_SECONDS.observe(call, start.elapsed());
        if result.is_err() {
            metrics::CHAIN_CALL_ERRORS.add(call, 1);
        }
        self.health.record(&result);
        result
    }
}

#[async_trait]
impl Chain for Observed {
    fn account(&self) -> AccountId {
        self.chain.account()
    }

    fn reads_lag(&self) -> std::time::Duration {
        self.chain.reads_lag()
    }

    async fn territory(&self, owner: &AccountId, name: &[u8]) -> Result<Option<TerritoryInfo>, ChainError> {
        self.call("territory", self.chain.territory(owner, name)).await
    }

    async fn file(&self, fid: &Hash) -> Result<Option<FileInfo>, ChainError> {
        self.call("file", self.chain.file(fid)).await
    }

    async fn files(&self, fids: &[Hash]) -> Result<Vec<Option<FileInfo>>, ChainError> {
        self.call("files", self.chain.files(fids)).await
    }

    async fn deal(&self, fid: &Hash) -> Result<Option<DealInfo>, ChainError> {
        self.call("deal", self.chain.deal(fid)).await
    }

    async fn miners(&self) -> Result<Vec<MinerInfo>, ChainError> {
        self.call("miners", self.chain.miners()).await
    }

    async fn held_files(&self, owner: &AccountId) -> Result<Vec<HeldFile>, ChainError> {
        self.call("held_files", self.chain.held_files(owner)).await
    }

    async fn upload_declaration(
        &self,
        fid: &Hash,
        segments: &[SegmentManifest],
        user: &UserBrief,
        file_size: u64,
        before_send: BeforeSend<'_>,
    ) -> Result<TxReceipt, ChainError> {
        self.call("upload_declaration", self.chain.upload_declaration(fid, segments, user, file_size, before_send))
            .await
    }

    async fn may_land(&self, sent: &SentTx) -> Result<bool, ChainError> {
        self.call("may_land", self.chain.may_land(sent)).await
    }

    async fn delete_files(&self, fids: &[Hash]) -> Result<BatchReceipt, ChainError> {
        self.call("delete_files", self.chain.delete_files(fids)).await
    }
}
