//! P, open loop: a fresh pipeline fed on a schedule at half the peak the
//! closed loop measured (ack → visible latency), then at twice the peak
//! with this process's resident memory sampled throughout (it should stay
//! flat: the collector sheds what it cannot persist). How long each phase
//! runs is the caller's (`--seconds`, `--overload-seconds`). The half-peak
//! latencies are also printed per second of acknowledgement, which tells a
//! queue that keeps growing from a stall that clears.

use std::time::Duration;

use anyhow::Context;
use xoflow_app::Config;
use xoflow_proto::v1::Event;

use super::{
    process::rss_mib,
    retention::Consumed,
    support::{Rows, count, latency_histogram, own_pipeline, round_of, started, wait_rows},
};
use crate::datagen::load;

pub(super) struct OpenLoopResult {
    pub(super) rate: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) overload_offered: u64,
    pub(super) overload_accepted: u64,
    /// How long the phase took: rounds are started until `overload_secs`
    /// have passed, and the last runs to its end.
    pub(super) overload_taken_secs: f64,
    pub(super) rss_second_quarter_mib: f64,
    pub(super) rss_last_quarter_mib: f64,
    pub(super) rss_growth: f64,
    /// The most active parts one partition of one table held, sampled
    /// every second, at half the peak and at twice the peak: what the
    /// sink's insert rate asks of ClickHouse's merges.
    pub(super) parts_half: u64,
    pub(super) parts_twice: u64,
}

/// The most active parts in one partition of any table of the database.
async fn most_parts(ch: &clickhouse::Client) -> u64 {
    ch.query(
        "SELECT max(c) FROM (SELECT count() AS c FROM system.parts \
         WHERE active AND database = currentDatabase() GROUP BY table, partition)",
    )
    .fetch_one::<u64>()
    .await
    .unwrap_or(0)
}

