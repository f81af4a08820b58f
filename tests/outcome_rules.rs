//! The outcome of each message on the paths real producers and operators take (the exactly-once
//! audit, issue 12): a producer re-signing an envelope, an id reused with other content, exact
//! repeats (a producer's retry, `import` retrying a committed batch), an impostor claiming another
//! producer's key_id, the replay-guard retention, and a partition's first batch racing another
//! writer. Real PostgreSQL, Kafka and LMDB; every test has its own database, topic and group.

mod common;

use common::Committed;
use std::time::Duration;

use bytes::Bytes;
use common::faults::Scenario;
use common::kafka as k;
use common::pg::TestDb;
use common::worker::{
    cli_on, ingest_until_caught_up, nonce, publish, rejected, summary_count, Producer,
};
use nekhebet_store::envelope::{self, Limits};
use nekhebet_store::partition::Position;
use nekhebet_store::store::{Item, Outcome};

fn item(bytes: &[u8]) -> Item {
    Item {
        envelope: envelope::decode(
            Bytes::copy_from_slice(bytes),
            &Limits {
                max_message_bytes: 2 << 20,
            },
        )
        .expect("valid envelope"),
        pos: None,
    }
}

fn at(mut item: Item, topic: &str, partition: i32, offset: i64) -> Item {
    item.pos = Some(Position::new(topic, partition, offset));
    item
}

/// nekhebet-store 4.0 stores a re-signed envelope (same id, same payload, new nonce) as a
/// duplicate (`ON CONFLICT (content_hash) DO NOTHING`). The outcome must not depend on which path
/// the batch took: the blind COPY (a fresh store), the lookup path (after a conflict), or both in
/// one batch.
#[tokio::test]
async fn a_resigned_envelope_is_a_duplicate_whichever_path_saves_it() {
    let db = TestDb::new().await;
    let mut p = Producer::new("resigner", 11);
    let resign = |p: &Producer, spec: &nekhebet_store::dev::signing::EnvelopeSpec| {
        let mut again = spec.clone();
        again.nonce = Some(nonce());
        p.sign(&again)
    };

    // Blind COPY: a fresh store saves the re-signed envelope without looking anything up.
    let a = p.next_spec();
    let s1 = db.store().await;
    assert_eq!(
        s1.save_batch(&[item(&p.sign(&a))])
            .await
            .unwrap()
            .committed(),
        [Outcome::Stored]
    );
    let s2 = db.store().await;
    assert_eq!(
        s2.save_batch(&[item(&resign(&p, &a))])
            .await
            .unwrap()
            .committed(),
        [Outcome::Duplicate],
        "blind COPY path"
    );

    // Lookup path: a store that met a key the database holds looks the next batches up first.
    let s3 = db.store().await;
    let mut replay = p.next_spec();
    replay.nonce = a.nonce.clone();
    assert_eq!(
        s3.save_batch(&[item(&p.sign(&replay))])
            .await
            .unwrap()
            .committed(),
        [Outcome::Replay]
    );
    assert_eq!(
        s3.save_batch(&[item(&resign(&p, &a))])
            .await
            .unwrap()
            .committed(),
        [Outcome::Duplicate],
        "lookup path"
    );

    // Both in one batch.
    let b = p.next_spec();
    let s4 = db.store().await;
    assert_eq!(
        s4.save_batch(&[item(&p.sign(&b)), item(&resign(&p, &b))])
            .await
            .unwrap()
            .committed(),
        [Outcome::Stored, Outcome::Duplicate],
        "within one batch"
    );

    assert_eq!(db.scalar("SELECT count(*) FROM events").await, 2);
    assert_eq!(db.scalar("SELECT count(*) FROM replay_guard").await, 5);
}

