//! The data format against the golden vectors computed with klauspost/reedsolomon, and property
//! tests of encode/decode round trips with lost and corrupted fragments.

use std::path::PathBuf;

use cessfs::format::{
    Encoder, Erasure, FRAGMENT_SIZE, FRAGMENTS, FileDecoder, FileManifest, FormatError, Layout, MasterKey, Mode,
    SEGMENT_SIZE, ZERO_FRAGMENT_HASH, decode_file, sha256,
};
use proptest::prelude::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Vectors {
    files: Vec<FileManifest>,
    rs_small: RsSmall,
    zero_fragment_hash: String,
}

#[derive(Deserialize)]
struct RsSmall {
    shard_len: usize,
    shards_hex: Vec<String>,
}

fn vectors() -> Vectors {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cess/golden/format-vectors.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("golden vectors missing at {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden vectors parse")
}

/// The golden input: block k = SHA256("cessfs-golden-v1" || u64le(k)), concatenated, cut to size.
fn golden_stream(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    let mut k = 0u64;
    while out.len() < size {
        let mut h = Sha256::new();
        h.update(b"cessfs-golden-v1");
        h.update(k.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        k += 1;
    }
    out.truncate(size);
    out
}

/// Every fragment of every segment, kept in memory.
type Fragments = Vec<Vec<Vec<u8>>>;

fn encode(data: &[u8], key: Option<&MasterKey>, keep: bool) -> (FileManifest, Fragments) {
    let mut fragments = Vec::new();
    let manifest = Encoder::default()
        .encode(data, data.len() as u64, key, |seg| {
            assert_eq!(seg.index, fragments.len());
            fragments.push(if keep { (0..FRAGMENTS).map(|i| seg.fragment(i).to_vec()).collect() } else { Vec::new() });
            Ok(())
        })
        .expect("encode");
    (manifest, fragments)
}

fn decode(
    manifest: &FileManifest,
    key: Option<&MasterKey>,
    fetch: impl Fn(usize, usize) -> Option<Vec<u8>> + Sync,
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    decode_file(manifest, key, fetch, |bytes| out.extend_from_slice(bytes))?;
    Ok(out)
}

#[test]
fn golden_files_match_byte_for_byte() {
    let v = vectors();
    assert_eq!(v.files.len(), 7);
    for expected in &v.files {
        let data = golden_stream(expected.size as usize);
        let (manifest, _) = encode(&data, None, false);
        assert_eq!(&manifest, expected, "file of {} bytes", expected.size);
    }
}

#[test]
fn golden_rs_small_and_zero_fragment() {
    let v = vectors();
    assert_eq!(v.zero_fragment_hash, ZERO_FRAGMENT_HASH.to_hex());
    assert_eq!(sha256(&vec![0u8; FRAGMENT_SIZE]), ZERO_FRAGMENT_HASH);
    let shard = v.rs_small.shard_len;
    let data = golden_stream(4 * shard);
    let expected: Vec<u8> = v.rs_small.shards_hex.iter().flat_map(|h| hex::decode(h).expect("hex")).collect();
    assert_eq!(&expected[..4 * shard], &data[..]);
    let mut parity = vec![0u8; 8 * shard];
    Erasure::default().encode(&data, &mut parity);
    assert_eq!(&expected[4 * shard..], &parity[..]);
}

#[test]
fn golden_file_decodes_from_parity_only() {
    let v = vectors();
    let expected = &v.files[5]; // 3 segments, the last one padded
    let data = golden_stream(expected.size as usize);
    let (manifest, frags) = encode(&data, None, true);
    let out = decode(&manifest, None, |s, f| (f >= 8).then(|| frags[s][f].clone())).expect("decode");
    assert!(out == data);
}

#[test]
fn empty_file_is_refused() {
    let err = Encoder::default().encode(&[][..], 0, None, |_| Ok(())).unwrap_err();
    assert_eq!(err, FormatError::EmptyFile);
    assert_eq!(err.to_string(), "an empty file cannot be stored on CESS");
}

#[test]
fn encryption_is_deterministic_per_key() {
    let data = golden_stream(3 << 20);
    let k1 = MasterKey::from_bytes([1; 32]);
    let k2 = MasterKey::from_bytes([2; 32]);
    let (a, _) = encode(&data, Some(&k1), false);
    let (b, _) = encode(&data, Some(&k1), false);
    let (c, _) = encode(&data, Some(&k2), false);
    let (plain, _) = encode(&data, None, false);
    assert_eq!(a, b);
    assert_ne!(a.fid, c.fid);
    assert_ne!(a.fid, plain.fid);
    let shared = a.segments[0]
        .fragments
        .iter()
        .filter(|h| **h != ZERO_FRAGMENT_HASH && c.segments[0].fragments.contains(h))
        .count();
    assert_eq!(shared, 0, "different keys must give unrelated fragments");
}

#[test]
fn wrong_key_and_tampering_fail_authentication() {
    let data = golden_stream(5000);
    let key = MasterKey::from_bytes([7; 32]);
    let (manifest, frags) = encode(&data, Some(&key), true);
    let wrong = MasterKey::from_bytes([8; 32]);
    let err = decode(&manifest, Some(&wrong), |s, f| Some(frags[s][f].clone())).unwrap_err();
    assert_eq!(err, FormatError::Decrypt { segment: 0 });

    // An attacker who rewrites a ciphertext byte and publishes consistent hashes for it.
    let mut segment: Vec<u8> = frags[0][..4].concat();
    segment[100] ^= 0x40;
    let mut parity = vec![0u8; 8 * FRAGMENT_SIZE];
    Erasure::default().encode(&segment, &mut parity);
    let tampered: Vec<Vec<u8>> =
        segment.chunks(FRAGMENT_SIZE).chain(parity.chunks(FRAGMENT_SIZE)).map(<[u8]>::to_vec).collect();
    let mut forged = manifest.clone();
    forged.segments[0].hash = sha256(&segment);
    for (h, f) in forged.segments[0].fragments.iter_mut().zip(&tampered) {
        *h = sha256(f);
    }
    let err = decode(&forged, Some(&key), |_, f| Some(tampered[f].clone())).unwrap_err();
    assert_eq!(err, FormatError::Decrypt { segment: 0 });
}

#[test]
fn a_segment_rebuilt_with_parity_is_checked_against_its_hash() {
    let data = golden_stream(30 << 20);
    let (mut manifest, frags) = encode(&data, None, true);
    let decoder = FileDecoder::new(data.len() as u64, None, Mode::Plain).unwrap();
    let verified = |pick: &dyn Fn(usize) -> bool, manifest: &FileManifest| {
        let refs: [Option<&[u8]>; FRAGMENTS] = std::array::from_fn(|f| pick(f).then(|| &frags[0][f][..]));
        decoder.decode_verified_segment(0, &manifest.segments[0], &refs, Vec::new()).map(|d| d.data().to_vec())
    };
    // A manifest whose segment hash disagrees with its fragment hashes.
    manifest.segments[0].hash = sha256(b"not this segment");
    // The 4 data fragments, each checked against its hash by the caller, are the segment.
    assert!(verified(&|f| f < 4, &manifest).unwrap() == data);
    // Bytes rebuilt from parity are only as good as the segment hash says.
    let err = verified(&|f| f != 1, &manifest).map(|d| d.len()).unwrap_err();
    assert!(matches!(err, FormatError::SegmentHash { segment: 0, .. }), "{err:?}");
}

#[test]
fn too_many_lost_fragments_is_an_error() {
    let data = golden_stream(2 * SEGMENT_SIZE - 1);
    let (manifest, frags) = encode(&data, None, true);
    let err = decode(&manifest, None, |s, f| (s == 0 || f < 3).then(|| frags[s][f].clone())).unwrap_err();
    assert!(matches!(err, FormatError::TooFewFragments { segment: 1, .. }), "{err:?}");
}

/// Sizes around the interesting boundaries of both layouts, and random ones up to 3 segments.
fn sizes() -> impl Strategy<Value = usize> {
    let seg = SEGMENT_SIZE;
    let enc = Layout::new(1, Mode::Encrypted).expect("layout").chunk_capacity();
    let edges = vec![
        1,
        2,
        FRAGMENT_SIZE - 1,
        FRAGMENT_SIZE,
        FRAGMENT_SIZE + 1,
        3 * FRAGMENT_SIZE + 7,
        enc - 1,
        enc,
        enc + 1,
        seg - 1,
        seg,
        seg + 1,
        2 * enc,
        2 * seg + FRAGMENT_SIZE,
    ];
    prop_oneof![prop::sample::select(edges), 1..3 * seg]
}

/// Per segment: which fragments are lost and which are corrupted (at most 8 of 12 in all).
fn damage() -> impl Strategy<Value = Vec<(Vec<usize>, Vec<usize>)>> {
    let per_segment = prop::sample::subsequence((0..FRAGMENTS).collect::<Vec<_>>(), 0..=8)
        .prop_flat_map(|bad| {
            let n = bad.len();
            (Just(bad), prop::collection::vec(any::<bool>(), n))
        })
        .prop_map(|(bad, corrupt)| {
            let (c, l): (Vec<_>, Vec<_>) = bad.into_iter().zip(corrupt).partition(|(_, c)| *c);
            (l.into_iter().map(|(i, _)| i).collect(), c.into_iter().map(|(i, _)| i).collect())
        });
    prop::collection::vec(per_segment, 4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_with_lost_and_corrupt_fragments(size in sizes(), format in 0u8..4, damage in damage(), seed in any::<u8>()) {
        let mut data = golden_stream(size);
        data.iter_mut().step_by(4093).for_each(|b| *b ^= seed);
        // 0: plaintext; 1, 2, 3: that format version.
        let key = MasterKey::from_bytes([seed; 32]).for_territory(b"t").writing(format);
        let key = key.as_ref();
        let (manifest, frags) = encode(&data, key, true);
        let mode = key.map_or(Mode::Plain, |k| Mode::of(k.version(), true));
        let decoder = FileDecoder::new(size as u64, key, mode).expect("decoder");
        let mut out = Vec::with_capacity(size);
        for (s, expected) in manifest.segments.iter().enumerate() {
            let (lost, corrupt) = &damage[s % damage.len()];
            let damaged: Vec<Option<Vec<u8>>> = (0..FRAGMENTS)
                .map(|f| {
                    (!lost.contains(&f)).then(|| {
                        let mut bytes = frags[s][f].clone();
                        if corrupt.contains(&f) {
                            bytes[(f * 997 + s) % FRAGMENT_SIZE] ^= 0x01;
                        }
                        bytes
                    })
                })
                .collect();
            let supplied: [Option<&[u8]>; FRAGMENTS] = std::array::from_fn(|f| damaged[f].as_deref());
            let decoded = decoder.decode_segment(s, expected, &supplied, Vec::new()).expect("4 of 12 intact always decode");
            // Every fragment reported corrupt was corrupted, and a corrupted fragment ahead of the
            // fourth intact one (fragments are tried in order) was caught rather than used.
            prop_assert!(decoded.corrupt.iter().all(|f| corrupt.contains(f)));
            let intact: Vec<usize> = (0..FRAGMENTS)
                .filter(|f| !lost.contains(f) && !corrupt.contains(f) || expected.fragments[*f] == ZERO_FRAGMENT_HASH && lost.contains(f))
                .collect();
            for f in corrupt.iter().filter(|&&f| f < intact[3]) {
                prop_assert!(decoded.corrupt.contains(f), "corrupt fragment {} of segment {} not reported", f, s);
            }
            out.extend_from_slice(decoded.data());
        }
        prop_assert!(out == data);
    }
}

/// HMAC-SHA256, as FORMAT.md writes it.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Format version 3 as docs/FORMAT.md describes it, computed here from the text and not from
/// the code: each 1 MiB block of a data fragment opens alone under the territory's file key, and
/// the file's FID is pinned (a change of the format shows here first).
#[test]
fn version_3_blocks_open_alone_as_format_md_says() {
    use aes_gcm_siv::aead::{AeadInOut, KeyInit};
    const BLOCK: usize = 1 << 20;
    const CAP: usize = BLOCK - 52;
    let master = [9u8; 32];
    let key = MasterKey::from_bytes(master).for_territory(b"golden");
    assert_eq!(key.version(), 3);
    let size = 32 * CAP + 5000;
    let data = golden_stream(size);
    let (manifest, frags) = encode(&data, Some(&key), true);
    assert_eq!(manifest.segments.len(), 2);
    let k_territory = hmac(&hmac(&master, &[b"cessfs/v2/root"]), &[b"territory", b"golden"]);
    let chunks = [&data[..32 * CAP], &data[32 * CAP..]];
    let mut seed_input = (size as u64).to_le_bytes().to_vec();
    for c in chunks {
        seed_input.extend_from_slice(blake3::hash(c).as_bytes());
    }
    let seed = hmac(&hmac(&k_territory, &[b"seed-key"]), &[&seed_input]);
    let file_key = hmac(&hmac(&k_territory, &[b"file-key"]), &[&seed]);
    let cipher = aes_gcm_siv::Aes256GcmSiv::new(&file_key.into());
    for (i, chunk) in chunks.iter().enumerate() {
        for (j, plain) in chunk.chunks(CAP).enumerate() {
            let fragment = &frags[i][j / 8];
            let block = &fragment[(j % 8) * BLOCK..(j % 8) * BLOCK + 52 + plain.len()];
            assert_eq!(&block[..4], b"CFS\x03");
            assert_eq!(&block[4..36], &seed);
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&(i as u32).to_le_bytes());
            nonce[4..8].copy_from_slice(&(j as u32).to_le_bytes());
            nonce[8] = 3;
            let mut aad = b"CFS\x03".to_vec();
            aad.extend_from_slice(&(size as u64).to_le_bytes());
            aad.extend_from_slice(&(i as u32).to_le_bytes());
            aad.extend_from_slice(&2u32.to_le_bytes());
            aad.extend_from_slice(&(j as u32).to_le_bytes());
            let mut text = block[36..36 + plain.len()].to_vec();
            let tag = aes_gcm_siv::Tag::try_from(&block[36 + plain.len()..]).unwrap();
            cipher.decrypt_inout_detached(&nonce.into(), &aad, text.as_mut_slice().into(), &tag).unwrap();
            assert!(text == plain, "segment {i} block {j}");
        }
    }
    // The last segment's one block of 5000 bytes: the rest of it is zeros, never sent.
    assert!(frags[1][0][52 + 5000..].iter().all(|&b| b == 0));
    assert!(manifest.segments[1].fragments[1..4].iter().all(|h| *h == ZERO_FRAGMENT_HASH));
    assert_eq!(manifest.fid.to_string(), "2da5c6f0a4566a4cb62232a45d219c5b7696218cb19f1258c1e52035a5d340c2");
}

/// A tree node of `size` bytes at `location`, its other fields plain.
fn node(
    id: u64,
    kind: cessfs::format::NodeKind,
    size: u64,
    location: cessfs::format::Location,
) -> cessfs::format::Node {
    cessfs::format::Node { perm: 0o644, size, location, ..cessfs::format::Node::bare(id, kind) }
}

/// The golden territory's key, and its blob keys derived by hand as docs/FORMAT.md says
/// ("Packs"): `k_id`, `k_seal`.
fn golden_blob_keys() -> (cessfs::format::MasterKey, [u8; 32], [u8; 32]) {
    let master = [9u8; 32];
    let key = MasterKey::from_bytes(master).for_territory(b"golden");
    let k_territory = hmac(&hmac(&master, &[b"cessfs/v2/root"]), &[b"territory", b"golden"]);
    let k_blob = hmac(&k_territory, &[b"blob-key"]);
    (key, hmac(&k_blob, &[b"id"]), hmac(&k_blob, &[b"seal"]))
}

/// `plain` sealed by hand as blob `id` with `k_seal` (docs/FORMAT.md, "Packs").
fn seal_by_hand(k_seal: &[u8; 32], id: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
    let cipher = aes_gcm_siv::Aes256GcmSiv::new(&hmac(k_seal, &[id]).into());
    let mut aad = b"CFSB\x01".to_vec();
    aad.extend_from_slice(&(plain.len() as u64).to_le_bytes());
    cipher.encrypt(&[0u8; 12].into(), Payload { msg: plain, aad: &aad }).unwrap()
}

/// A commit built from docs/FORMAT.md's text alone ("Packs", "Commits"): the header, the
/// index and the tree sealed by hand open with cessfs's reader, its tree's own blobs resolve to
/// the commit's FID, and cessfs seals the tree to the same bytes.
#[test]
fn a_commit_opens_as_format_md_says() {
    use cessfs::format::{Link, Location, NodeKind, Snapshot, THIS_COMMIT};
    let (key, k_id, k_seal) = golden_blob_keys();
    let seal = |id: &[u8; 32], plain: &[u8]| seal_by_hand(&k_seal, id, plain);
    let number = 42u64;
    let content = b"a note in its commit";
    let blob_id = hmac(&k_id, &[content]);
    let blob = seal(&blob_id, content);
    let blob_at = 32u32;
    let in_commit = Location::Packed {
        fid: THIS_COMMIT,
        id: cessfs::format::Hash(blob_id),
        offset: blob_at,
        len: blob.len() as u32,
    };
    let snapshot = Snapshot::new(
        7,
        [1; 16],
        (0, 0),
        vec![node(1, NodeKind::Dir, 0, Location::Empty), node(2, NodeKind::File, content.len() as u64, in_commit)],
        vec![Link { parent: 1, name: b"note.txt".to_vec(), child: 2 }],
    );
    let tree = snapshot.encode();
    let tree_id = hmac(&k_id, &[b"tree", &number.to_le_bytes()]);
    let sealed_tree = seal(&tree_id, &tree);
    assert_eq!(key.blobs().unwrap().seal_tree(number, &tree), sealed_tree, "cessfs seals the tree alike");
    let tree_at = blob_at + blob.len() as u32;
    let mut index = 1u32.to_le_bytes().to_vec();
    index.extend_from_slice(&blob_id);
    index.extend_from_slice(&blob_at.to_le_bytes());
    index.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    let sealed_index = seal(&hmac(&k_id, &[b"index", &number.to_le_bytes()]), &index);
    let index_at = tree_at + sealed_tree.len() as u32;
    let mut segment = vec![0u8; SEGMENT_SIZE];
    segment[..8].copy_from_slice(b"CFSPACK\x02");
    segment[8..16].copy_from_slice(&number.to_le_bytes());
    for (at, v) in [(16, index_at), (20, sealed_index.len() as u32), (24, tree_at), (28, sealed_tree.len() as u32)] {
        segment[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (at, bytes) in [(blob_at, &blob), (tree_at, &sealed_tree), (index_at, &sealed_index)] {
        segment[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    }
    let keys = key.blobs().unwrap();
    assert_eq!(cessfs::format::read_tree(keys, &segment).unwrap(), Some(tree));
    let (read_number, blobs) = cessfs::format::read_index(keys, &segment).unwrap();
    assert_eq!((read_number, blobs.len()), (number, 1));
    assert_eq!(keys.open(&blobs[0].0, &segment[blob_at as usize..tree_at as usize]).unwrap(), content);
    // Stored in the plaintext layout: all in quarter 0, so 9 fragments go.
    let (manifest, _) = encode(&segment, None, false);
    assert!(manifest.segments[0].fragments[1..4].iter().all(|h| *h == ZERO_FRAGMENT_HASH));
    let opened = Snapshot::decode(&cessfs::format::read_tree(keys, &segment).unwrap().unwrap()).unwrap();
    let resolved = opened.resolve_commit(manifest.fid);
    assert!(matches!(resolved.nodes[1].location, Location::Packed { fid, .. } if fid == manifest.fid));
}

/// A sparse file as docs/FORMAT.md ("Sparse files") says: its FID is that of its data ranges end
/// to end, encoded as any file; cessfs's reader of the content file through the map gives the
/// same object; the tree's location is postcard variant 4 with the ranges; a map that overlaps
/// or leaves the file is refused as damaged.
#[test]
fn a_sparse_file_is_stored_as_format_md_says() {
    use cessfs::format::{ChunkSource, Extents, Hash, Link, Location, NodeKind, Snapshot, SnapshotError};
    use std::os::unix::fs::FileExt;
    let key = MasterKey::from_bytes([9u8; 32]).for_territory(b"golden");
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("disk.img")).unwrap();
    let size = 1u64 << 30;
    let (one, two) = (golden_stream(100_000), golden_stream(3000));
    file.set_len(size).unwrap();
    file.write_all_at(&one, 64 << 20).unwrap();
    file.write_all_at(&two, size - 3000).unwrap();
    let file = std::fs::File::open(dir.path().join("disk.img")).unwrap();
    let extents = cessfs::store::sparse_extents(&file, size, Mode::Blocks).unwrap().expect("sparse");
    // The file system keeps data in blocks: each range holds what was written, and some zeros.
    assert_eq!(extents.ranges().len(), 2, "{extents:?}");
    let mut object = Vec::new();
    for &(at, len) in extents.ranges() {
        let mut part = vec![0u8; len as usize];
        file.read_exact_at(&mut part, at).unwrap();
        object.extend_from_slice(&part);
    }
    let source = cessfs::store::FileSource::<anyhow::Error>::new(file, Some(extents.clone()));
    let mut read = vec![0u8; object.len()];
    source.read_at(0, &mut read).unwrap();
    assert!(read == object, "cessfs reads the ranges end to end");
    let (manifest, _) = encode(&object, Some(&key), false);
    assert_eq!(manifest.segments.len(), 1, "1 GiB holding 103,000 bytes is one segment");

    let sparse = |extents: Vec<(u64, u64)>| Location::Sparse { fid: Hash([7; 32]), format: 3, seed: None, extents };
    let tree = |location: Location| {
        Snapshot::new(
            1,
            [1; 16],
            (0, 0),
            vec![node(1, NodeKind::Dir, 0, Location::Empty), node(2, NodeKind::File, size, location)],
            vec![Link { parent: 1, name: b"disk.img".to_vec(), child: 2 }],
        )
    };
    let encoded = postcard::to_stdvec(&sparse(vec![(5, 2)])).unwrap();
    assert_eq!(encoded[0], 4, "variant 4");
    assert_eq!(&encoded[1..33], &[7u8; 32]);
    assert_eq!(&encoded[33..], &[3, 0, 1, 5, 2], "format, no seed, one range (5, 2)");
    let good = tree(sparse(extents.ranges().to_vec()));
    assert_eq!(&good.encode()[..8], b"CFSTREE\x02", "a tree with sparse files is version 2");
    assert_eq!(&tree(Location::Empty).encode()[..8], b"CFSTREE\x01", "others stay version 1");
    assert_eq!(Snapshot::decode(&good.encode()).unwrap(), good);
    for bad in [vec![(0, 10), (5, 10)], vec![(size - 1, 2)], vec![(10, 0)], vec![]] {
        let damaged = Snapshot::decode(&tree(sparse(bad.clone())).encode());
        assert!(matches!(damaged, Err(SnapshotError::Damaged(_))), "{bad:?}: {damaged:?}");
    }
    assert!(Extents::new(extents.ranges().to_vec(), size).is_some());
}

/// Postcard's unsigned varint.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A tree in directory blobs built from docs/FORMAT.md's text alone ("Trees in directory
/// blobs"): a root directory holding a directory and two names of one file. The blobs and root
/// written by hand read back with cessfs's reader, references of 32 zero bytes name the file
/// holding them, and cessfs encodes the directories to the same bytes.
#[test]
fn a_tree_in_directory_blobs_reads_as_format_md_says() {
    use cessfs::format::{Dir, Entry, Hash, Location, NodeKind, Root, StoredTree, THIS_COMMIT, TreeRef};
    let (key, k_id, k_seal) = golden_blob_keys();
    let seal = |id: &[u8; 32], plain: &[u8]| seal_by_hand(&k_seal, id, plain);
    let dir_node = node(0, NodeKind::Dir, 0, Location::Empty);
    let lone = node(0, NodeKind::File, 5, Location::Fid { fid: Hash([3; 32]), format: 3, seed: None });
    let linked =
        node(7, NodeKind::File, 2, Location::Packed { fid: THIS_COMMIT, id: Hash([4; 32]), offset: 9, len: 18 });
    let entry = |name: &[u8], node: &cessfs::format::Node, dir: Option<([u8; 32], u32, u32)>| {
        let mut e = varint(name.len() as u64);
        e.extend_from_slice(name);
        e.extend(postcard::to_stdvec(node).unwrap());
        match dir {
            None => e.push(0),
            Some((id, offset, len)) => {
                e.push(1);
                e.extend_from_slice(&[0u8; 32]);
                e.extend_from_slice(&id);
                e.extend(varint(offset.into()));
                e.extend(varint(len.into()));
            }
        }
        e
    };
    let blob = |entries: &[Vec<u8>]| {
        let mut plain = vec![0u8];
        plain.extend(varint(entries.len() as u64));
        entries.iter().for_each(|e| plain.extend_from_slice(e));
        let mut content = b"CFSDIR\x00\x01".to_vec();
        content.extend(ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest));
        content
    };
    let docs = blob(&[entry(b"a.txt", &lone, None)]);
    let docs_id = hmac(&k_id, &[&docs]);
    let docs_sealed = seal(&docs_id, &docs);
    let (docs_at, docs_len) = (32u32, docs_sealed.len() as u32);
    let top = blob(&[
        entry(b"docs", &dir_node, Some((docs_id, docs_at, docs_len))),
        entry(b"x", &linked, None),
        entry(b"y", &linked, None),
    ]);
    let top_id = hmac(&k_id, &[&top]);
    let top_sealed = seal(&top_id, &top);
    let top_at = docs_at + docs_len;
    let mut root = b"CFSTREE\x03".to_vec();
    root.extend(varint(11));
    root.extend_from_slice(&[1; 16]);
    root.extend([varint(200), varint(5)].concat());
    root.extend([0, 0]);
    root.extend(varint(4));
    root.extend(postcard::to_stdvec(&dir_node).unwrap());
    root.extend_from_slice(&[0u8; 32]);
    root.extend_from_slice(&top_id);
    root.extend([varint(top_at.into()), varint(top_sealed.len() as u64)].concat());

    let mut commit = vec![0u8; 4096];
    commit[docs_at as usize..top_at as usize].copy_from_slice(&docs_sealed);
    commit[top_at as usize..top_at as usize + top_sealed.len()].copy_from_slice(&top_sealed);
    let commit_fid = Hash([6; 32]);
    let keys = key.blobs().unwrap();
    let read = Root::decode(&root).unwrap();
    assert_eq!((read.generation, read.written_at, read.parent, read.nodes), (11, (100, 5), None, 4));
    assert_eq!(read.stored, None, "a root that ends after Root names no tree stored before it");
    // `stored` follows: Some (1) of generation 10 (a varint), then the block its storage order
    // was declared in (a varint), as cessfs writes it; a root from before the block ends after
    // the generation.
    let stored = StoredTree { generation: 10, declared_at: Some(300) };
    let with_stored = [&root[..], &[1], &varint(10), &varint(300)].concat();
    assert_eq!(Root::decode(&with_stored).unwrap(), Root { stored: Some(stored), ..read.clone() });
    assert_eq!(Root { stored: Some(stored), ..read.clone() }.encode(), with_stored, "byte for byte");
    let generation_only = [&root[..], &[1], &varint(10)].concat();
    let without_block = Some(StoredTree { declared_at: None, ..stored });
    assert_eq!(Root::decode(&generation_only).unwrap(), Root { stored: without_block, ..read.clone() });
    let mut dirs = std::collections::HashMap::new();
    let mut wanted = vec![read.dir];
    while let Some(r) = wanted.pop() {
        let sealed = &commit[r.offset as usize..(r.offset + r.len) as usize];
        let dir = Dir::decode(&keys.open(&r.id, sealed).unwrap()).unwrap().resolved(commit_fid);
        wanted.extend(cessfs::format::refs_of(&dir));
        dirs.insert(r.id, dir);
    }
    let tree = cessfs::format::assemble(&read, &dirs, Vec::new()).unwrap();
    assert_eq!(tree.nodes.len(), 4, "x and y are one node");
    let name_of = |id: u64| tree.links.iter().filter(|l| l.child == id).map(|l| l.name.clone()).collect::<Vec<_>>();
    let linked_node = tree.nodes.iter().find(|n| n.size == 2).unwrap();
    assert_eq!(name_of(linked_node.id), vec![b"x".to_vec(), b"y".to_vec()]);
    assert!(matches!(linked_node.location, Location::Packed { fid, .. } if fid == commit_fid), "zeros: the commit");

    // cessfs writes the same directory bytes, so the same ids.
    let ours = Dir::Entries(vec![Entry { name: b"a.txt".to_vec(), node: lone.clone(), dir: None }]);
    assert_eq!(ours.encode(), docs);
    let docs_ref = TreeRef { fid: THIS_COMMIT, id: Hash(docs_id), offset: docs_at, len: docs_len };
    let ours = Dir::Entries(vec![
        Entry { name: b"docs".to_vec(), node: dir_node, dir: Some(docs_ref) },
        Entry { name: b"x".to_vec(), node: linked.clone(), dir: None },
        Entry { name: b"y".to_vec(), node: linked, dir: None },
    ]);
    assert_eq!(ours.encode(), top);

    // Node keys follow the directory: a count, then each key's 8 origin bytes and its serial (a
    // varint), in entry order; a reader takes each as its entry's node's.
    let mut plain = vec![0u8, 1];
    plain.extend(entry(b"a.txt", &lone, None));
    plain.extend([&[1u8][..], &[5; 8], &varint(300)].concat());
    let mut keyed = b"CFSDIR\x00\x01".to_vec();
    keyed.extend(ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest));
    let key = cessfs::format::NodeKey { origin: [5; 8], serial: 300 };
    let with_key = cessfs::format::Node { key: Some(key), ..lone };
    let ours = Dir::Entries(vec![Entry { name: b"a.txt".to_vec(), node: with_key, dir: None }]);
    assert_eq!(Dir::decode(&keyed).unwrap(), ours);
    assert_eq!(ours.encode(), keyed, "byte for byte");
    assert_eq!(key.to_hex(), "0505050505050505000000000000012c", "as user.cess.node shows it");
}
