//! Cold reads on a real mount with its embedded devnet: files whose cached content was evicted
//! come back from the nodes, byte for byte, around stopped, slow and lying nodes, and never as
//! wrong bytes.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use cessfs::format::DATA_FRAGMENTS;
use cessfs::protocol::AccountId;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Writes `files` (name, bytes), waits until all are active, and evicts them with `cessfs evict`.
fn stored_and_evicted(files: &[(&str, &[u8])]) -> Mount {
    stored_and_evicted_with(&[], files)
}

/// [`stored_and_evicted`] on a mount with `args`.
fn stored_and_evicted_with(args: &[&str], files: &[(&str, &[u8])]) -> Mount {
    let m = Mount::uploading("0", args);
    for (name, data) in files {
        fs::write(m.path(name), data).unwrap();
    }
    for (name, _) in files {
        m.wait_status(name, &["active"], 2 * MIN);
        assert_eq!(m.cess(name, "cached").as_deref(), Some("yes"));
    }
    evict(&m);
    m
}

fn evict(m: &Mount) {
    let out = run(Command::new(BIN).arg("evict").arg(m.root()));
    assert!(out.contains("evicted"), "{out}");
}

/// The accounts of the miners holding fragment `j` of each segment of `rel`.
fn holders(m: &Mount, rel: &str, fragments: std::ops::Range<usize>) -> Vec<AccountId> {
    let file = m.devnet().file(&m.cess(rel, "fid").unwrap()).unwrap();
    let mut out: Vec<AccountId> =
        file.segments.iter().flat_map(|s| s.fragments[fragments.clone()].iter().map(|f| f.miner)).collect();
    out.sort_by_key(|a| a.to_string());
    out.dedup();
    out
}

/// Node indexes (1-based) of `accounts`.
fn node_indexes(m: &Mount, accounts: &[AccountId]) -> Vec<usize> {
    m.devnet().nodes().iter().filter(|n| accounts.contains(&n.account)).map(|n| n.index).collect()
}

