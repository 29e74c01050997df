//! `cessfs gc`: the collection of this tree's garbage on CESS, on demand.

use std::fs;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

fn gc(m: &Mount, args: &[&str]) -> String {
    run(std::process::Command::new(BIN).arg("gc").args(args).arg(m.root()))
}

/// `cessfs gc --dry-run` lists the FIDs of this key that nothing refers to (here a file another
/// data dir of the key stored without a tree) with the territory they take, and deletes
/// nothing; `cessfs gc` deletes them; what the tree refers to stays and reads back.
#[test]
fn gc_deletes_what_nothing_refers_to_and_nothing_else() {
    let net = StandaloneDevnet::start();
    let client = net.client();
    let m = Mount::uploading("0", &["--chain", &net.url, "--gc-grace", "0"]);
    let kept = random_bytes(9 << 20, 1);
    fs::write(m.path("kept.bin"), &kept).unwrap();
    fs::write(m.path("note.txt"), b"a small file").unwrap();
    m.wait_status("kept.bin", &["active"], MIN);
    m.wait_status("note.txt", &["active"], MIN);
    run(std::process::Command::new(BIN).args(["status", "--wait", "--timeout", "120"]).arg(m.root()));
    let nothing = gc(&m, &["--dry-run"]);
    assert!(nothing.contains("0 FIDs of this tree that nothing refers to"), "{nothing}\n{}", m.log());

    let stray = {
        let s = Mount::uploading("0", &["--chain", &net.url, "--snapshots", "false"]);
        fs::write(s.path("stray.bin"), random_bytes(9 << 20, 2)).unwrap();
        s.wait_status("stray.bin", &["active"], MIN);
        s.cess("stray.bin", "fid").unwrap()
    };
    let listed = gc(&m, &["--dry-run"]);
    assert!(listed.contains(&stray) && listed.contains("1 FID of this tree"), "{listed}\n{}", m.log());
    assert!(listed.contains("would free 96 MiB"), "{listed}");
    assert!(client.file(&stray).is_some(), "a dry run deletes nothing");

    let done = gc(&m, &[]);
    assert!(done.contains("1 queued for deletion"), "{done}\n{}", m.log());
    wait_until(MIN, "the stray FID to leave the chain", || client.file(&stray).is_none());
    let fid = m.cess("kept.bin", "fid").unwrap();
    assert!(client.file(&fid).is_some(), "what the tree refers to stays");
    run(std::process::Command::new(BIN).arg("evict").arg(m.root()));
    assert!(fs::read(m.path("kept.bin")).unwrap() == kept);
    assert_eq!(fs::read(m.path("note.txt")).unwrap(), b"a small file");
    let after = gc(&m, &["--dry-run"]);
    assert!(after.contains("0 FIDs"), "{after}");
}
