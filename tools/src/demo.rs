//! `xoflow demo`: what xoflow is for, in one command.
//!
//! Generates a week of realistic customer-experience data (`xoflow gen`),
//! runs the whole pipeline in this process against the configured broker and
//! ClickHouse, sends the data through the gRPC collector, and prints what BI
//! would see — read back from ClickHouse — with the generator's ground truth
//! beside every figure. It uses its own topics (suffixed per run) and a
//! fresh `xoflow_demo` database, so it never mixes with other data.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clickhouse::Row;
use serde::Deserialize;
use xoflow_common::shutdown::Shutdown;

use xoflow_app::{Config, Stages};

use crate::datagen::{
    self, GenConfig, Truth,
    load::{self, LoadOptions},
    truth::NpsCounts,
};

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
    pub touchpoints: Vec<TouchpointFigures>,
    pub stores: Vec<StoreFigures>,
    pub negative_topics: BTreeMap<String, u64>,
    pub dead_letters: BTreeMap<String, u64>,
    pub at_risk: Vec<RiskFigure>,
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

/// Generates, runs the pipeline, waits until ClickHouse holds everything,
/// and returns the truth with the figures read back. `verbose` narrates.
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
            bail!("the pipeline did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!(
        "pipeline ready (ingest → Kafka → enrich → Kafka → sink → ClickHouse); metrics on http://{}/metrics",
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
        let mut report = query_report(&ch).await?;
        report.unmasked_pii = count_unmasked(&ch, &truth.planted_pii).await?;
        Ok(report)
    }
    .await;
    running.stop();
    let stopped = running.wait().await;
    let report = result?;
    stopped?;
    Ok((truth, report))
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
        (cfg.enrich.group_id.clone(), vec![internal.repartition]),
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
        touchpoints,
        stores,
        negative_topics,
        dead_letters,
        at_risk,
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
}
