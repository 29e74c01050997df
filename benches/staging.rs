//! Where staged file contents should live: in sled values or in plain files. Measures, in one
//! run, sequential writes (1 MiB blocks) and random writes (4 KiB at random offsets), each made
//! durable at the end, plus a sequential read back, for both. docs/STORE.md has the figures and
//! the decision.
//!
//! Run: `cargo bench --bench staging`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const SEQ_TOTAL: usize = 512 << 20;
const SEQ_BLOCK: usize = 1 << 20;
const RAND_FILE: usize = 64 << 20;
const RAND_BLOCK: usize = 4096;
const RAND_WRITES: usize = 16_384;
const RUNS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn offsets() -> Vec<u64> {
    let mut x = 0x2545f4914f6cdd1du64;
    (0..RAND_WRITES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (RAND_FILE / RAND_BLOCK) as u64) * RAND_BLOCK as u64
        })
        .collect()
}

fn drop_caches() {
    // Root only; otherwise reads are warm for both stores alike.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

struct Figures {
    seq_write: Duration,
    rand_write: Duration,
    seq_read: Duration,
}

fn plain_file(dir: &std::path::Path) -> Figures {
    let block = vec![0x5au8; SEQ_BLOCK];
    let path = dir.join("content");
    let t = Instant::now();
    let f = OpenOptions::new().create(true).read(true).write(true).truncate(true).open(&path).unwrap();
    for i in 0..SEQ_TOTAL / SEQ_BLOCK {
        f.write_all_at(&block, (i * SEQ_BLOCK) as u64).unwrap();
    }
    f.sync_data().unwrap();
    let seq_write = t.elapsed();
    drop_caches();
    let t = Instant::now();
    let mut buf = vec![0u8; SEQ_BLOCK];
    for i in 0..SEQ_TOTAL / SEQ_BLOCK {
        f.read_exact_at(&mut buf, (i * SEQ_BLOCK) as u64).unwrap();
    }
    let seq_read = t.elapsed();
    let small = [0xa5u8; RAND_BLOCK];
    let rpath = dir.join("random");
    let f = OpenOptions::new().create(true).write(true).truncate(true).open(&rpath).unwrap();
    f.set_len(RAND_FILE as u64).unwrap();
    f.sync_all().unwrap();
    let t = Instant::now();
    for off in offsets() {
        f.write_all_at(&small, off).unwrap();
    }
    f.sync_data().unwrap();
    let rand_write = t.elapsed();
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(rpath).unwrap();
    Figures { seq_write, rand_write, seq_read }
}

/// Content as sled values: 1 MiB chunks for sequential data, 4 KiB chunks for random writes
/// (the chunk size that needs no read-modify-write for them: sled's best case).
fn sled_values(dir: &std::path::Path) -> Figures {
    let db = sled::Config::new().path(dir.join("db")).cache_capacity(32 << 20).open().unwrap();
    let seq = db.open_tree("seq").unwrap();
    let block = vec![0x5au8; SEQ_BLOCK];
    let t = Instant::now();
    for i in 0..SEQ_TOTAL / SEQ_BLOCK {
        seq.insert((i as u64).to_be_bytes(), &block[..]).unwrap();
    }
    db.flush().unwrap();
    let seq_write = t.elapsed();
    // Reopen, so that the read comes from disk and not from sled's own cache.
    drop((seq, db));
    drop_caches();
    let t = Instant::now();
    let db = sled::Config::new().path(dir.join("db")).cache_capacity(32 << 20).open().unwrap();
    let seq = db.open_tree("seq").unwrap();
    for i in 0..SEQ_TOTAL / SEQ_BLOCK {
        assert_eq!(seq.get((i as u64).to_be_bytes()).unwrap().unwrap().len(), SEQ_BLOCK);
    }
    let seq_read = t.elapsed();
    let rand = db.open_tree("rand").unwrap();
    let zero = vec![0u8; RAND_BLOCK];
    for i in 0..RAND_FILE / RAND_BLOCK {
        rand.insert((i as u64).to_be_bytes(), &zero[..]).unwrap();
    }
    db.flush().unwrap();
    let small = [0xa5u8; RAND_BLOCK];
    let t = Instant::now();
    for off in offsets() {
        rand.insert((off / RAND_BLOCK as u64).to_be_bytes(), &small[..]).unwrap();
    }
    db.flush().unwrap();
    let rand_write = t.elapsed();
    Figures { seq_write, rand_write, seq_read }
}

fn main() {
    let base = std::env::var_os("STAGING_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let mut files = Vec::new();
    let mut sleds = Vec::new();
    for _ in 0..RUNS {
        let d = tempfile::tempdir_in(&base).unwrap();
        files.push(plain_file(d.path()));
        let d = tempfile::tempdir_in(&base).unwrap();
        sleds.push(sled_values(d.path()));
    }
    let mbs = |bytes: usize, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let row = |name: &str, bytes: usize, pick: fn(&Figures) -> Duration| {
        let f = median(files.iter().map(pick).collect());
        let s = median(sleds.iter().map(pick).collect());
        let (f, s) = (mbs(bytes, f), mbs(bytes, s));
        println!("{name:<44} {f:>10.0} {s:>10.0} {:>9.1}x", f / s);
    };
    println!("staging store, median of {RUNS} runs, MB/s, on {}", base.display());
    println!("{:<44} {:>10} {:>10} {:>10}", "workload", "files", "sled", "files/sled");
    row("sequential write, 1 MiB blocks, 512 MiB + sync", SEQ_TOTAL, |f| f.seq_write);
    row("random write, 4 KiB x 16384 in 64 MiB + sync", RAND_WRITES * RAND_BLOCK, |f| f.rand_write);
    row("sequential read, 512 MiB, cold (sled: reopen)", SEQ_TOTAL, |f| f.seq_read);
}
