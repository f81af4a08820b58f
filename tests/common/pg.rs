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
