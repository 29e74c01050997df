//! Commits: a settled round of changes (small files' blobs and the tree) travels in one CESS
//! file, so an edit costs one declaration, and under-full packs are merged into it.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Whether the newest tree is in an active commit, with no change waiting for the next.
fn tree_settled(m: &Mount) -> bool {
    let Ok(raw) = getxattr(m.root(), "user.cess.snapshot") else { return false };
    let s: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    s["status"] == "active" && s["generation"] == s["active_generation"] && s["changes_waiting"] == false
}

fn all_active(m: &Mount, names: &[String]) -> bool {
    names.iter().all(|n| m.cess(n, "status").as_deref() == Some("active"))
}

/// 200 notes of 4 KiB settle; then 7 bytes are appended to one. That edit costs one
/// declaration of at most 9 fragments: the commit carries the new blob, the tree, and the other
/// 199 notes out of the under-full commit before (a merge that rides along). Everything reads
/// back from the miners.
#[test]
fn an_edit_costs_one_declaration_of_nine_fragments() {
    let m = Mount::uploading("0.2", &["--pack-below", "1M"]);
    fs::create_dir(m.path("notes")).unwrap();
    let names: Vec<String> = (0..200).map(|i| format!("notes/{i}.txt")).collect();
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), note(i)).unwrap();
    }
    wait_until(2 * MIN, "the notes and their tree to settle", || all_active(&m, &names) && tree_settled(&m));
    let net = m.devnet();
    let (declared, put) = (net.all_declarations(), net.bytes_put());

    fs::OpenOptions::new().append(true).open(m.path("notes/7.txt")).unwrap().write_all(b"edited!").unwrap();
    wait_until(MIN, "the edit and its tree to settle", || {
        m.cess("notes/7.txt", "status").as_deref() == Some("active") && tree_settled(&m)
    });
    assert_eq!(net.all_declarations() - declared, 1, "one declaration for the edit\n{}", m.log());
    // Fragments of 8 MiB, counted by the bytes the nodes took (the requests' own bytes aside).
    let fragments = (net.bytes_put() - put + (4 << 20)) >> 23;
    assert!(fragments <= 9, "{fragments} fragments pushed for the edit");
    let fids: HashSet<Option<String>> = names.iter().map(|n| m.cess(n, "fid")).collect();
    assert_eq!(fids.len(), 1, "the other notes moved into the edit's commit");

    run(std::process::Command::new(BIN).arg("evict").arg(m.root()));
    let mut edited = note(7);
    edited.extend_from_slice(b"edited!");
    assert!(fs::read(m.path("notes/7.txt")).unwrap() == edited);
    for i in [0, 8, 199] {
        assert!(fs::read(m.path(&format!("notes/{i}.txt"))).unwrap() == note(i), "note {i}");
    }
    // Neither the eviction nor the cold reads change what a tree shows: no round waits.
    assert!(tree_settled(&m), "{}", String::from_utf8_lossy(&getxattr(m.root(), "user.cess.snapshot").unwrap()));
}

