//! The sink's internal events; emitted once per batch or retry.

use metrics::{counter, histogram};

pub(crate) const ROWS_WRITTEN: &str = "xoflow_sink_rows_written_total";
pub(crate) const BYTES_IN: &str = "xoflow_sink_input_bytes_total";
pub(crate) const FLUSH_DURATION: &str = "xoflow_sink_flush_duration_seconds";
pub(crate) const INSERT_RETRIES: &str = "xoflow_sink_insert_retries_total";
pub(crate) const RECORDS_SKIPPED: &str = "xoflow_sink_records_skipped_total";

/// A batch was inserted and its offsets committed.
pub(crate) struct BatchWritten {
    pub events: u64,
    pub dead_letters: u64,
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
