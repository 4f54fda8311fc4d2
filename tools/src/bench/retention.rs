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
//! a consumer group (events and backfill by both enrich groups, the
//! repartition topic by the join's, enriched by the sink's, alerts by the
//! alert stage's), each partition cut at the lowest offset its groups
//! committed, and never while one of them has committed nothing there.
//! The enrich stage's state topics (links, changelog), read again on a
//! restart, and the dead letters are left whole. What crosses the
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
use xoflow_common::kafka::watch::{PartitionOffsets, group_offsets_with};

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
    task: Option<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
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

    /// Ends the task and prints how many cuts it made per topic (a
    /// partition's start moved in one round counts once).
    pub(super) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let cuts = task.await.unwrap_or_default();
            println!("[bench] consumed records deleted, partition cuts per topic: {cuts:?}");
        }
    }
}

impl Drop for Retention {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Group = (BaseConsumer<DefaultConsumerContext>, Vec<String>);

async fn run(
    groups: Vec<Group>,
    admin: AdminClient<DefaultClientContext>,
    stop: CancellationToken,
) -> BTreeMap<String, u64> {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut groups = groups;
    let mut cut: HashMap<(String, i32), i64> = HashMap::new();
    let mut cuts = BTreeMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return cuts,
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
            let done = cut.get(&(topic.clone(), partition)).copied().unwrap_or(0);
            if offset > done {
                let _ =
                    tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset));
                cut.insert((topic, partition), offset);
            }
        }
        if tpl.count() == 0 {
            continue;
        }
        match admin.delete_records(&tpl, &opts).await {
            Ok(_) => {
                for e in tpl.elements() {
                    *cuts.entry(e.topic().to_owned()).or_default() += 1;
                }
            }
            Err(e) => println!("[bench] could not delete consumed records: {e}"),
        }
    }
}

/// Per partition of every topic read, the lowest offset its groups
/// committed; a partition some group has committed nothing in is left out.
fn lowest_committed(groups: &[Group]) -> HashMap<(String, i32), i64> {
    let read: Result<Vec<_>, _> = groups
        .iter()
        .map(|(consumer, topics)| group_offsets_with(consumer, topics))
        .collect();
    // A topic not created yet, or a broker busy past the timeout: nothing
    // is cut this round.
    read.map(lowest).unwrap_or_default()
}

/// [`lowest_committed`] from what each group read.
fn lowest(groups: Vec<Vec<PartitionOffsets>>) -> HashMap<(String, i32), i64> {
    let mut lowest: HashMap<(String, i32), Option<i64>> = HashMap::new();
    for offsets in groups {
        for p in offsets {
            let entry = lowest.entry((p.topic, p.partition)).or_insert(p.committed);
            *entry = match (*entry, p.committed) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
    }
    lowest
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            topic: topic.into(),
            partition,
            high: 100,
            committed,
        }
    }

    #[test]
    fn a_partition_is_cut_at_the_lowest_commit_of_the_groups_reading_it() {
        let resolve = vec![at("events", 0, Some(40)), at("events", 1, Some(70))];
        let join = vec![
            at("events", 0, Some(55)),
            at("events", 1, Some(20)),
            at("repartition", 0, Some(9)),
        ];
        let cut = lowest(vec![resolve, join]);
        assert_eq!(cut.get(&("events".into(), 0)), Some(&40));
        assert_eq!(cut.get(&("events".into(), 1)), Some(&20));
        assert_eq!(cut.get(&("repartition".into(), 0)), Some(&9));
        assert_eq!(cut.len(), 3);
    }

    #[test]
    fn a_partition_one_group_has_not_committed_in_is_not_cut() {
        let resolve = vec![at("events", 0, Some(40)), at("events", 1, None)];
        let join = vec![at("events", 0, None), at("events", 1, Some(20))];
        let sink = vec![at("enriched", 0, Some(5))];
        let cut = lowest(vec![resolve, join, sink]);
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!(cut.get(&("enriched".into(), 0)), Some(&5));
    }
}
