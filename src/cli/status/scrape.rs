//! Outcomes from a running worker's `/metrics`: the counters `nekhebet_envelopes_total{outcome}`
//! and `nekhebet_rejected_total{reason}` scraped over plain HTTP, and their increase over a
//! window of samples (up to a minute).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::store::Outcome;
use crate::telemetry::names;

/// How far back the outcomes reach.
pub const WINDOW: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(2);

/// Counter values of one scrape: series (`outcome=stored`, `reason=…`) → value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub outcomes: BTreeMap<String, f64>,
    pub rejected: BTreeMap<String, f64>,
}

/// What the worker did during `window_seconds` (increase of its counters).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcomes {
    pub window_seconds: f64,
    /// outcome → messages (stored, duplicate, redelivered, replay, rejected).
    pub counts: BTreeMap<String, u64>,
    /// reason → rejected messages.
    pub rejected_by_reason: BTreeMap<String, u64>,
}

/// Every outcome, in the order of the worker's report: the stores' four, then `rejected`.
pub fn outcome_names() -> impl Iterator<Item = &'static str> {
    Outcome::ALL
        .into_iter()
        .map(Outcome::as_str)
        .chain(["rejected"])
}

/// `http://host:port/path` split for a GET (plain HTTP: `/metrics` is served without TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host_port: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            anyhow::anyhow!(
                "--metrics {url:?}: expected http://host:port/metrics (the worker serves plain HTTP)"
            )
        })?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if host_port.is_empty() {
            anyhow::bail!("--metrics {url:?}: no host");
        }
        Ok(Target {
            host_port: host_port.to_string(),
            path: path.to_string(),
        })
    }
}

/// Scrapes one worker and keeps a minute of samples.
pub struct Scraper {
    target: Target,
    url: String,
    samples: VecDeque<(Instant, Counters)>,
}

impl Scraper {
    pub fn new(url: &str) -> anyhow::Result<Scraper> {
        Ok(Scraper {
            target: Target::parse(url)?,
            url: url.to_string(),
            samples: VecDeque::new(),
        })
    }

    /// Takes a sample; returns the increase since the oldest sample of the last minute (`None`
    /// until there are two).
    pub async fn sample(&mut self) -> anyhow::Result<Option<Outcomes>> {
        let text = tokio::time::timeout(TIMEOUT, get(&self.target))
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within {TIMEOUT:?}", self.url))?
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.url))?;
        let now = Instant::now();
        self.samples.push_back((now, parse(&text)));
        // Keep one sample at or before the window's start, so the window is as full as it can be.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
        Ok(self.outcomes())
    }

    fn outcomes(&self) -> Option<Outcomes> {
        let ((t0, first), (t1, last)) = (self.samples.front()?, self.samples.back()?);
        if self.samples.len() < 2 {
            return None;
        }
        Some(Outcomes {
            window_seconds: t1.duration_since(*t0).as_secs_f64(),
            // Every outcome, 0 where the worker has not counted one yet: stable JSON fields.
            counts: outcome_names()
                .map(|o| (o.to_string(), 0))
                .chain(increase(&first.outcomes, &last.outcomes))
                .collect(),
            rejected_by_reason: increase(&first.rejected, &last.rejected),
        })
    }
}

/// Each series' increase; a counter that went down (the worker restarted) counts from zero.
fn increase(first: &BTreeMap<String, f64>, last: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    last.iter()
        .map(|(k, v)| {
            let before = first.get(k).copied().unwrap_or(0.0);
            let d = if *v >= before { v - before } else { *v };
            (k.clone(), d.round() as u64)
        })
        .collect()
}

/// The two counters' series from Prometheus text (other lines ignored).
pub fn parse(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let (map, label) = match name {
            n if n == names::ENVELOPES => (&mut c.outcomes, "outcome"),
            n if n == names::REJECTED => (&mut c.rejected, "reason"),
            _ => continue,
        };
        if let Some(v) = label_value(labels, label) {
            *map.entry(v.to_string()).or_default() += value;
        }
    }
    c
}

/// The value of `label` in `a="x",b="y"` (our label values hold no quotes or commas).
fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == label).then(|| v.trim().trim_matches('"'))
    })
}

/// HTTP/1.0 GET: the body of a 200 answer.
async fn get(t: &Target) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(&t.host_port).await?;
    s.write_all(
        format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            t.path, t.host_port
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        anyhow::bail!("HTTP {status}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_label_and_summed() {
        let text = "# HELP nekhebet_envelopes_total x\n\
            nekhebet_envelopes_total{outcome=\"stored\"} 10\n\
            nekhebet_envelopes_total{outcome=\"rejected\"} 2\n\
            nekhebet_rejected_total{reason=\"key_id_mismatch\",x=\"y\"} 2\n\
            nekhebet_envelopes_totally{outcome=\"stored\"} 99\n\
            nekhebet_batches_committed_total 4\n";
        let c = parse(text);
        assert_eq!(c.outcomes.get("stored"), Some(&10.0));
        assert_eq!(c.outcomes.get("rejected"), Some(&2.0));
        assert_eq!(c.outcomes.len(), 2);
        assert_eq!(c.rejected.get("key_id_mismatch"), Some(&2.0));
    }

    #[test]
    fn increases_start_from_zero_after_a_restart() {
        let first = BTreeMap::from([("stored".to_string(), 100.0), ("replay".to_string(), 3.0)]);
        let last = BTreeMap::from([
            ("stored".to_string(), 150.0),
            ("replay".to_string(), 1.0),
            ("duplicate".to_string(), 2.0),
        ]);
        let d = increase(&first, &last);
        assert_eq!(d["stored"], 50);
        assert_eq!(d["replay"], 1);
        assert_eq!(d["duplicate"], 2);
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("http://127.0.0.1:9187").unwrap(),
            Target {
                host_port: "127.0.0.1:9187".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            Target::parse("http://w:1/x/metrics").unwrap().path,
            "/x/metrics"
        );
        assert!(Target::parse("https://w:1/metrics").is_err());
        assert!(Target::parse("http:///metrics").is_err());
    }
}
