//! Whether slow work stays out of the namespace lock: while a 2 GiB file whose deal is in flight
//! gets its declared bytes copied aside (it was opened for writing), the latency of create,
//! write, close and rename of other files, against the same operations with no copy running, in
//! the same run. The figure is the ratio of the p99 latencies (target: within 2x).
//!
//! The deal stays in flight because every devnet node is switched off after the declaration
//! (its pushes fail and are retried). Run: `cargo bench --bench locks` (as root or with
//! fusermount3); `HOW=truncate` truncates the closed file to half instead of opening it (the
//! path of `truncate(2)`).

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

fn main() {
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