/// 100 saves of one file, 100 ms apart (an editor's autosave in a burst), cost at most 2
/// declarations: the burst is one round.
#[test]
fn a_burst_of_saves_is_one_round() {
    let m = Mount::uploading("1", &["--pack-below", "1M"]);
    fs::write(m.path("draft.txt"), b"first").unwrap();
    wait_until(MIN, "the first save to settle", || {
        m.cess("draft.txt", "status").as_deref() == Some("active") && tree_settled(&m)
    });
    let net = m.devnet();
    let declared = net.all_declarations();
    for i in 0..100 {
        fs::write(m.path("draft.txt"), format!("save {i}\n").repeat(i + 1)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until(MIN, "the last save to settle", || {
        m.cess("draft.txt", "status").as_deref() == Some("active") && tree_settled(&m)
    });
    let rounds = net.all_declarations() - declared;
    assert!((1..=2).contains(&rounds), "{rounds} declarations for 100 saves\n{}", m.log());
    assert!(fs::read(m.path("draft.txt")).unwrap() == "save 99\n".repeat(100).into_bytes());
}

/// kill -9 once a commit is sealed, before it is stored: after the remount it is stored, no
/// commit was declared twice, nothing is lost, and the tree comes back on a fresh data dir.
#[test]
fn kill_9_after_a_commit_is_sealed_loses_nothing_and_declares_nothing_twice() {
    let net = StandaloneDevnet::start();
    let mut m = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "1M"]);
    let names: Vec<String> = (0..100).map(|i| format!("{i}.txt")).collect();
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), note(i)).unwrap();
    }
    wait_until(MIN, "a commit to be sealed", || m.log().contains("written") && m.log().contains("in commit inode"));
    m.kill9();
    m.mount();
    wait_until(2 * MIN, "the notes and their tree to settle", || all_active(&m, &names) && tree_settled(&m));
    let client = net.client();
    let fids: HashSet<String> = names.iter().filter_map(|n| m.cess(n, "fid")).collect();
    for fid in &fids {
        assert_eq!(client.declarations(fid), 1, "commit {fid} declared once");
    }
    let before = snapshot(m.root());
    drop(m);
    let second = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "1M"]);
    assert!(second.log().contains("restored the tree from snapshot"), "{}", second.log());
    assert!(snapshot(second.root()) == before, "every name and byte");
}

/// kill -9 at each step of a round that carries a merge along: once the other notes are packed
/// again into the open pack, and once the tree is written into it, before the commit is
/// recorded. After each remount the round goes whole: every note reads back with its edits, and
/// no FID was declared twice.
#[test]
fn kill_9_at_each_step_of_a_commit_loses_nothing_and_declares_nothing_twice() {
    let net = StandaloneDevnet::start();
    let mut m = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "1M"]);
    let names: Vec<String> = (0..20).map(|i| format!("{i}.txt")).collect();
    let mut want: Vec<Vec<u8>> = (0..20).map(note).collect();
    for (name, bytes) in names.iter().zip(&want) {
        fs::write(m.path(name), bytes).unwrap();
    }
    wait_until(MIN, "the notes and their tree to settle", || all_active(&m, &names) && tree_settled(&m));
    for (i, step) in ["commit-merged", "commit-tree-written"].into_iter().enumerate() {
        m.arm(step);
        fs::OpenOptions::new().append(true).open(m.path(&names[i])).unwrap().write_all(b"edited").unwrap();
        want[i].extend_from_slice(b"edited");
        m.wait_hook(step, MIN);
        m.kill9();
        m.release(step);
        m.mount();
        wait_until(2 * MIN, "the round to go whole after the crash", || all_active(&m, &names) && tree_settled(&m));
    }
    let client = net.client();
    let events = client.run(client.chain.events()).unwrap();
    let mut declared = HashSet::new();
    for (_, e) in events {
        if let cessfs::devnet::Event::UploadDeclaration { deal_hash, .. } = e {
            assert!(declared.insert(deal_hash), "{deal_hash} declared twice\n{}", m.log());
        }
    }
    run(std::process::Command::new(BIN).arg("evict").arg(m.root()));
    for (name, bytes) in names.iter().zip(&want) {
        assert!(fs::read(m.path(name)).unwrap() == *bytes, "{name}");
    }
}

/// The bytes and new directory blobs of the last tree written in a commit, from the log after
/// `from`.
fn last_tree_written(log: &str, from: usize) -> (u64, u64) {
    let line = log[from..]
        .lines()
        .rfind(|l| l.contains(" written (") && l.contains("in commit inode"))
        .unwrap_or_else(|| panic!("no tree written after byte {from}\n{log}"));
    let inside = line.split(" written (").nth(1).unwrap();
    let number = |s: &str| s.trim().split(' ').next().unwrap().parse::<u64>().unwrap();
    let (bytes, rest) = inside.split_once(" bytes: ").unwrap();
    (number(bytes), number(rest))
}

