//! PostgreSQL helpers for tests: a fresh, migrated database with a random name per test, on the
//! server `NEKHEBET_POSTGRES__URL` points at (`scripts/services up` writes it).

use nekhebet_store::config::{Config, PostgresConfig};
use nekhebet_store::store::PgStore;

/// The superuser URL of the test server.
pub fn admin_url() -> String {
    std::env::var("NEKHEBET_POSTGRES__URL")
        .expect("NEKHEBET_POSTGRES__URL is not set: run `scripts/services up && source .local/services.env`")
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, rest) = url.rsplit_once('/').expect("a postgres://…/db URL");
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{db}{query}")
}

pub fn random_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub fn pg_config(url: &str) -> PostgresConfig {
    PostgresConfig {
        url: url.to_string(),
        ..Config::default().postgres
    }
}

/// A migrated database that is dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = random_name("nekhebet_test");
        let admin = PgStore::connect(&pg_config(&admin_url()))
            .await
            .expect("connect as admin");
        admin
            .pool()
            .get()
            .await
            .unwrap()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let url = with_database(&admin_url(), &name);
        let store = PgStore::connect(&pg_config(&url))
            .await
            .expect("connect to test db");
        store.migrate().await.expect("migrate");
        TestDb { name, url }
    }

    pub async fn store(&self) -> PgStore {
        PgStore::connect(&pg_config(&self.url))
            .await
            .expect("connect to test db")
    }

    /// The single `bigint` a query returns (a count, a max).
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// A raw client for assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("NEKHEBET_KEEP_TEST_DB").is_some() {
            return;
        }
        let name = self.name.clone();
        // Drop may run inside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A row for `events` inserted by hand (outside the store), to build the ordering trap: a
/// transaction holding a lower `seq` that commits after one with a higher `seq`.
pub struct EventRow {
    pub id: uuid::Uuid,
    pub event_type: String,
    /// RFC 3339; `None` is the server's `now()`.
    pub issued_at: Option<String>,
    pub source: String,
    pub content_hash: String,
    pub envelope: Vec<u8>,
}

impl EventRow {
    /// The row the store would write for this envelope (its header's fields, its exact bytes).
    pub fn of_envelope(bytes: &[u8]) -> EventRow {
        let h = nekhebet_store::envelope::decode(
            bytes::Bytes::copy_from_slice(bytes),
            &nekhebet_store::envelope::Limits {
                max_message_bytes: usize::MAX,
            },
        )
        .expect("a decodable envelope")
        .header;
        EventRow {
            id: h.id,
            event_type: h.event_type,
            issued_at: Some(h.issued_at),
            source: h.source,
            content_hash: h.payload_hash,
            envelope: bytes.to_vec(),
        }
    }

    /// A row that is no envelope (for tests about positions, not contents): a fresh id, type
    /// `test.held`, this content hash and these bytes.
    pub fn opaque(content_hash: &str, envelope: &[u8]) -> EventRow {
        EventRow {
            id: uuid::Uuid::new_v4(),
            event_type: "test.held".into(),
            issued_at: None,
            source: "test".into(),
            content_hash: content_hash.into(),
            envelope: envelope.to_vec(),
        }
    }
}

/// An `events` row inserted in a transaction left open on its own connection: its `seq` is taken
/// (and its transaction id assigned) now, the row is visible only after [`HeldInsert::commit`].
/// Dropping it without committing rolls it back (the connection closes).
pub struct HeldInsert {
    client: tokio_postgres::Client,
    pub seq: i64,
}

impl HeldInsert {
    pub async fn commit(self) {
        self.client
            .batch_execute("COMMIT")
            .await
            .expect("commit the held insert");
    }

    pub async fn rollback(self) {
        self.client
            .batch_execute("ROLLBACK")
            .await
            .expect("roll the held insert back");
    }
}

impl TestDb {
    /// Inserts `row` into `events` in a transaction that stays open: see [`HeldInsert`].
    pub async fn insert_held(&self, row: &EventRow) -> HeldInsert {
        let client = self.client().await;
        client.batch_execute("BEGIN").await.expect("begin");
        let seq = client
            .query_one(
                "INSERT INTO events (id, event_type, issued_at, source, content_hash, envelope)
                 VALUES ($1, $2, coalesce($3::text::timestamptz, now()), $4, $5, $6)
                 RETURNING seq",
                &[
                    &row.id,
                    &row.event_type,
                    &row.issued_at,
                    &row.source,
                    &row.content_hash,
                    &row.envelope,
                ],
            )
            .await
            .expect("insert into events inside the held transaction")
            .get(0);
        HeldInsert { client, seq }
    }
}
