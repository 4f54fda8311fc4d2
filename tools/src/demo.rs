//! `xoflow demo`: what xoflow is for, in one command.
//!
//! Generates a week of realistic customer-experience data (`xoflow gen`),
//! runs the whole pipeline in this process against the configured broker and
//! ClickHouse, sends the data through the gRPC collector, and prints what BI
//! would see — read back from ClickHouse — with the generator's ground truth
//! beside every figure. It uses its own topics (suffixed per run) and a
//! fresh `xoflow_demo` database, so it never mixes with other data.
//!
//! It also closes the loop: the brands' journey maps and alert rules
//! ([`DEMO_CONFIG`], `deploy/config/demo.toml`) are laid over the
//! configuration, every department's alerts are delivered to a webhook
//! receiver this process starts on 127.0.0.1 (it checks each delivery's
//! signature), and the report ends with the alerts raised per department
//! and rule beside the generator's truth, the deliveries, and how long
//! they took.
//!
//! ```text
//! generator ──gRPC──► ingest ─► enrich ─► sink ─► ClickHouse ──► the BI report
//!                                  │ alerts
//!                                  ▼
//!                               alert stage ──► ClickHouse `alerts` ──┐
//!                                  │ POST, signed                     ├─► "Closing the loop"
//!                                  ▼                                  │
//!                               receiver (this process) ──────────────┘
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clickhouse::Row;
use serde::Deserialize;
use xoflow_common::shutdown::Shutdown;

use xoflow_app::{Config, Stages};

pub use crate::datagen::alerts::DEMO_CONFIG;
use crate::datagen::{
    self, GenConfig, Truth,
    alerts::DemoConfig,
    load::{self, LoadOptions},
    truth::NpsCounts,
};
pub use receiver::{Delivery, Receiver};

/// What the demo generates and how it sends it.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub generator: GenConfig,
    /// Events per gRPC request.
    pub batch: usize,
}

/// Figures read back from ClickHouse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BiReport {
    /// Planted personal data found verbatim in stored text.
    pub unmasked_pii: u64,
    pub events_by_kind: BTreeMap<String, u64>,
    /// Rows of `survey_answers`: one per answer of every survey.
    pub survey_answers: u64,
    pub touchpoints: Vec<TouchpointFigures>,
    pub stores: Vec<StoreFigures>,
    pub negative_topics: BTreeMap<String, u64>,
    pub dead_letters: BTreeMap<String, u64>,
    pub at_risk: Vec<RiskFigure>,
    /// The closed loop: alerts stored and delivered.
    pub alerts: AlertFigures,
}

/// Alerts as ClickHouse and the departments' webhook receiver saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFigures {
    /// Every alert in the `alerts` table, one per alert id.
    pub stored: Vec<StoredAlert>,
    /// Rows in the `alerts` table (before merges) and distinct alert ids:
    /// equal when each alert was written once.
    pub rows: u64,
    pub unique: u64,
    /// Every delivery the receiver got, in arrival order.
    pub deliveries: Vec<Delivery>,
    /// Delivery latency, ms (p50, p99), of each alert's first valid
    /// delivery: from the alert's `raised_at`, and from when ingest
    /// received the triggering event (event alerts only).
    pub from_raised_ms: Option<(i64, i64)>,
    pub from_ingest_ms: Option<(i64, i64)>,
    /// Whether the ingest times are ClickHouse's `received_at` (whole
    /// seconds) because the deliveries do not carry them.
    pub ingest_in_seconds: bool,
}

impl AlertFigures {
    /// Stored alerts per (tenant, rule, department).
    pub fn counts(&self) -> BTreeMap<(String, String, String), u64> {
        let mut out = BTreeMap::new();
        for a in &self.stored {
            *out.entry((a.tenant.clone(), a.rule.clone(), a.department.clone()))
                .or_default() += 1;
        }
        out
    }

    /// Deliveries the receiver refused: a signature that does not verify,
    /// a stale timestamp, or an idempotency key that is not the alert id.
    pub fn refused(&self) -> usize {
        self.deliveries.iter().filter(|d| !d.valid).count()
    }

    /// Stored alerts no valid delivery carried.
    pub fn undelivered(&self) -> Vec<&StoredAlert> {
        let delivered: BTreeSet<&str> = self
            .deliveries
            .iter()
            .filter(|d| d.valid)
            .map(|d| d.alert_id.as_str())
            .collect();
        self.stored
            .iter()
            .filter(|a| !delivered.contains(a.alert_id.as_str()))
            .collect()
    }
}

/// One row of the `alerts` table.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct StoredAlert {
    pub alert_id: String,
    pub tenant: String,
    pub rule: String,
    pub department: String,
    pub customer_id: String,
    /// The triggering event (for a silence, the customer's latest).
    pub event_id: String,
    /// `event` or `silence`.
    pub cause: String,
    pub raised_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct TouchpointFigures {
    pub tenant: String,
    pub journey: String,
    pub touchpoint: String,
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
    pub csat_responses: u64,
    pub csat_top2: u64,
    pub ces_responses: u64,
    pub ces_sum: u64,
}

