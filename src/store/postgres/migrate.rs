//! The embedded schema migrations (`migrations/*.sql`) and [`PgStore::migrate`], which applies
//! those not yet applied.

use std::collections::HashSet;

use super::{PgError, PgStore};

/// One step of the embedded migrations.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "nekhebet_store_4_0",
        sql: include_str!("../../../migrations/0001_nekhebet_store_4_0.sql"),
    },
    Migration {
        version: 2,
        name: "provenance_offsets_append_only",
        sql: include_str!("../../../migrations/0002_provenance_offsets_append_only.sql"),
    },
    Migration {
        version: 3,
        name: "roles",
        sql: include_str!("../../../migrations/0003_roles.sql"),
    },
    Migration {
        version: 4,
        name: "writer_sequence",
        sql: include_str!("../../../migrations/0004_writer_sequence.sql"),
    },
    Migration {
        version: 5,
        name: "exactly_once",
        sql: include_str!("../../../migrations/0005_exactly_once.sql"),
    },
    Migration {
        version: 6,
        name: "read_indexes",
        sql: include_str!("../../../migrations/0006_read_indexes.sql"),
    },
    Migration {
        version: 7,
        name: "commit_order",
        sql: include_str!("../../../migrations/0007_commit_order.sql"),
    },
    Migration {
        version: 8,
        name: "tlog",
        sql: include_str!("../../../migrations/0008_tlog.sql"),
    },
];

impl PgStore {
    /// Applies the embedded migrations that are not yet applied (idempotent; safe to run from
    /// several processes at once thanks to an advisory lock). Returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<(i32, &'static str)>, PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(7390412001)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS nekhebet_schema_migrations (
                 version INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let done: HashSet<i32> = tx
            .query("SELECT version FROM nekhebet_schema_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO nekhebet_schema_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await?;
            applied.push((m.version, m.name));
        }
        tx.commit().await?;
        Ok(applied)
    }
}
