//! `xoflow bench`: every stage against its raw baseline, in one run, on the
//! same broker and ClickHouse, so that the ratios hold on a noisy machine.
//!
//! - B1: raw rdkafka produce → consume of the same encoded events;
//! - B2: the gRPC collector against a bare tonic server of the same service
//!   that accepts everything at once (batched, streaming, one event per
//!   request);
//! - B3: the sink (Kafka → ClickHouse) against `clickhouse-client` inserting
//!   the same rows as RowBinary (and, beside it, the sink catching up on a
//!   topic that already holds every record);
//! - B6: the sink against a raw loop on the same records and schema
//!   (rdkafka consumer → the sink's row → `clickhouse` crate insert, no
//!   dedup, positions or retries), fed and timed the same way;
//! - B5: the enrich stage (resolve; repartition of the events not keyed
//!   by their customer id; join) against a
//!   consume → produce passthrough of the same events on the same broker,
//!   both as steady-state rates (outputs between 10% and 90% of the input,
//!   read back from the output topic);
//! - P: the whole pipeline in this process (gRPC → ingest → Kafka → enrich →
//!   Kafka → sink → ClickHouse), events/s until every row is visible, CPU
//!   seconds per event of this process, the broker and ClickHouse, and peak
//!   RSS;
//! - P open loop: a fresh pipeline fed on a schedule at half the peak just
//!   measured, latency from each request's acknowledgement to its rows being
//!   counted in ClickHouse; then twice the peak, with the resident memory of
//!   this process sampled throughout (it should stay flat: the collector
//!   sheds what it cannot persist, the other stages work in bounded batches).
//!
//! - A: alerts — a fresh pipeline with the demo's alert rules and a
//!   webhook receiver in this process, fed at half the peak: from each
//!   alert's triggering event reaching ingest to its delivery.
//!
//! Rates are steady states where the measurement is a flow (B1, B3, B6,
//! P: the middle 80% of the items, [`support::Flow`]; B5 reads its own
//! output the same way), with the whole run beside them, the method of
//! the runs published before. `--runs` repeats the whole table and reports
//! each row's median and spread; `benches/pipeline.sh` runs the steady-state
//! method (1M events, 60 s at half the peak, 5 minutes at twice the peak,
//! three runs).
//!
//! One module per measurement — `kafka` (B1), `collector` and its echo
//! server `grpc` (B2), `sink` (B3, B6), `enrich` (B5), `pipeline` and
//! `open_loop` (P) — each starting what it measures through `xoflow-app`
//! exactly as `xoflow run` would; `process` reads CPU time and memory from
//! `/proc`, `support` holds what several share. Results are printed as a
//! table and written as JSON and Markdown (`report`).

use std::path::Path;

use xoflow_app::Config;
use xoflow_proto::Message as _;

use crate::datagen::{self, GenConfig};

mod alerts;
mod collector;
mod enrich;
mod grpc;
mod kafka;
mod open_loop;
mod pipeline;
mod process;
mod report;
mod retention;
mod sink;
mod support;

pub use report::{Row, Summary};
use report::{compared, row, write};
pub use support::new_customers;

/// The measurements `xoflow bench` can run (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// B1: raw Kafka produce → consume.
    Raw,
    /// B2: the collectors against a bare tonic server.
    Collector,
    /// B5: enrich against a passthrough, in time order and history first.
    Enrich,
    /// B3: the sink against clickhouse-client.
    Sink,
    /// P: the whole pipeline, closed and open loop (needs B1's figure: runs
    /// it too).
    Pipeline,
    /// A: ingest → webhook latency of alerts at half the pipeline's peak
    /// (needs P's closed-loop peak: runs it too).
    Alerts,
}

/// How long and how often `xoflow bench` measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events per measurement.
    pub events: usize,
    /// Times the whole table is measured; each row is reported as the
    /// median over the runs with its spread.
    pub runs: usize,
    /// How long the open loop runs at half the peak (ack → visible) and
    /// the alert measurement is fed, in seconds.
    pub half_secs: f64,
    /// How long the open loop runs at twice the peak (memory), in seconds.
    pub overload_secs: f64,
    /// Only these measurements; all when empty.
    pub only: Vec<Part>,
    /// P and A keep every record consumed until they end (the method
    /// before 2026-12-06) instead of deleting what was committed
    /// ([`retention`]).
    pub keep_consumed: bool,
    /// The first instant of the generated week (Unix ms, UTC); `None`:
    /// [`span_in_one_month`].
    pub start_ms: Option<i64>,
}

