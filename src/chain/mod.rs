//! The client of the real CESS chain, over subxt's dynamic API: every call and storage read is
//! built and decoded from the metadata the node serves (codec.rs), so runtime upgrades that keep
//! the names keep working. It implements the same [`Chain`] trait as the embedded devnet.
//!
//! The connection is opened at mount (an unreachable node is an error then, not a hang) and
//! opened again on the next call after it drops. Miners whose on-chain record has no endpoint
//! (older runtimes) or that a private deployment runs are reached through pinned endpoints.

pub mod codec;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use scale_value::Value;
use subxt::{OnlineClient, SubstrateConfig, dynamic};
use tokio::sync::Mutex;

use crate::format::{Hash, SegmentManifest};
use crate::protocol::{
    AccountId, Chain, ChainError, DealInfo, FileInfo, HeldFile, MinerInfo, Signer, TerritoryInfo, TxReceipt, UserBrief,
};

type Client = OnlineClient<SubstrateConfig>;

/// The largest RPC response taken from a node.
const MAX_RESPONSE_BYTES: u32 = 256 << 20;

/// How long connecting, one read or one transaction may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const TX_TIMEOUT: Duration = Duration::from_secs(180);

/// A CESS chain reached over WebSocket RPC.
pub struct CessChain {
    url: String,
    signer: Signer,
    client: Mutex<Option<Client>>,
    /// Miner endpoints from the config, overriding (or standing in for) the chain's.
    pinned: HashMap<AccountId, String>,
}

fn unreachable(e: impl std::fmt::Display) -> ChainError {
    ChainError::Unreachable(e.to_string())
}

impl CessChain {
    /// A client of the node at `url` (ws:// or wss://), connecting on its first call.
    pub fn new(url: &str, signer: Signer, pinned: HashMap<AccountId, String>) -> CessChain {
        CessChain { url: url.to_string(), signer, client: Mutex::new(None), pinned }
    }

    /// Connects now: an error if the node does not answer.
    pub async fn connect(&self) -> Result<(), ChainError> {
        self.client().await.map(|_| ())
    }

