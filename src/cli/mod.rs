//! The `cessfs` command line: the only code that prints to the terminal or exits.

mod fid;
mod mount;

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
    /// Print what FILE will be stored as on CESS: FID, size, segment and fragment hashes (JSON).
    Fid(fid::FidArgs),
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
        Command::Fid(args) => fid::run(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cessfs: {e:#}");
            1
        }
    }
}
