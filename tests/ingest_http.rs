//! The HTTP/JSON collector against the real broker: a webhook batch with a
//! record that is not an event and one that is invalid gets per-record
//! verdicts, the valid records are accepted, the refused ones are on the
//! dead-letter topic; gzip NDJSON works; an oversized body gets 413.

mod common;
#[path = "ingest_support/mod.rs"]
mod ingest_support;

use std::io::Write;

use xoflow::{Stages, sample};
use xoflow_proto::v1::IngestResponse;

/// POSTs to `/v1/events`: the status and the body as text.
async fn post(addr: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let r = ingest_support::http(
        addr.parse().expect("collector address"),
        "/v1/events",
        headers,
        Some(body),
    )
    .await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
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

    let (code, text) = post(&addr, body.as_bytes(), &[]).await;
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
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let r: IngestResponse = serde_json::from_str(&text).expect("response json");
    assert_eq!(r.accepted, 4, "{text}");

    // Oversized.
    let (code, _) = post(&addr, &vec![b' '; 300_000], &[]).await;
    assert_eq!(code, 413);

    // The two refused records are on the dead-letter topic.
    let mut reasons: Vec<_> = ingest_support::dead_letters(
        &ingest_support::read_topic(&cfg.kafka.brokers, &cfg.kafka.topics.dead_letters, 2).await,
    )
    .into_iter()
    .map(|d| (d.reason, d.field, d.content_type))
    .collect();
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

    let openapi = ingest_support::http(
        addr.parse().expect("collector address"),
        "/openapi.yaml",
        &[],
        None,
    )
    .await;
    let (code, text) = (openapi.status, String::from_utf8_lossy(&openapi.body));
    assert_eq!(code, 200);
    assert!(text.contains("/v1/events"));

    running.stop();
    running.wait().await.expect("clean shutdown");
}
