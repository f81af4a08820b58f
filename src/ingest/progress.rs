//! Pure bookkeeping of the ingest loop: where a newly assigned partition resumes, and when the
//! worker has caught up (for `--until-caught-up`).

use std::collections::HashMap;

use super::consumer::Partition;

/// The offset to resume a partition from, given the stores' highest applied offset and the
/// group's committed offset (the next offset to read).
///
/// Both are points below which every message is done: the stores record an offset only in the
/// transaction that applied it (and, for the hybrid store, report the lower of PostgreSQL's and
/// LMDB's), and the worker commits to Kafka only after the stores hold the batch and the dead-letter
/// topic acknowledged its rejects. So the later of the two is safe, and it avoids re-reading (and
/// dead-lettering twice) a tail of rejected messages, which the stores never see.
pub fn resume_offset(store_applied: Option<i64>, kafka_committed: Option<i64>) -> Option<i64> {
    match (store_applied.map(|a| a.saturating_add(1)), kafka_committed) {
        (Some(s), Some(k)) => Some(s.max(k)),
        (s, k) => s.or(k),
    }
}

/// Tracks, per partition, the high watermark measured when it was first assigned and the
/// committed position since, to tell when every assigned partition reached its target.
#[derive(Debug, Default)]
pub struct CatchUp {
    targets: HashMap<Partition, i64>,
    positions: HashMap<Partition, i64>,
}

impl CatchUp {
    /// A partition starts at `start` (the resume offset), when known.
    pub fn on_assign(&mut self, tp: &Partition, start: Option<i64>) {
        if let Some(s) = start {
            self.advance(tp, s);
        }
    }

    /// Records the watermarks of a partition, once: the target is the high watermark at the time
    /// it was first measured. A partition with no known position started at the low watermark
    /// (`auto.offset.reset=earliest`).
    pub fn set_watermarks(&mut self, tp: &Partition, low: i64, high: i64) {
        self.targets.entry(tp.clone()).or_insert(high);
        self.positions.entry(tp.clone()).or_insert(low);
    }

    pub fn has_target(&self, tp: &Partition) -> bool {
        self.targets.contains_key(tp)
    }

    /// The offsets up to `next` (exclusive) are committed.
    pub fn on_commit(&mut self, tp: &Partition, next: i64) {
        self.advance(tp, next);
    }

    fn advance(&mut self, tp: &Partition, to: i64) {
        let p = self.positions.entry(tp.clone()).or_insert(to);
        *p = (*p).max(to);
    }

    /// True when at least one partition is assigned and each assigned partition's position
    /// reached its target.
    pub fn caught_up<'a>(&self, assigned: impl IntoIterator<Item = &'a Partition>) -> bool {
        let mut any = false;
        for tp in assigned {
            any = true;
            match (self.targets.get(tp), self.positions.get(tp)) {
                (Some(t), Some(p)) if p >= t => {}
                _ => return false,
            }
        }
        any
    }

    /// Messages left to commit before catching up (for progress output).
    pub fn remaining<'a>(&self, assigned: impl IntoIterator<Item = &'a Partition>) -> Option<i64> {
        let mut total = 0i64;
        for tp in assigned {
            let (t, p) = (self.targets.get(tp)?, self.positions.get(tp)?);
            total += (t - p).max(0);
        }
        Some(total)
    }
}

/// Masks an identifier the way nekhebet-core does in logs: first 4 and last 4 characters.
pub fn mask(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len().max(4));
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tp(p: i32) -> Partition {
        Partition {
            topic: Arc::from("t"),
            number: p,
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
    fn caught_up_needs_every_assigned_partition_at_its_target() {
        let mut c = CatchUp::default();
        assert!(!c.caught_up([].iter()), "nothing assigned is not caught up");
        c.on_assign(&tp(0), Some(10));
        c.on_assign(&tp(1), None);
        c.set_watermarks(&tp(0), 0, 20);
        c.set_watermarks(&tp(1), 5, 5); // empty partition: already there
        assert!(!c.caught_up([tp(0), tp(1)].iter()));
        assert_eq!(c.remaining([tp(0), tp(1)].iter()), Some(10));
        c.on_commit(&tp(0), 15);
        assert!(!c.caught_up([tp(0), tp(1)].iter()));
        c.on_commit(&tp(0), 20);
        assert!(c.caught_up([tp(0), tp(1)].iter()));
        // The target is measured once: later watermarks do not move it.
        c.set_watermarks(&tp(0), 0, 40);
        assert!(c.caught_up([tp(0), tp(1)].iter()));
        // An assigned partition without a target is not caught up.
        assert!(!c.caught_up([tp(0), tp(2)].iter()));
        assert_eq!(c.remaining([tp(2)].iter()), None);
    }

    #[test]
    fn start_position_beyond_target_counts() {
        let mut c = CatchUp::default();
        c.on_assign(&tp(0), Some(30));
        c.set_watermarks(&tp(0), 0, 20);
        assert!(c.caught_up([tp(0)].iter()));
    }

    #[test]
    fn commits_never_move_a_position_back() {
        let mut c = CatchUp::default();
        c.set_watermarks(&tp(0), 0, 10);
        c.on_commit(&tp(0), 10);
        c.on_commit(&tp(0), 5);
        assert!(c.caught_up([tp(0)].iter()));
    }

    #[test]
    fn masks_like_nekhebet_core() {
        assert_eq!(mask("collector-0"), "coll...or-0");
        assert_eq!(mask("4787d53b6655635cde0bf21ee843fcfe"), "4787...fcfe");
        assert_eq!(mask("short"), "*****");
        assert_eq!(mask("ab"), "****");
    }
}
