//! The insert half of the sink loop: write a filled batch to ClickHouse,
//! then commit its offsets.
//!
//! In: a [`Batch`] of rows with their lineage (the `events` rows as the
//! RowBinary bytes `transcode` wrote, sent as they are), and the positions
//! of the partitions they came from. Out: the rows stored (dead letters first, then
//! events), the partitions' positions advanced, their offsets committed, and
//! the batch emptied for reuse. Transient failures (ClickHouse unreachable,
//! overloaded) are retried without a bound, with capped exponential backoff
//! and jitter, while readiness says `clickhouse_unreachable`; a permanent
//! error, or shutdown during a retry wait, returns an error and nothing is
//! committed or skipped. Rows ClickHouse refuses one by one become
//! `CLICKHOUSE_REFUSED` dead letters.

use std::ops::Range;

use clickhouse::{Client, Row};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::{Readiness, Reason},
    clock,
    rebalance::RebalanceLog,
    retry::RetryPolicy,
    telemetry::ErrorKind,
};

use super::{
    SinkConfig, SinkError,
    consume::Batch,
    event_ids::{EventIds, Pending},
    position::Positions,
    row::{DeadLetterRow, EventRow, EventRows},
};
use crate::telemetry::{self, Metric};

/// The ClickHouse retry policy: `retry_backoff`, doubling up to
/// `retry_max_backoff`, with jitter, without a bound on attempts.
pub(super) fn retry_policy(cfg: &SinkConfig) -> RetryPolicy {
    RetryPolicy::exponential(cfg.retry_backoff, cfg.retry_max_backoff)
}

/// What a retry loop needs besides the call: shutdown interrupts its
/// waits, readiness says why no progress is made meanwhile, and `lost`
/// tells whether the group has taken this member's partitions.
#[derive(Clone, Copy)]
pub(super) struct Retrying<'a> {
    pub stop: &'a CancellationToken,
    pub readiness: &'a Readiness,
    /// The consumer's `assignment_lost`: true once librdkafka left the
    /// group because the sink did not poll for `max.poll.interval.ms`
    /// (it does not poll while it retries ClickHouse). The partitions'
    /// new owner writes from the positions stored in ClickHouse; an
    /// attempt made here after that could store the same rows beside its
    /// own, so none is.
    pub lost: &'a (dyn Fn() -> bool + Sync),
}

impl Retrying<'_> {
    /// Before every attempt, the first included: `AssignmentLost` once the
    /// partitions were taken (a call that hung past `max.poll.interval.ms`
    /// and then answered must not lead to the next one).
    pub(super) fn held(&self) -> Result<(), SinkError> {
        if (self.lost)() {
            return Err(SinkError::AssignmentLost);
        }
        Ok(())
    }

    /// Waits before the attempt after `attempt`: `Stopped` once shutdown
    /// came meanwhile.
    pub(super) async fn wait(&self, policy: &RetryPolicy, attempt: u32) -> Result<(), SinkError> {
        if !policy.sleep(attempt, self.stop).await {
            return Err(SinkError::Stopped);
        }
        Ok(())
    }
}

/// The rows of one insert, as [`insert_with_retry`] sends them.
pub(super) trait Block: Sync {
    fn is_empty(&self) -> bool;

    /// Each row's lineage, for the already-stored check on retry.
    fn positions(&self) -> impl Iterator<Item = (&str, i32, i64)>;

    /// One attempt, as one block.
    fn insert_once(
        &self,
        client: &Client,
        table: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

impl Block for [DeadLetterRow] {
    fn is_empty(&self) -> bool {
        <[DeadLetterRow]>::is_empty(self)
    }

    fn positions(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.iter()
            .map(|r| (r.kafka_topic.as_str(), r.kafka_partition, r.kafka_offset))
    }

    async fn insert_once(&self, client: &Client, table: &str) -> Result<(), SinkError> {
        let mut insert = client
            .insert::<DeadLetterRow>(table)
            .await
            .map_err(SinkError::clickhouse)?;
        for r in self {
            insert.write(r).await.map_err(SinkError::clickhouse)?;
        }
        insert.end().await.map_err(SinkError::clickhouse)
    }
}

/// Rows `range` of a batch's `events`, sent as the bytes they are.
pub(super) struct EventBlock<'a> {
    pub rows: &'a EventRows,
    pub range: Range<usize>,
}

/// The bytes per chunk of an insert's body: the `clickhouse` crate's own
/// (each chunk is compressed on its own as it is sent).
const CHUNK: usize = 256 * 1024;

impl Block for EventBlock<'_> {
    fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    fn positions(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.rows
            .iter_from(self.range.start)
            .take(self.range.len())
            .map(|r| (r.topic, r.partition, r.offset))
    }

