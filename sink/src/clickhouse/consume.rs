//! The consume half of the sink loop: fill a batch from Kafka, hand it to
//! [`insert::flush`](super::insert) to write and commit.
//!
//! In: records of the enriched and dead-letter topics, and the revocations
//! the consumer's [`RebalanceLog`] recorded. Out: [`Batch`]es of rows with
//! their lineage. A batch flushes on whichever comes first of `batch_rows`, `batch_bytes`
//! or `batch_max_wait` since its first record, as one INSERT per table.
//! The loop does not read Kafka while it writes (rebalances must not
//! interleave with a write, docs/clickhouse.md, "Exactly once", point 4), so
//! records arriving meanwhile wait in the consumer's queue: a batch whose
//! first record waited through the previous write counts its age from that
//! write's start, and a due batch still takes what is already waiting
//! before it flushes. Under load that makes one insert per `batch_max_wait`
//! from start to start, as a loop reading while it writes would, instead
//! of the write's duration plus `batch_max_wait`.
//! Records already stored (by offset) or already written (by event id and
//! revision) are skipped, using the positions read from ClickHouse itself
//! ([`super::position`]), so that after any crash, restart or rebalance no
//! event is written twice. Undecodable records become `DECODE` dead letters
//! in the same batch. ClickHouse reads (the migration, a partition's
//! position) are retried through an outage like inserts, and a watchdog
//! task (`xoflow_common::kafka::watch`) tells readiness when the sink stalls.

use std::time::Duration;

use rdkafka::{
    Offset,
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::{Readiness, Reason},
    clock,
    dead_letter::{self, Stage},
    kafka::{
        KafkaConfig,
        close::Closing,
        watch::{self, Watched},
    },
    rebalance::{Change, Keep, RebalanceLog},
    resume,
    telemetry::ErrorKind,
};
use xoflow_proto::{Message as _, v1::DeadLetter};

use super::{
    ClickHouseConfig, SinkConfig, SinkError,
    event_ids::{EventIds, Pending},
    insert::{Retrying, flush, recovered, retry_policy},
    migrate,
    position::{self, Input, Positions, Resume},
    row::{DeadLetterRow, EventRows, Lineage},
};
use crate::telemetry::{self, Metric};

/// How long a seek may wait for the consumer's fetcher.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows waiting to be written, and the offsets they cover.
#[derive(Default)]
pub(super) struct Batch {
    pub events: EventRows,
    pub dead_letters: Vec<DeadLetterRow>,
    /// Encoded bytes taken in, for the memory bound.
    pub bytes: usize,
    pub records: usize,
    pub skipped_stored: u64,
    pub skipped_duplicates: u64,
    /// Where the batch's age counts from: its first record's arrival, or
    /// the start of the previous write when that record waited through it.
    pub started: Option<Instant>,
    /// Records the sink could not decode (dead-lettered as `DECODE`).
    pub undecodable: u64,
    /// Encoded bytes of the records that became `events` rows, and
    /// `dead_letters` rows.
    pub event_bytes: usize,
    pub dead_letter_bytes: usize,
    /// (occurred, received), Unix milliseconds, of each revision-0 event
    /// row: the freshness histograms' input once the batch is stored.
    pub first_stored: Vec<(i64, i64)>,
    /// The `event_ids` look-ups of `events[..looked_up]`, sent while the
    /// rest of the batch was read ([`Batch::look_up_ahead`]).
    pub ahead: Vec<Pending>,
    pub looked_up: usize,
}

/// Rows per look-up sent ahead of the flush: a fifth of a full batch
/// (10,000 at the default `batch_rows`), so that a request's own cost is
/// small beside its keys' and most of a batch is answered by the time it
/// is written.
fn look_ahead_rows(cfg: &SinkConfig) -> usize {
    (cfg.batch_rows / 5).max(100)
}

