//! Whether slow work stays out of the namespace lock: while a 2 GiB file whose deal is in flight
//! gets its declared bytes copied aside (it was opened for writing), the latency of create,
//! write, close and rename of other files, against the same operations with no copy running, in
//! the same run. The figure is the ratio of the p99 latencies (target: within 2x).
//!
//! The deal stays in flight because every devnet node is switched off after the declaration
//! (its pushes fail and are retried). Run: `cargo bench --bench locks` (as root or with
//! fusermount3); `HOW=truncate` truncates the closed file to half instead of opening it (the
//! path of `truncate(2)`).
//!
//! `HOW=snapshot`: what building tree snapshots costs writers. In a tree of `FILES` (100,000)
//! files, the same rounds with snapshots off, then with a snapshot built every second (the
//! tree keeps changing, `--snapshot-interval 1`): the ratio of the p99 latencies, and how many
//! snapshots were built meanwhile.

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cessfs::devnet::DevnetChain;
use mounted::*;

const BIG: usize = 2 << 30;

/// Creates, writes, closes and renames small files in `dir` until `stop`; the latency of each
/// whole round, in microseconds.
fn rounds(dir: &Path, tag: &str, stop: &AtomicBool, min: usize) -> Vec<f64> {
    let body = vec![7u8; 4096];
    let mut out = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) || out.len() < min {
        let (a, b) = (dir.join(format!("{tag}-{i}.tmp")), dir.join(format!("{tag}-{i}.txt")));
        let t = Instant::now();
        let mut f = std::fs::File::create(&a).expect("create");
        f.write_all(&body).expect("write");
        drop(f);
        std::fs::rename(&a, &b).expect("rename");
        out.push(t.elapsed().as_secs_f64() * 1e6);
        i += 1;
    }
    out
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// The generation of the newest snapshot of the mount at `root`, if any.
fn snapshot_generation(root: &Path) -> Option<u64> {
    let (p, n) = (std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).ok()?, c"user.cess.snapshot");
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let v: serde_json::Value = serde_json::from_slice(&buf[..usize::try_from(r).ok()?]).ok()?;
    v["generation"].as_u64()
}

/// The body of `GET path` on 127.0.0.1:`port`.
fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    reply.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// `HOW=snapshot` (see the module docs).
fn snapshot_cost() {
    let files: usize = std::env::var("FILES").ok().and_then(|f| f.parse().ok()).unwrap_or(100_000);
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let data_dir = work.path().join("data");
    let (key_path, _) = key_file(work.path());
    // Uploads wait an hour: the tree is never settled, so a snapshot is due every interval.
    let quiet = ["--quiet-delay", "3600"];
    let off = mount(&data_dir, &key_path, &[&quiet[..], &["--snapshots", "false"]].concat());
    let t = Instant::now();
    for d in 0..100 {
        let dir = off.dir.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).expect("dir");
        for i in 0..files / 100 {
            std::fs::File::create(dir.join(i.to_string())).expect("create");
        }
    }
    println!("{files} files created in {:.0} s", t.elapsed().as_secs_f64());
    warm_up(work.path());
    let small = off.dir.path().join("small");
    std::fs::create_dir(&small).expect("dir");
    let stop = AtomicBool::new(false);
    let measure = |root: &Path, tag: &str| {
        stop.store(false, Ordering::Relaxed);
        std::thread::scope(|s| {
            let worker = s.spawn(|| rounds(&root.join("small"), tag, &stop, 100));
            std::thread::sleep(Duration::from_secs(15));
            stop.store(true, Ordering::Relaxed);
            worker.join().expect("rounds")
        })
    };
    let base = measure(off.dir.path(), "base");
    drop(off);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port();
    let on = mount(
        &data_dir,
        &key_path,
        &[&quiet[..], &["--snapshot-interval", "1", "--metrics", &port.to_string()]].concat(),
    );
    // The snapshots written meanwhile, as their generations change.
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let done = AtomicBool::new(false);
    let during = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                seen.lock().expect("seen").extend(snapshot_generation(on.dir.path()));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let during = measure(on.dir.path(), "during");
        done.store(true, Ordering::Relaxed);
        during
    });
    let metrics = http_get(port, "/metrics");
    let held = |what: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("cessfs_snapshot_build_seconds_{what}{{step=\"held\"}} "))?.parse().ok()
            })
            .unwrap_or(0.0f64)
    };
    let walk = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cessfs_snapshot_build_seconds_sum{step=\"walk\"} ")?.parse().ok())
        .unwrap_or(0.0f64);
    let builds = held("count");
    let built = format!(
        "{} snapshots written, {builds} built; per build a walk of {:.0} ms and commits held {:.1} ms",
        seen.lock().expect("seen").len(),
        1e3 * walk / builds.max(1.0),
        1e3 * held("sum") / builds.max(1.0)
    );
    let (n_base, n_during) = (base.len(), during.len());
    let (base, during) = (p99(base), p99(during));
    println!(
        "create+write+close+rename in a tree of {files} files, p99: {base:.0} us with snapshots off ({n_base} rounds), \
         {during:.0} us with a snapshot built every second ({n_during} rounds; {built})"
    );
    println!(
        "ratio: {:.2}x (commits wait only for the held part; the rest is the builds' CPU and disk work)",
        during / base
    );
}

