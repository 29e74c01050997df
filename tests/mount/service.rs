//! Running cessfs as a service: the metrics endpoint, the fstab mount helper, the log format.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

#[test]
fn metrics_move_during_an_upload_and_a_cold_read() {
    let port = free_port();
    let m = Mount::uploading("0.2", &["--metrics", &port.to_string(), "--snapshots", "false"]);
    let scrape = || http_get(port, "/metrics");
    let first = scrape();
    for name in ["cessfs_fragment_pushes_total", "cessfs_chain_call_seconds", "cessfs_fuse_unsupported_total"] {
        assert!(first.contains(&format!("# HELP {name} ")), "{name} is described:\n{first}");
    }
    assert_eq!(sample(&first, "cessfs_cache_limit_bytes"), Some((10u64 << 30) as f64));

    let data = random_bytes(200 << 20, 5);
    fs::write(m.path("big.bin"), &data).unwrap();
    // Scrape while it uploads: the pushed bytes grow, and the file is counted as not yet active.
    let (mut pushed_seen, mut in_flight_seen) = (Vec::new(), false);
    let deadline = std::time::Instant::now() + MIN;
    loop {
        let now = scrape();
        let pushed = total(&now, "cessfs_pushed_bytes_total");
        if pushed_seen.last() != Some(&pushed) {
            pushed_seen.push(pushed);
        }
        let active = sample(&now, "cessfs_files{state=\"active\"}").unwrap_or(0.0);
        in_flight_seen |= pushed > 0.0 && active == 0.0;
        if active == 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "big.bin did not become active:\n{now}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(in_flight_seen && pushed_seen.len() >= 3, "counters seen moving: {pushed_seen:?}");
    assert!(pushed_seen.windows(2).all(|w| w[0] < w[1]), "{pushed_seen:?}");

    let done = scrape();
    // 7 segments of 12 fragments of 8 MiB, bar the last one's all-zero fragments (sent empty).
    assert!(total(&done, "cessfs_pushed_bytes_total") >= (6 * 12 * (8u64 << 20)) as f64, "{done}");
    assert!(total(&done, "cessfs_fragment_pushes_total") >= 84.0, "{done}");
    let miners = done.lines().filter(|l| l.starts_with("cessfs_fragment_pushes_total{miner=")).count();
    assert!(miners >= 12, "pushes counted per miner: {miners}");
    assert_eq!(sample(&done, "cessfs_uploaded_files_total"), Some(1.0));
    assert_eq!(sample(&done, "cessfs_uploaded_bytes_total"), Some((200u64 << 20) as f64));
    assert_eq!(sample(&done, "cessfs_file_bytes{state=\"active\"}"), Some((200u64 << 20) as f64));
    assert_eq!(sample(&done, "cessfs_chain_call_seconds_count{call=\"upload_declaration\"}"), Some(1.0));
    assert!(sample(&done, "cessfs_chain_call_seconds_count{call=\"deal\"}").unwrap_or(0.0) >= 1.0, "{done}");
    assert!(sample(&done, "cessfs_territory_bytes").is_some(), "{done}");
    assert_eq!(sample(&done, "cessfs_cache_bytes"), Some((200u64 << 20) as f64));

    // A cold read: misses, fetched bytes and fetched fragments; then a warm one: hits.
    run(Command::new(BIN).arg("evict").arg(m.path("big.bin")));
    let mut f = fs::File::open(m.path("big.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact(&mut head).unwrap();
    assert_eq!(head, data[..1 << 20]);
    // The read returned with its first blocks; the rest of its segment follows while the file
    // is open.
    wait_until(Duration::from_secs(60), "the segment fetched and kept", || {
        total(&scrape(), "cessfs_fetched_bytes_total") >= (30u64 << 20) as f64
            && m.cess("big.bin", "cached").is_some_and(|c| c.starts_with("partly"))
    });
    let cold = scrape();
    assert!(sample(&cold, "cessfs_cache_reads_total{result=\"miss\"}").unwrap_or(0.0) >= 1.0, "{cold}");
    assert!(total(&cold, "cessfs_fragment_fetches_total") >= 4.0, "{cold}");
    // Far enough into the fetched segment that the kernel's read-ahead has not cached it: the
    // read reaches cessfs and finds the bytes on disk.
    let warm = 30u64 << 20;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, warm).unwrap();
    assert_eq!(head, data[warm as usize..warm as usize + (1 << 20)]);
    let warmed = scrape();
    assert!(sample(&warmed, "cessfs_cache_reads_total{result=\"hit\"}").unwrap_or(0.0) >= 1.0, "{warmed}");

    // An ioctl cessfs does not implement is answered ENOSYS and counted.
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    let mut flags: libc::c_long = 0;
    // SAFETY: f is an open file; flags is valid for the ioctl's write.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) };
    assert_eq!(rc, -1);
    assert!(sample(&scrape(), "cessfs_fuse_unsupported_total{op=\"ioctl\"}").unwrap_or(0.0) >= 1.0);
}

#[test]
fn metrics_refuse_an_address_other_machines_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("mount")
        .arg(dir.path())
        .args(["--foreground", "--plain", "true", "--metrics", "0.0.0.0:9464", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only loopback addresses"), "{err}");
}

#[test]
fn under_systemd_it_reports_ready_and_stopping_and_logs_for_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let socket_path = data.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(MIN)).unwrap();
    let journal = data.path().join("journal");
    let stream = fs::File::create(&journal).unwrap();
    let id = stream.metadata().unwrap();
    let mut daemon = Command::new(BIN)
        .arg("mount")
        .arg(dir.path())
        .args(["--foreground", "--plain", "true", "--data-dir"])
        .arg(data.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("JOURNAL_STREAM", format!("{}:{}", id.dev(), id.ino()))
        .env("RUST_LOG", "info")
        .stderr(stream)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within a minute");
    assert_eq!(&buf[..n], b"READY=1");
    fs::write(dir.path().join("f"), b"x").unwrap();
    run(Command::new(BIN).arg("unmount").arg(dir.path()));
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(daemon.wait().unwrap().success());
    let log = fs::read_to_string(&journal).unwrap();
    assert!(log.lines().any(|l| l.starts_with("<6>cessfs::daemon: mounted ")), "{log}");
    assert!(log.lines().all(|l| l.starts_with('<')), "every line has a priority, none a timestamp:\n{log}");
}

/// Unmounts a daemonized mount and stops its daemon when the test ends, however it ends.
struct Detached<'a> {
    dir: &'a std::path::Path,
    data: &'a std::path::Path,
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let _ = Command::new(BIN).arg("unmount").arg(self.dir).output();
        let pid = fs::read_to_string(self.data.join("cessfs.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
        // 0: no daemon runs (and kill(0) would signal this test's own process group).
        if let Some(pid) = pid.filter(|p| *p > 0) {
            // SAFETY: kill(2) of the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::thread::panicking() {
            eprintln!("── daemon log ──\n{}", fs::read_to_string(self.data.join("cessfs.log")).unwrap_or_default());
        }
    }
}

#[test]
fn the_fstab_helper_mounts_with_options_from_the_fstab_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    fs::create_dir_all(&dir).unwrap();
    let config = tmp.path().join("home.toml");
    fs::write(&config, "territory = \"fstab-home\"\nplain = true\n").unwrap();
    // mount(8) runs /sbin/mount.fuse.cessfs for type fuse.cessfs; the package links it to cessfs.
    let helper = tmp.path().join("mount.fuse.cessfs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    // The fstab line: cessfs#CONFIG  DIR  fuse.cessfs  _netdev,nofail,...  0 0
    let options = format!("rw,_netdev,nofail,x-systemd.automount,quiet_delay=0.2,data_dir={}", data.display());
    let _cleanup = Detached { dir: &dir, data: &data };
    run(Command::new(&helper).arg(format!("cessfs#{}", config.display())).arg(&dir).args(["-o", &options]));
    // The helper returns once the mount is ready, with the daemon in the background.
    assert!(mounted(&dir), "mounted when the helper returns");
    fs::write(dir.join("note.txt"), b"from fstab").unwrap();
    let cess = |name: &str| getxattr(&dir.join("note.txt"), name).map(|v| String::from_utf8_lossy(&v).into_owned());
    wait_until(MIN, "note.txt active", || cess("user.cess.status").as_deref() == Ok("active"));
    assert_eq!(cess("user.cess.territory").as_deref(), Ok("fstab-home"), "the config file was read");
    assert!(data.join("cessfs.log").exists(), "options reached the mount: its data dir");
    // A second mount on the same data dir is refused with a clear message.
    let second = tmp.path().join("mnt2");
    fs::create_dir(&second).unwrap();
    let again = Command::new(&helper).arg("cessfs").arg(&second).args(["-o", &options]).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("in use"), "{again:?}");
    let umount = if cessfs::mountpoint::is_root() {
        Command::new("umount").arg(&dir).output()
    } else {
        Command::new(BIN).arg("unmount").arg(&dir).output()
    };
    assert!(umount.unwrap().status.success());
    cessfs::daemon::wait_for_exit(&data, MIN).unwrap();
    assert!(!mounted(&dir));
}

#[test]
fn a_lazy_unmount_finishes_the_open_files_and_the_next_mount_uploads_them() {
    let mut m = Mount::uploading("0.2", &[]);
    let mut f = fs::File::create(m.path("open.txt")).unwrap();
    f.write_all(b"written before, ").unwrap();
    m.lazy_unmount(
        || {
            f.write_all(b"and after the lazy unmount").unwrap();
            drop(f);
        },
        MIN,
    );
    m.mount();
    assert_eq!(fs::read(m.path("open.txt")).unwrap(), b"written before, and after the lazy unmount");
    m.wait_status("open.txt", &["active"], MIN);
}

/// `cessfs account` reads a devnet over http; `account` and `territory` take their options after
/// the verb, and their help lists only the options they use.
#[test]
fn account_and_territory_take_their_options_after_the_verb() {
    let net = StandaloneDevnet::start();
    let out = run(Command::new(BIN).args(["account", "--chain", &net.url]));
    assert!(out.contains("territory cessfs") && out.contains("a devnet charges nothing"), "{out}");
    let refused = Command::new(BIN)
        .args(["territory", "mint", "more", "--gib", "1", "--chain", &net.url, "--yes"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("a devnet has no prices"), "{said}");
    for verb in [&["territory"][..], &["territory", "mint"], &["account"]] {
        let help = run(Command::new(BIN).args(verb).arg("--help"));
        assert!(!help.contains("--cache-size") && !help.contains("--threads"), "{help}");
    }
}
