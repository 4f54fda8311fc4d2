//! The join's input contract: direct events (on the events topic, keyed by
//! their own customer id, as the collectors key them) are read by the join
//! from the events topic itself and never cross the repartition topic;
//! events resolved through a link, unresolved ones and events keyed
//! otherwise still do, and every event is enriched as before. And the
//! upgrade: a deployment that ran the earlier contract (the resolve group
//! committed on the events topic, the join group never read it) starts the
//! join on the events topic at the resolve group's offset, not at the
//! beginning. Real broker, enrich in this process.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
    message::{Headers, Message as _},
};
use xoflow::Stages;
use xoflow_common::kafka::Outgoing;
use xoflow_proto::{
    Message,
    v1::{CustomerIdentity, EnrichedEvent, Event, IdentityResolution, MetricKind},
};

const TOUCHPOINT: (&str, &str, &str) = ("online-purchase", "after-sales", "delivery-survey");

fn survey(id: &str, customer: CustomerIdentity) -> Event {
    let mut e = common::survey(
        id,
        "acme",
        TOUCHPOINT,
        "sz-01",
        "",
        (MetricKind::Nps, 9.0, 0, 10),
    );
    e.customer = Some(customer);
    e
}

fn customer(id: &str, email_hash: &str) -> CustomerIdentity {
    CustomerIdentity {
        customer_id: id.into(),
        email_hash: email_hash.into(),
        ..Default::default()
    }
}

/// Produces each event keyed by `key(event)`, in order.
async fn produce(cfg: &xoflow::config::Config, events: &[(Vec<u8>, Event)]) {
    let producer = cfg.kafka.batch_producer().expect("producer");
    let encoded: Vec<(&[u8], Vec<u8>)> = events
        .iter()
        .map(|(k, e)| (k.as_slice(), e.encode_to_vec()))
        .collect();
    let records: Vec<Outgoing<'_>> = encoded.iter().map(|(k, v)| Outgoing::keyed(k, v)).collect();
    producer
        .send_all(&cfg.kafka.topics.events, &records)
        .await
        .expect("produce");
}

/// A config whose join holds events at most half a second, with the
/// events topic created: events are produced before the stage starts.
async fn setup() -> (xoflow::config::Config, String) {
    let (cfg, id) = common::config("[enrich.join]\nlateness = \"2s\"\nmax_hold = \"500ms\"\n");
    cfg.kafka
        .ensure_topics(&[&cfg.kafka.topics.events])
        .await
        .expect("topics");
    (cfg, id)
}

/// `n` direct events `{prefix}{i}`, of the customers `c-{first}` to
/// `c-{first + customers - 1}` in turn, keyed by their customer id.
fn direct_events(prefix: &str, n: usize, first: usize, customers: usize) -> Vec<(Vec<u8>, Event)> {
    (0..n)
        .map(|i| {
            let c = format!("c-{}", first + i % customers);
            (
                c.clone().into_bytes(),
                survey(&format!("{prefix}{i}"), customer(&c, "")),
            )
        })
        .collect()
}

/// The enriched outputs by event id (the latest revision of each), once
/// every event of `want` has one (failing the test if one has none after
/// 60 s); read on until nothing came for `linger`.
async fn enriched(
    cfg: &xoflow::config::Config,
    id: &str,
    want: &BTreeSet<String>,
    linger: Duration,
) -> BTreeMap<String, EnrichedEvent> {
    let out = common::read_enriched(
        cfg,
        &format!("g-{id}-check"),
        Duration::from_secs(60),
        linger,
        |seen| want.iter().all(|w| seen.contains_key(w)),
    )
    .await;
    let missing: Vec<_> = want.iter().filter(|w| !out.contains_key(*w)).collect();
    assert!(missing.is_empty(), "never enriched: {missing:?}");
    out
}

/// The ids of the events (not notices) on the repartition topic, once
/// `want` are all there and nothing more came for 5 s.
async fn repartitioned(
    cfg: &xoflow::config::Config,
    id: &str,
    want: &BTreeSet<String>,
) -> BTreeSet<String> {
    common::read_topic(
        cfg,
        &format!("g-{id}-repartition"),
        &format!("{}.repartition", cfg.enrich.group_id),
        Duration::from_secs(60),
        Duration::from_secs(5),
        |ids: &mut BTreeSet<String>, m| {
            let notice = m.headers().is_some_and(|h| {
                h.iter()
                    .any(|h| h.key == "xoflow-link" || h.key == "xoflow-erase")
            });
            if !notice {
                let e = Event::decode(m.payload().unwrap_or_default()).expect("event");
                ids.insert(e.event_id);
            }
        },
        |ids| want.is_subset(ids),
    )
    .await
}

