//! The small shared crate: what all three stages need and nothing that is
//! one stage's business.
//!
//! - [`config`]: one TOML file with embedded defaults, `XOFLOW_…` overrides.
//! - [`shutdown`]: the root cancellation token and task tracker.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`admin`]: the `/metrics`, `/health/live`, `/health/ready` server.
//! - [`kafka`]: client settings, topic creation and error classification.

pub mod admin;
pub mod config;
pub mod kafka;
pub mod shutdown;
pub mod telemetry;
