//! The X+O join repairs itself, end to end: the same generated week sent
//! through the whole pipeline (real broker, real ClickHouse) in three
//! arrival orders — by event time, shuffled, and every survey, call and post
//! before any order or click (a company onboarding its survey-tool history
//! before its order history) — each into its own topics and database.
//!
//! In every order:
//!
//! - at least 99 % of the surveys whose triggering order is in the data
//!   have, in their latest revision, that order as `ctx_order_id` and the
//!   order's customer;
//! - `touchpoint_metrics` equals the generator's truth exactly (a repaired
//!   event is never counted twice).
//!
//! And the three databases hold the same latest revision of every event
//! (processing times, lineage and revision numbers aside) and the same
//! aggregates.

mod common;

use std::{collections::BTreeMap, time::Duration};

use clickhouse::Row;
use serde::Deserialize;
use xoflow::{
    datagen::{ArrivalOrder, GenConfig},
    demo::{self, DemoOptions},
};

/// Columns that say when and where a row was processed, not what it says
/// (and the stored event's bytes, which carry its receive time; its
/// content is in the other columns).
const PROCESSING: &[&str] = &[
    "event_proto",
    "received_at",
    "enriched_at",
    "inserted_at",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "revision",
];

#[derive(Debug, Row, Deserialize)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Debug, Row, Deserialize)]
struct JoinRate {
    surveys: u64,
    joined: u64,
    revised: u64,
}

/// Six days of generated data from `start_ms`.
fn week(seed: u64, scale: f64, order: ArrivalOrder, start_ms: i64) -> GenConfig {
    GenConfig {
        seed,
        scale,
        days: 6,
        start_ms,
        order,
        ..GenConfig::default()
    }
}

fn start_of_the_week() -> i64 {
    xoflow::datagen::days_before_today(common::now_ms(), 6)
}

/// What one run left in ClickHouse.
#[derive(Debug)]
struct Outcome {
    rate: JoinRate,
    /// Latest revision of every event: event id → its columns, as text.
    latest: BTreeMap<String, String>,
    /// `touchpoint_metrics` merged per key, as text.
    aggregates: Vec<String>,
}

/// Runs `generator`'s data through the whole pipeline (in this process,
/// via the demo's driver) and checks the aggregates against its truth.
async fn run(generator: GenConfig) -> Outcome {
    let (cfg, _) = common::config("");
    let order = generator.order;
    let opts = DemoOptions {
        generator,
        batch: 500,
    };
    let (truth, report) = demo::run_pipeline(cfg.clone(), &opts, false)
        .await
        .expect("pipeline");
    assert_eq!(report.events_by_kind, truth.by_kind, "{order:?}");
    assert_eq!(report.dead_letters, truth.invalid, "{order:?}");
    common::assert_touchpoints_match(&report, &truth, &format!("{order:?}"));

    let outcome = dump(&cfg.clickhouse.client()).await;
    common::drop_database(&cfg).await;
    outcome
}

