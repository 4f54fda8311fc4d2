//! The console in a real browser: Debian's headless Chromium, driven over
//! WebDriver (chromedriver), against a pipeline run in this process with
//! the console on its admin server.
//!
//! The page must load with no error in the browser's console, its stage
//! figures must follow new data, and every CX figure it shows must equal
//! what the same SQL returns from ClickHouse (and what the events sent
//! imply). Chinese touchpoint and store names travel through as they were
//! sent. A screenshot is left at `target/console.png` for a person.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use xoflow::Stages;
use xoflow::console::cx;
use xoflow_proto::v1::{Event, MetricKind};

const BOUND: Duration = Duration::from_secs(90);

/// An answer of `kind` on its usual scale (NPS 0-10, CSAT 1-5, CES 1-7).
fn survey(
    id: &str,
    tenant: &str,
    at: (&str, &str, &str),
    store: &str,
    customer: &str,
    (kind, score, max): (MetricKind, f64, i32),
) -> Event {
    let min = if kind == MetricKind::Nps { 0 } else { 1 };
    common::survey(id, tenant, at, store, customer, (kind, score, min, max))
}

const SERVING: (&str, &str, &str) = ("堂食", "用餐", "上菜服务");
const PAYING: (&str, &str, &str) = ("堂食", "结账", "买单");
const DELIVERY: (&str, &str, &str) = ("online-purchase", "after-sales", "delivery-survey");

/// The events: NPS at three stores on 上菜服务 (深圳南山店 -16.7, 广州天河店
/// 66.7, 北京朝阳店 40.0; the touchpoint 29.4), CSAT and CES on 买单,
/// three acme detractors (an alert each), two answers off the scale
/// (dead letters).
fn events(tag: &str) -> (Vec<Event>, u64) {
    let mut out = Vec::new();
    let stores = [
        ("深圳南山店", &[9.0, 10.0, 3.0, 2.0, 1.0, 8.0][..]),
        ("广州天河店", &[10.0, 10.0, 9.0, 9.0, 7.0, 8.0][..]),
        ("北京朝阳店", &[9.0, 6.0, 7.0, 10.0, 10.0][..]),
    ];
    for (n, (store, scores)) in stores.into_iter().enumerate() {
        for (i, s) in scores.iter().enumerate() {
            out.push(survey(
                &format!("{tag}-s{n}-{i}"),
                "hotpot",
                SERVING,
                store,
                &format!("c-s{n}-{i}"),
                (MetricKind::Nps, *s, 10),
            ));
        }
    }
    for (i, s) in [5.0, 4.0, 2.0, 5.0].iter().enumerate() {
        out.push(survey(
            &format!("{tag}-csat-{i}"),
            "hotpot",
            PAYING,
            "深圳南山店",
            "c-pay",
            (MetricKind::Csat, *s, 5),
        ));
    }
    for (i, s) in [6.0, 7.0, 3.0].iter().enumerate() {
        out.push(survey(
            &format!("{tag}-ces-{i}"),
            "hotpot",
            PAYING,
            "深圳南山店",
            "c-pay",
            (MetricKind::Ces, *s, 7),
        ));
    }
    for i in 0..3 {
        out.push(survey(
            &format!("{tag}-acme-{i}"),
            "acme",
            DELIVERY,
            "",
            &format!("c-acme-{i}"),
            (MetricKind::Nps, 2.0, 10),
        ));
    }
    let valid = out.len() as u64;
    for i in 0..2 {
        out.push(survey(
            &format!("{tag}-bad-{i}"),
            "hotpot",
            SERVING,
            "深圳南山店",
            "c-bad",
            (MetricKind::Nps, 42.0, 10),
        ));
    }
    (out, valid)
}

async fn send(grpc: &str, events: Vec<Event>) -> u64 {
    xoflow::datagen::load::send(
        &format!("http://{grpc}"),
        events,
        &xoflow::datagen::load::LoadOptions {
            batch: 100,
            rate: None,
            concurrency: 1,
        },
    )
    .await
    .expect("sent")
    .accepted
}

