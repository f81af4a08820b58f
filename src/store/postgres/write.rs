//! Saving a batch: the transaction the [module docs](super) describe. Most batches hold only new
//! keys and are COPYed without looking anything up; after one met keys the database held, the next
//! [`CAREFUL_AFTER_CONFLICT`] batches look their keys up first ([`Lookup`]), since replays and
//! duplicates tend to come in runs. Every unique constraint the plan decides on is in
//! [`super::error::RACED_CONSTRAINTS`], so a blind COPY that meets a held key of any kind is redone
//! with lookups, and the outcome never depends on which path a batch took.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::copy::{copy_events, copy_guard, next_seqs};
use super::{PgError, PgErrorKind, PgStore};
use crate::envelope::{Envelope, Header};
use crate::partition::Position;
use crate::store::plan::{digests, highest_offsets, plan_batch, BatchPlan, Digest, Held};
use crate::store::{Item, Outcome, Saved};

/// Creates the progress rows of partitions seen for the first time (applied offset -1: nothing
/// applied). Without it, the first batch of a partition would lock nothing below, and two
/// writers could both decide its messages; with it, the second waits for the first to commit.
const ENSURE_OFFSETS_SQL: &str = "
INSERT INTO nekhebet_consumer_offsets (topic, partition, applied_offset)
SELECT t, p, -1 FROM unnest($1::text[], $2::int[]) AS u(t, p)
ON CONFLICT (topic, partition) DO NOTHING";

/// Locks the batch's partitions' progress rows: serialises two workers that briefly both hold a
/// partition during a rebalance, and tells which messages were already applied.
const LOCK_OFFSETS_SQL: &str = "
SELECT topic, partition, applied_offset FROM nekhebet_consumer_offsets
 WHERE (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))
   FOR UPDATE";

/// Used `(key_id, nonce)` pairs, with the digest of the envelope that claimed each: recorded with
/// the claim, or, for a row written before digests were (nekhebet-store 4.0), the digest of the
/// stored envelope of the same event id (an exact repeat of it is byte-identical).
const SEEN_KEYS_SQL: &str = "
SELECT g.key_id, g.nonce,
       COALESCE(g.envelope_sha256, (SELECT sha256(e.envelope) FROM events e WHERE e.id = u.id))
  FROM unnest($1::text[], $2::text[], $3::uuid[]) AS u(key_id, nonce, id)
  JOIN replay_guard g ON g.key_id = u.key_id AND g.nonce = u.nonce";

/// Stored content hashes among the batch's. Joins from the (small) input: index probes.
const SEEN_HASHES_SQL: &str = "
SELECT e.content_hash FROM unnest($1::text[]) AS u(h) JOIN events e ON e.content_hash = u.h";

/// Stored event ids among the batch's, with their content hash (`id_conflict`).
const SEEN_IDS_SQL: &str = "
SELECT e.id, e.content_hash FROM unnest($1::uuid[]) AS u(id) JOIN events e ON e.id = u.id";

/// The public keys the batch's key_ids are pinned to.
const PINS_SQL: &str =
    "SELECT key_id, public_key FROM nekhebet_key_pins WHERE key_id = ANY($1::text[])";

/// Serialises the first pin of a key_id across writers (its own lock space: the classid).
const PIN_LOCK_SQL: &str = "
SELECT pg_advisory_xact_lock(7390412, hashtext(k)) FROM unnest($1::text[]) AS k ORDER BY k";

/// Pins key_ids seen for the first time, unless another writer pinned them meanwhile (then the
/// batch is decided again against that pin).
const NEW_PINS_SQL: &str = "
INSERT INTO nekhebet_key_pins (key_id, public_key, pinned_by)
SELECT k, p, 'first-seen' FROM unnest($1::text[], $2::bytea[]) AS u(k, p)
 WHERE NOT EXISTS (SELECT 1 FROM nekhebet_key_pins q WHERE q.key_id = u.k)
RETURNING key_id";

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

/// How a batch's transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Commit,
    /// A dry run ([`PgStore::probe_batch`]).
    Rollback,
}

/// A committed batch: one outcome per item, and the `seq` of each stored content hash.
pub type Committed = (Vec<Outcome>, HashMap<String, i64>);

