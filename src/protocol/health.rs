//! Whether the chain answers, as the calls see it: since when it does not, and why. Shown in
//! `user.cess.progress` and `cessfs status`; and while it does not, calls fail at once for a
//! few seconds after each failed one (a read that needs the network fails fast instead of
//! waiting for a connection timeout each time), while the engine's retries and the territory
//! watcher keep trying.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::ChainError;
use crate::sync::lock;

/// How long after a failed call others fail at once.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    /// Since when calls fail to reach the chain, and the last failure.
    down: Option<(SystemTime, String)>,
    last_failure: Option<Instant>,
}

/// The chain's health. See the module docs.
#[derive(Default)]
pub struct ChainHealth(Mutex<State>);

impl ChainHealth {
    /// Since when the chain cannot be reached, and the last error, if it cannot.
    pub fn unreachable_since(&self) -> Option<(SystemTime, String)> {
        lock(&self.0).down.clone()
    }

    /// The error to give at once instead of calling, right after a failed call.
    pub fn refusal(&self) -> Option<ChainError> {
        let state = lock(&self.0);
        let (since, why) = state.down.as_ref()?;
        state.last_failure.filter(|t| t.elapsed() < QUIET_AFTER_FAILURE)?;
        Some(ChainError::Unreachable(format!("unreachable since {} ({why})", utc(*since))))
    }

    /// Records how a call went.
    pub fn record<T>(&self, result: &Result<T, ChainError>) {
        let mut state = lock(&self.0);
        match result {
            Err(ChainError::Unreachable(why)) => {
                if state.down.is_none() {
                    log::warn!("the chain cannot be reached: {why}; uploads wait and resume when it answers");
                }
                let since = state.down.as_ref().map_or_else(SystemTime::now, |(t, _)| *t);
                state.down = Some((since, why.clone()));
                state.last_failure = Some(Instant::now());
            }
            // A transaction whose block was not seen: says nothing either way.
            Err(ChainError::Pending(_)) => {}
            _ => {
                if let Some((since, _)) = state.down.take() {
                    log::info!("the chain answers again (unreachable since {})", utc(since));
                }
            }
        }
    }
}

/// `t` as a UTC date and time (`2026-12-01 14:03:12 UTC`).
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_165_654);
        assert_eq!(utc(t), "2026-12-01 22:54:14 UTC");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn failures_then_an_answer() {
        let h = ChainHealth::default();
        assert!(h.refusal().is_none());
        h.record::<()>(&Err(ChainError::Unreachable("refused".into())));
        let (since, why) = h.unreachable_since().unwrap();
        assert_eq!(why, "refused");
        assert!(h.refusal().is_some(), "calls right after a failure fail at once");
        h.record::<()>(&Err(ChainError::Unreachable("again".into())));
        assert_eq!(h.unreachable_since().unwrap().0, since, "since the first failure");
        h.record::<()>(&Err(ChainError::Pending("no block yet".into())));
        assert_eq!(h.unreachable_since().unwrap().0, since, "a block not seen yet says nothing either way");
        h.record::<()>(&Err(ChainError::dispatch("FileBank", "NonExistent")));
        assert!(h.unreachable_since().is_none() && h.refusal().is_none());
    }
}
