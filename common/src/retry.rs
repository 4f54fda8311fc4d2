//! One retry policy for every stage: exponential backoff with a cap, jitter
//! and an optional bound on attempts.
//!
//! Each stage retries a different operation (enrich a Kafka produce, the
//! sink a ClickHouse insert) but with the same shape of wait, so the shape
//! lives here and only the numbers live with the caller. Callers decide
//! what is transient; this type only says how long to wait and whether
//! another attempt is allowed. Stages retry transient failures without a
//! bound (an outage of any length is ridden out); the cap keeps each wait
//! short enough that progress resumes soon after the server returns, and
//! the jitter keeps instances that failed together from retrying in step.
//!
//! ```text
//! wait(n) = min(initial · 2^(n-1), max) · (1 - jitter · u),  u ∈ [0, 1)
//! ```

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Share of each wait drawn at random by default: waits land between half
/// and all of the exponential figure.
pub const DEFAULT_JITTER: f64 = 0.5;

/// How long to wait between attempts, and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt (before jitter).
    pub initial: Duration,
    /// No wait is longer than this, however many attempts failed.
    pub max: Duration,
    /// Attempts in all (the first one included); `None` retries for ever.
    pub max_attempts: Option<u32>,
    /// Share of each wait taken off at random, in `0.0..=1.0`: 0 waits
    /// exactly the exponential figure, 1 anywhere between 0 and it.
    pub jitter: f64,
}

impl RetryPolicy {
    /// Doubling from `initial` up to `max`, without a bound on attempts,
    /// with [`DEFAULT_JITTER`].
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            initial,
            max,
            max_attempts: None,
            jitter: DEFAULT_JITTER,
        }
    }

    /// The same policy giving up after `attempts` attempts in all.
    pub const fn with_max_attempts(self, attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: Some(attempts),
            ..self
        }
    }

    /// The same policy with another share of jitter (clamped to 0..=1).
    pub const fn with_jitter(self, jitter: f64) -> Self {
        RetryPolicy {
            jitter: jitter.clamp(0.0, 1.0),
            ..self
        }
    }

    /// Whether another attempt may follow attempt number `attempt`
    /// (1-based).
    pub fn retries_after(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }

    /// The wait after attempt number `attempt` (1-based) failed, before
    /// jitter: the longest it can be.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// [`delay`](Self::delay) with the jitter applied for `u` in `0..1`.
    /// Pure, for tests; [`wait`](Self::wait) draws `u`.
    pub fn jittered(&self, attempt: u32, u: f64) -> Duration {
        let keep = 1.0 - self.jitter.clamp(0.0, 1.0) * u.clamp(0.0, 1.0);
        self.delay(attempt).mul_f64(keep)
    }

    /// The wait after attempt number `attempt` failed, jitter drawn.
    pub fn wait(&self, attempt: u32) -> Duration {
        self.jittered(attempt, rand::rng().random::<f64>())
    }

    /// Sleeps the wait after attempt number `attempt`, or until `stop` is
    /// cancelled: shutdown never waits out a backoff. Returns whether the
    /// whole wait passed (false: stopping).
    pub async fn sleep(&self, attempt: u32, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.wait(attempt)) => true,
            () = stop.cancelled() => false,
        }
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
    fn jitter_takes_off_at_most_its_share_and_never_exceeds_the_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(400), Duration::from_secs(2));
        assert_eq!(p.jittered(1, 0.0), Duration::from_millis(400));
        assert_eq!(p.jittered(1, 0.5), Duration::from_millis(300));
        assert_eq!(p.jittered(10, 0.999_999).as_millis(), 1_000);
        let exact = p.with_jitter(0.0);
        assert_eq!(exact.jittered(3, 0.7), Duration::from_millis(1_600));
        for attempt in 1..50 {
            let w = p.wait(attempt);
            assert!(w <= p.delay(attempt) && w >= p.delay(attempt) / 2, "{w:?}");
        }
        assert_eq!(p.with_jitter(7.0).jitter, 1.0);
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

    #[tokio::test]
    async fn stopping_interrupts_a_wait() {
        let p = RetryPolicy::exponential(Duration::from_secs(3600), Duration::from_secs(3600));
        let stop = CancellationToken::new();
        let waiting = tokio::spawn({
            let (p, stop) = (p, stop.clone());
            async move { p.sleep(1, &stop).await }
        });
        tokio::task::yield_now().await;
        stop.cancel();
        assert!(!waiting.await.expect("task"));
        let short = RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(1));
        assert!(short.sleep(1, &CancellationToken::new()).await);
    }
}
