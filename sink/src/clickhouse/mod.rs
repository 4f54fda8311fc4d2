//! The ClickHouse sink: RowBinary inserts over HTTP through the official
//! `clickhouse` crate, batched by rows, bytes and time.
//!
//! Wire format: `INSERT INTO events (<columns>) FORMAT RowBinary`, one insert
//! per flushed batch per table. Row layout: [`row::EventRow`] and
//! [`row::DeadLetterRow`], positional against the migrations in
//! `sink/migrations/`.

mod config;
pub mod migrate;
pub mod position;
pub mod row;
mod sink;

pub use config::{ClickHouseConfig, SinkConfig};
pub use migrate::{MIGRATIONS, MigrationReport, migrate};
pub use sink::run;

use rdkafka::error::KafkaError;

/// Why the sink stopped or a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("clickhouse: {message}")]
    ClickHouse { message: String, transient: bool },
    #[error("kafka: {0}")]
    Kafka(#[source] KafkaError),
    #[error("insert into {table} failed after {attempts} attempts: {message}")]
    InsertFailed {
        table: &'static str,
        attempts: u32,
        message: String,
    },
}

impl SinkError {
    /// Folds a client error into the sink's error, deciding whether a retry
    /// can help: network trouble and server overload can, a bad query can't.
    pub fn clickhouse(e: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        let transient = matches!(e, E::Network(_) | E::TimedOut);
        SinkError::ClickHouse {
            message: e.to_string(),
            transient,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::ClickHouse { transient, .. } => *transient,
            SinkError::Kafka(e) => xoflow_common::kafka::ErrorClass::of(e).is_transient(),
            SinkError::Config(_) | SinkError::InsertFailed { .. } => false,
        }
    }
}
