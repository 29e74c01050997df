//! A fresh machine's restore of a large tree over a link: FILES stored photos (1,000,000 unless
//! set; PER_DIR a directory, 20,000 unless set) written straight into a data dir, whose mount
//! writes the tree's first round to a standalone devnet. A fresh data dir then restores it: the
//! time until its root lists, and until the whole tree is loaded. Baseline of the same run: the
//! tree's file fetched whole through the same link (what showing the root took before tree files
//! were read segment by segment). A file saved as soon as the root lists: the time until a round
//! holding it is active, against the time the rest of the tree took to load (until which a round
//! waited before a tree being loaded wrote its rounds).
//!
//! Run: `cargo bench --bench restore` (as root or with fusermount3).
//! LINK=up=20M,down=100M,rtt=60ms puts the devnet's miners behind that link model. KEEP=1 keeps
//! the work dir and its logs.

#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;
#[path = "support/photos.rs"]
mod photos;
#[path = "support/standalone.rs"]
#[allow(dead_code)]
mod standalone;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cessfs::fetch::Fetcher;
use cessfs::protocol::Signer;
use standalone::Devnet;

/// `user.cess.snapshot` of the mount at `root`, if it can be read.
fn snapshot_state(root: &Path) -> Option<serde_json::Value> {
    let (p, n) = (std::ffi::CString::new(root.to_str()?).ok()?, c"user.cess.snapshot");
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| serde_json::from_slice(&buf[..r as usize]).ok()).flatten()
}

/// Waits up to an hour for `what` of the mount at `root`, looking every second (the attribute
/// reads every kept tree's record: at a million files, looking more often slows what it waits
/// for).
fn wait_for(root: &Path, what: &str, mut done: impl FnMut(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !snapshot_state(root).is_some_and(|s| done(&s)) {
        assert!(Instant::now() < deadline, "{what}: not within an hour ({:?})", snapshot_state(root));
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() {
    // SAFETY: set before any thread of this process starts.
    unsafe { std::env::set_var("PER_DIR", std::env::var("PER_DIR").unwrap_or_else(|_| "20000".into())) };
    let files: usize = std::env::var("FILES").ok().and_then(|f| f.parse().ok()).unwrap_or(1_000_000);
    let mut work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    // KEEP=1 keeps the work dir, with the mounts' and the devnet's logs.
    if std::env::var_os("KEEP").is_some() {
        work.disable_cleanup(true);
        println!("work dir kept: {}", work.path().display());
    }
    let (key, master) = mounted::key_file(work.path());
    let link = std::env::var("LINK").ok();
    let link_args: Vec<&str> = link.iter().flat_map(|l| ["--link", l.as_str()]).collect();
    let net = Devnet::start(&work.path().join("devnet"), &link_args, &[]);
    let args = ["--chain", net.rpc.as_str(), "--quiet-delay", "0.2"];

    let data = work.path().join("writer");
    drop(mounted::mount(&data, &key, &args));
    let t = Instant::now();
    photos::fill(&cessfs::store::Store::open(&data, 0, 0).expect("the writer's store"), files);
    let created = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let writer = mounted::mount(&data, &key, &args);
    wait_for(writer.dir.path(), "the first round", |s| {
        s["status"] == "active" && s["generation"] == s["active_generation"] && s["changes_waiting"] == false
    });
    let written = t.elapsed().as_secs_f64();
    drop(writer);

    let names = master.for_territory(b"cessfs").names().expect("a territory's names").clone();
    let found = net.run(cessfs::snapshots::restore::find(&net.client(), b"cessfs", &names)).expect("find");
    let tree = found.iter().max_by_key(|f| f.generation).expect("the tree's file");
    println!(
        "{files} stored files in {} directories, created in {created:.1} s; the first round of the tree written and active \
         in {written:.1} s: a {} of {} segments",
        files.div_ceil(photos::per_dir()),
        if tree.commit { "commit" } else { "tree file" },
        tree.segments
    );

    let fresh = work.path().join("fresh");
    let t = Instant::now();
    let restored = mounted::mount(&fresh, &key, &args);
    let listed = std::fs::read_dir(restored.dir.path()).expect("the restored root").count();
    let to_root = t.elapsed().as_secs_f64();
    assert_eq!(listed, files.div_ceil(photos::per_dir()), "the restored root");
    // A file saved as soon as the root shows: its round no longer waits for the whole tree.
    std::fs::write(restored.dir.path().join("saved-while-loading.txt"), b"saved while the tree loads").expect("save");
    let saved = Instant::now();
    let (mut edit_settled, mut whole) = (None, None);
    wait_for(restored.dir.path(), "the whole tree", |s| {
        let settled =
            s["status"] == "active" && s["generation"] == s["active_generation"] && s["changes_waiting"] == false;
        if settled && edit_settled.is_none() {
            edit_settled = Some((saved.elapsed().as_secs_f64(), !s["dirs_to_load"].is_null()));
        }
        if s["dirs_to_load"].is_null() && whole.is_none() {
            whole = Some(t.elapsed().as_secs_f64());
        }
        whole.is_some() && edit_settled.is_some()
    });
    let to_whole = whole.unwrap_or_default();
    drop(restored);

    let fetcher = Fetcher::new(
        Arc::new(net.client()),
        Signer::from_uri("//Alice").expect("dev key"),
        Some(master.for_territory(b"cessfs")),
        cessfs::miner::StallRule::over(Duration::from_secs(30)),
        None,
    );
    let t = Instant::now();
    match tree.commit {
        true => drop(net.run(fetcher.pack_segment(&tree.fid)).expect("the commit's segment")),
        false => {
            for s in 0..tree.segments {
                net.run(fetcher.tree_file_segment(&tree.fid, tree.segments, s)).expect("a segment of the tree's file");
            }
        }
    }
    let whole_file = t.elapsed().as_secs_f64();
    println!("baseline: the tree's file fetched whole, {whole_file:.2} s");
    println!(
        "a fresh data dir: the root lists after {to_root:.2} s ({:.2}x the whole file's fetch); the tree whole after {to_whole:.1} s",
        to_root / whole_file
    );
    if let Some((settled, loading)) = edit_settled {
        println!(
            "a file saved as the root showed: in an active round after {settled:.1} s ({}); the load's end came {:.1} s \
             after the save, when a round could only begin before",
            if loading { "the tree still loading" } else { "the tree whole by then" },
            to_whole - to_root
        );
    }
}
