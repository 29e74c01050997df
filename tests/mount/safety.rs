//! Nothing lost in deletion, packing and restore: each test forces the race or the crash it is
//! about (with a hook where timing alone would decide) and fails without its fix.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Waits until the tree as it is now is in an active snapshot.
fn wait_for_snapshot(m: &Mount) {
    run(Command::new(BIN).args(["status", "--wait", "--timeout", "120"]).arg(m.root()));
}

/// A file whose upload failed, renamed over a stored one (an editor's save of a version the
/// territory cannot take), keeps the stored one in the tree's snapshots until its own version is
/// stored, and the stored one's FID leaves the chain only then.
#[test]
fn a_failed_file_renamed_over_a_stored_one_keeps_its_place_in_the_tree() {
    let net = StandaloneDevnet::start_with(&["--territory-gib", "1"]);
    let chain = net.client();
    let mut first = Mount::uploading("0", &["--chain", &net.url, "--snapshots-kept", "1"]);
    fs::write(first.path("doc.bin"), b"version one").unwrap();
    first.wait_status("doc.bin", &["active"], MIN);
    let old = first.cess("doc.bin", "fid").unwrap();
    wait_for_snapshot(&first);
    // 400 MiB of data (zeros written out: holes would cost nothing) need more segments than
    // 1 GiB of territory takes: this version fails.
    write_zeros(&first.path(".doc.tmp"), 400);
    first.wait_status(".doc.tmp", &["failed"], 2 * MIN);
    fs::rename(first.path(".doc.tmp"), first.path("doc.bin")).unwrap();
    first.wait_status("doc.bin", &["failed"], MIN);
    fs::write(first.path("other.txt"), b"a change after it").unwrap();
    first.wait_status("other.txt", &["active"], MIN);
    first.unmount_with(&["--wait", "--timeout", "120"]);
    assert!(chain.file(&old).is_some(), "the stored version stays on chain");

    let second = Mount::uploading("0", &["--chain", &net.url, "--read-only"]);
    assert_eq!(fs::read(second.path("doc.bin")).unwrap(), b"version one", "the tree keeps the stored version");
    assert_eq!(fs::read(second.path("other.txt")).unwrap(), b"a change after it");
    drop(second);

    first.mount();
    fs::write(first.path("doc.bin"), b"version two").unwrap();
    first.wait_status("doc.bin", &["active"], MIN);
    wait_for_snapshot(&first);
    wait_until(MIN, "the replaced version to leave the chain", || chain.file(&old).is_none());
}

/// The root's `user.cess.snapshot`.
fn tree_state(m: &Mount) -> serde_json::Value {
    serde_json::from_slice(&getxattr(m.root(), "user.cess.snapshot").expect("user.cess.snapshot")).unwrap()
}

/// Makes every namespace change of the mount durable (fsync of its root: FUSE fsyncdir).
fn sync_mount(m: &Mount) {
    run(Command::new("sync").arg(m.root()));
}

/// A deletion queued before a crash, of a FID a kept snapshot still needs, claims nothing at the
/// next start: a file written later with the same bytes is stored at once, not held back for a
/// deletion that will never happen.
#[test]
fn a_deletion_queued_before_a_crash_does_not_hold_back_the_same_bytes_written_later() {
    let mut m = Mount::uploading("0", &["--pack-below", "0"]);
    fs::write(m.path("a.txt"), b"the same bytes twice").unwrap();
    m.wait_status("a.txt", &["active"], MIN);
    let fid = m.cess("a.txt", "fid").unwrap();
    wait_for_snapshot(&m);
    m.arm("reaper-decided");
    fs::remove_file(m.path("a.txt")).unwrap();
    m.wait_hook("reaper-decided", MIN);
    sync_mount(&m);
    m.kill9();
    m.release("reaper-decided");
    m.mount();
    fs::write(m.path("b.txt"), b"the same bytes twice").unwrap();
    m.wait_status("b.txt", &["active"], MIN);
    assert_eq!(m.cess("b.txt", "fid").unwrap(), fid);
    assert!(m.devnet().file(&fid).is_some());
}

