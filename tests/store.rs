//! The repositories against a real PostgreSQL (local server, fresh database per test) and LMDB.

mod common;

use common::Committed;
use std::sync::Arc;

use bytes::Bytes;
use common::pg::{EventRow, TestDb};
use common::samples::{decode, items, sample_lines};
use nekhebet_store::config::{Config, LmdbConfig, LmdbLayout};
use nekhebet_store::ingest::apply::{Applier, Fate, RetryPolicy, Sink};
use nekhebet_store::partition::{Partition, Position};
use nekhebet_store::reason::Reason;
use nekhebet_store::store::{HybridStore, Item, LmdbStore, Outcome, PgStore, Store, StoreError};

/// The same envelope with some header fields replaced (stores do not verify signatures).
fn with_header(line: &str, changes: &[(&str, &str)]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    for (k, val) in changes {
        v["header"][*k] = serde_json::Value::String(val.to_string());
    }
    serde_json::to_string(&v).unwrap()
}

fn new_nonce() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn lmdb_config(dir: &std::path::Path, map_size: u64) -> LmdbConfig {
    LmdbConfig {
        path: dir.to_path_buf(),
        map_size,
        ..Config::default().lmdb
    }
}

/// [`lmdb_config`] creating the environment in the compatible layout (blobs by content hash).
fn compatible_config(dir: &std::path::Path, map_size: u64) -> LmdbConfig {
    LmdbConfig {
        layout: Some(LmdbLayout::Compatible),
        ..lmdb_config(dir, map_size)
    }
}

fn tally(outcomes: &[Outcome]) -> [usize; 4] {
    let mut t = [0; 4];
    for o in outcomes {
        t[Outcome::ALL.iter().position(|x| x == o).unwrap()] += 1;
    }
    t
}

#[tokio::test]
async fn migrate_is_idempotent_and_versioned() {
    let db = TestDb::new().await;
    let store = db.store().await;
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "second migrate applies nothing"
    );
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM nekhebet_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    // nekhebet-store 4.0's tables, columns and indexes are all there.
    for (table, column) in [
        ("events", "id"),
        ("events", "event_type"),
        ("events", "issued_at"),
        ("events", "source"),
        ("events", "content_hash"),
        ("events", "envelope"),
        ("events", "created_at"),
        ("replay_guard", "key_id"),
        ("replay_guard", "nonce"),
        ("replay_guard", "issued_at"),
        ("event_links", "relation"),
        ("delivery_state", "attempts"),
    ] {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
                &[&table, &column],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{table}.{column}");
    }
    for index in [
        "idx_events_content_hash",
        "idx_events_type_issued",
        "idx_events_source_issued",
        "idx_replay_guard_issued_at",
        // The read API's listings (migration 7).
        "idx_events_issued_id",
        "idx_events_key_issued_id",
    ] {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE indexname = $1",
                &[&index],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{index}");
    }
}

#[tokio::test]
async fn append_only_is_enforced_by_the_database() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let lines = sample_lines();
    store
        .save_batch(&items(&lines[..3]))
        .await
        .unwrap()
        .committed();
    let client = db.client().await;
    for sql in [
        "UPDATE events SET source = 'forged'",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
        "UPDATE replay_guard SET nonce = 'x'",
        "TRUNCATE replay_guard",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    let (events, guards) = store.counts().await.unwrap();
    assert_eq!((events, guards), (3, 3));
    // Retention DELETE on the replay guard stays allowed.
    let deleted = store
        .cleanup_replay_guard(chrono::Utc::now() + chrono::Duration::days(365))
        .await
        .unwrap();
    assert_eq!(deleted, 3);
}

