//! Two tenants whose customers, natural ids and event ids coincide (two
//! shops numbering their customers and orders from 1 alike), end to end
//! through the real broker and ClickHouse: each tenant's events are all
//! stored, one tenant's orders never reach the other's joined context, and
//! erasing one tenant's customer leaves the other's customer with the same
//! id whole.

mod common;

use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use xoflow::{Stages, sample};
use xoflow_proto::v1::{Event, event::Payload};

const EVENTS: usize = 1_000;

/// Customers shared by both tenants' events: few enough that most
/// customers with a survey also have an order.
const CUSTOMERS: usize = 40;

#[derive(Debug, Row, Deserialize, PartialEq)]
struct PerTenant {
    tenant: String,
    rows: u64,
    latest: u64,
    with_orders: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_with_the_same_ids_keep_their_events_and_their_joins_apart() {
    let (cfg, id) = common::config("");
    let running = common::start(&cfg, Stages::ALL).await;
    let addr = running.grpc_addr.expect("ingest runs");

    // "acme" sends every kind; "beta" the same events under its own name,
    // its orders left out: whatever order context beta's events carry
    // could only have come from acme.
    let now = common::now_ms();
    let acme: Vec<Event> = sample::events(7, EVENTS, "acme", &id, now)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            if let Some(c) = e.customer.as_mut() {
                c.customer_id = format!("c-{}", i % CUSTOMERS);
            }
            e
        })
        .collect();
    let beta: Vec<Event> = acme
        .iter()
        .filter(|e| !matches!(e.payload, Some(Payload::Order(_))))
        .map(|e| Event {
            tenant: "beta".into(),
            ..e.clone()
        })
        .collect();
    common::ingest_all(addr, &acme, 250).await;
    common::ingest_all(addr, &beta, 250).await;

    let ch = cfg.clickhouse.client();
    let expected = (acme.len() + beta.len()) as u64;
    common::wait_for(
        "both tenants' events in ClickHouse",
        Duration::from_secs(120),
        || {
            let ch = ch.clone();
            async move {
                common::count(&ch, "SELECT count() FROM events WHERE revision = 0").await
                    >= expected
            }
        },
    )
    .await;
    // Repairs too: enrich sends a batch's outputs together, so with every
    // revision 0 stored the enriched topic is complete.
    common::sink_drained(&cfg, &cfg.sink.group_id).await;

    let per_tenant: Vec<PerTenant> = ch
        .query(
            "SELECT tenant, rows, latest, with_orders FROM \
               (SELECT tenant, count() AS rows FROM events WHERE revision = 0 GROUP BY tenant) \
             ALL INNER JOIN \
               (SELECT tenant, count() AS latest, \
                       countIf(ctx_orders_90d > 0 OR ctx_order_id != '') AS with_orders \
                FROM events_latest GROUP BY tenant) USING tenant \
             ORDER BY tenant",
        )
        .fetch_all()
        .await
        .expect("per tenant");
    let dead_letters: u64 = ch
        .query("SELECT count() FROM dead_letters")
        .fetch_one()
        .await
        .expect("dead letters");
    assert_eq!(dead_letters, 0);
    assert_eq!(per_tenant.len(), 2, "{per_tenant:?}");
    let (a, b) = (&per_tenant[0], &per_tenant[1]);
    assert_eq!(
        (a.tenant.as_str(), a.rows, a.latest),
        ("acme", acme.len() as u64, acme.len() as u64)
    );
    assert_eq!(
        (b.tenant.as_str(), b.rows, b.latest),
        ("beta", beta.len() as u64, beta.len() as u64)
    );
    assert!(
        a.with_orders > 0,
        "acme's own orders join its events: {a:?}"
    );
    assert_eq!(b.with_orders, 0, "acme's orders in beta's context: {b:?}");

    // Erasing acme's customer c-0 leaves beta's c-0: its rows, its join
    // state and its identifiers' links.
    let c0 = vec!["c-0".to_owned()];
    let beta_hashes: Vec<String> = ch
        .query(
            "SELECT DISTINCT email_hash FROM events \
             WHERE tenant = 'beta' AND customer_id = 'c-0' AND email_hash != ''",
        )
        .fetch_all()
        .await
        .expect("beta's hashes");
    assert!(!beta_hashes.is_empty());
    let linked = || async {
        let eraser = xoflow_enrich::erase::Eraser::open(&cfg.kafka, &cfg.enrich)
            .await
            .expect("eraser");
        beta_hashes.iter().filter(|h| eraser.is_linked(h)).count()
    };
    assert_eq!(linked().await, beta_hashes.len(), "beta's links");
    let held = |tenant: &'static str| {
        let (cfg, c0) = (&cfg, &c0);
        async move {
            xoflow_enrich::erase::Eraser::open(&cfg.kafka, &cfg.enrich)
                .await
                .expect("eraser")
                .still_held(tenant, c0, &[])
                .await
                .expect("changelog")
        }
    };
    assert!(held("acme").await > 0, "acme's c-0 in the changelog");
    let beta_held = held("beta").await;
    assert!(beta_held > 0, "beta's c-0 in the changelog");
    let receipt = xoflow::erase::erase(
        &cfg,
        "acme",
        xoflow::erase::Subject::Customer("c-0".into()),
        "test",
    )
    .await
    .expect("erasure");
    assert!(receipt.found, "{receipt:?}");
    assert_eq!(held("acme").await, 0, "acme's c-0 left in the changelog");
    assert_eq!(held("beta").await, beta_held, "beta's c-0 erased too");
    assert_eq!(linked().await, beta_hashes.len(), "beta's links erased");
    let c0_rows: Vec<(String, u64)> = ch
        .query(
            "SELECT tenant, countIf(customer_id = 'c-0') FROM events \
             GROUP BY tenant ORDER BY tenant",
        )
        .fetch_all()
        .await
        .expect("rows of c-0");
    assert_eq!(c0_rows[0], ("acme".to_owned(), 0), "{c0_rows:?}");
    assert_eq!(c0_rows[1].0, "beta");
    assert!(c0_rows[1].1 > 0, "beta's c-0 anonymised: {c0_rows:?}");

    running.stop();
    running.wait().await.expect("clean shutdown");
    common::drop_database(&cfg).await;
}
