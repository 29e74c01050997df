//! The command line as a newcomer meets it: what each verb says when it is given a mount, bad
//! arguments or a bad file, and what a failed mount leaves behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const MIN: Duration = Duration::from_secs(60);

/// stderr of a command expected to fail.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A key file of `content` (mode 0600) in `work`.
fn key_file(work: &Path, content: &[u8]) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = work.join("key");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).unwrap();
    std::io::Write::write_all(&mut f, content).unwrap();
    path
}

/// What `cessfs mount` of a spot in `work` with `key` and `args` says when it fails before it is
/// ready; it must leave no data dir.
fn refused_mount(work: &Path, key: &Path, args: &[&str]) -> String {
    let (dir, data) = (work.join("mnt"), work.join("data"));
    let _ = fs::create_dir(&dir);
    let said = fails(
        Command::new(BIN).arg("mount").arg(&dir).arg("--data-dir").arg(&data).arg("--key-file").arg(key).args(args),
    );
    assert!(!data.exists(), "no data dir is left: {said}");
    said
}

/// `cessfs account MOUNT` asks the mount's embedded devnet; `status --json` on a mount root
/// prints JSON objects and nothing else.
#[test]
fn account_and_status_json_of_a_mount() {
    let m = Mount::uploading("0", &[]);
    fs::write(m.path("a.txt"), b"one file").unwrap();
    m.wait_status("a.txt", &["active"], MIN);
    let said = run(Command::new(BIN).arg("account").arg(m.root()));
    assert!(said.contains("account") && said.contains("territory cessfs"), "{said}");
    let out = run(Command::new(BIN).args(["status", "--json"]).arg(m.root()));
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
            v["kind"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    for kind in ["snapshot", "packs", "file"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

/// A mount that fails before it is ready (a key file that does not exist) leaves no data dir,
/// and says how to make a key.
#[test]
fn a_failed_mount_leaves_nothing_behind_and_says_what_to_do() {
    let work = tempfile::tempdir().unwrap();
    let said = refused_mount(work.path(), &work.path().join("no-such-key"), &[]);
    assert!(said.contains("cessfs keygen"), "{said}");
    // A key file that holds no key fails the same way.
    let said = refused_mount(work.path(), &key_file(work.path(), b""), &[]);
    assert!(said.contains("key file"), "{said}");
}

/// `territory` checks its arguments before it asks anything of a chain, in words about sizes.
#[test]
fn territory_arguments_are_checked_first() {
    let territory = |args: &[&str]| fails(Command::new(BIN).args(["territory", "mint"]).args(args));
    let said = territory(&["home", "--gib", "-5"]);
    assert!(said.contains("GiB") && !said.contains("-- -5"), "{said}");
    assert!(territory(&["home", "--gib", "0"]).contains("at least 1"));
    assert!(territory(&["home", "--gib", "1", "--days", "29"]).contains("at least 30 days"));
    assert!(territory(&["", "--gib", "1"]).contains("needs a name"));
}

/// A config file's error names the line it is on.
#[test]
fn a_config_error_points_at_its_line() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.toml");
    fs::write(&config, "territory = \"home\"\n\ncache_size = 20\n").unwrap();
    let dir = work.path().join("mnt");
    fs::create_dir(&dir).unwrap();
    let said = fails(Command::new(BIN).arg("mount").arg(&dir).arg("--config").arg(&config));
    assert!(said.contains("line 3"), "{said}");
}

/// `ro` in an fstab line is a read-only view; on a data dir that holds a writable tree the mount
/// says so.
#[test]
fn ro_in_fstab_is_a_read_only_view() {
    let mut writer = Mount::uploading("0", &[]);
    fs::write(writer.path("a.txt"), b"a writable tree").unwrap();
    writer.unmount();
    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("mount.cessfs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let spot = tempfile::tempdir().unwrap();
    let options =
        format!("ro,data_dir={},key_file={}", writer.data_dir().display(), writer.data_dir().join("key").display());
    let said = fails(Command::new(&helper).arg("cessfs").arg(spot.path()).args(["-o", &options]));
    assert!(said.contains("holds a writable tree"), "{said}");
}

/// A link the devnet cannot take is refused at mount, saying what was wrong, and leaves nothing.
#[test]
fn a_bad_devnet_link_or_bandwidth_limit_is_refused_at_mount() {
    let work = tempfile::tempdir().unwrap();
    let key = key_file(work.path(), "5a".repeat(32).as_bytes());
    let said = refused_mount(work.path(), &key, &["--devnet-link", "up=fast"]);
    assert!(said.contains("devnet_link") && said.contains("bits per second"), "{said}");
    let said = refused_mount(work.path(), &key, &["--bwlimit", "08:00,512k 19:00,10M 25:00,off"]);
    assert!(said.contains("--bwlimit") && said.contains("entry 3") && said.contains("25:00"), "{said}");
}

/// `cessfs bwlimit` shows and changes a running mount's limit; a bad one is refused with what
/// was wrong, and the limit in force stays.
#[test]
fn the_bandwidth_limit_changes_on_a_running_mount() {
    let m = Mount::uploading("0", &["--bwlimit", "08:00,512k 19:00,10M 23:00,off"]);
    let bwlimit = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("bwlimit").arg(m.root()).args(args);
        cmd
    };
    let said = run(&mut bwlimit(&[]));
    assert!(said.contains("timetable \"08:00,512k 19:00,10M 23:00,off\""), "{said}");
    let said = run(&mut bwlimit(&["2M:off"]));
    assert!(said.contains("(limit 2.0 MiB/s), down") && said.contains("(limit off)"), "{said}");
    let said = fails(&mut bwlimit(&["2M:fast"]));
    assert!(said.contains("\"fast\" is not a rate"), "{said}");
    assert_eq!(getxattr(m.root(), "user.cess.bwlimit").unwrap(), b"2M:off");
    // A tool setting the attribute itself is refused by the mount too.
    assert_eq!(setxattr(m.root(), "user.cess.bwlimit", b"25:00,1M", 0), Err(libc::EINVAL));
    assert_eq!(getxattr(m.root(), "user.cess.bwlimit").unwrap(), b"2M:off");
    // Files go up under a limit, and status shows the link.
    run(&mut bwlimit(&["64M"]));
    fs::write(m.path("a.bin"), random_bytes(1 << 20, 5)).unwrap();
    m.wait_status("a.bin", &["active"], 2 * MIN);
    let status = run(Command::new(BIN).arg("status").arg(m.root()));
    assert!(status.contains("link: up") && status.contains("(limit 64.0 MiB/s)"), "{status}");
}
