//! Starting stages in one process and stopping them cleanly.
//!
//! Each stage runs as a task on the shared [`TaskTracker`]. A stage that
//! fails records its error and cancels the root token, so the process stops
//! as a whole rather than limping on without, say, its sink. On shutdown
//! readiness turns 503 first, then the stages drain within the budget.
//!
//! [`TaskTracker`]: tokio_util::task::TaskTracker

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use xoflow_common::{
    admin::{self, Health},
    shutdown::Shutdown,
    telemetry,
};

use crate::Config;

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stages {
    pub ingest: bool,
    pub enrich: bool,
    pub sink: bool,
    /// The alert stage: delivery to webhooks and the case API.
    pub alert: bool,
}

impl Stages {
    pub const ALL: Stages = Stages {
        ingest: true,
        enrich: true,
        sink: true,
        alert: true,
    };
    pub const INGEST: Stages = Stages {
        ingest: true,
        enrich: false,
        sink: false,
        alert: false,
    };
    pub const ENRICH: Stages = Stages {
        ingest: false,
        enrich: true,
        sink: false,
        alert: false,
    };
    pub const SINK: Stages = Stages {
        ingest: false,
        enrich: false,
        sink: true,
        alert: false,
    };
    pub const ALERT: Stages = Stages {
        ingest: false,
        enrich: false,
        sink: false,
        alert: true,
    };
    /// No stage: the admin server and the console only (`xoflow console`).
    pub const NONE: Stages = Stages {
        ingest: false,
        enrich: false,
        sink: false,
        alert: false,
    };
}

/// How long draining may take in total; below the consumer session timeout
/// so a drained instance's partitions move on without waiting for expiry.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(8);

/// A started process.
#[derive(Debug)]
pub struct Running {
    /// Where the collector listens, when ingest runs.
    pub grpc_addr: Option<SocketAddr>,
    /// Where the HTTP collector listens, when ingest runs.
    pub http_addr: Option<SocketAddr>,
    /// Where the case API listens, when the alert stage runs.
    pub alert_api_addr: Option<SocketAddr>,
    /// Where /metrics and /health/* are served.
    pub admin_addr: SocketAddr,
    pub health: Health,
    pub shutdown: Shutdown,
    /// The first error of a stage that stopped on its own.
    failure: Arc<Mutex<Option<anyhow::Error>>>,
}

impl Running {
    /// Asks every stage to stop.
    pub fn stop(&self) {
        self.shutdown.token.cancel();
    }

    /// Waits until the process is asked to stop (or a stage fails), drains,
    /// and returns the first stage error, if any.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.token.cancelled().await;
        self.health.start_draining();
        let began = tokio::time::Instant::now();
        if !self.shutdown.wait(DRAIN_BUDGET).await {
            tracing::warn!(budget = ?DRAIN_BUDGET, "drain budget exceeded; exiting with work in flight (it stays in Kafka)");
        }
        // The stages' consumers leave their groups on threads of their own
        // (`xoflow_common::kafka::close`): at once with the broker there,
        // so their partitions move on without waiting for their sessions
        // to expire; with it away, not waited for past the budget.
        xoflow_common::kafka::close::wait_closed(DRAIN_BUDGET.saturating_sub(began.elapsed()))
            .await;
        match self.failure.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Starts the admin server and the chosen stages. Returns once every
/// listener is bound; the stages become ready on their own.
pub async fn start(cfg: Config, stages: Stages, shutdown: Shutdown) -> anyhow::Result<Running> {
    let health = Health::new();
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let token = shutdown.token.clone();
    let tracker = shutdown.tracker.clone();
    let cfg = Arc::new(cfg);

    // Runs a stage future; its error stops the whole process.
    let spawn_stage = |name: &'static str,
                       fut: std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>,
    >| {
        let failure = failure.clone();
        let token = token.clone();
        tracker.spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(
                    stage = name,
                    error = format!("{e:#}"),
                    "stage failed; stopping"
                );
                if let Ok(mut f) = failure.lock() {
                    f.get_or_insert(e.context(format!("{name} stage failed")));
                }
            }
            token.cancel();
        });
    };

    let admin_listener = admin::bind(cfg.admin.addr)
        .await
        .with_context(|| format!("binding the admin server to {}", cfg.admin.addr))?;
    let admin_addr = admin_listener.local_addr()?;
    {
        let health = health.clone();
        let stop = token.clone();
        let prometheus = telemetry::prometheus();
        let console = cfg.console.enabled.then(|| {
            crate::console::router(cfg.console.clone(), &cfg.clickhouse, prometheus.clone())
        });
        tracker.spawn(async move {
            if let Err(e) = admin::serve(admin_listener, health, prometheus, console, stop).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }

    let mut grpc_addr = None;
    let mut http_addr = None;
    if stages.ingest {
        let collectors = xoflow_ingest::Collectors::bind(&cfg.ingest, &cfg.kafka).await?;
        grpc_addr = Some(collectors.grpc_addr()?);
        http_addr = Some(collectors.http_addr()?);
        let readiness = health.register("ingest");
        let http_readiness = health.register("ingest-http");
        let stop = token.clone();
        spawn_stage(
            "ingest",
            Box::pin(async move {
                collectors.run(readiness, http_readiness, stop).await?;
                Ok(())
            }),
        );
    }
    if stages.enrich {
        let readiness = health.register("enrich");
        let stop = token.clone();
        let cfg = cfg.clone();
        spawn_stage(
            "enrich",
            Box::pin(async move {
                xoflow_enrich::run(&cfg.kafka, &cfg.enrich, readiness, stop).await?;
                Ok(())
            }),
        );
    }
    let mut alert_api_addr = None;
    if stages.alert {
        // The case API takes the collectors' keys: a tenant's sources and
        // people act with the keys that tenant was given.
        let keys = xoflow_alert::ApiKeys::from_hex(
            cfg.ingest.auth == xoflow_ingest::config::AuthMode::None,
            cfg.ingest.tenants.iter().flat_map(|(tenant, t)| {
                t.api_keys
                    .iter()
                    .map(move |k| (k.sha256.as_str(), tenant.as_str()))
            }),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The erasure API (docs/privacy.md) shares the case API's listener
        // and keys.
        let erasures = crate::erase::api::router(cfg.clone(), keys.clone());
        let stage =
            xoflow_alert::AlertStage::bind(&cfg.alert, &cfg.kafka, cfg.clickhouse.client(), keys)
                .await?
                .with_routes(erasures);
        alert_api_addr = Some(stage.api_addr()?);
        let readiness = health.register("alert");
        let api_readiness = health.register("alert-api");
        let stop = token.clone();
        spawn_stage(
            "alert",
            Box::pin(async move {
                stage.run(readiness, api_readiness, stop).await?;
                Ok(())
            }),
        );
    }
    if stages.sink {
        let readiness = health.register("sink");
        let stop = token.clone();
        let cfg = cfg.clone();
        spawn_stage(
            "sink",
            Box::pin(async move {
                xoflow_sink::run(&cfg.kafka, &cfg.clickhouse, &cfg.sink, readiness, stop).await?;
                Ok(())
            }),
        );
    }
    Ok(Running {
        grpc_addr,
        http_addr,
        alert_api_addr,
        admin_addr,
        health,
        shutdown,
        failure,
    })
}
