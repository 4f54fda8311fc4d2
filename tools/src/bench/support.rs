//! What several measurements share: ClickHouse row counts, a flow's
//! steady-state rate ([`Flow`]), keyed produces, a load generator on a
//! thread of its own ([`send_apart`]), a pipeline on its own database and
//! topics, and waiting for readiness.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use xoflow_app::{Config, Running, Stages};
use xoflow_common::kafka::Outgoing;
use xoflow_common::shutdown::Shutdown;

use super::{
    process::thread_cpu_seconds,
    report::Figure,
    retention::{Consumed, Retention},
};
use crate::datagen::load;

/// What a follower counts in a pipeline's ClickHouse database.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rows<'a> {
    /// Every row of a table (`count()`).
    Of(&'a str),
    /// The events visible to BI: their revision 0, of which the sink keeps
    /// exactly one per event. Every row would count an event twice once it
    /// is repaired or emitted again with its linked customer (revision 1),
    /// and a run would seem to end, or a row to be visible, before it is.
    ///
    /// Read from the bench's own view (see [`count_visible`]), not from
    /// `events`: ClickHouse 18.16 has no trivial `count()`, so counting the
    /// table reads its `revision` column whole, 7.5 ms of the server's CPU
    /// per query at 1M rows against 2.9 ms for the view's few rows, and the
    /// followers ask 20-100 times a second on the two cores the pipeline
    /// is measured on ("The bench's own queries", BENCHMARKS.md).
    /// `XOFLOW_BENCH_FOLLOW=scan` counts the table as before 2026-12-06,
    /// every 10 ms (open loop) or 20 ms (closed loop), to compare the two.
    Visible,
}

/// The bench's view of a pipeline's visible events (see [`Rows::Visible`]).
const VISIBLE_VIEW: &str = "bench_visible";

impl Rows<'_> {
    fn query(&self) -> String {
        match self {
            Rows::Of(table) => format!("SELECT count() FROM {table}"),
            Rows::Visible if scan_follow() => {
                "SELECT count() FROM events WHERE revision = 0".into()
            }
            // One thread: the answer is a handful of rows, and 18.16 sets up
            // a query's threads anew each time (2.9 ms of its CPU per query
            // with one, 4.2 ms with two).
            Rows::Visible => format!("SELECT sum(n) FROM {VISIBLE_VIEW} SETTINGS max_threads = 1"),
        }
    }

    /// How often a follower asks. The view is asked every 50 ms: a row
    /// seen up to 50 ms late makes a latency read that much longer, never
    /// shorter, and a steady rate's 10%/90% marks, tens of seconds apart,
    /// move by less than 0.3%.
    pub(super) fn every(&self, scan_every: Duration) -> Duration {
        match self {
            Rows::Visible if !scan_follow() => Duration::from_millis(50),
            _ => scan_every,
        }
    }
}

/// `XOFLOW_BENCH_FOLLOW=scan`: the followers count `events` as before
/// 2026-12-06 (see [`Rows::Visible`]), and the view is not created.
fn scan_follow() -> bool {
    static SCAN: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("XOFLOW_BENCH_FOLLOW").is_ok_and(|v| v == "scan")
    });
    *SCAN
}

/// Adds the view [`Rows::Visible`] reads to the pipeline's database, once
/// its stages created the schema and before any event is sent: every
/// insert into `events` adds the count of its revision-0 rows as one row,
/// which merges sum up. A row is counted when its whole insert, views
/// included, has been written: at most a few milliseconds after it is
/// visible in `events`.
pub(super) async fn count_visible(ch: &clickhouse::Client, database: &str) -> anyhow::Result<()> {
    if scan_follow() {
        return Ok(());
    }
    ch.query(&format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{VISIBLE_VIEW} \
         ENGINE = SummingMergeTree() ORDER BY k \
         AS SELECT toUInt8(0) AS k, count() AS n FROM {database}.events WHERE revision = 0"
    ))
    .execute()
    .await
    .with_context(|| format!("creating the bench's view {database}.{VISIBLE_VIEW}"))
}

