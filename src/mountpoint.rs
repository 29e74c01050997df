//! Mount points: the checks before mounting, each failing with one clear line, finding cessfs
//! mounts in /proc/self/mountinfo, cleaning up a stale one, and unmounting.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// File system type (`fuse.cessfs` for ours).
    pub fstype: String,
    /// Mount source (`cessfs:DATA_DIR` for ours).
    pub source: String,
    /// Its device, as `major:minor`.
    pub device: String,
}

/// The fstype cessfs mounts show.
pub const FSTYPE: &str = "fuse.cessfs";

/// The name `systemd-escape --path` gives `dir` (`mnt-cess` for /mnt/cess): what system mounts
/// name their config and data dir after, as systemd names `cessfs@NAME.service`.
pub fn escaped_name(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let parts: Vec<&[u8]> =
        dir.as_os_str().as_bytes().split(|&c| c == b'/').filter(|p| !p.is_empty() && *p != b".").collect();
    if parts.is_empty() {
        return "-".to_string();
    }
    let mut out = String::new();
    for (i, &c) in parts.join(&b'/').iter().enumerate() {
        match c {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(c as char),
            _ => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out
}

/// Every mount of this process's namespace.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

fn unescape(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let device = left.split(' ').nth(2)?;
    let mountpoint = left.split(' ').nth(4)?;
    let mut r = right.split(' ');
    let fstype = r.next()?;
    let source = r.next()?;
    Some(MountEntry {
        mountpoint: PathBuf::from(unescape(mountpoint)),
        fstype: fstype.into(),
        source: unescape(source),
        device: device.into(),
    })
}

/// Sets the kernel's read-ahead for the mount at `dir` (128 KiB unless raised, which splits
/// sequential reads through the daemon into 128 KiB requests). Needs root; the mount must not
/// be asked anything (it may not be served yet), so its device comes from mountinfo.
pub fn set_read_ahead(dir: &Path, kib: u32) -> anyhow::Result<()> {
    let entry = mount_at(dir)?.with_context(|| format!("{} is not mounted", dir.display()))?;
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", entry.device);
    std::fs::write(&knob, kib.to_string()).with_context(|| format!("writing {knob}"))
}

/// The mount at exactly `dir`, if any (the last one, as the kernel shows the top of a stack).
pub fn mount_at(dir: &Path) -> io::Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rfind(|m| m.mountpoint == dir))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false)
}

/// Detaches whatever is mounted at `dir` (a dead cessfs daemon's mount, or a busy one being shut
/// down): it disappears from the tree now and goes away when its last file is closed.
pub fn detach(dir: &Path) -> anyhow::Result<()> {
    if is_root() {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: `c` is a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error()).context("detaching the stale mount");
        }
        return Ok(());
    }
    let status = Command::new("fusermount3").arg("-u").arg("-z").arg(dir).status().context("running fusermount3")?;
    if !status.success() {
        bail!("fusermount3 -u -z {} failed", dir.display());
    }
    Ok(())
}

/// Whether `dir` is a FUSE mount whose daemon is gone. Asked with statfs, which the kernel
/// always sends to the daemon: a stat may be answered from the kernel's attribute cache.
fn daemon_gone(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: an all-zero statvfs is a valid value for statvfs(3) to fill in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// Checks that `dir` can take a cessfs mount and returns its canonical path. A stale cessfs
/// mount there (its daemon killed) is cleaned up.
pub fn preflight(dir: &Path) -> anyhow::Result<PathBuf> {
    let shown = dir.display();
    if daemon_gone(dir) {
        log::warn!("{shown}: cleaning up the mount of a cessfs daemon that is gone");
        detach(dir)?;
    }
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{shown} does not exist: create an empty directory first")
        }
        Err(e) => bail!("{shown}: {e}"),
    };
    if !meta.is_dir() {
        bail!("{shown} is not a directory");
    }
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {shown}"))?;
    if let Some(m) = mount_at(&dir)? {
        if m.fstype == FSTYPE {
            bail!("{} is already mounted by cessfs ({})", dir.display(), m.source);
        }
        bail!("{} is already a mount point ({} {})", dir.display(), m.fstype, m.source);
    }
    if std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty: cessfs mounts on an empty directory", dir.display());
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse kernel module (modprobe fuse)");
    }
    if !is_root() && !in_path("fusermount3") {
        bail!("fusermount3 not found: install the fuse3 package (apt install fuse3)");
    }
    Ok(dir)
}

