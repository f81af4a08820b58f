//! The three repositories (PostgreSQL, LMDB, hybrid) behind one [`Store`] type.
//!
//! Repositories never verify signatures (nekhebet-core's contract): they trust that what they are
//! given passed the pipeline's checks, and enforce only idempotency (content hash), replay
//! protection (`(key_id, nonce)`) and exactly-once application of Kafka messages (stored offsets).

pub mod hybrid;
pub mod lmdb;
pub mod pg_tls;
pub mod postgres;

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::config::{Config, StoreMode};
use crate::envelope::Envelope;
use crate::partition::{Partition, Position};

pub use hybrid::{HybridStore, PgPhase};
pub use lmdb::{LmdbError, LmdbStore};
pub use postgres::{ErrorClass, PgError, PgStore};

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

/// Metadata of a stored event (no blob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    pub id: Uuid,
    pub event_type: String,
    pub issued_at: chrono::DateTime<chrono::Utc>,
    pub source: String,
    pub content_hash: String,
}

/// A storage failure. [`StoreError::is_retriable`] tells the ingest loop whether to back off and retry
/// the same batch (nothing committed) or to isolate the message that caused it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Lmdb(#[from] LmdbError),
    /// A blocking LMDB task panicked or was cancelled: a bug, never a data problem.
    #[error("LMDB worker task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub fn is_retriable(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// Transient (retry the batch), Message (isolate the message that causes it) or Fatal (stop
    /// without committing).
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Postgres(e) => e.class(),
            StoreError::Lmdb(e) if e.is_retriable() => ErrorClass::Transient,
            StoreError::Lmdb(_) => ErrorClass::Fatal,
            StoreError::Task(_) => ErrorClass::Fatal,
        }
    }

    /// A short stable label for metrics and logs (`retries by cause`).
    pub fn cause(&self) -> &'static str {
        match self {
            StoreError::Postgres(e) => e.cause(),
            StoreError::Lmdb(e) => e.cause(),
            StoreError::Task(_) => "lmdb_task",
        }
    }
}

/// Highest applied offset per (topic, partition), as stored with the data.
pub type AppliedOffsets = HashMap<Partition, i64>;

/// The configured repository.
#[derive(Clone)]
pub enum Store {
    Postgres(PgStore),
    Lmdb(LmdbStore),
    Hybrid(HybridStore),
}

impl Store {
    /// Opens the repository `config.store.mode` names. PostgreSQL must be migrated (`migrate`).
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        Ok(match config.store.mode {
            StoreMode::Postgres => Store::Postgres(PgStore::connect(&config.postgres).await?),
            StoreMode::Lmdb => Store::Lmdb(LmdbStore::open(&config.lmdb, true).await?),
            StoreMode::Hybrid => Store::Hybrid(HybridStore::with_layout(
                PgStore::connect(&config.postgres).await?,
                LmdbStore::open(&config.lmdb, false).await?,
                config.lmdb.layout,
            )),
        })
    }

    /// Saves a batch: one PostgreSQL transaction and/or one LMDB write transaction. Returns one
    /// outcome per item, in order. Items with a Kafka position also advance the stored offsets of
    /// their partitions in the same transaction(s).
    pub async fn save_batch(&self, items: &[Item]) -> Result<Vec<Outcome>, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.save_batch(items).await?),
            Store::Lmdb(lmdb) => lmdb.save_batch(items.to_vec()).await,
            Store::Hybrid(h) => h.save_batch(items).await,
        }
    }

    /// Phase 1 of [`Store::save_batch`]: the hybrid store's PostgreSQL transaction (outcomes are
    /// final once it returns); the whole save for the single-database stores.
    pub async fn save_postgres(&self, items: &[Item]) -> Result<PgPhase, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(PgPhase::done(pg.save_batch(items).await?)),
            Store::Lmdb(lmdb) => Ok(PgPhase::done(lmdb.save_batch(items.to_vec()).await?)),
            Store::Hybrid(h) => h.save_postgres(items).await,
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

    /// The envelope bytes of event `id`.
    pub async fn get(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.get(id).await?),
            Store::Lmdb(lmdb) => lmdb.get(id).await,
            Store::Hybrid(h) => h.get(id).await,
        }
    }

    /// The envelope bytes stored under a content hash (the payload hash).
    pub async fn get_by_hash(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Postgres(pg) => Ok(pg.get_by_hash(hash).await?),
            Store::Lmdb(lmdb) => lmdb.get_by_hash(hash.to_string()).await,
            Store::Hybrid(h) => h.get_by_hash(hash).await,
        }
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
}

/// Highest offset per (topic, partition) among the items with a Kafka position: what a batch
/// advances the stored applied offsets to.
pub(crate) fn highest_offsets(items: &[Item]) -> HashMap<&Partition, i64> {
    let mut highest: HashMap<&Partition, i64> = HashMap::new();
    for pos in items.iter().filter_map(|i| i.pos.as_ref()) {
        let e = highest.entry(&pos.partition).or_insert(pos.offset);
        *e = (*e).max(pos.offset);
    }
    highest
}

