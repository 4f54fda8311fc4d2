//! Idempotency without a horizon (docs/clickhouse.md, "Exactly once"): with
//! `sink.dedup_window` forced down to 10 offsets, every event is sent once
//! and then again, thousands of offsets later (a re-run import far beyond
//! the window): `events` holds each revision once without `FINAL`, and the
//! aggregates, `survey_answers` and `revenue_metrics` count each event once;
//! a third pass read by a restarted sink stores nothing either. Ids stored
//! before migration 16, in `event_ids` by their day alone, still count as
//! stored. Revisions enrich vouched for as new are not looked up, unless
//! `sink.look_up_new_revisions` says to.

mod common;

use xoflow::sample;
use xoflow_common::kafka::Outgoing;
use xoflow_proto::{
    Message,
    v1::{EnrichedEvent, Event},
};

const EVENTS: usize = 3_000;

async fn count(ch: &clickhouse::Client, sql: &str) -> u64 {
    ch.query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Each event as the enrich stage would emit it, keyed by its id.
fn enriched(events: &[Event]) -> Vec<(Vec<u8>, String)> {
    revisions(events, 0, false)
}

/// Each event at `revision`, vouched for as new (`new_revision`) or not.
fn revisions(events: &[Event], revision: u32, new_revision: bool) -> Vec<(Vec<u8>, String)> {
    events
        .iter()
        .map(|e| {
            let en = EnrichedEvent {
                revision,
                new_revision,
                cx: Some(xoflow_enrich::derive::cx_fields(e)),
                resolved_customer_id: e
                    .customer
                    .as_ref()
                    .map(|c| c.customer_id.clone())
                    .unwrap_or_default(),
                event: Some(e.clone()),
                ..Default::default()
            };
            (en.encode_to_vec(), e.event_id.clone())
        })
        .collect()
}

async fn produce(cfg: &xoflow::Config, encoded: &[(Vec<u8>, String)]) {
    let producer = cfg.kafka.batch_producer().expect("producer");
    let records: Vec<Outgoing<'_>> = encoded
        .iter()
        .map(|(b, k)| Outgoing::keyed(k.as_bytes(), b))
        .collect();
    producer
        .send_all(&cfg.kafka.topics.enriched, &records)
        .await
        .expect("produce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_far_beyond_the_dedup_window_count_nothing_twice() {
    let (mut cfg, id) = common::config("");
    cfg.sink.dedup_window = 10;
    cfg.sink.batch_rows = 500;
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    let events: Vec<Event> = sample::events(23, EVENTS, "acme", &id, common::now_ms());
    let encoded = enriched(&events);
    let answers: u64 = events
        .iter()
        .map(|e| match &e.payload {
            Some(xoflow_proto::v1::event::Payload::Survey(s)) => s.answers.len() as u64,
            _ => 0,
        })
        .sum();
    let orders = events
        .iter()
        .filter(|e| matches!(e.payload, Some(xoflow_proto::v1::event::Payload::Order(_))))
        .count() as u64;

    // Once, then every event again: each copy ~EVENTS / partitions offsets
    // after its original, far beyond the window of 10.
    produce(&cfg, &encoded).await;
    produce(&cfg, &encoded).await;
    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    running.stop();
    running.wait().await.expect("clean stop");

    // A third pass, read by a new sink (a new group: it reads everything
    // from the start, its window loaded from ClickHouse).
    produce(&cfg, &encoded).await;
    cfg.sink.group_id = format!("g-{id}-sink-2");
    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    running.stop();
    running.wait().await.expect("clean stop");

    let ch = cfg.clickhouse.client();
    let n = EVENTS as u64;
    assert_eq!(
        count(&ch, "SELECT count() FROM events").await,
        n,
        "each event stored once, no FINAL"
    );
    assert_eq!(
        count(&ch, "SELECT sumMerge(events) FROM touchpoint_metrics").await,
        n
    );
    assert_eq!(
        count(&ch, "SELECT count() FROM survey_answers").await,
        answers
    );
    assert_eq!(
        count(&ch, "SELECT sumMerge(paid_orders) FROM revenue_metrics").await,
        orders
    );
    common::drop_database(&cfg).await;
}

/// A database upgraded to migration 16 keeps in `event_ids` the ids stored
/// before it, by their day only (their hours were never recorded), and the
/// migration records where they end: a copy of one of them, far beyond the
/// window, is still dropped; a batch entirely after that bound asks
/// `event_ids_hourly` alone; `event_ids` is still fed, for a sink of the
/// previous version running beside this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stored_before_the_hourly_index_still_count() {
    let (mut cfg, id) = common::config("");
    cfg.sink.dedup_window = 10;
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrations");
    let mut events: Vec<Event> = sample::events(29, 201, "acme", &id, common::now_ms());
    let stray = events.pop().expect("201 events");
    // Stored three days ago, before the upgrade.
    for e in &mut events[..100] {
        let at = e.occurred_at.as_mut().expect("time");
        at.seconds -= 3 * 86_400;
    }
    let (before, after) = events.split_at(100);
    let ch = cfg.clickhouse.client();
    let stored_in_event_ids = |events: &[Event]| {
        let values: Vec<String> = events
            .iter()
            .map(|e| {
                let secs = e.occurred_at.as_ref().expect("time").seconds;
                format!(
                    "('{}', toDate(toDateTime({secs})), '{}', 0)",
                    e.tenant, e.event_id
                )
            })
            .collect();
        format!(
            "INSERT INTO event_ids (tenant, day, event_id, revision) VALUES {}",
            values.join(", ")
        )
    };
    // What a sink before migration 16 left, and what the migration would
    // have recorded of it.
    ch.query(&stored_in_event_ids(before))
        .execute()
        .await
        .expect("ids stored before the upgrade");
    ch.query(
        "INSERT INTO event_ids_hourly_from (k, at) \
         SELECT 0, toUInt32(toDateTime(max(day) + 2)) FROM event_ids",
    )
    .execute()
    .await
    .expect("the bound");

    produce(&cfg, &enriched(&events)).await;
    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    assert_eq!(
        count(&ch, "SELECT count() FROM events").await,
        after.len() as u64,
        "the events stored before the upgrade are copies"
    );
    // An id only `event_ids` holds, of a time after the bound (no sink
    // leaves one: since migration 16 every id is in `event_ids_hourly`
    // too): a batch of such times does not ask `event_ids`.
    ch.query(&stored_in_event_ids(std::slice::from_ref(&stray)))
        .execute()
        .await
        .expect("a stray id");
    produce(&cfg, &enriched(std::slice::from_ref(&stray))).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    running.stop();
    running.wait().await.expect("clean stop");

    assert_eq!(
        count(&ch, "SELECT count() FROM events").await,
        after.len() as u64 + 1,
        "a batch after the bound asks event_ids_hourly alone"
    );
    assert_eq!(
        count(&ch, "SELECT count() FROM event_ids_hourly").await,
        after.len() as u64 + 1
    );
    assert_eq!(
        count(
            &ch,
            "SELECT uniqExact(tenant, event_id, revision) FROM event_ids"
        )
        .await,
        before.len() as u64 + after.len() as u64 + 1,
        "event_ids is still fed"
    );
    common::drop_database(&cfg).await;
}

/// Revisions enrich vouches for as new (`EnrichedEvent.new_revision`) are
/// written without asking the dedup index; a copy not vouched for is
/// looked up and dropped as before. Shown by what a vouch that is wrong
/// (an enrich whose state was discarded) does: its copies far beyond the
/// window are stored again, unless `sink.look_up_new_revisions` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_vouched_for_as_new_are_not_looked_up() {
    let (mut cfg, id) = common::config("");
    cfg.sink.dedup_window = 10;
    cfg.sink.batch_rows = 500;
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    let events: Vec<Event> = sample::events(31, EVENTS, "acme", &id, common::now_ms());
    let n = events.len() as u64;
    let ch = cfg.clickhouse.client();
    let rows = || count(&ch, "SELECT count() FROM events");
    // A copy stored twice has its original's sorting key: a merge would
    // collapse the two and hide it from `count()`.
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrations");
    ch.query(&format!(
        "SYSTEM STOP MERGES {}.events",
        cfg.clickhouse.database
    ))
    .execute()
    .await
    .expect("merges stopped");

    // Every event at revision 0, then a repair of each at revision 1,
    // vouched for; then the repairs again as a replay emits them, not
    // vouched for: far beyond the window, the look-up drops them.
    produce(&cfg, &enriched(&events)).await;
    produce(&cfg, &revisions(&events, 1, true)).await;
    produce(&cfg, &revisions(&events, 1, false)).await;
    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    running.stop();
    running.wait().await.expect("clean stop");
    assert_eq!(rows().await, 2 * n, "each revision once");

    // A wrong vouch: the same repairs, vouched for again, read by a
    // restarted sink (its window loaded afresh: the last 10 offsets of
    // each partition). Not looked up, so stored again.
    produce(&cfg, &revisions(&events, 1, true)).await;
    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    running.stop();
    running.wait().await.expect("clean stop");
    assert_eq!(rows().await, 3 * n, "vouched rows are not looked up");

    // With `look_up_new_revisions`, vouched rows are asked for too.
    cfg.sink.look_up_new_revisions = true;
    produce(&cfg, &revisions(&events, 1, true)).await;
    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    running.stop();
    running.wait().await.expect("clean stop");
    assert_eq!(rows().await, 3 * n, "every row looked up");
    common::drop_database(&cfg).await;
}