/// Reads back the join rate, the latest revision of every event and the
/// aggregates.
async fn dump(ch: &clickhouse::Client) -> Outcome {
    let rate: JoinRate = ch
        .query(
            "SELECT count() AS surveys, \
               countIf(ctx_order_id = trigger_order_id AND customer_id = order_customer) AS joined, \
               countIf(revision > 0) AS revised \
             FROM (SELECT tenant, trigger_order_id, ctx_order_id, customer_id, revision \
                   FROM events_latest WHERE kind = 'survey' AND trigger_order_id != '') \
             ANY INNER JOIN \
                  (SELECT tenant, order_id AS trigger_order_id, any(customer_id) AS order_customer \
                   FROM events_latest WHERE kind = 'order' GROUP BY tenant, order_id) \
             USING (tenant, trigger_order_id)",
        )
        .fetch_one()
        .await
        .expect("join rate");

    let columns: Vec<Column> = ch
        .query("SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'events_latest' ORDER BY name")
        .fetch_all()
        .await
        .expect("columns");
    let text: Vec<String> = columns
        .iter()
        .filter(|c| !PROCESSING.contains(&c.name.as_str()))
        .map(|c| {
            if c.ty.starts_with("Array") {
                format!(
                    "arrayStringConcat(arrayMap(x -> toString(x), {}), ',')",
                    c.name
                )
            } else {
                format!("ifNull(toString({}), 'NULL')", c.name)
            }
        })
        .collect();
    let rows: Vec<(String, String)> = ch
        .query(&format!(
            "SELECT event_id, concat({}) FROM events_latest ORDER BY event_id",
            text.join(", '|', ")
        ))
        .fetch_all()
        .await
        .expect("latest rows");
    let aggregates: Vec<String> = ch
        .query(
            "SELECT concat(tenant, '|', toString(hour), '|', touchpoint, '|', store_id, '|', toString(channel), '|', \
               toString(sumMerge(events)), '|', toString(sumMerge(nps_promoters)), '|', \
               toString(sumMerge(nps_passives)), '|', toString(sumMerge(nps_detractors)), '|', \
               toString(sumMerge(csat_responses)), '|', toString(sumMerge(csat_top2)), '|', \
               toString(sumMerge(ces_sum)), '|', toString(round(sumMerge(sentiment_sum), 6)), '|', \
               toString(sumMerge(negative_texts)), '|', toString(uniqMerge(customers)), '|', \
               toString(sumMerge(orders)), '|', \
               toString(sumMerge(support_contacts)), '|', toString(uniqMerge(sessions)), '|', \
               (SELECT toString(groupArray((currency, r))) FROM (SELECT currency, sumMerge(revenue_minor) AS r \
                FROM revenue_metrics GROUP BY currency ORDER BY currency))) \
             FROM touchpoint_metrics \
             GROUP BY tenant, hour, journey, stage, touchpoint, channel, region, store_id \
             ORDER BY tenant, hour, journey, stage, touchpoint, channel, region, store_id",
        )
        .fetch_all()
        .await
        .expect("aggregates");
    Outcome {
        rate,
        latest: rows.into_iter().collect(),
        aggregates,
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surveys_meet_their_orders_and_customers_in_any_arrival_order() {
    let start_ms = start_of_the_week();
    let mut outcomes = Vec::new();
    for order in [
        ArrivalOrder::Time,
        ArrivalOrder::Shuffled,
        ArrivalOrder::XFirst,
    ] {
        let o = run(week(11, 0.25, order, start_ms)).await;
        let share = o.rate.joined as f64 / o.rate.surveys.max(1) as f64;
        eprintln!(
            "{order:?}: {} of {} surveys with their triggering order and its customer ({:.2} %), {} repaired; {} events",
            o.rate.joined,
            o.rate.surveys,
            100.0 * share,
            o.rate.revised,
            o.latest.len()
        );
        assert!(o.rate.surveys >= 200, "{order:?}: too few surveys to judge");
        assert!(share >= 0.99, "{order:?}: {share:.4}");
        outcomes.push((order, o));
    }
    let (_, first) = &outcomes[0];
    for (order, o) in &outcomes[1..] {
        assert_eq!(o.latest.len(), first.latest.len(), "{order:?}: events");
        let differing: Vec<_> = first
            .latest
            .iter()
            .filter(|(id, row)| o.latest.get(*id) != Some(row))
            .map(|(id, row)| (id, row, o.latest.get(id)))
            .take(3)
            .collect();
        assert!(
            differing.is_empty(),
            "{order:?}: latest revisions differ from time order, e.g. {differing:#?}"
        );
        assert_eq!(o.aggregates, first.aggregates, "{order:?}: aggregates");
    }
}

/// Kill -9 of enrich (a process of its own) while it emits repairs, twice,
/// on history-first data: the surveys, calls and posts are stored first;
/// then the orders and clicks come in three parts, and enrich is killed as
/// soon as the first part's repairs start being stored, and again for the
/// second's. Restarted under the same instance name each time, it restores
/// its partitions' histories and waiting events from the changelog; the
/// final contents equal those of an undisturbed run of the same data in
/// time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrich_killed_while_repairing_leaves_the_same_contents() {
    use xoflow::datagen::load::{self, LoadOptions};
    let start_ms = start_of_the_week();
    let data = week(17, 0.05, ArrivalOrder::XFirst, start_ms);
    let reference = run(GenConfig {
        order: ArrivalOrder::Time,
        ..data.clone()
    })
    .await;

    // The demo's tenants (their time zones for ingest, their journey maps
    // for enrich), as the reference ran with.
    let (cfg, id) = common::config(xoflow::demo::DEMO_CONFIG);
    let running = common::start(
        &cfg,
        xoflow::Stages {
            ingest: true,
            enrich: false,
            sink: true,
            alert: false,
        },
    )
    .await;
    let log = std::env::temp_dir().join(format!("xoflow-join-repairs-{id}.log"));
    eprintln!("enrich logs to {}", log.display());
    // The reference ran as the demo does, with the demo's journey maps
    // (the owning departments): so does this enrich.
    let demo_config = std::env::temp_dir().join(format!("xoflow-join-repairs-{id}.toml"));
    std::fs::write(&demo_config, xoflow::demo::DEMO_CONFIG).expect("demo config");
    let spawn = || {
        let mut c = common::xoflow_command(&cfg, &["enrich"]);
        c.env("XOFLOW_ENRICH__INSTANCE_ID", "enrich-0")
            .env("XOFLOW_CONFIG", &demo_config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log"),
            );
        tokio::process::Command::from(c)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn xoflow enrich")
    };
    let mut enrich = spawn();

    let generated = xoflow::datagen::generate(&data);
    let expected = generated.events.len() as u64 - generated.truth.invalid.values().sum::<u64>();
    let addr = format!("http://{}", running.grpc_addr.expect("ingest"));
    let send = |events: Vec<xoflow_proto::v1::Event>| {
        let addr = addr.clone();
        async move {
            load::send(
                &addr,
                events,
                &LoadOptions {
                    batch: 200,
                    rate: None,
                    concurrency: 2,
                },
            )
            .await
            .expect("sent")
            .accepted
        }
    };
    let ch = cfg.clickhouse.client();
    let repairs_stored = || async {
        ch.query("SELECT count() FROM events WHERE revision > 0")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
    };
    // The experience history first, then the orders and clicks in three
    // parts: enrich is killed once the first part's repairs start to be
    // stored, and again once the second part's do.
    let mut events = generated.events;
    let o_start = events
        .iter()
        .position(|e| {
            matches!(
                e.payload,
                Some(
                    xoflow_proto::v1::event::Payload::Order(_)
                        | xoflow_proto::v1::event::Payload::Click(_)
                )
            )
        })
        .expect("operational events");
    let mut o = events.split_off(o_start);
    let mut accepted = send(events).await;
    // Stored before any order is sent, so that the orders repair them
    // (arriving together, the lateness buffer would put them in order).
    common::wait_for(
        "the experience history to be stored",
        Duration::from_secs(180),
        || async {
            ch.query("SELECT count() FROM events")
                .fetch_one::<u64>()
                .await
                .unwrap_or(0)
                >= accepted
        },
    )
    .await;
    let third = o.len() / 3;
    let rest = o.split_off(third);
    let (second, last) = {
        let mut r = rest;
        let last = r.split_off(r.len() / 2);
        (r, last)
    };
    let mut stored = repairs_stored().await;
    for part in [o, second] {
        accepted += send(part).await;
        let target = stored + 1;
        common::wait_for("repairs to be stored", Duration::from_secs(180), || async {
            repairs_stored().await >= target
        })
        .await;
        enrich.start_kill().expect("SIGKILL");
        enrich.wait().await.expect("killed");
        stored = repairs_stored().await;
        eprintln!("enrich killed with {stored} repairs stored");
        enrich = spawn();
    }
    accepted += send(last).await;
    assert_eq!(accepted, expected);
    demo::wait_settled(&cfg, Duration::from_secs(180))
        .await
        .expect("settled");
    let outcome = dump(&ch).await;
    if std::env::var_os("XOFLOW_DEBUG_METRICS").is_some() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let addr = text
            .lines()
            .rev()
            .find_map(|l| common::log_field(l, "admin"))
            .map(|a| {
                a.trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':')
                    .to_owned()
            })
            .unwrap_or_default();
        let (_, m) = common::http_get(&addr, "/metrics").await;
        for l in m.lines().filter(|l| l.starts_with("xoflow_enrich_")) {
            eprintln!("{l}");
        }
    }
    enrich.start_kill().expect("SIGKILL");
    let _ = enrich.wait().await;
    running.stop();
    let _ = tokio::time::timeout(Duration::from_secs(60), running.wait()).await;

    eprintln!(
        "killed twice: {} of {} surveys joined, {} repaired; {} events",
        outcome.rate.joined,
        outcome.rate.surveys,
        outcome.rate.revised,
        outcome.latest.len()
    );
    assert_eq!(outcome.latest.len(), reference.latest.len(), "events");
    let differing: Vec<_> = reference
        .latest
        .iter()
        .filter(|(id, row)| outcome.latest.get(*id) != Some(row))
        .map(|(id, row)| (id, row, outcome.latest.get(id)))
        .take(3)
        .collect();
    assert!(
        differing.is_empty(),
        "latest revisions differ, e.g. {differing:#?}"
    );
    assert_eq!(outcome.aggregates, reference.aggregates, "aggregates");
    // Kept for reading when an assertion above fails.
    common::drop_database(&cfg).await;
}
