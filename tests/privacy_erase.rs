//! Erasure end to end, on the real broker and ClickHouse (docs/privacy.md).
//!
//! Two customers of tenant acme go through the whole pipeline (ingest,
//! enrich, alert stage, sink): an order teaching links from their customer
//! id to their e-mail, phone and social handle; a detractor survey known
//! only by e-mail (resolved by a link, so revision 0 is unresolved) with a
//! planted text answer and comment; a support call and a social post with
//! planted text; a click; and a refused order (currency `XXQ`) that becomes
//! a dead letter. The survey raises an alert. Then customer X is erased
//! through `POST /v1/erasures` by e-mail:
//!
//! - no row of any table holds X's customer id, hashed identifiers, raw
//!   e-mail or planted texts; customer Y's text is still there;
//! - the aggregates, `events_latest` and `survey_answers` count what they
//!   counted before (X's events stay, anonymised);
//! - the link table and the join changelog hold nothing of X;
//! - the running enrich instance forgot X: a new order of X is joined with
//!   no history (its lifetime value is its own amount);
//! - `xoflow erase --customer X` afterwards finds nothing and changes
//!   nothing; an unknown customer is a clear no-op; each request left a
//!   receipt without personal data.

mod common;

use std::{collections::BTreeMap, time::Duration};

use xoflow::datagen::load::{self, LoadOptions};
use xoflow_proto::v1::{
    CallTranscript, ClickAction, ClickEvent, CustomerIdentity, Event, MetricKind, Order,
    OrderStatus, SocialPost, Speaker, SurveyAnswer, SurveyResponse, Touchpoint, TranscriptSegment,
    event::Payload,
};

const OVERLAY: &str = r#"
[enrich.alerts.tenants.acme]
default_department = "customer-care"
[[enrich.alerts.tenants.acme.rules]]
name = "detractor"
severity = "high"
kinds = ["survey"]
nps = ["detractor"]
"#;

const MINUTE: i64 = 60_000;

/// One customer's identifiers and planted text.
struct Person {
    customer: String,
    email: String,
    phone: String,
    handle: String,
    planted: String,
}

fn base(id: String, at: i64, touchpoint: &str, customer: CustomerIdentity, p: Payload) -> Event {
    Event {
        event_id: id,
        tenant: "acme".into(),
        source: "test".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(at)),
        customer: Some(customer),
        touchpoint: Some(Touchpoint {
            journey: "online-purchase".into(),
            stage: "after-sales".into(),
            touchpoint: touchpoint.into(),
            channel: 0,
        }),
        payload: Some(p),
        ..Default::default()
    }
}

fn order(id: String, at: i64, who: CustomerIdentity, amount: i64, currency: &str) -> Event {
    base(
        id.clone(),
        at,
        "checkout",
        who,
        Payload::Order(Order {
            order_id: format!("o-{id}"),
            status: OrderStatus::Paid as i32,
            amount_minor: amount,
            currency: currency.into(),
            ..Default::default()
        }),
    )
}