/// A WebDriver call: method, path, JSON body; the answer's `value`.
async fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("chromedriver");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    // chromedriver answers with a content length and may keep the
    // connection open: read the head, then exactly the body.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let (head, body) = loop {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
            .expect("read");
        assert!(n > 0, "{method} {path}: connection closed early");
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .expect("content-length");
        while raw.len() < end + 4 + length {
            let n = tokio::time::timeout(BOUND, s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{method} {path}: body cut"))
                .expect("read");
            assert!(n > 0, "{method} {path}: connection closed early");
            raw.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).into_owned();
        break (head, body);
    };
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {head}\n{body}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{method} {path}: {head}\n{v}"
    );
    v["value"].clone()
}

async fn script(port: u16, session: &str, js: &str) -> Value {
    wd(
        port,
        "POST",
        &format!("/session/{session}/execute/sync"),
        Some(json!({ "script": js, "args": [] })),
    )
    .await
}

/// Waits until `js` returns true in the page.
async fn wait_page(port: u16, session: &str, what: &str, js: &str) {
    common::wait_for(what, BOUND, || async move {
        script(port, session, js).await == json!(true)
    })
    .await;
}

const ROWS: &str = "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr:not(.empty)')).map(tr => { const o = Object.assign({}, tr.dataset); tr.querySelectorAll('[data-field]').forEach(td => o[td.dataset.field] = td.textContent); return o; });";

