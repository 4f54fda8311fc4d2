//! B3: the sink (Kafka → ClickHouse) against `clickhouse-client` inserting
//! the same rows as RowBinary.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::bail;
use xoflow_app::{Config, Stages};
use xoflow_common::shutdown::Shutdown;
use xoflow_proto::{Message as _, v1::Event};

use super::support::{count, send_keyed, wait_rows};

/// The sink alone, warmed up, draining the enriched events as they are
/// produced, against `clickhouse-client` inserting the rows the sink wrote,
/// as RowBinary.
pub(super) async fn measure(cfg: &Config, events: &[Event]) -> anyhow::Result<(f64, f64)> {
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await?;
    let producer = cfg.kafka.batch_producer()?;
    let encoded: Vec<(Vec<u8>, &str)> = events
        .iter()
        .map(|e| {
            let en = crate::datagen::as_enriched(e.clone());
            (en.encode_to_vec(), e.event_id.as_str())
        })
        .collect();
    xoflow_sink::migrate(&cfg.clickhouse).await?;
    let ch = cfg.clickhouse.client();
    let n = events.len() as u64;
    // The sink joins its group and reads its positions first (seconds on
    // the local broker): one record, until it is visible. Then the rest is
    // timed from its first produce to its last row visible: the sink
    // drains it while it arrives, as it would in service.
    let running = xoflow_app::start(cfg.clone(), Stages::SINK, Shutdown::new()).await?;
    send_keyed(&producer, &t.enriched, &encoded[..1]).await?;
    wait_rows(&ch, "events", 1, Duration::from_secs(600)).await?;
    let start = Instant::now();
    for chunk in encoded[1..].chunks(10_000) {
        send_keyed(&producer, &t.enriched, chunk).await?;
    }
    wait_rows(&ch, "events", n, Duration::from_secs(600)).await?;
    let sink_rate = (n - 1) as f64 / start.elapsed().as_secs_f64();
    running.stop();
    running.wait().await?;

    // The same rows, exported as RowBinary and inserted by clickhouse-client
    // into an empty copy of the table.
    let port = std::env::var("XOFLOW_CLICKHOUSE_TCP_PORT").unwrap_or_else(|_| "9000".into());
    let db = &cfg.clickhouse.database;
    let dir = std::env::temp_dir().join(format!("{db}-rowbinary"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("events.rowbinary");
    let client = |query: &str| {
        let mut c = std::process::Command::new("clickhouse-client");
        c.args(["--port", &port, "--database", db, "--query", query]);
        c
    };
    // system.columns lists columns in table order (18.16 has no `position`
    // column to sort by, nor SELECT * EXCEPT).
    let cols: Vec<String> = ch
        .query(
            "SELECT name FROM system.columns \
             WHERE database = currentDatabase() AND table = 'events' AND name != 'inserted_at'",
        )
        .fetch_all()
        .await?;
    let cols = cols.join(", ");
    let ok = client(&format!("SELECT {cols} FROM events FORMAT RowBinary"))
        .stdout(std::fs::File::create(&file)?)
        .status()?
        .success();
    if !ok {
        bail!("clickhouse-client export failed");
    }
    // Into the same schema (materialized view included) in a second
    // database, so both sides pay for the aggregates.
    let mut copy_cfg = cfg.clickhouse.clone();
    copy_cfg.database = format!("{db}_copy");
    xoflow_sink::migrate(&copy_cfg).await?;
    let start = Instant::now();
    let ok = client(&format!(
        "INSERT INTO {}.events ({cols}) FORMAT RowBinary",
        copy_cfg.database
    ))
    .stdin(std::fs::File::open(&file)?)
    .stdout(Stdio::null())
    .status()?
    .success();
    let secs = start.elapsed().as_secs_f64();
    if !ok {
        bail!("clickhouse-client insert failed");
    }
    let copied = count(&ch, &format!("{}.events", copy_cfg.database)).await;
    let _ = copy_cfg.drop_database().await;
    if copied != n {
        bail!("clickhouse-client inserted {copied} rows, expected {n}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((sink_rate, n as f64 / secs))
}
