//! The sink's internal events; emitted once per batch or retry.

use metrics::{counter, gauge, histogram};

pub(crate) const ROWS_WRITTEN: &str = "xoflow_sink_rows_written_total";
pub(crate) const BYTES_IN: &str = "xoflow_sink_input_bytes_total";
pub(crate) const FLUSH_DURATION: &str = "xoflow_sink_flush_duration_seconds";
pub(crate) const INSERT_RETRIES: &str = "xoflow_sink_insert_retries_total";
pub(crate) const RECORDS_SKIPPED: &str = "xoflow_sink_records_skipped_total";
pub(crate) const ROWS_REFUSED: &str = "xoflow_sink_rows_refused_total";
pub(crate) const NEXT_OFFSET: &str = "xoflow_sink_partition_next_offset";
pub(crate) const ROWS_STORED: &str = "xoflow_sink_partition_rows_stored";
pub(crate) const LOG_GAP: &str = "xoflow_sink_log_gap_offsets_total";

/// A batch was inserted and its offsets committed.
pub(crate) struct BatchWritten {
    pub events: u64,
    pub dead_letters: u64,
    /// Rows ClickHouse refused, written to `dead_letters` instead.
    pub refused: u64,
    /// Records at or below the position already stored in ClickHouse.
    pub skipped_stored: u64,
    /// Records whose event id was already written.
    pub skipped_duplicates: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl BatchWritten {
    pub fn emit(&self) {
        tracing::debug!(
            events = self.events,
            dead_letters = self.dead_letters,
            seconds = self.seconds,
            "batch written"
        );
        counter!(ROWS_WRITTEN, "table" => "events").increment(self.events);
        counter!(ROWS_WRITTEN, "table" => "dead_letters").increment(self.dead_letters);
        counter!(ROWS_WRITTEN, "table" => "dead_letters").increment(self.refused);
        counter!(ROWS_REFUSED).increment(self.refused);
        counter!(BYTES_IN).increment(self.bytes);
        counter!(RECORDS_SKIPPED, "reason" => "already_stored").increment(self.skipped_stored);
        counter!(RECORDS_SKIPPED, "reason" => "duplicate_event_id")
            .increment(self.skipped_duplicates);
        histogram!(FLUSH_DURATION).record(self.seconds);
    }
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
        counter!(INSERT_RETRIES, "table" => self.table).increment(1);
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
        let labels = [
            ("topic", self.topic.to_owned()),
            ("partition", self.partition.to_string()),
        ];
        gauge!(NEXT_OFFSET, &labels).set(self.next_offset as f64);
        gauge!(ROWS_STORED, &labels).set(self.rows_stored as f64);
    }
}

/// Offsets that were gone from a partition's log before the sink stored
/// them (retention ran ahead of the sink): data the sink could not read.
pub(crate) fn log_gap(topic: &str, partition: i32, offsets: i64) {
    counter!(LOG_GAP, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .increment(offsets.max(0) as u64);
}
