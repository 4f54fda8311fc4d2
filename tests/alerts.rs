//! Closing the loop end to end, on the real broker and ClickHouse: events
//! through the collector, enrich's alert rules, the alert stage, and a
//! department's webhook receiver (a real HTTP server in the test) that
//! verifies every signature.
//!
//! - every detractor answer of a customer above the configured value
//!   raises exactly one alert, to the department owning the touchpoint —
//!   also when the customer's order arrives after the answer (the join's
//!   repair re-evaluates the rules);
//! - quiet periods hold: a second detractor answer within the period is
//!   not alerted, one after it is;
//! - a do-not-contact customer raises nothing;
//! - `xoflow enrich` and `xoflow alert` SIGKILLed during a burst and
//!   restarted: every alert delivered at least once, each delivery of an
//!   alert with the same idempotency key, the `alerts` table holding each
//!   alert once.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
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
use xoflow::datagen::load::{self, LoadOptions};
use xoflow_proto::v1::{
    CustomerIdentity, Event, MetricKind, Order, OrderStatus, SurveyAnswer, SurveyResponse,
    Touchpoint, event::Payload,
};

const SECRET: &str = "test-webhook-secret";
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Delivery {
    department: String,
    alert_id: String,
    idempotency_key: String,
    customer: String,
    event_id: String,
    signature_ok: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// Checks `X-Xoflow-Signature: v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
/// and a timestamp within five minutes, as docs/alerts.md tells receivers.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ts = header("x-xoflow-timestamp");
    let Ok(secs) = ts.parse::<i64>() else {
        return false;
    };
    if (common::now_ms() / 1000 - secs).abs() > 300 {
        return false;
    }
    let Some(sig) = header("x-xoflow-signature").strip_prefix("v1=") else {
        return false;
    };
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn receive(
    State(r): State<Receiver>,
    Path(department): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature_ok = verify(&headers, &body);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let d = Delivery {
        department,
        alert_id: s(&json["alert_id"]),
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        customer: s(&json["customer_id"]),
        event_id: s(&json["trigger"]["event_id"]),
        signature_ok,
    };
    if let Ok(mut g) = r.got.lock() {
        g.push(d);
    }
    StatusCode::OK
}

async fn start_receiver() -> (Receiver, SocketAddr) {
    let r = Receiver::default();
    let app = Router::new()
        .route("/{department}", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, addr)
}

/// Rules and webhooks for tenant acme (journey map in the defaults:
/// `delivery` → logistics, `delivery-survey` → customer-care).
/// (The test config already has an `[alert]` table: this adds to it.)
fn overlay(receiver: SocketAddr, quiet: &str) -> String {
    format!(
        r#"
[enrich.alerts.tenants.acme]
default_department = "customer-care"
[[enrich.alerts.tenants.acme.rules]]
name = "valuable-detractor"
severity = "high"
kinds = ["survey"]
nps = ["detractor"]
value_90d_at_least = 50000
quiet_period = "{quiet}"
[[alert.tenants.acme.departments.logistics.webhooks]]
url = "http://{receiver}/logistics"
format = "generic"
secret = "{SECRET}"
[[alert.tenants.acme.departments.customer-care.webhooks]]
url = "http://{receiver}/customer-care"
format = "generic"
secret = "{SECRET}"
"#
    )
}

fn event(id: String, at: i64, customer: &str, touchpoint: &str, payload: Payload) -> Event {
    Event {
        event_id: id,
        tenant: "acme".into(),
        source: "test".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(at)),
        customer: Some(CustomerIdentity {
            customer_id: customer.into(),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: "online-purchase".into(),
            stage: "after-sales".into(),
            touchpoint: touchpoint.into(),
            channel: 0,
        }),
        payload: Some(payload),
        ..Default::default()
    }
}

