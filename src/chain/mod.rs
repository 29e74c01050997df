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
    AccountId, BatchReceipt, BeforeSend, Chain, ChainError, DealInfo, FileInfo, HeldFile, MinerInfo, SentTx, Signer,
    TerritoryInfo, TxReceipt, UserBrief,
};

type Client = OnlineClient<SubstrateConfig>;

/// The largest RPC response taken from a node.
const MAX_RESPONSE_BYTES: u32 = 256 << 20;

/// How long connecting, one read (or handing a transaction to the pool), and a transaction's
/// way into a block may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const TX_TIMEOUT: Duration = Duration::from_secs(180);

/// Blocks a transaction stays valid for after the block it is signed against: one not in a
/// block by then never will be.
const MORTAL_BLOCKS: u32 = 32;

/// Times a transaction is signed again after the pool refused its nonce (another process
/// signed with the account meanwhile).
const NONCE_RETRIES: usize = 3;

/// A CESS chain reached over WebSocket RPC.
pub struct CessChain {
    url: String,
    signer: Signer,
    connection: Mutex<Option<(Client, subxt::rpcs::RpcClient)>>,
    /// The account's next nonce, taken here for each transaction (two at once would otherwise
    /// both take the chain's); `None`: asked of the node (`system_accountNextIndex`, which counts
    /// the pool) before the next one. Held while a transaction is signed and handed to the pool,
    /// so that the pool receives them in nonce order.
    nonce: Mutex<Option<u64>>,
    /// Miner endpoints from the config, overriding (or standing in for) the chain's.
    pinned: HashMap<AccountId, String>,
}

/// What a territory payment did: its receipt and what the chain's event says it cost.
#[derive(Debug, Clone)]
pub struct Payment {
    /// The transaction.
    pub receipt: TxReceipt,
    /// The `spend` of the StorageHandler event, if it had one.
    pub spent: Option<u128>,
    /// A batch's items, in order: `ItemCompleted` or `ItemFailed` (none for another call).
    pub items: Vec<Result<(), ChainError>>,
}

fn unreachable(e: impl std::fmt::Display) -> ChainError {
    ChainError::Unreachable(e.to_string())
}

impl CessChain {
    /// A client of the node at `url` (ws:// or wss://), connecting on its first call.
    pub fn new(url: &str, signer: Signer, pinned: HashMap<AccountId, String>) -> CessChain {
        CessChain { url: url.to_string(), signer, connection: Mutex::new(None), nonce: Mutex::new(None), pinned }
    }

    /// Connects now: an error if the node does not answer.
    pub async fn connect(&self) -> Result<(), ChainError> {
        self.client().await.map(|_| ())
    }

    async fn client(&self) -> Result<Client, ChainError> {
        Ok(self.connected().await?.0)
    }