/// 2,500 notes of 8 KiB in one directory (cut into chunks by name hash) and a deep path settle;
/// then 7 bytes are appended to one note. The edit's commit writes one chunk, the chunk list
/// and the root directory, a few KiB, and refers to every other directory where it is. A fresh
/// data dir restores the tree (read from both commits), and an edit there writes as little
/// (the next chunk list and root refer to the restored directories where they are).
#[test]
fn an_edit_among_thousands_of_files_writes_only_the_directories_it_touches() {
    let net = StandaloneDevnet::start();
    let args = ["--chain", net.url.as_str(), "--pack-below", "1M"];
    let m = Mount::uploading("0.2", &args);
    fs::create_dir(m.path("notes")).unwrap();
    fs::create_dir_all(m.path("deep/a/b")).unwrap();
    fs::write(m.path("deep/a/b/leaf.txt"), b"leaf").unwrap();
    let mut names: Vec<String> = (0..2500).map(|i| format!("notes/{i}.md")).collect();
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), [note(i), note(i)].concat()).unwrap();
    }
    names.push("deep/a/b/leaf.txt".into());
    wait_until(3 * MIN, "the notes and their tree to settle", || all_active(&m, &names) && tree_settled(&m));
    let (first_bytes, first_new) = last_tree_written(&m.log(), 0);

    let edit = |m: &Mount, name: &str| {
        let from = m.log().len();
        fs::OpenOptions::new().append(true).open(m.path(name)).unwrap().write_all(b"edited!").unwrap();
        wait_until(MIN, "the edit and its tree to settle", || {
            m.cess(name, "status").as_deref() == Some("active") && tree_settled(m)
        });
        last_tree_written(&m.log(), from)
    };
    let (bytes, new) = edit(&m, "notes/1234.md");
    assert!((1..=3).contains(&new), "{new} directory blobs written for one edit (the first tree: {first_new})");
    assert!(bytes < 64 << 10 && bytes * 5 < first_bytes, "{bytes} bytes of tree for one edit, {first_bytes} at first");

    let before = snapshot(m.root());
    drop(m);
    let second = Mount::uploading("0.2", &args);
    assert!(second.log().contains("restored the tree from snapshot"), "{}", second.log());
    assert!(snapshot(second.root()) == before, "every name and byte");
    // This commit also empties the last one (its pack holds one note): that note's chunk too.
    let (bytes, new) = edit(&second, "notes/7.md");
    assert!((1..=4).contains(&new), "{new} directory blobs written for an edit after a restore\n{}", second.log());
    assert!(bytes < 64 << 10, "{bytes} bytes of tree for an edit after a restore");
    let mut edited = [note(7), note(7)].concat();
    edited.extend_from_slice(b"edited!");
    run(std::process::Command::new(BIN).arg("evict").arg(second.root()));
    assert!(fs::read(second.path("notes/7.md")).unwrap() == edited);
}

/// The number of CESS files holding the newest tree's directories.
fn tree_files(m: &Mount) -> u64 {
    let s: serde_json::Value = serde_json::from_slice(&getxattr(m.root(), "user.cess.snapshot").unwrap()).unwrap();
    s["tree_files"].as_u64().unwrap()
}

/// Twelve directories, each holding a file with a FID of its own, changed one a round: each
/// round's directory lands in a commit of its own, yet the newest tree is held by its commit
/// and at most 8 others (the directories of older ones are written again); commits kept only
/// for its directories hold up no collection, and a fresh data dir restores it whole once the
/// older commits are gone.
#[test]
fn a_tree_is_held_by_few_files_however_its_rounds_scatter_it() {
    let net = StandaloneDevnet::start();
    let args = ["--chain", net.url.as_str(), "--pack-below", "64K"];
    let m = Mount::uploading("0.2", &args);
    let names: Vec<String> = (0..12).map(|i| format!("d{i}/big.bin")).collect();
    for (i, name) in names.iter().enumerate() {
        fs::create_dir(m.path(&format!("d{i}"))).unwrap();
        fs::write(m.path(name), random_bytes(200 << 10, i as u64)).unwrap();
    }
    wait_until(2 * MIN, "the files and their tree to settle", || all_active(&m, &names) && tree_settled(&m));
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), random_bytes(200 << 10, 100 + i as u64)).unwrap();
        wait_until(MIN, "the round to settle", || {
            m.cess(name, "status").as_deref() == Some("active") && tree_settled(&m)
        });
        let files = tree_files(&m);
        assert!((1..=9).contains(&files), "{files} files hold the tree after round {i}\n{}", m.log());
    }
    assert!(m.log().contains("written again with this round"), "{}", m.log());
    // Commits kept on chain only for the tree's directories are this tree's past: a collection
    // is not held up by them.
    let gc = run(std::process::Command::new(BIN).args(["gc", "--dry-run"]).arg(m.root()));
    assert!(gc.contains("nothing to collect"), "{gc}\n{}", m.log());
    let before = snapshot(m.root());
    drop(m);
    let second = Mount::uploading("0.2", &args);
    assert!(snapshot(second.root()) == before, "every name and byte");
}