/// The same event id with another payload is not the same event: it is dead-lettered with its own
/// reason (`id_conflict`), across batches and within one, and burns no nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_with_another_payload_is_dead_lettered_as_id_conflict() {
    let s = Scenario::new("outcomes", 1).await;
    let mut p = Producer::new("id-reuser", 12);
    let a = p.next_spec();
    publish(&s.topic, &[(b"k".to_vec(), p.sign(&a))], None).await;
    let first = ingest_until_caught_up(&s.config).await;
    assert_eq!(first.stored, 1, "{first:#?}");

    // Across batches: B reuses A's id with another payload.
    let mut b = p.next_spec();
    b.id = a.id;
    // Within one batch: C, then D reusing C's id with another payload, then a genuine E.
    let c = p.next_spec();
    let mut d = p.next_spec();
    d.id = c.id;
    let e = p.next_spec();
    let (b_bytes, d_bytes) = (p.sign(&b), p.sign(&d));
    let positions = publish(
        &s.topic,
        &[
            (b"k".to_vec(), b_bytes.clone()),
            (b"k".to_vec(), p.sign(&c)),
            (b"k".to_vec(), d_bytes.clone()),
            (b"k".to_vec(), p.sign(&e)),
        ],
        None,
    )
    .await;
    let report = ingest_until_caught_up(&s.config).await;
    assert_eq!(
        (
            report.stored,
            report.rejected,
            report.replay,
            report.duplicate
        ),
        (2, 2, 0, 0),
        "{report:#?}"
    );
    assert_eq!(rejected(&report, "id_conflict"), 2, "{report:#?}");
    let dlq = common::dlq::by_position(&s.topic);
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[&positions[0]], ("id_conflict".into(), b_bytes));
    assert_eq!(dlq[&positions[2]], ("id_conflict".into(), d_bytes));
    // The refused envelopes' nonces are not burned.
    let burned: i64 =
        s.db.client()
            .await
            .query_one(
                "SELECT count(*) FROM replay_guard WHERE nonce = ANY($1)",
                &[&vec![b.nonce.clone().unwrap(), d.nonce.clone().unwrap()]],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(burned, 0);
}

/// Kafka producers without idempotence resend a message on a retry: the same bytes at another
/// offset. That is a redelivery, not a replay (no seth.caught for honest traffic), and nothing is
/// dead-lettered or stored twice. A replay is a (key_id, nonce) reused by a *different* envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_where_every_message_is_published_twice_stores_each_once_with_no_replay() {
    let s = Scenario::new("outcomes", 2).await;
    let mut p = Producer::new("retrier", 13);
    let mut messages = Vec::new();
    let mut later = Vec::new();
    let mut expect_duplicates = 0;
    for i in 0..300u32 {
        let key = format!("key-{}", i % 7).into_bytes();
        let spec = p.next_spec();
        let bytes = p.sign(&spec);
        // Every fifth envelope has a re-signed twin (same id and payload, new nonce): a duplicate.
        if i % 5 == 0 {
            let mut twin = spec.clone();
            twin.nonce = Some(nonce());
            let twin = p.sign(&twin);
            messages.push((key.clone(), twin.clone()));
            later.push((key.clone(), twin));
            expect_duplicates += 1;
        }
        // The retry right behind the original, or much later in the stream.
        messages.push((key.clone(), bytes.clone()));
        if i % 2 == 0 {
            messages.push((key, bytes));
        } else {
            later.push((key, bytes));
        }
    }
    messages.extend(later);
    publish(&s.topic, &messages, None).await;
    let report = ingest_until_caught_up(&s.config).await;
    assert_eq!(report.consumed, messages.len() as u64);
    assert_eq!(
        report.replay, 0,
        "honest retries are not replays: {report:#?}"
    );
    assert_eq!(report.rejected, 0, "{report:#?}");
    assert_eq!(report.stored, 300, "{report:#?}");
    assert_eq!(report.duplicate, expect_duplicates, "{report:#?}");
    assert_eq!(
        report.redelivered,
        messages.len() as u64 - 300 - expect_duplicates,
        "{report:#?}"
    );
    assert!(k::read_all(&format!("{}.dlq", s.topic)).is_empty());
    assert_eq!(s.db.scalar("SELECT count(*) FROM events").await, 300);
}

