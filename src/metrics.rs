//! Prometheus metrics: counters and histograms that the other modules bump as they work (always,
//! it costs an atomic add or an uncontended lock), served in the text exposition format on a
//! loopback address when the mount is given `--metrics`. Figures that are states rather than
//! events (files per upload state, cache size) are read when scraped, by [`Gauges`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Response, StatusCode};

use crate::http::Server;

/// A counter without labels.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter { name, help, value: AtomicU64::new(0) }
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let _ = writeln!(out, "{} {}", self.name, self.value.load(Ordering::Relaxed));
    }
}

/// Counters of one name, one per value of a label.
pub struct Family {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: Mutex<BTreeMap<String, u64>>,
}

impl Family {
    const fn new(name: &'static str, help: &'static str, label: &'static str) -> Family {
        Family { name, help, label, values: Mutex::new(BTreeMap::new()) }
    }

    /// Adds `n` to the counter whose label is `value`.
    pub fn add(&self, value: &str, n: u64) {
        let mut values = crate::sync::lock(&self.values);
        match values.get_mut(value) {
            Some(v) => *v += n,
            None => {
                values.insert(value.to_string(), n);
            }
        }
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (value, n) in crate::sync::lock(&self.values).iter() {
            let _ = writeln!(out, "{}{{{}=\"{}\"}} {n}", self.name, self.label, escape(value));
        }
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Buckets {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Latency histograms of one name, one per value of a label.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: Mutex<BTreeMap<&'static str, Buckets>>,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str, label: &'static str) -> Histogram {
        Histogram { name, help, label, values: Mutex::new(BTreeMap::new()) }
    }

    /// Records one observation of `took` for label `value`.
    pub fn observe(&self, value: &'static str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut values = crate::sync::lock(&self.values);
        let b = values.entry(value).or_default();
        for (count, bound) in b.counts.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *count += 1;
            }
        }
        b.count += 1;
        b.sum += secs;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let (name, label) = (self.name, self.label);
        for (value, b) in crate::sync::lock(&self.values).iter() {
            for (count, bound) in b.counts.iter().zip(BUCKETS) {
                let _ = writeln!(out, "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}", b.count);
            let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", b.sum);
            let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", b.count);
        }
    }
}

/// Fragment bytes sent to miners (upload throughput).
pub static PUSHED_BYTES: Counter =
    Counter::new("cessfs_pushed_bytes_total", "Fragment bytes stored on miners (12 fragments carry 3 bytes per byte).");
/// Fragments stored, per miner.
pub static FRAGMENTS_PUSHED: Family =
    Family::new("cessfs_fragment_pushes_total", "Fragments a miner accepted, by miner account.", "miner");
/// Fragment pushes that failed, per miner.
pub static FRAGMENT_PUSH_FAILURES: Family = Family::new(
    "cessfs_fragment_push_failures_total",
    "Columns a miner failed to take (refused, timed out, unreachable), by miner account.",
    "miner",
);
/// Fragments fetched and verified, per miner.
pub static FRAGMENTS_FETCHED: Family =
    Family::new("cessfs_fragment_fetches_total", "Fragments fetched and verified, by miner account.", "miner");
/// Fragment fetches that failed or were corrupt, per miner.
pub static FRAGMENT_FETCH_FAILURES: Family = Family::new(
    "cessfs_fragment_fetch_failures_total",
    "Fragment fetches that failed or returned bytes with the wrong hash, by miner account.",
    "miner",
);
/// Bytes of files that reached `active`.
pub static UPLOADED_BYTES: Counter =
    Counter::new("cessfs_uploaded_bytes_total", "Bytes of files that reached the active state.");
/// Files that reached `active`.
pub static UPLOADED_FILES: Counter =
    Counter::new("cessfs_uploaded_files_total", "Files that reached the active state.");
/// Bytes of trees written (roots, directory blobs new in them; whole snapshots).
pub static TREE_BYTES_WRITTEN: Counter = Counter::new(
    "cessfs_tree_bytes_written_total",
    "Bytes of trees written to commits and tree files: roots and the directory blobs each wrote new.",
);
/// Bytes read through the daemon.
pub static READ_BYTES: Counter = Counter::new(
    "cessfs_read_bytes_total",
    "Bytes applications read through the daemon (reads by kernel passthrough are not seen).",
);
/// Bytes of segments fetched from miners (read throughput from the network).
pub static FETCHED_BYTES: Counter =
    Counter::new("cessfs_fetched_bytes_total", "Bytes of file segments rebuilt from miners' fragments.");
