use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct StatusArgs {
    /// Files or directories (inside a cessfs mount) to report on [default: .].
    paths: Vec<PathBuf>,
    /// One JSON object per line and nothing else, for tools: the tree's snapshot and the packs
    /// of a mount root (`"kind": "snapshot"`, `"packs"`, `"abandoned"`, `"link"`), then each file
    /// (`"kind": "file"`).
    #[arg(long)]
    json: bool,
    /// Wait, with a progress bar, until every file is active, local or failed.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

/// The JSON attribute `name` of `path`, if it has one.
pub(super) fn json_attr(path: &Path, name: &std::ffi::CStr) -> Option<Value> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // 64 KiB: the most an attribute holds.
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: a NUL-terminated path, a NUL-terminated name and a buffer of the given length.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    serde_json::from_slice(&buf[..n as usize]).ok()
}

/// The `user.cess.json` of a file, if it has one.
fn status_of(path: &Path) -> Option<Value> {
    json_attr(path, c"user.cess.json")
}

/// The `user.cess.snapshot` of a mount's root, for the roots among `paths`.
fn snapshots_of(paths: &[PathBuf]) -> Vec<(PathBuf, Value)> {
    paths.iter().filter_map(|p| Some((p.clone(), json_attr(p, c"user.cess.snapshot")?))).collect()
}

/// One line on the deals a mount gave up (`user.cess.abandoned`).
fn describe_abandoned(v: &Value) -> String {
    let deals = crate::words::count(v["deals"].as_u64().unwrap_or(0), "deal");
    let mib = v["space"].as_u64().unwrap_or(0) >> 20;
    format!(
        "{deals} of removed files given up for want of local space lock {mib} MiB of territory \
         (CESS cannot cancel a deal)"
    )
}

/// One line on the packs of a mount's root, if it has any.
fn describe_packs(v: &Value) -> Option<String> {
    let (stored, uploading) = (v["stored"].as_u64().unwrap_or(0), v["uploading"].as_u64().unwrap_or(0));
    let filling = v["filling"]["files"].as_u64();
    if stored + uploading == 0 && filling.is_none() {
        return None;
    }
    let mut parts = vec![format!(
        "{stored} stored, {:.0}% full, {} MiB of territory",
        v["live_share"].as_f64().unwrap_or(0.0) * 100.0,
        v["space"].as_u64().unwrap_or(0) >> 20
    )];
    match v["waiting"].as_u64().unwrap_or(0) {
        _ if uploading == 0 => {}
        0 => parts.push(format!("{uploading} on their way")),
        waiting => {
            parts.push(format!("{uploading} on their way, {waiting} of them failed and waiting to be tried again"))
        }
    }
    if let Some(files) = filling {
        parts.push(format!("one filling ({})", crate::words::count(files, "file")));
    }
    if let Some(n) = v["underfull"].as_u64().filter(|&n| n > 1) {
        parts.push(format!("{n} under half full, to be merged"));
    }
    Some(format!("packs: {}", parts.join("; ")))
}

/// Whether the tree's newest changes are in an active snapshot (or this mount stopped writing
/// them, or one failed: nothing to wait for).
fn snapshot_settled(v: &Value) -> bool {
    let waiting = v["changes_waiting"].as_bool().unwrap_or(false);
    !v["stopped"].is_null()
        || match v["status"].as_str() {
            None => !waiting,
            Some(state) => (state == "active" && !waiting) || state == "failed",
        }
}

