//! The small shared crate: what all three stages need and nothing that is
//! one stage's business.
//!
//! - [`config`]: one TOML file with embedded defaults, `XOFLOW_…` overrides.
//! - [`shutdown`]: the root cancellation token and task tracker.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`admin`]: the `/metrics`, `/health/live`, `/health/ready` server.
//! - [`kafka`]: client settings, topic creation and error classification.
//! - [`rebalance`]: consumer-group changes recorded for a stage's loop.
//! - [`dead_letter`]: the reason vocabulary and the dead-letter builder.
//! - [`resume`]: resuming a partition at a position, whatever the broker answers.
//! - [`retry`]: the backoff policy every retry loop follows.
//! - [`clock`]: the wall clock, in named units.
//! - [`clickhouse_errors`]: how a ClickHouse error answer is read and
//!   whether a retry can help.

pub mod admin;
pub mod clickhouse_errors;
pub mod clock;
pub mod config;
pub mod dead_letter;
pub mod kafka;
pub mod rebalance;
pub mod resume;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
