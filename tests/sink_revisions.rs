//! Revisions of enriched events through the real broker, sink and
//! ClickHouse: enrich emits an event again (revision 1, 2, …) when
//! something that arrived later repaired its joined context. The stream
//! holds revisions 0, 1 and 2 of the same events, redelivered copies of
//! revision 1 and revision 0 replayed after revision 2; half of it is read
//! by a second sink of a new consumer group, which dedups against the pairs
//! it loads back from ClickHouse. At the end:
//!
//! - `events` holds every (event_id, revision) once, before and after
//!   `OPTIMIZE ... FINAL` (revisions are no copies of each other);
//! - `events_latest` holds one row per event, its highest revision, with
//!   that revision's context;
//! - `touchpoint_metrics` counts every event once, and its `customers`
//!   holds a customer that only a repair resolved;
//! - `customer_profile` follows the latest revision.

mod common;

use std::{collections::BTreeSet, time::Duration};

use clickhouse::Row;
use serde::Deserialize;
use xoflow::Stages;
use xoflow_proto::{
    Message,
    v1::{
        CallContext, CallTranscript, CustomerContext, CustomerIdentity, CxFields, EnrichedEvent,
        Event, IdentityResolution, NpsCategory, SentimentLabel, SurveyResponse, SurveyTrigger,
        Touchpoint, event::Payload, survey_trigger::Ref,
    },
};

/// Surveys: `i % 3 == 0` names its customer and is repaired twice (the
/// call it was about, then the call's outcome); `i % 3 == 1` is anonymous
/// until revision 1 links its e-mail to a customer, then repaired again;
/// `i % 3 == 2` is never repaired.
const SURVEYS: usize = 30;
/// Calls, revision 0 only: support contacts.
const CALLS: usize = 6;

fn repaired(i: usize) -> bool {
    i % 3 != 2
}

fn customer(i: usize, revision: u32) -> String {
    match i % 3 {
        1 if revision == 0 => String::new(),
        1 => format!("late-{i}"),
        _ => format!("c-{i}"),
    }
}

