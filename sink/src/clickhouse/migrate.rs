//! Versioned schema migrations, recorded in a ledger table.
//!
//! Migrations are SQL files embedded at build time (`sink/migrations/`),
//! applied in version order, each exactly once per database: the ledger
//! `schema_migrations` holds the version, name and checksum of every applied
//! file. Statements are written with `IF NOT EXISTS` so that two sinks
//! starting at once both succeed. A changed checksum of an applied version is
//! refused: history is never rewritten in place. With `clickhouse.cluster`
//! set, each statement is first rewritten for a sharded, replicated
//! cluster (`cluster`).

use clickhouse::{Client, Row};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ClickHouseConfig, SinkError, cluster, server_code};

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
    /// What the server must have for it to apply; on a server without it
    /// the migration is skipped (and not recorded), and applied by the
    /// first migrate after an upgrade. Empty: every server.
    pub requires: &'static [Feature],
}

/// What a server may have beyond ClickHouse 18.16, the oldest release the
/// schema runs on. Found in the server's system tables at migrate time, not
/// from its version number, so a backport or a build without a feature is
/// judged by what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// The `DateTime64` type (20.1 and later).
    DateTime64,
    /// The `Map` type (21.1 and later).
    Map,
}

impl Feature {
    pub const ALL: [Feature; 2] = [Feature::DateTime64, Feature::Map];

    pub const fn as_str(self) -> &'static str {
        match self {
            Feature::DateTime64 => "DateTime64",
            Feature::Map => "Map",
        }
    }

    /// A query answering 1 where the server has it, 0 where it does not
    /// (18.16 answers it too).
    fn probe(self) -> String {
        format!(
            "SELECT toUInt8(count() > 0) FROM system.data_type_families WHERE name = '{}'",
            self.as_str()
        )
    }
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../../migrations/0001_events.sql"),
        requires: &[],
    },
    Migration {
        version: 2,
        name: "customer_context",
        sql: include_str!("../../migrations/0002_customer_context.sql"),
        requires: &[],
    },
    Migration {
        version: 3,
        name: "touchpoint_metrics",
        sql: include_str!("../../migrations/0003_touchpoint_metrics.sql"),
        requires: &[],
    },
    Migration {
        version: 4,
        name: "bi_views",
        sql: include_str!("../../migrations/0004_bi_views.sql"),
        requires: &[],
    },
    Migration {
        version: 5,
        name: "dead_letter_lineage",
        sql: include_str!("../../migrations/0005_dead_letter_lineage.sql"),
        requires: &[],
    },
    Migration {
        version: 6,
        name: "customer_profile",
        sql: include_str!("../../migrations/0006_customer_profile.sql"),
        requires: &[],
    },
    Migration {
        version: 7,
        name: "dead_letter_refused",
        sql: include_str!("../../migrations/0007_dead_letter_refused.sql"),
        requires: &[],
    },
    Migration {
        version: 8,
        name: "current_types",
        sql: include_str!("../../migrations/0008_current_types.sql"),
        requires: &[Feature::DateTime64, Feature::Map],
    },
    Migration {
        version: 9,
        name: "revisions",
        sql: include_str!("../../migrations/0009_revisions.sql"),
        requires: &[],
    },
    Migration {
        version: 10,
        name: "alerts",
        sql: include_str!("../../migrations/0010_alerts.sql"),
        requires: &[],
    },
    Migration {
        version: 11,
        name: "local_time_and_currencies",
        sql: include_str!("../../migrations/0011_local_time_and_currencies.sql"),
        requires: &[],
    },
    Migration {
        version: 12,
        name: "survey_answers",
        sql: include_str!("../../migrations/0012_survey_answers.sql"),
        requires: &[],
    },
    Migration {
        version: 13,
        name: "consent_and_erasure",
        sql: include_str!("../../migrations/0013_consent_and_erasure.sql"),
        requires: &[],
    },
    Migration {
        version: 14,
        name: "dead_letter_replay",
        sql: include_str!("../../migrations/0014_dead_letter_replay.sql"),
        requires: &[],
    },
    Migration {
        version: 15,
        name: "event_ids",
        sql: include_str!("../../migrations/0015_event_ids.sql"),
        requires: &[],
    },
    Migration {
        version: 16,
        name: "event_ids_by_hour",
        sql: include_str!("../../migrations/0016_event_ids_by_hour.sql"),
        requires: &[],
    },
    Migration {
        version: 17,
        name: "event_ids_by_time",
        sql: include_str!("../../migrations/0017_event_ids_by_time.sql"),
        requires: &[],
    },
];

impl Migration {
    /// SHA-256 of the file, hex.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// The statements with the database name filled in. Comments are
    /// stripped; statements end with `;` at the end of a line.
    pub fn statements(&self, db: &str) -> Vec<String> {
        let body: String = self
            .sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        body.split(";\n")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.replace("{db}", db))
            .collect()
    }
}

#[derive(Debug, Row, Deserialize)]
struct Applied {
    version: u32,
    checksum: String,
}

/// What [`migrate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call.
    pub applied: Vec<u32>,
    /// Versions that were already there.
    pub present: Vec<u32>,
    /// Versions this server lacks a [`Feature`] for: not applied, not
    /// recorded.
    pub skipped: Vec<u32>,
}

