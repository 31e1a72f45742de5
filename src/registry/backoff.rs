//! Full-jitter exponential backoff between registration attempts: the n-th retry waits a
//! uniform random time in `[0, min(max, base * 2^n)]`. Pure arithmetic plus `rand`; no clock.

use std::time::Duration;

use rand::Rng as _;

/// Retry delays for one failure streak; [`Backoff::reset`] starts a new streak.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    /// Failures in the current streak.
    failures: u32,
}

// === impl Backoff ===

impl Backoff {
    /// `base` is the ceiling of the first retry; ceilings double up to `max` (a `max` below
    /// `base` caps everything at `max`).
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// Changes the cap (a reload); the streak goes on.
    pub(crate) fn set_max(&mut self, max: Duration) {
        self.max = max;
    }

    /// The ceiling of the next delay, before jitter.
    pub(crate) fn ceiling(&self) -> Duration {
        // 2^20 * base is far beyond any sane cap; stop doubling there so nothing overflows.
        let factor = 1u32 << self.failures.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Records one more failure and returns how long to wait before retrying.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// Ends the failure streak (after a success).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(3), "{d:?}");
        }
        assert_eq!(ceilings, [500, 1000, 2000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::MAX);
        for _ in 0..100 {
            let _ = b.next_delay();
        }
        assert!(b.ceiling() >= Duration::from_secs(3600));
    }
}