/// How many `rows` there are now (0 if ClickHouse cannot say).
pub(super) async fn count(ch: &clickhouse::Client, rows: Rows<'_>) -> u64 {
    ch.query(&rows.query())
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

/// Waits until there are `n` `rows` (polled like [`follow_rows`]).
pub(super) async fn wait_rows(
    ch: &clickhouse::Client,
    rows: Rows<'_>,
    n: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    follow_rows(ch, rows, 0, &mut Flow::start(n), limit).await
}

/// A flow of `n` items (records consumed, rows visible) timed two ways
/// from the counts observed as it goes:
///
/// - steady state: the items between the first count at or past 10% of
///   `n` and the first at or past 90%, over the time between those two
///   observations, so that neither the warm-up (group joins, first
///   fetches, empty caches) nor the tail (the sink's batch age on the last
///   rows, the last partition's stragglers) weighs in;
/// - whole run: `n` over the time from the start to the last item, the
///   method of every run published before 2026-12-03, kept beside it.
///
/// A flow too short to tell the two marks apart (a smoke run's events land
/// in one insert) reports its whole-run rate as its steady rate.
#[derive(Debug, Clone)]
pub(super) struct Flow {
    n: u64,
    start: Instant,
    low: Option<(Instant, u64)>,
    high: Option<(Instant, u64)>,
    end: Option<Instant>,
}

impl Flow {
    /// A flow of `n` items starting now.
    pub(super) fn start(n: u64) -> Self {
        Flow {
            n,
            start: Instant::now(),
            low: None,
            high: None,
            end: None,
        }
    }

    /// Records that `count` items have passed by now.
    pub(super) fn observe(&mut self, count: u64) {
        self.observe_at(Instant::now(), count);
    }

    fn observe_at(&mut self, at: Instant, count: u64) {
        if self.low.is_none() && count * 10 >= self.n {
            self.low = Some((at, count));
        }
        if self.high.is_none() && count * 10 >= self.n * 9 {
            self.high = Some((at, count));
        }
        if self.end.is_none() && count >= self.n {
            self.end = Some(at);
        }
    }

    /// The steady-state rate with the whole-run rate beside it, per second.
    pub(super) fn rate(&self) -> Figure {
        let end = self.end.unwrap_or_else(Instant::now);
        let whole = self.n as f64 / end.duration_since(self.start).as_secs_f64().max(1e-9);
        let steady = match (self.low, self.high) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 && c1 > c0 => {
                (c1 - c0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => whole,
        };
        Figure {
            value: steady,
            whole_run: Some(whole),
        }
    }
}

/// Polls the count of `rows` into `flow` (rows past the `base` already
/// there) until the flow has passed whole: every 20 ms, or as
/// [`Rows::every`] says.
pub(super) async fn follow_rows(
    ch: &clickhouse::Client,
    rows: Rows<'_>,
    base: u64,
    flow: &mut Flow,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        let c = count(ch, rows).await.saturating_sub(base);
        flow.observe(c);
        if c >= flow.n {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{rows:?}: {c} of {} rows after {limit:?}", flow.n);
        }
        tokio::time::sleep(rows.every(Duration::from_millis(20))).await;
    }
}

/// Polls `consumer` (subscribed to `topic`, still empty) until the group
/// gave it partitions: a reader that joins before its input flows sees the
/// flow as it is written, and the seconds of the join are not in its rate.
pub(super) async fn wait_assigned(
    consumer: &rdkafka::consumer::StreamConsumer,
    topic: &str,
) -> anyhow::Result<()> {
    use rdkafka::consumer::Consumer as _;
    let until = Instant::now() + Duration::from_secs(60);
    while consumer.assignment()?.count() == 0 {
        if Instant::now() > until {
            bail!("{topic}: reader got no partitions");
        }
        // Polling drives the group join; the topic is still empty.
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    Ok(())
}

/// Produces encoded records keyed by event id, acknowledged as a batch.
pub(super) async fn send_keyed(
    producer: &xoflow_common::kafka::BatchProducer,
    topic: &str,
    records: &[(Vec<u8>, &str)],
) -> anyhow::Result<()> {
    let out: Vec<Outgoing<'_>> = records
        .iter()
        .map(|(b, k)| Outgoing::keyed(k.as_bytes(), b))
        .collect();
    producer.send_all(topic, &out).await?;
    Ok(())
}

/// The load generator's thread (see [`send_apart`]).
const LOAD_THREAD: &str = "bench-load";

/// Sends `events` as [`load::send`] does, on a thread and a runtime of its
/// own (the client's connection and requests included), and returns its
/// report with the CPU seconds that thread used. A client is not part of
/// the pipeline it feeds: on the stages' runtime its encoding and HTTP/2
/// framing were charged to xoflow's CPU per event and competed with the
/// stages for the same worker threads.
pub(super) async fn send_apart(
    addr: String,
    events: Vec<xoflow_proto::v1::Event>,
    opts: load::LoadOptions,
) -> anyhow::Result<(load::LoadReport, f64)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(LOAD_THREAD.into())
        .spawn(move || {
            let sent = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(load::send(&addr, events, &opts)));
            // Read before the thread ends: its `/proc` entry goes with it.
            let cpu = thread_cpu_seconds().unwrap_or(0.0);
            let _ = tx.send(sent.map(|r| (r, cpu)));
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the load generator's thread ended without a report"))?
}

/// A histogram for the bench's latencies: from 1 to `max` units (µs in the
/// open loop, ms for alerts), three significant digits.
pub(super) fn latency_histogram(
    max: u64,
) -> Result<hdrhistogram::Histogram<u64>, hdrhistogram::CreationError> {
    hdrhistogram::Histogram::new_with_bounds(1, max, 3)
}

/// `n` of `events`, cycled, with every id suffixed `-<tag><round>-<i>`: a
/// round the pipeline has not seen. Each pass over `events` after the
/// first pass of round 0 is a generation of customers of its own (see
/// [`new_customers`]): replayed to the same customers, the same event times
/// would land behind their histories and be measured as repairs, not as
/// the live flow the open loops stand for.
pub(super) fn round_of(
    events: &[xoflow_proto::v1::Event],
    tag: &str,
    round: usize,
    n: usize,
) -> Vec<xoflow_proto::v1::Event> {
    let len = events.len().max(1);
    events
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e.event_id = format!("{}-{tag}{round}-{i}", e.event_id);
            let generation = round * 100_000 + i / len;
            if generation > 0 {
                new_customers(&mut e, generation);
            }
            e
        })
        .collect()
}

