//! The insert half of the sink loop: write a filled batch to ClickHouse,
//! then commit its offsets.
//!
//! In: a [`Batch`] of rows with their lineage, and the positions of the
//! partitions they came from. Out: the rows stored (dead letters first, then
//! events), the partitions' positions advanced, their offsets committed, and
//! the batch emptied for reuse; or an error once ClickHouse keeps failing, in
//! which case nothing is committed and nothing is skipped. Rows ClickHouse
//! refuses one by one become `CLICKHOUSE_REFUSED` dead letters.

use std::time::Duration;

use clickhouse::{Client, Row};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
};
use serde::Serialize;
use tokio::time::Instant;
use xoflow_common::{clock, rebalance::RebalanceLog, retry::RetryPolicy, telemetry::ErrorKind};

use super::{
    SinkConfig, SinkError,
    consume::Batch,
    position::Positions,
    row::{DeadLetterRow, EventRow},
};
use crate::telemetry::{self, Metric};

/// No wait between insert attempts is longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The insert retry policy: `retry_backoff`, doubling up to 30 s, for
/// `insert_retries` retries after the first attempt.
fn retry_policy(cfg: &SinkConfig) -> RetryPolicy {
    RetryPolicy::exponential(cfg.retry_backoff, MAX_BACKOFF)
        .with_max_attempts(cfg.insert_retries.saturating_add(1))
}

/// A row's lineage, for the already-stored check on retry.
pub(super) trait Lineaged {
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

/// Writes `batch`, advances and commits the positions it covers, and
/// empties it.
pub(super) async fn flush(
    client: &Client,
    consumer: &StreamConsumer<RebalanceLog>,
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
        ErrorKind::Commit.emit(Metric::Errors.name(), &e, "offset commit failed");
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
            let dead = DeadLetterRow::refused(row, clock::now_unix_millis(), e.to_string());
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

/// Inserts `rows` into `table` as one block, retrying transient failures
/// by the [`retry_policy`]; before each retry, checks whether the failed
/// attempt landed after all.
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
    let policy = retry_policy(cfg);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match insert_once(client, table, rows).await {
            Ok(()) => return Ok(()),
            Err(e) if policy.retries_after(attempt) && e.is_transient() => {
                telemetry::InsertRetried {
                    table,
                    attempt,
                    error: &e.to_string(),
                }
                .emit();
                tokio::time::sleep(policy.delay(attempt)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_retries_wait_as_configured() {
        let cfg = SinkConfig {
            group_id: "g".into(),
            batch_rows: 1,
            batch_bytes: 1,
            batch_max_wait: Duration::from_secs(1),
            insert_retries: 6,
            retry_backoff: Duration::from_secs(2),
            dedup_window: 1,
        };
        let p = retry_policy(&cfg);
        let waits: Vec<u64> = (1..=6).map(|a| p.delay(a).as_secs()).collect();
        // Doubling from retry_backoff, capped at 30 s.
        assert_eq!(waits, [2, 4, 8, 16, 30, 30]);
        // insert_retries retries after the first attempt, then it gives up.
        assert!(p.retries_after(6));
        assert!(!p.retries_after(7));
    }
}
