//! Running the collectors: from config to serving, and the order things
//! happen in.
//!
//! [`Collectors::bind`] does everything that can fail because of the
//! config, before the process reports started: it binds both listeners,
//! warns about development settings, compiles the tenants, creates the
//! Kafka producer and loads TLS. [`Collectors::run`] then creates the
//! topics and serves gRPC and HTTP until `stop`, each turning its readiness
//! off as it starts draining. [`run`] is both in one call.
//! [`Collectors::bind_with`] takes a ready [`Ingestor`] instead (in-process
//! tests over [`MemoryDelivery`](crate::MemoryDelivery): no topics).

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xoflow_common::{admin::Readiness, kafka::KafkaConfig};

use crate::{
    IngestConfig, Ingestor,
    auth::Authenticator,
    config::AuthMode,
    core::Admission,
    delivery::{Deliver, KafkaDelivery},
    grpc::{self, CollectorService},
    http,
    normalise::Normaliser,
    tenant::{TenantError, Tenants},
    tls::{Identity, TlsError},
};

/// Why the collectors could not start or stopped on their own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("binding the {api} collector to {addr}: {source}")]
    Bind {
        api: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("ingest: {0}")]
    Tenants(#[from] TenantError),
    #[error("ingest: creating the Kafka producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("creating ingest topics: {0}")]
    Topics(rdkafka::error::KafkaError),
    #[error("gRPC collector: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP collector: {0}")]
    Http(std::io::Error),
}

/// Builds the shared core over any delivery: tenants, both lanes'
/// normalisers and the key check. Warns loudly about development settings.
pub fn ingestor(cfg: &IngestConfig, delivery: Arc<dyn Deliver>) -> Result<Ingestor, TenantError> {
    if cfg.auth == AuthMode::None {
        tracing::warn!(
            "ingest.auth = \"none\": ANY caller may write events for ANY tenant. Development only: set ingest.auth = \"api-key\" in production"
        );
    }
    if cfg.uses_dev_secret() {
        tracing::warn!(
            "a hash secret is the development default; set XOFLOW_INGEST__HASH_SECRET (and per-tenant secrets) in production"
        );
    }
    let tenants = Arc::new(Tenants::from_config(cfg)?);
    let live = Normaliser::with_tenants(tenants, cfg.max_future_skew, cfg.max_age);
    let backfill = live.with_max_age(cfg.max_backfill_age);
    Ok(Ingestor::new(
        live,
        backfill,
        delivery,
        Authenticator::from_config(cfg),
        cfg.max_batch_events,
        Admission::new(cfg.max_in_flight_events, cfg.max_in_flight_bytes),
        cfg.request_timeout,
    ))
}

/// The shared core delivering to Kafka (the collectors and `xoflow import`).
pub fn build(cfg: &IngestConfig, kafka: &KafkaConfig) -> Result<Ingestor, RunError> {
    let delivery = KafkaDelivery::new(kafka, cfg.linger).map_err(RunError::Producer)?;
    Ok(ingestor(cfg, Arc::new(delivery))?)
}

/// Both collectors, checked and bound, not yet serving.
#[derive(Debug)]
pub struct Collectors {
    ingestor: Ingestor,
    tls: Option<Identity>,
    grpc: TcpListener,
    http: TcpListener,
    /// The settings the servers read (limits, timeouts).
    cfg: IngestConfig,
    /// The topics to create before serving; `None` when delivery is not
    /// Kafka.
    topics: Option<KafkaConfig>,
}

impl Collectors {
    /// Everything that can fail because of the config: listeners, tenants,
    /// Kafka producer, TLS files.
    pub async fn bind(cfg: &IngestConfig, kafka: &KafkaConfig) -> Result<Self, RunError> {
        let (grpc, http) = listen(cfg).await?;
        let ingestor = build(cfg, kafka)?;
        let mut c = Self::with(cfg, ingestor, grpc, http)?;
        c.topics = Some(kafka.clone());
        Ok(c)
    }

    /// [`Collectors::bind`] over an ingestor of the caller's (in-process
    /// tests: [`MemoryDelivery`](crate::MemoryDelivery)); no topics are
    /// created.
    pub async fn bind_with(cfg: &IngestConfig, ingestor: Ingestor) -> Result<Self, RunError> {
        let (grpc, http) = listen(cfg).await?;
        Self::with(cfg, ingestor, grpc, http)
    }

    fn with(
        cfg: &IngestConfig,
        ingestor: Ingestor,
        grpc: TcpListener,
        http: TcpListener,
    ) -> Result<Self, RunError> {
        Ok(Self {
            ingestor,
            tls: cfg.tls.as_ref().map(Identity::load).transpose()?,
            grpc,
            http,
            cfg: cfg.clone(),
            topics: None,
        })
    }

    /// Where the gRPC collector listens.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// Where the HTTP collector listens.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Creates the topics, then serves both APIs until `stop` is cancelled
    /// and their in-flight requests are answered.
    pub async fn run(
        self,
        grpc_readiness: Readiness,
        http_readiness: Readiness,
        stop: CancellationToken,
    ) -> Result<(), RunError> {
        crate::telemetry::init();
        // Ends with the collectors, however they end.
        let probe_stop = stop.child_token();
        let _stop_probe = probe_stop.clone().drop_guard();
        if let Some(kafka) = &self.topics {
            let t = &kafka.topics;
            // Started during a broker outage: wait for it, not ready, rather
            // than exit.
            let created = kafka
                .await_topics(
                    &[&t.events, &t.backfill, &t.dead_letters],
                    &[],
                    &grpc_readiness,
                    &stop,
                )
                .await
                .map_err(RunError::Topics)?;
            if !created {
                return Ok(());
            }
            // A collector hears of a broker outage only from requests that
            // fail; readiness should say so whether requests come or not.
            tokio::spawn(xoflow_common::kafka::probe::probe(
                kafka.clone(),
                t.events.clone(),
                xoflow_common::kafka::probe::PROBE_EVERY,
                grpc_readiness.clone(),
                probe_stop,
            ));
        }
        let http = http::serve(
            self.http,
            self.ingestor.clone(),
            &self.cfg,
            self.tls.as_ref(),
            http_readiness,
            stop.clone(),
        );
        let grpc = grpc::serve(
            self.grpc,
            CollectorService::new(self.ingestor),
            &self.cfg,
            self.tls.as_ref(),
            grpc_readiness,
            stop,
        );
        let (h, g) = tokio::join!(http, grpc);
        h.map_err(RunError::Http)?;
        g?;
        Ok(())
    }
}

/// Binds both listeners: the gRPC one first, as the process always did.
async fn listen(cfg: &IngestConfig) -> Result<(TcpListener, TcpListener), RunError> {
    let bind = |api: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { api, addr, source })
    };
    Ok((
        bind("gRPC", cfg.grpc_addr).await?,
        bind("HTTP", cfg.http_addr).await?,
    ))
}

/// Checks, binds and runs both collectors until `stop`: what the process
/// calls when it runs the ingest stage.
pub async fn run(
    cfg: &IngestConfig,
    kafka: &KafkaConfig,
    grpc_readiness: Readiness,
    http_readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), RunError> {
    Collectors::bind(cfg, kafka)
        .await?
        .run(grpc_readiness, http_readiness, stop)
        .await
}