/// What one PostgreSQL batch does, decided from what the database already holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchPlan {
    /// One per item, in item order.
    pub outcomes: Vec<Outcome>,
    /// Items whose `(key_id, nonce)` goes into `replay_guard` (stored and duplicates).
    pub guard_rows: Vec<usize>,
    /// Items whose envelope goes into `events` (stored).
    pub event_rows: Vec<usize>,
}

/// Decides a batch in item order, the order Kafka delivered it: a redelivered message (already
/// applied) changes nothing; a `(key_id, nonce)` already used, in the database or earlier in the
/// batch, is a replay; otherwise the pair is recorded and the envelope is stored unless its
/// content hash is already held (in the database or earlier in the batch): a duplicate.
pub(crate) fn plan_batch(
    items: &[Item],
    redelivered: &[bool],
    used_keys: &HashSet<(&str, &str)>,
    held_hashes: &HashSet<&str>,
) -> BatchPlan {
    let mut plan = BatchPlan {
        outcomes: Vec::with_capacity(items.len()),
        ..BatchPlan::default()
    };
    let mut batch_keys: HashSet<(&str, &str)> = HashSet::with_capacity(items.len());
    let mut batch_hashes: HashSet<&str> = HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let h = &item.envelope.header;
        let key = (h.key_id.as_str(), h.nonce.as_str());
        let outcome = if redelivered[i] {
            Outcome::Redelivered
        } else if used_keys.contains(&key) || !batch_keys.insert(key) {
            Outcome::Replay
        } else {
            plan.guard_rows.push(i);
            let hash = h.payload_hash.as_str();
            if held_hashes.contains(hash) || !batch_hashes.insert(hash) {
                Outcome::Duplicate
            } else {
                plan.event_rows.push(i);
                Outcome::Stored
            }
        };
        plan.outcomes.push(outcome);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode, Limits};
    use crate::dev::signing::{sign, EnvelopeSpec};
    use ed25519_dalek::SigningKey;

    /// An envelope whose replay key is `(k, nonce)` and whose content hash follows `payload`.
    fn item(nonce: &str, payload: u32) -> Item {
        let spec = EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "test".into(),
            key_id: "k".into(),
            payload: serde_json::json!({ "n": payload }),
            issued_at: None,
            expires_at: None,
            nonce: Some(format!("{nonce:0>64}")),
            id: None,
        };
        let bytes = sign(&spec, &SigningKey::from_bytes(&[7; 32]));
        let limits = Limits {
            max_message_bytes: 1 << 20,
        };
        Item {
            envelope: decode(bytes.into(), &limits).expect("valid envelope"),
            pos: None,
        }
    }

    fn plan(items: &[Item], redelivered: &[bool], keys: &[&str], hashes: &[&str]) -> BatchPlan {
        let padded: Vec<String> = keys.iter().map(|n| format!("{n:0>64}")).collect();
        let used: HashSet<(&str, &str)> = padded.iter().map(|n| ("k", n.as_str())).collect();
        let held: HashSet<&str> = hashes.iter().copied().collect();
        plan_batch(items, redelivered, &used, &held)
    }

    #[test]
    fn fresh_items_are_stored_in_order() {
        let items = [item("1", 1), item("2", 2)];
        let p = plan(&items, &[false, false], &[], &[]);
        assert_eq!(p.outcomes, [Outcome::Stored, Outcome::Stored]);
        assert_eq!(p.guard_rows, [0, 1]);
        assert_eq!(p.event_rows, [0, 1]);
    }

    #[test]
    fn same_content_new_nonce_is_a_duplicate_with_a_guard_row() {
        let items = [item("1", 1), item("2", 1), item("3", 2)];
        let held = items[2].envelope.header.payload_hash.clone();
        let p = plan(&items, &[false; 3], &[], &[&held]);
        assert_eq!(
            p.outcomes,
            [Outcome::Stored, Outcome::Duplicate, Outcome::Duplicate]
        );
        assert_eq!(p.guard_rows, [0, 1, 2]);
        assert_eq!(p.event_rows, [0]);
    }

    #[test]
    fn a_used_key_is_a_replay_in_the_database_or_earlier_in_the_batch() {
        let items = [item("1", 1), item("2", 2), item("2", 3)];
        let p = plan(&items, &[false; 3], &["1"], &[]);
        assert_eq!(
            p.outcomes,
            [Outcome::Replay, Outcome::Stored, Outcome::Replay]
        );
        assert_eq!(p.guard_rows, [1]);
        assert_eq!(p.event_rows, [1]);
    }

    #[test]
    fn a_replay_does_not_claim_its_content_hash() {
        // The replay's content must still be stored by the later, legitimate message.
        let items = [item("1", 5), item("2", 5)];
        let p = plan(&items, &[false; 2], &["1"], &[]);
        assert_eq!(p.outcomes, [Outcome::Replay, Outcome::Stored]);
        assert_eq!(p.event_rows, [1]);
    }

    #[test]
    fn redelivered_items_change_nothing_and_claim_nothing() {
        let items = [item("1", 1), item("1", 1)];
        let p = plan(&items, &[true, false], &[], &[]);
        assert_eq!(p.outcomes, [Outcome::Redelivered, Outcome::Stored]);
        assert_eq!(p.guard_rows, [1]);
        assert_eq!(p.event_rows, [1]);
    }
}
