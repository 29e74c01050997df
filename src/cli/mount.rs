use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::Settings;
use crate::daemon::{self, Readiness, Role};
use crate::mountpoint;

#[derive(Args)]
pub struct MountArgs {
    /// An empty directory to mount on.
    dir: PathBuf,
    /// Stay attached to the terminal instead of running as a daemon.
    #[arg(long, short)]
    foreground: bool,
    /// The config file [default: $XDG_CONFIG_HOME/cessfs/config.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A system mount (fstab, cessfs@.service): config /etc/cessfs/NAME.toml or
    /// /etc/cessfs/config.toml, key /etc/cessfs/key, data dir /var/lib/cessfs/NAME, where NAME
    /// is the mount point as `systemd-escape --path` writes it (mnt-cess for /mnt/cess).
    #[arg(long)]
    system: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Args)]
pub struct UnmountArgs {
    /// The mount point.
    dir: PathBuf,
    /// Seconds to wait for the daemon to finish (with --wait: for uploads too).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// First wait (with progress) until every file is stored on CESS or has failed.
    #[arg(long)]
    wait: bool,
}

pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let mut settings = args.settings;
    if args.system {
        settings = settings.for_system_mount(&std::path::absolute(&args.dir)?);
    }
    let settings = settings.with_file(args.config.as_deref())?;
    settings.metrics_addr()?;
    settings.bwlimit()?;
    let dir = mountpoint::preflight(&args.dir)?;
    // A key file given must read as a key before anything is made.
    if !settings.plain() && settings.key_path().1 {
        crate::config::load_key(&settings.key_path().0)?;
    }
    let data_dir = settings.data_dir();
    // A data dir made for a mount that then fails goes with it: nothing is left behind.
    let made = !data_dir.exists();
    let undo = |result: anyhow::Result<()>| {
        // (but for a crash's log, which says why)
        let crashed = result.as_ref().is_err_and(|e| e.is::<daemon::CrashedAtStart>());
        if result.is_err() && made && !crashed {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        result
    };
    private_files();
    create_private_dir(&data_dir)?;
    let ready = match args.foreground {
        true => Readiness::Foreground,
        false => match daemon::daemonize(&data_dir.join("cessfs.log")) {
            Ok(Role::Parent(notices)) => {
                notices.iter().for_each(|n| println!("{n}"));
                return Ok(());
            }
            Ok(Role::Daemon(ready)) => ready,
            Err(e) => return undo(Err(e)),
        },
    };
    super::init_logging(&settings.log_level());
    let result = daemon::run(&dir, &settings, ready);
    // The daemon reported its failure to the command that started it, which removes the dir.
    if args.foreground { undo(result) } else { result }
}

/// Everything the daemon writes (database, contents, log, the devnet's files) is its owner's
/// alone: file names and contents of a mount are nobody else's business.
pub(super) fn private_files() {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
}

/// Creates `dir` (mode 0700), or narrows an existing one to 0700.
pub(super) fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let what = || format!("creating data dir {}", dir.display());
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(what)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(what)
}

pub fn unmount(args: UnmountArgs) -> anyhow::Result<()> {
    let (dir, data_dir) = mountpoint::cessfs_mount(&args.dir)?;
    if args.wait {
        super::status::wait(std::slice::from_ref(&dir), Some(std::time::Duration::from_secs(args.timeout)))?;
    }
    mountpoint::unmount(&dir)?;
    daemon::wait_for_exit(&data_dir, std::time::Duration::from_secs(args.timeout))
}