/// A FID queued for deletion again while an attempt found it in use (the snapshot that held it
/// was dropped meanwhile) is not forgotten when that attempt ends: it leaves the chain.
#[test]
fn a_deletion_queued_again_during_an_attempt_is_not_lost() {
    let m = Mount::uploading("0", &["--snapshots-kept", "1", "--pack-below", "0"]);
    fs::write(m.path("a.txt"), b"removed while a snapshot holds it").unwrap();
    m.wait_status("a.txt", &["active"], MIN);
    let fid = m.cess("a.txt", "fid").unwrap();
    wait_for_snapshot(&m);
    let held = tree_state(&m)["generation"].clone();
    m.arm("reaper-decided");
    fs::remove_file(m.path("a.txt")).unwrap();
    // The attempt finds the FID in the kept snapshot and waits there; meanwhile a newer
    // snapshot replaces that one, which queues the FID again.
    m.wait_hook("reaper-decided", MIN);
    fs::write(m.path("b.txt"), b"a later change").unwrap();
    m.wait_status("b.txt", &["active"], MIN);
    wait_until(MIN, "the snapshot holding the FID to be dropped", || {
        let state = tree_state(&m);
        state["active_generation"] != held && state["kept"] == 1
    });
    m.release("reaper-decided");
    let net = m.devnet();
    wait_until(MIN, "the removed file's FID to leave the chain", || net.file(&fid).is_none());
}

/// An upload record that cannot be read may need any FID: nothing is deleted from the chain while
/// it cannot, not even a FID another file let go of.
#[test]
fn an_unreadable_upload_record_holds_deletions_back() {
    let mut m = Mount::uploading("0", &["--snapshots", "false", "--pack-below", "0"]);
    fs::write(m.path("a.txt"), b"two files, one FID").unwrap();
    fs::write(m.path("b.txt"), b"two files, one FID").unwrap();
    m.wait_status("a.txt", &["active"], MIN);
    m.wait_status("b.txt", &["active"], MIN);
    let fid = m.cess("a.txt", "fid").unwrap();
    assert_eq!(m.cess("b.txt", "fid").unwrap(), fid);
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(m.path("b.txt")).unwrap());
    m.unmount();
    {
        let db = sled::open(m.data_dir().join("db")).unwrap();
        let tree = db.open_tree("fs").unwrap();
        let key = [&b"u"[..], &ino.to_be_bytes()].concat();
        assert!(tree.get(&key).unwrap().is_some(), "b's upload record");
        tree.insert(key, &[9u8, 9, 9][..]).unwrap();
        db.flush().unwrap();
    }
    m.mount();
    fs::remove_file(m.path("a.txt")).unwrap();
    let net = m.devnet();
    wait_until(MIN, "the deletion to be held back or done", || {
        net.file(&fid).is_none() || m.log().contains("cannot be read (inode")
    });
    assert!(net.file(&fid).is_some(), "b's bytes stay on CESS");
}

/// A file evicted while a merge of under-full packs is about to read it is packed again with
/// its own bytes (read back from its pack), not with the hole eviction left.
#[test]
fn a_merge_racing_an_eviction_packs_each_file_with_its_own_bytes() {
    let m = Mount::uploading("0.2", &["--pack-below", "64K", "--snapshots", "false"]);
    fs::write(m.path("first.txt"), note(1)).unwrap();
    m.wait_status("first.txt", &["active"], MIN);
    let first = m.cess("first.txt", "fid").unwrap();
    m.arm("merge-read");
    fs::write(m.path("second.txt"), note(2)).unwrap();
    m.wait_hook("merge-read", 2 * MIN);
    run(Command::new(BIN).arg("evict").arg(m.path("first.txt")).arg(m.path("second.txt")));
    m.release("merge-read");
    wait_until(MIN, "the two notes to share a new pack", || {
        let (a, b) = (m.cess("first.txt", "fid"), m.cess("second.txt", "fid"));
        ["first.txt", "second.txt"].iter().all(|f| m.cess(f, "status").as_deref() == Some("active"))
            && a == b
            && a.as_deref() != Some(&first)
    });
    run(Command::new(BIN).arg("evict").arg(m.root()));
    assert!(fs::read(m.path("first.txt")).unwrap() == note(1), "first.txt has its own bytes");
    assert!(fs::read(m.path("second.txt")).unwrap() == note(2), "second.txt has its own bytes");
}

