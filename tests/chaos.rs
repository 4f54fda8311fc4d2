//! The chaos suite: the pipeline as ops run it (three `xoflow` processes,
//! one per stage, on a broker that keeps its data in SQLite and a
//! ClickHouse, both of this test's own), under a steady HTTP load, through
//! every fault an operator meets:
//!
//! 1. each stage SIGKILLed and started again, `KILLS` times per stage;
//! 2. ClickHouse SIGKILLed and kept away for `OUTAGE` (the sink's old retry
//!    budget gave up after ~17 s): the sink neither exits nor reports
//!    live-but-ready, it says `clickhouse_unreachable`;
//! 3. the broker SIGKILLed and started again on the same storage after
//!    `OUTAGE`: every stage says `kafka_unreachable`, none exits, all turn
//!    ready by themselves once it is back;
//! 4. overload: a burst of concurrent requests over the in-flight limit is
//!    answered 429 with `Retry-After` at once;
//! 5. slow clients: half-open connections held on the collector port do not
//!    stop a normal request nor the admin endpoints.
//!
//! It ends with the invariant: every acknowledged event stored exactly
//! once (one revision-0 row per event and no (event id, revision) stored
//! twice, every acknowledged id present, nothing stored that was never
//! sent), aggregated exactly once (`sumMerge(events)` of
//! `touchpoint_metrics` = the number of events), and
//! `xoflow sink-status` clean (exit 0).
//!
//! Short form (CI, README command 2): 2 kills per stage, 20 s outages,
//! about three minutes. Long form (documented in docs/operations.md):
//!
//! ```sh
//! XOFLOW_CHAOS_KILLS=20 XOFLOW_CHAOS_OUTAGE_SECS=300 \
//!   cargo nextest run --test chaos --no-capture
//! ```

mod common;

use std::{
    collections::HashSet,
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};
use xoflow_proto::v1::IngestResponse;

/// Events per load request, and the pause between requests.
const BATCH: usize = 40;
const PACE: Duration = Duration::from_millis(40);
/// Bound on each wait for the pipeline (a stage turning ready, the last
/// event stored): far above what it takes, so a hang fails and a busy
/// machine does not.
const BOUND: Duration = Duration::from_secs(180);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ingest,
    Enrich,
    Sink,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Ingest => "ingest",
            Kind::Enrich => "enrich",
            Kind::Sink => "sink",
        }
    }
}

/// What every process of this run shares: where the servers are, its
/// topics, groups and database.
#[derive(Clone)]
struct Setup {
    id: String,
    kafka: String,
    clickhouse: String,
    logs: PathBuf,
}

impl Setup {
    fn command(&self, args: &[&str]) -> Command {
        let id = &self.id;
        let mut c = Command::new(env!("CARGO_BIN_EXE_xoflow"));
        c.args(args)
            .env("XOFLOW_KAFKA__BROKERS", &self.kafka)
            .env("XOFLOW_KAFKA__PARTITIONS", "4")
            .env("XOFLOW_KAFKA__MESSAGE_TIMEOUT", "10s")
            .env("XOFLOW_KAFKA__TOPICS__EVENTS", format!("t-{id}.events"))
            .env("XOFLOW_KAFKA__TOPICS__BACKFILL", format!("t-{id}.backfill"))
            .env("XOFLOW_KAFKA__TOPICS__ENRICHED", format!("t-{id}.enriched"))
            .env("XOFLOW_KAFKA__TOPICS__DEAD_LETTERS", format!("t-{id}.dead"))
            .env("XOFLOW_KAFKA__TOPICS__ALERTS", format!("t-{id}.alerts"))
            .env("XOFLOW_ALERT__GROUP_ID", format!("g-{id}-alert"))
            .env("XOFLOW_ALERT__API_ADDR", "127.0.0.1:0")
            .env("XOFLOW_ENRICH__GROUP_ID", format!("g-{id}-enrich"))
            .env("XOFLOW_ENRICH__BATCH_MAX_WAIT", "20ms")
            .env("XOFLOW_SINK__GROUP_ID", format!("g-{id}-sink"))
            .env("XOFLOW_SINK__BATCH_MAX_WAIT", "200ms")
            .env("XOFLOW_SINK__RETRY_MAX_BACKOFF", "2s")
            .env("XOFLOW_CLICKHOUSE__URL", &self.clickhouse)
            .env("XOFLOW_CLICKHOUSE__DATABASE", format!("xo_chaos_{id}"))
            .env("XOFLOW_ADMIN__ADDR", "127.0.0.1:0")
            .env("XOFLOW_INGEST__GRPC_ADDR", "127.0.0.1:0")
            .env("XOFLOW_INGEST__HTTP_ADDR", "127.0.0.1:0")
            // Low enough that the overload burst crosses it.
            .env("XOFLOW_INGEST__MAX_BATCH_EVENTS", "2000")
            .env("XOFLOW_INGEST__MAX_IN_FLIGHT_EVENTS", "6000")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }
}

