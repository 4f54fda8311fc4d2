//! Reconciliation for operators: per partition of the sink's two input
//! topics, what Kafka holds, what the sink group committed, and what
//! ClickHouse stores.
//!
//! ClickHouse's figure is the authoritative one (the sink resumes from it);
//! the committed offset only bounds re-reading. `stored_next` ahead of
//! `committed` is normal for a moment after a flush or after a crash before
//! the commit; `stored_next` behind `committed` would mean rows lost and is
//! reported as a gap.

use std::time::Duration;

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, DefaultConsumerContext},
};
use xoflow_common::kafka::KafkaConfig;

use super::{
    ClickHouseConfig, SinkError,
    position::{self, Input},
};

/// One partition's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset Kafka will write (the high watermark).
    pub high_watermark: i64,
    /// The sink group's committed offset, if it committed one.
    pub committed: Option<i64>,
    /// One past the highest offset ClickHouse holds: where the sink resumes.
    pub stored_next: i64,
    /// Rows of this partition in ClickHouse (for the enriched topic: `events`
    /// plus refused rows in `dead_letters`).
    pub rows_stored: u64,
}

impl PartitionStatus {
    /// Records in Kafka not yet in ClickHouse.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.stored_next).max(0)
    }

    /// Offsets committed but not stored: never anything but 0.
    pub fn gap(&self) -> i64 {
        self.committed.map_or(0, |c| (c - self.stored_next).max(0))
    }
}

/// The figures for every partition of the enriched and dead-letter topics.
pub async fn sink_status(
    kafka: &KafkaConfig,
    ch: &ClickHouseConfig,
    group: &str,
) -> Result<Vec<PartitionStatus>, SinkError> {
    let inputs = [
        (kafka.topics.enriched.clone(), Input::Enriched),
        (kafka.topics.dead_letters.clone(), Input::DeadLetters),
    ];
    let (kafka_cfg, group) = (kafka.clone(), group.to_owned());
    let names: Vec<String> = inputs.iter().map(|(t, _)| t.clone()).collect();
    // librdkafka's metadata calls block: keep them off the async workers.
    let partitions = tokio::task::spawn_blocking(move || kafka_side(&kafka_cfg, &group, &names))
        .await
        .map_err(SinkError::Task)??;
    let client = ch.client();
    let mut out = Vec::with_capacity(partitions.len());
    for (topic, partition, high_watermark, committed) in partitions {
        let input = inputs
            .iter()
            .find(|(t, _)| *t == topic)
            .map_or(Input::Enriched, |(_, i)| *i);
        let s = position::stored(&client, input, &topic, partition).await?;
        out.push(PartitionStatus {
            topic,
            partition,
            high_watermark,
            committed,
            stored_next: s.max_offset + 1,
            rows_stored: s.rows,
        });
    }
    Ok(out)
}

type KafkaSide = Vec<(String, i32, i64, Option<i64>)>;

fn kafka_side(kafka: &KafkaConfig, group: &str, topics: &[String]) -> Result<KafkaSide, SinkError> {
    let timeout = Duration::from_secs(10);
    // Never subscribes: it only reads the group's committed offsets.
    let consumer: BaseConsumer<DefaultConsumerContext> =
        kafka.base_consumer(group).map_err(SinkError::Kafka)?;
    let mut tpl = TopicPartitionList::new();
    let mut highs = Vec::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(SinkError::Kafka)?;
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), timeout)
                    .map_err(SinkError::Kafka)?;
                highs.push((topic.clone(), p.id(), high));
                tpl.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(SinkError::Kafka)?;
    Ok(highs
        .into_iter()
        .map(|(topic, partition, high)| {
            let c = committed
                .find_partition(&topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            (topic, partition, high, c)
        })
        .collect())
}