/// A file found stored under the bytes of another (same key, same FID) while that other is
/// removed does not become active on a FID deleted meanwhile: the deletion waits for it, and
/// the FID stays.
#[test]
fn a_file_found_stored_while_its_bytes_are_deleted_keeps_them_on_chain() {
    let m = Mount::uploading("0", &["--pack-below", "0", "--snapshots", "false"]);
    fs::write(m.path("a.txt"), b"one content, two names").unwrap();
    m.wait_status("a.txt", &["active"], MIN);
    let fid = m.cess("a.txt", "fid").unwrap();
    m.arm("upload-held");
    fs::write(m.path("b.txt"), b"one content, two names").unwrap();
    m.wait_hook("upload-held", MIN);
    fs::remove_file(m.path("a.txt")).unwrap();
    let net = m.devnet();
    wait_until(MIN, "the deletion to land or to wait for b", || {
        net.file(&fid).is_none() || m.log().contains(&format!("{fid} is being taken as stored"))
    });
    m.release("upload-held");
    m.wait_status("b.txt", &["active"], MIN);
    assert_eq!(m.cess("b.txt", "fid").unwrap(), fid);
    wait_until(MIN, "the deletion to be dropped or done", || {
        net.file(&fid).is_none() || m.log().contains(&format!("{fid} is in use here"))
    });
    assert!(net.file(&fid).is_some(), "b's FID stays on chain");
    run(Command::new(BIN).arg("evict").arg(m.path("b.txt")));
    assert_eq!(fs::read(m.path("b.txt")).unwrap(), b"one content, two names");
}

/// A restore killed at any step (after reading the snapshot, with the content files made, once
/// written) is done once and whole by the next mount: the tree, its snapshots' lineage, the
/// sweep of what its lost machine declared after its last snapshot, and no stop.
#[test]
fn kill_9_at_each_step_of_a_restore_restores_it_whole_once() {
    let net = StandaloneDevnet::start();
    let chain = net.client();
    let mut first = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "0"]);
    fs::create_dir(first.path("docs")).unwrap();
    fs::write(first.path("docs/saved.txt"), b"in a snapshot").unwrap();
    fs::write(first.path("big.bin"), random_bytes(3 << 20, 7)).unwrap();
    first.wait_status("docs/saved.txt", &["active"], MIN);
    first.wait_status("big.bin", &["active"], MIN);
    wait_for_snapshot(&first);
    let before = snapshot(first.root());
    let saved = first.cess("docs/saved.txt", "fid").unwrap();
    first.remount_with(&["--snapshots", "false"]);
    fs::write(first.path("unsaved.txt"), b"declared, in no snapshot").unwrap();
    first.wait_status("unsaved.txt", &["active"], MIN);
    let unsaved = first.cess("unsaved.txt", "fid").unwrap();
    first.unmount();

    let mut second = Mount::unmounted("0", &["--chain", &net.url, "--pack-below", "0", "--sweep-after", "0"]);
    for step in ["restore-chosen", "restore-files", "restore-done"] {
        second.arm(step);
        second.spawn();
        second.wait_hook(step, MIN);
        second.kill9();
        second.release(step);
    }
    second.mount();
    assert!(snapshot(second.root()) == before, "the whole tree, once");
    wait_for_snapshot(&second);
    wait_until(MIN, "the lost machine's unsaved FID to leave the chain", || chain.file(&unsaved).is_none());
    assert!(chain.file(&saved).is_some());
    assert!(tree_state(&second)["stopped"].is_null(), "{}", tree_state(&second));
}

/// A FID that a snapshot of an earlier tree (before `--fresh`) refers to is not deleted by the
/// later tree when it lets go of the same bytes: the earlier tree still reads back whole.
#[test]
fn a_fid_an_earlier_tree_refers_to_stays_when_a_later_tree_lets_go_of_it() {
    let net = StandaloneDevnet::start();
    let chain = net.client();
    let mut first = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "0"]);
    fs::write(first.path("x.txt"), b"bytes both trees hold").unwrap();
    first.wait_status("x.txt", &["active"], MIN);
    let fid = first.cess("x.txt", "fid").unwrap();
    wait_for_snapshot(&first);
    let earlier = tree_state(&first)["generation"].as_u64().unwrap().to_string();
    first.unmount();

    let later = Mount::uploading("0", &["--chain", &net.url, "--fresh", "--pack-below", "0", "--snapshots-kept", "1"]);
    fs::write(later.path("x.txt"), b"bytes both trees hold").unwrap();
    later.wait_status("x.txt", &["active"], MIN);
    assert_eq!(later.cess("x.txt", "fid").unwrap(), fid, "same key, same bytes, same FID");
    wait_for_snapshot(&later);
    fs::remove_file(later.path("x.txt")).unwrap();
    fs::write(later.path("y.txt"), b"a change after it").unwrap();
    later.wait_status("y.txt", &["active"], MIN);
    wait_for_snapshot(&later);
    wait_until(MIN, "the deletion to be dropped or done", || {
        chain.file(&fid).is_none() || later.log().contains(&format!("{fid} is in use here"))
    });
    assert!(chain.file(&fid).is_some(), "the earlier tree's snapshot refers to it");
    let view = Mount::uploading("0", &["--chain", &net.url, "--generation", &earlier]);
    assert_eq!(fs::read(view.path("x.txt")).unwrap(), b"bytes both trees hold");
}