async fn rows(port: u16, session: &str, table: &str) -> Vec<Value> {
    let js = ROWS.replace("arguments[0]", &format!("'{table}'"));
    script(port, session, &js)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// How the page writes a figure.
fn int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fixed(v: Option<f64>, d: usize) -> String {
    v.map_or_else(|| "\u{2013}".to_owned(), |v| format!("{v:.d$}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_figures_and_what_clickhouse_holds() {
    let (cfg, _) = common::config(
        r#"
[enrich.alerts.tenants.acme]
default_department = "customer-care"
[[enrich.alerts.tenants.acme.rules]]
name = "detractor"
severity = "high"
kinds = ["survey"]
nps = ["detractor"]
"#,
    );
    let running = common::start(&cfg, Stages::ALL).await;
    let grpc = running.grpc_addr.expect("ingest").to_string();
    let admin = running.admin_addr.to_string();
    let ch = cfg.clickhouse.client();
    let (batch, valid) = events("a");
    assert_eq!(send(&grpc, batch).await, valid);
    common::wait_for("events and alerts stored", BOUND, || {
        let ch = ch.clone();
        async move {
            let events = common::count(&ch, "SELECT count() FROM events WHERE revision = 0").await;
            let alerts = common::count(&ch, "SELECT count() FROM alerts_open").await;
            let dead = common::count(&ch, "SELECT count() FROM dead_letters").await;
            events == valid && alerts == 3 && dead == 2
        }
    })
    .await;

    // chromedriver and Debian's Chromium, with the flags this machine needs.
    let port = common::free_port();
    let _driver = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; deploy/local/up.sh installs it)");
    common::wait_for("chromedriver to listen", BOUND, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let profile = std::env::temp_dir().join(format!("xoflow-chromium-{}", common::unique()));
    let session = wd(
        port,
        "POST",
        "/session",
        Some(json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1440,1500", "--lang=en-US",
                ]
            }
        }}})),
    )
    .await["sessionId"]
        .as_str()
        .expect("session id")
        .to_owned();
    let s = session.as_str();
    wd(
        port,
        "POST",
        &format!("/session/{s}/url"),
        Some(json!({ "url": format!("http://{admin}/console") })),
    )
    .await;
    wait_page(
        port,
        s,
        "the console to load its figures",
        "return document.body.dataset.cxLoaded === 'true' && Number(document.getElementById('updated').dataset.polls) >= 2",
    )
    .await;

    // Live: the records taken in follow new data.
    let shown_in = || async {
        script(
            port,
            s,
            "const e = document.querySelector('#stages tr[data-stage=ingest] [data-field=records_in]'); return e ? e.textContent : null;",
        )
        .await
    };
    let before = shown_in().await;
    assert_eq!(before, json!(int(valid + 2)), "records judged by ingest");
    let (more, more_valid) = events("b");
    assert_eq!(send(&grpc, more).await, more_valid);
    let after = json!(int(2 * (valid + 2)));
    common::wait_for("the page to show the new records", BOUND, || {
        let after = after.clone();
        async move { shown_in().await == after }
    })
    .await;
    // Each consuming stage's lag appears with its watchdog's first look
    // (within 5 s of its start).
    wait_page(
        port,
        s,
        "a consumer lag for every consuming stage",
        "return ['enrich', 'sink', 'alert'].every(st => { const e = document.querySelector(`#stages tr[data-stage=${st}] [data-field=consumer_lag]`); return e && /^[0-9,]+$/.test(e.textContent); })",
    )
    .await;
    let stages = rows(port, s, "#stages").await;
    let names: Vec<&str> = stages.iter().filter_map(|r| r["stage"].as_str()).collect();
    assert_eq!(names, ["ingest", "enrich", "sink", "alert"]);
    // The second batch reaches ClickHouse; reload for the CX figures.
    common::wait_for("the second batch stored", BOUND, || {
        let ch = ch.clone();
        async move {
            common::count(&ch, "SELECT count() FROM events WHERE revision = 0").await
                == valid + more_valid
        }
    })
    .await;
    // Marked, so that the wait below cannot be met by the old page when the
    // reload is slow to replace it (a loaded machine): a new page has a new
    // body.
    wait_page(
        port,
        s,
        "the old page marked",
        "document.body.dataset.stale = 'true'; return true;",
    )
    .await;
    wd(
        port,
        "POST",
        &format!("/session/{s}/refresh"),
        Some(json!({})),
    )
    .await;
    wait_page(
        port,
        s,
        "the console to load again",
        "return document.body.dataset.stale !== 'true' && document.body.dataset.cxLoaded === 'true' && Number(document.getElementById('updated').dataset.polls) >= 2",
    )
    .await;

    // CX figures: what the page shows = the same SQL on ClickHouse.
    let touchpoints: Vec<cx::Touchpoint> = ch
        .query(cx::TOUCHPOINTS_SQL)
        .bind(7u32)
        .fetch_all()
        .await
        .expect("touchpoints");
    let shown = rows(port, s, "#cx-touchpoints").await;
    assert_eq!(shown.len(), touchpoints.len(), "{shown:?}");
    for (row, t) in shown.iter().zip(&touchpoints) {
        assert_eq!(row["touchpoint"], json!(t.touchpoint));
        assert_eq!(row["nps"], json!(fixed(t.nps, 1)), "{}", t.touchpoint);
        assert_eq!(row["nps_responses"], json!(int(t.nps_responses)));
        assert_eq!(row["csat_pct"], json!(fixed(t.csat_pct, 1)));
        assert_eq!(row["csat_n"], json!(int(t.csat_n)));
        assert_eq!(row["ces_mean"], json!(fixed(t.ces_mean, 2)));
        assert_eq!(row["ces_n"], json!(int(t.ces_n)));
    }
    // ... and what the events imply (each batch sent twice: same ratios).
    let serving = shown
        .iter()
        .find(|r| r["touchpoint"] == "上菜服务")
        .expect("上菜服务");
    assert_eq!(
        (&serving["nps"], &serving["nps_responses"]),
        (&json!("29.4"), &json!("34"))
    );
    let paying = shown
        .iter()
        .find(|r| r["touchpoint"] == "买单")
        .expect("买单");
    assert_eq!(
        (&paying["csat_pct"], &paying["ces_mean"]),
        (&json!("75.0"), &json!("5.33"))
    );

    let stores: Vec<cx::WorstStore> = ch
        .query(cx::WORST_STORES_SQL)
        .bind(7u32)
        .bind(5u64)
        .fetch_all()
        .await
        .expect("stores");
    let shown = rows(port, s, "#cx-stores").await;
    assert_eq!(shown.len(), stores.len());
    for (row, st) in shown.iter().zip(&stores) {
        assert_eq!(row["worst_store"], json!(st.worst.1));
        assert_eq!(row["worst_nps"], json!(fixed(Some(st.worst.0), 1)));
        assert_eq!(row["worst_responses"], json!(int(st.worst.2)));
        assert_eq!(row["best_store"], json!(st.best.1));
        assert_eq!(row["best_nps"], json!(fixed(Some(st.best.0), 1)));
        assert_eq!(row["stores"], json!(int(st.stores)));
    }
    let serving = shown
        .iter()
        .find(|r| r["touchpoint"] == "上菜服务")
        .expect("stores");
    assert_eq!(
        [
            &serving["worst_store"],
            &serving["worst_nps"],
            &serving["best_store"],
            &serving["best_nps"]
        ],
        [
            &json!("深圳南山店"),
            &json!("-16.7"),
            &json!("广州天河店"),
            &json!("66.7")
        ]
    );

    let open: Vec<cx::OpenAlerts> = ch
        .query(cx::OPEN_ALERTS_SQL)
        .fetch_all()
        .await
        .expect("alerts");
    let shown = rows(port, s, "#open-alerts").await;
    assert_eq!(shown.len(), open.len());
    for (row, a) in shown.iter().zip(&open) {
        assert_eq!(row["department"], json!(a.department));
        assert_eq!(row["open"], json!(int(a.open)));
        assert_eq!(row["acknowledged"], json!(int(a.acknowledged)));
    }
    assert_eq!(
        shown[0]["open"],
        json!("6"),
        "one per detractor answer (the rule sets no quiet period), 3 per batch"
    );

    let dead: Vec<cx::DeadLetters> = ch
        .query(cx::DEAD_LETTERS_SQL)
        .bind(7u64 * 86_400)
        .fetch_all()
        .await
        .expect("dead letters");
    let shown = rows(port, s, "#dead-letters").await;
    assert_eq!(shown.len(), dead.len());
    for (row, d) in shown.iter().zip(&dead) {
        assert_eq!(
            (&row["stage"], &row["reason"]),
            (&json!(d.stage), &json!(d.reason))
        );
        assert_eq!(row["records"], json!(int(d.records)));
        let (field, description) = &d.example;
        let example = if field.is_empty() || description.contains(field.as_str()) {
            description.clone()
        } else {
            format!("{field}: {description}")
        };
        assert_eq!(row["example"], json!(example));
    }
    assert_eq!(shown[0]["records"], json!("4"));

    // A screenshot for a person, then the browser's own console: no error.
    let png = wd(port, "GET", &format!("/session/{s}/screenshot"), None).await;
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        png.as_str().expect("base64 PNG"),
    )
    .expect("PNG");
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console.png");
    std::fs::write(&shot, &png).expect("screenshot");
    let log = wd(
        port,
        "POST",
        &format!("/session/{s}/se/log"),
        Some(json!({ "type": "browser" })),
    )
    .await;
    let severe: Vec<&Value> = log
        .as_array()
        .expect("browser log")
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .collect();
    assert!(severe.is_empty(), "the page logged: {severe:?}");
    println!(
        "console: {} stages, {} touchpoints, {} stores ranked, {} departments with open alerts; screenshot {} ({} bytes)",
        stages.len(),
        touchpoints.len(),
        stores.len(),
        open.len(),
        shot.display(),
        png.len()
    );
    wd(port, "DELETE", &format!("/session/{s}"), None).await;
    let _ = std::fs::remove_dir_all(&profile);
    running.stop();
    running.wait().await.expect("clean stop");
    common::drop_database(&cfg).await;
}
