//! Time from close() to active for a 1 GiB file on the embedded devnet, against the format
//! module's encode throughput measured in the same run.
//!
//! Run: `cargo bench --bench upload` (as root or with fusermount3). Mounts the built `cessfs`
//! with `--quiet-delay 0` so the time measured is the upload's alone.

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
mod mounted;

use std::time::Instant;

use cessfs::format::Encoder;
use data::random;
use mounted::*;

const SIZE: usize = 1 << 30;
const RUNS: usize = 3;

fn main() {
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let (key_path, key) = key_file(work.path());

    // The format module's encode throughput on the same data size, in this run.
    let encoder = Encoder::default();
    let mut encode_rates = Vec::new();
    for run in 0..RUNS {
        let data = random(SIZE, 100 + run as u64);
        let t = Instant::now();
        encoder.encode(&data[..], SIZE as u64, Some(&key), |_| Ok(())).expect("encode");
        encode_rates.push(SIZE as f64 / t.elapsed().as_secs_f64());
    }
    encoder.release_buffers();
    let encode = median(encode_rates);

    // close() to active through the mount.
    let m = mount(&work.path().join("data"), &key_path, &[]);
    let mut upload_rates = Vec::new();
    for run in 0..RUNS {
        let data = random(SIZE, 200 + run as u64);
        warm_up(work.path());
        let path = m.dir.path().join(format!("big-{run}.bin"));
        std::fs::write(&path, &data).expect("write");
        let closed = Instant::now();
        wait_active(&path);
        let secs = closed.elapsed().as_secs_f64();
        println!("run {run}: 1 GiB from close() to active in {secs:.2} s");
        upload_rates.push(SIZE as f64 / secs);
    }
    let upload = median(upload_rates);
    println!("\nencode (format module, encrypted, 2 cores): {:.0} MB/s", encode / 1e6);
    println!("close() to active on the devnet: {:.0} MB/s ({:.2} s per GiB)", upload / 1e6, SIZE as f64 / upload);
    println!("ratio: {:.0}% of the encode throughput (median of {RUNS})", 100.0 * upload / encode);
}
