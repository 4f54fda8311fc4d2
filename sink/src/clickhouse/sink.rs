//! The sink loop: fill a batch from Kafka, insert it, commit it.
//!
//! A batch flushes on whichever comes first of `batch_rows`, `batch_bytes`
//! or `batch_max_wait` since its first record. Its offsets are committed only
//! after ClickHouse acknowledged every insert of the batch; a failing insert
//! is retried with back-off and, if it keeps failing, stops the sink without
//! committing, so nothing is skipped.

use std::{collections::BTreeMap, time::Duration};

use clickhouse::{Client, Row};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, DefaultConsumerContext},
    message::Message,
};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xoflow_common::{admin::Readiness, kafka::KafkaConfig};
use xoflow_proto::{
    Message as _,
    v1::{DeadLetter, EnrichedEvent},
};

use super::{
    ClickHouseConfig, SinkConfig, SinkError, migrate,
    row::{DeadLetterRow, EventRow, Lineage},
};
use crate::telemetry;

/// Rows waiting to be written, and the offsets they cover.
#[derive(Default)]
struct Batch {
    events: Vec<EventRow>,
    dead_letters: Vec<DeadLetterRow>,
    /// Encoded bytes taken in, for the memory bound.
    bytes: usize,
    /// Highest offset per (topic, partition) in the batch.
    offsets: BTreeMap<(bool, i32), i64>,
    records: usize,
    started: Option<Instant>,
}

/// Runs the sink until `stop` is cancelled: migrates, then consumes.
pub async fn run(
    kafka: &KafkaConfig,
    ch: &ClickHouseConfig,
    cfg: &SinkConfig,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), SinkError> {
    migrate(ch).await?;
    let topics = &kafka.topics;
    kafka
        .ensure_topics(&[&topics.enriched, &topics.dead_letters])
        .await
        .map_err(SinkError::Kafka)?;
    let client = ch.client();
    let consumer = kafka
        .consumer(&cfg.group_id, DefaultConsumerContext)
        .map_err(SinkError::Kafka)?;
    consumer
        .subscribe(&[&topics.enriched, &topics.dead_letters])
        .map_err(SinkError::Kafka)?;
    readiness.set(true);
    tracing::info!(group = %cfg.group_id, database = %ch.database, "sink started");

    let mut batch = Batch::default();
    loop {
        let deadline = batch.started.map(|s| s + cfg.batch_max_wait);
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = sleep_until(deadline) => None,
            m = consumer.recv() => Some(m),
        };
        match msg {
            Some(Ok(m)) => {
                let is_dl = m.topic() == topics.dead_letters;
                let payload = m.payload().unwrap_or_default();
                batch.bytes += payload.len();
                batch.records += 1;
                batch.started.get_or_insert_with(Instant::now);
                let o = batch
                    .offsets
                    .entry((is_dl, m.partition()))
                    .or_insert(m.offset());
                *o = (*o).max(m.offset());
                let lineage = Lineage {
                    topic: m.topic(),
                    partition: m.partition(),
                    offset: m.offset(),
                };
                if is_dl {
                    batch
                        .dead_letters
                        .push(decode_dead_letter(payload, lineage));
                } else {
                    match EnrichedEvent::decode(payload)
                        .ok()
                        .and_then(|en| EventRow::from_enriched(en, lineage))
                    {
                        Some(row) => batch.events.push(row),
                        None => batch.dead_letters.push(undecodable(
                            payload,
                            lineage,
                            "xoflow.v1.EnrichedEvent with an event and a payload",
                        )),
                    }
                }
                if batch.records < cfg.batch_rows && batch.bytes < cfg.batch_bytes {
                    continue;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consumer error");
                continue;
            }
            None => {}
        }
        flush(&client, &consumer, topics, cfg, &mut batch).await?;
    }
    // Draining: write what is buffered and commit it before returning.
    readiness.set(false);
    flush(&client, &consumer, topics, cfg, &mut batch).await?;
    tracing::info!("sink stopped");
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn decode_dead_letter(payload: &[u8], lineage: Lineage<'_>) -> DeadLetterRow {
    match DeadLetter::decode(payload) {
        Ok(d) => d.into(),
        Err(_) => undecodable(payload, lineage, "xoflow.v1.DeadLetter"),
    }
}

fn undecodable(payload: &[u8], l: Lineage<'_>, expected: &str) -> DeadLetterRow {
    DeadLetterRow {
        at: now_secs(),
        stage: "sink".into(),
        reason: "DECODE".into(),
        description: format!(
            "{}[{}]@{}: not a {expected}",
            l.topic, l.partition, l.offset
        ),
        content_type: "application/x-protobuf".into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

async fn flush(
    client: &Client,
    consumer: &rdkafka::consumer::StreamConsumer,
    topics: &xoflow_common::kafka::Topics,
    cfg: &SinkConfig,
    batch: &mut Batch,
) -> Result<(), SinkError> {
    if batch.records == 0 {
        return Ok(());
    }
    let started = Instant::now();
    insert_with_retry(client, "events", &batch.events, cfg).await?;
    insert_with_retry(client, "dead_letters", &batch.dead_letters, cfg).await?;
    let mut tpl = TopicPartitionList::with_capacity(batch.offsets.len());
    for ((is_dl, partition), offset) in &batch.offsets {
        let topic = if *is_dl {
            &topics.dead_letters
        } else {
            &topics.enriched
        };
        tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
            .map_err(SinkError::Kafka)?;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        // The rows are in ClickHouse; a lost commit only means they may be
        // delivered again, and the events table collapses duplicates.
        tracing::warn!(error = %e, "offset commit failed");
    }
    telemetry::BatchWritten {
        events: batch.events.len() as u64,
        dead_letters: batch.dead_letters.len() as u64,
        bytes: batch.bytes as u64,
        seconds: started.elapsed().as_secs_f64(),
    }
    .emit();
    *batch = Batch::default();
    Ok(())
}

async fn insert_with_retry<T>(
    client: &Client,
    table: &'static str,
    rows: &[T],
    cfg: &SinkConfig,
) -> Result<(), SinkError>
where
    T: Serialize + for<'a> Row<Value<'a> = T>,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut backoff = cfg.retry_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match insert_once(client, table, rows).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt <= cfg.insert_retries && e.is_transient() => {
                telemetry::InsertRetried {
                    table,
                    attempt,
                    error: &e.to_string(),
                }
                .emit();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                return Err(SinkError::InsertFailed {
                    table,
                    attempts: attempt,
                    message: e.to_string(),
                });
            }
        }
    }
}

async fn insert_once<T>(client: &Client, table: &str, rows: &[T]) -> Result<(), SinkError>
where
    T: Serialize + for<'a> Row<Value<'a> = T>,
{
    let mut insert = client
        .insert::<T>(table)
        .await
        .map_err(SinkError::clickhouse)?;
    for r in rows {
        insert.write(r).await.map_err(SinkError::clickhouse)?;
    }
    insert.end().await.map_err(SinkError::clickhouse)
}
