//! The `cessfs` command line: the only code that prints to the terminal or exits.

mod account;
mod bwlimit;
mod devnet;
mod fid;
mod fstab;
mod gc;
mod mount;
mod snapshots;
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
    Mount(Box<mount::MountArgs>),
    /// Unmount a cessfs mount; its daemon makes everything durable and exits.
    Unmount(mount::UnmountArgs),
    /// Show where files are on their way to CESS (state, progress, FID, errors).
    Status(status::StatusArgs),
    /// Drop the local copies of stored (active) files; reads fetch them back from CESS.
    Evict(status::EvictArgs),
    /// Show or change a running mount's bandwidth limit (as --bwlimit: 10M, 2M:off, or a
    /// timetable "08:00,512k 19:00,10M 23:00,off"), and the rates it moves at now.
    Bwlimit(bwlimit::BwlimitArgs),
    /// Delete the files this tree stored on CESS that nothing refers to any more (left by a
    /// machine lost before its last snapshot); --dry-run lists them and the territory they take.
    Gc(gc::GcArgs),
    /// Print what FILE will be stored as on CESS: FID, size, segment and fragment hashes (JSON).
    Fid(fid::FidArgs),
    /// Run a local CESS network (ledger and storage nodes on loopback) for mounts and tools.
    Devnet(devnet::DevnetArgs),
    /// Create a new encryption key file (mode 0600).
    Keygen(KeygenArgs),
    /// Show the account's address, balance and territories on the CESS chain.
    Account(account::AccountCmd),
    /// List the tree snapshots of the territory on CESS, newest first (generation, time, state).
    Snapshots(snapshots::SnapshotsArgs),
    /// Buy, grow, renew or reactivate a territory (the space files are stored in); shows the
    /// price first.
    Territory(account::TerritoryArgs),
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Where to write man/ and completions/.
        dir: std::path::PathBuf,
    },
}

/// Writes a man page per command (cessfs.1, cessfs-mount.1, ...) into `dir/man` and completions
/// for bash, zsh and fish into `dir/completions`.
fn generate_assets(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![("cessfs".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("cessfs-{}", sub.get_name());
        pages.push((name, sub.clone()));
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(man.join(format!("{name}.1")), out)?;
    }
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "cessfs", &completions)?;
    }
    Ok(())
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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match args.first() {
        Some(argv0) if fstab::invoked_as_helper(argv0) => match fstab::command_line(&args[1..]) {
            Ok(Some(line)) => Cli::parse_from(line),
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("mount.cessfs: {e:#}");
                return 1;
            }
        },
        _ => Cli::parse_from(args),
    };
    // Commands that print a report end quietly when their reader goes (`| head`), as other
    // tools do; the daemon keeps SIGPIPE ignored (a miner that hangs up is an error to handle).
    if matches!(
        cli.command,
        Command::Status(_) | Command::Gc(_) | Command::Snapshots(_) | Command::Fid(_) | Command::Account(_)
    ) {
        // SAFETY: setting a signal's disposition to its default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Mount(args) => mount::mount(*args),
        Command::Unmount(args) => mount::unmount(args),
        Command::Status(args) => status::run(args),
        Command::Evict(args) => status::evict(args),
        Command::Bwlimit(args) => bwlimit::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Fid(args) => fid::run(args),
        Command::Devnet(args) => devnet::run(args),
        Command::Account(args) => account::account(args),
        Command::Territory(args) => account::territory(args),
        Command::Snapshots(args) => snapshots::run(args),
        Command::GenerateAssets { dir } => generate_assets(&dir),
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
