//! How many fragments go to miners at once, over all pushes: as many as keep the link full and
//! no more. The window starts at [`START`] and widens while goodput grows: it doubles while each
//! widening pays, then tries a quarter more every [`HOLD`] periods, and a widening that did not
//! raise goodput by [`GAIN`] is taken back. Only periods the window limited count (every slot
//! busy, no cold read holding uploads back, no bandwidth limit change): a period with fewer
//! fragments to send than slots says nothing about the link.
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

/// What a widening must add to goodput to be kept.
const GAIN: f64 = 0.10;

/// Periods a window that stopped paying is kept before it is tried wider again.
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
    held: usize,
    waiting: usize,
    /// Bytes moved by slot holders that let go.
    let_go: u64,
    /// Each holder's counter and what it read when the slot was taken.
    holders: Vec<(u64, Moved, u64)>,
    next_id: u64,
    period: Period,
    /// The width and goodput before the widening being tried.
    trying: Option<(usize, f64)>,
    /// A widening was taken back: widen by a quarter from now on, not double.
    settled: bool,
    /// Periods left before the next widening.
    hold: u32,
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
        st.held -= 1;
        if let Some(permit) = self.permit.take() {
            if st.owed > 0 {
                st.owed -= 1;
                permit.forget();
            } else {
                drop(permit);
            }
        }
        if st.waiting == 0 {
            st.period.limited = false;
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
                held: 0,
                waiting: 0,
                let_go: 0,
                holders: Vec::new(),
                next_id: 0,
                period: Period { start: Instant::now(), bytes: 0, limited: false, reads, settling: true, limit },
                trying: None,
                settled: false,
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
        st.held += 1;
        st.holders.push((id, moved.clone(), moved.get()));
        held.start();
        Slot { window: self.clone(), permit, id, held: held.clone() }
    }

    /// Looks at the period under way; pushes call it every second, slots as they let go.
    pub(super) fn look(&self) {
        self.observe(&mut lock(&self.state));
    }

    fn observe(&self, st: &mut State) {
        if st.held < st.width {
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
        let counts = st.period.limited && !reader_waited && !st.period.settling && limit == st.period.limit;
        let rate = bytes.saturating_sub(st.period.bytes) as f64 / elapsed.as_secs_f64();
        st.period = Period { start: now, bytes, limited: st.held >= st.width, reads, settling: false, limit };
        if counts {
            self.decide(st, rate);
        }
    }

    /// Widens, keeps or takes back the width after a period the window limited at `rate`.
    fn decide(&self, st: &mut State, rate: f64) {
        match st.trying.take() {
            Some((before, before_rate)) if rate < before_rate * (1.0 + GAIN) => {
                self.resize(st, before);
                st.settled = true;
                st.hold = HOLD;
            }
            _ if st.hold > 0 => st.hold -= 1,
            _ if st.width < MOST => {
                let wider = if st.settled { st.width + st.width.div_ceil(4) } else { st.width * 2 };
                st.trying = Some((st.width, rate));
                self.resize(st, wider.min(MOST));
            }
            _ => {}
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
            // The link's bytes, spread over the flows, in steps through the period.
            for _ in 0..10 {
                tokio::time::advance(PERIOD / 10).await;
                let per_flow = rate(width) / 10 / width as u64;
                for (moved, _) in &slots {
                    moved.add(per_flow as usize);
                }
                window.look();
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
    async fn a_link_one_flow_fills_keeps_the_window_at_its_start() {
        let seen = widths(40, |_| 2_500_000).await;
        assert!(seen.iter().all(|w| *w <= 2 * START), "{seen:?}");
        assert!(seen.iter().filter(|w| **w == START).count() * 4 >= seen.len() * 3, "{seen:?}");
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
