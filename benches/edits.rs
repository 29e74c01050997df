//! What an edit costs: a tree of N notes of 4 KiB settles, then 7 bytes are appended to one
//! note. For that edit: the declarations it took, the fragment bytes the nodes took, the tree's
//! bytes per round, and the time to settle; with commits (the default) against `--commits
//! false` (packs and tree snapshots as CESS files of their own, as before commits) in the same
//! run. Then a fresh data dir restores the tree: the time until its root lists. Last, a devnet
//! holding 10,000 files of the account deletes them: transactions and time, one FID per
//! transaction against batches of `DELETE_BATCH`, in the same run.
//!
//! A sparse disk image (SPARSE_MIB, 2048 by default, holding 14 bytes) is stored, against the
//! same bytes written out as zeros, in the same run: declarations, bytes pushed, time to active.
//!
//! Run: `cargo bench --bench edits` (as root or with fusermount3). FILES=1000,10000 sets the
//! tree sizes (comma-separated; empty: none); LINK=up=20M,down=100M,rtt=60ms puts the devnet
//! behind that link model (the times then are a home link's); EDITS_BENCH_KEEP=1 keeps the work
//! dir (the daemons' logs are DIR/N-MODE/data.log); HELD=100000 starts each devnet with that
//! many files of the account already stored, and times too a search that reads every record of
//! them (as restores did before they read the hold list from its tail).

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;
#[path = "support/standalone.rs"]
#[allow(dead_code)]
mod standalone;

use std::path::Path;
use std::time::{Duration, Instant};

use cessfs::devnet::Event;
use cessfs::format::{Hash, MasterKey};
use cessfs::protocol::Chain;
use standalone::Devnet;

/// Whether the newest tree of the mount at `root` is active, with no change waiting.
fn tree_settled(root: &Path) -> bool {
    let (p, n) = (std::ffi::CString::new(root.to_str().expect("utf-8")).expect("path"), c"user.cess.snapshot");
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return false;
    }
    let s: serde_json::Value = serde_json::from_slice(&buf[..r as usize]).expect("json");
    s["status"] == "active" && s["generation"] == s["active_generation"] && s["changes_waiting"] == false
}