fn read_at(m: &Mount, rel: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = File::open(m.path(rel))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[test]
fn evicted_files_read_back_byte_for_byte() {
    // 3 segments: a read from the middle one fetches only it.
    let big = random_bytes(80 << 20, 11);
    let small = random_bytes(1000, 12);
    let m = stored_and_evicted(&[("three.bin", &big), ("small.txt", &small)]);
    assert_eq!(m.cess("three.bin", "cached").as_deref(), Some("no"));
    let status = run(Command::new(BIN).arg("status").arg(m.root()));
    assert!(
        status.lines().any(|l| l.starts_with("active") && l.contains(" no ") && l.contains("three.bin")),
        "{status}"
    );
    // The content files hold no data any more (the disk space is back).
    let middle = (40 << 20) + 12345;
    let reader = File::open(m.path("three.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    reader.read_exact_at(&mut buf, middle).unwrap();
    assert!(buf == big[middle as usize..][..1 << 20]);
    // The read got its blocks first; its segment is kept once all of it is in, while the file
    // is open (a fetch that ends after the last close is dropped).
    wait_until(MIN, "the segment read to be cached", || m.cess("three.bin", "cached").unwrap().starts_with("partly"));
    let cached = m.cess("three.bin", "cached").unwrap();
    assert!(cached.contains("/3"), "only the segments read are cached: {cached}");
    drop(reader);
    // Random ranges, some across segment boundaries.
    let mut x = 7u64;
    for _ in 0..20 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let off = (x >> 20) % big.len() as u64;
        let len = ((x >> 8) % (3 << 20)) as usize;
        let len = len.min(big.len() - off as usize);
        assert!(read_at(&m, "three.bin", off, len).unwrap() == big[off as usize..][..len], "range {off}+{len}");
    }
    assert!(fs::read(m.path("three.bin")).unwrap() == big, "whole file");
    assert_eq!(m.cess("three.bin", "cached").as_deref(), Some("yes"));
    assert_eq!(fs::read(m.path("small.txt")).unwrap(), small);
    // Evicted content stays evicted across a remount, and reads still come back.
    evict(&m);
    let mut m = m;
    m.remount();
    assert_eq!(m.cess("small.txt", "cached").as_deref(), Some("no"));
    assert_eq!(fs::read(m.path("small.txt")).unwrap(), small);
    // Appending to an evicted file fetches it first, and the new version is uploaded whole.
    let mut f = File::options().append(true).open(m.path("three.bin")).unwrap();
    std::io::Write::write_all(&mut f, b"tail").unwrap();
    drop(f);
    let mut longer = big.clone();
    longer.extend_from_slice(b"tail");
    assert!(fs::read(m.path("three.bin")).unwrap() == longer);
    m.wait_status("three.bin", &["active"], 2 * MIN);
    evict(&m);
    assert!(fs::read(m.path("three.bin")).unwrap() == longer, "the appended version reads back from CESS");
    // Truncating an evicted file keeps the bytes below the cut.
    evict(&m);
    File::options().write(true).open(m.path("three.bin")).unwrap().set_len(5 << 20).unwrap();
    assert!(fs::read(m.path("three.bin")).unwrap() == longer[..5 << 20]);
}

#[test]
fn reads_survive_eight_nodes_down_slow_nodes_and_lying_nodes() {
    let data = random_bytes(50 << 20, 21);
    let m = stored_and_evicted(&[("f.bin", &data)]);
    let net = m.devnet();
    // All holders of data fragments, plus nodes holding nothing, up to 8.
    let data_holders = holders(&m, "f.bin", 0..DATA_FRAGMENTS);
    let all_holders = holders(&m, "f.bin", 0..12);
    let mut down = node_indexes(&m, &data_holders);
    let idle: Vec<usize> = net.nodes().iter().filter(|n| !all_holders.contains(&n.account)).map(|n| n.index).collect();
    down.extend(idle.iter().take(8 - down.len().min(8)));
    assert!(down.len() >= 8, "8 nodes to stop: {down:?}");
    for &i in &down {
        net.fault(i, "down");
    }
    assert!(fs::read(m.path("f.bin")).unwrap() == data, "read from parity with 8 of 16 nodes down");
    for &i in &down {
        net.fault(i, "none");
    }

    // A node that serves altered bytes: the read is right and the log names it.
    evict(&m);
    let fid = m.cess("f.bin", "fid").unwrap();
    let file = net.file(&fid).unwrap();
    let liar = file.segments[0].fragments[1].miner;
    let node = net.nodes().into_iter().find(|n| n.account == liar).unwrap();
    net.fault(node.index, "corrupt");
    assert!(fs::read(m.path("f.bin")).unwrap() == data, "right bytes around a corrupt fragment");
    let log = m.log();
    assert!(log.contains(&format!("miner {liar} served block")), "log names the miner:\n{log}");

    // The block's miner silent and another data fragment's miner lying: the rebuild beside the
    // silent one leaves the liar out, and the read never waits out the silent one's stall window.
    evict(&m);
    let silent = net.nodes().into_iter().find(|n| n.account == file.segments[0].fragments[0].miner).unwrap();
    net.fault(silent.index, "timeout");
    let before = m.log().len();
    assert!(read_at(&m, "f.bin", 0, 4096).unwrap() == data[..4096], "right bytes");
    let log = m.log()[before..].to_string();
    assert!(log.contains("leaving out fragments that did not authenticate"), "{log}");
    assert!(!log.contains("stalled"), "nothing waited out a stall window:\n{log}");
    net.fault(silent.index, "none");
    net.fault(node.index, "none");

    // A node that accepts and never answers holds a read up by about a second, not a timeout.
    evict(&m);
    let slow = node_indexes(&m, &holders(&m, "f.bin", 0..1));
    for &i in &slow {
        net.fault(i, "timeout");
    }
    let t = Instant::now();
    assert!(read_at(&m, "f.bin", 0, 4096).unwrap() == data[..4096]);
    assert!(t.elapsed() < Duration::from_secs(8), "slow miner routed around in {:?}", t.elapsed());
    // Meanwhile stat and listing are not held up by a read waiting on the network.
    for &i in &slow {
        net.fault(i, "none");
    }
}

#[test]
fn too_few_fragments_is_eio_never_wrong_bytes() {
    // Large enough that no data fragment of its one segment is all zeros.
    let data = random_bytes(30 << 20, 31);
    let m = stored_and_evicted(&[("f.bin", &data)]);
    let net = m.devnet();
    let holders = holders(&m, "f.bin", 0..12);
    let nodes = node_indexes(&m, &holders);
    // 9 of the 12 holders down: 3 fragments are left, one short.
    for &i in &nodes[..9] {
        net.fault(i, "down");
    }
    let Err(err) = fs::read(m.path("f.bin")) else { panic!("the read must fail") };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let fid = m.cess("f.bin", "fid").unwrap();
    let log = m.log();
    assert!(log.contains(&format!("segment 0 of {fid}")), "the log names the FID and segment:\n{log}");
    // Other files and the namespace are unaffected; once the nodes are back the file reads.
    fs::write(m.path("other.txt"), b"still writable").unwrap();
    for &i in &nodes[..9] {
        net.fault(i, "none");
    }
    assert!(fs::read(m.path("f.bin")).unwrap() == data);
}

#[test]
fn a_blocked_cold_read_does_not_stall_stat_or_listing() {
    let data = random_bytes(3 << 20, 41);
    let m = stored_and_evicted(&[("f.bin", &data)]);
    let net = m.devnet();
    let all = node_indexes(&m, &holders(&m, "f.bin", 0..12));
    for &i in &all {
        net.fault(i, "timeout");
    }
    let path = m.path("f.bin");
    let reader = std::thread::spawn(move || fs::read(path));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    for _ in 0..20 {
        fs::metadata(m.path("f.bin")).unwrap();
        fs::read_dir(m.root()).unwrap().for_each(drop);
    }
    assert!(t.elapsed() < Duration::from_secs(2), "stat and readdir took {:?}", t.elapsed());
    for &i in &all {
        net.fault(i, "none");
    }
    let read = reader.join().unwrap();
    // The read either waited for the nodes to come back or failed after the miner timeout:
    // never wrong bytes.
    if let Ok(bytes) = read {
        assert!(bytes == data);
    }
}

#[test]
fn the_cache_stays_within_its_limit() {
    let m = Mount::uploading("0", &["--cache-size", "40M"]);
    let files: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(20 << 20, 50 + i)).collect();
    for (i, d) in files.iter().enumerate() {
        fs::write(m.path(&format!("file{i}")), d).unwrap();
    }
    for i in 0..4 {
        m.wait_status(&format!("file{i}"), &["active"], 2 * MIN);
    }
    let cached = |m: &Mount| (0..4).filter(|i| m.cess(&format!("file{i}"), "cached").as_deref() != Some("no")).count();
    wait_until(Duration::from_secs(20), "eviction down to the limit", || cached(&m) <= 2);
    // Reading them all back keeps it there, evicting the least recently used.
    for (i, d) in files.iter().enumerate() {
        assert!(fs::read(m.path(&format!("file{i}"))).unwrap() == *d);
        assert!(cached(&m) <= 3, "at most the limit plus the file being read");
    }
    wait_until(Duration::from_secs(20), "eviction down to the limit", || cached(&m) <= 2);
    assert_eq!(m.cess("file3", "cached").as_deref(), Some("yes"), "the most recently read stays");
}

/// A cold file opened through the daemon keeps that mode for every handle opened while it is
/// open, even once all of it is fetched (the kernel refuses to mix passthrough and daemon opens
/// of one inode); once closed, it opens by passthrough again (as root). Which mode served a read
/// shows in the bytes the daemon read (passthrough reads never reach it): on a kernel without
/// passthrough, this fails.
#[test]
fn handles_of_a_file_share_one_mode_while_it_is_open() {
    let data = random_bytes(40 << 20, 41);
    let port = free_port();
    let m = stored_and_evicted_with(&["--metrics", &port.to_string()], &[("f.bin", &data)]);
    let daemon_read = || total(&http_get(port, "/metrics"), "cessfs_read_bytes_total");
    let first = File::open(m.path("f.bin")).unwrap();
    let mut all = vec![0u8; data.len()];
    first.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data);
    assert_eq!(m.cess("f.bin", "cached").as_deref(), Some("yes"));
    let second = File::open(m.path("f.bin")).expect("a second open while the first is open");
    let before = daemon_read();
    let mut part = vec![0u8; 1 << 20];
    second.read_exact_at(&mut part, 7 << 20).unwrap();
    assert!(part == data[7 << 20..8 << 20]);
    assert!(daemon_read() >= before + (1 << 20) as f64, "the second handle reads through the daemon, as the first");
    let writer = File::options().append(true).open(m.path("f.bin")).expect("a writer too");
    drop((first, second, writer));
    // The kernel sends the releases after close() returns: opens meanwhile still see it open.
    wait_until(Duration::from_secs(10), "an open by passthrough once every handle is closed", || {
        let before = daemon_read();
        assert!(fs::read(m.path("f.bin")).unwrap() == data);
        daemon_read() == before
    });
}

