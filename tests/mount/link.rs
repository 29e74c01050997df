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
    m.devnet().nodes().iter().map(|n| n.counters).sum()
}

fn evict(m: &Mount) {
    let out = run(Command::new(BIN).arg("evict").arg(m.root()));
    assert!(out.contains("evicted"), "{out}");
}

/// A folder of 3 one-segment files copied in over a shared 80 Mbit/s uplink with a 2 s stall
/// window: one flow fills the devnet's link, so the window stays at its start of 4 fragments
/// (fewer than one segment's 12; before it, 24 went at once), each taking nearly twice the stall
/// window, so any fixed limit of that size fails every one. None fails here, no column goes
/// twice, and the cold read fetches what it needs.
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
            "2",
            "--devnet-link",
            "up=80M,down=160M,rtt=20ms",
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
    // While they go: a file's progress in fragment bytes, and the queue in cessfs status.
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_str(&m.cess(&format!("Photos/{name}"), "json").unwrap_or_default()).unwrap_or_default()
    };
    let (mut partly, mut queued) = (None, String::new());
    wait_until(4 * MIN, "a push shown part way, and the queue", || {
        for (name, _) in &files {
            let v = json(name);
            if let (Some(sent), Some(total)) = (v["pushed_bytes"].as_u64(), v["push_bytes"].as_u64())
                && sent > 0
                && sent < total
            {
                partly = Some((sent, total, v["progress"].as_str().unwrap_or_default().to_string()));
            }
        }
        if queued.is_empty() {
            let status = run(Command::new(BIN).arg("status").arg(m.root()));
            if status.lines().any(|l| l.contains("queue:")) {
                queued = status;
            }
        }
        partly.is_some() && !queued.is_empty()
    });
    let (sent, total, progress) = partly.unwrap();
    assert_eq!(total, 12 * (8 << 20), "a one-segment file sends 12 fragments");
    assert!(progress.contains(&format!("({} of 96 MiB)", sent >> 20)), "{progress}");
    assert!(queued.contains("MiB of fragments to push"), "{queued}");
    assert!(queued.contains("fragments at once"), "the window shows in cessfs status: {queued}");
    for (name, _) in &files {
        m.wait_status(&format!("Photos/{name}"), &["active"], 4 * MIN);
    }
    let up = moved(&m);
    let log = m.log();
    assert!(!log.contains("could not go to miner"), "no push failed on a slow link:\n{log}");
    assert_eq!(up.puts, 36, "each of the 3 files' 12 columns went once: {up:?}");
    assert_eq!((up.stalls, up.refusals), (0, 0), "{up:?}");
    assert!(up.most_puts_at_once < 12, "the window widened only while goodput grew: {up:?}");

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

/// A mount uploading at once, every file in its own FID, behind the devnet's link model `link`.
fn uploading_over(link: &str) -> Mount {
    Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0", "--devnet-link", link])
}

/// A mount behind the link model `link` holding `data` as `name`, stored and evicted; with the
/// bytes the nodes had served then.
fn stored_cold_over(link: &str, name: &str, data: Vec<u8>) -> (Mount, Vec<u8>, u64) {
    let m = uploading_over(link);
    fs::write(m.path(name), &data).unwrap();
    m.wait_status(name, &["active"], 3 * MIN);
    evict(&m);
    let before = moved(&m).bytes_out;
    (m, data, before)
}

/// Files written until one had a column on one of `faulty` nodes (12 of 16 are chosen at
/// random: a file missing them all, 1 in 1820 for 4 and 1 in 20 for 2, is followed by another).
/// Returns their names.
fn until_one_lands_on(m: &Mount, faulty: &[usize], hit: impl Fn(&NodeCounters) -> bool) -> Vec<String> {
    let mut stored = Vec::new();
    for i in 0..3 {
        let name = format!("f{i}.bin");
        fs::write(m.path(&name), random_bytes(24 << 20, 300 + i)).unwrap();
        m.wait_status(&name, &["active"], 3 * MIN);
        stored.push(name);
        let counters: Vec<_> =
            m.devnet().nodes().into_iter().filter(|n| faulty.contains(&n.index)).map(|n| n.counters).collect();
        if counters.iter().any(&hit) {
            return stored;
        }
    }
    panic!("none of {} files had a column on nodes {faulty:?}", stored.len());
}

