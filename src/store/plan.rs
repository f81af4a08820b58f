//! What a batch does, decided without IO: the outcome of each of its messages ([`plan_batch`]) and
//! how far it advances each partition's applied offset ([`highest_offsets`]). Both backends look
//! up what they hold of the batch's keys ([`Held`]), run the plan, and write what it says; the
//! rules live here, once, in the order the outcome table (README) states them:
//!
//! 1. the same Kafka message (topic, partition, offset) was already applied → `redelivered`;
//! 2. the byte-identical envelope already claimed its `(key_id, nonce)` (a producer's retry, a
//!    batch retried after a lost COMMIT acknowledgement) → `redelivered`;
//! 3. `key_id` is pinned to other public keys → refused `key_id_mismatch`, before the replay guard,
//!    so an impostor cannot burn another producer's nonces;
//! 4. `(key_id, nonce)` claimed by a *different* envelope → `replay`;
//! 5. the event id is stored with another payload → refused `id_conflict`;
//! 6. the content hash is stored → `duplicate` (the replay-guard row only); else `stored`.
//!
//! "Held" means in the database or earlier in the same batch: a batch decides exactly as if its
//! messages were saved one by one, in the order Kafka delivered them.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{Item, Outcome};
use crate::envelope::Rejection;
use crate::partition::{Partition, Position};
use crate::reason::Reason;

/// SHA-256 of an envelope's bytes exactly as received.
pub type Digest = [u8; 32];

/// SHA-256 of each item's envelope bytes (rule 2 compares them; `replay_guard` records them).
pub(crate) fn digests(items: &[Item]) -> Vec<Digest> {
    items.iter().map(|i| digest(&i.envelope.bytes)).collect()
}

/// [`digests`] of bare envelopes.
#[cfg(any(test, feature = "dev"))]
pub(crate) fn envelope_digests(envelopes: &[crate::envelope::Envelope]) -> Vec<Digest> {
    envelopes.iter().map(|e| digest(&e.bytes)).collect()
}

fn digest(bytes: &[u8]) -> Digest {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(bytes).into()
}

/// Highest offset per (topic, partition) among the items with a Kafka position: what a batch
/// advances the stored applied offsets to (one position per partition, in no particular order).
pub(crate) fn highest_offsets(items: &[Item]) -> Vec<Position> {
    let mut highest: HashMap<&Partition, i64> = HashMap::new();
    for pos in items.iter().filter_map(|i| i.pos.as_ref()) {
        let e = highest.entry(&pos.partition).or_insert(pos.offset);
        *e = (*e).max(pos.offset);
    }
    highest
        .into_iter()
        .map(|(partition, offset)| Position {
            partition: partition.clone(),
            offset,
        })
        .collect()
}

/// What a store already holds of a batch's keys, as its lookups found it.
#[derive(Debug, Default)]
pub(crate) struct Held<'a> {
    /// Used `(key_id, nonce)` pairs → the digest of the envelope that claimed each, when known
    /// (`None`: a row of nekhebet-store 4.0, or of a duplicate written before digests were kept).
    pub keys: HashMap<(&'a str, &'a str), Option<Digest>>,
    /// Stored content hashes.
    pub hashes: HashSet<&'a str>,
    /// Stored event ids → their content hash.
    pub ids: HashMap<Uuid, &'a str>,
    /// Pinned public keys per key_id, when pinning is on (`None`: off — a key registry decides, or
    /// verification is disabled). A key_id without an entry is not pinned yet.
    pub pins: Option<HashMap<&'a str, Vec<[u8; 32]>>>,
}

/// The fate of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Outcome(Outcome),
    /// Refused by the store's rules (`key_id_mismatch`, `id_conflict`): dead-lettered, never
    /// written, and the batch is saved without it.
    Refused(Rejection),
}