/// The state of the tree's snapshots (`user.cess.snapshot`).
fn tree_state(m: &Mount) -> serde_json::Value {
    serde_json::from_slice(&getxattr(m.root(), "user.cess.snapshot").unwrap()).unwrap()
}

/// A restore of a tree in directory blobs shows its root directory before it reads any other
/// directory blob. With the background load held at its start, the root lists, and a
/// directory opened or written in is loaded at once (the others wait). A kill -9 mid-load
/// resumes the load at the next mount. Once whole: every name and byte as before, a hard link
/// across directories is one inode, the older snapshot is kept too, and an edit writes a new
/// tree.
#[test]
fn a_restore_lists_the_root_before_reading_any_other_directory() {
    let net = StandaloneDevnet::start();
    let args = ["--chain", net.url.as_str(), "--pack-below", "1M"];
    let m = Mount::uploading("0.2", &args);
    for dir in ["a", "b", "c/d/e"] {
        fs::create_dir_all(m.path(dir)).unwrap();
    }
    let names: Vec<String> =
        ["top.txt", "a/1.txt", "b/2.txt", "c/3.txt", "c/d/4.txt", "c/d/e/5.txt"].map(String::from).to_vec();
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), note(i)).unwrap();
    }
    fs::hard_link(m.path("a/1.txt"), m.path("b/link.txt")).unwrap();
    std::os::unix::fs::symlink("../a/1.txt", m.path("c/to-1")).unwrap();
    wait_until(MIN, "the tree to settle", || all_active(&m, &names) && tree_settled(&m));
    fs::write(m.path("c/d/e/5.txt"), b"edited").unwrap();
    wait_until(MIN, "the edit to settle", || all_active(&m, &names) && tree_settled(&m));
    let kept = tree_state(&m)["kept"].as_u64().unwrap();
    assert!(kept >= 2, "two trees kept: {}", tree_state(&m));
    let before = snapshot(m.root());
    drop(m);

    let mut second = Mount::unmounted("0.2", &args);
    second.arm("restore-load");
    second.mount();
    second.wait_hook("restore-load", MIN);
    assert!(second.log().contains("its root directory, holding 1 file, 3 directories, shows now"), "{}", second.log());
    let mut listed: Vec<String> =
        fs::read_dir(second.root()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, ["a", "b", "c", "top.txt"]);
    assert_eq!(tree_state(&second)["dirs_to_load"], 3, "the root listed, no other directory read");
    assert!(fs::read(second.path("top.txt")).unwrap() == note(0));
    // Written in before the background load reaches it: c and d are loaded on the way.
    fs::write(second.path("c/d/new.txt"), b"written while loading").unwrap();
    assert_eq!(tree_state(&second)["dirs_to_load"], 3, "a, b and e left: {}", tree_state(&second));
    second.kill9();
    second.release("restore-load");
    second.mount();
    wait_until(MIN, "the restored tree to be loaded whole", || tree_state(&second)["dirs_to_load"].is_null());
    assert!(second.log().contains("the restored tree is loaded whole"), "{}", second.log());
    let mut want = before;
    want.insert("c/d/new.txt".into(), Node::File(b"written while loading".to_vec(), Vec::new()));
    assert!(snapshot(second.root()) == want, "every name and byte");
    use std::os::unix::fs::MetadataExt;
    let (one, link) = (fs::metadata(second.path("a/1.txt")).unwrap(), fs::metadata(second.path("b/link.txt")).unwrap());
    assert_eq!((one.ino(), one.nlink()), (link.ino(), 2), "a hard link across directories is one inode");
    assert_eq!(tree_state(&second)["kept"].as_u64(), Some(kept), "the older tree kept too: {}", tree_state(&second));
    wait_until(MIN, "a tree with the new file to settle", || {
        second.cess("c/d/new.txt", "status").as_deref() == Some("active") && tree_settled(&second)
    });
    drop(second);
    let third = Mount::uploading("0.2", &args);
    assert!(snapshot(third.root()) == want, "the tree written after the load, restored");
}

