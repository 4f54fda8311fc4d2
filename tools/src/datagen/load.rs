//! Sending generated events to the gRPC collector: open-loop at a target
//! rate (the load generator for benchmarks), or as fast as a fixed number
//! of concurrent requests allow.
//!
//! Open loop means a batch is due at `start + k × batch / rate` whether or
//! not earlier ones were answered, and its latency is measured from when it
//! was due: a slow server shows up as latency, not as a politely slower
//! client (no coordinated omission).

use std::{sync::Arc, time::Duration};

use hdrhistogram::Histogram;
use tokio::{sync::Semaphore, time::Instant};
use tonic::transport::Channel;
use xoflow_proto::v1::{Event, IngestRequest, collector_client::CollectorClient};

/// How to send.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Events per request.
    pub batch: usize,
    /// Target events per second; `None` sends as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Most requests in flight at once.
    pub concurrency: usize,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Requests answered with an error status (their events are not
    /// acknowledged).
    pub failed_requests: u64,
    pub seconds: f64,
    /// Acknowledgement latency of requests, in microseconds.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// When each request was answered and how many of its events were
    /// accepted, in answer order: the acknowledgement timeline that
    /// visibility latency is measured from.
    pub acks: Vec<(Instant, u32)>,
}

impl LoadReport {
    pub fn events_per_second(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }
}

/// Sends `events` to the collector at `addr` (`http://host:port`).
pub async fn send(
    addr: &str,
    events: Vec<Event>,
    opts: &LoadOptions,
) -> anyhow::Result<LoadReport> {
    let channel = Channel::from_shared(addr.to_string())?.connect().await?;
    let client = CollectorClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let batch = opts.batch.max(1);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut report = LoadReport::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut it = events.into_iter().peekable();
    let mut k = 0u64;
    while it.peek().is_some() {
        let chunk: Vec<Event> = it.by_ref().take(batch).collect();
        // Sleep only on a schedule: a timer wait, even for "now", rounds up
        // to the next millisecond tick and would cap the client at ~1k
        // requests/s.
        let due = match opts.rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(k as f64 * batch as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        k += 1;
        let permit = permits.clone().acquire_owned().await?;
        let mut client = client.clone();
        tasks.spawn(async move {
            let n = chunk.len() as u64;
            let r = client.ingest(IngestRequest { events: chunk }).await;
            drop(permit);
            (n, r.map(|r| r.into_inner()), due.elapsed(), Instant::now())
        });
        // Collect finished requests as we go so memory stays flat.
        while let Some(done) = tasks.try_join_next() {
            record(done?, &mut report, &mut hist);
        }
    }
    while let Some(done) = tasks.join_next().await {
        record(done?, &mut report, &mut hist);
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.p50_us = hist.value_at_quantile(0.50);
    report.p90_us = hist.value_at_quantile(0.90);
    report.p99_us = hist.value_at_quantile(0.99);
    report.max_us = hist.max();
    Ok(report)
}

fn record(
    (n, result, latency, answered): (
        u64,
        Result<xoflow_proto::v1::IngestResponse, tonic::Status>,
        Duration,
        Instant,
    ),
    report: &mut LoadReport,
    hist: &mut Histogram<u64>,
) {
    report.sent += n;
    match result {
        Ok(r) => {
            report.accepted += u64::from(r.accepted);
            report.rejected += u64::from(r.rejected);
            report.acks.push((answered, r.accepted));
        }
        Err(status) => {
            report.failed_requests += 1;
            tracing::warn!(code = ?status.code(), message = status.message(), "request failed");
        }
    }
    let _ = hist.record((latency.as_micros() as u64).max(1));
}
