//! What ops see, checked on a running pipeline: every stage run as its own
//! process (`xoflow ingest | enrich | sink | alert`), scraped while data
//! flows.
//!
//! - Every consuming stage exports its consumer lag per topic-partition,
//!   the sink its freshness histograms, every stage its records in and out.
//! - Lag follows a stalled stage: the sink's ClickHouse goes through a
//!   proxy the test stalls; records produced meanwhile wait in Kafka, the
//!   sink's lag rises above 0, and falls back to 0 once ClickHouse is back
//!   and every event is stored.
//! - Every metric the Grafana dashboards and the Prometheus alerting rules
//!   name (`deploy/grafana/dashboards/*.json`, `deploy/prometheus/*.yml`)
//!   is one these processes export.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{StageProcess, StallingProxy, has_metric, metric_sum};
use xoflow::datagen::load::{self, LoadOptions};
use xoflow_proto::v1::{Event, MetricKind};

const BOUND: Duration = Duration::from_secs(120);

/// Alerts for acme's detractors, delivered to a receiver of the test's.
fn config(receiver: std::net::SocketAddr) -> String {
    format!(
        r#"
[enrich.alerts.tenants.acme]
default_department = "customer-care"
[[enrich.alerts.tenants.acme.rules]]
name = "detractor"
severity = "high"
kinds = ["survey"]
nps = ["detractor"]
[[alert.tenants.acme.departments.customer-care.webhooks]]
url = "http://{receiver}/hook"
format = "generic"
secret = "0123456789abcdef0123456789abcdef"
"#
    )
}

/// A webhook receiver that takes every alert.
async fn receiver() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn survey(id: String, customer: &str, score: f64) -> Event {
    let at = ("online-purchase", "after-sales", "delivery-survey");
    common::survey(
        &id,
        "acme",
        at,
        "",
        customer,
        (MetricKind::Nps, score, 0, 10),
    )
}

/// `n` surveys tagged `tag`, scores 0..=10 in turn (detractors among
/// them), and `bad` more with a score off the scale (refused: dead
/// letters).
fn surveys(tag: &str, n: usize, bad: usize) -> (Vec<Event>, u64) {
    let mut out: Vec<Event> = (0..n)
        .map(|i| {
            survey(
                format!("{tag}-{i}"),
                &format!("c-{tag}-{}", i % 40),
                (i % 11) as f64,
            )
        })
        .collect();
    out.extend((0..bad).map(|i| survey(format!("{tag}-bad-{i}"), "c-bad", 42.0)));
    (out, n as u64)
}

async fn send(grpc: &str, events: Vec<Event>) -> u64 {
    let r = load::send(
        &format!("http://{grpc}"),
        events,
        &LoadOptions {
            batch: 50,
            rate: None,
            concurrency: 2,
        },
    )
    .await
    .expect("sent");
    assert_eq!(r.failed_requests, 0);
    r.accepted
}

async fn stored(ch: &clickhouse::Client) -> u64 {
    common::count(ch, "SELECT count() FROM events WHERE revision = 0").await
}

