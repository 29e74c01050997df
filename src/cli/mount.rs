use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::Settings;
use crate::daemon::{self, Readiness};
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
    let dir = mountpoint::preflight(&args.dir)?;
    let data_dir = settings.data_dir();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let ready = if args.foreground { Readiness::Foreground } else { daemon::daemonize(&data_dir.join("cessfs.log"))? };
    super::init_logging(&settings.log_level());
    daemon::run(&dir, &settings, ready)
}

pub fn unmount(args: UnmountArgs) -> anyhow::Result<()> {
    let (dir, data_dir) = mountpoint::cessfs_mount(&args.dir)?;
    if args.wait {
        super::status::wait(std::slice::from_ref(&dir), Some(std::time::Duration::from_secs(args.timeout)))?;
    }
    mountpoint::unmount(&dir)?;
    daemon::wait_for_exit(&data_dir, std::time::Duration::from_secs(args.timeout))
}