#[tokio::test]
async fn postgres_outcomes_match_the_contract_within_and_across_batches() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let lines = sample_lines();
    let a = &lines[0];
    let b = &lines[1];
    // Same payload (hash), new (key_id, nonce) and new id → duplicate.
    let a_dup = with_header(
        a,
        &[
            ("nonce", &new_nonce()),
            ("id", &uuid::Uuid::new_v4().to_string()),
        ],
    );
    // Same (key_id, nonce), other payload → replay.
    let b_replay = with_header(
        &lines[2],
        &[
            ("nonce", &decode(b).header.nonce),
            ("key_id", &decode(b).header.key_id),
        ],
    );
    let batch = vec![
        a.clone(),
        a_dup.clone(),
        b.clone(),
        b_replay.clone(),
        a.clone(),
    ];
    let outcomes = store.save_batch(&items(&batch)).await.unwrap().committed();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Stored,
            Outcome::Duplicate,
            Outcome::Stored,
            Outcome::Replay,
            // The byte-identical envelope again: a producer's retry, not a replay.
            Outcome::Redelivered
        ]
    );
    // Across batches: every envelope already stored or claimed is redelivered, the other envelope
    // on b's (key_id, nonce) still a replay.
    let again = store.save_batch(&items(&batch)).await.unwrap().committed();
    assert_eq!(
        again,
        vec![
            Outcome::Redelivered,
            Outcome::Redelivered,
            Outcome::Redelivered,
            Outcome::Replay,
            Outcome::Redelivered
        ]
    );
    let a_dup2 = with_header(
        a,
        &[
            ("nonce", &new_nonce()),
            ("id", &uuid::Uuid::new_v4().to_string()),
        ],
    );
    assert_eq!(
        store
            .save_batch(&items(&[a_dup2]))
            .await
            .unwrap()
            .committed(),
        vec![Outcome::Duplicate]
    );
    // Within a batch the first FRESH occurrence of a payload wins: a replay before it does not count.
    let c = &lines[3];
    let c_with_used_nonce = with_header(
        c,
        &[
            ("nonce", &decode(b).header.nonce),
            ("key_id", &decode(b).header.key_id),
            ("id", &uuid::Uuid::new_v4().to_string()),
        ],
    );
    let outcomes = store
        .save_batch(&items(&[c_with_used_nonce, c.clone()]))
        .await
        .unwrap()
        .committed();
    assert_eq!(outcomes, vec![Outcome::Replay, Outcome::Stored]);

    let (events, guards) = store.counts().await.unwrap();
    assert_eq!(events, 3, "a, b, c");
    assert_eq!(guards, 5, "a, a_dup, b, a_dup2, c");
    // The stored bytes are the received bytes.
    assert_eq!(
        store.get(decode(a).header.id).await.unwrap().unwrap(),
        a.as_bytes()
    );
    let meta = store
        .get_metadata(decode(b).header.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.content_hash, decode(b).header.payload_hash);
}

#[tokio::test]
async fn redelivered_messages_are_recognised_by_their_stored_offsets() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let lines = sample_lines();
    let topic: Arc<str> = Arc::from("t1");
    let with_pos = |range: std::ops::Range<usize>| -> Vec<Item> {
        range
            .map(|i| Item {
                envelope: decode(&lines[i]),
                pos: Some(Position::new(topic.clone(), (i % 2) as i32, (i / 2) as i64)),
            })
            .collect()
    };
    assert_eq!(
        tally(
            &store
                .save_batch(&with_pos(0..10))
                .await
                .unwrap()
                .committed()
        ),
        [10, 0, 0, 0]
    );
    // Re-reading from an older position: the overlap is redelivered, the rest new.
    let outcomes = store
        .save_batch(&with_pos(6..14))
        .await
        .unwrap()
        .committed();
    assert_eq!(tally(&outcomes), [4, 0, 4, 0]);
    let applied = store
        .applied_offsets(&[
            Partition::new("t1", 0),
            Partition::new("t1", 1),
            Partition::new("t1", 2),
        ])
        .await
        .unwrap();
    assert_eq!(applied.get(&Partition::new("t1", 0)), Some(&6));
    assert_eq!(applied.get(&Partition::new("t1", 1)), Some(&6));
    assert_eq!(applied.get(&Partition::new("t1", 2)), None);
    // Provenance is recorded.
    let client = db.client().await;
    let row = client
        .query_one("SELECT kafka_topic, kafka_partition, kafka_offset, key_id, nonce FROM events WHERE id = $1", &[&decode(&lines[5]).header.id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "t1");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, i64>(2), 2);
    assert_eq!(row.get::<_, String>(4), decode(&lines[5]).header.nonce);
}

/// Refused messages, as a sink that records them (what `import` prints).
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(usize, nekhebet_store::envelope::Rejection)>>);