/// Samples [`most_parts`] every second until `stop`; the maximum seen.
fn sample_parts(
    ch: &clickhouse::Client,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let ch = ch.clone();
    tokio::spawn(async move {
        let mut most = 0;
        while !stop.is_cancelled() {
            most = most.max(most_parts(&ch).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        most
    })
}

/// A fresh pipeline fed open loop: first at half of `peak` for `half_secs`,
/// measuring when each acknowledged request's rows are visible; then at
/// twice `peak` for `overload_secs`, sampling this process's resident
/// memory.
///
/// Visibility is read from the count of the events table's revision-0 rows
/// every 50 ms ([`Rows::Visible`]; every 10 ms before 2026-12-06): the k-th
/// acknowledged event counts as visible when the table holds k of them.
/// Rows overtake each other across partitions, so this is the latency of
/// the pipeline as a queue, not of one particular event.
pub(super) async fn measure(
    cfg: &Config,
    events: &[Event],
    peak: f64,
    half_secs: f64,
    overload_secs: f64,
    consumed: Consumed,
) -> anyhow::Result<OpenLoopResult> {
    const BATCH: usize = 100;
    let cfg = own_pipeline(cfg, "ol");
    let (running, ch, retention) = started(&cfg, consumed).await?;
    let addr = format!("http://{}", running.grpc_addr.context("no collector")?);

    // Warm-up, so that consumer-group joins (seconds on the local broker)
    // are not counted as latency: a small round, until it is visible.
    let warm = load::send(
        &addr,
        round_of(events, "r", 0, 1_000),
        &load::LoadOptions {
            batch: BATCH,
            rate: None,
            concurrency: 4,
        },
    )
    .await?;
    wait_rows(&ch, Rows::Visible, warm.accepted, Duration::from_secs(600)).await?;
    let base = count(&ch, Rows::Visible).await;

    // Half the peak, with the visibility timeline polled alongside.
    let half = (peak / 2.0).max(100.0);
    let n = ((half * half_secs) as usize).max(BATCH);
    let batch = round_of(events, "r", 1, n);
    let stop_polling = tokio_util::sync::CancellationToken::new();
    let parts_half = sample_parts(&ch, stop_polling.clone());
    let poller = {
        let ch = ch.clone();
        let stop = stop_polling.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(tokio::time::Instant, u64)> = Vec::new();
            while !stop.is_cancelled() {
                let c = count(&ch, Rows::Visible).await.saturating_sub(base);
                seen.push((tokio::time::Instant::now(), c));
                tokio::time::sleep(Rows::Visible.every(Duration::from_millis(10))).await;
            }
            seen
        })
    };
    // When the phase starts (its per-second lines below count from its
    // first acknowledgement, moments later), so that what samples the
    // servers from outside (CPU, merges) can be read beside those lines.
    if let Some(t) =
        chrono::DateTime::from_timestamp_millis(xoflow_common::clock::now_unix_millis())
    {
        println!("[bench] half peak from {} UTC", t.format("%H:%M:%S%.3f"));
    }
    let sent = load::send(
        &addr,
        batch,
        &load::LoadOptions {
            batch: BATCH,
            rate: Some(half),
            concurrency: 256,
        },
    )
    .await?;
    wait_rows(
        &ch,
        Rows::Visible,
        base + sent.accepted,
        Duration::from_secs(600),
    )
    .await?;
    stop_polling.cancel();
    let seen = poller.await?;
    let parts_half = parts_half.await?;
    let mut acks = sent.acks.clone();
    acks.sort_by_key(|(at, _)| *at);
    // Ten minutes, in µs.
    const MAX_US: u64 = 600_000_000;
    let mut latencies = latency_histogram(MAX_US)?;
    // The same latencies per second of acknowledgement: a queue that grows
    // and a stall that clears look alike in the p99, not here.
    let mut seconds = Vec::<hdrhistogram::Histogram<u64>>::new();
    let start = acks.first().map(|(at, _)| *at);
    let mut cumulative = 0u64;
    let mut v = 0usize;
    for (at, accepted) in acks {
        if accepted == 0 {
            continue;
        }
        cumulative += u64::from(accepted);
        while v < seen.len() && seen[v].1 < cumulative {
            v += 1;
        }
        let Some((visible, _)) = seen.get(v) else {
            break;
        };
        let us = visible.saturating_duration_since(at).as_micros() as u64;
        latencies.record_n(us.max(1), u64::from(accepted))?;
        let second = start.map_or(0, |s| at.saturating_duration_since(s).as_secs() as usize);
        while seconds.len() <= second {
            seconds.push(latency_histogram(MAX_US)?);
        }
        seconds[second].record_n(us.max(1), u64::from(accepted))?;
    }
    for (i, h) in seconds.iter().enumerate() {
        println!(
            "[bench] half peak, acknowledged in second {i}: {} events, ack → visible p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
        );
    }

    // Twice the peak, in rounds of about 2 s, memory sampled every 250 ms.
    // A round starts when the previous one was answered: where the
    // pipeline already fills the cores a round takes longer than 2 s and
    // the rate offered is below twice the peak (reported). The phase is
    // held to `overload_secs` of the clock, not to a number of rounds: a
    // fixed count of rounds ran 2.2× as long as asked on two cores, and
    // the memory row compared quarters minutes further apart
    // (BENCHMARKS.md, "What the RSS row measures").
    let twice = peak * 2.0;
    let per_round = ((twice * 2.0) as usize).max(BATCH);
    let phase = Duration::from_secs_f64(overload_secs);
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let parts_twice = sample_parts(&ch, stop_sampling.clone());
    let sampler = {
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                samples.push(rss_mib());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            samples
        })
    };
    let mut offered = 0u64;
    let mut accepted = 0u64;
    let overload_started = tokio::time::Instant::now();
    for round in 2.. {
        if round > 2 && overload_started.elapsed() >= phase {
            break;
        }
        let batch = round_of(events, "r", round, per_round);
        let r = load::send(
            &addr,
            batch,
            &load::LoadOptions {
                batch: BATCH,
                rate: Some(twice),
                concurrency: 256,
            },
        )
        .await?;
        offered += r.sent;
        accepted += r.accepted;
    }
    let overload_taken = overload_started.elapsed().as_secs_f64();
    stop_sampling.cancel();
    let samples = sampler.await?;
    let parts_twice = parts_twice.await?;
    retention.stop().await;
    running.stop();
    running.wait().await?;
    let _ = cfg.clickhouse.drop_database().await;
    let quarter = |q: usize| {
        let len = samples.len();
        let part = &samples[len * q / 4..(len * (q + 1) / 4).max(len * q / 4 + 1).min(len)];
        part.iter().sum::<f64>() / part.len().max(1) as f64
    };
    let (second, last) = if samples.len() >= 4 {
        (quarter(1), quarter(3))
    } else {
        (0.0, 0.0)
    };
    Ok(OpenLoopResult {
        rate: sent.events_per_second(),
        p50_ms: latencies.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        overload_offered: offered,
        overload_accepted: accepted,
        overload_taken_secs: overload_taken,
        rss_second_quarter_mib: second,
        rss_last_quarter_mib: last,
        rss_growth: if second > 0.0 {
            (last - second) / second
        } else {
            0.0
        },
        parts_half,
        parts_twice,
    })
}