/// Two mounts of one tree: one restored on a fresh data dir while the other is away, which then
/// comes back and goes on writing. Nothing either refers to leaves the chain: the machine that
/// came back stops at once (no snapshot, no deletion, no eviction), the restored one does not
/// sweep while files of the tree are stored that it does not know; both say so.
#[test]
fn a_tree_restored_while_its_machine_is_away_loses_nothing_of_either() {
    let net = StandaloneDevnet::start();
    let chain = net.client();
    let args = ["--chain", &net.url, "--pack-below", "0", "--poll-interval", "1"];
    let mut away = Mount::uploading("0", &args);
    fs::write(away.path("kept.txt"), b"in the snapshot restored").unwrap();
    away.wait_status("kept.txt", &["active"], MIN);
    wait_for_snapshot(&away);
    away.remount_with(&["--snapshots", "false"]);
    fs::write(away.path("unsaved.txt"), b"declared before the restore, in no snapshot").unwrap();
    away.wait_status("unsaved.txt", &["active"], MIN);
    away.unmount();

    let mut restored = Mount::unmounted("0", &[&args[..], &["--sweep-after", "0"]].concat());
    restored.arm("sweep");
    restored.mount();
    wait_for_snapshot(&restored);
    restored.wait_hook("sweep", MIN);

    // The machine comes back, writes and removes.
    away.mount_with(&["--snapshots", "true"]);
    // Said at mount (the terminal's notices; a foreground mount logs them).
    assert!(away.log().contains("remount it on a fresh data dir to take up the newer tree"), "{}", away.log());
    fs::write(away.path("late.txt"), b"written after the restore").unwrap();
    away.wait_status("late.txt", &["active"], MIN);
    wait_until(MIN, "the machine that came back to stop", || {
        tree_state(&away)["stopped"].as_str().is_some_and(|w| w.contains("another mount wrote tree snapshot"))
    });
    fs::remove_file(away.path("kept.txt")).unwrap();
    let fids: Vec<String> = ["unsaved.txt", "late.txt"].iter().map(|f| away.cess(f, "fid").unwrap()).collect();
    let kept = restored.cess("kept.txt", "fid").unwrap();
    let _ = Command::new(BIN).arg("evict").arg(away.path("late.txt")).output();
    assert_eq!(away.cess("late.txt", "cached").as_deref(), Some("yes"), "local copies are kept");

    restored.release("sweep");
    wait_until(MIN, "the restored mount to say why it does not sweep", || {
        tree_state(&restored)["sweep_waits"].as_str().is_some_and(|w| w.contains("stored after the restore"))
    });
    for fid in fids.iter().chain([&kept]) {
        assert!(chain.file(fid).is_some(), "{fid} stays on chain");
    }
    let said = run(Command::new(BIN).arg("status").arg(restored.root()));
    assert!(said.contains("not swept yet"), "{said}");
    let said = run(Command::new(BIN).arg("status").arg(away.root()));
    assert!(said.contains("another mount wrote tree snapshot"), "{said}");
}

