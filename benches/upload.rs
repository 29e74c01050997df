//! Time from close() to active for a 1 GiB file on the embedded devnet, against the format
//! module's encode throughput measured in the same run; and where the CPU goes, since the client
//! and the devnet's 16 nodes share this machine's cores.
//!
//! Run: `cargo bench --bench upload` (as root or with fusermount3). Mounts the built `cessfs`
//! with `--quiet-delay 0` so the time measured is the upload's alone.

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;

use std::time::Instant;

use cessfs::format::{Encoder, FRAGMENTS, SEGMENT_SIZE, sha256};
use data::random;
use mounted::*;

const SIZE: usize = 1 << 30;
const RUNS: usize = 3;
const GIB: f64 = (1u64 << 30) as f64;

/// CPU seconds (user + system) this process has used, all threads.
fn own_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().expect("stat fields").split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime")) / tick
}

fn main() {
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let (key_path, key) = key_file(work.path());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;

    // The format module's encode throughput on the same data size, in this run.
    let encoder = Encoder::default();
    let (mut encode_rates, mut encode_cpu) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let data = random(SIZE, 100 + run as u64);
        let (t, cpu) = (Instant::now(), own_cpu());
        encoder.encode(&data[..], SIZE as u64, Some(&key), |_| Ok(())).expect("encode");
        encode_rates.push(SIZE as f64 / t.elapsed().as_secs_f64());
        encode_cpu.push((own_cpu() - cpu) * GIB / SIZE as f64);
    }
    encoder.release_buffers();
    let (encode, encode_cpu) = (median(encode_rates), median(encode_cpu));

    // SHA-256 on one core: every node checks the hash of each fragment it takes.
    let segment = random(SEGMENT_SIZE, 7);
    let t = Instant::now();
    for _ in 0..8 {
        std::hint::black_box(sha256(std::hint::black_box(&segment)));
    }
    let sha_rate = 8.0 * SEGMENT_SIZE as f64 / t.elapsed().as_secs_f64();
    let node_hash_cpu = (FRAGMENTS / 4) as f64 * GIB / sha_rate;

    // close() to active through the mount.
    let m = mount(&work.path().join("data"), &key_path, &[]);
    let (mut upload_rates, mut upload_cpu) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let data = random(SIZE, 200 + run as u64);
        warm_up(work.path());
        let path = m.dir.path().join(format!("big-{run}.bin"));
        std::fs::write(&path, &data).expect("write");
        let (closed, cpu) = (Instant::now(), cpu_of(m.child.id()));
        wait_active(&path);
        let secs = closed.elapsed().as_secs_f64();
        let used = (cpu_of(m.child.id()) - cpu) * GIB / SIZE as f64;
        println!("run {run}: 1 GiB from close() to active in {secs:.2} s, {used:.1} CPU seconds in cessfs");
        upload_rates.push(SIZE as f64 / secs);
        upload_cpu.push(used);
    }
    let (upload, upload_cpu) = (median(upload_rates), median(upload_cpu));
    let peak = peak_mib(m.child.id());
    // What the devnet keeps on disk for them: its fragments (each byte once, however many nodes
    // hold it), against the territory charged for them / 3 (one copy of each segment's data).
    let devnet = work.path().join("data/devnet");
    let kept = cessfs::disk::usage(&[devnet.join("fragments"), devnet.join("nodes")]);
    let segments = RUNS * SIZE.div_ceil(SEGMENT_SIZE);
    let charged_third = (segments * SEGMENT_SIZE) as f64;
    println!(
        "\nencode (format module, encrypted, {cores} cores): {:.0} MB/s, {encode_cpu:.1} CPU s per GiB",
        encode / 1e6
    );
    println!("close() to active on the devnet: {:.0} MB/s ({:.2} s per GiB)", upload / 1e6, SIZE as f64 / upload);
    println!("ratio: {:.0}% of the encode throughput (median of {RUNS})", 100.0 * upload / encode);
    println!(
        "\nCPU per GiB, client and devnet together: {upload_cpu:.1} s, of which encoding before the declaration \
         about {encode_cpu:.1} s and the nodes' SHA-256 checks of 3 GiB at least {node_hash_cpu:.1} s \
         ({:.0} MB/s on one core)",
        sha_rate / 1e6
    );
    println!(
        "on {cores} cores that CPU alone takes {:.2} s per GiB: a ratio of at most {:.0}% for this work",
        upload_cpu / cores,
        100.0 * (GIB / (upload_cpu / cores)) / encode
    );
    println!("peak resident memory of cessfs (client and devnet) over the {RUNS} uploads: {peak:.0} MiB");
    println!(
        "the devnet's disk after the {RUNS} uploads: {:.0} MiB of fragments, territory charged / 3: {:.0} MiB ({:.2}x)",
        kept as f64 / (1 << 20) as f64,
        charged_third / (1 << 20) as f64,
        kept as f64 / charged_third
    );
}