    async fn client(&self) -> Result<Client, ChainError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connect = async {
            if !subxt::rpcs::utils::url_is_secure(&self.url).map_err(|e| e.to_string())? {
                return Err(format!("{} is neither wss:// nor on this machine", self.url));
            }
            // UserHoldFileList alone passes jsonrpsee's default 10 MB at 100,000 files (and may
            // hold 500,000): responses of up to 256 MiB are taken.
            let ws = jsonrpsee::ws_client::WsClientBuilder::default()
                .max_response_size(MAX_RESPONSE_BYTES)
                .build(&self.url)
                .await
                .map_err(|e| e.to_string())?;
            Client::from_rpc_client(subxt::rpcs::RpcClient::new(ws)).await.map_err(|e| e.to_string())
        };
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(format!("{} did not answer within {CONNECT_TIMEOUT:?}", self.url)))?
            .map_err(|e| unreachable(format!("{}: {e}", self.url)))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets the connection after a failure, so the next call opens a new one.
    async fn drop_connection(&self) {
        *self.client.lock().await = None;
    }

    /// The value of storage entry `pallet.entry` at `keys`, at the current block.
    async fn read(&self, pallet: &str, entry: &str, keys: Vec<Value>) -> Result<Option<Value>, ChainError> {
        Ok(self.read_many(pallet, entry, vec![keys]).await?.pop().flatten())
    }

    /// The values of `pallet.entry` at each of `keys`, all at one block (one block lookup for
    /// many reads: asking a node for a block's runtime costs more than a storage read).
    async fn read_many(
        &self,
        pallet: &str,
        entry: &str,
        keys: Vec<Vec<Value>>,
    ) -> Result<Vec<Option<Value>>, ChainError> {
        let result = tokio::time::timeout(READ_TIMEOUT, async {
            let at = self.client().await?.at_current_block().await.map_err(unreachable)?;
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let addr = dynamic::storage::<Vec<Value>, Value>(pallet, entry);
                out.push(match at.storage().try_fetch(addr, k).await.map_err(unreachable)? {
                    Some(v) => Some(v.decode().map_err(|e| ChainError::Decode(format!("{pallet}.{entry}: {e}")))?),
                    None => None,
                });
            }
            Ok(out)
        })
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("reading {pallet}.{entry} took over {READ_TIMEOUT:?}"))));
        if let Err(ChainError::Unreachable(_)) = &result {
            self.drop_connection().await;
        }
        result
    }

    /// Signs and submits `call`, returning once it is in a block; a refusal of the runtime is
    /// [`ChainError::Dispatch`] with the pallet's error name.
    pub async fn submit(&self, call: &codec::Call) -> Result<TxReceipt, ChainError> {
        let result = tokio::time::timeout(TX_TIMEOUT, self.submit_inner(call))
            .await
            .unwrap_or_else(|_| Err(unreachable(format!("no block included the transaction within {TX_TIMEOUT:?}"))));
        if let Err(ChainError::Unreachable(_)) = &result {
            self.drop_connection().await;
        }
        result
    }

    async fn submit_inner(&self, call: &codec::Call) -> Result<TxReceipt, ChainError> {
        use subxt::tx::TransactionStatus;
        let client = self.client().await?;
        let at = client.at_current_block().await.map_err(unreachable)?;
        let mut progress = at
            .transactions()
            .sign_and_submit_then_watch_default(call, self.signer.keypair())
            .await
            .map_err(|e| refusal(&e.to_string()))?;
        while let Some(status) = progress.next().await {
            match status.map_err(unreachable)? {
                TransactionStatus::InBestBlock(in_block) | TransactionStatus::InFinalizedBlock(in_block) => {
                    let tx_hash = format!("{:?}", in_block.extrinsic_hash());
                    if let Err(e) = in_block.wait_for_success().await {
                        return Err(match e {
                            subxt::error::TransactionEventsError::ExtrinsicFailed(d) => dispatch_error(&d),
                            other => unreachable(other),
                        });
                    }
                    let block = in_block.at().await.map_err(unreachable)?.block_number() as u32;
                    return Ok(TxReceipt { tx_hash, block });
                }
                TransactionStatus::Invalid { message } | TransactionStatus::Dropped { message } => {
                    return Err(refusal(&message));
                }
                TransactionStatus::Error { message } => return Err(unreachable(message)),
                _ => {}
            }
        }
        Err(unreachable("the node stopped reporting on the transaction"))
    }

    /// The free balance of `account`.
    pub async fn free_balance(&self, account: &AccountId) -> Result<u128, ChainError> {
        match self.read("System", "Account", codec::keys::account(account)).await? {
            Some(v) => codec::free_balance(&v),
            None => Ok(0),
        }
    }

    /// `StorageHandler.UnitPrice`: the price of one GiB for one day.
    pub async fn unit_price(&self) -> Result<u128, ChainError> {
        let v = self.read("StorageHandler", "UnitPrice", Vec::new()).await?;
        v.as_ref().map_or(Ok(0), codec::uint)
    }

    /// The current block number.
    pub async fn block_number(&self) -> Result<u32, ChainError> {
        let at = self.client().await?.at_current_block().await.map_err(unreachable)?;
        Ok(at.block_number() as u32)
    }

    /// Every territory of `owner`: (name, record).
    pub async fn territories(&self, owner: &AccountId) -> Result<Vec<(Vec<u8>, TerritoryInfo)>, ChainError> {
        let at = self.client().await?.at_current_block().await.map_err(unreachable)?;
        let addr = dynamic::storage::<Vec<Value>, Value>("StorageHandler", "Territory");
        let mut entries = at.storage().iter(addr, codec::keys::account(owner)).await.map_err(unreachable)?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(unreachable)?;
            let key = entry.key().map_err(|e| ChainError::Decode(e.to_string()))?;
            let name = key
                .part(1)
                .and_then(|p| p.decode_as::<Vec<u8>>().ok().flatten())
                .ok_or_else(|| ChainError::Decode("territory key without a name".into()))?;
            let value = entry.value().decode().map_err(|e| ChainError::Decode(e.to_string()))?;
            out.push((name, codec::territory_info(&value)?));
        }
        Ok(out)
    }
}

