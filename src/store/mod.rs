//! The three repositories (PostgreSQL, LMDB, hybrid) behind one [`Store`] type.
//!
//! Repositories never verify signatures (nekhebet-core's contract): they trust that what they are
//! given passed the pipeline's checks, and enforce only idempotency (content hash), replay
//! protection (`(key_id, nonce)`) and exactly-once application of Kafka messages (stored offsets).
//!
//! | module | owns |
//! |---|---|
//! | `plan` | what a batch does, decided without IO: outcomes, rows to write, offsets to advance |
//! | `error` | [`StoreError`] and [`ErrorClass`]: the one classification of store failures |
//! | `postgres` | [`PgStore`]: connection and TLS, migrations, the COPY batch transaction, reads |
//! | `lmdb` | [`LmdbStore`]: typed heed databases in nekhebet-store 4.0's on-disk layout |
//! | `hybrid` | [`HybridStore`]: PostgreSQL first, then LMDB, healing what a crash left behind |
//! | `read` | the one read path of single events (`get`, `serve`): LMDB first, bytes checked |
//! | `mirror` | [`mirror::Mirror`]: fills a hybrid store's LMDB from PostgreSQL in commit order |

pub mod error;
pub mod hybrid;
pub mod lmdb;
pub mod mirror;
pub(crate) mod plan;
pub mod postgres;
pub mod read;

use std::collections::HashMap;

use uuid::Uuid;

use crate::config::{Config, StoreMode};
use crate::envelope::{Envelope, Rejection};
use crate::partition::{Partition, Position};

pub use error::{ErrorClass, StoreError};
pub use hybrid::{HybridStore, PgPhase};
pub use lmdb::{LmdbError, LmdbStore};
pub use postgres::{PgError, PgStore};

/// One envelope to save, with its Kafka position if it has one (`import` has none).
#[derive(Debug, Clone)]
pub struct Item {
    pub envelope: Envelope,
    pub pos: Option<Position>,
}

/// What saving did with one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// New `(key_id, nonce)` and new content hash: stored.
    Stored,
    /// New `(key_id, nonce)`, content hash already stored: replay-guard row only.
    Duplicate,
    /// The same Kafka message (topic, partition, offset) was already applied: nothing new.
    Redelivered,
    /// `(key_id, nonce)` already used by another message (nekhebet's `seth.caught`).
    Replay,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Stored,
        Outcome::Duplicate,
        Outcome::Redelivered,
        Outcome::Replay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Duplicate => "duplicate",
            Outcome::Redelivered => "redelivered",
            Outcome::Replay => "replay",
        }
    }
}

/// What saving a batch did: committed (one outcome per item), or nothing written because the
/// store's rules refuse some of its messages (`key_id_mismatch`, `id_conflict`). A refused message
/// must reach the dead-letter sink before any transaction that advances its partition's offset
/// past it commits, so the caller dead-letters the refusals and saves the rest again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved<T> {
    Committed(T),
    /// (index in the batch, why), in batch order.
    Refused(Vec<(usize, Rejection)>),
}

impl<T> Saved<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Saved<U> {
        match self {
            Saved::Committed(t) => Saved::Committed(f(t)),
            Saved::Refused(r) => Saved::Refused(r),
        }
    }
}

/// Metadata of a stored event (no blob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    pub id: Uuid,
    pub event_type: String,
    pub issued_at: chrono::DateTime<chrono::Utc>,
    pub source: String,
    pub content_hash: String,
}

/// Highest applied offset per (topic, partition), as stored with the data.
pub type AppliedOffsets = HashMap<Partition, i64>;

/// How a process uses the store's LMDB environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The worker, `import`, `reconcile`: writes (creates the databases, grows the map).
    Write,
    /// `get`, `serve`: reads beside a writer and writes nothing to an existing environment
    /// ([`LmdbStore::open_reader`]).
    Read,
}

/// The configured repository.
#[derive(Clone)]
pub enum Store {
    Postgres(PgStore),
    Lmdb(LmdbStore),
    Hybrid(HybridStore),
}

