//! `cessfs snapshots`: the tree snapshots of a territory on CESS, newest first.

use anyhow::Context;

use super::account::AccountArgs;
use crate::network::Network;

#[derive(clap::Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    chain: AccountArgs,
    /// The data dir (or the mount point) of a mount whose embedded devnet to ask when no --chain
    /// is given.
    #[arg(long, env = "CESSFS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// The territory [default: cessfs].
    #[arg(long, value_name = "NAME")]
    territory: Option<String>,
    /// The encryption key file [default: $XDG_CONFIG_HOME/cessfs/key].
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
}

/// `cessfs snapshots`.
pub fn run(args: SnapshotsArgs) -> anyhow::Result<()> {
    let mut settings = args.chain.settings()?;
    settings.data_dir = args.data_dir.map(|d| crate::mountpoint::data_dir_of(&d)).or(settings.data_dir);
    settings.territory = args.territory.or(settings.territory);
    settings.key_file = args.key_file.or(settings.key_file);
    if settings.plain() {
        anyhow::bail!("plaintext mode keeps no tree snapshots (they need the encryption key)");
    }
    let data_dir = settings.data_dir();
    // The embedded devnet runs inside its mount: reach it where that mount said it is.
    if settings.chain.is_none() {
        settings.chain = Some(crate::mountpoint::embedded_devnet(&data_dir)?);
    }
    let key = crate::config::load_key(&settings.key_path().0)?.for_territory(&settings.territory());
    let names = key.names().context("a key bound to a territory names its snapshots")?.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let network = Network::connect(&settings, &data_dir, false).await?;
        let found = crate::snapshots::restore::find(&*network.chain, &settings.territory(), &names).await?;
        if found.is_empty() {
            println!("no tree snapshots of this key in territory {:?}", String::from_utf8_lossy(&settings.territory()));
        }
        for f in &found {
            let written = std::time::UNIX_EPOCH + std::time::Duration::from_millis(f.generation);
            println!(
                "{}  {}  {:<7}  {} segment(s)  {}",
                f.generation,
                crate::protocol::utc(written),
                if f.active { "active" } else { "pending" },
                f.segments,
                f.fid
            );
        }
        network.shutdown().await;
        Ok(())
    })
}
