//! The data format's throughput: the kernels alone (SHA-256, AES-256-GCM-SIV, RS 4+8 encode) and
//! the whole encode and decode pipelines, measured by criterion in one run. The summary prints
//! each pipeline as a ratio of the limit the kernels allow on all cores, and the peak memory of
//! `cessfs fid` encoding a 4 GiB file.
//!
//! Run: `cargo bench --bench format`.

#[path = "support/data.rs"]
mod data;

use std::path::Path;
use std::time::Duration;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use cessfs::format::{
    DATA_FRAGMENTS, Encoder, Erasure, FRAGMENT_SIZE, FRAGMENTS, MasterKey, PARITY_FRAGMENTS, SEGMENT_SIZE, decode_file,
    sha256,
};
use criterion::{Criterion, Throughput};
use data::random;

const PIPELINE_SEGMENTS: usize = 8;

fn kernels(c: &mut Criterion, segment: &[u8]) {
    let mut g = c.benchmark_group("kernel");
    g.sample_size(20).measurement_time(Duration::from_secs(4)).throughput(Throughput::Bytes(SEGMENT_SIZE as u64));
    g.bench_function("sha256", |b| b.iter(|| sha256(segment)));
    g.bench_function("blake3", |b| b.iter(|| blake3::hash(segment)));
    let cipher = Aes256GcmSiv::new(&[3u8; 32].into());
    let mut buf = segment.to_vec();
    g.bench_function("aes256gcmsiv", |b| {
        b.iter(|| cipher.encrypt_inout_detached(&Nonce::default(), b"", buf.as_mut_slice().into()).expect("encrypt"))
    });
    let erasure = Erasure::default();
    let mut parity = vec![0u8; PARITY_FRAGMENTS * FRAGMENT_SIZE];
    g.bench_function("rs_encode", |b| b.iter(|| erasure.encode(segment, &mut parity)));
    g.finish();
}

fn pipelines(c: &mut Criterion, file: &[u8], key: &MasterKey) {
    let size = file.len() as u64;
    let encoder = Encoder::default();
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Bytes(size));
    g.bench_function("encode_plain", |b| b.iter(|| encoder.encode(file, size, None, |_| Ok(())).expect("encode")));
    g.bench_function("encode_encrypted", |b| {
        b.iter(|| encoder.encode(file, size, Some(key), |_| Ok(())).expect("encode"))
    });
    let mut fragments: Vec<Vec<Vec<u8>>> = Vec::new();
    let manifest = encoder
        .encode(file, size, Some(key), |seg| {
            fragments.push((0..DATA_FRAGMENTS).map(|i| seg.fragment(i).to_vec()).collect());
            Ok(())
        })
        .expect("encode");
    let fetch = |s: usize, f: usize| (f < DATA_FRAGMENTS).then(|| fragments[s][f].as_slice());
    g.bench_function("decode_encrypted_data_fragments", |b| {
        b.iter(|| decode_file(&manifest, Some(key), fetch, |_| {}).expect("decode"))
    });
    g.finish();
    assert_eq!(FRAGMENTS, 12);
}

/// Bytes per second criterion measured for `group/name` (its mean estimate).
fn measured(group: &str, name: &str, bytes: f64) -> f64 {
    let path =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("../criterion").join(group).join(name).join("new/estimates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("estimates json");
    let nanos = json["mean"]["point_estimate"].as_f64().expect("mean estimate");
    bytes / (nanos * 1e-9)
}

/// Peak resident memory of `cessfs fid` (the streaming encoder) on a 4 GiB file.
fn encode_4gib_peak_rss() -> (f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("4gib");
    std::fs::File::create(&big).and_then(|f| f.set_len(4 << 30)).expect("sparse 4 GiB file");
    let key = dir.path().join("key");
    std::fs::write(&key, "42".repeat(32)).expect("key file");
    let start = std::time::Instant::now();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cessfs"))
        .arg("fid")
        .arg("--key-file")
        .arg(&key)
        .arg(&big)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run cessfs fid");
    assert!(status.success(), "cessfs fid failed");
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid for writes; RUSAGE_CHILDREN reports our waited-for children.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    (start.elapsed().as_secs_f64(), usage.ru_maxrss as u64 * 1024)
}

fn main() {
    // First, while this process is small: the peak memory of a child counts what it shared with us.
    let (secs, rss) = encode_4gib_peak_rss();
    let segment = random(SEGMENT_SIZE, 1);
    let file = random(PIPELINE_SEGMENTS * SEGMENT_SIZE - 12345, 1);
    let key = MasterKey::from_bytes([9; 32]);
    let mut c = Criterion::default().configure_from_args();
    kernels(&mut c, &segment);
    pipelines(&mut c, &file, &key);
    c.final_summary();

    let seg = SEGMENT_SIZE as f64;
    let size = file.len() as f64;
    let sha = measured("kernel", "sha256", seg);
    let blake = measured("kernel", "blake3", seg);
    let aead = measured("kernel", "aes256gcmsiv", seg);
    let rs = measured("kernel", "rs_encode", seg);
    let cores = rayon::current_num_threads() as f64;
    // Work per input byte. Encoding: SHA-256 of the segment (1x) and of its 12 fragments (3x), RS;
    // encrypted mode adds the BLAKE3 of the plaintext for the key seed and one GCM-SIV pass.
    // Decoding from the 4 data fragments: their hashes (1x), the segment hash (1x), one GCM-SIV pass.
    let limit = |sha_passes: f64, blake_passes: f64, aead_passes: f64, rs_passes: f64| {
        cores / (sha_passes / sha + blake_passes / blake + aead_passes / aead + rs_passes / rs)
    };
    let rows = [
        ("encode, plaintext", measured("pipeline", "encode_plain", size), limit(4.0, 0.0, 0.0, 1.0)),
        ("encode, encrypted", measured("pipeline", "encode_encrypted", size), limit(4.0, 1.0, 1.0, 1.0)),
        (
            "decode, encrypted, 4 data fragments",
            measured("pipeline", "decode_encrypted_data_fragments", size),
            limit(2.0, 0.0, 1.0, 0.0),
        ),
    ];
    let mb = |x: f64| x / 1e6;
    println!(
        "\nkernels, one core: SHA-256 {:.0} MB/s, BLAKE3 {:.0} MB/s, AES-256-GCM-SIV {:.0} MB/s, RS 4+8 encode {:.0} MB/s",
        mb(sha),
        mb(blake),
        mb(aead),
        mb(rs)
    );
    println!("pipelines on {cores} cores (MB/s of file bytes):");
    println!("{:<40} {:>10} {:>14} {:>8}", "pipeline", "measured", "kernel limit", "ratio");
    for (name, got, lim) in rows {
        println!("{name:<40} {:>10.0} {:>14.0} {:>7.0}%", mb(got), mb(lim), 100.0 * got / lim);
    }
    println!(
        "cessfs fid on a 4 GiB file (encrypted): {secs:.1} s, {:.0} MB/s, peak RSS {} MiB",
        4096.0 * 1.048576 / secs,
        rss >> 20
    );
}