/// Event ids never contain the customer id (docs/privacy.md: an event id
/// is kept by an erasure, as the sink's dedup key).
fn events_of(p: &Person, tag: &str, t0: i64) -> (Vec<Event>, Event) {
    let full = CustomerIdentity {
        customer_id: p.customer.clone(),
        email: p.email.clone(),
        phone: p.phone.clone(),
        social_handle: p.handle.clone(),
        ..Default::default()
    };
    let by_id = CustomerIdentity {
        customer_id: p.customer.clone(),
        ..Default::default()
    };
    let by_email = CustomerIdentity {
        email: p.email.clone(),
        ..Default::default()
    };
    let by_handle = CustomerIdentity {
        social_handle: p.handle.clone(),
        ..Default::default()
    };
    let events = vec![
        order(format!("{tag}-1"), t0, full.clone(), 56_000, "CNY"),
        base(
            format!("{tag}-2"),
            t0 + MINUTE,
            "delivery-survey",
            by_email,
            Payload::Survey(SurveyResponse {
                survey_id: "post-delivery".into(),
                answers: vec![
                    SurveyAnswer {
                        question_id: "nps".into(),
                        kind: MetricKind::Nps as i32,
                        score: Some(2.0),
                        scale_min: 0,
                        scale_max: 10,
                        ..Default::default()
                    },
                    SurveyAnswer {
                        question_id: "why".into(),
                        kind: MetricKind::Other as i32,
                        text: format!("the courier {} again", p.planted),
                        ..Default::default()
                    },
                ],
                comment: format!("late, {}", p.planted),
                ..Default::default()
            }),
        ),
        base(
            format!("{tag}-3"),
            t0 + 2 * MINUTE,
            "support-call",
            by_id.clone(),
            Payload::Call(CallTranscript {
                call_id: format!("call-{tag}"),
                queue: "after-sales".into(),
                segments: vec![TranscriptSegment {
                    speaker: Speaker::Customer as i32,
                    start_ms: 0,
                    end_ms: 4_000,
                    text: format!("where is my parcel {}", p.planted),
                }],
                ..Default::default()
            }),
        ),
        base(
            format!("{tag}-4"),
            t0 + 3 * MINUTE,
            "delivery-survey",
            by_handle,
            Payload::Social(SocialPost {
                platform: "weibo".into(),
                post_id: format!("post-{tag}"),
                author_handle: p.handle.clone(),
                text: format!("never again {}", p.planted),
                ..Default::default()
            }),
        ),
        base(
            format!("{tag}-5"),
            t0 + 4 * MINUTE,
            "checkout",
            by_id,
            Payload::Click(ClickEvent {
                session_id: format!("sess-{tag}"),
                path: "/checkout/pay".into(),
                action: ClickAction::Checkout as i32,
                ..Default::default()
            }),
        ),
    ];
    let refused = order(format!("{tag}-bad"), t0 + 5 * MINUTE, full, 100, "XXQ");
    (events, refused)
}

/// A bare HTTP/1.0 POST of JSON: status and body.
async fn post_json(addr: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    common::parse_http_response(&buf)
}

/// Every table of the database as text (TSV of `SELECT *`).
async fn every_table(cfg: &xoflow::Config) -> BTreeMap<String, String> {
    let ch = cfg.clickhouse.client();
    let tables: Vec<String> = ch
        .query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() \
             AND engine NOT LIKE '%View'",
        )
        .fetch_all()
        .await
        .expect("tables");
    let http = format!(
        "{}/?database={}",
        cfg.clickhouse.url.trim_end_matches('/'),
        cfg.clickhouse.database
    );
    let mut out = BTreeMap::new();
    for t in tables {
        let text = curl(&http, &format!("SELECT * FROM {t} FORMAT TSV")).await;
        out.insert(t, text);
    }
    out
}

