//! `xoflow bench`: every stage against its raw baseline, in one run, on the
//! same broker and ClickHouse, so that the ratios hold on a noisy machine.
//!
//! - B1: raw rdkafka produce → consume of the same encoded events;
//! - B2: the gRPC collector against a bare tonic server of the same service
//!   that accepts everything at once (batched, streaming, one event per
//!   request);
//! - B3: the sink (Kafka → ClickHouse) against `clickhouse-client` inserting
//!   the same rows as RowBinary;
//! - B5: the enrich stage (resolve, repartition, join) against a
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
//! Results are printed as a table and written as JSON and Markdown.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use serde::Serialize;
use xoflow_common::{kafka::Outgoing, shutdown::Shutdown};
use xoflow_proto::{
    Message as _,
    v1::{CxFields, EnrichedEvent, Event},
};

use xoflow_app::{Config, Stages};

use crate::datagen::{self, GenConfig, load};

mod grpc;

/// One measured line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The baseline's value, when this row is compared to one.
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    /// The goal for the ratio (or the absolute), and whether it is met.
    pub goal: Option<String>,
    pub met: Option<bool>,
}

fn row(name: &str, value: f64, unit: &str) -> Row {
    Row {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline: None,
        ratio: None,
        goal: None,
        met: None,
    }
}

fn compared(name: &str, value: f64, unit: &str, baseline: f64, goal: f64) -> Row {
    let ratio = value / baseline.max(1e-9);
    Row {
        baseline: Some(baseline),
        ratio: Some(ratio),
        goal: Some(format!("≥ {goal:.2}×")),
        met: Some(ratio >= goal),
        ..row(name, value, unit)
    }
}

/// Runs the benchmark with `n` events and writes results under `out`.
pub async fn run(mut cfg: Config, n: usize, out: &Path) -> anyhow::Result<Vec<Row>> {
    let id = xoflow_common::clock::now_unix_millis();
    cfg.kafka.topics.suffix(&format!(".bench-{id}"));
    cfg.enrich.group_id = format!("bench-{id}-enrich");
    cfg.sink.group_id = format!("bench-{id}-sink");
    cfg.clickhouse.database = format!("xoflow_bench_{id}");
    cfg.ingest.grpc_addr = "127.0.0.1:0".parse()?;
    cfg.ingest.http_addr = "127.0.0.1:0".parse()?;
    cfg.admin.addr = "127.0.0.1:0".parse()?;
    cfg.ingest.hash_secret = xoflow_ingest::config::Secret::new("xoflow-bench-hash-secret");

    let now = xoflow_common::clock::now_unix_millis();
    let g = datagen::generate(&GenConfig {
        start_ms: now - now.rem_euclid(86_400_000) - 7 * 86_400_000,
        invalid_share: 0.0,
        scale: (n as f64 / 146_000.0).max(0.01),
        ..GenConfig::default()
    });
    let mut events = g.events;
    events.truncate(n);
    let n = events.len();
    let encoded: Vec<Vec<u8>> = events.iter().map(|e| e.encode_to_vec()).collect();
    let avg = encoded.iter().map(Vec::len).sum::<usize>() / n.max(1);
    println!("[bench] {n} generated events, {avg} bytes each on average (protobuf)");

    let mut rows = Vec::new();
    let b1 = raw_kafka(&cfg, &format!("bench-{id}-raw"), &encoded).await?;
    rows.push(row("B1 raw rdkafka produce→consume", b1, "msg/s"));

    rows.extend(collector_vs_echo(&cfg, &events).await?);

    let (enrich_rate, passthrough_rate) = enrich_vs_passthrough(&cfg, &events, id).await?;
    rows.push(compared(
        "B5 enrich stage (resolve + join)",
        enrich_rate,
        "events/s",
        passthrough_rate,
        0.8,
    ));
    rows.push(row(
        "B5 baseline consume→produce passthrough",
        passthrough_rate,
        "events/s",
    ));

    let (sink_rate, client_rate) = sink_vs_client(&cfg, &events).await?;
    rows.push(compared(
        "B3 sink Kafka→ClickHouse",
        sink_rate,
        "rows/s",
        client_rate,
        0.95,
    ));
    rows.push(row(
        "B3 baseline clickhouse-client RowBinary insert",
        client_rate,
        "rows/s",
    ));

    let p = pipeline(&cfg, events.clone()).await?;
    rows.push(compared(
        "P whole pipeline gRPC→ClickHouse",
        p.rate,
        "events/s",
        b1,
        0.33,
    ));
    let mut abs = row("P whole pipeline (absolute)", p.rate, "events/s");
    abs.goal = Some("≥ 50000 events/s".into());
    abs.met = Some(p.rate >= 50_000.0);
    rows.push(abs);
    rows.push(row("P ack latency p50 (closed loop)", p.p50_ms, "ms"));
    rows.push(row("P ack latency p99 (closed loop)", p.p99_ms, "ms"));
    rows.push(row("P CPU per event, xoflow", p.cpu_us_self, "µs"));
    rows.push(row(
        "P CPU per event, broker + ClickHouse",
        p.cpu_us_servers,
        "µs",
    ));
    rows.push(row("P peak RSS, xoflow", p.rss_mib, "MiB"));

    let o = open_loop(&cfg, &events, p.rate).await?;
    let mut half = row("P open loop at half peak, rate sent", o.rate, "events/s");
    half.goal = Some(format!("{:.0} events/s", p.rate / 2.0));
    rows.push(half);
    rows.push(row("P ack→visible latency p50 (half peak)", o.p50_ms, "ms"));
    let mut p99 = row("P ack→visible latency p99 (half peak)", o.p99_ms, "ms");
    p99.goal = Some("≤ 2000 ms".into());
    p99.met = Some(o.p99_ms <= 2_000.0);
    rows.push(p99);
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
    let mut flat = row(
        "P twice the peak: RSS growth, last vs second quarter",
        o.rss_growth * 100.0,
        "%",
    );
    flat.goal = Some(format!(
        "≤ 10% ({:.0} → {:.0} MiB)",
        o.rss_second_quarter_mib, o.rss_last_quarter_mib
    ));
    flat.met = Some(o.rss_growth <= 0.10);
    rows.push(flat);

    let _ = cfg.clickhouse.drop_database().await;
    write(out, &rows)?;
    Ok(rows)
}

