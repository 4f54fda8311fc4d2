//! The admin HTTP server every process runs: Prometheus `/metrics`,
//! liveness `/health/live` and readiness `/health/ready`.
//!
//! Readiness is a set of named reasons per registered component: a
//! component is ready while it holds none. Stages set a [`Reason`] when
//! they cannot make progress (a server unreachable and being retried, a
//! stall) and clear it when they can again; the process is ready when no
//! component holds a reason and it is not draining. `/health/ready`
//! answers 503 with every `component: reason (detail)` in the body, and
//! the gauges `xoflow_stage_ready{stage}` and
//! `xoflow_stage_not_ready{stage,reason}` say the same to Prometheus.
//! Readiness turns 503 the moment draining starts, so a load balancer
//! stops sending work before the process stops accepting it.
//!
//! Liveness fails only for reasons a component marks as such
//! ([`Readiness::fail_liveness`]): those a restart would cure (a consumer
//! that holds no partition while its group has lag, for longer than its
//! setting). A server outage never fails liveness: a restarted process
//! would meet the same outage. docs/operations.md lists every reason.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a component cannot make progress: a bounded set, used as a metric
/// tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Not started yet (connecting, creating topics, migrating).
    Starting,
    /// Stopped or draining.
    Stopped,
    /// Kafka answers no request (a produce, a metadata call) and the stage
    /// is retrying.
    KafkaUnreachable,
    /// ClickHouse answers no request and the sink is retrying.
    ClickHouseUnreachable,
    /// The producer's queue is full and does not drain.
    ProducerQueueStuck,
    /// The consumer holds no partition while its group has lag.
    NoPartitions,
    /// No record handled for the configured time while work is waiting.
    NoProgress,
    /// ClickHouse answers but lacks tables the stage needs (the alert
    /// stage's, created by `xoflow migrate`); the stage waits for them.
    SchemaMissing,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Starting,
        Reason::Stopped,
        Reason::KafkaUnreachable,
        Reason::ClickHouseUnreachable,
        Reason::ProducerQueueStuck,
        Reason::NoPartitions,
        Reason::NoProgress,
        Reason::SchemaMissing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Starting => "starting",
            Reason::Stopped => "stopped",
            Reason::KafkaUnreachable => "kafka_unreachable",
            Reason::ClickHouseUnreachable => "clickhouse_unreachable",
            Reason::ProducerQueueStuck => "producer_queue_stuck",
            Reason::NoPartitions => "no_partitions",
            Reason::NoProgress => "no_progress",
            Reason::SchemaMissing => "schema_missing",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health metrics, named in one place.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// 1 while the component holds no reason, else 0.
    Ready,
    /// 1 while the component holds the `reason`, else 0.
    NotReady,
    /// 1 while the component holds no liveness reason, else 0.
    Live,
}

impl Metric {
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Ready => "xoflow_stage_ready",
            Metric::NotReady => "xoflow_stage_not_ready",
            Metric::Live => "xoflow_stage_live",
        }
    }
}

/// Readiness of the components of one process.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    components: Mutex<Vec<Readiness>>,
    /// Set once when shutdown starts; never cleared.
    draining: AtomicBool,
}

/// What one component holds against its readiness and liveness.
#[derive(Debug, Default)]
struct Reasons {
    /// Reason → detail (the last error, how long), for the 503 body.
    ready: BTreeMap<Reason, String>,
    /// The reasons that also fail liveness.
    live: BTreeMap<Reason, String>,
}

/// A component's handle on its own readiness: it sets and clears reasons.
#[derive(Clone, Debug)]
pub struct Readiness {
    name: &'static str,
    reasons: Arc<Mutex<Reasons>>,
}

impl Readiness {
    fn new(name: &'static str) -> Self {
        let r = Readiness {
            name,
            reasons: Arc::default(),
        };
        r.fail(Reason::Starting, "");
        r
    }

    /// Ready (clears [`Reason::Starting`] and [`Reason::Stopped`]) or
    /// stopped: the start and the end of a component's run.
    pub fn set(&self, ready: bool) {
        if ready {
            self.clear(Reason::Starting);
            self.clear(Reason::Stopped);
        } else {
            self.fail(Reason::Stopped, "");
        }
    }

    /// Holds `reason` against readiness, with a detail for the body;
    /// setting it again updates the detail.
    pub fn fail(&self, reason: Reason, detail: impl fmt::Display) {
        self.update(|r| {
            r.ready.insert(reason, detail.to_string());
        });
    }

    /// Holds `reason` against readiness and liveness: for what a restart
    /// would cure.
    pub fn fail_liveness(&self, reason: Reason, detail: impl fmt::Display) {
        let detail = detail.to_string();
        self.update(|r| {
            r.ready.insert(reason, detail.clone());
            r.live.insert(reason, detail);
        });
    }

    /// Clears `reason` (from readiness and liveness).
    pub fn clear(&self, reason: Reason) {
        self.update(|r| {
            r.ready.remove(&reason);
            r.live.remove(&reason);
        });
    }

    /// Whether the component holds `reason`.
    pub fn holds(&self, reason: Reason) -> bool {
        self.reasons
            .lock()
            .map(|r| r.ready.contains_key(&reason))
            .unwrap_or(false)
    }

