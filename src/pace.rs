//! Pacing bytes on the person's link: token buckets, the bandwidth limit as rclone users write
//! it (`--bwlimit 10M:off`, or a timetable `"08:00,512k 19:00,10M 23:00,off"`, days too), and
//! "a reader first": uploads start no new fragment while a cold read waits for the network.

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sync::lock;

/// A token bucket as a queue: each transfer waits until the bytes before it have passed at the
/// rate. The rate can change while it runs; 0 means no limit.
pub struct Bucket {
    rate: AtomicU64,
    next: Mutex<Instant>,
}

impl Bucket {
    /// A bucket passing `rate` bytes a second (`None`: unlimited).
    pub fn new(rate: Option<u64>) -> Bucket {
        Bucket { rate: AtomicU64::new(rate.unwrap_or(0)), next: Mutex::new(Instant::now()) }
    }

    /// Sets the rate from now on (the queue built at the old rate is dropped).
    pub fn set_rate(&self, rate: Option<u64>) {
        self.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
        *lock(&self.next) = Instant::now();
    }

    /// The rate, if limited.
    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|r| *r > 0)
    }

    /// When `n` more bytes have passed, once those queued before them have; `None` if unlimited.
    pub fn reserve(&self, n: usize) -> Option<Instant> {
        let rate = self.rate()?;
        let mut next = lock(&self.next);
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
        Some(*next)
    }

    /// Waits until `n` bytes have passed.
    pub async fn pass(&self, n: usize) {
        if let Some(at) = self.reserve(n) {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Limits in bytes a second, per direction (`None`: off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limit {
    /// Uploads (to miners).
    pub up: Option<u64>,
    /// Downloads (from miners).
    pub down: Option<u64>,
}

const DAY: u32 = 24 * 60;
const WEEK: u32 = 7 * DAY;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAYS: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

/// A bandwidth limit: one [`Limit`], or a timetable of them, as rclone's `--bwlimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bwlimit {
    text: String,
    /// (minute of the week from Monday 00:00, limit), sorted; one entry, at 0, for a fixed limit.
    table: Vec<(u32, Limit)>,
}

impl Default for Bwlimit {
    fn default() -> Bwlimit {
        Bwlimit { text: "off".into(), table: vec![(0, Limit::default())] }
    }
}

/// A rate as rclone writes it: bytes a second, with a binary suffix B, K, M, G or T (a bare
/// number is KiB/s), or `off` (or 0).
fn rate(s: &str) -> Result<Option<u64>, String> {
    if s.eq_ignore_ascii_case("off") || s == "0" {
        return Ok(None);
    }
    let bad = || format!("{s:?} is not a rate: write 512k, 10M, 1.5G or off (bytes a second, as rclone)");
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "" | "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if !number.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: f64 = number.parse().map_err(|_| bad())?;
    let bytes = n * scale as f64;
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{s:?}: a rate is at least 1 byte a second (or off)"));
    }
    Ok(Some(bytes as u64))
}

/// `RATE` or `UP:DOWN`.
fn limit(s: &str) -> Result<Limit, String> {
    match s.split_once(':') {
        Some((up, down)) => Ok(Limit { up: rate(up)?, down: rate(down)? }),
        None => {
            let both = rate(s)?;
            Ok(Limit { up: both, down: both })
        }
    }
}

/// `[DAY-]HH:MM`: minutes into the week of that day, or into each day (`None` for the day).
fn when(s: &str) -> Result<(Option<u32>, u32), String> {
    let (day, time) = match s.split_once('-') {
        Some((day, time)) => {
            let lower = day.to_ascii_lowercase();
            let index = DAYS
                .iter()
                .position(|d| *d == lower)
                .or_else(|| FULL_DAYS.iter().position(|d| *d == lower))
                .ok_or_else(|| format!("{day:?} is not a day: Mon, Tue, Wed, Thu, Fri, Sat or Sun"))?;
            (Some(index as u32), time)
        }
        None => (None, s),
    };
    let bad = || format!("{time:?} is not a time of day: write HH:MM, as 08:00 or 23:30");
    if time.len() != 5 || !time.bytes().enumerate().all(|(i, b)| if i == 2 { b == b':' } else { b.is_ascii_digit() }) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (time[..2].parse().map_err(|_| bad())?, time[3..].parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((day, h * 60 + m))
}

impl FromStr for Bwlimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Bwlimit, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err("an empty limit: write a rate (10M, 10M:off) or a timetable (\"08:00,512k 23:00,off\")".into());
        }
        if !text.contains(',') {
            return Ok(Bwlimit { text: text.into(), table: vec![(0, limit(text)?)] });
        }
        let mut table = Vec::new();
        // Entries are separated by spaces or `;` (as rclone takes them).
        for (i, entry) in text.split(|c: char| c.is_whitespace() || c == ';').filter(|e| !e.is_empty()).enumerate() {
            let at = |e: String| format!("entry {} ({entry:?}): {e}", i + 1);
            let (time, value) = entry.split_once(',').ok_or_else(|| at("write TIME,RATE, as 08:00,512k".into()))?;
            let (day, minute) = when(time).map_err(at)?;
            let value = limit(value).map_err(at)?;
            match day {
                Some(d) => table.push((d * DAY + minute, value)),
                // A daily entry holds on every day.
                None => table.extend((0..7).map(|d| (d * DAY + minute, value))),
            }
        }
        table.sort_by_key(|(m, _)| *m);
        if table.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("two entries for the same time".into());
        }
        Ok(Bwlimit { text: text.into(), table })
    }
}

