//! Pause points for tests that must force a race or a crash at one step, as the fail points of
//! FoundationDB and TiKV do. With `CESSFS_HOOKS=DIR` in the environment, a step that reaches hook
//! `NAME` while the file `DIR/NAME` exists writes `DIR/NAME.reached` and waits until `DIR/NAME` is
//! gone (a test then acts, or kills the process, at that exact point). Without the variable, as
//! everywhere outside the tests, a hook is one look at a value read once.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The longest a hook waits: a test that died leaves nothing waiting for ever.
const LONGEST: Duration = Duration::from_secs(600);
const PACE: Duration = Duration::from_millis(10);

fn dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("CESSFS_HOOKS").map(PathBuf::from)).as_deref()
}

/// The armed file of hook `name`, if hooks are on and it is armed.
fn armed(name: &str) -> Option<PathBuf> {
    let armed = dir()?.join(name);
    if !armed.exists() {
        return None;
    }
    log::info!("hook {name} reached: waiting until it is released");
    if let Err(e) = std::fs::write(armed.with_extension("reached"), b"") {
        log::warn!("hook {name}: {e}");
    }
    Some(armed)
}

/// Waits at hook `name` while it is armed (blocking: for threads that are not the runtime's).
pub fn reached(name: &str) {
    let Some(armed) = armed(name) else { return };
    let deadline = std::time::Instant::now() + LONGEST;
    while armed.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(PACE);
    }
}

/// Waits at hook `name` while it is armed, in a task.
pub async fn reached_async(name: &str) {
    let Some(armed) = armed(name) else { return };
    let deadline = tokio::time::Instant::now() + LONGEST;
    while armed.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(PACE).await;
    }
}
