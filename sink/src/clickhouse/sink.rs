//! The sink loop: fill a batch from Kafka, insert it, commit it.
//!
//! A batch flushes on whichever comes first of `batch_rows`, `batch_bytes`
//! or `batch_max_wait` since its first record, as one INSERT per table.
//! Records already stored (by offset) or already written (by event id) are
//! skipped, using the positions read from ClickHouse itself
//! ([`super::position`]), so that after any crash, restart or rebalance no
//! event is written twice. A failing insert is retried with back-off — after
//! checking whether the failed attempt did in fact land — and, if it keeps
//! failing, stops the sink without committing, so nothing is skipped.

use std::time::Duration;

use clickhouse::{Client, Row};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
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
    position::{self, Input, Positions, Resume, SinkContext},
    row::{DeadLetterRow, EventRow, Lineage},
};
use crate::telemetry;

/// How long a seek may wait for the consumer's fetcher.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows waiting to be written, and the offsets they cover.
#[derive(Default)]
struct Batch {
    events: Vec<EventRow>,
    dead_letters: Vec<DeadLetterRow>,
    /// Encoded bytes taken in, for the memory bound.
    bytes: usize,
    records: usize,
    skipped_stored: u64,
    skipped_duplicates: u64,
    started: Option<Instant>,
}

impl Batch {
    /// Empties the batch for the next one, keeping the vectors' memory: a
    /// fresh 50k-row vector per flush cost more in page faults (the kernel
    /// zeroing new pages) than the inserts themselves.
    fn reset(&mut self) {
        self.events.clear();
        self.dead_letters.clear();
        self.bytes = 0;
        self.records = 0;
        self.skipped_stored = 0;
        self.skipped_duplicates = 0;
        self.started = None;
    }

    /// Forgets everything read from a partition this sink no longer owns.
    fn drop_partition(&mut self, topic: &str, partition: i32) {
        self.events
            .retain(|r| !(r.kafka_topic == topic && r.kafka_partition == partition));
        self.dead_letters
            .retain(|r| !(r.kafka_topic == topic && r.kafka_partition == partition));
    }
}

/// A row's lineage, for the already-stored check on retry.
trait Lineaged {
    fn position(&self) -> (&str, i32, i64);
}

impl Lineaged for EventRow {
    fn position(&self) -> (&str, i32, i64) {
        (&self.kafka_topic, self.kafka_partition, self.kafka_offset)
    }
}

impl Lineaged for DeadLetterRow {
    fn position(&self) -> (&str, i32, i64) {
        (&self.kafka_topic, self.kafka_partition, self.kafka_offset)
    }
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
    let consumer: StreamConsumer<SinkContext> = kafka
        .consumer(&cfg.group_id, SinkContext::default())
        .map_err(SinkError::Kafka)?;
    consumer
        .subscribe(&[&topics.enriched, &topics.dead_letters])
        .map_err(SinkError::Kafka)?;
    readiness.set(true);
    tracing::info!(group = %cfg.group_id, database = %ch.database, "sink started");

