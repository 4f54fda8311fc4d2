//! The sink's internal events and the one list of its metric names.
//!
//! Each event writes its log line and bumps its counters with the same
//! bounded tags; the names follow `xoflow_sink_<what>_<unit>[_total]` and
//! are listed in `docs/clickhouse.md`.

use metrics::{counter, gauge, histogram};
use xoflow_common::{
    dead_letter::Reason,
    telemetry::{AGE_BUCKETS, record_batch},
};

/// Every metric the sink reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// Rows inserted, by `table`.
    RowsWritten,
    /// Encoded bytes of the records taken in.
    InputBytes,
    /// How long writing and committing one batch took.
    FlushDuration,
    /// Of a flush, the wait for its `event_ids` look-ups (histogram; only
    /// with `sink.dedup_index` on).
    LookUpDuration,
    /// Rows not looked up in the dedup index: enrich vouched for them as
    /// new revisions.
    RowsVouched,
    /// Insert attempts that failed transiently, by `table`.
    InsertRetries,
    /// Records not written again, by `reason`.
    RecordsSkipped,
    /// Rows ClickHouse refused, written to `dead_letters` instead.
    RowsRefused,
    /// The offset committed per partition (gauge).
    PartitionNextOffset,
    /// Rows stored per partition (gauge).
    PartitionRowsStored,
    /// (event id, revision) pairs the dedup window of a partition holds
    /// (gauge; emptied once at least `dedup_window`, before its table
    /// would grow).
    PartitionDedupPairs,
    /// Offsets gone from a partition's log before they were stored.
    LogGapOffsets,
    /// Failures the sink logged and went on from, by `error`
    /// ([`ErrorKind`](xoflow_common::telemetry::ErrorKind)).
    Errors,
    /// Records taken in from the enriched and dead-letter topics.
    RecordsIn,
    /// Rows written to ClickHouse, every table.
    RecordsOut,
    /// Encoded bytes of the records whose rows were inserted, by `table`.
    InsertBytes,
    /// Failed inserts, by `table` and `error` (`transient`: retried;
    /// `refused`: the data refused, bisected down to the rows at fault;
    /// `permanent`: the sink stops).
    InsertErrors,
    /// Dead letters the sink wrote itself, by `reason` (`DECODE`,
    /// `CLICKHOUSE_REFUSED`).
    DeadLetters,
    /// From an event's `occurred_at` to its first revision stored
    /// (histogram).
    OccurredToStored,
    /// From an event's `received_at` (the collector's clock) to its first
    /// revision stored (histogram).
    ReceivedToStored,
    /// Records above this instance's consumer position, per `topic` and
    /// `partition` it holds (gauge; 0 for partitions it does not hold).
    ConsumerLag,
}

impl Metric {
    #[cfg(test)]
    pub(crate) const ALL: [Metric; 21] = [
        Metric::RowsWritten,
        Metric::InputBytes,
        Metric::FlushDuration,
        Metric::LookUpDuration,
        Metric::RowsVouched,
        Metric::InsertRetries,
        Metric::RecordsSkipped,
        Metric::RowsRefused,
        Metric::PartitionNextOffset,
        Metric::PartitionRowsStored,
        Metric::PartitionDedupPairs,
        Metric::LogGapOffsets,
        Metric::Errors,
        Metric::RecordsIn,
        Metric::RecordsOut,
        Metric::InsertBytes,
        Metric::InsertErrors,
        Metric::DeadLetters,
        Metric::OccurredToStored,
        Metric::ReceivedToStored,
        Metric::ConsumerLag,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Metric::RowsWritten => "xoflow_sink_rows_written_total",
            Metric::InputBytes => "xoflow_sink_input_bytes_total",
            Metric::FlushDuration => "xoflow_sink_flush_duration_seconds",
            Metric::LookUpDuration => "xoflow_sink_look_up_duration_seconds",
            Metric::RowsVouched => "xoflow_sink_rows_vouched_new_total",
            Metric::InsertRetries => "xoflow_sink_insert_retries_total",
            Metric::RecordsSkipped => "xoflow_sink_records_skipped_total",
            Metric::RowsRefused => "xoflow_sink_rows_refused_total",
            Metric::PartitionNextOffset => "xoflow_sink_partition_next_offset",
            Metric::PartitionRowsStored => "xoflow_sink_partition_rows_stored",
            Metric::PartitionDedupPairs => "xoflow_sink_partition_dedup_pairs",
            Metric::LogGapOffsets => "xoflow_sink_log_gap_offsets_total",
            Metric::Errors => "xoflow_sink_errors_total",
            Metric::RecordsIn => "xoflow_sink_records_in_total",
            Metric::RecordsOut => "xoflow_sink_records_out_total",
            Metric::InsertBytes => "xoflow_sink_insert_bytes_total",
            Metric::InsertErrors => "xoflow_sink_insert_errors_total",
            Metric::DeadLetters => "xoflow_sink_dead_letters_total",
            Metric::OccurredToStored => "xoflow_sink_occurred_to_stored_seconds",
            Metric::ReceivedToStored => "xoflow_sink_received_to_stored_seconds",
            Metric::ConsumerLag => "xoflow_sink_consumer_lag_records",
        }
    }
}