/// Waits until `check` holds on `stage`'s metrics, returning the scrape.
async fn wait_metrics(
    stage: &StageProcess,
    what: &str,
    check: impl Fn(&[(String, f64)]) -> bool,
) -> Vec<(String, f64)> {
    let until = std::time::Instant::now() + BOUND;
    loop {
        let m = stage.metrics().await;
        if check(&m) {
            return m;
        }
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}; log {}",
            stage.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn series_of<'a>(m: &'a [(String, f64)], name: &str) -> Vec<&'a (String, f64)> {
    m.iter()
        .filter(|(s, _)| s.starts_with(&format!("{name}{{")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_export_lag_and_freshness_and_lag_follows_a_stalled_sink() {
    let (cfg, _) = common::config("");
    let ch = cfg.clickhouse.client();
    let proxy = StallingProxy::start(&cfg.clickhouse.url).await;
    let file = std::env::temp_dir().join(format!("xoflow-ops-{}.toml", common::unique()));
    std::fs::write(&file, config(receiver().await)).expect("config file");
    let file = file.to_string_lossy().into_owned();
    let command = |stage: &str| {
        let mut c = common::xoflow_command(&cfg, &["--config", &file, stage]);
        c.env("XOFLOW_INGEST__GRPC_ADDR", "127.0.0.1:0")
            .env("XOFLOW_INGEST__HTTP_ADDR", "127.0.0.1:0")
            .env("XOFLOW_ENRICH__BATCH_MAX_WAIT", "20ms")
            .env("XOFLOW_SINK__BATCH_MAX_WAIT", "200ms")
            // Looks (and lag gauges) every second.
            .env("XOFLOW_SINK__STALL_TIMEOUT", "4s")
            .env("XOFLOW_ENRICH__STALL_TIMEOUT", "4s")
            // Back within a second of ClickHouse.
            .env("XOFLOW_SINK__RETRY_MAX_BACKOFF", "1s");
        c
    };
    // The schema first, straight to ClickHouse: the sink's own migration
    // goes through the proxy.
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrate");
    let mut sink_cmd = command("sink");
    sink_cmd.env("XOFLOW_CLICKHOUSE__URL", proxy.url());
    let sink = StageProcess::spawn(sink_cmd, "sink").await;
    let alert = StageProcess::spawn(command("alert"), "alert").await;
    let enrich = StageProcess::spawn(command("enrich"), "enrich").await;
    let ingest = StageProcess::spawn(command("ingest"), "ingest").await;
    let grpc = ingest.grpc.clone().expect("grpc address");

    // Data flows: every stage's series appear and move.
    let (events, valid) = surveys("a", 300, 5);
    assert_eq!(send(&grpc, events).await, valid);
    common::wait_for("the first events stored", BOUND, || {
        let ch = ch.clone();
        async move { stored(&ch).await == valid }
    })
    .await;
    let m = wait_metrics(&ingest, "ingest's records", |m| {
        metric_sum(m, "xoflow_ingest_records_out_total") >= valid as f64
    })
    .await;
    assert_eq!(
        metric_sum(&m, "xoflow_ingest_records_in_total"),
        (valid + 5) as f64
    );
    assert_eq!(metric_sum(&m, "xoflow_ingest_dead_letters_total"), 5.0);
    assert!(has_metric(&m, "xoflow_ingest_producer_queue_records"));
    let m = wait_metrics(&enrich, "enrich caught up", |m| {
        metric_sum(m, "xoflow_enrich_records_out_total") >= valid as f64
            && series_of(m, "xoflow_enrich_consumer_lag_records").len() >= 4
            && metric_sum(m, "xoflow_enrich_consumer_lag_records") == 0.0
    })
    .await;
    assert!(metric_sum(&m, "xoflow_enrich_records_in_total") >= valid as f64);
    let m = wait_metrics(&sink, "the sink caught up", |m| {
        metric_sum(m, "xoflow_sink_occurred_to_stored_seconds_count") == valid as f64
            && series_of(m, "xoflow_sink_consumer_lag_records").len() >= 4
            && metric_sum(m, "xoflow_sink_consumer_lag_records") == 0.0
    })
    .await;
    assert_eq!(
        metric_sum(&m, "xoflow_sink_received_to_stored_seconds_count"),
        valid as f64
    );
    // Occurred an hour before it was sent: nothing is stored fresher
    // than 10 s.
    assert_eq!(
        metric_sum(
            &m,
            "xoflow_sink_occurred_to_stored_seconds_bucket{le=\"10\"}"
        ),
        0.0
    );
    assert!(metric_sum(&m, "xoflow_sink_records_in_total") >= (valid + 5) as f64);
    assert!(metric_sum(&m, "xoflow_sink_insert_bytes_total") > 0.0);
    wait_metrics(&alert, "alerts delivered and the alert stage's lag", |m| {
        metric_sum(m, "xoflow_alert_records_in_total") > 0.0
            && has_metric(m, "xoflow_alert_raised_to_delivered_seconds_bucket")
            && !series_of(m, "xoflow_alert_consumer_lag_records").is_empty()
    })
    .await;

    // ClickHouse stalls: the sink takes a batch and retries it.
    proxy.pause();
    let (events, more) = surveys("b", 200, 0);
    assert_eq!(send(&grpc, events).await, more);
    wait_metrics(&sink, "the sink to say ClickHouse is away", |m| {
        metric_sum(
            m,
            "xoflow_stage_not_ready{stage=\"sink\",reason=\"clickhouse_unreachable\"}",
        ) == 1.0
    })
    .await;
    // What enrich produces now waits in Kafka: the lag rises.
    let (events, later) = surveys("c", 200, 0);
    assert_eq!(send(&grpc, events).await, later);
    let m = wait_metrics(&sink, "the sink's lag to rise", |m| {
        metric_sum(m, "xoflow_sink_consumer_lag_records") >= later as f64
    })
    .await;
    let peak = metric_sum(&m, "xoflow_sink_consumer_lag_records");
    assert!(metric_sum(&m, "xoflow_sink_insert_errors_total") > 0.0);
    assert_eq!(stored(&ch).await, valid, "nothing stored while stalled");

    // ClickHouse is back: the lag falls to 0 and every event is stored.
    proxy.resume();
    let m = wait_metrics(&sink, "the sink's lag back to 0", |m| {
        metric_sum(m, "xoflow_sink_consumer_lag_records") == 0.0
            && metric_sum(m, "xoflow_sink_occurred_to_stored_seconds_count")
                == (valid + more + later) as f64
    })
    .await;
    assert_eq!(stored(&ch).await, valid + more + later);
    println!(
        "sink lag: 0 → {peak} while ClickHouse stalled → 0; freshness count {}",
        metric_sum(&m, "xoflow_sink_occurred_to_stored_seconds_count")
    );

    // Every metric named by a dashboard or an alerting rule is exported.
    let mut exported = BTreeSet::new();
    for stage in [&ingest, &enrich, &sink, &alert] {
        for (series, _) in stage.metrics().await {
            let name = series.split('{').next().unwrap_or_default().to_owned();
            exported.insert(name);
        }
    }
    let named = ops_files_metric_names();
    assert!(named.len() > 20, "{named:?}");
    let missing: Vec<_> = named
        .iter()
        .filter(|(n, _)| !exported.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}");
    let distinct: BTreeSet<&String> = named.iter().map(|(n, _)| n).collect();
    println!(
        "{} metric names in the dashboards and rules, all exported ({} exported in all)",
        distinct.len(),
        exported.len()
    );

    for s in [ingest, enrich, sink, alert] {
        s.stop().await;
    }
    common::drop_database(&cfg).await;
    let _ = std::fs::remove_file(&file);
}

/// Every `xoflow_…` name in the PromQL of the dashboards (`expr` of each
/// target) and of the alerting rules (`expr:` lines), with the file it is
/// in.
fn ops_files_metric_names() -> BTreeSet<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut exprs: Vec<(String, String)> = Vec::new();
    let dashboards = root.join("grafana/dashboards");
    for f in std::fs::read_dir(&dashboards).expect("dashboards") {
        let path = f.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        collect_exprs(&json, &path.display().to_string(), &mut exprs);
    }
    for f in std::fs::read_dir(root.join("prometheus")).expect("rules") {
        let path = f.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("rules");
        for line in text.lines() {
            if let Some(e) = line.trim().strip_prefix("expr:") {
                exprs.push((path.display().to_string(), e.to_owned()));
            }
        }
    }
    let mut names = BTreeSet::new();
    for (file, e) in exprs {
        assert!(balanced(&e), "{file}: unbalanced brackets or quotes: {e}");
        let mut rest = e.as_str();
        while let Some(i) = rest.find("xoflow_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert((tail[..end].to_owned(), file.clone()));
            rest = &tail[end..];
        }
    }
    names
}

/// Brackets nest and close, quotes close: the typo a dashboard would show
/// only as "parse error" once deployed.
fn balanced(expr: &str) -> bool {
    let mut open = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    open.is_empty() && !quoted
}

fn collect_exprs(v: &serde_json::Value, file: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(e)) = m.get("expr") {
                out.push((file.to_owned(), e.clone()));
            }
            for x in m.values() {
                collect_exprs(x, file, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                collect_exprs(x, file, out);
            }
        }
        _ => {}
    }
}
