//! The HTTP/JSON collector against the real broker: a webhook batch with a
//! record that is not an event and one that is invalid gets per-record
//! verdicts, the valid records are accepted, the refused ones are on the
//! dead-letter topic; gzip NDJSON works; an oversized body gets 413.

mod common;

use std::{io::Write, time::Duration};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use xoflow::{Stages, sample};
use xoflow_proto::{
    Message as _,
    v1::{DeadLetter, IngestResponse},
};

async fn post(addr: &str, body: &[u8], extra_headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // The server may answer (413) before reading the whole body.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_batches_get_per_record_verdicts_and_dead_letters() {
    let (mut cfg, id) = common::config("");
    cfg.ingest.max_body_bytes = 200_000;
    let running = common::start(&cfg, Stages::INGEST).await;
    let addr = running.http_addr.expect("http").to_string();

    let events = sample::events(5, 3, "acme", &id, common::now_ms());
    let mut records: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("json"))
        .collect();
    records.insert(1, r#"{"eventId":"junk-1","tenantz":"acme"}"#.to_string());
    let mut missing = events[0].clone();
    missing.event_id = format!("{id}-no-tenant");
    missing.tenant.clear();
    records.push(serde_json::to_string(&missing).expect("json"));
    let body = format!("[{}]", records.join(","));

    let (code, text) = post(&addr, body.as_bytes(), "").await;
    assert_eq!(code, 200, "{text}");
    let r: IngestResponse = serde_json::from_str(&text).expect("response json");
    assert_eq!((r.accepted, r.rejected), (3, 2), "{text}");
    assert!(!r.results[1].accepted);
    assert_eq!(r.results[1].violations[0].reason, "INVALID");
    assert_eq!(r.results[1].violations[0].field, "tenantz");
    assert_eq!(r.results[4].violations[0].field, "tenant");
    assert_eq!(r.results[4].violations[0].reason, "MISSING");
    assert!(
        r.results
            .iter()
            .enumerate()
            .all(|(i, x)| x.index as usize == i)
    );

    // Gzip NDJSON.
    let more = sample::events(6, 4, "acme", &format!("{id}-gz"), common::now_ms());
    let ndjson: String = more
        .iter()
        .map(|e| serde_json::to_string(e).expect("json") + "\n")
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(ndjson.as_bytes()).expect("gzip");
    let (code, text) = post(
        &addr,
        &gz.finish().expect("gzip"),
        "Content-Encoding: gzip\r\n",
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let r: IngestResponse = serde_json::from_str(&text).expect("response json");
    assert_eq!(r.accepted, 4, "{text}");

    // Oversized.
    let (code, _) = post(&addr, &vec![b' '; 300_000], "").await;
    assert_eq!(code, 413);

    // The two refused records are on the dead-letter topic.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("g-{id}-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&cfg.kafka.topics.dead_letters])
        .expect("subscribe");
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters within 30 s")
            .expect("message");
        let d = DeadLetter::decode(m.payload().unwrap_or_default()).expect("dead letter");
        reasons.push((d.reason, d.field, d.content_type));
    }
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (
                "INVALID".into(),
                "tenantz".into(),
                "application/json".into()
            ),
            // The original payload, as the caller sent it.
            ("MISSING".into(), "tenant".into(), "application/json".into()),
        ]
    );

    let (code, text) = {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /openapi.yaml HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        (buf.split_whitespace().nth(1).map(str::to_string), buf)
    };
    assert_eq!(code.as_deref(), Some("200"));
    assert!(text.contains("/v1/events"));

    running.stop();
    running.wait().await.expect("clean shutdown");
}
