//! Hybrid repository: PostgreSQL first (authoritative), then ONE LMDB write transaction with the
//! blobs PostgreSQL holds for the batch.
//!
//! The LMDB transaction writes the newly stored blobs and also heals: any envelope of the batch that
//! PostgreSQL did not store now (duplicate, replay, redelivered) but whose content hash PostgreSQL
//! holds and LMDB lacks gets PostgreSQL's bytes. So a crash between the two commits is repaired by
//! redelivery, and LMDB always holds exactly PostgreSQL's bytes.

use std::collections::HashMap;
use std::time::Instant;

use uuid::Uuid;

use super::lmdb::BlobBatch;
use super::{AppliedOffsets, Item, LmdbStore, Outcome, PgStore, StoreError};
use crate::telemetry::names;

#[derive(Clone)]
pub struct HybridStore {
    pg: PgStore,
    lmdb: LmdbStore,
}

impl HybridStore {
    pub fn new(pg: PgStore, lmdb: LmdbStore) -> HybridStore {
        HybridStore { pg, lmdb }
    }

    pub fn pg(&self) -> &PgStore {
        &self.pg
    }

    pub fn lmdb(&self) -> &LmdbStore {
        &self.lmdb
    }

    pub async fn save_batch(&self, items: &[Item]) -> Result<Vec<Outcome>, StoreError> {
        let started = Instant::now();
        let outcomes = self.pg.save_batch(items).await?;
        metrics::histogram!(names::STAGE_SECONDS, "stage" => "postgres")
            .record(started.elapsed().as_secs_f64());
        failpoint("after_postgres_commit");

        let started = Instant::now();
        let mut batch = BlobBatch::default();
        let mut others: Vec<String> = Vec::new();
        for (item, outcome) in items.iter().zip(&outcomes) {
            let h = &item.envelope.header;
            match outcome {
                Outcome::Stored => batch
                    .blobs
                    .push((h.payload_hash.clone(), item.envelope.bytes.clone())),
                Outcome::Duplicate | Outcome::Redelivered | Outcome::Replay => {
                    others.push(h.payload_hash.clone())
                }
            }
        }
        let mut highest: HashMap<(&str, i32), i64> = HashMap::new();
        for pos in items.iter().filter_map(|i| i.pos.as_ref()) {
            let e = highest
                .entry((&pos.topic, pos.partition))
                .or_insert(pos.offset);
            *e = (*e).max(pos.offset);
        }
        batch.offsets = highest
            .into_iter()
            .map(|((t, p), o)| (t.to_string(), p, o))
            .collect();

        if !others.is_empty() {
            others.sort_unstable();
            others.dedup();
            let missing = self.lmdb.missing(others).await?;
            if !missing.is_empty() {
                let healed = self.pg.envelopes_by_hash(&missing).await?;
                if !healed.is_empty() {
                    tracing::warn!(
                        count = healed.len(),
                        "healing LMDB: blobs PostgreSQL holds were missing"
                    );
                    metrics::counter!(names::LMDB_HEALED).increment(healed.len() as u64);
                }
                batch
                    .blobs
                    .extend(healed.into_iter().map(|(h, b)| (h, bytes::Bytes::from(b))));
            }
        }
        self.lmdb.put_blobs(batch).await?;
        metrics::histogram!(names::STAGE_SECONDS, "stage" => "lmdb")
            .record(started.elapsed().as_secs_f64());
        Ok(outcomes)
    }

    pub async fn applied_offsets(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<AppliedOffsets, StoreError> {
        let pg = self.pg.applied_offsets(partitions).await?;
        let lmdb = self.lmdb.applied_offsets(partitions.to_vec()).await?;
        // The lower of the two: a partition LMDB has not recorded restarts where LMDB left off.
        Ok(pg
            .into_iter()
            .filter_map(|(k, p)| lmdb.get(&k).map(|&l| (k, p.min(l))))
            .collect())
    }

    /// PostgreSQL metadata → LMDB blob → PostgreSQL's `envelope` column if LMDB lacks it (counted).
    pub async fn get(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(meta) = self.pg.get_metadata(id).await? else {
            return Ok(None);
        };
        if let Some(blob) = self.lmdb.get_by_hash(meta.content_hash.clone()).await? {
            return Ok(Some(blob));
        }
        metrics::counter!(names::LMDB_FALLBACKS).increment(1);
        tracing::error!(%id, content_hash = %meta.content_hash, "hybrid inconsistency: blob missing from LMDB, serving PostgreSQL's copy");
        Ok(self.pg.get(id).await?)
    }

    pub async fn get_by_hash(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(blob) = self.lmdb.get_by_hash(hash.to_string()).await? {
            return Ok(Some(blob));
        }
        Ok(self.pg.get_by_hash(hash).await?)
    }
}

/// Test-only crash points: `NEKHEBET_FAILPOINT=<name>` aborts the process there, the way a power
/// cut or SIGKILL would, so tests can prove the recovery path.
pub fn failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if ARMED
        .get_or_init(|| std::env::var("NEKHEBET_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("nekhebet-store: failpoint {name} reached, aborting");
        std::process::abort();
    }
}
