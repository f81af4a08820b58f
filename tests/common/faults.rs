//! Helpers for the fault tests (`tests/faults_*.rs`, `tests/chaos.rs`, `tests/ingest_faults.rs`):
//! the services script (stop, start or restart PostgreSQL or Kafka), a scenario (database, LMDB
//! directory, topic, group, worker logs), the exactness checks every fault test ends with, the
//! "nothing committed that is not done" check, and the worker's metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nekhebet_store::config::Config;
use nekhebet_store::dev::produce::{Kind, ProduceReport};

use super::kafka::{self as k, WorkerProcess};
use super::pg::TestDb;

// ------------------------------------------------------------------------------------ services

/// The services script: `NEKHEBET_SERVICES_SCRIPT`, else this repository's `scripts/services`.
/// Tests that stop a service must stop the instance they run against, never another one.
pub fn services_script() -> PathBuf {
    std::env::var_os("NEKHEBET_SERVICES_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services")))
}

/// The port variables the script needs to manage the instance the tests use, when the caller did
/// not set them: the script treats a URL on another port than its own as external (and refuses to
/// stop it), and rewrites the broker's configuration from them on every start.
fn services_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    let unset = |v: &str| std::env::var_os(v).is_none();
    if unset("NEKHEBET_PG_PORT") {
        let port = std::env::var("NEKHEBET_POSTGRES__URL")
            .ok()
            .and_then(|u| u.parse::<tokio_postgres::Config>().ok())
            .and_then(|c| c.get_ports().first().copied());
        if let Some(p) = port {
            env.push(("NEKHEBET_PG_PORT".to_string(), p.to_string()));
        }
    }
    if unset("NEKHEBET_KAFKA_PORT") {
        let port = std::env::var("NEKHEBET_KAFKA__BROKERS").ok().and_then(|b| {
            let first = b.split(',').next()?.to_string();
            Some(first.rsplit_once(':')?.1.to_string())
        });
        if let Some(p) = port {
            env.push(("NEKHEBET_KAFKA_PORT".to_string(), p));
        }
    }
    if unset("NEKHEBET_KAFKA_CONTROLLER_PORT") {
        // Not derivable from the broker address: take it from the configuration the running broker
        // was started with (the script writes it under <its repository>/.local).
        let script = services_script();
        let script = script.canonicalize().unwrap_or(script);
        let props = script
            .parent()
            .and_then(Path::parent)
            .map(|root| root.join(".local/kafka/config/server.properties"));
        let port = props
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let voters = l.strip_prefix("controller.quorum.voters=")?;
                    Some(voters.rsplit_once(':')?.1.trim().to_string())
                })
            });
        if let Some(p) = port {
            env.push(("NEKHEBET_KAFKA_CONTROLLER_PORT".to_string(), p));
        }
    }
    env
}

/// Runs the services script (`stop postgres`, `restart kafka`…) and expects success.
pub fn services(args: &[&str]) {
    let script = services_script();
    let status = Command::new(&script)
        .args(args)
        .envs(services_env())
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(status.success(), "{} {args:?} failed", script.display());
}

/// Starts a service (`postgres` or `kafka`) when dropped, so a test failing half-way does not leave
/// it stopped for the tests after it. Starting a running service is a no-op.
pub struct StartOnDrop(pub &'static str);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(services_script())
            .args(["start", self.0])
            .envs(services_env())
            .status();
    }
}

// ------------------------------------------------------------------------------------ workers

impl WorkerProcess {
    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, after checking the worker did not die on its own (a crash must not pass for a kill).
    pub fn crash(&mut self) {
        assert!(
            self.alive(),
            "the worker exited before it was killed: {:?}\n{}",
            self.child.try_wait(),
            self.log_text()
        );
        self.kill9();
    }

    /// SIGTERM and wait for the exit status (panics after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_timeout(timeout)
            .unwrap_or_else(|| panic!("worker did not exit after SIGTERM\n{}", self.log_text()))
    }

    /// SIGTERM; the worker must exit 0 within `timeout`.
    pub fn terminate_ok(&mut self, timeout: Duration) {
        let status = self.terminate(timeout);
        assert!(
            status.success(),
            "worker exit status {status:?}\n{}",
            self.log_text()
        );
    }

    /// The telemetry address the worker logged (`telemetry.listen = "127.0.0.1:0"`).
    pub fn metrics_addr(&self) -> Option<String> {
        let log = self.log_text();
        let rest = &log[log.find("metrics on http://")? + "metrics on http://".len()..];
        Some(rest[..rest.find("/metrics")?].to_string())
    }

    /// Its `/metrics` text, when it answers.
    pub fn metrics(&self) -> Option<String> {
        let (status, body) = http_get(&self.metrics_addr()?, "/metrics").ok()?;
        (status == 200).then_some(body)
    }

    /// Log lines containing `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// Waits until the worker's log contains `needle` (panics with the log after `timeout`).
