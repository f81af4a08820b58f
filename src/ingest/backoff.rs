//! Exponential backoff with jitter for transient failures.

use std::time::Duration;

use rand::Rng;

/// Delays grow `base · 2ⁿ` up to `max`; each is drawn uniformly from its upper half ("equal
/// jitter"), so a fleet of workers that failed together does not retry in lock-step, yet no
/// delay collapses to zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay (and counts an attempt).
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ns = rng.gen_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn grows_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = StdRng::seed_from_u64(7);
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay(&mut rng);
                assert!(d <= c && d >= c / 2, "{d:?} not in [{:?}, {c:?}]", c / 2);
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
    }

    #[test]
    fn jitter_spreads() {
        let mut rng = StdRng::seed_from_u64(3);
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 10);
    }
}
