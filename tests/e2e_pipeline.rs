//! End to end through the real broker and ClickHouse: 10,000 events of all
//! five kinds sent over gRPC land in ClickHouse exactly once, with their
//! fields intact.

mod common;

use std::{collections::HashMap, time::Duration};

use clickhouse::Row;
use prost::Message;
use serde::Deserialize;
use xoflow::{Stages, sample};
use xoflow_proto::{
    EventKind,
    v1::{Event, event::Payload},
};

const EVENTS: usize = 10_000;

#[derive(Debug, Row, Deserialize)]
struct StoredRow {
    event_id: String,
    kind: String,
    tenant: String,
    touchpoint: String,
    store_id: String,
    customer_id: String,
    email_hash: String,
    nps_score: Option<i8>,
    amount_minor: i64,
    event_proto: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_land_exactly_once_with_fields_intact() {
    let (cfg, id) = common::config("");
    let running = common::start(&cfg, Stages::ALL).await;
    let addr = running.grpc_addr.expect("ingest runs");
    let sent = sample::events(7, EVENTS, "acme", &id, common::now_ms());
    common::ingest_all(addr, &sent, 1_000).await;

    let ch = cfg.clickhouse.client();
    common::wait_for(
        "every event in ClickHouse",
        Duration::from_secs(120),
        || {
            let ch = ch.clone();
            async move {
                common::count(&ch, "SELECT count() FROM events WHERE revision = 0").await
                    >= EVENTS as u64
            }
        },
    )
    .await;

    // Exactly once: no duplicate rows, not merely no duplicate ids after
    // merges.
    let (rows, distinct): (u64, u64) = ch
        .query("SELECT toUInt64(countIf(revision = 0) + count() - uniqExact(event_id, revision)), uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!((rows, distinct), (EVENTS as u64, EVENTS as u64));

    let stored: Vec<StoredRow> = ch
        .query(
            "SELECT event_id, toString(kind) AS kind, tenant, touchpoint, store_id, customer_id, \
             email_hash, nps_score, amount_minor, event_proto FROM events_latest",
        )
        .fetch_all()
        .await
        .expect("select");
    let by_id: HashMap<&str, &Event> = sent.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let mut per_kind: HashMap<String, usize> = HashMap::new();
    for row in &stored {
        let original = by_id[row.event_id.as_str()];
        *per_kind.entry(row.kind.clone()).or_default() += 1;
        assert_eq!(row.kind, original.kind().expect("kind").as_str());
        assert_eq!(row.tenant, original.tenant);
        let tp = original.touchpoint.as_ref().expect("touchpoint");
        assert_eq!(row.touchpoint, tp.touchpoint);
        assert_eq!(
            row.store_id,
            original.location.as_ref().expect("location").store_id
        );
        let cust = original.customer.as_ref().expect("customer");
        assert_eq!(row.customer_id, cust.customer_id);
        assert_eq!(row.email_hash.is_empty(), cust.email.is_empty());
        match original.payload.as_ref().expect("payload") {
            Payload::Order(o) => assert_eq!(row.amount_minor, o.amount_minor),
            Payload::Survey(s) => assert_eq!(row.nps_score.map(f64::from), s.answers[0].score),
            _ => {}
        }

        // The stored protobuf is the sent event, normalised: received_at
        // stamped, the raw e-mail replaced by its keyed hash, free text
        // masked.
        let mut stored_event = Event::decode(row.event_proto.as_slice()).expect("event_proto");
        assert!(stored_event.received_at.is_some());
        stored_event.received_at = None;
        let c = stored_event.customer.as_mut().expect("customer");
        assert!(c.email.is_empty(), "raw e-mail must not reach ClickHouse");
        if !c.email_hash.is_empty() {
            assert_eq!(c.email_hash.len(), 64);
        }
        c.email_hash.clear();
        let mut expected = original.clone();
        expected.customer.as_mut().expect("customer").email.clear();
        forget_derived(&mut stored_event);
        forget_derived(&mut expected);
        assert_eq!(stored_event, expected);
    }
    for k in EventKind::ALL {
        assert_eq!(per_kind.get(k.as_str()), Some(&(EVENTS / 5)), "{k}");
    }

    running.stop();
    running.wait().await.expect("clean shutdown");
    common::drop_database(&cfg).await;
}

/// Clears what ingest derives (detected language, the post author's handle
/// moved into the hashed identity and masked), so the rest compares exactly.
fn forget_derived(e: &mut Event) {
    if let Some(c) = e.customer.as_mut() {
        c.social_handle_hash.clear();
    }
    match e.payload.as_mut() {
        Some(Payload::Call(c)) => c.language.clear(),
        Some(Payload::Social(s)) => {
            s.language.clear();
            s.author_handle.clear();
        }
        _ => {}
    }
}
