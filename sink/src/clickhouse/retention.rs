//! Retention per tenant: `xoflow retention` deletes the rows older than
//! each tenant's retention (`[retention]`), on every ClickHouse the schema
//! runs on; docs/privacy.md.
//!
//! | class | tables, by their time column |
//! | --- | --- |
//! | `events` | `events` (`occurred_at`), `survey_answers` (`occurred_at`), `customer_profile` (`last_event_at`) |
//! | `dead_letters` | `dead_letters` (`at`) |
//! | `alerts` | `alerts` (`raised_at`), `alert_deliveries` (`raised_at`), `alert_actions` (`at`) |
//!
//! The aggregates (`touchpoint_metrics`, `revenue_metrics`) hold no
//! personal data and are kept; so are `erasure_receipts`.
//!
//! Two guards keep the sink's exactly-once accounting whole (it reads its
//! position and its dedup set back from `events` and `dead_letters`,
//! docs/clickhouse.md "Exactly once"): a row goes only once it was stored
//! more than `replay_horizon` ago (longer than the Kafka topics keep
//! records, so nothing deleted can be read again and stored twice), and
//! the row holding each Kafka partition's highest stored offset (its
//! position) stays until a later row replaces it.
//!
//! Deletes are mutations (`ALTER TABLE ... DELETE`, 18.16 and later), run
//! in the background by ClickHouse; the command waits until they are done.
//! Running it again deletes nothing more (idempotent); run it daily.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{ClickHouseConfig, SinkError};

/// How long each class of rows is kept; unset: forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Raw events, their survey answers and customer profiles.
    #[serde(default, with = "humantime_serde")]
    pub events: Option<Duration>,
    /// Refused records.
    #[serde(default, with = "humantime_serde")]
    pub dead_letters: Option<Duration>,
    /// Alerts, their deliveries and case actions.
    #[serde(default, with = "humantime_serde")]
    pub alerts: Option<Duration>,
}

/// `[retention]`: a default for every tenant and each tenant's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Rows are deleted only once stored longer ago than this: more than
    /// the Kafka topics' retention (`retention.ms`, 7 days by default), so
    /// that no deleted row can be read from Kafka again and stored twice.
    #[serde(with = "humantime_serde")]
    pub replay_horizon: Duration,
    /// For tenants without their own.
    #[serde(default)]
    pub default: Retention,
    /// Per tenant; an unset class falls back to `default`.
    #[serde(default)]
    pub tenants: BTreeMap<String, Retention>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            replay_horizon: Duration::from_secs(8 * 86_400),
            default: Retention::default(),
            tenants: BTreeMap::new(),
        }
    }
}

/// One class of rows: its tables and their time columns.
struct Class {
    name: &'static str,
    tables: &'static [(&'static str, &'static str)],
    pick: fn(&Retention) -> Option<Duration>,
}

const CLASSES: [Class; 3] = [
    Class {
        name: "events",
        tables: &[
            ("events", "occurred_at"),
            ("survey_answers", "occurred_at"),
            ("customer_profile", "last_event_at"),
        ],
        pick: |r| r.events,
    },
    Class {
        name: "dead_letters",
        tables: &[("dead_letters", "at")],
        pick: |r| r.dead_letters,
    },
    Class {
        name: "alerts",
        tables: &[
            ("alerts", "raised_at"),
            ("alert_deliveries", "raised_at"),
            ("alert_actions", "at"),
        ],
        pick: |r| r.alerts,
    },
];

/// The guards of each table (see the module doc): when it was stored, and
/// which rows hold a Kafka position (`anchors`: `(topic, partition,
/// offset)` of each partition's highest stored row, read beforehand: a
/// mutation's condition is evaluated part by part and must not depend on
/// the rows it deletes).
fn guard(table: &str, horizon: u64, anchors: &[(String, i32, i64)]) -> String {
    let keep = if anchors.is_empty() {
        String::new()
    } else {
        let tuples: Vec<String> = anchors
            .iter()
            .map(|(t, p, o)| format!("({}, {p}, {o})", literal(t)))
            .collect();
        format!(
            " AND (kafka_topic, kafka_partition, kafka_offset) NOT IN ({})",
            tuples.join(", ")
        )
    };
    match table {
        "events" => format!("inserted_at <= now() - {horizon}{keep}"),
        "survey_answers" => format!("inserted_at <= now() - {horizon}"),
        // The dead-letter topic's position, and refused rows' share of the
        // enriched topic's.
        "dead_letters" => format!("at <= now() - {horizon}{keep}"),
        "alerts" => format!("written_at <= now() - {horizon}"),
        "alert_deliveries" | "alert_actions" => format!("at <= now() - {horizon}"),
        // Derived from events, read by nothing that replays.
        _ => "1".to_owned(),
    }
}

