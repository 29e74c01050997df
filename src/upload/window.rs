//! How many fragments go to miners at once, over all pushes: as many as keep the link full and
//! no more. The window starts at [`START`] and doubles while each widening raises goodput by
//! [`GAIN`]; a trial that does not pay is taken back. From then on it is held [`HOLD`] periods
//! between trials, which alternate a quarter wider (kept if it gains [`GAIN`]) and a quarter
//! narrower (kept if it loses less than [`LOSS`]), so it follows a link that changes. Goodput is
//! averaged over at least [`JUDGED_OVER`] periods at a width, and only periods the window limited
//! count (every slot busy or asked for, no cold read holding uploads back): a period with fewer
//! fragments to send than slots says nothing about the link. A bandwidth limit that changes
//! ends any trial and starts over from doubling.
//! Fewer fragments at once means each finishes sooner: a restart or a replaced miner loses less,
//! files queued behind wait for the link instead of splitting it, and the router's queue stays
//! short for the reads' acknowledgements.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::miner::Moved;
use crate::pace::{Limit, Pace};
use crate::sync::lock;

/// The window at the start: enough for one flow per data fragment.
const START: usize = 4;

/// The widest window: every fragment of the segments pushes may hold at once.
const MOST: usize = crate::format::FRAGMENTS * super::push::SEGMENTS_HELD;

/// The span goodput is measured over.
const PERIOD: Duration = Duration::from_secs(1);

/// The narrowest window a trial may try.
const FEWEST: usize = 2;

/// What a widening must add to goodput to be kept.
const GAIN: f64 = 0.10;

/// What a narrowing may cost in goodput and be kept.
const LOSS: f64 = 0.03;

/// Counted periods at a width before its goodput is judged.
const JUDGED_OVER: u32 = 2;

/// Counted periods a settled window is kept before the next trial.
const HOLD: u32 = 10;

/// The adaptive window. Its slots are taken per fragment, with the fragment in hand.
pub(super) struct Window {
    slots: Arc<Semaphore>,
    pace: Option<Arc<Pace>>,
    state: Mutex<State>,
}

struct State {
    width: usize,
    /// Slots to take out of use as they come back (a narrowing while they were held).
    owed: usize,
    waiting: usize,
    /// Bytes moved by slot holders that let go.
    let_go: u64,
    /// Each holder's counter and what it read when the slot was taken.
    holders: Vec<(u64, Moved, u64)>,
    next_id: u64,
    period: Period,
    /// Goodput counted at this width: bytes, seconds, periods.
    at_width: (f64, f64, u32),
    /// The width being tried, against the one before it.
    trial: Option<Trial>,
    /// A trial was taken back: trials alternate a quarter wider and narrower from now on.
    settled: bool,
    /// The next trial of a settled window is a narrowing.
    narrower_next: bool,
    /// Counted periods left before the next trial.
    hold: u32,
}

/// A width being tried.
struct Trial {
    /// The width before it, and its goodput.
    before: usize,
    rate: f64,
    wider: bool,
}

/// The period under way.
struct Period {
    start: Instant,
    bytes: u64,
    /// Every slot was busy whenever looked at.
    limited: bool,
    /// Cold reads started before it, to see one that came and went.
    reads: u64,
    /// The first period after a change of width only lets the new flows start.
    settling: bool,
    /// The bandwidth limit in force when it began.
    limit: Limit,
}

impl State {
    fn moved(&self) -> u64 {
        self.let_go + self.holders.iter().map(|(_, m, base)| m.get().saturating_sub(*base)).sum::<u64>()
    }
}

/// A slot of the window, held while one fragment goes; counts how long its column had the
/// link in [`Held`].
pub(super) struct Slot {
    window: Arc<Window>,
    permit: Option<OwnedSemaphorePermit>,
    id: u64,
    held: Held,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.held.stop();
        let mut st = lock(&self.window.state);
        if let Some(i) = st.holders.iter().position(|(id, _, _)| *id == self.id) {
            let (_, moved, base) = st.holders.swap_remove(i);
            st.let_go += moved.get().saturating_sub(base);
        }
        if let Some(permit) = self.permit.take() {
            if st.owed > 0 {
                st.owed -= 1;
                permit.forget();
            } else {
                drop(permit);
            }
        }
        self.window.observe(&mut st);
    }
}