/// The start of the generated span of `days` whole days: the days before
/// today, unless they reach into this month from the last; then the last
/// `days` days of the last month. The sink's tables are partitioned by
/// month, and an insert writes a part per month its rows fall in: with the
/// week across a month's start, ClickHouse took 10 % more CPU per event in
/// P (BENCHMARKS.md, "The generated week in one month"). Live traffic
/// crosses a month's start once a month, not in every measurement.
pub fn span_in_one_month(now_ms: i64, days: u32) -> i64 {
    use chrono::{DateTime, Datelike, Days, NaiveTime};
    let start = datagen::days_before_today(now_ms, days);
    let month_of =
        |ms: i64| DateTime::from_timestamp_millis(ms).and_then(|t| t.date_naive().with_day(1));
    // The span ends with yesterday, in the month that holds yesterday.
    let (Some(starts_in), Some(ends_in)) = (
        month_of(start),
        month_of(start + i64::from(days) * 86_400_000 - 1),
    ) else {
        return start;
    };
    if starts_in == ends_in {
        return start;
    }
    (ends_in - Days::new(days.into()))
        .and_time(NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
}

/// Runs the benchmark (`opts.runs` times the measurements in `opts.only`,
/// or all) and writes the results under `out`: every run's rows and each
/// row's median and spread.
pub async fn run(cfg: Config, opts: &Options, out: &Path) -> anyhow::Result<Vec<Summary>> {
    let days = GenConfig::default().days;
    let start_ms = opts
        .start_ms
        .unwrap_or_else(|| span_in_one_month(xoflow_common::clock::now_unix_millis(), days));
    let g = datagen::generate(&GenConfig {
        start_ms,
        days,
        invalid_share: 0.0,
        scale: (opts.events as f64 / 146_000.0).max(0.01),
        ..GenConfig::default()
    });
    let mut events = g.events;
    events.truncate(opts.events);
    let encoded: Vec<Vec<u8>> = events.iter().map(|e| e.encode_to_vec()).collect();
    let avg = encoded.iter().map(Vec::len).sum::<usize>() / events.len().max(1);
    println!(
        "[bench] {} generated events, {avg} bytes each on average (protobuf)",
        events.len()
    );
    let mut runs = Vec::new();
    let mut summaries = Vec::new();
    for i in 0..opts.runs.max(1) {
        println!("[bench] run {} of {}", i + 1, opts.runs.max(1));
        runs.push(run_once(cfg.clone(), &events, &encoded, opts).await?);
        // Written after every run, so that a long session interrupted late
        // still leaves what it measured.
        summaries = write(out, &runs)?;
    }
    Ok(summaries)
}

/// One run of the table on topics, groups and databases of its own.
async fn run_once(
    mut cfg: Config,
    events: &[xoflow_proto::v1::Event],
    encoded: &[Vec<u8>],
    opts: &Options,
) -> anyhow::Result<Vec<Row>> {
    let wanted = |p: Part| opts.only.is_empty() || opts.only.contains(&p);
    let consumed = if opts.keep_consumed {
        retention::Consumed::Kept
    } else {
        retention::Consumed::Deleted
    };
    let id = xoflow_common::clock::now_unix_millis();
    cfg.kafka.topics.suffix(&format!(".bench-{id}"));
    cfg.enrich.group_id = format!("bench-{id}-enrich");
    cfg.sink.group_id = format!("bench-{id}-sink");
    cfg.alert.group_id = format!("bench-{id}-alert");
    cfg.alert.api_addr = "127.0.0.1:0".parse()?;
    cfg.clickhouse.database = format!("xoflow_bench_{id}");
    cfg.ingest.grpc_addr = "127.0.0.1:0".parse()?;
    cfg.ingest.http_addr = "127.0.0.1:0".parse()?;
    cfg.admin.addr = "127.0.0.1:0".parse()?;
    cfg.ingest.hash_secret = xoflow_ingest::config::Secret::new("xoflow-bench-hash-secret");

    let mut rows = Vec::new();
    let b1 = if wanted(Part::Raw)
        || wanted(Part::Pipeline)
        || (wanted(Part::Alerts) && fixed_peak().is_none())
    {
        let b1 = kafka::measure(&cfg, &format!("bench-{id}-raw"), encoded).await?;
        rows.push(row("B1 raw rdkafka produce→consume", b1, "msg/s"));
        b1
    } else {
        f64::NAN.into()
    };

    // Each measurement's topics are deleted when it is done: a broker that
    // keeps records in memory would otherwise hold every run's millions.
    let done = |cfg: &Config| {
        let (kafka, part) = (cfg.kafka.clone(), format!("bench-{id}"));
        async move {
            if let Err(e) = kafka.delete_topics_containing(&part).await {
                println!("[bench] could not delete the topics of {part}: {e}");
            }
        }
    };
    done(&cfg).await;
    if wanted(Part::Collector) {
        rows.extend(collector::measure(&cfg, events).await?);
        done(&cfg).await;
    }

    if wanted(Part::Enrich) {
        let b5 = enrich::measure(&cfg, events, id).await?;
        done(&cfg).await;
        rows.push(compared(
            "B5 enrich stage (resolve + join), time order",
            b5.in_order,
            "events/s",
            b5.passthrough,
            0.8,
        ));
        rows.push(compared(
            "B5 enrich stage, history first",
            b5.history_first,
            "events/s",
            b5.passthrough,
            0.8,
        ));
        rows.push(row(
            "B5 history first: repairs read while 80% of the events passed",
            b5.repairs as f64,
            "records",
        ));
        rows.push(row(
            "B5 baseline consume→produce passthrough",
            b5.passthrough,
            "events/s",
        ));
    }

    if wanted(Part::Sink) {
        let rates = sink::measure(&cfg, events).await?;
        done(&cfg).await;
        rows.push(compared(
            "B3 sink Kafka→ClickHouse",
            rates.sink,
            "rows/s",
            rates.client,
            0.95,
        ));
        // How fast a sink catches up after an outage; beside B3, not its
        // goal (measured since 2026-12-05).
        rows.push(
            compared(
                "B3 sink catching up on a backlog",
                rates.drained,
                "rows/s",
                rates.client,
                0.0,
            )
            .unjudged(),
        );
        rows.push(row(
            "B3 baseline clickhouse-client RowBinary insert",
            rates.client,
            "rows/s",
        ));
        rows.push(compared(
            "B6 sink ÷ raw consume→insert loop",
            rates.sink,
            "rows/s",
            rates.raw_loop,
            0.85,
        ));
        rows.push(row(
            "B6 baseline raw rdkafka→clickhouse loop",
            rates.raw_loop,
            "rows/s",
        ));
    }

    if !wanted(Part::Pipeline) && !wanted(Part::Alerts) {
        let _ = cfg.clickhouse.drop_database().await;
        return Ok(rows);
    }
    // The alert measurement alone at a given peak (`XOFLOW_BENCH_PEAK`,
    // events/s): skips the closed loop whose peak it would halve, so runs
    // compared with each other are fed at the same rate.
    if let Some(peak) = fixed_peak()
        && !wanted(Part::Pipeline)
    {
        rows.extend(alert_rows(
            alerts::measure(&cfg, events, peak, opts.half_secs, consumed).await?,
            peak,
        ));
        done(&cfg).await;
        let _ = cfg.clickhouse.drop_database().await;
        return Ok(rows);
    }
    let p = pipeline::measure(&cfg, events.to_vec(), consumed).await?;
    done(&cfg).await;
    rows.push(compared(
        "P whole pipeline gRPC→ClickHouse",
        p.rate,
        "events/s",
        b1,
        0.5,
    ));
    rows.push(
        row("P whole pipeline (absolute)", p.rate, "events/s")
            .goal("≥ 50000 events/s", p.rate.value >= 50_000.0),
    );
    rows.push(row("P ack latency p50 (closed loop)", p.p50_ms, "ms"));
    rows.push(row("P ack latency p99 (closed loop)", p.p99_ms, "ms"));
    // The earlier method's figure, the whole process with the load
    // generator in it, stands beside the new one.
    rows.push(
        row("P CPU per event, xoflow", p.cpu_us_self, "µs")
            .goal("≤ 12 µs", p.cpu_us_self.value <= 12.0),
    );
    rows.push(row("P CPU per event, load generator", p.cpu_us_load, "µs"));
    let [broker, clickhouse] = p.cpu_us_servers;
    rows.push(row(
        "P CPU per event, broker + ClickHouse",
        broker + clickhouse,
        "µs",
    ));
    // Apart since 2026-12-06: which server the pipeline's records cost
    // the more.
    rows.push(row("P CPU per event, broker", broker, "µs"));
    rows.push(row("P CPU per event, ClickHouse", clickhouse, "µs"));
    rows.push(row("P peak RSS, xoflow", p.rss_mib, "MiB"));

    // The open loops are fed at fractions of the peak the closed loop
    // reached in its steady state, or of `XOFLOW_BENCH_PEAK`: runs that
    // compare settings are then fed at the same rate.
    let peak = fixed_peak().unwrap_or(p.rate.value);
    if wanted(Part::Alerts) {
        rows.extend(alert_rows(
            alerts::measure(&cfg, events, peak, opts.half_secs, consumed).await?,
            peak,
        ));
        done(&cfg).await;
    }
    if !wanted(Part::Pipeline) {
        let _ = cfg.clickhouse.drop_database().await;
        return Ok(rows);
    }

    let o = open_loop::measure(
        &cfg,
        events,
        peak,
        opts.half_secs,
        opts.overload_secs,
        consumed,
    )
    .await?;
    done(&cfg).await;
    rows.push(
        row("P open loop at half peak, rate sent", o.rate, "events/s")
            .asked(format!("{:.0} events/s", peak / 2.0)),
    );
    rows.push(row("P ack→visible latency p50 (half peak)", o.p50_ms, "ms"));
    rows.push(
        row("P ack→visible latency p99 (half peak)", o.p99_ms, "ms")
            .goal("≤ 1000 ms", o.p99_ms <= 1_000.0),
    );
    rows.push(row(
        "P twice the peak: events offered",
        o.overload_offered as f64,
        "events",
    ));
    rows.push(row(
        "P twice the peak: events accepted",
        o.overload_accepted as f64,
        "events",
    ));
    rows.push(
        row(
            "P twice the peak: rate offered",
            o.overload_offered as f64 / o.overload_taken_secs.max(f64::EPSILON),
            "events/s",
        )
        .asked(format!(
            "{:.0} events/s ({:.0} s asked, {:.0} s taken)",
            peak * 2.0,
            opts.overload_secs,
            o.overload_taken_secs
        )),
    );
    rows.push(
        row(
            "P twice the peak: RSS growth, last vs second quarter",
            o.rss_growth * 100.0,
            "%",
        )
        .goal(
            format!(
                "≤ 10% ({:.0} → {:.0} MiB)",
                o.rss_second_quarter_mib, o.rss_last_quarter_mib
            ),
            o.rss_growth <= 0.10,
        ),
    );
    rows.push(row(
        "P most active parts in one partition, half peak",
        o.parts_half as f64,
        "parts",
    ));
    rows.push(row(
        "P most active parts in one partition, twice the peak",
        o.parts_twice as f64,
        "parts",
    ));

    let _ = cfg.clickhouse.drop_database().await;
    Ok(rows)
}

/// The peak `XOFLOW_BENCH_PEAK` gives, if set.
fn fixed_peak() -> Option<f64> {
    std::env::var("XOFLOW_BENCH_PEAK").ok()?.parse().ok()
}

/// A's rows, fed at half `peak`.
fn alert_rows(a: alerts::AlertsResult, peak: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.push(
        row("A alerts at half peak, rate sent", a.rate, "events/s")
            .asked(format!("{:.0} events/s", peak / 2.0)),
    );
    rows.push(
        row(
            "A alerts delivered, raised on the event's first pass (signature checked; invalid ones counted apart)",
            a.alerts as f64,
            "alerts",
        )
        .goal("0 invalid", a.invalid == 0 && a.alerts > 0),
    );
    rows.push(row("A ingest→webhook latency p50", a.p50_ms, "ms"));
    rows.push(
        row("A ingest→webhook latency p99", a.p99_ms, "ms").goal("< 5000 ms", a.p99_ms < 5_000.0),
    );
    rows.push(row("A ingest→webhook latency max", a.max_ms, "ms"));
    rows.push(row(
        "A ingest→enriched (the triggering event joined) p50",
        a.enriched_p50_ms,
        "ms",
    ));
    rows.push(row(
        "A ingest→enriched (the triggering event joined) p99",
        a.enriched_p99_ms,
        "ms",
    ));
    rows.push(row(
        "A alerts raised by a repair (not in the percentiles above)",
        a.repaired as f64,
        "alerts",
    ));
    rows.push(row(
        "A repair-raised alerts, answer's ingest→webhook p99 (includes the wait for the late data)",
        a.repaired_p99_ms,
        "ms",
    ));
    rows.push(row(
        "A raised→webhook (alert stage) p50",
        a.stage_p50_ms,
        "ms",
    ));
    rows.push(row(
        "A raised→webhook (alert stage) p99",
        a.stage_p99_ms,
        "ms",
    ));
    rows
}

#[cfg(test)]
mod tests {
    use super::span_in_one_month;
    use crate::datagen::parse_date;

    fn at(day: &str, hour: i64) -> i64 {
        parse_date(day).expect("a test date") + hour * 3_600_000
    }

    #[test]
    fn the_generated_week_stays_in_one_month() {
        for (today, start) in [
            // The seven days before today are in one month: they are the week.
            ("2026-12-15", "2026-12-08"),
            ("2026-12-08", "2026-12-01"),
            ("2026-12-01", "2026-11-24"),
            // They would reach into this month: the last month's last week.
            ("2026-12-07", "2026-11-24"),
            ("2026-12-02", "2026-11-24"),
            ("2027-01-03", "2026-12-25"),
            ("2027-03-05", "2027-02-22"),
            ("2028-03-05", "2028-02-23"),
        ] {
            for hour in [0, 13, 23] {
                assert_eq!(
                    span_in_one_month(at(today, hour), 7),
                    parse_date(start).expect("a test date"),
                    "today {today} {hour}:00"
                );
            }
        }
    }
}
