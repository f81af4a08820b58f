//! Silent loss, stalls and misclassified errors (the exactly-once audit, issue 12): a message
//! already applied before a crash, a re-created topic, a dead letter the broker refuses for good,
//! a constraint every message violates, LMDB's map grown by another process, a foreign blob in
//! LMDB, and the benchmark helper pointed at a real store. Real services; each test has its own
//! database, topic, group and LMDB directory.

mod common;

use common::Committed;
use std::collections::BTreeMap;
use std::time::Duration;

use common::faults::Scenario;
use common::kafka as k;
use common::pg::TestDb;
use common::worker::{
    cli_on, dev_cli_on, ingest_until_caught_up, publish, run_python, try_ingest_until_caught_up,
    Producer,
};
use nekhebet_store::store::{HybridStore, LmdbStore, Store};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A message whose batch reached PostgreSQL before a crash is `redelivered` when it is read again,
/// even if it would now fail the checks (here: its `expires_at` passed while the worker was down).
/// It must never end both stored and dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_applied_before_a_crash_is_redelivered_even_if_it_expired_meanwhile() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("applied-then-expired", 1).await;
    let mut p = Producer::new("short-lived", 51);
    let mut spec = p.next_spec();
    let expires = chrono::Utc::now() + chrono::Duration::seconds(4);
    spec.expires_at = Some(expires);
    let bytes = p.sign(&spec);
    publish(&s.topic, &[(b"e".to_vec(), bytes.clone())], None).await;

    let mut w = s.spawn(
        "worker-crash",
        &[],
        &[("NEKHEBET_FAILPOINT", "after_postgres_commit")],
    );
    let status = w
        .wait_timeout(Duration::from_secs(60))
        .expect("the failpoint aborts the worker");
    assert!(!status.success(), "{}", w.log_text());
    assert!(w.log_text().contains("failpoint after_postgres_commit"));
    assert_eq!(s.event_count().await, 1, "the batch reached PostgreSQL");

    // Wait until the envelope has expired (a condition on the clock, not a guess).
    k::wait_for(
        Duration::from_secs(30),
        "the envelope to expire",
        || async { (chrono::Utc::now() > expires + chrono::Duration::seconds(1)).then_some(()) },
    )
    .await;

    let mut w = s.spawn("worker-after", &["--until-caught-up"], &[]);
    let status = w.wait_timeout(Duration::from_secs(120)).expect("caught up");
    assert!(status.success(), "{}", w.log_text());
    let log = w.log_text();
    assert_eq!(
        common::faults::outcome_from_table(&log, "redelivered"),
        Some(1),
        "{log}"
    );
    assert_eq!(
        common::faults::outcome_from_table(&log, "rejected (to DLQ)"),
        Some(0),
        "{log}"
    );
    assert!(
        k::read_all(&format!("{}.dlq", s.topic)).is_empty(),
        "an applied message was also dead-lettered"
    );
    let blobs = common::faults::lmdb_blobs(s.lmdb()).await;
    assert_eq!(blobs.len(), 1, "LMDB healed");
}

