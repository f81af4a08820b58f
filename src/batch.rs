//! The batcher: collects records into batches bounded by a record count, a byte size and a linger
//! time. Pure: no IO, no clock of its own (the caller passes `now`), so it is tested without Kafka.
//!
//! Bounds: a batch never holds more than `max_records` records, and never more than `max_bytes`
//! bytes unless it is a single record larger than `max_bytes` on its own (such a record still has
//! to reach an outcome — typically "rejected, oversize" — so it travels alone). Order is preserved:
//! records come out of [`Batcher::take`] in the order they were pushed.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The batch bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

impl BatchLimits {
    pub fn from_config(c: &crate::config::BatchConfig) -> BatchLimits {
        BatchLimits {
            // 0 would make every push "full" with nothing in it; the config validation refuses it,
            // this only keeps the type total.
            max_records: c.max_records.max(1),
            max_bytes: c.max_bytes.max(1),
            linger: Duration::from_millis(c.linger_ms),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The record is in the open batch, which can take more.
    Continue,
    /// The batch is sealed: call [`Batcher::take`] now. The record is kept either in the sealed
    /// batch or, when it did not fit, as the first record of the next one.
    Full(FullReason),
}

/// Why a batch was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    Records,
    Bytes,
}

impl FullReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FullReason::Records => "records",
            FullReason::Bytes => "bytes",
        }
    }
}

/// A batch taken from the batcher.
#[derive(Debug)]
pub struct Batch<T> {
    pub records: Vec<T>,
    pub bytes: usize,
}

#[derive(Debug)]
struct Entry<T> {
    record: T,
    size: usize,
    pushed_at: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: BatchLimits,
    open: Vec<Entry<T>>,
    bytes: usize,
    sealed: Option<FullReason>,
    /// Records pushed while the open batch was sealed (or that did not fit in it): they start the
    /// next batch. Only non-empty while `sealed` is set.
    carry: VecDeque<Entry<T>>,
}

impl<T> Batcher<T> {
    pub fn new(limits: BatchLimits) -> Batcher<T> {
        Batcher {
            limits,
            open: Vec::new(),
            bytes: 0,
            sealed: None,
            carry: VecDeque::new(),
        }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Adds a record of `size` bytes, pushed at `now` (the linger clock of a batch starts with its
    /// first record).
    pub fn push(&mut self, record: T, size: usize, now: Instant) -> Push {
        let entry = Entry {
            record,
            size,
            pushed_at: now,
        };
        if let Some(reason) = self.sealed {
            self.carry.push_back(entry);
            return Push::Full(reason);
        }
        self.add(entry)
    }

    fn add(&mut self, entry: Entry<T>) -> Push {
        debug_assert!(self.sealed.is_none());
        if !self.open.is_empty() && self.bytes.saturating_add(entry.size) > self.limits.max_bytes {
            // Front: when `take` refills from the carry, this entry came from its front.
            self.carry.push_front(entry);
            self.sealed = Some(FullReason::Bytes);
            return Push::Full(FullReason::Bytes);
        }
        self.bytes = self.bytes.saturating_add(entry.size);
        self.open.push(entry);
        let reason = if self.open.len() >= self.limits.max_records {
            Some(FullReason::Records)
        } else if self.bytes >= self.limits.max_bytes {
            Some(FullReason::Bytes)
        } else {
            None
        };
        match reason {
            Some(r) => {
                self.sealed = Some(r);
                Push::Full(r)
            }
            None => Push::Continue,
        }
    }

    /// When the open batch must be flushed even if not full: its first record's push time plus
    /// the linger. `None` when there is nothing to flush.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.first().map(|e| e.pushed_at + self.limits.linger)
    }

    /// True when the open batch is sealed (full) and must be taken before it can grow.
    pub fn is_full(&self) -> bool {
        self.sealed.is_some()
    }

    /// True when the batch should be taken now: full, or its linger deadline has passed.
    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.deadline().is_some_and(|d| d <= now)
    }