impl Sink for Recorded {
    fn owns(&self, _: usize) -> bool {
        true
    }
    fn position(&self, _: usize) -> Option<&Position> {
        None
    }
    fn value(&self, _: usize) -> Option<&bytes::Bytes> {
        None
    }
    async fn reject(
        &self,
        refused: &[(usize, &nekhebet_store::envelope::Rejection)],
    ) -> Vec<Result<(), nekhebet_store::dlq::DlqError>> {
        let mut r = self.0.lock().unwrap();
        refused
            .iter()
            .map(|(i, x)| {
                r.push((*i, (*x).clone()));
                Ok(())
            })
            .collect()
    }
}

#[tokio::test]
async fn a_message_the_database_refuses_is_isolated_and_the_rest_stored() {
    let db = TestDb::new().await;
    let store = Store::Postgres(db.store().await);
    let lines = sample_lines();
    // A NUL character in `source`: valid JSON, but a TEXT column cannot hold it.
    let nul = with_header(&lines[1], &[("source", "node\u{0}1")]);
    let batch: Vec<_> = [lines[0].clone(), lines[2].clone(), nul, lines[3].clone()]
        .iter()
        .map(|l| Ok(decode(l)))
        .collect();
    let mut applier = Applier::new(
        store.clone(),
        RetryPolicy::default(),
        tokio_util::sync::CancellationToken::new(),
        None,
    );
    let sink = Recorded::default();
    let applied = applier.apply(batch, &sink).await.unwrap();
    assert_eq!(
        applied.fates,
        [
            Fate::Done(Outcome::Stored),
            Fate::Done(Outcome::Stored),
            Fate::Rejected(Reason::StoreRejected),
            Fate::Done(Outcome::Stored)
        ]
    );
    let refused = sink.0.into_inner().unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, 2);
    assert!(refused[0].1.detail.contains("22021"), "{:?}", refused[0]);
    // The refused message did not burn its nonce.
    let (events, guards) = store.postgres().unwrap().counts().await.unwrap();
    assert_eq!((events, guards), (3, 3));
}

/// With batches of one message there is no other message to try: after a few refusals in a row for
/// the same cause, the applier takes the cause for the database's and stops.
#[tokio::test]
async fn refusals_in_a_row_for_one_cause_stop_instead_of_emptying_the_stream_into_the_dlq() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute("ALTER TABLE events ADD CONSTRAINT operator_says_no CHECK (false) NOT VALID")
        .await
        .unwrap();
    let store = Store::Postgres(db.store().await);
    let mut applier = Applier::new(
        store,
        RetryPolicy::default(),
        tokio_util::sync::CancellationToken::new(),
        None,
    );
    let sink = Recorded::default();
    let lines = sample_lines();
    let mut stopped = None;
    for (n, line) in lines.iter().take(10).enumerate() {
        match applier.apply(vec![Ok(decode(line))], &sink).await {
            Ok(a) => assert_eq!(a.fates, [Fate::Rejected(Reason::StoreRejected)]),
            Err(e) => {
                stopped = Some((n, e.to_string()));
                break;
            }
        }
    }
    let (n, why) = stopped.expect("the applier must stop");
    assert_eq!(n, 4, "the fifth refusal in a row stops: {why}");
    assert!(why.contains("operator_says_no"), "{why}");
    assert_eq!(sink.0.into_inner().unwrap().len(), 4);
}

