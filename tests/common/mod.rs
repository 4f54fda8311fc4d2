//! Shared harness for the integration and end-to-end tests.
//!
//! These tests talk to a real Kafka-protocol broker and a real ClickHouse
//! server, started by `deploy/local/up.sh` (which `deploy/local/test.sh`
//! runs first). They find them through `XOFLOW_TEST_KAFKA` and
//! `XOFLOW_TEST_CLICKHOUSE`. Every test uses its own random topic names,
//! consumer groups and database, and port 0, so tests run in parallel.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rand::Rng;
use xoflow::{Config, Running, Stages};
use xoflow_common::shutdown::Shutdown;
use xoflow_proto::v1::{Event, IngestRequest, collector_client::CollectorClient};

/// Broker and ClickHouse addresses from the environment.
pub fn servers() -> (String, String) {
    let kafka = std::env::var("XOFLOW_TEST_KAFKA").unwrap_or_default();
    let ch = std::env::var("XOFLOW_TEST_CLICKHOUSE").unwrap_or_default();
    assert!(
        !kafka.is_empty() && !ch.is_empty(),
        "XOFLOW_TEST_KAFKA and XOFLOW_TEST_CLICKHOUSE must point at a running broker and \
         ClickHouse: run the suite with deploy/local/test.sh (or source target/xoflow-local/env \
         after deploy/local/up.sh)"
    );
    (kafka, ch)
}

