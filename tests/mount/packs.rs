//! Small files in packs: one segment for many files, each read back alone, and gone from the
//! chain with the last file in it.

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Space the territory has left, in bytes of content (as df shows it).
fn available(m: &Mount) -> u64 {
    let st = statvfs(m.root());
    st.f_bavail * st.f_frsize
}

/// 200 notes take one segment of territory, not 200; equal notes are one blob; an evicted note
/// reads back from its pack, even when the miner of its fragment serves wrong bytes; a file at
/// or above `--pack-below` has its own FID.
#[test]
fn small_files_share_a_pack_and_each_reads_back_alone() {
    let m = Mount::uploading("0.2", &["--pack-below", "1M", "--snapshots", "false", "--devnet-territory-gib", "3"]);
    wait_until(Duration::from_secs(10), "df shows the territory", || available(&m).abs_diff(1 << 30) < 1 << 20);
    let before = available(&m);
    fs::create_dir(m.path("notes")).unwrap();
    for i in 0..200 {
        fs::write(m.path(&format!("notes/{i}.txt")), note(i)).unwrap();
    }
    fs::write(m.path("notes/copy-of-7.txt"), note(7)).unwrap();
    fs::write(m.path("big.bin"), random_bytes(1 << 20, 99)).unwrap();
    m.wait_status("big.bin", &["active"], MIN);
    // However the notes were sealed, under-full packs are merged until one holds them all.
    let fids = || -> HashSet<Option<String>> { (0..200).map(|i| m.cess(&format!("notes/{i}.txt"), "fid")).collect() };
    wait_until(2 * MIN, "the notes to share one pack", || {
        fids().len() == 1 && (0..200).all(|i| m.cess(&format!("notes/{i}.txt"), "status").as_deref() == Some("active"))
    });
    let pack = fids().into_iter().next().flatten().unwrap();
    let big = m.cess("big.bin", "fid").unwrap();
    assert_ne!(pack, big, "a file of --pack-below bytes is not packed");
    assert!(m.cess("big.bin", "pack").is_none());
    let place = m.cess("notes/7.txt", "pack").unwrap();
    m.wait_status("notes/copy-of-7.txt", &["active"], MIN);
    assert_eq!(m.cess("notes/copy-of-7.txt", "pack").as_deref(), Some(place.as_str()), "equal notes, one blob");
    // The pack and the big file are charged a segment each: 32 MiB of content each.
    wait_until(MIN, "df to show one pack and the big file", || before - available(&m) == 2 * (32 << 20));
    let status = run(std::process::Command::new(BIN).arg("status").arg(m.root()));
    assert!(status.contains("packs: 1 stored"), "{status}");

    run(std::process::Command::new(BIN).arg("evict").arg(m.path("notes")));
    assert_eq!(m.cess("notes/3.txt", "cached").as_deref(), Some("no"));
    for i in [0, 3, 199] {
        assert!(fs::read(m.path(&format!("notes/{i}.txt"))).unwrap() == note(i), "note {i} reads back");
    }
    // The miner holding the data fragment of note 5 now lies: the segment is rebuilt.
    let net = m.devnet();
    let fid = m.cess("notes/5.txt", "fid").unwrap();
    let json: serde_json::Value = serde_json::from_str(&m.cess("notes/5.txt", "json").unwrap()).unwrap();
    let fragment = json["pack"]["data_fragment"].as_u64().unwrap() as usize;
    let miner = net.file(&fid).unwrap().segments[0].fragments[fragment].miner;
    let node = net.nodes().into_iter().find(|n| n.account == miner).unwrap();
    net.fault(node.index, "corrupt");
    assert!(fs::read(m.path("notes/5.txt")).unwrap() == note(5), "right bytes around a lying miner");
    net.fault(node.index, "none");
}

