//! A consuming stage's watchdog: tells readiness (and, when a restart
//! would help, liveness) that the stage makes no progress although work is
//! waiting. The sink watches its one group, enrich its two (resolve and
//! join).
//!
//! Every `stall_timeout / 4` (at least 1 s, at most 15 s) it reads, with a
//! client of its own that never joins a group, the high watermark and the
//! group's committed offset of every input partition. Work is waiting
//! when some partition's committed offset is below its high watermark;
//! progress is the group's committed offsets moving. With work waiting and
//! no progress for `stall_timeout` in some watched group:
//!
//! - this instance holds partitions of it: [`Reason::NoProgress`]
//!   (readiness only; while a server is away, its own reason says why);
//! - this instance holds none: [`Reason::NoPartitions`], readiness and
//!   liveness — a consumer restarted under the same group was seen to get
//!   no partition and stall silently until it was restarted again.
//!
//! Kafka not answering the watchdog is [`Reason::KafkaUnreachable`]. A
//! reason is cleared as soon as its condition no longer holds in every
//! watched group.
//!
//! Each look also exports the stage's consumer lag per topic-partition
//! (the stage's `…_consumer_lag_records` gauge): for a partition this
//! instance holds, the high watermark minus the consumer's own position
//! (the next offset it hands the stage; the group's committed offset
//! before it handed any); for a partition it does not hold, 0, so that a
//! sum over instances counts each partition once, by its owner. Looks come
//! at least every [`LAG_EVERY`], so the gauge is never older than that.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, DefaultConsumerContext},
    error::KafkaError,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{KafkaConfig, close::Closing};
use crate::admin::{Readiness, Reason};

/// What one look at a group says. Pure input of [`Stall::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// Records above the group's committed offsets, over all partitions.
    pub lag: i64,
    /// The group's committed offsets, summed: moves when it makes progress.
    pub committed: i64,
    /// Partitions this instance holds.
    pub assigned: usize,
}

/// What the watchdog concludes about one group. Ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
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
pub struct Stall {
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

/// The longest the lag gauges may go without a look.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// A partition this instance holds, and its consumer's position there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub topic: String,
    pub partition: i32,
    /// The next offset the consumer hands the stage; `None` before it
    /// handed any record of the partition.
    pub position: Option<i64>,
}

/// The partitions `consumer` holds with its positions: what a
/// [`Watched::held`] closure returns. Reads the client's own state only
/// (no request to the broker).
pub fn held<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(consumer: &C) -> Vec<Held> {
    let Ok(tpl) = consumer.position() else {
        return Vec::new();
    };
    offsets(&tpl)
        .map(|(topic, partition, position)| Held {
            topic,
            partition,
            position,
        })
        .collect()
}

/// One consumer group an instance takes part in, as the watchdog sees it.
pub struct Watched<'a> {
    /// The group id.
    pub group: String,
    /// Its input topics.
    pub topics: Vec<String>,
    /// The partitions this instance holds right now, with the consumer's
    /// positions ([`held`]).
    pub held: Box<dyn Fn() -> Vec<Held> + Send + Sync + 'a>,
    /// The stage's consumer-lag gauge, from its own telemetry module.
    pub lag_metric: &'static str,
}

/// The lag to export for one partition: the high watermark above the
/// consumer's position if this instance holds it (above the group's
/// committed offset before the consumer handed any record), else 0.
pub fn partition_lag(p: &PartitionOffsets, held: Option<&Held>) -> i64 {
    let Some(h) = held else { return 0 };
    let base = h.position.or(p.committed).unwrap_or(0);
    (p.high - base).max(0)
}

