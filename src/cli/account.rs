//! `cessfs account` and `cessfs territory`: the account's balance and territories on a CESS
//! chain, and buying, growing and renewing territories with the price shown first.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::chain::{CessChain, codec};
use crate::config::Settings;
use crate::protocol::{Chain, TerritoryInfo};

/// Blocks per day on CESS (6-second blocks).
const BLOCKS_PER_DAY: u32 = 14400;
/// The chain's token has 18 decimals.
const TOKEN: f64 = 1e18;

#[derive(Args)]
pub struct ChainArgs {
    /// The config file [default: $XDG_CONFIG_HOME/cessfs/config.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Args)]
pub struct TerritoryArgs {
    #[command(subcommand)]
    action: TerritoryAction,
    /// Pay without asking.
    #[arg(long, short, global = true)]
    yes: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

#[derive(Subcommand)]
enum TerritoryAction {
    /// Buy a new territory of GIB GiB for DAYS days (at least 30).
    Mint {
        /// Its name (the one files are stored under).
        name: String,
        #[arg(long)]
        gib: u32,
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Add GIB GiB to an active territory, paid for the days it has left.
    Expand {
        name: String,
        #[arg(long)]
        gib: u32,
    },
    /// Extend a territory by DAYS days.
    Renew {
        name: String,
        #[arg(long)]
        days: u32,
    },
}

async fn connect(args: ChainArgs) -> anyhow::Result<CessChain> {
    let settings = args.settings.with_file(args.config.as_deref())?;
    let Some(url) = settings.chain.clone().filter(|u| u.starts_with("ws")) else {
        bail!("this needs a CESS chain: give --chain wss://... (or chain = \"wss://...\" in the config)");
    };
    let signer = settings.signer(false)?;
    let chain = CessChain::new(&url, signer, settings.pinned_miners()?);
    chain.connect().await.with_context(|| format!("connecting to {url}"))?;
    Ok(chain)
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
pub fn account(args: ChainArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let chain = connect(args).await?;
        let me = chain.account();
        let balance = chain.free_balance(&me).await?;
        let now = chain.block_number().await?;
        println!("account   {me}");
        println!("balance   {:.4} CESS free", balance as f64 / TOKEN);
        let territories = chain.territories(&me).await?;
        if territories.is_empty() {
            println!("no territories: buy one with `cessfs territory mint NAME --gib N`");
        }
        for (name, t) in territories {
            println!("territory {}", describe(&name, &t, now));
        }
        Ok(())
    })
}

/// `cessfs territory mint|expand|renew`.
pub fn territory(args: TerritoryArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let chain = connect(args.chain).await?;
        let me = chain.account();
        let price = chain.unit_price().await?;
        let now = chain.block_number().await?;
        let (call, what, cost) = match &args.action {
            TerritoryAction::Mint { name, gib, days } => {
                if *days < 30 {
                    bail!("a territory is bought for at least 30 days");
                }
                let cost = price * *gib as u128 * *days as u128;
                (
                    codec::mint_territory(name.as_bytes(), *gib, *days),
                    format!("buy {name}: {gib} GiB for {days} days"),
                    cost,
                )
            }
            TerritoryAction::Expand { name, gib } => {
                let t = chain.territory(&me, name.as_bytes()).await?.with_context(|| format!("no territory {name}"))?;
                let days = t.deadline.saturating_sub(now).div_ceil(BLOCKS_PER_DAY);
                let cost = price * *gib as u128 * days as u128;
                (
                    codec::expand_territory(name.as_bytes(), *gib),
                    format!("add {gib} GiB to {name} for its {days} days left"),
                    cost,
                )
            }
            TerritoryAction::Renew { name, days } => {
                let t = chain.territory(&me, name.as_bytes()).await?.with_context(|| format!("no territory {name}"))?;
                let size = (t.total_space >> 30) as u32;
                let cost = price * size as u128 * *days as u128;
                (
                    codec::renew_territory(name.as_bytes(), *days),
                    format!("renew {name} ({size} GiB) for {days} days"),
                    cost,
                )
            }
        };
        println!("{what}: {:.4} CESS (unit price {:.4} CESS per GiB-day)", cost as f64 / TOKEN, price as f64 / TOKEN);
        if !args.yes {
            print!("pay? [y/N] ");
            std::io::stdout().flush()?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("nothing paid");
            }
        }
        let receipt = chain.submit(&call).await?;
        println!("done in block {} (transaction {})", receipt.block, receipt.tx_hash);
        Ok(())
    })
}
