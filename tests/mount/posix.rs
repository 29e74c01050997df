//! Every POSIX operation cessfs serves, through real syscalls on a real mount, with open files
//! served both by kernel passthrough and through the daemon.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

/// Runs a test body against a mount with passthrough and against one without.
macro_rules! both_modes {
    ($name:ident) => {
        mod $name {
            #[test]
            fn passthrough() {
                super::$name(&crate::common::Mount::start());
            }
            #[test]
            fn through_daemon() {
                super::$name(&crate::common::Mount::start_with(&["--passthrough", "false"]));
            }
        }
    };
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}

fn read_write_at_offsets(m: &Mount) {
    let p = m.path("f");
    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(b"HELLO", 0).unwrap();
    f.write_all_at(b"!", 20).unwrap(); // past the end: a hole of zeros
    drop(f);
    let mut want = b"HELLO world".to_vec();
    want.resize(20, 0);
    want.push(b'!');
    assert_eq!(fs::read(&p).unwrap(), want);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    want.extend_from_slice(b"tail");
    assert_eq!(fs::read(&p).unwrap(), want);
    let mut f = File::open(&p).unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    // A larger file, written in 1 MiB blocks and read back at odd offsets.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(m.path("big"), &big).unwrap();
    let f = File::open(m.path("big")).unwrap();
    let mut part = vec![0u8; 333_333];
    f.read_exact_at(&mut part, 1_234_567).unwrap();
    assert_eq!(part, &big[1_234_567..1_234_567 + 333_333]);
    assert_eq!(fs::metadata(m.path("big")).unwrap().len(), big.len() as u64);
}
both_modes!(read_write_at_offsets);

fn truncate_shrinks_and_grows(m: &Mount) {
    let p = m.path("t");
    fs::write(&p, b"0123456789").unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(4).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"0123");
    f.set_len(8).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"0123\0\0\0\0");
    drop(f);
    // truncate(2) on a closed file, and O_TRUNC.
    std::process::Command::new("truncate").arg("-s").arg("2").arg(&p).status().unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"01");
    OpenOptions::new().write(true).truncate(true).open(&p).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
}
both_modes!(truncate_shrinks_and_grows);