/// Reads by whether their bytes were all cached.
pub static CACHE_READS: Family = Family::new(
    "cessfs_cache_reads_total",
    "Reads through the daemon: hit when every byte was local, miss when segments were fetched.",
    "result",
);
/// Bytes that moved for nothing, up or down.
pub static WASTED_BYTES: Family = Family::new(
    "cessfs_wasted_bytes_total",
    "Bytes moved to or from miners by requests that failed, were refused, stalled, arrived corrupt or were \
     given up part way (a column replaced, a hedge not needed), by direction (up, down).",
    "direction",
);
/// Requests that stopped moving, up or down.
pub static STALLED_REQUESTS: Family = Family::new(
    "cessfs_stalled_requests_total",
    "Miner requests given up because they moved less than the floor rate over the stall window, by direction.",
    "direction",
);
/// Bytes of fragments asked beside a slow one.
pub static HEDGED_BYTES: Counter = Counter::new(
    "cessfs_hedged_bytes_total",
    "Bytes fetched for fragments asked beside one slower than its share of the link (used or not).",
);
/// Chain call latency, per call.
pub static CHAIN_CALL_SECONDS: Histogram =
    Histogram::new("cessfs_chain_call_seconds", "Latency of chain calls (storage reads and transactions).", "call");
/// Tree snapshot builds, per step: the walk while commits go on, the rounds catching up with
/// them, and the last round, while commits wait (what a snapshot costs writers).
pub static SNAPSHOT_BUILD_SECONDS: Histogram = Histogram::new(
    "cessfs_snapshot_build_seconds",
    "Tree snapshot builds, per step (held: commits wait meanwhile).",
    "step",
);
/// Chain calls that failed, per call.
pub static CHAIN_CALL_ERRORS: Family =
    Family::new("cessfs_chain_call_errors_total", "Chain calls that failed, by call.", "call");
/// FUSE requests cessfs does not implement, per operation.
pub static FUSE_UNSUPPORTED: Family = Family::new(
    "cessfs_fuse_unsupported_total",
    "Kernel requests answered ENOSYS (not implemented), by FUSE operation.",
    "op",
);

/// Figures read at each scrape.
pub trait Gauges: Send + Sync {
    /// Appends gauges with [`gauge`].
    fn render(&self, out: &mut String);
}

/// Appends a gauge `name` with one line per `(label value, value)`, labelled `label`, or one
/// unlabelled line when `label` is empty.
pub fn gauge(out: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    header(out, name, help, "gauge");
    for (value, n) in values {
        if label.is_empty() {
            let _ = writeln!(out, "{name} {n}");
        } else {
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(value));
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Every metric, in the text exposition format.
pub fn render(gauges: &dyn Gauges) -> String {
    let mut out = String::new();
    gauges.render(&mut out);
    for c in [
        &PUSHED_BYTES,
        &UPLOADED_BYTES,
        &UPLOADED_FILES,
        &TREE_BYTES_WRITTEN,
        &READ_BYTES,
        &FETCHED_BYTES,
        &HEDGED_BYTES,
    ] {
        c.render(&mut out);
    }
    for f in [
        &FRAGMENTS_PUSHED,
        &FRAGMENT_PUSH_FAILURES,
        &FRAGMENTS_FETCHED,
        &FRAGMENT_FETCH_FAILURES,
        &CACHE_READS,
        &WASTED_BYTES,
        &STALLED_REQUESTS,
        &CHAIN_CALL_ERRORS,
        &FUSE_UNSUPPORTED,
    ] {
        f.render(&mut out);
    }
    CHAIN_CALL_SECONDS.render(&mut out);
    SNAPSHOT_BUILD_SECONDS.render(&mut out);
    out
}

/// Serves [`render`] at `GET /metrics` on `addr`.
pub async fn serve(addr: SocketAddr, gauges: Arc<dyn Gauges>) -> anyhow::Result<Server> {
    let server = Server::start(addr, move |req| {
        let gauges = gauges.clone();
        async move {
            let (status, body) = match req.uri().path() {
                "/metrics" => (StatusCode::OK, render(gauges.as_ref())),
                _ => (StatusCode::NOT_FOUND, "metrics are at /metrics\n".to_string()),
            };
            Response::builder()
                .status(status)
                .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                .body(crate::http::whole(body))
                .expect("a valid response")
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_families_escape_labels() {
        let h = Histogram::new("t_seconds", "help", "call");
        h.observe("file", Duration::from_millis(30));
        h.observe("file", Duration::from_secs(3));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("t_seconds_bucket{call=\"file\",le=\"0.025\"} 0"), "{out}");
        assert!(out.contains("t_seconds_bucket{call=\"file\",le=\"0.05\"} 1"), "{out}");
        assert!(out.contains("t_seconds_bucket{call=\"file\",le=\"5\"} 2"), "{out}");
        assert!(out.contains("t_seconds_bucket{call=\"file\",le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("t_seconds_count{call=\"file\"} 2"), "{out}");
        let f = Family::new("t_total", "help", "op");
        f.add("a\"b", 2);
        f.add("a\"b", 3);
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("# TYPE t_total counter\nt_total{op=\"a\\\"b\"} 5\n"), "{out}");
    }
}
