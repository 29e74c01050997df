//! The names a tree's files take on chain (`UserBrief.file_name`, 3 to 63 bytes).
//!
//! Encrypted mode: opaque names of `[0-9a-f]` and one kind letter, keyed by the territory's key,
//! so the public chain learns nothing of real names, and every real name fits:
//!
//! ```text
//! file      tag ‖ "f" ‖ hex(HMAC(k_name, "file" ‖ fid))[..16]     25 bytes
//! snapshot  tag ‖ "s" ‖ hex16(generation)                         25 bytes
//! pack      tag ‖ "p" ‖ hex16(pack number)                        25 bytes
//! commit    tag ‖ "c" ‖ hex16(generation)                         25 bytes
//! tag       hex(HMAC(k_name, "tag"))[..8]
//! ```
//!
//! The tag tells this key's files and snapshots from another key's without decrypting anything.
//! Plaintext mode keeps the readable name where it fits and otherwise shortens it
//! ([`readable_name`]), for other CESS clients to show.

use super::{Hash, sha256};

/// Bytes of a tag, in hex.
const TAG_LEN: usize = 8;
/// The shortest and longest name the chain takes (`NameMinLength`, `NameStrLimit`).
pub const CHAIN_NAME_LEN: std::ops::RangeInclusive<usize> = 3..=63;

/// What a name on chain stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A regular file's content.
    File,
    /// A tree snapshot.
    Snapshot,
    /// A pack of small files' blobs.
    Pack,
    /// A commit: a pack that also holds a tree snapshot.
    Commit,
}

impl NameKind {
    /// Whether it holds a tree: a snapshot file or a commit.
    pub fn is_tree(self) -> bool {
        matches!(self, NameKind::Snapshot | NameKind::Commit)
    }

    fn letter(self) -> u8 {
        match self {
            NameKind::File => b'f',
            NameKind::Snapshot => b's',
            NameKind::Pack => b'p',
            NameKind::Commit => b'c',
        }
    }
}

/// The key names are derived with (from a territory's key: [`super::MasterKey::names`]).
#[derive(Clone)]
pub struct NameKey {
    key: [u8; 32],
    tag: [u8; TAG_LEN],
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NameKey(tag {})", self.tag())
    }
}

impl NameKey {
    pub(super) fn new(key: [u8; 32]) -> NameKey {
        let digest = super::crypto::hmac(&key, &[b"tag"]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hex::encode(digest).as_bytes()[..TAG_LEN]);
        NameKey { key, tag }
    }

    /// The tag every name of this key starts with.
    pub fn tag(&self) -> &str {
        std::str::from_utf8(&self.tag).unwrap_or_default()
    }

    /// The name a file with this FID is declared under.
    pub fn file_name(&self, fid: &Hash) -> Vec<u8> {
        let digest = super::crypto::hmac(&self.key, &[b"file", &fid.0]);
        self.name(NameKind::File, &hex::encode(&digest[..8]))
    }

    /// The name of the snapshot of generation `generation`.
    pub fn snapshot_name(&self, generation: u64) -> Vec<u8> {
        self.name(NameKind::Snapshot, &format!("{generation:016x}"))
    }

    /// The name of pack number `number`.
    pub fn pack_name(&self, number: u64) -> Vec<u8> {
        self.name(NameKind::Pack, &format!("{number:016x}"))
    }

    /// The name of the commit of generation `generation`.
    pub fn commit_name(&self, generation: u64) -> Vec<u8> {
        self.name(NameKind::Commit, &format!("{generation:016x}"))
    }

