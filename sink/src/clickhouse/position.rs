//! Where each Kafka partition stands in ClickHouse, read from ClickHouse
//! itself: the exactly-once half of the sink.
//!
//! Every row carries its lineage (topic, partition, offset). When the sink
//! meets a partition it has no state for (start-up, or a partition moved to
//! it in a rebalance), it reads the highest offset already stored for that
//! partition — in `events` for the enriched topic, in `dead_letters` for the
//! dead-letter topic — and the event ids written
//! in a recent window. Records at or below that offset are already stored
//! and are skipped; records whose event id was already written (an upstream
//! redelivery: enrich retried, or a client re-sent) are skipped too. Kafka's
//! committed offsets only bound how much is re-read; they decide nothing.
//!
//! The partition map is cleared for revoked partitions by [`SinkContext`],
//! whose callbacks rdkafka runs inside `recv()` on the sink's own task: a
//! revoke is therefore seen between flushes, never during one, so a
//! partition's new owner reads the position only after the old owner's last
//! insert finished.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use clickhouse::{Client, Row};
use rdkafka::{
    ClientContext,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
};
use serde::Deserialize;

use super::SinkError;

/// What the sink knows about one partition it owns.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Highest offset stored in ClickHouse (or written by this sink since);
    /// -1 when nothing is.
    pub stored: i64,
    /// Event ids written from this partition within the dedup window.
    pub recent: HashSet<String>,
}

/// Partitions revoked since the loop last looked, collected by the rebalance
/// callback.
#[derive(Debug, Default)]
pub struct SinkContext {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl SinkContext {
    /// Takes the partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        self.revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance
            && let Ok(mut revoked) = self.revoked.lock()
        {
            for e in tpl.elements() {
                revoked.push((e.topic().to_string(), e.partition()));
            }
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct Stored {
    rows: u64,
    max_offset: i64,
}

/// The highest offset of `topic`/`partition` stored in `table` (the table
/// that topic's records go to: `events` for the enriched topic,
/// `dead_letters` for the dead-letter topic); -1 when none is.
pub async fn stored_offset(
    client: &Client,
    table: &str,
    topic: &str,
    partition: i32,
) -> Result<i64, SinkError> {
    let s: Stored = client
        .query(&format!(
            "SELECT count() AS rows, toInt64(max(kafka_offset)) AS max_offset FROM {table} \
             WHERE kafka_topic = ? AND kafka_partition = ?"
        ))
        .bind(topic)
        .bind(partition)
        .fetch_one()
        .await
        .map_err(SinkError::clickhouse)?;
    Ok(if s.rows > 0 { s.max_offset } else { -1 })
}

/// Loads the state of a partition: its stored offset in `table` and the
/// event ids written within `window` offsets below it.
pub async fn load(
    client: &Client,
    table: &str,
    topic: &str,
    partition: i32,
    window: i64,
) -> Result<PartitionState, SinkError> {
    wait_for_running_inserts(client, table).await?;
    let stored = stored_offset(client, table, topic, partition).await?;
    let mut recent = HashSet::new();
    if stored >= 0 && table == "events" {
        let ids: Vec<String> = client
            .query(
                "SELECT event_id FROM events \
                 WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset > ?",
            )
            .bind(topic)
            .bind(partition)
            .bind(stored - window)
            .fetch_all()
            .await
            .map_err(SinkError::clickhouse)?;
        recent.extend(ids);
    }
    Ok(PartitionState { stored, recent })
}

/// Longest wait for inserts still running on the server.
const INSERT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until no insert into `table` is running on the server (at most
/// [`INSERT_WAIT`]). A previous owner killed while its last insert was in
/// flight leaves that insert running; it may still land, and the position
/// must be read after it does, or its rows would be written twice.
async fn wait_for_running_inserts(client: &Client, table: &str) -> Result<(), SinkError> {
    let until = tokio::time::Instant::now() + INSERT_WAIT;
    loop {
        let running: u64 = client
            .query("SELECT count() FROM system.processes WHERE query LIKE ?")
            .bind(format!("INSERT INTO `{table}`%"))
            .fetch_one()
            .await
            .map_err(SinkError::clickhouse)?;
        if running == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            tracing::warn!(
                table,
                running,
                "inserts still running after the wait; reading the position anyway"
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Per-partition state, keyed by (topic, partition).
pub type Positions = HashMap<(String, i32), PartitionState>;