/// A random lower-case suffix for names.
pub fn unique() -> String {
    let mut rng = rand::rng();
    (0..10)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

/// A config for one test: its own topics, groups and database; ports 0.
pub fn config(extra: &str) -> (Config, String) {
    let (kafka, ch) = servers();
    let id = unique();
    let overlay = format!(
        r#"
[log]
filter = "warn"
[admin]
addr = "127.0.0.1:0"
[kafka]
brokers = "{kafka}"
partitions = 4
message_timeout = "10s"
[kafka.topics]
events = "t-{id}.events"
backfill = "t-{id}.backfill"
enriched = "t-{id}.enriched"
dead_letters = "t-{id}.dead-letters"
alerts = "t-{id}.alerts"
[ingest]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
[enrich]
group_id = "g-{id}-enrich"
batch_max_wait = "20ms"
[alert]
group_id = "g-{id}-alert"
api_addr = "127.0.0.1:0"
[sink]
group_id = "g-{id}-sink"
batch_max_wait = "200ms"
[clickhouse]
url = "{ch}"
database = "xo_test_{id}"
{extra}
"#
    );
    (Config::from_toml(&overlay).expect("test config"), id)
}

/// The `xoflow` binary with `args`, configured (`XOFLOW_SECTION__KEY`) for
/// the servers, topics, groups and database of `cfg`, its admin server on
/// port 0 and `RUST_LOG=warn`: a test's own processes see what its
/// in-process stages see. Callers add what differs.
pub fn xoflow_command(cfg: &Config, args: &[&str]) -> std::process::Command {
    let t = &cfg.kafka.topics;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xoflow"));
    c.args(args)
        .env("XOFLOW_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env("XOFLOW_KAFKA__PARTITIONS", cfg.kafka.partitions.to_string())
        .env("XOFLOW_KAFKA__TOPICS__EVENTS", &t.events)
        .env("XOFLOW_KAFKA__TOPICS__BACKFILL", &t.backfill)
        .env("XOFLOW_KAFKA__TOPICS__ENRICHED", &t.enriched)
        .env("XOFLOW_KAFKA__TOPICS__DEAD_LETTERS", &t.dead_letters)
        .env("XOFLOW_KAFKA__TOPICS__ALERTS", &t.alerts)
        .env("XOFLOW_ENRICH__GROUP_ID", &cfg.enrich.group_id)
        .env("XOFLOW_SINK__GROUP_ID", &cfg.sink.group_id)
        .env("XOFLOW_ALERT__GROUP_ID", &cfg.alert.group_id)
        .env("XOFLOW_ALERT__API_ADDR", "127.0.0.1:0")
        .env("XOFLOW_CLICKHOUSE__URL", &cfg.clickhouse.url)
        .env("XOFLOW_CLICKHOUSE__DATABASE", &cfg.clickhouse.database)
        .env("XOFLOW_ADMIN__ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    c
}

/// Starts stages in this process and waits until they are ready.
pub async fn start(cfg: &Config, stages: Stages) -> Running {
    let running = xoflow::start(cfg.clone(), stages, Shutdown::new())
        .await
        .expect("start");
    wait_ready(
        &running,
        "the pipeline to be ready",
        Duration::from_secs(60),
    )
    .await;
    running
}

/// Waits until every stage of `running` is ready.
pub async fn wait_ready(running: &Running, what: &str, deadline: Duration) {
    wait_for(what, deadline, || {
        let ok = running.health.check().is_ok();
        async move { ok }
    })
    .await;
}

/// Waits until readiness holds a reason starting with `reason`
/// (`"enrich: kafka_unreachable"`).
pub async fn wait_not_ready(running: &Running, reason: &str, deadline: Duration) {
    wait_for(&format!("readiness to say {reason}"), deadline, || {
        let reasons = running.health.check().err().unwrap_or_default();
        let held = reasons.iter().any(|r| r.starts_with(reason));
        async move { held }
    })
    .await;
}

/// Polls `check` every 50 ms until it is true, failing the test at the
/// deadline. Deadlines, not sleeps: the test is as fast as the system.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `events` to the gRPC collector at `addr` in requests of
/// `per_request`, asserting that every event of every request is accepted.
pub async fn ingest_all(addr: std::net::SocketAddr, events: &[Event], per_request: usize) {
    let mut client = CollectorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    for chunk in events.chunks(per_request) {
        let r = client
            .ingest(IngestRequest {
                events: chunk.to_vec(),
            })
            .await
            .expect("ingest")
            .into_inner();
        assert_eq!(
            (r.accepted as usize, r.rejected),
            (chunk.len(), 0),
            "rejections: {:?}",
            r.results.iter().find(|r| !r.accepted)
        );
    }
}

/// Waits until the sink group committed every record of the enriched
/// topic (copies are committed without being stored).
pub async fn sink_drained(cfg: &xoflow::Config, group: &str) {
    wait_for(
        "the sink to commit every record",
        Duration::from_secs(90),
        || {
            let c = cfg.clone();
            let group = group.to_owned();
            async move {
                xoflow_sink::sink_status(&c.kafka, &c.clickhouse, &group)
                    .await
                    .is_ok_and(|parts| {
                        parts
                            .iter()
                            .filter(|p| p.topic == c.kafka.topics.enriched)
                            .all(|p| p.committed == Some(p.high_watermark))
                    })
            }
        },
    )
    .await;
}

/// The value after `key` in a log line (`admin=127.0.0.1:9464`), up to a
/// space or `)`: how tests learn the addresses a process bound to port 0.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ')')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Drops the test database (best effort).
pub async fn drop_database(cfg: &Config) {
    let _ = cfg.clickhouse.drop_database().await;
}

/// A broker of one test's own, on `port`: for tests that stop the broker
/// (the shared one is never touched). The binary `deploy/local/up.sh`
/// built (`XOFLOW_BROKER_BIN`). Killed on drop.
pub struct OwnBroker {
    child: std::process::Child,
    port: std::sync::Arc<PortReservation>,
    /// Where its SQLite storage lives, when it keeps its data.
    dir: Option<std::path::PathBuf>,
}

impl OwnBroker {
    /// Keeps its data in memory: a restart comes back empty. On a port
    /// of its own ([`reserve_port`]).
    pub fn start() -> Self {
        Self::spawn(std::sync::Arc::new(reserve_port()), None)
    }

    /// [`OwnBroker::start`] on a port reserved beforehand (a test that
    /// points the stages at it before it runs).
    pub fn start_at(port: std::sync::Arc<PortReservation>) -> Self {
        Self::spawn(port, None)
    }

    /// Keeps its data in SQLite under `dir`: killed and started again on
    /// the same `dir`, it comes back with its topics, records and
    /// committed offsets.
    pub fn start_persistent(dir: &std::path::Path) -> Self {
        Self::spawn(std::sync::Arc::new(reserve_port()), Some(dir.to_path_buf()))
    }

    fn spawn(port: std::sync::Arc<PortReservation>, dir: Option<std::path::PathBuf>) -> Self {
        let bin = std::env::var("XOFLOW_BROKER_BIN")
            .unwrap_or_else(|_| "/root/.cache/xoflow/nisshi/bin/nisshi".into());
        let url = format!("tcp://127.0.0.1:{}", port.port);
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        // nisshi's group.initial.rebalance.delay.ms (3 s by default) would
        // delay every new group's first assignment; Tansu 0.6 (still run
        // for the conformance matrix) has no such flag.
        let nisshi = std::path::Path::new(&bin)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("nisshi"));
        if nisshi {
            cmd.args(["--group-initial-rebalance-delay", "0s"]);
        }
        cmd.arg("--storage-engine");
        match &dir {
            // The SQLite path is taken relative to the working directory.
            Some(dir) => {
                std::fs::create_dir_all(dir).expect("broker dir");
                cmd.arg("sqlite://broker.db").current_dir(dir);
            }
            None => {
                cmd.arg("memory://xoflow/");
            }
        }
        // A broker that keeps its data keeps its log beside it.
        let log = || match &dir {
            Some(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("broker.log"))
                .map(std::process::Stdio::from)
                .unwrap_or_else(|_| std::process::Stdio::null()),
            None => std::process::Stdio::null(),
        };
        let child = cmd
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .env("RUST_LOG", "warn")
            .stdout(log())
            .stderr(log())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (set XOFLOW_BROKER_BIN): {e}"));
        Self { child, port, dir }
    }

    /// SIGKILLs it and starts it again on the same port (and storage).
    pub async fn restart(&mut self) {
        self.kill();
        self.revive().await;
    }

    /// Starts it again, after [`OwnBroker::kill`], on the same port (and
    /// storage).
    pub async fn revive(&mut self) {
        *self = Self::spawn(self.port.clone(), self.dir.clone());
        self.wait_listening().await;
    }

    /// Where it listens.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port.port)
    }

    pub async fn wait_listening(&self) {
        let port = self.port.port;
        wait_for(
            "the test broker to listen",
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A ClickHouse server of one test's own, for tests that stop it (the
/// shared one is never stopped), started the way deploy/local/up.sh starts
/// it: a copy of the packaged config with its paths in a scratch directory,
/// on reserved ports kept across a restart.
pub struct OwnClickHouse {
    dir: std::path::PathBuf,
    pub http: u16,
    pub tcp: u16,
    inter: u16,
    /// Kept across a restart: see [`reserve_port`].
    _ports: [PortReservation; 3],
    child: Option<tokio::process::Child>,
}

impl OwnClickHouse {
    pub fn new(id: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xoflow-ch-{id}"));
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).expect("scratch dir");
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        let d = format!("{}/", dir.display());
        for f in ["config.xml", "users.xml"] {
            let text = std::fs::read_to_string(format!("/etc/clickhouse-server/{f}"))
                .expect("packaged ClickHouse config");
            let text = text
                .replace("/var/lib/clickhouse/", &d)
                .replace("/var/log/clickhouse-server/", &format!("{d}logs/"));
            std::fs::write(etc.join(f), text).expect("config copy");
        }
        let ports = [reserve_port(), reserve_port(), reserve_port()];
        OwnClickHouse {
            dir,
            http: ports[0].port,
            tcp: ports[1].port,
            inter: ports[2].port,
            _ports: ports,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub async fn start(&mut self) {
        let d = format!("{}/", self.dir.display());
        let child = tokio::process::Command::new("clickhouse-server")
            .arg(format!("--config-file={d}etc/config.xml"))
            .arg("--")
            .arg(format!("--path={d}"))
            .arg(format!("--tmp_path={d}tmp/"))
            .arg(format!("--user_files_path={d}user_files/"))
            .arg(format!("--format_schema_path={d}format_schemas/"))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--http_port={}", self.http))
            .arg(format!("--tcp_port={}", self.tcp))
            .arg(format!("--interserver_http_port={}", self.inter))
            .arg(format!("--logger.log={d}logs/clickhouse.log"))
            .arg(format!("--logger.errorlog={d}logs/clickhouse.err.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.http);
        wait_for("our ClickHouse to answer", Duration::from_secs(90), || {
            let addr = addr.clone();
            async move { http_get(&addr, "/ping").await == (200, "Ok.\n".to_owned()) }
        })
        .await;
    }

    /// SIGKILL: the outage starts at once, as when a host dies.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port for a server that a test stops and starts again, reserved for
/// the reservation's life. While the server is down its port is free, and
/// a port from [`free_port`] (the kernel's ephemeral range) or another
/// test's server could take it: the test's clients would then talk to a
/// stranger. So these ports come from below the ephemeral range (which
/// `bind(0)` and outgoing connections never use) and are claimed by a file
/// under the temp dir, which no other test process can create too.
pub struct PortReservation {
    pub port: u16,
    claim: std::path::PathBuf,
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.claim);
    }
}

pub fn reserve_port() -> PortReservation {
    let dir = std::env::temp_dir().join("xoflow-test-ports");
    std::fs::create_dir_all(&dir).expect("port claims dir");
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(20_000..32_000u16);
        let claim = dir.join(port.to_string());
        // A claim left by a run that was killed is taken over after a day.
        let stale = std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > Duration::from_secs(86_400)));
        if stale {
            let _ = std::fs::remove_file(&claim);
        }
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok();
        if !claimed {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return PortReservation { port, claim };
        }
        let _ = std::fs::remove_file(&claim);
    }
    panic!("no port free below the ephemeral range");
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An ingest dead letter of `tenant` (a refused order, JSON), as the
/// dead-letter topic carries it: the sink tests' other input.
pub fn dead_letter(event_id: String, tenant: &str, at_ms: i64) -> Vec<u8> {
    use xoflow_proto::{Message, v1::DeadLetter};
    DeadLetter {
        payload: b"{}".to_vec(),
        content_type: "application/json".into(),
        stage: "ingest".into(),
        reason: "INVALID".into(),
        field: "order.currency".into(),
        description: "test".into(),
        tenant: tenant.into(),
        source: "test".into(),
        event_id,
        at: Some(xoflow_proto::from_unix_millis(at_ms)),
    }
    .encode_to_vec()
}

/// An enriched click of `customer` in `session`, as enrich would write it:
/// the sink tests' input, produced straight onto the enriched topic.
pub fn enriched_click(event_id: String, tenant: &str, customer: &str, session: &str) -> Vec<u8> {
    use xoflow_proto::{
        Message,
        v1::{ClickEvent, CustomerIdentity, EnrichedEvent, Event, Touchpoint, event::Payload},
    };
    let event = Event {
        event_id,
        tenant: tenant.into(),
        source: "web".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(now_ms() - 60_000)),
        customer: Some(CustomerIdentity {
            customer_id: customer.into(),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: "online-purchase".into(),
            stage: "browse".into(),
            touchpoint: "product-page".into(),
            channel: 2,
        }),
        payload: Some(Payload::Click(ClickEvent {
            session_id: session.into(),
            url: "https://shop.example/p/1".into(),
            path: "/p/1".into(),
            action: 1,
            ..Default::default()
        })),
        ..Default::default()
    };
    EnrichedEvent {
        resolved_customer_id: customer.into(),
        event: Some(event),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A bare HTTP/1.0 GET (the admin server's `/health/*` and `/metrics`):
/// status code and body; 0 when nothing answers.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .is_err()
    {
        return (0, String::new());
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    parse_http_response(&buf)
}

/// Status and body of a whole HTTP/1.0 response read to its end (status 0
/// when there was none).
pub fn parse_http_response(buf: &str) -> (u16, String) {
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Produces `events` onto `topic`, each keyed by the strongest key it
/// carries (customer id, hashed e-mail, hashed handle), as ingest keys
/// them: enrich's input, without the collectors.
pub async fn produce_events(cfg: &Config, topic: &str, events: &[Event]) {
    use xoflow_proto::Message as _;
    let encoded: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            let c = e.customer.clone().unwrap_or_default();
            let key = [c.customer_id, c.email_hash, c.social_handle_hash]
                .into_iter()
                .find(|k| !k.is_empty())
                .unwrap_or_default();
            (key, e.encode_to_vec())
        })
        .collect();
    let records: Vec<(&[u8], &[u8])> = encoded
        .iter()
        .map(|(k, b)| (k.as_bytes(), b.as_slice()))
        .collect();
    produce_keyed(cfg, topic, &records).await;
}

/// Produces (key, value) records onto `topic` and waits for their
/// acknowledgement.
pub async fn produce_keyed(cfg: &Config, topic: &str, records: &[(&[u8], &[u8])]) {
    let out: Vec<xoflow_common::kafka::Outgoing<'_>> = records
        .iter()
        .map(|(k, v)| xoflow_common::kafka::Outgoing::keyed(k, v))
        .collect();
    cfg.kafka
        .batch_producer()
        .expect("producer")
        .send_all(topic, &out)
        .await
        .expect("produce");
}

/// Produces encoded `EnrichedEvent`s, each under its key, onto the
/// enriched topic: the sink tests' input.
pub async fn produce_enriched(cfg: &Config, records: &[(Vec<u8>, String)]) {
    let records: Vec<(&[u8], &[u8])> = records
        .iter()
        .map(|(b, k)| (k.as_bytes(), b.as_slice()))
        .collect();
    produce_keyed(cfg, &cfg.kafka.topics.enriched, &records).await;
}

/// A consumer of `topic` in a consumer group of its own (named after
/// `what`), reading it from its start.
pub fn subscriber(cfg: &Config, what: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = cfg
        .kafka
        .consumer(&format!("g-{}-{what}", unique()), Default::default())
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads `topic` from its start, as the new consumer group `group`,
/// filing each record into `read` with `keep`, until `enough(&read)` or
/// `within` passed; once enough, on until nothing came for `linger`, so
/// what must *not* be there had its chance to show (0: stop at once).
/// Fails nothing at the deadline: callers assert on what was read, naming
/// what is missing.
pub async fn read_topic<S: Default>(
    cfg: &Config,
    group: &str,
    topic: &str,
    within: Duration,
    linger: Duration,
    mut keep: impl FnMut(&mut S, &rdkafka::message::BorrowedMessage<'_>),
    enough: impl Fn(&S) -> bool,
) -> S {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = cfg
        .kafka
        .consumer(group, Default::default())
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut read = S::default();
    let deadline = tokio::time::Instant::now() + within;
    let mut lingering = false;
    loop {
        if !lingering && enough(&read) {
            if linger.is_zero() {
                break;
            }
            lingering = true;
        }
        let next = if lingering {
            tokio::time::timeout(linger, consumer.recv()).await
        } else {
            tokio::time::timeout_at(deadline, consumer.recv()).await
        };
        let Ok(m) = next else { break };
        keep(&mut read, &m.expect("message"));
    }
    read
}

/// [`read_topic`] of the enriched topic: every output by event id, the
/// latest revision of each (a repair replaces what it repaired).
pub async fn read_enriched(
    cfg: &Config,
    group: &str,
    within: Duration,
    linger: Duration,
    enough: impl Fn(&BTreeMap<String, xoflow_proto::v1::EnrichedEvent>) -> bool,
) -> BTreeMap<String, xoflow_proto::v1::EnrichedEvent> {
    use rdkafka::message::Message as _;
    use xoflow_proto::{Message as _, v1::EnrichedEvent};
    read_topic(
        cfg,
        group,
        &cfg.kafka.topics.enriched,
        within,
        linger,
        |seen: &mut BTreeMap<String, EnrichedEvent>, m| {
            let e = EnrichedEvent::decode(m.payload().unwrap_or_default()).expect("enriched");
            let id = e
                .event
                .as_ref()
                .map(|e| e.event_id.clone())
                .unwrap_or_default();
            match seen.get(&id) {
                Some(old) if old.revision >= e.revision => {}
                _ => {
                    seen.insert(id, e);
                }
            }
        },
        enough,
    )
    .await
}

/// Asserts that the CX figures BI reads back per touchpoint (NPS counts,
/// CSAT and CES) equal the generator's truth exactly; `what` names the run
/// in failures.
pub fn assert_touchpoints_match(
    report: &xoflow::demo::BiReport,
    truth: &xoflow::datagen::Truth,
    what: &str,
) {
    assert_eq!(report.touchpoints.len(), truth.touchpoints.len(), "{what}");
    for t in &truth.touchpoints {
        let r = report
            .touchpoints
            .iter()
            .find(|r| {
                r.tenant == t.tenant && r.journey == t.journey && r.touchpoint == t.touchpoint
            })
            .unwrap_or_else(|| panic!("{what}: {} {} missing", t.tenant, t.touchpoint));
        assert_eq!(r.nps(), t.nps, "{what}: NPS counts at {}", t.touchpoint);
        assert_eq!(
            (r.csat_responses, r.csat_top2),
            (t.csat_responses, t.csat_top2),
            "{what}: CSAT at {}",
            t.touchpoint
        );
        assert_eq!(
            (r.ces_responses, r.ces_sum),
            (t.ces_responses, t.ces_sum),
            "{what}: CES at {}",
            t.touchpoint
        );
    }
}

/// A stage run as its own `xoflow` process, as ops run it, with the
/// addresses it logged at start. Its log goes to a file beside the test's
/// temp files (named in failures). Killed on drop.
pub struct StageProcess {
    child: tokio::process::Child,
    pub admin: String,
    pub grpc: Option<String>,
    pub log: std::path::PathBuf,
}

impl StageProcess {
    /// Spawns `cmd` (from [`xoflow_command`]) with `info` logs and waits for
    /// its "xoflow started" line.
    pub async fn spawn(cmd: std::process::Command, name: &str) -> StageProcess {
        use std::io::Write;
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.env("RUST_LOG", "info,rdkafka=warn,librdkafka=warn")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn xoflow");
        let log_path = std::env::temp_dir().join(format!("xoflow-{name}-{}.log", unique()));
        let mut log = std::fs::File::create(&log_path).expect("log file");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let started = tokio::time::timeout(Duration::from_secs(90), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
                if line.contains("xoflow started") {
                    return line;
                }
            }
            panic!("{name} exited before starting; log {}", log_path.display());
        })
        .await
        .unwrap_or_else(|_| panic!("{name} did not start; log {}", log_path.display()));
        // Keep the log flowing so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
            }
        });
        StageProcess {
            child,
            admin: log_field(&started, "admin=").expect("admin").to_owned(),
            grpc: log_field(&started, "grpc=Some(").map(str::to_owned),
            log: log_path,
        }
    }

    /// Its `/metrics`, parsed: (series as written, value).
    pub async fn metrics(&self) -> Vec<(String, f64)> {
        let (code, body) = http_get(&self.admin, "/metrics").await;
        assert_eq!(
            code,
            200,
            "metrics of {}; log {}",
            self.admin,
            self.log.display()
        );
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// SIGTERM, and waits for the exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// A TCP proxy in front of a server (ClickHouse's HTTP port) that a test
/// can stall: paused, it cuts every connection through it and closes each
/// new one at once, as a server that went away; resumed, it forwards again.
/// A stage pointed at it stops making progress on that server while it
/// stays up and scrapeable. [`StallingProxy::answer`] makes it a gateway
/// answering for a server that is away, as a load balancer does.
pub struct StallingProxy {
    pub addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Copy, PartialEq)]
enum ProxyMode {
    Forward,
    Cut,
    Answer(Gateway),
}

/// What [`StallingProxy::answer`] answers in the server's place.
#[derive(Clone, Copy, PartialEq)]
pub struct Gateway {
    /// The status line's code and reason, e.g. `502 Bad Gateway`.
    pub status: &'static str,
    pub body: &'static str,
    /// Only requests whose head holds this text; the others are forwarded,
    /// one request per connection so that each is looked at.
    pub only: Option<&'static str>,
}

impl StallingProxy {
    pub async fn start(upstream: &str) -> StallingProxy {
        use std::sync::{Arc, atomic::AtomicU64};
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, _) = tokio::sync::watch::channel(ProxyMode::Forward);
        let answered = Arc::new(AtomicU64::new(0));
        let (tx, count) = (mode.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                // Any change of mode cuts what was forwarded before it.
                let mut cut = tx.subscribe();
                let now = *cut.borrow_and_update();
                let (upstream, count) = (upstream.clone(), count.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = proxy_connection(down, &upstream, now, &count) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        StallingProxy {
            addr,
            mode,
            answered,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pause(&self) {
        self.mode.send_replace(ProxyMode::Cut);
    }

    pub fn resume(&self) {
        self.mode.send_replace(ProxyMode::Forward);
    }

    /// Answers requests itself, with `gateway`'s status and body, as a
    /// proxy whose server is away: the request read whole first, the
    /// connection closed after.
    pub fn answer(&self, gateway: Gateway) {
        self.mode.send_replace(ProxyMode::Answer(gateway));
    }

    /// Requests answered by the proxy itself so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn proxy_connection(
    mut down: tokio::net::TcpStream,
    upstream: &str,
    mode: ProxyMode,
    answered: &std::sync::atomic::AtomicU64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = match mode {
        ProxyMode::Cut => return,
        ProxyMode::Forward => {
            if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
            return;
        }
        ProxyMode::Answer(gateway) => gateway,
    };
    // The request's head, then its body (a length, or chunks up to the
    // last), so that the answer is not cut short by unread bytes.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let find = |b: &[u8], pat: &[u8]| b.windows(pat.len()).position(|w| w == pat);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match down.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if gateway
        .only
        .is_some_and(|only| !head.contains(&only.to_ascii_lowercase()))
    {
        let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
            return;
        };
        // One request per connection: each next one is looked at too.
        let mut first = String::from_utf8_lossy(&buf[..head_end - 2])
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        first.push_str("\r\nConnection: close\r\n\r\n");
        if up.write_all(first.as_bytes()).await.is_err()
            || up.write_all(&buf[head_end..]).await.is_err()
        {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        return;
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let read_body = async {
        loop {
            let body = &buf[head_end..];
            let done = match length {
                Some(n) => body.len() >= n,
                None if chunked => {
                    body.starts_with(b"0\r\n\r\n") || find(body, b"\r\n0\r\n\r\n").is_some()
                }
                None => true,
            };
            if done {
                return;
            }
            match down.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_body).await;
    let answer = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        gateway.status,
        gateway.body.len(),
        gateway.body
    );
    if down.write_all(answer.as_bytes()).await.is_ok() {
        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = down.shutdown().await;
}

/// The sum of every series of `name` (any labels) in a scrape.
pub fn metric_sum(scrape: &[(String, f64)], name: &str) -> f64 {
    scrape
        .iter()
        .filter(|(s, _)| s == name || s.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// Whether a scrape has any series of `name`.
pub fn has_metric(scrape: &[(String, f64)], name: &str) -> bool {
    scrape
        .iter()
        .any(|(s, _)| s == name || s.starts_with(&format!("{name}{{")))
}

/// `SELECT count()`-like query answering one number; 0 while the table is
/// not there yet (a wait loop asks again).
pub async fn count(ch: &clickhouse::Client, sql: &str) -> u64 {
    ch.query(sql).fetch_one::<u64>().await.unwrap_or(0)
}

/// A survey answer of one question: `kind` (NPS, CSAT, CES) scored `score`
/// on `min..=max`, by `customer` of `tenant` at `touchpoint` (journey,
/// stage, touchpoint) of `store`, an hour ago.
pub fn survey(
    id: &str,
    tenant: &str,
    (journey, stage, touchpoint): (&str, &str, &str),
    store: &str,
    customer: &str,
    (kind, score, min, max): (xoflow_proto::v1::MetricKind, f64, i32, i32),
) -> xoflow_proto::v1::Event {
    use xoflow_proto::v1::{
        CustomerIdentity, Event, Location, SurveyAnswer, SurveyResponse, Touchpoint, event::Payload,
    };
    Event {
        event_id: id.into(),
        tenant: tenant.into(),
        source: "test".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(now_ms() - 3_600_000)),
        customer: Some(CustomerIdentity {
            customer_id: customer.into(),
            ..Default::default()
        }),
        touchpoint: Some(Touchpoint {
            journey: journey.into(),
            stage: stage.into(),
            touchpoint: touchpoint.into(),
            channel: 0,
        }),
        location: Some(Location {
            store_id: store.into(),
            region: if store.is_empty() { "" } else { "华南" }.into(),
        }),
        payload: Some(Payload::Survey(SurveyResponse {
            survey_id: "s".into(),
            answers: vec![SurveyAnswer {
                question_id: "q".into(),
                kind: kind as i32,
                score: Some(score),
                scale_min: min,
                scale_max: max,
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}
