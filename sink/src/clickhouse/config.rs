//! Sink and ClickHouse settings (`[sink]`, `[clickhouse]`).

use std::time::Duration;

use serde::Deserialize;

/// A setting the sink cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The database name is spliced into DDL, so it is held to a safe
    /// alphabet.
    #[error("clickhouse.database {0:?} must be 1-64 characters of [A-Za-z0-9_]")]
    DatabaseName(String),
    /// The cluster name is spliced into DDL (`ON CLUSTER`) too.
    #[error("clickhouse.cluster {0:?} must be 1-64 characters of [A-Za-z0-9_]")]
    ClusterName(String),
}

/// 1-64 characters of `[A-Za-z0-9_]`: safe to splice into DDL.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How the sink batches and retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Consumer group shared by every sink instance.
    pub group_id: String,
    /// Flush once a batch holds this many rows: large inserts are what
    /// ClickHouse is fast at (one part per insert).
    pub batch_rows: usize,
    /// Flush once a batch holds this many encoded bytes: bounds memory.
    pub batch_bytes: usize,
    /// Flush once the oldest row waited this long: bounds latency, and the
    /// inserts per table to one per `batch_max_wait` (start to start) under
    /// load; the shipped 250 ms gives four a second at most. Rows that
    /// waited in the consumer's queue while the previous batch was written
    /// have waited since that write began.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// First back-off between retries of a ClickHouse call that failed
    /// transiently; doubles each time, with jitter. Transient failures are
    /// retried without a bound (the sink never skips a batch and never
    /// gives up on an outage); only errors ClickHouse documents as
    /// permanent (schema, permissions, a bad query) stop the sink.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// No wait between retries is longer than this: bounds how long after
    /// ClickHouse returns the sink resumes.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// Work waiting (committed offsets below the high watermark) with
    /// nothing committed for this long turns readiness to `no_progress`,
    /// or, when this instance holds no partition, readiness and liveness
    /// to `no_partitions`.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// How many offsets back, per partition, written event ids are
    /// remembered to drop redelivered copies of an event (enrich retries,
    /// clients re-sending). Bounds the dedup memory.
    pub dedup_window: i64,
    /// Look every batch's (tenant, event id, revision) up in the dedup
    /// index (`event_ids_by_time`) before inserting, so that a copy arriving beyond `dedup_window` (a
    /// re-run import months later) is dropped too: idempotency without a
    /// horizon for everything the aggregates count. Costs a lookup per
    /// fifth of `batch_rows`, sent as the batch fills, and one for the rest
    /// at the flush (docs/clickhouse.md, "Exactly once"); off: copies
    /// beyond the window are written again, as before.
    pub dedup_index: bool,
    /// Look up the rows enrich vouched for as new revisions too
    /// (`EnrichedEvent.new_revision`: repairs no copy of which can be
    /// stored). Off by default; on after enrich's state was discarded or
    /// restored from an older copy of its changelog, whose repairs can
    /// mint revisions stored before (docs/clickhouse.md, "Revisions enrich
    /// vouches for").
    #[serde(default)]
    pub look_up_new_revisions: bool,
    /// Former bound on insert retries. Retries are unbounded now; the key
    /// is still accepted so that existing configuration files load, and
    /// the stage warns that it is ignored.
    #[serde(default)]
    pub insert_retries: Option<u32>,
}

/// Where ClickHouse is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. http://127.0.0.1:8123.
    pub url: String,
    /// The database holding xoflow's tables.
    pub database: String,
    pub user: String,
    pub password: String,
    /// A ClickHouse cluster (a name from the servers' `remote_servers`) to
    /// create the schema on: every table replicated on each shard
    /// (`<table>_local`, `Replicated*MergeTree`) and a `Distributed` table
    /// under the usual name for inserts and reads; the sink's inserts wait
    /// until every shard has its rows. Unset: one server.
    /// docs/clickhouse.md, "On a cluster".
    #[serde(default)]
    pub cluster: Option<String>,
    /// How inserts travel: `lz4` compresses each block on the sink's CPU
    /// (worth it when ClickHouse is across a network), `none` sends it as
    /// is (on loopback or a fast LAN, where LZ4 was 2-3 % of the whole
    /// pipeline's CPU and saved nothing; BENCHMARKS.md).
    #[serde(default)]
    pub compression: InsertCompression,
}

/// The `[clickhouse] compression` of inserts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InsertCompression {
    #[default]
    Lz4,
    None,
}

impl ClickHouseConfig {
    /// A client for this server. Row-type validation is off because
    /// ClickHouse 18.16 knows neither the setting nor the
    /// RowBinaryWithNamesAndTypes format it relies on; the row layout is
    /// pinned by tests against the migrations instead.
    pub fn client(&self) -> clickhouse::Client {
        let client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_database(&self.database)
            .with_validation(false)
            .with_compression(match self.compression {
                InsertCompression::Lz4 => clickhouse::Compression::Lz4,
                InsertCompression::None => clickhouse::Compression::None,
            });
        match &self.cluster {
            // An insert into a Distributed table returns once every shard
            // holds its rows, as the sink's positions (read back from
            // ClickHouse) assume. `insert_distributed_sync` is the name
            // both old and current servers know.
            Some(_) => client.with_setting("insert_distributed_sync", "1"),
            None => client,
        }
    }

    /// Drops the database and everything in it: what a benchmark, the demo
    /// or a test does with a database of its own when it is done.
    pub async fn drop_database(&self) -> Result<(), clickhouse::error::Error> {
        self.client()
            .with_database("default")
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await
    }

    /// Checks the database name can be spliced into DDL safely. Pure.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !safe_name(&self.database) {
            return Err(ConfigError::DatabaseName(self.database.clone()));
        }
        match &self.cluster {
            Some(c) if !safe_name(c) => Err(ConfigError::ClusterName(c.clone())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_database_names_pass() {
        let cfg = |database: &str| ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: database.into(),
            user: "default".into(),
            password: String::new(),
            cluster: None,
            compression: InsertCompression::default(),
        };
        assert_eq!(cfg("xoflow_test_1").validate(), Ok(()));
        for bad in ["", "x;DROP", "a-b", &"x".repeat(65)] {
            assert_eq!(
                cfg(bad).validate(),
                Err(ConfigError::DatabaseName(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
