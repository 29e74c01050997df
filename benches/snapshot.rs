//! Tree snapshots at scale: a tree of 100,000 stored files (50 directories of 2,000) in a store,
//! then its snapshot built, encoded, decoded and restored into an empty store. Figures: bytes per
//! file, and each step's time against a baseline of the same run: one plain scan of the store's
//! inode records (what any whole-tree walk costs at least), and the time the tree took to create.
//! Then the search for a tree's snapshots among as many files held by the account, on a devnet,
//! against one read of the account's hold list (what any search costs at least).
//!
//! Then the tree written in directory blobs, whole and after one edit, against the whole
//! snapshot's bytes and encoding time; and restored lazily from those blobs (held in memory: no
//! network), to its root and to the whole tree, against the restore of the whole snapshot.
//!
//! Run: `cargo bench --bench snapshot`. FILES=20000 for a shorter run; PER_DIR=20000 for larger
//! directories; NO_FIND=1 leaves out the search on a devnet (whose ledger holds every file in
//! memory).

#[path = "support/photos.rs"]
mod photos;

use std::time::Instant;

use cessfs::format::{Hash, Location, Snapshot};
use cessfs::store::Store;

fn main() {
    let files: usize = std::env::var("FILES").ok().and_then(|f| f.parse().ok()).unwrap_or(100_000);
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let store = Store::open(&work.path().join("a"), 1000, 1000).expect("store");

    let start = Instant::now();
    photos::fill(&store, files);
    let created = start.elapsed();

    let start = Instant::now();
    let mut scanned = 0;
    for ino in 1..=store.allocate_ino().expect("ino") {
        scanned += usize::from(store.inode(ino).expect("inode").is_some());
    }
    let scan = start.elapsed();

    let start = Instant::now();
    let snapshot = store.build_snapshot(1, [0; 16], None).expect("build");
    let built = start.elapsed();
    let start = Instant::now();
    let bytes = snapshot.encode();
    let encoded = start.elapsed();
    let start = Instant::now();
    let decoded = Snapshot::decode(&bytes).expect("decode");
    let decode = start.elapsed();
    assert_eq!(decoded.nodes.len(), snapshot.nodes.len());
    let stored = snapshot.nodes.iter().filter(|n| matches!(n.location, Location::Fid { .. })).count();

    let fresh = Store::open(&work.path().join("b"), 1000, 1000).expect("store");
    let start = Instant::now();
    let restored =
        fresh.restore_snapshot(&decoded, b"cessfs", |fid: &Hash| fid.0[..8].to_vec(), &[], &[], None).expect("restore");
    let restore = start.elapsed();

    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!("{stored} stored files, {} directories ({scanned} inode records)", restored.dirs);
    println!("snapshot: {} bytes, {:.1} bytes per file", bytes.len(), bytes.len() as f64 / stored as f64);
    println!("baseline: scan of the inode records {:.0} ms; creating the tree {:.0} ms", ms(scan), ms(created));
    println!("build   {:>7.0} ms  {:.2}x the scan", ms(built), ms(built) / ms(scan));
    println!("encode  {:>7.0} ms  {:.2}x the scan", ms(encoded), ms(encoded) / ms(scan));
    println!("decode  {:>7.0} ms  {:.2}x the scan", ms(decode), ms(decode) / ms(scan));
    println!("restore {:>7.0} ms  {:.2}x creating the tree", ms(restore), ms(restore) / ms(created));
    println!("peak resident memory so far (through the restore): {} MiB", peak_rss_kib() >> 10);
    drop((store, fresh));

    directory_blobs(&decoded, bytes.len(), encoded, restore, &work.path().join("c"));
    if std::env::var_os("NO_FIND").is_some() {
        return;
    }

    let (listed, found) = find_among(files, &work.path().join("net"));
    println!("baseline: reading the hold list of {files} files on a devnet {:.0} ms", ms(listed));
    println!(
        "find    {:>7.0} ms  {:.1} µs per held file, {:.1}x the hold list",
        ms(found),
        found.as_secs_f64() * 1e6 / files as f64,
        ms(found) / ms(listed)
    );
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The tree in directory blobs (docs/FORMAT.md): written whole, then again after one file of
/// the middle directory grew by 7 bytes, referring to the directories written before where they
/// are. Bytes and time against the whole snapshot's encoding (`whole` bytes in `encoded`). Then
/// the first write restored lazily into a store at `dir`, against the whole snapshot's restore
/// (`restored`).
fn directory_blobs(
    snapshot: &Snapshot,
    whole: usize,
    encoded: std::time::Duration,
    restored: std::time::Duration,
    dir: &std::path::Path,
) {
    use std::collections::HashMap;
    let keys = cessfs::format::MasterKey::from_bytes([7; 32]).for_territory(b"cessfs");
    let keys = keys.blobs().expect("blob keys").clone();
    let mut homes: HashMap<Hash, cessfs::format::Home> = HashMap::new();
    // The bytes of the first file written.
    let mut first_file: Option<Vec<u8>> = None;
    let mut write = |s: &Snapshot, fid: Hash, ids: &mut cessfs::format::DirIds| {
        let start = Instant::now();
        let mut file = Vec::new();
        let mut place = |_: &Hash, sealed: Vec<u8>| {
            let at = u32::try_from(file.len()).ok()?;
            file.extend_from_slice(&sealed);
            Some(at)
        };
        let known = homes.clone();
        let written =
            cessfs::format::write_tree(s, &keys, Default::default(), ids, &mut |id| known.get(id).copied(), &mut place)
                .expect("room");
        let took = start.elapsed();
        for &(id, offset, len) in &written.placed {
            homes.insert(id, (cessfs::format::TreeRef { fid, id, offset, len }, None));
        }
        first_file.get_or_insert(file);
        (written, took)
    };
    let mut ids = cessfs::format::DirIds::default();
    let (first, first_took) = write(snapshot, Hash([1; 32]), &mut ids);
    let mut edited = snapshot.clone();
    let middle = edited.links.iter().filter(|l| l.parent != 1).nth(edited.links.len() / 2).expect("a file").child;
    edited.nodes.iter_mut().find(|n| n.id == middle).expect("its node").size += 7;
    let (edit, edit_took) = write(&edited, Hash([2; 32]), &mut ids);
    // The same round after a restart: every directory's id worked out again.
    let (_, cold_took) = write(&edited, Hash([3; 32]), &mut cessfs::format::DirIds::default());
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let tree = |w: &cessfs::format::Written| w.new_bytes + w.root.len() as u64;
    println!(
        "directory blobs, first write: {} bytes in {} blobs, {:.0} ms ({:.2}x the whole snapshot's bytes, {:.2}x its encoding time)",
        tree(&first),
        first.placed.len(),
        ms(first_took),
        tree(&first) as f64 / whole as f64,
        ms(first_took) / ms(encoded)
    );
    println!(
        "directory blobs, one edit: {} bytes in {} new blobs ({} where they were), {:.0} ms ({:.4}x the whole snapshot's bytes, {:.2}x its encoding time)",
        tree(&edit),
        edit.placed.len(),
        edit.reused,
        ms(edit_took),
        tree(&edit) as f64 / whole as f64,
        ms(edit_took) / ms(encoded)
    );
    println!(
        "directory blobs, that round again after a restart (no id known): {:.0} ms ({:.2}x its encoding time)",
        ms(cold_took),
        ms(cold_took) / ms(encoded)
    );
    let file = first_file.expect("the first write");
    let (to_root, to_whole) = restore_lazily(&first.root, &file, Hash([1; 32]), &keys, dir);
    println!(
        "lazy restore of the first write (blobs in memory): the root shown after {:.0} ms ({:.4}x the whole snapshot's restore), the tree whole after {:.0} ms ({:.2}x); peak resident memory so far: {} MiB",
        ms(to_root),
        ms(to_root) / ms(restored),
        ms(to_whole),
        ms(to_whole) / ms(restored),
        peak_rss_kib() >> 10
    );
}

/// Restores the tree of `root`, whose blobs are in `file` (CESS file `fid`), lazily into a new
/// store at `dir`, as a mount does (snapshots/load.rs) without the network: the root directory,
/// then every other directory. Returns the times to the root and to the whole tree.
fn restore_lazily(
    root: &[u8],
    file: &[u8],
    fid: Hash,
    keys: &cessfs::format::BlobKeys,
    dir: &std::path::Path,
) -> (std::time::Duration, std::time::Duration) {
    use cessfs::format::{Dir, Entry, Root, THIS_COMMIT, TreeRef, one_dir};
    use std::collections::HashMap;
    let open = |r: &TreeRef| {
        let sealed = &file[r.offset as usize..(r.offset + r.len) as usize];
        Dir::decode(&keys.open(&r.id, sealed).expect("open")).expect("a directory").resolved(fid)
    };
    let entries_of = |r: &TreeRef| -> Vec<Entry> {
        match open(r) {
            Dir::Entries(entries) => entries,
            Dir::Chunks(chunks) => chunks
                .iter()
                .flat_map(|c| match open(c) {
                    Dir::Entries(entries) => entries,
                    Dir::Chunks(_) => panic!("a chunk of chunks"),
                })
                .collect(),
        }
    };
    let store = Store::open(dir, 1000, 1000).expect("store");
    let start = Instant::now();
    let root = Root::decode(root).expect("root");
    let mut start_ref = root.dir;
    if start_ref.fid == THIS_COMMIT {
        start_ref.fid = fid;
    }
    let one = one_dir(&entries_of(&start_ref)).expect("the root directory");
    let mut snapshot = one.snapshot.clone();
    snapshot.nodes[0] = cessfs::format::Node { id: 1, ..root.node.clone() };
    let adopted = cessfs::store::Adopted {
        snapshot: &snapshot,
        fid,
        seed: None,
        segments: 1,
        name: b"commit".to_vec(),
        commit: true,
    };
    let lazy = cessfs::store::LazyRoot {
        loading: cessfs::store::Loading {
            generation: root.generation,
            snapshot: 0,
            territory: b"cessfs".to_vec(),
            tree_files: Vec::new(),
            nodes: root.nodes,
            loaded: snapshot.nodes.len() as u64,
        },
        dirs: one.dirs.clone(),
        shared: one.shared.clone(),
    };
    let name = |fid: &Hash| fid.0[..8].to_vec();
    store.restore_snapshot(&snapshot, b"cessfs", name, &[adopted], &[], Some(&lazy)).expect("the root");
    let to_root = start.elapsed();
    loop {
        let pending = store.pending_dirs(0, 256).expect("pending");
        if pending.is_empty() {
            break;
        }
        for ino in pending {
            let from = store.pending_dir(ino).expect("read").expect("pending");
            let dir = one_dir(&entries_of(&from)).expect("a directory");
            let loaded = cessfs::store::LoadedDir { dir, homes: Vec::new(), names: HashMap::new() };
            let prepared = store.prepare_loaded_dir(&loaded).expect("prepare");
            store.load_dir(ino, &from, &loaded, &prepared).expect("load");
        }
    }
    assert!(store.finish_loading(&[], &[]).expect("finish"), "whole");
    (to_root, start.elapsed())
}

/// Times, on a devnet whose account holds `files` files: one read of its hold list, and a
/// search for a tree's snapshots among them.
fn find_among(files: usize, dir: &std::path::Path) -> (std::time::Duration, std::time::Duration) {
    use cessfs::protocol::{Chain, Signer};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let signer = Signer::from_uri("//Alice").expect("dev key");
        let mut config = cessfs::devnet::DevnetConfig::new(signer.account(), b"cessfs");
        config.held_files = files;
        let net = cessfs::devnet::Devnet::start(dir, &config).await.expect("devnet");
        let chain = cessfs::devnet::DevnetChain::new(&net.rpc_url(), signer.clone());
        let start = Instant::now();
        let held = chain.held_files(&signer.account()).await.expect("hold list");
        let listed = start.elapsed();
        assert_eq!(held.len(), files);
        let key = cessfs::format::MasterKey::from_bytes([7; 32]).for_territory(b"cessfs");
        let names = key.names().expect("a territory's names").clone();
        let start = Instant::now();
        let found = cessfs::snapshots::restore::find(&chain, b"cessfs", &names).await.expect("find");
        let elapsed = start.elapsed();
        assert!(found.is_empty());
        net.stop().await;
        (listed, elapsed)
    })
}
