//! Keys and local privacy: a data dir keeps to the key its files were stored with, a key is
//! never created silently where stored files need another one, and other local users can read
//! nothing of a mount's data dir nor switch its devnet's nodes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

/// A place for mounts run as a person would: `cessfs mount` in the background, a config home
/// of its own (where the default key lives), data dirs and mount points.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let home = Home { dir: tempfile::tempdir().unwrap() };
        fs::create_dir_all(home.path("mnt")).unwrap();
        home
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn default_key(&self) -> PathBuf {
        self.path("config/cessfs/key")
    }

    /// `cessfs mount mnt --data-dir DATA` with `args`, as a daemon.
    fn mount(&self, data: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .env("XDG_CONFIG_HOME", self.path("config"))
            .arg("mount")
            .arg(self.path("mnt"))
            .arg("--data-dir")
            .arg(self.path(data))
            .args(["--quiet-delay", "0"])
            .args(args)
            .output()
            .unwrap()
    }

    fn unmount(&self) {
        run(Command::new(BIN).args(["unmount", "--wait"]).arg(self.path("mnt")));
    }

    /// Writes `name` into the mount and waits until it is stored.
    fn store(&self, name: &str, bytes: &[u8]) {
        let path = self.path("mnt").join(name);
        fs::write(&path, bytes).unwrap();
        wait_until(Duration::from_secs(60), "the file to be stored", || {
            getxattr(&path, "user.cess.status").is_ok_and(|s| s == b"active")
        });
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path("mnt")).stderr(std::process::Stdio::null()).status();
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn write_key(path: &Path, byte: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = fs::File::options().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(byte.repeat(32).as_bytes()).unwrap();
}

/// The first mount creates the default key and says so on the terminal; once files are stored
/// with it, a missing key file is refused (saying where it was expected), and so is another
/// key, naming both fingerprints.
#[test]
fn a_data_dir_keeps_to_the_key_its_files_were_stored_with() {
    let home = Home::new();
    let first = home.mount("data", &[]);
    assert!(first.status.success(), "{}", text(&first));
    let said = text(&first);
    assert!(
        said.contains("created the encryption key") && said.contains(&home.default_key().display().to_string()),
        "{said}"
    );
    home.store("a.txt", b"stored with the first key");
    home.unmount();

    let key = fs::read(home.default_key()).unwrap();
    fs::remove_file(home.default_key()).unwrap();
    let missing = home.mount("data", &[]);
    assert!(!missing.status.success(), "a missing key is not replaced by a new one");
    let said = text(&missing);
    assert!(said.contains("is missing") && said.contains(&home.default_key().display().to_string()), "{said}");
    assert!(!home.default_key().exists(), "no key was created");

    let other = home.path("other.key");
    write_key(&other, "7c");
    let wrong = home.mount("data", &["--key-file", other.to_str().unwrap()]);
    assert!(!wrong.status.success(), "another key is refused");
    let said = text(&wrong);
    let fingerprint = |bytes: &[u8]| cessfs::format::MasterKey::parse(bytes).unwrap().fingerprint();
    let (stored, given) = (fingerprint(&key), fingerprint(&fs::read(&other).unwrap()));
    assert!(said.contains(&stored) && said.contains(&given), "both fingerprints named: {said}");

    fs::write(home.default_key(), &key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(home.default_key(), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let back = home.mount("data", &[]);
    assert!(back.status.success(), "{}", text(&back));
    assert_eq!(fs::read(home.path("mnt/a.txt")).unwrap(), b"stored with the first key");
    home.unmount();
}

/// On a fresh machine (an empty data dir, no key file) whose territory holds the account's
/// files, no key is created: the mount says the key is needed and where.
#[test]
fn no_key_is_created_where_the_territory_holds_files() {
    let net = StandaloneDevnet::start();
    let home = Home::new();
    let key = home.path("key");
    write_key(&key, "3d");
    let first = home.mount("first", &["--chain", &net.url, "--key-file", key.to_str().unwrap()]);
    assert!(first.status.success(), "{}", text(&first));
    home.store("a.txt", b"stored from the first machine");
    home.unmount();

    let fresh = home.mount("fresh", &["--chain", &net.url]);
    assert!(!fresh.status.success(), "a fresh data dir with no key is refused");
    let said = text(&fresh);
    assert!(said.contains("is missing") && said.contains("territory"), "{said}");
    assert!(!home.default_key().exists(), "no key was created");
}

/// Everything in a data dir is its owner's alone (the database holds every file name), and the
/// embedded devnet's node switches need the token kept in it.
#[test]
fn other_local_users_read_nothing_and_switch_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let key = home.path("key");
    write_key(&key, "11");
    let out = home.mount("data", &["--key-file", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    home.store("my_tax_return_2025.pdf", b"private");
    let mut open_to_others = Vec::new();
    let mut stack = vec![home.path("data")];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            open_to_others.push(format!("{} {:o}", p.display(), meta.permissions().mode() & 0o777));
        }
        if meta.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(open_to_others.is_empty(), "readable by others: {open_to_others:?}");

    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(home.path("data/devnet/devnet.json")).unwrap()).unwrap();
    let rpc = info["rpc"].as_str().unwrap();
    let switch = |token: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", r#"{"fault":"down"}"#]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Devnet-Control: {t}")]);
        }
        run(cmd.arg(format!("{rpc}/nodes/1/fault")))
    };
    assert_eq!(switch(None), "403", "no token, no switch");
    assert_eq!(switch(Some("guess")), "403");
    let token = fs::read_to_string(home.path("data/devnet/control.token")).unwrap();
    assert_eq!(switch(Some(token.trim())), "200", "the owner's token switches");
    home.unmount();
}