/// Stored offsets are keyed by topic name. After the topic is deleted and re-created, the new
/// messages at or below the old stored offset must not be counted `redelivered` and dropped: the
/// worker stops with an error naming the topic and the command that resets its stored offsets;
/// after that reset every new message is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_stops_the_worker_and_after_the_documented_reset_everything_is_stored() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("recreated", 1).await;
    let first = k::produce(&s.topic, 1000, 0.0, 0.0, 0.0, 61).await;
    let report = ingest_until_caught_up(&s.config).await;
    assert_eq!(report.stored, first.valid);

    // Delete and re-create the topic, then publish 100 new envelopes.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        nekhebet_store::kafka::admin_config(&k::brokers(), &BTreeMap::new())
            .create()
            .expect("admin");
    admin
        .delete_topics(&[&s.topic], &rdkafka::admin::AdminOptions::new())
        .await
        .expect("delete topic");
    k::wait_for(Duration::from_secs(60), "the topic re-created", || {
        let topic = s.topic.clone();
        async move {
            // Creation fails while the deletion is still in progress.
            let created = nekhebet_store::kafka::ensure_topics(
                &k::brokers(),
                &BTreeMap::new(),
                &[(&topic, 1)],
            )
            .await
            .is_ok();
            (created && k::end_offsets(&topic).get(&0) == Some(&0)).then_some(())
        }
    })
    .await;
    let second = k::produce(&s.topic, 100, 0.0, 0.0, 0.0, 62).await;

    let err = try_ingest_until_caught_up(&s.config)
        .await
        .expect_err("the worker must stop, not drop the new messages as redelivered");
    let msg = format!("{err:#}");
    assert!(msg.contains(&s.topic), "{msg}");
    assert!(msg.contains("nekhebet-store offsets reset"), "{msg}");
    assert_eq!(s.event_count().await, 1000);

    let out = cli_on(
        &s.db.url,
        s.lmdb(),
        &[
            "offsets", "reset", "--topic", &s.topic, "--to", "earliest", "--yes",
        ],
        &[
            ("NEKHEBET_KAFKA__BROKERS", &k::brokers()),
            ("NEKHEBET_KAFKA__GROUP_ID", &s.group),
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = ingest_until_caught_up(&s.config).await;
    assert_eq!(report.stored, second.valid, "{report:#?}");
    assert_eq!(s.event_count().await, 1100);
}

/// A dead letter the DLQ topic refuses for good (here a 1.5 MiB key, over the topic's
/// `max.message.bytes`) must not stall the partition behind it forever: it is published truncated,
/// with the original sizes and a detail saying so, and the messages after it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_refuses_for_good_is_published_truncated_and_the_partition_moves_on(
) {
    let db = TestDb::new().await;
    let lmdb = tempfile::tempdir().unwrap();
    let topic = k::random_name("dlq-refused");
    let group = k::random_name("dlq-refused-group");
    // The source topic takes 4 MiB messages; the DLQ topic keeps the broker default (~1 MiB).
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        nekhebet_store::kafka::admin_config(&k::brokers(), &BTreeMap::new())
            .create()
            .expect("admin");
    let big = rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(-1))
        .set("max.message.bytes", "4194304");
    for r in admin
        .create_topics([&big], &rdkafka::admin::AdminOptions::new())
        .await
        .expect("create")
    {
        r.expect("create topic");
    }
    let mut p = Producer::new("after-the-big-key", 71);
    let huge_key = vec![b'k'; 1_536 * 1024];
    let positions = publish(
        &topic,
        &[
            (huge_key.clone(), b"not an envelope".to_vec()),
            (b"small".to_vec(), p.next()),
        ],
        Some(4 << 20),
    )
    .await;
    let config = k::worker_config(&db.url, lmdb.path(), &topic, &group);
    let report = tokio::time::timeout(Duration::from_secs(90), ingest_until_caught_up(&config))
        .await
        .expect("the partition stalled behind a dead letter the broker refuses");
    assert_eq!((report.stored, report.rejected), (1, 1), "{report:#?}");
    let dlq = k::read_all(&format!("{topic}.dlq"));
    assert_eq!(dlq.len(), 1);
    let letter = &dlq[0];
    assert_eq!(
        letter.headers["nekhebet.source.offset"],
        positions[0].1.to_string()
    );
    assert_eq!(letter.headers["nekhebet.reason"], "malformed_json");
    assert!(letter.key.as_ref().is_some_and(|k| k.len() <= 1024));
    assert_eq!(
        letter.headers["nekhebet.original.key_bytes"],
        huge_key.len().to_string()
    );
    assert!(
        letter.headers["nekhebet.detail"].contains("truncated"),
        "{letter:?}"
    );
}

/// An operator adds a constraint that every message violates (or a sequence is reset): that is not
/// one bad message, and dead-lettering the whole stream one by one would empty it into the DLQ.
/// The worker stops with an error naming the constraint, dead-letters nothing and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constraint_every_message_violates_stops_the_worker_instead_of_dead_lettering_the_stream()
{
    let db = TestDb::new().await;
    let lmdb = tempfile::tempdir().unwrap();
    let topic = k::random_name("constraint");
    let group = k::random_name("constraint-group");
    k::create_topic(&topic, 1).await;
    db.client()
        .await
        .batch_execute("ALTER TABLE events ADD CONSTRAINT operator_says_no CHECK (false) NOT VALID")
        .await
        .unwrap();
    k::produce(&topic, 300, 0.0, 0.0, 0.0, 81).await;
    let config = k::worker_config(&db.url, lmdb.path(), &topic, &group);
    let err = try_ingest_until_caught_up(&config)
        .await
        .expect_err("the worker must stop");
    assert!(format!("{err:#}").contains("operator_says_no"), "{err:#}");
    assert!(k::read_all(&format!("{topic}.dlq")).is_empty());
    assert!(k::committed_offsets(&group, &topic).is_empty());
}