fn main() {
    if std::env::var("HOW").is_ok_and(|h| h == "snapshot") {
        return snapshot_cost();
    }
    let truncate = std::env::var("HOW").is_ok_and(|h| h == "truncate");
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let data_dir = work.path().join("data");
    let (key_path, _) = key_file(work.path());
    let m = mount(&data_dir, &key_path, &[]);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("devnet/devnet.json")).expect("devnet.json"))
            .expect("json");
    let token = std::fs::read_to_string(data_dir.join("devnet/control.token")).expect("control token");
    let signer = cessfs::protocol::Signer::from_uri("//Alice").expect("dev key");
    let net = DevnetChain::new(info["rpc"].as_str().expect("rpc"), signer).with_control(&token);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let nodes = rt.block_on(net.nodes()).expect("nodes");
    for n in &nodes {
        rt.block_on(net.set_fault(n.index, "down".parse().expect("fault"))).expect("switch a node off");
    }

    let big = m.dir.path().join("big.bin");
    std::fs::write(&big, data::random(BIG, 3)).expect("write the big file");
    let started = Instant::now();
    while !matches!(status(&big).as_str(), "declared" | "pushing" | "confirming") {
        assert!(started.elapsed() < Duration::from_secs(300), "the deal never started: {}", status(&big));
        std::thread::sleep(Duration::from_millis(50));
    }
    let small = m.dir.path().join("small");
    std::fs::create_dir(&small).expect("dir");
    warm_up(work.path());

    // Baseline: no copy running.
    let stop = AtomicBool::new(false);
    let base = std::thread::scope(|s| {
        let worker = s.spawn(|| rounds(&small, "base", &stop, 0));
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        worker.join().expect("rounds")
    });

    // The same while the big file's declared bytes are copied aside.
    let stop = Arc::new(AtomicBool::new(false));
    let (during, copy_secs) = std::thread::scope(|s| {
        let worker = s.spawn(|| rounds(&small, "copy", &stop, 100));
        let t = Instant::now();
        if truncate {
            let path = std::ffi::CString::new(big.as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::truncate(path.as_ptr(), (BIG / 2) as libc::off_t) }, 0, "truncate");
        } else {
            let opened = std::fs::OpenOptions::new().append(true).open(&big).expect("open the big file for writing");
            drop(opened);
        }
        let copy_secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        (worker.join().expect("rounds"), copy_secs)
    });
    for n in &nodes {
        let _ = rt.block_on(net.set_fault(n.index, "none".parse().expect("fault")));
    }
    let (n_base, n_during) = (base.len(), during.len());
    let (base, during) = (p99(base), p99(during));
    let how = if truncate { "truncate to half" } else { "open for writing" };
    println!("{how} of the 2 GiB file with its deal in flight (the copy aside): {copy_secs:.2} s");
    println!(
        "create+write+close+rename of other files, p99: {base:.0} us with no copy ({n_base} rounds), {during:.0} us during the copy ({n_during} rounds)"
    );
    println!("ratio: {:.2}x (target: within 2x)", during / base);
}
