//! A real Prometheus against a real worker (issue 5, "deploy/" validation).
//!
//! Starts `nekhebet-store ingest` on a fresh topic and database, and Debian's `prometheus` on
//! loopback (random port, temporary TSDB) with `deploy/prometheus/test-config/`: 1 s scrapes and
//! rule evaluation, a copy of the `NekhebetDeadLetterRateHigh` alert with a tiny threshold and no
//! `for`, plus the production rules of `deploy/prometheus/alerts.yml`. Then publishes waves of
//! envelopes (duplicates, replays and poison among them) and asserts through Prometheus's HTTP API
//! that:
//! - the DLQ alert fires (`/api/v1/alerts`);
//! - the main series exist, and the scraped counters equal what the producer published, outcome
//!   by outcome (every rejection also counted by reason and published to the DLQ);
//! - every rule, production ones included, evaluates without error (`/api/v1/rules`);
//! - every expression of the Grafana dashboard is accepted and, apart from series that only exist
//!   after failures (retries, DLQ failures, LMDB healing…), returns data.
//!
//! Needs the local services (`scripts/services up`, `source .local/services.env`) and the
//! `prometheus` binary (Debian's `prometheus` package; `scripts/check-deploy` installs it, or set
//! `NEKHEBET_PROMETHEUS_BIN`). Without the binary the test is skipped with a message — except
//! when `CI` is set, where it fails.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nekhebet-store");
const JOB: &str = "nekhebet-store";
const DLQ_ALERT: &str = "NekhebetDeadLetterRateHigh";
/// What Grafana's `$__rate_interval` becomes here (scrapes every second).
const RATE_INTERVAL: &str = "1m";

/// Messages per producer wave.
const WAVE: u64 = 100;

/// Messages by expected outcome (from the producer's reports) or by counted outcome (Prometheus).
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    sent: i64,
    stored: i64,
    duplicate: i64,
    replay: i64,
    rejected: i64,
}

impl Expected {
    fn add(&mut self, r: &nekhebet_store::dev::produce::ProduceReport) {
        self.sent += r.sent as i64;
        self.stored += r.valid as i64;
        self.duplicate += r.duplicates as i64;
        self.replay += r.replays as i64;
        self.rejected += r.poison as i64;
    }
}

// --------------------------------------------------------------------------- processes

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped; its output goes to a log.
struct Proc {
    name: &'static str,
    child: RefCell<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name,
            child: RefCell::new(child),
            log,
        }
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.borrow_mut().try_wait().ok().flatten()
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "---- last {} lines of {} ({}) ----\n{}\n----",
            all.len() - from,
            self.name,
            self.log.display(),
            all[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // Graceful first: the worker commits and leaves its group, Prometheus closes its TSDB.
        let pid = self.child.borrow().id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn find_prometheus() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NEKHEBET_PROMETHEUS_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.into_iter()
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// --------------------------------------------------------------------------- HTTP

/// A minimal HTTP/1.0 GET (no client library among the dependencies): status and body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prometheus's HTTP API.
struct Prom {
    addr: String,
}

impl Prom {
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(&self.addr, path).map_err(|e| format!("GET {path}: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "GET {path}: HTTP {status}, {}: {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(v["data"].clone())
    }

    /// Instant query: the result vector (or an error naming Prometheus's complaint).
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(q)))?;
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                Ok(data["result"].as_array().cloned().unwrap_or_default())
            }
            // scalar / string: one value
            _ => Ok(vec![data["result"].clone()]),
        }
    }

    /// The value of a query returning one sample, if any.
    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q).ok()?;
        let v = r.first()?;
        v["value"][1].as_str()?.parse().ok()
    }

    fn alert_state(&self, name: &str) -> Option<String> {
        let data = self.api("/api/v1/alerts").ok()?;
        let alerts = data["alerts"].as_array()?;
        // "firing" wins over "pending" (the production copy of the rule is only ever pending here)
        let states: Vec<&str> = alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .filter_map(|a| a["state"].as_str())
            .collect();
        states
            .iter()
            .find(|s| **s == "firing")
            .or(states.first())
            .map(|s| s.to_string())
    }
}

