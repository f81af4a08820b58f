//! Hybrid repository: PostgreSQL first (authoritative), then ONE LMDB write transaction with the
//! blobs PostgreSQL holds for the batch. The two are separate phases ([`HybridStore::save_postgres`],
//! [`HybridStore::write_lmdb`]) so the ingest writer can overlap one batch's PostgreSQL
//! transaction with the previous batch's LMDB transaction.
//!
//! The LMDB transaction writes the newly stored blobs and also heals: any envelope of the batch that
//! PostgreSQL did not store now (duplicate, replay, redelivered) but whose content hash PostgreSQL
//! holds and LMDB lacks gets PostgreSQL's bytes. So a crash between the two commits is repaired by
//! redelivery, and LMDB always holds exactly PostgreSQL's bytes.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::lmdb::BlobBatch;
use super::plan::highest_offsets;
use super::{AppliedOffsets, Item, LmdbStore, Outcome, PgStore, Saved, StoreError};
use crate::config::LmdbLayout;
use crate::partition::Partition;
use crate::telemetry::names;

/// What a batch's LMDB phase needs from its PostgreSQL phase.
#[derive(Debug, Clone, Default)]
pub struct PgPhase {
    /// One per item, in order: final once PostgreSQL committed.
    pub outcomes: Vec<Outcome>,
    /// PostgreSQL seq of each content hash this batch stored (append layout).
    seqs: HashMap<String, i64>,
}

impl PgPhase {
    /// A phase with nothing left for LMDB to do (PostgreSQL-only or LMDB-only stores).
    pub fn done(outcomes: Vec<Outcome>) -> PgPhase {
        PgPhase {
            outcomes,
            seqs: HashMap::new(),
        }
    }
}

#[derive(Clone)]
pub struct HybridStore {
    pg: PgStore,
    lmdb: LmdbStore,
}

impl HybridStore {
    /// Blobs in the layout the LMDB environment records ([`LmdbStore::layout`]).
    pub fn new(pg: PgStore, lmdb: LmdbStore) -> HybridStore {
        HybridStore { pg, lmdb }
    }

    pub fn pg(&self) -> &PgStore {
        &self.pg
    }

    pub fn lmdb(&self) -> &LmdbStore {
        &self.lmdb
    }

    pub fn layout(&self) -> LmdbLayout {
        self.lmdb.layout()
    }

    /// Both phases, one after the other (tests).
    pub async fn save_batch(&self, items: &[Item]) -> Result<Saved<Vec<Outcome>>, StoreError> {
        match self.save_postgres(items).await? {
            Saved::Committed(phase) => {
                self.write_lmdb(items, &phase).await?;
                Ok(Saved::Committed(phase.outcomes))
            }
            Saved::Refused(r) => Ok(Saved::Refused(r)),
        }
    }

    /// Phase 1: the PostgreSQL transaction. Once it returns, the outcomes are final; the batch
    /// is durable in LMDB only after [`HybridStore::write_lmdb`] with the returned phase.
    pub async fn save_postgres(&self, items: &[Item]) -> Result<Saved<PgPhase>, StoreError> {
        let started = Instant::now();
        let saved = self.pg.save_batch_with_seqs(items).await?;
        metrics::histogram!(names::STAGE_SECONDS, "stage" => "postgres")
            .record(started.elapsed().as_secs_f64());
        if matches!(saved, Saved::Committed(_)) {
            crate::failpoint::hit("after_postgres_commit");
        }
        Ok(saved.map(|(outcomes, seqs)| PgPhase { outcomes, seqs }))
    }

