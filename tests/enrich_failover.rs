//! Two enrich instances share the work and one of them goes away while
//! the second wave is in flight; the enriched output (first copy of each
//! event, which is what the sink keeps) must equal a single-instance run on
//! the same input. Real broker, `xoflow enrich` processes.
//!
//! - Crash: an instance is SIGKILLed and comes back under its instance name
//!   (static membership), takes back its partitions, restores their join
//!   state from the changelog and continues. (The hand-over to a survivor,
//!   dynamic members, is `tests/scale_out.rs`.)
//!   A third wave of the same customers follows, enriched with the state
//!   that moved through the changelog.
//!
//! The input comes in waves; the second has new journeys of the first
//! wave's customers (whose state moves with their partitions) and new
//! customers, the third the same customers again. The lateness rule
//! is set wide in event time (`lateness = 30days`) so that each wave is
//! applied in event-time order once held `max_hold` (3 s) — the order does
//! not then depend on how the broker interleaves partitions, and the two
//! runs are comparable event by event. The first wave is produced only once
//! every instance logged its assignment: a rebalance while it is read
//! could hold back one side of a customer's events longer than `max_hold`
//! (seen once in ten runs before this wait: 34 events enriched without
//! their order).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use rand::Rng;
use rdkafka::{consumer::StreamConsumer, message::Message as _};
use tokio::process::{Child, Command};
use xoflow_proto::{
    Message,
    v1::{EnrichedEvent, Event},
};
use xoflow_tools::scenario;

const START: i64 = 1_800_000_000_000;

struct Topics {
    events: String,
    enriched: String,
    dead_letters: String,
    group: String,
}

impl Topics {
    fn new(tag: &str) -> Self {
        let id = common::unique();
        Topics {
            events: format!("t-{id}-{tag}.events"),
            enriched: format!("t-{id}-{tag}.enriched"),
            dead_letters: format!("t-{id}-{tag}.dead-letters"),
            group: format!("g-{id}-{tag}-enrich"),
        }
    }
}

/// `instance`: a static member's name, or a dynamic member when `None`.
/// Each process logs to its own file (named on the test's output), so a
/// failure can be read back: group joins, assignments, restores.
fn spawn_enrich(kafka: &str, t: &Topics, instance: Option<&str>) -> (Child, PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "{}-{}-{}.log",
        t.group,
        instance.unwrap_or("dynamic"),
        common::unique()
    ));
    eprintln!("enrich instance {instance:?} logs to {}", path.display());
    let log = std::fs::File::create(&path).expect("log file");
    let child = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xoflow"));
        if let Some(name) = instance {
            command.env("XOFLOW_ENRICH__INSTANCE_ID", name);
        }
        command
            .arg("enrich")
            .env("XOFLOW_KAFKA__BROKERS", kafka)
            .env("XOFLOW_KAFKA__PARTITIONS", "4")
            .env("XOFLOW_KAFKA__TOPICS__EVENTS", &t.events)
            .env(
                "XOFLOW_KAFKA__TOPICS__BACKFILL",
                format!("{}.backfill", t.events),
            )
            .env("XOFLOW_KAFKA__TOPICS__ENRICHED", &t.enriched)
            .env("XOFLOW_KAFKA__TOPICS__DEAD_LETTERS", &t.dead_letters)
            .env(
                "XOFLOW_KAFKA__TOPICS__ALERTS",
                format!("{}.alerts", t.dead_letters),
            )
            .env("XOFLOW_ENRICH__GROUP_ID", &t.group)
            .env("XOFLOW_ENRICH__BATCH_MAX_WAIT", "20ms")
            .env("XOFLOW_ENRICH__JOIN__LATENESS", "30days")
            .env("XOFLOW_ENRICH__JOIN__MAX_HOLD", "3s")
            .env("XOFLOW_ADMIN__ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn xoflow enrich")
    };
    (child, path)
}

