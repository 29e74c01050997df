//! Crash safety: a `kill -9` of the daemon at any moment loses nothing that was closed or
//! fsynced, and the tree is consistent after the next mount.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// close(2) with its result (dropping a File ignores it).
fn close(f: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: we own the descriptor and give it up here.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn content(i: usize) -> Vec<u8> {
    let len = [10, 4096, 100_000, 1 << 20][i % 4] + i;
    (0..len).map(|j| ((i * 31 + j * 7) % 256) as u8).collect()
}

#[test]
fn kill_9_while_writing_loses_nothing_closed() {
    let mut m = Mount::start();
    let mut all_closed: Vec<usize> = Vec::new();
    let mut next = 0usize;
    for round in 0..3 {
        let closed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let root = m.root().to_path_buf();
        let start = next;
        let writer = {
            let (closed, stop) = (closed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = start;
                while !stop.load(Ordering::Relaxed) {
                    let write = || -> std::io::Result<()> {
                        let mut f = File::create(root.join(format!("f{i}")))?;
                        f.write_all(&content(i))?;
                        close(f) // the daemon answers only once the file is durable
                    };
                    if write().is_err() {
                        break;
                    }
                    closed.lock().unwrap().push(i);
                    i += 1;
                }
                i
            })
        };
        // A file fsynced but still open when the daemon dies.
        let mut open =
            OpenOptions::new().write(true).create(true).truncate(true).open(m.path(&format!("open{round}"))).unwrap();
        open.write_all(b"fsynced bytes").unwrap();
        open.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(200 + 400 * round as u64));
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        next = writer.join().unwrap() + 1;
        drop(open);
        all_closed.extend(closed.lock().unwrap().iter().copied());
        assert!(!all_closed.is_empty(), "the writer got nothing done before the kill");
        m.mount(); // cleans up the dead mount first
        for &i in &all_closed {
            let read = fs::read(m.path(&format!("f{i}")));
            let ok = read.as_ref().is_ok_and(|b| *b == content(i));
            assert!(ok, "closed file f{i} after kill -9 #{round}: {:?}", read.map(|b| b.len()));
        }
        for r in 0..=round {
            let read = fs::read(m.path(&format!("open{r}")));
            assert_eq!(read.as_deref().ok(), Some(&b"fsynced bytes"[..]), "open{r} after kill -9 #{round}: {read:?}");
        }
        // Consistent: every entry listed can be stat'ed and read, whatever state it was in.
        for e in fs::read_dir(m.root()).unwrap() {
            let p = e.unwrap().path();
            let len = fs::metadata(&p).unwrap().len();
            assert_eq!(fs::read(&p).unwrap().len() as u64, len, "{}", p.display());
        }
    }
}

#[test]
fn kill_9_with_an_existing_file_open_for_writing_restages_it() {
    let mut m = Mount::start();
    fs::write(m.path("doc"), b"version one").unwrap();
    let mut f = OpenOptions::new().write(true).open(m.path("doc")).unwrap();
    f.write_all(b"VERSION").unwrap();
    f.sync_all().unwrap();
    m.kill9();
    drop(f);
    m.mount();
    assert_eq!(fs::read(m.path("doc")).unwrap(), b"VERSION one");
    assert_eq!(getxattr(&m.path("doc"), "user.cess.status").unwrap(), b"staged");
    assert!(m.log().contains("re-staging inode"), "{}", m.log());
}

/// Evicts `rel`, waiting for the daemon to learn of its last close (FUSE release comes after
/// close(2) returns).
fn evict_now(m: &Mount, rel: &str) {
    wait_until(Duration::from_secs(10), "the file to be closed in the daemon", || {
        match setxattr(&m.path(rel), "user.cess.evict", b"1", 0) {
            Err(libc::EBUSY) => false,
            r => {
                r.unwrap();
                true
            }
        }
    });
}

