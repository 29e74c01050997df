//! A real cessfs mount for tests: the built binary, `mount --foreground`, in temp dirs.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_cessfs");

/// A mounted cessfs. Dropping it unmounts and stops the daemon; a failing test prints its log.
pub struct Mount {
    mountpoint: TempDir,
    data: TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

fn mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_str().expect("utf-8 temp path").replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(dir.as_str()) && l.contains(" - fuse.cessfs "))
}

impl Mount {
    /// A fresh mount with default settings.
    pub fn start() -> Mount {
        Mount::start_with(&[])
    }

    /// A fresh mount with extra `cessfs mount` flags.
    pub fn start_with(args: &[&str]) -> Mount {
        let mut m = Mount {
            mountpoint: tempfile::tempdir().expect("mountpoint"),
            data: tempfile::tempdir().expect("data dir"),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        m.mount();
        m
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().join("test-daemon.log")
    }

    /// Mounts (again) on the same mount point and data dir.
    pub fn mount(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        let log = File::options().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(BIN)
            .arg("mount")
            .arg(self.mountpoint.path())
            .arg("--foreground")
            .arg("--data-dir")
            .arg(self.data.path())
            .args(&self.args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn cessfs mount");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The daemon writes its pid file once the mount is ready. (A dead daemon's mount stays
        // listed in mountinfo until the new daemon detaches it, so mountinfo alone cannot tell.)
        let pid = self.child.as_ref().map(|c| c.id().to_string());
        let pid_file = self.data.path().join("cessfs.pid");
        loop {
            let ready = std::fs::read_to_string(&pid_file).ok().map(|s| s.trim().to_string()) == pid;
            if ready && mounted(self.mountpoint.path()) {
                break;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("cessfs mount exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "mount did not appear:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        self.mountpoint.path()
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.path().join(rel)
    }

    /// `cessfs unmount`, then waits for the daemon to exit.
    pub fn unmount(&mut self) {
        let out = Command::new(BIN).arg("unmount").arg(self.root()).output().expect("run cessfs unmount");
        assert!(
            out.status.success(),
            "cessfs unmount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let mut child = self.child.take().expect("mounted");
        let status = child.wait().expect("wait for daemon");
        assert!(status.success(), "daemon exited with {status}:\n{}", self.log());
    }

    /// Unmounts and mounts again.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Kills the daemon with SIGKILL, leaving its dead mount behind.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("mounted");
        child.kill().expect("kill -9");
        child.wait().expect("reap daemon");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = CString::new(self.root().as_os_str().as_bytes()).expect("path");
        // SAFETY: a NUL-terminated path; a lazy unmount of our own temp mount point.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("── cessfs daemon log ──\n{}", self.log());
        }
    }
}

// ── helpers for checks ────────────────────────────────────────────────────────────────────────

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// getxattr, as bytes or the errno.
pub fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: valid strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// setxattr with flags, or the errno.
pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid strings and a value buffer of the given length.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(()) }
}

/// removexattr, or the errno.
pub fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid strings.
    let r = unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(()) }
}

/// listxattr names, or the errno.
pub fn listxattr(p: &Path) -> Result<Vec<String>, i32> {
    let p = cpath(p);
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: a valid string and a buffer of the given length.
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(r as usize);
    Ok(buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// renameat2 with flags, or the errno.
pub fn rename2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: valid strings; AT_FDCWD with absolute paths.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(()) }
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One entry of a tree snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory with its user xattrs.
    Dir(Vec<(String, Vec<u8>)>),
    /// A file's bytes and user xattrs.
    File(Vec<u8>, Vec<(String, Vec<u8>)>),
    /// A symlink's target.
    Link(PathBuf),
}

fn user_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = listxattr(p)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("user.") && !n.starts_with("user.cess."))
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), getxattr(p, &n).expect("listed xattr readable"))).collect()
}

/// Every entry under `root`, by relative path: kind, bytes, symlink target and user xattrs
/// (cessfs's own `user.cess.*` left out).
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<PathBuf, Node> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            let ft = e.file_type().expect("file type");
            let node = if ft.is_symlink() {
                Node::Link(std::fs::read_link(&p).expect("readlink"))
            } else if ft.is_dir() {
                stack.push(p.clone());
                Node::Dir(user_xattrs(&p))
            } else {
                Node::File(std::fs::read(&p).expect("read"), user_xattrs(&p))
            };
            out.insert(rel, node);
        }
    }
    out
}
