//! `cessfs account` and `cessfs territory`: the account's balance and territories on a CESS
//! chain, and buying, growing and renewing territories with the price shown first.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::chain::{CessChain, codec, tokens};
use crate::config::Settings;
use crate::protocol::{Chain, TerritoryInfo};

/// Blocks per day on CESS (6-second blocks).
const BLOCKS_PER_DAY: u32 = 14400;

/// Where the chain is and who signs: what `account` and `territory` need.
#[derive(Args)]
pub struct AccountArgs {
    /// The config file [default: $XDG_CONFIG_HOME/cessfs/config.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The chain: a ws:// or wss:// RPC URL of a CESS chain, or the http:// URL of a `cessfs
    /// devnet`.
    #[arg(long, env = "CESSFS_CHAIN", value_name = "URL")]
    pub chain: Option<String>,
    /// The account, as a secret URI (mnemonic, 0x seed or dev path like //Alice) [default on a
    /// devnet: //Alice].
    #[arg(long, env = "CESSFS_ACCOUNT", value_name = "SURI")]
    pub account: Option<String>,
    /// A file holding the account's secret URI; refused if others can read it.
    #[arg(long, value_name = "FILE")]
    pub account_file: Option<PathBuf>,
}

impl AccountArgs {
    /// These options over the config file's.
    pub fn settings(self) -> anyhow::Result<Settings> {
        let flags = Settings {
            chain: self.chain,
            account: self.account,
            account_file: self.account_file,
            ..Settings::default()
        };
        flags.with_file(self.config.as_deref())
    }
}

#[derive(Args)]
pub struct TerritoryArgs {
    #[command(subcommand)]
    action: TerritoryAction,
    /// Pay without asking.
    #[arg(long, short, global = true)]
    yes: bool,
}

