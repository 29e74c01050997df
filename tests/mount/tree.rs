//! The tree on CESS: what the chain learns of names and sizes, and which tree holds a FID.

use std::fs;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Every name POSIX allows is stored, under an opaque name of 25 `[0-9a-z]` bytes; the declared
/// size is whole segments; nothing of the real names reaches the ledger.
#[test]
fn every_name_is_stored_and_the_chain_sees_none_of_them() {
    let m = Mount::uploading("0", &[]);
    let camera = format!("{}.jpg", "PXL_20261201_101010123_".repeat(3));
    let chinese = "我的二零二五年纳税申报表和所有的收据扫描件.pdf".to_string();
    let names = ["x".to_string(), "ab".to_string(), camera, chinese, "my_tax_return_2025.pdf".to_string()];
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), format!("content {i}")).unwrap();
    }
    let net = m.devnet();
    for name in &names {
        m.wait_status(name, &["active"], MIN);
        let fid = m.cess(name, "fid").unwrap();
        let file = net.file(&fid).expect("on the ledger");
        let on_chain = &file.owners[0].file_name;
        assert_eq!(on_chain.len(), 25, "{name}: {:?}", String::from_utf8_lossy(on_chain));
        assert!(on_chain.iter().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()), "{on_chain:?}");
        assert_eq!(file.file_size, 32 << 20, "{name}: the declared size is whole segments");
        let json: serde_json::Value = serde_json::from_str(&m.cess(name, "json").unwrap()).unwrap();
        assert_eq!(json["name_on_chain"].as_str().unwrap().as_bytes(), &on_chain[..]);
    }
    let ledger = read_tree(&m.data_dir().join("devnet"));
    for name in names.iter().filter(|n| n.len() >= 8) {
        assert!(!contains(&ledger, name.as_bytes()), "the devnet holds the name {name:?}");
    }
}

/// In plaintext mode, the layout other clients read: the readable name where it fits, else a
/// shortened form that keeps the extension; the true size.
#[test]
fn plain_mode_keeps_names_readable_and_shortens_what_does_not_fit() {
    let m = Mount::uploading("0", &["--plain", "true"]);
    let long = format!("{}.jpeg", "holiday_photo_".repeat(6));
    for name in ["ab", "report.pdf", long.as_str()] {
        fs::write(m.path(name), format!("plain {:>5}", name.len())).unwrap();
    }
    let net = m.devnet();
    let on_chain = |name: &str| {
        m.wait_status(name, &["active"], MIN);
        let file = net.file(&m.cess(name, "fid").unwrap()).unwrap();
        assert_eq!(file.file_size, 11, "the true size");
        String::from_utf8(file.owners[0].file_name.clone()).unwrap()
    };
    assert_eq!(on_chain("report.pdf"), "report.pdf");
    let short = on_chain("ab");
    assert!(short.starts_with("ab~") && short.len() == 11, "{short}");
    let cut = on_chain(&long);
    assert!(cut.starts_with("holiday_photo_") && cut.ends_with(".jpeg") && cut.len() == 63, "{cut}");
}

/// Equal bytes in two territories are two FIDs of two trees: removing one leaves the other.
#[test]
fn the_same_bytes_in_two_territories_never_share_a_fate() {
    let net = StandaloneDevnet::start();
    let client = net.client();
    client.run(client.chain.mint_territory(b"second", 4, 30)).expect("mint a second territory");
    // One snapshot kept: a FID leaves the chain once the snapshot after its file's removal is
    // active and the one before, which refers to it, is dropped.
    let first = Mount::uploading("0", &["--chain", &net.url, "--snapshots-kept", "1"]);
    let mut second = Mount::uploading("0", &["--chain", &net.url, "--territory", "second"]);
    let data = random_bytes(3 << 20, 5);
    fs::write(first.path("same.bin"), &data).unwrap();
    fs::write(second.path("same.bin"), &data).unwrap();
    first.wait_status("same.bin", &["active"], MIN);
    second.wait_status("same.bin", &["active"], MIN);
    let (a, b) = (first.cess("same.bin", "fid").unwrap(), second.cess("same.bin", "fid").unwrap());
    assert_ne!(a, b, "each territory has its own keys");
    fs::remove_file(first.path("same.bin")).unwrap();
    wait_until(MIN, "the first territory's FID to leave the chain", || client.file(&a).is_none());
    assert!(client.file(&b).is_some(), "the second tree's FID stays");
    let evicted = run(std::process::Command::new(BIN).arg("evict").arg(second.root()));
    assert!(second.cess("same.bin", "cached").as_deref() == Some("no"), "{evicted}");
    second.remount();
    assert!(fs::read(second.path("same.bin")).unwrap() == data, "read back from CESS");
}

