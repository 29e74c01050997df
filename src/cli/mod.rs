//! The `cessfs` command line: the only code that prints to the terminal or exits.

mod fid;

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
    /// Print what FILE will be stored as on CESS: FID, size, segment and fragment hashes (JSON).
    Fid(fid::FidArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
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
