//! A: alert latency. A fresh pipeline with every stage, the demo's journey
//! maps and alert rules (`deploy/config/demo.toml`), and each department's
//! webhook on a receiver in this process that checks every signature; fed
//! open loop at half the peak the closed loop measured, for `--seconds`
//! of the generator's week (its planted problems raise the alerts).
//!
//! Per alert delivered: from its triggering event's `received_at` — stamped
//! by the collector before the Kafka write its acknowledgement waits for,
//! so the figure is an upper bound of acknowledgement → delivery — to the
//! receiver's clock (the same machine's). Also from the alert's
//! `raised_at` (enrich) to the receiver: the alert stage's own share.
//!
//! An alert raised by a repair (the trigger's revision is above 0: the
//! customer's order or identity arrived after the answer) could not be
//! raised before the data that completed it was sent; measured from the
//! answer's `received_at` it would time the generator's feed, not the
//! pipeline. Those are counted apart, with that figure shown for what it
//! is, and only first-pass alerts make the ingest → webhook percentiles.
//!
//! With `XOFLOW_BENCH_TRACE` set, one line per first-pass alert goes to
//! stderr: `TRACE <ms into the feed> <ingest → enriched ms> <enriched →
//! webhook ms>`, to see whether a backlog builds and where.

use std::time::Duration;

use anyhow::Context;
use xoflow_app::Config;
use xoflow_proto::v1::Event;

use super::{
    retention::Consumed,
    support::{Rows, latency_histogram, own_pipeline, round_of, started, wait_rows},
};
use crate::{
    datagen::{alerts::DemoConfig, load},
    demo::{self, Receiver},
};

pub(super) struct AlertsResult {
    pub(super) rate: f64,
    pub(super) alerts: u64,
    pub(super) invalid: u64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) stage_p50_ms: f64,
    pub(super) stage_p99_ms: f64,
    /// Ingest → enrich's join of the triggering event: the pipeline's share.
    pub(super) enriched_p50_ms: f64,
    pub(super) enriched_p99_ms: f64,
    /// Alerts raised by a repair, and their p99 from the answer's ingest.
    pub(super) repaired: u64,
    pub(super) repaired_p99_ms: f64,
}

pub(super) async fn measure(
    cfg: &Config,
    events: &[Event],
    peak: f64,
    secs: f64,
    consumed: Consumed,
) -> anyhow::Result<AlertsResult> {
    const BATCH: usize = 100;
    let mut cfg = own_pipeline(cfg, "al");
    let demo = DemoConfig::embedded();
    demo::apply_demo_config(&mut cfg, &demo)?;
    let receiver = Receiver::start("xoflow-bench-webhook-secret".into()).await?;
    demo::route_alerts(&mut cfg, &receiver, &demo.departments())?;
    let (running, ch, retention) = started(&cfg, consumed).await?;
    let addr = format!("http://{}", running.grpc_addr.context("no collector")?);

    // Warm-up: consumer-group joins are not latency.
    let warm = load::send(
        &addr,
        round_of(events, "a", 0, 1_000),
        &load::LoadOptions {
            batch: BATCH,
            rate: None,
            concurrency: 4,
        },
    )
    .await?;
    wait_rows(&ch, Rows::Visible, warm.accepted, Duration::from_secs(600)).await?;
    let from_ms = xoflow_common::clock::now_unix_millis();

    let half = (peak / 2.0).max(100.0);
    let n = ((half * secs) as usize).max(BATCH);
    let sent = load::send(
        &addr,
        round_of(events, "a", 1, n),
        &load::LoadOptions {
            batch: BATCH,
            rate: Some(half),
            concurrency: 256,
        },
    )
    .await?;
    demo::wait_alerts(
        &cfg,
        &ch,
        &receiver,
        Duration::from_secs(3),
        Duration::from_secs(300),
    )
    .await?;
    let deliveries = receiver.deliveries();
    retention.stop().await;
    running.stop();
    running.wait().await?;
    receiver.stop().await;
    let _ = cfg.clickhouse.drop_database().await;

    // An hour, in ms.
    const MAX_MS: u64 = 3_600_000;
    let mut total = latency_histogram(MAX_MS)?;
    let mut stage = latency_histogram(MAX_MS)?;
    let mut repaired = latency_histogram(MAX_MS)?;
    let mut enriched = latency_histogram(MAX_MS)?;
    let mut invalid = 0;
    for d in &deliveries {
        if !d.valid {
            invalid += 1;
            continue;
        }
        // Alerts on the measured round's events only (the warm-up's came
        // before; a silence's trigger is the customer's last event, not
        // what made it due).
        if d.cause != "event" {
            continue;
        }
        let Some(ingested) = d.ingested_ms.filter(|t| *t >= from_ms) else {
            continue;
        };
        let from_ingest = (d.received_ms - ingested).max(1) as u64;
        if d.revision > 0 {
            repaired.record(from_ingest)?;
        } else {
            total.record(from_ingest)?;
            if let Some(at) = d.enriched_ms {
                enriched.record((at - ingested).max(1) as u64)?;
                if std::env::var_os("XOFLOW_BENCH_TRACE").is_some() {
                    eprintln!(
                        "TRACE {} {} {}",
                        ingested - from_ms,
                        at - ingested,
                        d.received_ms - at
                    );
                }
            }
        }
        if let Some(raised) = d.raised_ms {
            stage.record((d.received_ms - raised).max(1) as u64)?;
        }
    }
    Ok(AlertsResult {
        rate: sent.events_per_second(),
        alerts: total.len(),
        invalid,
        p50_ms: total.value_at_quantile(0.50) as f64,
        p99_ms: total.value_at_quantile(0.99) as f64,
        max_ms: total.max() as f64,
        stage_p50_ms: stage.value_at_quantile(0.50) as f64,
        stage_p99_ms: stage.value_at_quantile(0.99) as f64,
        enriched_p50_ms: enriched.value_at_quantile(0.50) as f64,
        enriched_p99_ms: enriched.value_at_quantile(0.99) as f64,
        repaired: repaired.len(),
        repaired_p99_ms: repaired.value_at_quantile(0.99) as f64,
    })
}
