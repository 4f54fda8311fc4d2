//! Days in the tenant's time zone, revenue per currency, and ISO 4217 at
//! the door, through the real collector, enrich, alert stage, sink and
//! ClickHouse.
//!
//! Tenant `acme` is configured `time_zone = "Asia/Shanghai"` (UTC+8);
//! `demo-retail` has no zone (UTC). Each gets a detractor survey and a paid
//! order at 23:30 and at 00:30 Shanghai time (15:30 and 16:30 UTC, one UTC
//! day): for acme the two fall on two local days in every view
//! (`cx_by_touchpoint_day`, `cx_by_store_day`, `cx_by_region_day`,
//! `journey_funnel_day`, `revenue_by_currency_day`, `touchpoint_metrics`'
//! `local_hour`) and in the row-level `occurred_local`; for demo-retail on
//! one. `closed_loop` counts alerts on the Shanghai day they were raised. acme's orders are
//! paid in CNY and USD: two revenue figures, never one sum. An order in
//! `XXQ` is refused with its field and stored as a dead letter.

mod common;

use std::{collections::BTreeMap, time::Duration};

use clickhouse::Row;
use serde::Deserialize;
use xoflow::datagen::load::{self, LoadOptions};
use xoflow_proto::v1::{
    CustomerIdentity, Event, Location, MetricKind, Order, OrderStatus, SurveyAnswer,
    SurveyResponse, Touchpoint, event::Payload,
};

const DAY: i64 = 86_400_000;
const MINUTE: i64 = 60_000;

const OVERLAY: &str = r#"
[ingest.tenants.acme]
time_zone = "Asia/Shanghai"
[enrich.alerts.tenants.acme]
default_department = "customer-care"
[[enrich.alerts.tenants.acme.rules]]
name = "detractor"
severity = "high"
kinds = ["survey"]
nps = ["detractor"]
"#;

fn event(id: String, tenant: &str, at: i64, touchpoint: &str, payload: Payload) -> Event {
    Event {
        tenant: tenant.into(),
        source: "test".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(at)),
        // A customer per event: no quiet period holds one alert back.
        customer: Some(CustomerIdentity {
            customer_id: format!("c-{id}"),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: "online-purchase".into(),
            stage: "after-sales".into(),
            touchpoint: touchpoint.into(),
            channel: 0,
        }),
        location: Some(Location {
            store_id: "sh-01".into(),
            region: "east-china".into(),
        }),
        payload: Some(payload),
        event_id: id,
        ..Default::default()
    }
}