    async fn insert_once(&self, client: &Client, table: &str) -> Result<(), SinkError> {
        let sql = format!(
            "INSERT INTO {table}({}) FORMAT RowBinary",
            EventRow::COLUMN_NAMES.join(",")
        );
        let mut insert = client
            .insert_formatted_with(sql)
            .buffered_with_capacity(CHUNK);
        let mut data = self.rows.bytes(self.range.clone());
        while !data.is_empty() {
            let n = insert.write(data).await.map_err(SinkError::clickhouse)?;
            data = &data[n..];
        }
        insert.end().await.map_err(SinkError::clickhouse)
    }
}

/// Writes `batch`, advances and commits the positions it covers, and
/// empties it.
pub(super) async fn flush(
    client: &Client,
    ids: &EventIds,
    consumer: &StreamConsumer<RebalanceLog>,
    cfg: &SinkConfig,
    batch: &mut Batch,
    positions: &mut Positions,
    retrying: Retrying<'_>,
) -> Result<(), SinkError> {
    if batch.records == 0 {
        batch.reset();
        return Ok(());
    }
    let started = Instant::now();
    // Dead letters first: they are not part of the enriched topic's
    // position, so a crash between the two inserts re-delivers (and may
    // repeat) dead letters, never skips events.
    insert_with_retry(
        client,
        "dead_letters",
        batch.dead_letters.as_slice(),
        cfg,
        retrying,
    )
    .await?;
    let ahead = LookedUp {
        answers: std::mem::take(&mut batch.ahead),
        rows: std::mem::take(&mut batch.looked_up),
    };
    let look_up_began = Instant::now();
    let looked_up = looks_up(&batch.events, cfg);
    let copies =
        drop_stored_anywhere(ids, ahead, &mut batch.events, positions, cfg, retrying).await?;
    let look_up_seconds = looked_up.then(|| look_up_began.elapsed().as_secs_f64());
    let vouched = if looked_up {
        ids.vouched(batch.events.iter())
    } else {
        0
    };
    batch.skipped_duplicates += copies;
    let refused = insert_events(client, &batch.events, cfg, retrying).await?;
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
    // Bound the dedup memory: a partition whose id set holds the window
    // forgets it before the next batch could grow its table
    // (`Written::bound`). Nothing is lost: every pair written is in the
    // dedup index (`event_ids_by_time`), which each flush looks up. (Dropping the whole
    // partition state instead, to reload it, would re-read from the stored
    // position; after a long run of copies, which store nothing, that
    // position stays behind and the re-read would never end.)
    let window = usize::try_from(cfg.dedup_window).unwrap_or(usize::MAX);
    for (topic, partition, s) in positions.iter_mut() {
        s.recent.bound(window, cfg.batch_rows);
        telemetry::dedup_pairs(topic, partition, s.recent.len());
    }
    if !tpl.elements().is_empty()
        && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
    {
        // Positions live in ClickHouse; the commit only bounds re-reading.
        ErrorKind::Commit.emit(Metric::Errors.name(), &e, "offset commit failed");
    }
    telemetry::BatchWritten {
        records: batch.records as u64,
        events: batch.events.len() as u64 - refused,
        dead_letters: batch.dead_letters.len() as u64,
        undecodable: batch.undecodable,
        event_bytes: batch.event_bytes as u64,
        dead_letter_bytes: batch.dead_letter_bytes as u64,
        first_stored: &batch.first_stored,
        stored_ms: clock::now_unix_millis(),
        refused,
        skipped_stored: batch.skipped_stored,
        skipped_duplicates: batch.skipped_duplicates,
        bytes: batch.bytes as u64,
        seconds: started.elapsed().as_secs_f64(),
        look_up_seconds,
        vouched,
    }
    .emit();
    batch.reset();
    Ok(())
}

/// The look-ups a batch sent while it filled: the answers for its first
/// `rows` rows (`Batch::look_up_ahead`).
pub(super) struct LookedUp {
    pub answers: Vec<Pending>,
    pub rows: usize,
}

/// Whether a flush looks `rows` up in the dedup index at all.
fn looks_up(rows: &EventRows, cfg: &SinkConfig) -> bool {
    cfg.dedup_index && !rows.is_empty()
}

