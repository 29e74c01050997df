//! Configuration: a TOML file (`$XDG_CONFIG_HOME/cessfs/config.toml`, or `--config`) whose every
//! key can also be given as a flag (`--data-dir` for `data_dir`) or, for some, an environment
//! variable. Flags win over the environment, which wins over the file, which wins over defaults.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// Options shared by every command that touches a mount's state, as flags and config keys.
#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Settings {
    /// Where cessfs keeps its database and staged file contents
    /// [default: $XDG_DATA_HOME/cessfs, i.e. ~/.local/share/cessfs].
    #[arg(long, env = "CESSFS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Threads serving kernel requests [default: 2 per core, at least 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Serve open files by kernel passthrough when possible (root, Linux 6.9+) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub passthrough: Option<bool>,
    /// Let other users access the mount, with the kernel's permission checks (needs
    /// user_allow_other in /etc/fuse.conf unless root) [default: true for system mounts (fstab,
    /// cessfs@.service), false otherwise].
    #[arg(long, value_name = "BOOL")]
    pub allow_other: Option<bool>,
    /// Log filter, as RUST_LOG (error, warn, info, debug, or per module) [default: info].
    #[arg(long, env = "RUST_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// The chain to store files on: unset for an embedded local CESS network started with the
    /// mount (its state under DATA/devnet); an http:// URL for a devnet started with `cessfs
    /// devnet`; a ws:// or wss:// RPC URL for a CESS chain [default: embedded devnet].
    #[arg(long, env = "CESSFS_CHAIN", value_name = "URL")]
    pub chain: Option<String>,
    /// A miner's endpoint, as ACCOUNT@URL (SS58 account, http:// URL); repeat for several. It
    /// wins over the endpoint the chain records, and stands in for runtimes that record none.
    #[arg(long = "miner", value_name = "ACCOUNT@URL")]
    pub miners: Option<Vec<String>>,
    /// The account that pays for storage and signs miner requests, as a secret URI (mnemonic,
    /// 0x seed or dev path like //Alice) [default on a devnet: //Alice].
    #[arg(long, env = "CESSFS_ACCOUNT", value_name = "SURI")]
    pub account: Option<String>,
    /// A file holding the account's secret URI; refused if others can read it.
    #[arg(long, value_name = "FILE")]
    pub account_file: Option<PathBuf>,
    /// The territory (paid storage space) files go to [default: cessfs].
    #[arg(long, value_name = "NAME")]
    pub territory: Option<String>,
    /// The encryption key file (64 hex characters), refused if others can read it
    /// [default: $XDG_CONFIG_HOME/cessfs/key, created on first mount: back it up].
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Store files unencrypted, in the layout other CESS clients read [default: false].
    #[arg(long, value_name = "BOOL")]
    pub plain: Option<bool>,
    /// Seconds to wait after a file's last close before uploading it, so that temporary files
    /// renamed or deleted meanwhile are never uploaded [default: 2].
    #[arg(long, value_name = "SECS")]
    pub quiet_delay: Option<f64>,
    /// Files uploaded at once [default: 2].
    #[arg(long, value_name = "N")]
    pub parallel_uploads: Option<usize>,
    /// Bandwidth limit, as rclone's: RATE or UP:DOWN in bytes a second (512k, 10M, off; a bare
    /// number is KiB/s), or a timetable "08:00,512k 19:00,10M 23:00,off" (entries may start
    /// with a day: Mon-08:00,1M). Change it on a running mount with `cessfs bwlimit DIR RATE`
    /// [default: off].
    #[arg(long, value_name = "LIMIT")]
    pub bwlimit: Option<String>,
    /// Seconds a request to a miner may go without moving (less than 4 KiB/s over this window)
    /// before it fails and another miner is tried; a slow link is never a failure [default: 60].
    #[arg(long, value_name = "SECS")]
    pub miner_stall: Option<f64>,
    /// Most space the cached copies of stored (active) files may take, e.g. 512M, 20G; files
    /// not yet stored are never evicted and do not count [default: 10G].
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Files smaller than this go into packs shared with other small files, so that each costs
    /// what it weighs instead of a 32 MiB segment (encrypted mode; larger than 8M means 8M, what
    /// fits in one fragment; 0: every file has segments of its own) [default: 8M].
    #[arg(long, value_name = "SIZE")]
    pub pack_below: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, on a loopback address (127.0.0.1:9464,
    /// or a port alone) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Keep the tree in encrypted snapshots on CESS (encrypted mode only) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub snapshots: Option<bool>,
    /// Send each settled round of changes (small files and the tree) as one commit, one
    /// declaration; false: packs and tree snapshots go as files of their own, as before commits
    /// [default: true].
    #[arg(long, value_name = "BOOL")]
    pub commits: Option<bool>,
    /// The longest a change waits for a tree snapshot while changes keep coming, in seconds
    /// (snapshots are otherwise written once changes settle) [default: 600].
    #[arg(long, value_name = "SECS")]
    pub snapshot_interval: Option<f64>,
    /// Tree snapshots kept on CESS; older ones, and the files only they refer to, are deleted
    /// [default: 3].
    #[arg(long, value_name = "N")]
    pub snapshots_kept: Option<usize>,
    /// Seconds after a restore before the tree is swept of FIDs that no snapshot refers to
    /// (declared by the machine it was restored from after its last snapshot), if no other mount
    /// wrote the tree meanwhile [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub sweep_after: Option<f64>,
    /// Show the tree of the territory's newest snapshot, read-only, and follow newer ones (a second
    /// machine; writes get EROFS). Use a data dir of its own.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub read_only: Option<bool>,
    /// Show snapshot generation G (see `cessfs snapshots`), read-only, and stay on it (implies
    /// --read-only).
    #[arg(long, value_name = "G")]
    #[serde(skip)]
    pub generation: Option<u64>,
    /// Seconds between looks at the tree's snapshots on chain: with --read-only for a newer one,
    /// otherwise for another mount writing the tree [default: 60].
    #[arg(long, value_name = "SECS")]
    pub poll_interval: Option<f64>,
    /// Start an empty tree in an empty data dir instead of restoring the newest snapshot of the
    /// territory (nothing stored is touched).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip)]
    pub fresh: Option<bool>,
    /// Size in GiB of the territory the embedded devnet creates [default: 1024].
    #[arg(long, value_name = "GIB")]
    pub devnet_territory_gib: Option<u32>,
    /// Shape the embedded devnet's link as a home link is: `up=20M,down=100M,rtt=60ms` (rates in
    /// bits per second, shared by all its nodes) [default: not shaped].
    #[arg(long, value_name = "LINK")]
    pub devnet_link: Option<String>,
    /// A system mount's name (see [`Settings::for_system_mount`]).
    #[arg(skip)]
    #[serde(skip)]
    pub system: Option<String>,
}

