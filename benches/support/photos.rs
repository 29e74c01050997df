//! A large tree written straight into a store: directories of photos, each file stored on CESS
//! as far as the store knows (an active upload record with a made-up FID) and not cached here
//! (as once evicted), as a tree of that many stored files looks to the tree's writer.

use cessfs::store::{Batch, InodeRecord, Kind, ROOT_INO, Residency, Store, Timestamp, UploadRecord, UploadState};

/// Files a directory (PER_DIR sets it; 2,000 unless set).
pub fn per_dir() -> usize {
    std::env::var("PER_DIR").ok().and_then(|f| f.parse().ok()).unwrap_or(2_000)
}

fn record(kind: Kind, size: u64, name: &[u8], parent: u64) -> InodeRecord {
    let now = Timestamp::now();
    InodeRecord {
        kind,
        perm: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 1000,
        gid: 1000,
        nlink: if kind == Kind::Dir { 2 } else { 1 },
        size,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        parent,
        target: Vec::new(),
        content_version: 1,
        name: name.to_vec(),
        key: None,
    }
}

/// Adds `files` stored photos of 3 MiB to the root of `store`, [`per_dir`] a directory.
pub fn fill(store: &Store, files: usize) {
    let per_dir = per_dir();
    for d in 0..files.div_ceil(per_dir) {
        let dir = store.allocate_ino().expect("ino");
        let name = format!("photos-{d:03}");
        let mut b = Batch::default();
        b.put_inode(dir, &record(Kind::Dir, 0, name.as_bytes(), ROOT_INO));
        b.put_dirent(ROOT_INO, name.as_bytes(), dir, Kind::Dir);
        for i in 0..per_dir.min(files - d * per_dir) {
            let ino = store.allocate_ino().expect("ino");
            let name = format!("IMG_2026{d:03}_{i:05}.jpg");
            b.put_inode(ino, &record(Kind::File, 3 << 20, name.as_bytes(), 0));
            b.put_dirent(dir, name.as_bytes(), ino, Kind::File);
            let mut up = UploadRecord::staged(1);
            up.state = UploadState::Active;
            up.size = 3 << 20;
            up.segments = 1;
            up.fid = Some(cessfs::format::sha256(&ino.to_le_bytes()));
            up.seed = Some(cessfs::format::sha256(name.as_bytes()).0);
            b.put_upload(ino, &up);
            b.put_residency(ino, Some(&Residency::empty(1)));
        }
        store.commit(b).expect("commit");
    }
    store.sync().expect("sync");
}