#[tokio::test]
async fn lmdb_outcomes_and_map_growth() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB map for ~2.8 MB of envelopes: it must grow, not fail.
    let store = LmdbStore::open(&lmdb_config(dir.path(), 1 << 20), true)
        .await
        .unwrap();
    let lines = sample_lines();
    let outcomes = store.save_batch(items(&lines)).await.unwrap().committed();
    assert_eq!(tally(&outcomes), [2000, 0, 0, 0]);
    assert_eq!(
        tally(
            &store
                .save_batch(items(&lines[..10]))
                .await
                .unwrap()
                .committed()
        ),
        [0, 0, 10, 0],
        "the same envelopes again are exact repeats: redelivered"
    );
    let replay = with_header(&lines[1], &[("id", &uuid::Uuid::new_v4().to_string())]);
    assert_eq!(
        store
            .save_batch(items(&[replay]))
            .await
            .unwrap()
            .committed(),
        vec![Outcome::Replay],
        "another envelope on a used (key_id, nonce)"
    );
    let dup = with_header(&lines[0], &[("nonce", &new_nonce())]);
    assert_eq!(
        store.save_batch(items(&[dup])).await.unwrap().committed(),
        vec![Outcome::Duplicate]
    );
    assert!(store.usage().0 > 1 << 20, "the map grew");
    for l in lines.iter().step_by(97) {
        let e = decode(l);
        assert_eq!(store.get(e.header.id).await.unwrap().unwrap(), l.as_bytes());
        assert_eq!(
            store
                .get_by_hash(e.header.payload_hash.clone())
                .await
                .unwrap()
                .unwrap(),
            l.as_bytes()
        );
    }
    assert_eq!(store.len().await.unwrap(), 2000);
    // Cleanup of the replay guard (everything stored before a future instant) reopens the nonces.
    let future = chrono::Utc::now() + chrono::Duration::days(365);
    assert_eq!(
        store.cleanup_replay_guard(future, false).await.unwrap(),
        2001
    );
}

#[tokio::test]
async fn lmdb_map_limit_is_a_retriable_error_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LmdbConfig {
        max_map_size: 1 << 20,
        ..lmdb_config(dir.path(), 1 << 20)
    };
    let store = LmdbStore::open(&cfg, true).await.unwrap();
    let lines = sample_lines();
    let err = store.save_batch(items(&lines)).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(err.to_string().contains("max_map_size"), "{err}");
    assert_eq!(store.len().await.unwrap(), 0, "nothing half-written");
}

#[tokio::test]
async fn hybrid_reads_back_bytes_and_heals_missing_blobs() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = sample_lines();
    let pg = db.store().await;
    let lmdb = LmdbStore::open(&compatible_config(dir.path(), 1 << 24), false)
        .await
        .unwrap();
    let hybrid = Store::Hybrid(HybridStore::new(pg.clone(), lmdb.clone()));

    // A crash between the two commits: PostgreSQL has the first 50, LMDB nothing.
    pg.save_batch(&items(&lines[..50]))
        .await
        .unwrap()
        .committed();
    // A fallback read is served from PostgreSQL meanwhile.
    let first = decode(&lines[0]);
    assert_eq!(
        hybrid.get(first.header.id).await.unwrap().unwrap(),
        lines[0].as_bytes()
    );
    // Redelivery of the same envelopes (redelivered for PostgreSQL) heals LMDB.
    let outcomes = hybrid
        .save_batch(&items(&lines[..100]))
        .await
        .unwrap()
        .committed();
    assert_eq!(tally(&outcomes), [50, 0, 50, 0]);
    assert_eq!(lmdb.len().await.unwrap(), 100);
    for l in &lines[..100] {
        let e = decode(l);
        assert_eq!(
            lmdb.get_by_hash(e.header.payload_hash.clone())
                .await
                .unwrap()
                .unwrap(),
            l.as_bytes()
        );
        assert_eq!(
            hybrid.get(e.header.id).await.unwrap().unwrap(),
            l.as_bytes()
        );
    }
    // A duplicate never overwrites the stored blob with its own bytes.
    let dup = with_header(
        &lines[0],
        &[
            ("nonce", &new_nonce()),
            ("id", &uuid::Uuid::new_v4().to_string()),
        ],
    );
    assert_eq!(
        hybrid.save_batch(&items(&[dup])).await.unwrap().committed(),
        vec![Outcome::Duplicate]
    );
    assert_eq!(
        hybrid
            .get_by_hash(&first.header.payload_hash)
            .await
            .unwrap()
            .unwrap(),
        lines[0].as_bytes()
    );
    // In hybrid mode LMDB records offsets too, and applied_offsets is the lower of the two.
    let topic: Arc<str> = Arc::from("t");
    let positioned: Vec<Item> = lines[100..110]
        .iter()
        .enumerate()
        .map(|(i, l)| Item {
            envelope: decode(l),
            pos: Some(Position::new(topic.clone(), 0, i as i64)),
        })
        .collect();
    hybrid.save_batch(&positioned).await.unwrap().committed();
    let applied = hybrid
        .applied_offsets(&[Partition::new("t", 0)])
        .await
        .unwrap();
    assert_eq!(applied.get(&Partition::new("t", 0)), Some(&9));
}

