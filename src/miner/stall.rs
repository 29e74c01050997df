//! The stall rule of miner requests: a request fails when it stops moving, never because the
//! link is slow. Bytes sent and received are counted as they pass; a request that moved fewer
//! than `floor` bytes a second over the last `window` is stalled. A fixed total limit would fail
//! every 8 MiB fragment on a link slower than 8 MiB per limit, however steadily it moved.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When a request counts as stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallRule {
    /// The window progress is measured over.
    pub window: Duration,
    /// The fewest bytes a second, averaged over the window, that count as moving.
    pub floor: u64,
}

impl StallRule {
    /// The default floor: 4 KiB/s, far below any link that carries fragments at all, so that
    /// only a request that stopped (or a miner that trickles) fails.
    pub const FLOOR: u64 = 4096;

    /// A rule over `window` with the default floor.
    pub fn over(window: Duration) -> StallRule {
        StallRule { window: window.max(Duration::from_millis(100)), floor: StallRule::FLOOR }
    }

    /// The bytes a window must see.
    fn needed(&self) -> u64 {
        (self.floor as f64 * self.window.as_secs_f64()) as u64
    }
}

/// Bytes moved by one request, counted by its body and its response as they pass, and when it
/// last waited on the bandwidth limit (a wait of ours, never the miner's stall).
#[derive(Debug, Clone, Default)]
pub struct Moved(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    bytes: AtomicU64,
    /// Milliseconds after [`epoch`] of the last wait on the limit (0: never).
    paced_at: AtomicU64,
}

/// The instant pacing times are counted from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Moved {
    /// Counts `n` more bytes.
    pub fn add(&self, n: usize) {
        self.0.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The bytes moved so far.
    pub fn get(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Notes that the request waits (or waited until now) on the bandwidth limit.
    pub fn paced(&self) {
        let ms = Instant::now().duration_since(epoch()).as_millis() as u64;
        self.0.paced_at.store(ms.max(1), Ordering::Relaxed);
    }

    /// Whether it waited on the limit at or after `since`.
    fn paced_since(&self, since: Instant) -> bool {
        let at = self.0.paced_at.load(Ordering::Relaxed);
        at > 0 && epoch() + Duration::from_millis(at) >= since
    }
}

/// How a watched request ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// Bytes it moved in its last window.
    pub moved: u64,
}

/// Runs `request`, failing it once it breaks `rule`: checked every eighth of a window, against
/// what moved over the whole window before (a sliding window; a request younger than a window
/// is never stalled, nor one that waited on the bandwidth limit within the window).
pub async fn watch<F: Future>(rule: StallRule, moved: &Moved, request: F) -> Result<F::Output, Stalled> {
    let tick = rule.window / 8;
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::from([(Instant::now(), moved.get())]);
    let mut ticks = tokio::time::interval_at(Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(request);
    loop {
        tokio::select! {
            out = &mut request => return Ok(out),
            _ = ticks.tick() => {
                let (now, total) = (Instant::now(), moved.get());
                samples.push_back((now, total));
                // Keep one sample at least a window old: the start of the window just ended.
                while samples.len() > 1 && samples[1].0 + rule.window <= now {
                    samples.pop_front();
                }
                let (start, at_start) = samples[0];
                let slow = total.saturating_sub(at_start) < rule.needed();
                if start + rule.window <= now && slow && !moved.paced_since(now.checked_sub(rule.window).unwrap_or(now)) {
                    return Err(Stalled { moved: total - at_start });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_above_the_floor_is_never_stalled() {
        let rule = StallRule { window: Duration::from_secs(8), floor: 100 };
        let moved = Moved::default();
        let counter = moved.clone();
        let slow = async move {
            // 200 bytes a second for a minute: far slower than any total limit would allow.
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                counter.add(200);
            }
            "done"
        };
        assert_eq!(watch(rule, &moved, slow).await, Ok("done"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_stops_moving_fails_after_one_window() {
        let rule = StallRule { window: Duration::from_secs(8), floor: 100 };
        let moved = Moved::default();
        let counter = moved.clone();
        let started = Instant::now();
        let stops = async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                counter.add(1000);
            }
            std::future::pending::<()>().await
        };
        assert!(watch(rule, &moved, stops).await.is_err());
        let after = started.elapsed();
        assert!(after >= Duration::from_secs(28) && after <= Duration::from_secs(30), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_below_the_floor_fails() {
        let rule = StallRule { window: Duration::from_secs(8), floor: 100 };
        let moved = Moved::default();
        let counter = moved.clone();
        let trickle = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                counter.add(50);
            }
        };
        let got: Result<(), Stalled> = watch(rule, &moved, trickle).await;
        let stalled = got.expect_err("a trickle below the floor is stalled");
        assert!(stalled.moved < 800, "{stalled:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_on_the_bandwidth_limit_is_not_a_stall() {
        let rule = StallRule { window: Duration::from_secs(8), floor: 100 };
        let moved = Moved::default();
        let counter = moved.clone();
        let paced = async move {
            // A frame every 20 s, each waited for under a low limit: then the miner stops.
            for _ in 0..5 {
                counter.add(64);
                for _ in 0..20 {
                    counter.paced();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            std::future::pending::<()>().await
        };
        let started = Instant::now();
        assert!(watch(rule, &moved, paced).await.is_err(), "a stall after the pacing still fails");
        assert!(started.elapsed() >= Duration::from_secs(100), "{:?}", started.elapsed());
    }
}
