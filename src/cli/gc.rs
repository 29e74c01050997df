//! `cessfs gc DIR [--dry-run]`: a collection of the tree's garbage on CESS (FIDs of this key
//! that nothing refers to), run by the mount through its root's `user.cess.gc`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::status::{json_attr, xattr_set};

#[derive(Args)]
pub struct GcArgs {
    /// The mount's directory (its root).
    dir: PathBuf,
    /// List what would be deleted and the territory it frees; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the mount's report as JSON.
    #[arg(long)]
    json: bool,
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    crate::mountpoint::in_cessfs_mount(&args.dir)?;
    let how: &[u8] = if args.dry_run { b"dry-run" } else { b"run" };
    xattr_set(&args.dir, c"user.cess.gc", how).with_context(|| {
        format!(
            "{} is not the root of a running cessfs mount that writes its tree to CESS (read-only views, \
             --snapshots false and --plain true mounts collect nothing)",
            args.dir.display()
        )
    })?;
    let report = json_attr(&args.dir, c"user.cess.gc").context("reading the collection's report")?;
    if args.json {
        println!("{report}");
        return Ok(());
    }
    if let Some(e) = report["error"].as_str() {
        anyhow::bail!("collecting: {e}");
    }
    if let Some(why) = report["waiting"].as_str() {
        println!("nothing collected: {why}");
        return Ok(());
    }
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    let fids = report["fids"].as_array().cloned().unwrap_or_default();
    for f in &fids {
        let due = if f["due"] == Value::Bool(true) { "" } else { " (in its grace period)" };
        println!(
            "{}  {:<4}  {}{due}",
            f["fid"].as_str().unwrap_or_default(),
            f["kind"].as_str().unwrap_or_default(),
            mib(f["space"].as_u64().unwrap_or(0))
        );
    }
    if fids.len() < count("unreferenced") as usize {
        println!("… and {} more", count("unreferenced") - fids.len() as u64);
    }
    let found = crate::words::count(count("unreferenced"), "FID");
    let grace = count("unreferenced") - count("due");
    let waits = if grace > 0 {
        format!(
            "; {grace} found less than {} s ago stay for now (--gc-grace)",
            report["grace_secs"].as_u64().unwrap_or(0)
        )
    } else {
        String::new()
    };
    match args.dry_run {
        true => println!(
            "{found} of this tree that nothing refers to: {} would free {}{waits}",
            count("due"),
            mib(count("frees"))
        ),
        false => println!(
            "{found} of this tree that nothing refers to: {} queued for deletion, freeing {}{waits}",
            count("queued"),
            mib(count("frees"))
        ),
    }
    Ok(())
}
