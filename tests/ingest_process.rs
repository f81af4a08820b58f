//! The worker as a process (`nekhebet-store ingest`, configured through the environment), killed
//! and restarted, against the real local Kafka and PostgreSQL. Every test has its own topic, group,
//! database and LMDB directory. They run one at a time (a lock): each starts worker processes and
//! a 2-core machine gives slow, flaky timings when four tests each run two workers.

mod common;

use std::time::Duration;

use common::dlq;
use common::faults::{self as f, Scenario};
use common::kafka::{self as k, WorkerProcess};
use nekhebet_store::config::Config;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Stops a worker with SIGTERM and expects exit code 0 within the shutdown timeout.
fn terminate(w: &mut WorkerProcess, config: &Config) {
    w.signal("TERM");
    let status = w
        .wait_timeout(Duration::from_millis(config.shutdown.timeout_ms + 5_000))
        .unwrap_or_else(|| panic!("worker did not exit after SIGTERM\n{}", w.log_text()));
    assert!(
        status.success(),
        "worker exit status {status:?}\n{}",
        w.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_and_restart_stores_exactly_the_valid_set() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("ingest-proc", 4).await;
    let producing = tokio::spawn({
        let topic = s.topic.clone();
        async move { k::produce_at(&topic, 3000, Some(600.0), 0.05, 0.05, 0.05, 21).await }
    });
    let mut stored_floor = 200;
    for round in 0..3 {
        let mut w = s.spawn(&format!("worker-{round}"), &[], &[]);
        s.wait_events_at_least(stored_floor, Duration::from_secs(60))
            .await;
        w.kill9();
        stored_floor += 400;
    }
    let produced = producing.await.expect("producer task");
    let mut w = s.spawn("worker-final", &[], &[]);
    k::wait_committed_to_end(&s.group, &s.topic, Duration::from_secs(120)).await;
    terminate(&mut w, &s.config);

    k::assert_stores_hold_exactly(&s.db.url, s.lmdb(), &k::expected_valid(&[&produced])).await;
    // Repeats allowed: a worker killed between the DLQ acknowledgement and the offset commit.
    dlq::assert_holds_exactly_the_poison(&s.topic, &produced, s.config.verify.enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_commits_what_it_stored_and_exits_0() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("ingest-proc", 2).await;
    let produced = k::produce(&s.topic, 4000, 0.0, 0.0, 0.02, 22).await;
    let mut w = s.spawn("worker", &[], &[]);
    s.wait_events_at_least(300, Duration::from_secs(60)).await;
    terminate(&mut w, &s.config);
    assert!(
        w.log_text().contains("total consumed"),
        "the outcome table is printed at exit\n{}",
        w.log_text()
    );

    // Everything below each committed offset is stored (valid) or dead-lettered (poison).
    let committed = k::committed_offsets(&s.group, &s.topic);
    assert!(
        !committed.is_empty(),
        "SIGTERM committed nothing\n{}",
        w.log_text()
    );
    let expected = k::expected_valid(&[&produced]);
    let (client, conn) = tokio_postgres::connect(&s.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for rec in &produced.records {
        let below = committed
            .get(&rec.partition)
            .is_some_and(|c| rec.offset < *c);
        if below && rec.kind == nekhebet_store::dev::produce::Kind::Valid {
            let id = rec.id.expect("valid records have ids");
            let row = client
                .query_opt("SELECT envelope FROM events WHERE id = $1", &[&id])
                .await
                .unwrap();
            assert_eq!(
                row.map(|r| r.get::<_, Vec<u8>>(0)),
                Some(rec.value.to_vec()),
                "committed but not stored: {id}"
            );
        }
    }

    // A restart picks up where it stopped and ends with exactly the valid set.
    let mut w = s.spawn("worker-2", &["--until-caught-up"], &[]);
    let status = w.wait_timeout(Duration::from_secs(120)).expect("caught up");
    assert!(status.success(), "{}", w.log_text());
    k::assert_stores_hold_exactly(&s.db.url, s.lmdb(), &expected).await;
    let repeats =
        dlq::assert_holds_exactly_the_poison(&s.topic, &produced, s.config.verify.enabled);
    assert_eq!(repeats, 0, "dead-lettered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_killed_the_other_takes_over() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("ingest-proc", 4).await;
    // /readyz and /metrics, to read the mirror's lag.
    s.config.telemetry.listen = "127.0.0.1:0".into();
    let producing = tokio::spawn({
        let topic = s.topic.clone();
        async move { k::produce_at(&topic, 3000, Some(500.0), 0.05, 0.05, 0.05, 23).await }
    });
    // One LMDB per worker, as deployed (one volume per replica).
    let mut w1 = s.spawn_replica("1", "worker-1", &[]);
    let mut w2 = s.spawn_replica("2", "worker-2", &[]);
    // Both hold partitions once each logged an assignment.
    k::wait_for(
        Duration::from_secs(60),
        "both workers to get partitions",
        || {
            let both = w1.log_text().contains("partition assigned")
                && w2.log_text().contains("partition assigned");
            async move { both.then_some(()) }
        },
    )
    .await;
    s.wait_events_at_least(600, Duration::from_secs(60)).await;
    w1.kill9();
    let produced = producing.await.expect("producer task");
    let caught_up = tokio::time::timeout(
        Duration::from_secs(120),
        k::wait_committed_to_end(&s.group, &s.topic, Duration::from_secs(120)),
    )
    .await;
    assert!(
        caught_up.is_ok(),
        "the surviving worker did not catch up; its log:\n{}",
        w2.log_text()
    );
    // The survivor's LMDB mirror copies what the killed worker stored, and its /readyz and
    // /metrics say so.
    s.wait_replicas_complete(&["2"], &produced).await;
    let addr = w2.metrics_addr().expect("worker 2 serves /readyz");
    k::wait_for(Duration::from_secs(30), "worker 2's mirror lag 0", || {
        let ready = f::http_get(&addr, "/readyz").ok();
        async move {
            let (status, body) = ready?;
            let body: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == 200
                && body == serde_json::json!({"ready": true, "missing": [], "lmdb_mirror_lag_events": 0}))
            .then_some(())
        }
    })
    .await;
    let metrics = w2.metrics().expect("worker 2's /metrics");
    assert_eq!(
        f::metric_sum(&metrics, "nekhebet_lmdb_mirror_lag_events", &[]),
        0.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("nekhebet_lmdb_mirror_lag_events"),
        "{metrics}"
    );
    terminate(&mut w2, &s.config);
    assert!(
        w2.log_text().matches("partition assigned").count() > 2,
        "worker 2 never took over worker 1's partitions\n{}",
        w2.log_text()
    );
    s.assert_replicas_exact(&["1", "2"], &produced).await;
    // Repeats allowed: a worker killed between the DLQ acknowledgement and the offset commit.
    dlq::assert_holds_exactly_the_poison(&s.topic, &produced, s.config.verify.enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_postgres_and_lmdb_commits_heals_on_restart() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("ingest-proc", 2).await;
    let produced = k::produce(&s.topic, 600, 0.0, 0.0, 0.0, 24).await;
    let mut w = s.spawn(
        "worker-crash",
        &[],
        &[("NEKHEBET_FAILPOINT", "after_postgres_commit")],
    );
    let status = w
        .wait_timeout(Duration::from_secs(60))
        .expect("the failpoint aborts the worker");
    assert!(!status.success());
    assert!(
        w.log_text().contains("failpoint after_postgres_commit"),
        "{}",
        w.log_text()
    );
    let in_pg = k::event_count(&s.db.url).await;
    assert!(
        in_pg > 0,
        "the first batch reached PostgreSQL before the crash"
    );

    let mut w = s.spawn("worker-heal", &["--until-caught-up"], &[]);
    let status = w.wait_timeout(Duration::from_secs(120)).expect("caught up");
    assert!(status.success(), "{}", w.log_text());
    k::assert_stores_hold_exactly(&s.db.url, s.lmdb(), &k::expected_valid(&[&produced])).await;
    // The batch PostgreSQL held but LMDB did not is read again and recognised as redelivered.
    let table = w.log_text();
    let redelivered: u64 = table
        .lines()
        .find_map(|l| {
            l.strip_prefix("redelivered")
                .map(|n| n.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    assert_eq!(redelivered as i64, in_pg, "{table}");
}

/// LMDB holding an older batch than PostgreSQL (not only missing a first batch): the crash comes at
/// the third PostgreSQL commit, so LMDB has applied offsets of its own, behind PostgreSQL's. The
/// restart resumes each partition from LMDB's offset, reads exactly the messages LMDB lacks again
/// (counted `redelivered`, nothing stored twice), heals LMDB, and ends with PostgreSQL, LMDB and
/// Kafka at the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmdb_behind_postgres_by_a_later_batch_heals_on_restart() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::new("ingest-proc", 2).await;
    s.config.batch.max_records = 50;
    let produced = k::produce(&s.topic, 600, 0.0, 0.0, 0.0, 25).await;
    let mut w = s.spawn(
        "worker-crash",
        &[],
        &[("NEKHEBET_FAILPOINT", "after_postgres_commit@3")],
    );
    let status = w
        .wait_timeout(Duration::from_secs(60))
        .expect("the failpoint aborts the worker");
    assert!(!status.success());
    assert!(
        w.log_text()
            .contains("failpoint after_postgres_commit reached (hit 3)"),
        "{}",
        w.log_text()
    );
    // The window the test is about: LMDB applied something, PostgreSQL a later batch on top.
    let (pg, lmdb, _) = f::offsets_everywhere(&s.db.url, s.lmdb(), &s.group, &s.topic).await;
    assert!(!lmdb.is_empty(), "LMDB holds the first batches: {lmdb:?}");
    let behind: i64 = pg
        .iter()
        .map(|(p, o)| o - lmdb.get(p).copied().unwrap_or(-1))
        .sum();
    assert!(
        behind > 0 && pg.iter().any(|(p, o)| lmdb.get(p).is_some_and(|l| l < o)),
        "PostgreSQL {pg:?} is ahead of LMDB {lmdb:?} on a partition LMDB has applied offsets for"
    );
    let in_pg = k::event_count(&s.db.url).await;
    let lmdb_blobs = f::lmdb_blobs(s.lmdb()).await.len() as i64;
    assert_eq!(
        in_pg - lmdb_blobs,
        behind,
        "what LMDB lacks is the batch past its offsets"
    );

    let mut w = s.spawn("worker-heal", &["--until-caught-up"], &[]);
    let status = w.wait_timeout(Duration::from_secs(120)).expect("caught up");
    assert!(status.success(), "{}", w.log_text());
    k::assert_stores_hold_exactly(&s.db.url, s.lmdb(), &k::expected_valid(&[&produced])).await;
    assert_eq!(
        f::outcome_from_table(&w.log_text(), "redelivered"),
        Some(behind as u64),
        "exactly the messages past LMDB's offsets are read again\n{}",
        w.log_text()
    );
    assert_eq!(
        f::outcome_from_table(&w.log_text(), "stored"),
        Some(600 - in_pg as u64)
    );
    let (pg, lmdb, kafka) = f::offsets_everywhere(&s.db.url, s.lmdb(), &s.group, &s.topic).await;
    let ends = k::end_offsets(&s.topic);
    for (p, end) in ends {
        assert_eq!(pg.get(&p), Some(&(end - 1)), "PostgreSQL's offset of {p}");
        assert_eq!(lmdb.get(&p), Some(&(end - 1)), "LMDB's offset of {p}");
        assert_eq!(kafka.get(&p), Some(&end), "Kafka's committed offset of {p}");
    }
}
