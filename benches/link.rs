//! cessfs on a home link: a standalone devnet with the link model (`cessfs devnet --link`), a
//! mount of the built binary on it, and each figure set against the link's configured rate in
//! the same run: goodput (fragment bytes the nodes took or served over the time) as a share of
//! the link, bytes fetched per byte read, the first byte of a cold file, and the client's peak
//! resident memory (the devnet runs in a process of its own).
//!
//! Run: `cargo bench --bench link` (as root or with fusermount3). The full sizes of the issue
//! take about 20 minutes; `LINK_BENCH_SCALE=4` divides every size by 4. A case name as argument
//! runs that case alone (`cargo bench --bench link -- slow-miner`); `LINK_BENCH_KEEP=1` keeps
//! the work dir (the daemon's log is DIR/CASE/data.log).

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;
#[path = "support/standalone.rs"]
#[allow(dead_code)]
mod standalone;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use data::random;
use mounted::*;
use standalone::Devnet;

const MIB: u64 = 1 << 20;

/// A bit rate as the link spec writes it, in bytes a second.
fn bytes_per_sec(rate: &str) -> f64 {
    let (n, unit) = rate.split_at(rate.len() - 1);
    n.parse::<f64>().expect("rate") * if unit == "M" { 1e6 } else { 1e3 } / 8.0
}

struct Case<'a> {
    name: &'a str,
    up: &'a str,
    down: &'a str,
    node_links: &'a [&'a str],
    /// Sizes of the files written at once (each its own FID).
    files: Vec<u64>,
    /// Read them back cold.
    read: bool,
}

fn run(work: &Path, key: &Path, case: &Case) {
    let dir = work.join(case.name);
    std::fs::create_dir_all(&dir).expect("case dir");
    let link = format!("up={},down={},rtt=60ms", case.up, case.down);
    let net = Devnet::start(&dir.join("devnet"), &["--link", &link], case.node_links);
    let data = dir.join("data");
    let chain = net.rpc.clone();
    let m = mount(&data, key, &["--chain", &chain, "--snapshots", "false", "--pack-below", "0"]);
    let src: Vec<(PathBuf, Vec<u8>)> = case
        .files
        .iter()
        .enumerate()
        .map(|(i, &n)| (m.dir.path().join(format!("f{i}.bin")), random(n as usize, i as u64)))
        .collect();
    let before = net.moved();
    let t = Instant::now();
    for (path, bytes) in &src {
        std::fs::write(path, bytes).expect("write");
    }
    for (path, _) in &src {
        wait_active(path);
    }
    let up_secs = t.elapsed().as_secs_f64();
    let after = net.moved();
    let pushed = (after.bytes_in - before.bytes_in) as f64;
    let up_rate = bytes_per_sec(case.up);
    println!(
        "{}: {} files of {} MiB up at {} bit/s: {:.1} s, {:.0} MiB of fragments, goodput {:.0}% of the link \
         ({} PUTs, {} refusals, at most {} at once)",
        case.name,
        src.len(),
        case.files[0] / MIB,
        case.up,
        up_secs,
        pushed / MIB as f64,
        100.0 * pushed / up_secs / up_rate,
        after.puts - before.puts,
        after.refusals - before.refusals,
        after.most_puts_at_once,
    );
    let up_peak = peak_mib(m.child.id());
    reset_peak(m.child.id());
    if case.read {
        let evicted =
            Command::new(env!("CARGO_BIN_EXE_cessfs")).arg("evict").arg(m.dir.path()).output().expect("evict");
        assert!(evicted.status.success(), "evict");
        // The first byte of the first file, cold, then all of them.
        let before = net.moved();
        let t = Instant::now();
        let mut first = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&src[0].0).expect("open"), &mut first, 0)
            .expect("first byte");
        let first_byte = t.elapsed().as_secs_f64();
        let mut size = 0;
        for (path, bytes) in &src {
            let back = std::fs::read(path).expect("read back");
            assert!(back == *bytes, "{} reads back", path.display());
            size += bytes.len() as u64;
        }
        let down_secs = t.elapsed().as_secs_f64();
        let fetched = (net.moved().bytes_out - before.bytes_out) as f64;
        println!(
            "{}: cold read of {} MiB at {} bit/s: {:.1} s, goodput {:.0}% of the link, {:.2}x the bytes; first byte \
             {:.2} s",
            case.name,
            size / MIB,
            case.down,
            down_secs,
            100.0 * fetched / down_secs / bytes_per_sec(case.down),
            fetched / size as f64,
            first_byte,
        );
    }
    let read_peak = if case.read { format!(", reading {:.0} MiB", peak_mib(m.child.id())) } else { String::new() };
    println!("{}: client peak resident memory uploading {up_peak:.0} MiB{read_peak}", case.name);
}

fn main() {
    let scale: u64 = std::env::var("LINK_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let (key, _) = key_file(work.path());
    let cases = [
        Case {
            name: "one-large",
            up: "20M",
            down: "100M",
            node_links: &[],
            files: vec![128 * MIB / scale],
            read: true,
        },
        Case {
            name: "folder",
            up: "20M",
            down: "100M",
            node_links: &[],
            files: vec![16 * MIB / scale; 8],
            read: false,
        },
        Case { name: "slow-up", up: "5M", down: "100M", node_links: &[], files: vec![16 * MIB / scale], read: false },
        Case {
            name: "read-20M",
            up: "1000M",
            down: "20M",
            node_links: &[],
            files: vec![256 * MIB / scale],
            read: true,
        },
        Case {
            name: "read-100M",
            up: "1000M",
            down: "100M",
            node_links: &[],
            files: vec![256 * MIB / scale],
            read: true,
        },
        Case {
            name: "slow-miner",
            up: "20M",
            down: "100M",
            node_links: &["3=1M"],
            files: vec![32 * MIB / scale; 2],
            read: true,
        },
    ];
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for case in cases.iter().filter(|c| only.as_deref().is_none_or(|o| c.name.contains(o))) {
        run(work.path(), &key, case);
    }
    if std::env::var_os("LINK_BENCH_KEEP").is_some() {
        println!("work dir kept: {}", work.keep().display());
    }
}
