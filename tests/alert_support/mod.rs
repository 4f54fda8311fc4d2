//! Helpers for the alert stage's tests against the real broker and
//! ClickHouse: alerts as enrich would raise them, webhook receivers (real
//! HTTP servers on 127.0.0.1:0 that record what they get and check every
//! signature with code of their own, as a receiver would), and the stage
//! started in process.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use xoflow::Config;
use xoflow_alert::{AlertConfig, AlertStage, ApiKeys, Format};
use xoflow_common::{admin::Health, kafka::Outgoing};
use xoflow_proto::{
    Message, Timestamp,
    v1::{
        Alert, AlertCause, AlertSeverity, CustomerContext, CustomerIdentity, CxFields,
        EnrichedEvent, Event, Location, NpsCategory, OrderContext, SentimentLabel, SurveyResponse,
        Touchpoint, event::Payload,
    },
};

use crate::common;

/// A test's servers and names: the pipeline config (its own topics and
/// database) with an alerts topic of its own, migrated.
pub async fn setup() -> (Config, String) {
    let (mut cfg, id) = common::config("");
    cfg.kafka.topics.alerts = format!("t-{id}.alerts");
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrate (creates the alert tables)");
    (cfg, id)
}

/// The alert stage's settings for a test: fast batches, API on port 0.
pub fn alert_config(id: &str) -> AlertConfig {
    AlertConfig {
        group_id: format!("g-{id}-alert"),
        api_addr: "127.0.0.1:0".parse().expect("addr"),
        batch_max_wait: Duration::from_millis(100),
        ..AlertConfig::default()
    }
}

/// Adds a webhook to `cfg`.
pub fn webhook(
    cfg: &mut AlertConfig,
    tenant: &str,
    department: &str,
    url: String,
    format: Format,
    secret: Option<&str>,
) {
    cfg.tenants
        .entry(tenant.into())
        .or_default()
        .departments
        .entry(department.into())
        .or_default()
        .webhooks
        .push(xoflow_alert::WebhookConfig {
            url,
            format,
            secret: secret.map(Into::into),
        });
}

/// A running stage: its API address, its health, and how to stop it.
pub struct Running {
    pub api: SocketAddr,
    pub health: Health,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), xoflow_alert::AlertError>>,
}

impl Running {
    /// Stops it cleanly and waits.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the stage stops within 30 s")
            .expect("stage task")
            .expect("the stage ends without error");
    }

    /// Drops it mid-way: what `kill -9` does to an in-process stage (no
    /// drain, nothing more committed).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Binds and runs the stage, and waits until it is ready.