impl Settings {
    /// Makes this a system mount (run by fstab or `cessfs@.service`) on `mountpoint`, named
    /// as `systemd-escape --path` names it (`mnt-cess` for /mnt/cess): its config defaults to
    /// /etc/cessfs/NAME.toml, else /etc/cessfs/config.toml; its key to /etc/cessfs/key; its data
    /// dir to /var/lib/cessfs/NAME.
    pub fn for_system_mount(mut self, mountpoint: &Path) -> Settings {
        self.system = Some(crate::mountpoint::escaped_name(mountpoint));
        self
    }

    /// Where config and key files are by default.
    fn config_home(&self) -> PathBuf {
        if self.system.is_some() { PathBuf::from(SYSTEM_CONFIG_DIR) } else { config_dir() }
    }

    /// Fills what the flags left open from the config file (`path`, or the default location if
    /// it exists).
    pub fn with_file(self, path: Option<&Path>) -> anyhow::Result<Settings> {
        let home = self.config_home();
        let defaults = match &self.system {
            Some(name) => vec![home.join(format!("{name}.toml")), home.join("config.toml")],
            None => vec![home.join("config.toml")],
        };
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => defaults.into_iter().find(|p| p.exists()),
        };
        let Some(path) = path else { return Ok(self) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading config {}", path.display()))?;
        // Read as the settings themselves (not flattened into a wrapper), so that an error points
        // at its line.
        let mut f: Settings = toml::from_str(&text).with_context(|| format!("in config {}", path.display()))?;
        // An account given by flag is the account: the file's, in either form, steps aside.
        if self.account.is_some() || self.account_file.is_some() {
            (f.account, f.account_file) = (None, None);
        }
        macro_rules! merged {
            ($($field:ident),*) => { Settings { $($field: self.$field.or(f.$field)),* } };
        }
        Ok(merged!(
            data_dir,
            threads,
            passthrough,
            allow_other,
            log_level,
            chain,
            miners,
            account,
            account_file,
            territory,
            key_file,
            plain,
            quiet_delay,
            parallel_uploads,
            miner_stall,
            bwlimit,
            cache_size,
            pack_below,
            metrics,
            snapshots,
            commits,
            read_only,
            generation,
            poll_interval,
            snapshot_interval,
            snapshots_kept,
            sweep_after,
            fresh,
            devnet_territory_gib,
            devnet_link,
            system
        ))
    }