/// A pack leaves the chain with the last file in it; a packed file that grows past
/// `--pack-below` moves to its own FID.
#[test]
fn a_pack_leaves_the_chain_with_its_last_file() {
    let m = Mount::uploading("0.2", &["--pack-below", "64K", "--snapshots", "false"]);
    for name in ["a", "b", "c"] {
        fs::write(m.path(name), name.repeat(100)).unwrap();
    }
    let fids = || -> HashSet<Option<String>> { ["a", "b", "c"].iter().map(|n| m.cess(n, "fid")).collect() };
    wait_until(2 * MIN, "a, b and c to share one stored pack", || {
        fids().len() == 1 && ["a", "b", "c"].iter().all(|n| m.cess(n, "status").as_deref() == Some("active"))
    });
    let fids: HashSet<String> = fids().into_iter().flatten().collect();
    let net = m.devnet();
    fs::remove_file(m.path("a")).unwrap();
    fs::write(m.path("b"), random_bytes(100 << 10, 5)).unwrap();
    wait_until(MIN, "b to move to a FID of its own", || {
        m.cess("b", "status").as_deref() == Some("active") && m.cess("b", "pack").is_none()
    });
    assert!(!fids.contains(&m.cess("b", "fid").unwrap()));
    assert!(fids.iter().all(|fid| net.file(fid).is_some()), "c is still in its pack");
    fs::remove_file(m.path("c")).unwrap();
    wait_until(MIN, "the packs to leave the chain", || fids.iter().all(|fid| net.file(fid).is_none()));
    assert!(fs::read(m.path("b")).unwrap() == random_bytes(100 << 10, 5));
}

/// Packed files come back on a fresh data dir from the tree's snapshot, cold, read from their
/// packs.
#[test]
fn packed_files_come_back_on_a_fresh_data_dir() {
    let net = StandaloneDevnet::start();
    let mut first = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "1M"]);
    fs::create_dir(first.path("notes")).unwrap();
    for i in 0..20 {
        fs::write(first.path(&format!("notes/{i}.txt")), note(i)).unwrap();
    }
    for i in 0..20 {
        first.wait_status(&format!("notes/{i}.txt"), &["active"], MIN);
    }
    let before = snapshot(first.root());
    first.unmount_with(&["--wait", "--timeout", "120"]);
    let second = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "1M"]);
    assert!(second.log().contains("restored the tree from snapshot"), "{}", second.log());
    assert_eq!(second.cess("notes/4.txt", "cached").as_deref(), Some("no"), "restored files are cold");
    assert!(second.cess("notes/4.txt", "pack").is_some());
    assert!(snapshot(second.root()) == before, "every name and byte");
}

/// Two packs sealed early, under-full, are merged into one: their files (an evicted one read
/// back from its pack first) move, and the old packs leave the chain.
#[test]
fn under_full_packs_are_merged_and_the_old_ones_leave_the_chain() {
    let m = Mount::uploading("0.2", &["--pack-below", "64K", "--snapshots", "false"]);
    fs::write(m.path("first.txt"), note(1)).unwrap();
    m.wait_status("first.txt", &["active"], MIN);
    let first = m.cess("first.txt", "fid").unwrap();
    run(std::process::Command::new(BIN).arg("evict").arg(m.path("first.txt")));
    fs::write(m.path("second.txt"), note(2)).unwrap();
    let net = m.devnet();
    wait_until(MIN, "the two notes to share a new pack", || {
        let (a, b) = (m.cess("first.txt", "fid"), m.cess("second.txt", "fid"));
        m.cess("first.txt", "status").as_deref() == Some("active") && a == b && a.as_deref() != Some(&first)
    });
    wait_until(MIN, "the first pack to leave the chain", || net.file(&first).is_none());
    assert_eq!(m.cess("first.txt", "cached").as_deref(), Some("no"), "a merge does not fill the cache");
    assert!(fs::read(m.path("first.txt")).unwrap() == note(1));
    assert!(fs::read(m.path("second.txt")).unwrap() == note(2));
}

