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

/// Bucket bounds, in seconds, of data ages (how old an event is when it is
/// stored): from a tenth of a second for live data to a week for backfills
/// and late arrivals.
pub const AGE_BUCKETS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
    259200.0, 604800.0,
];

/// Records a batch of samples (seconds) into the Prometheus histogram
/// `base`: `base_bucket{le}` and `base_count` counters, `base_sum` kept as
/// a float gauge that only grows. Each call updates every bucket once,
/// whatever the number of samples: a `metrics` histogram would keep every
/// sample in memory until the next scrape, which is too much for one
/// sample per event.
pub fn record_batch(base: &str, bounds: &[f64], samples: impl IntoIterator<Item = f64>) {
    let mut counts = vec![0u64; bounds.len() + 1];
    let (mut n, mut sum) = (0u64, 0.0f64);
    for s in samples {
        let i = bounds.partition_point(|b| *b < s);
        counts[i] += 1;
        n += 1;
        sum += s;
    }
    let bucket = format!("{base}_bucket");
    let mut cumulative = 0;
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        let le = bounds
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        metrics::counter!(bucket.clone(), "le" => le).increment(cumulative);
    }
    metrics::counter!(format!("{base}_count")).increment(n);
    metrics::gauge!(format!("{base}_sum")).increment(sum);
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
    /// A ClickHouse call failed transiently and is retried (or answered
    /// 503, for the case API).
    ClickHouse,
    /// Pausing or resuming the consumer's partitions failed.
    Pause,
    /// A listener could not accept a connection (descriptors, memory) or
    /// stopped serving.
    Accept,
    /// A consumer-group change was not applied cleanly (a seek, a rewind,
    /// reading committed offsets); the partition resumes unchecked.
    Rebalance,
    /// Records were gone from a partition's log (retention) before they
    /// were handled.
    LogGap,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Consume,
        ErrorKind::Produce,
        ErrorKind::Commit,
        ErrorKind::Follow,
        ErrorKind::ReadBack,
        ErrorKind::ClickHouse,
        ErrorKind::Pause,
        ErrorKind::Accept,
        ErrorKind::Rebalance,
        ErrorKind::LogGap,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Consume => "consume",
            ErrorKind::Produce => "produce",
            ErrorKind::Commit => "commit",
            ErrorKind::Follow => "follow",
            ErrorKind::ReadBack => "read_back",
            ErrorKind::ClickHouse => "clickhouse",
            ErrorKind::Pause => "pause",
            ErrorKind::Accept => "accept",
            ErrorKind::Rebalance => "rebalance",
            ErrorKind::LogGap => "log_gap",
        }
    }

    /// Exports `metric` at 0 for every kind, at a stage's start: a counter
    /// that first appears at 1 is invisible to `increase()`, and a
    /// dashboard shows no data rather than 0.
    pub fn init(metric: &'static str) {
        for k in Self::ALL {
            metrics::counter!(metric, "error" => k.as_str()).increment(0);
        }
    }

    /// Counts one failure in `metric` under this kind, without a log line
    /// (for paths that log with more context themselves).
    pub fn count(self, metric: &'static str) {
        metrics::counter!(metric, "error" => self.as_str()).increment(1);
    }

    /// Logs `error` at `warn` with `message`, and counts it in `metric`
    /// under this kind, so that an error path is never only a log line.
    pub fn emit(self, metric: &'static str, error: &dyn std::fmt::Display, message: &'static str) {
        tracing::warn!(error = %error, kind = self.as_str(), "{message}");
        metrics::counter!(metric, "error" => self.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_fills_cumulative_buckets() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            record_batch("age_seconds", &[1.0, 10.0], [0.5, 1.0, 2.0, 20.0]);
            record_batch("age_seconds", &[1.0, 10.0], [3.0]);
        });
        let mut seen: Vec<(String, Vec<String>, String)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| {
                let key = k.key();
                let labels = key.labels().map(|l| l.value().to_owned()).collect();
                (key.name().to_owned(), labels, format!("{v:?}"))
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                (
                    "age_seconds_bucket".into(),
                    vec!["+Inf".into()],
                    "Counter(5)".into()
                ),
                (
                    "age_seconds_bucket".into(),
                    vec!["1".into()],
                    "Counter(2)".into()
                ),
                (
                    "age_seconds_bucket".into(),
                    vec!["10".into()],
                    "Counter(4)".into()
                ),
                ("age_seconds_count".into(), vec![], "Counter(5)".into()),
                ("age_seconds_sum".into(), vec![], "Gauge(26.5)".into()),
            ]
        );
    }
}