/// A tree that keeps changing (a camera import, a build) still gets its snapshots: a newer one
/// becomes active while a file is created every 50 ms in a tree of 20,000 stored files (whose
/// walk takes longer than that).
#[test]
fn a_snapshot_becomes_active_while_files_keep_coming() {
    let m = Mount::uploading("0", &["--snapshot-interval", "1"]);
    for d in 0..20 {
        let dir = m.path(&format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            fs::write(dir.join(format!("{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    wait_for_snapshot(&m);
    let first = tree_state(&m)["active_generation"].as_u64().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            fs::create_dir(m.path("new")).unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::write(m.path(&format!("new/{i}")), i.to_string()).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        wait_until(2 * MIN, "a newer snapshot to become active while files keep coming", || {
            tree_state(&m)["active_generation"].as_u64().is_some_and(|g| g > first)
        });
    });
}

/// Stops a helper thread of a scope however the test ends (the scope waits for it, a failed
/// check too).
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A declaration in the chain's pool, not yet in a block, when cessfs is killed is followed at
/// the next start instead of being sent again: its deal is declared once and the territory's
/// space locked once.
#[test]
fn a_declaration_in_flight_at_a_kill_is_followed_not_sent_again() {
    let net = StandaloneDevnet::start();
    let chain = net.client();
    let mut m = Mount::uploading("0", &["--chain", &net.url, "--pack-below", "0", "--snapshots", "false"]);
    let before = chain.territory_charged();
    chain.run(chain.chain.hold_declarations(true)).unwrap();
    fs::write(m.path("a.bin"), random_bytes(1 << 20, 3)).unwrap();
    wait_until(MIN, "the declaration to wait in the pool", || chain.run(chain.chain.pooled()).unwrap() == 1);
    let fid = m.cess("a.bin", "fid").unwrap();
    m.kill9();
    m.mount();
    wait_until(MIN, "the restarted mount to follow the declaration", || {
        m.log().contains("may still land") || chain.run(chain.chain.pooled()).unwrap() > 1
    });
    chain.run(chain.chain.hold_declarations(false)).unwrap();
    m.wait_status("a.bin", &["active"], MIN);
    assert_eq!(chain.declarations(&fid), 1, "declared once");
    assert_eq!(chain.territory_charged() - before, 96 << 20, "one segment's space, locked once");
}

/// kill -9 at each step of a deletion (decided; recorded as sent; in flight, held in the chain's
/// pool; landed but not yet settled) loses nothing: after the restart the removed file's FID
/// leaves the chain, the other file reads back from CESS byte for byte, and the same bytes
/// written again are stored again, never taken as held while their deletion may still land.
#[test]
fn kill_9_at_each_step_of_a_deletion_loses_nothing() {
    let net = StandaloneDevnet::start();
    let chain = net.client();
    for (i, step) in ["reaper-decided", "deletion-marked", "in flight", "deletion-landed"].into_iter().enumerate() {
        let mut m = Mount::uploading("0", &["--chain", &net.url, "--snapshots", "false", "--pack-below", "0"]);
        // Bytes of their own in each round: the mounts share a key, so equal bytes share a FID.
        let kept = random_bytes(1 << 20, 100 + i as u64);
        let removed = random_bytes(1 << 20, 200 + i as u64);
        fs::write(m.path("kept.bin"), &kept).unwrap();
        fs::write(m.path("gone.bin"), &removed).unwrap();
        m.wait_status("kept.bin", &["active"], MIN);
        m.wait_status("gone.bin", &["active"], MIN);
        let (kept_fid, fid) = (m.cess("kept.bin", "fid").unwrap(), m.cess("gone.bin", "fid").unwrap());
        let in_flight = step == "in flight";
        match in_flight {
            true => chain.run(chain.chain.hold_deletions(true)).unwrap(),
            false => m.arm(step),
        }
        fs::remove_file(m.path("gone.bin")).unwrap();
        let sent = format!("deleting {fid}");
        match in_flight {
            true => {
                wait_until(MIN, "the deletion to be sent", || m.log().contains(&sent));
                // The same bytes written while it is in the pool wait for it.
                fs::write(m.path("again.bin"), &removed).unwrap();
                wait_until(MIN, "the same bytes to wait for their deletion", || {
                    m.cess("again.bin", "error").is_some_and(|e| e.contains("being deleted"))
                });
            }
            false => m.wait_hook(step, MIN),
        }
        sync_mount(&m);
        let waited = |m: &Mount| m.log().matches(&format!("(fid {fid}) are being deleted")).count();
        let waited_before = waited(&m);
        m.kill9();
        m.release(step);
        if in_flight {
            // The deletion may still land. After the restart, its FID stays claimed before the
            // reaper looks at it again: the file that needs the same bytes still waits.
            m.arm("reaper-deciding");
            m.mount();
            m.wait_hook("reaper-deciding", MIN);
            wait_until(MIN, "the same bytes to wait again after the restart", || waited(&m) > waited_before);
            m.release("reaper-deciding");
            wait_until(MIN, "the deletion to be followed", || m.log().matches(&sent).count() > 1);
            assert_ne!(m.cess("again.bin", "status").unwrap(), "active", "not taken as held while it may go");
            chain.run(chain.chain.hold_deletions(false)).unwrap();
        } else {
            m.mount();
        }
        wait_until(MIN, &format!("{step}: the removed file's FID to leave the chain"), || chain.file(&fid).is_none());
        if !in_flight {
            fs::write(m.path("again.bin"), &removed).unwrap();
        }
        m.wait_status("again.bin", &["active"], MIN);
        assert_eq!(m.cess("again.bin", "fid").unwrap(), fid, "{step}: same key, same bytes: same FID");
        assert!(chain.file(&fid).is_some(), "{step}: the bytes written again are on CESS");
        assert!(chain.file(&kept_fid).is_some(), "{step}: the kept file stays on CESS");
        run(Command::new(BIN).arg("evict").arg(m.root()));
        assert!(fs::read(m.path("kept.bin")).unwrap() == kept, "{step}: the kept file reads back from the nodes");
        assert!(fs::read(m.path("again.bin")).unwrap() == removed, "{step}: the bytes written again read back");
        m.unmount();
    }
}
