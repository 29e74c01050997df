//! What cp, mv and the desktop file managers (GIO: Nautilus, Thunar; KIO: Dolphin) do to a mount.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use crate::common::*;

/// A source tree with nested directories, odd names, modes, times, a symlink and user xattrs.
fn make_tree(root: &Path) {
    let long = "n".repeat(255);
    let dirs = ["a", "a/deep er", "a/deep er/ünï", "empty dir"];
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let files: [(&str, Vec<u8>); 5] = [
        ("top.txt", b"top".to_vec()),
        ("a/with space.bin", (0..300_000u32).map(|i| (i % 253) as u8).collect()),
        ("a/deep er/ünï/日本語.md", "héllo".as_bytes().to_vec()),
        ("a/empty", Vec::new()),
        ("a/deep er/placeholder", b"p".to_vec()),
    ];
    for (f, bytes) in &files {
        fs::write(root.join(f), bytes).unwrap();
    }
    fs::write(root.join("a").join(&long), b"long name").unwrap();
    fs::set_permissions(root.join("top.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("../top.txt", root.join("a/link")).unwrap();
    setxattr(&root.join("top.txt"), "user.xdg.origin.url", b"https://example.org/top", 0).unwrap();
    setxattr(&root.join("a/deep er"), "user.xdg.comment", b"a directory", 0).unwrap();
    let t = UNIX_EPOCH + Duration::new(1_400_000_000, 42);
    File::options().write(true).open(root.join("top.txt")).unwrap().set_modified(t).unwrap();
}

#[test]
fn cp_a_and_mv_keep_everything() {
    let m = Mount::start();
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    run(Command::new("cp").arg("-a").arg(src.path()).arg(m.path("copy")));
    assert_eq!(snapshot(&m.path("copy")), snapshot(src.path()));
    let (s, d) = (fs::metadata(src.path().join("top.txt")).unwrap(), fs::metadata(m.path("copy/top.txt")).unwrap());
    assert_eq!((d.mode(), d.mtime(), d.mtime_nsec()), (s.mode(), s.mtime(), s.mtime_nsec()));
    // mv across file systems: copy, then delete the source.
    let moving = tempfile::tempdir().unwrap();
    make_tree(moving.path());
    let before = snapshot(moving.path());
    run(Command::new("mv").arg(moving.path().join("a")).arg(m.path("moved")));
    assert!(!moving.path().join("a").exists());
    let after = snapshot(&m.path("moved"));
    let expected: std::collections::BTreeMap<_, _> = before
        .into_iter()
        .filter_map(|(p, n)| {
            p.strip_prefix("a").ok().filter(|r| !r.as_os_str().is_empty()).map(|r| (r.to_path_buf(), n))
        })
        .collect();
    assert_eq!(after, expected);
    // And back out again, within the mount, as a rename.
    run(Command::new("mv").arg(m.path("moved")).arg(m.path("copy/moved-in")));
    assert!(m.path("copy/moved-in/deep er/ünï/日本語.md").exists());
}

fn gio(args: &[&str]) -> String {
    run(Command::new("gio").args(args).env("GIO_USE_VFS", "local"))
}

#[test]
fn gio_copy_move_trash_and_replace() {
    let m = Mount::start();
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    // gio copies one file at a time, as Nautilus' copy job does, keeping attributes.
    let dst = m.path("g");
    gio(&["mkdir", "-p", dst.join("a/deep er/ünï").to_str().unwrap()]);
    for f in ["top.txt", "a/with space.bin", "a/deep er/ünï/日本語.md", "a/empty"] {
        gio(&["copy", "--preserve", src.path().join(f).to_str().unwrap(), dst.join(f).to_str().unwrap()]);
        assert_eq!(fs::read(dst.join(f)).unwrap(), fs::read(src.path().join(f)).unwrap(), "{f}");
    }
    assert_eq!(getxattr(&dst.join("top.txt"), "user.xdg.origin.url").unwrap(), b"https://example.org/top");
    assert_eq!(fs::metadata(dst.join("top.txt")).unwrap().mtime(), 1_400_000_000);
    // Replace an existing file: GIO writes .goutputstream-XXXXXX and renames it over the target.
    gio(&["copy", src.path().join("a/with space.bin").to_str().unwrap(), dst.join("top.txt").to_str().unwrap()]);
    assert_eq!(fs::read(dst.join("top.txt")).unwrap(), fs::read(src.path().join("a/with space.bin")).unwrap());
    let mut save = Command::new("gio")
        .args(["save", dst.join("saved.txt").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    save.stdin.take().unwrap().write_all(b"first").unwrap();
    assert!(save.wait().unwrap().success());
    let mut save = Command::new("gio")
        .args(["save", dst.join("saved.txt").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    save.stdin.take().unwrap().write_all(b"second version").unwrap();
    assert!(save.wait().unwrap().success());
    assert_eq!(fs::read(dst.join("saved.txt")).unwrap(), b"second version");
    let leftovers: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".goutputstream"))
        .collect();
    assert!(leftovers.is_empty());
    assert_eq!(getxattr(&dst.join("saved.txt"), "user.cess.status").unwrap(), b"staged");
    // Move within the mount (a rename) and into the mount (copy and delete).
    gio(&["move", dst.join("a").to_str().unwrap(), m.path("moved-a").to_str().unwrap()]);
    assert!(m.path("moved-a/deep er/ünï/日本語.md").exists() && !dst.join("a").exists());
    let outside = src.path().join("a/deep er/placeholder");
    gio(&["move", outside.to_str().unwrap(), m.path("placeholder").to_str().unwrap()]);
    assert!(!outside.exists());
    assert_eq!(fs::read(m.path("placeholder")).unwrap(), b"p");
    // Trash: a rename into .Trash-$UID at the mount root, plus a .trashinfo file.
    gio(&["trash", m.path("placeholder").to_str().unwrap()]);
    // SAFETY: getuid has no preconditions.
    let trash = m.path(&format!(".Trash-{}", unsafe { libc::getuid() }));
    assert_eq!(fs::read(trash.join("files/placeholder")).unwrap(), b"p");
    assert!(fs::read_to_string(trash.join("info/placeholder.trashinfo")).unwrap().contains("Path="));
    assert!(!m.path("placeholder").exists());
}

#[test]
fn kio_part_file_then_rename() {
    let m = Mount::start();
    fs::write(m.path("doc.odt"), b"old").unwrap();
    // KIO overwrites through name.part: create, fchmod, write, fsetxattr, futimens, close, rename.
    let part = m.path("doc.odt.part");
    let mut f = OpenOptions::new().write(true).create_new(true).open(&part).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600)).unwrap();
    f.write_all(b"new contents").unwrap();
    setxattr(&part, "user.xdg.origin.url", b"file:///src", 0).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::new(1_300_000_000, 5)).unwrap();
    drop(f);
    fs::rename(&part, m.path("doc.odt")).unwrap();
    let md = fs::metadata(m.path("doc.odt")).unwrap();
    assert_eq!(fs::read(m.path("doc.odt")).unwrap(), b"new contents");
    assert_eq!((md.mode() & 0o777, md.mtime(), md.mtime_nsec()), (0o600, 1_300_000_000, 5));
    assert_eq!(getxattr(&m.path("doc.odt"), "user.xdg.origin.url").unwrap(), b"file:///src");
    assert!(!part.exists());
}
