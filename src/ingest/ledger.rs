//! The partition ledger: everything the worker knows about the partitions it consumes, in one pure
//! state machine (no IO, no locks; quickwit's `checkpoint.rs` is the model). The main loop owns it
//! and feeds it the events of a run — assignments, batches handed to the writer, batches completed,
//! revocations, watermarks — and it answers the questions the exactly-once contract turns on:
//!
//! - where a newly assigned partition resumes ([`resume_offset`]): the later of the stores' applied
//!   offset + 1 and Kafka's committed offset, both points below which everything is done;
//! - which offsets may be committed when a batch completes ([`Ledger::complete`]): only those of
//!   partitions still owned *under the assignment the batch's records were polled in* (an epoch),
//!   and never backwards;
//! - what to commit again after a failed commit, on revocation and at shutdown
//!   ([`Ledger::positions`], [`Ledger::revoke`]);
//! - whether a revoked partition still has a batch in flight ([`Ledger::holds_any`]);
//! - whether the worker caught up with the high watermarks it measured ([`Ledger::caught_up`]).
//!
//! Invariants (property-tested below):
//! - a partition's committed position only moves forward within one ownership, and it is only
//!   ever an offset the stores decided (a completed batch's next offset, or the stores' resume
//!   point);
//! - nothing is committed for a partition that is not owned, or for a batch whose records were
//!   polled under an earlier assignment of it (another worker may have moved it on since);
//! - a position remembered from an earlier ownership is forgotten on re-assignment.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::partition::Partition;

/// A partition newly assigned to this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub partition: Partition,
    /// The assignment generation: records carry the epoch they were polled under.
    pub epoch: u64,
    /// The group's committed offset (the next offset to read), if any.
    pub kafka_committed: Option<i64>,
}

/// What a completed batch decided for one partition: every record up to `next` (exclusive) of
/// the assignment `epoch` has an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub partition: Partition,
    pub epoch: u64,
    pub next: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    epoch: u64,
    /// The next offset committed (or to commit) to Kafka under this ownership.
    position: Option<i64>,
}

/// The offset to resume a partition from, given the stores' highest applied offset and the
/// group's committed offset (the next offset to read).
///
/// Both are points below which every message is done: the stores record an offset only in the
/// transaction that applied it (the hybrid store reports the lower of PostgreSQL's and LMDB's), and
/// the worker commits to Kafka only after the stores hold the batch and the dead-letter topic
/// acknowledged its rejects. So the later of the two is safe, and it avoids re-reading (and
/// dead-lettering twice) a tail of rejected messages, which the stores never see.
pub fn resume_offset(store_applied: Option<i64>, kafka_committed: Option<i64>) -> Option<i64> {
    match (store_applied.map(|a| a.saturating_add(1)), kafka_committed) {
        (Some(s), Some(k)) => Some(s.max(k)),
        (s, k) => s.or(k),
    }
}

/// A partition whose stores say more was applied than the partition holds: the topic was deleted
/// and re-created (offsets start again at 0), or the worker reads another cluster than the one the
/// stores were filled from. Every new message at or below the stored offset would otherwise be
/// counted `redelivered` and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeyondEnd {
    pub partition: Partition,
    /// The stores' highest applied offset.
    pub applied: i64,
    /// The partition's high watermark (the offset the next message will get).
    pub high: i64,
}

impl std::fmt::Display for BeyondEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {}: the stores hold messages up to offset {}, but the partition ends before it \
             (high watermark {}): the topic was deleted and re-created, or this worker reads another \
             cluster than the stores were filled from. Nothing of it was consumed. If the topic was \
             re-created, reset its stored offsets and start again: \
             nekhebet-store offsets reset --topic {} --to earliest --yes",
            self.partition, self.applied, self.high, self.partition.topic
        )
    }
}

