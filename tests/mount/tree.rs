//! The tree on CESS: what the chain learns of names and sizes, and which tree holds a FID.

use std::fs;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// Every name POSIX allows is stored, under an opaque name of 25 `[0-9a-z]` bytes; the declared
/// size is whole segments; nothing of the real names reaches the ledger.
#[test]
fn every_name_is_stored_and_the_chain_sees_none_of_them() {
    let m = Mount::uploading("0", &[]);
    let camera = format!("{}.jpg", "PXL_20261201_101010123_".repeat(3));
    let chinese = "我的二零二五年纳税申报表和所有的收据扫描件.pdf".to_string();
    let names = ["x".to_string(), "ab".to_string(), camera, chinese, "my_tax_return_2025.pdf".to_string()];
    for (i, name) in names.iter().enumerate() {
        fs::write(m.path(name), format!("content {i}")).unwrap();
    }
    let net = m.devnet();
    for name in &names {
        m.wait_status(name, &["active"], MIN);
        let fid = m.cess(name, "fid").unwrap();
        let file = net.file(&fid).expect("on the ledger");
        let on_chain = &file.owners[0].file_name;
        assert_eq!(on_chain.len(), 25, "{name}: {:?}", String::from_utf8_lossy(on_chain));
        assert!(on_chain.iter().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()), "{on_chain:?}");
        assert_eq!(file.file_size, 32 << 20, "{name}: the declared size is whole segments");
        let json: serde_json::Value = serde_json::from_str(&m.cess(name, "json").unwrap()).unwrap();
        assert_eq!(json["name_on_chain"].as_str().unwrap().as_bytes(), &on_chain[..]);
    }
    let ledger = read_tree(&m.data_dir().join("devnet"));
    for name in names.iter().filter(|n| n.len() >= 8) {
        assert!(!contains(&ledger, name.as_bytes()), "the devnet holds the name {name:?}");
    }
}

/// In plaintext mode, the layout other clients read: the readable name where it fits, else a
/// shortened form that keeps the extension; the true size.
#[test]
fn plain_mode_keeps_names_readable_and_shortens_what_does_not_fit() {
    let m = Mount::uploading("0", &["--plain", "true"]);
    let long = format!("{}.jpeg", "holiday_photo_".repeat(6));
    for name in ["ab", "report.pdf", long.as_str()] {
        fs::write(m.path(name), format!("plain {:>5}", name.len())).unwrap();
    }
    let net = m.devnet();
    let on_chain = |name: &str| {
        m.wait_status(name, &["active"], MIN);
        let file = net.file(&m.cess(name, "fid").unwrap()).unwrap();
        assert_eq!(file.file_size, 11, "the true size");
        String::from_utf8(file.owners[0].file_name.clone()).unwrap()
    };
    assert_eq!(on_chain("report.pdf"), "report.pdf");
    let short = on_chain("ab");
    assert!(short.starts_with("ab~") && short.len() == 11, "{short}");
    let cut = on_chain(&long);
    assert!(cut.starts_with("holiday_photo_") && cut.ends_with(".jpeg") && cut.len() == 63, "{cut}");
}

/// Equal bytes in two territories are two FIDs of two trees: removing one leaves the other.
#[test]
fn the_same_bytes_in_two_territories_never_share_a_fate() {
    let net = StandaloneDevnet::start();
    let client = net.client();
    client.run(client.chain.mint_territory(b"second", 4, 30)).expect("mint a second territory");
    let first = Mount::uploading("0", &["--chain", &net.url]);
    let mut second = Mount::uploading("0", &["--chain", &net.url, "--territory", "second"]);
    let data = random_bytes(3 << 20, 5);
    fs::write(first.path("same.bin"), &data).unwrap();
    fs::write(second.path("same.bin"), &data).unwrap();
    first.wait_status("same.bin", &["active"], MIN);
    second.wait_status("same.bin", &["active"], MIN);
    let (a, b) = (first.cess("same.bin", "fid").unwrap(), second.cess("same.bin", "fid").unwrap());
    assert_ne!(a, b, "each territory has its own keys");
    fs::remove_file(first.path("same.bin")).unwrap();
    wait_until(MIN, "the first territory's FID to leave the chain", || client.file(&a).is_none());
    assert!(client.file(&b).is_some(), "the second tree's FID stays");
    let evicted = run(std::process::Command::new(BIN).arg("evict").arg(second.root()));
    assert!(second.cess("same.bin", "cached").as_deref() == Some("no"), "{evicted}");
    second.remount();
    assert!(fs::read(second.path("same.bin")).unwrap() == data, "read back from CESS");
}

fn read_tree(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = fs::read(&p) {
            out.extend(bytes);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
