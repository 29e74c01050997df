//! Small files in packs: one segment for many files, each read back alone, and gone from the
//! chain with the last file in it.

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

fn note(i: usize) -> Vec<u8> {
    let mut bytes = random_bytes(4096, i as u64);
    bytes.extend_from_slice(format!("note {i}").as_bytes());
    bytes
}

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
    let mut packs = HashSet::new();
    for i in 0..200 {
        packs.insert(m.wait_status(&format!("notes/{i}.txt"), &["active"], MIN));
        packs.insert(m.cess(&format!("notes/{i}.txt"), "fid").unwrap());
    }
    packs.remove("active");
    let big = m.cess("big.bin", "fid").unwrap();
    assert!(!packs.contains(&big), "a file of --pack-below bytes is not packed");
    assert!(!packs.is_empty() && packs.len() <= 3, "200 notes in a few packs: {packs:?}");
    assert!(m.cess("big.bin", "pack").is_none());
    let place = m.cess("notes/7.txt", "pack").unwrap();
    m.wait_status("notes/copy-of-7.txt", &["active"], MIN);
    assert_eq!(m.cess("notes/copy-of-7.txt", "pack").as_deref(), Some(place.as_str()), "equal notes, one blob");
    // Each pack and the big file are charged a segment: 32 MiB of content each.
    let charged = (packs.len() as u64 + 1) * (32 << 20);
    wait_until(Duration::from_secs(10), "df to show the packs", || before - available(&m) == charged);

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
    let mut fids = HashSet::new();
    for name in ["a", "b", "c"] {
        m.wait_status(name, &["active"], MIN);
        fids.insert(m.cess(name, "fid").unwrap());
    }
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