impl std::fmt::Display for Bwlimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Bwlimit {
    /// The limit at `minute` of the week (from Monday 00:00): the last entry at or before it,
    /// or, before the first, the week's last (it carries over from the week before).
    pub fn at(&self, minute: u32) -> Limit {
        let minute = minute % WEEK;
        let before = self.table.iter().rev().find(|(m, _)| *m <= minute);
        before.or(self.table.last()).map(|(_, l)| *l).unwrap_or_default()
    }

    /// Whether this is a timetable rather than one limit.
    pub fn is_timetable(&self) -> bool {
        self.table.len() > 1
    }
}

/// The local minute of the week, from Monday 00:00.
fn local_minute_of_week() -> u32 {
    // SAFETY: time(NULL) and localtime_r into a zeroed struct we own.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm
    };
    let weekday = (tm.tm_wday as u32 + 6) % 7;
    weekday * DAY + tm.tm_hour as u32 * 60 + tm.tm_min as u32
}

/// How long uploads hold back for a read before they go on anyway (a long stream of reads
/// must not stop them for good).
const READER_FIRST_AT_MOST: Duration = Duration::from_secs(30);

/// The link as the client paces it: the limit (followed through its timetable), a bucket per
/// direction, the cold reads waiting, and the bytes moved (for the rates `cessfs status` shows).
pub struct Pace {
    limit: Mutex<Bwlimit>,
    applied: Mutex<Option<(u32, Limit)>>,
    up: Bucket,
    down: Bucket,
    readers: AtomicUsize,
    /// Cold reads that ever waited on the network (to see one that came and went).
    reads_started: AtomicU64,
    /// Fragments uploads send at once now (their window).
    push_window: AtomicUsize,
    no_readers: Notify,
    sent: AtomicU64,
    received: AtomicU64,
    samples: Mutex<std::collections::VecDeque<(Instant, u64, u64)>>,
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pace").field("limit", &self.limit()).finish_non_exhaustive()
    }
}

/// A cold read waiting on the network; uploads start no new fragment while one is alive.
pub struct Reading<'a>(&'a Pace);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if self.0.readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.no_readers.notify_waiters();
        }
    }
}

/// Bytes a second each way, over the last few seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// To miners.
    pub up: f64,
    /// From miners.
    pub down: f64,
}

/// The span rates are measured over.
const RATE_SPAN: Duration = Duration::from_secs(5);