/// An eviction interrupted by `kill -9` at any point leaves the file either whole on disk or
/// recorded as not cached: it reads back byte for byte, never as zeros, and an append after the
/// restart stores the right bytes.
#[test]
fn kill_9_right_after_an_eviction_never_reads_wrong_bytes() {
    let data = random_bytes(50 << 20, 31);
    let mut m = Mount::uploading("0", &[]);
    fs::write(m.path("f.bin"), &data).unwrap();
    m.wait_status("f.bin", &["active"], Duration::from_secs(120));
    for (round, delay_ms) in [0u64, 0, 20, 50, 100, 150].into_iter().enumerate() {
        // The kill point, not a wait for a condition: each round crashes at another moment.
        evict_now(&m, "f.bin");
        std::thread::sleep(Duration::from_millis(delay_ms));
        m.kill9();
        m.mount();
        let cached = m.cess("f.bin", "cached").unwrap();
        assert!(fs::read(m.path("f.bin")).unwrap() == data, "round {round}: f.bin was cached={cached} after the crash");
    }
    let mut f = OpenOptions::new().append(true).open(m.path("f.bin")).unwrap();
    f.write_all(b"tail").unwrap();
    close(f).unwrap();
    m.wait_status("f.bin", &["active"], Duration::from_secs(120));
    evict_now(&m, "f.bin");
    let back = fs::read(m.path("f.bin")).unwrap();
    assert!(back.len() == data.len() + 4 && back[..data.len()] == data[..] && back.ends_with(b"tail"));
}

/// When the disk cannot make a file's content durable (fdatasync fails: the kernel may have
/// dropped its dirty pages), the file is poisoned: the close reports EIO, it is never uploaded,
/// writes fail until it is rewritten from scratch, and that survives a restart. Other files go
/// on as usual. The content dir is an ext4 image on a sparse file in a small tmpfs: once the
/// tmpfs is full, the image's new blocks cannot be written, so the fdatasync fails for real.
#[test]
fn a_failed_fsync_poisons_the_file_until_it_is_rewritten() {
    let area = tempfile::tempdir().unwrap();
    let backing = TestFs::tmpfs(&area.path().join("backing"), "40m");
    let image = area.path().join("backing/content.img");
    File::create(&image).unwrap().set_len(200 << 20).unwrap();
    let mut content_fs = None;
    let mut m = Mount::prepared(&["--quiet-delay", "0"], |data| {
        content_fs = Some(TestFs::ext4(&image, &data.join("content")));
        fs::remove_dir(data.join("content/lost+found")).unwrap();
    });
    fs::write(m.path("good.txt"), b"stays good").unwrap();
    m.wait_status("good.txt", &["active"], Duration::from_secs(60));

    let ballast = fill(&area.path().join("backing"), "ballast");
    let mut f = File::create(m.path("bad.bin")).unwrap();
    // By passthrough (as root) a write reaches the disk without the daemon and gets the disk's
    // own answer; the close reports the failed fsync whatever the writes got.
    if let Err(e) = f.write_all(&random_bytes(4 << 20, 5)) {
        assert!(matches!(e.raw_os_error(), Some(libc::EIO | libc::ENOSPC | libc::EROFS)), "{e}");
    }
    let err = close(f).expect_err("the close reports the failed fsync");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(m.cess("bad.bin", "status").as_deref(), Some("failed"));
    let why = m.cess("bad.bin", "error").unwrap();
    assert!(why.contains("may be damaged"), "{why}");
    fs::remove_file(&ballast).unwrap();

    // Space is back, the file is still refused, and nothing of it reached the chain.
    let append = OpenOptions::new().append(true).open(m.path("bad.bin"));
    assert_eq!(append.map(drop).unwrap_err().raw_os_error(), Some(libc::EIO), "writes refused");
    m.remount();
    assert_eq!(m.cess("bad.bin", "status").as_deref(), Some("failed"), "poisoned across a restart");
    let append = OpenOptions::new().append(true).open(m.path("bad.bin"));
    assert_eq!(append.map(drop).unwrap_err().raw_os_error(), Some(libc::EIO), "still refused after a restart");
    assert!(m.log().contains("may be damaged"), "the log says why:\n{}", m.log());
    assert_eq!(fs::read(m.path("good.txt")).unwrap(), b"stays good");

    // Rewritten from scratch, it is a file like any other again.
    let fresh = random_bytes(1 << 20, 6);
    fs::write(m.path("bad.bin"), &fresh).unwrap();
    m.wait_status("bad.bin", &["active"], Duration::from_secs(60));
    assert!(fs::read(m.path("bad.bin")).unwrap() == fresh);
    m.unmount();
    drop(content_fs);
    drop(backing);
}

