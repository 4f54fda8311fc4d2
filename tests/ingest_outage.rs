//! Broker failure, on a broker of this test's own (started on a free port,
//! killed and restarted by the test; the shared broker is never touched).
//!
//! Broker stopped: gRPC answers UNAVAILABLE and HTTP 503 with Retry-After,
//! and nothing of those requests is acknowledged. Broker back (memory
//! storage, so it comes back empty and the topics are recreated): the same
//! requests are accepted, and every acknowledged event is readable from
//! Kafka.

mod common;
#[path = "ingest_support/mod.rs"]
mod support;

use std::time::Duration;

use xoflow::{Stages, sample};
use xoflow_proto::v1::{IngestRequest, collector_client::CollectorClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_acknowledges_nothing_and_broker_back_keeps_everything() {
    let mut broker = common::OwnBroker::start();
    broker.wait_listening().await;

    let (mut cfg, id) = common::config("");
    cfg.kafka.brokers = broker.addr();
    cfg.kafka.message_timeout = Duration::from_secs(3);
    let t = cfg.kafka.topics.clone();
    let running = common::start(&cfg, Stages::INGEST).await;
    let mut client =
        CollectorClient::connect(format!("http://{}", running.grpc_addr.expect("grpc")))
            .await
            .expect("connect");
    let http = running.http_addr.expect("http");
    let now = common::now_ms();
    let batch = |n: &str, count| sample::events(9, count, "acme", &format!("{id}-{n}"), now);

    let first = client
        .ingest(IngestRequest {
            events: batch("up", 20),
        })
        .await
        .expect("broker up")
        .into_inner();
    assert_eq!(first.accepted, 20);

    broker.kill();
    let down = batch("down", 30);
    let status = client
        .ingest(IngestRequest {
            events: down.clone(),
        })
        .await
        .expect_err("broker down must not be acknowledged");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let body: String = down
        .iter()
        .map(|e| serde_json::to_string(e).expect("json") + "\n")
        .collect();
    let r = support::http(
        http,
        "/v1/events",
        &[("Content-Type", "application/x-ndjson")],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(
        r.json().get("results").is_none(),
        "no per-record acknowledgement"
    );

    // Back, empty: recreate the topics, send again.
    broker.revive().await;
    common::wait_for("topics recreated", Duration::from_secs(60), || {
        let k = cfg.kafka.clone();
        let t = t.clone();
        async move {
            k.ensure_topics(&[&t.events, &t.backfill, &t.dead_letters])
                .await
                .is_ok()
        }
    })
    .await;
    let mut acknowledged = Vec::new();
    let mut retry = down.clone();
    retry.extend(batch("back", 25));
    // The producer reconnects on its own; until it has, requests are
    // refused as a whole (never half-acknowledged), so poll until one is
    // accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let again = loop {
        match client
            .ingest(IngestRequest {
                events: retry.clone(),
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "never accepted again: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(again.accepted as usize, retry.len());
    for r in &again.results {
        acknowledged.push(r.event_id.clone());
    }

    let records = support::read_topic(&cfg.kafka.brokers, &t.events, acknowledged.len()).await;
    let mut stored: Vec<String> = support::events(&records)
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    stored.sort();
    stored.dedup();
    acknowledged.sort();
    for id in &acknowledged {
        assert!(
            stored.binary_search(id).is_ok(),
            "acknowledged {id} is not in Kafka"
        );
    }

    running.stop();
    running.wait().await.expect("clean shutdown");
}