impl Pace {
    /// Pacing by `limit`.
    pub fn new(limit: Bwlimit) -> Pace {
        let pace = Pace {
            limit: Mutex::new(Bwlimit::default()),
            applied: Mutex::new(None),
            up: Bucket::new(None),
            down: Bucket::new(None),
            readers: AtomicUsize::new(0),
            reads_started: AtomicU64::new(0),
            push_window: AtomicUsize::new(0),
            no_readers: Notify::new(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            samples: Mutex::new(std::collections::VecDeque::new()),
        };
        pace.set_limit(limit);
        pace
    }

    /// Changes the limit from now on (`cessfs bwlimit`).
    pub fn set_limit(&self, limit: Bwlimit) {
        *lock(&self.limit) = limit;
        *lock(&self.applied) = None;
        self.follow_timetable();
    }

    /// The limit as set.
    pub fn limit(&self) -> Bwlimit {
        lock(&self.limit).clone()
    }

    /// The limit in force now.
    pub fn current(&self) -> Limit {
        self.follow_timetable()
    }

    /// Applies the timetable's entry for this minute, if it changed.
    fn follow_timetable(&self) -> Limit {
        let minute = local_minute_of_week();
        let mut applied = lock(&self.applied);
        if let Some((m, l)) = *applied
            && m == minute
        {
            return l;
        }
        let now = lock(&self.limit).at(minute);
        if applied.is_none_or(|(_, l)| l != now) {
            self.up.set_rate(now.up);
            self.down.set_rate(now.down);
        }
        *applied = Some((minute, now));
        now
    }

    /// Waits until `n` bytes may go up, and counts them.
    pub fn reserve_up(&self, n: usize) -> Option<Instant> {
        self.follow_timetable();
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.sample();
        self.up.reserve(n)
    }

    /// Waits until `n` bytes received may be taken, and counts them.
    pub async fn down(&self, n: usize) {
        self.follow_timetable();
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        self.sample();
        self.down.pass(n).await;
    }

    fn sample(&self) {
        let mut samples = lock(&self.samples);
        let now = Instant::now();
        if samples.back().is_some_and(|(t, _, _)| now.duration_since(*t) < RATE_SPAN / 8) {
            return;
        }
        samples.push_back((now, self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed)));
        while samples.len() > 1 && now.duration_since(samples[1].0) >= RATE_SPAN {
            samples.pop_front();
        }
    }

    /// The rates over the last few seconds (bytes handed to the link and taken from it).
    pub fn rates(&self) -> Rates {
        let samples = lock(&self.samples);
        let now = Instant::now();
        // The newest sample at least a span old (bytes since then are the span's); none moved
        // within the span if the newest sample is older than that.
        if samples.back().is_none_or(|(t, _, _)| now.duration_since(*t) >= RATE_SPAN) {
            return Rates::default();
        }
        let Some(&(since, up, down)) = samples.iter().rev().find(|(t, _, _)| now.duration_since(*t) >= RATE_SPAN)
        else {
            // Younger than a span: from the first sample.
            let Some(&(since, up, down)) = samples.front() else { return Rates::default() };
            let span = now.duration_since(since).max(RATE_SPAN / 8).as_secs_f64();
            return Rates {
                up: self.sent.load(Ordering::Relaxed).saturating_sub(up) as f64 / span,
                down: self.received.load(Ordering::Relaxed).saturating_sub(down) as f64 / span,
            };
        };
        let span = now.duration_since(since).as_secs_f64();
        Rates {
            up: self.sent.load(Ordering::Relaxed).saturating_sub(up) as f64 / span,
            down: self.received.load(Ordering::Relaxed).saturating_sub(down) as f64 / span,
        }
    }