#[tokio::test]
async fn reconcile_finds_missing_orphan_and_differing_blobs_and_repairs_missing_and_differing() {
    use nekhebet_store::cli::reconcile::reconcile;
    use nekhebet_store::store::lmdb::BlobBatch;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = sample_lines();
    let pg = db.store().await;
    let lmdb = LmdbStore::open(&compatible_config(dir.path(), 1 << 24), false)
        .await
        .unwrap();
    let store = Store::Hybrid(HybridStore::new(pg.clone(), lmdb.clone()));
    pg.save_batch(&items(&lines[..50]))
        .await
        .unwrap()
        .committed();
    let mut blobs: Vec<(String, Bytes)> = lines[..40]
        .iter()
        .map(|l| (decode(l).header.payload_hash, Bytes::from(l.clone())))
        .collect();
    blobs[3].1 = Bytes::from_static(b"{\"not\":\"the same\"}");
    blobs.push(("f".repeat(64), Bytes::from_static(b"orphan")));
    lmdb.put_blobs(BlobBatch {
        blobs,
        offsets: vec![],
    })
    .await
    .unwrap();

    let report = reconcile(&store, false).await.unwrap();
    assert_eq!(report.compared, 40);
    assert_eq!(report.missing.len(), 10);
    assert_eq!(report.orphans, vec!["f".repeat(64)]);
    assert_eq!(
        report.differing,
        vec![decode(&lines[3]).header.payload_hash]
    );
    assert_eq!(report.repaired, 0);

    let repaired = reconcile(&store, true).await.unwrap();
    assert_eq!(repaired.repaired, 11, "10 missing and 1 differing");
    let after = reconcile(&store, false).await.unwrap();
    assert_eq!((after.compared, after.missing.len()), (50, 0));
    assert!(after.differing.is_empty(), "{:?}", after.differing);
    for l in lines[40..50].iter().chain([&lines[3]]) {
        let e = decode(l);
        assert_eq!(
            lmdb.get_by_hash(e.header.payload_hash.clone())
                .await
                .unwrap()
                .unwrap(),
            l.as_bytes()
        );
    }
}

/// The append layout (blobs under PostgreSQL's seq): the same findings and repairs, by seq.
#[tokio::test]
async fn reconcile_compares_and_repairs_the_append_layout_by_seq() {
    use nekhebet_store::cli::reconcile::reconcile;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (pg, lmdb, store) = append_hybrid(&db, dir.path()).await;
    pg.save_batch(&items(&sample_lines()[..50])).await.unwrap();
    let rows: Vec<(i64, Vec<u8>)> = db
        .client()
        .await
        .query("SELECT seq, envelope FROM events ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut blobs: Vec<(i64, Bytes)> = rows[..40]
        .iter()
        .map(|(seq, b)| (*seq, Bytes::from(b.clone())))
        .collect();
    blobs[3].1 = Bytes::from(rows[4].1.clone()); // another event's bytes
    let orphan = rows[49].0 + 1000;
    blobs.push((orphan, Bytes::from_static(b"orphan")));
    lmdb.append_blobs(blobs, vec![]).await.unwrap();

    let report = reconcile(&store, false).await.unwrap();
    assert_eq!(report.compared, 40);
    assert_eq!(report.missing.len(), 10);
    assert_eq!(report.orphans, vec![format!("seq {orphan}")]);
    assert_eq!(report.differing, vec![format!("seq {}", rows[3].0)]);
    // The foreign blob is never served meanwhile.
    let id = decode(std::str::from_utf8(&rows[3].1).unwrap()).header.id;
    assert_eq!(store.get(id).await.unwrap().unwrap(), rows[3].1);

    assert_eq!(reconcile(&store, true).await.unwrap().repaired, 11);
    let after = reconcile(&store, false).await.unwrap();
    assert_eq!((after.compared, after.missing.len()), (50, 0));
    assert!(after.differing.is_empty());
    for (seq, bytes) in &rows {
        assert_eq!(lmdb.get_seq(*seq).await.unwrap().as_ref(), Some(bytes));
    }
}

#[tokio::test]
async fn the_writer_role_can_ingest_but_cannot_change_history_even_without_triggers() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let login = common::pg::random_name("ingest");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {login} LOGIN PASSWORD 'pw' IN ROLE nekhebet_writer;
             GRANT CONNECT ON DATABASE {db} TO {login};
             ALTER TABLE events DISABLE TRIGGER USER;
             ALTER TABLE replay_guard DISABLE TRIGGER USER;",
            db = db.name
        ))
        .await
        .unwrap();
    let url = db
        .url
        .replacen("postgres:nekhebet@", &format!("{login}:pw@"), 1);
    assert_ne!(
        url, db.url,
        "the test server's URL has the expected user:password form"
    );
    let writer = nekhebet_store::store::PgStore::connect(&common::pg::pg_config(&url))
        .await
        .unwrap();
    // The worker's whole write path works as the writer, offsets included.
    let lines = sample_lines();
    let topic: Arc<str> = Arc::from("t");
    let batch: Vec<Item> = lines[..5]
        .iter()
        .enumerate()
        .map(|(i, l)| Item {
            envelope: decode(l),
            pos: Some(Position::new(topic.clone(), 0, i as i64)),
        })
        .collect();
    assert_eq!(
        tally(&writer.save_batch(&batch).await.unwrap().committed()),
        [5, 0, 0, 0]
    );
    assert_eq!(
        tally(&writer.save_batch(&batch).await.unwrap().committed()),
        [0, 0, 5, 0]
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for sql in [
        "UPDATE events SET source = 'forged'",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
        "UPDATE replay_guard SET nonce = 'x'",
        "DELETE FROM replay_guard",
        "TRUNCATE replay_guard",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err:?}"
        );
    }
    admin
        .batch_execute(&format!("DROP OWNED BY {login}; "))
        .await
        .unwrap();
    drop(client);
    drop(writer);
}

