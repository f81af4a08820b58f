//! The mirror's rate limit, without IO: work is taken in lots (a copy's envelopes, a sweep's rows),
//! and a lot may start only when the lots before it have had their time at `rate` units a second.
//!
//! Invariant: by any instant `t`, the units of the lots started since the pace began are at most
//! `rate · (t − start)` plus one lot — idle time earns no burst beyond a single lot.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Pace {
    per_unit: Duration,
    /// When the next lot may start.
    next: Instant,
}

impl Pace {
    /// `rate` units a second (at least 1).
    pub fn new(rate: u32, now: Instant) -> Pace {
        Pace {
            per_unit: Duration::from_secs(1) / rate.max(1),
            next: now,
        }
    }

    /// Takes a lot of `units` at `now`: how long to wait before starting it.
    pub fn take(&mut self, units: u64, now: Instant) -> Duration {
        let start = self.next.max(now);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        self.next = start + self.per_unit.saturating_mul(units);
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lots_are_spaced_by_their_size() {
        let t0 = Instant::now();
        let mut p = Pace::new(100, t0);
        assert_eq!(p.take(50, t0), Duration::ZERO);
        // 50 units at 100/s: the next lot waits half a second.
        assert_eq!(p.take(10, t0), Duration::from_millis(500));
        // A long pause earns no burst: the lot after it starts at once, the next one waits.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(p.take(100, later), Duration::ZERO);
        assert_eq!(p.take(1, later), Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn started_units_never_pass_the_rate_by_more_than_one_lot(
            rate in 1u32..5000,
            lots in proptest::collection::vec((1u64..500, 0u64..2000), 1..50),
        ) {
            let t0 = Instant::now();
            let mut p = Pace::new(rate, t0);
            let mut now = t0;
            let mut started: Vec<(Instant, u64)> = Vec::new();
            for (units, gap_ms) in lots {
                now += Duration::from_millis(gap_ms);
                let wait = p.take(units, now);
                now += wait;
                started.push((now, units));
            }
            let biggest = started.iter().map(|s| s.1).max().unwrap_or(0);
            for &(t, _) in &started {
                let by_then: u64 = started.iter().filter(|s| s.0 <= t).map(|s| s.1).sum();
                let allowed = rate as f64 * (t - t0).as_secs_f64() + biggest as f64;
                prop_assert!(by_then as f64 <= allowed + 1.0, "{} units by {:?}, allowed {}", by_then, t - t0, allowed);
            }
        }
    }
}