/// One line on the state of a tree's snapshots.
fn describe_snapshots(v: &Value) -> String {
    if let Some(g) = v["read_only_view_of"].as_u64() {
        let written = std::time::UNIX_EPOCH + Duration::from_millis(g);
        return format!("read-only view of tree snapshot {g} (written {})", crate::protocol::utc(written));
    }
    let mib = v["space"].as_u64().unwrap_or(0) >> 20;
    let mut line = match (v["generation"].as_u64(), v["status"].as_str()) {
        (Some(g), Some(state)) => format!(
            "tree snapshot {g} ({state}, written {}); {} kept, {mib} MiB of territory",
            v["written_at"].as_str().unwrap_or("?"),
            v["kept"]
        ),
        _ => "no tree snapshot yet".to_string(),
    };
    if v["changes_waiting"].as_bool() == Some(true) {
        line.push_str("; newer changes wait for the next one");
    }
    if let Some(n) = v["held_back_fids"].as_u64().filter(|&n| n > 0) {
        // Removed or replaced files, and older commits holding a kept tree's directories (a
        // restored tree's among them): the count does not tell them apart.
        let fids = crate::words::count(n, "FID");
        let (stays, them) = if n == 1 { ("stays", "it") } else { ("stay", "them") };
        line.push_str(&format!(
            "; {fids} that no file here needs {stays} on CESS while a kept snapshot refers to {them} \
             (removed or replaced files, older commits of the tree)"
        ));
    }
    if let Some(why) = v["stopped"].as_str() {
        line.push_str(&format!("; snapshots stopped: {why}"));
    }
    if let Some(why) = v["deletions_wait"].as_str() {
        line.push_str(&format!("; deletions from the chain wait: {why}"));
    }
    if let Some(why) = v["sweep_waits"].as_str() {
        line.push_str(&format!("; the restored tree is not swept yet: {why}"));
    }
    if let Some(n) = v["dirs_to_load"].as_u64() {
        // Directories are found as their parents load: the count is of those found so far.
        match n {
            0 => line.push_str("; the restored tree is loaded, its older snapshots being read"),
            n => {
                let dirs = crate::words::count_as(n, "directory", "directories");
                line.push_str(&format!("; the restored tree is loading ({dirs} found still to load)"));
            }
        }
        if let Some(why) = v["load_waits"].as_str() {
            line.push_str(&format!(", waiting: {why}"));
        }
    }
    line
}

fn collect(path: &Path, out: &mut Vec<(PathBuf, Value)>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else { return };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        children.iter().for_each(|c| collect(c, out));
    } else if meta.is_file()
        && let Some(v) = status_of(path)
    {
        out.push((path.to_path_buf(), v));
    }
}

/// Fragment bytes a segment sends at most: 12 fragments of 8 MiB.
const SEGMENT_FRAGMENT_BYTES: u64 = (crate::format::FRAGMENTS * crate::format::FRAGMENT_SIZE) as u64;

/// Fragment bytes still to push for the unsettled files among `files` (each pack or file once):
/// what their pushes report, or 12 fragments of 8 MiB per segment for those that wait (one
/// segment for all files in a pack being filled).
fn queued_bytes(files: &[(PathBuf, Value)]) -> (usize, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut unsettled = 0;
    let mut bytes = 0;
    for (_, v) in files.iter().filter(|(_, v)| !settled(v)) {
        unsettled += 1;
        let once = match (v["fid"].as_str(), state(v)) {
            (Some(fid), _) => fid.to_string(),
            (None, "packed") => "the pack being filled".to_string(),
            (None, _) => String::new(),
        };
        if !once.is_empty() && !seen.insert(once) {
            continue;
        }
        let segments = v["segments"].as_u64().filter(|&n| n > 0).unwrap_or_else(|| {
            // A sparse file's data, once its upload began; its size before.
            let size = v["sparse"]["data_bytes"].as_u64().or_else(|| v["size"].as_u64()).unwrap_or(0);
            crate::format::Layout::new(size, crate::format::Mode::Blocks).map_or(1, |l| l.segments() as u64)
        });
        bytes += match (v["push_bytes"].as_u64(), v["pushed_bytes"].as_u64(), state(v)) {
            (Some(total), Some(sent), _) => total.saturating_sub(sent),
            (_, _, "confirming") => 0,
            (_, _, "packed") => SEGMENT_FRAGMENT_BYTES,
            _ => segments * SEGMENT_FRAGMENT_BYTES,
        };
    }
    (unsettled, bytes)
}

/// The files among `files` under `root`.
fn under(files: &[(PathBuf, Value)], root: &Path) -> Vec<(PathBuf, Value)> {
    files.iter().filter(|(p, _)| p.starts_with(root)).cloned().collect()
}

/// One line on what is left to push and, at the uplink's rate of the last seconds, how long it
/// takes (`link`: the root's `user.cess.link`).
fn describe_queue(files: &[(PathBuf, Value)], link: &Value) -> Option<String> {
    let (unsettled, bytes) = queued_bytes(files);
    if unsettled == 0 {
        return None;
    }
    let up = link["up"].as_f64().unwrap_or(0.0);
    let eta = if up >= 1.0 && bytes > 0 {
        format!(", about {} at {}", duration(bytes as f64 / up), super::bwlimit::rate(up))
    } else {
        String::new()
    };
    Some(format!(
        "queue: {} not stored yet, {} MiB of fragments to push{eta}",
        crate::words::count(unsettled as u64, "file"),
        bytes.div_ceil(1 << 20)
    ))
}