/// `import` retrying a batch whose PostgreSQL commit went through (a lost COMMIT
/// acknowledgement, LMDB full after the commit) must report its own rows as redelivered, not as
/// replays; so must importing the same file twice.
#[tokio::test]
async fn importing_what_is_already_stored_reports_redelivered_not_replay() {
    let db = TestDb::new().await;
    let mut p = Producer::new("importer", 14);
    let lines: Vec<Vec<u8>> = (0..50).map(|_| p.next()).collect();
    let store = db.store().await;
    let items: Vec<Item> = lines.iter().map(|l| item(l)).collect();
    assert!(store
        .save_batch(&items)
        .await
        .unwrap()
        .committed()
        .iter()
        .all(|o| *o == Outcome::Stored));
    // The retry of the same batch.
    assert!(
        store
            .save_batch(&items)
            .await
            .unwrap()
            .committed()
            .iter()
            .all(|o| *o == Outcome::Redelivered),
        "a retried batch is redelivered"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    let text: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8(l.clone()).unwrap())
        .collect();
    std::fs::write(&file, text.join("\n") + "\n").unwrap();
    let out = cli_on(
        &db.url,
        &dir.path().join("lmdb"),
        &["import", file.to_str().unwrap()],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary_count(&stdout, "redelivered"), Some(50), "{stdout}");
    assert_eq!(summary_count(&stdout, "replay"), Some(0), "{stdout}");
}

/// Without a key registry, anyone can sign with their own key and claim a victim's key_id. The
/// first public key seen for a key_id is pinned, so an impostor's envelopes (a fresh nonce, and
/// the victim's *next* nonce) are rejected `key_id_mismatch` before the replay guard, and the
/// victim's genuine next envelope is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_cannot_burn_a_producers_next_nonce_without_a_key_registry() {
    let s = Scenario::new("outcomes", 1).await;
    let mut victim = Producer::new("victim", 21);
    let mut impostor = Producer::new("victim", 66);
    publish(&s.topic, &[(b"v".to_vec(), victim.next())], None).await;
    let first = ingest_until_caught_up(&s.config).await;
    assert_eq!(first.stored, 1, "{first:#?}");

    let fresh = impostor.next();
    let next_genuine = victim.next_spec();
    let mut stolen = impostor.next_spec();
    stolen.nonce = next_genuine.nonce.clone();
    let stolen = impostor.sign(&stolen);
    let positions = publish(
        &s.topic,
        &[
            (b"i".to_vec(), fresh.clone()),
            (b"i".to_vec(), stolen.clone()),
            (b"v".to_vec(), victim.sign(&next_genuine)),
            (b"v".to_vec(), victim.next()),
        ],
        None,
    )
    .await;
    let report = ingest_until_caught_up(&s.config).await;
    assert_eq!(
        (report.stored, report.rejected, report.replay),
        (2, 2, 0),
        "{report:#?}"
    );
    assert_eq!(rejected(&report, "key_id_mismatch"), 2, "{report:#?}");
    let dlq = common::dlq::by_position(&s.topic);
    assert_eq!(dlq[&positions[0]], ("key_id_mismatch".into(), fresh));
    assert_eq!(dlq[&positions[1]], ("key_id_mismatch".into(), stolen));
    assert_eq!(dlq.len(), 2);
    assert_eq!(s.db.scalar("SELECT count(*) FROM events").await, 3);
}