async fn raw_kafka(cfg: &Config, topic: &str, encoded: &[Vec<u8>]) -> anyhow::Result<f64> {
    cfg.kafka.ensure_topics(&[topic]).await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("{topic}-g"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[topic])?;
    let producer = cfg.kafka.batch_producer()?;
    let start = Instant::now();
    let n = encoded.len();
    let consume = async {
        let mut got = 0usize;
        while got < n {
            let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .context("B1: consumer stalled")??;
            got += usize::from(m.payload().is_some());
        }
        anyhow::Ok(())
    };
    let produce = async {
        for chunk in encoded.chunks(10_000) {
            let records: Vec<Outgoing<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| Outgoing::keyed(if i % 2 == 0 { b"a" } else { b"b" }, b))
                .collect();
            producer.send_all(topic, &records).await?;
        }
        anyhow::Ok(())
    };
    let (c, p) = tokio::join!(consume, produce);
    c?;
    p?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The key ingest gives an event: its strongest customer key.
fn customer_key(e: &Event) -> &str {
    let c = e.customer.as_ref();
    [
        c.map(|c| c.customer_id.as_str()),
        c.map(|c| c.email_hash.as_str()),
        c.map(|c| c.phone_hash.as_str()),
        c.map(|c| c.social_handle_hash.as_str()),
        c.map(|c| c.device_id_hash.as_str()),
    ]
    .into_iter()
    .flatten()
    .find(|k| !k.is_empty())
    .unwrap_or(e.event_id.as_str())
}

/// A reader of a stage's output topic, joined before the stage starts so
/// that it sees the output as it is written.
struct OutputReader {
    consumer: StreamConsumer,
}

