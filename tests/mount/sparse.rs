//! Sparse files cost their data: holes are kept as a map in the tree, not uploaded.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);
const SIZE: u64 = 2 << 30;

/// Writes 14 bytes into a 2 GiB file that is otherwise holes.
fn write_sparse(path: &std::path::Path) {
    let f = File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    f.write_all_at(b"hello, ", 1 << 30).unwrap();
    f.write_all_at(b"world!!", SIZE - 7).unwrap();
}

/// Checks the bytes of the sparse file at `path`: its data where it was written, zeros around
/// and in its holes.
fn check_sparse(path: &std::path::Path) {
    let f = File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), SIZE);
    let read = |offset: u64, len: usize| {
        let mut buf = vec![1u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    };
    assert_eq!(read(1 << 30, 7), b"hello, ");
    assert_eq!(read(SIZE - 7, 7), b"world!!");
    let around = read((1 << 30) - 4096, 8192 + 7);
    assert!(around[..4096].iter().chain(&around[4096 + 7..]).all(|&b| b == 0), "zeros around the data");
    assert!(read(0, 1 << 20).iter().all(|&b| b == 0), "a hole reads as zeros");
    assert!(read(SIZE - (32 << 20), (32 << 20) - 7).iter().all(|&b| b == 0), "the last hole too");
}

/// Where `lseek` finds the first data of the file at `path`, and the hole after it.
fn first_data(path: &std::path::Path) -> (i64, i64) {
    use std::os::fd::AsRawFd;
    let f = File::open(path).unwrap();
    // SAFETY: lseek on a descriptor `f` keeps open.
    let data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), data.max(0), libc::SEEK_HOLE) };
    (data, hole)
}

/// `lseek` finds the data where it was written (the file system's blocks around it), and a hole
/// right after.
fn check_seek(path: &std::path::Path) {
    let (data, hole) = first_data(path);
    assert_eq!(data, 1 << 30, "SEEK_DATA");
    assert!(hole > data + 6 && hole <= data + (1 << 20), "SEEK_HOLE: {hole}");
}

/// Bytes `du` counts for `path`.
fn allocated(path: &std::path::Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// A sparse 2 GiB file holding 14 bytes costs one segment: one declaration of at most 9
/// fragments, its holes never uploaded. `du` shows its data, not its size, and `lseek` finds
/// its data and holes, here and evicted. Evicted, it reads back from the miners byte for byte; a
/// fresh data dir restores it with its holes, and `cp` copies it out sparse.
#[test]
fn a_sparse_file_of_2_gib_holding_14_bytes_costs_one_segment() {
    let net = StandaloneDevnet::start();
    let mut first = Mount::uploading("0", &["--chain", &net.url]);
    let client = net.client();
    let (declared, put) = (client.all_declarations(), client.bytes_put());
    write_sparse(&first.path("disk.img"));
    check_seek(&first.path("disk.img"));
    assert!(allocated(&first.path("disk.img")) < 1 << 20, "du shows the data: {}", allocated(&first.path("disk.img")));
    first.wait_status("disk.img", &["active"], MIN);
    let fid = first.cess("disk.img", "fid").unwrap();
    let info = client.file(&fid).expect("on chain");
    assert_eq!(info.segments.len(), 1, "one segment for 14 bytes of data");
    assert_eq!(client.declarations(&fid), 1);
    assert!(client.all_declarations() - declared <= 2, "the file and at most one commit of the tree");
    // Fragments of 8 MiB: the file's 9, and a commit's 9 at most.
    let fragments = (client.bytes_put() - put + (4 << 20)) >> 23;
    assert!(fragments <= 18, "{fragments} fragments pushed");

    run(std::process::Command::new(BIN).arg("evict").arg(first.path("disk.img")));
    assert_eq!(first.cess("disk.img", "cached").as_deref(), Some("no"));
    let stored = allocated(&first.path("disk.img"));
    assert!((14..1 << 20).contains(&stored), "du of an evicted sparse file shows its data: {stored}");
    check_sparse(&first.path("disk.img"));
    check_seek(&first.path("disk.img"));
    first.unmount_with(&["--wait", "--timeout", "120"]);

    let second = Mount::uploading("0", &["--chain", &net.url]);
    assert!(second.log().contains("restored the tree"), "{}", second.log());
    assert_eq!(second.cess("disk.img", "cached").as_deref(), Some("no"), "restored files are cold");
    check_seek(&second.path("disk.img"));
    check_sparse(&second.path("disk.img"));
    assert!(allocated(&second.path("disk.img")) < 1 << 20, "restored with its holes");
    // cp finds the holes with lseek and keeps them.
    let out = tempfile::tempdir().unwrap();
    run(std::process::Command::new("cp").arg(second.path("disk.img")).arg(out.path()));
    check_sparse(&out.path().join("disk.img"));
    assert!(allocated(&out.path().join("disk.img")) < 1 << 20, "cp kept the holes");
}

/// kill -9 while a sparse file's fragments go out: the next mount resumes its deal from the map
/// its upload record keeps (the same FID, declared once), and the file reads back byte for byte.
#[test]
fn kill_9_during_a_sparse_upload_resumes_its_deal() {
    let mut m = Mount::uploading("0", &[]);
    m.arm("column-placed");
    write_sparse(&m.path("disk.img"));
    m.wait_hook("column-placed", MIN);
    let fid = m.cess("disk.img", "fid").expect("declared");
    m.kill9();
    m.release("column-placed");
    m.mount();
    m.wait_status("disk.img", &["active"], MIN);
    assert_eq!(m.cess("disk.img", "fid").as_deref(), Some(fid.as_str()), "the same FID");
    let net = m.devnet();
    assert_eq!(net.declarations(&fid), 1, "declared once\n{}", m.log());
    assert_eq!(net.file(&fid).expect("on chain").segments.len(), 1);
    run(std::process::Command::new(BIN).arg("evict").arg(m.path("disk.img")));
    check_sparse(&m.path("disk.img"));
}