/// Seconds as people read them.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn state(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("?")
}

/// Whether a file's upload is over: stored, nothing to store, or failed. A file a merge moves
/// to another pack is stored where it was meanwhile.
fn settled(v: &Value) -> bool {
    matches!(state(v), "active" | "local" | "failed") || v["moving"] == true
}

#[derive(Args)]
pub struct EvictArgs {
    /// Files or directories (inside a cessfs mount) whose cached content to drop.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Drops the cached content of every stored file under the paths; reads fetch it back.
pub fn evict(args: EvictArgs) -> anyhow::Result<()> {
    for p in &args.paths {
        crate::mountpoint::in_cessfs_mount(p)?;
    }
    let mut files = Vec::new();
    args.paths.iter().for_each(|p| collect(p, &mut files));
    let (mut evicted, mut kept) = (0, 0);
    for (path, v) in &files {
        if state(v) != "active" {
            let why = if state(v) == "local" { "empty: nothing to store" } else { "not stored on CESS yet" };
            println!("kept    {} ({}: {why})", path.display(), state(v));
            kept += 1;
            continue;
        }
        if v["cached"].as_str() == Some("no") {
            continue;
        }
        match evict_one(path) {
            Ok(()) => evicted += 1,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                println!("kept    {} (open)", path.display());
                kept += 1;
            }
            // The kernel refuses every attribute write on a read-only mount.
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => anyhow::bail!(
                "evicting {}: a read-only view (--read-only, --generation) cannot drop cached copies by \
                 hand; its cache keeps within --cache-size, least recently used first",
                path.display()
            ),
            Err(e) => anyhow::bail!("evicting {}: {e}", path.display()),
        }
    }
    println!("evicted {}, kept {kept}", crate::words::count(evicted as u64, "file"));
    Ok(())
}

/// Evicts one file. A file closed a moment ago may still be open in the daemon (the kernel tells
/// it of the last close after close(2) returns): busy is retried for a second.
fn evict_one(path: &Path) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match xattr_set(path, c"user.cess.evict", b"1") {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Sets attribute `name` of `path` to `value`.
pub(super) fn xattr_set(path: &Path, name: &std::ffi::CStr, value: &[u8]) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path and name, and a value of the given length.
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn scan(paths: &[PathBuf]) -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    paths.iter().for_each(|p| collect(p, &mut files));
    files
}

