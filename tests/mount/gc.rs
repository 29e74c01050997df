//! `cessfs gc`: the collection of this tree's garbage on CESS, on demand.

use std::fs;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

fn gc(m: &Mount, args: &[&str]) -> String {
    run(std::process::Command::new(BIN).arg("gc").args(args).arg(m.root()))
}

fn wait_for_tree(m: &Mount) {
    run(std::process::Command::new(BIN).args(["status", "--wait", "--timeout", "120"]).arg(m.root()));
}

/// A machine killed after storing a file and before its tree named it leaves that FID on chain.
/// The tree restored on a fresh data dir lists it with `cessfs gc --dry-run` (and the territory
/// it takes), deleting nothing; `cessfs gc` deletes it, after one killed -9 midway deleted
/// nothing. A file another mount of the key stored after the restore without a tree is kept, and
/// counted; what the tree refers to stays.
#[test]
fn gc_deletes_what_nothing_refers_to_and_nothing_else() {
    let net = StandaloneDevnet::start();
    let client = net.client();
    let mut lost = Mount::uploading("0", &["--chain", &net.url]);
    let kept = random_bytes(9 << 20, 1);
    fs::write(lost.path("kept.bin"), &kept).unwrap();
    fs::write(lost.path("note.txt"), b"a small file").unwrap();
    lost.wait_status("kept.bin", &["active"], MIN);
    lost.wait_status("note.txt", &["active"], MIN);
    wait_for_tree(&lost);
    let nothing = gc(&lost, &["--dry-run"]);
    assert!(nothing.contains("nothing to collect"), "{nothing}\n{}", lost.log());
    // Stored, then the machine dies before the round that names it.
    lost.arm("commit-merged");
    fs::write(lost.path("stray.bin"), random_bytes(9 << 20, 2)).unwrap();
    lost.wait_status("stray.bin", &["active"], MIN);
    let stray = lost.cess("stray.bin", "fid").unwrap();
    lost.wait_hook("commit-merged", MIN);
    lost.kill9();
    drop(lost);

    let m = Mount::uploading("0", &["--chain", &net.url, "--sweep-after", "36000"]);
    assert!(m.log().contains("restored the tree"), "{}", m.log());
    wait_for_tree(&m);
    let other = {
        let s = Mount::uploading("0", &["--chain", &net.url, "--snapshots", "false"]);
        fs::write(s.path("other.bin"), random_bytes(9 << 20, 3)).unwrap();
        s.wait_status("other.bin", &["active"], MIN);
        s.cess("other.bin", "fid").unwrap()
    };
    let listed = gc(&m, &["--dry-run"]);
    assert!(
        listed.contains(&stray) && listed.contains("1 file on CESS that nothing in this tree refers to"),
        "{listed}\n{}",
        m.log()
    );
    assert!(listed.contains("would free 96 MiB"), "{listed}");
    assert!(listed.contains("kept: 1 file on CESS that another mount of this key stored"), "{listed}");
    assert!(!listed.contains(&other), "{listed}");
    assert!(client.file(&stray).is_some(), "a dry run deletes nothing");

    // kill -9 during a collection: nothing was queued, nothing is lost; the next one collects.
    let mut m = m;
    m.arm("sweep");
    let mut asked = std::process::Command::new(BIN).arg("gc").arg(m.root()).spawn().unwrap();
    m.wait_hook("sweep", MIN);
    m.kill9();
    m.release("sweep");
    let _ = asked.wait();
    m.mount();
    assert!(client.file(&stray).is_some(), "a collection cut short deletes nothing");
    let done = gc(&m, &[]);
    assert!(done.contains("1 queued for deletion"), "{done}\n{}", m.log());
    wait_until(MIN, "the stray FID to leave the chain", || client.file(&stray).is_none());
    assert!(client.file(&other).is_some(), "another mount's file stays");
    let fid = m.cess("kept.bin", "fid").unwrap();
    assert!(client.file(&fid).is_some(), "what the tree refers to stays");
    assert!(fs::read(m.path("kept.bin")).unwrap() == kept, "read back from CESS");
    assert_eq!(fs::read(m.path("note.txt")).unwrap(), b"a small file");
    let after = gc(&m, &["--dry-run"]);
    assert!(after.contains("nothing to collect"), "{after}");
    let inside = std::process::Command::new(BIN).args(["gc", "--dry-run"]).arg(m.path("kept.bin")).output().unwrap();
    let said = String::from_utf8_lossy(&inside.stderr);
    assert!(!inside.status.success() && said.contains("is inside the cessfs mount"), "{said}");
}