impl Window {
    /// A window over the link paced by `pace` (whose cold reads hold uploads back).
    pub(super) fn new(pace: Option<Arc<Pace>>) -> Arc<Window> {
        let (reads, limit) = pace.as_ref().map_or((0, Limit::default()), |p| (p.reads_started(), p.current()));
        if let Some(pace) = &pace {
            pace.set_push_window(START);
        }
        Arc::new(Window {
            slots: Arc::new(Semaphore::new(START)),
            pace,
            state: Mutex::new(State {
                width: START,
                owed: 0,
                waiting: 0,
                let_go: 0,
                holders: Vec::new(),
                next_id: 0,
                period: Period { start: Instant::now(), bytes: 0, limited: false, reads, settling: true, limit },
                at_width: (0.0, 0.0, 0),
                trial: None,
                settled: false,
                narrower_next: false,
                hold: 0,
            }),
        })
    }

    /// Waits for a slot for a fragment whose bytes `moved` counts, for the column whose time on
    /// the link `held` counts. Slots are given in the order they were asked for.
    pub(super) async fn slot(self: &Arc<Self>, moved: &Moved, held: &Held) -> Slot {
        lock(&self.state).waiting += 1;
        // Counted down however the wait ends (a column replaced while it waits).
        struct Waiting<'a>(&'a Window);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                lock(&self.0.state).waiting -= 1;
            }
        }
        let waiting = Waiting(self);
        let permit = self.slots.clone().acquire_owned().await.ok();
        drop(waiting);
        let mut st = lock(&self.state);
        let id = st.next_id;
        st.next_id += 1;
        st.holders.push((id, moved.clone(), moved.get()));
        held.start();
        Slot { window: self.clone(), permit, id, held: held.clone() }
    }

    /// Looks at the period under way; pushes call it every second, slots as they let go.
    pub(super) fn look(&self) {
        self.observe(&mut lock(&self.state));
    }

    fn observe(&self, st: &mut State) {
        // A waiter woken by a slot let go is still counted as waiting: the hand-off is not idle.
        if st.holders.len() + st.waiting < st.width {
            st.period.limited = false;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(st.period.start);
        if elapsed < PERIOD {
            return;
        }
        let bytes = st.moved();
        let (reads, limit) = self.pace.as_ref().map_or((0, Limit::default()), |p| (p.reads_started(), p.current()));
        let reader_waited = reads != st.period.reads || self.pace.as_ref().is_some_and(|p| p.readers_waiting());
        let counts = st.period.limited && !reader_waited && !st.period.settling;
        let limit_changed = limit != st.period.limit;
        let moved = bytes.saturating_sub(st.period.bytes) as f64;
        let limited = st.holders.len() + st.waiting >= st.width;
        st.period = Period { start: now, bytes, limited, reads, settling: false, limit };
        if limit_changed {
            // What was measured was another link's: start over.
            if let Some(trial) = st.trial.take() {
                self.resize(st, trial.before);
            }
            (st.at_width, st.settled, st.hold) = ((0.0, 0.0, 0), false, 0);
        } else if counts {
            self.decide(st, moved, elapsed.as_secs_f64());
        }
    }

    /// Keeps, takes back or tries a width after a period the window limited, in which `bytes`
    /// moved in `secs`.
    fn decide(&self, st: &mut State, bytes: f64, secs: f64) {
        st.at_width = (st.at_width.0 + bytes, st.at_width.1 + secs, st.at_width.2 + 1);
        if st.at_width.2 < JUDGED_OVER {
            return;
        }
        let rate = st.at_width.0 / st.at_width.1;
        if let Some(trial) = st.trial.take() {
            let kept = if trial.wider { rate >= trial.rate * (1.0 + GAIN) } else { rate >= trial.rate * (1.0 - LOSS) };
            if !kept {
                self.resize(st, trial.before);
                st.settled = true;
                st.hold = HOLD;
                return;
            }
            if st.settled || !trial.wider {
                st.hold = HOLD;
                return;
            }
        } else if st.hold > 0 {
            st.hold -= 1;
            return;
        }
        let quarter = st.width.div_ceil(4);
        let (wider, width) = match (st.settled, st.narrower_next) {
            (false, _) => (true, st.width * 2),
            (true, false) => (true, st.width + quarter),
            (true, true) => (false, st.width.saturating_sub(quarter).max(FEWEST)),
        };
        st.narrower_next = st.settled && !st.narrower_next;
        let width = width.min(MOST);
        if width != st.width {
            st.trial = Some(Trial { before: st.width, rate, wider });
            self.resize(st, width);
        } else {
            // As wide (or narrow) as it goes: held, then tried the other way.
            (st.settled, st.narrower_next, st.hold) = (true, wider, HOLD);
        }
    }

    fn resize(&self, st: &mut State, width: usize) {
        if width > st.width {
            let mut more = width - st.width;
            let paid = more.min(st.owed);
            st.owed -= paid;
            more -= paid;
            self.slots.add_permits(more);
        } else {
            let fewer = st.width - width;
            let forgotten = self.slots.forget_permits(fewer);
            st.owed += fewer - forgotten;
        }
        log::debug!("pushing up to {width} fragments at once (was {})", st.width);
        if let Some(pace) = &self.pace {
            pace.set_push_window(width);
        }
        st.width = width;
        st.period.settling = true;
        st.at_width = (0.0, 0.0, 0);
    }
}