fn read_tree(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = fs::read(&p) {
            out.extend(bytes);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The lines of `cessfs snapshots` for a mount's key on `chain`.
fn snapshots(m: &Mount, chain: &str) -> Vec<String> {
    let key = m.data_dir().join("key");
    let out = run(std::process::Command::new(BIN).args(["snapshots", "--chain", chain, "--key-file"]).arg(&key));
    out.lines().filter(|l| l.contains("active") || l.contains("pending")).map(str::to_string).collect()
}

/// The stat fields a restore must bring back, by path.
fn stats(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32, u32, u32, u64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            paths.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    let mut out: Vec<_> = paths
        .iter()
        .map(|rel| {
            let md = fs::symlink_metadata(root.join(rel)).unwrap();
            (rel.clone(), md.mode(), md.uid(), md.gid(), md.size(), md.mtime(), md.nlink())
        })
        .collect();
    out.sort();
    out
}

/// With the account and the key alone, a fresh data dir gets the whole tree back: names of any
/// length and script, empty files, symlinks, hard links, xattrs, modes and old times; every file
/// reads back from CESS.
#[test]
fn a_fresh_data_dir_restores_the_tree_from_its_snapshots() {
    let net = StandaloneDevnet::start();
    let mut first = Mount::uploading("0", &["--chain", &net.url]);
    let long = format!("{}.txt", "长".repeat(30));
    fs::create_dir_all(first.path("docs/深い/nested")).unwrap();
    fs::write(first.path("docs/a"), b"one-byte name").unwrap();
    fs::write(first.path(&format!("docs/深い/{long}")), b"a name of 94 bytes").unwrap();
    fs::write(first.path("empty"), b"").unwrap();
    let big = random_bytes(3 << 20, 11);
    fs::write(first.path("big.bin"), &big).unwrap();
    fs::hard_link(first.path("big.bin"), first.path("docs/hard")).unwrap();
    std::os::unix::fs::symlink("docs/a", first.path("link")).unwrap();
    setxattr(&first.path("docs/a"), "user.note", b"kept", 0).unwrap();
    fs::set_permissions(first.path("docs/a"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    run(std::process::Command::new("touch").args(["-h", "-d", "2001-02-03 04:05:06"]).arg(first.path("big.bin")));
    for f in ["docs/a", "big.bin", &format!("docs/深い/{long}")] {
        first.wait_status(f, &["active"], MIN);
    }
    let before = (snapshot(first.root()), stats(first.root()));
    let named = ["", "docs", "docs/a", "docs/深い", "big.bin", "docs/hard", "empty"];
    let keys_before = node_keys(&first, &named);
    assert_eq!(keys_before[0], "00000000000000000000000000000001", "the root's key is every tree's");
    assert_eq!(keys_before[4], keys_before[5], "a hard link's names are one node");
    assert_eq!(keys_before.iter().collect::<std::collections::HashSet<_>>().len(), named.len() - 1, "{keys_before:?}");
    assert_eq!(setxattr(&first.path("docs/a"), "user.cess.node", b"0", 0), Err(libc::EPERM));
    assert!(
        !listxattr(&first.path("docs/a")).unwrap().iter().any(|n| n == "user.cess.node"),
        "not listed: a copy is another node"
    );
    // --wait waits for the files and for a snapshot of the tree as it is.
    first.unmount_with(&["--wait", "--timeout", "120"]);
    let listed = snapshots(&first, &net.url);
    assert!(listed.first().is_some_and(|l| l.contains("active")), "{listed:?}");

    // Another key sees no tree there, and touches nothing.
    let stranger = Mount::keyed("77", &["--quiet-delay", "0", "--chain", &net.url], |_| {});
    assert!(fs::read_dir(stranger.root()).unwrap().next().is_none(), "another key's tree is not shown");
    assert!(stranger.log().contains("no tree snapshot of this key"), "a wrong key is said: {}", stranger.log());
    drop(stranger);

    let second = Mount::uploading("0", &["--chain", &net.url]);
    assert!(second.log().contains("restored the tree from snapshot"), "{}", second.log());
    assert_eq!(second.cess("big.bin", "cached").as_deref(), Some("no"), "restored files are cold");
    assert_eq!(stats(second.root()), before.1, "modes, owners, sizes, times and links");
    assert!(snapshot(second.root()) == before.0, "every name, byte, target and xattr");
    // The restored tree says at once that it has a new writer: one snapshot more, and the
    // stranger deleted none.
    wait_for_snapshot(&second);
    let now = snapshots(&first, &net.url);
    assert_eq!(now.len(), listed.len() + 1, "{listed:?} {now:?}");
    assert_eq!(now[1..], listed[..], "the new one is the newest");

    // Every node keeps its key on another machine, and through a move there; a copy is new.
    let mut second = second;
    assert_eq!(node_keys(&second, &named), keys_before);
    fs::rename(second.path("docs/a"), second.path("docs/深い/nested/moved")).unwrap();
    run(std::process::Command::new("cp").arg(second.path("big.bin")).arg(second.path("copy.bin")));
    second.wait_status("copy.bin", &["active"], MIN);
    second.unmount_with(&["--wait", "--timeout", "120"]);
    let third = Mount::uploading("0", &["--chain", &net.url]);
    let moved = node_keys(&third, &["docs/深い/nested/moved", "copy.bin", "big.bin", "docs/hard"]);
    assert_eq!(moved[0], keys_before[2], "a moved file is the same node");
    assert_eq!(moved[2..], keys_before[4..6], "{moved:?}");
    assert!(!keys_before.contains(&moved[1]), "a copy is another node: {moved:?}");
}

/// `user.cess.node` of each of `paths` under `m` (the root for ""), read with `getfattr`.
fn node_keys(m: &Mount, paths: &[&str]) -> Vec<String> {
    let get = |p: &str| {
        let out = std::process::Command::new("getfattr")
            .args(["--only-values", "-n", "user.cess.node"])
            .arg(if p.is_empty() { m.root().to_path_buf() } else { m.path(p) })
            .output()
            .expect("run getfattr");
        assert!(out.status.success(), "getfattr {p}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("hex")
    };
    paths.iter().map(|p| get(p)).collect()
}

/// The root's `user.cess.snapshot`.
fn tree_state(m: &Mount) -> serde_json::Value {
    serde_json::from_slice(&getxattr(m.root(), "user.cess.snapshot").expect("user.cess.snapshot")).unwrap()
}

/// Waits until the tree as it is now is in an active snapshot.
fn wait_for_snapshot(m: &Mount) {
    run(std::process::Command::new(BIN).args(["status", "--wait", "--timeout", "120"]).arg(m.root()));
}

/// A removed file's FID stays on CESS while a kept snapshot refers to it, and goes once none
/// does.
#[test]
fn a_removed_file_stays_on_cess_while_a_kept_snapshot_refers_to_it() {
    let m = Mount::uploading("0", &["--snapshots-kept", "2"]);
    fs::write(m.path("gone.txt"), b"removed later").unwrap();
    m.wait_status("gone.txt", &["active"], MIN);
    let fid = m.cess("gone.txt", "fid").unwrap();
    wait_for_snapshot(&m);
    fs::remove_file(m.path("gone.txt")).unwrap();
    wait_for_snapshot(&m);
    let state = tree_state(&m);
    assert_eq!(state["kept"], 2, "{state}");
    assert_eq!(state["held_back_fids"], 1, "{state}");
    let net = m.devnet();
    assert!(net.file(&fid).is_some(), "the older snapshot still refers to it");
    fs::write(m.path("new.txt"), b"a third generation").unwrap();
    m.wait_status("new.txt", &["active"], MIN);
    wait_for_snapshot(&m);
    wait_until(MIN, "the FID to leave the chain once no kept snapshot refers to it", || net.file(&fid).is_none());
    assert_eq!(tree_state(&m)["held_back_fids"], 0);
}

/// kill -9 while a snapshot's deal is open: the next mount finishes that deal, with the same
/// FID, and declares nothing twice.
#[test]
fn kill_9_during_a_snapshot_upload_resumes_its_deal() {
    // While b.txt waits for reports, the interval forces a snapshot; it waits for reports too.
    let mut m = Mount::uploading("0", &["--snapshot-interval", "1"]);
    fs::write(m.path("a.txt"), b"some content").unwrap();
    m.wait_status("a.txt", &["active"], MIN);
    let net = m.devnet();
    let nodes = net.nodes().len();
    for i in 1..=nodes {
        net.fault(i, "noreport");
    }
    fs::write(m.path("b.txt"), b"more content").unwrap();
    wait_until(MIN, "a snapshot deal waiting for reports", || tree_state(&m)["status"] == "confirming");
    let fid = tree_state(&m)["fid"].as_str().unwrap().to_string();
    // The embedded devnet goes down with the daemon and comes back with healthy nodes.
    m.kill9();
    m.mount();
    wait_for_snapshot(&m);
    assert_eq!(m.devnet().declarations(&fid), 1, "the snapshot's deal resumed, not declared again");
    let net = m.devnet();
    wait_until(MIN, "the snapshot's resumed deal to complete", || net.file(&fid).is_some());
}

/// A read-only mount on a second data dir shows another mount's tree and follows its newer
/// snapshots; writes get EROFS.
#[test]
fn a_read_only_mount_follows_the_tree_of_another() {
    let net = StandaloneDevnet::start();
    let writer = Mount::uploading("0", &["--chain", &net.url]);
    fs::write(writer.path("first.txt"), b"first").unwrap();
    wait_for_snapshot(&writer);
    let first_generation = tree_state(&writer)["generation"].as_u64().unwrap().to_string();
    let mut reader = Mount::uploading("0", &["--chain", &net.url, "--read-only", "--poll-interval", "1"]);
    assert_eq!(fs::read(reader.path("first.txt")).unwrap(), b"first");
    assert_eq!(reader.cess("first.txt", "cached").as_deref(), Some("yes"), "read once, cached");
    let first_ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(reader.path("first.txt")).unwrap());
    let mut open_before = fs::File::open(reader.path("first.txt")).unwrap();
    let view = run(std::process::Command::new(BIN).arg("status").arg(reader.root()));
    assert!(view.contains(&format!("read-only view of tree snapshot {first_generation}")), "{view}");
    let refused = fs::write(reader.path("new.txt"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    // A name ahead of first.txt in the tree, so the new tree numbers its nodes otherwise.
    fs::write(writer.path("a.txt"), b"ahead").unwrap();
    fs::write(writer.path("second.txt"), b"second").unwrap();
    wait_for_snapshot(&writer);
    wait_until(Duration::from_secs(10), "the reader to show the new file", || reader.path("second.txt").exists());
    assert_eq!(fs::read(reader.path("second.txt")).unwrap(), b"second");
    assert_eq!(fs::read(reader.path("a.txt")).unwrap(), b"ahead");
    let ino_now = std::os::unix::fs::MetadataExt::ino(&fs::metadata(reader.path("first.txt")).unwrap());
    assert_eq!(ino_now, first_ino, "a node keeps its inode across generations");
    let mut through_fd = Vec::new();
    std::io::Read::read_to_end(&mut open_before, &mut through_fd).unwrap();
    assert_eq!(through_fd, b"first", "a file open across the switch reads as itself");
    let open_ino = std::os::unix::fs::MetadataExt::ino(&open_before.metadata().unwrap());
    assert_eq!(open_ino, first_ino, "and is the same inode");
    assert_eq!(
        node_keys(&reader, &["first.txt"]),
        node_keys(&writer, &["first.txt"]),
        "the view shows the tree's keys"
    );
    drop(open_before);
    let kept = reader.cess("first.txt", "cached");
    assert_eq!(kept.as_deref(), Some("yes"), "a file the new generation left as it was keeps its cached bytes");
    assert_eq!(fs::read(reader.path("first.txt")).unwrap(), b"first");
    assert_eq!(tree_state(&reader)["changes_waiting"], false, "a view writes no tree");
    let evict = std::process::Command::new(BIN).arg("evict").arg(reader.path("first.txt")).output().unwrap();
    let said = String::from_utf8_lossy(&evict.stderr);
    assert!(!evict.status.success() && said.contains("read-only view"), "{said}");
    // A view and a writable tree never share a data dir.
    reader.unmount();
    let view_dir = reader.data_dir().to_path_buf();
    let spot = tempfile::tempdir().unwrap();
    let refused = std::process::Command::new(BIN)
        .arg("mount")
        .arg(spot.path())
        .arg("--data-dir")
        .arg(&view_dir)
        .args(["--chain", &net.url, "--key-file"])
        .arg(view_dir.join("key"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("read-only view"), "{said}");
    // An older generation, opened on purpose, stays as it was.
    let old = Mount::uploading("0", &["--chain", &net.url, "--generation", &first_generation]);
    assert!(old.path("first.txt").exists() && !old.path("second.txt").exists());
}

/// A view of a tree kept in whole snapshots (`--commits false`, no node keys) keeps each node at
/// its inode across generations by the writer's inode numbers, and shows no key it does not have.
#[test]
fn a_view_of_whole_snapshots_keeps_its_inodes() {
    let net = StandaloneDevnet::start();
    let writer = Mount::uploading("0", &["--chain", &net.url, "--commits", "false"]);
    fs::write(writer.path("first.txt"), b"first").unwrap();
    wait_for_snapshot(&writer);
    let reader = Mount::uploading("0", &["--chain", &net.url, "--read-only", "--poll-interval", "1"]);
    assert_eq!(fs::read(reader.path("first.txt")).unwrap(), b"first");
    let ino = |m: &Mount, p: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(m.path(p)).unwrap());
    let first_ino = ino(&reader, "first.txt");
    assert_eq!(getxattr(&reader.path("first.txt"), "user.cess.node"), Err(libc::ENODATA), "no key to show");
    fs::write(writer.path("a.txt"), b"ahead").unwrap();
    wait_for_snapshot(&writer);
    wait_until(Duration::from_secs(10), "the reader to show the new file", || reader.path("a.txt").exists());
    assert_eq!(ino(&reader, "first.txt"), first_ino, "a node keeps its inode across generations");
    assert_eq!(fs::read(reader.path("a.txt")).unwrap(), b"ahead");
    assert_eq!(fs::read(reader.path("first.txt")).unwrap(), b"first");
}

/// Two writable mounts of one tree: the one that finds a newer snapshot written by the other
/// stops writing snapshots and deleting FIDs, and says so, instead of clobbering it.
#[test]
fn a_mount_that_finds_a_newer_snapshot_by_another_stops_writing_its_own() {
    let net = StandaloneDevnet::start();
    let first = Mount::uploading("0", &["--chain", &net.url]);
    fs::write(first.path("a.txt"), b"from the first").unwrap();
    wait_for_snapshot(&first);
    let second = Mount::uploading("0", &["--chain", &net.url]);
    fs::write(second.path("b.txt"), b"from the second").unwrap();
    second.wait_status("b.txt", &["active"], MIN);
    wait_for_snapshot(&second);
    let before = snapshots(&first, &net.url);
    fs::remove_file(first.path("a.txt")).unwrap();
    wait_until(MIN, "the first mount to notice the second's snapshot", || !tree_state(&first)["stopped"].is_null());
    let said = run(std::process::Command::new(BIN).arg("status").arg(first.root()));
    assert!(said.contains("another mount wrote tree snapshot"), "{said}");
    assert_eq!(snapshots(&first, &net.url), before, "no snapshot written, none deleted");
    assert!(first.log().contains("stops writing tree snapshots"), "{}", first.log());
}

/// A file whose newer version cannot be stored stays in the tree's snapshots with its last
/// stored version, so a restore brings that back.
#[test]
fn a_file_whose_new_version_fails_is_restored_at_its_last_stored_version() {
    let net = StandaloneDevnet::start_with(&["--territory-gib", "1"]);
    let mut first = Mount::uploading("0", &["--chain", &net.url]);
    fs::write(first.path("doc.bin"), b"version one").unwrap();
    fs::write(first.path("saved.bin"), b"saved before").unwrap();
    first.wait_status("doc.bin", &["active"], MIN);
    first.wait_status("saved.bin", &["active"], MIN);
    wait_for_snapshot(&first);
    // 400 MiB need more segments than 1 GiB of territory takes: these versions fail, one
    // written in place, one saved as editors do (a temporary file renamed over the old one).
    write_zeros(&first.path("doc.bin"), 400);
    write_zeros(&first.path(".saved.tmp"), 400);
    fs::rename(first.path(".saved.tmp"), first.path("saved.bin")).unwrap();
    first.wait_status("doc.bin", &["failed"], MIN);
    first.wait_status("saved.bin", &["failed"], MIN);
    fs::write(first.path("other.txt"), b"a change after it").unwrap();
    first.wait_status("other.txt", &["active"], MIN);
    first.unmount_with(&["--wait", "--timeout", "120"]);
    let second = Mount::uploading("0", &["--chain", &net.url]);
    assert_eq!(fs::read(second.path("doc.bin")).unwrap(), b"version one");
    assert_eq!(fs::read(second.path("saved.bin")).unwrap(), b"saved before");
    assert_eq!(fs::read(second.path("other.txt")).unwrap(), b"a change after it");
}

/// A machine lost before its next snapshot leaves FIDs that no snapshot refers to: the tree
/// restored elsewhere deletes them once no other mount writes it. What a `--fresh` tree's
/// predecessor left, snapshots and all, is never touched.
#[test]
fn a_restored_tree_deletes_what_its_lost_machine_declared_after_its_last_snapshot() {
    let net = StandaloneDevnet::start();
    let chain = net.client();
    // Each tree: a snapshot, then a file declared with no snapshot after it (as if the machine
    // were lost before the next one).
    let lose_a_tree = |args: &[&str]| {
        let mut m = Mount::uploading("0", &[&["--chain", &net.url][..], args].concat());
        fs::write(m.path("saved.txt"), b"in a snapshot").unwrap();
        // A pack more than half full is never merged: the orphan stays the pack it went to.
        for i in 0..3 {
            fs::write(m.path(&format!("saved-{i}.bin")), random_bytes(6 << 20, i)).unwrap();
        }
        m.wait_status("saved.txt", &["active"], MIN);
        wait_for_snapshot(&m);
        m.remount_with(&["--snapshots", "false"]);
        fs::write(m.path("unsaved.txt"), b"declared, in no snapshot").unwrap();
        m.wait_status("unsaved.txt", &["active"], MIN);
        let fids = (m.cess("saved.txt", "fid").unwrap(), m.cess("unsaved.txt", "fid").unwrap());
        m.unmount();
        fids
    };
    let (earlier_saved, earlier_unsaved) = lose_a_tree(&["--pack-below", "0"]);
    // Packed files this time: the orphan is a pack.
    let (saved, unsaved) = lose_a_tree(&["--fresh"]);
    assert_ne!(saved, unsaved, "the file after the snapshot went into a pack of its own");

    let restored = Mount::uploading("0", &["--chain", &net.url, "--sweep-after", "0", "--snapshots-kept", "1"]);
    assert!(restored.log().contains("restored the tree from snapshot"), "{}", restored.log());
    assert!(!restored.path("unsaved.txt").exists());
    assert_eq!(fs::read(restored.path("saved.txt")).unwrap(), b"in a snapshot");
    let before = snapshots(&restored, &net.url);
    assert_eq!(before.len(), 2, "both trees' snapshots: {before:?}");
    // Nothing is swept before this mount wrote the newest snapshot itself (a lost machine that
    // comes back then stops before it refers again to what is swept).
    assert!(chain.file(&unsaved).is_some());
    fs::write(restored.path("new.txt"), b"after the restore").unwrap();
    restored.wait_status("new.txt", &["active"], MIN);
    wait_for_snapshot(&restored);
    wait_until(MIN, "the lost machine's unsaved FID to leave the chain", || chain.file(&unsaved).is_none());
    assert!(restored.log().contains("swept the restored tree: 1 FID"), "{}", restored.log());
    assert!(chain.file(&saved).is_some());
    // The new tree replaces the restored one as the one kept. The restored commit stays on
    // chain while the files packed in it live (more than half of it: not merged away), and the
    // earlier tree's snapshot stays.
    wait_until(MIN, "the restored tree to be replaced", || tree_state(&restored)["kept"] == 1);
    let after = snapshots(&restored, &net.url);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.contains(&before[0]) && after.contains(&before[1]), "{before:?} {after:?}");
    assert!(restored.log().contains("tree snapshot") && !restored.log().contains("another mount may write"));
    for fid in [&earlier_saved, &earlier_unsaved] {
        assert!(chain.file(fid).is_some(), "the earlier tree's {fid} is left as it is");
    }
}

/// The tree is found among the 100,000 files of a large account: a mount that begins a tree
/// reads every record to know there is none; a restore reads the hold list from its tail, only
/// back to the tree the newest root names as stored before it (the first round's).
#[test]
fn a_tree_is_found_among_100000_files_the_account_holds() {
    let net = StandaloneDevnet::start_with(&["--held-files", "100000"]);
    let mut first = Mount::uploading("0", &["--chain", &net.url]);
    assert!(first.log().contains("holds 100000 files of this account but no tree snapshot of this key"));
    two_rounds(&first, b"found among many", b"in the second round");
    let said = first.unmount_with(&["--wait", "--timeout", "120"]);
    assert!(said.contains("waiting: 2/2 settled"), "off a terminal, the wait says where it is: {said:?}");
    assert!(said.trim_end().ends_with("settled: 2/2 files, and the tree snapshot"), "and when it is done: {said:?}");
    let second = Mount::uploading("0", &["--chain", &net.url]);
    assert!(second.log().contains("restored the tree from snapshot"), "{}", second.log());
    let few_read = |m: &Mount| {
        let (read, held) = records_read(m);
        assert!(held > 100_000 && read < 100, "{read} of {held} records read");
    };
    few_read(&second);
    assert_eq!(fs::read(second.path("b.txt")).unwrap(), b"in the second round");
    // A read-only view on a fresh data dir finds it so too.
    let view = Mount::uploading("0", &["--chain", &net.url, "--read-only"]);
    few_read(&view);
    assert_eq!(fs::read(view.path("a.txt")).unwrap(), b"found among many");
    assert_eq!(fs::read(second.path("a.txt")).unwrap(), b"found among many");
}

/// How many `File` records the search for the tree read, of how many the territory holds.
fn records_read(m: &Mount) -> (usize, usize) {
    let looked = m.log().lines().find_map(|l| {
        let rest = l.split("looked for the tree in ").nth(1)?;
        let mut words = rest.split(' ');
        Some((words.next()?.parse::<usize>().ok()?, words.nth(2)?.parse::<usize>().ok()?))
    });
    looked.unwrap_or_else(|| panic!("no search said how far it read:\n{}", m.log()))
}

/// With one tree kept, the tree the newest root names as stored before it is deleted from the
/// chain once that root's tree is stored; a restore still reads only the tail of the hold list,
/// back to a file of this key that became active before that tree was declared (a large file,
/// with a FID of its own; the account's other files, not of this key, do not count).
#[test]
fn a_tree_is_found_from_the_tail_when_the_tree_its_root_names_is_gone() {
    let net = StandaloneDevnet::start_with(&["--held-files", "2000"]);
    let chain = net.client();
    let mut first = Mount::uploading("0", &["--chain", &net.url, "--snapshots-kept", "1"]);
    let big = random_bytes(9 << 20, 41);
    fs::write(first.path("big.bin"), &big).unwrap();
    first.wait_status("big.bin", &["active"], MIN);
    let first_tree = two_rounds(&first, b"in the first round", b"in the second round");
    let first_fid = first_tree["fid"].as_str().unwrap().to_string();
    wait_until(MIN, "the first tree to leave the chain", || chain.file(&first_fid).is_none());
    first.unmount_with(&["--wait", "--timeout", "120"]);
    let second = Mount::uploading("0", &["--chain", &net.url]);
    assert!(second.log().contains("restored the tree from snapshot"), "{}", second.log());
    let (read, held) = records_read(&second);
    assert!(held > 2_000 && read < 100, "{read} of {held} records read");
    assert_eq!(fs::read(second.path("a.txt")).unwrap(), b"in the first round");
    assert_eq!(fs::read(second.path("b.txt")).unwrap(), b"in the second round");
    assert!(fs::read(second.path("big.bin")).unwrap() == big);
}

/// Writes a.txt (`a`) and then b.txt (`b`), each in a round of its own; returns the tree's state
/// (`user.cess.snapshot`) once the first round was stored.
fn two_rounds(m: &Mount, a: &[u8], b: &[u8]) -> serde_json::Value {
    let stored = |m: &Mount| {
        let state = tree_state(m);
        (state["status"] == "active" && state["changes_waiting"] == false).then_some(state)
    };
    fs::write(m.path("a.txt"), a).unwrap();
    m.wait_status("a.txt", &["active"], MIN);
    wait_until(MIN, "a first tree stored", || stored(m).is_some());
    let first = stored(m).unwrap();
    fs::write(m.path("b.txt"), b).unwrap();
    wait_until(MIN, "a second tree stored", || stored(m).is_some_and(|s| s["generation"] != first["generation"]));
    first
}