    /// A cold read starts waiting on the network.
    pub fn reading(&self) -> Reading<'_> {
        self.readers.fetch_add(1, Ordering::AcqRel);
        self.reads_started.fetch_add(1, Ordering::Relaxed);
        Reading(self)
    }

    /// Whether a cold read waits on the network now.
    pub fn readers_waiting(&self) -> bool {
        self.readers.load(Ordering::Acquire) > 0
    }

    /// Notes how many fragments uploads send at once now.
    pub fn set_push_window(&self, fragments: usize) {
        self.push_window.store(fragments, Ordering::Relaxed);
    }

    /// How many fragments uploads send at once now (0 before uploads ran).
    pub fn push_window(&self) -> usize {
        self.push_window.load(Ordering::Relaxed)
    }

    /// How many cold reads ever started waiting on the network.
    pub fn reads_started(&self) -> u64 {
        self.reads_started.load(Ordering::Relaxed)
    }

    /// Waits, before an upload starts a fragment, until no cold read waits (at most 30 s).
    pub async fn reader_first(&self) {
        let deadline = Instant::now() + READER_FIRST_AT_MOST;
        loop {
            let idle = self.no_readers.notified();
            if self.readers.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rates_are_bytes_as_rclone_writes_them() {
        assert_eq!(rate("10M"), Ok(Some(10 * MIB)));
        assert_eq!(rate("512k"), Ok(Some(512 << 10)));
        assert_eq!(rate("512"), Ok(Some(512 << 10)), "a bare number is KiB/s");
        assert_eq!(rate("1.5G"), Ok(Some(3 << 29)));
        assert_eq!(rate("100B"), Ok(Some(100)));
        assert_eq!(rate("off"), Ok(None));
        assert_eq!(rate("0"), Ok(None), "0 is off, as in rclone");
        for bad in ["", "ten", "10X", "-1M", "+1M", "1..2M"] {
            assert!(rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_fixed_limit_and_up_down_pairs() {
        let l: Bwlimit = "10M".parse().unwrap();
        assert_eq!(l.at(0), Limit { up: Some(10 * MIB), down: Some(10 * MIB) });
        let l: Bwlimit = "2M:off".parse().unwrap();
        assert_eq!(l.at(5000), Limit { up: Some(2 * MIB), down: None });
        assert!(!l.is_timetable());
    }

    #[test]
    fn a_daily_timetable_wraps_around_midnight() {
        let semicolons: Bwlimit = "08:00,2M;19:00,10M;23:00,off".parse().unwrap();
        let l: Bwlimit = "08:00,2M 19:00,10M 23:00,off".parse().unwrap();
        assert_eq!(
            (0..super::WEEK).map(|m| semicolons.at(m)).collect::<Vec<_>>(),
            (0..super::WEEK).map(|m| l.at(m)).collect::<Vec<_>>()
        );
        let at = |h: u32, m: u32| l.at(h * 60 + m);
        assert_eq!(at(7, 59).up, None, "before 08:00 the 23:00 entry of the day before holds");
        assert_eq!(at(8, 0).up, Some(2 * MIB));
        assert_eq!(at(18, 59).down, Some(2 * MIB));
        assert_eq!(at(19, 0).up, Some(10 * MIB));
        assert_eq!(at(23, 30).up, None);
        // Thursday noon, as on Monday.
        assert_eq!(l.at(3 * DAY + 12 * 60).up, Some(2 * MIB));
    }

    #[test]
    fn days_and_their_wrap_over_the_week() {
        let l: Bwlimit = "Mon-00:00,512 Fri-23:59,10M:1M Sat-10:00,1M Sun-20:00,off".parse().unwrap();
        assert_eq!(l.at(0).up, Some(512 << 10));
        assert_eq!(l.at(4 * DAY + 23 * 60 + 59), Limit { up: Some(10 * MIB), down: Some(MIB) });
        assert_eq!(l.at(5 * DAY + 9 * 60).up, Some(10 * MIB), "Saturday 09:00: Friday's entry holds");
        assert_eq!(l.at(6 * DAY + 21 * 60).up, None);
        let l: Bwlimit = "Tue-08:00,1M".parse().unwrap();
        assert_eq!(l.at(0).up, Some(MIB), "before the first entry the week's last holds");
    }

    #[test]
    fn bad_limits_say_what_and_where() {
        let e = "08:00,2M 25:00,off".parse::<Bwlimit>().unwrap_err();
        assert!(e.contains("entry 2") && e.contains("25:00"), "{e}");
        let e = "08:00,2M 19:00,fast".parse::<Bwlimit>().unwrap_err();
        assert!(e.contains("entry 2") && e.contains("\"fast\" is not a rate"), "{e}");
        let e = "Xyz-08:00,1M".parse::<Bwlimit>().unwrap_err();
        assert!(e.contains("not a day"), "{e}");
        assert!("08:00 2M".parse::<Bwlimit>().is_err());
        assert!("8:00,1M".parse::<Bwlimit>().is_err());
        assert!("+8:00,1M".parse::<Bwlimit>().is_err());
        assert!("08:00,1M 08:00,2M".parse::<Bwlimit>().is_err());
        assert!("".parse::<Bwlimit>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_passes_its_rate_and_follows_a_change() {
        let b = Bucket::new(Some(1000));
        let start = Instant::now();
        b.pass(1000).await;
        b.pass(1000).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        b.set_rate(None);
        b.pass(1 << 30).await;
        assert!(b.reserve(1).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn rates_are_over_the_last_seconds_and_fall_to_zero() {
        let pace = Pace::new(Bwlimit::default());
        for _ in 0..10 {
            let _ = pace.reserve_up(100_000);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let up = pace.rates().up;
        assert!((80_000.0..=125_000.0).contains(&up), "{up}");
        tokio::time::sleep(RATE_SPAN).await;
        assert_eq!(pace.rates(), Rates::default(), "nothing moved in the last span");
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_wait_for_a_reader_and_go_on_after_it() {
        let pace = std::sync::Arc::new(Pace::new(Bwlimit::default()));
        let reading = pace.reading();
        let waiter = {
            let pace = pace.clone();
            tokio::spawn(async move { pace.reader_first().await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "an upload waits while a read does");
        drop(reading);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        // A read that never ends holds uploads back 30 s at most.
        let _forever = pace.reading();
        let start = Instant::now();
        pace.reader_first().await;
        assert_eq!(start.elapsed(), READER_FIRST_AT_MOST);
    }
}