impl OutputReader {
    async fn join(cfg: &Config, topic: &str) -> anyhow::Result<Self> {
        cfg.kafka.ensure_topics(&[topic]).await?;
        let consumer: StreamConsumer = cfg.kafka.consumer(
            &format!("{topic}-reader"),
            rdkafka::consumer::DefaultConsumerContext,
        )?;
        consumer.subscribe(&[topic])?;
        let until = Instant::now() + Duration::from_secs(60);
        while consumer.assignment()?.count() == 0 {
            if Instant::now() > until {
                bail!("{topic}: reader got no partitions");
            }
            // Polling drives the group join; the topic is still empty.
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
        Ok(OutputReader { consumer })
    }

    /// Reads until 90% of `n` records are seen; the steady-state rate:
    /// records between 10% and 90% of `n` over the time between.
    async fn steady_rate(&self, n: usize) -> anyhow::Result<f64> {
        let (lo, hi) = (n / 10, n * 9 / 10);
        let mut seen = 0usize;
        let mut t_lo = None;
        while seen < hi.max(1) {
            let m = tokio::time::timeout(Duration::from_secs(120), self.consumer.recv())
                .await
                .with_context(|| format!("stalled after {seen} of {n} records"))??;
            seen += usize::from(m.payload().is_some());
            if seen == lo.max(1) {
                t_lo = Some(Instant::now());
            }
        }
        let secs = t_lo.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        Ok((hi - lo) as f64 / secs)
    }
}

/// B5: the enrich stage against a consume → produce passthrough of the same
/// pre-filled input, each on its own topics.
async fn enrich_vs_passthrough(
    cfg: &Config,
    events: &[Event],
    id: i64,
) -> anyhow::Result<(f64, f64)> {
    let encoded: Vec<(Vec<u8>, &str)> = events
        .iter()
        .map(|e| (e.encode_to_vec(), customer_key(e)))
        .collect();
    let fill = |topic: String| {
        let encoded = &encoded;
        async move {
            cfg.kafka.ensure_topics(&[&topic]).await?;
            let producer = cfg.kafka.batch_producer()?;
            for chunk in encoded.chunks(10_000) {
                send_keyed(&producer, &topic, chunk).await?;
            }
            anyhow::Ok(())
        }
    };
    let n = events.len();

    // The passthrough: the enrich loop's shape without the work.
    let (input, output) = (format!("bench-{id}-pt-in"), format!("bench-{id}-pt-out"));
    fill(input.clone()).await?;
    let reader = OutputReader::join(cfg, &output).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let passthrough = {
        let (kafka, stop, input, output) = (
            cfg.kafka.clone(),
            stop.clone(),
            input.clone(),
            output.clone(),
        );
        let (max, wait) = (cfg.enrich.batch_max_records, cfg.enrich.batch_max_wait);
        tokio::spawn(async move {
            let consumer: StreamConsumer = kafka.consumer(
                &format!("{input}-g"),
                rdkafka::consumer::DefaultConsumerContext,
            )?;
            consumer.subscribe(&[&input])?;
            let producer = kafka.batch_producer()?;
            loop {
                let batch =
                    xoflow_common::kafka::recv_batch(&consumer, max, wait, None, &stop).await?;
                if batch.is_empty() {
                    return anyhow::Ok(());
                }
                let records: Vec<Outgoing<'_>> = batch
                    .iter()
                    .map(|m| {
                        Outgoing::keyed(
                            m.key().unwrap_or_default(),
                            m.payload().unwrap_or_default(),
                        )
                    })
                    .collect();
                producer.send_all(&output, &records).await?;
                let offsets = xoflow_common::kafka::next_offsets(batch.iter())?;
                consumer.commit(&offsets, rdkafka::consumer::CommitMode::Async)?;
            }
        })
    };
    let passthrough_rate = reader.steady_rate(n).await?;
    stop.cancel();
    passthrough.await??;

    // The enrich stage on its own topics.
    let mut ecfg = cfg.clone();
    ecfg.kafka.topics.events = format!("bench-{id}-en-in");
    ecfg.kafka.topics.backfill = format!("bench-{id}-en-backfill");
    ecfg.kafka.topics.enriched = format!("bench-{id}-en-out");
    ecfg.enrich.group_id = format!("bench-{id}-b5-enrich");
    fill(ecfg.kafka.topics.events.clone()).await?;
    let reader = OutputReader::join(&ecfg, &ecfg.kafka.topics.enriched).await?;
    let running = xoflow_app::start(ecfg.clone(), Stages::ENRICH, Shutdown::new()).await?;
    let enrich_rate = reader.steady_rate(n).await?;
    running.stop();
    running.wait().await?;
    Ok((enrich_rate, passthrough_rate))
}

async fn count(ch: &clickhouse::Client, table: &str) -> u64 {
    ch.query(&format!("SELECT count() FROM {table}"))
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

async fn wait_rows(
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
async fn send_keyed(
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

/// The sink alone, warmed up, draining the enriched events as they are
/// produced, against `clickhouse-client` inserting the rows the sink wrote,
/// as RowBinary.
async fn sink_vs_client(cfg: &Config, events: &[Event]) -> anyhow::Result<(f64, f64)> {
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await?;
    let producer = cfg.kafka.batch_producer()?;
    let encoded: Vec<(Vec<u8>, &str)> = events
        .iter()
        .map(|e| {
            let en = EnrichedEvent {
                resolved_customer_id: e
                    .customer
                    .as_ref()
                    .map(|c| c.customer_id.clone())
                    .unwrap_or_default(),
                cx: Some(CxFields::default()),
                event: Some(e.clone()),
                ..Default::default()
            };
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

struct PipelineResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_self: f64,
    cpu_us_servers: f64,
    rss_mib: f64,
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn server_pids() -> Vec<String> {
    let scratch = std::env::var("XOFLOW_SCRATCH").unwrap_or_else(|_| "target/xoflow-local".into());
    ["tansu", "clickhouse"]
        .iter()
        .filter_map(|s| std::fs::read_to_string(format!("{scratch}/{s}.pid")).ok())
        .map(|p| p.trim().to_string())
        .collect()
}

/// A `/proc/self/status` memory figure (`VmHWM`, `VmRSS`) in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A whole pipeline of its own: the database and topics get `tag`.
fn own_pipeline(cfg: &Config, tag: &str) -> Config {
    let mut cfg = cfg.clone();
    cfg.clickhouse.database.push_str(&format!("_{tag}"));
    cfg.kafka.topics.suffix(&format!(".{tag}"));
    cfg
}

/// Waits until every started stage reports ready.
async fn ready(running: &xoflow_app::Running) -> anyhow::Result<()> {
    let since = Instant::now();
    while running.health.check().is_err() {
        if since.elapsed() > Duration::from_secs(60) {
            bail!("stages not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn pipeline(cfg: &Config, events: Vec<Event>) -> anyhow::Result<PipelineResult> {
    let cfg = own_pipeline(cfg, "p");
    let ch = cfg.clickhouse.client();
    let running = xoflow_app::start(cfg.clone(), Stages::ALL, Shutdown::new()).await?;
    ready(&running).await?;
    let servers = server_pids();
    let cpu0: f64 = cpu_seconds("self").unwrap_or(0.0);
    let srv0: f64 = servers.iter().filter_map(|p| cpu_seconds(p)).sum();
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
    let cpu = cpu_seconds("self").unwrap_or(0.0) - cpu0;
    let srv: f64 = servers.iter().filter_map(|p| cpu_seconds(p)).sum::<f64>() - srv0;
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

/// B2: the collector (in this process, on its own topics) and a bare
/// tonic server of the same service, driven by the same client with the
/// same events: batches of 1000 (8 in flight), 4 client streams, and one
/// event per request (64 in flight).
async fn collector_vs_echo(cfg: &Config, events: &[Event]) -> anyhow::Result<Vec<Row>> {
    const BATCH: usize = 1_000;
    const CONCURRENCY: usize = 8;
    const STREAMS: usize = 4;
    const UNARY_CONCURRENCY: usize = 64;
    let mut cfg = cfg.clone();
    for t in [
        &mut cfg.kafka.topics.events,
        &mut cfg.kafka.topics.backfill,
        &mut cfg.kafka.topics.dead_letters,
    ] {
        t.push_str(".b2");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let echo = grpc::serve_echo(stop.clone()).await?;
    grpc::wait_listening(echo).await?;
    let running = xoflow_app::start(cfg.clone(), Stages::INGEST, Shutdown::new()).await?;
    ready(&running).await?;
    let collector = running.grpc_addr.context("no collector")?;
    let warm: Vec<Event> = events.iter().take(2_000).cloned().collect();
    grpc::unary(echo, warm.clone(), BATCH, 2).await?;
    grpc::unary(collector, warm, BATCH, 2).await?;
    let single: Vec<Event> = events.iter().take(20_000).cloned().collect();
    let all = events.to_vec();

    let e_b = grpc::unary(echo, all.clone(), BATCH, CONCURRENCY).await?;
    let c_b = grpc::unary(collector, all.clone(), BATCH, CONCURRENCY).await?;
    let e_s = grpc::streaming(echo, all.clone(), BATCH, STREAMS).await?;
    let c_s = grpc::streaming(collector, all, BATCH, STREAMS).await?;
    let e_u = grpc::unary(echo, single.clone(), 1, UNARY_CONCURRENCY).await?;
    let c_u = grpc::unary(collector, single, 1, UNARY_CONCURRENCY).await?;
    running.stop();
    running.wait().await?;
    stop.cancel();
    for (what, r) in [("batched", &c_b), ("streaming", &c_s), ("unary", &c_u)] {
        if !r.all_accepted {
            println!("[bench] B2 {what}: the collector did not accept every event");
        }
    }
    Ok(vec![
        compared(
            "B2 collector, batched (1000/request)",
            c_b.per_second,
            "events/s",
            e_b.per_second,
            0.85,
        ),
        compared(
            "B2 collector, client streaming",
            c_s.per_second,
            "events/s",
            e_s.per_second,
            0.85,
        ),
        compared(
            "B2 collector, unary (1 event/request)",
            c_u.per_second,
            "events/s",
            e_u.per_second,
            0.85,
        ),
        compared(
            "B2 collector batched vs its unary",
            c_b.per_second,
            "events/s",
            c_u.per_second,
            10.0,
        ),
        compared(
            "B2 collector streaming vs its unary",
            c_s.per_second,
            "events/s",
            c_u.per_second,
            10.0,
        ),
        row("B2 baseline echo, batched", e_b.per_second, "events/s"),
        row("B2 baseline echo, streaming", e_s.per_second, "events/s"),
        row("B2 baseline echo, unary", e_u.per_second, "events/s"),
    ])
}

struct OpenLoopResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    overload_offered: u64,
    overload_accepted: u64,
    rss_second_quarter_mib: f64,
    rss_last_quarter_mib: f64,
    rss_growth: f64,
}

/// Resident memory of this process now (not the high-water mark).
fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// `events` with every id suffixed, so a round is new to the pipeline.
fn round_of(events: &[Event], round: usize, n: usize) -> Vec<Event> {
    events
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e.event_id = format!("{}-r{round}-{i}", e.event_id);
            e
        })
        .collect()
}

/// A fresh pipeline fed open loop: first at half of `peak` for about 20 s,
/// measuring when each acknowledged request's rows are visible; then at
/// twice `peak` for about 20 s, sampling this process's resident memory.
///
/// Visibility is read from `count()` of the events table every 10 ms: the
/// k-th acknowledged event counts as visible when the table holds k rows.
/// Rows overtake each other across partitions, so this is the latency of
/// the pipeline as a queue, not of one particular event.
async fn open_loop(cfg: &Config, events: &[Event], peak: f64) -> anyhow::Result<OpenLoopResult> {
    const BATCH: usize = 100;
    const SECONDS: f64 = 20.0;
    let cfg = own_pipeline(cfg, "ol");
    let ch = cfg.clickhouse.client();
    let running = xoflow_app::start(cfg.clone(), Stages::ALL, Shutdown::new()).await?;
    ready(&running).await?;
    let addr = format!("http://{}", running.grpc_addr.context("no collector")?);

    // Warm-up, so that consumer-group joins (seconds on the local broker)
    // are not counted as latency: a small round, until it is visible.
    let warm = load::send(
        &addr,
        round_of(events, 0, 1_000),
        &load::LoadOptions {
            batch: BATCH,
            rate: None,
            concurrency: 4,
        },
    )
    .await?;
    wait_rows(&ch, "events", warm.accepted, Duration::from_secs(600)).await?;
    let base = count(&ch, "events").await;

    // Half the peak, with the visibility timeline polled alongside.
    let half = (peak / 2.0).max(100.0);
    let n = ((half * SECONDS) as usize).max(BATCH);
    let batch = round_of(events, 1, n);
    let stop_polling = tokio_util::sync::CancellationToken::new();
    let poller = {
        let ch = ch.clone();
        let stop = stop_polling.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(tokio::time::Instant, u64)> = Vec::new();
            while !stop.is_cancelled() {
                let c = count(&ch, "events").await.saturating_sub(base);
                seen.push((tokio::time::Instant::now(), c));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
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
        "events",
        base + sent.accepted,
        Duration::from_secs(600),
    )
    .await?;
    stop_polling.cancel();
    let seen = poller.await?;
    let mut acks = sent.acks.clone();
    acks.sort_by_key(|(at, _)| *at);
    let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
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
    }

    // Twice the peak, in rounds of about 2 s, memory sampled every 250 ms.
    let twice = peak * 2.0;
    let per_round = ((twice * 2.0) as usize).max(BATCH);
    let rounds = (SECONDS / 2.0) as usize;
    let stop_sampling = tokio_util::sync::CancellationToken::new();
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
    for round in 2..rounds + 2 {
        let batch = round_of(events, round, per_round);
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
    stop_sampling.cancel();
    let samples = sampler.await?;
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
        rss_second_quarter_mib: second,
        rss_last_quarter_mib: last,
        rss_growth: if second > 0.0 {
            (last - second) / second
        } else {
            0.0
        },
    })
}

/// Prints the table and writes `results.json` and `results.md` under `out`.
fn write(out: &Path, rows: &[Row]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut md = String::from(
        "| measurement | value | baseline | ratio | goal | met |\n| --- | ---: | ---: | ---: | --- | --- |\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} {} | {} | {} | {} | {} |\n",
            r.name,
            r.value,
            r.unit,
            r.baseline.map(|b| format!("{b:.1}")).unwrap_or_default(),
            r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default(),
            r.goal.clone().unwrap_or_default(),
            match r.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            }
        ));
    }
    println!("\n{md}");
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(rows)?)?;
    println!("[bench] written to {}", out.display());
    Ok(())
}
