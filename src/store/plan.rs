//! What a batch does, decided without IO: which of its messages are stored, duplicates, replays or
//! redeliveries ([`plan_batch`]), and how far it advances each partition's applied offset
//! ([`highest_offsets`]). The backends run the plan; the rules live here, once.

use std::collections::{HashMap, HashSet};

use super::{Item, Outcome};
use crate::partition::{Partition, Position};

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
    use crate::dev::signing::{sign, EnvelopeSpec};
    use crate::envelope::{decode, Limits};
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

    #[test]
    fn a_batch_advances_each_partition_to_its_highest_offset() {
        let at = |topic: &str, number, offset| Item {
            pos: Some(Position::new(topic, number, offset)),
            ..item("1", 1)
        };
        let items = [
            at("t", 0, 7),
            at("t", 0, 5),
            at("t", 1, 2),
            at("u", 0, 9),
            item("2", 2),
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
        assert!(highest_offsets(&[item("3", 3)]).is_empty());
    }
}