    /// The client and its RPC connection, opened if need be. The legacy RPC methods serve
    /// everything: with the newer ones also tried, a node lacking one (chopsticks has no
    /// `transactionWatch_v1`) answered every refused transaction with "Method not found"
    /// instead of the pool's reason.
    async fn connected(&self) -> Result<(Client, subxt::rpcs::RpcClient), ChainError> {
        let mut slot = self.connection.lock().await;
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
            let rpc = subxt::rpcs::RpcClient::new(ws);
            let backend = subxt::backend::LegacyBackend::builder().build(rpc.clone());
            let client = Client::from_backend(std::sync::Arc::new(backend)).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((client, rpc))
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
        *self.connection.lock().await = None;
        *self.nonce.lock().await = None;
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
    /// [`ChainError::Dispatch`] with the pallet's error name, one of the pool
    /// [`ChainError::Refused`] with its reason.
    pub async fn submit(&self, call: &codec::Call) -> Result<TxReceipt, ChainError> {
        Ok(self.pay(call).await?.receipt)
    }

    /// [`CessChain::submit`], with what the chain's StorageHandler event says was spent.
    pub async fn pay(&self, call: &codec::Call) -> Result<Payment, ChainError> {
        self.send(call, None).await
    }

    /// [`CessChain::pay`], calling `before_send` with each signed transaction before it goes.
    async fn send(&self, call: &codec::Call, before_send: Option<BeforeSend<'_>>) -> Result<Payment, ChainError> {
        let mut attempt = 0;
        let result = loop {
            match self.submit_inner(call, before_send).await {
                Ok(paid) => break Ok(paid),
                Err(Submission::StaleNonce(why)) if attempt < NONCE_RETRIES => {
                    attempt += 1;
                    log::info!("the account's nonce moved on ({why}): signing again");
                }
                Err(Submission::StaleNonce(why)) => {
                    break Err(ChainError::Refused {
                        reason: format!("the account's nonce kept moving ({why}): is another client signing with it?"),
                        transient: true,
                    });
                }
                Err(Submission::CannotPay) => {
                    let balance = self.free_balance(&self.signer.account()).await;
                    let balance = balance.map_or_else(|e| format!("unknown ({e})"), |b| format!("{} CESS", tokens(b)));
                    break Err(ChainError::Refused {
                        reason: format!("the account {} cannot pay the fee: balance {balance}", self.signer.account()),
                        transient: false,
                    });
                }
                Err(Submission::Failed(e)) => break Err(e),
            }
        };
        // A block not seen in time may also be a connection silently gone: a new one is made.
        if let Err(ChainError::Unreachable(_) | ChainError::Pending(_)) = &result {
            self.drop_connection().await;
        }
        result
    }

    /// The account's next nonce, from the node if not known here.
    async fn next_nonce(&self, rpc: &subxt::rpcs::RpcClient, known: Option<u64>) -> Result<u64, ChainError> {
        if let Some(n) = known {
            return Ok(n);
        }
        let account = self.signer.account().to_string();
        rpc.request::<u64>("system_accountNextIndex", subxt::rpcs::rpc_params![account]).await.map_err(unreachable)
    }

    /// Submits `call` (within [`READ_TIMEOUT`]: else the node is unreachable) and follows it
    /// into a block (within [`TX_TIMEOUT`]: else it is pending, and may still land).
    async fn submit_inner(
        &self,
        call: &codec::Call,
        before_send: Option<BeforeSend<'_>>,
    ) -> Result<Payment, Submission> {
        let mut progress = match tokio::time::timeout(READ_TIMEOUT, self.sign_and_submit(call, before_send)).await {
            Ok(submitted) => submitted?,
            Err(_) => {
                // Cut off half-way: whether the node took the nonce is its to say.
                *self.nonce.lock().await = None;
                let why = format!("the node did not take the transaction within {READ_TIMEOUT:?}");
                return Err(Submission::Failed(unreachable(why)));
            }
        };
        let outcome = tokio::time::timeout(TX_TIMEOUT, self.follow(&mut progress)).await.unwrap_or_else(|_| {
            Err(Submission::Failed(ChainError::Pending(format!(
                "no block included the transaction within {TX_TIMEOUT:?}; it may still land"
            ))))
        });
        if outcome.is_err() {
            // Whether the transaction took its nonce is the node's to say.
            *self.nonce.lock().await = None;
        }
        outcome
    }

    /// Signs `call` with the account's next nonce, mortal for [`MORTAL_BLOCKS`], tells
    /// `before_send`, and hands it to the node's pool.
    async fn sign_and_submit(
        &self,
        call: &codec::Call,
        before_send: Option<BeforeSend<'_>>,
    ) -> Result<
        subxt::transactions::TransactionProgress<
            SubstrateConfig,
            subxt::client::OnlineClientAtBlockImpl<SubstrateConfig>,
        >,
        Submission,
    > {
        let (client, rpc) = self.connected().await?;
        let progress = {
            let mut next = self.nonce.lock().await;
            // The block signed against, taken now: a wait for the lock must not age it.
            let at = client.at_current_block().await.map_err(unreachable)?;
            let nonce = self.next_nonce(&rpc, *next).await?;
            let params = subxt::config::DefaultExtrinsicParamsBuilder::<SubstrateConfig>::new()
                .nonce(nonce)
                .mortal(u64::from(MORTAL_BLOCKS))
                .build();
            let signed = at.transactions().create_signed(call, self.signer.keypair(), params).await;
            let signed = match signed {
                Ok(signed) => signed,
                Err(e) => {
                    *next = None;
                    return Err(pool_refusal(&format!("{e} {e:?}")));
                }
            };
            if let Some(before_send) = before_send {
                let block = at.block_number() as u32;
                let sent =
                    SentTx { hash: format!("{:?}", signed.hash()), block, until: block.saturating_add(MORTAL_BLOCKS) };
                // Not recorded, not sent: the nonce stays for the next transaction.
                before_send(sent).await?;
            }
            match signed.submit_and_watch().await {
                Ok(progress) => {
                    *next = Some(nonce + 1);
                    progress
                }
                Err(e) => {
                    let refused = pool_refusal(&format!("{e} {e:?}"));
                    // A refusal that used no nonce keeps it; any other asks the node again.
                    *next = matches!(refused, Submission::CannotPay).then_some(nonce);
                    return Err(refused);
                }
            }
        };
        Ok(progress)
    }

    /// Follows a transaction the pool took until it is in a block.
    async fn follow(
        &self,
        progress: &mut subxt::transactions::TransactionProgress<
            SubstrateConfig,
            subxt::client::OnlineClientAtBlockImpl<SubstrateConfig>,
        >,
    ) -> Result<Payment, Submission> {
        use subxt::tx::TransactionStatus;
        while let Some(status) = progress.next().await {
            match status.map_err(unreachable)? {
                TransactionStatus::InBestBlock(in_block) | TransactionStatus::InFinalizedBlock(in_block) => {
                    let tx_hash = format!("{:?}", in_block.extrinsic_hash());
                    let events = match in_block.wait_for_success().await {
                        Ok(events) => events,
                        Err(subxt::error::TransactionEventsError::ExtrinsicFailed(d)) => {
                            return Err(Submission::Failed(dispatch_error(&d)));
                        }
                        Err(other) => return Err(unreachable(other).into()),
                    };
                    let spent = events.iter().flatten().find_map(|ev| {
                        if ev.pallet_name() != "StorageHandler" {
                            return None;
                        }
                        let fields = ev.decode_fields_unchecked_as::<scale_value::Composite<()>>().ok()?;
                        let value = Value { value: scale_value::ValueDef::Composite(fields), context: () };
                        codec::uint(codec::field(&value, "spend").ok()?).ok()
                    });
                    let at = in_block.at().await.map_err(unreachable)?;
                    let metadata = at.metadata();
                    let items = events
                        .iter()
                        .flatten()
                        .filter(|ev| ev.pallet_name() == "Utility")
                        .filter_map(|ev| match ev.event_name() {
                            "ItemCompleted" => Some(Ok(())),
                            "ItemFailed" => {
                                let error =
                                    subxt::error::DispatchError::decode_from(ev.field_bytes(), metadata.clone());
                                Some(Err(error.map_or_else(
                                    |e| ChainError::dispatch("Runtime", &format!("an undecodable error ({e})")),
                                    |d| dispatch_error(&d),
                                )))
                            }
                            _ => None,
                        })
                        .collect();
                    let block = at.block_number() as u32;
                    return Ok(Payment { receipt: TxReceipt { tx_hash, block }, spent, items });
                }
                TransactionStatus::Invalid { message } | TransactionStatus::Dropped { message } => {
                    return Err(pool_refusal(&message));
                }
                TransactionStatus::Error { message } => return Err(unreachable(message).into()),
                _ => {}
            }
        }
        Err(unreachable("the node stopped reporting on the transaction").into())
    }

    /// The runtime's spec version (prices changed with it).
    pub async fn spec_version(&self) -> Result<u32, ChainError> {
        let at = self.client().await?.at_current_block().await.map_err(unreachable)?;
        Ok(at.spec_version())
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

/// How a transaction failed to get into a block.
enum Submission {
    /// The pool took another transaction with its nonce, or wants an earlier one first.
    StaleNonce(String),
    /// The account cannot pay the fee.
    CannotPay,
    /// Anything else, as the caller sees it.
    Failed(ChainError),
}

impl From<ChainError> for Submission {
    fn from(e: ChainError) -> Submission {
        Submission::Failed(e)
    }
}

/// What the pool's answer (a node's `1010 Invalid Transaction: …` with its data, chopsticks'
/// `{"invalid":{"payment":null}}`, an `Invalid` or `Dropped` status) means.
fn pool_refusal(answer: &str) -> Submission {
    let text = answer.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    let refused = |reason: &str, transient: bool| {
        Submission::Failed(ChainError::Refused { reason: reason.to_string(), transient })
    };
    // Quoted: subxt's errors name the ChargeTransactionPayment extension too.
    if has(&["inability to pay", "\"payment", "\\\"payment"]) {
        Submission::CannotPay
    } else if has(&[
        "stale",
        "outdated",
        "valid in the future",
        "already imported",
        "priority is too low",
        "usurped",
        "bad nonce",
        "code: 1013",
        "code: 1014",
    ]) {
        Submission::StaleNonce(answer.chars().take(200).collect())
    } else if has(&["badproof", "bad proof", "bad signature"]) {
        refused("the chain refused the signature (a key for another chain, or a client older than its runtime)", false)
    } else if has(&["exhaust"]) {
        refused("the blocks are full: tried again later", true)
    } else if has(&["temporarily banned", "code: 1012"]) {
        refused("the node holds this transaction back for now: tried again later", true)
    } else if has(&["ancient", "birth"]) {
        refused("the transaction was signed against an old block: signed again next time", true)
    } else {
        Submission::Failed(unreachable(format!("transaction not accepted: {answer}")))
    }
}

/// An amount of the chain's token (18 decimals), in CESS.
pub fn tokens(amount: u128) -> String {
    format!("{:.4}", amount as f64 / 1e18)
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
        before_send: BeforeSend<'_>,
    ) -> Result<TxReceipt, ChainError> {
        let client = self.client().await?;
        let md = client.at_current_block().await.map_err(unreachable)?.metadata();
        let call = codec::upload_declaration(&md, fid, segments, user, file_size);
        Ok(self.send(&call, Some(before_send)).await?.receipt)
    }

    async fn may_land(&self, sent: &SentTx) -> Result<bool, ChainError> {
        Ok(self.block_number().await? <= sent.until)
    }

    async fn delete_files(&self, fids: &[Hash]) -> Result<BatchReceipt, ChainError> {
        let paid = self.pay(&codec::delete_files(&self.signer.account(), fids)).await?;
        if paid.items.len() != fids.len() {
            return Err(ChainError::Pending(format!(
                "a batch of {} deletions landed in block {} with {} outcomes",
                fids.len(),
                paid.receipt.block,
                paid.items.len()
            )));
        }
        Ok(BatchReceipt { receipt: paid.receipt, items: paid.items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(answer: &str) -> String {
        match pool_refusal(answer) {
            Submission::StaleNonce(_) => "nonce".into(),
            Submission::CannotPay => "pay".into(),
            Submission::Failed(ChainError::Refused { transient, .. }) => format!("refused {transient}"),
            Submission::Failed(e) => format!("{e}"),
        }
    }

    /// The pool's answers as a node and chopsticks give them, in what they mean.
    #[test]
    fn pool_answers_are_told_apart() {
        for (answer, want) in [
            (
                r#"ErrorSubmittingTransaction(Rpc(ClientError(User(UserError { code: 1010, message: "Invalid Transaction", data: Some(RawValue("Inability to pay some fees (e.g. account balance too low)")) }))))"#,
                "pay",
            ),
            (r#"User(UserError { code: 1010, message: "{\"invalid\":{\"payment\":null}}", data: None })"#, "pay"),
            (r#"{"invalid":{"stale":null}}"#, "nonce"),
            ("Invalid Transaction: Transaction is outdated", "nonce"),
            ("Invalid Transaction: Transaction will be valid in the future", "nonce"),
            ("code: 1014, message: \"Priority is too low: (100 vs 100)\"", "nonce"),
            ("Invalid Transaction: Transaction has a bad signature", "refused false"),
            (r#"{"invalid":{"badProof":null}}"#, "refused false"),
            ("Invalid Transaction: Transaction would exhaust the block limits", "refused true"),
            ("code: 1012, message: \"Transaction is temporarily banned\"", "refused true"),
        ] {
            assert_eq!(kind(answer), want, "{answer}");
        }
        assert!(kind("connection closed").starts_with("chain unreachable: transaction not accepted"));
    }
}