pub async fn start(cfg: &Config, acfg: &AlertConfig, keys: ApiKeys) -> Running {
    let stage = AlertStage::bind(acfg, &cfg.kafka, cfg.clickhouse.client(), keys)
        .await
        .expect("bind the alert stage");
    let api = stage.api_addr().expect("api addr");
    let health = Health::new();
    let (r, api_r) = (health.register("alert"), health.register("alert_api"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(stage.run(r, api_r, stop.clone()));
    let h = health.clone();
    common::wait_for(
        "the alert stage to be ready",
        Duration::from_secs(60),
        move || {
            let ok = h.check().is_ok();
            async move { ok }
        },
    )
    .await;
    Running {
        api,
        health,
        stop,
        task,
    }
}

/// 32 lower-case hex characters, as enrich derives them.
pub fn alert_id(seed: &str) -> String {
    hex::encode(&Sha256::digest(seed.as_bytes())[..16])
}

/// What varies between test alerts.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub seed: String,
    pub tenant: &'a str,
    pub department: &'a str,
    pub store: &'a str,
    pub raised_ms: i64,
}

/// An alert as enrich raises it: a detractor survey with a late order,
/// Chinese text, the customer's context.
pub fn alert(s: &Spec<'_>) -> Alert {
    let id = alert_id(&s.seed);
    let customer = format!("c-{}", &id[..6]);
    let event = Event {
        event_id: format!("ev-{}", &id[..12]),
        tenant: s.tenant.into(),
        source: "survey-tool".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(s.raised_ms - 60_000)),
        customer: Some(CustomerIdentity {
            customer_id: customer.clone(),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: "online-purchase".into(),
            stage: "fulfilment".into(),
            touchpoint: "courier-delivery".into(),
            channel: 1,
        }),
        location: Some(Location {
            store_id: s.store.into(),
            region: "华南".into(),
        }),
        payload: Some(Payload::Survey(SurveyResponse {
            survey_id: "post-delivery".into(),
            comment: "配送晚了两天，汤都凉了".into(),
            language: "zh".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    Alert {
        alert_id: id,
        tenant: s.tenant.into(),
        rule: "late-delivery-detractor".into(),
        severity: AlertSeverity::High as i32,
        department: s.department.into(),
        customer_id: customer.clone(),
        cause: AlertCause::Event as i32,
        reasons: vec!["NPS 2 (detractor)".into(), "订单晚到 2 天".into()],
        trigger: Some(EnrichedEvent {
            event: Some(event),
            resolved_customer_id: customer.clone(),
            order: Some(OrderContext {
                order_id: "o-1".into(),
                amount_minor: 56_000,
                currency: "CNY".into(),
                delivery_late_seconds: Some(172_800),
                ..Default::default()
            }),
            customer: Some(CustomerContext {
                value_90d_minor: 120_000,
                lifetime_value_minor: 560_000,
                support_contacts_30d: 2,
                churn_risk: Some(0.7),
                ..Default::default()
            }),
            cx: Some(CxFields {
                nps_score: Some(2),
                nps_category: NpsCategory::Detractor as i32,
                sentiment: Some(-0.8),
                sentiment_label: SentimentLabel::Negative as i32,
                topics: vec!["delivery".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        raised_at: Some(xoflow_proto::from_unix_millis(s.raised_ms)),
        summary: format!("HIGH late-delivery-detractor: {customer} at courier-delivery"),
        silent_days: None,
        usual_gap_days: None,
    }
}

/// Produces alerts onto the test's alerts topic, keyed by customer (as
/// enrich does); `raw` records are produced as they are.
pub async fn produce(cfg: &Config, alerts: &[Alert], raw: &[&[u8]]) {
    let encoded: Vec<(String, Vec<u8>)> = alerts
        .iter()
        .map(|a| (a.customer_id.clone(), a.encode_to_vec()))
        .collect();
    let mut records: Vec<Outgoing<'_>> = encoded
        .iter()
        .map(|(k, v)| Outgoing::keyed(k.as_bytes(), v))
        .collect();
    records.extend(raw.iter().map(|r| Outgoing::keyed(b"raw", r)));
    cfg.kafka
        .batch_producer()
        .expect("producer")
        .send_all(&cfg.kafka.topics.alerts, &records)
        .await
        .expect("produce alerts");
}

/// What a receiver does with a request.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200 with the format's success answer.
    Ok,
    /// 500 until this instant, then as `Ok`.
    FailUntil(tokio::time::Instant),
    /// Answers with this status.
    Status(u16),
    /// Waits this long, then as `Ok`.
    Slow(Duration),
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at_ms: i64,
    /// When it came, on the monotonic clock: what durations are measured
    /// with, since the wall clock (`at_ms`) can step (a virtual machine
    /// paused and resumed catches its wall clock up at once).
    pub at: tokio::time::Instant,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A webhook receiver: a real HTTP server on 127.0.0.1:0.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub format: Format,
    pub secret: Option<String>,
    got: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone)]
struct ReceiverState {
    behaviour: Behaviour,
    format: Format,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(format: Format, secret: Option<&str>, behaviour: Behaviour) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let state = ReceiverState {
            behaviour,
            format,
            got: got.clone(),
        };
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver port");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            format,
            secret: secret.map(Into::into),
            got,
        }
    }

    /// The webhook URL, as a robot's would look (its token in the query).
    pub fn url(&self) -> String {
        match self.format {
            Format::Dingtalk => format!("http://{}/robot/send?access_token=tok123", self.addr),
            Format::Wecom => format!("http://{}/cgi-bin/webhook/send?key=key123", self.addr),
            _ => format!("http://{}/hooks/xoflow", self.addr),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// The requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

async fn receive(
    State(s): State<ReceiverState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let at_ms = common::now_ms();
    let at = tokio::time::Instant::now();
    let status = match s.behaviour {
        Behaviour::Ok => 200,
        Behaviour::FailUntil(t) if tokio::time::Instant::now() < t => 500,
        Behaviour::FailUntil(_) => 200,
        Behaviour::Status(c) => c,
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            200
        }
    };
    s.got.lock().expect("lock").push(Received {
        at_ms,
        at,
        query: query.unwrap_or_default(),
        headers,
        body,
        status,
    });
    let answer = match (status, s.format) {
        (200, Format::Feishu) => r#"{"code":0,"msg":"success","data":{}}"#,
        (200, Format::Dingtalk | Format::Wecom) => r#"{"errcode":0,"errmsg":"ok"}"#,
        (200, _) => "ok",
        _ => "nope",
    };
    (
        StatusCode::from_u16(status).expect("status"),
        answer.to_owned(),
    )
}

/// A receiver that accepts connections and never answers.
pub async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

/// What a receiver checks before it trusts a request: the xoflow
/// signature over "<timestamp>.<raw body>" (constant-time compare), a
/// timestamp at most 5 minutes old, and the robot's own signature. Returns
/// the alert id the request is about.
pub fn verify(r: &Received, format: Format, secret: Option<&str>) -> String {
    let id = r.header("idempotency-key").to_owned();
    assert_eq!(id.len(), 32, "Idempotency-Key: {id:?}");
    assert_eq!(r.header("x-xoflow-alert-id"), id);
    assert_eq!(r.header("content-type"), "application/json");
    let ts: i64 = r.header("x-xoflow-timestamp").parse().expect("timestamp");
    let now_s = common::now_ms() / 1000;
    assert!(
        (now_s - ts).abs() <= 300,
        "timestamp {ts} is {}s off",
        now_s - ts
    );
    let Some(secret) = secret else {
        assert_eq!(
            r.header("x-xoflow-signature"),
            "",
            "no secret, no signature"
        );
        return id;
    };
    let sig = r
        .header("x-xoflow-signature")
        .strip_prefix("v1=")
        .expect("v1= signature");
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    m.update(format!("{ts}.").as_bytes());
    m.update(&r.body);
    m.verify_slice(&hex::decode(sig).expect("hex signature"))
        .expect("X-Xoflow-Signature verifies");
    let b64 = base64::engine::general_purpose::STANDARD;
    match format {
        Format::Feishu => {
            let body = r.json();
            let fts = body["timestamp"].as_str().expect("feishu timestamp");
            let want = b64.encode(hmac(format!("{fts}\n{secret}").as_bytes(), b""));
            assert_eq!(body["sign"], want, "feishu sign");
        }
        Format::Dingtalk => {
            let q: std::collections::HashMap<&str, &str> = r
                .query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            assert_eq!(q.get("access_token"), Some(&"tok123"));
            let dts = q.get("timestamp").expect("dingtalk timestamp");
            let sign = q
                .get("sign")
                .expect("dingtalk sign")
                .replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "=");
            let want = b64.encode(hmac(
                secret.as_bytes(),
                format!("{dts}\n{secret}").as_bytes(),
            ));
            assert_eq!(sign, want, "dingtalk sign");
        }
        _ => {}
    }
    id
}

/// Runs a query for one row.
pub async fn one<T>(cfg: &Config, sql: &str) -> T
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
{
    cfg.clickhouse
        .client()
        .query(sql)
        .fetch_one::<T>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs a query for all rows.
pub async fn all<T>(cfg: &Config, sql: &str) -> Vec<T>
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
{
    cfg.clickhouse
        .client()
        .query(sql)
        .fetch_all::<T>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn ts(ms: i64) -> Timestamp {
    xoflow_proto::from_unix_millis(ms)
}