/// With the data dir's disk full, new bytes get ENOSPC, but unlink, rmdir, truncate and rename
/// still work (the database has a reserve), files already there stay intact, uploads go on
/// (the chain is elsewhere, as a real one is), the log says each problem once, and the mount
/// comes back after a restart on the full disk.
#[test]
fn a_full_disk_refuses_new_bytes_but_never_wedges_the_mount() {
    let net = StandaloneDevnet::start();
    let mut disk = None;
    let mut m = Mount::prepared(&["--quiet-delay", "0", "--chain", &net.url], |data| {
        disk = Some(TestFs::tmpfs(data, "160m"));
    });
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("keep.txt"), b"kept").unwrap();
    fs::write(m.path("note.txt"), b"a note to truncate").unwrap();
    fs::write(m.path("old.txt"), b"renamed on a full disk").unwrap();
    let big = random_bytes(20 << 20, 7);
    fs::write(m.path("big.bin"), &big).unwrap();
    // Stored first: a file that became active during the fill would free its cached copy later.
    for f in ["keep.txt", "note.txt", "old.txt", "big.bin"] {
        m.wait_status(f, &["active"], Duration::from_secs(60));
    }

    // Fill the disk through the mount. The filling files stay open, so they are not uploaded
    // (and then evictable) during the checks.
    let lines_before = m.log().lines().count();
    let mut filler = File::create(m.path("fill.bin")).unwrap();
    let block = vec![9u8; 1 << 20];
    let full = loop {
        if let Err(e) = filler.write_all(&block) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    // New bytes first take the room of cached copies of stored files, then get ENOSPC.
    let mut more = File::create(m.path("more.bin")).unwrap();
    let full = loop {
        if let Err(e) = more.write_all(&block) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    for _ in 0..30 {
        let extra = fs::write(m.path("extra.bin"), &block);
        assert_eq!(extra.unwrap_err().raw_os_error(), Some(libc::ENOSPC), "new bytes need space");
    }
    let _ = close(filler);
    drop(more);

    // What gives space back, and renames, work on the full disk.
    fs::rename(m.path("old.txt"), m.path("new.txt")).unwrap();
    fs::remove_dir(m.path("dir")).unwrap();
    File::options().write(true).open(m.path("note.txt")).unwrap().set_len(4).unwrap();
    fs::remove_file(m.path("big.bin")).unwrap();
    File::options().write(true).open(m.path("fill.bin")).unwrap().set_len(1 << 20).unwrap();
    fs::write(m.path("after.txt"), b"written once there was room").unwrap();
    assert_eq!(fs::read(m.path("keep.txt")).unwrap(), b"kept");
    assert_eq!(fs::read(m.path("note.txt")).unwrap(), b"a no");
    assert_eq!(fs::read(m.path("new.txt")).unwrap(), b"renamed on a full disk");
    for f in ["after.txt", "new.txt", "note.txt"] {
        m.wait_status(f, &["active"], Duration::from_secs(60));
    }
    let log = m.log();
    let repeats = log.lines().filter(|l| l.contains("write:") && l.contains("No space left")).count();
    assert!(repeats <= 1, "a repeated problem is logged once a minute, not {repeats} times:\n{log}");
    // Nothing spins on the full disk: the engine and the cache back off, and say so rarely.
    let said = log.lines().count() - lines_before;
    assert!(said < 200, "{said} log lines while the disk was full:\n{log}");

    // A restart on a disk that filled while the mount was down (filled while it runs, the
    // daemon may give up its reserve to a write that needs it, and a disk full to the last byte
    // without one cannot open the database: that is said, and nothing is lost).
    m.unmount();
    let ballast = fill(m.data_dir(), "ballast");
    m.mount();
    assert_eq!(fs::read(m.path("keep.txt")).unwrap(), b"kept");
    fs::remove_file(m.path("new.txt")).unwrap();
    fs::remove_file(&ballast).unwrap();
    fs::write(m.path("last.txt"), b"the disk has room again").unwrap();
    m.wait_status("last.txt", &["active"], Duration::from_secs(60));
    m.unmount();
    drop(m);
    drop(disk);
}

/// `cessfs unmount` waits for the daemon to finish, whatever the form of its data dir: once it
/// returns, the data dir can be mounted again.
#[test]
fn unmount_waits_for_a_daemon_with_a_relative_data_dir() {
    let area = tempfile::tempdir().unwrap();
    let mountpoint = area.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let key = area.path().join("key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = File::options().write(true).create_new(true).mode(0o600).open(&key).unwrap();
        f.write_all("5a".repeat(32).as_bytes()).unwrap();
    }
    let mount = |dir: &str| {
        run(Command::new(BIN).current_dir(area.path()).args([
            "mount",
            dir,
            "--data-dir",
            "data",
            "--key-file",
            "key",
            "--quiet-delay",
            "0",
        ]));
    };
    mount("mnt");
    fs::write(mountpoint.join("f.bin"), random_bytes(64 << 20, 3)).unwrap();
    run(Command::new(BIN).current_dir(area.path()).args(["unmount", "mnt"]));
    // The daemon is gone: its data dir is free for the next mount.
    mount("mnt");
    run(Command::new(BIN).current_dir(area.path()).args(["unmount", "mnt"]));
}

/// A data dir mounted before mounts without the chain: local files read and write as usual,
/// uploads wait (and say why) and resume when the chain answers, and a read that needs the
/// network fails with EIO instead of hanging.
#[test]
fn without_the_chain_a_mounted_data_dir_still_mounts_and_catches_up_later() {
    let mut net = StandaloneDevnet::start();
    let mut m = Mount::uploading("0", &["--chain", &net.url]);
    fs::write(m.path("local.txt"), b"kept on this disk").unwrap();
    fs::write(m.path("evicted.txt"), b"only on CESS").unwrap();
    for f in ["local.txt", "evicted.txt"] {
        m.wait_status(f, &["active"], Duration::from_secs(60));
    }
    evict_now(&m, "evicted.txt");
    m.unmount();
    net.stop();

    m.mount();
    assert_eq!(fs::read(m.path("local.txt")).unwrap(), b"kept on this disk");
    let err = fs::read(m.path("evicted.txt")).expect_err("the network is needed and gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    fs::write(m.path("offline.txt"), b"written on the train").unwrap();
    wait_until(Duration::from_secs(30), "the upload to say the chain is unreachable", || {
        m.cess("offline.txt", "progress").is_some_and(|p| p.contains("the chain is unreachable since"))
    });
    let status = run(Command::new(BIN).arg("status").arg(m.root()));
    assert!(status.contains("the chain is unreachable since"), "{status}");

    net.resume();
    m.wait_status("offline.txt", &["active"], Duration::from_secs(120));
    assert_eq!(fs::read(m.path("evicted.txt")).unwrap(), b"only on CESS");
}

/// The embedded default on a full disk: removed files whose deals cannot go on (the devnet's
/// nodes, on the same disk, refuse fragments before the database's reserve) give their bytes
/// back by giving up their deals, so a new file is written and stored without a remount, and
/// `cessfs status` shows the territory those deals lock.
#[test]
fn removed_files_give_their_space_back_on_a_full_disk_and_a_new_file_is_stored() {
    let mut disk = None;
    let m = Mount::prepared(&["--quiet-delay", "0", "--snapshots", "false"], |data| {
        disk = Some(TestFs::tmpfs(data, "300m"));
    });
    let net = m.devnet();
    // Deals open and cannot finish: every node refuses, then the disk is full.
    let nodes: Vec<usize> = net.nodes().iter().map(|n| n.index).collect();
    for &i in &nodes {
        net.fault(i, "refuse");
    }
    // 140 MiB given back: the new file's 20 MiB and its fragments on the devnet's nodes, which
    // share this disk and may hold all 12 whole (96 MiB) while parity arrives before data.
    for (i, name) in ["a.bin", "b.bin"].into_iter().enumerate() {
        fs::write(m.path(name), random_bytes(70 << 20, 40 + i as u64)).unwrap();
        m.wait_status(name, &["pushing"], Duration::from_secs(60));
    }
    let ballast = fill(m.data_dir(), "ballast");
    fs::remove_file(m.path("a.bin")).unwrap();
    fs::remove_file(m.path("b.bin")).unwrap();

    // The new file's bytes need the space the removed files' deals held. The nodes take
    // fragments again once those deals are given up.
    let after = random_bytes(20 << 20, 42);
    fs::write(m.path("after.bin"), &after).unwrap();
    for &i in &nodes {
        net.fault(i, "none");
    }
    m.wait_status("after.bin", &["active"], Duration::from_secs(120));
    let log = m.log();
    assert!(log.contains("gave up the deal of a removed file"), "the log says so:\n{log}");
    let status = run(Command::new(BIN).arg("status").arg(m.root()));
    assert!(status.contains("2 deals of removed files given up"), "{status}");
    // Read back from CESS, not the cache.
    run(Command::new(BIN).arg("evict").arg(m.path("after.bin")));
    assert!(fs::read(m.path("after.bin")).unwrap() == after);
    fs::remove_file(&ballast).unwrap();
    drop(m);
    drop(disk);
}