/// The files `names` are held only by miners other than `faulty`.
fn held_elsewhere(m: &Mount, names: &[String], faulty: &[usize]) {
    let net = m.devnet();
    let accounts: Vec<_> = net.nodes().iter().filter(|n| faulty.contains(&n.index)).map(|n| n.account).collect();
    for name in names {
        let file = net.file(&m.cess(name, "fid").unwrap()).unwrap();
        let miners: Vec<_> = file.segments.iter().flat_map(|s| s.fragments.iter().map(|f| f.miner)).collect();
        assert!(!miners.iter().any(|a| accounts.contains(a)), "{name} is held by miners that took it whole");
    }
}

/// A miner that takes the start of a fragment and then stops reading is given up after the
/// stall window, and its column goes to another miner: the file is stored on miners that took
/// it whole.
#[test]
fn a_stalling_miner_is_replaced_after_the_stall_window() {
    let port = free_port().to_string();
    let m =
        Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0", "--miner-stall", "3", "--metrics", &port]);
    let stalling: Vec<usize> = m.devnet().nodes().iter().take(4).map(|n| n.index).collect();
    for &i in &stalling {
        m.devnet().fault(i, "stall");
    }
    let stored = until_one_lands_on(&m, &stalling, |c| c.stalls > 0);
    let log = m.log();
    assert!(log.contains("stalled") && log.contains("could not go to miner"), "the log says why:\n{log}");
    held_elsewhere(&m, &stored, &stalling);
    let metrics = http_get(port.parse().unwrap(), "/metrics");
    assert!(sample(&metrics, "cessfs_stalled_requests_total{direction=\"up\"}") >= Some(1.0), "{metrics}");
    assert!(sample(&metrics, "cessfs_wasted_bytes_total{direction=\"up\"}") > Some(0.0), "{metrics}");
}

/// A miner far slower than the others of its file (256 KiB/s beside loopback), which never
/// stalls, is replaced once the others are done: the file does not wait for it.
#[test]
fn a_miner_far_slower_than_the_others_is_replaced() {
    let port = free_port().to_string();
    let m = Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0", "--metrics", &port]);
    // Two: a later round that picks the other one replaces it too (by the first round's pace).
    let slow: Vec<usize> = m.devnet().nodes().iter().take(2).map(|n| n.index).collect();
    for &i in &slow {
        m.devnet().fault(i, "slow");
    }
    let stored = until_one_lands_on(&m, &slow, |c| c.puts > 0);
    let log = m.log();
    assert!(log.contains("was replaced") && !log.contains("stalled"), "replaced for its pace:\n{log}");
    held_elsewhere(&m, &stored, &slow);
    // What the replaced column had sent was for nothing, and counted so.
    let metrics = http_get(port.parse().unwrap(), "/metrics");
    assert!(sample(&metrics, "cessfs_wasted_bytes_total{direction=\"up\"}") > Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, "cessfs_stalled_requests_total{direction=\"up\"}"), None, "{metrics}");
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

/// A seek into a cold file (a video's middle) fetches the segment it lands in, not the ones
/// after it; reading on from there brings the read-ahead back.
#[test]
fn a_seek_into_a_cold_file_fetches_its_segment_and_no_read_ahead() {
    use std::os::unix::fs::FileExt;
    let m = Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0"]);
    let data = random_bytes(200 << 20, 350);
    fs::write(m.path("video.mp4"), &data).unwrap();
    m.wait_status("video.mp4", &["active"], 3 * MIN);
    evict(&m);
    let before = moved(&m).bytes_out;
    let f = fs::File::open(m.path("video.mp4")).unwrap();
    let at = 70u64 << 20;
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact_at(&mut buf, at).unwrap();
    assert!(buf == data[at as usize..at as usize + buf.len()]);
    let read_ahead = |m: &Mount| {
        let json: serde_json::Value = serde_json::from_str(&m.cess("video.mp4", "json").unwrap()).unwrap();
        json["read_ahead"].as_u64()
    };
    assert_eq!(read_ahead(&m), Some(0), "nothing is fetched ahead of a seek");
    let seek = moved(&m).bytes_out - before;
    assert!(seek <= 33 << 20, "one segment's data fragments for a seek: {seek} bytes");
    // Read on, in order: the next segments come ahead of the reader.
    let mut off = at + buf.len() as u64;
    while off < at + (40 << 20) {
        f.read_exact_at(&mut buf, off).unwrap();
        off += buf.len() as u64;
    }
    assert!(read_ahead(&m) >= Some(1), "a reader reading on is read ahead of");
    wait_until(MIN, "the read-ahead past the reader", || moved(&m).bytes_out - before >= 3 * (32 << 20));
}