impl TouchpointFigures {
    pub fn nps(&self) -> NpsCounts {
        NpsCounts {
            promoters: self.promoters,
            passives: self.passives,
            detractors: self.detractors,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct StoreFigures {
    pub tenant: String,
    pub touchpoint: String,
    pub store: String,
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
}

#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct RiskFigure {
    pub tenant: String,
    pub customer_id: String,
    pub churn_risk: f64,
}

#[derive(Debug, Row, Deserialize)]
struct Count {
    key: String,
    n: u64,
}

/// Runs the demo end to end and prints the report.
pub async fn run(mut cfg: Config, opts: DemoOptions) -> anyhow::Result<()> {
    // The demo drops and recreates its database: never the configured one.
    cfg.clickhouse.database = "xoflow_demo".into();
    if cfg.ingest.hash_secret.expose() == xoflow_ingest::config::DEV_HASH_SECRET {
        // Demo data only; production must set its own (start-up warns).
        cfg.ingest.hash_secret = xoflow_ingest::config::Secret::new("xoflow-demo-only-hash-secret");
    }
    let (truth, report) = run_pipeline(cfg, &opts, true).await?;
    print_report(&truth, &report);
    Ok(())
}

/// Generates, runs the pipeline, waits until ClickHouse holds everything
/// and the alerts are delivered, and returns the truth with the figures
/// read back. `verbose` narrates.
pub async fn run_pipeline(
    mut cfg: Config,
    opts: &DemoOptions,
    verbose: bool,
) -> anyhow::Result<(Truth, BiReport)> {
    let say = |msg: &str| {
        if verbose {
            println!("[xoflow demo] {msg}");
        }
    };
    let run_id = xoflow_common::clock::now_unix_millis();
    cfg.kafka.topics.suffix(&format!(".demo-{run_id}"));
    cfg.ingest.grpc_addr = "127.0.0.1:0".parse()?;
    cfg.ingest.http_addr = "127.0.0.1:0".parse()?;
    cfg.admin.addr = "127.0.0.1:0".parse()?;
    let demo = DemoConfig::parse(DEMO_CONFIG).map_err(anyhow::Error::msg)?;
    apply_demo_config(&mut cfg, &demo).context("deploy/config/demo.toml")?;

    let t0 = Instant::now();
    let generated = datagen::generate(&opts.generator);
    let truth = generated.truth;
    say(&format!(
        "generated {} days of data for 3 brands: {} events ({} malformed on purpose) in {:.1} s",
        opts.generator.days,
        generated.events.len(),
        truth.invalid.values().sum::<u64>(),
        t0.elapsed().as_secs_f64()
    ));
    for p in &truth.problems {
        say(&format!("  planted: {p}"));
    }
    say(&format!(
        "  planted: {} customers who go silent after a complaint, {} who asked not to be contacted",
        truth.alerts.planted_silent.len(),
        truth.alerts.do_not_contact.len()
    ));

    // The departments' webhooks all point at a receiver in this process,
    // which checks every delivery's signature.
    let receiver = Receiver::start(format!("xoflow-demo-webhook-secret-{run_id}")).await?;
    route_alerts(&mut cfg, &receiver, &demo.departments())?;
    say(&format!(
        "alert rules of {} brands; every department's alerts go to the webhook receiver at {}",
        demo.alerts.tenants.len(),
        receiver.base_url()
    ));

    say(&format!(
        "broker {} · ClickHouse {} · database {} (recreated)",
        cfg.kafka.brokers, cfg.clickhouse.url, cfg.clickhouse.database
    ));
    cfg.clickhouse
        .drop_database()
        .await
        .context("is ClickHouse running? (deploy/local/up.sh starts it)")?;

    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();
    let running = xoflow_app::start(cfg.clone(), Stages::ALL, shutdown).await?;
    let started = Instant::now();
    while running.health.check().is_err() {
        if running.shutdown.token.is_cancelled() || started.elapsed() > Duration::from_secs(60) {
            running.stop();
            running.wait().await?;
            receiver.stop().await;
            bail!("the pipeline did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!(
        "pipeline ready (ingest → Kafka → enrich → Kafka → sink → ClickHouse, and alerts); metrics on http://{}/metrics",
        running.admin_addr
    ));

    let result = async {
        let addr = format!("http://{}", running.grpc_addr.context("ingest is not running")?);
        say(&format!("sending {} events to the gRPC collector at {addr} ...", generated.events.len()));
        let sent = load::send(
            &addr,
            generated.events,
            &LoadOptions {
                batch: opts.batch,
                rate: None,
                concurrency: 4,
            },
        )
        .await?;
        say(&format!(
            "  {} accepted (durable in Kafka), {} rejected with field-level reasons, {:.0} events/s, ack latency p50 {:.1} ms p99 {:.1} ms",
            sent.accepted,
            sent.rejected,
            sent.events_per_second(),
            sent.p50_us as f64 / 1000.0,
            sent.p99_us as f64 / 1000.0
        ));
        if sent.failed_requests > 0 {
            bail!("{} requests failed", sent.failed_requests);
        }
        say("waiting for every event to be enriched and visible in ClickHouse ...");
        let ch = cfg.clickhouse.client();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            // The aggregates, not the raw table: materialized views are
            // written just after the raw rows become visible.
            let (events, dead): (u64, u64) = ch
                .query("SELECT (SELECT sumMerge(events) FROM touchpoint_metrics), (SELECT count() FROM dead_letters)")
                .fetch_one()
                .await?;
            if events >= sent.accepted && dead >= sent.rejected {
                say(&format!(
                    "  all {events} events and {dead} dead letters visible {:.1} s after the first was sent",
                    t0.elapsed().as_secs_f64()
                ));
                break;
            }
            if Instant::now() > deadline {
                bail!("only {events} of {} events reached ClickHouse in 300 s", sent.accepted);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Repairs of events that arrived before their order or identity
        // link may still be on their way: the figures are final once every
        // stage has caught up with its input.
        wait_settled(&cfg, Duration::from_secs(120)).await?;
        say(&format!("  every stage caught up {:.1} s after the first was sent", t0.elapsed().as_secs_f64()));
        say("waiting for the alerts to be delivered ...");
        let quiet = (3 * cfg.enrich.alerts.rescore_interval()).max(Duration::from_secs(3));
        let settled = wait_alerts(&cfg, &ch, &receiver, quiet, Duration::from_secs(120)).await?;
        say(&format!(
            "  {} alerts delivered {:.1} s after the first event was sent{}",
            receiver.delivered().len(),
            t0.elapsed().as_secs_f64(),
            if settled { "" } else { " (still moving after 120 s: reporting what is there)" }
        ));
        let mut report = query_report(&ch).await?;
        report.unmasked_pii = count_unmasked(&ch, &truth.planted_pii).await?;
        report.alerts = alert_figures(&ch, &receiver).await?;
        Ok(report)
    }
    .await;
    running.stop();
    let stopped = running.wait().await;
    receiver.stop().await;
    let report = result?;
    stopped?;
    Ok((truth, report))
}

/// Lays the demo's journey maps and alert rules over `cfg`: the three
/// brands' tenants replace any of the same name, and the alert rules are
/// the demo's alone. Checked as at start-up (every department a rule
/// routes to owns a touchpoint of its tenant).
pub fn apply_demo_config(cfg: &mut Config, demo: &DemoConfig) -> anyhow::Result<()> {
    for (name, t) in &demo.tenants {
        cfg.ingest.tenants.insert(name.clone(), t.clone());
    }
    cfg.enrich.alerts = xoflow_enrich::alert::AlertRules::compile(&demo.alerts)?;
    cfg.derive();
    cfg.validate()
}

/// Points the alert stage at `receiver`: one `generic` webhook, signed,
/// per department of every brand (`http://127.0.0.1:<port>/<department>`),
/// and the case API on a free port. (As TOML, the same as
/// `[[alert.tenants.<tenant>.departments.<department>.webhooks]]` with
/// `url`, `format = "generic"` and `secret`.)
pub fn route_alerts(
    cfg: &mut Config,
    receiver: &Receiver,
    departments: &[(String, String)],
) -> anyhow::Result<()> {
    use xoflow_alert::config::{DepartmentAlerts, Format, WebhookConfig};
    cfg.alert.api_addr = "127.0.0.1:0".parse()?;
    for (tenant, department) in departments {
        cfg.alert
            .tenants
            .entry(tenant.clone())
            .or_default()
            .departments
            .insert(
                department.clone(),
                DepartmentAlerts {
                    webhooks: vec![WebhookConfig {
                        url: format!("{}/{department}", receiver.base_url()),
                        format: Format::Generic,
                        secret: Some(receiver.secret().to_owned()),
                    }],
                },
            );
    }
    // As at start-up: every department with webhooks owns a touchpoint.
    cfg.validate()
}

/// Waits until the alerts have settled: the alert stage's group has
/// committed the whole alerts topic (every alert read is final: delivered,
/// dead-lettered or without webhook), every alert stored in the `alerts`
/// table has a delivery with a valid signature, every delivery names a
/// stored alert, and nothing moved for `quiet` (longer than enrich's
/// re-scoring interval, so the silences of the last re-scoring are in).
/// Returns whether they settled before `deadline`.
pub async fn wait_alerts(
    cfg: &Config,
    ch: &clickhouse::Client,
    receiver: &Receiver,
    quiet: Duration,
    deadline: Duration,
) -> anyhow::Result<bool> {
    let end = Instant::now() + deadline;
    let mut last = None;
    let mut since = Instant::now();
    loop {
        let kafka = cfg.kafka.clone();
        let group = cfg.alert.group_id.clone();
        let topic = cfg.kafka.topics.alerts.clone();
        let offsets = tokio::task::spawn_blocking(move || {
            xoflow_common::kafka::watch::group_offsets(&kafka, &group, &[topic]).map(|all| {
                all.into_iter()
                    .map(|o| (o.partition, o.high, o.committed))
                    .collect::<Vec<_>>()
            })
        })
        .await??;
        let read = offsets
            .iter()
            .all(|(_, high, committed)| *high == 0 || *committed == Some(*high));
        let stored: BTreeSet<String> = ch
            .query("SELECT DISTINCT alert_id FROM alerts")
            .fetch_all::<String>()
            .await?
            .into_iter()
            .collect();
        let delivered = receiver.delivered();
        let now = (offsets, stored, delivered);
        if last.as_ref() != Some(&now) {
            since = Instant::now();
        }
        if read && now.1 == now.2 && since.elapsed() >= quiet {
            return Ok(true);
        }
        if Instant::now() > end {
            return Ok(false);
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the alerts back from ClickHouse and beside them what the
/// receiver got, with the delivery latencies.
pub async fn alert_figures(
    ch: &clickhouse::Client,
    receiver: &Receiver,
) -> anyhow::Result<AlertFigures> {
    let stored: Vec<StoredAlert> = ch
        .query(
            "SELECT alert_id, tenant, rule, department, customer_id, event_id, \
               toString(cause) AS cause, raised_ms \
             FROM alerts FINAL ORDER BY alert_id",
        )
        .fetch_all()
        .await?;
    let (rows, unique): (u64, u64) = ch
        .query("SELECT count(), uniqExact(alert_id) FROM alerts")
        .fetch_one()
        .await?;
    let deliveries = receiver.deliveries();
    // Each alert's first valid delivery.
    let mut first: BTreeMap<&str, &Delivery> = BTreeMap::new();
    for d in deliveries.iter().filter(|d| d.valid) {
        first.entry(d.alert_id.as_str()).or_insert(d);
    }
    let mut from_raised = Vec::new();
    let mut from_ingest = Vec::new();
    let mut ingested: BTreeMap<String, i64> = BTreeMap::new();
    let ingest_in_seconds = first.values().any(|d| d.ingested_ms.is_none());
    if ingest_in_seconds {
        // The deliveries do not say when ingest received the triggering
        // event: ClickHouse does, in whole seconds.
        let rows: Vec<(String, i64)> = ch
            .query(
                "SELECT event_id, toInt64(toUnixTimestamp(min(received_at))) * 1000 \
                 FROM events WHERE event_id IN (SELECT event_id FROM alerts WHERE cause = 'event') \
                 GROUP BY event_id",
            )
            .fetch_all()
            .await?;
        ingested.extend(rows);
    }
    for a in &stored {
        let Some(d) = first.get(a.alert_id.as_str()) else {
            continue;
        };
        from_raised.push(d.received_ms - d.raised_ms.unwrap_or(a.raised_ms));
        if a.cause == "event" {
            let at = d.ingested_ms.or_else(|| ingested.get(&a.event_id).copied());
            if let Some(at) = at {
                from_ingest.push(d.received_ms - at);
            }
        }
    }
    Ok(AlertFigures {
        stored,
        rows,
        unique,
        deliveries,
        from_raised_ms: p50_p99(&mut from_raised),
        from_ingest_ms: p50_p99(&mut from_ingest),
        ingest_in_seconds,
    })
}

/// The 50th and 99th percentiles (nearest rank).
fn p50_p99(v: &mut [i64]) -> Option<(i64, i64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some((rank(0.50), rank(0.99)))
}

/// Waits until every stage has caught up with its input: each consumer
/// group (enrich's resolve and join groups, the sink's) has committed up to
/// the high watermark of every partition it reads, and nothing moved since
/// the previous look. Enrich commits below events it still holds, so this
/// also means no event is held and no repair is pending.
pub async fn wait_settled(cfg: &Config, deadline: Duration) -> anyhow::Result<()> {
    let t = &cfg.kafka.topics;
    let internal = xoflow_enrich::stage::InternalTopics::of(&cfg.enrich.group_id);
    let groups = vec![
        (
            format!("{}.resolve", cfg.enrich.group_id),
            vec![t.events.clone(), t.backfill.clone()],
        ),
        // The join group reads direct events from the events topic itself.
        (
            cfg.enrich.group_id.clone(),
            vec![t.events.clone(), internal.repartition],
        ),
        (
            cfg.sink.group_id.clone(),
            vec![t.enriched.clone(), t.dead_letters.clone()],
        ),
    ];
    let end = Instant::now() + deadline;
    let mut previous = None;
    loop {
        let kafka = cfg.kafka.clone();
        let g = groups.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            for (group, topics) in &g {
                for o in xoflow_common::kafka::watch::group_offsets(&kafka, group, topics)? {
                    all.push((o.topic, o.partition, o.high, o.committed));
                }
            }
            Ok::<_, rdkafka::error::KafkaError>(all)
        })
        .await??;
        let behind: Vec<_> = snapshot
            .iter()
            .filter(|(_, _, high, committed)| *high > 0 && *committed != Some(*high))
            .collect();
        if behind.is_empty() && previous.as_ref() == Some(&snapshot) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("the pipeline did not catch up within {deadline:?}: {behind:?}");
        }
        previous = Some(snapshot);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many of `planted` appear verbatim in any stored text.
pub async fn count_unmasked(ch: &clickhouse::Client, planted: &[String]) -> anyhow::Result<u64> {
    let texts: Vec<String> = ch
        .query("SELECT text FROM events WHERE text != ''")
        .fetch_all()
        .await?;
    Ok(planted
        .iter()
        .filter(|p| texts.iter().any(|t| t.contains(p.as_str())))
        .count() as u64)
}

/// Reads the BI figures from ClickHouse.
pub async fn query_report(ch: &clickhouse::Client) -> anyhow::Result<BiReport> {
    let counts = |rows: Vec<Count>| {
        rows.into_iter()
            .map(|c| (c.key, c.n))
            .collect::<BTreeMap<_, _>>()
    };
    let events_by_kind = counts(
        ch.query("SELECT toString(kind) AS key, count() AS n FROM events_latest GROUP BY key ORDER BY key")
            .fetch_all()
            .await?,
    );
    let survey_answers = ch
        .query("SELECT count() FROM survey_answers")
        .fetch_one::<u64>()
        .await?;
    // CX figures come from the aggregate states (hourly, per store) rolled
    // up at query time: if they equal the truth, the roll-up is exact.
    let touchpoints = ch
        .query(
            "SELECT tenant, journey, touchpoint, \
               sum(promoters) AS promoters, sum(passives) AS passives, sum(detractors) AS detractors, \
               sum(csat_responses) AS csat_responses, sum(csat_top2) AS csat_top2, \
               sum(ces_responses) AS ces_responses, toUInt64(sum(ces_sum)) AS ces_sum \
             FROM cx_by_touchpoint_day \
             GROUP BY tenant, journey, touchpoint \
             HAVING promoters + passives + detractors + csat_responses + ces_responses > 0 \
             ORDER BY tenant, journey, touchpoint",
        )
        .fetch_all()
        .await?;
    let stores = ch
        .query(
            "SELECT tenant, touchpoint, store_id AS store, promoters, passives, detractors \
             FROM touchpoint_store_comparison WHERE nps_responses > 0 \
             ORDER BY tenant, touchpoint, store",
        )
        .fetch_all()
        .await?;
    let negative_topics = counts(
        ch.query(
            "SELECT topic AS key, count() AS n FROM events_latest ARRAY JOIN topics AS topic \
             WHERE sentiment_label = 'negative' GROUP BY key ORDER BY n DESC, key",
        )
        .fetch_all()
        .await?,
    );
    let dead_letters = counts(
        ch.query("SELECT reason AS key, count() AS n FROM dead_letters GROUP BY key ORDER BY key")
            .fetch_all()
            .await?,
    );
    let at_risk = ch
        .query(
            "SELECT tenant, customer_id, ifNull(churn_risk, 0) AS churn_risk \
             FROM customer_profile FINAL WHERE churn_risk > 0 \
             ORDER BY churn_risk DESC, customer_id LIMIT 20",
        )
        .fetch_all()
        .await?;
    Ok(BiReport {
        unmasked_pii: 0,
        events_by_kind,
        survey_answers,
        touchpoints,
        stores,
        negative_topics,
        dead_letters,
        at_risk,
        alerts: AlertFigures::default(),
    })
}

fn nps_text(n: &NpsCounts) -> String {
    n.score()
        .map(|s| format!("{s:+.1}"))
        .unwrap_or_else(|| "—".into())
}

fn check(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

/// Prints the report with the truth beside each figure.
pub fn print_report(truth: &Truth, r: &BiReport) {
    println!();
    println!("══ What BI sees in ClickHouse (truth from the generator in brackets) ══");
    println!();
    println!("Events by kind");
    for (kind, n) in &r.events_by_kind {
        let t = truth.by_kind.get(kind).copied().unwrap_or(0);
        println!("  {kind:<8} {n:>8}  [{t}] {}", check(*n == t));
    }
    println!(
        "  survey answers (one row each) {:>8}  [{}] {}",
        r.survey_answers,
        truth.survey_answers,
        check(r.survey_answers == truth.survey_answers)
    );

    println!();
    println!("NPS, CSAT and CES per touchpoint");
    println!(
        "  {:<16} {:<16} {:<20} {:>6}  {:>16}  {:>15}  {:>13}",
        "tenant", "journey", "touchpoint", "resp.", "NPS", "CSAT top-2", "CES mean"
    );
    for tp in &r.touchpoints {
        let t = truth.touchpoints.iter().find(|t| {
            t.tenant == tp.tenant && t.journey == tp.journey && t.touchpoint == tp.touchpoint
        });
        let nps = tp.nps();
        let csat = if tp.csat_responses > 0 {
            format!(
                "{:.1}%",
                100.0 * tp.csat_top2 as f64 / tp.csat_responses as f64
            )
        } else {
            "—".into()
        };
        let ces = if tp.ces_responses > 0 {
            format!("{:.2}", tp.ces_sum as f64 / tp.ces_responses as f64)
        } else {
            "—".into()
        };
        let exact = t.is_some_and(|t| {
            t.nps == nps
                && t.csat_top2 == tp.csat_top2
                && t.csat_responses == tp.csat_responses
                && t.ces_sum == tp.ces_sum
        });
        println!(
            "  {:<16} {:<16} {:<20} {:>6}  {:>7} [{:>6}]  {:>15}  {:>13}  {}",
            tp.tenant,
            tp.journey,
            tp.touchpoint,
            nps.responses(),
            nps_text(&nps),
            t.map(|t| nps_text(&t.nps)).unwrap_or_default(),
            csat,
            ces,
            check(exact)
        );
    }

    println!();
    println!("Same touchpoint, worst store against best (stores with 30+ answers)");
    for c in &truth.worst_vs_best {
        let score = |store: &str| {
            r.stores
                .iter()
                .find(|s| s.tenant == c.tenant && s.touchpoint == c.touchpoint && s.store == store)
                .map(|s| {
                    nps_text(&NpsCounts {
                        promoters: s.promoters,
                        passives: s.passives,
                        detractors: s.detractors,
                    })
                })
                .unwrap_or_else(|| "—".into())
        };
        let candidates: Vec<&StoreFigures> = r
            .stores
            .iter()
            .filter(|s| {
                s.tenant == c.tenant
                    && s.touchpoint == c.touchpoint
                    && s.promoters + s.passives + s.detractors >= 30
            })
            .collect();
        let value = |s: &StoreFigures| {
            100.0 * (s.promoters as f64 - s.detractors as f64)
                / (s.promoters + s.passives + s.detractors) as f64
        };
        let worst = candidates
            .iter()
            .min_by(|a, b| value(a).total_cmp(&value(b)));
        let best = candidates
            .iter()
            .max_by(|a, b| value(a).total_cmp(&value(b)));
        let same = worst.is_some_and(|w| w.store == c.worst_store)
            && best.is_some_and(|b| b.store == c.best_store);
        println!(
            "  {:<16} {:<20} worst {:<9} NPS {:>6}   best {:<9} NPS {:>6}   [{} / {}] {}",
            c.tenant,
            c.touchpoint,
            worst.map(|w| w.store.as_str()).unwrap_or("—"),
            worst.map(|w| score(&w.store)).unwrap_or_default(),
            best.map(|b| b.store.as_str()).unwrap_or("—"),
            best.map(|b| score(&b.store)).unwrap_or_default(),
            c.worst_store,
            c.best_store,
            check(same)
        );
    }

    println!();
    println!("Top negative topics in comments, calls and posts");
    if r.negative_topics.is_empty() {
        println!("  (no sentiment and topic tags in this build's enrichment)");
    }
    let mut topics: Vec<_> = r.negative_topics.iter().collect();
    topics.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (topic, n) in topics.iter().take(6) {
        let t = truth.negative_topics.get(*topic).copied().unwrap_or(0);
        println!("  {topic:<10} {n:>6}  [{t} written negative]");
    }

    println!();
    println!("Customers at highest churn risk (joined X + O signals)");
    if r.at_risk.is_empty() {
        println!("  (no churn-risk scores in this build's enrichment)");
    }
    let drifting = |id: &str| truth.at_risk.iter().any(|t| t.customer_id == id);
    for c in r.at_risk.iter().take(10) {
        println!(
            "  {:<16} {:<14} risk {:.2}  {}",
            c.tenant,
            c.customer_id,
            c.churn_risk,
            if drifting(&c.customer_id) {
                "[drifting away in the simulation ✓]"
            } else {
                "[not drifting]"
            }
        );
    }
    if !r.at_risk.is_empty() {
        let hits = r
            .at_risk
            .iter()
            .filter(|c| drifting(&c.customer_id))
            .count();
        println!(
            "  precision of the top {}: {:.0}% are truly drifting away (random pick: {:.0}%)",
            r.at_risk.len(),
            100.0 * hits as f64 / r.at_risk.len() as f64,
            100.0 * truth.at_risk_base_rate
        );
    }

    println!();
    println!("Personal data planted in comments, calls and posts");
    println!(
        "  {} planted (phones, e-mails, card and ID numbers); {} found unmasked in ClickHouse {}",
        truth.planted_pii.len(),
        r.unmasked_pii,
        check(r.unmasked_pii == 0)
    );

    println!();
    println!("Dead letters by reason (malformed on purpose)");
    let reasons: std::collections::BTreeSet<&String> =
        r.dead_letters.keys().chain(truth.invalid.keys()).collect();
    for reason in reasons {
        let n = r.dead_letters.get(reason).copied().unwrap_or(0);
        let t = truth.invalid.get(reason).copied().unwrap_or(0);
        println!("  {reason:<14} {n:>6}  [{t}] {}", check(n == t));
    }
    println!();
    print_alerts(truth, &r.alerts);
}

/// The closed loop: alerts per department and rule beside the truth, the
/// planted customers, and the deliveries.
fn print_alerts(truth: &Truth, a: &AlertFigures) {
    let t = &truth.alerts;
    println!("══ Closing the loop: alerts to the department that owns the touchpoint ══");
    println!();
    println!("Alerts raised per department and rule (ClickHouse `alerts`; truth in brackets)");
    println!(
        "  {:<16} {:<26} {:<17} {:>7}  truth",
        "tenant", "rule", "department", "alerts"
    );
    let got = a.counts();
    let want = t.counts();
    let keys: BTreeSet<&(String, String, String)> = got.keys().chain(want.keys()).collect();
    let silent: BTreeSet<&str> = t
        .planted_silent
        .iter()
        .map(|p| p.customer_id.as_str())
        .collect();
    for key in keys {
        let (tenant, rule, department) = key;
        let n = got.get(key).copied().unwrap_or(0);
        let beside = match t.rule(tenant, rule) {
            Some(_) => {
                let w = want.get(key).copied().unwrap_or(0);
                format!("[{w}] {}", check(n == w))
            }
            None => {
                let alerted: BTreeSet<&str> = a
                    .stored
                    .iter()
                    .filter(|s| &s.tenant == tenant && &s.rule == rule && s.cause == "silence")
                    .map(|s| s.customer_id.as_str())
                    .collect();
                let planted: Vec<&str> = t
                    .planted_silent
                    .iter()
                    .filter(|p| &p.tenant == tenant)
                    .map(|p| p.customer_id.as_str())
                    .collect();
                let hit = planted.iter().filter(|c| alerted.contains(*c)).count();
                let others = alerted.iter().filter(|c| !silent.contains(*c)).count();
                format!(
                    "[silence: {hit} of {} planted silent customers {}; {others} others]",
                    planted.len(),
                    check(hit == planted.len())
                )
            }
        };
        println!(
            "  {:<16} {:<26} {:<17} {n:>7}  {beside}",
            tenant,
            rule,
            if department.is_empty() {
                "(none)"
            } else {
                department
            }
        );
    }
    for r in &t.rules {
        println!(
            "  {} {}: {} events met the rule; {} held back by the quiet period, {} because the customer opted out",
            r.tenant, r.rule, r.met, r.quiet, r.do_not_contact
        );
    }
    let alerted: BTreeSet<&str> = a
        .stored
        .iter()
        .filter(|s| s.cause == "silence")
        .map(|s| s.customer_id.as_str())
        .collect();
    let hit = silent.iter().filter(|c| alerted.contains(*c)).count();
    println!(
        "  customers planted silent after a complaint: {}, {hit} of them got a silence alert {}",
        silent.len(),
        check(hit == silent.len())
    );
    let opted_out: BTreeSet<&str> = t
        .do_not_contact
        .iter()
        .map(|p| p.customer_id.as_str())
        .collect();
    let named = a
        .stored
        .iter()
        .filter(|s| opted_out.contains(s.customer_id.as_str()))
        .count();
    println!(
        "  customers who asked not to be contacted: {} planted, {} alerts name them {}",
        opted_out.len(),
        named,
        check(named == 0)
    );

    println!();
    println!("Deliveries to the departments' webhooks (a receiver in this process)");
    let refused = a.refused();
    let undelivered = a.undelivered().len();
    let delivered: BTreeSet<&str> = a
        .deliveries
        .iter()
        .filter(|d| d.valid)
        .map(|d| d.alert_id.as_str())
        .collect();
    println!(
        "  {} deliveries of {} alerts, {refused} refused (signature, timestamp or idempotency key) {}; stored alerts not delivered: {undelivered} {}",
        a.deliveries.len(),
        delivered.len(),
        check(refused == 0),
        check(undelivered == 0)
    );
    println!(
        "  `alerts` holds {} rows for {} alerts {}",
        a.rows,
        a.unique,
        check(a.rows == a.unique)
    );
    let ms = |p: Option<(i64, i64)>| match p {
        Some((p50, p99)) => format!("p50 {p50} ms, p99 {p99} ms"),
        None => "—".into(),
    };
    println!(
        "  latency from the alert's raised_at to the receiver: {}",
        ms(a.from_raised_ms)
    );
    println!(
        "  latency from ingest receiving the triggering event to the receiver: {}{}",
        ms(a.from_ingest_ms),
        if a.ingest_in_seconds {
            " (ingest time in whole seconds, from ClickHouse)"
        } else {
            ""
        }
    );
    println!(
        "  (the demo sends the whole span in seconds: the time from ingest is mostly enrich working through that backlog)"
    );
    println!();
}

/// The departments' webhook receiver: an HTTP server on 127.0.0.1 that
/// takes the alert stage's `generic` deliveries the way a department's
/// service would, verifying each one's signature.
///
/// A delivery is valid when `X-Xoflow-Signature` is `v1=` and the hex
/// HMAC-SHA256, under the shared secret, of `"<X-Xoflow-Timestamp>.<body>"`,
/// the timestamp is within five minutes of this clock, and
/// `Idempotency-Key` is the body's `alert_id`. Valid deliveries are
/// answered 200, others 401; every one is recorded with this clock's
/// time.
pub mod receiver {
    use std::{
        collections::BTreeSet,
        net::SocketAddr,
        sync::{Arc, Mutex},
    };

    use axum::{
        Router,
        body::Bytes,
        extract::{Path, State},
        http::{HeaderMap, StatusCode},
        routing::post,
    };
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    use tokio_util::sync::CancellationToken;

    /// How far a delivery's timestamp may be from this clock.
    const MAX_SKEW_S: i64 = 300;

    /// One delivery as received.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Delivery {
        /// The `Idempotency-Key` header.
        pub alert_id: String,
        /// The department in the URL the alert stage posted to.
        pub path: String,
        /// From the body.
        pub tenant: String,
        pub rule: String,
        pub department: String,
        pub customer_id: String,
        pub cause: String,
        /// Signature, timestamp and idempotency key all check out.
        pub valid: bool,
        /// Why not, when not.
        pub problem: Option<String>,
        /// This clock, Unix milliseconds.
        pub received_ms: i64,
        /// The body's `raised_at`.
        pub raised_ms: Option<i64>,
        /// When ingest received the triggering event, if the body says.
        pub ingested_ms: Option<i64>,
        /// When enrich joined the triggering event, if the body says.
        pub enriched_ms: Option<i64>,
        /// The triggering event's revision: above 0 when a repair (an
        /// order or identity that arrived after the event) raised it.
        pub revision: u32,
    }

    struct Shared {
        secret: String,
        deliveries: Mutex<Vec<Delivery>>,
    }

    /// A running receiver; [`Receiver::stop`] ends it.
    pub struct Receiver {
        addr: SocketAddr,
        shared: Arc<Shared>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl std::fmt::Debug for Receiver {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Receiver")
                .field("addr", &self.addr)
                .finish_non_exhaustive()
        }
    }

    impl Receiver {
        /// Binds a free port of 127.0.0.1 and serves until stopped.
        pub async fn start(secret: String) -> std::io::Result<Self> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let shared = Arc::new(Shared {
                secret,
                deliveries: Mutex::new(Vec::new()),
            });
            let app = Router::new()
                .route("/{department}", post(receive))
                .with_state(shared.clone());
            let stop = CancellationToken::new();
            let until = stop.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(until.cancelled_owned())
                    .await
                {
                    tracing::warn!(error = %e, "the demo's webhook receiver failed");
                }
            });
            Ok(Self {
                addr,
                shared,
                stop,
                task,
            })
        }

        /// `http://127.0.0.1:<port>`.
        pub fn base_url(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// The signing secret the webhooks are configured with.
        pub fn secret(&self) -> &str {
            &self.shared.secret
        }

        /// Every delivery so far, in arrival order.
        pub fn deliveries(&self) -> Vec<Delivery> {
            self.shared
                .deliveries
                .lock()
                .map(|d| d.clone())
                .unwrap_or_default()
        }

        /// The alert ids delivered with a valid signature so far.
        pub fn delivered(&self) -> BTreeSet<String> {
            self.shared
                .deliveries
                .lock()
                .map(|d| {
                    d.iter()
                        .filter(|d| d.valid)
                        .map(|d| d.alert_id.clone())
                        .collect()
                })
                .unwrap_or_default()
        }

        /// Stops serving and waits for the server to end.
        pub async fn stop(self) {
            self.stop.cancel();
            let _ = self.task.await;
        }
    }

    async fn receive(
        State(shared): State<Arc<Shared>>,
        Path(department): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let received_ms = xoflow_common::clock::now_unix_millis();
        let d = judge(&shared.secret, department, &headers, &body, received_ms);
        let status = if d.valid {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        if let Ok(mut all) = shared.deliveries.lock() {
            all.push(d);
        }
        status
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Checks one delivery and reads what the report needs from its body.
    pub fn judge(
        secret: &str,
        path: String,
        headers: &HeaderMap,
        body: &[u8],
        received_ms: i64,
    ) -> Delivery {
        let timestamp = header(headers, "x-xoflow-timestamp");
        let signature = header(headers, "x-xoflow-signature");
        let key = header(headers, "idempotency-key");
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let problem = if !signed(secret, timestamp, body, signature) {
            Some("the signature does not verify".to_owned())
        } else if timestamp.parse::<i64>().map_or(true, |t| {
            (t - received_ms.div_euclid(1000)).abs() > MAX_SKEW_S
        }) {
            Some(format!("timestamp {timestamp:?} is not within 5 minutes"))
        } else if key.is_empty() || key != json["alert_id"].as_str().unwrap_or_default() {
            Some("Idempotency-Key is not the body's alert_id".to_owned())
        } else {
            None
        };
        let trigger = &json["trigger"];
        let ingested = [&trigger["received_at"], &trigger["event"]["received_at"]]
            .into_iter()
            .find_map(time_ms);
        Delivery {
            alert_id: key.to_owned(),
            path,
            tenant: text(&json["tenant"]),
            rule: text(&json["rule"]),
            department: text(&json["department"]),
            customer_id: text(&json["customer_id"]),
            cause: text(&json["cause"]),
            valid: problem.is_none(),
            problem,
            received_ms,
            raised_ms: time_ms(&json["raised_at"]),
            ingested_ms: ingested,
            enriched_ms: time_ms(&trigger["enriched_at"]),
            revision: trigger["revision"].as_u64().unwrap_or(0) as u32,
        }
    }

    /// Whether `signature` is `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
    pub fn signed(secret: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
        let Some(mac_hex) = signature.strip_prefix("v1=") else {
            return false;
        };
        let Ok(given) = hex::decode(mac_hex) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        // Constant time.
        mac.verify_slice(&given).is_ok()
    }

    /// An RFC 3339 time (or Unix milliseconds) as Unix milliseconds.
    fn time_ms(v: &serde_json::Value) -> Option<i64> {
        match v {
            serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis()),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
            mac.update(format!("{ts}.").as_bytes());
            mac.update(body);
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        }

        fn headers(ts: i64, signature: &str, key: &str) -> HeaderMap {
            let mut h = HeaderMap::new();
            h.insert("x-xoflow-timestamp", ts.to_string().parse().expect("ascii"));
            h.insert("x-xoflow-signature", signature.parse().expect("ascii"));
            h.insert("idempotency-key", key.parse().expect("ascii"));
            h
        }

        const BODY: &[u8] = br#"{"type":"xoflow.alert.v1","alert_id":"a1","tenant":"hotpot-house","rule":"r","department":"kitchen","customer_id":"c1","cause":"event","raised_at":"2026-11-16T10:00:00.250Z","trigger":{"event_id":"e1","revision":2,"received_at":"2026-11-16T09:59:59.000Z"}}"#;

        #[test]
        fn a_signed_delivery_is_valid_and_read() {
            let now = 1_794_823_200_500; // 2026-11-16T10:00:00.500Z
            let ts = now / 1000;
            let d = judge(
                "s3cret",
                "kitchen".into(),
                &headers(ts, &sign("s3cret", ts, BODY), "a1"),
                BODY,
                now,
            );
            assert!(d.valid, "{:?}", d.problem);
            assert_eq!(
                (d.tenant.as_str(), d.department.as_str()),
                ("hotpot-house", "kitchen")
            );
            assert_eq!(d.raised_ms, Some(now - 250));
            assert_eq!(d.ingested_ms, Some(now - 1_500));
            assert_eq!(d.revision, 2);
        }

        #[test]
        fn tampering_another_key_staleness_or_a_wrong_idempotency_key_is_refused() {
            let now = 1_794_823_200_500;
            let ts = now / 1000;
            let good = sign("s3cret", ts, BODY);
            let mut tampered = BODY.to_vec();
            tampered[30] ^= 1;
            let cases = [
                judge(
                    "s3cret",
                    "k".into(),
                    &headers(ts, &good, "a1"),
                    &tampered,
                    now,
                ),
                judge("other", "k".into(), &headers(ts, &good, "a1"), BODY, now),
                judge(
                    "s3cret",
                    "k".into(),
                    &headers(ts, &good.replace("v1=", "v2="), "a1"),
                    BODY,
                    now,
                ),
                judge(
                    "s3cret",
                    "k".into(),
                    &headers(ts - 600, &sign("s3cret", ts - 600, BODY), "a1"),
                    BODY,
                    now,
                ),
                judge("s3cret", "k".into(), &headers(ts, &good, "a2"), BODY, now),
            ];
            for d in cases {
                assert!(!d.valid && d.problem.is_some(), "{d:?}");
            }
        }
    }
}
