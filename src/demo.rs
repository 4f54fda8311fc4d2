//! `xoflow demo`: runs the whole pipeline in this process against the
//! configured broker and ClickHouse, sends sample events through the gRPC
//! collector, and prints what BI would see, read back from ClickHouse.
//!
//! It uses its own topics (suffixed per run) and a fresh `xoflow_demo`
//! database, so it never mixes with other data and can be re-run.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clickhouse::Row;
use serde::Deserialize;
use xoflow_common::shutdown::Shutdown;
use xoflow_proto::v1::{IngestRequest, collector_client::CollectorClient};

use crate::{Config, Stages, sample};

/// What the demo sends.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: usize,
    pub seed: u64,
    pub batch: usize,
}

#[derive(Debug, Row, Deserialize)]
struct KindCount {
    kind: String,
    rows: u64,
    distinct_events: u64,
}

/// Runs the demo end to end.
pub async fn run(mut cfg: Config, opts: DemoOptions) -> anyhow::Result<()> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    for t in [
        &mut cfg.kafka.topics.events,
        &mut cfg.kafka.topics.backfill,
        &mut cfg.kafka.topics.enriched,
        &mut cfg.kafka.topics.dead_letters,
    ] {
        t.push_str(&format!(".demo-{run_id}"));
    }
    cfg.clickhouse.database = "xoflow_demo".into();
    cfg.ingest.grpc_addr = "127.0.0.1:0".parse()?;
    cfg.ingest.http_addr = "127.0.0.1:0".parse()?;
    cfg.admin.addr = "127.0.0.1:0".parse()?;
    let ch = cfg.clickhouse.client().with_database("default");

    say(&format!(
        "broker {} · ClickHouse {} · database xoflow_demo (recreated)",
        cfg.kafka.brokers, cfg.clickhouse.url
    ));
    ch.query("DROP DATABASE IF EXISTS xoflow_demo")
        .execute()
        .await
        .context("is ClickHouse running? (deploy/local/up.sh starts it)")?;

    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();
    let running = crate::start(cfg.clone(), Stages::ALL, shutdown).await?;
    let started = Instant::now();
    while running.health.check().is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            running.stop();
            bail!(
                "the pipeline did not become ready in 60 s: {:?}",
                running.health.check()
            );
        }
        if running.shutdown.token.is_cancelled() {
            return running.wait().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!(
        "pipeline ready in {:.1} s: collector on {}, metrics on http://{}/metrics",
        started.elapsed().as_secs_f64(),
        running.grpc_addr.map(|a| a.to_string()).unwrap_or_default(),
        running.admin_addr
    ));

    let result = send_and_report(&cfg, &running, &opts).await;
    running.stop();
    let stopped = running.wait().await;
    result.and(stopped)
}

async fn send_and_report(
    cfg: &Config,
    running: &crate::Running,
    opts: &DemoOptions,
) -> anyhow::Result<()> {
    let addr = running.grpc_addr.context("ingest is not running")?;
    let mut client = CollectorClient::connect(format!("http://{addr}")).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let events = sample::events(opts.seed, opts.events, "demo-retail", "demo", now);
    let t0 = Instant::now();
    let mut accepted = 0u64;
    for chunk in events.chunks(opts.batch.max(1)) {
        let r = client
            .ingest(IngestRequest {
                events: chunk.to_vec(),
            })
            .await?
            .into_inner();
        accepted += u64::from(r.accepted);
    }
    say(&format!(
        "sent {} events over gRPC in {:.2} s; {} accepted (durable in Kafka)",
        events.len(),
        t0.elapsed().as_secs_f64(),
        accepted
    ));

    let ch = cfg.clickhouse.client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: u64 = ch
            .query("SELECT count() FROM (SELECT DISTINCT event_id FROM events)")
            .fetch_one()
            .await?;
        if n >= accepted {
            say(&format!(
                "all {n} events visible in ClickHouse {:.2} s after the first was sent",
                t0.elapsed().as_secs_f64()
            ));
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {accepted} events reached ClickHouse in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts: Vec<KindCount> = ch
        .query(
            "SELECT toString(kind) AS kind, count() AS rows, uniqExact(event_id) AS distinct_events \
             FROM events FINAL GROUP BY kind ORDER BY kind",
        )
        .fetch_all()
        .await?;
    println!();
    println!(
        "  Rows per kind in ClickHouse ({}.events)",
        cfg.clickhouse.database
    );
    println!("  {:<8} {:>8} {:>16}", "kind", "rows", "distinct events");
    for c in &counts {
        println!("  {:<8} {:>8} {:>16}", c.kind, c.rows, c.distinct_events);
    }
    let total: u64 = counts.iter().map(|c| c.rows).sum();
    println!("  {:<8} {:>8}", "total", total);
    println!();
    Ok(())
}

fn say(msg: &str) {
    println!("[xoflow demo] {msg}");
}