/// A miner that lost what it took (its disk replaced while the daemon was down) is found out by
/// a 1-byte ranged read at the restart: its column goes again, whole, to another miner, instead
/// of resuming on a miner that would never hold it all and never report it.
#[test]
fn a_restart_sends_again_the_column_a_miner_lost() {
    let mut m = Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0"]);
    m.arm("column-placed");
    fs::write(m.path("two-segments.bin"), random_bytes(40 << 20, 331)).unwrap();
    let reached = |m: &Mount| m.log().matches("hook column-placed reached").count();
    wait_until(2 * MIN, "every column's first fragment taken", || reached(&m) >= 12);
    let holder = m.devnet().nodes().into_iter().find(|n| n.counters.puts > 0).expect("a node took a fragment");
    m.devnet().fault(holder.index, "lost");
    m.kill9();
    m.release("column-placed");
    m.mount();
    m.wait_status("two-segments.bin", &["active"], 2 * MIN);
    let log = m.log();
    assert!(log.contains("no longer holds column"), "the lost column was found out:\n{log}");
    assert!(log.contains("0 columns held by their miners, 11 resumed, 1 to send"), "{log}");
    let after = moved(&m);
    assert_eq!(after.puts, 13, "11 second fragments, and the lost column's two: {after:?}");
    held_elsewhere(&m, &["two-segments.bin".to_string()], &[holder.index]);
}

/// Two files of the same bytes (one FID, one deal) saved together over a slow uplink: one of
/// them pushes the deal while the other waits for it, so each column goes to one miner once,
/// and both become active.
#[test]
fn two_files_of_equal_bytes_push_their_one_deal_once() {
    let m = uploading_over("up=100M,down=160M,rtt=20ms");
    let data = random_bytes(24 << 20, 360);
    fs::write(m.path("original.jpg"), &data).unwrap();
    fs::write(m.path("copy.jpg"), &data).unwrap();
    m.wait_status("original.jpg", &["active"], 3 * MIN);
    m.wait_status("copy.jpg", &["active"], 3 * MIN);
    assert_eq!(m.cess("original.jpg", "fid"), m.cess("copy.jpg", "fid"));
    let up = moved(&m);
    assert_eq!(up.puts, 12, "each column of the one deal went once: {up:?}");
    let log = m.log();
    assert!(!log.contains("could not go to miner"), "{log}");
}

/// A program that looks at the first bytes of a cold file and closes it (a file manager's
/// preview) gets them from one block, and the rest of the segment, fetched for a reader that is
/// gone, stops coming.
#[test]
fn a_closed_file_stops_the_fetch_only_it_wanted() {
    let (m, data, before) = stored_cold_over("up=1000M,down=40M,rtt=20ms", "movie.mkv", random_bytes(30 << 20, 370));
    let mut head = [0u8; 64];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(m.path("movie.mkv")).unwrap(), &mut head, 0).unwrap();
    assert!(head[..] == data[..64]);
    wait_until(MIN, "the fetch given up", || m.log().contains("the file was closed before it came"));
    let sent = moved(&m).bytes_out - before;
    assert!(sent < 16 << 20, "a look at the first bytes fetched {sent} bytes, not the segment");
    assert!(fs::read(m.path("movie.mkv")).unwrap() == data, "read whole afterwards");
}

/// Ctrl-C on a program reading a cold file over a slow link ends it at once: its read answers
/// EINTR while the block it waits for is still on its way (the kernel holds a process killed
/// mid-read until the read is answered), and the fetch that only it wanted stops.
#[test]
fn ctrl_c_ends_a_cold_read_without_waiting_for_its_block() {
    use std::os::unix::process::ExitStatusExt;
    let (m, _, before) = stored_cold_over("up=1000M,down=200k,rtt=20ms", "film.mkv", random_bytes(8 << 20, 380));
    let mut cat = Command::new("cat").arg(m.path("film.mkv")).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_until(MIN, "the first block on its way", || moved(&m).bytes_out > before);
    // SAFETY: kill(2) of the child this test started.
    unsafe { libc::kill(cat.id() as i32, libc::SIGINT) };
    let mut ended = None;
    wait_until(MIN, "cat to end", || {
        ended = cat.try_wait().unwrap();
        ended.is_some()
    });
    let sent = moved(&m).bytes_out - before;
    assert!(sent < 1 << 20, "cat ended before its first block (1 MiB, 42 s at 200 kbit/s) came: {sent} bytes");
    assert_eq!(ended.and_then(|s| s.signal()), Some(libc::SIGINT));
    wait_until(MIN, "the fetch given up", || m.log().contains("the file was closed before it came"));
}