    /// Records in the open batch (not counting carried ones).
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.carry.is_empty()
    }

    /// Records held in total, open batch and carried.
    pub fn held(&self) -> usize {
        self.open.len() + self.carry.len()
    }

    /// Takes the open batch (`None` if empty). Carried records start the next batch, which may
    /// itself be sealed right away.
    pub fn take(&mut self) -> Option<Batch<T>> {
        if self.open.is_empty() {
            return None;
        }
        let open = std::mem::take(&mut self.open);
        let bytes = std::mem::replace(&mut self.bytes, 0);
        self.sealed = None;
        while self.sealed.is_none() {
            match self.carry.pop_front() {
                Some(e) => {
                    self.add(e);
                }
                None => break,
            }
        }
        Some(Batch {
            records: open.into_iter().map(|e| e.record).collect(),
            bytes,
        })
    }

    /// Drops the records for which `keep` is false (e.g. those of revoked partitions), keeping
    /// the order and push times of the others.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let all: Vec<Entry<T>> = std::mem::take(&mut self.open)
            .into_iter()
            .chain(std::mem::take(&mut self.carry))
            .filter(|e| keep(&e.record))
            .collect();
        self.bytes = 0;
        self.sealed = None;
        for e in all {
            if self.sealed.is_some() {
                self.carry.push_back(e);
            } else {
                self.add(e);
            }
        }
    }
}

/// Batchers side by side, each record going to the lane of its key (its partition): every batch
/// then holds the partitions of one lane only, so batches of different lanes share no partition
/// and the writer can run their PostgreSQL transactions at once. Keys get lanes round-robin in
/// the order they are first seen, which spreads a topic's partitions evenly. One lane is exactly
/// a [`Batcher`].
#[derive(Debug)]
pub struct LaneBatcher<K, T> {
    lanes: Vec<Batcher<T>>,
    lane_of: HashMap<K, usize>,
}

impl<K: Hash + Eq + Clone, T> LaneBatcher<K, T> {
    pub fn new(limits: BatchLimits, lanes: usize) -> LaneBatcher<K, T> {
        LaneBatcher {
            lanes: (0..lanes.max(1)).map(|_| Batcher::new(limits)).collect(),
            lane_of: HashMap::new(),
        }
    }

    pub fn push(&mut self, key: &K, record: T, size: usize, now: Instant) -> Push {
        let n = self.lanes.len();
        let next = self.lane_of.len() % n;
        let lane = *self.lane_of.entry(key.clone()).or_insert(next);
        self.lanes[lane].push(record, size, now)
    }

    /// The earliest linger deadline of any lane.
    pub fn deadline(&self) -> Option<Instant> {
        self.lanes.iter().filter_map(Batcher::deadline).min()
    }

    /// True when some lane is sealed: it must be taken before more records are accepted (this
    /// bounds what the batcher holds to one full batch per lane plus what was carried).
    pub fn is_full(&self) -> bool {
        self.lanes.iter().any(Batcher::is_full)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.lanes.iter().any(|l| l.is_due(now))
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(Batcher::is_empty)
    }

    pub fn held(&self) -> usize {
        self.lanes.iter().map(Batcher::held).sum()
    }

