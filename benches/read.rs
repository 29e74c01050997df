//! Reading a 1 GiB file back from the embedded devnet's nodes (cold: its cached copy evicted)
//! against the same read from the local cache (warm), in one run; the first byte of a cold file;
//! and the cache's size while many files are read through a small cache.
//!
//! Run: `cargo bench --bench read` as root (it drops the page cache between reads, so that
//! "warm" means the cessfs cache on disk, not memory).

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use data::random;
use mounted::*;

const SIZE: usize = 1 << 30;
const RUNS: usize = 3;
const SEGMENT: u64 = 32 << 20;

fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn evict(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    // SAFETY: NUL-terminated strings and a one-byte value.
    let r = unsafe { libc::setxattr(c.as_ptr(), c"user.cess.evict".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(r, 0, "evict {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Reads the whole file in 1 MiB reads; returns (seconds to the first byte, seconds in all).
fn read_all(path: &Path, expect_len: usize) -> (f64, f64) {
    let t = Instant::now();
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut first = None;
    let mut total = 0;
    loop {
        let n = f.read(&mut buf).expect("read");
        first.get_or_insert(t.elapsed().as_secs_f64());
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, expect_len);
    (first.unwrap_or_default(), t.elapsed().as_secs_f64())
}

/// Bytes the content files take on disk.
fn cached_bytes(data: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(data.join("content"))
        .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.blocks() * 512).sum())
        .unwrap_or(0)
}

fn main() {
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let (key_path, _) = key_file(work.path());
    let data_dir = work.path().join("data");
    let m = mount(&data_dir, &key_path, &[]);
    let big = m.dir.path().join("big.bin");
    std::fs::write(&big, random(SIZE, 7)).expect("write");
    let small = m.dir.path().join("small.txt");
    std::fs::write(&small, random(100 << 10, 8)).expect("write");
    wait_active(&big);
    wait_active(&small);

    let (mut warm, mut cold, mut first, mut first_small) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        warm_up(work.path());
        drop_page_cache();
        let (_, secs) = read_all(&big, SIZE);
        warm.push(SIZE as f64 / secs);
        evict(&big);
        evict(&small);
        drop_page_cache();
        let (to_first, secs) = read_all(&big, SIZE);
        let (small_first, _) = read_all(&small, 100 << 10);
        println!(
            "run {run}: warm {:.0} MB/s, cold {:.0} MB/s, first byte {:.0} ms (100 KiB file: {:.0} ms)",
            warm[run] / 1e6,
            SIZE as f64 / secs / 1e6,
            to_first * 1e3,
            small_first * 1e3
        );
        cold.push(SIZE as f64 / secs);
        first.push(to_first);
        first_small.push(small_first);
    }
    drop(m);

    // 12 files of 96 MiB read back through a 256 MiB cache: the cache's peak size.
    let data_dir = work.path().join("data-small-cache");
    let m = mount(&data_dir, &key_path, &["--cache-size", "256M"]);
    let files: Vec<_> = (0..12).map(|i| m.dir.path().join(format!("file-{i}"))).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(f, random(96 << 20, 20 + i as u64)).expect("write");
        wait_active(f);
    }
    let mut peak = 0;
    for f in &files {
        evict(f);
    }
    for f in &files {
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                read_all(f, 96 << 20);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(cached_bytes(&data_dir));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
    }
    peak = peak.max(cached_bytes(&data_dir));

    let (warm, cold) = (median(warm), median(cold));
    println!("\nwarm sequential read (local cache): {:.0} MB/s", warm / 1e6);
    println!("cold sequential read (from 4 of 12 fragments on the nodes): {:.0} MB/s", cold / 1e6);
    println!("ratio cold/warm: {:.0}% (median of {RUNS})", 100.0 * cold / warm);
    println!(
        "first byte of a cold 1 GiB file: {:.0} ms; of a cold 100 KiB file: {:.0} ms",
        median(first) * 1e3,
        median(first_small) * 1e3
    );
    println!(
        "cache limit 256 MiB, peak {:.0} MiB while reading 12 x 96 MiB: {:.2} segments over",
        peak as f64 / (1 << 20) as f64,
        (peak as f64 - (256u64 << 20) as f64) / SEGMENT as f64
    );
}
