//! Repeated log lines: one per distinct problem per minute, with how many were held back, so a
//! failure that repeats (a full disk, an unreachable chain) cannot flood the log or the journal.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How long a problem stays quiet after it was logged.
const QUIET: Duration = Duration::from_secs(60);

/// When each problem was last logged, and how many times it came since.
static SEEN: LazyLock<Mutex<HashMap<String, (Instant, u64)>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Logs `message` at `level` unless the problem `key` was logged less than a minute ago; the
/// next line of the problem says how many were held back meanwhile.
pub fn limited(level: log::Level, key: &str, message: std::fmt::Arguments<'_>) {
    if !log::log_enabled!(level) {
        return;
    }
    let now = Instant::now();
    let held_back = {
        let mut seen = lock(&SEEN);
        if seen.len() > 4096 {
            seen.retain(|_, (at, _)| now.duration_since(*at) < QUIET);
        }
        match seen.get_mut(key) {
            Some((at, count)) if now.duration_since(*at) < QUIET => {
                *count += 1;
                return;
            }
            Some((at, count)) => {
                *at = now;
                std::mem::take(count)
            }
            None => {
                seen.insert(key.to_string(), (now, 0));
                0
            }
        }
    };
    match held_back {
        0 => log::log!(level, "{message}"),
        n => log::log!(level, "{message} (and {n} more like it in the last minute)"),
    }
}

/// `log!` with [`limited`]: `log_limited!(Level::Warn, key, "format", args...)`.
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $key:expr, $($arg:tt)+) => {
        $crate::logline::limited($level, $key, format_args!($($arg)+))
    };
}
