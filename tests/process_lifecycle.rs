//! The binary as ops run it: `xoflow run` serves /metrics and the health
//! endpoints from the start, counts what it does, turns ready, and on
//! SIGTERM drains and exits 0 with every accepted event in ClickHouse.

mod common;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use xoflow::sample;
use xoflow_proto::v1::{IngestRequest, collector_client::CollectorClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_health_and_metrics_and_drains_on_sigterm() {
    let (kafka, ch) = common::servers();
    let id = common::unique();
    let db = format!("xo_test_{id}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xoflow"))
        .arg("run")
        .env("XOFLOW_KAFKA__BROKERS", &kafka)
        .env("XOFLOW_CLICKHOUSE__URL", &ch)
        .env("XOFLOW_CLICKHOUSE__DATABASE", &db)
        .env("XOFLOW_KAFKA__TOPICS__EVENTS", format!("t-{id}.events"))
        .env("XOFLOW_KAFKA__TOPICS__BACKFILL", format!("t-{id}.backfill"))
        .env("XOFLOW_KAFKA__TOPICS__ENRICHED", format!("t-{id}.enriched"))
        .env("XOFLOW_KAFKA__TOPICS__DEAD_LETTERS", format!("t-{id}.dead"))
        .env("XOFLOW_KAFKA__TOPICS__ALERTS", format!("t-{id}.alerts"))
        .env("XOFLOW_ALERT__GROUP_ID", format!("g-{id}-alert"))
        .env("XOFLOW_ALERT__API_ADDR", "127.0.0.1:0")
        .env("XOFLOW_ENRICH__GROUP_ID", format!("g-{id}-enrich"))
        .env("XOFLOW_SINK__GROUP_ID", format!("g-{id}-sink"))
        .env("XOFLOW_SINK__BATCH_MAX_WAIT", "100ms")
        .env("XOFLOW_ADMIN__ADDR", "127.0.0.1:0")
        .env("XOFLOW_INGEST__GRPC_ADDR", "127.0.0.1:0")
        .env("XOFLOW_INGEST__HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn xoflow");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if line.contains("xoflow started") {
                return line;
            }
        }
        panic!("xoflow exited before starting");
    })
    .await
    .expect("start-up log line within 60 s");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let admin = common::log_field(&started, "admin=")
        .expect("admin address")
        .to_string();
    let grpc = common::log_field(&started, "grpc=Some(")
        .expect("grpc address")
        .to_string();

    assert_eq!(common::http_get(&admin, "/health/live").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = common::http_get(&admin, "/health/ready").await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 503, "{body}");
        assert!(Instant::now() < deadline, "not ready in 60 s: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut client = CollectorClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let events = sample::events(3, 500, "acme", &id, common::now_ms());
    let r = client
        .ingest(IngestRequest { events })
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!(r.accepted, 500);

    let (code, metrics) = common::http_get(&admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("xoflow_ingest_events_accepted_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("xoflow_ingest_request_duration_seconds"),
        "{metrics}"
    );

    let ch_client = clickhouse::Client::default()
        .with_url(&ch)
        .with_database(&db)
        .with_validation(false);
    common::wait_for(
        "the 500 events in ClickHouse",
        Duration::from_secs(60),
        || {
            let c = ch_client.clone();
            async move {
                c.query("SELECT count() FROM events WHERE revision = 0")
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|n| n >= 500)
            }
        },
    )
    .await;

    // SIGTERM: readiness off, drain, flush, commit, exit 0.
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s of SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit}");

    let (rows, distinct): (u64, u64) = ch_client
        .query("SELECT toUInt64(countIf(revision = 0) + count() - uniqExact(event_id, revision)), uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!((rows, distinct), (500, 500));
    let _ = ch_client
        .with_database("default")
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
}
