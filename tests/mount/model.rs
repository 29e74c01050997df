//! A model test: random sequences of operations applied to a cessfs mount and to a plain
//! directory give the same results and the same tree, also across unmounts in the middle.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;

use crate::common::*;

const DIRS: &[&str] = &["d0", "d1", "d0/d2"];
const FILES: &[&str] = &["f0", "d0/f1", "d0/d2/f2", "d1/d3"];

#[derive(Debug, Clone)]
enum Op {
    Write { file: usize, offset: u32, len: u32, byte: u8 },
    Truncate { file: usize, len: u32 },
    Rename { from: usize, to: usize, flags: u32 },
    Unlink { file: usize },
    Mkdir { dir: usize },
    Rmdir { dir: usize },
    SetXattr { path: usize, value: u8 },
    RemoveXattr { path: usize },
    Remount,
}

fn any_path(i: usize) -> &'static str {
    if i < DIRS.len() { DIRS[i] } else { FILES[i - DIRS.len()] }
}

fn ops() -> impl Strategy<Value = Op> {
    let n = DIRS.len() + FILES.len();
    prop_oneof![
        4 => (0..FILES.len(), 0u32..70_000, 0u32..70_000, any::<u8>()).prop_map(|(file, offset, len, byte)| Op::Write { file, offset, len, byte }),
        1 => (0..FILES.len(), 0u32..100_000).prop_map(|(file, len)| Op::Truncate { file, len }),
        3 => (0..n, 0..n, prop::sample::select(vec![0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE])).prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        1 => (0..FILES.len()).prop_map(|file| Op::Unlink { file }),
        2 => (0..DIRS.len()).prop_map(|dir| Op::Mkdir { dir }),
        1 => (0..DIRS.len()).prop_map(|dir| Op::Rmdir { dir }),
        2 => (0..n, any::<u8>()).prop_map(|(path, value)| Op::SetXattr { path, value }),
        2 => (0..n).prop_map(|path| Op::RemoveXattr { path }),
        1 => Just(Op::Remount),
    ]
}

fn io(r: std::io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    match *op {
        Op::Write { file, offset, len, byte } => io((|| {
            let f = OpenOptions::new().write(true).create(true).truncate(false).open(root.join(FILES[file]))?;
            f.write_all_at(&vec![byte; len as usize], offset as u64)
        })()),
        Op::Truncate { file, len } => {
            io(OpenOptions::new().write(true).open(root.join(FILES[file])).and_then(|f| f.set_len(len as u64)))
        }
        Op::Rename { from, to, flags } => rename2(&root.join(any_path(from)), &root.join(any_path(to)), flags),
        Op::Unlink { file } => io(fs::remove_file(root.join(FILES[file]))),
        Op::Mkdir { dir } => io(fs::create_dir(root.join(DIRS[dir]))),
        Op::Rmdir { dir } => io(fs::remove_dir(root.join(DIRS[dir]))),
        Op::SetXattr { path, value } => setxattr(&root.join(any_path(path)), "user.model", &[value; 3], 0),
        Op::RemoveXattr { path } => removexattr(&root.join(any_path(path)), "user.model"),
        Op::Remount => Ok(()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mount_behaves_like_a_local_directory(ops in prop::collection::vec(ops(), 1..40)) {
        let mut m = Mount::start();
        let reference = tempfile::tempdir().unwrap();
        for (i, op) in ops.iter().enumerate() {
            if let Op::Remount = op {
                m.remount();
                prop_assert_eq!(snapshot(m.root()), snapshot(reference.path()), "after remount at op {}", i);
                continue;
            }
            let want = apply(reference.path(), op);
            let got = apply(m.root(), op);
            prop_assert_eq!(got, want, "op {} {:?}", i, op);
        }
        prop_assert_eq!(snapshot(m.root()), snapshot(reference.path()));
        m.remount();
        prop_assert_eq!(snapshot(m.root()), snapshot(reference.path()), "after the final remount");
    }
}
