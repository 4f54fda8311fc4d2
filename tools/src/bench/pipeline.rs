//! P, closed loop: the whole pipeline in this process (gRPC → ingest →
//! Kafka → enrich → Kafka → sink → ClickHouse), events/s until every row is
//! visible, CPU seconds per event of this process and of the servers, and
//! peak RSS.

use std::time::{Duration, Instant};

use anyhow::Context;
use xoflow_app::{Config, Stages};
use xoflow_common::shutdown::Shutdown;
use xoflow_proto::v1::Event;

use super::{
    process::{cpu_seconds, myself, peak_rss_mib, servers},
    support::{own_pipeline, ready, wait_rows},
};
use crate::datagen::load;

pub(super) struct PipelineResult {
    pub(super) rate: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) cpu_us_self: f64,
    pub(super) cpu_us_servers: f64,
    pub(super) rss_mib: f64,
}

pub(super) async fn measure(cfg: &Config, events: Vec<Event>) -> anyhow::Result<PipelineResult> {
    let cfg = own_pipeline(cfg, "p");
    let ch = cfg.clickhouse.client();
    let running = xoflow_app::start(cfg.clone(), Stages::ALL, Shutdown::new()).await?;
    ready(&running).await?;
    let servers = servers();
    let me = myself();
    let cpu = || me.as_ref().and_then(cpu_seconds).unwrap_or(0.0);
    let cpu0 = cpu();
    let srv0: f64 = servers.iter().filter_map(cpu_seconds).sum();
    let n = events.len() as u64;
    let addr = format!("http://{}", running.grpc_addr.context("no collector")?);
    let start = Instant::now();
    let sent = load::send(
        &addr,
        events,
        &load::LoadOptions {
            batch: 1_000,
            rate: None,
            concurrency: 4,
        },
    )
    .await?;
    wait_rows(
        &ch,
        "events",
        sent.accepted.min(n),
        Duration::from_secs(600),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu() - cpu0;
    let srv: f64 = servers.iter().filter_map(cpu_seconds).sum::<f64>() - srv0;
    running.stop();
    running.wait().await?;
    let _ = cfg.clickhouse.drop_database().await;
    Ok(PipelineResult {
        rate: n as f64 / secs,
        p50_ms: sent.p50_us as f64 / 1000.0,
        p99_ms: sent.p99_us as f64 / 1000.0,
        cpu_us_self: cpu * 1e6 / n as f64,
        cpu_us_servers: srv * 1e6 / n as f64,
        rss_mib: peak_rss_mib(),
    })
}
