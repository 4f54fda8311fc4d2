//! The ClickHouse sink: RowBinary inserts over HTTP through the official
//! `clickhouse` crate, batched by rows, bytes and time.
//!
//! Wire format: `INSERT INTO events (<columns>) FORMAT RowBinary`, one insert
//! per flushed batch per table. Row layout: [`row::EventRow`] and
//! [`row::DeadLetterRow`], named against the migrations in
//! `sink/migrations/`; a batch holds its `events` rows as the RowBinary
//! bytes `transcode` writes straight from the records ([`row::EventRows`]).
//!
//! Modules: `config` (`[sink]`, `[clickhouse]`), `consume` (the loop: fill a
//! batch from Kafka, its `run`), `insert` (write a batch, retry, bisect
//! refused rows, commit), `transcode` (a record's `events` row as RowBinary:
//! the per-row hot path), `event_ids` (the look-up of a batch's stored event
//! ids, with the keys sent as external data), [`position`] (where each partition stands, read
//! from ClickHouse), [`row`] (the rows), [`migrate`](mod@migrate) (the schema),
//! [`status`] (`xoflow sink-status`), [`retention`] (`xoflow retention`), `cluster` (the migrations rewritten
//! for a ClickHouse cluster). The watchdog that tells readiness
//! when the sink stalls is `xoflow_common::kafka::watch`. This module owns
//! [`SinkError`].

mod cluster;
mod config;
mod consume;
mod event_ids;
mod insert;
pub mod migrate;
pub mod position;
pub mod retention;
pub mod row;
pub mod status;
mod transcode;

pub use config::{ClickHouseConfig, ConfigError, SinkConfig};
pub use consume::run;
pub use migrate::{MIGRATIONS, MigrationReport, migrate};
pub use retention::{Retention, RetentionConfig, RetentionReport};
pub use status::{PartitionStatus, sink_status};

use rdkafka::error::KafkaError;
use xoflow_common::clickhouse_errors;

/// Why the sink stopped or a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "migration {version} ({name}) was changed after it was applied to {database}; add a new migration instead"
    )]
    MigrationChanged {
        version: u32,
        name: &'static str,
        database: String,
    },
    #[error("status task: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("clickhouse: {message}")]
    ClickHouse {
        message: String,
        code: Option<u32>,
        transient: bool,
    },
    #[error("kafka: {0}")]
    Kafka(#[source] KafkaError),
    /// Shutdown came while a ClickHouse call was being retried: nothing
    /// past what was written is committed.
    #[error("stopped while retrying ClickHouse")]
    Stopped,
    /// The group took this member's partitions while it retried
    /// ClickHouse without polling (`max.poll.interval.ms`): its batch is
    /// left to their new owner, and the loop polls again to rejoin.
    #[error("partitions taken by the group while retrying ClickHouse")]
    AssignmentLost,
    #[error("insert into {table} failed after {attempts} attempts: {source}")]
    InsertFailed {
        table: &'static str,
        attempts: u32,
        source: Box<SinkError>,
    },
}

impl SinkError {
    /// Folds a client error into the sink's error, deciding whether a retry
    /// can help: network trouble and server overload can, a bad query or a
    /// bad row can't. An error answer without a server code (a proxy's 502
    /// while the server behind it restarts, its 413 for a body over its
    /// limit) goes by its HTTP status
    /// ([`clickhouse_errors::codeless_answer_is_transient`]): stopping the
    /// sink on a 502 would turn a restart of ClickHouse into an outage of
    /// the sink.
    pub fn clickhouse(e: clickhouse::error::Error) -> Self {
        let c = clickhouse_errors::classify(&e);
        SinkError::ClickHouse {
            message: c.message,
            code: c.code,
            transient: c.transient,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::ClickHouse { transient, .. } => *transient,
            SinkError::Kafka(e) => xoflow_common::kafka::ErrorClass::of(e).is_transient(),
            SinkError::Config(_)
            | SinkError::MigrationChanged { .. }
            | SinkError::Task(_)
            | SinkError::Stopped
            | SinkError::AssignmentLost
            | SinkError::InsertFailed { .. } => false,
        }
    }

    /// Whether ClickHouse refused the data itself (a value it cannot parse
    /// or store, a constraint): a smaller insert without the offending row
    /// would succeed. Schema, permission and server errors are not refusals
    /// of data; for those the sink stops rather than dead-letter every row.
    pub fn is_refused_data(&self) -> bool {
        server_code(self).is_some_and(|c| REFUSED_DATA_CODES.contains(&c))
    }
}

/// The server's error code (`Code: N` in its answer), when there is one.
pub fn server_code(e: &SinkError) -> Option<u32> {
    match e {
        SinkError::ClickHouse { code, .. } => *code,
        _ => None,
    }
}

/// Server errors about the inserted values: parse failures, out-of-range
/// values, unknown enum elements, failed `throwIf` defaults and CHECK
/// constraints.
const REFUSED_DATA_CODES: &[u32] = &[
    6, 27, 33, 36, 38, 41, 53, 69, 70, 72, 117, 131, 321, 395, 469, 691,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_are_read_from_the_answer() {
        let e = |m: &str| SinkError::ClickHouse {
            message: m.into(),
            code: clickhouse_errors::server_code(m),
            transient: false,
        };
        let refused = e(
            "bad response: Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero",
        );
        assert_eq!(server_code(&refused), Some(395));
        assert!(refused.is_refused_data());
        let missing = e(
            "bad response: Code: 60, e.displayText() = DB::Exception: Table x.events doesn't exist.",
        );
        assert_eq!(server_code(&missing), Some(60));
        assert!(!missing.is_refused_data());
        assert_eq!(server_code(&e("connection reset")), None);
    }

    #[test]
    fn answers_without_a_code_are_retried_and_refusals_are_not() {
        use clickhouse::error::Error as E;
        let bad = |m: &str| SinkError::clickhouse(E::BadResponse(m.into()));
        // A proxy in front of a restarting server: the client's text for an
        // empty body, and nginx's page; a proxy refusing a body over its
        // limit is not retried.
        assert!(bad("502 Bad Gateway").is_transient());
        assert!(bad("503 Service Unavailable").is_transient());
        assert!(
            bad("<html>\r\n<head><title>504 Gateway Time-out</title></head></html>").is_transient()
        );
        assert!(
            !bad("<html>\r\n<head><title>413 Request Entity Too Large</title></head></html>")
                .is_transient()
        );
        // ClickHouse's own answers: by their code.
        assert!(bad("Code: 241, e.displayText() = DB::Exception: Memory limit").is_transient());
        assert!(
            !bad("Code: 60, e.displayText() = DB::Exception: Table x.events doesn't exist.")
                .is_transient()
        );
        let refused = bad("Code: 27, e.displayText() = DB::Exception: Cannot parse input");
        assert!(!refused.is_transient() && refused.is_refused_data());
        // Not an answer at all: a request the client could not build.
        assert!(!SinkError::clickhouse(E::Custom("no".into())).is_transient());
    }
}
