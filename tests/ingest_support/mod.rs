//! Helpers for the collector tests: a minimal HTTP/1.1 client (one request
//! per connection, so no client crate is needed), reading a topic back from
//! the real broker, the committed sample payloads with their dates moved to
//! yesterday, and an API-key config.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The API key of tenant `acme`'s `survey-tool` source in [`API_KEY_TOML`].
pub const ACME_KEY: &str = "acme-survey-tool-test-key-0001";
/// The API key of tenant `other`'s `crm` source.
pub const OTHER_KEY: &str = "other-crm-test-key-0002";

/// Overlay giving two tenants API keys (set `ingest.auth` to `ApiKey` on
/// the loaded config to require them).
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
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        if body.is_some() { "POST" } else { "GET" }
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write head");
    if let Some(b) = body {
        // The server may answer 413 and close before reading it all.
        let _ = s.write_all(b).await;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers: head,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
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

/// Days since the epoch to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD` of `days_ago` days before today (UTC).
pub fn date_days_ago(days_ago: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (y, m, d) = civil(now.div_euclid(86_400) - days_ago);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A committed sample (`ingest/samples/NAME`) with its dates moved to two
/// days ago, as one compact JSON line.
pub fn sample(name: &str) -> String {
    let path = format!("{}/ingest/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text
        .replace("2025-11-14", &date_days_ago(2))
        .replace("2025-11-12", &date_days_ago(4));
    let v: serde_json::Value = serde_json::from_str(&text).expect("sample JSON");
    v.to_string()
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
