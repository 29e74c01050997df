//! What `--pack-below` saves, measured on real files: the territory a corpus is charged (96 MiB
//! per 32 MiB segment) and the declarations it takes, for several thresholds, against storing
//! every file in segments of its own (threshold 0) in the same run. Blobs are placed by the
//! packer's own first fit ([`PackSpace`]); equal contents are not looked for (the packer stores
//! them once, so it saves at least this).
//!
//! Run: `cargo bench --bench packs`. CORPUS=DIR (repeatable with `:`) picks the files; the
//! default is this machine's Rust sources in ~/.cargo/registry/src and /usr/share.

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
}
