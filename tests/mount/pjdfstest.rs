//! pjdfstest, the POSIX suite JuiceFS, hf-mount and fuser run, on a fresh mount: the number of
//! subtests that pass may only rise (tests/pjdfstest-passes holds it; raise it with the code).

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Builds pjdfstest from ../shared/tools into the target dir, once per source change.
fn build(tools: &Path) -> std::path::PathBuf {
    let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pjdfstest");
    if !dest.join("pjdfstest").exists() {
        run(Command::new(tools).arg("build").arg(&dest));
    }
    dest
}

#[test]
fn pjdfstest_passes_at_least_as_many_subtests_as_before() {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/pjdfstest.sh");
    assert!(tools.exists(), "pjdfstest is expected at {} (the shared tools beside the project)", tools.display());
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "pjdfstest switches users: run the tests as root");
    let floor: u32 = include_str!("../pjdfstest-passes").trim().parse().expect("a number in tests/pjdfstest-passes");
    let dest = build(&tools);
    let m = Mount::start_with(&["--allow-other", "true"]);
    let dir = m.path("pjdfstest");
    std::fs::create_dir(&dir).unwrap();
    let out = run(Command::new(&tools).arg("run").arg(&dest).arg(&dir));
    let summary = out.lines().rev().find(|l| l.starts_with("pjdfstest: ")).unwrap_or_else(|| panic!("{out}"));
    let passed: u32 = summary
        .trim_start_matches("pjdfstest: ")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    eprintln!("{out}");
    assert!(passed >= floor, "{summary}: fewer than the {floor} of tests/pjdfstest-passes\n{out}");
}
