//! NPS, CSAT and CES read from the BI views equal the standard definitions
//! on a fixture computed by hand, through the real broker, sink and
//! ClickHouse.

mod common;

use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use xoflow::Stages;
use xoflow_common::kafka::Outgoing;
use xoflow_proto::{
    Message,
    v1::{
        CustomerIdentity, EnrichedEvent, Event, Location, MetricKind, SurveyAnswer, SurveyResponse,
        Touchpoint, event::Payload,
    },
};

// (NPS 0-10, CSAT 1-5, CES 1-7) of eight answers at one touchpoint.
const ANSWERS: [(f64, f64, f64); 8] = [
    (10.0, 5.0, 7.0),
    (10.0, 4.0, 6.0),
    (9.0, 4.0, 5.0),
    (9.0, 3.0, 3.0),
    (8.0, 2.0, 1.0),
    (7.0, 5.0, 7.0),
    (6.0, 1.0, 4.0),
    (2.0, 4.0, 2.0),
];
// By hand: promoters 4 (10, 10, 9, 9), passives 2 (8, 7), detractors 2
// (6, 2): NPS = 100 × (4 − 2) / 8 = 25.0. CSAT top-two-box (4-5): 5 of 8 =
// 62.5 %. CES mean 35 / 8 = 4.375; easy (5-7): 4 of 8.

#[derive(Debug, Row, Deserialize)]
struct Figures {
    promoters: u64,
    passives: u64,
    detractors: u64,
    nps: f64,
    csat_pct: f64,
    ces_mean: f64,
    ces_easy: u64,
}

fn answer(kind: MetricKind, score: f64, max: i32) -> SurveyAnswer {
    SurveyAnswer {
        kind: kind as i32,
        score: Some(score),
        scale_min: i32::from(kind != MetricKind::Nps),
        scale_max: max,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_metrics_equal_the_standard_definitions() {
    let (cfg, id) = common::config("");
    let now = common::now_ms();
    let encoded: Vec<(Vec<u8>, String)> = ANSWERS
        .iter()
        .enumerate()
        .map(|(i, (nps, csat, ces))| {
            let event = Event {
                event_id: format!("{id}-{i}"),
                tenant: "fixture".into(),
                source: "test".into(),
                occurred_at: Some(xoflow_proto::from_unix_millis(now - 1_000)),
                customer: Some(CustomerIdentity {
                    customer_id: format!("c{i}"),
                    ..Default::default()
                }),
                touchpoint: Some(Touchpoint {
                    journey: "online-purchase".into(),
                    stage: "delivery".into(),
                    touchpoint: "courier-delivery".into(),
                    channel: 1,
                }),
                location: Some(Location {
                    store_id: "wh-1".into(),
                    region: "east".into(),
                }),
                payload: Some(Payload::Survey(SurveyResponse {
                    survey_id: "post-delivery".into(),
                    answers: vec![
                        answer(MetricKind::Nps, *nps, 10),
                        answer(MetricKind::Csat, *csat, 5),
                        answer(MetricKind::Ces, *ces, 7),
                    ],
                    ..Default::default()
                })),
                ..Default::default()
            };
            let enriched = EnrichedEvent {
                cx: Some(xoflow_enrich::derive::cx_fields(&event)),
                resolved_customer_id: format!("c{i}"),
                event: Some(event),
                ..Default::default()
            };
            (enriched.encode_to_vec(), format!("{id}-{i}"))
        })
        .collect();
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    let records: Vec<Outgoing<'_>> = encoded
        .iter()
        .map(|(b, k)| Outgoing::keyed(k.as_bytes(), b))
        .collect();
    cfg.kafka
        .batch_producer()
        .expect("producer")
        .send_all(&t.enriched, &records)
        .await
        .expect("produce");

    let running = common::start(&cfg, Stages::SINK).await;
    let ch = cfg.clickhouse.client();
    // Materialized views are written after the raw rows become visible:
    // wait for the aggregates themselves.
    common::wait_for(
        "the fixture in the aggregates",
        Duration::from_secs(60),
        || {
            let ch = ch.clone();
            async move {
                ch.query("SELECT sumMerge(events) FROM touchpoint_metrics")
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|n| n >= ANSWERS.len() as u64)
            }
        },
    )
    .await;
    let f: Figures = ch
        .query(
            "SELECT promoters, passives, detractors, nps, csat_pct, ces_mean, ces_easy \
             FROM cx_by_touchpoint_day WHERE tenant = 'fixture'",
        )
        .fetch_one()
        .await
        .expect("view");
    assert_eq!((f.promoters, f.passives, f.detractors), (4, 2, 2));
    assert!((f.nps - 25.0).abs() < 1e-9, "NPS {}", f.nps);
    assert!((f.csat_pct - 62.5).abs() < 1e-9, "CSAT {}", f.csat_pct);
    assert!((f.ces_mean - 4.375).abs() < 1e-9, "CES {}", f.ces_mean);
    assert_eq!(f.ces_easy, 4);
    let (store_nps, region_nps): (f64, f64) = ch
        .query(
            "SELECT (SELECT nps FROM touchpoint_store_comparison WHERE tenant = 'fixture'), \
                    (SELECT nps FROM cx_by_region_day WHERE tenant = 'fixture')",
        )
        .fetch_one()
        .await
        .expect("store and region views");
    assert!((store_nps - 25.0).abs() < 1e-9 && (region_nps - 25.0).abs() < 1e-9);

    running.stop();
    running.wait().await.expect("clean shutdown");
    common::drop_database(&cfg).await;
}
