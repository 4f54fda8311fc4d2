//! Rows ClickHouse refuses go to `dead_letters`, the rest of their batch to
//! `events`, and the sink keeps going; the positions it resumes from count
//! refused rows, so a re-read from offset 0 writes nothing twice; the
//! reconciliation figures add up. Real broker, real ClickHouse.
//!
//! ClickHouse 18.16 checks no constraints, so the test gives `events` a
//! column whose default calls `throwIf` on a marked tenant: the server then
//! refuses any insert holding such a row, as a CHECK constraint would on a
//! current release.

mod common;

use std::time::Duration;

use clickhouse::Row;
use rand::seq::SliceRandom;
use serde::Deserialize;
use xoflow::Stages;
use xoflow_proto::{Message, v1::Event};

const REFUSED_TENANT: &str = "refuse-me";

fn enriched(id: &str, i: usize, tenant: &str) -> (Vec<u8>, String) {
    let key = format!("c{}", i % 97);
    let bytes = common::enriched_click(format!("{id}-{i}"), tenant, &key, &format!("s{}", i % 13));
    (bytes, key)
}

#[derive(Debug, Row, Deserialize, PartialEq)]
struct Counts {
    events: u64,
    distinct_events: u64,
    refused: u64,
    aggregated: u64,
}

async fn counts(ch: &clickhouse::Client) -> Counts {
    ch.query(
        "SELECT (SELECT count() FROM events) AS events, \
                (SELECT uniqExact(event_id) FROM events) AS distinct_events, \
                (SELECT count() FROM dead_letters WHERE refused = 1) AS refused, \
                (SELECT toUInt64(sumMerge(events)) FROM touchpoint_metrics) AS aggregated",
    )
    .fetch_one()
    .await
    .expect("counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_are_dead_lettered_and_the_rest_stored_once() {
    let (mut cfg, id) = common::config("");
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrate");
    let ch = cfg.clickhouse.client();
    ch.query(&format!(
        "ALTER TABLE events ADD COLUMN guard UInt8 DEFAULT throwIf(tenant = '{REFUSED_TENANT}')"
    ))
    .execute()
    .await
    .expect("guard column");
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");

    // 3,000 events, 9 of them refused, at random places.
    let mut tenants: Vec<&str> = vec!["shop"; 2_991];
    tenants.extend([REFUSED_TENANT; 9]);
    tenants.shuffle(&mut rand::rng());
    let first: Vec<_> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| enriched(&id, i, t))
        .collect();
    common::produce_enriched(&cfg, &first).await;

    let running = common::start(&cfg, Stages::SINK).await;
    let settled = |want: Counts| {
        let ch = ch.clone();
        async move {
            common::wait_for("the sink to settle", Duration::from_secs(90), || {
                let ch = ch.clone();
                async move { counts(&ch).await.aggregated >= want.aggregated }
            })
            .await;
            let got = counts(&ch).await;
            assert_eq!(got, want);
        }
    };
    settled(Counts {
        events: 2_991,
        distinct_events: 2_991,
        refused: 9,
        aggregated: 2_991,
    })
    .await;

    #[derive(Debug, Row, Deserialize)]
    struct Dead {
        event_id: String,
        reason: String,
        tenant: String,
        description: String,
        payload: Vec<u8>,
    }
    let dead: Vec<Dead> = ch
        .query(
            "SELECT event_id, reason, tenant, description, payload FROM dead_letters \
             WHERE refused = 1 ORDER BY event_id",
        )
        .fetch_all()
        .await
        .expect("dead letters");
    for d in &dead {
        assert_eq!(d.reason, "CLICKHOUSE_REFUSED");
        assert_eq!(d.tenant, REFUSED_TENANT);
        assert!(d.description.contains("throwIf"), "{}", d.description);
        let e = Event::decode(d.payload.as_slice()).expect("payload is the event");
        assert_eq!(e.event_id, d.event_id);
        assert_eq!(e.tenant, REFUSED_TENANT);
    }

    // The sink goes on: later events are stored.
    let more: Vec<_> = (3_000..3_500).map(|i| enriched(&id, i, "shop")).collect();
    common::produce_enriched(&cfg, &more).await;
    settled(Counts {
        events: 3_491,
        distinct_events: 3_491,
        refused: 9,
        aggregated: 3_491,
    })
    .await;
    running.stop();
    running.wait().await.expect("clean shutdown");

    // Reconciliation: every committed offset is stored, rows add up.
    let status = xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id)
        .await
        .expect("status");
    let enriched_parts: Vec<_> = status.iter().filter(|s| s.topic == t.enriched).collect();
    assert_eq!(enriched_parts.len(), 4);
    for s in &enriched_parts {
        assert_eq!(s.gap(), 0, "{s:?}");
        assert_eq!(s.committed, Some(s.stored_next), "{s:?}");
    }
    let rows: u64 = enriched_parts.iter().map(|s| s.rows_stored).sum();
    assert_eq!(rows, 3_500);

    // A new group re-reads both topics from offset 0: positions come from
    // ClickHouse (refused rows included), so nothing is written again.
    cfg.sink.group_id = format!("g-{id}-sink-again");
    let running = common::start(&cfg, Stages::SINK).await;
    let last = vec![enriched(&id, 3_500, "shop")];
    common::produce_enriched(&cfg, &last).await;
    // Done once the new group has committed past every record.
    common::wait_for("the re-read", Duration::from_secs(90), || {
        let cfg = cfg.clone();
        async move {
            let status = xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id)
                .await
                .expect("status");
            let committed: i64 = status
                .iter()
                .filter(|s| s.topic == cfg.kafka.topics.enriched)
                .filter_map(|s| s.committed)
                .sum();
            committed == 3_501
        }
    })
    .await;
    settled(Counts {
        events: 3_492,
        distinct_events: 3_492,
        refused: 9,
        aggregated: 3_492,
    })
    .await;
    running.stop();
    running.wait().await.expect("clean shutdown");
    common::drop_database(&cfg).await;
}
