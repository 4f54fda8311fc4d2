//! What several measurements share: ClickHouse row counts, keyed
//! produces, a pipeline on its own database and topics, and waiting for
//! readiness.

use std::time::{Duration, Instant};

use anyhow::bail;
use xoflow_app::{Config, Running};
use xoflow_common::kafka::Outgoing;

pub(super) async fn count(ch: &clickhouse::Client, table: &str) -> u64 {
    ch.query(&format!("SELECT count() FROM {table}"))
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

pub(super) async fn wait_rows(
    ch: &clickhouse::Client,
    table: &str,
    n: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    while count(ch, table).await < n {
        if Instant::now() > until {
            bail!("{table}: fewer than {n} rows after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Produces encoded records keyed by event id, acknowledged as a batch.
pub(super) async fn send_keyed(
    producer: &xoflow_common::kafka::BatchProducer,
    topic: &str,
    records: &[(Vec<u8>, &str)],
) -> anyhow::Result<()> {
    let out: Vec<Outgoing<'_>> = records
        .iter()
        .map(|(b, k)| Outgoing::keyed(k.as_bytes(), b))
        .collect();
    producer.send_all(topic, &out).await?;
    Ok(())
}

/// `n` of `events`, cycled, with every id suffixed `-<tag><round>-<i>`: a
/// round the pipeline has not seen.
pub(super) fn round_of(
    events: &[xoflow_proto::v1::Event],
    tag: &str,
    round: usize,
    n: usize,
) -> Vec<xoflow_proto::v1::Event> {
    events
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e.event_id = format!("{}-{tag}{round}-{i}", e.event_id);
            e
        })
        .collect()
}

/// A whole pipeline of its own: the database, topics and consumer groups
/// get `tag`. (Enrich's internal topics and state are named after its
/// group: a measurement sharing the group would start from the join state
/// an earlier one left, and its events would land in those customers'
/// histories as repairs.)
pub(super) fn own_pipeline(cfg: &Config, tag: &str) -> Config {
    let mut cfg = cfg.clone();
    cfg.clickhouse.database.push_str(&format!("_{tag}"));
    cfg.kafka.topics.suffix(&format!(".{tag}"));
    for group in [
        &mut cfg.enrich.group_id,
        &mut cfg.sink.group_id,
        &mut cfg.alert.group_id,
    ] {
        group.push_str(&format!("-{tag}"));
    }
    cfg
}

/// Waits until every started stage reports ready.
pub(super) async fn ready(running: &Running) -> anyhow::Result<()> {
    let since = Instant::now();
    while running.health.check().is_err() {
        if since.elapsed() > Duration::from_secs(60) {
            bail!("stages not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
