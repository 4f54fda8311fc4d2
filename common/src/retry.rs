//! One retry policy for every stage: exponential backoff with a cap and an
//! optional bound on attempts.
//!
//! Each stage retries a different operation (enrich a Kafka produce, the
//! sink a ClickHouse insert) but with the same shape of wait, so the shape
//! lives here and only the numbers live with the caller. Callers decide
//! what is transient; this type only says how long to wait and whether
//! another attempt is allowed.

use std::time::Duration;

/// How long to wait between attempts, and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt.
    pub initial: Duration,
    /// No wait is longer than this, however many attempts failed.
    pub max: Duration,
    /// Attempts in all (the first one included); `None` retries for ever.
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// Doubling from `initial` up to `max`, without a bound on attempts.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            initial,
            max,
            max_attempts: None,
        }
    }

    /// The same policy giving up after `attempts` attempts in all.
    pub const fn with_max_attempts(self, attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: Some(attempts),
            ..self
        }
    }

    /// Whether another attempt may follow attempt number `attempt`
    /// (1-based).
    pub fn retries_after(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }

    /// The wait after attempt number `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(400), Duration::from_secs(2));
        let waits: Vec<u64> = (1..=5).map(|a| p.delay(a).as_millis() as u64).collect();
        assert_eq!(waits, [400, 800, 1600, 2000, 2000]);
        assert_eq!(p.delay(1_000), Duration::from_secs(2));
    }

    #[test]
    fn a_bound_counts_every_attempt() {
        let p = RetryPolicy::exponential(Duration::from_millis(1), Duration::from_secs(1))
            .with_max_attempts(3);
        assert!(p.retries_after(1));
        assert!(p.retries_after(2));
        assert!(!p.retries_after(3));
        let unbounded = RetryPolicy::exponential(Duration::from_millis(1), Duration::from_secs(1));
        assert!(unbounded.retries_after(u32::MAX - 1));
    }
}