fn nps_survey(id: String, at: i64, customer: &str, touchpoint: &str, score: f64) -> Event {
    event(
        id,
        at,
        customer,
        touchpoint,
        Payload::Survey(SurveyResponse {
            survey_id: "post-delivery".into(),
            answers: vec![SurveyAnswer {
                question_id: "nps".into(),
                kind: MetricKind::Nps as i32,
                score: Some(score),
                scale_min: 0,
                scale_max: 10,
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

fn paid_order(id: String, at: i64, customer: &str, amount_minor: i64, dnc: bool) -> Event {
    let mut e = event(
        id.clone(),
        at,
        customer,
        "checkout",
        Payload::Order(Order {
            order_id: id,
            status: OrderStatus::Paid as i32,
            amount_minor,
            currency: "CNY".into(),
            ..Default::default()
        }),
    );
    if dnc {
        e.attributes.insert("do_not_contact".into(), "true".into());
    }
    e
}

/// The planted data and the alerts it must raise: (customer, event id) →
/// department.
struct Plan {
    /// Surveys and orders to send in this order.
    first: Vec<Event>,
    /// Sent after `first` has been enriched: orders that arrive late.
    late: Vec<Event>,
    expected: BTreeMap<(String, String), String>,
}

/// `n` customers from `start`: a paid order (every third below the value
/// threshold), a detractor or promoter answer a day later at a touchpoint
/// owned by logistics or by customer-care; every fourth answers again
/// within the quiet period, every eighth once more after it; every tenth
/// asked not to be contacted; every fifth's order arrives after the answer.
fn plan(tag: &str, n: usize, start: i64, quiet_period: bool) -> Plan {
    let mut p = Plan {
        first: Vec::new(),
        late: Vec::new(),
        expected: BTreeMap::new(),
    };
    for i in 0..n {
        let c = format!("{tag}-c{i}");
        let valuable = i % 3 != 0;
        let dnc = i % 10 == 7;
        let detractor = i % 2 == 0 || i % 4 == 1;
        let (touchpoint, department) = if i % 2 == 0 {
            ("delivery", "logistics")
        } else {
            ("delivery-survey", "customer-care")
        };
        let t0 = start + (i as i64) * 60_000;
        let order = paid_order(
            format!("{c}-o"),
            t0,
            &c,
            if valuable { 80_000 } else { 20_000 },
            dnc,
        );
        let score = if detractor { 3.0 } else { 9.0 };
        let mut answers = vec![nps_survey(
            format!("{c}-s1"),
            t0 + DAY,
            &c,
            touchpoint,
            score,
        )];
        if i % 4 == 0 {
            answers.push(nps_survey(
                format!("{c}-s2"),
                t0 + DAY + 12 * HOUR,
                &c,
                touchpoint,
                2.0,
            ));
        }
        if i % 8 == 0 {
            answers.push(nps_survey(
                format!("{c}-s3"),
                t0 + 4 * DAY,
                &c,
                touchpoint,
                1.0,
            ));
        }
        let alerted = valuable && !dnc;
        for a in &answers {
            let score = match &a.payload {
                Some(Payload::Survey(s)) => s.answers[0].score.unwrap_or(10.0),
                _ => 10.0,
            };
            // s2 falls in s1's quiet period (when s1 alerted; when s1 was
            // a promoter, s2 alerts and s3 is 2.5 days after it).
            let quiet = quiet_period && a.event_id.ends_with("-s2") && detractor;
            if alerted && score <= 6.0 && !quiet {
                p.expected
                    .insert((c.clone(), a.event_id.clone()), department.into());
            }
        }
        if i % 5 == 1 {
            p.first.extend(answers);
            p.late.push(order);
        } else {
            p.first.push(order);
            p.first.extend(answers);
        }
    }
    p
}

async fn send(addr: &str, events: Vec<Event>) {
    let n = events.len() as u64;
    let r = load::send(
        addr,
        events,
        &LoadOptions {
            batch: 100,
            rate: None,
            concurrency: 2,
        },
    )
    .await
    .expect("sent");
    assert_eq!(r.accepted, n, "every event accepted");
}

/// Alert ids per (customer, event id) received with a valid signature.
fn received(r: &Receiver) -> BTreeMap<(String, String), (String, String)> {
    r.deliveries()
        .into_iter()
        .filter(|d| d.signature_ok)
        .map(|d| ((d.customer, d.event_id), (d.department, d.alert_id)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhappy_valuable_customers_reach_the_owning_department_once() {
    let (receiver, raddr) = start_receiver().await;
    let (mut cfg, id) = common::config(&overlay(raddr, "2days"));
    cfg.alert.retry_backoff = Duration::from_millis(100);
    cfg.alert.retry_max_backoff = Duration::from_secs(1);
    let running = common::start(&cfg, xoflow::Stages::ALL).await;
    let addr = format!("http://{}", running.grpc_addr.expect("ingest"));

    let start = common::now_ms() - 10 * DAY;
    let p = plan(&id, 80, start, true);
    assert!(p.expected.len() > 30, "{} expected", p.expected.len());
    send(&addr, p.first).await;
    // The late orders once their answers went out without value.
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(&addr, p.late).await;

    let want: BTreeSet<(String, String)> = p.expected.keys().cloned().collect();
    common::wait_for(
        "every expected alert delivered",
        Duration::from_secs(90),
        || {
            let got: BTreeSet<_> = received(&receiver).into_keys().collect();
            let done = want.is_subset(&got);
            async move { done }
        },
    )
    .await;
    // Let anything extra (a wrong alert) arrive before comparing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deliveries = receiver.deliveries();
    assert!(
        deliveries.iter().all(|d| d.signature_ok),
        "every signature verifies"
    );
    let got = received(&receiver);
    let got_departments: BTreeMap<_, _> = got
        .iter()
        .map(|(k, (d, _))| (k.clone(), d.clone()))
        .collect();
    assert_eq!(
        got_departments, p.expected,
        "exactly the expected alerts, each to its owner"
    );
    for d in &deliveries {
        assert_eq!(
            d.idempotency_key, d.alert_id,
            "the alert id is the idempotency key"
        );
    }

    // ClickHouse holds each alert once; the view of open alerts counts them.
    let ch = cfg.clickhouse.client();
    let (rows, distinct): (u64, u64) = ch
        .query("SELECT count(), uniqExact(alert_id) FROM alerts")
        .fetch_one()
        .await
        .expect("alerts table");
    assert_eq!(
        (rows, distinct),
        (p.expected.len() as u64, p.expected.len() as u64)
    );
    running.stop();
    running.wait().await.expect("clean stop");
    common::drop_database(&cfg).await;
}

/// Enrich and the alert stage as their own processes, SIGKILLed during a
/// burst of alerts and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_kill_9_of_enrich_and_of_the_alert_stage() {
    let (receiver, raddr) = start_receiver().await;
    let (cfg, id) = common::config(&overlay(raddr, "0s"));
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
    let addr = format!("http://{}", running.grpc_addr.expect("ingest"));
    // The rules and webhooks reach the processes through a config file;
    // topics, groups and database through the environment.
    let file = std::env::temp_dir().join(format!("xoflow-alerts-{id}.toml"));
    std::fs::write(
        &file,
        format!(
            "[alert]\nretry_backoff = \"100ms\"\nretry_max_backoff = \"1s\"\n{}",
            overlay(raddr, "0s")
        ),
    )
    .expect("config file");
    let process = |stage: &str| {
        let mut c =
            common::xoflow_command(&cfg, &["--config", file.to_str().expect("path"), stage]);
        c.env("XOFLOW_ENRICH__INSTANCE_ID", "enrich-0")
            .stdout(std::process::Stdio::null());
        tokio::process::Command::from(c)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn")
    };
    let mut enrich = process("enrich");
    let mut alert = process("alert");

    let start = common::now_ms() - 10 * DAY;
    // No quiet period: every valuable detractor answer alerts.
    let p = plan(&id, 400, start, false);
    let want: BTreeSet<(String, String)> = p.expected.keys().cloned().collect();
    let mut all = p.first;
    all.extend(p.late);
    let (a, b) = all.split_at(all.len() / 2);
    send(&addr, a.to_vec()).await;
    // Kill enrich once alerts flow, restart it; then the alert stage.
    common::wait_for(
        "the first alerts delivered",
        Duration::from_secs(60),
        || {
            let n = receiver.deliveries().len();
            async move { n > 5 }
        },
    )
    .await;
    let at_first_kill = received(&receiver).len();
    enrich.start_kill().expect("SIGKILL enrich");
    enrich.wait().await.expect("killed");
    let sender = {
        let addr = addr.clone();
        let b = b.to_vec();
        tokio::spawn(async move { send(&addr, b).await })
    };
    enrich = process("enrich");
    let before = receiver.deliveries().len();
    common::wait_for("more alerts delivered", Duration::from_secs(60), || {
        let n = receiver.deliveries().len();
        async move { n > before + 5 }
    })
    .await;
    let at_second_kill = received(&receiver).len();
    alert.start_kill().expect("SIGKILL alert");
    alert.wait().await.expect("killed");
    alert = process("alert");
    sender.await.expect("sent");

    common::wait_for("every alert delivered", Duration::from_secs(120), || {
        let got: BTreeSet<_> = received(&receiver).into_keys().collect();
        let done = want.is_subset(&got);
        async move { done }
    })
    .await;
    let deliveries = receiver.deliveries();
    assert!(deliveries.iter().all(|d| d.signature_ok));
    // Same alert, same key, every time it was delivered.
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in &deliveries {
        keys.entry(d.alert_id.clone())
            .or_default()
            .insert(d.idempotency_key.clone());
    }
    assert!(keys.iter().all(|(id, k)| k.len() == 1 && k.contains(id)));
    let distinct: BTreeSet<_> = received(&receiver).into_keys().collect();
    assert_eq!(distinct, want, "exactly the expected alerts");
    eprintln!(
        "{} alerts, {} deliveries ({} repeated after the kills); enrich killed with {} \
         delivered, the alert stage with {}",
        want.len(),
        deliveries.len(),
        deliveries.len() - want.len(),
        at_first_kill,
        at_second_kill
    );
    assert!(
        at_second_kill < want.len(),
        "the alert stage was killed with alerts still to deliver"
    );
    let ch = cfg.clickhouse.client();
    common::wait_for(
        "the alerts table holds every alert",
        Duration::from_secs(30),
        || {
            let ch = ch.clone();
            let n = want.len() as u64;
            async move {
                ch.query("SELECT uniqExact(alert_id) FROM alerts")
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|x| x == n)
            }
        },
    )
    .await;
    let (rows, distinct): (u64, u64) = ch
        .query("SELECT count(), uniqExact(alert_id) FROM alerts")
        .fetch_one()
        .await
        .expect("alerts");
    assert_eq!(rows, distinct, "each alert once");
    enrich.start_kill().ok();
    alert.start_kill().ok();
    running.stop();
    running.wait().await.expect("clean stop");
    common::drop_database(&cfg).await;
}
