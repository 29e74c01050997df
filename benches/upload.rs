//! Time from close() to active for a 1 GiB file on the embedded devnet, against the format
//! module's encode throughput measured in the same run.
//!
//! Run: `cargo bench --bench upload` (as root or with fusermount3). Mounts the built `cessfs`
//! with `--quiet-delay 0` so the time measured is the upload's alone.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cessfs::format::{Encoder, MasterKey};

const SIZE: usize = 1 << 30;
const RUNS: usize = 3;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn status(path: &Path) -> String {
    let (p, n) = (CString::new(path.to_str().expect("utf-8")).expect("path"), c"user.cess.status");
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 { String::new() } else { String::from_utf8_lossy(&buf[..r as usize]).into_owned() }
}

struct Mounted {
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_cessfs")).arg("unmount").arg(self.dir.path()).status();
        let _ = self.child.wait();
    }
}

fn mount(data: &Path, key: &Path) -> Mounted {
    let dir = tempfile::tempdir().expect("mount point");
    let child = Command::new(env!("CARGO_BIN_EXE_cessfs"))
        .arg("mount")
        .arg(dir.path())
        .args(["--foreground", "--quiet-delay", "0", "--data-dir"])
        .arg(data)
        .arg("--key-file")
        .arg(key)
        .stderr(Stdio::null())
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
fn warm_up(dir: &Path) {
    let path = dir.join("warm-up");
    let block = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(&path).expect("warm-up file");
    for _ in 0..5 * 1024 {
        std::io::Write::write_all(&mut f, &block).expect("warm-up write");
    }
    drop(f);
    std::fs::remove_file(&path).expect("remove warm-up file");
}

fn main() {
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let key_path: PathBuf = work.path().join("key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path).expect("key");
        std::io::Write::write_all(&mut f, "3c".repeat(32).as_bytes()).expect("key");
    }
    let key = MasterKey::parse(&std::fs::read(&key_path).expect("key")).expect("key");

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
    let m = mount(&work.path().join("data"), &key_path);
    let mut upload_rates = Vec::new();
    for run in 0..RUNS {
        let data = random(SIZE, 200 + run as u64);
        warm_up(work.path());
        let path = m.dir.path().join(format!("big-{run}.bin"));
        std::fs::write(&path, &data).expect("write");
        let closed = Instant::now();
        while status(&path) != "active" {
            assert!(status(&path) != "failed", "upload failed");
            assert!(closed.elapsed() < Duration::from_secs(600), "no upload after 10 minutes");
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = closed.elapsed().as_secs_f64();
        println!("run {run}: 1 GiB from close() to active in {secs:.2} s");
        upload_rates.push(SIZE as f64 / secs);
    }
    let upload = median(upload_rates);
    println!("\nencode (format module, encrypted, 2 cores): {:.0} MB/s", encode / 1e6);
    println!("close() to active on the devnet: {:.0} MB/s ({:.2} s per GiB)", upload / 1e6, SIZE as f64 / upload);
    println!("ratio: {:.0}% of the encode throughput (median of {RUNS})", 100.0 * upload / encode);
}
