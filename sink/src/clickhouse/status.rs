//! Reconciliation for operators: per partition of the sink's two input
//! topics, what Kafka holds, what the sink group committed, and what
//! ClickHouse stores.
//!
//! ClickHouse's figure is the authoritative one (the sink resumes from it);
//! the committed offset only bounds re-reading. `stored_next` ahead of
//! `committed` is normal for a moment after a flush or after a crash before
//! the commit; `stored_next` behind `committed` would mean rows lost and is
//! reported as a gap — unless the records in between are copies the sink
//! dropped on purpose (a tenant's event id and revision it had already stored from
//! the partition: enrich retried, a client re-sent). The sink commits past
//! such copies but stores nothing for them, so for every enriched partition
//! with `committed > stored_next` the records in between are read back from
//! Kafka and those whose (tenant, event id, revision) is already stored (or offsets
//! that hold no record at all) are counted as `dropped_copies`, not as a
//! gap. A new revision of a stored event is no copy.
//!
//! `high` is derived, never below what is known to exist: the broker's
//! high watermark, raised to `stored_next` and `committed` (Tansu 0.6 was
//! seen answering a high watermark 197 records behind offsets it had
//! already acknowledged and the sink stored, so lag read 0 when it was
//! not).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, DefaultConsumerContext},
};
use xoflow_common::kafka::{
    KafkaConfig,
    close::Closing,
    watch::{PartitionOffsets, group_offsets},
};
use xoflow_proto::{Message as _, v1::EnrichedEvent};

use super::{
    ClickHouseConfig, SinkError,
    position::{self, Input},
};

/// One partition's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset Kafka will write: the broker's high watermark, raised
    /// to `stored_next` and `committed` when it answers behind them (see
    /// [`derived_high`]).
    pub high_watermark: i64,
    /// The high watermark as the broker answered it.
    pub broker_high_watermark: i64,
    /// The sink group's committed offset, if it committed one.
    pub committed: Option<i64>,
    /// One past the highest offset ClickHouse holds: where the sink resumes.
    pub stored_next: i64,
    /// Rows of this partition in ClickHouse (for the enriched topic: `events`
    /// plus refused rows in `dead_letters`).
    pub rows_stored: u64,
    /// Offsets in `stored_next..committed` that hold no row on purpose:
    /// copies of an event revision already stored from this partition,
    /// which the sink drops and commits past, and offsets without a record.
    pub dropped_copies: i64,
}

impl PartitionStatus {
    /// Records in Kafka not yet in ClickHouse.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.stored_next).max(0)
    }

    /// Offsets committed but not stored, dropped copies excepted: never
    /// anything but 0.
    pub fn gap(&self) -> i64 {
        self.committed
            .map_or(0, |c| (c - self.stored_next - self.dropped_copies).max(0))
    }
}

/// The high watermark `sink-status` reports: the broker's, but never below
/// an offset known to exist — one stored in ClickHouse (`stored_next - 1`)
/// or one the group committed past (`committed - 1`). Pure.
pub fn derived_high(broker: i64, stored_next: i64, committed: Option<i64>) -> i64 {
    broker.max(stored_next).max(committed.unwrap_or(0))
}

/// Most records read back to tell dropped copies from a gap, per
/// partition; what lies beyond is counted as gap (the safe answer).
const MAX_READ_BACK: i64 = 200_000;

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
    let (kafka_cfg, group_owned) = (kafka.clone(), group.to_owned());
    let names: Vec<String> = inputs.iter().map(|(t, _)| t.clone()).collect();
    // librdkafka's metadata calls block: keep them off the async workers.
    let partitions =
        tokio::task::spawn_blocking(move || group_offsets(&kafka_cfg, &group_owned, &names))
            .await
            .map_err(SinkError::Task)?
            .map_err(SinkError::Kafka)?;
    let client = ch.client();
    let mut out = Vec::with_capacity(partitions.len());
    for PartitionOffsets {
        topic,
        partition,
        high: high_watermark,
        committed,
    } in partitions
    {
        let input = inputs
            .iter()
            .find(|(t, _)| *t == topic)
            .map_or(Input::Enriched, |(_, i)| *i);
        let s = position::stored(&client, input, &topic, partition).await?;
        let stored_next = s.max_offset + 1;
        // Only the enriched topic drops copies; a dead-letter record past
        // the stored offset is never dropped on purpose.
        let dropped_copies = match committed {
            Some(c) if c > stored_next && input == Input::Enriched => {
                dropped_copies(
                    kafka,
                    group.to_owned(),
                    &client,
                    &topic,
                    partition,
                    stored_next,
                    c,
                )
                .await?
            }
            _ => 0,
        };
        out.push(PartitionStatus {
            high_watermark: derived_high(high_watermark, stored_next, committed),
            broker_high_watermark: high_watermark,
            topic,
            partition,
            committed,
            stored_next,
            rows_stored: s.rows,
            dropped_copies,
        });
    }
    Ok(out)
}