    let mut positions = Positions::default();
    let mut batch = Batch::default();
    // One stop future and one timer for the whole run, polled only when no
    // record is ready: polling either takes a lock (a fresh timer registers
    // with the driver), which a record must not pay. Under load the batch
    // age is read from the clock instead, and stop is checked per flush.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep(cfg.batch_max_wait);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = batch.started.map(|s| s + cfg.batch_max_wait);
        let msg = if deadline.is_some_and(|d| Instant::now() >= d) {
            None
        } else {
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                m = consumer.recv() => Some(m),
                _ = &mut cancelled => break,
                _ = &mut timer, if deadline.is_some() => None,
            }
        };
        // Revocations arrive inside recv(): handle them before the record
        // it returned, which may already come from a new assignment.
        for (topic, partition) in consumer.context().take_revoked() {
            positions.remove(&topic, partition);
            batch.drop_partition(&topic, partition);
        }
        match msg {
            Some(Ok(m)) => {
                if !positions.contains(m.topic(), m.partition()) {
                    let input = if m.topic() == topics.dead_letters {
                        Input::DeadLetters
                    } else {
                        Input::Enriched
                    };
                    let state =
                        position::load(&client, input, m.topic(), m.partition(), cfg.dedup_window)
                            .await?;
                    tracing::info!(
                        topic = m.topic(),
                        partition = m.partition(),
                        stored = state.stored,
                        recent_ids = state.recent.len(),
                        "partition position read from ClickHouse"
                    );
                    positions.insert(m.topic(), m.partition(), state);
                }
                let Some(state) = positions.get_mut(m.topic(), m.partition()) else {
                    continue;
                };
                match state.resume(m.offset()) {
                    Resume::Read => {}
                    Resume::SeekTo(to) => {
                        tracing::info!(
                            topic = m.topic(),
                            partition = m.partition(),
                            stored = state.stored,
                            got = m.offset(),
                            seek = to,
                            "broker answered past the stored position; reading from earlier"
                        );
                        consumer
                            .seek(m.topic(), m.partition(), Offset::Offset(to), SEEK_TIMEOUT)
                            .map_err(SinkError::Kafka)?;
                        continue;
                    }
                    Resume::Gap { from, to } => {
                        tracing::error!(
                            topic = m.topic(),
                            partition = m.partition(),
                            from,
                            to,
                            "records missing from the log (deleted by retention before they were stored)"
                        );
                        telemetry::log_gap(m.topic(), m.partition(), to - from);
                    }
                }
                batch.started.get_or_insert_with(Instant::now);
                let (max_offset, rows) = state.pending.get_or_insert((m.offset(), 0));
                *max_offset = (*max_offset).max(m.offset());
                batch.records += 1;
                if m.offset() <= state.stored {
                    batch.skipped_stored += 1;
                } else {
                    let payload = m.payload().unwrap_or_default();
                    batch.bytes += payload.len();
                    let lineage = Lineage {
                        topic: m.topic(),
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    if m.topic() == topics.dead_letters {
                        *rows += 1;
                        batch
                            .dead_letters
                            .push(decode_dead_letter(payload, lineage));
                    } else {
                        match EnrichedEvent::decode(payload)
                            .ok()
                            .and_then(|en| EventRow::from_enriched(en, lineage))
                        {
                            Some(row) if state.recent.contains(&row.event_id) => {
                                batch.skipped_duplicates += 1;
                            }
                            Some(row) => {
                                *rows += 1;
                                state.recent.insert(row.event_id.clone());
                                batch.events.push(row);
                            }
                            None => batch.dead_letters.push(undecodable(
                                payload,
                                lineage,
                                "xoflow.v1.EnrichedEvent with an event and a payload",
                            )),
                        }
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
        flush(&client, &consumer, cfg, &mut batch, &mut positions).await?;
        if stop.is_cancelled() {
            break;
        }
    }
    // Draining: write what is buffered and commit it before returning.
    readiness.set(false);
    for (topic, partition) in consumer.context().take_revoked() {
        positions.remove(&topic, partition);
        batch.drop_partition(&topic, partition);
    }
    flush(&client, &consumer, cfg, &mut batch, &mut positions).await?;
    tracing::info!("sink stopped");
    Ok(())
}

fn decode_dead_letter(payload: &[u8], lineage: Lineage<'_>) -> DeadLetterRow {
    match DeadLetter::decode(payload) {
        Ok(d) => DeadLetterRow::from_dead_letter(d, lineage),
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
        kafka_topic: l.topic.to_owned(),
        kafka_partition: l.partition,
        kafka_offset: l.offset,
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
    consumer: &StreamConsumer<SinkContext>,
    cfg: &SinkConfig,
    batch: &mut Batch,
    positions: &mut Positions,
) -> Result<(), SinkError> {
    if batch.records == 0 {
        batch.reset();
        return Ok(());
    }
    let started = Instant::now();
    // Dead letters first: they are not part of the enriched topic's
    // position, so a crash between the two inserts re-delivers (and may
    // repeat) dead letters, never skips events.
    insert_with_retry(client, "dead_letters", &batch.dead_letters, cfg).await?;
    let refused = insert_events(client, &batch.events, cfg).await?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, state) in positions.iter_mut() {
        let Some((offset, rows)) = state.pending.take() else {
            continue;
        };
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
            .map_err(SinkError::Kafka)?;
        state.stored = state.stored.max(offset);
        state.rows += rows;
        telemetry::PartitionPosition {
            topic,
            partition,
            next_offset: offset + 1,
            rows_stored: state.rows,
        }
        .emit();
    }
    // Bound the dedup memory: a partition whose id set outgrew the window
    // is reloaded (with just the window) when its next record arrives.
    let window = usize::try_from(cfg.dedup_window).unwrap_or(usize::MAX);
    positions.retain(|s| s.recent.len() <= window.saturating_mul(2));
    if !tpl.elements().is_empty()
        && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
    {
        // Positions live in ClickHouse; the commit only bounds re-reading.
        tracing::warn!(error = %e, "offset commit failed");
    }
    telemetry::BatchWritten {
        events: batch.events.len() as u64 - refused,
        dead_letters: batch.dead_letters.len() as u64,
        refused,
        skipped_stored: batch.skipped_stored,
        skipped_duplicates: batch.skipped_duplicates,
        bytes: batch.bytes as u64,
        seconds: started.elapsed().as_secs_f64(),
    }
    .emit();
    batch.reset();
    Ok(())
}

/// Inserts `rows` into `events`. When ClickHouse refuses the data itself,
/// the rows are split in halves, in offset order, down to the single rows
/// it refuses; each goes to `dead_letters` (`refused = 1`) before any later
/// row is inserted, so that every offset below the stored position is
/// accounted for whenever the sink stops. Returns how many were refused.
async fn insert_events(
    client: &Client,
    rows: &[EventRow],
    cfg: &SinkConfig,
) -> Result<u64, SinkError> {
    let mut refused = 0;
    // Ranges still to insert, the next one last.
    let mut todo = vec![(0, rows.len())];
    while let Some((lo, hi)) = todo.pop() {
        let chunk = &rows[lo..hi];
        let e = match insert_with_retry(client, "events", chunk, cfg).await {
            Ok(()) => continue,
            Err(SinkError::InsertFailed { source, .. }) if source.is_refused_data() => source,
            Err(e) => return Err(e),
        };
        if let [row] = chunk {
            let dead = DeadLetterRow::refused(row, now_secs(), e.to_string());
            tracing::warn!(event_id = %row.event_id, error = %e, "row refused by ClickHouse; dead-lettered");
            insert_with_retry(client, "dead_letters", std::slice::from_ref(&dead), cfg).await?;
            refused += 1;
        } else {
            tracing::warn!(rows = chunk.len(), error = %e, "insert refused; bisecting");
            let mid = lo + chunk.len() / 2;
            todo.push((mid, hi));
            todo.push((lo, mid));
        }
    }
    Ok(refused)
}

async fn insert_with_retry<T>(
    client: &Client,
    table: &'static str,
    rows: &[T],
    cfg: &SinkConfig,
) -> Result<(), SinkError>
where
    T: Serialize + Lineaged + for<'a> Row<Value<'a> = T>,
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
                // The failed attempt may have landed (the answer was lost):
                // an insert is one block, so one stored row means all are.
                if landed(client, table, rows).await.unwrap_or(false) {
                    return Ok(());
                }
            }
            Err(e) => {
                return Err(SinkError::InsertFailed {
                    table,
                    attempts: attempt,
                    source: Box::new(e),
                });
            }
        }
    }
}

/// Whether the highest-offset row of `rows` is already in `table`.
async fn landed<T: Lineaged>(client: &Client, table: &str, rows: &[T]) -> Result<bool, SinkError> {
    let Some((topic, partition, offset)) = rows.iter().map(Lineaged::position).max_by_key(|p| p.2)
    else {
        return Ok(false);
    };
    let n: u64 = client
        .query(&format!(
            "SELECT count() FROM {table} WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ?"
        ))
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .fetch_one()
        .await
        .map_err(SinkError::clickhouse)?;
    Ok(n > 0)
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