/// Rewrites the raw identity of `e` (before ingest: the keys ingest hashes)
/// for `generation`, consistently, so that the events of one generation
/// still link the same customer's keys to each other and to no other
/// generation's. A phone becomes 14 digits drawn from its hash (a valid
/// E.164 number of 15): a run's few million phones meet in that space less
/// than once a run, where the 8 digits of the generator's shape were shared
/// by thousands of generations' customers, whose links then moved from one
/// customer to another, which a live stream rarely does.
pub fn new_customers(e: &mut xoflow_proto::v1::Event, generation: usize) {
    let Some(c) = e.customer.as_mut() else {
        return;
    };
    let g = format!("g{generation}");
    if !c.customer_id.is_empty() {
        c.customer_id = format!("{}-{g}", c.customer_id);
    }
    if let Some((local, domain)) = c.email.split_once('@') {
        c.email = format!("{local}.{g}@{domain}");
    }
    if !c.phone.is_empty() {
        use std::hash::Hasher as _;
        let mut h = std::hash::DefaultHasher::new();
        h.write(c.phone.as_bytes());
        h.write_usize(generation);
        let d = h.finish() % 100_000_000_000_000;
        c.phone = format!("+9 {:07} {:07}", d / 10_000_000, d % 10_000_000);
    }
    if !c.social_handle.is_empty() {
        c.social_handle = format!("{}_{g}", c.social_handle);
    }
    if !c.device_id.is_empty() {
        c.device_id = format!("{}-{g}", c.device_id);
    }
}