impl Store {
    /// Opens the repository `config.store.mode` names, to write. PostgreSQL must be migrated
    /// (`migrate`).
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        Self::open_for(config, Access::Write).await
    }

    /// Opens the repository `config.store.mode` names, to write or to read beside a writer.
    pub async fn open_for(config: &Config, access: Access) -> Result<Store, StoreError> {
        let lmdb = |standalone| LmdbStore::open_for(&config.lmdb, standalone, access);
        Ok(match config.store.mode {
            StoreMode::Postgres => Store::Postgres(Self::connect_pg(config).await?),
            StoreMode::Lmdb => Store::Lmdb(lmdb(true).await?.with_key_pinning(config.pins_keys())),
            StoreMode::Hybrid => Store::Hybrid(HybridStore::new(
                Self::connect_pg(config).await?,
                lmdb(false).await?,
            )),
        })
    }

    async fn connect_pg(config: &Config) -> Result<PgStore, StoreError> {
        Ok(PgStore::connect(&config.postgres)
            .await?
            .with_key_pinning(config.pins_keys()))
    }

    /// Saves a batch: one PostgreSQL transaction and/or one LMDB write transaction. Returns one
    /// outcome per item, in order. Items with a Kafka position also advance the stored offsets of
    /// their partitions in the same transaction(s).
    pub async fn save_batch(&self, items: &[Item]) -> Result<Saved<Vec<Outcome>>, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.save_batch(items).await?),
            Store::Lmdb(lmdb) => lmdb.save_batch(items.to_vec()).await,
            Store::Hybrid(h) => h.save_batch(items).await,
        }
    }

    /// Phase 1 of [`Store::save_batch`]: the hybrid store's PostgreSQL transaction (outcomes are
    /// final once it returns); the whole save for the single-database stores.
    pub async fn save_postgres(&self, items: &[Item]) -> Result<Saved<PgPhase>, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.save_batch(items).await?.map(PgPhase::done)),
            Store::Lmdb(lmdb) => Ok(lmdb.save_batch(items.to_vec()).await?.map(PgPhase::done)),
            Store::Hybrid(h) => h.save_postgres(items).await,
        }
    }

    /// Whether the authority would take these items, without writing anything (a rolled-back
    /// transaction). LMDB-only mode has no constraint a message could break: always yes.
    pub async fn probe(&self, items: &[Item]) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.probe_batch(items).await?),
            Store::Hybrid(h) => Ok(h.pg().probe_batch(items).await?),
            Store::Lmdb(_) => Ok(()),
        }
    }

    /// Phase 2 of [`Store::save_batch`]: the hybrid store's LMDB transaction for a phase 1 (a
    /// no-op for the single-database stores). Run phases 2 one at a time, in phase-1 order.
    pub async fn write_lmdb(&self, items: &[Item], phase: &PgPhase) -> Result<(), StoreError> {
        match self {
            Store::Postgres(_) | Store::Lmdb(_) => Ok(()),
            Store::Hybrid(h) => h.write_lmdb(items, phase).await,
        }
    }

    /// Applied offsets for these partitions: for the hybrid store the lower of PostgreSQL's and
    /// LMDB's, so a crash between the two commits is replayed (and healed) on restart.
    pub async fn applied_offsets(
        &self,
        partitions: &[Partition],
    ) -> Result<AppliedOffsets, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.applied_offsets(partitions).await?),
            Store::Lmdb(lmdb) => lmdb.applied_offsets(partitions.to_vec()).await,
            Store::Hybrid(h) => h.applied_offsets(partitions).await,
        }
    }

    /// The offset up to which each partition's messages are decided, by the authority: PostgreSQL
    /// (in hybrid mode LMDB may lag it after a crash between the two commits), LMDB in LMDB-only
    /// mode. A message at or below it was applied, whatever the checks would say of it now.
    pub async fn decided_offsets(
        &self,
        partitions: &[Partition],
    ) -> Result<AppliedOffsets, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.applied_offsets(partitions).await?),
            Store::Hybrid(h) => Ok(h.pg().applied_offsets(partitions).await?),
            Store::Lmdb(lmdb) => lmdb.applied_offsets(partitions.to_vec()).await,
        }
    }

    /// The envelope bytes of event `id`, through the read path ([`Store::read`]).
    pub async fn get(&self, id: Uuid) -> Result<Option<Vec<u8>>, read::ReadError> {
        Ok(self.read(&read::Key::Id(id)).await?.map(|f| f.bytes.into()))
    }

    /// The envelope bytes stored under a content hash (the payload hash), through the read path.
    pub async fn get_by_hash(&self, hash: &str) -> Result<Option<Vec<u8>>, read::ReadError> {
        let key = read::Key::Hash(hash.to_owned());
        Ok(self.read(&key).await?.map(|f| f.bytes.into()))
    }

    /// Checks that the backends answer (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.ping().await?),
            Store::Lmdb(lmdb) => lmdb.ping().await,
            Store::Hybrid(h) => {
                h.pg().ping().await?;
                h.lmdb().ping().await
            }
        }
    }

    pub fn postgres(&self) -> Option<&PgStore> {
        match self {
            Store::Postgres(pg) => Some(pg),
            Store::Lmdb(_) => None,
            Store::Hybrid(h) => Some(h.pg()),
        }
    }

    pub fn lmdb(&self) -> Option<&LmdbStore> {
        match self {
            Store::Postgres(_) => None,
            Store::Lmdb(l) => Some(l),
            Store::Hybrid(h) => Some(h.lmdb()),
        }
    }

    /// The LMDB mirror of a hybrid store copying `rate` envelopes a second (`lmdb.mirror_rate`);
    /// `None` in the other modes (nothing to mirror) or when `rate` is 0 (turned off).
    pub fn mirror(&self, rate: u32) -> Option<mirror::Mirror> {
        match self {
            Store::Hybrid(h) if rate > 0 => {
                Some(mirror::Mirror::new(h.pg().clone(), h.lmdb().clone(), rate))
            }
            Store::Hybrid(_) | Store::Postgres(_) | Store::Lmdb(_) => None,
        }
    }
}
