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
        chain_settings(&self)
    }
}

/// The settings `args` give, without taking them.
fn chain_settings(args: &AccountArgs) -> anyhow::Result<Settings> {
    let flags = Settings {
        chain: args.chain.clone(),
        account: args.account.clone(),
        account_file: args.account_file.clone(),
        ..Settings::default()
    };
    flags.with_file(args.config.as_deref())
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
        #[arg(value_parser = territory_name)]
        name: String,
        /// Its size, in GiB of territory (files take 3 times their size: 12 fragments for 4).
        #[arg(long, allow_negative_numbers = true, value_parser = whole_gib)]
        gib: u32,
        /// Days it lasts (at least 30).
        #[arg(long, default_value_t = 30, allow_negative_numbers = true, value_parser = days_bought)]
        days: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
    /// Add GIB GiB to an active territory, paid for the days it has left.
    Expand {
        #[arg(value_parser = territory_name)]
        name: String,
        /// GiB added.
        #[arg(long, allow_negative_numbers = true, value_parser = whole_gib)]
        gib: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
    /// Extend a territory by DAYS days.
    Renew {
        #[arg(value_parser = territory_name)]
        name: String,
        /// Days added.
        #[arg(long, allow_negative_numbers = true, value_parser = whole_days)]
        days: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
    /// Make an expired territory active again, for DAYS days.
    Reactivate {
        #[arg(value_parser = territory_name)]
        name: String,
        /// Days it lasts from now (at least 30).
        #[arg(long, default_value_t = 30, allow_negative_numbers = true, value_parser = days_bought)]
        days: u32,
        #[command(flatten)]
        chain: AccountArgs,
    },
}

/// A territory's name: 1 to 63 bytes (checked before anything is asked of the chain).
fn territory_name(s: &str) -> Result<String, String> {
    match s.len() {
        0 => Err("a territory needs a name".into()),
        1..=63 => Ok(s.to_string()),
        n => Err(format!("a territory's name takes at most 63 bytes, not {n}")),
    }
}

/// A whole number at least 1, of `what`.
fn at_least_one(s: &str, what: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 => u32::try_from(n).map_err(|_| format!("{n} {what} is more than the chain takes")),
        Ok(n) => Err(format!("{n} is not a size: give a whole number of {what}, at least 1")),
        Err(_) => Err(format!("{s:?} is not a whole number of {what}")),
    }
}

/// A size in whole GiB, at least 1.
fn whole_gib(s: &str) -> Result<u32, String> {
    at_least_one(s, "GiB")
}

/// A number of days, at least 1.
fn whole_days(s: &str) -> Result<u32, String> {
    at_least_one(s, "days")
}

/// Days a territory is bought for: at least 30, as the chain requires.
fn days_bought(s: &str) -> Result<u32, String> {
    let days = whole_days(s)?;
    if days < 30 {
        return Err(format!("a territory is bought for at least 30 days, not {days}"));
    }
    Ok(days)
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

/// `cessfs account`'s arguments.
#[derive(Args)]
pub struct AccountCmd {
    /// A mount (or its data dir) whose embedded devnet to ask, when no --chain is given [default:
    /// the default data dir's].
    #[arg(value_name = "MOUNT")]
    place: Option<PathBuf>,
    #[command(flatten)]
    chain: AccountArgs,
}

/// `cessfs account`.
pub fn account(args: AccountCmd) -> anyhow::Result<()> {
    let AccountCmd { place, mut chain } = args;
    if chain.chain.is_none() && std::env::var_os("CESSFS_CHAIN").is_none() {
        let configured = chain_settings(&chain)?.chain.is_some();
        if !configured {
            let data_dir = match &place {
                Some(p) => crate::mountpoint::data_dir_of(p),
                None => Settings::default().with_file(chain.config.as_deref())?.data_dir(),
            };
            chain.chain = Some(crate::mountpoint::embedded_devnet(&data_dir)?);
        }
    }
    runtime()?.block_on(async {
        let (me, territories, now) = match connect(chain).await? {
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