/// Waits until every instance logged input partitions of `t.events` for
/// its resolve consumer and at least one join partition: with two
/// members that is the group's settled assignment. Input produced before
/// would meet a rebalance that can delay one side of a customer's events
/// past `max_hold`, and the output would then depend on timing.
async fn settled(t: &Topics, logs: &[&PathBuf]) {
    let until = Instant::now() + Duration::from_secs(120);
    let inputs = format!("{}/", t.events);
    loop {
        let ready = logs.iter().all(|path| {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            log.lines()
                .any(|l| l.contains("resolve partitions assigned") && l.contains(&inputs))
                && log
                    .lines()
                    .any(|l| l.contains("join partitions assigned") && !l.contains("[]"))
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < until,
            "enrich instances not assigned within 120 s: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `topic` from the start, keeping the first copy of each event
/// (without its wall-clock `enriched_at`), until `want` ids are seen.
struct Reader {
    consumer: StreamConsumer,
    first: BTreeMap<String, EnrichedEvent>,
    copies: usize,
}

impl Reader {
    fn new(cfg: &xoflow::Config, topic: &str) -> Self {
        let consumer = common::subscriber(cfg, "reader", topic);
        Reader {
            consumer,
            first: BTreeMap::new(),
            copies: 0,
        }
    }

    async fn until(&mut self, want: &BTreeSet<String>, deadline: Duration) {
        let until = Instant::now() + deadline;
        while !want.iter().all(|id| self.first.contains_key(id)) {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out: {} of {} events enriched",
                want.iter()
                    .filter(|id| self.first.contains_key(*id))
                    .count(),
                want.len()
            );
            let Ok(m) = tokio::time::timeout(left, self.consumer.recv()).await else {
                continue;
            };
            let m = m.expect("read enriched");
            let mut e = EnrichedEvent::decode(m.payload().unwrap_or_default()).expect("decode");
            e.enriched_at = None;
            let id = e
                .event
                .as_ref()
                .map(|e| e.event_id.clone())
                .unwrap_or_default();
            self.copies += 1;
            self.first.entry(id).or_insert(e);
        }
    }
}

fn ids(events: &[Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.event_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_restarted_restores_its_partitions_with_the_same_output() {
    let (cfg, _) = common::config("");
    let kafka = cfg.kafka.brokers.clone();
    let wave1 = scenario::journeys(11, 0..150, START);
    // Wave 2: the same customers again (their state from wave 1 must be
    // restored where a partition moved) and new ones.
    let wave2 = scenario::journeys_tagged(12, 0..300, START + 3_600_000, "w2-");
    // Wave 3, once an instance is gone: the same customers again, so their
    // state must have moved with their partitions.
    let wave3 = scenario::journeys_tagged(13, 0..300, START + 7_200_000, "w3-");
    let (all1, all2) = (ids(&wave1), ids(&wave2));
    let mut all = all1.clone();
    all.extend(all2.iter().cloned());
    let mut every = all.clone();
    every.extend(ids(&wave3));

    // The reference: one instance.
    let single = Topics::new("single");
    cfg.kafka
        .ensure_topics(&[&single.events])
        .await
        .expect("topics");
    let (mut only, only_log) = spawn_enrich(&kafka, &single, Some("only"));
    settled(&single, &[&only_log]).await;
    common::produce_events(&cfg, &single.events, &wave1).await;
    let mut reference = Reader::new(&cfg, &single.enriched);
    reference.until(&all1, Duration::from_secs(120)).await;
    common::produce_events(&cfg, &single.events, &wave2).await;
    reference.until(&all, Duration::from_secs(120)).await;
    common::produce_events(&cfg, &single.events, &wave3).await;
    reference.until(&every, Duration::from_secs(120)).await;
    only.start_kill().expect("stop");

    // Two instances; one killed while the second wave is in flight.
    let pair = Topics::new("pair");
    cfg.kafka
        .ensure_topics(&[&pair.events])
        .await
        .expect("topics");
    let (mut a, a_log) = spawn_enrich(&kafka, &pair, Some("a"));
    let (mut b, b_log) = spawn_enrich(&kafka, &pair, Some("b"));
    settled(&pair, &[&a_log, &b_log]).await;
    common::produce_events(&cfg, &pair.events, &wave1).await;
    let mut out = Reader::new(&cfg, &pair.enriched);
    out.until(&all1, Duration::from_secs(120)).await;
    common::produce_events(&cfg, &pair.events, &wave2).await;
    let delay = rand::rng().random_range(500..2_500);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    a.start_kill().expect("SIGKILL");
    a.wait().await.expect("reaped");
    // The survivor goes on with its own partitions; the killed instance
    // comes back under its name, takes back its partitions and restores
    // their state from the changelog.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut a, _) = spawn_enrich(&kafka, &pair, Some("a"));
    out.until(&all, Duration::from_secs(180)).await;
    common::produce_events(&cfg, &pair.events, &wave3).await;
    out.until(&every, Duration::from_secs(180)).await;
    assert_eq!(out.first.len(), reference.first.len());
    let mut differing = Vec::new();
    for (id, want) in &reference.first {
        if out.first.get(id) != Some(want) {
            differing.push(id.clone());
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {} events enriched differently after the kill (killed {delay} ms into wave 2), e.g. {:?}",
        differing.len(),
        every.len(),
        &differing[..differing.len().min(5)]
    );
    eprintln!(
        "{} events, killed {delay} ms into wave 2; {} copies read in the two-instance run",
        every.len(),
        out.copies
    );
    let _ = a.start_kill();
    let _ = b.start_kill();
}
