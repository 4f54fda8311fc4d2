//! The sink: enriched events from Kafka into ClickHouse.
//!
//! ```text
//! enriched topic ──► recv ──► decode ──► EventRow (RowBinary) ──► INSERT events
//!                                      │ undecodable                      │ acknowledged
//!                                      └──► dead-letter topic             └──► commit offsets
//! ```
//!
//! The schema is created and evolved by versioned migrations
//! ([`clickhouse::migrate`]) recorded in a ledger table. Offsets are
//! committed only after ClickHouse acknowledged the insert of every row of a
//! batch, so a crash re-delivers rows rather than losing them; the `events`
//! table deduplicates on `event_id`.

pub mod clickhouse;
mod telemetry;

pub use clickhouse::{
    ClickHouseConfig, ConfigError, PartitionStatus, SinkConfig, SinkError, migrate, run,
    sink_status,
};
