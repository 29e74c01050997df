//! What the mounted benchmarks share: a `cessfs mount` of the built binary on its embedded
//! devnet, status polling, medians.

use std::ffi::CString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The median.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Forgets the peak so far (`clear_refs` 5), so the next [`peak_mib`] is of what follows.
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak resident memory");
}

/// Peak resident memory of process `pid`, in MiB.
pub fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM");
    kib.trim().trim_end_matches("kB").trim().parse::<f64>().expect("VmHWM kB") / 1024.0
}

/// `user.cess.status` of a file.
pub fn status(path: &Path) -> String {
    let (p, n) = (CString::new(path.to_str().expect("utf-8")).expect("path"), c"user.cess.status");
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 { String::new() } else { String::from_utf8_lossy(&buf[..r as usize]).into_owned() }
}

/// A mount, unmounted on drop.
pub struct Mounted {
    /// The mount point.
    pub dir: tempfile::TempDir,
    /// The daemon (it runs in the foreground: the child itself).
    pub child: Child,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_cessfs")).arg("unmount").arg(self.dir.path()).status();
        let _ = self.child.wait();
    }
}

/// Mounts (with `--quiet-delay 0` unless `args` set it) and waits until the mount is ready; the
/// daemon logs to DATA.log beside the data dir.
pub fn mount(data: &Path, key: &Path, args: &[&str]) -> Mounted {
    let dir = tempfile::tempdir().expect("mount point");
    let quiet: &[&str] = if args.contains(&"--quiet-delay") { &[] } else { &["--quiet-delay", "0"] };
    let child = Command::new(env!("CARGO_BIN_EXE_cessfs"))
        .arg("mount")
        .arg(dir.path())
        .arg("--foreground")
        .args(quiet)
        .arg("--data-dir")
        .arg(data)
        .arg("--key-file")
        .arg(key)
        .args(args)
        .stderr(std::fs::File::create(data.with_extension("log")).map_or_else(|_| Stdio::null(), Stdio::from))
        .spawn()
        .expect("cessfs mount");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(data.join("cessfs.pid")).map(|p| p.trim() != child.id().to_string()).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the mount did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Mounted { dir, child }
}

/// Faults in and frees 5 GiB of page cache. This VM's balloon driver hands freed memory back to
/// the host; whatever touches it next pays to fault it in again, at about 1 GB/s. The devnet's
/// nodes write 3 GiB of fragments per GiB uploaded, so without this the run measures the host's
/// memory manager more than cessfs (bench-fs.sh does the same for its targets).
pub fn warm_up(dir: &Path) {
    let path = dir.join("warm-up");
    let block = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(&path).expect("warm-up file");
    for _ in 0..5 * 1024 {
        std::io::Write::write_all(&mut f, &block).expect("warm-up write");
    }
    drop(f);
    std::fs::remove_file(&path).expect("remove warm-up file");
}

/// Writes a new key file in `dir` and returns its path and the key.
pub fn key_file(dir: &Path) -> (std::path::PathBuf, cessfs::format::MasterKey) {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("key");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("key");
    std::io::Write::write_all(&mut f, "3c".repeat(32).as_bytes()).expect("key");
    let key = cessfs::format::MasterKey::parse(&std::fs::read(&path).expect("key")).expect("key");
    (path, key)
}

/// Waits until the file at `path` is active.
pub fn wait_active(path: &Path) {
    let start = Instant::now();
    while status(path) != "active" {
        assert!(status(path) != "failed", "upload failed");
        assert!(start.elapsed() < Duration::from_secs(600), "no upload after 10 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}