/// Replay-guard retention cannot open the window wide: a cutoff below the configured retention is
/// refused, rows are chosen by when they were stored (a key holder can backdate `issued_at`), and
/// once a retention is configured an envelope issued before the window is rejected at ingest, so
/// a cleaned-up nonce can never be replayed.
#[tokio::test]
async fn replay_guard_cleanup_cannot_reopen_the_replay_window() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    let env = [
        ("NEKHEBET_REPLAY_GUARD__RETENTION", "1h"),
        ("NEKHEBET_STORE__MODE", "postgres"),
    ];
    let mut p = Producer::new("backdater", 31);
    let import = |bytes: &[u8], name: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, [bytes, b"\n"].concat()).unwrap();
        cli_on(&db.url, &lmdb, &["import", file.to_str().unwrap()], &env)
    };

    // Backdated 50 minutes: inside the one-hour window, stored.
    let mut backdated = p.next_spec();
    backdated.issued_at = Some(chrono::Utc::now() - chrono::Duration::minutes(50));
    let out = import(&p.sign(&backdated), "backdated.jsonl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        summary_count(&stdout, "stored"),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A cutoff inside the window is refused, naming the setting.
    for cutoff in ["0s", "30m"] {
        let out = cli_on(
            &db.url,
            &lmdb,
            &["replay-guard", "cleanup", "--older-than", cutoff],
            &env,
        );
        assert!(!out.status.success(), "cleanup --older-than {cutoff} ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("replay_guard.retention"), "{stderr}");
    }
    // A cutoff beyond the window is allowed, but the row was stored just now: it stays.
    let out = cli_on(
        &db.url,
        &lmdb,
        &["replay-guard", "cleanup", "--older-than", "2h"],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.scalar("SELECT count(*) FROM replay_guard").await, 1);

    // The replay attempt (same key_id and nonce, another envelope) is still refused.
    let mut replay = p.next_spec();
    replay.nonce = backdated.nonce.clone();
    let out = import(&p.sign(&replay), "replay.jsonl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(summary_count(&stdout, "replay"), Some(1), "{stdout}");

    // Issued before the window: rejected at ingest.
    let mut ancient = p.next_spec();
    ancient.issued_at = Some(chrono::Utc::now() - chrono::Duration::hours(2));
    let out = import(&p.sign(&ancient), "ancient.jsonl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("outside_replay_window"), "{stderr}");
    assert_eq!(db.scalar("SELECT count(*) FROM events").await, 1);
}

/// When a partition has no progress row yet, locking it locks nothing: a batch must wait for a
/// writer that is creating the row (and applying the same messages), then see them as applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_first_batch_waits_for_a_writer_creating_its_progress_row() {
    let db = TestDb::new().await;
    let mut p = Producer::new("racer", 41);
    let items: Vec<Item> = (0..4).map(|i| at(item(&p.next()), "t", 0, i)).collect();

    // The other writer: applied offsets 0..3 of t/0, not committed yet.
    let mut other = db.client().await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO nekhebet_consumer_offsets (topic, partition, applied_offset) VALUES ('t', 0, 3)",
        &[],
    )
    .await
    .unwrap();

    let store = db.store().await;
    let saving = tokio::spawn(async move { store.save_batch(&items).await });
    // Our batch must be waiting on the other writer (a lock), whichever statement it waits in.
    let watcher = db.client().await;
    k::wait_for(Duration::from_secs(20), "our batch waiting on a lock", || {
        let w = &watcher;
        async move {
            let n: i64 = w
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'nekhebet-store' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n > 0).then_some(())
        }
    })
    .await;
    tx.commit().await.unwrap();
    let outcomes = saving.await.unwrap().unwrap().committed();
    assert_eq!(outcomes, [Outcome::Redelivered; 4]);
    assert_eq!(db.scalar("SELECT count(*) FROM events").await, 0);
}

/// A producer rotating its key: the new key is refused until an operator pins it (`keys pin`),
/// both are accepted meanwhile, and an unpinned key is refused again.
#[tokio::test]
async fn a_rotated_key_is_accepted_once_pinned_and_an_unpinned_key_is_refused() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    let mut old = Producer::new("rotating", 101);
    let mut new = Producer::new("rotating", 102);
    let import = |bytes: Vec<u8>, name: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, [bytes.as_slice(), b"\n"].concat()).unwrap();
        let out = cli_on(&db.url, &lmdb, &["import", file.to_str().unwrap()], &[]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let b64 =
        |p: &Producer| nekhebet_store::envelope::encode_base64(&p.key.verifying_key().to_bytes());
    assert_eq!(
        summary_count(&import(old.next(), "1.jsonl"), "stored"),
        Some(1)
    );
    let refused = import(new.next(), "2.jsonl");
    assert!(refused.contains("key_id_mismatch"), "{refused}");
    assert!(
        refused.contains("keys pin rotating"),
        "the refusal says how: {refused}"
    );

    let out = cli_on(
        &db.url,
        &lmdb,
        &["keys", "pin", "rotating", &b64(&new)],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        summary_count(&import(new.next(), "3.jsonl"), "stored"),
        Some(1)
    );
    assert_eq!(
        summary_count(&import(old.next(), "4.jsonl"), "stored"),
        Some(1)
    );

    let out = cli_on(
        &db.url,
        &lmdb,
        &["keys", "unpin", "rotating", &b64(&old)],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = import(old.next(), "5.jsonl");
    assert!(refused.contains("key_id_mismatch"), "{refused}");
    let listed = cli_on(&db.url, &lmdb, &["keys", "list", "rotating"], &[]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&b64(&new)) && !listed.contains(&b64(&old)),
        "{listed}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM events").await, 3);
}