impl PgStore {
    /// Saves a batch in ONE transaction; see the [module docs](super). Outcomes are in item order.
    pub async fn save_batch(&self, items: &[Item]) -> Result<Saved<Vec<Outcome>>, PgError> {
        Ok(match self.save_batch_with_seqs(items).await? {
            Saved::Committed((outcomes, _)) => Saved::Committed(outcomes),
            Saved::Refused(r) => Saved::Refused(r),
        })
    }

    /// [`PgStore::save_batch`], also returning the `seq` PostgreSQL assigned to each stored
    /// content hash (the key of the append-only LMDB layout).
    pub async fn save_batch_with_seqs(&self, items: &[Item]) -> Result<Saved<Committed>, PgError> {
        let digests = digests(items);
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
            match self
                .save_once(items, &digests, Lookup::Skip, End::Commit)
                .await
            {
                Err(e) if e.kind == PgErrorKind::Serialization => {
                    tracing::debug!(error = %e, "batch meets keys the database holds; saving it with lookups");
                    self.careful_batches
                        .store(CAREFUL_AFTER_CONFLICT, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        self.save_once(items, &digests, Lookup::Probe, End::Commit)
            .await
    }

    /// Runs the batch's transaction and rolls it back: whether the database would take the batch
    /// (the isolation of a refused message asks whether another message fails the same way).
    pub async fn probe_batch(&self, items: &[Item]) -> Result<(), PgError> {
        let digests = digests(items);
        self.save_once(items, &digests, Lookup::Probe, End::Rollback)
            .await
            .map(|_| ())
    }

    async fn save_once(
        &self,
        items: &[Item],
        digests: &[Digest],
        lookup: Lookup,
        end: End,
    ) -> Result<Saved<Committed>, PgError> {
        let mut client = self.pool.get().await?;
        let result = self
            .transaction(&mut client, items, digests, lookup, end)
            .await;
        if let Err(e) = &result {
            // A connection to a read-only server (a failover demoted it) or a broken one must not
            // go back to the pool: the retry then connects afresh, possibly to the new primary.
            if matches!(e.kind, PgErrorKind::ReadOnly | PgErrorKind::Connection) {
                let _ = deadpool_postgres::Object::take(client);
            }
        }
        result
    }

    async fn transaction(
        &self,
        client: &mut deadpool_postgres::Object,
        items: &[Item],
        digests: &[Digest],
        lookup: Lookup,
        end: End,
    ) -> Result<Saved<Committed>, PgError> {
        let ensure_stmt = client.prepare_cached(ENSURE_OFFSETS_SQL).await?;
        let lock_stmt = client.prepare_cached(LOCK_OFFSETS_SQL).await?;
        let upsert_stmt = client.prepare_cached(UPSERT_OFFSETS_SQL).await?;
        let tx = client.transaction().await?;

        let highest = highest_offsets(items);
        let off_topics: Vec<&str> = highest.iter().map(|p| &*p.partition.topic).collect();
        let off_parts: Vec<i32> = highest.iter().map(|p| p.partition.number).collect();
        let off_values: Vec<i64> = highest.iter().map(|p| p.offset).collect();
        let key_ids: Vec<&str> = {
            let mut k: Vec<&str> = items
                .iter()
                .map(|i| i.envelope.header.key_id.as_str())
                .collect();
            k.sort_unstable();
            k.dedup();
            k
        };

        // Pipelined on the connection; the server runs them in order, so the lookups' snapshot is
        // taken after the partition locks are held and sees everything a previous owner committed.
        let lock_params: [&(dyn ToSql + Sync); 2] = [&off_topics, &off_parts];
        let (_, locked, pins, seen) = futures::try_join!(
            tx.execute(&ensure_stmt, &lock_params),
            tx.query(&lock_stmt, &lock_params),
            async {
                if self.pin_keys {
                    tx.query(PINS_SQL, &[&key_ids]).await
                } else {
                    Ok(Vec::new())
                }
            },
            async {
                match lookup {
                    Lookup::Probe => look_up(&tx, items).await.map(Some),
                    Lookup::Skip => Ok(None),
                }
            }
        )?;
        let applied: HashMap<(&str, i32), i64> = locked
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let mut held = Held::default();
        if let Some((keys, hashes, ids)) = &seen {
            for r in keys {
                let digest: Option<Vec<u8>> = r.get(2);
                held.keys.insert(
                    (r.get(0), r.get(1)),
                    digest.and_then(|d| <[u8; 32]>::try_from(d).ok()),
                );
            }
            held.hashes = hashes.iter().map(|r| r.get(0)).collect();
            held.ids = ids.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        if self.pin_keys {
            let mut map: HashMap<&str, Vec<[u8; 32]>> = HashMap::new();
            for r in &pins {
                let key: Vec<u8> = r.get(1);
                if let Ok(key) = <[u8; 32]>::try_from(key) {
                    map.entry(r.get(0)).or_default().push(key);
                }
            }
            held.pins = Some(map);
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
        let plan = plan_batch(items, digests, &redelivered, &held);
        let refusals = plan.refusals();
        if !refusals.is_empty() {
            // Nothing is written: the refused messages go to the dead-letter sink first, then the
            // rest of the batch is saved again without them.
            tx.rollback().await?;
            return Ok(Saved::Refused(refusals));
        }
        let BatchPlan {
            decisions: _,
            guard_rows,
            event_rows,
            new_pins,
        } = &plan;
        let outcomes = plan.outcomes().unwrap_or_default();

        if !new_pins.is_empty() {
            pin_first_keys(&tx, new_pins).await?;
        }
        if !guard_rows.is_empty() {
            let rows: Vec<(&Header, &Digest)> = guard_rows
                .iter()
                .map(|&i| (&items[i].envelope.header, &digests[i]))
                .collect();
            copy_guard(&tx, &rows).await?;
        }
        let mut stored: HashMap<String, i64> = HashMap::with_capacity(event_rows.len());
        if !event_rows.is_empty() {
            // Taken after the replay-guard rows are written, so the transaction already has its
            // id when it takes them (the integrator's horizon relies on it).
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
        match end {
            End::Commit => tx.commit().await?,
            End::Rollback => tx.rollback().await?,
        }
        Ok(Saved::Committed((outcomes, stored)))
    }
}

type Rows = Vec<tokio_postgres::Row>;

/// The keys, content hashes and ids of the batch the database holds (three pipelined lookups).
async fn look_up(
    tx: &deadpool_postgres::Transaction<'_>,
    items: &[Item],
) -> Result<(Rows, Rows, Rows), tokio_postgres::Error> {
    let headers = || items.iter().map(|i| &i.envelope.header);
    let key_ids: Vec<&str> = headers().map(|h| h.key_id.as_str()).collect();
    let nonces: Vec<&str> = headers().map(|h| h.nonce.as_str()).collect();
    let ids: Vec<Uuid> = headers().map(|h| h.id).collect();
    let hashes: Vec<&str> = headers().map(|h| h.payload_hash.as_str()).collect();
    let keys_stmt = tx.prepare_cached(SEEN_KEYS_SQL).await?;
    let hashes_stmt = tx.prepare_cached(SEEN_HASHES_SQL).await?;
    let ids_stmt = tx.prepare_cached(SEEN_IDS_SQL).await?;
    let keys_params: [&(dyn ToSql + Sync); 3] = [&key_ids, &nonces, &ids];
    let hashes_params: [&(dyn ToSql + Sync); 1] = [&hashes];
    let ids_params: [&(dyn ToSql + Sync); 1] = [&ids];
    futures::try_join!(
        tx.query(&keys_stmt, &keys_params),
        tx.query(&hashes_stmt, &hashes_params),
        tx.query(&ids_stmt, &ids_params),
    )
}

/// Pins the first key seen for each new key_id; if another writer pinned one meanwhile, the batch
/// must be decided again against that pin: a serialization failure (retried).
async fn pin_first_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    new_pins: &[(String, [u8; 32])],
) -> Result<(), PgError> {
    let key_ids: Vec<&str> = new_pins.iter().map(|(k, _)| k.as_str()).collect();
    let keys: Vec<&[u8]> = new_pins.iter().map(|(_, p)| &p[..]).collect();
    tx.query(PIN_LOCK_SQL, &[&key_ids]).await?;
    let pinned = tx.query(NEW_PINS_SQL, &[&key_ids, &keys]).await?;
    if pinned.len() != new_pins.len() {
        return Err(PgError {
            kind: PgErrorKind::Serialization,
            message: "another writer pinned a key_id of this batch first".into(),
        });
    }
    for (key_id, key) in new_pins {
        tracing::info!(key_id = %key_id, public_key = %crate::envelope::encode_base64(key), "key_id pinned to the first public key seen");
    }
    Ok(())
}
