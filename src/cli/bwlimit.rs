//! `cessfs bwlimit DIR [LIMIT]`: a running mount's bandwidth limit, read and changed through
//! its root's `user.cess.bwlimit`, and the rates it moves at (`user.cess.link`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::status::{json_attr, xattr_set};

#[derive(Args)]
pub struct BwlimitArgs {
    /// The mount's directory.
    dir: PathBuf,
    /// The new limit, as --bwlimit takes it (10M, 2M:off, off, "08:00,512k 23:00,off");
    /// without it, the current one is shown.
    limit: Option<String>,
}

/// A rate in bytes a second, as people read it.
pub(super) fn rate(bytes: f64) -> String {
    match bytes {
        b if b >= (1 << 20) as f64 => format!("{:.1} MiB/s", b / (1 << 20) as f64),
        b if b >= 1024.0 => format!("{:.0} KiB/s", b / 1024.0),
        b => format!("{b:.0} B/s"),
    }
}

/// One line on the link: the limit in force, and what moves now.
pub(super) fn describe_link(v: &Value) -> String {
    let limit = |key: &str| v[key].as_f64().map_or("off".to_string(), rate);
    let table = v["bwlimit"].as_str().filter(|t| t.contains(',')).map(|t| format!(" (timetable {t:?})"));
    let window = v["push_window"].as_u64().filter(|&w| w > 0).map(|w| format!("; pushes up to {w} fragments at once"));
    format!(
        "link: up {} (limit {}), down {} (limit {}){}{}",
        rate(v["up"].as_f64().unwrap_or(0.0)),
        limit("up_limit"),
        rate(v["down"].as_f64().unwrap_or(0.0)),
        limit("down_limit"),
        table.unwrap_or_default(),
        window.unwrap_or_default()
    )
}

fn link_of(dir: &Path) -> anyhow::Result<Value> {
    json_attr(dir, c"user.cess.link")
        .with_context(|| format!("{} is not the root of a running cessfs mount with a network", dir.display()))
}

pub fn run(args: BwlimitArgs) -> anyhow::Result<()> {
    crate::mountpoint::in_cessfs_mount(&args.dir)?;
    link_of(&args.dir)?;
    if let Some(text) = &args.limit {
        // Checked here first, so a bad one says what was wrong (the kernel passes on EINVAL only).
        text.parse::<crate::pace::Bwlimit>().map_err(|e| anyhow::anyhow!("bwlimit {text:?}: {e}"))?;
        xattr_set(&args.dir, c"user.cess.bwlimit", text.as_bytes())
            .with_context(|| format!("setting the bandwidth limit of {}", args.dir.display()))?;
    }
    println!("{}", describe_link(&link_of(&args.dir)?));
    Ok(())
}
