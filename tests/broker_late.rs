//! Every stage started while its broker is not there yet waits for it:
//! none exits, each says `kafka_unreachable` on readiness (liveness stays
//! up: a restart would meet the same absence), and once the broker comes
//! the pipeline turns ready by itself and an event sent to the collector
//! reaches ClickHouse. On a broker of this test's own, started late on a
//! port chosen up front; the shared ClickHouse.

mod common;
#[path = "ingest_support/mod.rs"]
mod ingest_support;

use std::time::Duration;

use xoflow::Stages;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_started_before_the_broker_wait_for_it() {
    let port = std::sync::Arc::new(common::reserve_port());
    let (mut cfg, id) = common::config("");
    cfg.kafka.brokers = format!("127.0.0.1:{}", port.port);
    let running = xoflow::start(
        cfg.clone(),
        Stages::ALL,
        xoflow_common::shutdown::Shutdown::new(),
    )
    .await
    .expect("the process starts without its broker");

    common::wait_for(
        "every stage to say the broker is away",
        Duration::from_secs(60),
        || {
            let reasons = running.health.check().err().unwrap_or_default();
            async move {
                ["ingest", "enrich", "sink"].iter().all(|stage| {
                    reasons
                        .iter()
                        .any(|r| r.starts_with(&format!("{stage}: kafka_unreachable")))
                })
            }
        },
    )
    .await;
    assert_eq!(running.health.check_live(), Ok(()), "no reason to restart");
    assert!(!running.shutdown.token.is_cancelled(), "no stage exited");

    let mut broker = common::OwnBroker::start_at(port);
    broker.wait_listening().await;
    common::wait_ready(
        &running,
        "the pipeline to turn ready once the broker is there",
        Duration::from_secs(120),
    )
    .await;

    let http = running.http_addr.expect("ingest runs");
    let events = xoflow::sample::events(1, 3, "acme", &id, common::now_ms());
    let body = serde_json::to_string(&events).expect("json");
    let r = ingest_support::http(http, "/v1/events", &[], Some(body.as_bytes())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let client = cfg.clickhouse.client();
    common::wait_for(
        "the event to reach ClickHouse",
        Duration::from_secs(90),
        || {
            let client = client.clone();
            async move {
                client
                    .query("SELECT toUInt64(countIf(revision = 0) + count() - uniqExact(event_id, revision)) FROM events")
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|n| n == 3)
            }
        },
    )
    .await;
    running.stop();
    tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("stops")
        .expect("clean stop");
    common::drop_database(&cfg).await;
    broker.kill();
}
