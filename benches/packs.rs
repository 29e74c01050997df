//! What `--pack-below` saves, measured on real files: the territory a corpus is charged (96 MiB
//! per 32 MiB segment) and the declarations it takes, for several thresholds, against storing
//! every file in segments of its own (threshold 0) in the same run. Blobs are placed by the
//! packer's own first fit ([`PackSpace`]); equal contents are not looked for (the packer stores
//! them once, so it saves at least this).
//!
//! Then, on the embedded devnet, packing on (the default) against `--pack-below 0` (one deal per
//! file), in the same run: from the last close to all active, per file; territory charged per
//! file; the first byte of one cold (evicted) small file. The baseline stores fewer files (each
//! takes 96 MiB of the devnet's disk); figures are per file.
//!
//! Run: `cargo bench --bench packs`. CORPUS=DIR (repeatable with `:`) picks the files; the
//! default is this machine's Rust sources in ~/.cargo/registry/src and /usr/share. FILES=N the
//! packed files (10,000).

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cessfs::format::{Layout, MAX_BLOB, Mode, PackSpace, sealed_len};

const CHARGED_PER_SEGMENT: u64 = 96 << 20;

fn walk(dir: &Path, out: &mut Vec<(u64, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            walk(&entry.path(), out);
        } else if kind.is_file()
            && let Ok(meta) = entry.metadata()
            && meta.len() > 0
        {
            use std::os::unix::fs::MetadataExt;
            out.push((meta.len(), meta.dev() ^ meta.ino().rotate_left(20)));
        }
    }
}

/// Writes `n` files of 4 KiB, waits until all are active, and returns the seconds per file from
/// the last close, the territory charged per file (bytes, from df), and the median first byte
/// of 5 cold files (ms).
fn live(n: usize, args: &[&str]) -> (f64, f64, f64) {
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let (key, _) = mounted::key_file(work.path());
    let m = mounted::mount(&work.path().join("data"), &key, args);
    let root = m.dir.path();
    let avail = || {
        let st = nix_statvfs(root);
        st.0 * st.1
    };
    let wait = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut before = avail();
    while std::time::Instant::now() < wait && before == 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        before = avail();
    }
    for i in 0..n {
        std::fs::write(root.join(format!("{i}.txt")), data::random(4096, i as u64)).expect("write");
    }
    let closed = std::time::Instant::now();
    for i in 0..n {
        mounted::wait_active(&root.join(format!("{i}.txt")));
    }
    let per_file = closed.elapsed().as_secs_f64() / n as f64;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let charged = before.saturating_sub(avail()) as f64 * 3.0 / n as f64;
    let mut first = Vec::new();
    for i in [1, n / 4, n / 2, 3 * n / 4, n - 1] {
        let path = root.join(format!("{i}.txt"));
        let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
        // SAFETY: NUL-terminated strings and a one-byte value.
        let r = unsafe { libc::setxattr(c.as_ptr(), c"user.cess.evict".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        assert_eq!(r, 0, "evict: {}", std::io::Error::last_os_error());
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        let t = std::time::Instant::now();
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut std::fs::File::open(&path).expect("open"), &mut byte).expect("read");
        first.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (per_file, charged, mounted::median(first))
}

/// (available blocks, fragment size) of the file system at `path`.
fn nix_statvfs(path: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    // SAFETY: a NUL-terminated path and a zeroed struct for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(r, 0, "statvfs: {}", std::io::Error::last_os_error());
    (st.f_bavail, st.f_frsize)
}

fn main() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let corpus = std::env::var("CORPUS").unwrap_or_else(|_| format!("{home}/.cargo/registry/src:/usr/share"));
    let mut files = Vec::new();
    for dir in corpus.split(':') {
        walk(&PathBuf::from(dir), &mut files);
    }
    // Hard links are one file.
    let mut seen = HashSet::new();
    files.retain(|(_, id)| seen.insert(*id));
    let bytes: u64 = files.iter().map(|(s, _)| s).sum();
    println!("corpus {corpus}: {} files, {:.2} GiB", files.len(), bytes as f64 / (1u64 << 30) as f64);
    let thresholds = [0, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, MAX_BLOB as u64];
    let mut baseline = None;
    println!(
        "{:>12} {:>10} {:>14} {:>10} {:>14} {:>10} {:>10}",
        "pack below", "packed", "territory GiB", "ratio", "declarations", "ratio", "packs"
    );
    for t in thresholds {
        let (mut segments, mut declarations, mut packs) = (0u64, 0u64, 0u64);
        let mut open: Option<PackSpace> = None;
        let mut packed = 0u64;
        for &(size, _) in &files {
            if size < t {
                packed += 1;
                let len = sealed_len(size as usize);
                if open.as_mut().and_then(|p| p.place(len)).is_none() {
                    let mut fresh = PackSpace::default();
                    fresh.place(len).expect("a blob under MAX_BLOB fits an empty pack");
                    open = Some(fresh);
                    packs += 1;
                }
            } else {
                let layout = Layout::new(size, Mode::Encrypted).expect("a file of at most 1000 segments");
                segments += layout.segments() as u64;
                declarations += 1;
            }
        }
        segments += packs;
        declarations += packs;
        let territory = segments * CHARGED_PER_SEGMENT;
        let base = *baseline.get_or_insert((territory, declarations));
        println!(
            "{:>12} {:>10} {:>14.2} {:>9.5}x {:>14} {:>9.5}x {:>10}",
            t,
            packed,
            territory as f64 / (1u64 << 30) as f64,
            territory as f64 / base.0 as f64,
            declarations,
            declarations as f64 / base.1 as f64,
            packs
        );
    }

    let files: usize = std::env::var("FILES").ok().and_then(|f| f.parse().ok()).unwrap_or(10_000);
    mounted::warm_up(Path::new("/var/tmp"));
    let (pack_time, pack_charge, pack_first) = live(files, &[]);
    let (base_time, base_charge, base_first) = live(20, &["--pack-below", "0"]);
    println!("\non the devnet, {files} files of 4 KiB packed against 20 with a deal each:");
    println!(
        "last close to active, per file: {:.2} ms packed, {:.2} ms alone ({:.3}x)",
        pack_time * 1000.0,
        base_time * 1000.0,
        pack_time / base_time
    );
    println!(
        "territory per file: {:.0} bytes packed, {:.0} alone ({:.5}x)",
        pack_charge,
        base_charge,
        pack_charge / base_charge
    );
    println!(
        "first byte of a cold file: {:.1} ms packed, {:.1} ms alone ({:.2}x)",
        pack_first,
        base_first,
        pack_first / base_first
    );
}
