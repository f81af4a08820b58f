//! PostgreSQL stopped for 20 s under a running worker process: the worker backs off with consumption
//! paused, resumes when the database is back, and loses nothing. This binary stops a shared
//! service, so it holds only this test (test binaries run one after another).

mod common;

use std::process::Command;
use std::time::Duration;

use common::kafka::{self as k, WorkerProcess};
use common::pg::TestDb;

fn services(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services");
    let status = Command::new(script)
        .args(args)
        .status()
        .expect("scripts/services");
    assert!(status.success(), "scripts/services {args:?} failed");
}

/// Restarts PostgreSQL even if the test fails half-way, so later test binaries find it running.
struct RestartPostgresOnDrop;

impl Drop for RestartPostgresOnDrop {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services");
        let _ = Command::new(script).args(["start", "postgres"]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_20_s_mid_stream_worker_waits_resumes_and_loses_nothing() {
    let db = TestDb::new().await;
    let lmdb = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let topic = k::random_name("ingest-pg-outage");
    let group = k::random_name("ingest-pg-outage-group");
    k::create_topic(&topic, 3).await;
    let config = k::worker_config(&db.url, lmdb.path(), &topic, &group);

    let producing = tokio::spawn({
        let topic = topic.clone();
        async move { k::produce_at(&topic, 3000, Some(100.0), 0.05, 0.05, 0.05, 31).await }
    });
    let mut w = WorkerProcess::spawn(&config, &[], &[], &logs.path().join("worker.log"));
    let url = db.url.clone();
    k::wait_for(
        Duration::from_secs(60),
        "the worker to store something",
        || {
            let url = url.clone();
            async move { (k::event_count(&url).await >= 200).then_some(()) }
        },
    )
    .await;

    let _restart = RestartPostgresOnDrop;
    services(&["stop", "postgres"]);
    // The outage itself: this is the one sleep that is the point of the test.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        w.child.try_wait().expect("wait").is_none(),
        "the worker died while PostgreSQL was down\n{}",
        w.log_text()
    );
    services(&["start", "postgres"]);

    let produced = producing.await.expect("producer task");
    k::wait_committed_to_end(&group, &topic, Duration::from_secs(120)).await;
    w.signal("TERM");
    let status = w
        .wait_timeout(Duration::from_millis(config.shutdown.timeout_ms + 5_000))
        .unwrap_or_else(|| panic!("worker did not exit after SIGTERM\n{}", w.log_text()));
    assert!(status.success(), "{}", w.log_text());

    let log = w.log_text();
    assert!(
        log.contains("store write failed; retrying"),
        "no retry was logged\n{log}"
    );
    assert!(
        log.contains("recovered after retries"),
        "no recovery was logged\n{log}"
    );
    k::assert_stores_hold_exactly(&db.url, lmdb.path(), &k::expected_valid(&[&produced])).await;
    k::assert_dlq_holds_exactly_the_poison(&topic, &produced, false);
}
