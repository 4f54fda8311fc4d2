//! A malformed record end to end, through the real broker: it is refused
//! with its field and reason, its dead letter (PII-masked original bytes,
//! stage, time, tenant) is readable from the dead-letter topic, and the valid records around it are readable from the
//! events topic. The full table of malformed input (55 kinds) runs in
//! process: `ingest/tests/malformed.rs`.

mod common;
#[path = "ingest_support/mod.rs"]
mod support;

use serde_json::json;
use xoflow::Stages;

fn valid(id: &str, now: i64) -> serde_json::Value {
    let ts = serde_json::to_value(xoflow_proto::from_unix_millis(now - 60_000)).expect("ts");
    json!({"eventId": id, "tenant": "acme", "source": "survey-tool", "occurredAt": ts,
           "order": {"orderId": format!("o-{id}"), "status": "ORDER_STATUS_PAID",
                     "amountMinor": "5600", "currency": "CNY"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_reaches_the_dead_letter_topic() {
    let (cfg, _) = common::config("");
    let running = common::start(&cfg, Stages::INGEST).await;
    let http = running.http_addr.expect("http");
    let now = common::now_ms();
    let ndjson = [("Content-Type", "application/x-ndjson")];

    let mut bad_currency = valid("bad-1", now);
    bad_currency["order"]["currency"] = json!("yuan");
    bad_currency["attributes"] = json!({"note": "call me on 13800138000"});
    let body = [valid("ok-1", now), bad_currency, valid("ok-2", now)]
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let r = support::http(http, "/v1/events", &ndjson, Some(body.as_bytes())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (v["accepted"].clone(), v["rejected"].clone()),
        (2.into(), 1.into())
    );
    let bad = &v["results"][1]["violations"][0];
    assert_eq!(
        (bad["field"].clone(), bad["reason"].clone()),
        (json!("order.currency"), json!("INVALID"))
    );

    let letters = support::dead_letters(
        &support::read_topic(&cfg.kafka.brokers, &cfg.kafka.topics.dead_letters, 1).await,
    );
    let d = &letters[0];
    assert_eq!(
        (
            d.field.as_str(),
            d.reason.as_str(),
            d.stage.as_str(),
            d.tenant.as_str()
        ),
        ("order.currency", "INVALID", "ingest", "acme")
    );
    assert!(d.at.is_some());
    assert_eq!(d.content_type, "application/json");
    let payload = String::from_utf8_lossy(&d.payload);
    assert!(payload.contains("bad-1"), "{payload}");
    assert!(!payload.contains("13800138000"), "{payload}");

    let events = support::events(
        &support::read_topic(&cfg.kafka.brokers, &cfg.kafka.topics.events, 2).await,
    );
    let mut ids: Vec<_> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["ok-1", "ok-2"]);

    running.stop();
    running.wait().await.expect("clean shutdown");
}

/// A 1 MB `event_id`: the answer does not echo it, and its dead letter,
/// cut to fit one Kafka message and marked so, is on the dead-letter topic
/// (before, the producer refused it: MessageSizeTooLarge, and it was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_id_is_dead_lettered_cut_to_fit() {
    let (cfg, _) = common::config("");
    let running = common::start(&cfg, Stages::INGEST).await;
    let http = running.http_addr.expect("http");
    let now = common::now_ms();
    let huge = "i".repeat(1024 * 1024);
    let mut bad = valid("x", now);
    bad["eventId"] = json!(huge);
    let body = bad.to_string();
    let r = support::http(http, "/v1/events", &[], Some(body.as_bytes())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body.len() < 4096, "answer of {} bytes", r.body.len());
    let echoed = r.json()["results"][0]["eventId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(echoed.ends_with("…(truncated, 1048576 bytes)"), "{echoed}");

    let letters = support::dead_letters(
        &support::read_topic(&cfg.kafka.brokers, &cfg.kafka.topics.dead_letters, 1).await,
    );
    let d = &letters[0];
    assert_eq!(
        (d.field.as_str(), d.reason.as_str()),
        ("event_id", "TOO_LONG")
    );
    assert!(
        d.description
            .starts_with("[truncated: payload keeps the first "),
        "{}",
        d.description
    );
    assert!(body.as_bytes().starts_with(&d.payload));
    assert!(d.event_id.ends_with("…(truncated, 1048576 bytes)"));

    running.stop();
    running.wait().await.expect("clean shutdown");
}