/// Each Kafka partition's highest stored row of `table`.
async fn anchors(
    client: &clickhouse::Client,
    table: &str,
) -> Result<Vec<(String, i32, i64)>, SinkError> {
    if !matches!(table, "events" | "dead_letters") {
        return Ok(Vec::new());
    }
    client
        .query(&format!(
            "SELECT kafka_topic, kafka_partition, max(kafka_offset) FROM {table} \
             WHERE kafka_offset >= 0 GROUP BY kafka_topic, kafka_partition"
        ))
        .fetch_all()
        .await
        .map_err(SinkError::clickhouse)
}

/// What one run deleted: (tenant, table) → rows.
pub type RetentionReport = BTreeMap<(String, String), u64>;

/// Deletes, for every tenant holding rows, what is older than its
/// retention (`dry_run`: only counts). Tenants without a retention of their
/// own get `default`.
pub async fn enforce(
    ch: &ClickHouseConfig,
    cfg: &RetentionConfig,
    dry_run: bool,
) -> Result<RetentionReport, SinkError> {
    ch.validate()?;
    let client = ch.client();
    let horizon = cfg.replay_horizon.as_secs();
    let mut tenants: Vec<String> = client
        .query("SELECT DISTINCT tenant FROM events")
        .fetch_all()
        .await
        .map_err(SinkError::clickhouse)?;
    tenants.extend(cfg.tenants.keys().cloned());
    tenants.sort();
    tenants.dedup();
    let mut report = RetentionReport::new();
    let mut touched = Vec::new();
    for tenant in &tenants {
        let own = cfg.tenants.get(tenant);
        for class in &CLASSES {
            let Some(keep) = own
                .and_then(|r| (class.pick)(r))
                .or((class.pick)(&cfg.default))
            else {
                continue;
            };
            for (table, column) in class.tables {
                let anchors = anchors(&client, table).await?;
                let condition = format!(
                    "tenant = {} AND {column} < now() - {} AND {}",
                    literal(tenant),
                    keep.as_secs(),
                    guard(table, horizon, &anchors)
                );
                let n: u64 = client
                    .query(&format!("SELECT count() FROM {table} WHERE {condition}"))
                    .fetch_one()
                    .await
                    .map_err(SinkError::clickhouse)?;
                report.insert((tenant.clone(), (*table).to_owned()), n);
                if n == 0 || dry_run {
                    continue;
                }
                let target = match &ch.cluster {
                    Some(c) => format!("{table}_local ON CLUSTER {c}"),
                    None => (*table).to_owned(),
                };
                client
                    .query(&format!("ALTER TABLE {target} DELETE WHERE {condition}"))
                    .execute()
                    .await
                    .map_err(SinkError::clickhouse)?;
                touched.push(*table);
                tracing::info!(
                    tenant,
                    table,
                    rows = n,
                    class = class.name,
                    "retention: rows deleted"
                );
            }
        }
    }
    wait_for_mutations(&client, &touched).await?;
    Ok(report)
}

/// Waits until ClickHouse has applied every mutation of `tables`.
async fn wait_for_mutations(client: &clickhouse::Client, tables: &[&str]) -> Result<(), SinkError> {
    if tables.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = tables.iter().map(|t| literal(t)).collect();
    let sql = format!(
        "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
         AND table IN ({}) AND is_done = 0",
        names.join(", ")
    );
    let started = std::time::Instant::now();
    loop {
        let pending: u64 = client
            .query(&sql)
            .fetch_one()
            .await
            .map_err(SinkError::clickhouse)?;
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(SinkError::ClickHouse {
                message: format!("{pending} retention mutations still running after 600 s"),
                code: None,
                transient: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A ClickHouse string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_falls_back_to_the_default_class_by_class() {
        let cfg: RetentionConfig = serde_json_like(
            r#"replay_horizon = "8days"
[default]
dead_letters = "30days"
[tenants.acme]
events = "400days""#,
        );
        let acme = cfg.tenants.get("acme");
        let class = |c: &Class| acme.and_then(|r| (c.pick)(r)).or((c.pick)(&cfg.default));
        assert_eq!(class(&CLASSES[0]), Some(Duration::from_secs(400 * 86_400)));
        assert_eq!(class(&CLASSES[1]), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(class(&CLASSES[2]), None);
    }

    fn serde_json_like(toml: &str) -> RetentionConfig {
        use figment::providers::Format as _;
        figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .expect("parses")
    }

    #[test]
    fn the_position_rows_are_never_deleted() {
        let a = vec![("t.enriched".to_owned(), 2, 41)];
        let g = guard("events", 60, &a);
        assert!(g.contains("inserted_at <= now() - 60"), "{g}");
        assert!(
            g.contains(
                "(kafka_topic, kafka_partition, kafka_offset) NOT IN (('t.enriched', 2, 41))"
            ),
            "{g}"
        );
        assert!(guard("dead_letters", 60, &a).contains("NOT IN"));
        assert!(!guard("events", 60, &[]).contains("NOT IN"));
    }
}