/// Watches until `stop` is cancelled. Not spawned by itself: a stage runs
/// it beside its loops, so `assigned` may borrow the stage's consumers.
pub async fn watch(
    kafka: KafkaConfig,
    watched: Vec<Watched<'_>>,
    timeout: Duration,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let every = (timeout / 4).clamp(Duration::from_secs(1), LAG_EVERY);
    let mut stalls: Vec<Stall> = watched
        .iter()
        .map(|_| Stall::new(timeout, Instant::now()))
        .collect();
    // One reading client per group for the whole run (a client per look
    // would start librdkafka threads and connections every few seconds);
    // built again after a failure. Group clients: closed off the async
    // workers whoever drops them last (a look cut short by `stop` may be
    // last; see `super::close`).
    let mut clients: Vec<Option<Arc<Closing<BaseConsumer<DefaultConsumerContext>>>>> =
        watched.iter().map(|_| None).collect();
    'looks: loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => break,
        }
        // The worst verdict over the groups, with the group it is about.
        let mut worst = (Verdict::Progressing, "");
        let mut unreachable = None;
        for ((w, stall), client) in watched.iter().zip(&mut stalls).zip(&mut clients) {
            let c = match client {
                Some(c) => c.clone(),
                None => match kafka.base_consumer(&w.group) {
                    Ok(c) => client.insert(Arc::new(Closing::new(c))).clone(),
                    Err(e) => {
                        unreachable = Some(e);
                        break;
                    }
                },
            };
            let t = w.topics.clone();
            // librdkafka's metadata calls block: off the async workers.
            // A look of up to 10 s does not hold up a shutdown.
            let offsets = tokio::select! {
                r = tokio::task::spawn_blocking(move || group_offsets_with(&c, &t)) => r,
                () = stop.cancelled() => break 'looks,
            };
            let offsets = match offsets {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    *client = None;
                    unreachable = Some(e);
                    break;
                }
                Err(_) => continue,
            };
            let held = (w.held)();
            for p in &offsets {
                let h = held
                    .iter()
                    .find(|h| h.partition == p.partition && h.topic == p.topic);
                metrics::gauge!(
                    w.lag_metric,
                    "topic" => p.topic.clone(),
                    "partition" => p.partition.to_string()
                )
                .set(partition_lag(p, h) as f64);
            }
            let look = Look {
                lag: offsets
                    .iter()
                    .map(|p| (p.high - p.committed.unwrap_or(0)).max(0))
                    .sum(),
                committed: offsets.iter().filter_map(|p| p.committed).sum(),
                assigned: held.len(),
            };
            let verdict = stall.observe(look, Instant::now());
            if verdict > worst.0 {
                worst = (verdict, &w.group);
            }
        }
        if let Some(e) = unreachable {
            readiness.fail(Reason::KafkaUnreachable, format_args!("watchdog: {e}"));
            continue;
        }
        readiness.clear(Reason::KafkaUnreachable);
        match worst {
            (Verdict::Progressing, _) => {
                readiness.clear(Reason::NoProgress);
                readiness.clear(Reason::NoPartitions);
            }
            (Verdict::NoProgress { lag, for_ }, group) => {
                readiness.clear(Reason::NoPartitions);
                readiness.fail(
                    Reason::NoProgress,
                    format_args!(
                        "group {group}: lag {lag}, nothing committed for {}s",
                        for_.as_secs()
                    ),
                );
            }
            (Verdict::NoPartitions { lag, for_ }, group) => {
                readiness.clear(Reason::NoProgress);
                readiness.fail_liveness(
                    Reason::NoPartitions,
                    format_args!(
                        "group {group}: no partition held while the group has lag {lag} and committed nothing for {}s",
                        for_.as_secs()
                    ),
                );
            }
        }
    }
}

/// One input partition as the broker and the group see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    /// The broker's high watermark.
    pub high: i64,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
}

/// Reads the high watermarks and the group's committed offsets of every
/// partition of `topics` (blocking: run it off the async workers). The
/// client never subscribes: it only reads.
pub fn group_offsets(
    kafka: &KafkaConfig,
    group: &str,
    topics: &[String],
) -> Result<Vec<PartitionOffsets>, KafkaError> {
    group_offsets_with(&Closing::new(kafka.base_consumer(group)?), topics)
}

/// [`group_offsets`] through a client of the group already built.
pub fn group_offsets_with(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    topics: &[String],
) -> Result<Vec<PartitionOffsets>, KafkaError> {
    committed_offsets_with(consumer, topics)?
        .into_iter()
        .map(|c| {
            let (_, high) = consumer.fetch_watermarks(&c.topic, c.partition, WAIT)?;
            Ok(PartitionOffsets {
                topic: c.topic,
                partition: c.partition,
                high,
                committed: c.offset,
            })
        })
        .collect()
}

/// One partition of a topic a group reads, and the offset the group
/// committed there, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub topic: String,
    pub partition: i32,
    pub offset: Option<i64>,
}

/// The group's committed offsets in every partition the broker names of
/// `topics` (blocking), without the watermarks [`group_offsets_with`]
/// reads too. A topic the broker names no partition of is left out.
pub fn committed_offsets_with(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    topics: &[String],
) -> Result<Vec<Committed>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), WAIT)?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(tpl, WAIT)?;
    Ok(offsets(&committed)
        .map(|(topic, partition, offset)| Committed {
            topic,
            partition,
            offset,
        })
        .collect())
}

/// Each partition of `tpl` with its offset, when it is one (not a logical
/// offset such as "none stored").
fn offsets(tpl: &TopicPartitionList) -> impl Iterator<Item = (String, i32, Option<i64>)> + '_ {
    tpl.elements().into_iter().map(|e| {
        let offset = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        (e.topic().to_owned(), e.partition(), offset)
    })
}

/// How long each of the broker calls above may take.
const WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_position_of_the_partitions_held_only() {
        let p = |high, committed| PartitionOffsets {
            topic: "t".into(),
            partition: 3,
            high,
            committed,
        };
        let h = |position| Held {
            topic: "t".into(),
            partition: 3,
            position,
        };
        // Held: from the consumer's own position, whatever was committed.
        assert_eq!(partition_lag(&p(100, Some(10)), Some(&h(Some(90)))), 10);
        // Held, nothing handed yet: from the committed offset, else 0.
        assert_eq!(partition_lag(&p(100, Some(10)), Some(&h(None))), 90);
        assert_eq!(partition_lag(&p(100, None), Some(&h(None))), 100);
        // A watermark read before the position moved past it: no lag.
        assert_eq!(partition_lag(&p(100, None), Some(&h(Some(120)))), 0);
        // Not held: another instance reports it.
        assert_eq!(partition_lag(&p(100, Some(10)), None), 0);
    }

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