/// Another process (`serve`'s mirror, an `import`, a second worker version) grew the LMDB map: LMDB then
/// answers MDB_MAP_RESIZED, which means "adopt the new size and go on", not a fatal error.
#[tokio::test]
async fn an_lmdb_map_grown_by_another_process_is_adopted() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = k::worker_config(&db.url, dir.path(), "unused", "unused");
    config.lmdb.map_size = 1 << 20;
    let store = Store::open(&config).await.expect("open");
    let mut p = Producer::new("resized", 91);
    let first: Vec<_> = (0..3)
        .map(|_| nekhebet_store::store::Item {
            envelope: nekhebet_store::envelope::decode(p.next().into(), &Default::default())
                .unwrap(),
            pos: None,
        })
        .collect();
    store
        .save_batch(&first)
        .await
        .expect("first batch")
        .committed();

    // Another of our processes (here `import`, as `serve`'s mirror would) opens the same
    // environment with a 64 MiB map and fills it past our 1 MiB.
    let file = dir.path().join("more.jsonl");
    let lines: Vec<String> = (0..3000)
        .map(|_| String::from_utf8(p.next()).unwrap())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = cli_on(
        &db.url,
        dir.path(),
        &["import", file.to_str().unwrap()],
        &[("NEKHEBET_LMDB__MAP_SIZE", "67108864")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let second: Vec<_> = (0..3)
        .map(|_| nekhebet_store::store::Item {
            envelope: nekhebet_store::envelope::decode(p.next().into(), &Default::default())
                .unwrap(),
            pos: None,
        })
        .collect();
    store
        .save_batch(&second)
        .await
        .expect("the resized map is adopted")
        .committed();
    drop(store);
    assert_eq!(common::faults::lmdb_blobs(dir.path()).await.len(), 3006);
}

/// LMDB is a copy of PostgreSQL, never the authority. A foreign or stale blob under a content hash
/// (a restored snapshot, a bug, an intruder) is never served as that event: reads check the bytes
/// against the hash and fall back to PostgreSQL, and `reconcile --repair` replaces the blob.
#[tokio::test]
async fn a_foreign_blob_in_lmdb_is_never_served_and_reconcile_repair_replaces_it() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lmdb_dir = dir.path().join("lmdb");
    let mut p = Producer::new("foreign", 92);
    let genuine = p.next();
    let other = p.next();
    let env =
        nekhebet_store::envelope::decode(genuine.clone().into(), &Default::default()).unwrap();
    let (id, hash) = (env.header.id, env.header.payload_hash.clone());
    {
        let mut config = k::worker_config(&db.url, &lmdb_dir, "unused", "unused");
        config.lmdb.map_size = 16 << 20;
        // Blobs by content hash, where the foreign one is put below.
        config.lmdb.layout = Some(nekhebet_store::config::LmdbLayout::Compatible);
        let pg = nekhebet_store::store::PgStore::connect(&config.postgres)
            .await
            .unwrap();
        let lmdb = LmdbStore::open(&config.lmdb, false).await.unwrap();
        let h = HybridStore::new(pg, lmdb);
        h.save_batch(&[nekhebet_store::store::Item {
            envelope: env,
            pos: None,
        }])
        .await
        .unwrap()
        .committed();
    }
    // Replace the blob with another envelope's bytes behind the store's back.
    run_python(&format!(
        "import lmdb; e = lmdb.open({:?}, max_dbs=16); d = e.open_db(b'events'); \
         t = e.begin(write=True, db=d); t.put({:?}.encode(), bytes.fromhex({:?})); t.commit(); e.close()",
        lmdb_dir.display().to_string(),
        hash,
        hex::encode(&other)
    ));
    let out = cli_on(&db.url, &lmdb_dir, &["get", &id.to_string()], &[]);
    assert!(out.status.success());
    assert_eq!(out.stdout, genuine, "get served a foreign blob");
    let out = cli_on(&db.url, &lmdb_dir, &["reconcile", "--repair"], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let blobs = common::faults::lmdb_blobs(&lmdb_dir).await;
    assert_eq!(blobs.get(&hash), Some(&genuine), "repair replaced the blob");
}

/// The benchmark helper writes unverified rows: it must refuse a database that holds events.
#[tokio::test]
async fn bench_ceiling_refuses_a_database_that_holds_events() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = Producer::new("ceiling", 93);
    let file = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|_| String::from_utf8(p.next()).unwrap())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = cli_on(
        &db.url,
        &dir.path().join("lmdb"),
        &["import", file.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success());
    let more: Vec<String> = (0..3)
        .map(|_| String::from_utf8(p.next()).unwrap())
        .collect();
    std::fs::write(&file, more.join("\n") + "\n").unwrap();
    let out = dev_cli_on(
        &db.url,
        &dir.path().join("lmdb-ceiling"),
        &["bench-ceiling", file.to_str().unwrap()],
        &[],
    );
    assert!(
        !out.status.success(),
        "bench-ceiling wrote into a real store"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("empty database"), "{stderr}");
    assert_eq!(db.scalar("SELECT count(*) FROM events").await, 3);
}
