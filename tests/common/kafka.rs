//! Kafka helpers for tests: random topics and groups, publishing a known mix, reading a topic
//! back (the DLQ), committed and end offsets, a worker configuration, and the worker process.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nekhebet_store::config::Config;
use nekhebet_store::dev::produce::{self, ProduceOptions, ProduceReport};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("NEKHEBET_KAFKA__BROKERS")
        .expect("NEKHEBET_KAFKA__BROKERS is not set: run `scripts/services up && source .local/services.env`")
}

pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn create_topic(name: &str, partitions: i32) {
    nekhebet_store::kafka::ensure_topics(&brokers(), &BTreeMap::new(), &[(name, partitions)])
        .await
        .expect("create topic");
}

/// Publishes a mix and keeps every record (the expected truth).
pub async fn produce(
    topic: &str,
    count: u64,
    dup: f64,
    replay: f64,
    poison: f64,
    seed: u64,
) -> ProduceReport {
    produce_at(topic, count, None, dup, replay, poison, seed).await
}

/// [`produce`] at `rate` messages per second.
pub async fn produce_at(
    topic: &str,
    count: u64,
    rate: Option<f64>,
    dup: f64,
    replay: f64,
    poison: f64,
    seed: u64,
) -> ProduceReport {
    produce::run(
        ProduceOptions {
            topic: topic.to_string(),
            count,
            rate,
            duplicate_ratio: dup,
            replay_ratio: replay,
            poison_ratio: poison,
            seed: Some(seed),
            keep_records: true,
            progress: false,
            ..ProduceOptions::default()
        },
        &brokers(),
        &BTreeMap::new(),
    )
    .await
    .expect("produce")
}

/// A worker configuration for one test: hybrid store, the given database, LMDB directory, topic
/// and group; small batches and short timeouts so tests exercise several batches quickly.
pub fn worker_config(db_url: &str, lmdb: &Path, topic: &str, group: &str) -> Config {
    let mut c = Config::default();
    c.postgres.url = db_url.to_string();
    c.postgres.pool_timeout_ms = 2_000;
    c.postgres.connect_timeout_ms = 2_000;
    c.lmdb.path = lmdb.to_path_buf();
    c.lmdb.map_size = 64 << 20;
    c.lmdb.sync = false;
    c.kafka.brokers = brokers();
    c.kafka.group_id = group.to_string();
    c.kafka.topics = vec![topic.to_string()];
    c.kafka.session_timeout_ms = 10_000;
    c.kafka.drain_timeout_ms = 5_000;
    c.batch.max_records = 100;
    c.batch.linger_ms = 20;
    c.telemetry.listen = String::new();
    c.shutdown.timeout_ms = 15_000;
    c
}