impl Batch {
    /// Empties the batch for the next one, keeping the vectors' memory: a
    /// fresh 50k-row vector per flush cost more in page faults (the kernel
    /// zeroing new pages) than the inserts themselves.
    pub fn reset(&mut self) {
        self.events.clear();
        self.dead_letters.clear();
        self.bytes = 0;
        self.records = 0;
        self.skipped_stored = 0;
        self.skipped_duplicates = 0;
        self.started = None;
        self.undecodable = 0;
        self.event_bytes = 0;
        self.dead_letter_bytes = 0;
        self.first_stored.clear();
        self.forget_look_ups();
    }

    /// Forgets everything read from a partition this sink no longer owns.
    fn drop_partition(&mut self, topic: &str, partition: i32) {
        self.events
            .retain(|r| !(r.topic == topic && r.partition == partition));
        self.dead_letters
            .retain(|r| !(r.kafka_topic == topic && r.kafka_partition == partition));
        // The rows moved: the flush looks the whole batch up.
        self.forget_look_ups();
    }

    /// Stops the look-ups still running: their rows are gone.
    fn forget_look_ups(&mut self) {
        for lookup in self.ahead.drain(..) {
            lookup.abort();
        }
        self.looked_up = 0;
    }

    /// Sends the `event_ids` look-up of the rows added since the last one
    /// once there are `rows` of them ([`look_ahead_rows`]), on a task of
    /// its own, and returns whether it did. The flush then waits only for
    /// the last rows' answer (the look-up was a tenth of the sink's cycle,
    /// BENCHMARKS.md "B3: a settled baseline").
    ///
    /// Asking before the flush sees the same stored rows: every copy of a
    /// (tenant, event id, revision) is in one partition (the enriched
    /// topic is keyed by event id), which only this sink writes while it
    /// owns it; what it wrote before is stored, since the previous flush
    /// returned, and so is a previous owner's last insert (waited for
    /// before the position was read). Copies within the batch are the
    /// in-memory window's, as before.
    fn look_up_ahead(&mut self, ids: &EventIds, rows: usize) -> bool {
        if self.events.len() - self.looked_up < rows {
            return false;
        }
        let body = EventIds::body(ids.keys(self.events.iter_from(self.looked_up)));
        self.looked_up = self.events.len();
        let ids = ids.clone();
        self.ahead
            .push(tokio::spawn(async move { ids.send(body).await }));
        true
    }
}

impl Drop for Batch {
    /// A sink that stops, or fails, stops its look-ups too.
    fn drop(&mut self) {
        self.forget_look_ups();
    }
}

/// Runs the sink until `stop` is cancelled: migrates, then consumes. A
/// ClickHouse outage is ridden out (see `clickhouse::insert`); shutdown during
/// one returns at once, with nothing committed past what was written.
pub async fn run(
    kafka: &KafkaConfig,
    ch: &ClickHouseConfig,
    cfg: &SinkConfig,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), SinkError> {
    telemetry::init();
    if let Some(n) = cfg.insert_retries {
        tracing::warn!(
            insert_retries = n,
            "sink.insert_retries is ignored: transient insert failures are retried until ClickHouse answers (sink.retry_max_backoff bounds each wait)"
        );
    }
    match consume(kafka, ch, cfg, &readiness, &stop).await {
        Err(SinkError::Stopped) => {
            readiness.set(false);
            tracing::warn!(
                "sink stopped while ClickHouse was unreachable; what was not written is not committed and will be read again"
            );
            Ok(())
        }
        other => other,
    }
}