/// Waits, with a progress bar on stderr, until every file under `paths` is active, local or
/// failed, or `timeout` passes; returns their last status.
pub fn wait(paths: &[PathBuf], timeout: Option<Duration>) -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    // The progress bar is for a person watching; a log gets a line when the count moves, at
    // most every half minute.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut said: Option<(usize, std::time::Instant)> = None;
    loop {
        let files = scan(paths);
        let done = files.iter().filter(|(_, v)| settled(v)).count();
        let bar = if files.is_empty() { 20 } else { 20 * done / files.len() };
        if terminal {
            eprint!("\r[{}{}] {done}/{} settled ", "#".repeat(bar), ".".repeat(20 - bar), files.len());
        } else if said.is_none_or(|(before, at)| before != done && at.elapsed() >= Duration::from_secs(30)) {
            eprintln!("waiting: {done}/{} settled", files.len());
            said = Some((done, std::time::Instant::now()));
        }
        let trees = snapshots_of(paths);
        let trees_done = trees.iter().all(|(_, v)| snapshot_settled(v));
        if terminal && done == files.len() && !trees_done {
            eprint!("(waiting for the tree snapshot) ");
        }
        if done == files.len() && trees_done {
            match terminal {
                true => eprintln!(),
                false => {
                    let tree = if trees.is_empty() { "" } else { ", and the tree snapshot" };
                    eprintln!("settled: {done}/{} files{tree}", files.len());
                }
            }
            return Ok(files);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            if terminal {
                eprintln!();
            }
            if done == files.len() {
                anyhow::bail!("timed out waiting for the tree snapshot to be active");
            }
            anyhow::bail!(
                "timed out: {} of {} still uploading",
                files.len() - done,
                crate::words::count(files.len() as u64, "file")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let paths = if args.paths.is_empty() { vec![PathBuf::from(".")] } else { args.paths.clone() };
    for p in &paths {
        crate::mountpoint::in_cessfs_mount(p)?;
    }
    let files = if args.wait { wait(&paths, args.timeout.map(Duration::from_secs))? } else { scan(&paths) };
    if args.json {
        // One JSON object per line and nothing else: a mount root's tree snapshot and packs as
        // objects of their own (`"kind"` says which), then one per file.
        for (root, mut v) in snapshots_of(&paths) {
            (v["kind"], v["path"]) = ("snapshot".into(), root.display().to_string().into());
            println!("{v}");
        }
        for root in &paths {
            for (attr, kind) in
                [(c"user.cess.packs", "packs"), (c"user.cess.abandoned", "abandoned"), (c"user.cess.link", "link")]
            {
                if let Some(mut v) = json_attr(root, attr) {
                    (v["kind"], v["path"]) = (kind.into(), root.display().to_string().into());
                    if kind == "link" {
                        let bytes = queued_bytes(&under(&files, root)).1;
                        let up = v["up"].as_f64().filter(|&up| up >= 1.0);
                        v["queue_bytes"] = bytes.into();
                        v["eta_seconds"] = up.map(|up| (bytes as f64 / up).round() as u64).into();
                    }
                    println!("{v}");
                }
            }
        }
        for (p, mut v) in files.clone() {
            (v["kind"], v["path"]) = ("file".into(), p.display().to_string().into());
            println!("{v}");
        }
    } else {
        for (root, v) in snapshots_of(&paths) {
            println!("{}: {}", root.display(), describe_snapshots(&v));
        }
        for root in &paths {
            if let Some(line) = json_attr(root, c"user.cess.packs").as_ref().and_then(describe_packs) {
                println!("{}: {line}", root.display());
            }
            if let Some(v) = json_attr(root, c"user.cess.abandoned") {
                println!("{}: {}", root.display(), describe_abandoned(&v));
            }
            if let Some(v) = json_attr(root, c"user.cess.link") {
                println!("{}: {}", root.display(), super::bwlimit::describe_link(&v));
                if let Some(line) = describe_queue(&under(&files, root), &v) {
                    println!("{}: {line}", root.display());
                }
            }
        }
        if let Some(since) = files.iter().find_map(|(_, v)| v["chain_unreachable_since"].as_str()) {
            println!("the chain is unreachable since {since}: uploads wait, and resume when it answers");
        }
        println!("{:<11} {:<44} {:<12} {:<7} PATH", "STATE", "PROGRESS", "FID", "CACHED");
        for (p, v) in &files {
            let fid = v["fid"].as_str().map(|f| format!("{}…", &f[..10])).unwrap_or_else(|| "-".into());
            let cached = v["cached"].as_str().map_or("?", |c| c.split(' ').next().unwrap_or(c));
            let progress = v["progress"].as_str().unwrap_or("");
            println!("{:<11} {progress:<44} {fid:<12} {cached:<7} {}", state(v), p.display());
            if v["moving"] == true {
                println!("{:<11} its bytes are stored already, in the pack it had; going into a new one", "");
            }
            if let Some(e) = v["error"].as_str() {
                println!("{:<11} error: {e}", "");
            }
        }
    }
    // A file whose bytes are stored already is not one that failed to upload, whatever its new
    // pack does.
    let failed = files.iter().filter(|(_, v)| state(v) == "failed" && v["moving"] != true).count();
    if failed > 0 {
        anyhow::bail!("{} failed to upload (see user.cess.error)", crate::words::count(failed as u64, "file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A restored tree still loading says how many directories are left, and why it waits.
    #[test]
    fn a_tree_still_loading_says_how_many_directories_are_left() {
        let v = serde_json::json!({
            "generation": 5, "status": "active", "written_at": "2026-12-07 09:00:00 UTC", "kept": 1, "space": 0,
            "dirs_to_load": 3, "load_waits": "directory inode 9 could not be read: gone",
        });
        let line = super::describe_snapshots(&v);
        let want =
            "; the restored tree is loading (3 directories found still to load), waiting: directory inode 9 could not";
        assert!(line.contains(want), "{line}");
        assert!(!super::describe_snapshots(&serde_json::json!({"generation": 5})).contains("loading"));
    }
}