    /// The territory name, defaulted.
    pub fn territory(&self) -> Vec<u8> {
        self.territory.clone().unwrap_or_else(|| "cessfs".to_string()).into_bytes()
    }

    /// The quiet delay, defaulted.
    pub fn quiet_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.quiet_delay.unwrap_or(2.0).max(0.0))
    }

    /// The bandwidth limit, defaulted (off); a bad one is refused with what was wrong.
    pub fn bwlimit(&self) -> anyhow::Result<crate::pace::Bwlimit> {
        match &self.bwlimit {
            None => Ok(crate::pace::Bwlimit::default()),
            Some(text) => {
                text.parse().map_err(|e| anyhow::anyhow!("bwlimit {text:?} (--bwlimit, or bwlimit in the config): {e}"))
            }
        }
    }

    /// When a request to a miner counts as stalled, defaulted.
    pub fn miner_stall(&self) -> crate::miner::StallRule {
        let secs = self.miner_stall.filter(|s| s.is_finite()).unwrap_or(60.0).clamp(1.0, 3600.0);
        crate::miner::StallRule::over(std::time::Duration::from_secs_f64(secs))
    }

    /// Whether this is a read-only view of the territory's snapshots.
    pub fn read_only(&self) -> bool {
        self.read_only.unwrap_or(false) || self.generation.is_some()
    }

    /// When tree snapshots are written, and how many are kept; `None` when there are none
    /// (turned off, or plaintext mode, which has no key to encrypt them with).
    pub fn snapshot_config(&self) -> Option<crate::snapshots::SnapshotConfig> {
        if !self.snapshots.unwrap_or(true) || self.plain() || self.read_only() {
            return None;
        }
        Some(crate::snapshots::SnapshotConfig {
            quiet: self.quiet_delay(),
            interval: std::time::Duration::from_secs_f64(self.snapshot_interval.unwrap_or(600.0).max(1.0)),
            keep: self.snapshots_kept.unwrap_or(3).max(1),
            sweep_after: std::time::Duration::from_secs_f64(self.sweep_after.unwrap_or(3600.0).max(0.0)),
            look_every: self.poll_interval(),
        })
    }

    /// How often the tree's snapshots on chain are looked at: by a read-only view for a newer
    /// one, by a writer for another writer.
    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.poll_interval.unwrap_or(60.0).max(1.0))
    }

    /// Whether files are stored unencrypted.
    pub fn plain(&self) -> bool {
        self.plain.unwrap_or(false)
    }

    /// The encryption key file, and whether it was given (a default may be created; a given one
    /// must exist). `keys.rs` decides what a missing one means.
    pub fn key_path(&self) -> (PathBuf, bool) {
        match &self.key_file {
            Some(path) => (path.clone(), true),
            None => (self.config_home().join("key"), false),
        }
    }

    /// The account: from `account_file`, `account`, or //Alice on a devnet.
    pub fn signer(&self, devnet: bool) -> anyhow::Result<crate::protocol::Signer> {
        let uri = match (&self.account_file, &self.account) {
            (Some(path), _) => String::from_utf8(read_secret_file(path)?)
                .map_err(|_| anyhow::anyhow!("account file {} is not text", path.display()))?,
            (None, Some(uri)) => uri.clone(),
            (None, None) if devnet => "//Alice".to_string(),
            (None, None) => {
                anyhow::bail!("no account: give --account-file FILE (a mnemonic or 0x seed) for this chain")
            }
        };
        crate::protocol::Signer::from_uri(&uri).map_err(|e| anyhow::anyhow!("account: {e}"))
    }

    /// The pinned miners, by account.
    pub fn pinned_miners(&self) -> anyhow::Result<std::collections::HashMap<crate::protocol::AccountId, String>> {
        let mut out = std::collections::HashMap::new();
        for entry in self.miners.iter().flatten() {
            let (account, url) = entry
                .split_once('@')
                .ok_or_else(|| anyhow::anyhow!("miner {entry:?}: write it as ACCOUNT@http://HOST:PORT"))?;
            let account = account.parse().map_err(|e| anyhow::anyhow!("miner {entry:?}: {e}"))?;
            let url = crate::protocol::miner::endpoint_url(url.as_bytes())
                .ok_or_else(|| anyhow::anyhow!("miner {entry:?}: no URL after the @"))?;
            out.insert(account, url);
        }
        Ok(out)
    }

    /// The cache size in bytes, defaulted.
    pub fn cache_size(&self) -> anyhow::Result<u64> {
        parse_size(self.cache_size.as_deref().unwrap_or("10G"))
    }

    /// The size below which files are packed, defaulted, at most what fits in one fragment; 0
    /// in plaintext mode (other clients read files, not packs).
    pub fn pack_below(&self) -> anyhow::Result<u64> {
        let size = parse_size(self.pack_below.as_deref().unwrap_or("8M"))?;
        Ok(if self.plain() { 0 } else { size.min(crate::format::MAX_BLOB as u64 + 1) })
    }

    /// Where to serve metrics, if anywhere: a port alone means 127.0.0.1.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        let Some(text) = self.metrics.as_deref() else { return Ok(None) };
        let addr = match text.parse::<u16>() {
            Ok(port) => std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => {
                text.parse().map_err(|_| anyhow::anyhow!("metrics address {text:?}: use 127.0.0.1:PORT or PORT"))?
            }
        };
        if !addr.ip().is_loopback() {
            anyhow::bail!("metrics address {addr}: only loopback addresses (127.0.0.1, ::1) are allowed");
        }
        Ok(Some(addr))
    }

    /// The data dir, defaulted.
    pub fn data_dir(&self) -> PathBuf {
        let default = || match &self.system {
            Some(name) => Path::new(SYSTEM_DATA_DIR).join(name),
            None => xdg_dir("XDG_DATA_HOME", ".local/share").join("cessfs"),
        };
        // Absolute, so that the mount's source names it wherever `cessfs unmount` runs.
        let dir = self.data_dir.clone().unwrap_or_else(default);
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// FUSE worker threads, defaulted.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| (2 * std::thread::available_parallelism().map_or(2, |n| n.get())).max(4))
    }

    /// The log filter, defaulted.
    pub fn log_level(&self) -> String {
        self.log_level.clone().unwrap_or_else(|| "info".to_string())
    }
}

