//! The in-process harness for the collector tests: no broker, no
//! ClickHouse. The collectors run over [`MemoryDelivery`], so what they
//! would have produced (events per lane, dead letters) is read back from
//! memory. HTTP goes through the axum router directly (`oneshot`), gRPC
//! through tonic over an in-memory duplex pipe; tests of the listeners
//! themselves (TLS, reflection) bind real sockets on 127.0.0.1:0.

#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, body::Body, http::Request};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::ServiceExt;
use xoflow_common::{admin::Health, clock};
use xoflow_ingest::{
    Collectors, IngestConfig, Ingestor, MemoryDelivery, RunError, grpc::CollectorService,
};
use xoflow_proto::v1::{
    DeadLetter, Event, collector_client::CollectorClient, collector_server::CollectorServer,
};

/// The API key of tenant `acme`'s `survey-tool` source in [`api_key_toml`].
pub const ACME_KEY: &str = "acme-survey-tool-test-key-0001";
/// The API key of tenant `other`'s `crm` source.
pub const OTHER_KEY: &str = "other-crm-test-key-0002";

/// Overlay giving two tenants API keys (set `auth` to `ApiKey` on the
/// loaded config to require them).
pub fn api_key_toml() -> String {
    format!(
        r#"
[[ingest.tenants.acme.api_keys]]
source = "survey-tool"
sha256 = "{}"
[ingest.tenants.other]
hash_secret = "another-tenant-secret-0123456789"
[[ingest.tenants.other.api_keys]]
source = "crm"
sha256 = "{}"
"#,
        xoflow_ingest::auth::key_hash(ACME_KEY),
        xoflow_ingest::auth::key_hash(OTHER_KEY)
    )
}

/// The embedded defaults with `overlay` on top, listeners on port 0.
pub fn config(overlay: &str) -> IngestConfig {
    #[derive(serde::Deserialize)]
    struct Only {
        ingest: IngestConfig,
    }
    let overlay =
        format!("[ingest]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n{overlay}");
    let cfg = xoflow_common::config::from_toml::<Only>(&overlay)
        .expect("test config")
        .ingest;
    cfg.validate().expect("valid test config");
    cfg
}

/// The collectors' core over memory, and the HTTP routes in front of it.
pub struct Harness {
    pub ingestor: Ingestor,
    pub delivery: MemoryDelivery,
    pub router: Router,
}

impl Harness {
    pub fn new(cfg: &IngestConfig) -> Self {
        let delivery = MemoryDelivery::new();
        let ingestor = xoflow_ingest::ingestor(cfg, Arc::new(delivery.clone())).expect("ingestor");
        let router = xoflow_ingest::http::router(ingestor.clone(), cfg.max_body_bytes);
        Self {
            ingestor,
            delivery,
            router,
        }
    }

    /// POSTs `body` (GET when `None`) to the router and reads the answer.
    pub async fn http(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        let mut builder = Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(path);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Body::from(body.unwrap_or_default().to_vec()))
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("response body")
            .to_vec();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// A gRPC client of the collector service over an in-memory pipe.
    pub async fn grpc(&self) -> CollectorClient<Channel> {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let service = CollectorServer::new(CollectorService::new(self.ingestor.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io)))
                .await
        });
        let mut client_io = Some(client_io);
        let channel = Endpoint::try_from("http://in-process")
            .expect("uri")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let io = client_io.take();
                async move {
                    io.map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("one connection per pipe"))
                }
            }))
            .await
            .expect("in-process channel");
        CollectorClient::new(channel)
    }

    /// Every event delivered so far.
    pub fn events(&self) -> Vec<Event> {
        self.delivery
            .events()
            .into_iter()
            .map(|d| d.event)
            .collect()
    }

    /// Every dead letter so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.delivery.dead_letters()
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Both collectors serving on real sockets over memory, until dropped.
pub struct Served {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub delivery: MemoryDelivery,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Served {
    pub async fn start(cfg: &IngestConfig) -> Self {
        let delivery = MemoryDelivery::new();
        let ingestor = xoflow_ingest::ingestor(cfg, Arc::new(delivery.clone())).expect("ingestor");
        let collectors = Collectors::bind_with(cfg, ingestor)
            .await
            .expect("collectors");
        let grpc_addr = collectors.grpc_addr().expect("grpc addr");
        let http_addr = collectors.http_addr().expect("http addr");
        let health = Health::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(collectors.run(
            health.register("ingest"),
            health.register("ingest-http"),
            stop.clone(),
        ));
        Self {
            grpc_addr,
            http_addr,
            delivery,
            stop,
            task,
        }
    }

    /// Stops serving and waits for in-flight requests.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("collector task")
            .expect("clean shutdown");
    }
}

/// An RFC 3339 timestamp of `ms` as canonical JSON writes it.
pub fn iso(ms: i64) -> String {
    let ts = xoflow_proto::from_unix_millis(ms);
    serde_json::to_value(ts)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("timestamp JSON")
}

/// `YYYY-MM-DD` of `days_ago` days before today (UTC).
pub fn date_days_ago(days_ago: i64) -> String {
    iso(clock::now_unix_millis() - days_ago * 86_400_000)[..10].to_owned()
}

/// A committed sample (`ingest/samples/NAME`) with its dates moved to two
/// days ago, as one compact JSON line.
pub fn sample(name: &str) -> String {
    let path = format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text
        .replace("2025-11-14", &date_days_ago(2))
        .replace("2025-11-12", &date_days_ago(4));
    let v: Value = serde_json::from_str(&text).expect("sample JSON");
    v.to_string()
}

/// A valid canonical-JSON event of `kind` (order, survey, call, social,
/// click) for tenant `acme`, source `survey-tool`, a minute old.
pub fn base(kind: &str, id: &str, now: i64) -> Value {
    let payload = match kind {
        "order" => json!({"orderId": format!("o-{id}"), "status": "ORDER_STATUS_PAID",
                          "amountMinor": "5600", "currency": "CNY",
                          "items": [{"sku": "s1", "name": "套餐", "quantity": 1, "unitPriceMinor": "5600"}]}),
        "survey" => json!({"surveyId": "post-delivery", "comment": "还不错",
                           "answers": [{"questionId": "nps", "kind": "METRIC_KIND_NPS", "score": 8, "scaleMin": 0, "scaleMax": 10}]}),
        "call" => json!({"callId": format!("c-{id}"), "queue": "after-sales",
                         "startedAt": iso(now - 600_000), "endedAt": iso(now - 300_000),
                         "segments": [{"speaker": "SPEAKER_CUSTOMER", "startMs": 0, "endMs": 1000, "text": "hello"}]}),
        "social" => json!({"platform": "weibo", "postId": format!("p-{id}"), "text": "好评"}),
        _ => {
            json!({"sessionId": "s-1", "path": "/p/1", "url": "https://shop.example/p/1", "action": "CLICK_ACTION_VIEW"})
        }
    };
    let mut v = json!({"eventId": id, "tenant": "acme", "source": "survey-tool",
                       "occurredAt": iso(now - 60_000)});
    v[kind] = payload;
    v
}

/// `n` valid events of every kind in turn, ids `{prefix}-{i}`.
pub fn events(n: usize, prefix: &str, now: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let kind = ["survey", "call", "social", "order", "click"][i % 5];
            serde_json::from_value(base(kind, &format!("{prefix}-{i}"), now)).expect("event")
        })
        .collect()
}
