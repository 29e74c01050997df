//! From close() to active, on a real mount with its embedded devnet: what the nodes hold, what
//! the ledger recorded, and what `getfattr` and `cessfs status` show.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cessfs::format::{FRAGMENTS, decode_file, sha256};

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Reads the fragments the devnet's nodes hold for `fid` (a file of `size` bytes: the ledger
/// has whole segments), checks each against the hash the ledger recorded, and decodes them.
fn fetch_from_nodes(m: &Mount, fid: &str, size: usize) -> Vec<u8> {
    let net = m.devnet();
    let file = net.file(fid).expect("File record on the ledger");
    assert!(file.active);
    let nodes = net.nodes();
    let endpoint_of =
        |account| nodes.iter().find(|n| n.account == account).map(|n| n.endpoint.clone()).expect("miner is a node");
    let mut fragments = Vec::new();
    for seg in &file.segments {
        let mut per = Vec::new();
        for frag in &seg.fragments {
            let endpoint = endpoint_of(frag.miner);
            let bytes = net
                .fragment(&endpoint, fid, &frag.hash)
                .unwrap_or_else(|| panic!("fragment {} missing on {endpoint}", frag.hash.to_hex()));
            assert_eq!(sha256(&bytes), frag.hash, "fragment bytes on the node hash to the recorded hash");
            per.push(bytes);
        }
        fragments.push(per);
    }
    assert_eq!(file.file_size as usize, file.segments.len() << 25, "the declared size is whole segments");
    let manifest = cessfs::format::FileManifest::new(
        size as u64,
        file.segments
            .iter()
            .map(|s| cessfs::format::SegmentManifest {
                hash: s.hash,
                fragments: std::array::from_fn(|j| s.fragments[j].hash),
            })
            .collect(),
    );
    assert_eq!(manifest.fid.to_hex(), fid, "the ledger's segments give back the FID");
    let mut out = Vec::new();
    let key = m.master_key();
    decode_file(&manifest, Some(&key), |s, f| Some(fragments[s][f].clone()), |b| out.extend_from_slice(b))
        .expect("decode");
    out
}

#[test]
fn big_file_and_tree_reach_active_and_decode_from_the_nodes() {
    let m = Mount::uploading("0.3", &["--pack-below", "0"]);
    let big = random_bytes(100 << 20, 1);
    fs::write(m.path("big.bin"), &big).unwrap();
    let src = tempfile::tempdir().unwrap();
    for d in ["t", "t/a", "t/a/b"] {
        fs::create_dir_all(src.path().join(d)).unwrap();
    }
    for i in 0..12 {
        fs::write(src.path().join(["t", "t/a", "t/a/b"][i % 3]).join(format!("small {i}.txt")), format!("file {i}"))
            .unwrap();
    }
    run(Command::new("cp").arg("-a").arg(src.path().join("t")).arg(m.root()));
    let out = run(Command::new(BIN).args(["status", "--wait", "--timeout", "240"]).arg(m.root()));
    assert_eq!(out.lines().filter(|l| l.starts_with("active")).count(), 13, "{out}");
    let fid = m.cess("big.bin", "fid").expect("fid");
    assert!(fetch_from_nodes(&m, &fid, big.len()) == big, "the nodes' fragments decode to the original bytes");
    for i in [0, 4, 11] {
        let rel = format!("{}/small {i}.txt", ["t", "t/a", "t/a/b"][i % 3]);
        let fid = m.cess(&rel, "fid").expect("fid");
        let want = format!("file {i}").into_bytes();
        assert_eq!(fetch_from_nodes(&m, &fid, want.len()), want);
    }
    // What getfattr -d shows.
    let dump = run(Command::new("getfattr").arg("-d").arg(m.path("big.bin")));
    for want in [
        "user.cess.status=\"active\"",
        &format!("user.cess.fid=\"{fid}\""),
        "user.cess.progress=\"stored: 4 segments on 12 miners\"",
        "user.cess.tx=\"0x",
        "user.cess.block=",
        "user.cess.territory=\"cessfs\"",
        "user.cess.json=",
    ] {
        assert!(dump.contains(want), "{want} in {dump}");
    }
    let json: serde_json::Value = serde_json::from_str(&m.cess("big.bin", "json").unwrap()).unwrap();
    assert_eq!((json["pushed"].as_u64(), json["reported"].as_u64()), (Some(12), Some(12)));
    let status = run(Command::new(BIN).args(["status", "--json"]).arg(m.path("big.bin")));
    assert!(status.contains("\"status\":\"active\""), "{status}");
}