/// Drops from `rows` every (tenant, event id, revision) the dedup index
/// holds: copies of revisions stored at any time, beyond the in-memory
/// window of recent pairs (`sink.dedup_window`), less the rows enrich
/// vouched for as new revisions, which are not asked for
/// ([`EventIds::keys`]). The rows `ahead` covers
/// were looked up while the batch filled; the rest are looked up now, by
/// the index's primary key (tenant, hour, event id): the keys travel as
/// external data ([`EventIds`]), and the `IN` set prunes the index to the
/// batch's hours.
/// A look-up sent ahead that failed is not retried on its own: the whole
/// batch is looked up again here, through the outage. Returns how many
/// were dropped (their offsets are still committed: a copy stores
/// nothing).
async fn drop_stored_anywhere(
    ids: &EventIds,
    ahead: LookedUp,
    rows: &mut EventRows,
    positions: &mut Positions,
    cfg: &SinkConfig,
    retrying: Retrying<'_>,
) -> Result<u64, SinkError> {
    if !looks_up(rows, cfg) {
        return Ok(0);
    }
    let mut stored = Vec::new();
    let mut from = ahead.rows.min(rows.len());
    for answer in ahead.answers {
        if from == 0 {
            // The whole batch is looked up again below.
            answer.abort();
            continue;
        }
        let failed = match answer.await {
            Ok(Ok(found)) => {
                stored.extend(found);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        telemetry::insert_error("event_ids", "transient");
        tracing::warn!(error = %failed, "event_ids look-up sent ahead failed; looking the whole batch up again");
        from = 0;
    }
    let policy = retry_policy(cfg);
    let mut attempt = 0;
    while from < rows.len() {
        retrying.held()?;
        attempt += 1;
        match ids.stored(ids.keys(rows.iter_from(from))).await {
            Ok(found) => {
                recovered(retrying.readiness, attempt);
                stored.extend(found);
                break;
            }
            Err(e) if e.is_transient() => {
                retrying.readiness.fail(
                    Reason::ClickHouseUnreachable,
                    format_args!("looking up stored event ids, attempt {attempt}: {e}"),
                );
                // The write path's first ClickHouse call of a flush: its
                // failures count with the inserts', under its own table.
                telemetry::insert_error("event_ids", "transient");
                telemetry::InsertRetried {
                    table: "event_ids",
                    attempt,
                    error: &e.to_string(),
                }
                .emit();
                retrying.wait(&policy, attempt).await?;
            }
            Err(e) => {
                telemetry::insert_error("event_ids", "permanent");
                return Err(e);
            }
        }
    }
    if stored.is_empty() {
        return Ok(0);
    }
    // Borrowed: a row is checked without copying its tenant and id.
    let stored: std::collections::HashSet<(&str, &str, u32)> = stored
        .iter()
        .map(|(tenant, id, revision)| (tenant.as_str(), id.as_str(), *revision))
        .collect();
    let before = rows.len();
    rows.retain(|r| {
        let copy = stored.contains(&(r.tenant, r.event_id, r.revision));
        if copy {
            positions.uncount(r.topic, r.partition);
        }
        !copy
    });
    Ok((before - rows.len()) as u64)
}

/// Inserts `rows` into `events`. When ClickHouse refuses the data itself,
/// the rows are split in halves, in offset order, down to the single rows
/// it refuses; each goes to `dead_letters` (`refused = 1`) before any later
/// row is inserted, so that every offset below the stored position is
/// accounted for whenever the sink stops. Returns how many were refused.
async fn insert_events(
    client: &Client,
    rows: &EventRows,
    cfg: &SinkConfig,
    retrying: Retrying<'_>,
) -> Result<u64, SinkError> {
    let mut refused = 0;
    // Ranges still to insert, the next one last.
    let mut todo = vec![(0, rows.len())];
    while let Some((lo, hi)) = todo.pop() {
        let chunk = EventBlock {
            rows,
            range: lo..hi,
        };
        let e = match insert_with_retry(client, "events", &chunk, cfg, retrying).await {
            Ok(()) => continue,
            Err(SinkError::InsertFailed { source, .. }) if source.is_refused_data() => {
                telemetry::insert_error("events", "refused");
                source
            }
            Err(e) => return Err(e),
        };
        if hi - lo == 1 {
            let row = rows.get(lo);
            let dead = DeadLetterRow::refused(row, clock::now_unix_millis(), e.to_string());
            tracing::warn!(event_id = %row.event_id, error = %e, "row refused by ClickHouse; dead-lettered");
            insert_with_retry(
                client,
                "dead_letters",
                std::slice::from_ref(&dead),
                cfg,
                retrying,
            )
            .await?;
            refused += 1;
        } else {
            tracing::warn!(rows = hi - lo, error = %e, "insert refused; bisecting");
            let mid = lo + (hi - lo) / 2;
            todo.push((mid, hi));
            todo.push((lo, mid));
        }
    }
    Ok(refused)
}

/// Inserts `rows` into `table` as one block, retrying transient failures
/// by the [`retry_policy`] for as long as they last. After a failed
/// attempt, the next one is made only once ClickHouse answered that the
/// failed one did not land (its answer may have been lost): an insert is
/// one block, so one stored row means all are.
async fn insert_with_retry<B: Block + ?Sized>(
    client: &Client,
    table: &'static str,
    rows: &B,
    cfg: &SinkConfig,
    retrying: Retrying<'_>,
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let policy = retry_policy(cfg);
    let mut attempt = 0;
    // Whether the last attempt's fate is unknown (checked before the next).
    let mut unknown = false;
    loop {
        retrying.held()?;
        attempt += 1;
        let result = if unknown {
            match landed(client, table, rows).await {
                Ok(true) => Ok(()),
                Ok(false) => rows.insert_once(client, table).await,
                Err(e) => Err(e),
            }
        } else {
            rows.insert_once(client, table).await
        };
        match result {
            Ok(()) => {
                recovered(retrying.readiness, attempt);
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                // An insert that failed may still have landed; so may one
                // whose check failed.
                unknown = true;
                retrying.readiness.fail(
                    Reason::ClickHouseUnreachable,
                    format_args!("insert into {table}, attempt {attempt}: {e}"),
                );
                telemetry::insert_error(table, "transient");
                telemetry::InsertRetried {
                    table,
                    attempt,
                    error: &e.to_string(),
                }
                .emit();
                retrying.wait(&policy, attempt).await?;
            }
            Err(e) => {
                if !e.is_refused_data() {
                    telemetry::insert_error(table, "permanent");
                }
                return Err(SinkError::InsertFailed {
                    table,
                    attempts: attempt,
                    source: Box::new(e),
                });
            }
        }
    }
}

/// Clears the outage reason once a call that had to be retried succeeds.
pub(super) fn recovered(readiness: &Readiness, attempts: u32) {
    if attempts > 1 && readiness.holds(Reason::ClickHouseUnreachable) {
        tracing::info!(attempts, "ClickHouse answers again");
    }
    readiness.clear(Reason::ClickHouseUnreachable);
}

/// Whether the block `rows` is already in `table`: the highest-offset row
/// of each (topic, partition) in it is. An insert is one block, so one
/// row would tell, were it sure to be this block's; but a row can be
/// stored already from an earlier block (the sink's `DECODE` row of an
/// enriched record read again after a restart), and taken for this one
/// it left the block's other rows unwritten, and committed.
async fn landed<B: Block + ?Sized>(
    client: &Client,
    table: &str,
    rows: &B,
) -> Result<bool, SinkError> {
    let mut last: std::collections::BTreeMap<(&str, i32), i64> = Default::default();
    for (topic, partition, offset) in rows.positions() {
        let o = last.entry((topic, partition)).or_insert(offset);
        *o = (*o).max(offset);
    }
    if last.is_empty() {
        return Ok(false);
    }
    let which = vec!["(kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ?)"; last.len()]
        .join(" OR ");
    let mut query = client.query(&format!(
        "SELECT uniqExact(kafka_topic, kafka_partition, kafka_offset) FROM {table} WHERE {which}"
    ));
    for ((topic, partition), offset) in &last {
        query = query.bind(*topic).bind(*partition).bind(*offset);
    }
    let n: u64 = query.fetch_one().await.map_err(SinkError::clickhouse)?;
    Ok(n == last.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{super::event_ids::Stored, *};

    /// Once the group took the partitions (librdkafka left the group: no
    /// poll for `max.poll.interval.ms` while ClickHouse was away), no
    /// further attempt is made: the rows are their new owner's to write,
    /// and an attempt here could store them beside its own.
    #[tokio::test]
    async fn no_attempt_is_made_once_the_partitions_are_taken() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port, released");
        let client = crate::ClickHouseConfig {
            url: format!("http://{closed}"),
            database: "d".into(),
            user: "default".into(),
            password: String::new(),
            cluster: None,
            compression: Default::default(),
        }
        .client();
        let stop = CancellationToken::new();
        let readiness = xoflow_common::admin::Health::new().register("sink");
        let checks = AtomicU32::new(0);
        // Held for two attempts, taken before the third.
        let lost = || checks.fetch_add(1, Ordering::AcqRel) >= 2;
        let retrying = Retrying {
            stop: &stop,
            readiness: &readiness,
            lost: &lost,
        };
        let rows = super::super::event_ids::testing::rows(0, [1]);
        let block = EventBlock {
            rows: &rows,
            range: 0..1,
        };
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            insert_with_retry(&client, "events", &block, &config(), retrying),
        )
        .await
        .expect("no attempt once the partitions are taken");
        assert!(matches!(out, Err(SinkError::AssignmentLost)), "{out:?}");
        assert_eq!(
            checks.load(Ordering::Acquire),
            3,
            "asked before each attempt"
        );
    }

    fn config() -> SinkConfig {
        SinkConfig {
            group_id: "g".into(),
            batch_rows: 3,
            batch_bytes: 1 << 20,
            batch_max_wait: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(1),
            retry_max_backoff: Duration::from_millis(1),
            stall_timeout: Duration::from_secs(60),
            dedup_window: 1,
            dedup_index: true,
            look_up_new_revisions: false,
            insert_retries: None,
        }
    }

    /// `drop_stored_anywhere` with the look-ups sent ahead answering
    /// `answers` for the first `covered` of three rows, against a server
    /// nobody answers on, stopped at its first wait.
    async fn drop_stored(
        answers: Vec<Result<Stored, SinkError>>,
        covered: usize,
    ) -> (Result<u64, SinkError>, usize) {
        use super::super::event_ids::testing::*;
        let mut rows = rows(0, 1..=3);
        let ahead = LookedUp {
            answers: answers
                .into_iter()
                .map(|a| tokio::spawn(async move { a }))
                .collect(),
            rows: covered,
        };
        let stop = CancellationToken::new();
        stop.cancel();
        let readiness = xoflow_common::admin::Health::new().register("sink");
        let retrying = Retrying {
            stop: &stop,
            readiness: &readiness,
            lost: &|| false,
        };
        let out = drop_stored_anywhere(
            &unreachable(),
            ahead,
            &mut rows,
            &mut Positions::default(),
            &config(),
            retrying,
        )
        .await;
        (out, rows.len())
    }

    #[tokio::test]
    async fn answers_sent_ahead_drop_copies_and_a_failed_one_asks_again() {
        let stored = |id: &str| Ok(vec![("shop".to_owned(), id.to_owned(), 0)]);
        // Every row answered ahead: no look-up at the flush (the server
        // would refuse it), and the copy found is dropped.
        let (out, left) = drop_stored(vec![stored("e-2")], 3).await;
        assert_eq!(out.expect("no look-up needed"), 1);
        assert_eq!(left, 2);
        // The last row not covered: it is looked up at the flush.
        let (out, _) = drop_stored(vec![stored("e-2")], 2).await;
        assert!(matches!(out, Err(SinkError::Stopped)), "{out:?}");
        // One answer failed: the whole batch is looked up again.
        let failed = Err(SinkError::ClickHouse {
            message: "connection refused".into(),
            code: None,
            transient: true,
        });
        let (out, left) = drop_stored(vec![failed, stored("e-2")], 3).await;
        assert!(matches!(out, Err(SinkError::Stopped)), "{out:?}");
        assert_eq!(left, 3);
    }

    #[test]
    fn insert_retries_wait_as_configured() {
        let cfg = SinkConfig {
            batch_rows: 1,
            batch_bytes: 1,
            retry_backoff: Duration::from_secs(2),
            retry_max_backoff: Duration::from_secs(30),
            ..config()
        };
        let p = retry_policy(&cfg);
        let waits: Vec<u64> = (1..=6).map(|a| p.delay(a).as_secs()).collect();
        // Doubling from retry_backoff, capped at retry_max_backoff; jitter
        // only shortens a wait.
        assert_eq!(waits, [2, 4, 8, 16, 30, 30]);
        assert!(p.wait(1_000) <= Duration::from_secs(30));
        // An outage of any length is ridden out.
        assert!(p.retries_after(u32::MAX - 1));
    }
}