/// A whole pipeline of its own: the database, topics and consumer groups
/// get `tag`. (Enrich's internal topics and state are named after its
/// group: a measurement sharing the group would start from the join state
/// an earlier one left, and its events would land in those customers'
/// histories as repairs.)
pub(super) fn own_pipeline(cfg: &Config, tag: &str) -> Config {
    let mut cfg = cfg.clone();
    cfg.clickhouse.database.push_str(&format!("_{tag}"));
    cfg.kafka.topics.suffix(&format!(".{tag}"));
    for group in [
        &mut cfg.enrich.group_id,
        &mut cfg.sink.group_id,
        &mut cfg.alert.group_id,
    ] {
        group.push_str(&format!("-{tag}"));
    }
    cfg
}

/// Starts every stage of `cfg` in this process, waits until they report
/// ready, then adds the view the row followers read ([`count_visible`]):
/// the pipeline a measurement feeds, and a client of its database.
pub(super) async fn started(
    cfg: &Config,
    consumed: Consumed,
) -> anyhow::Result<(Running, clickhouse::Client, Retention)> {
    let ch = cfg.clickhouse.client();
    let running = xoflow_app::start(cfg.clone(), Stages::ALL, Shutdown::new()).await?;
    ready(&running).await?;
    count_visible(&ch, &cfg.clickhouse.database).await?;
    let retention = Retention::start(cfg, consumed)?;
    Ok((running, ch, retention))
}

/// Waits until every started stage reports ready.
pub(super) async fn ready(running: &Running) -> anyhow::Result<()> {
    let since = Instant::now();
    while running.health.check().is_err() {
        if since.elapsed() > Duration::from_secs(60) {
            bail!("stages not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_times_its_middle_and_its_whole_run_apart() {
        // 1,000 items: a slow first second (warm-up), 800 in the next two
        // seconds, then a two-second tail for the last 100.
        let mut f = Flow::start(1_000);
        let start = f.start;
        let points = [(1_000, 100), (2_000, 500), (3_000, 900), (5_000, 1_000)];
        for (ms, c) in points {
            f.observe_at(start + Duration::from_millis(ms), c);
        }
        let r = f.rate();
        assert!((r.value - 400.0).abs() < 1e-6, "{}", r.value);
        assert_eq!(r.whole_run.map(|w| (w - 200.0).abs() < 1e-6), Some(true));
    }

    #[test]
    fn every_pass_after_the_first_is_a_generation_of_customers_of_its_own() {
        use xoflow_proto::v1::{CustomerIdentity, Event};
        let e = |id: &str, customer: &str, email: &str| Event {
            event_id: id.into(),
            customer: Some(CustomerIdentity {
                customer_id: customer.into(),
                email: email.into(),
                phone: "+86 139 0001 0002".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let events = [e("a", "c1", "x@m.example"), e("b", "", "x@m.example")];
        let r = round_of(&events, "r", 0, 5);
        let ids: Vec<&str> = r.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["a-r0-0", "b-r0-1", "a-r0-2", "b-r0-3", "a-r0-4"]);
        let who = |e: &Event| e.customer.clone().unwrap_or_default();
        // The first pass as generated, the second one rewritten, its two
        // events still linked by the same e-mail and phone.
        assert_eq!(who(&r[0]).customer_id, "c1");
        assert_eq!(who(&r[1]).email, "x@m.example");
        let (a, b) = (who(&r[2]), who(&r[3]));
        assert_eq!(a.customer_id, "c1-g1");
        assert_eq!(
            (a.email.as_str(), b.email.as_str()),
            ("x.g1@m.example", "x.g1@m.example")
        );
        assert_eq!(a.phone, b.phone);
        assert_ne!(a.phone, who(&r[0]).phone);
        assert!(
            a.phone.starts_with("+9 ") && a.phone.len() == 18,
            "{}",
            a.phone
        );
        // Ingest takes it as the number it is, not as a rejected field.
        assert_eq!(
            xoflow_ingest::normalise::normalise_phone(&a.phone).map(|p| p.len()),
            Some(16)
        );
        // Another round: other generations from its first pass.
        assert_eq!(
            who(&round_of(&events, "r", 1, 1)[0]).customer_id,
            "c1-g100000"
        );
    }

    #[test]
    fn a_flow_seen_in_one_step_reports_its_whole_run() {
        let mut f = Flow::start(100);
        let at = f.start + Duration::from_millis(500);
        f.observe_at(at, 100);
        let r = f.rate();
        assert_eq!(Some(r.value), r.whole_run);
    }
}
