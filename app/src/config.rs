//! The whole configuration file: one section per component, each owned by
//! the crate that uses it. Defaults: `deploy/config/xoflow.toml`.

use std::{net::SocketAddr, path::Path};

use serde::Deserialize;
use xoflow_common::{kafka::KafkaConfig, telemetry::LogConfig};
use xoflow_enrich::EnrichConfig;
use xoflow_ingest::IngestConfig;
use xoflow_sink::{ClickHouseConfig, SinkConfig};

/// Every setting of every stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub ingest: IngestConfig,
    pub enrich: EnrichConfig,
    pub sink: SinkConfig,
    pub clickhouse: ClickHouseConfig,
}

/// The admin HTTP server (metrics and health).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address for /metrics and /health/*; port 0 picks a free one.
    pub addr: SocketAddr,
}

impl Config {
    /// Defaults, then `file`, then `XOFLOW_…__…` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let cfg: Config = xoflow_common::config::load(file)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Defaults overlaid with a TOML string; ignores the environment.
    pub fn from_toml(overlay: &str) -> anyhow::Result<Self> {
        let cfg: Config = xoflow_common::config::from_toml(overlay)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks; pure.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.ingest.validate().map_err(anyhow::Error::msg)?;
        self.clickhouse.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_defaults_load_and_validate() {
        let cfg = Config::from_toml("").expect("defaults");
        assert_eq!(cfg.kafka.topics.events, "xoflow.events.v1");
        assert_eq!(cfg.sink.batch_rows, 50_000);
    }

    #[test]
    fn unknown_settings_are_refused_with_their_name() {
        let err = Config::from_toml("[sink]\nbatch_rowz = 1\n").expect_err("typo");
        assert!(err.to_string().contains("batch_rowz"), "{err}");
    }

    #[test]
    fn a_file_written_for_bounded_insert_retries_still_loads() {
        let cfg = Config::from_toml("[sink]\ninsert_retries = 8\n").expect("former key");
        assert_eq!(cfg.sink.insert_retries, Some(8));
    }

    #[test]
    fn invalid_values_are_refused() {
        let err = Config::from_toml("[clickhouse]\ndatabase = \"x; DROP\"\n").expect_err("bad db");
        assert!(err.to_string().contains("clickhouse.database"), "{err}");
    }
}
