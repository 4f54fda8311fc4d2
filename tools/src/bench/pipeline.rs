//! P, closed loop: the whole pipeline in this process (gRPC → ingest →
//! Kafka → enrich → Kafka → sink → ClickHouse), rows visible per second as
//! a steady state ([`Flow`], the whole run until every row is visible
//! beside it), CPU seconds per event of this process (less the load
//! generator's own thread, [`send_apart`]) and of the servers over the
//! whole run, and peak RSS.

use std::time::Duration;

use anyhow::Context;
use xoflow_app::Config;
use xoflow_proto::v1::Event;

use super::{
    process::{cpu_seconds, myself, peak_rss_mib, servers},
    report::Figure,
    retention::Consumed,
    support::{Flow, Rows, follow_rows, own_pipeline, send_apart, started},
};
use crate::datagen::load;

pub(super) struct PipelineResult {
    pub(super) rate: Figure,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// CPU per event of this process less the load generator's thread;
    /// as a [`Figure`]'s earlier method, the whole process's.
    pub(super) cpu_us_self: Figure,
    /// CPU per event of the load generator's thread.
    pub(super) cpu_us_load: f64,
    /// CPU per event of the broker and of ClickHouse.
    pub(super) cpu_us_servers: [f64; 2],
    pub(super) rss_mib: f64,
}

pub(super) async fn measure(
    cfg: &Config,
    events: Vec<Event>,
    consumed: Consumed,
) -> anyhow::Result<PipelineResult> {
    let cfg = own_pipeline(cfg, "p");
    let (running, ch, retention) = started(&cfg, consumed).await?;
    let servers = servers();
    let me = myself();
    let cpu = || me.as_ref().and_then(cpu_seconds).unwrap_or(0.0);
    let cpu0 = cpu();
    let servers_cpu = || {
        servers
            .each_ref()
            .map(|s| s.as_ref().and_then(cpu_seconds).unwrap_or(0.0))
    };
    let srv0 = servers_cpu();
    let n = events.len() as u64;
    let addr = format!("http://{}", running.grpc_addr.context("no collector")?);
    let mut flow = Flow::start(n);
    let send = send_apart(
        addr,
        events,
        load::LoadOptions {
            batch: 1_000,
            rate: None,
            concurrency: 4,
        },
    );
    // Rows are followed while the events are sent; a refused event would
    // leave the follower waiting for a row that never comes: say so at once.
    let (sent, load_cpu) = {
        let follow = follow_rows(&ch, Rows::Visible, 0, &mut flow, Duration::from_secs(900));
        tokio::pin!(send, follow);
        let mut followed = None;
        let sent = tokio::select! {
            sent = &mut send => sent?,
            done = &mut follow => {
                followed = Some(done);
                send.await?
            }
        };
        let (sent, load_cpu) = sent;
        anyhow::ensure!(
            sent.accepted == n,
            "P: the collector accepted {} of {n} events",
            sent.accepted
        );
        match followed {
            Some(done) => done?,
            None => follow.await?,
        }
        (sent, load_cpu)
    };
    let cpu = cpu() - cpu0;
    let srv = servers_cpu();
    retention.stop().await;
    running.stop();
    running.wait().await?;
    let _ = cfg.clickhouse.drop_database().await;
    Ok(PipelineResult {
        rate: flow.rate(),
        p50_ms: sent.p50_us as f64 / 1000.0,
        p99_ms: sent.p99_us as f64 / 1000.0,
        cpu_us_self: Figure {
            value: (cpu - load_cpu) * 1e6 / n as f64,
            whole_run: Some(cpu * 1e6 / n as f64),
        },
        cpu_us_load: load_cpu * 1e6 / n as f64,
        cpu_us_servers: [0, 1].map(|i| (srv[i] - srv0[i]) * 1e6 / n as f64),
        rss_mib: peak_rss_mib(),
    })
}
