//! The operator tools against the real services (issue 16): `offsets show|reset`, `dlq
//! inspect|redrive`, `status` (JSON, and the full-screen view driven in tmux), and the lag gauge
//! from the moment partitions are assigned. Each test has its own database, topics, group and LMDB
//! directory; the `nekhebet-store` binary is run as an operator would.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::faults::{metric_sum, wait_log};
use common::kafka::{self as k, WorkerProcess};
use common::pg::TestDb;
use common::worker::{cli_on, ingest_until_caught_up, publish, rejected, Producer};
use nekhebet_store::config::Config;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

/// One test's world: a database, an LMDB directory, a topic and a group, and the worker's
/// configuration for them.
struct World {
    db: TestDb,
    dir: tempfile::TempDir,
    topic: String,
    group: String,
    config: Config,
}

impl World {
    async fn new(name: &str, partitions: i32) -> World {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let topic = k::random_name(name);
        let group = k::random_name(&format!("{name}-group"));
        k::create_topic(&topic, partitions).await;
        let config = k::worker_config(&db.url, &dir.path().join("lmdb"), &topic, &group);
        World {
            db,
            dir,
            topic,
            group,
            config,
        }
    }

    fn lmdb(&self) -> &Path {
        &self.config.lmdb.path
    }

    /// The environment an operator's shell would have for this deployment.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NEKHEBET_KAFKA__BROKERS".into(), k::brokers()),
            ("NEKHEBET_KAFKA__GROUP_ID".into(), self.group.clone()),
            (
                "NEKHEBET_KAFKA__TOPICS".into(),
                format!("[\"{}\"]", self.topic),
            ),
        ]
    }

    /// Runs `nekhebet-store ARGS` for this world.
    fn cli(&self, args: &[&str]) -> Output {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cli_on(&self.db.url, self.lmdb(), args, &env)
    }

    /// `cli`, which must exit 0; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "nekhebet-store {args:?}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `offsets show --json`: partition → its row.
    fn offsets(&self) -> BTreeMap<i64, Value> {
        let doc: Value =
            serde_json::from_str(&self.ok(&["offsets", "show", "--topic", &self.topic, "--json"]))
                .unwrap();
        assert_eq!(doc["problems"], serde_json::json!([]));
        doc["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["partition"].as_i64().unwrap(), r.clone()))
            .collect()
    }

    fn spawn_worker(&self, config: &Config, args: &[&str]) -> WorkerProcess {
        WorkerProcess::spawn(config, args, &[], &self.dir.path().join("worker.log"))
    }
}