/// A batch was inserted and its offsets committed.
pub(crate) struct BatchWritten<'a> {
    /// Records taken in (stored before or not).
    pub records: u64,
    pub events: u64,
    pub dead_letters: u64,
    /// Of the dead letters, those the sink made of records it could not
    /// decode.
    pub undecodable: u64,
    /// Encoded bytes of the records whose rows went to `events` and to
    /// `dead_letters`.
    pub event_bytes: u64,
    pub dead_letter_bytes: u64,
    /// (occurred, received) in Unix milliseconds of the events stored for
    /// the first time (revision 0): repairs re-send old events and would
    /// read as stale data.
    pub first_stored: &'a [(i64, i64)],
    /// When ClickHouse acknowledged the batch, Unix milliseconds.
    pub stored_ms: i64,
    /// Rows ClickHouse refused, written to `dead_letters` instead.
    pub refused: u64,
    /// Records at or below the position already stored in ClickHouse.
    pub skipped_stored: u64,
    /// Records whose event id was already written.
    pub skipped_duplicates: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Of `seconds`, the wait for the `event_ids` look-ups (those sent
    /// ahead and the rest's); `None` when the batch was not looked up
    /// (`sink.dedup_index` off, or no `events` rows).
    pub look_up_seconds: Option<f64>,
    /// Rows written without a look-up: enrich vouched for them as new
    /// revisions (0 when the batch was not looked up).
    pub vouched: u64,
}

impl BatchWritten<'_> {
    pub fn emit(&self) {
        tracing::debug!(
            events = self.events,
            dead_letters = self.dead_letters,
            seconds = self.seconds,
            look_up_seconds = self.look_up_seconds,
            "batch written"
        );
        let rows = Metric::RowsWritten.name();
        counter!(rows, "table" => "events").increment(self.events);
        counter!(rows, "table" => "dead_letters").increment(self.dead_letters + self.refused);
        counter!(Metric::RowsRefused.name()).increment(self.refused);
        counter!(Metric::InputBytes.name()).increment(self.bytes);
        let skipped = Metric::RecordsSkipped.name();
        counter!(skipped, "reason" => "already_stored").increment(self.skipped_stored);
        counter!(skipped, "reason" => "duplicate_event_id").increment(self.skipped_duplicates);
        histogram!(Metric::FlushDuration.name()).record(self.seconds);
        // Apart from the insert: at half the peak a flush was mostly the
        // insert (BENCHMARKS.md, "What an insert costs ClickHouse").
        if let Some(s) = self.look_up_seconds {
            histogram!(Metric::LookUpDuration.name()).record(s);
        }
        counter!(Metric::RowsVouched.name()).increment(self.vouched);
        counter!(Metric::RecordsIn.name()).increment(self.records);
        counter!(Metric::RecordsOut.name())
            .increment(self.events + self.dead_letters + self.refused);
        let bytes = Metric::InsertBytes.name();
        counter!(bytes, "table" => "events").increment(self.event_bytes);
        counter!(bytes, "table" => "dead_letters").increment(self.dead_letter_bytes);
        let dead = Metric::DeadLetters.name();
        if self.undecodable > 0 {
            counter!(dead, "reason" => Reason::Decode.as_str()).increment(self.undecodable);
        }
        if self.refused > 0 {
            counter!(dead, "reason" => Reason::ClickHouseRefused.as_str()).increment(self.refused);
        }
        // Per batch, not per event (see `record_batch`).
        let now = self.stored_ms;
        record_batch(
            Metric::OccurredToStored.name(),
            &AGE_BUCKETS,
            self.first_stored
                .iter()
                .map(|&(o, _)| seconds_between(o, now)),
        );
        record_batch(
            Metric::ReceivedToStored.name(),
            &AGE_BUCKETS,
            self.first_stored
                .iter()
                .filter(|(_, r)| *r > 0)
                .map(|&(_, r)| seconds_between(r, now)),
        );
    }
}

