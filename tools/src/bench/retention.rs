//! The bench's stand-in for a broker's retention: while a whole pipeline
//! runs (P and A), the records every group reading a topic has committed
//! are deleted from it every [`EVERY`] (Kafka `DeleteRecords`), so that the
//! topics hold about what is still being read, as on a broker with
//! retention, and not every record of the run.
//!
//! Why: the local broker's memory storage lists every batch a partition
//! holds on each fetch, so its fetches, and with them ack → visible and
//! the servers' CPU per event, grow for as long as a run feeds it
//! (BENCHMARKS.md, "CPU per event and ack → visible, explained"); a Kafka
//! broker finds a fetch's offset in its segment index whatever the log
//! holds. `xoflow bench --keep-consumed` keeps every record, the method of
//! the runs before 2026-12-06 (side by side in BENCHMARKS.md, "Consumed
//! records deleted").
//!
//! Only what the pipeline has read and committed goes: the topics read by
//! a consumer group (events by both enrich groups, backfill by resolve's,
//! the repartition topic by the join's, enriched by the sink's, alerts by
//! the alert stage's), each partition cut at the lowest offset its groups
//! committed, and never while one of them has committed nothing there or
//! could not be read. The enrich stage's state topics (links, changelog),
//! read again on a restart, and the dead letters (read by the sink too)
//! are left whole. No stage commits past what it has stored or handed on
//! (enrich's held events wait in its changelog), so a restart finds what
//! it needs; a sink that takes a partition over mid-run may seek below the
//! cut to a position kept in ClickHouse and log records as missing that
//! it had stored. The bench restarts nothing while it measures. What
//! crosses the
//! boundary: the pipeline's [`Config`] in, a [`Retention`] handle out,
//! whose [`Retention::stop`] ends the task.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::{
    TopicPartitionList,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, DefaultConsumerContext},
};
use tokio_util::sync::CancellationToken;
use xoflow_app::Config;
use xoflow_common::kafka::watch::{Committed, committed_offsets_with};

/// How often the committed records are deleted.
pub(super) const EVERY: Duration = Duration::from_secs(2);

/// Whether a whole-pipeline measurement deletes what was consumed
/// (`xoflow bench --keep-consumed` keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Consumed {
    /// Deleted every [`EVERY`] once every group reading it committed it.
    Deleted,
    /// Kept until the measurement ends (the method before 2026-12-06).
    Kept,
}

/// The running task; [`Retention::stop`] ends it.
pub(super) struct Retention {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Cuts>>,
}

impl Retention {
    /// Starts deleting the committed records of `cfg`'s pipeline, or
    /// nothing when `consumed` is [`Consumed::Kept`].
    pub(super) fn start(cfg: &Config, consumed: Consumed) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        if consumed == Consumed::Kept {
            return Ok(Self { stop, task: None });
        }
        let t = &cfg.kafka.topics;
        let eg = &cfg.enrich.group_id;
        let readers = [
            (
                format!("{eg}.resolve"),
                vec![t.events.clone(), t.backfill.clone()],
            ),
            (
                eg.clone(),
                vec![t.events.clone(), format!("{eg}.repartition")],
            ),
            (cfg.sink.group_id.clone(), vec![t.enriched.clone()]),
            (cfg.alert.group_id.clone(), vec![t.alerts.clone()]),
        ];
        let groups = readers
            .into_iter()
            .map(|(group, topics)| Ok((cfg.kafka.base_consumer(&group)?, topics)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let admin: AdminClient<DefaultClientContext> = cfg.kafka.admin_client()?;
        let task = tokio::spawn(run(groups, admin, stop.clone()));
        Ok(Self {
            stop,
            task: Some(task),
        })
    }

    /// Ends the task and prints what it cut ([`Cuts`]).
    pub(super) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let cuts = task.await.unwrap_or_default();
            println!(
                "[bench] consumed records deleted, partition cuts per topic: {:?}, not cut: {}",
                cuts.per_topic, cuts.refused
            );
        }
    }
}

impl Drop for Retention {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A consumer group of the pipeline (a client of it that never joins) and
/// the topics it reads.
type Group = (BaseConsumer<DefaultConsumerContext>, Vec<String>);

async fn run(
    groups: Vec<Group>,
    admin: AdminClient<DefaultClientContext>,
    stop: CancellationToken,
) -> Cuts {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut groups = groups;
    let mut done: HashMap<(String, i32), i64> = HashMap::new();
    let mut cuts = Cuts::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
        // The offsets are read with blocking calls: off the async workers.
        let read = tokio::task::spawn_blocking(move || {
            let lowest = lowest_committed(&groups);
            (groups, lowest)
        })
        .await;
        let Ok((back, lowest)) = read else {
            return cuts;
        };
        groups = back;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in lowest {
            if done
                .get(&(topic.clone(), partition))
                .is_none_or(|d| offset > *d)
            {
                let _ =
                    tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset));
            }
        }
        if tpl.count() == 0 {
            continue;
        }
        // Each partition answers for itself: only those cut are counted
        // and remembered, the others are asked again next round.
        match admin.delete_records(&tpl, &opts).await {
            Ok(answered) => {
                for e in answered.elements() {
                    let asked = tpl.find_partition(e.topic(), e.partition());
                    match (e.error(), asked.map(|a| a.offset())) {
                        (Ok(()), Some(rdkafka::Offset::Offset(at))) => {
                            done.insert((e.topic().to_owned(), e.partition()), at);
                            *cuts.per_topic.entry(e.topic().to_owned()).or_default() += 1;
                        }
                        _ => cuts.refused += 1,
                    }
                }
            }
            Err(e) => {
                cuts.refused += tpl.count() as u64;
                println!("[bench] could not delete consumed records: {e}");
            }
        }
    }
    // Dropping a group's client waits for its queue to close.
    let _ = tokio::task::spawn_blocking(move || drop(groups)).await;
    cuts
}

