//! The .deb: built by scripts/build-deb.sh from the binary under test, then taken apart.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cessfs");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn the_deb_installs_the_binary_helper_units_man_pages_and_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = tmp.path().join("cessfs.deb");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    run(Command::new(root.join("scripts/build-deb.sh")).arg("--binary").arg(BIN).arg("--out").arg(&deb));

    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/cessfs",
        "./usr/sbin/mount.cessfs -> ../bin/cessfs",
        "./usr/sbin/mount.fuse.cessfs -> ../bin/cessfs",
        "./usr/lib/systemd/user/cessfs.service",
        "./usr/lib/systemd/system/cessfs@.service",
        "./usr/share/man/man1/cessfs.1.gz",
        "./usr/share/man/man1/cessfs-mount.1.gz",
        "./usr/share/bash-completion/completions/cessfs",
        "./usr/share/zsh/vendor-completions/_cessfs",
        "./usr/share/fish/vendor_completions.d/cessfs.fish",
        "./usr/share/doc/cessfs/CONFIG.md",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(path)), "{path} is in the package:\n{listing}");
    }
    assert!(run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg("Depends")).contains("fuse3"));

    let x = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&x));
    let version = run(Command::new(x.join("usr/bin/cessfs")).arg("--version"));
    assert_eq!(version.trim(), format!("cessfs {}", env!("CARGO_PKG_VERSION")));
    let man = run(Command::new("zcat").arg(x.join("usr/share/man/man1/cessfs-mount.1.gz")));
    assert!(man.contains(".TH cessfs-mount 1") && man.contains("cache\\-size"), "{man}");
    let bash = std::fs::read_to_string(x.join("usr/share/bash-completion/completions/cessfs")).unwrap();
    assert!(bash.contains("_cessfs()") && bash.contains("unmount"), "bash completion");

    // The helper, as mount(8) finds it: a fake mount (-f) does nothing, read-only or not; an
    // option it cannot take is refused, saying which.
    let helper = x.join("usr/sbin/mount.fuse.cessfs");
    run(Command::new(&helper).args(["cessfs", "/mnt/nowhere", "-f", "-o", "rw,_netdev"]));
    run(Command::new(&helper).args(["cessfs", "/mnt/nowhere", "-f", "-o", "ro"]));
    let bad = Command::new(&helper).args(["cessfs", "/mnt/nowhere", "-o", "cache_size"]).output().unwrap();
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && said.contains("cache_size") && said.contains("needs a value"), "{said}");

    // The units are valid systemd units (with the binary where the package puts it).
    let units = tmp.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let cessfs = x.join("usr/bin/cessfs");
    for (unit, name) in
        [("system/cessfs@.service", "cessfs@mnt-cess.service"), ("user/cessfs.service", "cessfs.service")]
    {
        let text = std::fs::read_to_string(x.join("usr/lib/systemd").join(unit)).unwrap();
        std::fs::write(units.join(name), text.replace("/usr/bin/cessfs", cessfs.to_str().unwrap())).unwrap();
        let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(units.join(name)).output().unwrap();
        let complaints = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && complaints.is_empty(), "{unit}:\n{complaints}");
    }
}
