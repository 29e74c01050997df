//! The devnet's link model: what a person's home link does to the miner traffic, so that the
//! client can be tried on it over loopback. One token bucket per direction shared by every node
//! (a home router's uplink and downlink), a delay per request (the round trip), and per-node
//! overrides (a slow, trickling or stalling miner). Bytes pass in 64 KiB steps, so progress shows
//! at the link's rate; a request body the node reads slower than it is sent backs up in TCP, as
//! over a real link. Off unless set (`cessfs devnet --link`, `devnet_link`).

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pace::Bucket;

/// How many bytes pass at a time.
pub const STEP: usize = 64 << 10;

/// A shaped node's kernel receive buffer (the kernel doubles it): what a client sent and the
/// node has not read yet stays small, as a router's queue is, so a client sees its bytes leave
/// at the link's rate, not at loopback's.
pub const RECEIVE_BUFFER: u32 = 64 << 10;

/// A link as set: rates in bytes per second (`None`: not limited) and a round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Client to nodes (the person's upstream).
    pub up: Option<u64>,
    /// Nodes to client (downstream).
    pub down: Option<u64>,
    /// Added to every request.
    pub rtt: Duration,
}

/// A rate in bits per second as people write it (`20M`, `512k`, `1G`, `100000`): bytes per second.
fn bit_rate(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let scale = match unit.to_ascii_lowercase().trim_end_matches("bit").trim_end_matches("bps") {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        _ => return Err(format!("{s:?}: a rate is bits per second, as 20M, 512k or 1G")),
    };
    let bits = digits.parse::<f64>().map_err(|_| format!("{s:?}: a rate is a number, as 20M"))? * scale;
    if bits < 8.0 {
        return Err(format!("{s:?}: a rate needs at least 8 bits per second"));
    }
    Ok((bits / 8.0) as u64)
}

/// A duration as `60ms`, `1s` or `1.5s`.
fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: a round trip is a time, as 60ms or 1s");
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?);
    let n = number.parse::<f64>().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

impl FromStr for LinkSpec {
    type Err = String;

    /// `up=20M,down=100M,rtt=60ms`, any of them.
    fn from_str(s: &str) -> Result<LinkSpec, String> {
        let mut spec = LinkSpec::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?}: up=, down= or rtt="))?;
            match key {
                "up" => spec.up = Some(bit_rate(value)?),
                "down" => spec.down = Some(bit_rate(value)?),
                "rtt" => spec.rtt = duration(value)?,
                _ => return Err(format!("{key:?}: a link has up=, down= and rtt=")),
            }
        }
        Ok(spec)
    }
}

/// One node's own link, on top of the shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeLink {
    /// Its own rate both ways, in bytes per second (a slow or trickling miner).
    Rate(u64),
    /// Takes connections and never moves a byte.
    Stall,
}

/// `3=1M` or `5=stall`: node index (1-based) and its link.
pub fn node_link(s: &str) -> Result<(usize, NodeLink), String> {
    let (index, link) = s.split_once('=').ok_or_else(|| format!("{s:?}: NODE=RATE or NODE=stall, as 3=1M"))?;
    let index =
        index.parse::<usize>().ok().filter(|i| *i > 0).ok_or_else(|| format!("{index:?}: a node number from 1"))?;
    let link = if link == "stall" { NodeLink::Stall } else { NodeLink::Rate(bit_rate(link)?) };
    Ok((index, link))
}

/// A bucket of `rate` bytes a second.
fn bucket(rate: u64) -> Bucket {
    Bucket::new(Some(rate.max(1)))
}

/// A link as it runs: the shared buckets, or a node's own.
pub struct Link {
    up: Option<Bucket>,
    down: Option<Bucket>,
    rtt: Duration,
    stalls: bool,
}

impl Link {
    /// The shared link of `spec`.
    pub fn shared(spec: &LinkSpec) -> Link {
        Link { up: spec.up.map(bucket), down: spec.down.map(bucket), rtt: spec.rtt, stalls: false }
    }

    /// A node's own link.
    pub fn own(link: NodeLink) -> Link {
        match link {
            NodeLink::Rate(rate) => {
                Link { up: Some(bucket(rate)), down: Some(bucket(rate)), rtt: Duration::ZERO, stalls: false }
            }
            NodeLink::Stall => Link { up: None, down: None, rtt: Duration::ZERO, stalls: true },
        }
    }

    /// Waits out a request's round trip, or for good on a stalling link.
    pub async fn request(&self) {
        if self.stalls {
            std::future::pending::<()>().await;
        }
        if !self.rtt.is_zero() {
            tokio::time::sleep(self.rtt).await;
        }
    }

    /// Waits until `n` bytes from the client have passed.
    pub async fn upload(&self, n: usize) {
        if let Some(b) = &self.up {
            b.pass(n).await;
        }
    }

    /// Waits until `n` bytes to the client have passed.
    pub async fn download(&self, n: usize) {
        if let Some(b) = &self.down {
            b.pass(n).await;
        }
    }
}

/// A response body of `data` sent over `links`, [`STEP`] bytes at a time; `sent` is told of each
/// step as it goes (a client that hangs up mid-way did not get the rest).
pub fn shaped(
    data: bytes::Bytes,
    links: Vec<std::sync::Arc<Link>>,
    sent: impl Fn(usize) + Clone + Send + 'static,
) -> crate::http::Body {
    use http_body_util::BodyExt;
    let steps = futures_util::stream::unfold((data, 0), move |(data, at)| {
        let (links, sent) = (links.clone(), sent.clone());
        async move {
            if at >= data.len() {
                return None;
            }
            let end = (at + STEP).min(data.len());
            for link in &links {
                link.download(end - at).await;
            }
            sent(end - at);
            let frame = hyper::body::Frame::data(data.slice(at..end));
            Some((Ok::<_, std::convert::Infallible>(frame), (data, end)))
        }
    });
    http_body_util::StreamBody::new(steps).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_written_as_people_write_rates() {
        let spec: LinkSpec = "up=20M,down=100M,rtt=60ms".parse().unwrap();
        assert_eq!(spec, LinkSpec { up: Some(2_500_000), down: Some(12_500_000), rtt: Duration::from_millis(60) });
        assert_eq!("down=512k".parse::<LinkSpec>().unwrap().down, Some(64_000));
        assert_eq!("rtt=1.5s".parse::<LinkSpec>().unwrap().rtt, Duration::from_millis(1500));
        for bad in ["up=fast", "up=20X", "speed=1M", "rtt=60", "up=0"] {
            assert!(bad.parse::<LinkSpec>().is_err(), "{bad} is refused");
        }
        assert_eq!(node_link("3=1M").unwrap(), (3, NodeLink::Rate(125_000)));
        assert_eq!(node_link("5=stall").unwrap(), (5, NodeLink::Stall));
        assert!(node_link("0=1M").is_err() && node_link("3").is_err());
    }
}
