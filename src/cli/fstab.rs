//! `mount.cessfs`, the helper mount(8) runs for fstab lines of type `cessfs` or `fuse.cessfs`:
//!
//! ```text
//! cessfs              /mnt/cess  fuse.cessfs  _netdev,nofail                  0 0
//! /etc/cessfs/a.toml  /mnt/a     fuse.cessfs  _netdev,nofail,cache_size=20G   0 0
//! ```
//!
//! mount(8) calls `mount.cessfs SOURCE DIR [-sfnv] [-o OPTIONS]`. SOURCE is a config file (also
//! written `cessfs#FILE`), or `cessfs` or `none` for the system mount's default config. The
//! mount is a system mount (`cessfs mount --system`), and every `-o` option that is a mount
//! setting becomes its flag (`cache_size=20G` is `--cache-size 20G`), `ro` is `--read-only`
//! (a view of the tree); the generic options mount(8) and systemd understand are left to them.

use std::ffi::{OsStr, OsString};

use anyhow::bail;

/// Options that mean something to mount(8), systemd or the kernel's generic mount flags, and
/// nothing more to cessfs.
const GENERIC: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "atime",
    "noatime",
    "relatime",
    "nodiratime",
    "strictatime",
    "lazytime",
    "loud",
    "silent",
    "default_permissions",
];

/// Mount settings that may be given without a value, meaning `true`.
const SWITCHES: &[&str] = &["allow_other", "plain", "passthrough"];

/// Whether the program was started as a mount helper (`mount.cessfs`, `mount.fuse.cessfs`).
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    std::path::Path::new(argv0).file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"mount."))
}

/// The `cessfs` command line for the helper's arguments (without the program name), or `None`
/// when mount(8) only pretends (`-f`).
pub fn command_line(args: &[OsString]) -> anyhow::Result<Option<Vec<OsString>>> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("-o") => match it.next().and_then(|o| o.to_str()) {
                Some(list) => options.extend(list.split(',').filter(|o| !o.is_empty()).map(str::to_string)),
                None => bail!("-o needs a list of options"),
            },
            Some(flag) if flag.starts_with("-o") => options.extend(flag[2..].split(',').map(str::to_string)),
            // Namespaces (-N) and the type (-t) are mount(8)'s business.
            Some("-N" | "-t") => {
                it.next();
            }
            Some(flag) if flag.starts_with('-') && flag.len() > 1 => fake |= flag.contains('f'),
            _ => positional.push(arg.clone()),
        }
    }
    let [source, dir] = positional.as_slice() else {
        bail!("usage: mount.cessfs SOURCE DIR [-o OPTIONS] (SOURCE: a config file, or `cessfs`)");
    };
    let mut out: Vec<OsString> = ["cessfs", "mount", "--system"].map(OsString::from).into();
    out.push(dir.clone());
    let config = source.as_encoded_bytes().strip_prefix(b"cessfs#").map_or(source.as_os_str(), |rest| {
        // SAFETY: `rest` is `source` after an ASCII prefix, so still valid encoded bytes.
        unsafe { OsStr::from_encoded_bytes_unchecked(rest) }
    });
    if !matches!(config.to_str(), Some("cessfs" | "none" | "")) {
        out.push("--config".into());
        out.push(config.into());
    }
    for option in options {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option.as_str(), None),
        };
        match (key, value) {
            // A read-only view of the tree (it needs a data dir of its own: the mount refuses
            // one that holds a writable tree, saying so).
            ("ro", None) => out.extend([flag("read_only"), "true".into()]),
            (k, _) if GENERIC.contains(&k) || k.starts_with("x-") || k == "comment" => {}
            (k, None) if SWITCHES.contains(&k) => out.extend([flag(k), "true".into()]),
            (k, None) => bail!("mount option {k:?} needs a value ({k}=...)"),
            (k, Some(v)) => out.extend([flag(k), v.into()]),
        }
    }
    Ok((!fake).then_some(out))
}

/// The flag of mount setting `key`.
fn flag(key: &str) -> OsString {
    format!("--{}", key.replace('_', "-")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> anyhow::Result<Option<Vec<String>>> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        command_line(&args).map(|o| o.map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect()))
    }

    #[test]
    fn fstab_lines_become_system_mounts() {
        assert_eq!(
            line(&[
                "cessfs#/etc/cessfs/a.toml",
                "/mnt/a",
                "-o",
                "rw,_netdev,nofail,x-systemd.automount,cache_size=20G"
            ])
            .unwrap()
            .unwrap(),
            ["cessfs", "mount", "--system", "/mnt/a", "--config", "/etc/cessfs/a.toml", "--cache-size", "20G"]
        );
        assert_eq!(
            line(&["cessfs", "/mnt/cess", "-n", "-o", "allow_other,miner=cX@http://h:1"]).unwrap().unwrap(),
            ["cessfs", "mount", "--system", "/mnt/cess", "--allow-other", "true", "--miner", "cX@http://h:1"]
        );
        assert_eq!(line(&["cessfs", "/mnt/cess", "-f"]).unwrap(), None);
        assert_eq!(
            line(&["cessfs", "/mnt/v", "-o", "ro"]).unwrap().unwrap(),
            ["cessfs", "mount", "--system", "/mnt/v", "--read-only", "true"]
        );
        assert!(line(&["cessfs", "/mnt/cess", "-o", "territory"]).unwrap_err().to_string().contains("territory="));
        assert!(line(&["/mnt/cess"]).unwrap_err().to_string().contains("usage"));
        assert!(invoked_as_helper(OsStr::new("/sbin/mount.fuse.cessfs")));
        assert!(!invoked_as_helper(OsStr::new("cessfs")));
    }
}