fn resolution(e: &EnrichedEvent) -> (IdentityResolution, String) {
    (
        IdentityResolution::try_from(e.resolution).unwrap_or(IdentityResolution::Unspecified),
        e.resolved_customer_id.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_events_never_cross_the_repartition_topic_and_the_rest_do() {
    let (cfg, id) = setup().await;
    // Direct, produced before the stage starts: the join reads the events
    // topic from its first offset. It teaches the link h-1 → c-1.
    let order = survey("d-teacher", customer("c-1", "h-1"));
    produce(&cfg, &[(b"c-1".to_vec(), order)]).await;
    let running = common::start(&cfg, Stages::ENRICH).await;

    let mut input = direct_events("d-", 40, 10, 13);
    let mut direct: BTreeSet<String> = input.iter().map(|(_, e)| e.event_id.clone()).collect();
    direct.insert("d-teacher".into());
    // Known by e-mail only, keyed by it (as the collectors key it): linked.
    input.push((b"h-1".to_vec(), survey("l-1", customer("", "h-1"))));
    // An e-mail nobody links: unresolved.
    input.push((b"h-zz".to_vec(), survey("u-1", customer("", "h-zz"))));
    // A customer id, keyed by something else (not by xoflow's collectors):
    // not direct, through the repartition topic, resolved DIRECT there.
    input.push((b"k-1".to_vec(), survey("k-1", customer("c-3", ""))));
    produce(&cfg, &input).await;

    let rest: BTreeSet<String> = ["l-1", "u-1", "k-1"].map(String::from).into();
    let want: BTreeSet<String> = direct.union(&rest).cloned().collect();
    let out = enriched(&cfg, &id, &want, Duration::from_secs(1)).await;
    for d in &direct {
        let (r, c) = resolution(&out[d]);
        assert_eq!(r, IdentityResolution::Direct, "{d}");
        assert!(c.starts_with("c-"), "{d}: {c}");
    }
    assert_eq!(
        resolution(&out["l-1"]),
        (IdentityResolution::Linked, "c-1".into())
    );
    assert_eq!(resolution(&out["u-1"]).0, IdentityResolution::Unresolved);
    assert_eq!(
        resolution(&out["k-1"]),
        (IdentityResolution::Direct, "c-3".into())
    );

    let through = repartitioned(&cfg, &id, &rest).await;
    let crossed: Vec<_> = direct.intersection(&through).collect();
    assert!(
        crossed.is_empty(),
        "direct events repartitioned: {crossed:?}"
    );
    for rest in &rest {
        assert!(
            through.contains(rest),
            "{rest} not repartitioned: {through:?}"
        );
    }
    running.stop();
    running.wait().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_deployment_starts_the_join_at_the_resolve_groups_offsets() {
    let (cfg, id) = setup().await;
    let events = cfg.kafka.topics.events.clone();

    // What the earlier version handled: read by its resolve group, which
    // committed past it (and forwarded it all to the repartition topic).
    produce(&cfg, &direct_events("old-", 30, 0, 7)).await;
    let resolve_group = format!("{}.resolve", cfg.enrich.group_id);
    let kafka = cfg.kafka.clone();
    let topic = events.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let resolve = kafka.base_consumer(&resolve_group).expect("consumer");
        let mut tpl = TopicPartitionList::new();
        let mut at = BTreeMap::new();
        for p in 0..kafka.partitions {
            let (_, high) = resolve
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .expect("watermarks");
            tpl.add_partition_offset(&topic, p, Offset::Offset(high))
                .expect("offset");
            at.insert(p, high);
        }
        resolve.commit(&tpl, CommitMode::Sync).expect("commit");
        at
    })
    .await
    .expect("commit task");
    assert_eq!(committed.values().sum::<i64>(), 30);

    // The new version starts; then new events arrive.
    let running = common::start(&cfg, Stages::ENRICH).await;
    let after = direct_events("new-", 30, 0, 7);
    produce(&cfg, &after).await;
    let want: BTreeSet<String> = after.iter().map(|(_, e)| e.event_id.clone()).collect();
    let out = enriched(&cfg, &id, &want, Duration::from_secs(3)).await;
    let again: Vec<_> = out.keys().filter(|k| k.starts_with("old-")).collect();
    assert!(
        again.is_empty(),
        "events the earlier version handled were enriched again: {again:?}"
    );

    // The join group now has its own offsets there, at or past the resolve
    // group's.
    let kafka = cfg.kafka.clone();
    let group = cfg.enrich.group_id.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let join = kafka.base_consumer(&group).expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..kafka.partitions {
            tpl.add_partition(&events, p);
        }
        join.committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed")
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect::<BTreeMap<_, _>>()
    })
    .await
    .expect("committed task");
    for (p, at) in &committed {
        match joined.get(p) {
            Some(Offset::Offset(o)) => assert!(o >= at, "partition {p}: {o} < {at}"),
            other => panic!("partition {p}: the join group has no offset: {other:?}"),
        }
    }
    running.stop();
    running.wait().await.expect("clean shutdown");
}
