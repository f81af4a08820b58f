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

/// `migration!(version, "file_stem", "name")`: the step in `migrations/<file_stem>.sql`.
macro_rules! migration {
    ($version:literal, $file:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $file, ".sql")),
        }
    };
}

/// In order; a file's stem is its version (4 digits) and its name (a unit test checks both).
const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_nekhebet_store_4_0", "nekhebet_store_4_0"),
    migration!(
        2,
        "0002_provenance_offsets_append_only",
        "provenance_offsets_append_only"
    ),
    migration!(3, "0003_roles", "roles"),
    migration!(4, "0004_writer_sequence", "writer_sequence"),
    migration!(5, "0005_exactly_once", "exactly_once"),
    migration!(6, "0006_read_indexes", "read_indexes"),
    migration!(7, "0007_commit_order", "commit_order"),
    migration!(8, "0008_tlog", "tlog"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in migrations/ is embedded, in version order from 1 without a gap, under the
    /// name its file carries, with the file's exact text.
    #[test]
    fn every_migration_file_is_embedded_in_order_under_its_name() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(embedded, files);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            let text = std::fs::read_to_string(format!("{dir}/{}", files[i])).unwrap();
            assert_eq!(m.sql, text, "{}", files[i]);
        }
    }
}
