//! Idempotency without a horizon (docs/clickhouse.md, "Exactly once"): with
//! `sink.dedup_window` forced down to 10 offsets, every event is sent once
//! and then again, thousands of offsets later (a re-run import far beyond
//! the window): `events` holds each revision once without `FINAL`, and the
//! aggregates, `survey_answers` and `revenue_metrics` count each event once;
//! a third pass read by a restarted sink stores nothing either. Ids stored
//! before migration 16, in `event_ids` by their day alone, still count as
//! stored, and so do ids stored before migration 17, in
//! `event_ids_hourly` by their hour. Revisions enrich vouched for as new
//! are not looked up, unless `sink.look_up_new_revisions` says to.

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

/// A configuration of its own for a sink fed directly on the enriched
/// topic (created), its dedup window forced down to 10 offsets; and the
/// run's id.
async fn sink_alone() -> (xoflow::Config, String) {
    let (mut cfg, id) = common::config("");
    cfg.sink.dedup_window = 10;
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    (cfg, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_far_beyond_the_dedup_window_count_nothing_twice() {
    let (mut cfg, id) = sink_alone().await;
    cfg.sink.batch_rows = 500;
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

/// An index a later migration replaced, and where its ids end.
#[derive(Clone, Copy)]
enum Older {
    /// `event_ids`, by the day (before migration 16).
    ByDay,
    /// `event_ids_hourly`, by the hour (before migration 17).
    ByHour,
}

/// A database upgraded past the migration that replaced `older` keeps
/// there the ids stored before it, by their day or hour only (their
/// seconds were never recorded), and the migrations record where they end:
/// a copy of one of them, far beyond the window, is still dropped; a batch
/// entirely after those bounds asks `event_ids_by_time` alone; the older
/// indexes are still fed, for a sink of a previous version running beside
/// this one.
async fn ids_stored_before_an_index_still_count(older: Older) {
    let (cfg, id) = sink_alone().await;
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
    let stored_in_older = |events: &[Event]| {
        let values: Vec<String> = events
            .iter()
            .map(|e| {
                let secs = e.occurred_at.as_ref().expect("time").seconds;
                let time = match older {
                    Older::ByDay => format!("toDate(toDateTime({secs}))"),
                    Older::ByHour => format!("toStartOfHour(toDateTime({secs}))"),
                };
                format!("('{}', {time}, '{}', 0)", e.tenant, e.event_id)
            })
            .collect();
        let (table, time) = match older {
            Older::ByDay => ("event_ids", "day"),
            Older::ByHour => ("event_ids_hourly", "hour"),
        };
        format!(
            "INSERT INTO {table} (tenant, {time}, event_id, revision) VALUES {}",
            values.join(", ")
        )
    };
    // What a sink before the migration left, and what the migrations
    // would have recorded of it (the start of the second day after the
    // last id: both bounds, for the day table, the later one alone for
    // the hour table).
    ch.query(&stored_in_older(before))
        .execute()
        .await
        .expect("ids stored before the upgrade");
    let (table, time) = match older {
        Older::ByDay => ("event_ids", "toDate(max(day))"),
        Older::ByHour => ("event_ids_hourly", "toDate(max(hour))"),
    };
    let bounds: &[&str] = match older {
        Older::ByDay => &["event_ids_hourly_from", "event_ids_by_time_from"],
        Older::ByHour => &["event_ids_by_time_from"],
    };
    for bound in bounds {
        ch.query(&format!(
            "INSERT INTO {bound} (k, at) SELECT 0, toUInt32(toDateTime({time} + 2)) FROM {table}"
        ))
        .execute()
        .await
        .expect("the bound");
    }

    produce(&cfg, &enriched(&events)).await;
    let running = common::start(&cfg, xoflow::Stages::SINK).await;
    common::sink_drained(&cfg, &cfg.sink.group_id).await;
    assert_eq!(
        count(&ch, "SELECT count() FROM events").await,
        after.len() as u64,
        "the events stored before the upgrade are copies"
    );
    // An id only the older index holds, of a time after the bound (no
    // sink leaves one: since the migration every id is in
    // `event_ids_by_time` too): a batch of such times does not ask it.
    ch.query(&stored_in_older(std::slice::from_ref(&stray)))
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
        "a batch after the bound asks event_ids_by_time alone"
    );
    assert_eq!(
        count(&ch, "SELECT count() FROM event_ids_by_time").await,
        after.len() as u64 + 1
    );
    // Each still fed with every stored event, beside the ids left there.
    for fed in ["event_ids_hourly", "event_ids"] {
        let left = if fed == table { before.len() as u64 } else { 0 };
        assert_eq!(
            count(
                &ch,
                &format!("SELECT uniqExact(tenant, event_id, revision) FROM {fed}")
            )
            .await,
            after.len() as u64 + 1 + left,
            "{fed} is still fed"
        );
    }
    common::drop_database(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stored_before_the_hourly_index_still_count() {
    ids_stored_before_an_index_still_count(Older::ByDay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stored_before_the_index_by_time_still_count() {
    ids_stored_before_an_index_still_count(Older::ByHour).await;
}

/// Revisions enrich vouches for as new (`EnrichedEvent.new_revision`) are
/// written without asking the dedup index; a copy not vouched for is
/// looked up and dropped as before. Shown by what a vouch that is wrong
/// (an enrich whose state was discarded) does: its copies far beyond the
/// window are stored again, unless `sink.look_up_new_revisions` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_vouched_for_as_new_are_not_looked_up() {
    let (mut cfg, id) = sink_alone().await;
    cfg.sink.batch_rows = 500;
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