/// Retries a ClickHouse read (the start-up migration, a partition's
/// position) through transient failures, like an insert.
async fn with_retry<T, F, Fut>(
    cfg: &SinkConfig,
    retrying: Retrying<'_>,
    what: &'static str,
    mut call: F,
) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let policy = retry_policy(cfg);
    let mut attempt = 0;
    loop {
        retrying.held()?;
        attempt += 1;
        match call().await {
            Ok(v) => {
                recovered(retrying.readiness, attempt);
                return Ok(v);
            }
            Err(e) if e.is_transient() => {
                retrying.readiness.fail(
                    Reason::ClickHouseUnreachable,
                    format_args!("{what}, attempt {attempt}: {e}"),
                );
                tracing::warn!(attempt, error = %e, "{what} failed; retrying");
                ErrorKind::ClickHouse.count(Metric::Errors.name());
                retrying.wait(&policy, attempt).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn consume(
    kafka: &KafkaConfig,
    ch: &ClickHouseConfig,
    cfg: &SinkConfig,
    readiness: &Readiness,
    stop: &CancellationToken,
) -> Result<(), SinkError> {
    let retrying = Retrying {
        stop,
        readiness,
        lost: &|| false,
    };
    with_retry(cfg, retrying, "migration", || migrate(ch)).await?;
    let topics = &kafka.topics;
    // Started during a broker outage: wait for it, not ready, rather than
    // exit.
    let created = kafka
        .await_topics(
            &[&topics.enriched, &topics.dead_letters],
            &[],
            readiness,
            stop,
        )
        .await
        .map_err(SinkError::Kafka)?;
    if !created {
        return Ok(());
    }
    let client = ch.client();
    let ids = EventIds::new(ch, cfg.look_up_new_revisions);
    // Keeps revocations only: an assigned partition's position is read on
    // its first record.
    // Dropped, it leaves its group on a thread of its own: a broker that
    // is away holds up no worker (`xoflow_common::kafka::close`).
    let consumer: std::sync::Arc<Closing<StreamConsumer<RebalanceLog>>> = kafka
        .consumer(
            &cfg.group_id,
            RebalanceLog::new("sink", Keep::Revoked).counting_errors(Metric::Errors.name()),
        )
        .map(|c| std::sync::Arc::new(Closing::new(c)))
        .map_err(SinkError::Kafka)?;
    consumer
        .subscribe(&[&topics.enriched, &topics.dead_letters])
        .map_err(SinkError::Kafka)?;
    readiness.set(true);
    tracing::info!(group = %cfg.group_id, database = %ch.database, "sink started");
    // Stopped with the loop, however the loop ends.
    let watch_stop = stop.child_token();
    let _stop_watch = watch_stop.clone().drop_guard();
    let watched = {
        let consumer = consumer.clone();
        Watched {
            group: cfg.group_id.clone(),
            topics: vec![topics.enriched.clone(), topics.dead_letters.clone()],
            held: Box::new(move || watch::held(&**consumer)),
            lag_metric: Metric::ConsumerLag.name(),
        }
    };
    tokio::spawn(watch::watch(
        kafka.clone(),
        vec![watched],
        cfg.stall_timeout,
        readiness.clone(),
        watch_stop,
    ));

    let lost = || consumer.assignment_lost();
    let retrying = Retrying {
        lost: &lost,
        ..retrying
    };
    let mut positions = Positions::default();
    let mut batch = Batch::default();
    let look_ahead = look_ahead_rows(cfg);
    // One stop future and one timer for the whole run, polled only when no
    // record is ready: polling either takes a lock (a fresh timer registers
    // with the driver), which a record must not pay. Under load the batch
    // age is read from the clock instead, and stop is checked per flush.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep(cfg.batch_max_wait);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // When the last write began, while records are waiting that arrived
    // during it: the next batch's age counts from then (see `Batch`).
    let mut written_from: Option<Instant> = None;
    loop {
        let deadline = batch.started.map(|s| s + cfg.batch_max_wait);
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        // A due batch still takes what is already waiting, as it would have
        // had the sink been reading during the write; so does a batch not
        // yet begun after a write.
        let waiting = if due || written_from.is_some() {
            tokio::select! {
                biased;
                m = consumer.recv() => Some(m),
                () = std::future::ready(()) => None,
            }
        } else {
            None
        };
        let msg = match waiting {
            Some(m) => Some(m),
            None if due => None,
            None => {
                written_from = None;
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
            }
        };
        // Revocations arrive inside recv(): handle them before the record
        // it returned, which may already come from a new assignment.
        drop_revoked(&consumer, &mut positions, &mut batch);
        match msg {
            Some(Ok(m)) => {
                if !positions.contains(m.topic(), m.partition()) {
                    let input = if m.topic() == topics.dead_letters {
                        Input::DeadLetters
                    } else {
                        Input::Enriched
                    };
                    let state =
                        match with_retry(cfg, retrying, "reading a partition's position", || {
                            position::load(
                                &client,
                                input,
                                m.topic(),
                                m.partition(),
                                cfg.dedup_window,
                            )
                        })
                        .await
                        {
                            Err(SinkError::AssignmentLost) => {
                                abandon(&mut batch, &mut positions);
                                continue;
                            }
                            state => state?,
                        };
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
                        resume::log_seek(
                            m.topic(),
                            m.partition(),
                            state.stored + 1,
                            m.offset(),
                            to,
                        );
                        consumer
                            .seek(m.topic(), m.partition(), Offset::Offset(to), SEEK_TIMEOUT)
                            .map_err(SinkError::Kafka)?;
                        continue;
                    }
                    Resume::Gap { from, to } => {
                        resume::log_gap(m.topic(), m.partition(), from, to);
                        telemetry::log_gap(m.topic(), m.partition(), to - from);
                    }
                }
                batch
                    .started
                    .get_or_insert_with(|| written_from.take().unwrap_or_else(Instant::now));
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
                        let (row, decoded) = decode_dead_letter(payload, lineage);
                        batch.undecodable += u64::from(!decoded);
                        batch.dead_letter_bytes += payload.len();
                        batch.dead_letters.push(row);
                    } else {
                        match batch.events.push(payload, lineage) {
                            Ok(row) => {
                                let first =
                                    state
                                        .recent
                                        .first_time(row.tenant, row.event_id, row.revision);
                                let stored = (row.revision == 0)
                                    .then_some((row.occurred_ms, row.received_ms));
                                if first {
                                    *rows += 1;
                                    batch.first_stored.extend(stored);
                                    batch.event_bytes += payload.len();
                                    if cfg.dedup_index && batch.look_up_ahead(&ids, look_ahead) {
                                        // A task spawned from a worker
                                        // waits in that worker's LIFO slot,
                                        // which no other worker steals, and
                                        // under load `recv` returns without
                                        // yielding: without this the
                                        // look-up would start only at the
                                        // next spawn or at the flush.
                                        tokio::task::yield_now().await;
                                    }
                                } else {
                                    batch.events.pop();
                                    batch.skipped_duplicates += 1;
                                }
                            }
                            Err(why) => {
                                batch.undecodable += 1;
                                batch.dead_letter_bytes += payload.len();
                                batch.dead_letters.push(undecodable(
                                    payload,
                                    lineage,
                                    "xoflow.v1.EnrichedEvent with an event and a payload",
                                    &why,
                                ));
                            }
                        }
                    }
                }
                if batch.records < cfg.batch_rows && batch.bytes < cfg.batch_bytes {
                    continue;
                }
            }
            Some(Err(e)) => {
                ErrorKind::Consume.emit(Metric::Errors.name(), &e, "kafka consumer error");
                continue;
            }
            None => {}
        }
        let write_began = Instant::now();
        let wrote = batch.records > 0;
        match flush(
            &client,
            &ids,
            &consumer,
            cfg,
            &mut batch,
            &mut positions,
            retrying,
        )
        .await
        {
            Err(SinkError::AssignmentLost) => {
                abandon(&mut batch, &mut positions);
                continue;
            }
            flushed => flushed?,
        }
        written_from = wrote.then_some(write_began);
        if stop.is_cancelled() {
            break;
        }
    }
    // Draining: write what is buffered and commit it before returning.
    readiness.set(false);
    drop_revoked(&consumer, &mut positions, &mut batch);
    match flush(
        &client,
        &ids,
        &consumer,
        cfg,
        &mut batch,
        &mut positions,
        retrying,
    )
    .await
    {
        // Taken out of the group just before stopping: the batch is the
        // new owner's.
        Err(SinkError::AssignmentLost) => abandon(&mut batch, &mut positions),
        flushed => flushed?,
    }
    tracing::info!("sink stopped");
    Ok(())
}