    fn update(&self, f: impl FnOnce(&mut Reasons)) {
        let Ok(mut r) = self.reasons.lock() else {
            return;
        };
        f(&mut r);
        // Under the lock: two updates cannot export their gauges out of
        // order.
        let stage = self.name;
        metrics::gauge!(Metric::Ready.name(), "stage" => stage).set(if r.ready.is_empty() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(Metric::Live.name(), "stage" => stage).set(if r.live.is_empty() {
            1.0
        } else {
            0.0
        });
        for reason in Reason::ALL {
            metrics::gauge!(Metric::NotReady.name(), "stage" => stage, "reason" => reason.as_str())
                .set(if r.ready.contains_key(&reason) {
                    1.0
                } else {
                    0.0
                });
        }
    }

    /// `name: reason (detail)` for each reason held, of readiness or of
    /// liveness.
    fn describe(&self, live: bool) -> Vec<String> {
        let Ok(r) = self.reasons.lock() else {
            return vec![format!("{}: health-lock", self.name)];
        };
        let held = if live { &r.live } else { &r.ready };
        held.iter()
            .map(|(reason, detail)| {
                if detail.is_empty() {
                    format!("{}: {reason}", self.name)
                } else {
                    format!("{}: {reason} ({detail})", self.name)
                }
            })
            .collect()
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a component, not ready ([`Reason::Starting`]) until it
    /// says so.
    pub fn register(&self, name: &'static str) -> Readiness {
        let r = Readiness::new(name);
        if let Ok(mut c) = self.inner.components.lock() {
            c.push(r.clone());
        }
        r
    }

    /// Marks the process as draining: readiness answers 503 from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Ready when not draining and no component holds a reason; otherwise
    /// every `component: reason (detail)` held.
    pub fn check(&self) -> Result<(), Vec<String>> {
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(vec!["draining".to_owned()]);
        }
        self.held(false)
    }

    /// Live unless a component holds a reason that fails liveness.
    pub fn check_live(&self) -> Result<(), Vec<String>> {
        self.held(true)
    }

    fn held(&self, live: bool) -> Result<(), Vec<String>> {
        let components = match self.inner.components.lock() {
            Ok(c) => c,
            Err(_) => return Err(vec!["health-lock".to_owned()]),
        };
        let held: Vec<String> = components.iter().flat_map(|c| c.describe(live)).collect();
        if held.is_empty() { Ok(()) } else { Err(held) }
    }
}

#[derive(Clone)]
struct AdminState {
    health: Health,
    prometheus: Option<PrometheusHandle>,
}

/// The admin routes, for embedding or tests.
pub fn router(health: Health, prometheus: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(AdminState { health, prometheus })
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    match &s.prometheus {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".to_string(),
        ),
    }
}

async fn live(State(s): State<AdminState>) -> impl IntoResponse {
    match s.health.check_live() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(held) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {}\n", held.join(", ")),
        ),
    }
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    match s.health.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        ),
    }
}

/// Serves the admin routes, and `extra` ones beside them (the console), on
/// `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    prometheus: Option<PrometheusHandle>,
    extra: Option<Router>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let routes = router(health, prometheus);
    let routes = match extra {
        Some(extra) => routes.merge(extra),
        None => routes,
    };
    axum::serve(listener, routes)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// Binds the admin address; port 0 picks a free port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_component_and_turns_off_when_draining() {
        let h = Health::new();
        let a = h.register("a");
        let b = h.register("b");
        assert_eq!(
            h.check(),
            Err(vec!["a: starting".to_owned(), "b: starting".to_owned()])
        );
        a.set(true);
        assert_eq!(h.check(), Err(vec!["b: starting".to_owned()]));
        b.set(true);
        assert_eq!(h.check(), Ok(()));
        h.start_draining();
        assert_eq!(h.check(), Err(vec!["draining".to_owned()]));
    }

    #[test]
    fn reasons_are_set_and_cleared_by_name_and_only_some_fail_liveness() {
        let h = Health::new();
        let sink = h.register("sink");
        sink.set(true);
        sink.fail(
            Reason::ClickHouseUnreachable,
            "attempt 3: connection refused",
        );
        sink.fail(Reason::NoProgress, "");
        assert_eq!(
            h.check(),
            Err(vec![
                "sink: clickhouse_unreachable (attempt 3: connection refused)".to_owned(),
                "sink: no_progress".to_owned()
            ])
        );
        assert_eq!(h.check_live(), Ok(()), "an outage is no reason to restart");
        sink.clear(Reason::ClickHouseUnreachable);
        sink.clear(Reason::NoProgress);
        assert_eq!(h.check(), Ok(()));
        sink.fail_liveness(Reason::NoPartitions, "lag 80000 for 60s");
        assert!(sink.holds(Reason::NoPartitions));
        assert_eq!(
            h.check_live(),
            Err(vec!["sink: no_partitions (lag 80000 for 60s)".to_owned()])
        );
        assert!(h.check().is_err());
        sink.clear(Reason::NoPartitions);
        assert_eq!((h.check(), h.check_live()), (Ok(()), Ok(())));
        sink.set(false);
        assert_eq!(h.check(), Err(vec!["sink: stopped".to_owned()]));
    }
}
