//! The integration lag: from the transaction that stored an event (`events.created_at`) to the
//! publication of the first checkpoint that includes it. Pure.
//!
//! The integrator notes each logged event's `created_at` as it appends it and records the lag of
//! all of them when a checkpoint is published. Events of one transaction share their
//! `created_at`, so they are kept as runs `(created_at, count)`: memory is per transaction, not per
//! event, and bounded by [`MAX_RUNS`] (beyond it neighbouring runs merge into the older time,
//! which can only overstate a lag, never hide one).

use chrono::{DateTime, Utc};

/// Runs kept at most between two checkpoints.
pub const MAX_RUNS: usize = 4096;

/// Logged events not yet in a published checkpoint, by the time they were stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LagRuns {
    runs: Vec<(DateTime<Utc>, u64)>,
}

impl LagRuns {
    /// One more event, stored at `at`.
    pub fn push(&mut self, at: DateTime<Utc>) {
        match self.runs.last_mut() {
            Some((t, n)) if *t == at => *n += 1,
            _ => {
                if self.runs.len() == MAX_RUNS {
                    self.halve();
                }
                self.runs.push((at, 1));
            }
        }
    }

    /// Merges neighbouring pairs into the earlier time.
    fn halve(&mut self) {
        let merged = self
            .runs
            .chunks(2)
            .map(|pair| {
                let at = pair
                    .iter()
                    .map(|r| r.0)
                    .min()
                    .expect("a chunk is not empty");
                (at, pair.iter().map(|r| r.1).sum())
            })
            .collect();
        self.runs = merged;
    }

    /// Events noted.
    pub fn events(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }

    /// The lags at `now`, in seconds, with their event counts; empties the runs.
    pub fn take(&mut self, now: DateTime<Utc>) -> Vec<(f64, u64)> {
        std::mem::take(&mut self.runs)
            .into_iter()
            .map(|(at, n)| {
                let lag = (now - at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
                (lag.max(0.0), n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn events_of_one_transaction_share_a_run_and_memory_stays_bounded() {
        let t0 = Utc::now();
        let mut runs = LagRuns::default();
        for _ in 0..4000 {
            runs.push(t0);
        }
        runs.push(t0 + Duration::milliseconds(500));
        assert_eq!(runs.runs.len(), 2);
        let lags = runs.take(t0 + Duration::seconds(2));
        assert_eq!(lags, vec![(2.0, 4000), (1.5, 1)]);
        assert_eq!(runs.events(), 0);

        // One transaction per event, far beyond the bound: every event still counted, no lag
        // understated.
        for i in 0..(3 * MAX_RUNS as i64) {
            runs.push(t0 + Duration::milliseconds(i));
        }
        assert!(runs.runs.len() <= MAX_RUNS);
        assert_eq!(runs.events(), 3 * MAX_RUNS as u64);
        let now = t0 + Duration::seconds(100);
        let lags = runs.take(now);
        let max = lags.iter().map(|l| l.0).fold(0.0, f64::max);
        assert_eq!(max, 100.0, "the oldest event keeps its lag");
    }
}