/// Leaves the batch to the partitions' new owner once the group took them
/// while ClickHouse was retried ([`SinkError::AssignmentLost`]): nothing of
/// it is written or committed here, and every position is read again from
/// ClickHouse when a partition comes back (the next poll rejoins).
fn abandon(batch: &mut Batch, positions: &mut Positions) {
    tracing::warn!(
        records = batch.records,
        "the group took this sink's partitions while it retried ClickHouse: its batch is left to their new owner"
    );
    ErrorKind::Rebalance.count(Metric::Errors.name());
    batch.reset();
    positions.clear();
}

/// Forgets the partitions revoked since the last call: their positions and
/// their rows not yet written (the new owner reads them again).
fn drop_revoked(
    consumer: &StreamConsumer<RebalanceLog>,
    positions: &mut Positions,
    batch: &mut Batch,
) {
    for change in consumer.context().take() {
        if let Change::Revoked { topic, partition } = change {
            positions.remove(&topic, partition);
            batch.drop_partition(&topic, partition);
        }
    }
}

/// The row of a dead-letter record, and whether it decoded (else it is the
/// sink's own `DECODE` dead letter of it).
fn decode_dead_letter(payload: &[u8], lineage: Lineage<'_>) -> (DeadLetterRow, bool) {
    match DeadLetter::decode(payload) {
        Ok(d) => (DeadLetterRow::from_dead_letter(d, lineage), true),
        Err(e) => (
            undecodable(payload, lineage, "xoflow.v1.DeadLetter", &e),
            false,
        ),
    }
}