    /// Takes the next batch: the due lane (sealed, or past its linger) whose first record is the
    /// oldest; with `force` (shutdown, drain), any non-empty lane, oldest first.
    pub fn take(&mut self, now: Instant, force: bool) -> Option<Batch<T>> {
        let lane = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && (force || l.is_due(now)))
            .min_by_key(|(_, l)| l.deadline())
            .map(|(i, _)| i)?;
        self.lanes[lane].take()
    }

    /// Drops the records for which `keep` is false, in every lane.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for lane in &mut self.lanes {
            lane.retain(&mut keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(records: usize, bytes: usize, linger_ms: u64) -> BatchLimits {
        BatchLimits {
            max_records: records,
            max_bytes: bytes,
            linger: Duration::from_millis(linger_ms),
        }
    }

    #[test]
    fn full_by_records() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(3, 1000, 50));
        assert_eq!(b.push(1, 10, now), Push::Continue);
        assert_eq!(b.push(2, 10, now), Push::Continue);
        assert_eq!(b.push(3, 10, now), Push::Full(FullReason::Records));
        assert!(b.is_full());
        let batch = b.take().unwrap();
        assert_eq!(batch.records, vec![1, 2, 3]);
        assert_eq!(batch.bytes, 30);
        assert!(b.is_empty());
        assert!(b.take().is_none());
    }

    #[test]
    fn full_by_bytes_exactly() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(100, 100, 50));
        assert_eq!(b.push("a", 60, now), Push::Continue);
        assert_eq!(b.push("b", 40, now), Push::Full(FullReason::Bytes));
        assert_eq!(b.take().unwrap().records, vec!["a", "b"]);
    }

    #[test]
    fn record_that_does_not_fit_starts_the_next_batch() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(100, 100, 50));
        assert_eq!(b.push("a", 60, now), Push::Continue);
        assert_eq!(b.push("b", 60, now), Push::Full(FullReason::Bytes));
        let first = b.take().unwrap();
        assert_eq!((first.records, first.bytes), (vec!["a"], 60));
        assert!(!b.is_full());
        assert_eq!(b.len(), 1);
        assert_eq!(b.take().unwrap().records, vec!["b"]);
    }

    #[test]
    fn oversized_record_travels_alone() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(100, 100, 50));
        assert_eq!(b.push("small", 10, now), Push::Continue);
        assert_eq!(b.push("huge", 500, now), Push::Full(FullReason::Bytes));
        assert_eq!(b.take().unwrap().records, vec!["small"]);
        // The carried huge record is sealed on its own at once.
        assert!(b.is_full());
        let huge = b.take().unwrap();
        assert_eq!((huge.records, huge.bytes), (vec!["huge"], 500));
        assert!(b.is_empty());
    }

    #[test]
    fn pushes_while_sealed_are_kept_in_order() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(2, 1000, 50));
        b.push(1, 1, now);
        assert_eq!(b.push(2, 1, now), Push::Full(FullReason::Records));
        assert_eq!(b.push(3, 1, now), Push::Full(FullReason::Records));
        assert_eq!(b.push(4, 1, now), Push::Full(FullReason::Records));
        assert_eq!(b.push(5, 1, now), Push::Full(FullReason::Records));
        assert_eq!(b.take().unwrap().records, vec![1, 2]);
        assert!(b.is_full());
        assert_eq!(b.take().unwrap().records, vec![3, 4]);
        assert!(!b.is_full());
        assert_eq!(b.take().unwrap().records, vec![5]);
    }

    #[test]
    fn linger_deadline_starts_with_the_first_record() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(10, 1000, 50));
        assert_eq!(b.deadline(), None);
        assert!(!b.is_due(t0 + Duration::from_secs(10)));
        b.push(1, 1, t0);
        b.push(2, 1, t0 + Duration::from_millis(30));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(50)));
        assert!(!b.is_due(t0 + Duration::from_millis(49)));
        assert!(b.is_due(t0 + Duration::from_millis(50)));
        b.take();
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn zero_linger_is_due_at_once() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(10, 1000, 0));
        b.push(1, 1, t0);
        assert!(b.is_due(t0));
    }

    #[test]
    fn retain_drops_and_reseals() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(3, 1000, 50));
        for i in 0..7 {
            b.push(i, 10, now);
        }
        b.retain(|i| i % 2 == 0); // 0 2 4 6
        assert!(b.is_full());
        assert_eq!(b.take().unwrap().records, vec![0, 2, 4]);
        assert_eq!(b.take().unwrap().records, vec![6]);
        b.push(9, 10, now);
        b.retain(|_| false);
        assert!(b.is_empty());
        assert!(!b.is_full());
        assert_eq!(b.deadline(), None);
    }

    proptest! {
        /// Whatever the sizes and however the caller interleaves pushes and takes: no batch
        /// exceeds the record bound, none exceeds the byte bound unless it is a single oversized
        /// record, and the concatenation of all batches is exactly the pushed sequence.
        #[test]
        fn never_exceeds_bounds_nor_loses_or_reorders(
            max_records in 1usize..20,
            max_bytes in 1usize..500,
            ops in proptest::collection::vec((0usize..300, any::<bool>()), 0..300),
        ) {
            let now = Instant::now();
            let mut b = Batcher::new(limits(max_records, max_bytes, 10));
            let mut pushed = Vec::new();
            let mut out = Vec::new();
            let check = |batch: &Batch<(usize, usize)>| {
                prop_assert!(!batch.records.is_empty());
                prop_assert!(batch.records.len() <= max_records);
                let sum: usize = batch.records.iter().map(|r| r.1).sum();
                prop_assert_eq!(sum, batch.bytes);
                prop_assert!(batch.bytes <= max_bytes || batch.records.len() == 1);
                Ok(())
            };
            for (i, (size, take_now)) in ops.into_iter().enumerate() {
                pushed.push((i, size));
                let r = b.push((i, size), size, now);
                // A caller that honours Full takes at once; one that doesn't (take_now false)
                // must still lose nothing.
                if matches!(r, Push::Full(_)) && take_now {
                    let batch = b.take().unwrap();
                    check(&batch)?;
                    out.extend(batch.records);
                }
            }
            while let Some(batch) = b.take() {
                check(&batch)?;
                out.extend(batch.records);
            }
            prop_assert!(b.is_empty());
            prop_assert_eq!(out, pushed);
        }

        /// Lanes: every batch holds keys of one lane only (so batches of two lanes never share a
        /// key), stays within the bounds, and nothing is lost, duplicated or reordered per key.
        #[test]
        fn lanes_keep_keys_apart_and_lose_nothing(
            lanes in 1usize..4,
            max_records in 1usize..20,
            ops in proptest::collection::vec((0u8..6, 1usize..50, any::<bool>()), 0..300),
        ) {
            let now = Instant::now();
            let mut b: LaneBatcher<u8, (u8, usize)> = LaneBatcher::new(limits(max_records, 200, 0), lanes);
            let mut pushed: Vec<(u8, usize)> = Vec::new();
            let mut out: Vec<Batch<(u8, usize)>> = Vec::new();
            for (i, (key, size, take_now)) in ops.into_iter().enumerate() {
                pushed.push((key, i));
                b.push(&key, (key, i), size, now);
                if take_now || b.is_full() {
                    if let Some(batch) = b.take(now, false) {
                        out.push(batch);
                    }
                }
            }
            while let Some(batch) = b.take(now, true) {
                out.push(batch);
            }
            prop_assert!(b.is_empty());
            // Lanes are assigned round-robin in first-seen order.
            let mut lane_of: HashMap<u8, usize> = HashMap::new();
            for (key, _) in &pushed {
                let next = lane_of.len() % lanes;
                lane_of.entry(*key).or_insert(next);
            }
            for batch in &out {
                prop_assert!(!batch.records.is_empty() && batch.records.len() <= max_records);
                let lane = lane_of[&batch.records[0].0];
                prop_assert!(batch.records.iter().all(|r| lane_of[&r.0] == lane));
            }
            for key in 0u8..6 {
                let sent: Vec<usize> = pushed.iter().filter(|r| r.0 == key).map(|r| r.1).collect();
                let got: Vec<usize> = out.iter().flat_map(|b| &b.records).filter(|r| r.0 == key).map(|r| r.1).collect();
                prop_assert_eq!(got, sent);
            }
        }
    }

    #[test]
    fn lanes_take_the_oldest_due_batch_and_force_takes_the_rest() {
        let t0 = Instant::now();
        let mut b: LaneBatcher<&str, u32> = LaneBatcher::new(limits(2, 1000, 50), 2);
        b.push(&"p0", 1, 10, t0); // lane 0
        b.push(&"p1", 2, 10, t0 + Duration::from_millis(10)); // lane 1
        b.push(&"p2", 3, 10, t0 + Duration::from_millis(20)); // lane 0 again: sealed
        assert!(b.is_full());
        assert_eq!(b.held(), 3);
        // Lane 0 is sealed, lane 1 is neither sealed nor past its linger.
        let now = t0 + Duration::from_millis(20);
        assert_eq!(b.take(now, false).unwrap().records, vec![1, 3]);
        assert!(b.take(now, false).is_none());
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(60)));
        assert!(b.is_due(t0 + Duration::from_millis(60)));
        assert_eq!(b.take(now, true).unwrap().records, vec![2]);
        assert!(b.is_empty());
        // retain reaches every lane.
        b.push(&"p0", 4, 10, now);
        b.push(&"p1", 5, 10, now);
        b.retain(|r| *r != 4);
        assert_eq!(b.held(), 1);
        assert_eq!(b.take(now, true).unwrap().records, vec![5]);
    }
}
