//! Saving a batch: the transaction the [module docs](super) describe. Most batches hold only new
//! keys and are COPYed without looking anything up; after one met keys the database held, the next
//! [`CAREFUL_AFTER_CONFLICT`] batches look their keys up first ([`Lookup`]), since replays and
//! duplicates tend to come in runs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use tokio_postgres::types::ToSql;

use super::copy::{copy_events, copy_guard, next_seqs};
use super::{PgError, PgErrorKind, PgStore};
use crate::envelope::{Envelope, Header};
use crate::partition::Position;
use crate::store::plan::{highest_offsets, plan_batch, BatchPlan};
use crate::store::{Item, Outcome};

/// Locks the batch's partitions' progress rows: serialises two workers that briefly both hold a
/// partition during a rebalance, and tells which messages were already applied.
const LOCK_OFFSETS_SQL: &str = "
SELECT topic, partition, applied_offset FROM nekhebet_consumer_offsets
 WHERE (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))
   FOR UPDATE";

/// What of the batch the database already holds: used `(key_id, nonce)` pairs and stored content
/// hashes. Joins from the (small) input so each probe is an index lookup whatever the table size.
const SEEN_SQL: &str = "
SELECT 'g'::text AS k, g.key_id AS a, g.nonce AS b
  FROM unnest($1::text[], $2::text[]) AS u(key_id, nonce)
  JOIN replay_guard g ON g.key_id = u.key_id AND g.nonce = u.nonce
UNION ALL
SELECT 'h', e.content_hash, NULL
  FROM unnest($3::text[]) AS u(content_hash)
  JOIN events e ON e.content_hash = u.content_hash";

const UPSERT_OFFSETS_SQL: &str = "
INSERT INTO nekhebet_consumer_offsets AS o (topic, partition, applied_offset)
SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
ON CONFLICT (topic, partition) DO UPDATE
    SET applied_offset = GREATEST(o.applied_offset, EXCLUDED.applied_offset), updated_at = now()";

/// After a batch met keys the database already held, this many following batches look their
/// keys up before the COPY instead of trying it blind.
const CAREFUL_AFTER_CONFLICT: u32 = 16;

/// Whether a save looks up which of the batch's keys the database already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// COPY straight away: a key the database holds fails the COPY (unique violation).
    Skip,
    /// Look up first and COPY only new keys: fails only if another writer races us.
    Probe,
}

impl PgStore {
    /// Saves a batch in ONE transaction; see the [module docs](super). Outcomes are in item order.
    pub async fn save_batch(&self, items: &[Item]) -> Result<Vec<Outcome>, PgError> {
        Ok(self.save_batch_with_seqs(items).await?.0)
    }

    /// [`PgStore::save_batch`], also returning the `seq` PostgreSQL assigned to each stored
    /// content hash (the key of the append-only LMDB layout).
    pub async fn save_batch_with_seqs(
        &self,
        items: &[Item],
    ) -> Result<(Vec<Outcome>, HashMap<String, i64>), PgError> {
        // Most batches hold only new keys: saving them without looking anything up first is one
        // index probe per row and key cheaper (a fifth of the transaction). If the database did
        // hold one, the COPY fails on its unique index, the transaction rolls back and the batch
        // is saved again with the lookups — which the next few batches then use from the start,
        // since replays and duplicates tend to come in runs (a producer re-sending, a replayer).
        let careful = self
            .careful_batches
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !careful {
            match self.save_once(items, Lookup::Skip).await {
                Err(e) if e.kind == PgErrorKind::Serialization => {
                    tracing::debug!(error = %e, "batch meets keys the database holds; saving it with lookups");
                    self.careful_batches
                        .store(CAREFUL_AFTER_CONFLICT, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        self.save_once(items, Lookup::Probe).await
    }

    async fn save_once(
        &self,
        items: &[Item],
        lookup: Lookup,
    ) -> Result<(Vec<Outcome>, HashMap<String, i64>), PgError> {
        let mut client = self.pool.get().await?;
        let lock_stmt = client.prepare_cached(LOCK_OFFSETS_SQL).await?;
        let seen_stmt = client.prepare_cached(SEEN_SQL).await?;
        let upsert_stmt = client.prepare_cached(UPSERT_OFFSETS_SQL).await?;
        let tx = client.transaction().await?;

        let highest = highest_offsets(items);
        let off_topics: Vec<&str> = highest.iter().map(|p| &*p.partition.topic).collect();
        let off_parts: Vec<i32> = highest.iter().map(|p| p.partition.number).collect();
        let off_values: Vec<i64> = highest.iter().map(|p| p.offset).collect();

        // Pipelined on the connection; the server runs them in order, so the lookup's snapshot is
        // taken after the partition locks are held and sees everything a previous owner committed.
        let lock_params: [&(dyn ToSql + Sync); 2] = [&off_topics, &off_parts];
        let (locked, seen) = futures::try_join!(tx.query(&lock_stmt, &lock_params), async {
            match lookup {
                Lookup::Probe => {
                    let headers = || items.iter().map(|i| &i.envelope.header);
                    let key_ids: Vec<&str> = headers().map(|h| h.key_id.as_str()).collect();
                    let nonces: Vec<&str> = headers().map(|h| h.nonce.as_str()).collect();
                    let hashes: Vec<&str> = headers().map(|h| h.payload_hash.as_str()).collect();
                    tx.query(&seen_stmt, &[&key_ids, &nonces, &hashes]).await
                }
                Lookup::Skip => Ok(Vec::new()),
            }
        })?;
        let applied: HashMap<(&str, i32), i64> = locked
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let mut used_keys: HashSet<(&str, &str)> = HashSet::new();
        let mut held_hashes: HashSet<&str> = HashSet::new();
        for row in &seen {
            if row.get::<_, &str>(0) == "g" {
                used_keys.insert((row.get(1), row.get(2)));
            } else {
                held_hashes.insert(row.get(1));
            }
        }

        let redelivered: Vec<bool> = items
            .iter()
            .map(|i| {
                i.pos.as_ref().is_some_and(|p| {
                    applied
                        .get(&(&*p.partition.topic, p.partition.number))
                        .is_some_and(|&a| p.offset <= a)
                })
            })
            .collect();
        let BatchPlan {
            outcomes,
            guard_rows,
            event_rows,
        } = plan_batch(items, &redelivered, &used_keys, &held_hashes);

        if !guard_rows.is_empty() {
            let headers: Vec<&Header> = guard_rows
                .iter()
                .map(|&i| &items[i].envelope.header)
                .collect();
            copy_guard(&tx, &headers).await?;
        }
        let mut stored: HashMap<String, i64> = HashMap::with_capacity(event_rows.len());
        if !event_rows.is_empty() {
            let seqs = next_seqs(&tx, event_rows.len()).await?;
            let rows: Vec<(&Envelope, Option<&Position>, i64)> = event_rows
                .iter()
                .zip(seqs)
                .map(|(&i, seq)| (&items[i].envelope, items[i].pos.as_ref(), seq))
                .collect();
            copy_events(&tx, &rows).await?;
            for (envelope, _, seq) in rows {
                stored.insert(envelope.header.payload_hash.clone(), seq);
            }
        }

        if !highest.is_empty() {
            tx.execute(&upsert_stmt, &[&off_topics, &off_parts, &off_values])
                .await?;
        }
        tx.commit().await?;
        Ok((outcomes, stored))
    }
}