/// Checks that `path` exists and lies in a cessfs mount (what `status` and `evict` act on);
/// returns that mount's root.
pub fn in_cessfs_mount(path: &Path) -> anyhow::Result<PathBuf> {
    let resolved = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let under = mounts()?.into_iter().filter(|m| resolved.starts_with(&m.mountpoint));
    // The deepest mount holds it (the last of equals: the top of a stack).
    let holder = under.fold(None::<MountEntry>, |best, m| match best {
        Some(b) if b.mountpoint.components().count() > m.mountpoint.components().count() => Some(b),
        _ => Some(m),
    });
    match holder {
        Some(m) if m.fstype == FSTYPE => Ok(m.mountpoint),
        _ => bail!("{} is not in a cessfs mount", path.display()),
    }
}

/// The canonical mount point and the data dir of the cessfs mount at `dir`.
pub fn cessfs_mount(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let resolved = std::fs::canonicalize(dir).or_else(|e| {
        // A dead daemon's mount point cannot be resolved; find it by its literal path.
        if e.raw_os_error() == Some(libc::ENOTCONN) { std::path::absolute(dir) } else { Err(e) }
    });
    let dir = resolved.with_context(|| format!("resolving {}", dir.display()))?;
    let Some(m) = mount_at(&dir)?.filter(|m| m.fstype == FSTYPE) else {
        bail!("{} is not a cessfs mount", dir.display());
    };
    let data_dir = m.source.strip_prefix("cessfs:").map(PathBuf::from).unwrap_or_default();
    Ok((dir, data_dir))
}

/// The data dir `place` names: the data dir of the cessfs mount at `place`, or `place` itself.
pub fn data_dir_of(place: &Path) -> PathBuf {
    cessfs_mount(place).map(|(_, data_dir)| data_dir).unwrap_or_else(|_| place.to_path_buf())
}

/// The RPC URL of the embedded devnet a mount of `data_dir` runs.
pub fn embedded_devnet(data_dir: &Path) -> anyhow::Result<String> {
    let info = std::fs::read(data_dir.join("devnet/devnet.json")).with_context(|| {
        format!("no mount of {} runs its embedded devnet (give --chain for another chain)", data_dir.display())
    })?;
    let info: serde_json::Value = serde_json::from_slice(&info).context("devnet.json")?;
    info["rpc"].as_str().map(str::to_string).context("devnet.json names no RPC URL")
}

/// Mounts a FUSE file system of type `fuse.cessfs` at `dir` with mount(2), as root, and returns
/// the /dev/fuse descriptor to serve it on. (fuser's own mount would show type `fuse`.)
pub fn mount_as_root(dir: &Path, source: &str, allow_other: bool, read_only: bool) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let fuse = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!("fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions", fuse.as_raw_fd());
    if allow_other {
        data.push_str(",allow_other");
    }
    let c = |s: &[u8]| std::ffi::CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, target, fstype, data) =
        (c(source.as_bytes())?, c(dir.as_os_str().as_encoded_bytes())?, c(FSTYPE.as_bytes())?, c(data.as_bytes())?);
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fuse.into())
}

/// Unmounts `dir`: refused with a clear message while files are open there.
pub fn unmount(dir: &Path) -> anyhow::Result<()> {
    if is_root() {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        // A file closed a moment ago may still be held by a process forked meanwhile (until it
        // execs): busy is asked again for up to two seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            // SAFETY: `c` is a NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e).with_context(|| format!("unmounting {}", dir.display()));
            }
            if std::time::Instant::now() > deadline {
                bail!("{} is busy: close the files and shells open there (fuser -vm {})", dir.display(), dir.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let out = Command::new("fusermount3").arg("-u").arg(dir).output().context("running fusermount3")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_mount_points_as_systemd_escape_does() {
        for (dir, name) in [
            ("/mnt/cess", "mnt-cess"),
            ("/mnt/my cess/", "mnt-my\\x20cess"),
            ("/srv/a-b", "srv-a\\x2db"),
            ("/.hidden/x", "\\x2ehidden-x"),
            ("/", "-"),
            ("/mnt/é", "mnt-\\xc3\\xa9"),
        ] {
            assert_eq!(escaped_name(Path::new(dir)), name, "{dir}");
        }
    }

    #[test]
    fn parses_mountinfo_with_escapes() {
        let line = "36 35 0:42 / /mnt/my\\040dir rw,nosuid - fuse.cessfs cessfs:/var/lib/x rw,user_id=0";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/my dir"));
        assert_eq!(m.fstype, FSTYPE);
        assert_eq!(m.source, "cessfs:/var/lib/x");
    }
}