    /// What a name on chain is, if this key made it: its kind, and a snapshot's generation or a
    /// pack's number.
    pub fn parse(&self, name: &[u8]) -> Option<(NameKind, Option<u64>)> {
        let rest = name.strip_prefix(&self.tag[..])?;
        let (&letter, body) = rest.split_first()?;
        if body.len() != 16 || !body.iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return None;
        }
        match letter {
            b'f' => Some((NameKind::File, None)),
            b's' | b'p' | b'c' => {
                let number = u64::from_str_radix(std::str::from_utf8(body).ok()?, 16).ok()?;
                let kind = match letter {
                    b's' => NameKind::Snapshot,
                    b'p' => NameKind::Pack,
                    _ => NameKind::Commit,
                };
                Some((kind, Some(number)))
            }
            _ => None,
        }
    }

    fn name(&self, kind: NameKind, body: &str) -> Vec<u8> {
        let mut out = self.tag.to_vec();
        out.push(kind.letter());
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// The plaintext-mode name of a file called `name`: itself where the chain takes it, else a
/// shortened form that keeps the extension and adds `~` and 8 hex characters of its digest, so
/// two long names with one prefix stay apart. Cuts fall on UTF-8 character boundaries.
pub fn readable_name(name: &[u8]) -> Vec<u8> {
    if CHAIN_NAME_LEN.contains(&name.len()) {
        return name.to_vec();
    }
    let mark = format!("~{}", &hex::encode(sha256(name).0)[..8]);
    if name.len() < *CHAIN_NAME_LEN.start() {
        return [name, mark.as_bytes()].concat();
    }
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 && name.len() - dot <= 16 => &name[dot..],
        _ => &[][..],
    };
    let mut keep = CHAIN_NAME_LEN.end() - ext.len() - mark.len();
    let stem = &name[..name.len() - ext.len()];
    while keep > 0 && stem.get(keep).is_some_and(|&b| b & 0xc0 == 0x80) {
        keep -= 1;
    }
    [&stem[..keep], mark.as_bytes(), ext].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> NameKey {
        NameKey::new([byte; 32])
    }

    #[test]
    fn opaque_names_fit_the_chain_and_reveal_nothing() {
        let k = key(1);
        let name = k.file_name(&Hash([7; 32]));
        assert_eq!(name.len(), 25);
        assert!(name.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b's' || *b == b'f'));
        assert_eq!(k.parse(&name), Some((NameKind::File, None)));
        assert_ne!(name, k.file_name(&Hash([8; 32])));
        assert_eq!(key(2).parse(&name), None, "another key's names are not this key's");
    }

    #[test]
    fn snapshot_names_carry_their_generation_in_order() {
        let k = key(3);
        let (a, b) = (k.snapshot_name(9), k.snapshot_name(10));
        assert!(a < b, "names sort as generations do");
        assert_eq!(k.parse(&b), Some((NameKind::Snapshot, Some(10))));
        assert_eq!(k.parse(&k.snapshot_name(u64::MAX)), Some((NameKind::Snapshot, Some(u64::MAX))));
        assert_eq!(k.parse(&k.pack_name(7)), Some((NameKind::Pack, Some(7))));
        assert_eq!(k.parse(&k.commit_name(9)), Some((NameKind::Commit, Some(9))));
        let mut bad = b.clone();
        bad[20] = b'G';
        assert_eq!(k.parse(&bad), None);
        assert_eq!(k.parse(b"ab"), None);
    }

    #[test]
    fn readable_names_fit_keep_extensions_and_stay_apart() {
        assert_eq!(readable_name(b"report.pdf"), b"report.pdf");
        let short = readable_name(b"ab");
        assert!(short.starts_with(b"ab~") && CHAIN_NAME_LEN.contains(&short.len()));
        let long = format!("{}.jpeg", "IMG_20260101_".repeat(6));
        let cut = readable_name(long.as_bytes());
        assert_eq!(cut.len(), 63);
        assert!(cut.ends_with(b".jpeg"));
        let other = readable_name(format!("{}.jpeg", "IMG_20260101_".repeat(7)).as_bytes());
        assert_ne!(cut, other);
        let cjk = "文件名很长的中文名字用于测试链上名字的长度限制".repeat(2);
        let cut = readable_name(cjk.as_bytes());
        assert!(CHAIN_NAME_LEN.contains(&cut.len()));
        assert!(std::str::from_utf8(&cut).is_ok(), "cut on a character boundary");
        let no_ext = readable_name(&[b'x'; 200]);
        assert_eq!(no_ext.len(), 63);
    }
}
