//! The ingest loop in-process against the real local Kafka and PostgreSQL (`scripts/services up`,
//! then `source .local/services.env`). Every test has its own topic, group, database and LMDB.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::faults::Scenario;
use common::kafka as k;
use nekhebet_store::dev::produce::{Kind, ProduceReport};
use nekhebet_store::ingest::{self, IngestOptions, IngestReport};
use nekhebet_store::store::Store;
use tokio_util::sync::CancellationToken;

fn assert_report_matches(report: &IngestReport, produced: &ProduceReport) {
    assert_eq!(report.consumed, produced.sent, "consumed: {report:#?}");
    assert_eq!(report.stored, produced.valid, "stored: {report:#?}");
    assert_eq!(
        report.duplicate, produced.duplicates,
        "duplicate: {report:#?}"
    );
    assert_eq!(report.replay, produced.replays, "replay: {report:#?}");
    assert_eq!(report.rejected, produced.poison, "rejected: {report:#?}");
    assert_eq!(report.redelivered, 0, "redelivered: {report:#?}");
    assert_eq!(report.abandoned, 0, "abandoned: {report:#?}");
    assert_eq!(report.decided(), report.consumed);
}

fn assert_committed_to_the_end(group: &str, topic: &str) {
    let ends = k::end_offsets(topic);
    let committed = k::committed_offsets(group, topic);
    let nonempty: BTreeMap<i32, i64> = ends.into_iter().filter(|(_, e)| *e > 0).collect();
    assert_eq!(
        committed
            .into_iter()
            .filter(|(p, _)| nonempty.contains_key(p))
            .collect::<BTreeMap<_, _>>(),
        nonempty,
        "committed offsets vs end offsets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_stores_every_envelope_byte_exact() {
    let s = Scenario::new("ingest-test", 3).await;
    // More messages than the worker's record queue holds, so back-pressure (and pausing) is
    // exercised, not only the fast path.
    let produced = k::produce(&s.topic, 3000, 0.0, 0.0, 0.0, 11).await;
    assert_eq!(produced.valid, 3000);

    let report = k::ingest_until_caught_up(&s.config).await;
    assert_report_matches(&report, &produced);
    assert!(report.batches_committed >= 4, "{report:#?}");

    let expected = k::expected_valid(&[&produced]);
    k::assert_stores_hold_exactly(&s.db.url, s.lmdb(), &expected).await;
    assert_committed_to_the_end(&s.group, &s.topic);

    // Through the hybrid read path too.
    let store = Store::open(&s.config).await.expect("open store");
    for (id, bytes) in expected.by_id.iter().take(20) {
        assert_eq!(
            store.get(*id).await.expect("get").as_deref(),
            Some(&bytes[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_replays_and_poison_are_counted_and_poison_goes_to_the_dlq_with_headers() {
    let s = Scenario::new("ingest-test", 4).await;
    let produced = k::produce(&s.topic, 800, 0.1, 0.1, 0.1, 12).await;
    assert!(
        produced.duplicates > 20 && produced.replays > 20 && produced.poison > 20,
        "{produced}"
    );

    let report = k::ingest_until_caught_up(&s.config).await;
    assert_report_matches(&report, &produced);
    assert_eq!(report.dlq_published, produced.poison);
    k::assert_stores_hold_exactly(&s.db.url, s.lmdb(), &k::expected_valid(&[&produced])).await;
    assert_committed_to_the_end(&s.group, &s.topic);

    // replay_guard: one row per valid and per duplicate envelope.
    let client = s.db.client().await;
    let guard: i64 = client
        .query_one("SELECT count(*) FROM replay_guard", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(guard as u64, produced.valid + produced.duplicates);

    // The DLQ holds exactly the poison, with the original key and value and every header.
    let poison: BTreeMap<(i32, i64), _> = produced
        .records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Poison(_)))
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let dlq = k::read_all(&format!("{}.dlq", s.topic));
    assert_eq!(dlq.len(), poison.len());
    let mut seen = std::collections::BTreeSet::new();
    for m in &dlq {
        let reason = &m.headers["nekhebet.reason"];
        assert!(!reason.is_empty());
        assert!(!m.headers["nekhebet.detail"].is_empty(), "{m:?}");
        assert_eq!(m.headers["nekhebet.source.topic"], s.topic);
        let p: i32 = m.headers["nekhebet.source.partition"].parse().unwrap();
        let o: i64 = m.headers["nekhebet.source.offset"].parse().unwrap();
        let original = poison
            .get(&(p, o))
            .unwrap_or_else(|| panic!("DLQ message for {p}/{o} is not a poison record"));
        assert_eq!(m.key.as_deref(), Some(&original.key[..]));
        assert_eq!(m.value.clone().unwrap_or_default(), original.value.to_vec());
        assert!(seen.insert((p, o)), "{p}/{o} dead-lettered twice");
    }
    // Stable reason codes, the same for the same kind of poison.
    let mut by_kind: BTreeMap<&str, std::collections::BTreeSet<String>> = BTreeMap::new();
    for m in &dlq {
        let p: i32 = m.headers["nekhebet.source.partition"].parse().unwrap();
        let o: i64 = m.headers["nekhebet.source.offset"].parse().unwrap();
        by_kind
            .entry(poison[&(p, o)].kind.as_str())
            .or_default()
            .insert(m.headers["nekhebet.reason"].clone());
    }
    for (kind, reasons) in &by_kind {
        assert_eq!(reasons.len(), 1, "{kind} got several reasons: {reasons:?}");
    }
    assert_eq!(
        report.rejected_by_reason.values().sum::<u64>(),
        produced.poison
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_are_counted_and_heal_a_fresh_lmdb() {
    let s = Scenario::new("ingest-test", 2).await;
    let produced = k::produce(&s.topic, 300, 0.1, 0.1, 0.05, 13).await;
    let first = k::ingest_until_caught_up(&s.config).await;
    assert_report_matches(&first, &produced);

    // A new group and an empty LMDB: the hybrid store's applied offsets are LMDB's (none), so the
    // whole topic is read again; PostgreSQL recognises every message as already applied and LMDB is
    // healed from PostgreSQL's copies.
    let lmdb2 = tempfile::tempdir().unwrap();
    let mut config = k::worker_config(
        &s.db.url,
        lmdb2.path(),
        &s.topic,
        &k::random_name("ingest-group"),
    );
    config.batch.max_records = 64;
    let second = k::ingest_until_caught_up(&config).await;
    assert_eq!(second.consumed, produced.sent, "{second:#?}");
    // Every message was decided when it was read the first time, the poison included (it was
    // dead-lettered then): all of them are redelivered now, and nothing is dead-lettered twice.
    assert_eq!(second.redelivered, produced.sent, "{second:#?}");
    assert_eq!(
        second.stored + second.duplicate + second.replay + second.rejected,
        0,
        "{second:#?}"
    );
    let repeats =
        common::dlq::assert_holds_exactly_the_poison(&s.topic, &produced, s.config.verify.enabled);
    assert_eq!(repeats, 0, "dead-lettered twice");
    k::assert_stores_hold_exactly(&s.db.url, lmdb2.path(), &k::expected_valid(&[&produced])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_is_isolated_and_dead_lettered_the_rest_stored() {
    use nekhebet_store::dev::signing::{sign, EnvelopeSpec};
    let s = Scenario::new("ingest-test", 1).await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let spec = |i: u64, source: &str| EnvelopeSpec {
        event_type: "omen.observed".into(),
        source: source.into(),
        key_id: "test-key".into(),
        payload: serde_json::json!({ "seq": i, "note": "x" }),
        issued_at: None,
        expires_at: None,
        nonce: None,
        id: None,
    };
    // Envelope 30 is genuinely signed, but its `source` holds a NUL character, which a TEXT column
    // cannot store: PostgreSQL refuses it, whatever batch it lands in.
    let mut values = Vec::new();
    for i in 0..60u64 {
        let source = if i == 30 { "node\u{0}1" } else { "node-1" };
        values.push(sign(&spec(i, source), &key));
    }
    let producer: rdkafka::producer::FutureProducer =
        nekhebet_store::kafka::producer_config(&k::brokers(), &BTreeMap::new())
            .create()
            .unwrap();
    for v in &values {
        producer
            .send(
                rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&s.topic).payload(&v[..]),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("publish");
    }
    let mut config = s.config.clone();
    config.batch.max_records = 60;
    config.batch.linger_ms = 500;
    let report = k::ingest_until_caught_up(&config).await;
    assert_eq!(report.consumed, 60, "{report:#?}");
    assert_eq!(report.stored, 59, "{report:#?}");
    assert_eq!(
        report
            .rejected_by_reason
            .get(&nekhebet_store::reason::Reason::StoreRejected),
        Some(&1),
        "{report:#?}"
    );

    let dlq = k::read_all(&format!("{}.dlq", s.topic));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers["nekhebet.reason"], "store_rejected");
    assert_eq!(dlq[0].headers["nekhebet.source.offset"], "30");
    assert!(
        dlq[0].headers["nekhebet.detail"].contains("SQLSTATE"),
        "{:?}",
        dlq[0].headers
    );
    assert_eq!(dlq[0].value.as_deref(), Some(&values[30][..]));
    assert_committed_to_the_end(&s.group, &s.topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_token_finishes_in_flight_work_commits_and_returns() {
    let s = Scenario::new("ingest-test", 2).await;
    let produced = k::produce(&s.topic, 500, 0.0, 0.0, 0.05, 14).await;
    let store = Store::open(&s.config).await.expect("open store");
    let token = CancellationToken::new();
    let config = s.config.clone();
    let joined = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = IngestOptions {
        group_joined: Some(joined.clone()),
        ..IngestOptions::default()
    };
    let run = tokio::spawn({
        let token = token.clone();
        async move { ingest::run(&config, store, opts, token).await }
    });
    let ends = k::end_offsets(&s.topic);
    let group = s.group.clone();
    let topic = s.topic.clone();
    k::wait_for(
        Duration::from_secs(90),
        "the worker to commit everything",
        || {
            let (group, topic, ends) = (group.clone(), topic.clone(), ends.clone());
            async move {
                let c = tokio::task::spawn_blocking(move || k::committed_offsets(&group, &topic))
                    .await
                    .ok()?;
                (ends.iter().all(|(p, e)| *e == 0 || c.get(p) == Some(e))).then_some(())
            }
        },
    )
    .await;
    assert!(
        joined.load(std::sync::atomic::Ordering::SeqCst),
        "joined the group"
    );
    let started = std::time::Instant::now();
    token.cancel();
    let report = tokio::time::timeout(
        Duration::from_millis(s.config.shutdown.timeout_ms + 5_000),
        run,
    )
    .await
    .expect("run returned within the shutdown timeout")
    .expect("join")
    .expect("ingest");
    assert!(started.elapsed() < Duration::from_millis(s.config.shutdown.timeout_ms));
    assert_report_matches(&report, &produced);
    assert!(
        !joined.load(std::sync::atomic::Ordering::SeqCst),
        "left the group"
    );
}