/// What one batch does, decided from what the store holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchPlan {
    /// One per item, in item order.
    pub decisions: Vec<Decision>,
    /// Items whose `(key_id, nonce)` goes into the replay guard (stored and duplicates).
    pub guard_rows: Vec<usize>,
    /// Items whose envelope is stored.
    pub event_rows: Vec<usize>,
    /// Key_ids seen for the first time, pinned to the public key of their first accepted envelope.
    pub new_pins: Vec<(String, [u8; 32])>,
}

impl BatchPlan {
    /// The refusals, if any: a batch with refusals is not written; it is saved again without them
    /// once they are dead-lettered (a refused message must be durable in the dead-letter sink before
    /// the transaction that advances its partition's offset past it commits).
    pub fn refusals(&self) -> Vec<(usize, Rejection)> {
        self.decisions
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Decision::Refused(r) => Some((i, r.clone())),
                Decision::Outcome(_) => None,
            })
            .collect()
    }

    /// The outcomes, when nothing was refused.
    pub fn outcomes(&self) -> Option<Vec<Outcome>> {
        self.decisions
            .iter()
            .map(|d| match d {
                Decision::Outcome(o) => Some(*o),
                Decision::Refused(_) => None,
            })
            .collect()
    }
}

/// Decides a batch in item order; see the module docs for the rules.
pub(crate) fn plan_batch(
    items: &[Item],
    digests: &[Digest],
    redelivered: &[bool],
    held: &Held<'_>,
) -> BatchPlan {
    let mut plan = BatchPlan {
        decisions: Vec::with_capacity(items.len()),
        ..BatchPlan::default()
    };
    // What earlier items of this batch claimed.
    let mut keys: HashMap<(&str, &str), Digest> = HashMap::with_capacity(items.len());
    let mut hashes: HashSet<&str> = HashSet::with_capacity(items.len());
    let mut ids: HashMap<Uuid, &str> = HashMap::with_capacity(items.len());
    let mut pins: HashMap<&str, [u8; 32]> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let h = &item.envelope.header;
        let key = (h.key_id.as_str(), h.nonce.as_str());
        let hash = h.payload_hash.as_str();
        let claimed_by = keys
            .get(&key)
            .map(|d| Some(*d))
            .or_else(|| held.keys.get(&key).copied());
        // The same Kafka message applied before, or the byte-identical envelope (a retry).
        let redelivery = redelivered[i] || claimed_by == Some(Some(digests[i]));
        let decision = if redelivery {
            Decision::Outcome(Outcome::Redelivered)
        } else if let Some(refusal) = pin_refusal(held, &pins, &h.key_id, &item.envelope.public_key)
        {
            Decision::Refused(refusal)
        } else if claimed_by.is_some() {
            Decision::Outcome(Outcome::Replay)
        } else if let Some(other) = ids
            .get(&h.id)
            .or_else(|| held.ids.get(&h.id))
            .filter(|stored| **stored != hash)
        {
            Decision::Refused(Rejection::new(
                Reason::IdConflict,
                format!("event id {} is already stored with another payload (content hash {other}); this one has {hash}", h.id),
            ))
        } else {
            keys.insert(key, digests[i]);
            plan.guard_rows.push(i);
            if held.pins.as_ref().is_some_and(|p| !p.contains_key(key.0))
                && !pins.contains_key(key.0)
            {
                pins.insert(key.0, item.envelope.public_key);
                plan.new_pins
                    .push((h.key_id.clone(), item.envelope.public_key));
            }
            if held.hashes.contains(hash) || !hashes.insert(hash) {
                Decision::Outcome(Outcome::Duplicate)
            } else {
                // Only a stored envelope's id is in `events` (a duplicate's is not).
                ids.insert(h.id, hash);
                plan.event_rows.push(i);
                Decision::Outcome(Outcome::Stored)
            }
        };
        plan.decisions.push(decision);
    }
    plan
}