pub async fn wait_log(w: &WorkerProcess, needle: &str, timeout: Duration) {
    let found = tokio::time::timeout(timeout, async {
        while !w.log_text().contains(needle) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "timed out after {timeout:?} waiting for {needle:?} in the worker log\n{}",
        w.log_text()
    );
}

/// Minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of the Prometheus series `name` whose labels include every pair of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

// ------------------------------------------------------------------------------------ scenario

/// One fault scenario: its own database, LMDB directory, topic (and DLQ topic), group and worker
/// logs. Logs are kept (and their directory printed) when the test fails or
/// `NEKHEBET_KEEP_TEST_LOGS` is set.
pub struct Scenario {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub logs: tempfile::TempDir,
    pub topic: String,
    pub group: String,
    /// The workers' configuration (`lmdb.path` is `<dir>/lmdb` unless a test moves it).
    pub config: Config,
}

impl Scenario {
    pub async fn new(name: &str, partitions: i32) -> Scenario {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = tempfile::tempdir().expect("tempdir");
        let topic = k::random_name(name);
        let group = k::random_name(&format!("{name}-group"));
        k::create_topic(&topic, partitions).await;
        let mut config = k::worker_config(&db.url, &dir.path().join("lmdb"), &topic, &group);
        // Kafka's minimum session: a killed worker's partitions move on after 6 s, not 10.
        config.kafka.session_timeout_ms = 6_000;
        config.kafka.drain_timeout_ms = 3_000;
        if std::env::var_os("NEKHEBET_KEEP_TEST_LOGS").is_some() {
            eprintln!("worker logs: {}", logs.path().display());
        }
        Scenario {
            db,
            dir,
            logs,
            topic,
            group,
            config,
        }
    }

    pub fn lmdb(&self) -> &Path {
        &self.config.lmdb.path
    }

    /// A worker process with this scenario's configuration; its log is `<logs>/<name>.log`.
    pub fn spawn(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> WorkerProcess {
        self.spawn_with(&self.config, name, args, env)
    }

    pub fn spawn_with(
        &self,
        config: &Config,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        WorkerProcess::spawn(
            config,
            args,
            env,
            &self.logs.path().join(format!("{name}.log")),
        )
    }

    /// A worker with an LMDB directory of its own, as deployed (one volume per replica): the
    /// replica's directory `<dir>/lmdb-<replica>` is kept across its restarts.
    pub fn spawn_replica(&self, replica: &str, name: &str, args: &[&str]) -> WorkerProcess {
        let mut config = self.config.clone();
        config.lmdb.path = self.replica_lmdb(replica);
        self.spawn_with(&config, name, args, &[])
    }

    pub fn replica_lmdb(&self, replica: &str) -> PathBuf {
        self.dir.path().join(format!("lmdb-{replica}"))
    }

    /// Waits until each of these replicas' LMDB (their workers running) holds exactly the valid
    /// set, byte for byte: the LMDB mirror of each worker copies what other replicas stored.
    pub async fn wait_replicas_complete(&self, replicas: &[&str], produced: &ProduceReport) {
        let expected = k::expected_valid(&[produced]).by_hash;
        for r in replicas {
            let dir = self.replica_lmdb(r);
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                let blobs = lmdb_blobs(&dir).await;
                if blobs == expected {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let missing = expected.keys().filter(|h| !blobs.contains_key(*h)).count();
                    let extra = blobs.keys().filter(|h| !expected.contains_key(*h)).count();
                    let differ = blobs
                        .iter()
                        .filter(|(h, b)| expected.get(*h).is_some_and(|e| e != *b))
                        .count();
                    panic!(
                        "replica {r}'s LMDB holds {} blobs, not the {} valid envelopes, after 120 s: {missing} missing, {extra} not valid, {differ} with other bytes; the workers' mirror logs:\n{}",
                        blobs.len(),
                        expected.len(),
                        self.log_lines_with("LMDB mirror")
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Every line of every process log of the scenario that contains `needle`.
    pub fn log_lines_with(&self, needle: &str) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.logs.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines().filter(|l| l.contains(needle)) {
                out.push_str(&format!("{}: {l}\n", e.file_name().to_string_lossy()));
            }
        }
        out
    }

    /// The exactness of a group whose replicas have LMDB directories of their own: PostgreSQL holds
    /// exactly the valid set, every blob of every replica's LMDB is a valid envelope byte for byte
    /// (nothing foreign, nothing of a refused message), and the replicas' LMDBs together hold the
    /// valid set (each holds the batches it wrote and what its mirror copied while it ran; that
    /// each running replica becomes complete is [`Scenario::wait_replicas_complete`]).
    pub async fn assert_replicas_exact(&self, replicas: &[&str], produced: &ProduceReport) {
        let expected = k::expected_valid(&[produced]);
        let pg = pg_events(&self.db.url).await;
        assert!(
            pg == expected.by_id,
            "PostgreSQL differs from the valid set"
        );
        let mut union = BTreeMap::new();
        for r in replicas {
            let blobs = lmdb_blobs(&self.replica_lmdb(r)).await;
            for (hash, bytes) in &blobs {
                assert_eq!(
                    expected.by_hash.get(hash),
                    Some(bytes),
                    "replica {r}'s LMDB holds {hash} with bytes that are not the stored envelope's"
                );
            }
            eprintln!("replica {r}: {} blobs", blobs.len());
            union.extend(blobs);
        }
        assert!(
            union == expected.by_hash,
            "the replicas' LMDBs together hold {} of {} envelopes",
            union.len(),
            expected.by_hash.len()
        );
    }

    /// The shutdown budget of a SIGTERM, plus a margin.
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.config.shutdown.timeout_ms + 10_000)
    }

    pub async fn event_count(&self) -> i64 {
        k::event_count(&self.db.url).await
    }

    pub async fn wait_events_at_least(&self, n: i64, timeout: Duration) {
        let url = self.db.url.clone();
        k::wait_for(timeout, &format!("at least {n} stored events"), || {
            let url = url.clone();
            async move { (k::event_count(&url).await >= n).then_some(()) }
        })
        .await;
    }

    pub async fn wait_committed_to_end(&self, timeout: Duration) {
        k::wait_committed_to_end(&self.group, &self.topic, timeout).await;
    }

    /// The exactness every fault test ends with, once the workers are stopped:
    /// - Kafka: the group's committed offset of every non-empty partition is its end offset;
    /// - PostgreSQL holds exactly the valid set (by id, byte for byte) and LMDB exactly the same
    ///   envelopes (by content hash);
    /// - the DLQ holds exactly the poison set by source (partition, offset), each with its original
    ///   value and the reason its kind calls for. A position may repeat only when `dlq_repeats`
    ///   (a worker was killed between a DLQ acknowledgement and the offset commit: at-least-once).
    ///
    /// Returns how many DLQ messages were repeats.
    pub async fn assert_exactly_once(&self, produced: &ProduceReport, dlq_repeats: bool) -> usize {
        assert_committed_equals_end(&self.group, &self.topic);
        k::assert_stores_hold_exactly(&self.db.url, self.lmdb(), &k::expected_valid(&[produced]))
            .await;
        let repeats = super::dlq::assert_holds_exactly_the_poison(
            &self.topic,
            produced,
            self.config.verify.enabled,
        );
        assert!(
            dlq_repeats || repeats == 0,
            "{repeats} DLQ message(s) repeated although no worker crashed"
        );
        repeats
    }

    /// Nothing committed that is not done: below the group's committed offset of each partition,
    /// every valid envelope is in PostgreSQL and in LMDB (same bytes) and every poison message is
    /// in the DLQ. Call it when the stores cannot change underneath (workers stopped, or stuck).
    /// Returns the committed offsets.
    pub async fn assert_committed_only_what_is_done(
        &self,
        produced: &ProduceReport,
    ) -> BTreeMap<i32, i64> {
        let committed = k::committed_offsets(&self.group, &self.topic);
        let pg = pg_events(&self.db.url).await;
        let lmdb = lmdb_blobs(self.lmdb()).await;
        let dlq: BTreeSet<(i32, i64)> = super::dlq::positions(&self.topic).into_iter().collect();
        let hashes = valid_hashes(produced);
        let mut checked = 0;
        for rec in &produced.records {
            if committed
                .get(&rec.partition)
                .is_none_or(|c| rec.offset >= *c)
            {
                continue;
            }
            checked += 1;
            let at = format!("{}/{}", rec.partition, rec.offset);
            match rec.kind {
                Kind::Valid => {
                    let id = rec.id.expect("valid records have ids");
                    assert_eq!(
                        pg.get(&id).map(Vec::as_slice),
                        Some(&rec.value[..]),
                        "offset committed past {at}, but PostgreSQL does not hold envelope {id}"
                    );
                    assert_eq!(
                        lmdb.get(&hashes[&id]).map(Vec::as_slice),
                        Some(&rec.value[..]),
                        "offset committed past {at}, but LMDB does not hold envelope {id}"
                    );
                }
                Kind::Poison(_) => assert!(
                    dlq.contains(&(rec.partition, rec.offset)),
                    "offset committed past {at}, but the poison message there is not in the DLQ"
                ),
                Kind::Duplicate | Kind::Replay | Kind::Repeat => {}
            }
        }
        eprintln!("committed {committed:?}: {checked} messages below it, every one done");
        committed
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("NEKHEBET_KEEP_TEST_LOGS").is_some() {
            let keep = std::mem::replace(&mut self.logs, tempfile::tempdir().expect("tempdir"));
            eprintln!("worker logs kept in {}", keep.keep().display());
        }
    }
}

// ------------------------------------------------------------------------------------ checks

/// Committed offset = end offset for every non-empty partition of `topic`.
pub fn assert_committed_equals_end(group: &str, topic: &str) {
    let ends: BTreeMap<i32, i64> = k::end_offsets(topic)
        .into_iter()
        .filter(|(_, e)| *e > 0)
        .collect();
    let committed: BTreeMap<i32, i64> = k::committed_offsets(group, topic)
        .into_iter()
        .filter(|(p, _)| ends.contains_key(p))
        .collect();
    assert_eq!(
        committed, ends,
        "committed offsets vs end offsets of {topic}"
    );
}

/// id → content hash of the valid records produced.
pub fn valid_hashes(produced: &ProduceReport) -> HashMap<uuid::Uuid, String> {
    let limits = nekhebet_store::envelope::Limits {
        max_message_bytes: usize::MAX,
    };
    produced
        .records
        .iter()
        .filter(|r| r.kind == Kind::Valid)
        .map(|r| {
            let env = nekhebet_store::envelope::decode(r.value.clone(), &limits).expect("decodes");
            (env.header.id, env.header.payload_hash)
        })
        .collect()
}

/// PostgreSQL's events: id → envelope bytes.
pub async fn pg_events(db_url: &str) -> BTreeMap<uuid::Uuid, Vec<u8>> {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .query("SELECT id, envelope FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The LMDB at `dir`, opened as `serve` opens it: for reading beside a worker (no write
/// transaction once its databases exist), asking for the smallest map (LMDB raises it to the size
/// in use), so it never records a map size of its own that the worker would have to adopt.
pub async fn open_lmdb(dir: &Path) -> nekhebet_store::store::LmdbStore {
    let mut cfg = Config::default().lmdb;
    cfg.path = dir.to_path_buf();
    cfg.map_size = 1 << 20;
    nekhebet_store::store::LmdbStore::open_reader(&cfg, false)
        .await
        .expect("open LMDB")
}

/// LMDB's blobs in whichever layout the environment holds: content hash → envelope bytes (the
/// append layout keys them by `events.seq`; the hash is read from each envelope's header). A
/// worker may have the environment open: this process only reads.
pub async fn lmdb_blobs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let lmdb = open_lmdb(dir).await;
    let mut blobs = BTreeMap::new();
    let mut after = None;
    loop {
        let page = lmdb.scan(after.clone(), 1000).await.expect("scan LMDB");
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        blobs.extend(page);
    }
    let limits = nekhebet_store::envelope::Limits {
        max_message_bytes: usize::MAX,
    };
    let mut appended = BTreeSet::new();
    let mut after = None;
    loop {
        let page = lmdb.scan_seqs(after, 1000).await.expect("scan LMDB blobs");
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for (seq, bytes) in page {
            let env = nekhebet_store::envelope::decode(bytes.clone().into(), &limits)
                .unwrap_or_else(|e| panic!("LMDB blob {seq} does not decode: {e}"));
            let hash = env.header.payload_hash;
            assert!(
                appended.insert(hash.clone()),
                "LMDB holds envelope {hash} twice (again under seq {seq})"
            );
            blobs.insert(hash, bytes);
        }
    }
    blobs
}

/// The applied offsets of `topic`'s partitions in PostgreSQL and in the LMDB at `lmdb`, and the
/// group's committed offsets (each: partition → offset; absent when none). Call when no worker
/// writes (after a kill): it tells where the kill landed.
pub async fn offsets_everywhere(
    db_url: &str,
    lmdb: &Path,
    group: &str,
    topic: &str,
) -> (BTreeMap<i32, i64>, BTreeMap<i32, i64>, BTreeMap<i32, i64>) {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let pg: BTreeMap<i32, i64> = client
        .query(
            "SELECT partition, applied_offset FROM nekhebet_consumer_offsets WHERE topic = $1 AND applied_offset >= 0",
            &[&topic],
        )
        .await
        .expect("offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let kafka = k::committed_offsets(group, topic);
    if !lmdb.join("data.mdb").exists() {
        // Killed before it opened its stores: no environment to create here.
        return (pg, BTreeMap::new(), kafka);
    }
    let mut cfg = Config::default().lmdb;
    cfg.path = lmdb.to_path_buf();
    cfg.map_size = 1 << 20;
    let partitions: Vec<nekhebet_store::partition::Partition> = k::end_offsets(topic)
        .keys()
        .map(|p| nekhebet_store::partition::Partition::new(topic, *p))
        .collect();
    let lmdb = nekhebet_store::store::LmdbStore::open(&cfg, false)
        .await
        .expect("open LMDB");
    let in_lmdb: BTreeMap<i32, i64> = lmdb
        .applied_offsets(partitions)
        .await
        .expect("LMDB offsets")
        .into_iter()
        .map(|(p, o)| (p.number, o))
        .collect();
    drop(lmdb);
    (pg, in_lmdb, kafka)
}

/// The number in the worker's outcome table (printed at exit) for `row` (`redelivered`…).
pub fn outcome_from_table(log: &str, row: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        // "replay (seth.caught)   134": the count is the line's last field.
        let rest = l.strip_prefix(row)?;
        rest.split_whitespace().last()?.parse().ok()
    })
}

// ------------------------------------------------------------------------------------ scenarios

/// PostgreSQL stopped for `outage` under a running worker process (used with 20 s in CI and 60 s
/// by `scripts/chaos`): the worker backs off with consumption paused and stays up, commits nothing
/// it did not store meanwhile, resumes when the database is back, and ends exact (no DLQ repeats:
/// nothing crashed).
pub async fn postgres_outage(outage: Duration) {
    let s = Scenario::new("pg-outage", 3).await;
    let producing = tokio::spawn({
        let topic = s.topic.clone();
        async move { k::produce_at(&topic, 3000, Some(100.0), 0.05, 0.05, 0.05, 31).await }
    });
    let mut w = s.spawn("worker", &[], &[]);
    s.wait_events_at_least(200, Duration::from_secs(60)).await;

    let _restart = StartOnDrop("postgres");
    services(&["stop", "postgres"]);
    let stopped = std::time::Instant::now();
    // The outage itself: this is the one sleep that is the point of the test. Shortly before its
    // end, while the database is still down, take the group's committed offsets: whatever they
    // cover must have been stored before the outage (checked once the database is back).
    tokio::time::sleep(outage.saturating_sub(Duration::from_secs(2))).await;
    let during = k::committed_offsets(&s.group, &s.topic);
    let during_at = chrono::Utc::now();
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    assert!(
        w.alive(),
        "the worker died while PostgreSQL was down\n{}",
        w.log_text()
    );
    services(&["start", "postgres"]);

    let produced = producing.await.expect("producer task");
    s.wait_committed_to_end(Duration::from_secs(120)).await;
    w.terminate_ok(s.stop_timeout());

    let log = w.log_text();
    assert!(
        log.contains("store write failed; retrying"),
        "no retry was logged\n{log}"
    );
    assert!(
        log.contains("recovered after retries"),
        "no recovery was logged\n{log}"
    );
    assert_committed_before(&s, &produced, &during, during_at).await;
    s.assert_exactly_once(&produced, false).await;
}

/// Every valid envelope below `committed` (offsets read at `at`) was stored in PostgreSQL before
/// `at` (`events.created_at` is the storing transaction's start): the offsets never ran ahead of
/// the store.
pub async fn assert_committed_before(
    s: &Scenario,
    produced: &ProduceReport,
    committed: &BTreeMap<i32, i64>,
    at: chrono::DateTime<chrono::Utc>,
) {
    let (client, conn) = tokio_postgres::connect(&s.db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let stored: HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> = client
        .query("SELECT id, created_at FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut below = 0;
    for rec in produced.records.iter().filter(|r| r.kind == Kind::Valid) {
        if committed
            .get(&rec.partition)
            .is_none_or(|c| rec.offset >= *c)
        {
            continue;
        }
        below += 1;
        let id = rec.id.expect("valid records have ids");
        let created = stored.get(&id).unwrap_or_else(|| {
            panic!(
                "committed past {}/{} but {id} is not stored",
                rec.partition, rec.offset
            )
        });
        assert!(
            *created < at,
            "offset of {}/{} committed by {at} but {id} stored only at {created}",
            rec.partition,
            rec.offset
        );
    }
    eprintln!("offsets committed during the outage {committed:?} cover {below} valid envelopes, all stored before");
}