/// Seconds from `from` to `to` (Unix milliseconds), never negative: a
/// source clock ahead of the sink's reads as fresh, not as negative age.
fn seconds_between(from: i64, to: i64) -> f64 {
    (to - from).max(0) as f64 / 1e3
}

/// Exports the counters of failures at 0 when the sink starts, so that
/// alerting on their increase works from the first failure.
pub(crate) fn init() {
    xoflow_common::telemetry::ErrorKind::init(Metric::Errors.name());
    for reason in [Reason::Decode, Reason::ClickHouseRefused] {
        counter!(Metric::DeadLetters.name(), "reason" => reason.as_str()).increment(0);
    }
    // The lookup in event_ids before each insert fails like an insert.
    for error in ["transient", "permanent"] {
        counter!(Metric::InsertErrors.name(), "table" => "event_ids", "error" => error)
            .increment(0);
    }
    for table in ["events", "dead_letters"] {
        for error in ["transient", "refused", "permanent"] {
            counter!(Metric::InsertErrors.name(), "table" => table, "error" => error).increment(0);
        }
        counter!(Metric::InsertBytes.name(), "table" => table).increment(0);
        counter!(Metric::RowsWritten.name(), "table" => table).increment(0);
    }
    counter!(Metric::RowsRefused.name()).increment(0);
}

/// An insert failed: counted by table and by what became of it.
pub(crate) fn insert_error(table: &'static str, error: &'static str) {
    counter!(Metric::InsertErrors.name(), "table" => table, "error" => error).increment(1);
}

/// An insert failed transiently and will be retried.
pub(crate) struct InsertRetried<'a> {
    pub table: &'static str,
    pub attempt: u32,
    pub error: &'a str,
}

impl InsertRetried<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            table = self.table,
            attempt = self.attempt,
            error = self.error,
            "insert failed; retrying"
        );
        counter!(Metric::InsertRetries.name(), "table" => self.table).increment(1);
    }
}

/// Where a partition stands after a flush: the reconciliation figure ops
/// compare (offsets committed vs rows stored; the difference is redelivered
/// copies dropped and records dead-lettered before the sink).
pub(crate) struct PartitionPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The offset committed: one past the highest stored.
    pub next_offset: i64,
    /// Rows of this partition in ClickHouse.
    pub rows_stored: u64,
}

impl PartitionPosition<'_> {
    pub fn emit(&self) {
        let labels = partition_labels(self.topic, self.partition);
        gauge!(Metric::PartitionNextOffset.name(), &labels).set(self.next_offset as f64);
        gauge!(Metric::PartitionRowsStored.name(), &labels).set(self.rows_stored as f64);
    }
}

/// The pairs a partition's dedup window holds, after a flush bounded it.
pub(crate) fn dedup_pairs(topic: &str, partition: i32, pairs: usize) {
    gauge!(
        Metric::PartitionDedupPairs.name(),
        &partition_labels(topic, partition)
    )
    .set(pairs as f64);
}

/// Offsets that were gone from a partition's log before the sink stored
/// them (retention ran ahead of the sink): data the sink could not read.
pub(crate) fn log_gap(topic: &str, partition: i32, offsets: i64) {
    let labels = partition_labels(topic, partition);
    counter!(Metric::LogGapOffsets.name(), &labels).increment(offsets.max(0) as u64);
}

/// Per-partition tags: bounded by the topics' partition counts.
fn partition_labels(topic: &str, partition: i32) -> [(&'static str, String); 2] {
    [
        ("topic", topic.to_owned()),
        ("partition", partition.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        for m in Metric::ALL {
            let n = m.name();
            assert!(n.starts_with("xoflow_sink_"), "{n}");
            let gauge_or_histogram = matches!(
                m,
                Metric::PartitionNextOffset
                    | Metric::PartitionRowsStored
                    | Metric::PartitionDedupPairs
                    | Metric::FlushDuration
                    | Metric::LookUpDuration
                    | Metric::OccurredToStored
                    | Metric::ReceivedToStored
                    | Metric::ConsumerLag
            );
            assert_eq!(n.ends_with("_total"), !gauge_or_histogram, "{n}");
        }
    }
}