fn chmod_chown_utimens(m: &Mount) {
    let p = m.path("attrs");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let t = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let a = UNIX_EPOCH + Duration::new(1_500_000_000, 987_654_321);
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(a))
        .unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.modified().unwrap(), t, "mtime keeps nanoseconds");
    assert_eq!(md.accessed().unwrap(), a);
    // utimens on a closed file survives a remount-free reopen and a write bumps mtime again.
    let t2 = UNIX_EPOCH + Duration::new(1_000_000_000, 1);
    std::process::Command::new("touch").arg("-d").arg("@1000000000.000000001").arg(&p).status().unwrap();
    assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), t2);
    let before = SystemTime::now() - Duration::from_secs(5);
    OpenOptions::new().append(true).open(&p).unwrap().write_all(b"y").unwrap();
    assert!(fs::metadata(&p).unwrap().modified().unwrap() > before);
    // Directories too.
    fs::create_dir(m.path("d")).unwrap();
    fs::set_permissions(m.path("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().mode() & 0o7777, 0o700);
}
both_modes!(chmod_chown_utimens);

fn directories_and_odd_names(m: &Mount) {
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    assert_eq!(errno(fs::create_dir(m.path("a"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(m.path("a"))), libc::ENOTEMPTY);
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 3, "a has . and b's ..");
    let long = "L".repeat(255);
    let names = ["with space", "ünïcødé ✓", long.as_str(), ".hidden", "-dash"];
    for n in names {
        fs::write(m.path("a").join(n), n.as_bytes()).unwrap();
    }
    assert_eq!(errno(fs::write(m.path("a").join("L".repeat(256)), b"x")), libc::ENAMETOOLONG);
    let mut listed: Vec<String> =
        fs::read_dir(m.path("a")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).chain(["b".to_string()]).collect();
    want.sort();
    assert_eq!(listed, want);
    for n in names {
        assert_eq!(fs::read(m.path("a").join(n)).unwrap(), n.as_bytes());
    }
    // `ls -l` uses readdirplus; a big directory needs several readdir calls.
    for i in 0..600 {
        File::create(m.path("a/b").join(format!("f{i:04}"))).unwrap();
    }
    assert_eq!(fs::read_dir(m.path("a/b")).unwrap().count(), 601);
    let out = run(std::process::Command::new("ls").arg("-la").arg(m.path("a/b")));
    assert_eq!(out.lines().filter(|l| l.contains(" f0")).count(), 600);
    fs::remove_dir(m.path("a/b/c")).unwrap();
    assert_eq!(errno(fs::remove_dir(m.path("a/with space"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(m.path("a/b"))), libc::EISDIR);
}
both_modes!(directories_and_odd_names);

fn renames(m: &Mount) {
    fs::write(m.path("x"), b"x").unwrap();
    fs::write(m.path("y"), b"y").unwrap();
    fs::rename(m.path("x"), m.path("y")).unwrap();
    assert_eq!(fs::read(m.path("y")).unwrap(), b"x");
    assert!(!m.path("x").exists());
    fs::create_dir_all(m.path("d1/sub")).unwrap();
    fs::write(m.path("d1/sub/f"), b"deep").unwrap();
    fs::create_dir(m.path("d2")).unwrap();
    fs::rename(m.path("d1"), m.path("d2")).unwrap(); // over an empty directory
    assert_eq!(fs::read(m.path("d2/sub/f")).unwrap(), b"deep");
    fs::create_dir(m.path("full")).unwrap();
    fs::write(m.path("full/keep"), b"k").unwrap();
    assert_eq!(errno(fs::rename(m.path("d2"), m.path("full"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::rename(m.path("d2"), m.path("d2/sub/inside"))), libc::EINVAL);
    assert_eq!(errno(fs::rename(m.path("y"), m.path("full"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(m.path("full"), m.path("y"))), libc::ENOTDIR);
    fs::rename(m.path("d2/sub"), m.path("full/sub")).unwrap();
    assert_eq!(fs::metadata(m.path("d2")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.path("full")).unwrap().nlink(), 3);
    assert_eq!(fs::read(m.path("full/sub/f")).unwrap(), b"deep");
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(m.path("p"), b"p").unwrap();
    fs::write(m.path("q"), b"q").unwrap();
    assert_eq!(rename2(&m.path("p"), &m.path("q"), libc::RENAME_NOREPLACE), Err(libc::EEXIST));
    rename2(&m.path("p"), &m.path("fresh"), libc::RENAME_NOREPLACE).unwrap();
    rename2(&m.path("fresh"), &m.path("q"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("fresh")).unwrap(), b"q");
    assert_eq!(fs::read(m.path("q")).unwrap(), b"p");
    rename2(&m.path("q"), &m.path("full"), libc::RENAME_EXCHANGE).unwrap(); // file <-> directory
    assert_eq!(fs::read(m.path("q/keep")).unwrap(), b"k");
    assert_eq!(fs::read(m.path("full")).unwrap(), b"p");
    assert_eq!(rename2(&m.path("full"), &m.path("nope"), libc::RENAME_EXCHANGE), Err(libc::ENOENT));
    // A rename of an open file keeps the open file working.
    let mut f = File::create(m.path("open")).unwrap();
    f.write_all(b"one ").unwrap();
    fs::rename(m.path("open"), m.path("moved")).unwrap();
    f.write_all(b"two").unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("moved")).unwrap(), b"one two");
}
both_modes!(renames);

fn unlink_open_file_stays_readable(m: &Mount) {
    fs::write(m.path("gone"), b"still here").unwrap();
    let mut f = File::open(m.path("gone")).unwrap();
    fs::remove_file(m.path("gone")).unwrap();
    assert!(!m.path("gone").exists());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    // A new file can take the name at once.
    fs::write(m.path("gone"), b"new").unwrap();
    assert_eq!(fs::read(m.path("gone")).unwrap(), b"new");
    // An unlinked file stays writable while open.
    let mut w = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("w")).unwrap();
    fs::remove_file(m.path("w")).unwrap();
    w.write_all(b"scratch").unwrap();
    w.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    w.read_to_string(&mut s).unwrap();
    assert_eq!(s, "scratch");
}
both_modes!(unlink_open_file_stays_readable);

fn symlinks_and_hard_links(m: &Mount) {
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/target"), b"t").unwrap();
    symlink("dir/target", m.path("ln")).unwrap();
    assert_eq!(fs::read_link(m.path("ln")).unwrap().to_str(), Some("dir/target"));
    assert_eq!(fs::read(m.path("ln")).unwrap(), b"t");
    assert!(fs::symlink_metadata(m.path("ln")).unwrap().file_type().is_symlink());
    symlink("/nowhere/at/all", m.path("dangling")).unwrap();
    assert_eq!(errno(fs::read(m.path("dangling"))), libc::ENOENT);
    fs::hard_link(m.path("dir/target"), m.path("hard")).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.path("hard")).unwrap().ino(), fs::metadata(m.path("dir/target")).unwrap().ino());
    OpenOptions::new().append(true).open(m.path("hard")).unwrap().write_all(b"+").unwrap();
    assert_eq!(fs::read(m.path("dir/target")).unwrap(), b"t+");
    fs::remove_file(m.path("dir/target")).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 1);
    assert_eq!(fs::read(m.path("hard")).unwrap(), b"t+");
    assert_eq!(errno(fs::hard_link(m.path("dir"), m.path("dirlink"))), libc::EPERM);
}
both_modes!(symlinks_and_hard_links);

fn statfs_is_real(m: &Mount) {
    let st = statvfs(m.root());
    assert!(st.f_blocks > 0 && st.f_bfree > 0 && st.f_bavail > 0, "space: {st:?}");
    assert!(st.f_files > 0 && st.f_ffree > 0, "inodes");
    assert!(st.f_bsize > 0 && st.f_namemax == 255);
    let df = run(std::process::Command::new("df").arg("-T").arg(m.root()));
    assert!(df.contains("fuse.cessfs"), "{df}");
}
both_modes!(statfs_is_real);

fn xattrs(m: &Mount) {
    let p = m.path("x");
    fs::write(&p, b"x").unwrap();
    setxattr(&p, "user.color", b"blue", 0).unwrap();
    assert_eq!(getxattr(&p, "user.color").unwrap(), b"blue");
    assert_eq!(setxattr(&p, "user.color", b"red", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(setxattr(&p, "user.shape", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    setxattr(&p, "user.color", b"red", libc::XATTR_REPLACE).unwrap();
    setxattr(&p, "user.empty", b"", 0).unwrap();
    let big = vec![7u8; 60_000];
    setxattr(&p, "user.big", &big, 0).unwrap();
    assert_eq!(getxattr(&p, "user.big").unwrap(), big);
    let names = listxattr(&p).unwrap();
    for n in ["user.color", "user.empty", "user.big", "user.cess.status"] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
    assert_eq!(getxattr(&p, "user.none"), Err(libc::ENODATA));
    removexattr(&p, "user.color").unwrap();
    assert_eq!(removexattr(&p, "user.color"), Err(libc::ENODATA));
    assert_eq!(getxattr(&p, "user.cess.status").unwrap(), b"staged");
    assert_eq!(setxattr(&p, "user.cess.status", b"active", 0), Err(libc::EPERM));
    assert_eq!(removexattr(&p, "user.cess.status"), Err(libc::EPERM));
    assert_eq!(setxattr(&p, "trusted.x", b"1", 0), Err(libc::EOPNOTSUPP));
    assert_eq!(getxattr(&p, "security.capability"), Err(libc::ENODATA));
    // On directories too, and with the attr tools.
    fs::create_dir(m.path("d")).unwrap();
    run(std::process::Command::new("setfattr").args(["-n", "user.tag", "-v", "dirval"]).arg(m.path("d")));
    let out = run(std::process::Command::new("getfattr").arg("-d").arg(m.path("d")));
    assert!(out.contains("user.tag=\"dirval\""), "{out}");
    let out = run(std::process::Command::new("getfattr").args(["-n", "user.cess.status"]).arg(&p));
    assert!(out.contains("user.cess.status=\"staged\""), "{out}");
}
both_modes!(xattrs);

fn fallocate_and_fsync(m: &Mount) {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("fa")).unwrap();
    // SAFETY: fallocate on our own open descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    f.write_all_at(&[1u8; 8192], 0).unwrap();
    // SAFETY: as above.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, 4096) };
    assert_eq!(r, 0);
    let mut buf = [9u8; 8192];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..].iter().all(|&b| b == 1));
    // SAFETY: as above; an unsupported mode is refused cleanly.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096) };
    assert_eq!(r, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EOPNOTSUPP));
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    File::open(m.root()).unwrap().sync_all().unwrap();
}
both_modes!(fallocate_and_fsync);

fn cpath(p: &std::path::Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// FIFOs, sockets and device nodes are entries like any other: made, listed with their type,
/// renamed, linked, chmod'ed and removed, kept across a remount; a FIFO carries data between two
/// processes (the kernel's pipe).
#[test]
fn fifos_sockets_and_device_nodes_are_entries_like_any_other() {
    use std::os::unix::fs::FileTypeExt;
    let mut m = Mount::start();
    let (fifo, dev, sock) = (m.path("pipe"), m.path("null"), m.path("sock"));
    // SAFETY: NUL-terminated paths.
    assert_eq!(unsafe { libc::mkfifo(cpath(&fifo).as_ptr(), 0o644) }, 0, "{}", std::io::Error::last_os_error());
    let rdev = libc::makedev(1, 3);
    // SAFETY: as above.
    let made = unsafe { libc::mknod(cpath(&dev).as_ptr(), libc::S_IFCHR | 0o600, rdev) };
    assert_eq!(made, 0, "mknod of a char device (as root): {}", std::io::Error::last_os_error());
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind a socket in the mount");
    drop(listener);
    let check = |m: &Mount| {
        let types: Vec<_> = ["pipe", "null", "sock"].iter().map(|n| fs::symlink_metadata(m.path(n)).unwrap()).collect();
        assert!(types[0].file_type().is_fifo() && types[0].mode() & 0o7777 == 0o644);
        assert!(types[1].file_type().is_char_device() && types[1].rdev() == rdev);
        assert!(types[2].file_type().is_socket());
        let listed: Vec<_> = fs::read_dir(m.root()).unwrap().map(|e| e.unwrap().file_type().unwrap()).collect();
        assert_eq!(listed.iter().filter(|t| t.is_fifo() || t.is_char_device() || t.is_socket()).count(), 3);
    };
    check(&m);
    // Data through the FIFO: a writer in another thread, the reader here.
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || fs::write(fifo, b"through the pipe").unwrap()
    });
    assert_eq!(fs::read(&fifo).unwrap(), b"through the pipe");
    writer.join().unwrap();
    m.remount();
    check(&m);
    fs::rename(m.path("pipe"), m.path("pipe2")).unwrap();
    fs::hard_link(m.path("pipe2"), m.path("pipe3")).unwrap();
    assert_eq!(fs::symlink_metadata(m.path("pipe2")).unwrap().nlink(), 2);
    fs::set_permissions(m.path("null"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::symlink_metadata(m.path("null")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(
        errno(setxattr(&m.path("pipe2"), "user.x", b"1", 0).map_err(std::io::Error::from_raw_os_error)),
        libc::EPERM
    );
    for n in ["pipe2", "pipe3", "null", "sock"] {
        fs::remove_file(m.path(n)).unwrap();
    }
    assert!(fs::read_dir(m.root()).unwrap().next().is_none());
}

/// A write, a truncation or an `O_TRUNC` open by another user clears setuid, and setgid if the
/// group may execute, as ext4 does; root's writes keep them.
#[test]
fn writes_by_other_users_clear_setuid_and_setgid() {
    let m = Mount::start_with(&["--allow-other", "true"]);
    let as_nobody = |script: &str| {
        run(std::process::Command::new("setpriv").args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ]))
    };
    let mode = |n: &str| fs::metadata(m.path(n)).unwrap().mode() & 0o7777;
    for (name, how) in [("w", "echo more >> {}"), ("t", "truncate -s 1 {}"), ("o", ": > {}")] {
        fs::write(m.path(name), b"content").unwrap();
        fs::set_permissions(m.path(name), fs::Permissions::from_mode(0o6777)).unwrap();
        fs::OpenOptions::new().append(true).open(m.path(name)).unwrap().write_all(b"root").unwrap();
        assert_eq!(mode(name), 0o6777, "root's write keeps the bits");
        as_nobody(&how.replace("{}", &m.path(name).display().to_string()));
        assert_eq!(mode(name), 0o777, "{how} by another user");
    }
    // setgid without group execute (mandatory locking) stays.
    fs::write(m.path("l"), b"content").unwrap();
    fs::set_permissions(m.path("l"), fs::Permissions::from_mode(0o6766)).unwrap();
    as_nobody(&format!("echo more >> {}", m.path("l").display()));
    assert_eq!(mode("l"), 0o2766);
}