/// A size with an optional binary unit: `1048576`, `512K`, `64M`, `10G`, `1T` (or `GiB`...).
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => anyhow::bail!("size {text:?}: use a number with K, M, G or T"),
    };
    let n: f64 = number.parse().map_err(|_| anyhow::anyhow!("size {text:?}: use a number with K, M, G or T"))?;
    Ok((n * (1u64 << shift) as f64) as u64)
}

/// Reads a secret (key or account) file, refusing one that others can read.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable by others (mode {:o}): chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads the encryption key file `path`.
pub fn load_key(path: &Path) -> anyhow::Result<crate::format::MasterKey> {
    if !path.exists() {
        anyhow::bail!(
            "the key file {} does not exist: create one with `cessfs keygen --out {}` (and keep a copy \
             somewhere safe), or give the one your files were stored with (--key-file)",
            path.display(),
            path.display()
        );
    }
    let bytes = read_secret_file(path)?;
    crate::format::MasterKey::parse(&bytes).map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))
}

/// Writes a new random encryption key to `path` (mode 0600), refusing to overwrite one.
pub fn write_new_key(path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut key)).context("reading /dev/urandom")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {} (it must not exist yet)", path.display()))?;
    writeln!(f, "{}", hex::encode(key))?;
    f.sync_all()?;
    Ok(())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute()).unwrap_or_else(|| home().join(fallback))
}

/// Config and key files of system mounts.
pub const SYSTEM_CONFIG_DIR: &str = "/etc/cessfs";
/// Data dirs of system mounts, one per mount point.
pub const SYSTEM_DATA_DIR: &str = "/var/lib/cessfs";

/// `$XDG_CONFIG_HOME/cessfs`.
pub fn config_dir() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config").join("cessfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "data_dir = \"/from/file\"\nthreads = 3\n").unwrap();
        let flags = Settings { threads: Some(9), ..Settings::default() };
        let s = flags.with_file(Some(&path)).unwrap();
        assert_eq!(s.data_dir(), PathBuf::from("/from/file"));
        assert_eq!(s.threads(), 9);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let err = Settings::default().with_file(Some(&path)).unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("3Q").is_err());
    }
}
