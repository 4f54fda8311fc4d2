//! The join's cold customers past the recent ones are kept in a local
//! store on disk (`[enrich.cold_customers]`, docs/enrich.md "The memory
//! bound"). A customer thawed from it by its next event continues from the
//! state it left; after a SIGKILL the restarted instance reads every
//! customer back from the changelog into a fresh store, and the next events
//! continue from there too. Real broker, `xoflow enrich` processes, with a
//! history budget of nothing (every customer goes cold after each batch)
//! and two recent customers per partition (nearly all of them on disk).

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::{StageProcess, metric_sum};
use xoflow_proto::v1::{
    CustomerIdentity, EnrichedEvent, Event, Order, OrderStatus, event::Payload,
};

const CUSTOMERS: usize = 200;

fn enrich(cfg: &xoflow::Config, dir: &Path) -> std::process::Command {
    let mut c = common::xoflow_command(cfg, &["enrich"]);
    c.env("XOFLOW_ENRICH__JOIN__MAX_HISTORY_BYTES", "0")
        .env("XOFLOW_ENRICH__COLD_CUSTOMERS__RECENT_CUSTOMERS", "8")
        .env("XOFLOW_ENRICH__COLD_CUSTOMERS__DIRECTORY", dir);
    c
}

fn customer(i: usize) -> String {
    format!("cold-{i}")
}

fn event(id: String, customer: String, at_ms: i64, payload: Payload) -> Event {
    Event {
        event_id: id,
        tenant: "t".into(),
        source: "test".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(at_ms)),
        customer: Some(CustomerIdentity {
            customer_id: customer,
            ..Default::default()
        }),
        payload: Some(payload),
        ..Default::default()
    }
}

fn paid(id: &str, i: usize, at_ms: i64, amount_minor: i64) -> Event {
    event(
        format!("{id}-{i}"),
        customer(i),
        at_ms,
        Payload::Order(Order {
            order_id: format!("{id}-{i}"),
            status: OrderStatus::Paid as i32,
            amount_minor,
            currency: "CNY".into(),
            ..Default::default()
        }),
    )
}

/// The latest output of each of `events`.
async fn outputs(cfg: &xoflow::Config, events: &[Event]) -> BTreeMap<String, EnrichedEvent> {
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let read = common::read_enriched(
        cfg,
        &format!("g-{}-reader", common::unique()),
        Duration::from_secs(120),
        Duration::ZERO,
        |seen| ids.iter().all(|id| seen.contains_key(id)),
    )
    .await;
    let mut read = read;
    read.retain(|id, _| ids.contains(id));
    assert_eq!(read.len(), ids.len(), "outputs read");
    read
}

/// Each output's customer context: its orders in 90 days and its
/// lifetime value, as the customer's state gave them.
fn values(read: &BTreeMap<String, EnrichedEvent>) -> BTreeMap<String, (u32, i64)> {
    read.values()
        .map(|o| {
            let c = o.customer.unwrap_or_default();
            (
                o.resolved_customer_id.clone(),
                (c.orders_90d, c.lifetime_value_minor),
            )
        })
        .collect()
}

fn stores(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("the store directory reads")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("xoflow-customers-")
            })
        })
        .count()
}

async fn on_disk(stage: &StageProcess) -> f64 {
    metric_sum(
        &stage.metrics().await,
        "xoflow_enrich_join_customers_on_disk",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_on_disk_continue_from_their_state_after_their_next_event_and_a_kill() {
    let (cfg, _) = common::config("");
    cfg.kafka
        .ensure_topics(&[&cfg.kafka.topics.events])
        .await
        .expect("topics");
    let dir = tempfile::tempdir().expect("a store directory");
    let now = common::now_ms();
    let stage = StageProcess::spawn(enrich(&cfg, dir.path()), "enrich-cold").await;

    // Two paid orders per customer; every customer is shed cold after the
    // batch, and all but the recent few go to disk.
    let first: Vec<Event> = (0..CUSTOMERS)
        .flat_map(|i| {
            [
                paid("a", i, now - 3 * 3_600_000, 1_000 + i as i64),
                paid("b", i, now - 2 * 3_600_000, 7),
            ]
        })
        .collect();
    common::produce_events(&cfg, &cfg.kafka.topics.events, &first).await;
    outputs(&cfg, &first).await;
    common::wait_for(
        "the cold customers to be on disk",
        Duration::from_secs(30),
        || async { on_disk(&stage).await >= (CUSTOMERS - 8) as f64 },
    )
    .await;

    // A third order each, thawed from disk: the context holds the first
    // two.
    let second: Vec<Event> = (0..CUSTOMERS)
        .map(|i| paid("c", i, now - 3_600_000, 1))
        .collect();
    common::produce_events(&cfg, &cfg.kafka.topics.events, &second).await;
    let want = |orders: u32, extra: i64| {
        (0..CUSTOMERS)
            .map(|i| (customer(i), (orders, 1_007 + i as i64 + extra)))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(values(&outputs(&cfg, &second).await), want(3, 1));
    assert_eq!(stores(dir.path()), 1);

    // Killed: its store is left behind; the restart removes it and reads
    // every customer back from the changelog into a fresh one.
    drop(stage);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stores(dir.path()), 1, "the killed instance's store");
    let stage = StageProcess::spawn(enrich(&cfg, dir.path()), "enrich-cold-again").await;
    let third: Vec<Event> = (0..CUSTOMERS)
        .map(|i| paid("d", i, now - 1_800_000, 2))
        .collect();
    common::produce_events(&cfg, &cfg.kafka.topics.events, &third).await;
    assert_eq!(values(&outputs(&cfg, &third).await), want(4, 3));
    // The gauge follows the batch's shedding, which runs once its outputs
    // are sent: they can be read before it is updated.
    common::wait_for(
        "the cold customers read back to be on disk again",
        Duration::from_secs(30),
        || async { on_disk(&stage).await >= (CUSTOMERS - 8) as f64 },
    )
    .await;
    assert_eq!(stores(dir.path()), 1, "the abandoned store removed");
    stage.stop().await;
    assert_eq!(stores(dir.path()), 0, "the store removed at exit");
}
