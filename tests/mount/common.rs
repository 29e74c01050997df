//! A real cessfs mount for tests: the built binary, `mount --foreground`, in temp dirs.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_cessfs");

/// A mounted cessfs. Dropping it unmounts and stops the daemon; a failing test prints its log.
pub struct Mount {
    mountpoint: TempDir,
    data: TempDir,
    /// Where the daemon looks for armed hooks (src/hooks.rs).
    hooks: TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

/// Whether `dir` is a cessfs mount point.
pub fn mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_str().expect("utf-8 temp path").replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(dir.as_str()) && l.contains(" - fuse.cessfs "))
}

/// How long one daemon of a test may run: a test that hangs (a read that waits forever) then
/// fails with its mount gone, instead of holding CI until its limit.
const DAEMON_WATCHDOG: Duration = Duration::from_secs(20 * 60);

/// Kills daemon `pid` (a child not reaped yet) once it ran [`DAEMON_WATCHDOG`]. A pidfd names
/// that one process, so a pid reused after it ended is never signalled.
fn watchdog(pid: u32) {
    // SAFETY: pidfd_open(2) of our own child, which is not reaped yet.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        return;
    }
    std::thread::spawn(move || {
        std::thread::sleep(DAEMON_WATCHDOG);
        let none: *const libc::siginfo_t = std::ptr::null();
        // SAFETY: pidfd_send_signal(2) on the fd opened above, which this thread owns.
        let sent = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, none, 0) };
        if sent == 0 {
            eprintln!("watchdog: daemon {pid} ran {DAEMON_WATCHDOG:?}, the test hung; killed it");
        }
        // SAFETY: closes the fd this thread owns, once.
        unsafe { libc::close(fd) };
    });
}

