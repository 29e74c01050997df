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
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf unless root)
    /// [default: false].
    #[arg(long, value_name = "BOOL")]
    pub allow_other: Option<bool>,
    /// Log filter, as RUST_LOG (error, warn, info, debug, or per module) [default: info].
    #[arg(long, env = "RUST_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The config file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(flatten)]
    settings: Settings,
}

impl Settings {
    /// Fills what the flags left open from the config file (`path`, or the default location if
    /// it exists).
    pub fn with_file(self, path: Option<&Path>) -> anyhow::Result<Settings> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(config_dir().join("config.toml")).filter(|p| p.exists()),
        };
        let Some(path) = path else { return Ok(self) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading config {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text).with_context(|| format!("in config {}", path.display()))?;
        let f = file.settings;
        Ok(Settings {
            data_dir: self.data_dir.or(f.data_dir),
            threads: self.threads.or(f.threads),
            passthrough: self.passthrough.or(f.passthrough),
            allow_other: self.allow_other.or(f.allow_other),
            log_level: self.log_level.or(f.log_level),
        })
    }

    /// The data dir, defaulted.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| xdg_dir("XDG_DATA_HOME", ".local/share").join("cessfs"))
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

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute()).unwrap_or_else(|| home().join(fallback))
}

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
}
