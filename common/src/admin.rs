//! The admin HTTP server every process runs: Prometheus `/metrics`,
//! liveness `/health/live` and readiness `/health/ready`.
//!
//! Readiness is the AND of every registered component's flag, and turns 503
//! the moment draining starts, so a load balancer stops sending work before
//! the process stops accepting it.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Readiness of the components of one process.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    /// One flag per component, set once it can do its work (connected,
    /// topics exist, schema migrated).
    components: std::sync::Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    /// Set once when shutdown starts; never cleared.
    draining: AtomicBool,
}

/// A component's own readiness flag.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a component, not ready until it says so.
    pub fn register(&self, name: &'static str) -> Readiness {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = self.inner.components.lock() {
            c.push((name, flag.clone()));
        }
        Readiness(flag)
    }

    /// Marks the process as draining: readiness answers 503 from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Ready when not draining and every component is ready; otherwise the
    /// names of those that are not.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(vec!["draining"]);
        }
        let components = match self.inner.components.lock() {
            Ok(c) => c,
            Err(_) => return Err(vec!["health-lock"]),
        };
        let waiting: Vec<_> = components
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
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
        .route("/health/live", get(|| async { "ok\n" }))
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

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    match s.health.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        ),
    }
}

/// Serves the admin routes on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    prometheus: Option<PrometheusHandle>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(health, prometheus))
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
        assert_eq!(h.check(), Err(vec!["a", "b"]));
        a.set(true);
        assert_eq!(h.check(), Err(vec!["b"]));
        b.set(true);
        assert_eq!(h.check(), Ok(()));
        h.start_draining();
        assert_eq!(h.check(), Err(vec!["draining"]));
    }
}
