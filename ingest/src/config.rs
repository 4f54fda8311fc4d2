//! Collector settings (`[ingest]`).

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

/// Settings of the collector API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address of the gRPC collector API; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP/JSON collector (`POST /v1/events`); port 0 picks
    /// a free port.
    pub http_addr: SocketAddr,
    /// Most events in one request, so one caller cannot hold the whole
    /// in-flight budget.
    pub max_batch_events: usize,
    /// Largest encoded gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most events awaiting Kafka acknowledgement at once across all
    /// requests: the bound that turns a slow broker into RESOURCE_EXHAUSTED
    /// instead of memory growth.
    pub max_in_flight_events: usize,
    /// How far in the future `occurred_at` may be: clock skew allowance.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// How far in the past `occurred_at` may be on the live lane.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Key for the HMAC-SHA256 of weak identifiers (email, phone, handle,
    /// device). Must stay stable: changing it breaks joins with history.
    #[serde(default = "default_hash_secret")]
    pub hash_secret: String,
}

/// The development key. Start-up warns when it is in use.
pub const DEV_HASH_SECRET: &str = "xoflow-dev-secret-change-me";

fn default_hash_secret() -> String {
    DEV_HASH_SECRET.to_string()
}

impl IngestConfig {
    /// Checks values that deserialise but cannot work. Pure: no I/O.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_events == 0 {
            return Err("ingest.max_batch_events must be at least 1".into());
        }
        if self.max_in_flight_events < self.max_batch_events {
            return Err(format!(
                "ingest.max_in_flight_events ({}) must be at least ingest.max_batch_events ({})",
                self.max_in_flight_events, self.max_batch_events
            ));
        }
        if self.hash_secret.len() < 16 {
            return Err("ingest.hash_secret must be at least 16 bytes".into());
        }
        Ok(())
    }
}