/// The row `offsets show --json` / `status --json` must have for a partition.
fn row(
    topic: &str,
    partition: i64,
    applied: Option<i64>,
    committed: Option<i64>,
    (low, high): (i64, i64),
    owner: Option<&str>,
) -> Value {
    let next = committed.or(applied.map(|a| a + 1)).unwrap_or(low);
    serde_json::json!({
        "topic": topic,
        "partition": partition,
        "postgres_applied": applied,
        "lmdb_applied": applied,
        "kafka_committed": committed,
        "low": low,
        "high": high,
        "next": next,
        "lag": high - next,
        "beyond_end": false,
        "owner": owner,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_show_reports_every_side_and_reset_moves_them_all_only_with_yes() {
    let w = World::new("offsets", 2).await;
    k::produce(&w.topic, 300, 0.0, 0.0, 0.0, 11).await;
    let ends = k::end_offsets(&w.topic);
    assert_eq!(ends.values().sum::<i64>(), 300);
    ingest_until_caught_up(&w.config).await;

    let shown = w.offsets();
    for (p, high) in &ends {
        let p = i64::from(*p);
        assert_eq!(
            shown[&p],
            row(&w.topic, p, Some(high - 1), Some(*high), (0, *high), None)
        );
    }

    // A dry run prints the change and changes nothing.
    let high0 = ends[&0];
    let reset_0_to_10 = [
        "offsets",
        "reset",
        "--topic",
        &w.topic,
        "--partition",
        "0",
        "--to",
        "10",
    ];
    let out = w.ok(&reset_0_to_10);
    assert!(out.contains(&format!("{} → 9", high0 - 1)), "{out}");
    assert!(out.contains(&format!("{high0} → 10")), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert_eq!(w.offsets(), shown);

    // With --yes: partition 0 in both stores and Kafka, partition 1 untouched.
    let out = w.ok(&[&reset_0_to_10[..], &["--yes"]].concat());
    assert!(out.contains("Kafka: committed"), "{out}");
    let after = w.offsets();
    assert_eq!(
        after[&0],
        row(&w.topic, 0, Some(9), Some(10), (0, high0), None)
    );
    assert_eq!(after[&1], shown[&1]);
    assert_eq!(k::committed_offsets(&w.group, &w.topic)[&0], 10);

    // Every partition to the start; an offset outside what a partition holds is refused.
    w.ok(&[
        "offsets", "reset", "--topic", &w.topic, "--to", "earliest", "--yes",
    ]);
    for (p, high) in &ends {
        let p = i64::from(*p);
        assert_eq!(
            w.offsets()[&p],
            row(&w.topic, p, Some(-1), Some(0), (0, *high), None)
        );
    }
    let out = w.cli(&[
        "offsets",
        "reset",
        "--topic",
        &w.topic,
        "--to",
        &(ends[&1] + 1).to_string(),
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is outside what the partition holds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_worker_runs_status_names_it_as_owner_and_offsets_reset_is_refused() {
    let w = World::new("owner", 2).await;
    k::produce(&w.topic, 200, 0.0, 0.0, 0.0, 12).await;
    let ends = k::end_offsets(&w.topic);
    let mut worker = w.spawn_worker(&w.config, &[]);
    k::wait_committed_to_end(&w.group, &w.topic, Duration::from_secs(60)).await;

    let status: Value = serde_json::from_str(&w.ok(&["status", "--json"])).unwrap();
    let owner = "nekhebet-store@127.0.0.1";
    let rows: Vec<Value> = ends
        .iter()
        .map(|(p, high)| {
            row(
                &w.topic,
                i64::from(*p),
                Some(high - 1),
                Some(*high),
                (0, *high),
                Some(owner),
            )
        })
        .collect();
    assert_eq!(status["partitions"], Value::Array(rows));
    assert_eq!(status["group"], w.group.as_str());
    assert_eq!(status["store_mode"], "hybrid");
    assert_eq!(status["totals"]["lag"], 0);
    assert_eq!(
        status["totals"]["events"],
        serde_json::json!({"count": 200, "exact": true})
    );
    assert!(
        status["totals"]["postgres"]["events_bytes"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert!(status["totals"]["lmdb"]["used_bytes"].as_u64().unwrap() > 0);
    // The transparency log, integrated by the worker: every stored event a leaf, in a checkpoint.
    let tlog = k::wait_for(
        Duration::from_secs(60),
        "status: every event in a checkpoint, the LMDB mirror caught up",
        || async {
            let status: Value = serde_json::from_str(&w.ok(&["status", "--json"])).unwrap();
            let t = status["totals"]["tlog"].clone();
            // The worker's LMDB mirror confirms every row in its LMDB: nothing behind.
            (t["checkpoint"]["size"] == 200 && status["totals"]["lmdb_mirror_behind"] == 0)
                .then_some(t)
        },
    )
    .await;
    assert_eq!(tlog["leaves"], 200);
    assert_eq!(tlog["unlogged"], 0);
    assert!(tlog["checkpoint"]["signed"].is_boolean(), "{tlog}");
    assert!(
        tlog["checkpoint"]["age_seconds"].as_f64().unwrap() >= 0.0,
        "{tlog}"
    );
    assert!(
        w.ok(&["status"])
            .contains("log 200 leaves, 0 to integrate, checkpoint 200")
            && w.ok(&["status"]).contains("mirror behind 0"),
        "{}",
        w.ok(&["status"])
    );
    assert_eq!(status["outcomes"], Value::Null);
    assert_eq!(status["problems"], serde_json::json!([]));
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["client_id"], "nekhebet-store");
    assert_eq!(
        members[0]["partitions"],
        serde_json::json!([format!("{}/0", w.topic), format!("{}/1", w.topic)])
    );

    let before = w.offsets();
    let out = w.cli(&[
        "offsets", "reset", "--topic", &w.topic, "--to", "earliest", "--yes",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains(owner) && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(w.offsets(), before);
    worker.terminate_ok(Duration::from_secs(30));
}

/// Envelopes signed by a key the registry does not know are dead-lettered `key_id_mismatch`; once
/// the key is registered, `dlq redrive` puts them back and the worker stores them; a second run
/// re-drives nothing. A truncated letter is listed and never re-driven; a re-driven message that
/// fails again is dead-lettered again, once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_an_unregistered_key_are_stored_after_the_key_is_registered_and_a_redrive()
{
    let w = World::new("redrive", 1).await;
    let dlq = format!("{}.dlq", w.topic);
    let mut a = Producer::new("a", 21);
    let mut b = Producer::new("b", 22);
    let key = |p: &Producer| {
        base64::engine::general_purpose::STANDARD.encode(p.key.verifying_key().to_bytes())
    };
    let mut only_a = w.config.clone();
    only_a.verify.keys = BTreeMap::from([("a".to_string(), vec![key(&a)])]);
    let mut both = only_a.clone();
    both.verify.keys.insert("b".to_string(), vec![key(&b)]);

    let from_b: Vec<(Vec<u8>, Vec<u8>)> = (0..3)
        .map(|i| (format!("b{i}").into_bytes(), b.next()))
        .collect();
    let b_positions = publish(&w.topic, &from_b, None).await;
    publish(
        &w.topic,
        &[
            (b"a0".to_vec(), a.next()),
            (b"poison".to_vec(), b"not json".to_vec()),
            (b"a1".to_vec(), a.next()),
        ],
        None,
    )
    .await;
    let report = ingest_until_caught_up(&only_a).await;
    assert_eq!((report.stored, report.rejected), (2, 4), "{report:#?}");
    assert_eq!(rejected(&report, "key_id_mismatch"), 3);
    // A letter the dead-letter topic kept truncated (as the sink writes one).
    publish_letter(
        &dlq,
        b"cut",
        b"{\"header\":",
        &[
            ("nekhebet.reason", "key_id_mismatch"),
            ("nekhebet.detail", "truncated for the dead-letter topic"),
            ("nekhebet.source.topic", &w.topic),
            ("nekhebet.source.partition", "0"),
            ("nekhebet.source.offset", "999"),
            ("nekhebet.original.key_bytes", "3"),
            ("nekhebet.original.value_bytes", "2000000"),
        ],
    )
    .await;

    // inspect: counts by reason, then the letters with their source positions.
    let lines: Vec<Value> = w
        .ok(&["dlq", "inspect", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({"kind": "counts", "dlq_topic": dlq, "letters": 5, "selected": 5,
            "by_reason": {"key_id_mismatch": 4, "malformed_json": 1}})
    );
    let sources: Vec<(i64, &str, bool)> = lines[1..]
        .iter()
        .map(|l| {
            (
                l["source_offset"].as_i64().unwrap(),
                l["reason"].as_str().unwrap(),
                l["truncated"].as_bool().unwrap(),
            )
        })
        .collect();
    let b_offsets: Vec<i64> = b_positions.iter().map(|(_, o)| *o).collect();
    assert_eq!(
        sources,
        [
            (b_offsets[0], "key_id_mismatch", false),
            (b_offsets[1], "key_id_mismatch", false),
            (b_offsets[2], "key_id_mismatch", false),
            (4, "malformed_json", false),
            (999, "key_id_mismatch", true),
        ]
    );
    let table = w.ok(&["dlq", "inspect", "--reason", "malformed_json"]);
    assert!(table.contains("5 letters, 1 selected"), "{table}");

    // A dry run publishes and commits nothing.
    let redrive = [
        "dlq",
        "redrive",
        "--topic",
        &dlq,
        "--reason",
        "key_id_mismatch",
    ];
    let out = w.ok(&[&redrive[..], &["--dry-run"]].concat());
    assert!(
        summary(&out).starts_with("would re-drive 3, already re-driven 0, skipped 1 (truncated 1"),
        "{out}"
    );
    assert_eq!(k::end_offsets(&w.topic)[&0], 6);

    // The key is registered; the re-drive puts the three back, not the truncated letter.
    let out = w.ok(&redrive);
    assert!(
        summary(&out).starts_with("re-driven 3, already re-driven 0, skipped 1 (truncated 1"),
        "{out}"
    );
    assert!(out.contains("truncated — the dead-letter topic kept only the first 1024 bytes of its 3-byte key and 2000000-byte value"), "{out}");
    let report = ingest_until_caught_up(&both).await;
    assert_eq!((report.stored, report.rejected), (3, 0), "{report:#?}");
    let stored_b = common::faults::pg_events(&w.db.url).await;
    assert_eq!(stored_b.len(), 5);
    // The re-published messages: original keys and values, and the redrive header.
    let source = k::read_all(&w.topic);
    for (m, (key, value)) in source[6..].iter().zip(&from_b) {
        assert_eq!((m.key.as_ref(), m.value.as_ref()), (Some(key), Some(value)));
        let stamp: Value = serde_json::from_str(&m.headers["nekhebet.redrive"]).unwrap();
        assert_eq!(stamp["reason"], "key_id_mismatch");
        assert!(!m.headers.contains_key("nekhebet.reason"));
    }

    // Again: nothing is re-driven twice.
    let out = w.ok(&redrive);
    assert!(
        summary(&out).starts_with("re-driven 0, already re-driven 0, skipped 0"),
        "{out}"
    );
    // An unfiltered run skips what the reason's run re-drove, and re-drives the poison, which
    // fails again and is dead-lettered again.
    let all = ["dlq", "redrive", "--topic", &dlq];
    let out = w.ok(&all);
    assert!(
        summary(&out).starts_with("re-driven 1, already re-driven 4, skipped 0"),
        "{out}"
    );
    let report = ingest_until_caught_up(&both).await;
    assert_eq!((report.stored, report.rejected), (0, 1), "{report:#?}");
    assert_eq!(k::read_all(&dlq).len(), 6);
    // That new letter is a new attempt; everything before it is done.
    let out = w.ok(&all);
    assert!(
        summary(&out).starts_with("re-driven 1, already re-driven 0, skipped 0"),
        "{out}"
    );
    let out = w.ok(&all);
    assert!(
        summary(&out).starts_with("re-driven 0, already re-driven 0, skipped 0"),
        "{out}"
    );
}

/// The summary line of a `dlq redrive` run.
fn summary(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .unwrap_or("")
}

async fn publish_letter(topic: &str, key: &[u8], value: &[u8], headers: &[(&str, &str)]) {
    let producer: FutureProducer =
        nekhebet_store::kafka::producer_config(&k::brokers(), &BTreeMap::new())
            .create()
            .unwrap();
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value).headers(h),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("publish the letter");
}

/// The lag gauge is there as soon as partitions are assigned, with the backlog as its value — not
/// only after librdkafka's first statistics (here never: their interval is 10 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_shows_the_backlog_from_the_assignment_on() {
    let w = World::new("lag-at-assign", 2).await;
    k::produce(&w.topic, 120, 0.0, 0.0, 0.0, 13).await;
    let ends = k::end_offsets(&w.topic);
    let mut config = w.config.clone();
    config.telemetry.listen = "127.0.0.1:0".into();
    let file = w.dir.path().join("no-statistics.toml");
    std::fs::write(
        &file,
        "[kafka.properties]\n\"statistics.interval.ms\" = \"600000\"\n",
    )
    .unwrap();
    let mut worker = w.spawn_worker(&config, &["--config", file.to_str().unwrap()]);
    wait_log(&worker, "partition assigned", Duration::from_secs(60)).await;
    let partitions = ends.len();
    let text = k::wait_for(Duration::from_secs(30), "the lag series", || {
        let text = worker.metrics().unwrap_or_default();
        let series = text
            .lines()
            .filter(|l| l.starts_with("nekhebet_consumer_lag_messages{"))
            .count();
        async move { (series == partitions).then_some(text) }
    })
    .await;
    for (p, high) in &ends {
        let lag = metric_sum(
            &text,
            "nekhebet_consumer_lag_messages",
            &[("topic", &w.topic), ("partition", &p.to_string())],
        );
        assert_eq!(lag, *high as f64, "partition {p}\n{text}");
    }
    worker.terminate_ok(Duration::from_secs(30));
}

/// `status --watch` in an 80×24 terminal (tmux): it shows the backlog, the lag falling while a
/// worker catches up, and quits on `q`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_shows_the_lag_falling_in_an_80x24_terminal_and_quits_on_q() {
    let tmux = Tmux::new();
    let w = World::new("watch", 1).await;
    const BACKLOG: i64 = 4000;
    k::produce(&w.topic, BACKLOG as u64, 0.0, 0.0, 0.0, 14).await;
    let mut env = w.env();
    env.push(("NEKHEBET_POSTGRES__URL".into(), w.db.url.clone()));
    env.push(("NEKHEBET_LMDB__PATH".into(), w.lmdb().display().to_string()));
    tmux.start(
        &[env!("CARGO_BIN_EXE_nekhebet-store"), "status", "--watch"],
        &env,
    );
    let screen = tmux.wait_for(Duration::from_secs(30), |s| lag_total(s) == Some(BACKLOG));
    assert!(screen.contains(&w.topic[..6]), "{screen}");
    assert!(screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80));

    // A slow worker (tiny batches, one at a time), so the view catches it mid-way.
    let mut slow = w.config.clone();
    slow.batch.max_records = 5;
    slow.batch.max_in_flight = 1;
    let mut worker = w.spawn_worker(&slow, &[]);
    let mut seen = vec![BACKLOG];
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.last() != Some(&0) {
        assert!(
            Instant::now() < deadline,
            "lag seen: {seen:?}\n{}",
            tmux.capture()
        );
        if let Some(lag) = lag_total(&tmux.capture()) {
            if seen.last() != Some(&lag) {
                seen.push(lag);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.windows(2).all(|p| p[1] < p[0]),
        "the lag must only fall: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| 0 < *l && *l < BACKLOG),
        "no refresh caught the worker mid-way: {seen:?}"
    );
    tmux.keys("q");
    tmux.wait_exit(Duration::from_secs(10));
    worker.terminate_ok(Duration::from_secs(30));
}

/// `status --watch` when stdout is not a terminal: the same figures as plain lines, every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_without_a_terminal_prints_plain_lines_every_second() {
    use std::io::BufRead;
    let w = World::new("watch-plain", 1).await;
    k::produce(&w.topic, 50, 0.0, 0.0, 0.0, 15).await;
    ingest_until_caught_up(&w.config).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
        .args(["status", "--watch"])
        .envs(w.env())
        .env("NEKHEBET_POSTGRES__URL", &w.db.url)
        .env("NEKHEBET_LMDB__PATH", w.lmdb())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run status --watch");
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(4)
            .collect()
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // Two refreshes: a totals line and the partition's line each, every line stamped.
    assert_eq!(lines.len(), 4, "{lines:?}");
    for pair in lines.chunks(2) {
        assert!(pair[0].contains("lag total 0   events 50"), "{lines:?}");
        assert!(
            pair[1].ends_with(&format!(
                "{}/0 postgres=49 lmdb=49 committed=50 high=50 lag=0 owner=-",
                w.topic
            )),
            "{lines:?}"
        );
    }
    assert!(lines[0] <= lines[2], "stamped in order: {lines:?}");
}

/// `lag total N` on the screen.
fn lag_total(screen: &str) -> Option<i64> {
    screen.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("lag total ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A tmux server of our own (its own socket), one session of 80×24.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "tmux is not installed: this test drives `status --watch` in it (scripts/test installs \
             Debian's tmux package; or: apt-get install tmux)"
        );
        Tmux {
            socket: format!("nekhebet-test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn start(&self, command: &[&str], env: &[(String, String)]) {
        let mut args: Vec<String> = ["new-session", "-d", "-s", "t", "-x", "80", "-y", "24"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(command.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.tmux(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(self.tmux(&["send-keys", "-t", "t", keys]).status.success());
    }

    /// The screen once `done` says so (panics with the screen after `timeout`).
    fn wait_for(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the session's command exited (tmux closes the session with it).
    fn wait_exit(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.tmux(&["has-session", "-t", "t"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "still running after q:\n{}",
                self.capture()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}