fn wait_settled(root: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(1800);
    while !tree_settled(root) {
        assert!(Instant::now() < deadline, "{what}: the tree did not settle in 30 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes of the last tree the daemon logged as written (with directory blobs: the root and
/// the blobs new in it).
fn last_tree_bytes(log: &Path) -> u64 {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let line =
        log.lines().rev().find(|l| l.contains("cessfs::snapshots] tree ") && l.contains(" written (")).unwrap_or("");
    let after = line.split(" written (").nth(1).unwrap_or("0");
    after.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

struct Edit {
    declarations: usize,
    mib_pushed: f64,
    tree_bytes: u64,
    settle_secs: f64,
    restore_secs: f64,
    /// A search reading every record of the account (`HELD`).
    find_secs: Option<f64>,
}

fn edit(work: &Path, (key, master): (&Path, &MasterKey), files: usize, mode: &str, args: &[&str]) -> Edit {
    let dir = work.join(format!("{files}-{mode}"));
    let link = std::env::var("LINK").ok();
    let link_args: Vec<&str> = link.iter().flat_map(|l| ["--link", l.as_str()]).collect();
    let held = std::env::var("HELD").ok();
    let held_args: Vec<&str> = held.iter().flat_map(|n| ["--held-files", n.as_str()]).collect();
    let net = Devnet::start(&dir.join("devnet"), &[link_args, held_args].concat(), &[]);
    let mut all = vec!["--chain", &net.rpc, "--quiet-delay", "0.2"];
    all.extend_from_slice(args);
    let data = dir.join("data");
    let m = mounted::mount(&data, key, &all);
    let root = m.dir.path();
    for d in 0..files.div_ceil(1000) {
        std::fs::create_dir(root.join(format!("d{d}"))).expect("mkdir");
    }
    for i in 0..files {
        let mut note = data::random(4096, i as u64);
        note.extend_from_slice(format!("note {i}").as_bytes());
        std::fs::write(root.join(format!("d{}/{i}.txt", i / 1000)), note).expect("write");
    }
    wait_settled(root, "the notes");
    let (declared, moved) = (net.declarations(), net.moved().bytes_in);
    let note = root.join("d0/7.txt");
    let t = Instant::now();
    std::io::Write::write_all(&mut std::fs::OpenOptions::new().append(true).open(&note).expect("open"), b"edited!")
        .expect("append");
    while mounted::status(&note) != "active" || !tree_settled(root) {
        assert!(t.elapsed() < Duration::from_secs(600), "the edit did not settle");
        std::thread::sleep(Duration::from_millis(5));
    }
    let settle_secs = t.elapsed().as_secs_f64();
    let edit = (net.declarations() - declared, (net.moved().bytes_in - moved) as f64 / (1 << 20) as f64);
    let tree_bytes = last_tree_bytes(&data.with_extension("log"));
    drop(m);
    let fresh = dir.join("fresh");
    let t = Instant::now();
    let restored = mounted::mount(&fresh, key, &all);
    let listed = std::fs::read_dir(restored.dir.path()).expect("the restored root").count();
    let restore_secs = t.elapsed().as_secs_f64();
    assert_eq!(listed, files.div_ceil(1000), "the restored root");
    let find_secs = held.map(|_| {
        let names = master.for_territory(b"cessfs").names().expect("a territory's names").clone();
        let t = Instant::now();
        let found = net.run(cessfs::snapshots::restore::find(&net.client(), b"cessfs", &names)).expect("find");
        assert!(!found.is_empty(), "the tree's snapshots");
        t.elapsed().as_secs_f64()
    });
    Edit { declarations: edit.0, mib_pushed: edit.1, tree_bytes, settle_secs, restore_secs, find_secs }
}

/// A disk image of `mib` MiB holding 14 bytes, its zeros `holes` or written out, stored: the
/// declarations, MiB pushed and seconds until it is active.
fn image(work: &Path, key: &Path, mib: u64, holes: bool) -> (usize, f64, f64) {
    use std::os::unix::fs::FileExt;
    let dir = work.join(format!("image-{}", if holes { "holes" } else { "zeros" }));
    let link = std::env::var("LINK").ok();
    let link_args: Vec<&str> = link.iter().flat_map(|l| ["--link", l.as_str()]).collect();
    let net = Devnet::start(&dir.join("devnet"), &link_args, &[]);
    let m = mounted::mount(&dir.join("data"), key, &["--chain", &net.rpc, "--quiet-delay", "0.2"]);
    let (declared, moved) = (net.declarations(), net.moved().bytes_in);
    let (path, size) = (m.dir.path().join("disk.img"), mib << 20);
    let t = Instant::now();
    {
        let f = std::fs::File::create(&path).expect("create");
        if holes {
            f.set_len(size).expect("set_len");
        } else {
            let zeros = vec![0u8; 1 << 20];
            (0..mib).for_each(|i| f.write_all_at(&zeros, i << 20).expect("zeros"));
        }
        f.write_all_at(b"hello, ", size / 2).expect("write");
        f.write_all_at(b"world!!", size - 7).expect("write");
    }
    mounted::wait_active(&path);
    let secs = t.elapsed().as_secs_f64();
    (net.declarations() - declared, (net.moved().bytes_in - moved) as f64 / (1 << 20) as f64, secs)
}

/// Deletes the 10,000 files a devnet holds for the account, the first half one per
/// transaction, the second in batches of `batch`: (transactions, seconds) for each half.
fn deletions(work: &Path, batch: usize) -> [(usize, f64); 2] {
    let net = Devnet::start(&work.join("deletions"), &["--held-files", "10000"], &[]);
    let chain = net.client();
    let fids: Vec<Hash> =
        net.run(chain.held_files(&chain.account())).expect("held").into_iter().map(|h| h.fid).collect();
    assert_eq!(fids.len(), 10_000);
    let (one, many) = fids.split_at(5_000);
    let mut out = [(0, 0.0); 2];
    for (half, size) in [(one, 1), (many, batch)] {
        let blocks_before = net.block();
        let t = Instant::now();
        for chunk in half.chunks(size) {
            let r = net.run(chain.delete_files(chunk)).expect("delete");
            assert!(r.items.iter().all(Result::is_ok), "every deletion went through");
        }
        let secs = t.elapsed().as_secs_f64();
        let events = net.run(chain.events()).expect("events");
        let txs = events
            .iter()
            .filter(|(b, e)| *b > blocks_before && matches!(e, Event::DeleteFile { .. }))
            .map(|(b, _)| *b)
            .collect::<std::collections::BTreeSet<u32>>()
            .len();
        out[usize::from(size != 1)] = (txs, secs);
    }
    out
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FILES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.trim().parse().expect("FILES: comma-separated numbers"))
        .collect();
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let (key, master) = mounted::key_file(work.path());
    println!("one edit (7 bytes appended to one note of N), commits against --commits false, same run:");
    for &n in &sizes {
        let with = edit(work.path(), (&key, &master), n, "commits", &[]);
        let without = edit(work.path(), (&key, &master), n, "files", &["--commits", "false"]);
        for (name, e) in [("commits", &with), ("--commits false", &without)] {
            println!(
                "  {n:>7} files, {name:<15}: {} declarations, {:>6.1} MiB pushed, tree {:>9} bytes, settled in {:>5.2} s; \
                 restore to the root listed {:>5.2} s",
                e.declarations, e.mib_pushed, e.tree_bytes, e.settle_secs, e.restore_secs
            );
            if let Some(find) = e.find_secs {
                println!(
                    "  {n:>7} files, {name:<15}: reading every record of the account's files takes {find:>5.2} s \
                     ({:.2}x the restore to the root listed)",
                    find / e.restore_secs
                );
            }
        }
        println!(
            "  {n:>7} files: commits take {:.2}x the declarations and {:.2}x the bytes pushed",
            with.declarations as f64 / without.declarations.max(1) as f64,
            with.mib_pushed / without.mib_pushed.max(f64::MIN_POSITIVE)
        );
    }
    let mib: u64 = std::env::var("SPARSE_MIB").map_or(2048, |n| n.parse().expect("SPARSE_MIB: a number"));
    let holes = image(work.path(), &key, mib, true);
    let zeros = image(work.path(), &key, mib, false);
    for (name, (declarations, pushed, secs)) in [("holes", holes), ("zeros written", zeros)] {
        println!(
            "a {mib} MiB image holding 14 bytes, {name:<13}: {declarations} declarations, {pushed:>7.1} MiB pushed, active in {secs:>6.2} s"
        );
    }
    println!(
        "holes take {:.3}x the bytes pushed and {:.3}x the time of zeros written",
        holes.1 / zeros.1.max(f64::MIN_POSITIVE),
        holes.2 / zeros.2.max(f64::MIN_POSITIVE)
    );
    let batch = cessfs::collect::DELETE_BATCH;
    if std::env::var_os("LINK").is_some() {
        return;
    }
    let [one, many] = deletions(work.path(), batch);
    println!("deleting 5,000 FIDs one per transaction: {} transactions, {:.2} s", one.0, one.1);
    println!(
        "deleting 5,000 FIDs in batches of {batch}: {} transactions, {:.2} s ({:.2}x the transactions, {:.2}x the time)",
        many.0,
        many.1,
        many.0 as f64 / one.0.max(1) as f64,
        many.1 / one.1.max(f64::MIN_POSITIVE)
    );
    if std::env::var_os("EDITS_BENCH_KEEP").is_some() {
        println!("work dir kept: {}", work.keep().display());
    }
}