/// A hybrid store in the append layout over the test database and a fresh LMDB in `dir`.
async fn append_hybrid(db: &TestDb, dir: &std::path::Path) -> (PgStore, LmdbStore, Store) {
    let pg = db.store().await;
    let cfg = LmdbConfig {
        layout: Some(LmdbLayout::Append),
        ..lmdb_config(dir, 1 << 24)
    };
    let lmdb = LmdbStore::open(&cfg, false).await.unwrap();
    assert_eq!(lmdb.layout(), LmdbLayout::Append);
    let hybrid = Store::Hybrid(HybridStore::new(pg.clone(), lmdb.clone()));
    (pg, lmdb, hybrid)
}

#[tokio::test]
async fn append_layout_keys_blobs_by_postgres_seq_and_heals_a_lost_lmdb_commit() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = sample_lines();
    let (pg, lmdb, hybrid) = append_hybrid(&db, dir.path()).await;

    assert_eq!(
        tally(
            &hybrid
                .save_batch(&items(&lines[..20]))
                .await
                .unwrap()
                .committed()
        ),
        [20, 0, 0, 0]
    );
    // A crash between the commits: PostgreSQL has 20..50, LMDB not.
    pg.save_batch(&items(&lines[20..50]))
        .await
        .unwrap()
        .committed();
    assert_eq!(
        lmdb.last_seq().await.unwrap(),
        pg.seq_by_id(decode(&lines[19]).header.id)
            .await
            .unwrap()
            .unwrap()
    );
    // Redelivery heals: the lost blobs are appended under their seq, new ones follow.
    let outcomes = hybrid
        .save_batch(&items(&lines[..80]))
        .await
        .unwrap()
        .committed();
    assert_eq!(tally(&outcomes), [30, 0, 50, 0]);
    for l in &lines[..80] {
        let e = decode(l);
        let seq = pg.seq_by_id(e.header.id).await.unwrap().unwrap();
        assert_eq!(
            lmdb.get_seq(seq).await.unwrap().unwrap(),
            l.as_bytes(),
            "blob under seq {seq}"
        );
        assert_eq!(
            hybrid.get(e.header.id).await.unwrap().unwrap(),
            l.as_bytes()
        );
        assert_eq!(
            hybrid
                .get_by_hash(&e.header.payload_hash)
                .await
                .unwrap()
                .unwrap(),
            l.as_bytes()
        );
    }
    // A duplicate appends nothing.
    let last = lmdb.last_seq().await.unwrap();
    let dup = with_header(
        &lines[0],
        &[
            ("nonce", &new_nonce()),
            ("id", &uuid::Uuid::new_v4().to_string()),
        ],
    );
    assert_eq!(
        hybrid.save_batch(&items(&[dup])).await.unwrap().committed(),
        vec![Outcome::Duplicate]
    );
    assert_eq!(lmdb.last_seq().await.unwrap(), last);
}