/// `series` restricted to the worker's scrape job.
fn with_job(series: &str) -> String {
    match series.strip_suffix('}') {
        Some(open) => format!("{open}, job=\"{JOB}\"}}"),
        None => format!("{series}{{job=\"{JOB}\"}}"),
    }
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
    diag: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}\n{}", diag());
}

// --------------------------------------------------------------------------- dashboard

/// Every PromQL expression of the dashboard: (panel title, refId, expression with Grafana's
/// variables replaced the way check-deploy does).
fn dashboard_exprs() -> Vec<(String, String, String)> {
    let path = repo_path("deploy/grafana/dashboards/nekhebet.json");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("dashboard JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    let e = e
                        .replace("$__rate_interval", RATE_INTERVAL)
                        .replace("$__interval", "15s")
                        .replace("$__range", "1h")
                        .replace("${instance:regex}", ".*")
                        .replace("${instance}", ".*")
                        .replace("$instance", ".*");
                    out.push((
                        p["title"].as_str().unwrap_or("?").to_string(),
                        t["refId"].as_str().unwrap_or("?").to_string(),
                        e,
                    ));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Series that exist only after something went wrong (or never in this scenario): a dashboard
/// expression over them may legitimately return nothing here.
const ONLY_AFTER_FAILURES: &[&str] = &[
    "nekhebet_retries_total",
    "nekhebet_dlq_failures_total",
    "nekhebet_consumer_paused",
    "nekhebet_lmdb_healed_total",
    "nekhebet_hybrid_lmdb_fallbacks_total",
    "nekhebet_messages_abandoned_total",
    "outcome=\"redelivered\"",
    "nekhebet_read_check_failures_total",
    "nekhebet_http_connections_cut_total",
];

// --------------------------------------------------------------------------- the test

#[test]
fn prometheus_scrapes_a_worker_evaluates_the_rules_and_fires_the_dlq_alert() {
    let Some(prometheus) = find_prometheus() else {
        if std::env::var_os("CI").is_some() {
            panic!("the `prometheus` binary is missing (Debian package `prometheus`; scripts/test installs it) and CI is set: this test must run in CI");
        }
        eprintln!("SKIPPED prometheus_scrapes_a_worker…: no `prometheus` binary on PATH (apt-get install prometheus, or scripts/check-deploy, or set NEKHEBET_PROMETHEUS_BIN)");
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let db = rt.block_on(common::pg::TestDb::new());
    let dir = tempfile::tempdir().expect("temp dir");

    // A fresh topic (3 partitions) and its DLQ.
    let topic = common::kafka::random_name("prom");
    rt.block_on(common::kafka::create_topic(&topic, 3));
    rt.block_on(common::kafka::create_topic(&format!("{topic}.dlq"), 1));

    // ---------------------------------------------------------------- the worker
    let worker_addr = format!("127.0.0.1:{}", free_port());
    // The shared test configuration (small batches, short timeouts), with telemetry on.
    let mut config = common::kafka::worker_config(
        &db.url,
        &dir.path().join("lmdb"),
        &topic,
        &common::kafka::random_name("prom-group"),
    );
    config.telemetry.listen = worker_addr.clone();
    // NEKHEBET_WORKER_BIN overrides the binary, as in tests/common/kafka.rs.
    let bin = std::env::var("NEKHEBET_WORKER_BIN").unwrap_or_else(|_| BIN.to_string());
    let mut cmd = Command::new(bin);
    cmd.arg("ingest")
        .env_remove("NEKHEBET_CONFIG")
        .env("RUST_LOG", "info,librdkafka=warn")
        .envs(common::kafka::worker_env(&config))
        .env("NEKHEBET_TELEMETRY__LOG_INTERVAL_S", "1");
    let worker = Proc::spawn("worker", cmd, dir.path().join("worker.log"));
    wait_for(
        "the worker's /readyz to answer 200",
        Duration::from_secs(90),
        || {
            if let Some(status) = worker.exited() {
                panic!(
                    "the worker exited ({status}) before it was ready\n{}",
                    worker.log_tail(60)
                );
            }
            matches!(http_get(&worker_addr, "/readyz"), Ok((200, _)))
        },
        || {
            format!(
                "{:?}\n{}",
                http_get(&worker_addr, "/readyz"),
                worker.log_tail(60)
            )
        },
    );

    // ---------------------------------------------------------------- serve, beside the worker
    // On the worker's database and LMDB, as deploy/docker-compose.yml runs it; its /metrics is on
    // serve.listen (the read side's panels and alerts need its series).
    let serve_addr = format!("127.0.0.1:{}", free_port());
    let mut cmd =
        Command::new(std::env::var("NEKHEBET_WORKER_BIN").unwrap_or_else(|_| BIN.to_string()));
    cmd.arg("serve")
        .env_remove("NEKHEBET_CONFIG")
        .env("RUST_LOG", "info")
        .envs(common::kafka::worker_env(&config))
        .env("NEKHEBET_SERVE__LISTEN", &serve_addr);
    let serve = Proc::spawn("serve", cmd, dir.path().join("serve.log"));
    wait_for(
        "serve's /readyz to answer 200",
        Duration::from_secs(60),
        || {
            if let Some(status) = serve.exited() {
                panic!("serve exited ({status})\n{}", serve.log_tail(40));
            }
            matches!(http_get(&serve_addr, "/readyz"), Ok((200, _)))
        },
        || serve.log_tail(40),
    );

    // ---------------------------------------------------------------- Prometheus
    let test_config = repo_path("deploy/prometheus/test-config");
    let prom_config = std::fs::read_to_string(test_config.join("prometheus.yml"))
        .expect("read deploy/prometheus/test-config/prometheus.yml")
        .replace("__WORKER_TARGET__", &worker_addr)
        .replace("__SERVE_TARGET__", &serve_addr)
        .replace(
            "__TEST_CONFIG_DIR__",
            test_config.to_str().expect("UTF-8 path"),
        );
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(prom_dir.join("prometheus.yml"), prom_config).unwrap();
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(&prometheus);
    cmd.arg(format!(
        "--config.file={}",
        prom_dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        prom_dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={prom_addr}"))
    .arg("--log.level=warn");
    let prom_proc = Proc::spawn("prometheus", cmd, dir.path().join("prometheus.log"));
    wait_for(
        "Prometheus to be ready",
        Duration::from_secs(60),
        || {
            if let Some(status) = prom_proc.exited() {
                panic!("prometheus exited ({status})\n{}", prom_proc.log_tail(40));
            }
            matches!(http_get(&prom_addr, "/-/ready"), Ok((200, _)))
        },
        || prom_proc.log_tail(40),
    );
    let prom = Prom {
        addr: prom_addr.clone(),
    };
    let up = format!("up{{job=\"{JOB}\"}} == 1");
    wait_for(
        "Prometheus to scrape the worker and serve (up == 1 for both)",
        Duration::from_secs(30),
        || prom.query(&up).map(|r| r.len() == 2).unwrap_or(false),
        || {
            format!(
                "{:?}\n{}",
                prom.api("/api/v1/targets"),
                prom_proc.log_tail(20)
            )
        },
    );

    // ---------------------------------------------------------------- traffic until the DLQ alert fires
    // rate() needs an increase between two scrapes of a series that already exists, so publish in
    // waves a few seconds apart rather than all at once.
    let started = Instant::now();
    let mut expected = Expected::default();
    let mut waves = 0u64;
    let fired = 'waves: loop {
        // 5 % duplicates, 5 % replays, 20 % poison; a different seed per wave
        let report = rt.block_on(common::kafka::produce(
            &topic,
            WAVE,
            0.05,
            0.05,
            0.2,
            0x5eed + waves,
        ));
        expected.add(&report);
        waves += 1;
        for _ in 0..12 {
            std::thread::sleep(Duration::from_millis(500));
            // at least two waves, so that duplicates and replays surely exist too
            if waves >= 2 && prom.alert_state(DLQ_ALERT).as_deref() == Some("firing") {
                break 'waves true;
            }
        }
        if let Some(status) = worker.exited() {
            panic!(
                "the worker exited ({status}) while ingesting\n{}",
                worker.log_tail(60)
            );
        }
        if started.elapsed() > Duration::from_secs(120) {
            break false;
        }
    };
    let ratio_expr = "sum by (job) (rate(nekhebet_dlq_published_total[30s])) / sum by (job) (rate(nekhebet_messages_consumed_total[30s]))";
    assert!(
        fired,
        "{DLQ_ALERT} did not fire after {waves} waves of {WAVE} messages (20 % poison) in {:?}\n\
         ratio now: {:?}\nDLQ publishes: {:?}\nalerts: {:?}\n{}",
        started.elapsed(),
        prom.query(ratio_expr),
        prom.query("nekhebet_dlq_published_total"),
        prom.api("/api/v1/alerts"),
        worker.log_tail(40)
    );
    eprintln!(
        "{DLQ_ALERT} fired after {waves} wave(s), {:?}",
        started.elapsed()
    );

    // ---------------------------------------------------------------- the main series exist
    let main_series: Vec<String> = [
        "nekhebet_build_info",
        "nekhebet_messages_consumed_total",
        "nekhebet_envelopes_total{outcome=\"stored\"}",
        "nekhebet_envelopes_total{outcome=\"duplicate\"}",
        "nekhebet_envelopes_total{outcome=\"replay\"}",
        "nekhebet_envelopes_total{outcome=\"rejected\"}",
        "nekhebet_rejected_total",
        "nekhebet_dlq_published_total",
        "nekhebet_batches_committed_total",
        "nekhebet_batch_records_bucket",
        "nekhebet_batch_bytes_bucket",
        "nekhebet_end_to_end_latency_seconds_bucket",
        "nekhebet_consumer_lag_messages",
        "nekhebet_assigned_partitions",
        "nekhebet_in_flight_batches",
        "nekhebet_last_commit_timestamp_seconds",
        "nekhebet_postgres_pool_connections",
        "nekhebet_postgres_pool_available_connections",
        "nekhebet_postgres_pool_waiting_requests",
        "nekhebet_lmdb_map_size_bytes",
        "nekhebet_lmdb_used_bytes",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        ["decode", "verify", "postgres", "lmdb", "commit"]
            .iter()
            .map(|s| format!("nekhebet_stage_duration_seconds_bucket{{stage=\"{s}\"}}")),
    )
    .collect();
    let missing = |prom: &Prom| -> Vec<String> {
        main_series
            .iter()
            .filter(|s| {
                prom.query(&with_job(s))
                    .map(|r| r.is_empty())
                    .unwrap_or(true)
            })
            .cloned()
            .collect()
    };
    // the consumer lag comes from librdkafka's statistics (every 5 s): allow a little time
    wait_for(
        "the main series in Prometheus",
        Duration::from_secs(30),
        || missing(&prom).is_empty(),
        || format!("missing: {:?}", missing(&prom)),
    );
    let sum = |q: &str| {
        prom.scalar(&format!("sum({q})"))
            .map(|v| v.round() as i64)
            .unwrap_or(-1)
    };
    assert_eq!(
        sum("nekhebet_assigned_partitions"),
        3,
        "the only worker should own the topic's 3 partitions"
    );
    let build = prom.query("nekhebet_build_info").unwrap();
    assert_eq!(
        build[0]["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "build info: {build:?}"
    );

    // ---------------------------------------------------------------- the counters agree
    // What Prometheus scraped must be exactly what the producer says it published.
    let outcome = |o: &str| sum(&format!("nekhebet_envelopes_total{{outcome=\"{o}\"}}"));
    let observed = || Expected {
        sent: sum("nekhebet_messages_consumed_total"),
        stored: outcome("stored"),
        duplicate: outcome("duplicate"),
        replay: outcome("replay"),
        rejected: outcome("rejected"),
    };
    wait_for(
        "Prometheus's counters to match what was produced",
        Duration::from_secs(60),
        || {
            observed() == expected
                && sum("nekhebet_envelopes_total") == expected.sent
                && sum("nekhebet_rejected_total") == expected.rejected
                && sum("nekhebet_dlq_published_total") == expected.rejected
        },
        || {
            format!(
                "expected {expected:?}\nobserved {:?}\nall outcomes {}; rejected_total {}; dlq_published {}\nby outcome: {:?}",
                observed(),
                sum("nekhebet_envelopes_total"),
                sum("nekhebet_rejected_total"),
                sum("nekhebet_dlq_published_total"),
                prom.query("sum by (outcome) (nekhebet_envelopes_total)")
            )
        },
    );
    assert!(
        expected.rejected > 0 && expected.replay > 0 && expected.duplicate > 0,
        "{expected:?}"
    );

    // ---------------------------------------------------------------- every rule evaluates
    let rules = prom.api("/api/v1/rules").expect("rules");
    let mut rule_count = 0;
    let mut broken = Vec::new();
    for g in rules["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            rule_count += 1;
            if r["health"] != "ok" {
                broken.push(format!(
                    "{}/{}: health {} {}",
                    g["name"], r["name"], r["health"], r["lastError"]
                ));
            }
        }
    }
    assert!(rule_count >= 2, "rules were not loaded: {rules}");
    assert!(
        broken.is_empty(),
        "rules failing to evaluate against a real worker:\n{}",
        broken.join("\n")
    );

    // ---------------------------------------------------------------- reads through serve
    let ids: Vec<uuid::Uuid> = rt.block_on(async {
        db.client()
            .await
            .query("SELECT id FROM events ORDER BY seq LIMIT 20", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    assert_eq!(ids.len(), 20);
    for id in &ids {
        let (status, body) = http_get(&serve_addr, &format!("/v1/events/{id}")).unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) =
        http_get(&serve_addr, &format!("/v1/events/{}", uuid::Uuid::new_v4())).unwrap();
    assert_eq!(status, 404);
    // rate() needs two scrapes of a series: wait for the read side's to have them.
    let reads = format!("rate(nekhebet_lmdb_read_hits_total{{job=\"{JOB}\"}}[1m])");
    wait_for(
        "serve's read series in Prometheus",
        Duration::from_secs(30),
        || prom.query(&reads).map(|r| !r.is_empty()).unwrap_or(false),
        || serve.log_tail(20),
    );

    // ---------------------------------------------------------------- dashboard expressions
    let exprs = dashboard_exprs();
    assert!(
        exprs.len() >= 20,
        "only {} dashboard expressions found",
        exprs.len()
    );
    let mut errors = Vec::new();
    let mut empty = Vec::new();
    for (title, ref_id, e) in &exprs {
        match prom.query(e) {
            Err(err) => errors.push(format!("{title} [{ref_id}]: {e}\n    {err}")),
            Ok(r) if r.is_empty() && !ONLY_AFTER_FAILURES.iter().any(|s| e.contains(s)) => {
                empty.push(format!("{title} [{ref_id}]: {e}"))
            }
            Ok(_) => {}
        }
    }
    assert!(
        errors.is_empty(),
        "dashboard expressions Prometheus refuses:\n{}",
        errors.join("\n")
    );
    assert!(
        empty.is_empty(),
        "dashboard expressions without data after traffic:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "{} dashboard expressions accepted; {} rules healthy; {} messages in {waves} waves",
        exprs.len(),
        rule_count,
        expected.sent
    );

    drop(prom_proc);
    drop(serve);
    drop(worker);
}