/// One stage process, with the addresses it logged at start.
struct Stage {
    kind: Kind,
    child: Child,
    admin: String,
    http: Option<SocketAddr>,
    starts: usize,
}

impl Stage {
    async fn spawn(setup: &Setup, kind: Kind, starts: usize) -> Stage {
        let mut child = setup
            .command(&[kind.arg()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xoflow");
        let log_path = setup.logs.join(format!("{}-{starts}.log", kind.arg()));
        // Small writes to a local file: blocking is harmless in a test.
        let mut log = std::fs::File::create(&log_path).expect("log");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let started = tokio::time::timeout(BOUND, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
                if line.contains("xoflow started") {
                    return line;
                }
            }
            panic!(
                "{kind:?} exited before starting; log {}",
                log_path.display()
            );
        })
        .await
        .expect("start-up log line");
        // Keep the log flowing to its file so the child never blocks.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
            }
        });
        Stage {
            kind,
            admin: common::log_field(&started, "admin=")
                .expect("admin")
                .to_string(),
            http: common::log_field(&started, "http=Some(").and_then(|a| a.parse().ok()),
            child,
            starts,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        common::http_get(&self.admin, path).await
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    async fn wait_ready(&self, why: &str) {
        let admin = self.admin.clone();
        common::wait_for(
            &format!("{:?} to turn ready ({why})", self.kind),
            BOUND,
            || {
                let admin = admin.clone();
                async move { common::http_get(&admin, "/health/ready").await.0 == 200 }
            },
        )
        .await;
    }

    /// SIGKILL, then a new process of the same kind.
    async fn kill_and_restart(&mut self, setup: &Setup) {
        let _ = self.child.kill().await;
        *self = Stage::spawn(setup, self.kind, self.starts + 1).await;
    }
}

/// An HTTP answer: status, headers (lower-cased), body.
struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

