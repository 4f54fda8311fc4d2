//! The whole configuration file: one section per component, each owned by
//! the crate that uses it. Defaults: `deploy/config/xoflow.toml`.

use std::{net::SocketAddr, path::Path};

use serde::Deserialize;
use xoflow_alert::AlertConfig;
use xoflow_common::{kafka::KafkaConfig, telemetry::LogConfig};
use xoflow_enrich::{EnrichConfig, join::Owners};
use xoflow_ingest::IngestConfig;
use xoflow_sink::{ClickHouseConfig, RetentionConfig, SinkConfig};

use crate::console::ConsoleConfig;

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
    pub alert: AlertConfig,
    pub clickhouse: ClickHouseConfig,
    /// How long each tenant's rows are kept (`xoflow retention`).
    #[serde(default)]
    pub retention: RetentionConfig,
    pub console: ConsoleConfig,
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
        let mut cfg: Config = xoflow_common::config::load(file)?;
        cfg.derive();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Defaults overlaid with a TOML string; ignores the environment.
    pub fn from_toml(overlay: &str) -> anyhow::Result<Self> {
        let mut cfg: Config = xoflow_common::config::from_toml(overlay)?;
        cfg.derive();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Settings one section takes from another: enrich routes by the
    /// departments of the tenants' journey config (one ownership model).
    /// Call again after changing `ingest.tenants` in code.
    pub fn derive(&mut self) {
        self.enrich.join.owners = owners(&self.ingest);
    }

    /// Cross-field checks; pure.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.ingest.validate().map_err(anyhow::Error::msg)?;
        self.enrich.join.validate().map_err(anyhow::Error::msg)?;
        self.clickhouse.validate().map_err(anyhow::Error::msg)?;
        self.alert.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Alerts route to departments that own a touchpoint of the tenant.
        let owners = owners(&self.ingest);
        for tenant in self.enrich.alerts.tenants() {
            if !self.ingest.tenants.contains_key(tenant) {
                anyhow::bail!(
                    "enrich.alerts.tenants.{tenant}: no journey config for this tenant \
                     (ingest.tenants.{tenant}.touchpoints): alerts would have no owner"
                );
            }
        }
        for (tenant, department, path) in self.enrich.alerts.routes() {
            if !owners.defines(&tenant, &department) {
                anyhow::bail!(
                    "{path}: department \"{department}\" owns no touchpoint of tenant \
                     {tenant} (ingest.tenants.{tenant}.touchpoints.*.department)"
                );
            }
        }
        for (tenant, department) in self.alert.departments() {
            if !owners.defines(tenant, department) {
                anyhow::bail!(
                    "alert.tenants.{tenant}.departments.{department}: department \
                     \"{department}\" owns no touchpoint of tenant {tenant} \
                     (ingest.tenants.{tenant}.touchpoints.*.department)"
                );
            }
        }
        Ok(())
    }
}

/// (tenant, touchpoint, department) of every tenant's journey config.
fn owners(ingest: &IngestConfig) -> Owners {
    Owners::new(ingest.tenants.iter().flat_map(|(tenant, t)| {
        t.touchpoints
            .iter()
            .map(move |(tp, c)| (tenant.as_str(), tp.as_str(), c.department.as_str()))
    }))
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
    fn enrich_routes_by_the_journey_config() {
        let cfg = Config::from_toml("").expect("defaults");
        let owners = &cfg.enrich.join.owners;
        assert_eq!(owners.department("acme", "checkout"), Some("e-commerce"));
        assert_eq!(owners.department("acme", "delivery"), Some("logistics"));
        assert_eq!(owners.department("acme", "nowhere"), None);
    }

    #[test]
    fn the_removed_department_map_is_refused_with_advice() {
        let err = Config::from_toml("[enrich.join.departments]\ndelivery = \"logistics\"\n")
            .expect_err("removed");
        assert!(err.to_string().contains("ingest.tenants"), "{err}");
    }

    #[test]
    fn alerts_must_route_to_a_department_of_the_journey() {
        let rule = |department: &str| {
            format!(
                "[[enrich.alerts.tenants.acme.rules]]\nname = \"r\"\nseverity = \"high\"\n\
                 nps = [\"detractor\"]\ndepartment = \"{department}\"\n"
            )
        };
        Config::from_toml(&rule("logistics")).expect("a department of acme's journey");
        let err = Config::from_toml(&rule("marketing")).expect_err("undefined");
        let msg = err.to_string();
        assert!(
            msg.contains("enrich.alerts.tenants.acme.rules[0].department")
                && msg.contains("marketing"),
            "{msg}"
        );
        let err = Config::from_toml(
            "[[enrich.alerts.tenants.nobody.rules]]\nname = \"r\"\nseverity = \"high\"\n\
             nps = [\"detractor\"]\n",
        )
        .expect_err("no journey");
        assert!(
            err.to_string().contains("enrich.alerts.tenants.nobody"),
            "{err}"
        );
    }

    #[test]
    fn webhooks_must_belong_to_a_department_of_the_journey() {
        let hook = |department: &str| {
            format!(
                "[[alert.tenants.acme.departments.{department}.webhooks]]\n\
                 url = \"https://hooks.example.com/x\"\nformat = \"generic\"\n\
                 secret = \"0123456789abcdef0123456789abcdef\"\n"
            )
        };
        Config::from_toml(&hook("logistics")).expect("a department of acme's journey");
        let err = Config::from_toml(&hook("marketing")).expect_err("undefined");
        assert!(
            err.to_string()
                .contains("alert.tenants.acme.departments.marketing"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        let err = Config::from_toml("[clickhouse]\ndatabase = \"x; DROP\"\n").expect_err("bad db");
        assert!(err.to_string().contains("clickhouse.database"), "{err}");
    }
}