fn survey(id: &str, i: usize, revision: u32, now: i64) -> EnrichedEvent {
    let nps = (i % 11) as i32;
    let category = match nps {
        9.. => NpsCategory::Promoter,
        7 | 8 => NpsCategory::Passive,
        _ => NpsCategory::Detractor,
    };
    let event = Event {
        event_id: format!("{id}-s{i}"),
        tenant: "shop".into(),
        source: "survey-tool".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(now - 60_000 - i as i64)),
        customer: Some(CustomerIdentity {
            customer_id: if i % 3 == 1 {
                String::new()
            } else {
                format!("c-{i}")
            },
            email_hash: format!("h-{i}"),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: "support".into(),
            stage: "after-call".into(),
            touchpoint: "hotline".into(),
            channel: 4,
        }),
        payload: Some(Payload::Survey(SurveyResponse {
            survey_id: "post-call".into(),
            trigger: Some(SurveyTrigger {
                r#ref: Some(Ref::CallId(format!("call-{i}"))),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let resolved = customer(i, revision);
    EnrichedEvent {
        event: Some(event),
        revision,
        resolution: match (i % 3, revision) {
            (1, 0) => IdentityResolution::Unresolved,
            (1, _) => IdentityResolution::Linked,
            _ => IdentityResolution::Direct,
        } as i32,
        resolved_customer_id: resolved,
        cx: Some(CxFields {
            nps_score: Some(nps),
            nps_category: category as i32,
            ..Default::default()
        }),
        customer: Some(CustomerContext {
            churn_risk: Some(f64::from(revision + 1) / 10.0),
            ..Default::default()
        }),
        call: (revision > 0).then(|| CallContext {
            call_id: format!("call-{i}"),
            queue: format!("queue-r{revision}"),
            disposition: if revision == 2 { "resolved" } else { "" }.into(),
            duration_seconds: 60 * revision,
            sentiment_label: SentimentLabel::Negative as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn call(id: &str, i: usize, now: i64) -> EnrichedEvent {
    let event = Event {
        event_id: format!("{id}-k{i}"),
        tenant: "shop".into(),
        source: "cti".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(now - 120_000 - i as i64)),
        customer: Some(CustomerIdentity {
            customer_id: format!("caller-{i}"),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: "support".into(),
            stage: "contact".into(),
            touchpoint: "hotline".into(),
            channel: 4,
        }),
        payload: Some(Payload::Call(CallTranscript {
            call_id: format!("call-{i}"),
            queue: "billing".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    EnrichedEvent {
        event: Some(event),
        resolved_customer_id: format!("caller-{i}"),
        resolution: IdentityResolution::Direct as i32,
        ..Default::default()
    }
}

/// Each record under its event id, as enrich keys the enriched topic: all
/// revisions of an event in one partition, in the order given.
fn records(events: &[EnrichedEvent]) -> Vec<(Vec<u8>, String)> {
    events
        .iter()
        .map(|e| {
            let key = e.event.as_ref().expect("event").event_id.clone();
            (e.encode_to_vec(), key)
        })
        .collect()
}

/// Waits until the sink group has committed `records` offsets of the
/// enriched topic: every record read, copies included.
async fn committed(cfg: &xoflow::Config, records: i64) {
    common::wait_for(
        &format!("the sink to commit {records} records"),
        Duration::from_secs(90),
        || {
            let cfg = cfg.clone();
            async move {
                let status =
                    xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id)
                        .await
                        .expect("status");
                status
                    .iter()
                    .filter(|s| s.topic == cfg.kafka.topics.enriched)
                    .filter_map(|s| s.committed)
                    .sum::<i64>()
                    == records
            }
        },
    )
    .await;
}

#[derive(Debug, Row, Deserialize, PartialEq)]
struct Latest {
    event_id: String,
    revision: u32,
    customer_id: String,
    ctx_call_id: String,
    ctx_call_queue: String,
    ctx_call_disposition: String,
    ctx_call_duration_s: u32,
    sentiment: String,
}

#[derive(Debug, Row, Deserialize, PartialEq)]
struct Metrics {
    events: u64,
    promoters: u64,
    passives: u64,
    detractors: u64,
    support_contacts: u64,
    customers: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_are_stored_once_each_and_counted_once_per_event() {
    let (mut cfg, id) = common::config("");
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    let now = common::now_ms();
    let rev = |i: usize, r: u32| survey(&id, i, r, now);
    let is_repaired = (0..SURVEYS).filter(|i| repaired(*i));

    // First half: revision 0 of everything, revision 1 of the repaired
    // surveys, and a redelivered copy of half of those.
    let mut first: Vec<EnrichedEvent> = (0..CALLS).map(|i| call(&id, i, now)).collect();
    first.extend((0..SURVEYS).map(|i| rev(i, 0)));
    first.extend(is_repaired.clone().map(|i| rev(i, 1)));
    first.extend(
        is_repaired
            .clone()
            .filter(|i| i % 2 == 0)
            .map(|i| rev(i, 1)),
    );
    // Second half: revision 2, the other redelivered copies of revision 1,
    // and revision 0 replayed after revision 2 (enrich re-emits after a
    // crash; an old revision comes after a newer one).
    let mut second: Vec<EnrichedEvent> = is_repaired.clone().map(|i| rev(i, 2)).collect();
    second.extend(
        is_repaired
            .clone()
            .filter(|i| i % 2 == 1)
            .map(|i| rev(i, 1)),
    );
    second.extend(is_repaired.clone().map(|i| rev(i, 0)));
    let (n1, n2) = (first.len() as i64, second.len() as i64);

    common::produce_enriched(&cfg, &records(&first)).await;
    let running = common::start(&cfg, Stages::SINK).await;
    committed(&cfg, n1).await;
    running.stop();
    running.wait().await.expect("clean shutdown");

    // A new group reads the topic from offset 0: the first half is skipped
    // by position, the second deduped against the pairs loaded from
    // ClickHouse.
    cfg.sink.group_id = format!("g-{id}-sink-2");
    common::produce_enriched(&cfg, &records(&second)).await;
    let running = common::start(&cfg, Stages::SINK).await;
    committed(&cfg, n1 + n2).await;
    running.stop();
    running.wait().await.expect("clean shutdown");

    let ch = cfg.clickhouse.client();
    let events = (SURVEYS + CALLS) as u64;
    let repairs = is_repaired.clone().count() as u64;
    let pairs = events + 2 * repairs;

    // Each (event_id, revision) once, before merges (the sink's dedup) and
    // after (the sorting key keeps revisions apart).
    let stored = || async {
        ch.query("SELECT count(), uniqExact(event_id, revision), uniqExact(event_id) FROM events")
            .fetch_one::<(u64, u64, u64)>()
            .await
            .expect("events")
    };
    assert_eq!(stored().await, (pairs, pairs, events));
    ch.query("OPTIMIZE TABLE events FINAL")
        .execute()
        .await
        .expect("optimize");
    assert_eq!(stored().await, (pairs, pairs, events));
    let dead: u64 = ch
        .query("SELECT count() FROM dead_letters")
        .fetch_one()
        .await
        .expect("dead letters");
    assert_eq!(dead, 0);

    // One row per event, its highest revision with that revision's context.
    let latest: Vec<Latest> = ch
        .query(
            "SELECT event_id, revision, customer_id, ctx_call_id, ctx_call_queue, \
                    ctx_call_disposition, ctx_call_duration_s, \
                    toString(ctx_call_sentiment_label) AS sentiment \
             FROM events_latest WHERE kind = 'survey' ORDER BY event_id",
        )
        .fetch_all()
        .await
        .expect("events_latest");
    let mut want: Vec<Latest> = (0..SURVEYS)
        .map(|i| {
            let r = if repaired(i) { 2 } else { 0 };
            Latest {
                event_id: format!("{id}-s{i}"),
                revision: r,
                customer_id: customer(i, r),
                ctx_call_id: if r > 0 {
                    format!("call-{i}")
                } else {
                    String::new()
                },
                ctx_call_queue: if r > 0 {
                    "queue-r2".into()
                } else {
                    String::new()
                },
                ctx_call_disposition: if r > 0 { "resolved" } else { "" }.into(),
                ctx_call_duration_s: 60 * r,
                sentiment: if r > 0 { "negative" } else { "none" }.into(),
            }
        })
        .collect();
    want.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(latest, want);
    let (rows, distinct): (u64, u64) = ch
        .query("SELECT count(), uniqExact(event_id) FROM events_latest")
        .fetch_one()
        .await
        .expect("events_latest count");
    assert_eq!((rows, distinct), (events, events));

    // Every event counted once; customers from every revision, a customer
    // resolved only by revision 1 among them.
    let m: Metrics = ch
        .query(
            "SELECT toUInt64(sumMerge(events)) AS events, \
                    toUInt64(sumMerge(nps_promoters)) AS promoters, \
                    toUInt64(sumMerge(nps_passives)) AS passives, \
                    toUInt64(sumMerge(nps_detractors)) AS detractors, \
                    toUInt64(sumMerge(support_contacts)) AS support_contacts, \
                    toUInt64(uniqMerge(customers)) AS customers \
             FROM touchpoint_metrics",
        )
        .fetch_one()
        .await
        .expect("metrics");
    let nps: Vec<usize> = (0..SURVEYS).map(|i| i % 11).collect();
    let customers: BTreeSet<String> = (0..SURVEYS)
        .flat_map(|i| [customer(i, 0), customer(i, 1)])
        .chain((0..CALLS).map(|i| format!("caller-{i}")))
        .filter(|c| !c.is_empty())
        .collect();
    assert!(customers.contains("late-1"));
    assert_eq!(
        m,
        Metrics {
            events,
            promoters: nps.iter().filter(|n| **n >= 9).count() as u64,
            passives: nps.iter().filter(|n| (7..=8).contains(*n)).count() as u64,
            detractors: nps.iter().filter(|n| **n <= 6).count() as u64,
            support_contacts: CALLS as u64,
            customers: customers.len() as u64,
        }
    );
    // The same figures from the rows: distinct events, and the customers of
    // every revision.
    let (distinct_events, distinct_customers): (u64, u64) = ch
        .query(
            "SELECT uniqExact(event_id), uniqExactIf(customer_id, customer_id != '') FROM events",
        )
        .fetch_one()
        .await
        .expect("distinct");
    assert_eq!(
        (distinct_events, distinct_customers),
        (m.events, m.customers)
    );
    let late_in_metrics: u64 = ch
        .query(
            "SELECT toUInt64(uniqMerge(customers)) FROM touchpoint_metrics \
             WHERE stage = 'after-call'",
        )
        .fetch_one()
        .await
        .expect("survey customers");
    let first_revision_only: u64 = ch
        .query(
            "SELECT uniqExactIf(customer_id, customer_id != '') FROM events \
             WHERE revision = 0 AND kind = 'survey'",
        )
        .fetch_one()
        .await
        .expect("revision 0 customers");
    assert_eq!(
        late_in_metrics,
        first_revision_only + (0..SURVEYS).filter(|i| i % 3 == 1).count() as u64,
        "customers resolved by a repair are counted"
    );

    // The customer profile follows the latest revision (inserted last, with
    // the same event time).
    let profile: Vec<(String, f64)> = ch
        .query(
            "SELECT customer_id, ifNull(churn_risk, -1) FROM customer_profile FINAL \
             WHERE customer_id != '' AND last_kind = 'survey' ORDER BY customer_id",
        )
        .fetch_all()
        .await
        .expect("profile");
    let mut want: Vec<(String, f64)> = (0..SURVEYS)
        .map(|i| {
            let r = if repaired(i) { 2 } else { 0 };
            (customer(i, r), f64::from(r + 1) / 10.0)
        })
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(profile, want);

    common::drop_database(&cfg).await;
}
