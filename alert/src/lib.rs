//! The alert stage: closes the loop from "a customer is unhappy" to "the
//! department that owns it acted".
//!
//! ```text
//! kafka.topics.alerts ──► stage: decode ──► alerts (ClickHouse): each alert once
//!   (xoflow.v1.Alert,        │ undecodable ──► dead letter (DECODE)
//!    key = customer)         ▼
//!                     per (tenant, department): queue + worker ──► HTTP POST to each webhook
//!                            │ (a slow receiver delays only its own)      generic | feishu | dingtalk | wecom | slack
//!                            ▼                                            Idempotency-Key = alert_id, signed
//!             alert_deliveries (every attempt) ─ then ─► commit offsets up to the last contiguous final alert
//!                            │ refused / given up ──► dead letter (UNDELIVERABLE, the alert as payload)
//!                            ▼
//!   people ──► case API: POST /v1/alerts/{id}/ack|resolve ──► alert_actions ──► views alerts_open,
//!                                                                              alert_lifecycle, closed_loop
//! ```
//!
//! What crosses its boundary: in, `xoflow.v1.Alert` records from enrich
//! (the same alert may come several times: `alert_id` is the idempotency
//! key) and the case API's requests; out, HTTP POSTs to the configured
//! webhooks, rows of `alerts`, `alert_deliveries` and `alert_actions`
//! (created by the sink's migration 10: `xoflow migrate`; the stage waits,
//! not ready, until they exist), and dead letters. Depends on the contract
//! (`xoflow-proto`) and `xoflow-common` only, never on another stage.
//!
//! Guarantees: every alert is written to `alerts` once (a lookup per batch
//! before the insert; a rare race between two instances is collapsed by the
//! table's engine) and delivered **at least once** to every webhook of its
//! department, each time with the same `Idempotency-Key` (the alert id),
//! unless the receiver refuses it for good or keeps failing for
//! `give_up_after`, when it becomes a dead letter. Offsets are committed
//! per partition only up to the last contiguous offset whose alert is
//! final (delivered, dead-lettered, or without webhook) and whose attempts
//! are stored: after a crash everything not final is read and delivered
//! again; a webhook the delivery log shows final for an alert is not
//! called again. Receivers deduplicate by `Idempotency-Key`.
//!
//! Signing: `X-Xoflow-Timestamp: <unix seconds>` and `X-Xoflow-Signature:
//! v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` on every delivery to
//! a webhook with a secret. Receivers recompute it over the raw body,
//! compare in constant time, and refuse timestamps more than 5 minutes from
//! their clock: a captured request cannot be replayed later. Feishu and
//! DingTalk robots get their own signatures as well
//! ([`webhook::sign`]). The recipe is in docs/alerts.md.
//!
//! Bounded memory: each department holds at most
//! `max_pending_per_department` alerts not final (read, waiting for a
//! slot, in flight or waiting for a retry); once any department reaches it
//! the stage pauses the alerts topic (the consumer keeps polling, so its
//! group membership holds) and resumes when it drains. The topic is keyed
//! by customer, so the pause holds back every department's new alerts:
//! isolation holds below the bound, which is therefore large (10,000).
//!
//! Modules: [`config`] (`[alert]`), [`stage`] (the Kafka loop, bind and
//! run), [`delivery`] (department workers, retries, which offsets may be
//! committed), [`webhook`] (bodies, signatures, the HTTP client),
//! [`store`] (ClickHouse), [`api`] (the case lifecycle API), `telemetry`
//! (metrics).

pub mod api;
pub mod config;
pub mod delivery;
pub mod stage;
pub mod store;
mod telemetry;
pub mod webhook;

pub use api::{ApiKeys, Caller};
pub use config::{
    AlertConfig, ConfigError, ConfigErrors, DepartmentAlerts, Format, TenantAlerts, WebhookConfig,
};
pub use stage::{AlertStage, run};
pub use store::StoreError;

use rdkafka::error::KafkaError;

/// Why the alert stage could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigErrors),
    #[error("case API cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("webhook client: {0}")]
    Client(#[from] webhook::client::ClientError),
    #[error("kafka: {0}")]
    Kafka(#[source] KafkaError),
    #[error("clickhouse: {0}")]
    Store(#[from] StoreError),
}

impl AlertError {
    /// Whether the same call later can succeed. The stage retries transient
    /// failures itself; what it returns is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            AlertError::Kafka(e) => xoflow_common::kafka::ErrorClass::of(e).is_transient(),
            AlertError::Store(e) => e.transient,
            AlertError::Config(_) | AlertError::Bind { .. } | AlertError::Client(_) => false,
        }
    }
}