/// How many offsets of `from..to` hold no row on purpose: records whose
/// (tenant, event id, revision) is already stored from this partition, and offsets
/// holding no record. Reads the records back from Kafka (assigned, never subscribed:
/// the group is not joined and nothing is committed).
async fn dropped_copies(
    kafka: &KafkaConfig,
    group: String,
    client: &clickhouse::Client,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<i64, SinkError> {
    let until = to.min(from.saturating_add(MAX_READ_BACK));
    let (kafka_cfg, t) = (kafka.clone(), topic.to_owned());
    let (read, covered_to) = tokio::task::spawn_blocking(move || {
        read_ids(&kafka_cfg, &group, &t, partition, from, until)
    })
    .await
    .map_err(SinkError::Task)??;
    let ids: Vec<&str> = read
        .iter()
        .filter_map(|(_, key)| key.as_ref().map(|(_, id, _)| id.as_str()))
        .collect();
    let stored: HashSet<(String, String, u32)> = if ids.is_empty() {
        HashSet::new()
    } else {
        let mut q = client.query(&format!(
            "SELECT DISTINCT tenant, event_id, revision FROM {} WHERE has(?, event_id)",
            Input::Enriched.stored_rows()
        ));
        for _ in 0..Input::Enriched.branches() {
            q = q.bind(topic).bind(partition);
        }
        q.bind(ids)
            .fetch_all::<(String, String, u32)>()
            .await
            .map_err(SinkError::clickhouse)?
            .into_iter()
            .collect()
    };
    let present = read.len() as i64;
    let copies = read
        .iter()
        .filter(|(_, key)| key.as_ref().is_some_and(|k| stored.contains(k)))
        .count() as i64;
    // Offsets of the range the broker holds no record for (control
    // records, compaction) cannot be stored either; what was not read in
    // time counts as gap.
    Ok((covered_to - from - present).max(0) + copies)
}

/// How long reading back one partition's range may take.
const READ_BACK_WAIT: Duration = Duration::from_secs(15);

/// The records of `from..to` as (offset, (tenant, event id, revision)
/// when it decodes), and the offset below which the read is complete.
type ReadBack = (Vec<(i64, Option<(String, String, u32)>)>, i64);

fn read_ids(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<ReadBack, SinkError> {
    // Closed off this thread: a broker gone meanwhile holds up nothing
    // (`xoflow_common::kafka::close`).
    let consumer: Closing<BaseConsumer<DefaultConsumerContext>> =
        Closing::new(kafka.base_consumer(group).map_err(SinkError::Kafka)?);
    let mut tpl = TopicPartitionList::new();
    // Starts a rewind before `from`: Tansu 0.6 answers a fetch inside a
    // record batch from the next batch, and may report a high watermark
    // below `from` (librdkafka then calls the offset out of range). The
    // records before `from` are skipped below.
    let start = (from - xoflow_common::resume::REWIND).max(0);
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(SinkError::Kafka)?;
    consumer.assign(&tpl).map_err(SinkError::Kafka)?;
    let deadline = Instant::now() + READ_BACK_WAIT;
    let mut out = Vec::new();
    let mut covered_to = from;
    while Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(SinkError::Kafka)?;
        if m.offset() < from {
            continue;
        }
        if m.offset() >= to {
            covered_to = to;
            break;
        }
        let id = m
            .payload()
            .and_then(|p| EnrichedEvent::decode(p).ok())
            .and_then(|en| en.event.map(|e| (e.tenant, e.event_id, en.revision)));
        out.push((m.offset(), id));
        covered_to = m.offset() + 1;
        if covered_to >= to {
            break;
        }
    }
    Ok((out, covered_to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(committed: Option<i64>, stored_next: i64, dropped: i64) -> PartitionStatus {
        PartitionStatus {
            topic: "t".into(),
            partition: 0,
            high_watermark: 0,
            broker_high_watermark: 0,
            committed,
            stored_next,
            rows_stored: 0,
            dropped_copies: dropped,
        }
    }

    #[test]
    fn dropped_copies_are_not_a_gap() {
        // The case seen: the partition's last record was a copy.
        assert_eq!(status(Some(2505), 2504, 0).gap(), 1);
        assert_eq!(status(Some(2505), 2504, 1).gap(), 0);
        assert_eq!(status(Some(2510), 2504, 4).gap(), 2);
        assert_eq!(status(Some(2504), 2510, 0).gap(), 0);
        assert_eq!(status(None, 2504, 0).gap(), 0);
    }

    #[test]
    fn the_high_watermark_is_never_below_what_exists() {
        // Partition 3 of the report: high 41,300 with rows up to 41,497.
        assert_eq!(derived_high(41_300, 41_498, Some(41_400)), 41_498);
        assert_eq!(derived_high(41_300, 41_200, Some(41_450)), 41_450);
        assert_eq!(derived_high(41_600, 41_498, Some(41_498)), 41_600);
        assert_eq!(derived_high(0, 0, None), 0);
    }
}