/// `key_id_mismatch` when pinning is on and `key_id` is pinned (in the store, or by an earlier
/// item of the batch) to keys other than `public_key`.
fn pin_refusal(
    held: &Held<'_>,
    batch_pins: &HashMap<&str, [u8; 32]>,
    key_id: &str,
    public_key: &[u8; 32],
) -> Option<Rejection> {
    let stored = held.pins.as_ref()?;
    let allowed: Vec<[u8; 32]> = match (stored.get(key_id), batch_pins.get(key_id)) {
        (Some(keys), _) => keys.clone(),
        (None, Some(first)) => vec![*first],
        (None, None) => return None,
    };
    (!allowed.contains(public_key)).then(|| {
        Rejection::new(
            Reason::KeyIdMismatch,
            format!(
                "key_id {key_id} is pinned to {} other public key(s); this envelope is signed with {} \
                 (a producer rotating its key: `nekhebet-store keys pin {key_id} <public key>`)",
                allowed.len(),
                crate::envelope::encode_base64(public_key)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::signing::{sign, EnvelopeSpec};
    use crate::envelope::{decode, Limits};
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    /// An envelope of key_id `k` signed by key `signer`, with `nonce`, event id `id` and a payload
    /// (hence content hash) that follows `payload`.
    fn env(signer: u8, nonce: u32, id: u8, payload: u32) -> Item {
        let spec = EnvelopeSpec {
            event_type: "omen.observed".into(),
            source: "test".into(),
            key_id: "k".into(),
            payload: serde_json::json!({ "n": payload }),
            issued_at: Some(chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap()),
            expires_at: None,
            nonce: Some(format!("{nonce:0>64}")),
            id: Some(Uuid::from_bytes([id; 16])),
        };
        let bytes = sign(&spec, &SigningKey::from_bytes(&[signer; 32]));
        Item {
            envelope: decode(bytes.into(), &Limits::default()).expect("valid envelope"),
            pos: None,
        }
    }

    /// The usual envelope: signer 7, id derived from the nonce.
    fn item(nonce: u32, payload: u32) -> Item {
        env(7, nonce, nonce as u8, payload)
    }

    fn outcomes(p: &BatchPlan) -> Vec<Outcome> {
        p.outcomes().expect("no refusals")
    }

    fn run(items: &[Item], redelivered: &[bool], held: &Held<'_>) -> BatchPlan {
        plan_batch(items, &digests(items), redelivered, held)
    }

    #[test]
    fn fresh_items_are_stored_in_order() {
        let items = [item(1, 1), item(2, 2)];
        let p = run(&items, &[false, false], &Held::default());
        assert_eq!(outcomes(&p), [Outcome::Stored, Outcome::Stored]);
        assert_eq!(p.guard_rows, [0, 1]);
        assert_eq!(p.event_rows, [0, 1]);
    }

    #[test]
    fn same_content_new_nonce_is_a_duplicate_with_a_guard_row() {
        let items = [item(1, 1), item(2, 1), item(3, 2)];
        let held_hash = items[2].envelope.header.payload_hash.clone();
        let held = Held {
            hashes: [held_hash.as_str()].into(),
            ..Held::default()
        };
        let p = run(&items, &[false; 3], &held);
        assert_eq!(
            outcomes(&p),
            [Outcome::Stored, Outcome::Duplicate, Outcome::Duplicate]
        );
        assert_eq!(p.guard_rows, [0, 1, 2]);
        assert_eq!(p.event_rows, [0]);
    }

    #[test]
    fn a_resigned_envelope_is_a_duplicate_in_the_batch_and_against_the_store() {
        // Same id and payload, new nonce: nekhebet-store 4.0 stores it as a duplicate.
        let a = env(7, 1, 9, 1);
        let a_again = env(7, 2, 9, 1);
        let p = run(&[a.clone(), a_again.clone()], &[false; 2], &Held::default());
        assert_eq!(outcomes(&p), [Outcome::Stored, Outcome::Duplicate]);
        let hash = a.envelope.header.payload_hash.clone();
        let held = Held {
            hashes: [hash.as_str()].into(),
            ids: [(a.envelope.header.id, hash.as_str())].into(),
            ..Held::default()
        };
        let p = run(&[a_again], &[false], &held);
        assert_eq!(outcomes(&p), [Outcome::Duplicate]);
    }

    #[test]
    fn an_id_reused_with_another_payload_is_refused_id_conflict() {
        let a = env(7, 1, 9, 1);
        let b = env(7, 2, 9, 2);
        let p = run(
            &[a.clone(), b.clone(), item(3, 3)],
            &[false; 3],
            &Held::default(),
        );
        let refusals = p.refusals();
        assert_eq!(refusals.len(), 1);
        assert_eq!(
            (refusals[0].0, refusals[0].1.reason),
            (1, Reason::IdConflict)
        );
        assert_eq!(p.guard_rows, [0, 2], "the refused message claims no nonce");
        let hash = a.envelope.header.payload_hash.clone();
        let held = Held {
            ids: [(a.envelope.header.id, hash.as_str())].into(),
            hashes: [hash.as_str()].into(),
            ..Held::default()
        };
        let p = run(&[b], &[false], &held);
        assert_eq!(p.refusals()[0].1.reason, Reason::IdConflict);
    }

    #[test]
    fn an_exact_repeat_is_redelivered_and_another_envelope_on_the_same_nonce_a_replay() {
        let a = item(1, 1);
        let replay = env(7, 1, 50, 2);
        // Within the batch: the retry right behind the original, and a replay.
        let p = run(
            &[a.clone(), a.clone(), replay.clone()],
            &[false; 3],
            &Held::default(),
        );
        assert_eq!(
            outcomes(&p),
            [Outcome::Stored, Outcome::Redelivered, Outcome::Replay]
        );
        assert_eq!(p.guard_rows, [0]);
        // Against the store: the digest recorded with the claim decides.
        let d = digests(std::slice::from_ref(&a))[0];
        let nonce = a.envelope.header.nonce.clone();
        let held = Held {
            keys: [(("k", nonce.as_str()), Some(d))].into(),
            ..Held::default()
        };
        let p = run(&[a.clone(), replay.clone()], &[false; 2], &held);
        assert_eq!(outcomes(&p), [Outcome::Redelivered, Outcome::Replay]);
        // A claim of unknown origin (nekhebet-store 4.0's row): a replay, conservatively.
        let legacy = Held {
            keys: [(("k", nonce.as_str()), None)].into(),
            ..Held::default()
        };
        assert_eq!(outcomes(&run(&[a], &[false], &legacy)), [Outcome::Replay]);
    }

    #[test]
    fn the_first_key_seen_is_pinned_and_an_impostor_is_refused_before_the_replay_guard() {
        let genuine = env(7, 1, 1, 1);
        let impostor_fresh = env(66, 2, 2, 2);
        let impostor_next_nonce = env(66, 3, 3, 3);
        let genuine_next = env(7, 3, 4, 4);
        let pinning = Held {
            pins: Some(HashMap::new()),
            ..Held::default()
        };
        let batch = [
            genuine.clone(),
            impostor_fresh,
            impostor_next_nonce,
            genuine_next,
        ];
        let p = run(&batch, &[false; 4], &pinning);
        assert_eq!(p.new_pins, [("k".to_string(), genuine.envelope.public_key)]);
        let r: Vec<(usize, Reason)> = p
            .refusals()
            .into_iter()
            .map(|(i, r)| (i, r.reason))
            .collect();
        assert_eq!(r, [(1, Reason::KeyIdMismatch), (2, Reason::KeyIdMismatch)]);
        assert_eq!(p.guard_rows, [0, 3], "the impostor burnt no nonce");
        // Pinned in the store: same answer, nothing new to pin.
        let pinned = Held {
            pins: Some([("k", vec![genuine.envelope.public_key])].into()),
            ..Held::default()
        };
        let p = run(&batch[1..], &[false; 3], &pinned);
        assert!(p.new_pins.is_empty());
        assert_eq!(p.refusals().len(), 2);
        // Pinning off (a key registry decides): nothing pinned or refused here.
        let p = run(&batch, &[false; 4], &Held::default());
        assert!(p.new_pins.is_empty() && p.refusals().is_empty());
    }

    #[test]
    fn a_replay_does_not_claim_its_content_hash() {
        // The replay's content must still be stored by the later, legitimate message.
        let used = format!("{:0>64}", 1);
        let held = Held {
            keys: [(("k", used.as_str()), None)].into(),
            ..Held::default()
        };
        let items = [item(1, 5), item(2, 5)];
        let p = run(&items, &[false; 2], &held);
        assert_eq!(outcomes(&p), [Outcome::Replay, Outcome::Stored]);
        assert_eq!(p.event_rows, [1]);
    }

    #[test]
    fn redelivered_items_change_nothing_and_claim_nothing() {
        let items = [item(1, 1), item(1, 1)];
        let p = run(&items, &[true, false], &Held::default());
        assert_eq!(outcomes(&p), [Outcome::Redelivered, Outcome::Stored]);
        assert_eq!(p.guard_rows, [1]);
        assert_eq!(p.event_rows, [1]);
    }

    #[test]
    fn a_batch_advances_each_partition_to_its_highest_offset() {
        let at = |topic: &str, number, offset| Item {
            pos: Some(Position::new(topic, number, offset)),
            ..item(1, 1)
        };
        let items = [
            at("t", 0, 7),
            at("t", 0, 5),
            at("t", 1, 2),
            at("u", 0, 9),
            item(2, 2),
        ];
        let mut highest = highest_offsets(&items);
        highest.sort();
        assert_eq!(
            highest,
            [
                Position::new("t", 0, 7),
                Position::new("t", 1, 2),
                Position::new("u", 0, 9),
            ]
        );
        assert!(highest_offsets(&[item(3, 3)]).is_empty());
    }

    proptest! {
        /// Saving a batch at once decides exactly as saving its messages one by one, each against
        /// what the earlier ones left behind: the batch path and the single path cannot disagree.
        #[test]
        fn a_batch_decides_as_its_messages_one_by_one(
            specs in proptest::collection::vec((0u8..2, 0u32..4, 0u8..4, 0u32..4), 1..12)
        ) {
            let items: Vec<Item> = specs.iter().map(|&(s, n, id, p)| env(7 + s * 59, n, id, p)).collect();
            let d = digests(&items);
            let batch = plan_batch(&items, &d, &vec![false; items.len()], &Held { pins: Some(HashMap::new()), ..Held::default() });

            // One by one, each against a store that holds what the earlier ones wrote.
            let mut keys: HashMap<(String, String), Option<Digest>> = HashMap::new();
            let mut hashes: HashSet<String> = HashSet::new();
            let mut ids: HashMap<Uuid, String> = HashMap::new();
            let mut pins: HashMap<String, Vec<[u8; 32]>> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let held = Held {
                    keys: keys.iter().map(|((k, n), v)| ((k.as_str(), n.as_str()), *v)).collect(),
                    hashes: hashes.iter().map(String::as_str).collect(),
                    ids: ids.iter().map(|(k, v)| (*k, v.as_str())).collect(),
                    pins: Some(pins.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()),
                };
                let one = plan_batch(std::slice::from_ref(item), &d[i..=i], &[false], &held);
                prop_assert_eq!(&one.decisions[0], &batch.decisions[i], "item {}", i);
                let h = &item.envelope.header;
                if !one.guard_rows.is_empty() {
                    keys.insert((h.key_id.clone(), h.nonce.clone()), Some(d[i]));
                }
                if !one.event_rows.is_empty() {
                    ids.insert(h.id, h.payload_hash.clone());
                    hashes.insert(h.payload_hash.clone());
                }
                for (k, p) in one.new_pins {
                    pins.entry(k).or_default().push(p);
                }
            }
        }
    }
}