/// PostgreSQL two batches ahead of LMDB (a crash while the worker overlapped them), and the
/// redelivered messages come back in another grouping: the later batch's first, then the earlier
/// one's. Healing must not depend on that order: every blob ends up under its seq.
#[tokio::test]
async fn append_layout_heals_whatever_order_the_lost_batches_come_back_in() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = sample_lines();
    let (pg, lmdb, hybrid) = append_hybrid(&db, dir.path()).await;
    hybrid
        .save_batch(&items(&lines[..20]))
        .await
        .unwrap()
        .committed();
    // Two batches PostgreSQL committed and LMDB never saw.
    pg.save_batch(&items(&lines[20..50]))
        .await
        .unwrap()
        .committed();
    pg.save_batch(&items(&lines[50..80]))
        .await
        .unwrap()
        .committed();
    // The later one comes back first, with new messages: LMDB's last seq jumps past 20..50.
    let outcomes = hybrid
        .save_batch(&items(&lines[50..90]))
        .await
        .unwrap()
        .committed();
    assert_eq!(tally(&outcomes), [10, 0, 30, 0]);
    let outcomes = hybrid
        .save_batch(&items(&lines[20..50]))
        .await
        .unwrap()
        .committed();
    assert_eq!(tally(&outcomes), [0, 0, 30, 0]);
    for l in &lines[..90] {
        let e = decode(l);
        let seq = pg.seq_by_id(e.header.id).await.unwrap().unwrap();
        let blob = lmdb.get_seq(seq).await.unwrap();
        assert!(
            blob.as_deref() == Some(l.as_bytes()),
            "blob under seq {seq}"
        );
    }
    // Nothing is appended twice, and new envelopes still go to the end.
    let last = lmdb.last_seq().await.unwrap();
    let outcomes = hybrid
        .save_batch(&items(&lines[..100]))
        .await
        .unwrap()
        .committed();
    assert_eq!(tally(&outcomes), [10, 0, 90, 0]);
    assert!(lmdb.last_seq().await.unwrap() > last);
}

