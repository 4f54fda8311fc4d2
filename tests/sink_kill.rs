//! The sink's exactly-once effect under SIGKILL, against the real broker and
//! ClickHouse: enriched events (with redelivered copies of some) are loaded
//! while the sink process is killed at random points ten times and
//! restarted; at the end `events` holds every distinct event exactly once,
//! every count in `touchpoint_metrics` equals the distinct events sent,
//! `survey_answers` holds every answer of their surveys once and
//! `revenue_metrics` every paid order once.

mod common;

use std::{process::Stdio, time::Duration};

use rand::Rng;
use tokio::process::{Child, Command};
use xoflow::sample;
use xoflow_common::kafka::Outgoing;
use xoflow_proto::{
    Message,
    v1::{EnrichedEvent, Event},
};

const DISTINCT: usize = 20_000;
const REDELIVERED: usize = 3_000;
const KILLS: usize = 10;

fn spawn_sink(cfg: &xoflow::Config, group: &str) -> Child {
    let mut c = common::xoflow_command(cfg, &["sink"]);
    c.env("XOFLOW_SINK__GROUP_ID", group)
        .env("XOFLOW_SINK__BATCH_ROWS", "1500")
        .env("XOFLOW_SINK__BATCH_MAX_WAIT", "50ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Command::from(c)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn xoflow sink")
}

async fn rows(ch: &clickhouse::Client) -> u64 {
    ch.query("SELECT count() FROM events")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ten_times_under_load_every_event_is_stored_exactly_once() {
    let (cfg, id) = common::config("");
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");

    // The enriched stream as enrich would write it, keyed by event id, with
    // some events redelivered later in the stream. The last TAIL events are
    // never redelivered and come after every copy, in every partition: once
    // all distinct events are stored, every copy has been read (and dropped).
    const TAIL: usize = 400;
    let events: Vec<Event> = sample::events(11, DISTINCT, "acme", &id, common::now_ms());
    let mut rng = rand::rng();
    let mut stream: Vec<&Event> = events[..DISTINCT - TAIL].iter().collect();
    for _ in 0..REDELIVERED {
        let copy = &events[rng.random_range(0..DISTINCT - TAIL)];
        let at = rng.random_range(0..=stream.len());
        stream.insert(at, copy);
    }
    stream.extend(&events[DISTINCT - TAIL..]);
    let encoded: Vec<(Vec<u8>, &str)> = stream
        .iter()
        .map(|e| {
            let en = EnrichedEvent {
                event: Some((*e).clone()),
                resolved_customer_id: e
                    .customer
                    .as_ref()
                    .map(|c| c.customer_id.clone())
                    .unwrap_or_default(),
                ..Default::default()
            };
            (en.encode_to_vec(), e.event_id.as_str())
        })
        .collect();
    let producer = cfg.kafka.batch_producer().expect("producer");
    for chunk in encoded.chunks(5_000) {
        let records: Vec<Outgoing<'_>> = chunk
            .iter()
            .map(|(bytes, key)| Outgoing::keyed(key.as_bytes(), bytes))
            .collect();
        producer
            .send_all(&t.enriched, &records)
            .await
            .expect("produce");
    }

    let ch = cfg.clickhouse.client();
    // Kill points: random row counts the sink must have reached.
    let mut points: Vec<u64> = (0..KILLS)
        .map(|_| rng.random_range(1..(DISTINCT as u64 * 9 / 10)))
        .collect();
    points.sort_unstable();
    for (k, point) in points.iter().enumerate() {
        // A new group each time: positions come from ClickHouse, not from
        // Kafka's committed offsets, so re-reading from the start is safe.
        let mut sink = spawn_sink(&cfg, &format!("g-{id}-sink-{k}"));
        let ch2 = ch.clone();
        let point = *point;
        common::wait_for(
            "the sink to reach its kill point",
            Duration::from_secs(90),
            || {
                let ch = ch2.clone();
                async move { rows(&ch).await >= point }
            },
        )
        .await;
        sink.start_kill().expect("SIGKILL");
        sink.wait().await.expect("reaped");
    }

    let mut sink = spawn_sink(&cfg, &format!("g-{id}-sink-final"));
    common::wait_for(
        "every distinct event stored",
        Duration::from_secs(120),
        || {
            let ch = ch.clone();
            async move { rows(&ch).await >= DISTINCT as u64 }
        },
    )
    .await;
    let pid = sink.id().expect("pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(30), sink.wait())
        .await
        .expect("drains within 30 s")
        .expect("wait");
    assert!(exit.success(), "{exit}");

    let (count, distinct): (u64, u64) = ch
        .query("SELECT count(), uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!((count, distinct), (DISTINCT as u64, DISTINCT as u64));
    let aggregated: (u64, u64, u64) = ch
        .query(
            "SELECT sumMerge(events), sumMerge(support_contacts), sumMerge(orders) \
             FROM touchpoint_metrics",
        )
        .fetch_one()
        .await
        .expect("aggregates");
    let expected = |kind: &str| {
        events
            .iter()
            .filter(|e| e.kind().map(|k| k.as_str()) == Some(kind))
            .count() as u64
    };
    assert_eq!(
        aggregated.0, DISTINCT as u64,
        "events counted in touchpoint_metrics"
    );
    assert_eq!(aggregated.1, expected("call"), "support contacts");
    // The sample orders are all PAID, so none count as placed.
    assert_eq!(aggregated.2, 0);
    // Every answer of every survey once in survey_answers, no FINAL; every
    // paid order once in revenue_metrics.
    let answers: u64 = events
        .iter()
        .map(|e| match &e.payload {
            Some(xoflow_proto::v1::event::Payload::Survey(s)) => s.answers.len() as u64,
            _ => 0,
        })
        .sum();
    assert!(answers > 0);
    let (rows, distinct): (u64, u64) = ch
        .query("SELECT count(), uniqExact(event_id, answer_index) FROM survey_answers")
        .fetch_one()
        .await
        .expect("survey_answers");
    assert_eq!((rows, distinct), (answers, answers), "survey_answers");
    let paid: u64 = ch
        .query("SELECT sumMerge(paid_orders) FROM revenue_metrics")
        .fetch_one()
        .await
        .expect("revenue_metrics");
    assert_eq!(paid, expected("order"), "paid orders");
    common::drop_database(&cfg).await;
}