/// 1,000 notes of 4 KiB, with the defaults: stored, they and the tree's snapshots take at most 5
/// segments' charge (one segment each would be 1,000); each reads back after eviction; the tree
/// comes back on a fresh data dir.
#[test]
fn a_thousand_notes_cost_a_few_segments_and_come_back_on_a_fresh_data_dir() {
    let net = StandaloneDevnet::start();
    let mut first = Mount::uploading("0", &["--chain", &net.url]);
    for d in 0..10 {
        fs::create_dir(first.path(&format!("d{d}"))).unwrap();
        for i in 0..100 {
            fs::write(first.path(&format!("d{d}/{i}.txt")), note(d * 100 + i)).unwrap();
        }
    }
    first.unmount_with(&["--wait", "--timeout", "300"]);
    let charged = net.client().territory_charged();
    assert!(charged <= 5 * (96 << 20), "{} MiB charged", charged >> 20);
    first.mount();
    run(std::process::Command::new(BIN).arg("evict").arg(first.root()));
    for n in [0, 457, 999] {
        assert!(fs::read(first.path(&format!("d{}/{}.txt", n / 100, n % 100))).unwrap() == note(n));
    }
    let before = snapshot(first.root());
    drop(first);
    let second = Mount::uploading("0", &["--chain", &net.url]);
    assert!(second.log().contains("restored the tree from snapshot"), "{}", second.log());
    assert!(snapshot(second.root()) == before, "every name and byte");
}

/// kill -9 while 300 notes are being packed: after the remount every note is stored, each pack
/// was declared once, and nothing was lost.
#[test]
fn kill_9_while_packing_loses_nothing_and_declares_no_pack_twice() {
    let mut m = Mount::uploading("0", &["--snapshots", "false"]);
    for i in 0..300 {
        fs::write(m.path(&format!("{i}.txt")), note(i)).unwrap();
    }
    wait_until(MIN, "packing to begin", || m.log().contains("→ packed"));
    m.kill9();
    m.mount();
    let fids: HashSet<String> = (0..300)
        .map(|i| {
            m.wait_status(&format!("{i}.txt"), &["active"], 2 * MIN);
            m.cess(&format!("{i}.txt"), "fid").unwrap()
        })
        .collect();
    let net = m.devnet();
    for fid in &fids {
        assert_eq!(net.declarations(fid), 1, "pack {fid} declared once");
    }
    run(std::process::Command::new(BIN).arg("evict").arg(m.root()));
    for i in 0..300 {
        assert!(fs::read(m.path(&format!("{i}.txt"))).unwrap() == note(i), "note {i}");
    }
}

/// 20,000 notes of 4 KiB take 3 packs; with 70% of them deleted, the packs fall under half full
/// and are merged into one: the charge drops to one segment, and the rest reads back.
#[test]
fn deleting_most_files_merges_their_packs_and_the_charge_drops() {
    let m = Mount::uploading("0.2", &["--snapshots", "false"]);
    for d in 0..20 {
        fs::create_dir(m.path(&format!("d{d}"))).unwrap();
        for i in 0..1000 {
            fs::write(m.path(&format!("d{d}/{i}")), note(d * 1000 + i)).unwrap();
        }
    }
    let net = m.devnet();
    let segment: u128 = 96 << 20;
    wait_until(5 * MIN, "every note to be stored", || {
        m.cess("d19/999", "status").as_deref() == Some("active") && net.territory_charged() == 3 * segment
    });
    for d in 0..20 {
        for i in (0..1000).filter(|i| i % 10 < 7) {
            fs::remove_file(m.path(&format!("d{d}/{i}"))).unwrap();
        }
    }
    wait_until(5 * MIN, "the packs to be merged into one", || net.territory_charged() == segment);
    run(std::process::Command::new(BIN).arg("evict").arg(m.root()));
    for n in [7, 9_998, 19_999] {
        assert!(fs::read(m.path(&format!("d{}/{}", n / 1000, n % 1000))).unwrap() == note(n), "note {n}");
    }
}

