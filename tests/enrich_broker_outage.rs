//! Enrich rides out a broker outage: it never exits, readiness answers
//! `kafka_unreachable` while the broker is away (liveness stays up: a
//! restart would meet the same outage), and once the broker is back on its
//! storage enrich turns ready by itself and enriches what was sent before
//! and after; a shutdown during a second outage does not hang; an outage
//! that begins as it starts is waited out too. On a broker
//! of this test's own that keeps its data (SQLite); the shared broker is
//! never touched.
//!
//! (A broker that comes back *without* its topics — memory storage — made
//! librdkafka 2.12.1 crash the process, SIGSEGV in
//! `rd_kafka_metadata_cache_find`: see docs/operations.md.)

mod common;

use std::{collections::BTreeSet, time::Duration};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::Message as _,
};
use xoflow::{Stages, sample};
use xoflow_common::kafka::Outgoing;
use xoflow_proto::{
    Message,
    v1::{EnrichedEvent, Event},
};

async fn produce(cfg: &xoflow::Config, events: &[Event]) {
    let producer = cfg.kafka.batch_producer().expect("producer");
    let bytes: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.partition_key().to_string(), e.encode_to_vec()))
        .collect();
    let out: Vec<Outgoing<'_>> = bytes
        .iter()
        .map(|(k, b)| Outgoing::keyed(k.as_bytes(), b))
        .collect();
    producer
        .send_all(&cfg.kafka.topics.events, &out)
        .await
        .expect("produce");
}

/// Waits until every event of `events` was read from the enriched topic.
async fn enriched(cfg: &xoflow::Config, group: &str, events: &[Event]) {
    let consumer: StreamConsumer = cfg
        .kafka
        .consumer(group, Default::default())
        .expect("consumer");
    consumer
        .subscribe(&[&cfg.kafka.topics.enriched])
        .expect("subscribe");
    let want: BTreeSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !want.is_subset(&seen) {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => continue,
            Err(_) => break,
        };
        if let Ok(e) = EnrichedEvent::decode(m.payload().unwrap_or_default()) {
            seen.insert(e.event.map(|e| e.event_id).unwrap_or_default());
        }
    }
    let missing = want.difference(&seen).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} events never enriched",
        want.len()
    );
}

/// Enrich alone, started on a broker of the test's own that keeps its data
/// under the returned directory.
async fn enrich_on_its_own_broker() -> (
    std::path::PathBuf,
    common::OwnBroker,
    xoflow::Config,
    String,
    xoflow::Running,
) {
    let dir = std::env::temp_dir().join(format!("xoflow-enrich-outage-{}", common::unique()));
    let broker = common::OwnBroker::start_persistent(&dir);
    broker.wait_listening().await;
    let (mut cfg, id) = common::config("");
    cfg.kafka.brokers = broker.addr();
    cfg.kafka.message_timeout = Duration::from_secs(3);
    xoflow_enrich::stage::ensure_topics(&cfg.kafka, &cfg.enrich)
        .await
        .expect("topics");
    let running = common::start(&cfg, Stages::ENRICH).await;
    (dir, broker, cfg, id, running)
}

/// Returns once 10 s have passed since `since`: an outage's length is the
/// fault itself, not a condition to await.
async fn lasts(since: tokio::time::Instant, what: &str) {
    common::wait_for(what, Duration::from_secs(60), || {
        let long = since.elapsed() >= Duration::from_secs(10);
        async move { long }
    })
    .await;
}

/// Stops enrich (within 60 s, or fails with `what`), then its broker, and
/// removes the broker's data.
async fn stop(
    running: xoflow::Running,
    broker: common::OwnBroker,
    dir: &std::path::Path,
    what: &str,
) {
    running.stop();
    tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect(what)
        .expect("clean shutdown");
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_rides_out_a_broker_outage_and_says_so() {
    let (dir, mut broker, cfg, id, running) = enrich_on_its_own_broker().await;

    let before = sample::events(5, 50, "acme", &format!("{id}-a"), common::now_ms());
    produce(&cfg, &before).await;
    enriched(&cfg, &format!("g-{id}-check-a"), &before).await;

    broker.kill();
    common::wait_not_ready(
        &running,
        "enrich: kafka_unreachable",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        running.health.check_live(),
        Ok(()),
        "an outage is no reason to restart"
    );
    assert!(
        !running.shutdown.token.is_cancelled(),
        "enrich must not exit"
    );

    // The outage lasts well past the old produce budget (5 attempts, ~6 s).
    lasts(
        tokio::time::Instant::now(),
        "the outage to outlast the old budget",
    )
    .await;
    assert!(
        !running.shutdown.token.is_cancelled(),
        "enrich must not exit"
    );
    assert!(running.health.check().is_err(), "still not ready");

    // Back on its storage: ready again by itself, and it goes on.
    broker.revive().await;
    common::wait_ready(
        &running,
        "enrich to turn ready once the broker is back",
        Duration::from_secs(120),
    )
    .await;
    let after = sample::events(6, 50, "acme", &format!("{id}-b"), common::now_ms());
    produce(&cfg, &after).await;
    enriched(&cfg, &format!("g-{id}-check-b"), &after).await;

    // Shutdown during an outage does not hang on it.
    broker.kill();
    common::wait_not_ready(
        &running,
        "enrich: kafka_unreachable",
        Duration::from_secs(60),
    )
    .await;
    stop(
        running,
        broker,
        &dir,
        "shutdown during an outage ends within the drain budget",
    )
    .await;
}

/// The broker goes away as soon as enrich is ready, before or while its
/// partitions are assigned and their state read back (timing decides
/// which). Enrich waits, not ready, instead of exiting; once the broker is
/// back it enriches what is sent, and it stops at once. (A kill timed into
/// the read-back itself ended the stage before those reads were retried,
/// "reading ….changelog back failed: Broker transport failure"; that
/// window is too narrow to hit on purpose here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_waits_out_an_outage_that_begins_as_it_starts() {
    let (dir, mut broker, cfg, id, running) = enrich_on_its_own_broker().await;
    broker.kill();
    let since = tokio::time::Instant::now();
    common::wait_not_ready(
        &running,
        "enrich: kafka_unreachable",
        Duration::from_secs(60),
    )
    .await;
    lasts(since, "the outage to outlast a few read retries").await;
    assert!(
        !running.shutdown.token.is_cancelled(),
        "enrich must not exit"
    );

    broker.revive().await;
    common::wait_ready(
        &running,
        "enrich to turn ready once the broker is back",
        Duration::from_secs(120),
    )
    .await;
    let events = sample::events(5, 50, "acme", &format!("{id}-s"), common::now_ms());
    produce(&cfg, &events).await;
    enriched(&cfg, &format!("g-{id}-check-s"), &events).await;
    assert!(
        !running.shutdown.token.is_cancelled(),
        "enrich must not exit"
    );
    stop(running, broker, &dir, "shutdown within the drain budget").await;
}