#[derive(Subcommand)]
enum TerritoryAction {
    /// Buy a new territory of GIB GiB for DAYS days (at least 30).
    Mint {
        /// Its name (the one files are stored under).
        name: String,
        /// Its size, in GiB of territory (files take 3 times their size: 12 fragments for 4).
        #[arg(long)]
        gib: u32,
        /// Days it lasts.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
    /// Add GIB GiB to an active territory, paid for the days it has left.
    Expand {
        name: String,
        /// GiB added.
        #[arg(long)]
        gib: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
    /// Extend a territory by DAYS days.
    Renew {
        name: String,
        /// Days added.
        #[arg(long)]
        days: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
    /// Make an expired territory active again, for DAYS days.
    Reactivate {
        name: String,
        /// Days it lasts from now.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
}

/// A real chain, or the devnet at an http:// URL.
enum Connected {
    Cess(CessChain),
    Devnet(crate::devnet::DevnetChain),
}

async fn connect(args: AccountArgs) -> anyhow::Result<Connected> {
    let settings = args.settings()?;
    match settings.chain.clone() {
        Some(url) if url.starts_with("ws") => {
            let signer = settings.signer(false)?;
            let chain = CessChain::new(&url, signer, settings.pinned_miners()?);
            chain.connect().await.with_context(|| format!("connecting to {url}"))?;
            Ok(Connected::Cess(chain))
        }
        Some(url) if url.starts_with("http") => {
            Ok(Connected::Devnet(crate::devnet::DevnetChain::new(&url, settings.signer(true)?)))
        }
        _ => bail!(
            "this needs a chain: give --chain wss://... for CESS, or the http:// URL of a `cessfs devnet` \
             (or chain = \"...\" in the config)"
        ),
    }
}

async fn connect_cess(args: AccountArgs) -> anyhow::Result<CessChain> {
    match connect(args).await? {
        Connected::Cess(chain) => Ok(chain),
        Connected::Devnet(_) => {
            bail!("a devnet has no prices or payments: `cessfs devnet` gives its account a territory")
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")
}

fn gib(bytes: u128) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn describe(name: &[u8], t: &TerritoryInfo, now: u32) -> String {
    let days_left = t.deadline.saturating_sub(now) as f64 / BLOCKS_PER_DAY as f64;
    format!(
        "{:<20} {:<8} {:>12} total {:>12} free  {:.1} days left (block {})",
        String::from_utf8_lossy(name),
        format!("{:?}", t.state),
        gib(t.total_space),
        gib(t.remaining_space),
        days_left,
        t.deadline
    )
}

/// `cessfs account`.
pub fn account(args: AccountArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (me, territories, now) = match connect(args).await? {
            Connected::Cess(chain) => {
                let me = chain.account();
                let balance = chain.free_balance(&me).await?;
                println!("account   {me}");
                println!("balance   {} CESS free", tokens(balance));
                (me, chain.territories(&me).await?, chain.block_number().await?)
            }
            Connected::Devnet(chain) => {
                let me = chain.account();
                println!("account   {me}");
                println!("balance   none: a devnet charges nothing");
                (me, chain.territories(&me).await?, chain.block().await?)
            }
        };
        if territories.is_empty() {
            println!("no territories for {me}: buy one with `cessfs territory mint NAME --gib N`");
        }
        for (name, t) in territories {
            println!("territory {}", describe(&name, &t, now));
        }
        Ok(())
    })
}

/// `cessfs territory mint|expand|renew|reactivate`.
pub fn territory(args: TerritoryArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        use codec::Purchase;
        // What is bought, of which territory, and its GiB and days where the verb takes them.
        let (purchase, name, chain_args, gib, days) = match args.action {
            TerritoryAction::Mint { name, gib, days, chain } => (Purchase::Mint, name, chain, gib, days),
            TerritoryAction::Expand { name, gib, chain } => (Purchase::Expand, name, chain, gib, 0),
            TerritoryAction::Renew { name, days, chain } => (Purchase::Renew, name, chain, 0, days),
            TerritoryAction::Reactivate { name, days, chain } => (Purchase::Reactivate, name, chain, 0, days),
        };
        let chain = connect_cess(chain_args).await?;
        let me = chain.account();
        let spec = chain.spec_version().await?;
        let per_day = codec::price_per_gib_day(chain.unit_price().await?, spec, purchase);
        let now = chain.block_number().await?;
        let owned =
            || async { chain.territory(&me, name.as_bytes()).await?.with_context(|| format!("no territory {name}")) };
        let (call, what, gib_days) = match purchase {
            Purchase::Mint => {
                if days < 30 {
                    bail!("a territory is bought for at least 30 days");
                }
                let what = format!("buy {name}: {gib} GiB for {days} days");
                (codec::mint_territory(name.as_bytes(), gib, days), what, gib as u128 * days as u128)
            }
            Purchase::Expand => {
                let left = owned().await?.deadline.saturating_sub(now).div_ceil(BLOCKS_PER_DAY);
                let what = format!("add {gib} GiB to {name} for its {left} days left");
                (codec::expand_territory(name.as_bytes(), gib), what, gib as u128 * left as u128)
            }
            Purchase::Renew | Purchase::Reactivate => {
                let size = (owned().await?.total_space >> 30) as u32;
                let (call, verb) = if purchase == Purchase::Renew {
                    (codec::renew_territory(name.as_bytes(), days), "renew")
                } else {
                    (codec::reactivate_territory(name.as_bytes(), days), "reactivate")
                };
                (call, format!("{verb} {name} ({size} GiB) for {days} days"), size as u128 * days as u128)
            }
        };
        println!(
            "{what}: {} CESS ({} CESS per GiB-day, runtime spec {spec})",
            tokens(per_day * gib_days),
            tokens(per_day)
        );
        if !args.yes {
            print!("pay? [y/N] ");
            std::io::stdout().flush()?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("nothing paid");
            }
        }
        let paid = chain.pay(&call).await?;
        let spent = paid
            .spent
            .map_or_else(|| "the chain reported no amount".to_string(), |s| format!("spent {} CESS", tokens(s)));
        println!("done in block {} (transaction {}): {spent}, fees apart", paid.receipt.block, paid.receipt.tx_hash);
        Ok(())
    })
}
