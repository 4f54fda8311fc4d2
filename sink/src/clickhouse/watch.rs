//! The sink's watchdog: tells readiness (and, when a restart would help,
//! liveness) that the sink makes no progress although work is waiting.
//!
//! Every `stall_timeout / 4` (at least 1 s, at most 15 s) it reads, with a
//! client of its own that never joins the group, the high watermark and
//! the group's committed offset of every input partition. Work is waiting
//! when some partition's committed offset is below its high watermark;
//! progress is the group's committed offsets moving. With work waiting and
//! no progress for `stall_timeout`:
//!
//! - this instance holds partitions: [`Reason::NoProgress`] (readiness
//!   only; while ClickHouse is away, `clickhouse_unreachable` says why);
//! - this instance holds none: [`Reason::NoPartitions`], readiness and
//!   liveness — a sink restarted under the same group was seen to get no
//!   partition and stall silently until it was restarted again.
//!
//! Kafka not answering the watchdog is [`Reason::KafkaUnreachable`]. A
//! reason is cleared as soon as its condition no longer holds.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::{Readiness, Reason},
    kafka::KafkaConfig,
    rebalance::RebalanceLog,
};

use super::status::kafka_side;

/// What one look at the group says. Pure input of [`Stall::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Look {
    /// Records above the group's committed offsets, over all partitions.
    pub lag: i64,
    /// The group's committed offsets, summed: moves when it makes progress.
    pub committed: i64,
    /// Partitions this instance holds.
    pub assigned: usize,
}

/// What the watchdog concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Progressing,
    /// No progress with work waiting for this long, partitions held.
    NoProgress {
        lag: i64,
        for_: Duration,
    },
    /// The same, holding no partition.
    NoPartitions {
        lag: i64,
        for_: Duration,
    },
}

/// Progress tracking between looks.
#[derive(Debug)]
pub(super) struct Stall {
    timeout: Duration,
    last_committed: Option<i64>,
    since: Instant,
}

impl Stall {
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Stall {
            timeout,
            last_committed: None,
            since: now,
        }
    }

    /// Takes a look at `now`. Pure but for the remembered progress.
    pub fn observe(&mut self, look: Look, now: Instant) -> Verdict {
        if look.lag <= 0 || self.last_committed != Some(look.committed) {
            self.last_committed = Some(look.committed);
            self.since = now;
            return Verdict::Progressing;
        }
        let for_ = now.saturating_duration_since(self.since);
        if for_ < self.timeout {
            Verdict::Progressing
        } else if look.assigned == 0 {
            Verdict::NoPartitions {
                lag: look.lag,
                for_,
            }
        } else {
            Verdict::NoProgress {
                lag: look.lag,
                for_,
            }
        }
    }
}

/// Watches until `stop` is cancelled.
pub(super) async fn watch(
    kafka: KafkaConfig,
    group: String,
    consumer: std::sync::Arc<StreamConsumer<RebalanceLog>>,
    timeout: Duration,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let every = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
    let topics = vec![
        kafka.topics.enriched.clone(),
        kafka.topics.dead_letters.clone(),
    ];
    let mut stall = Stall::new(timeout, Instant::now());
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let (k, g, t) = (kafka.clone(), group.clone(), topics.clone());
        let side = tokio::task::spawn_blocking(move || kafka_side(&k, &g, &t)).await;
        let side = match side {
            Ok(Ok(side)) => {
                readiness.clear(Reason::KafkaUnreachable);
                side
            }
            Ok(Err(e)) => {
                readiness.fail(Reason::KafkaUnreachable, format_args!("watchdog: {e}"));
                continue;
            }
            Err(_) => continue,
        };
        let look = Look {
            lag: side
                .iter()
                .map(|(_, _, high, committed)| (high - committed.unwrap_or(0)).max(0))
                .sum(),
            committed: side.iter().filter_map(|(_, _, _, c)| *c).sum(),
            assigned: consumer.assignment().map_or(0, |a| a.count()),
        };
        match stall.observe(look, Instant::now()) {
            Verdict::Progressing => {
                readiness.clear(Reason::NoProgress);
                readiness.clear(Reason::NoPartitions);
            }
            Verdict::NoProgress { lag, for_ } => {
                readiness.clear(Reason::NoPartitions);
                readiness.fail(
                    Reason::NoProgress,
                    format_args!("lag {lag}, nothing committed for {}s", for_.as_secs()),
                );
            }
            Verdict::NoPartitions { lag, for_ } => {
                readiness.clear(Reason::NoProgress);
                readiness.fail_liveness(
                    Reason::NoPartitions,
                    format_args!(
                        "no partition held while the group has lag {lag} and committed nothing for {}s",
                        for_.as_secs()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_work_waiting_without_progress_for_the_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut stall = Stall::new(s(60), t0);
        let look = |lag, committed, assigned| Look {
            lag,
            committed,
            assigned,
        };
        assert_eq!(stall.observe(look(500, 100, 2), t0), Verdict::Progressing);
        assert_eq!(
            stall.observe(look(500, 100, 2), t0 + s(59)),
            Verdict::Progressing
        );
        assert_eq!(
            stall.observe(look(500, 100, 2), t0 + s(61)),
            Verdict::NoProgress {
                lag: 500,
                for_: s(61)
            }
        );
        assert_eq!(
            stall.observe(look(500, 100, 0), t0 + s(62)),
            Verdict::NoPartitions {
                lag: 500,
                for_: s(62)
            }
        );
        // Progress clears it and restarts the clock.
        assert_eq!(
            stall.observe(look(400, 200, 0), t0 + s(63)),
            Verdict::Progressing
        );
        assert_eq!(
            stall.observe(look(400, 200, 0), t0 + s(100)),
            Verdict::Progressing
        );
        // Nothing waiting is never a stall, however long.
        assert_eq!(
            stall.observe(look(0, 200, 0), t0 + s(1_000)),
            Verdict::Progressing
        );
        assert_eq!(
            stall.observe(look(0, 200, 0), t0 + s(9_000)),
            Verdict::Progressing
        );
    }
}