#[test]
fn temp_file_renamed_within_the_quiet_delay_uploads_once_under_its_final_name() {
    // Plaintext mode, where the name on chain is the real one.
    let m = Mount::uploading("2", &["--plain", "true"]);
    let tmp = m.path(".goutputstream-ABC123");
    let mut f = File::create(&tmp).unwrap();
    f.write_all(b"saved by an editor").unwrap();
    drop(f);
    fs::rename(&tmp, m.path("report.odt")).unwrap();
    m.wait_status("report.odt", &["active"], MIN);
    let fid = m.cess("report.odt", "fid").unwrap();
    let net = m.devnet();
    assert_eq!(net.declarations(&fid), 1);
    let file = net.file(&fid).unwrap();
    assert_eq!(file.owners.len(), 1);
    assert_eq!(file.owners[0].file_name, b"report.odt");
    let all_events = net.run(net.chain.events()).unwrap();
    let declared =
        all_events.iter().filter(|(_, e)| matches!(e, cessfs::devnet::Event::UploadDeclaration { .. })).count();
    assert_eq!(declared, 1, "the temp name was never declared");
}

#[test]
fn kill_9_while_pushing_resumes_the_same_deal() {
    let mut m = Mount::uploading("0.2", &[]);
    let data = random_bytes(300 << 20, 3);
    fs::write(m.path("large.bin"), &data).unwrap();
    m.wait_status("large.bin", &["pushing"], MIN);
    m.kill9();
    m.mount();
    m.wait_status("large.bin", &["active"], 3 * MIN);
    let fid = m.cess("large.bin", "fid").unwrap();
    assert_eq!(m.devnet().declarations(&fid), 1, "resumed, not declared a second time");
    assert!(fetch_from_nodes(&m, &fid, data.len()) == data);
}

#[test]
fn stopped_nodes_are_replaced_by_spares() {
    let m = Mount::uploading("0.2", &[]);
    let net = m.devnet();
    let stopped = [2, 7, 11];
    for i in stopped {
        net.fault(i, "down");
    }
    fs::write(m.path("f.bin"), random_bytes(40 << 20, 4)).unwrap();
    m.wait_status("f.bin", &["active"], 2 * MIN);
    let fid = m.cess("f.bin", "fid").unwrap();
    let file = net.file(&fid).unwrap();
    let nodes = net.nodes();
    let down: Vec<_> = stopped.iter().map(|i| nodes[i - 1].account).collect();
    let holders: std::collections::HashSet<_> = file.segments[0].fragments.iter().map(|f| f.miner).collect();
    assert_eq!(holders.len(), FRAGMENTS, "12 distinct miners");
    assert!(holders.iter().all(|h| !down.contains(h)), "no column on a stopped node");
}