/// The same configuration as environment variables, for the worker process.
pub fn worker_env(c: &Config) -> Vec<(String, String)> {
    vec![
        ("NEKHEBET_POSTGRES__URL".into(), c.postgres.url.clone()),
        (
            "NEKHEBET_POSTGRES__POOL_TIMEOUT_MS".into(),
            c.postgres.pool_timeout_ms.to_string(),
        ),
        (
            "NEKHEBET_POSTGRES__CONNECT_TIMEOUT_MS".into(),
            c.postgres.connect_timeout_ms.to_string(),
        ),
        (
            "NEKHEBET_LMDB__PATH".into(),
            c.lmdb.path.display().to_string(),
        ),
        (
            "NEKHEBET_LMDB__MAP_SIZE".into(),
            c.lmdb.map_size.to_string(),
        ),
        ("NEKHEBET_LMDB__SYNC".into(), c.lmdb.sync.to_string()),
        ("NEKHEBET_KAFKA__BROKERS".into(), c.kafka.brokers.clone()),
        ("NEKHEBET_KAFKA__GROUP_ID".into(), c.kafka.group_id.clone()),
        (
            "NEKHEBET_KAFKA__TOPICS".into(),
            format!(
                "[{}]",
                c.kafka
                    .topics
                    .iter()
                    .map(|t| format!("\"{t}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "NEKHEBET_KAFKA__SESSION_TIMEOUT_MS".into(),
            c.kafka.session_timeout_ms.to_string(),
        ),
        (
            "NEKHEBET_KAFKA__DRAIN_TIMEOUT_MS".into(),
            c.kafka.drain_timeout_ms.to_string(),
        ),
        (
            "NEKHEBET_BATCH__MAX_RECORDS".into(),
            c.batch.max_records.to_string(),
        ),
        (
            "NEKHEBET_BATCH__LINGER_MS".into(),
            c.batch.linger_ms.to_string(),
        ),
        (
            "NEKHEBET_TELEMETRY__LISTEN".into(),
            c.telemetry.listen.clone(),
        ),
        (
            "NEKHEBET_SHUTDOWN__TIMEOUT_MS".into(),
            c.shutdown.timeout_ms.to_string(),
        ),
    ]
    .into_iter()
    .chain(c.lmdb.layout.map(|l| {
        (
            "NEKHEBET_LMDB__LAYOUT".into(),
            nekhebet_store::store::lmdb::layout::name(l).into(),
        )
    }))
    .collect()
}

/// A worker process (`nekhebet-store ingest`). `NEKHEBET_WORKER_BIN` overrides the binary.
pub struct WorkerProcess {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl WorkerProcess {
    pub fn spawn(
        c: &Config,
        args: &[&str],
        extra_env: &[(&str, &str)],
        log: &Path,
    ) -> WorkerProcess {
        let bin = std::env::var("NEKHEBET_WORKER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_nekhebet-store").to_string());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("worker log");
        let err = out.try_clone().expect("worker log");
        let mut cmd = Command::new(bin);
        cmd.arg("ingest")
            .args(args)
            .env_remove("NEKHEBET_FAILPOINT")
            .env("RUST_LOG", "info,librdkafka=warn")
            .envs(worker_env(c))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        WorkerProcess {
            child: cmd.spawn().expect("spawn the worker"),
            log: log.to_path_buf(),
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        // SIGKILL by a direct syscall, not a `kill` process: the fault tests aim kills at windows
        // of milliseconds.
        let _ = self.child.kill();
        let _ = self.wait_timeout(Duration::from_secs(10));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

fn plain_consumer() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", random_name("test-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// End offsets (high watermarks) per partition.
pub fn end_offsets(topic: &str) -> BTreeMap<i32, i64> {
    let c = plain_consumer();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut out = BTreeMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            out.insert(p.id(), high);
        }
    }
    out
}

/// The group's committed offsets per partition (absent when none).
pub fn committed_offsets(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in end_offsets(topic).keys() {
        tpl.add_partition(topic, *p);
    }
    // The group coordinator may be moving or loading its offsets (after a kill, a rebalance):
    // NotCoordinator and CoordinatorLoadInProgress say "ask again", not "no offsets".
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(list) => break list,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::NotCoordinator
                                | RDKafkaErrorCode::CoordinatorLoadInProgress
                                | RDKafkaErrorCode::CoordinatorNotAvailable
                        )
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("committed offsets of group {group}: {e}"),
        }
    };
    list.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// How many members the consumer group has now (0 once a killed member's session expired).
pub fn group_members(group: &str) -> usize {
    let c = plain_consumer();
    let list = c
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .expect("group list");
    list.groups().iter().map(|g| g.members().len()).sum()
}

/// Reads every message of `topic` up to its current end offsets.
pub fn read_all(topic: &str) -> Vec<ReadMessage> {
    let ends = end_offsets(topic);
    let c = plain_consumer();
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let total: i64 = ends.values().sum();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done: HashMap<i32, bool> = ends.iter().map(|(p, e)| (*p, *e == 0)).collect();
    while done.values().any(|d| !d) && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if m.offset() + 1 >= ends[&m.partition()] {
                    done.insert(m.partition(), true);
                }
                out.push(ReadMessage {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    assert_eq!(
        out.len() as i64,
        total,
        "read {} of {} messages of {topic}",
        out.len(),
        total
    );
    out
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Expected stored set: content hash → bytes, and id → bytes, of the valid records produced.
pub struct Expected {
    pub by_hash: BTreeMap<String, Vec<u8>>,
    pub by_id: BTreeMap<uuid::Uuid, Vec<u8>>,
}

pub fn expected_valid(produced: &[&ProduceReport]) -> Expected {
    let limits = nekhebet_store::envelope::Limits {
        max_message_bytes: usize::MAX,
    };
    let mut by_hash = BTreeMap::new();
    let mut by_id = BTreeMap::new();
    for r in produced {
        for rec in r.records.iter().filter(|r| r.kind == produce::Kind::Valid) {
            let env = nekhebet_store::envelope::decode(rec.value.clone(), &limits)
                .expect("valid record decodes");
            by_hash.insert(env.header.payload_hash.clone(), rec.value.to_vec());
            by_id.insert(env.header.id, rec.value.to_vec());
        }
    }
    Expected { by_hash, by_id }
}

/// PostgreSQL's events (id → envelope bytes) and LMDB's blobs (hash → bytes) equal exactly the
/// valid set produced: nothing missing, nothing extra, byte for byte.
pub async fn assert_stores_hold_exactly(db_url: &str, lmdb_dir: &Path, expected: &Expected) {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let rows = client
        .query("SELECT id, envelope FROM events", &[])
        .await
        .expect("events");
    let pg: BTreeMap<uuid::Uuid, Vec<u8>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(pg.len(), expected.by_id.len(), "PostgreSQL event count");
    assert!(
        pg == expected.by_id,
        "PostgreSQL events differ from the valid set produced"
    );

    let blobs = super::faults::lmdb_blobs(lmdb_dir).await;
    assert_eq!(blobs.len(), expected.by_hash.len(), "LMDB blob count");
    assert!(
        blobs == expected.by_hash,
        "LMDB blobs differ from the valid set produced"
    );
}

/// Waits until the group committed every partition up to the topic's end offsets.
pub async fn wait_committed_to_end(group: &str, topic: &str, timeout: Duration) {
    let (group, topic) = (group.to_string(), topic.to_string());
    wait_for(
        timeout,
        "offsets committed up to the end of the topic",
        || {
            let (group, topic) = (group.clone(), topic.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let ends = end_offsets(&topic);
                    let committed = committed_offsets(&group, &topic);
                    ends.iter()
                        .all(|(p, e)| *e == 0 || committed.get(p) == Some(e))
                        .then_some(())
                })
                .await
                .ok()
                .flatten()
            }
        },
    )
    .await
}

/// Rows in `events` (0 while the database is unreachable).
pub async fn event_count(db_url: &str) -> i64 {
    let Ok((client, conn)) = tokio_postgres::connect(db_url, tokio_postgres::NoTls).await else {
        return 0;
    };
    tokio::spawn(conn);
    client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// `ingest` in this process with `--until-caught-up` (a fresh store from `config`): its report
/// once every partition is decided up to the end offsets seen at start. Panics after 120 s.
pub async fn ingest_until_caught_up(config: &Config) -> nekhebet_store::ingest::IngestReport {
    let store = nekhebet_store::store::Store::open(config)
        .await
        .expect("open store");
    let options = nekhebet_store::ingest::IngestOptions {
        until_caught_up: true,
        ..Default::default()
    };
    let token = tokio_util::sync::CancellationToken::new();
    tokio::time::timeout(
        Duration::from_secs(120),
        nekhebet_store::ingest::run(config, store, options, token),
    )
    .await
    .expect("the worker stalled: not caught up within 120 s")
    .expect("the worker failed")
}