/// The partitions whose stored applied offset is at or beyond their high watermark (see
/// [`BeyondEnd`]). A healthy partition's applied offset is always below it: offsets only grow, and
/// retention or compaction remove messages without lowering the high watermark.
pub fn beyond_end(
    applied: &HashMap<Partition, i64>,
    watermarks: &[(Partition, i64, i64)],
) -> Vec<BeyondEnd> {
    let mut out: Vec<BeyondEnd> = watermarks
        .iter()
        .filter_map(|(p, _low, high)| {
            let a = *applied.get(p)?;
            (a >= *high).then(|| BeyondEnd {
                partition: p.clone(),
                applied: a,
                high: *high,
            })
        })
        .collect();
    out.sort_by(|a, b| a.partition.cmp(&b.partition));
    out
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Ledger {
    owned: HashMap<Partition, Owned>,
    /// Batches between hand-off and completion, with the partitions each holds.
    in_flight: BTreeMap<u64, BTreeSet<Partition>>,
    /// Catch-up: the high watermark of each partition when it was first measured.
    targets: HashMap<Partition, i64>,
    /// Catch-up: how far each partition is known to be done (kept across ownerships: the target
    /// is about the run, not one assignment).
    done: HashMap<Partition, i64>,
}

impl Ledger {
    /// Takes ownership of `assigned`; returns where each resumes (`None`: let Kafka decide, i.e.
    /// `auto.offset.reset`). `applied` holds the stores' applied offsets of these partitions.
    pub fn assign(
        &mut self,
        assigned: &[Assigned],
        applied: &HashMap<Partition, i64>,
    ) -> Vec<(Partition, Option<i64>)> {
        assigned
            .iter()
            .map(|a| {
                let start = resume_offset(applied.get(&a.partition).copied(), a.kafka_committed);
                // The stores may be ahead of Kafka (a worker killed between the store and Kafka
                // commits): take the resume point as our position, so it is committed even if no
                // new message arrives. A position from an earlier ownership is dropped here: another
                // worker may have moved the partition on since.
                let position = start.filter(|s| a.kafka_committed.is_none_or(|k| k < *s));
                self.owned.insert(
                    a.partition.clone(),
                    Owned {
                        epoch: a.epoch,
                        position,
                    },
                );
                if let Some(s) = start {
                    self.advance_done(&a.partition, s);
                }
                (a.partition.clone(), start)
            })
            .collect()
    }

    /// Gives `partitions` up; returns their positions, to commit before the next owner reads the
    /// group's offsets (unless the assignment was lost, when committing is pointless).
    pub fn revoke(&mut self, partitions: &[Partition]) -> Vec<(Partition, i64)> {
        partitions
            .iter()
            .filter_map(|p| {
                let owned = self.owned.remove(p)?;
                Some((p.clone(), owned.position?))
            })
            .collect()
    }

    /// Whether `partition` is owned under assignment `epoch`.
    pub fn owns(&self, partition: &Partition, epoch: u64) -> bool {
        self.owned.get(partition).is_some_and(|o| o.epoch == epoch)
    }

    /// Owned partitions and their epochs (the writer's read-only view).
    pub fn ownership(&self) -> HashMap<Partition, u64> {
        self.owned
            .iter()
            .map(|(p, o)| (p.clone(), o.epoch))
            .collect()
    }

    pub fn assigned(&self) -> impl Iterator<Item = &Partition> {
        self.owned.keys()
    }

    pub fn assigned_count(&self) -> usize {
        self.owned.len()
    }

    /// A batch holding `partitions` was handed to the writer.
    pub fn start(&mut self, batch: u64, partitions: BTreeSet<Partition>) {
        self.in_flight.insert(batch, partitions);
    }

    /// Batches handed off and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a batch in flight holds one of `partitions`.
    pub fn holds_any(&self, partitions: &[Partition]) -> bool {
        self.in_flight
            .values()
            .any(|held| partitions.iter().any(|p| held.contains(p)))
    }

    /// A batch completed (both stores hold it, its rejects are dead-lettered): the offsets to
    /// commit now, one per partition still owned under the epoch its records were polled in.
    pub fn complete(&mut self, batch: u64, decided: &[Decided]) -> Vec<(Partition, i64)> {
        self.in_flight.remove(&batch);
        let mut commit = Vec::with_capacity(decided.len());
        for d in decided {
            self.advance_done(&d.partition, d.next);
            let Some(owned) = self.owned.get_mut(&d.partition) else {
                continue;
            };
            if owned.epoch != d.epoch {
                continue;
            }
            let next = owned.position.map_or(d.next, |p| p.max(d.next));
            owned.position = Some(next);
            commit.push((d.partition.clone(), next));
        }
        commit
    }

    /// A batch left the writer without completing (the writer stopped): it commits nothing.
    pub fn forget(&mut self, batch: u64) {
        self.in_flight.remove(&batch);
    }

    /// The positions of every owned partition that has one: committed again after a failed
    /// commit, periodically, and at shutdown.
    pub fn positions(&self) -> Vec<(Partition, i64)> {
        let mut out: Vec<(Partition, i64)> = self
            .owned
            .iter()
            .filter_map(|(p, o)| Some((p.clone(), o.position?)))
            .collect();
        out.sort();
        out
    }

    fn advance_done(&mut self, partition: &Partition, to: i64) {
        let d = self.done.entry(partition.clone()).or_insert(to);
        *d = (*d).max(to);
    }

    /// Records the watermarks of a partition, once: the catch-up target is the high watermark
    /// when first measured. A partition with no known position started at the low watermark.
    pub fn set_watermarks(&mut self, partition: &Partition, low: i64, high: i64) {
        self.targets.entry(partition.clone()).or_insert(high);
        self.done.entry(partition.clone()).or_insert(low);
    }

    /// Owned partitions without a catch-up target yet.
    pub fn without_target(&self) -> Vec<Partition> {
        let mut out: Vec<Partition> = self
            .owned
            .keys()
            .filter(|p| !self.targets.contains_key(*p))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// True when at least one partition is owned and each reached its target.
    pub fn caught_up(&self) -> bool {
        !self.owned.is_empty()
            && self.owned.keys().all(
                |p| matches!((self.targets.get(p), self.done.get(p)), (Some(t), Some(d)) if d >= t),
            )
    }

    /// Messages left before catching up (progress output); `None` while a target is unknown.
    pub fn remaining(&self) -> Option<i64> {
        self.owned.keys().try_fold(0i64, |total, p| {
            let (t, d) = (self.targets.get(p)?, self.done.get(p)?);
            Some(total + (t - d).max(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: i32) -> Partition {
        Partition::new("t", n)
    }

    fn assigned(n: i32, epoch: u64, kafka: Option<i64>) -> Assigned {
        Assigned {
            partition: p(n),
            epoch,
            kafka_committed: kafka,
        }
    }

    fn decided(n: i32, epoch: u64, next: i64) -> Decided {
        Decided {
            partition: p(n),
            epoch,
            next,
        }
    }

    #[test]
    fn resume_prefers_the_later_safe_point() {
        assert_eq!(resume_offset(None, None), None);
        assert_eq!(resume_offset(Some(9), None), Some(10));
        assert_eq!(resume_offset(None, Some(4)), Some(4));
        // Crash after the store commit, before the Kafka commit: the store is ahead.
        assert_eq!(resume_offset(Some(99), Some(50)), Some(100));
        // A tail of rejected messages: Kafka is ahead of the last stored envelope.
        assert_eq!(resume_offset(Some(99), Some(120)), Some(120));
    }

    #[test]
    fn a_stored_offset_at_or_beyond_the_end_of_a_partition_is_reported() {
        let applied = HashMap::from([(p(0), 999), (p(1), 99), (p(2), 100)]);
        let marks = [(p(0), 0, 100), (p(1), 0, 100), (p(2), 0, 100), (p(3), 0, 5)];
        assert_eq!(
            beyond_end(&applied, &marks),
            vec![
                BeyondEnd {
                    partition: p(0),
                    applied: 999,
                    high: 100
                },
                BeyondEnd {
                    partition: p(2),
                    applied: 100,
                    high: 100
                }
            ]
        );
        let msg = beyond_end(&applied, &marks)[0].to_string();
        assert!(
            msg.contains("nekhebet-store offsets reset --topic t --to earliest"),
            "{msg}"
        );
    }

    #[test]
    fn stores_ahead_of_kafka_make_the_resume_point_a_position_to_commit() {
        let mut l = Ledger::default();
        let applied = HashMap::from([(p(0), 99), (p(1), 10)]);
        let starts = l.assign(
            &[assigned(0, 1, Some(50)), assigned(1, 2, Some(30))],
            &applied,
        );
        assert_eq!(starts, vec![(p(0), Some(100)), (p(1), Some(30))]);
        // Partition 0 must reach 100 in Kafka even if nothing new arrives; 1 is already at 30.
        assert_eq!(l.positions(), vec![(p(0), 100)]);
    }

    #[test]
    fn commits_only_for_the_epoch_the_records_were_polled_in() {
        let mut l = Ledger::default();
        l.assign(&[assigned(0, 1, None)], &HashMap::new());
        l.start(7, BTreeSet::from([p(0)]));
        assert!(l.holds_any(&[p(0)]));
        // Revoked and handed back under a new epoch while batch 7 was in flight.
        assert_eq!(l.revoke(&[p(0)]), vec![]);
        l.assign(&[assigned(0, 2, Some(40))], &HashMap::new());
        assert_eq!(l.complete(7, &[decided(0, 1, 20)]), vec![]);
        assert!(!l.holds_any(&[p(0)]));
        assert_eq!(l.complete(8, &[decided(0, 2, 45)]), vec![(p(0), 45)]);
        assert_eq!(l.positions(), vec![(p(0), 45)]);
    }

    #[test]
    fn a_position_never_moves_back_and_revoke_returns_it() {
        let mut l = Ledger::default();
        l.assign(
            &[assigned(0, 1, None), assigned(1, 1, None)],
            &HashMap::new(),
        );
        assert_eq!(l.complete(1, &[decided(0, 1, 10)]), vec![(p(0), 10)]);
        assert_eq!(l.complete(2, &[decided(0, 1, 5)]), vec![(p(0), 10)]);
        assert_eq!(l.revoke(&[p(0), p(1)]), vec![(p(0), 10)]);
        assert_eq!(l.assigned_count(), 0);
        assert_eq!(l.complete(3, &[decided(0, 1, 12)]), vec![], "not owned");
    }

    #[test]
    fn caught_up_needs_every_owned_partition_at_its_target() {
        let mut l = Ledger::default();
        assert!(!l.caught_up(), "nothing assigned is not caught up");
        l.assign(
            &[assigned(0, 1, None), assigned(1, 1, None)],
            &HashMap::from([(p(0), 9)]),
        );
        assert_eq!(l.without_target(), vec![p(0), p(1)]);
        l.set_watermarks(&p(0), 0, 20);
        l.set_watermarks(&p(1), 5, 5); // empty partition: already there
        assert!(!l.caught_up());
        assert_eq!(l.remaining(), Some(10));
        l.complete(1, &[decided(0, 1, 15)]);
        assert!(!l.caught_up());
        l.complete(2, &[decided(0, 1, 20)]);
        assert!(l.caught_up());
        // The target is measured once.
        l.set_watermarks(&p(0), 0, 40);
        assert!(l.caught_up());
        l.assign(&[assigned(2, 2, None)], &HashMap::new());
        assert!(!l.caught_up(), "a partition without a target");
        assert_eq!(l.remaining(), None);
    }

    /// Events of a run, as the main loop sees them.
    #[derive(Debug, Clone)]
    enum Event {
        Assign {
            part: i32,
            kafka: Option<i64>,
            applied: Option<i64>,
        },
        Revoke {
            part: i32,
        },
        Complete {
            part: i32,
            stale: bool,
            advance: i64,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (
                0..3i32,
                proptest::option::of(0..50i64),
                proptest::option::of(0..50i64)
            )
                .prop_map(|(part, kafka, applied)| Event::Assign {
                    part,
                    kafka,
                    applied
                }),
            (0..3i32).prop_map(|part| Event::Revoke { part }),
            (0..3i32, any::<bool>(), -5..20i64).prop_map(|(part, stale, advance)| {
                Event::Complete {
                    part,
                    stale,
                    advance,
                }
            }),
        ]
    }

    proptest! {
        /// Whatever happens: commits only for owned partitions under their current epoch, and a
        /// position never moves back within one ownership.
        #[test]
        fn commits_are_owned_current_and_monotonic(events in proptest::collection::vec(event(), 1..60)) {
            let mut l = Ledger::default();
            let mut epoch = 0u64;
            // Our own model: partition -> (epoch, last committed position this ownership).
            let mut model: HashMap<i32, (u64, Option<i64>)> = HashMap::new();
            for (batch, e) in events.into_iter().enumerate() {
                match e {
                    Event::Assign { part, kafka, applied } => {
                        epoch += 1;
                        let applied: HashMap<Partition, i64> =
                            applied.map(|a| (p(part), a)).into_iter().collect();
                        let starts = l.assign(&[assigned(part, epoch, kafka)], &applied);
                        let start = starts[0].1;
                        prop_assert_eq!(start, resume_offset(applied.get(&p(part)).copied(), kafka));
                        model.insert(part, (epoch, None));
                    }
                    Event::Revoke { part } => {
                        let back = l.revoke(&[p(part)]);
                        prop_assert!(!l.owns(&p(part), epoch));
                        if let Some((_, Some(last))) = model.remove(&part) {
                            prop_assert!(back.iter().all(|(_, o)| *o >= last));
                        }
                    }
                    Event::Complete { part, stale, advance } => {
                        let (cur_epoch, last) = model.get(&part).copied().unwrap_or((0, None));
                        let e = if stale { cur_epoch.saturating_sub(1) } else { cur_epoch };
                        let next = last.unwrap_or(0) + advance;
                        let out = l.complete(batch as u64, &[Decided { partition: p(part), epoch: e, next }]);
                        let owned_now = model.contains_key(&part) && e == cur_epoch && cur_epoch != 0;
                        if owned_now {
                            prop_assert_eq!(out.len(), 1);
                            let committed = out[0].1;
                            if let Some(last) = last {
                                prop_assert!(committed >= last, "moved back: {} < {}", committed, last);
                            }
                            prop_assert!(committed >= next);
                            model.insert(part, (cur_epoch, Some(committed)));
                        } else {
                            prop_assert!(out.is_empty(), "committed {:?} for a partition not owned under epoch {}", out, e);
                        }
                    }
                }
                for (part, pos) in l.positions() {
                    prop_assert!(model.contains_key(&part.number), "position for unowned {}", part);
                    let _ = pos;
                }
            }
        }
    }
}
