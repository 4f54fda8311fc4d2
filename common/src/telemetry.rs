//! Logs and metrics set-up, once per process.
//!
//! Logs go to stderr through `tracing` (text or JSON, filter from `RUST_LOG`
//! or the config). Metrics go through the `metrics` facade into a Prometheus
//! recorder whose text rendering the admin server exposes on `/metrics`.
//! Metric names follow `xoflow_<stage>_<name>_<unit>[_total]`; each stage
//! names its metrics in one place, its own `telemetry` module, next to the
//! events that emit them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Logging settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Default filter when `RUST_LOG` is unset, e.g. "info,rdkafka=warn".
    pub filter: String,
    /// One JSON object per line for log shippers, instead of text.
    pub json: bool,
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the tracing subscriber. Later calls are no-ops, so tests and the
/// all-in-one `run` mode can call it freely.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if cfg.json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // Already initialised by an earlier call in this process: keep that one.
    let _ = result;
}

/// The process-wide Prometheus handle, installing the recorder on first use.
/// Returns `None` if another recorder was installed first (some tests).
pub fn prometheus() -> Option<PrometheusHandle> {
    if let Some(h) = PROMETHEUS.get() {
        return Some(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    let _ = PROMETHEUS.set(handle.clone());
    PROMETHEUS.get().cloned()
}

/// What failed, for the bounded `error` tag of a stage's errors counter
/// (`xoflow_<stage>_errors_total`): a failure the stage goes on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The consumer answered an error instead of a record.
    Consume,
    /// A produce failed transiently (the batch is retried).
    Produce,
    /// An offset commit failed (the records are only read again).
    Commit,
    /// Following a table kept as a topic (enrich's links) failed; retried
    /// before the next batch.
    Follow,
    /// Reading state back (a changelog, the link table, the sink's
    /// position) stopped short of where it should and went on with what it
    /// had.
    ReadBack,
}

impl ErrorKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Consume => "consume",
            ErrorKind::Produce => "produce",
            ErrorKind::Commit => "commit",
            ErrorKind::Follow => "follow",
            ErrorKind::ReadBack => "read_back",
        }
    }

    /// Logs `error` at `warn` with `message`, and counts it in `metric`
    /// under this kind, so that an error path is never only a log line.
    pub fn emit(self, metric: &'static str, error: &dyn std::fmt::Display, message: &'static str) {
        tracing::warn!(error = %error, kind = self.as_str(), "{message}");
        metrics::counter!(metric, "error" => self.as_str()).increment(1);
    }
}
