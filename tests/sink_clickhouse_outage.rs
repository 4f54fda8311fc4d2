//! The sink rides out a ClickHouse outage far longer than its old retry
//! budget (9 attempts): it never exits, readiness answers 503 with
//! `clickhouse_unreachable` while ClickHouse is away and liveness stays
//! 200 (a restart would not help), and once ClickHouse is back every row
//! arrives exactly once and readiness is 200 again. Real broker; a
//! ClickHouse of the test's own on free ports (the shared one is never
//! stopped), started the way deploy/local/up.sh starts it.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use clickhouse::Row;
use serde::Deserialize;
use tokio::process::{Child, Command};
use xoflow::Stages;

/// Attempts the sink must make during the outage before ClickHouse comes
/// back: the old budget gave up after 9.
const ATTEMPTS_RIDDEN_OUT: u32 = 70;

/// A ClickHouse server of this test's own: a copy of the packaged config
/// with its paths in a scratch directory, on free ports kept across a
/// restart.
struct OwnClickHouse {
    dir: PathBuf,
    http: u16,
    tcp: u16,
    inter: u16,
    child: Option<Child>,
}

impl OwnClickHouse {
    fn new(id: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xoflow-ch-outage-{id}"));
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
        OwnClickHouse {
            dir,
            http: common::free_port(),
            tcp: common::free_port(),
            inter: common::free_port(),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    async fn start(&mut self) {
        let d = format!("{}/", self.dir.display());
        let child = Command::new("clickhouse-server")
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.http);
        common::wait_for("our ClickHouse to answer", Duration::from_secs(90), || {
            let addr = addr.clone();
            async move { common::http_get(&addr, "/ping").await == (200, "Ok.\n".to_owned()) }
        })
        .await;
    }

    /// SIGKILL: the outage starts at once, as when a host dies.
    async fn kill(&mut self) {
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

fn enriched(id: &str, i: usize) -> (Vec<u8>, String) {
    let key = format!("c{}", i % 97);
    let bytes = common::enriched_click(format!("{id}-{i}"), "shop", &key, &format!("s{}", i % 13));
    (bytes, key)
}

#[derive(Debug, Row, Deserialize, PartialEq)]
struct Counts {
    events: u64,
    distinct_events: u64,
    aggregated: u64,
}

async fn counts(ch: &clickhouse::Client) -> Option<Counts> {
    ch.query(
        "SELECT (SELECT count() FROM events) AS events, \
                (SELECT uniqExact(event_id) FROM events) AS distinct_events, \
                (SELECT toUInt64(sumMerge(events)) FROM touchpoint_metrics) AS aggregated",
    )
    .fetch_one()
    .await
    .ok()
}

/// The attempt number in the sink's `clickhouse_unreachable` reason.
fn attempt_in(reasons: &[String]) -> Option<u32> {
    let r = reasons
        .iter()
        .find(|r| r.starts_with("sink: clickhouse_unreachable"))?;
    let rest = &r[r.find("attempt ")? + 8..];
    rest[..rest.find(':')?].parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_rides_out_a_clickhouse_outage_and_says_so() {
    let (mut cfg, id) = common::config("");
    let mut ch_server = OwnClickHouse::new(&id);
    ch_server.start().await;
    cfg.clickhouse.url = ch_server.url();
    // Short waits, so that the outage outlasts many attempts: 100 ms
    // doubling to 1 s: 70 attempts take ~50 s, as long as the old budget
    // (9 attempts) at the default waits, and ten times it at these.
    cfg.sink.retry_backoff = Duration::from_millis(100);
    cfg.sink.retry_max_backoff = Duration::from_secs(1);
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");

    let first: Vec<_> = (0..2_000).map(|i| enriched(&id, i)).collect();
    common::produce_enriched(&cfg, &first).await;
    let running = common::start(&cfg, Stages::SINK).await;
    let admin = running.admin_addr.to_string();
    let ch = cfg.clickhouse.client();
    common::wait_for("the first rows", Duration::from_secs(90), || {
        let ch = ch.clone();
        async move { counts(&ch).await.is_some_and(|c| c.aggregated >= 2_000) }
    })
    .await;

    // ClickHouse goes away; more events arrive.
    ch_server.kill().await;
    let second: Vec<_> = (2_000..4_000).map(|i| enriched(&id, i)).collect();
    common::produce_enriched(&cfg, &second).await;
    common::wait_for(
        "the sink to retry well past its old budget",
        Duration::from_secs(180),
        || {
            let reasons = running.health.check().err().unwrap_or_default();
            async move { attempt_in(&reasons).is_some_and(|a| a >= ATTEMPTS_RIDDEN_OUT) }
        },
    )
    .await;
    let (code, body) = common::http_get(&admin, "/health/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("sink: clickhouse_unreachable"), "{body}");
    let (code, body) = common::http_get(&admin, "/health/live").await;
    assert_eq!(code, 200, "an outage is no reason to restart: {body}");
    let (_, metrics) = common::http_get(&admin, "/metrics").await;
    if !metrics.starts_with("metrics recorder not installed") {
        assert!(
            metrics.contains(
                r#"xoflow_stage_not_ready{stage="sink",reason="clickhouse_unreachable"} 1"#
            ),
            "{metrics}"
        );
    }
    assert!(
        !running.shutdown.token.is_cancelled(),
        "the sink must not exit during an outage"
    );

    // ClickHouse returns: progress resumes by itself, every row once.
    ch_server.start().await;
    common::wait_for(
        "the rows written during the outage",
        Duration::from_secs(120),
        || {
            let ch = ch.clone();
            async move { counts(&ch).await.is_some_and(|c| c.aggregated >= 4_000) }
        },
    )
    .await;
    common::wait_for("readiness to return", Duration::from_secs(30), || {
        let ok = running.health.check().is_ok();
        async move { ok }
    })
    .await;
    assert_eq!(common::http_get(&admin, "/health/ready").await.0, 200);
    assert_eq!(
        counts(&ch).await,
        Some(Counts {
            events: 4_000,
            distinct_events: 4_000,
            aggregated: 4_000,
        })
    );
    assert!(!running.shutdown.token.is_cancelled());
    running.stop();
    running.wait().await.expect("clean shutdown");

    let status = xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id)
        .await
        .expect("status");
    for s in &status {
        assert_eq!(s.gap(), 0, "{s:?}");
    }
    let rows: u64 = status
        .iter()
        .filter(|s| s.topic == cfg.kafka.topics.enriched)
        .map(|s| s.rows_stored)
        .sum();
    assert_eq!(rows, 4_000);
}
