//! `cessfs gc DIR [--dry-run]`: a collection of the tree's garbage on CESS (FIDs of this key
//! that nothing refers to), run by the mount through its root's `user.cess.gc`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// The state of the mount's last collection.
fn state(args: &GcArgs) -> anyhow::Result<Value> {
    json_attr(&args.dir, c"user.cess.gc").with_context(|| {
        format!(
            "the cessfs mount at {} does not write its tree to CESS (read-only views, --snapshots false \
             and --plain true mounts collect nothing)",
            args.dir.display()
        )
    })
}

/// Starts a collection, once the one running (someone else's) is done; returns its number.
fn start(args: &GcArgs) -> anyhow::Result<u64> {
    let how: &[u8] = if args.dry_run { b"dry-run" } else { b"run" };
    let deadline = Instant::now() + WAIT;
    loop {
        match xattr_set(&args.dir, c"user.cess.gc", how) {
            Ok(()) => return Ok(state(args)?["run"].as_u64().unwrap_or(0)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(e).context("starting a collection"),
        }
    }
}

/// How long a collection may take (listing a territory of 100,000 files takes seconds).
const WAIT: Duration = Duration::from_secs(1800);
const POLL: Duration = Duration::from_millis(200);

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let root = crate::mountpoint::in_cessfs_mount(&args.dir)?;
    if std::fs::canonicalize(&args.dir)? != root {
        anyhow::bail!(
            "{} is inside the cessfs mount {}: a collection is of a whole tree, run cessfs gc {}",
            args.dir.display(),
            root.display(),
            root.display()
        );
    }
    state(&args)?;
    let run = start(&args)?;
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let s = state(&args)?;
        if s["run"].as_u64() != Some(run) {
            anyhow::bail!("another collection started before this one's report was read: run cessfs gc again");
        }
        if s["running"] == Value::Bool(false) {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "the collection did not end within {WAIT:?}");
        std::thread::sleep(POLL);
    };
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
        println!(
            "{}  {:<4}  {}",
            f["fid"].as_str().unwrap_or_default(),
            f["kind"].as_str().unwrap_or_default(),
            mib(f["space"].as_u64().unwrap_or(0))
        );
    }
    if fids.len() < count("unreferenced") as usize {
        println!("… and {} more", count("unreferenced") - fids.len() as u64);
    }
    let found = crate::words::count_as(count("unreferenced"), "file", "files");
    let done = match args.dry_run {
        true => format!("would free {}", mib(count("frees"))),
        false => format!("{} queued for deletion, freeing {}", count("queued"), mib(count("frees"))),
    };
    if count("unreferenced") == 0 {
        println!("nothing to collect: every file this tree stored on CESS is still in use");
    } else {
        println!("{found} on CESS that nothing in this tree refers to any more: {done}");
    }
    if count("others") > 0 {
        println!(
            "kept: {} on CESS that another mount of this key stored since this tree began here (not in \
             the tree: that mount writes none, or stopped writing it)",
            crate::words::count_as(count("others"), "file", "files")
        );
    }
    Ok(())
}
