//! Retention per tenant on the real broker and ClickHouse 18.16
//! (docs/privacy.md): tenant `acme` keeps events 30 days, dead letters 10
//! and alerts 60; `beta` keeps everything. Old and recent events (surveys,
//! so `survey_answers` and `customer_profile` have rows too), dead letters
//! and alerts of both go in; after `xoflow retention`'s run, acme's rows
//! older than its retention are gone, every other row is there, the
//! aggregates are untouched, and a second run deletes nothing.

mod common;

use std::time::Duration;

use xoflow_alert::store::{AlertRow, Store};
use xoflow_common::kafka::Outgoing;
use xoflow_proto::{
    Message,
    v1::{
        CustomerIdentity, EnrichedEvent, Event, MetricKind, SurveyAnswer, SurveyResponse,
        Touchpoint, event::Payload,
    },
};

const DAY: i64 = 86_400_000;
const OLD: i64 = 40;
const RECENT: i64 = 5;
/// Old events per tenant, and recent ones (one more per partition after).
const N: usize = 40;
const PARTITIONS: i32 = 4;

const OVERLAY: &str = r#"
[retention]
replay_horizon = "0s"
[retention.tenants.acme]
events = "30days"
dead_letters = "10days"
alerts = "60days"
"#;

fn survey(id: String, tenant: &str, at: i64) -> Vec<u8> {
    let event = Event {
        event_id: id.clone(),
        tenant: tenant.into(),
        source: "test".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(at)),
        customer: Some(CustomerIdentity {
            customer_id: format!("c-{id}"),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: "j".into(),
            stage: "s".into(),
            touchpoint: "t".into(),
            channel: 0,
        }),
        payload: Some(Payload::Survey(SurveyResponse {
            survey_id: "s".into(),
            answers: vec![SurveyAnswer {
                question_id: "nps".into(),
                kind: MetricKind::Nps as i32,
                score: Some(9.0),
                scale_min: 0,
                scale_max: 10,
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    EnrichedEvent {
        cx: Some(xoflow_enrich::derive::cx_fields(&event)),
        resolved_customer_id: format!("c-{id}"),
        event: Some(event),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn count(ch: &clickhouse::Client, sql: &str) -> u64 {
    ch.query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_tenant_retention_go_and_the_rest_stay() {
    let (cfg, id) = common::config(OVERLAY);
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    let now = common::now_ms();
    let producer = cfg.kafka.batch_producer().expect("producer");

    // Old and recent rows of both tenants, keyed; then one recent row per
    // partition, so that no old row holds a partition's position.
    let mut events = Vec::new();
    let mut dead = Vec::new();
    for tenant in ["acme", "beta"] {
        for i in 0..N {
            for (age, tag) in [(OLD, "old"), (RECENT, "new")] {
                let key = format!("{id}-{tenant}-{tag}-{i}");
                events.push((key.clone(), survey(key.clone(), tenant, now - age * DAY)));
                // Dead letters 20 days old (past acme's 10) and 1 day old.
                let dl_age = if tag == "old" { 20 } else { 1 };
                dead.push((
                    key.clone(),
                    common::dead_letter(key, tenant, now - dl_age * DAY),
                ));
            }
        }
    }
    for (topic, rows) in [(&t.enriched, &events), (&t.dead_letters, &dead)] {
        let records: Vec<Outgoing<'_>> = rows
            .iter()
            .map(|(k, v)| Outgoing::keyed(k.as_bytes(), v))
            .collect();
        producer.send_all(topic, &records).await.expect("produce");
    }
    let mut last = Vec::new();
    for p in 0..PARTITIONS {
        let key = format!("{id}-beta-last-{p}");
        last.push((
            p,
            key.clone(),
            survey(key.clone(), "beta", now - DAY),
            common::dead_letter(key, "beta", now - DAY),
        ));
    }
    for (p, key, ev, dl) in &last {
        producer
            .send_all_to_partition(&t.enriched, *p, &[Outgoing::keyed(key.as_bytes(), ev)])
            .await
            .expect("produce");
        producer
            .send_all_to_partition(&t.dead_letters, *p, &[Outgoing::keyed(key.as_bytes(), dl)])
            .await
            .expect("produce");
    }
    let all = (events.len() + last.len()) as u64;

    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    let ch = cfg.clickhouse.client();
    common::wait_for("every row stored", Duration::from_secs(60), || {
        let ch = ch.clone();
        async move {
            let q = "SELECT (SELECT count() FROM events) + (SELECT count() FROM dead_letters) \
                     + (SELECT sumMerge(events) FROM touchpoint_metrics)";
            ch.query(q)
                .fetch_one::<u64>()
                .await
                .is_ok_and(|n| n == 3 * all)
        }
    })
    .await;
    running.stop();
    running.wait().await.expect("clean stop");

    // Alerts raised 90 days ago (past acme's 60) and 10 days ago.
    let store = Store::new(ch.clone());
    let mut alerts = Vec::new();
    for tenant in ["acme", "beta"] {
        for (age, tag) in [(90, "old"), (10, "new")] {
            alerts.push(AlertRow {
                alert_id: format!("{id}-{tenant}-{tag}"),
                tenant: tenant.into(),
                raised_at: ((now - age * DAY) / 1000) as u32,
                written_at: ((now - age * DAY) / 1000) as u32,
                ..Default::default()
            });
        }
    }
    store.insert_alerts(&alerts).await.expect("alerts");
    let aggregates = "SELECT sumMerge(events) FROM touchpoint_metrics";
    let before = count(&ch, aggregates).await;

    let report =
        xoflow_sink::clickhouse::retention::enforce(&cfg.clickhouse, &cfg.retention, false)
            .await
            .expect("retention");
    eprintln!("{report:?}");
    let deleted = |tenant: &str, table: &str| {
        report
            .get(&(tenant.to_owned(), table.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(deleted("acme", "events"), N as u64);
    assert_eq!(deleted("acme", "survey_answers"), N as u64);
    assert_eq!(deleted("acme", "dead_letters"), N as u64);
    assert_eq!(deleted("acme", "alerts"), 1);
    assert!(deleted("acme", "customer_profile") >= N as u64);
    assert!(
        report.keys().all(|(tenant, _)| tenant == "acme"),
        "beta keeps all"
    );

    let cutoff = |days: i64| (now / 1000 - days * 86_400).to_string();
    for (tenant, table, column, days, want) in [
        ("acme", "events", "occurred_at", 30, (0, N)),
        (
            "beta",
            "events",
            "occurred_at",
            30,
            (N, N + PARTITIONS as usize),
        ),
        ("acme", "survey_answers", "occurred_at", 30, (0, N)),
        (
            "beta",
            "survey_answers",
            "occurred_at",
            30,
            (N, N + PARTITIONS as usize),
        ),
        ("acme", "customer_profile", "last_event_at", 30, (0, N)),
        ("acme", "dead_letters", "at", 10, (0, N)),
        (
            "beta",
            "dead_letters",
            "at",
            10,
            (N, N + PARTITIONS as usize),
        ),
        ("acme", "alerts", "raised_at", 60, (0, 1)),
        ("beta", "alerts", "raised_at", 60, (1, 1)),
    ] {
        let c = cutoff(days);
        // FINAL where the engine collapses copies.
        let table = match table {
            "dead_letters" => table.to_owned(),
            _ => format!("{table} FINAL"),
        };
        let old = count(
            &ch,
            &format!(
                "SELECT count() FROM {table} WHERE tenant = '{tenant}' AND toUInt32({column}) < {c}"
            ),
        )
        .await;
        let kept = count(
            &ch,
            &format!(
                "SELECT count() FROM {table} WHERE tenant = '{tenant}' AND toUInt32({column}) >= {c}"
            ),
        )
        .await;
        assert_eq!(
            (old, kept),
            (want.0 as u64, want.1 as u64),
            "{tenant} {table}: (older, newer)"
        );
    }
    assert_eq!(count(&ch, aggregates).await, before, "aggregates untouched");

    let again = xoflow_sink::clickhouse::retention::enforce(&cfg.clickhouse, &cfg.retention, false)
        .await
        .expect("second run");
    assert!(again.values().all(|n| *n == 0), "{again:?}");
    common::drop_database(&cfg).await;
}
