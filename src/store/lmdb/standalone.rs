//! LMDB-only mode (`store.mode = "lmdb"`): LMDB is the whole store, so it is also the replay
//! guard, the id index and the key pins, written in the batch's ONE write transaction and decided
//! by the same plan as PostgreSQL's ([`plan_batch`]). In hybrid mode none of this is written:
//! PostgreSQL holds it.
//!
//! Invariants: a `replay_guard` entry and its `guard_claims` entry are written and deleted
//! together; a blob in `events` is never overwritten; offsets never move backwards here.

use std::sync::Arc;

use heed::PutFlags;
use uuid::Uuid;

use super::{put_new, write_offsets, LmdbStore};
use crate::store::plan::{digests, highest_offsets, plan_batch, Held};
use crate::store::{Item, Outcome, Saved, StoreError};

impl LmdbStore {
    /// In LMDB-only mode, bind each key_id to the first public key seen for it (see
    /// `PgStore::with_key_pinning`). Call before the store is shared.
    pub fn with_key_pinning(mut self, on: bool) -> LmdbStore {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.pin_keys = on;
        }
        self
    }

    /// LMDB-only save: replay guard, idempotency, pins and offsets in ONE write transaction,
    /// decided by the same plan as PostgreSQL's ([`plan_batch`]).
    pub async fn save_batch(&self, items: Vec<Item>) -> Result<Saved<Vec<Outcome>>, StoreError> {
        let pin_keys = self.inner.pin_keys;
        let digests = digests(&items);
        self.write_blocking(move |dbs, wtxn| {
            // What LMDB holds of the batch's keys (owned: the writes below need the transaction).
            let mut redelivered = Vec::with_capacity(items.len());
            let mut claims = Vec::new();
            let mut hashes = Vec::new();
            let mut ids = Vec::new();
            let mut pins = Vec::new();
            for item in &items {
                let h = &item.envelope.header;
                redelivered.push(match &item.pos {
                    Some(pos) => dbs
                        .offsets
                        .get(wtxn, &pos.partition)?
                        .is_some_and(|a| pos.offset <= a),
                    None => false,
                });
                let rk = guard_key(&h.key_id, &h.nonce);
                if dbs.replay.get(wtxn, &rk)?.is_some() {
                    let claim = dbs.claims.get(wtxn, &rk)?.map(|(digest, _)| digest);
                    claims.push(((h.key_id.as_str(), h.nonce.as_str()), claim));
                }
                if dbs.events.get(wtxn, h.payload_hash.as_bytes())?.is_some() {
                    hashes.push(h.payload_hash.as_str());
                }
                if let Some(stored) = dbs.ids.get(wtxn, &h.id)? {
                    ids.push((h.id, stored.to_string()));
                }
                if pin_keys {
                    if let Some(keys) = dbs.pins.get(wtxn, &h.key_id)? {
                        pins.push((h.key_id.as_str(), keys));
                    }
                }
            }
            let held = Held {
                keys: claims.into_iter().collect(),
                hashes: hashes.into_iter().collect(),
                ids: ids.iter().map(|(id, hash)| (*id, hash.as_str())).collect(),
                pins: pin_keys.then(|| pins.into_iter().collect()),
            };
            let plan = plan_batch(&items, &digests, &redelivered, &held);
            let refusals = plan.refusals();
            if !refusals.is_empty() {
                // Nothing written: the caller dead-letters them, then saves the rest again.
                return Ok(Saved::Refused(refusals));
            }
            let stored_at = chrono::Utc::now().timestamp_micros();
            for &i in &plan.guard_rows {
                let h = &items[i].envelope.header;
                let rk = guard_key(&h.key_id, &h.nonce);
                dbs.replay.put(wtxn, &rk, h.issued_at.as_bytes())?;
                dbs.claims.put(wtxn, &rk, &(digests[i], stored_at))?;
            }
            for &i in &plan.event_rows {
                let (h, blob) = (&items[i].envelope.header, &items[i].envelope.bytes);
                put_new(
                    dbs.events,
                    wtxn,
                    PutFlags::NO_OVERWRITE,
                    h.payload_hash.as_bytes(),
                    blob,
                )?;
                dbs.ids.put(wtxn, &h.id, &h.payload_hash)?;
            }
            for (key_id, key) in &plan.new_pins {
                dbs.pins.put(wtxn, key_id, &vec![*key])?;
            }
            write_offsets(dbs, wtxn, &highest_offsets(&items))?;
            Ok(Saved::Committed(plan.outcomes().unwrap_or_default()))
        })
        .await
    }

    /// Deletes replay-guard entries issued AND stored before `older_than` (the stored time is in
    /// `guard_claims`). An entry without a claim (nekhebet-store 4.0's) has no stored time: it is
    /// kept unless `force`. ISO-8601 `issued_at` strings compare in time order, as in Python's
    /// `cleanup_replay_guard`.
    pub async fn cleanup_replay_guard(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
        force: bool,
    ) -> Result<u64, StoreError> {
        let iso = older_than.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let cutoff_us = older_than.timestamp_micros();
        self.write_blocking(move |dbs, wtxn| {
            let mut stale = Vec::new();
            for kv in dbs.replay.iter(wtxn)? {
                let (k, v) = kv?;
                if v < iso.as_bytes() {
                    stale.push(k.to_vec());
                }
            }
            let mut deleted = 0;
            for k in &stale {
                let stored_before = match dbs.claims.get(wtxn, k)? {
                    Some((_, stored_at)) => stored_at < cutoff_us,
                    None => force,
                };
                if stored_before {
                    dbs.replay.delete(wtxn, k)?;
                    dbs.claims.delete(wtxn, k)?;
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// LMDB-only mode: the pinned keys of every key_id, or of one.
    pub async fn pins(
        &self,
        key_id: Option<String>,
    ) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let mut out = Vec::new();
            for kv in dbs.pins.iter(rtxn)? {
                let (k, keys) = kv?;
                if key_id.as_deref().is_none_or(|want| want == k) {
                    out.extend(keys.into_iter().map(|key| (k.to_string(), key)));
                }
            }
            Ok(out)
        })
        .await
    }

    /// LMDB-only mode: pins (`add`) or unpins a key for `key_id`; whether anything changed.
    pub async fn set_pin(
        &self,
        key_id: String,
        key: [u8; 32],
        add: bool,
    ) -> Result<bool, StoreError> {
        self.write_blocking(move |dbs, wtxn| {
            let mut keys = dbs.pins.get(wtxn, &key_id)?.unwrap_or_default();
            let had = keys.contains(&key);
            match (add, had) {
                (true, false) => keys.push(key),
                (false, true) => keys.retain(|k| *k != key),
                (true, true) | (false, false) => return Ok(false),
            }
            if keys.is_empty() {
                dbs.pins.delete(wtxn, &key_id)?;
            } else {
                dbs.pins.put(wtxn, &key_id, &keys)?;
            }
            Ok(true)
        })
        .await
    }

    /// By id through the `ids` index (maintained in LMDB-only mode; hybrid reads go through
    /// PostgreSQL's metadata instead).
    pub async fn get(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let Some(hash) = dbs.ids.get(rtxn, &id)? else {
                return Ok(None);
            };
            Ok(dbs.events.get(rtxn, hash.as_bytes())?.map(<[u8]>::to_vec))
        })
        .await
    }
}

/// The key of `replay_guard` (nekhebet-store 4.0's) and `guard_claims`.
fn guard_key(key_id: &str, nonce: &str) -> Vec<u8> {
    format!("{key_id}:{nonce}").into_bytes()
}