/// What moved, as the nodes count it: an upload sends each column once (12 PUTs a segment, each
/// one fragment), and a cold read fetches no more than 1.1× the data fragments it needs.
#[test]
fn an_upload_sends_each_column_once_and_a_cold_read_fetches_what_it_needs() {
    let net_total = |m: &Mount| {
        m.devnet().nodes().iter().fold(cessfs::devnet::NodeCounters::default(), |mut t, n| {
            t.bytes_in += n.counters.bytes_in;
            t.bytes_out += n.counters.bytes_out;
            t.puts += n.counters.puts;
            t.gets += n.counters.gets;
            t.refusals += n.counters.refusals;
            t
        })
    };
    let m = Mount::uploading("0", &["--snapshots", "false"]);
    let before = net_total(&m);
    let data = random_bytes(40 << 20, 91);
    fs::write(m.path("two.bin"), &data).unwrap();
    m.wait_status("two.bin", &["active"], 2 * MIN);
    let pushed = net_total(&m);
    let fragment = 8u64 << 20;
    assert_eq!(pushed.puts - before.puts, 24, "12 columns of 2 segments, each sent once: {pushed:?}");
    assert!(pushed.bytes_in - before.bytes_in <= 24 * (fragment + 4096), "{pushed:?}");
    assert_eq!(pushed.refusals, before.refusals, "nothing refused: {pushed:?}");

    evict(&m);
    assert!(fs::read(m.path("two.bin")).unwrap() == data);
    let read = net_total(&m);
    let needed = 2 * DATA_FRAGMENTS as u64 * fragment;
    let fetched = read.bytes_out - pushed.bytes_out;
    assert!(fetched <= needed * 11 / 10, "fetched {fetched} bytes for {needed} of data fragments: {read:?}");
}

