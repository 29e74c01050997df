//! Whether the mount stays flat as the tree grows: 100,000 files of 4 KiB created in batches of
//! 2,000 (one directory per batch), uploads held back (a quiet delay of an hour, so every file
//! stays queued), and the rate of each batch. The figure is the last batch's rate against the
//! first's, in the same run: per-file work that grows with the number of files shows as a drop.
//!
//! Run: `cargo bench --bench scale` (as root or with fusermount3). FILES=20000 for a shorter run.

#[path = "support/data.rs"]
mod data;
#[path = "support/mounted.rs"]
#[allow(dead_code)]
mod mounted;

use std::io::Write;
use std::time::Instant;

use mounted::*;

const BATCH: usize = 2_000;

fn main() {
    let files: usize = std::env::var("FILES").ok().and_then(|f| f.parse().ok()).unwrap_or(100_000);
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let (key_path, _) = key_file(work.path());
    let m = mount(&work.path().join("data"), &key_path, &["--quiet-delay", "3600"]);
    let body = data::random(4096, 1);
    let mut rates = Vec::new();
    for batch in 0..files / BATCH {
        let dir = m.dir.path().join(format!("batch-{batch:03}"));
        std::fs::create_dir(&dir).expect("batch dir");
        let start = Instant::now();
        for i in 0..BATCH {
            let mut f = std::fs::File::create(dir.join(format!("note-{i:05}.txt"))).expect("create");
            f.write_all(&body).expect("write");
        }
        let rate = BATCH as f64 / start.elapsed().as_secs_f64();
        rates.push(rate);
        println!("files {:>6}..{:>6}: {rate:.0} files/s", batch * BATCH, (batch + 1) * BATCH);
    }
    let (first, last) = (rates[0], rates[rates.len() - 1]);
    let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\n{} files of 4 KiB, uploads held back: first batch {first:.0} files/s, last {last:.0} files/s: \
         {:.0}% of the first (worst batch {:.0}%; target at least 80%)",
        rates.len() * BATCH,
        100.0 * last / first,
        100.0 * worst / first
    );
}
