//! Enrich under a trickle: events arriving one by one, a few milliseconds
//! apart, keep the join holding events while batches fill, so the timer
//! that releases held events fires while a batch is half read. Every event
//! must still come out, once. Real broker, enrich in this process.

mod common;

use std::{collections::BTreeSet, time::Duration};

use xoflow::{Stages, sample};
use xoflow_common::kafka::Outgoing;
use xoflow_proto::{Message, v1::Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_trickle_is_enriched() {
    // The shipped batching and hold settings: batches fill for 100 ms, held
    // events are looked at every 125 ms.
    let (cfg, id) = common::config("[enrich.join]\nlateness = \"2s\"\nmax_hold = \"500ms\"\n");
    let mut cfg = cfg;
    cfg.enrich.batch_max_wait = Duration::from_millis(100);
    cfg.kafka
        .ensure_topics(&[&cfg.kafka.topics.events])
        .await
        .expect("topics");
    let running = common::start(&cfg, Stages::ENRICH).await;

    let events: Vec<Event> = sample::events(11, 300, "acme", &id, common::now_ms());
    let producer = cfg.kafka.batch_producer().expect("producer");
    for e in &events {
        let bytes = e.encode_to_vec();
        producer
            .send_all(
                &cfg.kafka.topics.events,
                &[Outgoing::keyed(e.partition_key().as_bytes(), &bytes)],
            )
            .await
            .expect("produce");
        tokio::time::sleep(Duration::from_millis(7)).await;
    }

    let want: BTreeSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let seen: BTreeSet<String> = common::read_enriched(
        &cfg,
        &format!("g-{id}-check"),
        Duration::from_secs(60),
        Duration::ZERO,
        |seen| want.iter().all(|w| seen.contains_key(w)),
    )
    .await
    .into_keys()
    .collect();
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never enriched, e.g. {:?}",
        missing.len(),
        want.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    running.stop();
    running.wait().await.expect("clean shutdown");
}