/// On a shaped link (the devnet's link model: shared buckets both ways, a round trip per
/// request), a file is stored and read back cold byte for byte, and the nodes count what moved.
#[test]
fn a_file_goes_and_comes_back_over_a_shaped_link() {
    let m = Mount::uploading("0", &["--snapshots", "false", "--devnet-link", "up=800M,down=800M,rtt=20ms"]);
    let data = random_bytes(9 << 20, 93);
    fs::write(m.path("shaped.bin"), &data).unwrap();
    m.wait_status("shaped.bin", &["active"], 2 * MIN);
    evict(&m);
    assert!(fs::read(m.path("shaped.bin")).unwrap() == data);
    let nodes = m.devnet().nodes();
    let (puts, out): (u64, u64) =
        nodes.iter().map(|n| (n.counters.puts, n.counters.bytes_out)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(puts, 12, "one segment, each column once");
    assert!(out >= data.len() as u64, "the read came through the nodes: {out} bytes");
}

/// A file is sealed in blocks of 1 MiB (format version 3): a read needs only the miner holding
/// its block. With every other holder down, a read of the file's start (in data fragment 0)
/// returns the right bytes, one in another data fragment fails; never wrong bytes.
#[test]
fn a_read_needs_only_the_miner_holding_its_block() {
    let data = random_bytes(30 << 20, 32);
    let m = stored_and_evicted(&[("video.mp4", &data)]);
    let net = m.devnet();
    let first = holders(&m, "video.mp4", 0..1);
    let others: Vec<AccountId> = holders(&m, "video.mp4", 1..12).into_iter().filter(|a| !first.contains(a)).collect();
    for &i in &node_indexes(&m, &others) {
        net.fault(i, "down");
    }
    assert!(read_at(&m, "video.mp4", 100, 4096).unwrap() == data[100..4196], "the first block, from its one miner");
    let far = 20 << 20;
    assert!(read_at(&m, "video.mp4", far, 4096).is_err(), "a block whose miners are all down is an error");
    for &i in &node_indexes(&m, &others) {
        net.fault(i, "none");
    }
    assert!(read_at(&m, "video.mp4", far, 4096).unwrap() == data[far as usize..][..4096]);
}