#[test]
fn a_file_too_large_for_the_territory_fails_clearly_and_the_mount_goes_on() {
    let m = Mount::uploading("0.2", &["--devnet-territory-gib", "1", "--snapshots", "false"]);
    // 1 GiB of territory takes at most 10 segments (96 MiB each, strictly less than the total).
    write_zeros(&m.path("huge.bin"), 400);
    m.wait_status("huge.bin", &["failed"], MIN);
    let err = m.cess("huge.bin", "error").unwrap();
    assert!(err.contains("territory \"cessfs\"") && err.contains("expand"), "{err}");
    fs::write(m.path("small.txt"), b"still fine").unwrap();
    m.wait_status("small.txt", &["active"], MIN);
    assert_eq!(fs::read(m.path("huge.bin")).unwrap().len(), 400 << 20, "nothing lost locally");
    let out = Command::new(BIN).args(["status"]).arg(m.root()).output().unwrap();
    assert!(!out.status.success(), "status reports the failure in its exit code");
}

#[test]
fn df_shows_the_territory_space_in_bytes_of_content() {
    let m = Mount::uploading("0.2", &["--devnet-territory-gib", "3", "--snapshots", "false"]);
    let space = || {
        let st = statvfs(m.root());
        (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
    };
    // 3 GiB of territory holds 1 GiB of content: every byte is charged for 12 fragments of 4.
    wait_until(Duration::from_secs(10), "df shows the territory", || space().0.abs_diff(1 << 30) < 1 << 20);
    let (_, before) = space();
    assert!(before.abs_diff(1 << 30) < 1 << 20, "all of it free: {before}");
    fs::write(m.path("two-segments.bin"), random_bytes(40 << 20, 9)).unwrap();
    m.wait_status("two-segments.bin", &["active"], MIN);
    // Two segments are charged 2 x 96 MiB, 64 MiB of content.
    wait_until(Duration::from_secs(10), "df shows the space taken", || before.saturating_sub(space().1) == 64 << 20);
    let df = run(Command::new("df").arg("-B1M").arg("--output=size,avail").arg(m.root()));
    assert!(df.contains("1024") && df.contains("960"), "{df}");
}

/// With tree snapshots on (the default), df leaves out the room every declaration keeps free
/// for a round of the tree: 96 MiB of charge, 32 MiB of content.
#[test]
fn df_leaves_out_the_room_kept_for_the_tree() {
    let m = Mount::uploading("0.2", &["--devnet-territory-gib", "3"]);
    let space = || {
        let st = statvfs(m.root());
        (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
    };
    wait_until(Duration::from_secs(10), "df shows the territory less the room kept", || {
        let (total, free) = space();
        total.abs_diff(1 << 30) < 1 << 20 && free.abs_diff((1 << 30) - (32 << 20)) < 1 << 20
    });
}

#[test]
fn changed_files_get_a_new_fid_and_deleted_files_leave_the_chain() {
    // One tree kept: a small file's old version is in the commit of the round that stored it,
    // which goes once the next round's is stored.
    let m = Mount::uploading("0.2", &["--snapshots-kept", "1"]);
    fs::write(m.path("doc.txt"), b"version one").unwrap();
    m.wait_status("doc.txt", &["active"], MIN);
    let first = m.cess("doc.txt", "fid").unwrap();
    fs::write(m.path("doc.txt"), b"version two").unwrap();
    let net = m.devnet();
    let deadline = std::time::Instant::now() + MIN;
    let second = loop {
        let fid = m.cess("doc.txt", "fid");
        if m.cess("doc.txt", "status").as_deref() == Some("active") && fid.as_deref() != Some(first.as_str()) {
            break fid.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no new version: {:?}", m.cess("doc.txt", "json"));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(net.file(&second).is_some());
    wait_until(MIN, "the old version to leave the chain", || net.file(&first).is_none());
    // The GIO replace pattern: the old file's FID goes once the new file is active.
    let tmp: PathBuf = m.path(".goutputstream-XYZ");
    fs::write(&tmp, b"version three").unwrap();
    fs::rename(&tmp, m.path("doc.txt")).unwrap();
    m.wait_status("doc.txt", &["active"], MIN);
    let third = m.cess("doc.txt", "fid").unwrap();
    wait_until(MIN, "the replaced version to leave the chain", || net.file(&second).is_none());
    fs::remove_file(m.path("doc.txt")).unwrap();
    wait_until(MIN, "the deleted file to leave the chain", || net.file(&third).is_none());
}

#[test]
fn empty_and_identical_files() {
    let m = Mount::uploading("0.2", &[]);
    File::create(m.path("empty")).unwrap();
    m.wait_status("empty", &["local"], MIN);
    assert!(m.cess("empty", "progress").unwrap().contains("empty"));
    fs::write(m.path("one.txt"), b"same bytes").unwrap();
    m.wait_status("one.txt", &["active"], MIN);
    fs::write(m.path("two.txt"), b"same bytes").unwrap();
    m.wait_status("two.txt", &["active"], MIN);
    let fid = m.cess("one.txt", "fid").unwrap();
    assert_eq!(m.cess("two.txt", "fid").unwrap(), fid, "same key, same bytes: same FID");
    assert_eq!(m.devnet().declarations(&fid), 1, "stored once, paid once");
    fs::remove_file(m.path("one.txt")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(m.devnet().file(&fid).is_some(), "two.txt still uses it");
}

/// The same bytes written again while the deletion of their FID waits for its block (the file
/// that had them removed just before): the new file does not take the FID as held, or the
/// deletion would then leave it with nothing on CESS; it waits for the deletion, and is
/// declared again.
#[test]
fn the_same_bytes_written_while_their_deletion_is_on_its_way_are_stored_again() {
    let m = Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0"]);
    let net = m.devnet();
    let data = random_bytes(1 << 20, 31);
    fs::write(m.path("first.bin"), &data).unwrap();
    m.wait_status("first.bin", &["active"], MIN);
    let fid = m.cess("first.bin", "fid").unwrap();
    net.run(net.chain.hold_deletions(true)).unwrap();
    fs::remove_file(m.path("first.bin")).unwrap();
    wait_until(MIN, "the deletion to be sent", || m.log().contains(&format!("deleting {fid}")));
    fs::write(m.path("second.bin"), &data).unwrap();
    wait_until(MIN, "the new file to wait for the deletion", || {
        m.cess("second.bin", "error").is_some_and(|e| e.contains("being deleted"))
    });
    assert!(net.file(&fid).is_some(), "the deletion is still held back");
    net.run(net.chain.hold_deletions(false)).unwrap();
    // (Landed at once, or, had the client given up waiting for the held call, found gone.)
    let gone = [format!("deleted {fid}"), format!("{fid} is not on the chain any more")];
    wait_until(MIN, "the deletion to land", || gone.iter().any(|g| m.log().contains(g.as_str())));
    m.wait_status("second.bin", &["active"], MIN);
    assert_eq!(m.cess("second.bin", "fid").unwrap(), fid, "same key, same bytes: same FID");
    assert!(net.file(&fid).is_some(), "the new file's bytes are on CESS");
    assert_eq!(net.declarations(&fid), 2, "declared again after the deletion");
    setxattr(&m.path("second.bin"), "user.cess.evict", b"1", 0).unwrap();
    assert!(fs::read(m.path("second.bin")).unwrap() == data, "read back from the nodes");
}

#[test]
fn sigterm_during_an_upload_loses_nothing_and_unmount_wait_waits_for_active() {
    let mut m = Mount::uploading("0", &[]);
    let data = random_bytes(70 << 20, 9);
    fs::write(m.path("big.bin"), &data).unwrap();
    wait_until(MIN, "the upload to start", || m.cess("big.bin", "status").is_some_and(|s| s != "staged"));
    m.sigterm();
    m.mount();
    assert!(fs::read(m.path("big.bin")).unwrap() == data);
    m.wait_status("big.bin", &["active"], 2 * MIN);
    let fid = m.cess("big.bin", "fid").unwrap();
    assert_eq!(m.devnet().declarations(&fid), 1, "the interrupted deal was resumed, not paid twice");

    fs::write(m.path("second.bin"), random_bytes(20 << 20, 10)).unwrap();
    m.unmount_with(&["--wait", "--timeout", "120"]);
    m.mount();
    assert_eq!(m.cess("second.bin", "status").as_deref(), Some("active"), "unmount --wait returned after active");
}

/// A file that failed because the territory was full is tried again once the territory has
/// room (another file deleted, or the territory expanded), without being touched, and says so
/// meanwhile.
#[test]
fn a_file_that_failed_for_a_full_territory_goes_once_there_is_room() {
    // 1 GiB holds 10 segments' charge (96 MiB each, and never to the last byte).
    let m = Mount::uploading("0", &["--devnet-territory-gib", "1", "--snapshots", "false", "--pack-below", "0"]);
    for i in 0..10 {
        fs::write(m.path(&format!("file{i}")), format!("file {i}")).unwrap();
    }
    for i in 0..10 {
        m.wait_status(&format!("file{i}"), &["active"], MIN);
    }
    fs::write(m.path("late.txt"), b"one too many").unwrap();
    m.wait_status("late.txt", &["failed"], MIN);
    let error = m.cess("late.txt", "error").unwrap();
    assert!(error.contains("expand it") && error.contains("tried again when the territory changes"), "{error}");
    fs::remove_file(m.path("file0")).unwrap();
    m.wait_status("late.txt", &["active"], MIN);

    fs::write(m.path("later.txt"), b"one too many again").unwrap();
    m.wait_status("later.txt", &["failed"], MIN);
    let net = m.devnet();
    net.run(net.chain.expand_territory(b"cessfs", 1)).unwrap();
    m.wait_status("later.txt", &["active"], MIN);
}

/// The content of `file{i}` in a territory filled with files of `size` bytes.
fn filler(i: usize, size: usize) -> Vec<u8> {
    [format!("file {i}").into_bytes(), random_bytes(size, i as u64)].concat()
}

/// Writes `file0`, `file1`, … of `size` bytes, each once the one before is active, until one
/// fails for want of room; returns its number.
fn fill_territory(m: &Mount, size: usize) -> usize {
    for i in 0..12 {
        let name = format!("file{i}");
        fs::write(m.path(&name), filler(i, size)).unwrap();
        if m.wait_status(&name, &["active", "failed"], MIN) == "failed" {
            let error = m.cess(&name, "error").unwrap();
            assert!(
                error.contains("or remove files") && error.contains("96 MiB stay free for a round of the tree"),
                "{error}"
            );
            return i;
        }
    }
    panic!("1 GiB holds at most 10 segments' charge");
}

/// With tree snapshots on (the default), a file removed from a full territory still gives its
/// room back: the round of the tree that no longer names it takes the room every other
/// declaration leaves free, the older trees that name it go, and the file that waited for room
/// goes. Files of `size` bytes, with `args`.
fn a_removed_file_makes_room(args: &[&str], size: usize) {
    let m = Mount::uploading("0", &[&["--devnet-territory-gib", "1"], args].concat());
    fs::write(m.path("note.txt"), b"a small note, packed").unwrap();
    let late = fill_territory(&m, size);
    let removed = m.cess("file0", "fid").unwrap();
    fs::remove_file(m.path("file0")).unwrap();
    m.wait_status(&format!("file{late}"), &["active"], 2 * MIN);
    let net = m.devnet();
    wait_until(MIN, "the removed file to leave the chain", || net.file(&removed).is_none());
    run(Command::new(BIN).args(["status", "--wait", "--timeout", "120"]).arg(m.root()));
    assert_eq!(fs::read(m.path(&format!("file{late}"))).unwrap(), filler(late, size));
    assert_eq!(fs::read(m.path("note.txt")).unwrap(), b"a small note, packed");
}

#[test]
fn a_removed_file_makes_room_in_a_full_territory_with_tree_snapshots_on() {
    a_removed_file_makes_room(&["--pack-below", "0"], 0);
}

/// The same with small files packed into the tree's commits (the default), and files too large
/// for packs.
#[test]
fn a_removed_file_makes_room_in_a_full_territory_with_packs_and_commits() {
    a_removed_file_makes_room(&[], 9 << 20);
}

/// A commit that fails for want of room holds up no round: once files are removed, it is taken
/// back (its small file sealed again in a pack of its own) for the round that no longer names
/// them, and everything that waited goes.
#[test]
fn a_commit_that_waits_for_room_is_taken_back_for_the_round_that_frees_it() {
    let m = Mount::uploading("0", &["--devnet-territory-gib", "1"]);
    let late = fill_territory(&m, 9 << 20);
    fs::write(m.path("small.txt"), b"packed into a commit that waits").unwrap();
    let waiting = || {
        let packs: serde_json::Value =
            serde_json::from_str(&m.cess("", "packs").unwrap_or_default()).unwrap_or_default();
        packs["waiting"].as_u64().unwrap_or(0) > 0
    };
    wait_until(MIN, "the commit with small.txt to fail for want of room", waiting);
    // Three segments' charge: the small file's blob may go in a pack of its own.
    let removed: Vec<String> = (0..3).map(|i| m.cess(&format!("file{i}"), "fid").unwrap()).collect();
    for i in 0..3 {
        fs::remove_file(m.path(&format!("file{i}"))).unwrap();
    }
    m.wait_status(&format!("file{late}"), &["active"], 2 * MIN);
    m.wait_status("small.txt", &["active"], 2 * MIN);
    run(Command::new(BIN).args(["status", "--wait", "--timeout", "120"]).arg(m.root()));
    // The removed files' FIDs leave the chain once no kept tree names them: at once if a file
    // still waited for room when the round without them was stored (one tree kept then), else
    // a few rounds later (the waiting file found room first, and 3 trees are kept again). Those
    // still on chain are held back by kept trees, and counted so.
    let net = m.devnet();
    let on_chain = removed.iter().filter(|f| net.file(f).is_some()).count() as u64;
    let snapshot: serde_json::Value =
        serde_json::from_slice(&getxattr(m.root(), "user.cess.snapshot").unwrap()).unwrap();
    assert!(on_chain <= snapshot["held_back_fids"].as_u64().unwrap(), "{on_chain} on chain: {snapshot}");
    assert_eq!(fs::read(m.path("small.txt")).unwrap(), b"packed into a commit that waits");
    assert_eq!(fs::read(m.path(&format!("file{late}"))).unwrap(), filler(late, 9 << 20));
}

/// The embedded devnet costs about what is stored, through a newcomer's session (a folder of
/// photos and notes copied in, edited, one removed, all evicted and read back): the fragments
/// it keeps take at most 1.1× the territory's charged space / 3 (one copy of each segment's
/// data), and a removed file's fragments leave its disk.
#[test]
fn the_embedded_devnet_costs_what_is_stored() {
    // Without tree snapshots, whose kept generations keep a removed file on CESS a while.
    let m = Mount::uploading("0", &["--snapshots", "false"]);
    let net = m.devnet();
    let devnet = m.data_dir().join("devnet");
    // What it keeps of the content (its ledger is the chain's state).
    let kept = || cessfs::disk::usage(&[devnet.join("fragments"), devnet.join("nodes")]);
    let within_bound = |when: &str| {
        let deadline = std::time::Instant::now() + MIN;
        loop {
            let (k, charged) = (kept(), net.territory_charged() as u64);
            if k as f64 <= 1.1 * charged as f64 / 3.0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{when}: the devnet keeps {k} bytes for {charged} charged");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let stored = || run(Command::new(BIN).args(["status", "--wait", "--timeout", "120"]).arg(m.root()));

    let folder = tempfile::tempdir().unwrap();
    let (photos, notes) = (folder.path().join("Photos"), folder.path().join("Notes"));
    fs::create_dir_all(&photos).unwrap();
    fs::create_dir_all(&notes).unwrap();
    for i in 0..3 {
        // Past --pack-below (8 MiB): each photo has a FID of its own.
        fs::write(photos.join(format!("IMG_{i}.jpg")), random_bytes(9 << 20, 70 + i)).unwrap();
    }
    for i in 0..5 {
        fs::write(notes.join(format!("note {i}.txt")), format!("note {i}\n").repeat(50)).unwrap();
    }
    run(Command::new("cp").arg("-r").arg(&photos).arg(&notes).arg(m.root()));
    stored();
    within_bound("after the copy");

    // Edits: a note grows, a photo is retouched in place.
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("Notes/note 1.txt"))
        .unwrap()
        .write_all(b"one more line\n")
        .unwrap();
    let mut retouched = fs::read(photos.join("IMG_0.jpg")).unwrap();
    retouched[1 << 20..(1 << 20) + 4096].fill(7);
    fs::write(m.path("Photos/IMG_0.jpg"), &retouched).unwrap();
    stored();
    within_bound("after the edits");

    // A photo removed: its fragments leave the devnet's disk with its FID.
    let fid = m.cess("Photos/IMG_2.jpg", "fid").unwrap();
    // (The all-zero fragment, padding, is every file's.)
    let data: Vec<_> = net.file(&fid).unwrap().segments.iter().flat_map(|s| s.fragments[..4].to_vec()).collect();
    let data: Vec<_> = data.into_iter().filter(|f| f.hash != cessfs::format::ZERO_FRAGMENT_HASH).collect();
    assert!(!data.is_empty());
    fs::remove_file(m.path("Photos/IMG_2.jpg")).unwrap();
    wait_until(MIN, "the removed photo to leave the chain", || net.file(&fid).is_none());
    wait_until(MIN, "its fragments to leave the devnet's disk", || {
        data.iter().all(|f| !devnet.join("fragments").join(f.hash.to_hex()).exists())
    });
    within_bound("after the removal");

    // Evicted and read back from the nodes.
    run(Command::new(BIN).arg("evict").arg(m.root()));
    assert!(fs::read(m.path("Photos/IMG_0.jpg")).unwrap() == retouched);
    assert!(fs::read(m.path("Photos/IMG_1.jpg")).unwrap() == fs::read(photos.join("IMG_1.jpg")).unwrap());
    for i in 0..5 {
        let want = fs::read(notes.join(format!("note {i}.txt"))).unwrap();
        let got = fs::read(m.path(&format!("Notes/note {i}.txt"))).unwrap();
        assert!(got.starts_with(&want), "note {i} reads back");
    }
    within_bound("after reading back");
}

/// A standalone devnet's reads show its last block: room a landed declaration took is counted
/// once, as the chain shows it, so the territory takes files one after another up to its last
/// segment (1 GiB: 10 of one segment each). Counted again for the minute a real chain's
/// finalized reads may lag, the sixth would fail for want of room.
#[test]
fn a_territory_takes_files_one_after_another_up_to_its_last_segment() {
    let net = StandaloneDevnet::start_with(&["--territory-gib", "1"]);
    let m = Mount::uploading("0", &["--chain", &net.url, "--snapshots", "false", "--pack-below", "0"]);
    for i in 0..10 {
        let name = format!("file{i}");
        fs::write(m.path(&name), random_bytes(1 << 20, 500 + i)).unwrap();
        let status = m.wait_status(&name, &["active", "failed"], MIN);
        assert_eq!(status, "active", "{name}: {:?}", m.cess(&name, "error"));
    }
    fs::write(m.path("file10"), random_bytes(1 << 20, 510)).unwrap();
    assert_eq!(m.wait_status("file10", &["active", "failed"], MIN), "failed", "the territory is full");
}