/// Waits until `cond` holds, failing with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Mount {
    /// A fresh mount for filesystem tests: uploads wait an hour after the last close, so they
    /// never start (the upload tests use [`Mount::uploading`]).
    pub fn start() -> Mount {
        Mount::start_with(&[])
    }

    /// [`Mount::start`] with extra `cessfs mount` flags.
    pub fn start_with(args: &[&str]) -> Mount {
        let mut all = vec!["--quiet-delay", "3600"];
        all.extend_from_slice(args);
        Mount::with_args(&all)
    }

    /// A fresh mount on its embedded devnet that uploads `quiet` seconds after a file's last
    /// close, with extra flags.
    pub fn uploading(quiet: &str, args: &[&str]) -> Mount {
        let mut all = vec!["--quiet-delay", quiet];
        all.extend_from_slice(args);
        Mount::with_args(&all)
    }

    fn with_args(args: &[&str]) -> Mount {
        Mount::prepared(args, |_| {})
    }

    /// A fresh mount with `args` whose data dir `prepare` sets up first (a file system mounted
    /// on its content dir, say).
    pub fn prepared(args: &[&str], prepare: impl FnOnce(&Path)) -> Mount {
        Mount::keyed("5a", args, prepare)
    }

    /// A mount set up with `args` (uploads after `quiet` seconds) but not started: for a test that
    /// [`Mount::spawn`]s it and kills it during start-up.
    pub fn unmounted(quiet: &str, args: &[&str]) -> Mount {
        let mut all = vec!["--quiet-delay", quiet];
        all.extend_from_slice(args);
        Mount::set_up("5a", &all, |_| {})
    }

    /// [`Mount::prepared`] with the key of 32 bytes `byte` (two hex digits).
    pub fn keyed(byte: &str, args: &[&str], prepare: impl FnOnce(&Path)) -> Mount {
        let mut m = Mount::set_up(byte, args, prepare);
        m.mount();
        m
    }

    fn set_up(byte: &str, args: &[&str], prepare: impl FnOnce(&Path)) -> Mount {
        let data = tempfile::tempdir().expect("data dir");
        prepare(data.path());
        let key = data.path().join("key");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = File::options().write(true).create_new(true).mode(0o600).open(&key).expect("key file");
            std::io::Write::write_all(&mut f, byte.repeat(32).as_bytes()).expect("write key");
        }
        let mut all: Vec<String> = vec!["--key-file".into(), key.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        Mount {
            mountpoint: tempfile::tempdir().expect("mountpoint"),
            data,
            hooks: tempfile::tempdir().expect("hooks dir"),
            args: all,
            child: None,
        }
    }

    /// Arms hook `name`: the daemon stops there until [`Mount::release`].
    pub fn arm(&self, name: &str) {
        File::create(self.hooks.path().join(name)).expect("arm a hook");
    }

    /// Waits until the daemon waits at hook `name`.
    pub fn wait_hook(&self, name: &str, timeout: Duration) {
        let reached = self.hooks.path().join(format!("{name}.reached"));
        wait_until(timeout, &format!("hook {name}"), || reached.exists());
    }

    /// Releases hook `name`: the daemon goes on.
    pub fn release(&self, name: &str) {
        let _ = std::fs::remove_file(self.hooks.path().join(name));
        let _ = std::fs::remove_file(self.hooks.path().join(format!("{name}.reached")));
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().join("test-daemon.log")
    }

    /// Mounts (again) on the same mount point and data dir.
    pub fn mount(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts the daemon without waiting for the mount (for a kill during start-up).
    pub fn spawn(&mut self) {
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
            .env("CESSFS_HOOKS", self.hooks.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .dies_with_the_test()
            .spawn()
            .expect("spawn cessfs mount");
        watchdog(child.id());
        self.child = Some(child);
    }

    /// Waits until the daemon started by [`Mount::spawn`] has its mount ready.
    pub fn wait_ready(&mut self) {
        // A mount that looks for its tree among 100,000 held files takes seconds, more on a
        // loaded machine; a healthy one appears at once.
        let deadline = Instant::now() + Duration::from_secs(120);
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

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
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
        self.unmount_with(&[]);
    }

    /// `cessfs unmount` with extra flags, then waits for the daemon to exit.
    /// Unmounts with `cessfs unmount ARGS`, waiting for the daemon to exit; returns what the
    /// command said on stderr.
    pub fn unmount_with(&mut self, args: &[&str]) -> String {
        let out = Command::new(BIN).arg("unmount").args(args).arg(self.root()).output().expect("run cessfs unmount");
        assert!(
            out.status.success(),
            "cessfs unmount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let mut child = self.child.take().expect("mounted");
        let status = child.wait().expect("wait for daemon");
        assert!(status.success(), "daemon exited with {status}:\n{}", self.log());
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The `user.cess.*` attribute `name` of file `rel`, as text.
    pub fn cess(&self, rel: &str, name: &str) -> Option<String> {
        getxattr(&self.path(rel), &format!("user.cess.{name}")).ok().map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Waits until file `rel` reaches one of the states `want`, and returns it.
    pub fn wait_status(&self, rel: &str, want: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.cess(rel, "status").unwrap_or_default();
            if want.contains(&s.as_str()) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{rel} still {s:?} after {timeout:?}, wanted {want:?}: {:?}\n{}",
                self.cess(rel, "json"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The embedded devnet of this mount, through its RPC.
    pub fn devnet(&self) -> Devnet {
        let info =
            std::fs::read(self.data.path().join("devnet/devnet.json")).expect("devnet.json of the embedded devnet");
        let info: serde_json::Value = serde_json::from_slice(&info).expect("devnet.json");
        let signer = cessfs::protocol::Signer::from_uri("//Alice").expect("dev key");
        let rpc = info["rpc"].as_str().expect("rpc url").to_string();
        let token = std::fs::read_to_string(self.data.path().join("devnet/control.token")).expect("control token");
        Devnet {
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            chain: cessfs::devnet::DevnetChain::new(&rpc, signer).with_control(&token),
        }
    }

    /// The encryption key the mount uses, bound to the default territory.
    pub fn master_key(&self) -> cessfs::format::MasterKey {
        let key = std::fs::read(self.data.path().join("key")).expect("key");
        cessfs::format::MasterKey::parse(&key).expect("key").for_territory(b"cessfs")
    }

    /// Unmounts and mounts again.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Unmounts and mounts again with more flags ([`Mount::mount_with`]).
    pub fn remount_with(&mut self, args: &[&str]) {
        self.unmount();
        self.mount_with(args);
    }

    /// Mounts again (after an unmount) with more flags, in place of the same flags given before.
    pub fn mount_with(&mut self, args: &[&str]) {
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            if let Some(at) = self.args.iter().position(|a| a == flag) {
                let valued = self.args.get(at + 1).is_some_and(|v| !v.starts_with("--"));
                self.args.drain(at..at + 1 + usize::from(valued));
            }
        }
        self.args.extend(args.iter().map(|a| a.to_string()));
        self.mount();
    }

    /// Stops the daemon with SIGTERM (as systemd does) and waits for it to exit cleanly.
    pub fn sigterm(&mut self) {
        let mut child = self.child.take().expect("mounted");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait for daemon");
        assert!(status.success(), "daemon exited with {status} on SIGTERM:\n{}", self.log());
        assert!(!mounted(self.root()), "SIGTERM unmounts");
    }

    /// Detaches the mount (`umount -l`): it leaves the namespace at once, and the daemon goes on
    /// serving the files still open, then exits on its own; waits up to `timeout` for that.
    pub fn lazy_unmount(&mut self, before_exit: impl FnOnce(), timeout: Duration) {
        let detached = Command::new("umount").arg("-l").arg(self.root()).status().expect("umount -l");
        assert!(detached.success(), "umount -l");
        assert!(!mounted(self.root()), "gone from the namespace");
        before_exit();
        let mut child = self.child.take().expect("mounted");
        wait_until(timeout, "the daemon to exit after its last file closed", || {
            child.try_wait().expect("wait for daemon").is_some()
        });
        let status = child.wait().expect("wait for daemon");
        assert!(status.success(), "daemon exited with {status} after a lazy unmount:\n{}", self.log());
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

/// A devnet seen through its RPC, for checks and faults.
pub struct Devnet {
    rt: tokio::runtime::Runtime,
    /// The client.
    pub chain: cessfs::devnet::DevnetChain,
}

impl Devnet {
    /// Runs a chain call.
    pub fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// `File[fid]`.
    pub fn file(&self, fid: &str) -> Option<cessfs::protocol::FileInfo> {
        use cessfs::protocol::Chain;
        self.run(self.chain.file(&fid.parse().expect("fid"))).expect("devnet file")
    }

    /// Deletes `fid` from the chain, as //Alice.
    pub fn delete(&self, fid: &str) {
        use cessfs::protocol::Chain;
        let receipt = self.run(self.chain.delete_files(&[fid.parse().expect("fid")])).expect("delete");
        assert!(receipt.items.iter().all(|i| i.is_ok()), "{fid} deleted: {:?}", receipt.items);
    }

    /// How many times `fid` was declared.
    pub fn declarations(&self, fid: &str) -> usize {
        let fid: cessfs::format::Hash = fid.parse().expect("fid");
        let events = self.run(self.chain.events()).expect("events");
        events
            .iter()
            .filter(
                |(_, e)| matches!(e, cessfs::devnet::Event::UploadDeclaration { deal_hash, .. } if *deal_hash == fid),
            )
            .count()
    }

    /// How many storage orders were declared in all.
    pub fn all_declarations(&self) -> usize {
        let events = self.run(self.chain.events()).expect("events");
        events.iter().filter(|(_, e)| matches!(e, cessfs::devnet::Event::UploadDeclaration { .. })).count()
    }

    /// The bytes the storage nodes took in all (an all-zero fragment travels empty).
    pub fn bytes_put(&self) -> u64 {
        self.nodes().iter().map(|n| n.counters.bytes_in).sum()
    }

    /// The bytes of the default territory that stored files and open deals take.
    pub fn territory_charged(&self) -> u128 {
        use cessfs::protocol::Chain;
        let me = self.chain.account();
        let t = self.run(self.chain.territory(&me, b"cessfs")).expect("territory").expect("the territory exists");
        t.used_space + t.locked_space
    }

    /// Switches node `index` (1-based) into `fault`.
    pub fn fault(&self, index: usize, fault: &str) {
        self.run(self.chain.set_fault(index, fault.parse().expect("fault"))).expect("set fault");
    }

    /// The nodes.
    pub fn nodes(&self) -> Vec<cessfs::devnet::NodeView> {
        self.run(self.chain.nodes()).expect("nodes")
    }

    /// Fragment `hash` of `fid` as the node at `endpoint` serves it (`None`: it has none).
    pub fn fragment(&self, endpoint: &str, fid: &str, hash: &cessfs::format::Hash) -> Option<Vec<u8>> {
        let signer = cessfs::protocol::Signer::from_uri("//Alice").expect("dev key");
        let client = cessfs::miner::MinerClient::new(
            signer,
            cessfs::miner::StallRule::over(std::time::Duration::from_secs(30)),
            None,
        );
        self.run(client.get_fragment(endpoint, &fid.parse().expect("fid"), hash, None, &Default::default()))
            .ok()
            .map(|b| b.to_vec())
    }
}

// ── helpers for checks ────────────────────────────────────────────────────────────────────────

/// A note of 4 KiB and a few bytes, different for each `i`.
pub fn note(i: usize) -> Vec<u8> {
    let mut bytes = random_bytes(4096, i as u64);
    bytes.extend_from_slice(format!("note {i}").as_bytes());
    bytes
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The body of `GET path` on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    std::io::Write::write_fmt(
        &mut s,
        format_args!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `series` (name and labels, as printed), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every sample of metric `name`, whatever its labels.
pub fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

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

/// `len` pseudo-random bytes from `seed` (xorshift: incompressible, reproducible).
/// statvfs(2) of `p`.
pub fn statvfs(p: &Path) -> libc::statvfs {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: zeroed statvfs is valid; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs {}", p.display());
    st
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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

/// A `cessfs devnet` of its own, outside any mount's data dir (as a real chain is), stopped on
/// drop. It keeps its ports across a restart.
pub struct StandaloneDevnet {
    dir: TempDir,
    child: Option<Child>,
    rpc_port: u16,
    node_port: u16,
    args: Vec<String>,
    /// Its RPC URL, for `--chain`.
    pub url: String,
}

/// A base port with `count` free ports from it, on loopback, below the kernel's ephemeral
/// range: a node switched down and up again binds its port anew, and an outgoing connection
/// anywhere on the machine may have taken a port of that range meanwhile.
fn free_ports(count: u16) -> u16 {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, span) = (10_000, u64::from(ephemeral.saturating_sub(10_000 + count).max(1_000)));
    let mut x = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ 0x9e37_79b9;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = low + (x % span) as u16;
        let free = (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

impl StandaloneDevnet {
    /// Starts one on free ports and waits until it answers. Ports found free may be taken
    /// before the devnet binds them (tests run in parallel): then it starts on others.
    pub fn start() -> StandaloneDevnet {
        StandaloneDevnet::start_with(&[])
    }

    /// [`StandaloneDevnet::start`] with extra `cessfs devnet` flags.
    pub fn start_with(args: &[&str]) -> StandaloneDevnet {
        let dir = tempfile::tempdir().expect("devnet dir");
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut net = StandaloneDevnet { dir, child: None, rpc_port: 0, node_port: 0, url: String::new(), args };
        for _ in 0..5 {
            let base = free_ports(17);
            (net.rpc_port, net.node_port, net.url) = (base, base + 1, format!("http://127.0.0.1:{base}"));
            if net.try_resume() {
                return net;
            }
        }
        panic!("the devnet did not start:\n{}", net.log());
    }

    /// Starts it again (after [`StandaloneDevnet::stop`]), with its state and ports.
    pub fn resume(&mut self) {
        assert!(self.try_resume(), "the devnet did not start:\n{}", self.log());
    }

    /// Starts it and waits until it answers; `false` if it exited first.
    fn try_resume(&mut self) -> bool {
        let info = self.dir.path().join("net/devnet.json");
        let _ = std::fs::remove_file(&info);
        let log = File::options().create(true).append(true).open(self.dir.path().join("devnet.log")).expect("log");
        let child = Command::new(BIN)
            .args(["devnet", "--rpc", &format!("127.0.0.1:{}", self.rpc_port), "--node-port"])
            .arg(self.node_port.to_string())
            .arg("--dir")
            .arg(self.dir.path().join("net"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .dies_with_the_test()
            .spawn()
            .expect("spawn cessfs devnet");
        self.child = Some(child);
        let mut exited = false;
        wait_until(Duration::from_secs(30), "the devnet to start", || {
            exited = self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            exited || info.exists()
        });
        if exited {
            self.child = None;
        }
        !exited
    }

    /// Stops it, as a chain that goes away.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The devnet's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("devnet.log")).unwrap_or_default()
    }

    /// A client of it, as //Alice (who mounts use by default).
    pub fn client(&self) -> Devnet {
        let signer = cessfs::protocol::Signer::from_uri("//Alice").expect("dev key");
        let token = std::fs::read_to_string(self.dir.path().join("net/control.token")).expect("control token");
        Devnet {
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            chain: cessfs::devnet::DevnetChain::new(&self.url, signer).with_control(&token),
        }
    }
}

impl Drop for StandaloneDevnet {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("── devnet log ──\n{}", self.log());
        }
    }
}

/// A file system mounted by a test (a tmpfs of a given size, a loop device), unmounted on drop.
pub struct TestFs {
    dir: PathBuf,
}

impl TestFs {
    /// A tmpfs of `size` (as mount(8) takes it: 64m) on `dir`, created if missing.
    pub fn tmpfs(dir: &Path, size: &str) -> TestFs {
        std::fs::create_dir_all(dir).expect("tmpfs mount point");
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(dir));
        TestFs { dir: dir.to_path_buf() }
    }

    /// The ext4 image `image` mounted through a loop device on `dir`, without a journal and with
    /// `errors=continue`: a block that cannot be written fails the fsync of its file, and the
    /// file system stays writable (a journal that cannot be written would turn it read-only).
    pub fn ext4(image: &Path, dir: &Path) -> TestFs {
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0"]).arg(image));
        std::fs::create_dir_all(dir).expect("ext4 mount point");
        run(Command::new("mount").args(["-o", "loop,errors=continue"]).arg(image).arg(dir));
        TestFs { dir: dir.to_path_buf() }
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the file system holding `dir` with `dir/name` until it is full; returns the file.
pub fn fill(dir: &Path, name: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = File::create(&path).expect("ballast");
    let block = vec![0x5au8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    let small = [0x5au8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

/// Daemons a test starts end with it, even when the harness is killed: one left running keeps
/// uploading into its data dir until the disk is full.
trait DiesWithTheTest {
    fn dies_with_the_test(&mut self) -> &mut Self;
}

impl DiesWithTheTest for Command {
    fn dies_with_the_test(&mut self) -> &mut Self {
        // SAFETY: prctl(2) is async-signal-safe; the closure allocates nothing.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            })
        }
    }
}

/// Writes a file of `mib` MiB of data at `path`: zeros written out, since holes (`set_len`)
/// would cost nothing on CESS (sparse files).
pub fn write_zeros(path: &Path, mib: usize) {
    let zeros = vec![0u8; 1 << 20];
    let mut f = File::create(path).expect("create");
    (0..mib).for_each(|_| std::io::Write::write_all(&mut f, &zeros).expect("write zeros"));
}