/// Time a column spent holding slots: how long it had the link, which is what its pace is
/// measured against (a column waiting for a slot is not slow).
#[derive(Clone, Default)]
pub(super) struct Held(Arc<Mutex<(Duration, Option<Instant>)>>);

impl Held {
    /// A column holding a slot for `d` so far.
    #[cfg(test)]
    pub(super) fn sending_for(d: Duration) -> Held {
        let now = Instant::now();
        Held(Arc::new(Mutex::new(match now.checked_sub(d) {
            Some(since) => (Duration::ZERO, Some(since)),
            None => (d, Some(now)),
        })))
    }

    fn start(&self) {
        lock(&self.0).1 = Some(Instant::now());
    }

    fn stop(&self) {
        let mut h = lock(&self.0);
        if let Some(since) = h.1.take() {
            h.0 += since.elapsed();
        }
    }

    /// The time so far.
    pub(super) fn get(&self) -> Duration {
        let h = lock(&self.0);
        h.0 + h.1.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Whether it holds a slot now.
    pub(super) fn holding(&self) -> bool {
        lock(&self.0).1.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn width_of(window: &Window) -> usize {
        lock(&window.state).width
    }

    /// Runs `periods` periods of the window full of slots whose flows move `rate(width)` bytes a
    /// second between them (the link's answer to a width), returning the widths it took.
    async fn widths(periods: usize, rate: impl Fn(usize) -> u64) -> Vec<usize> {
        let window = Window::new(None);
        let mut seen = Vec::new();
        let mut slots: Vec<(Moved, Slot)> = Vec::new();
        for _ in 0..periods {
            let width = width_of(&window);
            while slots.len() < width {
                let moved = Moved::default();
                let slot = window.slot(&moved, &Held::default()).await;
                slots.push((moved, slot));
            }
            // Someone always waits: the window, not demand, limits.
            lock(&window.state).waiting = 1;
            // The link's bytes, spread over the flows, in steps through the period; at each step
            // a fragment is done and the next one (the one waiting) takes its slot.
            for step in 0..10 {
                tokio::time::advance(PERIOD / 10).await;
                let per_flow = rate(width) / 10 / width as u64;
                for (moved, _) in &slots {
                    moved.add(per_flow as usize);
                }
                window.look();
                if slots.len() <= width_of(&window) {
                    slots.swap_remove(step % slots.len());
                    let moved = Moved::default();
                    let slot = window.slot(&moved, &Held::default()).await;
                    slots.push((moved, slot));
                }
            }
            // Slots taken out of use come back from the holders as they let go.
            while slots.len() > width_of(&window) {
                slots.pop();
            }
            seen.push(width_of(&window));
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_one_flow_fills_never_keeps_the_window_wider_than_its_start() {
        let seen = widths(60, |_| 2_500_000).await;
        assert!(seen.iter().all(|w| *w <= 2 * START), "{seen:?}");
        assert!(seen[seen.len() - 10..].iter().all(|w| (FEWEST..=START).contains(w)), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_wider_than_the_link_needs_narrows() {
        // 20 flows were needed, then the link changed and 2 fill it: the window comes down.
        let window_on =
            |w: usize, changed: bool| if changed { 2_000_000 * w.min(2) as u64 } else { 1_000_000 * w.min(20) as u64 };
        let flip = std::sync::atomic::AtomicUsize::new(0);
        let seen = widths(160, |w| window_on(w, flip.fetch_add(1, Ordering::Relaxed) >= 10 * 40)).await;
        assert!(seen[..40].contains(&MOST), "{seen:?}");
        // A quarter narrower every other trial.
        assert!(*seen.last().unwrap() <= MOST / 2, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_that_needs_many_flows_widens_the_window_until_it_stops_paying() {
        // Each flow moves 1 MB/s up to 20 MB/s: 20 flows fill it.
        let seen = widths(80, |w| 1_000_000 * w.min(20) as u64).await;
        let last = *seen.last().unwrap();
        assert!((16..=MOST).contains(&last), "{seen:?}");
        assert!(seen.contains(&16), "{seen:?}");
    }
}
