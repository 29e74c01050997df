//! Uploads and reads over a link that is not loopback's: the embedded devnet's link model, a
//! node that stalls mid-transfer, and a daemon killed mid-push. What is asserted is what moved
//! (the nodes' counters, the file records on chain), not how long it took.

use std::fs;
use std::process::Command;
use std::time::Duration;

use cessfs::devnet::NodeCounters;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// The nodes' counters, summed.
fn moved(m: &Mount) -> NodeCounters {
    m.devnet().nodes().iter().map(|n| n.counters).fold(NodeCounters::default(), |a, c| NodeCounters {
        bytes_in: a.bytes_in + c.bytes_in,
        bytes_out: a.bytes_out + c.bytes_out,
        puts: a.puts + c.puts,
        gets: a.gets + c.gets,
        refusals: a.refusals + c.refusals,
        stalls: a.stalls + c.stalls,
    })
}

fn evict(m: &Mount) {
    let out = run(Command::new(BIN).arg("evict").arg(m.root()));
    assert!(out.contains("evicted"), "{out}");
}

/// A folder of 3 one-segment files copied in over a shared 160 Mbit/s uplink: 24 fragments go
/// at once, each taking about twice the 5 s stall window, so any fixed limit of that size fails
/// every one. None fails here, no column goes twice, and the cold read fetches what it needs.
#[test]
fn a_folder_over_a_slow_link_goes_up_without_a_failed_push_and_comes_back_at_its_size() {
    let m = Mount::uploading(
        "0",
        &[
            "--snapshots",
            "false",
            "--pack-below",
            "0",
            "--miner-stall",
            "5",
            "--devnet-link",
            "up=160M,down=160M,rtt=20ms",
        ],
    );
    let src = tempfile::tempdir().unwrap();
    let photos = src.path().join("Photos");
    fs::create_dir(&photos).unwrap();
    let files: Vec<(String, Vec<u8>)> =
        (0..3).map(|i| (format!("IMG_{i:04}.jpg"), random_bytes(24 << 20, 240 + i))).collect();
    for (name, data) in &files {
        fs::write(photos.join(name), data).unwrap();
    }
    run(Command::new("cp").arg("-r").arg(&photos).arg(m.root()));
    for (name, _) in &files {
        m.wait_status(&format!("Photos/{name}"), &["active"], 4 * MIN);
    }
    let up = moved(&m);
    let log = m.log();
    assert!(!log.contains("could not go to miner"), "no push failed on a slow link:\n{log}");
    assert_eq!(up.puts, 36, "each of the 3 files' 12 columns went once: {up:?}");
    assert_eq!((up.stalls, up.refusals), (0, 0), "{up:?}");

    evict(&m);
    for (name, data) in &files {
        assert!(fs::read(m.path(&format!("Photos/{name}"))).unwrap() == *data, "{name} reads back cold");
    }
    let down = moved(&m);
    let size: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let fetched = down.bytes_out - up.bytes_out;
    assert!(fetched >= size, "the reads came through the nodes: {fetched} bytes");
    assert!(fetched * 10 <= size * 11, "a read on a slow link fetches at most 1.1x: {fetched} for {size}");
}

/// A miner that takes the start of a fragment and then stops reading is given up after the
/// stall window, and its column goes to another miner: the file is stored on miners that took
/// it whole.
#[test]
fn a_stalling_miner_is_replaced_after_the_stall_window() {
    let m = Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0", "--miner-stall", "3"]);
    let net = m.devnet();
    let stalling: Vec<usize> = net.nodes().iter().take(4).map(|n| n.index).collect();
    for &i in &stalling {
        net.fault(i, "stall");
    }
    // 12 of the 16 nodes are chosen at random: a file that missed all 4 stalling ones (1 in
    // 1820) is followed by another.
    let mut stored = Vec::new();
    for i in 0..3 {
        let name = format!("f{i}.bin");
        fs::write(m.path(&name), random_bytes(24 << 20, 300 + i)).unwrap();
        m.wait_status(&name, &["active"], 3 * MIN);
        stored.push(name);
        if moved(&m).stalls > 0 {
            break;
        }
    }
    let stalls = moved(&m).stalls;
    assert!(stalls > 0, "a stalling node was chosen for one of {} files", stored.len());
    let log = m.log();
    assert!(log.contains("stalled") && log.contains("could not go to miner"), "the log says why:\n{log}");
    let stalling_accounts: Vec<_> =
        net.nodes().iter().filter(|n| stalling.contains(&n.index)).map(|n| n.account).collect();
    for name in &stored {
        let file = net.file(&m.cess(name, "fid").unwrap()).unwrap();
        let miners: Vec<_> = file.segments.iter().flat_map(|s| s.fragments.iter().map(|f| f.miner)).collect();
        assert!(!miners.iter().any(|a| stalling_accounts.contains(a)), "{name} is held by miners that took it whole");
    }
    for &i in &stalling {
        net.fault(i, "none");
    }
}

/// Killed while its 12 columns each had their first segment's fragment taken, the daemon
/// sends only the second segment's after the restart, to the same miners.
#[test]
fn a_restart_mid_push_sends_only_the_missing_fragments() {
    let mut m = Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0"]);
    m.arm("column-placed");
    let data = random_bytes(40 << 20, 330);
    fs::write(m.path("two-segments.bin"), &data).unwrap();
    let reached = |m: &Mount| m.log().matches("hook column-placed reached").count();
    wait_until(2 * MIN, "every column's first fragment taken", || reached(&m) >= 12);
    let before = moved(&m);
    assert_eq!(before.puts, 12, "one fragment per column before the kill: {before:?}");
    m.kill9();
    m.release("column-placed");
    m.mount();
    m.wait_status("two-segments.bin", &["active"], 2 * MIN);
    let after = moved(&m);
    assert_eq!(after.puts, 12, "after the restart only the second segment's 12 fragments went: {after:?}");
    let log = m.log();
    assert!(log.contains("0 columns held by their miners, 12 resumed, 0 to send"), "resumed from the record:\n{log}");
    evict(&m);
    assert!(fs::read(m.path("two-segments.bin")).unwrap() == data);
}
