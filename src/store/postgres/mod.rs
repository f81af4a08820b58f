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
//! | `follow` | every row in commit order, none missed ([`CommitPos`], the horizon) |
//! | `mirror` | the LMDB mirror's reads: rows between two positions with their sizes, its lag |
//! | `pins` | the key pins as an operator manages them |
//! | `query` | the read API's queries: events located by id or hash, listings by keyset pages |
//! | `progress` | the operator tools' reads and resets of the stored offsets |
//! | `stats` | event count and table sizes (`status`) |
//! | `tlog` | the transparency log's tables: leaves, stored hashes, checkpoints (migration 0008) |

mod connect;
mod conninfo;
mod copy;
mod error;
mod follow;
mod migrate;
mod pins;
mod progress;
mod query;
mod read;
mod stats;
pub mod tlog;
mod write;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::config::PostgresConfig;

/// Where the store's error class has always been importable from.
pub use crate::store::error::ErrorClass;
pub use connect::{connector, CertCheck, PgConnection};
pub use conninfo::redact_url;
#[cfg(any(test, feature = "dev"))]
pub(crate) use copy::{copy_events, copy_guard, next_seqs};
pub use error::{PgError, PgErrorKind};
pub use follow::{CommitPos, Followed};
pub use pins::Pin;
pub use query::{ListFilter, ListKey, ListQuery, Listed, Listing, Located};
pub use stats::{EventCount, TableSizes};
pub use write::Committed;

/// The PostgreSQL repository (a connection pool).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Batches left to save with lookups first (see [`PgStore::save_batch_with_seqs`]).
    careful_batches: Arc<AtomicU32>,
    /// Bind each key_id to the first public key seen for it (no key registry configured).
    pin_keys: bool,
}

impl PgStore {
    /// Builds the pool and checks that the server answers.
    pub async fn connect(cfg: &PostgresConfig) -> Result<PgStore, PgError> {
        let store = PgStore {
            pool: connect::pool(cfg)?,
            careful_batches: Arc::new(AtomicU32::new(0)),
            pin_keys: false,
        };
        store.ping().await?;
        Ok(store)
    }

    /// With pinning on, each key_id is bound to the first public key seen for it (and to those an
    /// operator pins); an envelope signed with another key is refused `key_id_mismatch`.
    pub fn with_key_pinning(mut self, on: bool) -> PgStore {
        self.pin_keys = on;
        self
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