/// Two writers (say a worker and the Python package, or two workers during a rebalance) saving
/// overlapping envelopes at the same moment: a writer that loses a race on a key it had looked up
/// gets a retriable error — never one that would dead-letter the message — and once each retries,
/// every envelope is stored exactly once and its replay key recorded exactly once.
#[tokio::test]
async fn writers_racing_on_the_same_envelopes_retry_and_store_each_once() {
    let db = TestDb::new().await;
    let lines = sample_lines();
    let shared: Vec<String> = lines[..400].to_vec();
    let mut stored_total = 0;
    for round in 0..4 {
        let chunk: Vec<String> = shared[round * 100..(round + 1) * 100].to_vec();
        let mut reversed = chunk.clone();
        reversed.reverse();
        let mut tasks = Vec::new();
        for batch in [chunk, reversed] {
            let store = db.store().await;
            tasks.push(tokio::spawn(async move {
                let batch = items(&batch);
                let mut retries = 0;
                loop {
                    match store.save_batch(&batch).await {
                        Ok(outcomes) => return (outcomes.committed(), retries),
                        Err(e) => {
                            assert!(e.is_retriable(), "a lost race must be retriable: {e}");
                            retries += 1;
                            assert!(retries < 50, "no progress after {retries} retries");
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let (outcomes, _retries) = t.await.unwrap();
            let [stored, _, redelivered, _] = tally(&outcomes);
            assert_eq!(
                stored + redelivered,
                100,
                "each message is either stored or redelivered (the other writer stored it): {outcomes:?}"
            );
            stored_total += stored;
        }
    }
    assert_eq!(
        stored_total, 400,
        "each envelope stored by exactly one writer"
    );
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM events), (SELECT count(DISTINCT content_hash) FROM events),
                    (SELECT count(*) FROM replay_guard)",
            &[],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(counts, (400, 400, 400));
}

/// Following in commit order never misses a row committed late: a transaction that took the lower
/// seq and commits after one with a higher seq. While it is open, the follower gets neither row
/// past the horizon; once it commits, both come, the lower seq's transaction first (it got its
/// transaction id first), and reading again from the start gives the same order.
#[tokio::test]
async fn following_in_commit_order_never_misses_a_row_committed_late() {
    use nekhebet_store::store::postgres::CommitPos;
    let db = TestDb::new().await;
    let store = db.store().await;
    let lines = sample_lines();
    store
        .save_batch(&items(&lines[..3]))
        .await
        .unwrap()
        .committed();
    let t1 = db.insert_held(&EventRow::opaque("late-low", b"{}")).await;
    let t2 = db.insert_held(&EventRow::opaque("late-high", b"{}")).await;
    let high = t2.seq;
    assert!(t1.seq < high);
    t2.commit().await;

    // The higher seq is visible, the lower one is not: the follower must not pass it.
    let horizon = store.commit_horizon().await.unwrap();
    let first = store.follow(CommitPos::START, horizon, 100).await.unwrap();
    assert_eq!(
        first.len(),
        3,
        "the batch's rows, and not the late ones: {first:?}"
    );
    let seqs: Vec<i64> = first.iter().map(|f| f.pos.seq).collect();
    assert!(
        !seqs.contains(&high),
        "{seqs:?} passed the open transaction"
    );
    let cursor = first.last().unwrap().pos;

    t1.commit().await;
    let horizon = store.commit_horizon().await.unwrap();
    let next = store.follow(cursor, horizon, 100).await.unwrap();
    let hashes: Vec<&str> = next.iter().map(|f| f.content_hash.as_str()).collect();
    assert_eq!(hashes, ["late-low", "late-high"]);

    // The order is final: from the start again, the same rows in the same order.
    let all = store.follow(CommitPos::START, horizon, 100).await.unwrap();
    assert_eq!(all[..3], first[..]);
    assert_eq!(all[3..], next[..]);
    assert_eq!(store.count_after(cursor).await.unwrap(), 2);
}

/// An environment keeps the layout it was created with, whatever a later configuration says: a
/// new one gets the append layout in hybrid mode and the compatible one in LMDB-only mode (which
/// has no PostgreSQL to look seqs up in); a configured layout that differs from the recorded one
/// is refused with both named. (An environment written by nekhebet-store 4.0 opens compatible:
/// tests/python_compat.rs, with the Python package's own.)
#[tokio::test]
async fn an_environment_keeps_the_layout_it_was_created_with() {
    let open = |cfg: LmdbConfig, standalone: bool| async move {
        LmdbStore::open(&cfg, standalone).await.map(|l| l.layout())
    };
    let refusal = |e: StoreError| e.to_string();

    // A new environment in hybrid mode: append, recorded, kept by writers and readers.
    let dir = tempfile::tempdir().unwrap();
    let cfg = lmdb_config(dir.path(), 1 << 20);
    assert_eq!(cfg.layout, None, "lmdb.layout is unset by default");
    assert_eq!(open(cfg.clone(), false).await.unwrap(), LmdbLayout::Append);
    assert_eq!(open(cfg.clone(), false).await.unwrap(), LmdbLayout::Append);
    let reader = LmdbStore::open_reader(&cfg, false).await.unwrap();
    assert_eq!(reader.layout(), LmdbLayout::Append);
    drop(reader);
    let asked = LmdbConfig {
        layout: Some(LmdbLayout::Compatible),
        ..cfg.clone()
    };
    let err = refusal(open(asked, false).await.unwrap_err());
    assert!(
        err.contains(&format!(
            "{}: lmdb.layout = \"compatible\", but this environment was created with the \"append\" layout",
            dir.path().display()
        )),
        "{err}"
    );

    // LMDB-only mode: a new environment is compatible, and stays so when opened in hybrid mode.
    let alone = tempfile::tempdir().unwrap();
    let cfg = lmdb_config(alone.path(), 1 << 20);
    assert_eq!(
        open(cfg.clone(), true).await.unwrap(),
        LmdbLayout::Compatible
    );
    assert_eq!(
        open(cfg.clone(), false).await.unwrap(),
        LmdbLayout::Compatible,
        "recorded by the LMDB-only open, kept in hybrid mode"
    );
}