/// The `DECODE` dead letter of a record the sink cannot read, with the
/// record's own lineage.
fn undecodable(
    payload: &[u8],
    l: Lineage<'_>,
    expected: &str,
    error: &dyn std::fmt::Display,
) -> DeadLetterRow {
    let d = dead_letter::undecodable(
        Stage::Sink,
        payload,
        (l.topic, l.partition, l.offset),
        expected,
        error,
        clock::now_unix_millis(),
    );
    DeadLetterRow::from_dead_letter(d, l)
}

#[cfg(test)]
mod tests {
    use super::{super::event_ids::testing::*, *};

    #[tokio::test]
    async fn look_ups_sent_ahead_follow_the_rows_they_cover() {
        let ids = unreachable();
        let mut batch = Batch::default();
        for offset in 0..2 {
            push(&mut batch.events, 0, offset);
        }
        assert!(!batch.look_up_ahead(&ids, 3), "two rows of three");
        push(&mut batch.events, 1, 2);
        assert!(batch.look_up_ahead(&ids, 3));
        assert_eq!((batch.looked_up, batch.ahead.len()), (3, 1));
        push(&mut batch.events, 1, 3);
        assert!(!batch.look_up_ahead(&ids, 3), "one row since the last");
        let first = batch.ahead[0].abort_handle();

        // Rows of a revoked partition go, the others move: no look-up
        // covers an index any more, and the running ones stop.
        batch.drop_partition("enriched", 1);
        assert_eq!(batch.events.len(), 2);
        assert_eq!((batch.looked_up, batch.ahead.len()), (0, 0));
        tokio::task::yield_now().await;
        assert!(first.is_finished());

        push(&mut batch.events, 0, 4);
        assert!(batch.look_up_ahead(&ids, 3));
        let second = batch.ahead[0].abort_handle();
        batch.reset();
        assert_eq!((batch.looked_up, batch.ahead.len()), (0, 0));

        for offset in 5..8 {
            push(&mut batch.events, 0, offset);
        }
        assert!(batch.look_up_ahead(&ids, 3));
        let third = batch.ahead[0].abort_handle();
        drop(batch);
        tokio::task::yield_now().await;
        assert!(second.is_finished() && third.is_finished());
    }
}