/// A tree being loaded writes its rounds. With the background load held, an edit in the root
/// and a file written in a directory loaded on the way settle on chain while two directories are
/// still on CESS: a read-only view (which reads the tree whole) shows every name and byte, one
/// inode for a hard link into a directory not loaded. A change of that hard-linked file holds
/// the next round until the load ends; then a fresh restore shows it under both names.
#[test]
fn a_tree_being_loaded_writes_its_rounds() {
    let net = StandaloneDevnet::start();
    let args = ["--chain", net.url.as_str(), "--pack-below", "1M"];
    let m = Mount::uploading("0.2", &args);
    for dir in ["a", "b", "c/d/e"] {
        fs::create_dir_all(m.path(dir)).unwrap();
    }
    let names: Vec<String> = ["top.txt", "a/1.txt", "b/2.txt", "c/d/e/5.txt"].map(String::from).to_vec();
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), note(i)).unwrap();
    }
    fs::hard_link(m.path("a/1.txt"), m.path("b/link.txt")).unwrap();
    wait_until(MIN, "the tree to settle", || all_active(&m, &names) && tree_settled(&m));
    let mut want = snapshot(m.root());
    drop(m);

    let mut second = Mount::unmounted("0.2", &args);
    second.arm("restore-load");
    second.mount();
    second.wait_hook("restore-load", MIN);
    assert_eq!(fs::read_dir(second.path("a")).unwrap().count(), 1);
    fs::write(second.path("c/d/new.txt"), b"written while loading").unwrap();
    fs::write(second.path("top.txt"), b"edited while loading").unwrap();
    let edited = ["c/d/new.txt".to_string(), "top.txt".to_string()];
    wait_until(MIN, "the edits to settle while the tree loads", || {
        all_active(&second, &edited) && tree_settled(&second)
    });
    assert_eq!(tree_state(&second)["dirs_to_load"], 2, "b and e: {}", tree_state(&second));
    want.insert("c/d/new.txt".into(), Node::File(b"written while loading".to_vec(), Vec::new()));
    want.insert("top.txt".into(), Node::File(b"edited while loading".to_vec(), Vec::new()));
    let view = Mount::uploading("0", &["--chain", net.url.as_str(), "--read-only"]);
    assert!(snapshot(view.root()) == want, "every name and byte of the round written while loading");
    same_inode(&view, "a/1.txt", "b/link.txt");
    drop(view);

    fs::write(second.path("a/1.txt"), b"changed while loading").unwrap();
    wait_until(MIN, "the round to wait for the load", || {
        second.log().contains("a hard-linked file changed while the restored tree loads")
    });
    assert_eq!(tree_state(&second)["changes_waiting"], true, "{}", tree_state(&second));
    second.release("restore-load");
    wait_until(MIN, "the load to end and the change to settle", || {
        tree_state(&second)["dirs_to_load"].is_null()
            && all_active(&second, &["a/1.txt".to_string()])
            && tree_settled(&second)
    });
    drop(second);
    for name in ["a/1.txt", "b/link.txt"] {
        want.insert(name.into(), Node::File(b"changed while loading".to_vec(), Vec::new()));
    }
    let third = Mount::uploading("0.2", &args);
    assert!(snapshot(third.root()) == want, "every name and byte of the round after the load");
    same_inode(&third, "a/1.txt", "b/link.txt");
}

