//! The sink: enriched events and dead letters from Kafka into ClickHouse.
//!
//! ```text
//! enriched, dead-letter topics ──► consume: transcode / decode ──► EventRows / DeadLetterRow ──► insert: INSERT events, dead_letters
//!                                          │ undecodable                                             │ acknowledged
//!                                          └──► a DECODE row of dead_letters                         └──► commit offsets
//! ```
//!
//! The schema is created and evolved by versioned migrations
//! ([`clickhouse::migrate`](mod@clickhouse::migrate)) recorded in a ledger table. Offsets are
//! committed only after ClickHouse acknowledged the insert of every row of a
//! batch, so a crash re-delivers rows rather than losing them; the sink then
//! skips what ClickHouse already holds, by offset and by event id
//! ([`clickhouse::position`]), so that each event is written once
//! (`docs/clickhouse.md`, "Exactly once").

pub mod clickhouse;
mod telemetry;

pub use clickhouse::{
    ClickHouseConfig, ConfigError, PartitionStatus, RetentionConfig, SinkConfig, SinkError,
    migrate, run, sink_status,
};
