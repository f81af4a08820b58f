//! PostgreSQL repository: authoritative metadata, replay guard, idempotency and applied offsets.
//!
//! A batch is ONE transaction of a handful of statements whatever its size: lock the partitions'
//! progress rows (which also tells which messages were already applied), decide every message in
//! Rust (`store::plan::plan_batch`), binary COPY the new rows into `replay_guard` and
//! `events`, upsert the applied offsets. COPY takes PostgreSQL's bulk-insert path (several rows per
//! WAL record), which `INSERT … ON CONFLICT` cannot. Replay and duplicate detection stay with the
//! database's unique indexes: a batch is first COPYed without looking anything up, and if the
//! database holds one of its keys the COPY fails, the transaction rolls back, and the batch is
//! saved again after looking its keys up (index probes). A writer outside this worker racing us on
//! a key makes even that COPY fail with a unique violation, which is retried (the retry's lookup
//! sees the row).
//!
//! | module | owns |
//! |---|---|
//! | `connect` | the connection pool, TLS (libpq's `sslmode`s with rustls), [`PgConnection`] |
//! | `conninfo` | libpq connection strings: TLS parameters split out, [`redact_url`] |
//! | `error` | [`PgError`], [`PgErrorKind`] and the SQLSTATE classification |
//! | `migrate` | the embedded migrations, [`PgStore::migrate`] |
//! | `copy` | binary COPY of `replay_guard` and `events` rows, `events.seq` values |
//! | `write` | [`PgStore::save_batch`]: the batch transaction |
//! | `read` | lookups, applied offsets, streams |
//! | `progress` | the operator tools' reads and resets of the stored offsets |
//! | `stats` | event count and table sizes (`status`) |

mod connect;
mod conninfo;
mod copy;
mod error;
mod migrate;
mod progress;
mod read;
mod stats;
mod write;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::config::PostgresConfig;

/// Where the store's error class has always been importable from.
pub use crate::store::error::ErrorClass;
pub use connect::{connector, CertCheck, PgConnection};
pub use conninfo::redact_url;
pub(crate) use copy::{copy_events, copy_guard, next_seqs};
pub use error::{PgError, PgErrorKind};
pub use stats::{EventCount, TableSizes};

/// The PostgreSQL repository (a connection pool).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Batches left to save with lookups first (see [`PgStore::save_batch_with_seqs`]).
    careful_batches: Arc<AtomicU32>,
}

impl PgStore {
    /// Builds the pool and checks that the server answers.
    pub async fn connect(cfg: &PostgresConfig) -> Result<PgStore, PgError> {
        let store = PgStore {
            pool: connect::pool(cfg)?,
            careful_batches: Arc::new(AtomicU32::new(0)),
        };
        store.ping().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), PgError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
