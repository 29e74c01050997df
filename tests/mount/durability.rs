//! Crash safety: a `kill -9` of the daemon at any moment loses nothing that was closed or
//! fsynced, and the tree is consistent after the next mount.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// close(2) with its result (dropping a File ignores it).
fn close(f: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: we own the descriptor and give it up here.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn content(i: usize) -> Vec<u8> {
    let len = [10, 4096, 100_000, 1 << 20][i % 4] + i;
    (0..len).map(|j| ((i * 31 + j * 7) % 256) as u8).collect()
}

#[test]
fn kill_9_while_writing_loses_nothing_closed() {
    let mut m = Mount::start();
    let mut all_closed: Vec<usize> = Vec::new();
    let mut next = 0usize;
    for round in 0..3 {
        let closed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let root = m.root().to_path_buf();
        let start = next;
        let writer = {
            let (closed, stop) = (closed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = start;
                while !stop.load(Ordering::Relaxed) {
                    let write = || -> std::io::Result<()> {
                        let mut f = File::create(root.join(format!("f{i}")))?;
                        f.write_all(&content(i))?;
                        close(f) // the daemon answers only once the file is durable
                    };
                    if write().is_err() {
                        break;
                    }
                    closed.lock().unwrap().push(i);
                    i += 1;
                }
                i
            })
        };
        // A file fsynced but still open when the daemon dies.
        let mut open =
            OpenOptions::new().write(true).create(true).truncate(true).open(m.path(&format!("open{round}"))).unwrap();
        open.write_all(b"fsynced bytes").unwrap();
        open.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(200 + 400 * round as u64));
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        next = writer.join().unwrap() + 1;
        drop(open);
        all_closed.extend(closed.lock().unwrap().iter().copied());
        assert!(!all_closed.is_empty(), "the writer got nothing done before the kill");
        m.mount(); // cleans up the dead mount first
        for &i in &all_closed {
            let read = fs::read(m.path(&format!("f{i}")));
            let ok = read.as_ref().is_ok_and(|b| *b == content(i));
            assert!(ok, "closed file f{i} after kill -9 #{round}: {:?}", read.map(|b| b.len()));
        }
        for r in 0..=round {
            let read = fs::read(m.path(&format!("open{r}")));
            assert_eq!(read.as_deref().ok(), Some(&b"fsynced bytes"[..]), "open{r} after kill -9 #{round}: {read:?}");
        }
        // Consistent: every entry listed can be stat'ed and read, whatever state it was in.
        for e in fs::read_dir(m.root()).unwrap() {
            let p = e.unwrap().path();
            let len = fs::metadata(&p).unwrap().len();
            assert_eq!(fs::read(&p).unwrap().len() as u64, len, "{}", p.display());
        }
    }
}

#[test]
fn kill_9_with_an_existing_file_open_for_writing_restages_it() {
    let mut m = Mount::start();
    fs::write(m.path("doc"), b"version one").unwrap();
    let mut f = OpenOptions::new().write(true).open(m.path("doc")).unwrap();
    f.write_all(b"VERSION").unwrap();
    f.sync_all().unwrap();
    m.kill9();
    drop(f);
    m.mount();
    assert_eq!(fs::read(m.path("doc")).unwrap(), b"VERSION one");
    assert_eq!(getxattr(&m.path("doc"), "user.cess.status").unwrap(), b"staged");
    assert!(m.log().contains("re-staging inode"), "{}", m.log());
}
