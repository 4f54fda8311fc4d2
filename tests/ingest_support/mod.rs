//! Helpers for the collector tests that need the real broker: one HTTP
//! exchange (hyper's client) and reading a topic back. The in-process
//! collector tests have their own harness in `ingest/tests/support`.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
};

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// POSTs `body` (GET when `None`) and reads the whole response.
pub async fn http(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    use http_body_util::{BodyExt, Full};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(format!("http://{addr}{path}"));
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
        .body(Full::new(bytes::Bytes::copy_from_slice(
            body.unwrap_or_default(),
        )))
        .expect("request");
    let response = client.request(request).await.expect("HTTP exchange");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap_or_default()))
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes()
        .to_vec();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Reads `topic` from the start until at least `n` records arrived (or the
/// deadline fails the test): (key, payload) pairs.
pub async fn read_topic(brokers: &str, topic: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("read-{}", super_unique()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("timed out reading {topic}: {} of {n} records", out.len()),
        }
    }
    out
}

fn super_unique() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

/// Decodes `xoflow.v1.Event`s from topic payloads.
pub fn events(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<xoflow_proto::v1::Event> {
    use prost::Message as _;
    records
        .iter()
        .map(|(_, p)| xoflow_proto::v1::Event::decode(p.as_slice()).expect("event"))
        .collect()
}

/// Decodes `xoflow.v1.DeadLetter`s from topic payloads.
pub fn dead_letters(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<xoflow_proto::v1::DeadLetter> {
    use prost::Message as _;
    records
        .iter()
        .map(|(_, p)| xoflow_proto::v1::DeadLetter::decode(p.as_slice()).expect("dead letter"))
        .collect()
}