    /// Phase 2: ONE LMDB write transaction with the blobs PostgreSQL holds for the batch (and
    /// heals). Correct in any order relative to other batches' phases: heals look blobs up by key,
    /// and the append layout puts a seq below LMDB's last one only if it is absent.
    pub async fn write_lmdb(&self, items: &[Item], phase: &PgPhase) -> Result<(), StoreError> {
        let started = Instant::now();
        match self.layout() {
            LmdbLayout::Compatible => self.write_compatible(items, &phase.outcomes).await?,
            LmdbLayout::Append => self.write_append(items, phase).await?,
        }
        metrics::histogram!(names::STAGE_SECONDS, "stage" => "lmdb")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn write_append(&self, items: &[Item], phase: &PgPhase) -> Result<(), StoreError> {
        let (outcomes, seqs) = (&phase.outcomes, &phase.seqs);
        let mut blobs = Vec::new();
        let mut others = Vec::new();
        for (item, outcome) in items.iter().zip(outcomes) {
            let h = &item.envelope.header;
            match (outcome, seqs.get(&h.payload_hash)) {
                (Outcome::Stored, Some(&seq)) => blobs.push((seq, item.envelope.bytes.clone())),
                (Outcome::Stored, None)
                | (Outcome::Duplicate | Outcome::Redelivered | Outcome::Replay, _) => {
                    others.push(h.payload_hash.clone())
                }
            }
        }
        let stored_hashes: HashSet<&str> = items
            .iter()
            .zip(outcomes)
            .filter(|(_, o)| **o == Outcome::Stored)
            .map(|(i, _)| i.envelope.header.payload_hash.as_str())
            .collect();
        others.retain(|h| !stored_hashes.contains(h.as_str()));
        let mut healing = 0;
        if !others.is_empty() {
            // Where PostgreSQL keeps them, and which of those LMDB lacks: looked up by key, not
            // inferred from LMDB's last seq, because after a crash the lost batches' messages may
            // come back in any grouping and order (a later batch's before an earlier one's).
            others.sort_unstable();
            others.dedup();
            let held = self.pg.seqs_of_hashes(&others).await?;
            let missing = if held.is_empty() {
                Vec::new()
            } else {
                self.lmdb.missing_seqs(held).await?
            };
            if !missing.is_empty() {
                let healed = self.pg.envelopes_by_seq(&missing).await?;
                tracing::warn!(
                    count = healed.len(),
                    "healing LMDB: blobs PostgreSQL holds were missing"
                );
                healing = healed.len();
                blobs.extend(healed.into_iter().map(|(s, b)| (s, bytes::Bytes::from(b))));
            }
        }
        self.lmdb
            .append_blobs(blobs, highest_offsets(items))
            .await?;
        // Counted once LMDB holds them: a failed write (map full, disk full) heals nothing.
        if healing > 0 {
            metrics::counter!(names::LMDB_HEALED).increment(healing as u64);
        }
        Ok(())
    }

    async fn write_compatible(
        &self,
        items: &[Item],
        outcomes: &[Outcome],
    ) -> Result<(), StoreError> {
        let mut batch = BlobBatch {
            blobs: Vec::new(),
            offsets: highest_offsets(items),
        };
        let mut others: Vec<String> = Vec::new();
        for (item, outcome) in items.iter().zip(outcomes) {
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
        // Hashes this batch stores are being written now; only the others can be missing.
        let stored_now: HashSet<&str> = batch.blobs.iter().map(|b| b.0.as_str()).collect();
        others.retain(|h| !stored_now.contains(h.as_str()));
        let mut healing = 0;
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
                }
                healing = healed.len();
                batch
                    .blobs
                    .extend(healed.into_iter().map(|(h, b)| (h, bytes::Bytes::from(b))));
            }
        }
        self.lmdb.put_blobs(batch).await?;
        // Counted once LMDB holds them: a failed write (map full, disk full) heals nothing.
        if healing > 0 {
            metrics::counter!(names::LMDB_HEALED).increment(healing as u64);
        }
        Ok(())
    }

    pub async fn applied_offsets(
        &self,
        partitions: &[Partition],
    ) -> Result<AppliedOffsets, StoreError> {
        let pg = self.pg.applied_offsets(partitions).await?;
        let lmdb = self.lmdb.applied_offsets(partitions.to_vec()).await?;
        // The lower of the two: a partition LMDB has not recorded restarts where LMDB left off.
        Ok(pg
            .into_iter()
            .filter_map(|(k, p)| lmdb.get(&k).map(|&l| (k, p.min(l))))
            .collect())
    }
}