/// A transaction the node would not take: a balance too low to pay the fee is the usual cause.
fn refusal(message: &str) -> ChainError {
    if message.contains("Inability to pay") || message.contains("Payment") {
        ChainError::dispatch("Balances", "InsufficientBalance")
    } else {
        unreachable(format!("transaction not accepted: {message}"))
    }
}

fn dispatch_error(d: &subxt::error::DispatchError) -> ChainError {
    match d {
        subxt::error::DispatchError::Module(m) => match m.details() {
            Ok(details) => ChainError::dispatch(details.pallet.name(), &details.variant.name),
            Err(_) => ChainError::dispatch("Runtime", &m.to_string()),
        },
        other => ChainError::dispatch("System", &other.to_string()),
    }
}

#[async_trait]
impl Chain for CessChain {
    fn account(&self) -> AccountId {
        self.signer.account()
    }

    async fn territory(&self, owner: &AccountId, name: &[u8]) -> Result<Option<TerritoryInfo>, ChainError> {
        let v = self.read("StorageHandler", "Territory", codec::keys::territory(owner, name)).await?;
        v.as_ref().map(codec::territory_info).transpose()
    }

    async fn file(&self, fid: &Hash) -> Result<Option<FileInfo>, ChainError> {
        let v = self.read("FileBank", "File", codec::keys::fid(fid)).await?;
        v.as_ref().map(codec::file_info).transpose()
    }

    async fn deal(&self, fid: &Hash) -> Result<Option<DealInfo>, ChainError> {
        let v = self.read("FileBank", "DealMap", codec::keys::fid(fid)).await?;
        v.as_ref().map(codec::deal_info).transpose()
    }

    async fn miners(&self) -> Result<Vec<MinerInfo>, ChainError> {
        let all = self.read("Sminer", "AllMiner", Vec::new()).await?;
        let accounts = match &all {
            Some(v) => codec::byte_items(v)?.into_iter().map(codec::account).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let keys = accounts.iter().map(codec::keys::account).collect();
        let items = self.read_many("Sminer", "MinerItems", keys).await?;
        let mut miners = Vec::new();
        for (account, v) in accounts.into_iter().zip(items) {
            let Some(v) = v else { continue };
            let mut m = codec::miner_info(account, &v)?;
            if let Some(e) = self.pinned.get(&account) {
                m.endpoint = Some(e.clone());
            }
            miners.push(m);
        }
        Ok(miners)
    }

    async fn held_files(&self, owner: &AccountId) -> Result<Vec<HeldFile>, ChainError> {
        match self.read("FileBank", "UserHoldFileList", codec::keys::account(owner)).await? {
            Some(v) => codec::held_files(&v),
            None => Ok(Vec::new()),
        }
    }

    async fn upload_declaration(
        &self,
        fid: &Hash,
        segments: &[SegmentManifest],
        user: &UserBrief,
        file_size: u64,
    ) -> Result<TxReceipt, ChainError> {
        let client = self.client().await?;
        let md = client.at_current_block().await.map_err(unreachable)?.metadata();
        self.submit(&codec::upload_declaration(&md, fid, segments, user, file_size)).await
    }

    async fn delete_file(&self, fid: &Hash) -> Result<TxReceipt, ChainError> {
        self.submit(&codec::delete_file(&self.signer.account(), fid)).await
    }
}