/// One `POST /v1/events` on a fresh connection. A stage killed mid-request
/// is an error here, never a panic: the load goes on.
async fn post(addr: SocketAddr, body: &[u8]) -> std::io::Result<Answer> {
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok(Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// What the load generator saw.
#[derive(Default)]
struct Ledger {
    sent: HashSet<String>,
    acknowledged: HashSet<String>,
    refused_requests: u64,
    failed_requests: u64,
}

/// Posts batches to whichever ingest runs now, until `stop`.
async fn load(
    id: String,
    ingest: Arc<Mutex<Option<SocketAddr>>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let addr = *ingest.lock().expect("lock");
        let Some(addr) = addr else {
            tokio::time::sleep(PACE).await;
            continue;
        };
        let prefix = format!("{id}-l{n}");
        let events = xoflow::sample::events(n, BATCH, "acme", &prefix, common::now_ms());
        let body = serde_json::to_string(&events).expect("json");
        ledger
            .lock()
            .expect("lock")
            .sent
            .extend(events.iter().map(|e| e.event_id.clone()));
        let answer = tokio::time::timeout(Duration::from_secs(30), post(addr, body.as_bytes()))
            .await
            .ok()
            .and_then(Result::ok);
        {
            let mut l = ledger.lock().expect("lock");
            match answer {
                Some(r) if r.status == 200 => {
                    let r: IngestResponse = serde_json::from_slice(&r.body).expect("answer json");
                    l.acknowledged.extend(
                        r.results
                            .into_iter()
                            .filter(|x| x.accepted)
                            .map(|x| x.event_id),
                    );
                }
                Some(r) if r.status == 429 || r.status == 503 => l.refused_requests += 1,
                _ => l.failed_requests += 1,
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct StoredId {
    event_id: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Totals {
    events: u64,
    distinct_events: u64,
    aggregated: u64,
}

/// Polls until `check` holds for `stage`'s `/health/ready` and
/// `/health/live`, failing if the process exits meanwhile.
async fn expect_health(stage: &mut Stage, what: &str, ready_has: &str) {
    let until = Instant::now() + BOUND;
    loop {
        assert!(!stage.exited(), "{:?} exited during {what}", stage.kind);
        let (code, body) = stage.get("/health/ready").await;
        if code == 503 && body.contains(ready_has) {
            let (live, text) = stage.get("/health/live").await;
            assert_eq!(live, 200, "{:?} not live during {what}: {text}", stage.kind);
            println!("{:?} during {what}: {body}", stage.kind);
            return;
        }
        assert!(
            Instant::now() < until,
            "{:?} never said {ready_has} during {what}; last: {code} {body}",
            stage.kind
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_ends_with_each_acknowledged_event_stored_and_counted_once() {
    let kills = setting("XOFLOW_CHAOS_KILLS", 2);
    let outage = Duration::from_secs(setting("XOFLOW_CHAOS_OUTAGE_SECS", 20));
    let id = common::unique();
    let scratch = std::env::temp_dir().join(format!("xoflow-chaos-{id}"));
    let logs = scratch.join("logs");
    std::fs::create_dir_all(&logs).expect("scratch");
    println!(
        "logs in {} (the broker's in its storage dir)",
        logs.display()
    );

    let mut broker = common::OwnBroker::start_persistent(&scratch.join("broker"));
    broker.wait_listening().await;
    let mut ch = common::OwnClickHouse::new(&id);
    ch.start().await;
    let setup = Setup {
        id: id.clone(),
        kafka: broker.addr(),
        clickhouse: ch.url(),
        logs,
    };

    let mut sink = Stage::spawn(&setup, Kind::Sink, 0).await;
    let mut enrich = Stage::spawn(&setup, Kind::Enrich, 0).await;
    let mut ingest = Stage::spawn(&setup, Kind::Ingest, 0).await;
    for s in [&sink, &enrich, &ingest] {
        s.wait_ready("start").await;
    }

    let current_ingest = Arc::new(Mutex::new(ingest.http));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop_load = Arc::new(AtomicBool::new(false));
    let load_task = tokio::spawn(load(
        id.clone(),
        current_ingest.clone(),
        ledger.clone(),
        stop_load.clone(),
    ));
    let acked = || ledger.lock().expect("lock").acknowledged.len();
    let wait_acked_more = |what: &'static str| {
        let ledger = ledger.clone();
        async move {
            let before = ledger.lock().expect("lock").acknowledged.len();
            common::wait_for(what, BOUND, || {
                let now = ledger.lock().expect("lock").acknowledged.len();
                async move { now >= before + 4 * BATCH }
            })
            .await;
        }
    };
    wait_acked_more("the load to be acknowledged").await;

    // 1. SIGKILL each stage under load.
    let started = Instant::now();
    for k in 0..kills {
        for stage in [&mut ingest, &mut enrich, &mut sink] {
            if stage.kind == Kind::Ingest {
                *current_ingest.lock().expect("lock") = None;
            }
            stage.kill_and_restart(&setup).await;
            stage.wait_ready("restart after SIGKILL").await;
            if stage.kind == Kind::Ingest {
                *current_ingest.lock().expect("lock") = stage.http;
            }
            wait_acked_more("load to go on after a kill").await;
        }
        println!("kill round {} done, {} acknowledged", k + 1, acked());
    }
    println!("{} SIGKILLs per stage in {:?}", kills, started.elapsed());

    // 2. ClickHouse away for the outage.
    ch.kill().await;
    let away = Instant::now();
    expect_health(&mut sink, "a ClickHouse outage", "clickhouse_unreachable").await;
    let (_, metrics) = sink.get("/metrics").await;
    assert!(
        metrics
            .contains(r#"xoflow_stage_not_ready{stage="sink",reason="clickhouse_unreachable"} 1"#),
        "the metric says so too"
    );
    common::wait_for("the ClickHouse outage to last", outage * 2, || {
        let over = away.elapsed() >= outage;
        async move { over }
    })
    .await;
    assert!(
        !sink.exited(),
        "the sink rode out {outage:?} without ClickHouse"
    );
    ch.start().await;
    sink.wait_ready("ClickHouse back").await;
    wait_acked_more("load after the ClickHouse outage").await;

    // 3. The broker killed, away for the outage, back on the same storage.
    broker.kill();
    let away = Instant::now();
    for stage in [&mut ingest, &mut enrich, &mut sink] {
        expect_health(stage, "a broker outage", "kafka_unreachable").await;
    }
    common::wait_for("the broker outage to last", outage * 2, || {
        let over = away.elapsed() >= outage;
        async move { over }
    })
    .await;
    broker.revive().await;
    for stage in [&mut ingest, &mut enrich, &mut sink] {
        assert!(
            !stage.exited(),
            "{:?} exited during the broker outage",
            stage.kind
        );
        stage.wait_ready("broker back").await;
    }
    wait_acked_more("load after the broker outage").await;

    // 4. Overload: 24 concurrent requests of 2,000 events against an
    // in-flight limit of 6,000.
    let http = ingest.http.expect("ingest http");
    let mut burst = tokio::task::JoinSet::new();
    for b in 0..24u64 {
        let prefix = format!("{id}-burst{b}");
        let events = xoflow::sample::events(1_000 + b, 2_000, "acme", &prefix, common::now_ms());
        ledger
            .lock()
            .expect("lock")
            .sent
            .extend(events.iter().map(|e| e.event_id.clone()));
        let body = serde_json::to_string(&events).expect("json");
        burst.spawn(async move {
            let t = Instant::now();
            let r = post(http, body.as_bytes()).await.expect("burst answered");
            (r, t.elapsed())
        });
    }
    let (mut refused, mut slowest_refusal) = (0, Duration::ZERO);
    while let Some(done) = burst.join_next().await {
        let (r, took) = done.expect("burst request");
        match r.status {
            200 => {
                let r: IngestResponse = serde_json::from_slice(&r.body).expect("json");
                ledger.lock().expect("lock").acknowledged.extend(
                    r.results
                        .into_iter()
                        .filter(|x| x.accepted)
                        .map(|x| x.event_id),
                );
            }
            429 => {
                assert!(r.headers.contains("retry-after:"), "{}", r.headers);
                refused += 1;
                slowest_refusal = slowest_refusal.max(took);
            }
            other => panic!("burst answered {other}"),
        }
    }
    println!("overload: {refused} of 24 refused with 429, slowest refusal {slowest_refusal:?}");
    assert!(refused > 0, "a burst over the limit is refused");

    // 5. Slow clients: half-open connections held while the load goes on.
    let mut held = Vec::new();
    for _ in 0..500 {
        let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
        tcp.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        held.push(tcp);
    }
    wait_acked_more("load beside 500 half-open connections").await;
    let (code, _) = ingest.get("/health/live").await;
    assert_eq!(code, 200, "the admin server answers beside them");
    drop(held);

    // The end: every acknowledged event stored and counted exactly once.
    stop_load.store(true, Ordering::Relaxed);
    load_task.await.expect("load");
    let (sent, acknowledged, refused_requests, failed_requests) = {
        let l = ledger.lock().expect("lock");
        (
            l.sent.clone(),
            l.acknowledged.clone(),
            l.refused_requests,
            l.failed_requests,
        )
    };
    let (mut cfg, _) = common::config("");
    cfg.clickhouse.url = ch.url();
    cfg.clickhouse.database = format!("xo_chaos_{id}");
    let client = cfg.clickhouse.client();
    let stored_ids = || async {
        client
            .query("SELECT event_id FROM events")
            .fetch_all::<StoredId>()
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|r| r.event_id)
                    .collect::<HashSet<String>>()
            })
    };
    let until = Instant::now() + BOUND;
    let stored = loop {
        let stored = stored_ids().await;
        let missing = match &stored {
            Ok(stored) if acknowledged.is_subset(stored) => break stored.clone(),
            Ok(stored) => {
                // The ids, to follow them through the topics the broker
                // kept in this test's scratch directory.
                let mut missing: Vec<&String> = acknowledged.difference(stored).collect();
                missing.sort();
                format!(
                    "{} acknowledged events never stored, e.g. {:?} (topics kept in {})",
                    missing.len(),
                    &missing[..missing.len().min(10)],
                    scratch.display()
                )
            }
            Err(e) => format!("stored events not read: {e}"),
        };
        assert!(Instant::now() < until, "{missing}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(stored.is_subset(&sent), "stored only what was sent");
    let totals: Totals = client
        .query(
            "SELECT (SELECT toUInt64(countIf(revision = 0) + count() - uniqExact(event_id, revision)) FROM events) AS events, \
                    (SELECT uniqExact(event_id) FROM events) AS distinct_events, \
                    (SELECT toUInt64(sumMerge(events)) FROM touchpoint_metrics) AS aggregated",
        )
        .fetch_one()
        .await
        .expect("totals");
    println!(
        "acknowledged {} (requests refused {refused_requests}, failed {failed_requests}); stored {totals:?}",
        acknowledged.len()
    );
    assert_eq!(
        totals.events, totals.distinct_events,
        "no event stored twice"
    );
    assert_eq!(totals.aggregated, totals.events, "aggregated exactly once");

    let status = setup
        .command(&["sink-status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("sink-status");
    println!("{}", String::from_utf8_lossy(&status.stdout));
    assert!(
        status.status.success(),
        "sink-status reports a gap: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    for s in [&mut ingest, &mut enrich, &mut sink] {
        let _ = s.child.kill().await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