async fn curl(url: &str, sql: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--data-binary", sql, url])
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What BI counts: totals that must not change with an erasure.
async fn figures(ch: &clickhouse::Client) -> Vec<u64> {
    let q = "SELECT (SELECT sumMerge(events) FROM touchpoint_metrics), \
                    (SELECT sumMerge(nps_detractors) FROM touchpoint_metrics), \
                    (SELECT sumMerge(support_contacts) FROM touchpoint_metrics), \
                    (SELECT toUInt64(sumMerge(revenue_minor)) FROM revenue_metrics), \
                    (SELECT count() FROM events_latest), \
                    (SELECT count() FROM survey_answers), \
                    (SELECT count() FROM dead_letters), \
                    (SELECT count() FROM alerts)";
    let r: (u64, u64, u64, u64, u64, u64, u64, u64) =
        ch.query(q).fetch_one().await.expect("figures");
    vec![r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customer_is_gone_everywhere_and_the_figures_stay() {
    let (cfg, id) = common::config(OVERLAY);
    let running = common::start(&cfg, xoflow::Stages::ALL).await;
    let grpc = format!("http://{}", running.grpc_addr.expect("ingest"));
    let api = running.alert_api_addr.expect("case API").to_string();

    let x = Person {
        customer: format!("cust-x-{id}"),
        email: format!("Zhang.Wei.{id}@Example.cn"),
        phone: "+86 139 1234 5678".into(),
        handle: format!("@zw_{id}"),
        planted: format!("PLANTED-zebra-{id}"),
    };
    let y = Person {
        customer: format!("cust-y-{id}"),
        email: format!("li.na.{id}@example.cn"),
        phone: "+86 137 8765 4321".into(),
        handle: format!("@ln_{id}"),
        planted: format!("PLANTED-otter-{id}"),
    };
    let t0 = common::now_ms() - 2 * 86_400_000;
    let (mut events, bad_x) = events_of(&x, &format!("{id}-a"), t0);
    let (ey, bad_y) = events_of(&y, &format!("{id}-b"), t0 + 30 * MINUTE);
    events.extend(ey);
    let n = events.len() as u64;
    events.push(bad_x);
    events.push(bad_y);
    let r = load::send(
        &grpc,
        events,
        &LoadOptions {
            batch: 1,
            rate: None,
            concurrency: 1,
        },
    )
    .await
    .expect("sent");
    assert_eq!((r.accepted, r.rejected), (n, 2));

    let ch = cfg.clickhouse.client();
    common::wait_for(
        "both customers' events, alerts and dead letters stored",
        Duration::from_secs(90),
        || {
            let ch = ch.clone();
            async move {
                let q = "SELECT (SELECT count() FROM events_latest WHERE customer_id != '') * 100 + \
                         (SELECT count() FROM alerts) * 10 + (SELECT count() FROM dead_letters)";
                ch.query(q)
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|k| k == n * 100 + 2 * 10 + 2)
            }
        },
    )
    .await;
    // The join's state reached the changelog too.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // X's keys as ingest hashed them.
    let normaliser = xoflow_ingest::normalise::Normaliser::with_tenants(
        std::sync::Arc::new(
            xoflow_ingest::tenant::Tenants::from_config(&cfg.ingest).expect("tenants"),
        ),
        cfg.ingest.max_future_skew,
        cfg.ingest.max_age,
    );
    let hashed = normaliser
        .hash_customer(
            "acme",
            CustomerIdentity {
                email: x.email.clone(),
                phone: x.phone.clone(),
                social_handle: x.handle.clone(),
                ..Default::default()
            },
        )
        .expect("hash");
    let hashes = vec![
        hashed.email_hash.clone(),
        hashed.phone_hash.clone(),
        hashed.social_handle_hash.clone(),
    ];
    let needles: Vec<String> = [
        x.customer.clone(),
        x.email.to_lowercase(),
        x.planted.clone(),
    ]
    .into_iter()
    .chain(hashes.iter().cloned())
    .collect();
    let before = every_table(&cfg).await;
    // (The raw e-mail is never stored: ingest hashes it. It is looked for
    // after the erasure all the same.)
    for needle in needles.iter().filter(|n| **n != x.email.to_lowercase()) {
        assert!(
            before.values().any(|t| t.contains(needle.as_str())),
            "{needle} is stored before the erasure"
        );
    }
    let eraser = xoflow_enrich::erase::Eraser::open(&cfg.kafka, &cfg.enrich)
        .await
        .expect("eraser");
    let customers = vec![x.customer.clone()];
    assert!(
        eraser
            .still_held("acme", &customers, &hashes)
            .await
            .expect("changelog")
            > 0,
        "X's join state is in the changelog"
    );
    assert!(eraser.is_linked(&hashed.email_hash));
    let figures_before = figures(&ch).await;

    // Erase X by e-mail through the API.
    let (status, body) = post_json(
        &api,
        "/v1/erasures",
        &format!(r#"{{"tenant": "acme", "email": "{}"}}"#, x.email),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let receipt: serde_json::Value = serde_json::from_str(&body).expect("receipt");
    eprintln!("receipt: {receipt}");
    assert_eq!(receipt["found"], true);
    assert_eq!(receipt["customers"], 1);
    assert!(receipt["identifiers"].as_u64() >= Some(3), "{receipt}");
    assert!(receipt["rows"]["events"].as_u64() >= Some(5), "{receipt}");
    assert_eq!(
        receipt["rows"]["customer_profile"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert!(receipt["link_tombstones"].as_u64() >= Some(3), "{receipt}");

    // Nothing of X anywhere; Y untouched.
    let after = every_table(&cfg).await;
    for needle in &needles {
        let holding: Vec<&String> = after
            .iter()
            .filter(|(_, t)| t.contains(needle.as_str()))
            .map(|(name, _)| name)
            .collect();
        assert!(holding.is_empty(), "{needle} still in {holding:?}");
    }
    assert!(after.values().any(|t| t.contains(&y.planted)), "Y is kept");
    assert!(after.values().any(|t| t.contains(&y.customer)), "Y is kept");
    // The figures: X's events stay, anonymised.
    assert_eq!(figures(&ch).await, figures_before);
    // Kafka: the link table and the changelog hold nothing of X; the
    // instance's own tombstones may follow the notice a moment later.
    let eraser = xoflow_enrich::erase::Eraser::open(&cfg.kafka, &cfg.enrich)
        .await
        .expect("eraser");
    for h in &hashes {
        assert!(!eraser.is_linked(h), "a link of X is left");
    }
    assert_eq!(
        eraser
            .still_held("acme", &customers, &hashes)
            .await
            .expect("changelog"),
        0,
        "X's join state is left in the changelog"
    );

    // Twice changes nothing; an unknown customer is a no-op.
    let again = xoflow::erase::erase(
        &cfg,
        "acme",
        xoflow::erase::Subject::Customer(x.customer.clone()),
        "test",
    )
    .await
    .expect("second erasure");
    assert!(!again.found, "{again:?}");
    assert!(again.rows.values().all(|n| *n == 0), "{again:?}");
    assert_eq!((again.link_tombstones, again.changelog_tombstones), (0, 0));
    let unknown = xoflow::erase::erase(
        &cfg,
        "acme",
        xoflow::erase::Subject::Customer(format!("nobody-{id}")),
        "test",
    )
    .await
    .expect("unknown customer");
    assert!(!unknown.found && unknown.rows.values().all(|n| *n == 0));
    assert_eq!(figures(&ch).await, figures_before);
    let receipts: u64 = ch
        .query("SELECT count() FROM erasure_receipts WHERE tenant = 'acme'")
        .fetch_one()
        .await
        .expect("receipts");
    assert_eq!(receipts, 3);
    let last = every_table(&cfg).await;
    for needle in &needles {
        assert!(
            last.values().all(|t| !t.contains(needle.as_str())),
            "{needle} is back"
        );
    }

    // The running enrich forgot X: a new order is joined without history.
    let new_order = order(
        format!("{id}-a-6"),
        t0 + 60 * MINUTE,
        CustomerIdentity {
            customer_id: x.customer.clone(),
            ..Default::default()
        },
        7_000,
        "CNY",
    );
    let r = load::send(
        &grpc,
        vec![new_order],
        &LoadOptions {
            batch: 1,
            rate: None,
            concurrency: 1,
        },
    )
    .await
    .expect("sent");
    assert_eq!(r.accepted, 1);
    let q =
        format!("SELECT ctx_lifetime_value_minor FROM events_latest WHERE event_id = '{id}-a-6'");
    common::wait_for("the new order stored", Duration::from_secs(60), || {
        let ch = ch.clone();
        let q = q.clone();
        async move { ch.query(&q).fetch_one::<i64>().await.is_ok() }
    })
    .await;
    let lifetime: i64 = ch.query(&q).fetch_one().await.expect("new order");
    // With X's history the lifetime value would hold the first order too.
    assert!(
        lifetime < 56_000,
        "joined with X's forgotten history: {lifetime}"
    );

    running.stop();
    running.wait().await.expect("clean stop");
    common::drop_database(&cfg).await;
}