/// Brings the database up to the latest version.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<MigrationReport, SinkError> {
    cfg.validate()?;
    let db = &cfg.database;
    // The database may not exist yet, so this client names none.
    let root = cfg.client().with_database("default");
    let target = Target::of(cfg);
    for stmt in target.setup() {
        exec(&root, &stmt).await?;
    }
    let applied: Vec<Applied> = root
        .query(&format!(
            "SELECT version, any(checksum) AS checksum FROM {db}.schema_migrations GROUP BY version ORDER BY version"
        ))
        .fetch_all()
        .await
        .map_err(SinkError::clickhouse)?;
    let mut has = Vec::new();
    for f in Feature::ALL {
        let yes: u8 = root
            .query(&f.probe())
            .fetch_one()
            .await
            .map_err(SinkError::clickhouse)?;
        if yes == 1 {
            has.push(f);
        }
    }
    let mut report = MigrationReport::default();
    for m in MIGRATIONS {
        if let Some(a) = applied.iter().find(|a| a.version == m.version) {
            if a.checksum != m.checksum() {
                return Err(SinkError::MigrationChanged {
                    version: m.version,
                    name: m.name,
                    database: db.clone(),
                });
            }
            report.present.push(m.version);
            continue;
        }
        if let Some(missing) = m.requires.iter().find(|f| !has.contains(f)) {
            tracing::info!(
                version = m.version,
                name = m.name,
                missing = missing.as_str(),
                "migration skipped: this server lacks what it needs; the first migrate after an upgrade applies it"
            );
            report.skipped.push(m.version);
            continue;
        }
        for stmt in target.statements(m) {
            match exec(&root, &stmt).await {
                // 18.16 has no `ADD COLUMN IF NOT EXISTS` nor `DROP COLUMN
                // IF EXISTS`: a sink starting at the same moment may have
                // added or dropped the column first.
                Err(e) if stmt.contains("ADD COLUMN") && already_done(&e, "already exists") => {}
                Err(e) if stmt.contains("DROP COLUMN") && already_done(&e, "find column") => {}
                r => r?,
            }
        }
        exec(
            &root,
            &format!(
                "INSERT INTO {db}.schema_migrations (version, name, checksum) VALUES ({}, '{}', '{}')",
                m.version,
                m.name,
                m.checksum()
            ),
        )
        .await?;
        tracing::info!(version = m.version, name = m.name, database = %db, "migration applied");
        report.applied.push(m.version);
    }
    Ok(report)
}

/// Where the schema goes: one server, or a cluster (every statement
/// rewritten by `cluster`).
struct Target<'a> {
    db: &'a str,
    cluster: Option<&'a str>,
    /// The data tables of the whole schema (a cluster needs them to point
    /// materialized views at the local tables).
    tables: Vec<String>,
}

impl<'a> Target<'a> {
    fn of(cfg: &'a ClickHouseConfig) -> Self {
        let db = cfg.database.as_str();
        let all: Vec<String> = MIGRATIONS.iter().flat_map(|m| m.statements(db)).collect();
        Target {
            db,
            cluster: cfg.cluster.as_deref(),
            tables: cluster::data_tables(all.iter().map(String::as_str), db),
        }
    }

    fn rewrite(&self, stmt: String) -> Vec<String> {
        match self.cluster {
            Some(c) => cluster::statements(&stmt, self.db, c, &self.tables),
            None => vec![stmt],
        }
    }

    /// The database and the migrations ledger.
    fn setup(&self) -> Vec<String> {
        let db = self.db;
        [
            format!("CREATE DATABASE IF NOT EXISTS {db}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
                 (version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) \
                 ENGINE = MergeTree() ORDER BY version"
            ),
        ]
        .into_iter()
        .flat_map(|s| self.rewrite(s))
        .collect()
    }

    fn statements(&self, m: &Migration) -> Vec<String> {
        m.statements(self.db)
            .into_iter()
            .flat_map(|s| self.rewrite(s))
            .collect()
    }
}

/// Every statement [`migrate`] would run on an empty database, as one SQL
/// script (`xoflow migrate --print`): for review before a cluster is
/// touched, or to apply by hand.
pub fn script(cfg: &ClickHouseConfig) -> Result<String, SinkError> {
    cfg.validate()?;
    let target = Target::of(cfg);
    let mut out = match &cfg.cluster {
        Some(c) => format!(
            "-- xoflow schema for database {} on cluster {c}\n\n",
            cfg.database
        ),
        None => format!("-- xoflow schema for database {}\n\n", cfg.database),
    };
    for stmt in target.setup() {
        out.push_str(&format!("{};\n\n", stmt.trim()));
    }
    for m in MIGRATIONS {
        out.push_str(&format!("-- migration {} {}\n", m.version, m.name));
        if !m.requires.is_empty() {
            let needs: Vec<&str> = m.requires.iter().map(|f| f.as_str()).collect();
            out.push_str(&format!(
                "-- only where the server has {} (skipped elsewhere)\n",
                needs.join(", ")
            ));
        }
        for stmt in target.statements(m) {
            out.push_str(&format!("{};\n\n", stmt.trim()));
        }
    }
    Ok(out)
}

/// Whether an ALTER failed only because a concurrent run made the same
/// change first: code 15 (`DUPLICATE_COLUMN`) or 16 (`NO_SUCH_COLUMN_IN_TABLE`)
/// on current releases; 18.16 answers code 44 with the words `what` for
/// both.
fn already_done(e: &SinkError, what: &str) -> bool {
    match server_code(e) {
        Some(15 | 16) => true,
        Some(44) => e.to_string().contains(what),
        _ => false,
    }
}

async fn exec(client: &Client, sql: &str) -> Result<(), SinkError> {
    client
        .query(sql)
        .execute()
        .await
        .map_err(SinkError::clickhouse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_statements_split() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        let stmts = MIGRATIONS[0].statements("xo_test");
        assert_eq!(stmts.len(), 2);
        assert!(stmts[0].starts_with("CREATE TABLE IF NOT EXISTS xo_test.events"));
        assert!(
            stmts
                .iter()
                .all(|s| !s.contains("{db}") && !s.contains("--"))
        );
    }
}