fn detractor(id: String, tenant: &str, at: i64) -> Event {
    event(
        id,
        tenant,
        at,
        "delivery-survey",
        Payload::Survey(SurveyResponse {
            survey_id: "post-delivery".into(),
            answers: vec![SurveyAnswer {
                question_id: "nps".into(),
                kind: MetricKind::Nps as i32,
                score: Some(2.0),
                scale_min: 0,
                scale_max: 10,
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

fn paid(id: String, tenant: &str, at: i64, amount_minor: i64, currency: &str) -> Event {
    event(
        id.clone(),
        tenant,
        at,
        "checkout",
        Payload::Order(Order {
            order_id: id,
            status: OrderStatus::Paid as i32,
            amount_minor,
            currency: currency.into(),
            ..Default::default()
        }),
    )
}

#[derive(Debug, Row, Deserialize)]
struct DayCount {
    tenant: String,
    day: u16,
    n: u64,
}

#[derive(Debug, Row, Deserialize, PartialEq)]
struct Revenue {
    day: u16,
    currency: String,
    paid_orders: u64,
    revenue_minor: i64,
}

#[derive(Debug, Row, Deserialize)]
struct DeadLetter {
    reason: String,
    field: String,
    event_id: String,
}

/// (tenant, day) → count, from a query answering `tenant, day, n`.
async fn days(ch: &clickhouse::Client, sql: &str) -> BTreeMap<(String, u16), u64> {
    ch.query(sql)
        .fetch_all::<DayCount>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter(|r| r.n > 0)
        .map(|r| ((r.tenant, r.day), r.n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_days_and_currencies_in_every_view() {
    let (cfg, id) = common::config(OVERLAY);
    let running = common::start(&cfg, xoflow::Stages::ALL).await;
    let addr = format!("http://{}", running.grpc_addr.expect("ingest"));

    // A UTC midnight ten days ago: 23:30 in Shanghai is 15:30 UTC that day,
    // 00:30 the next Shanghai day is 16:30 UTC, the same UTC day.
    let d0 = (common::now_ms() / DAY - 10) * DAY;
    let late = d0 + 15 * 60 * MINUTE + 30 * MINUTE;
    let early = late + 60 * MINUTE;
    let day = (d0 / DAY) as u16;
    let mut events = Vec::new();
    for tenant in ["acme", "demo-retail"] {
        events.push(detractor(format!("{id}-{tenant}-s1"), tenant, late));
        events.push(detractor(format!("{id}-{tenant}-s2"), tenant, early));
        events.push(paid(
            format!("{id}-{tenant}-o1"),
            tenant,
            late,
            12_800,
            "CNY",
        ));
        events.push(paid(
            format!("{id}-{tenant}-o2"),
            tenant,
            early,
            1_999,
            "USD",
        ));
    }
    let bad = paid(format!("{id}-acme-bad"), "acme", late, 500, "XXQ");
    let n = events.len() as u64;
    events.push(bad);
    let r = load::send(
        &addr,
        events,
        &LoadOptions {
            batch: 100,
            rate: None,
            concurrency: 1,
        },
    )
    .await
    .expect("sent");
    assert_eq!(
        (r.accepted, r.rejected),
        (n, 1),
        "XXQ refused, the rest accepted"
    );

    let ch = cfg.clickhouse.client();
    common::wait_for(
        "the events, the alerts and the dead letter in ClickHouse",
        Duration::from_secs(90),
        || {
            let ch = ch.clone();
            async move {
                let q = "SELECT (SELECT sumMerge(events) FROM touchpoint_metrics) + \
                         (SELECT count() FROM alerts) + (SELECT count() FROM dead_letters)";
                ch.query(q)
                    .fetch_one::<u64>()
                    .await
                    // The events, two alerts and one dead letter.
                    .is_ok_and(|k| k >= n + 3)
            }
        },
    )
    .await;

    // acme: one local day each; demo-retail (UTC): both on the UTC day.
    let two = BTreeMap::from([
        (("acme".to_owned(), day), 1),
        (("acme".to_owned(), day + 1), 1),
        (("demo-retail".to_owned(), day), 2),
    ]);
    for view in [
        "cx_by_touchpoint_day",
        "cx_by_store_day",
        "cx_by_region_day",
    ] {
        let got = days(
            &ch,
            &format!(
                "SELECT tenant, day, sum(detractors) AS n FROM {view} GROUP BY tenant, day ORDER BY tenant, day"
            ),
        )
        .await;
        assert_eq!(got, two, "{view}");
    }
    let orders = days(
        &ch,
        "SELECT tenant, day, sum(events) - sum(support_contacts) - 1 AS n FROM journey_funnel_day \
         GROUP BY tenant, day ORDER BY tenant, day",
    )
    .await;
    // Per day: a survey and an order for acme (2 - 1 = 1); all four on one
    // day for demo-retail (4 - 1 = 3).
    assert_eq!(
        orders,
        BTreeMap::from([
            (("acme".to_owned(), day), 1),
            (("acme".to_owned(), day + 1), 1),
            (("demo-retail".to_owned(), day), 3),
        ]),
        "journey_funnel_day"
    );
    let rows = days(
        &ch,
        "SELECT tenant, toUInt16(toDate(occurred_local)) AS day, count() AS n FROM events_latest \
         WHERE kind = 'survey' GROUP BY tenant, day ORDER BY tenant, day",
    )
    .await;
    assert_eq!(rows, two, "events_latest.occurred_local");
    let month = days(
        &ch,
        "SELECT tenant, toUInt16(toDate(toStartOfDay(local_hour))) AS day, sumMerge(nps_detractors) AS n \
         FROM touchpoint_metrics GROUP BY tenant, day ORDER BY tenant, day",
    )
    .await;
    assert_eq!(month, two, "touchpoint_metrics.local_hour");

    // Revenue: one figure per currency and local day, never a sum.
    let revenue: Vec<Revenue> = ch
        .query(
            "SELECT day, currency, sum(paid_orders) AS paid_orders, sum(revenue_minor) AS revenue_minor \
             FROM revenue_by_currency_day WHERE tenant = 'acme' \
             GROUP BY day, currency ORDER BY day, currency",
        )
        .fetch_all()
        .await
        .expect("revenue");
    assert_eq!(
        revenue,
        vec![
            Revenue {
                day,
                currency: "CNY".into(),
                paid_orders: 1,
                revenue_minor: 12_800
            },
            Revenue {
                day: day + 1,
                currency: "USD".into(),
                paid_orders: 1,
                revenue_minor: 1_999
            },
        ]
    );

    // The closed loop, per local day of the alerts raised.
    common::wait_for(
        "both alerts of each tenant",
        Duration::from_secs(60),
        || {
            let ch = ch.clone();
            async move {
                ch.query("SELECT count() FROM alerts WHERE tenant = 'acme'")
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|k| k >= 2)
            }
        },
    )
    .await;
    // Alerts are counted on the local day they were raised (now, not the
    // event's day): Shanghai's day of each raised_at.
    let raised: Vec<u32> = ch
        .query("SELECT raised_at FROM alerts WHERE tenant = 'acme'")
        .fetch_all()
        .await
        .expect("raised_at");
    let mut want = BTreeMap::new();
    for at in raised {
        *want
            .entry(("acme".to_owned(), ((at + 8 * 3600) / 86_400) as u16))
            .or_insert(0) += 1;
    }
    let alerts = days(
        &ch,
        "SELECT tenant, day, sum(alerts_raised) AS n FROM closed_loop GROUP BY tenant, day ORDER BY tenant, day",
    )
    .await;
    assert_eq!(alerts, want, "closed_loop");

    // XXQ: refused with its field, stored as a dead letter.
    let dl: Vec<DeadLetter> = ch
        .query("SELECT reason, field, event_id FROM dead_letters")
        .fetch_all()
        .await
        .expect("dead letters");
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(
        (
            dl[0].reason.as_str(),
            dl[0].field.as_str(),
            dl[0].event_id.as_str()
        ),
        (
            "INVALID",
            "order.currency",
            format!("{id}-acme-bad").as_str()
        )
    );

    running.stop();
    running.wait().await.expect("clean stop");
    common::drop_database(&cfg).await;
}