/// What [`run`] did: partitions cut per topic (a partition's start moved
/// in one round counts once), and partitions the broker did not cut.
#[derive(Debug, Default)]
struct Cuts {
    per_topic: BTreeMap<String, u64>,
    refused: u64,
}

/// Per partition of every topic read, the lowest offset its groups
/// committed; a partition is left out unless every group reading its topic
/// has committed in it.
fn lowest_committed(groups: &[Group]) -> HashMap<(String, i32), i64> {
    let read: anyhow::Result<Vec<_>> = groups
        .iter()
        .map(|(consumer, topics)| Ok((topics.clone(), committed(consumer, topics)?)))
        .collect();
    // A topic not created yet, or a broker busy past the timeout: nothing
    // is cut this round.
    read.map(lowest).unwrap_or_default()
}

/// The offsets `consumer`'s group committed in every partition of `topics`
/// (blocking). A topic the broker names no partition of (not created yet,
/// or answered with an error) is an error here, so that a group that
/// cannot be read holds every cut back.
fn committed(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    topics: &[String],
) -> anyhow::Result<Vec<Committed>> {
    let committed = committed_offsets_with(consumer, topics)?;
    for topic in topics {
        anyhow::ensure!(
            committed.iter().any(|c| &c.topic == topic),
            "no partitions of {topic}"
        );
    }
    Ok(committed)
}

/// [`lowest_committed`] from what each group read: its topics, and what
/// it committed in each of their partitions.
fn lowest(groups: Vec<(Vec<String>, Vec<Committed>)>) -> HashMap<(String, i32), i64> {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for topic in groups.iter().flat_map(|(topics, _)| topics) {
        *readers.entry(topic.clone()).or_default() += 1;
    }
    // Per partition: how many groups committed in it, and the lowest.
    let mut seen: HashMap<(String, i32), (usize, i64)> = HashMap::new();
    for c in groups.into_iter().flat_map(|(_, committed)| committed) {
        if let Some(offset) = c.offset {
            let entry = seen.entry((c.topic, c.partition)).or_insert((0, offset));
            entry.0 += 1;
            entry.1 = entry.1.min(offset);
        }
    }
    seen.into_iter()
        .filter(|((topic, _), (n, _))| readers.get(topic) == Some(n))
        .map(|(k, (_, offset))| (k, offset))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: Option<i64>) -> Committed {
        Committed {
            topic: topic.into(),
            partition,
            offset,
        }
    }

    fn reads(topics: &[&str], committed: Vec<Committed>) -> (Vec<String>, Vec<Committed>) {
        (topics.iter().map(|t| t.to_string()).collect(), committed)
    }

    #[test]
    fn a_partition_is_cut_at_the_lowest_commit_of_the_groups_reading_it() {
        let resolve = reads(
            &["events"],
            vec![at("events", 0, Some(40)), at("events", 1, Some(70))],
        );
        let join = reads(
            &["events", "repartition"],
            vec![
                at("events", 0, Some(55)),
                at("events", 1, Some(20)),
                at("repartition", 0, Some(9)),
            ],
        );
        let cut = lowest(vec![resolve, join]);
        assert_eq!(cut.get(&("events".into(), 0)), Some(&40));
        assert_eq!(cut.get(&("events".into(), 1)), Some(&20));
        assert_eq!(cut.get(&("repartition".into(), 0)), Some(&9));
        assert_eq!(cut.len(), 3);
    }

    #[test]
    fn a_partition_one_group_has_not_committed_in_is_not_cut() {
        let resolve = reads(
            &["events"],
            vec![at("events", 0, Some(40)), at("events", 1, None)],
        );
        let join = reads(
            &["events"],
            vec![at("events", 0, None), at("events", 1, Some(20))],
        );
        let sink = reads(&["enriched"], vec![at("enriched", 0, Some(5))]);
        let cut = lowest(vec![resolve, join, sink]);
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!(cut.get(&("enriched".into(), 0)), Some(&5));
    }

    #[test]
    fn a_partition_missing_from_one_groups_reading_is_not_cut() {
        // The join's reading of the events topic named partition 0 only.
        let resolve = reads(
            &["events"],
            vec![at("events", 0, Some(40)), at("events", 1, Some(70))],
        );
        let join = reads(&["events"], vec![at("events", 0, Some(30))]);
        let cut = lowest(vec![resolve, join]);
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!(cut.get(&("events".into(), 0)), Some(&30));
    }
}