/// A directory of a restored tree that can never be read (the commit holding its blob is gone
/// from the chain) gives EIO and keeps the load, and deletions, waiting. Removing it gives it up:
/// the tree is whole, the next round no longer names it, and a fresh restore loads whole.
#[test]
fn a_directory_that_can_never_be_read_is_given_up_by_removing_it() {
    let net = StandaloneDevnet::start();
    let args = ["--chain", net.url.as_str(), "--pack-below", "1M"];
    let (first, _) = old_and_new(&args);
    net.client().delete(&first);

    let second = Mount::uploading("0.2", &args);
    let err = fs::read_dir(second.path("old")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    wait_until(MIN, "the load to say why it waits", || tree_state(&second)["load_waits"].is_string());
    let rm = std::process::Command::new("rm").arg("-rf").arg(second.path("old")).output().unwrap();
    assert!(!second.path("old").exists(), "given up: {rm:?}\n{}", second.log());
    assert!(second.log().contains("cannot be read"), "{}", second.log());
    wait_until(MIN, "the load to end", || tree_state(&second)["dirs_to_load"].is_null());
    wait_until(MIN, "a round without it", || tree_settled(&second));
    assert!(tree_state(&second)["deletions_wait"].is_null(), "{}", tree_state(&second));
    let want = snapshot(second.root());
    assert!(want.contains_key(std::path::Path::new("new/note.txt")), "{want:?}");
    drop(second);
    let third = Mount::uploading("0.2", &args);
    assert!(snapshot(third.root()) == want, "every name and byte");
    wait_until(MIN, "the load to end", || tree_state(&third)["dirs_to_load"].is_null());
}

/// A tree of two rounds, written by a mount with `args`: `old/big.bin`, a file of its own FID
/// (so the commit holding the first round's directories holds no file, and the second round
/// leaves `old` in it), then `new/note.txt`. Returns the first round's commit and big.bin's bytes.
fn old_and_new(args: &[&str]) -> (String, Vec<u8>) {
    let m = Mount::uploading("0.2", args);
    fs::create_dir(m.path("old")).unwrap();
    let big = random_bytes(2 << 20, 7);
    fs::write(m.path("old/big.bin"), &big).unwrap();
    wait_until(MIN, "the first round", || all_active(&m, &["old/big.bin".into()]) && tree_settled(&m));
    let first = tree_state(&m)["fid"].as_str().unwrap().to_string();
    fs::create_dir(m.path("new")).unwrap();
    fs::write(m.path("new/note.txt"), note(2)).unwrap();
    wait_until(MIN, "the second round", || all_active(&m, &["new/note.txt".into()]) && tree_settled(&m));
    (first, big)
}

/// Asserts that two names of mount `m` are one inode of two links.
fn same_inode(m: &Mount, a: &str, b: &str) {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (fs::metadata(m.path(a)).unwrap(), fs::metadata(m.path(b)).unwrap());
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "a hard link is one inode");
}

/// A directory of a restored tree whose blob cannot be read now (every miner down) gives EIO,
/// and holds up neither the root nor a directory read already; the load says why it waits, and
/// ends once the miners are back.
#[test]
fn a_directory_that_cannot_be_read_now_holds_up_nothing_else() {
    let net = StandaloneDevnet::start();
    let args = ["--chain", net.url.as_str(), "--pack-below", "1M"];
    let (_, big) = old_and_new(&args);

    let client = net.client();
    let mut second = Mount::unmounted("0.2", &args);
    second.arm("restore-load");
    second.mount();
    second.wait_hook("restore-load", MIN);
    let nodes = client.nodes();
    nodes.iter().for_each(|n| client.fault(n.index, "down"));
    second.release("restore-load");
    // `new` is in the commit the root came from, fetched already.
    let listed: Vec<_> = fs::read_dir(second.path("new")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(listed, ["note.txt"]);
    let err = fs::read_dir(second.path("old")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    wait_until(MIN, "the load to say why it waits", || tree_state(&second)["load_waits"].is_string());
    assert_eq!(tree_state(&second)["dirs_to_load"], 1, "{}", tree_state(&second));
    nodes.iter().for_each(|n| client.fault(n.index, "none"));
    assert!(fs::read(second.path("old/big.bin")).unwrap() == big);
    wait_until(MIN, "the load to end", || tree_state(&second)["dirs_to_load"].is_null());
    assert!(tree_state(&second)["load_waits"].is_null(), "{}", tree_state(&second));
    // Miners down say nothing of a tree: none was taken as referring to nothing.
    assert!(!second.log().contains("it refers to nothing"), "{}", second.log());
}
