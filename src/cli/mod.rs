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

/// Logs to stderr, filtered like RUST_LOG: lines with syslog priorities and no timestamp when
/// stderr is the systemd journal (which adds both), timestamped lines otherwise (a terminal or
/// the daemon's log file).
fn init_logging(filter: &str) {
    use std::io::Write;
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    if stderr_is_journal() {
        builder.format(|out, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(out, "<{priority}>{}: {}", record.target(), record.args())
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

/// Whether stderr is the journal: systemd says so in JOURNAL_STREAM (device:inode of the stream).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else { return false };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
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
