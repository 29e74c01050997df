//! The `cessfs` command line: the only code that prints to the terminal or exits.

mod account;
mod devnet;
mod fid;
mod mount;
mod status;

use clap::{Parser, Subcommand};

/// cessfs: a FUSE filesystem for the CESS decentralized storage network.
#[derive(Parser)]
#[command(name = "cessfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount cessfs on an empty directory; returns once the mount is ready.
    Mount(mount::MountArgs),
    /// Unmount a cessfs mount; its daemon makes everything durable and exits.
    Unmount(mount::UnmountArgs),
    /// Show where files are on their way to CESS (state, progress, FID, errors).
    Status(status::StatusArgs),
    /// Drop the local copies of stored (active) files; reads fetch them back from CESS.
    Evict(status::EvictArgs),
    /// Print what FILE will be stored as on CESS: FID, size, segment and fragment hashes (JSON).
    Fid(fid::FidArgs),
    /// Run a local CESS network (ledger and storage nodes on loopback) for mounts and tools.
    Devnet(devnet::DevnetArgs),
    /// Create a new encryption key file (mode 0600).
    Keygen(KeygenArgs),
    /// Show the account's address, balance and territories on the CESS chain.
    Account(account::ChainArgs),
    /// Buy, grow or renew a territory (the space files are stored in); shows the price first.
    Territory(account::TerritoryArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Where to write it [default: $XDG_CONFIG_HOME/cessfs/key].
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

/// Logs to stderr (the log file, for a daemon), filtered like RUST_LOG.
fn init_logging(filter: &str) {
    env_logger::Builder::new().parse_filters(filter).format_timestamp_millis().init();
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount(args) => mount::mount(args),
        Command::Unmount(args) => mount::unmount(args),
        Command::Status(args) => status::run(args),
        Command::Evict(args) => status::evict(args),
        Command::Fid(args) => fid::run(args),
        Command::Devnet(args) => devnet::run(args),
        Command::Account(args) => account::account(args),
        Command::Territory(args) => account::territory(args),
        Command::Keygen(args) => {
            let path = args.out.unwrap_or_else(|| crate::config::config_dir().join("key"));
            crate::config::write_new_key(&path)
                .map(|()| println!("wrote {}: keep a copy somewhere safe", path.display()))
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cessfs: {e:#}");
            1
        }
    }
}