/// kill -9 while under-full packs are merged: after the remount the merge finishes, every note
/// reads back, the old packs leave the chain, and no pack was declared twice.
#[test]
fn kill_9_during_a_merge_loses_nothing_and_declares_no_pack_twice() {
    let mut m = Mount::uploading("0", &["--snapshots", "false"]);
    let fids = |m: &Mount| -> HashSet<String> { (0..600).filter_map(|i| m.cess(&format!("{i}.txt"), "fid")).collect() };
    let stored = |m: &Mount| (0..600).all(|i| m.cess(&format!("{i}.txt"), "status").as_deref() == Some("active"));
    // Two batches, each sealed alone: two under-full packs.
    for i in 0..300 {
        fs::write(m.path(&format!("{i}.txt")), note(i)).unwrap();
    }
    wait_until(MIN, "the first batch to be stored", || {
        (0..300).all(|i| m.cess(&format!("{i}.txt"), "status").as_deref() == Some("active"))
    });
    for i in 300..600 {
        fs::write(m.path(&format!("{i}.txt")), note(i)).unwrap();
    }
    // Killed once the files are packed again, before their new pack is stored.
    wait_until(MIN, "the merge", || m.log().contains("under-full packs:"));
    let before: HashSet<String> = fids(&m);
    m.kill9();
    m.mount();
    wait_until(3 * MIN, "the notes to share one stored pack", || stored(&m) && fids(&m).len() == 1);
    let net = m.devnet();
    let all: HashSet<String> = before.union(&fids(&m)).cloned().collect();
    for fid in &all {
        assert!(net.declarations(fid) <= 1, "pack {fid} declared once");
    }
    let now = fids(&m);
    wait_until(MIN, "the old packs to leave the chain", || {
        before.iter().filter(|f| !now.contains(*f)).all(|f| net.file(f).is_none())
    });
    run(std::process::Command::new(BIN).arg("evict").arg(m.root()));
    for i in (0..600).step_by(37) {
        assert!(fs::read(m.path(&format!("{i}.txt"))).unwrap() == note(i), "note {i}");
    }
}

/// Notes a merge moves to another pack stay settled while their new pack goes up: their bytes
/// are stored in the old one. `cessfs status --wait` on them returns, their JSON says `moving`,
/// and they read back from CESS meanwhile.
#[test]
fn notes_a_merge_moves_stay_settled_until_their_new_pack_is_stored() {
    let net = StandaloneDevnet::start();
    let chain = net.client();
    let m = Mount::uploading("0", &["--chain", &net.url, "--snapshots", "false"]);
    let json = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&getxattr(&m.path(&format!("{i}.txt")), "user.cess.json").unwrap()).unwrap()
    };
    for i in 0..300 {
        fs::write(m.path(&format!("{i}.txt")), note(i)).unwrap();
    }
    wait_until(MIN, "the first batch to be stored", || (0..300).all(|i| json(i)["status"] == "active"));
    // A second batch, stored in a pack of its own; then both under-full packs are merged, and
    // the merge's pack waits in the chain's pool.
    m.arm("merge-read");
    for i in 300..600 {
        fs::write(m.path(&format!("{i}.txt")), note(i)).unwrap();
    }
    m.wait_hook("merge-read", MIN);
    chain.run(chain.chain.hold_declarations(true)).unwrap();
    m.release("merge-read");
    wait_until(MIN, "the merged pack to wait in the pool", || chain.run(chain.chain.pooled()).unwrap() > 0);
    let moving: Vec<usize> = (0..600).filter(|&i| json(i)["moving"] == true).collect();
    assert!(moving.len() >= 300, "the merge moves the notes of one pack at least: {}", moving.len());
    assert!(moving.iter().all(|&i| json(i)["status"] != "active"), "moving: the new pack is not stored");
    let paths: Vec<String> = moving.iter().map(|i| m.path(&format!("{i}.txt")).display().to_string()).collect();
    run(std::process::Command::new(BIN).args(["status", "--wait", "--timeout", "30"]).args(&paths));
    run(std::process::Command::new(BIN).arg("evict").arg(m.path(&format!("{}.txt", moving[0]))));
    assert!(fs::read(m.path(&format!("{}.txt", moving[0]))).unwrap() == note(moving[0]), "read from the old pack");
    chain.run(chain.chain.hold_declarations(false)).unwrap();
    wait_until(MIN, "every note to be stored", || (0..600).all(|i| json(i)["status"] == "active"));
    assert!((0..600).all(|i| json(i)["moving"] == false));
}
