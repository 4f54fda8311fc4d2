//! The alert stage against the real broker and ClickHouse, delivering to
//! real HTTP receivers on 127.0.0.1: every alert reaches its department's
//! webhooks, signed, in each format; copies are stored and delivered once;
//! a failing receiver is retried with growing gaps while a dead one slows
//! nobody else; a stage dropped mid-way loses nothing; reading pauses while
//! a department holds its most pending alerts; an alert whose partition
//! moves to another instance is given up by its new owner alone.

mod alert_support;
mod common;
mod ingest_support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use alert_support::{Behaviour, Receiver, Spec};
use clickhouse::Row;
use serde::Deserialize;
use xoflow_alert::{ApiKeys, Format};
use xoflow_proto::{Message, v1::Alert};

#[derive(Debug, Row, Deserialize)]
struct Counts {
    rows: u64,
    ids: u64,
}

#[derive(Debug, Row, Deserialize)]
struct LogRow {
    alert_id: String,
    department: String,
    webhook: u16,
    host: String,
    format: String,
    attempt: u32,
    status: u16,
    outcome: String,
    error: String,
}

async fn delivery_log(cfg: &xoflow::Config) -> Vec<LogRow> {
    alert_support::all(
        cfg,
        "SELECT alert_id, department, webhook, host, toString(format) AS format, attempt, status, \
         toString(outcome) AS outcome, error FROM alert_deliveries ORDER BY alert_id, webhook, attempt",
    )
    .await
}

/// Waits until the group has committed every record of the alerts topic.
async fn wait_all_committed(cfg: &xoflow::Config, group: &str) {
    let (k, g, t) = (
        cfg.kafka.clone(),
        group.to_owned(),
        vec![cfg.kafka.topics.alerts.clone()],
    );
    common::wait_for(
        "every alert offset committed",
        Duration::from_secs(60),
        move || {
            let (k, g, t) = (k.clone(), g.clone(), t.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    xoflow_common::kafka::watch::group_offsets(&k, &g, &t)
                })
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|ps| ps.iter().all(|p| p.committed.unwrap_or(0) >= p.high))
            }
        },
    )
    .await;
}

fn specs<'a>(
    id: &str,
    tenant: &'a str,
    department: &'a str,
    n: usize,
    raised_ms: i64,
) -> Vec<Alert> {
    (0..n)
        .map(|i| {
            alert_support::alert(&Spec {
                seed: format!("{id}-{tenant}-{department}-{i}"),
                tenant,
                department,
                store: "sz-01",
                raised_ms,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_reaches_its_departments_webhooks_signed_and_once_stored() {
    let (cfg, id) = alert_support::setup().await;
    let generic = Receiver::start(Format::Generic, Some("gen-secret"), Behaviour::Ok).await;
    let feishu = Receiver::start(Format::Feishu, Some("fs-secret"), Behaviour::Ok).await;
    let dingtalk = Receiver::start(Format::Dingtalk, Some("SECding"), Behaviour::Ok).await;
    let wecom = Receiver::start(Format::Wecom, None, Behaviour::Ok).await;
    let slack = Receiver::start(Format::Slack, None, Behaviour::Ok).await;
    let gone = Receiver::start(Format::Generic, Some("k"), Behaviour::Status(404)).await;
    let mut acfg = alert_support::alert_config(&id);
    // Logistics has two receivers: every alert goes to both.
    for (tenant, dept, r) in [
        ("acme", "logistics", &generic),
        ("acme", "logistics", &feishu),
        ("acme", "customer-care", &dingtalk),
        ("acme", "store-operations", &wecom),
        ("hotpot", "kitchen", &slack),
        ("acme", "legal", &gone),
    ] {
        alert_support::webhook(
            &mut acfg,
            tenant,
            dept,
            r.url(),
            r.format,
            r.secret.as_deref(),
        );
    }
    let now = common::now_ms();
    let logistics = specs(&id, "acme", "logistics", 12, now);
    let care = specs(&id, "acme", "customer-care", 6, now);
    let stores = specs(&id, "acme", "store-operations", 5, now);
    let kitchen = specs(&id, "hotpot", "kitchen", 5, now);
    let legal = specs(&id, "acme", "legal", 2, now);
    // No webhook configured for finance: recorded, logged as no_webhook.
    let finance = specs(&id, "acme", "finance", 3, now);
    let mut all: Vec<Alert> = [&logistics, &care, &stores, &kitchen, &legal, &finance]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    // Enrich re-sent some alerts after a crash: copies, some twice.
    let copies: Vec<Alert> = logistics
        .iter()
        .take(6)
        .chain(logistics.iter().take(3))
        .chain(care.iter().take(2))
        .cloned()
        .collect();
    alert_support::produce(&cfg, &all, &[b"\xff\xfe not an alert"]).await;
    let running = alert_support::start(&cfg, &acfg, ApiKeys::default()).await;
    alert_support::produce(&cfg, &copies, &[]).await;
    all.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));

    let ids = |alerts: &[Alert]| -> BTreeSet<String> {
        alerts.iter().map(|a| a.alert_id.clone()).collect()
    };
    let expect: Vec<(&Receiver, BTreeSet<String>)> = vec![
        (&generic, ids(&logistics)),
        (&feishu, ids(&logistics)),
        (&dingtalk, ids(&care)),
        (&wecom, ids(&stores)),
        (&slack, ids(&kitchen)),
    ];
    common::wait_for("every alert delivered", Duration::from_secs(60), || {
        let done = expect.iter().all(|(r, want)| {
            let got: BTreeSet<String> = r
                .delivered()
                .iter()
                .map(|x| x.header("idempotency-key").to_owned())
                .collect();
            &got == want
        }) && gone.received().len() >= legal.len();
        async move { done }
    })
    .await;
    wait_all_committed(&cfg, &acfg.group_id).await;

    // Each receiver got its department's alerts and only those, every
    // request signed and fresh, the key the alert id each time.
    for (r, want) in &expect {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for x in r.received() {
            let key = alert_support::verify(&x, r.format, r.secret.as_deref());
            *seen.entry(key).or_default() += 1;
        }
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            *want,
            "{}",
            r.format
        );
        // Copies on the topic while the first was being delivered, or
        // after it was, are not delivered again.
        assert!(seen.values().all(|n| *n == 1), "{}: {seen:?}", r.format);
    }
    // Bodies, per format.
    let by_id: HashMap<&str, &Alert> = all.iter().map(|a| (a.alert_id.as_str(), a)).collect();
    for x in generic.received() {
        let b = x.json();
        let a = by_id[x.header("idempotency-key")];
        assert_eq!(b["type"], "xoflow.alert.v1");
        assert_eq!(b["alert_id"], a.alert_id);
        assert_eq!(b["department"], "logistics");
        assert_eq!(b["severity"], "high");
        assert_eq!(b["reasons"][1], "订单晚到 2 天");
        assert_eq!(b["trigger"]["text"], "配送晚了两天，汤都凉了");
        assert_eq!(b["trigger"]["region"], "华南");
        assert_eq!(b["trigger"]["order"]["delivery_late_seconds"], 172_800);
        assert_eq!(b["trigger"]["customer"]["lifetime_value_minor"], 560_000);
        assert_eq!(b["trigger"]["scores"]["nps"], 2);
    }
    for x in feishu.received() {
        let b = x.json();
        assert_eq!(b["msg_type"], "interactive");
        assert_eq!(
            b["card"]["header"]["title"]["content"],
            "[HIGH] late-delivery-detractor"
        );
        let md = b["card"]["elements"][0]["text"]["content"]
            .as_str()
            .expect("lark_md");
        assert!(md.contains("> 配送晚了两天，汤都凉了"), "{md}");
    }
    for x in dingtalk.received() {
        let b = x.json();
        assert_eq!(b["msgtype"], "markdown");
        let text = b["markdown"]["text"].as_str().expect("text");
        assert!(
            text.contains("- 订单晚到 2 天") && text.contains("sz-01 (华南)"),
            "{text}"
        );
    }
    for x in wecom.received() {
        assert_eq!(x.json()["msgtype"], "markdown");
    }
    for x in slack.received() {
        assert_eq!(x.json()["blocks"][0]["type"], "header");
    }

    // ClickHouse: one row per alert although copies were read.
    let c: Counts = alert_support::one(
        &cfg,
        "SELECT count() AS rows, uniqExact(alert_id) AS ids FROM alerts",
    )
    .await;
    assert_eq!((c.rows, c.ids), (all.len() as u64, all.len() as u64));
    let log = delivery_log(&cfg).await;
    let outcome = |dept: &str, outcome: &str| {
        log.iter()
            .filter(|r| r.department == dept && r.outcome == outcome)
            .count()
    };
    assert_eq!(outcome("logistics", "delivered"), 2 * logistics.len());
    assert_eq!(outcome("customer-care", "delivered"), care.len());
    assert_eq!(outcome("finance", "no_webhook"), finance.len());
    assert_eq!(outcome("legal", "dead"), legal.len());
    assert!(
        log.iter().all(|r| r.outcome != "retry"),
        "nothing failed transiently"
    );
    // The log names webhooks by index and host, never by URL.
    for r in &log {
        assert!(!r.host.contains("tok123") && !r.host.contains('/'), "{r:?}");
        if r.outcome == "delivered" {
            assert_eq!((r.attempt, r.status), (1, 200), "{r:?}");
        }
    }
    assert!(
        log.iter()
            .any(|r| r.department == "logistics" && r.webhook == 1 && r.format == "feishu")
    );
    assert!(
        log.iter()
            .filter(|r| r.outcome == "dead")
            .all(|r| r.status == 404 && r.error.contains("refused"))
    );

    // Dead letters: the 404s (UNDELIVERABLE, the alert as payload) and the
    // record that is no alert (DECODE).
    let dead = ingest_support::dead_letters(
        &ingest_support::read_topic(&cfg.kafka.brokers, &cfg.kafka.topics.dead_letters, 3).await,
    );
    let undeliverable: BTreeSet<String> = dead
        .iter()
        .filter(|d| d.reason == "UNDELIVERABLE")
        .map(|d| {
            assert_eq!(d.stage, "alert");
            assert_eq!(d.field, "alert.tenants.acme.departments.legal.webhooks[0]");
            Alert::decode(d.payload.as_slice())
                .expect("alert payload")
                .alert_id
        })
        .collect();
    assert_eq!(undeliverable, ids(&legal));
    assert_eq!(dead.iter().filter(|d| d.reason == "DECODE").count(), 1);
    running.shutdown().await;
    common::drop_database(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_backoff_and_a_dead_one_slows_no_one_else() {
    let (cfg, id) = alert_support::setup().await;
    let started = tokio::time::Instant::now();
    let flaky = Receiver::start(
        Format::Generic,
        Some("f"),
        Behaviour::FailUntil(started + Duration::from_secs(60)),
    )
    .await;
    let hole = alert_support::black_hole().await;
    let fast = Receiver::start(Format::Generic, Some("q"), Behaviour::Ok).await;
    let mut acfg = alert_support::alert_config(&id);
    acfg.request_timeout = Duration::from_secs(2);
    acfg.retry_backoff = Duration::from_secs(1);
    acfg.retry_max_backoff = Duration::from_secs(8);
    alert_support::webhook(
        &mut acfg,
        "acme",
        "flaky",
        flaky.url(),
        Format::Generic,
        Some("f"),
    );
    alert_support::webhook(
        &mut acfg,
        "acme",
        "hole",
        format!("http://{hole}/hook"),
        Format::Generic,
        Some("h"),
    );
    alert_support::webhook(
        &mut acfg,
        "acme",
        "fast",
        fast.url(),
        Format::Generic,
        Some("q"),
    );
    let running = alert_support::start(&cfg, &acfg, ApiKeys::default()).await;
    let now = common::now_ms();
    let flaky_alerts = specs(&id, "acme", "flaky", 3, now);
    let hole_alerts = specs(&id, "acme", "hole", 12, now);
    alert_support::produce(&cfg, &[flaky_alerts.clone(), hole_alerts].concat(), &[]).await;

    // Waves of the fast department's alerts while the others fail and hang.
    let mut fast_alerts = Vec::new();
    // When each was produced, on the monotonic clock (see `Received::at`).
    let mut produced: HashMap<String, tokio::time::Instant> = HashMap::new();
    for wave in 0..5 {
        let raised = common::now_ms();
        let at = tokio::time::Instant::now();
        let alerts: Vec<Alert> = (0..4)
            .map(|i| {
                alert_support::alert(&Spec {
                    seed: format!("{id}-fast-{wave}-{i}"),
                    tenant: "acme",
                    department: "fast",
                    store: "sz-01",
                    raised_ms: raised,
                })
            })
            .collect();
        alert_support::produce(&cfg, &alerts, &[]).await;
        produced.extend(alerts.iter().map(|a| (a.alert_id.clone(), at)));
        fast_alerts.extend(alerts);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let want = fast_alerts.len();
    let f = fast.clone();
    common::wait_for(
        "the fast department's alerts",
        Duration::from_secs(30),
        move || {
            let n = f.delivered().len();
            async move { n >= want }
        },
    )
    .await;
    let mut latencies: Vec<u128> = fast
        .delivered()
        .iter()
        .map(|x| {
            let id = alert_support::verify(x, Format::Generic, Some("q"));
            (x.at - produced[&id]).as_millis()
        })
        .collect();
    latencies.sort_unstable();
    assert_eq!(latencies.len(), want, "each fast alert once");
    println!("raised → delivered, fast department (ms): {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < 3_000),
        "raised → delivered (ms) while another department's receiver hangs: {latencies:?}"
    );

    // The flaky receiver answers 200 from 60 s on: every alert gets there.
    let fl = flaky.clone();
    common::wait_for(
        "the flaky department's alerts",
        Duration::from_secs(60),
        move || {
            let n = fl
                .delivered()
                .iter()
                .map(|x| x.header("idempotency-key").to_owned())
                .collect::<BTreeSet<_>>()
                .len();
            async move { n == 3 }
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(60),
        "delivered only once the receiver recovered"
    );
    // Each flaky alert's attempts as the receiver saw them, in order.
    let mut attempts: HashMap<String, Vec<tokio::time::Instant>> = HashMap::new();
    for x in flaky.received() {
        let id = alert_support::verify(&x, Format::Generic, Some("f"));
        attempts.entry(id).or_default().push(x.at);
    }
    wait_for_log(&cfg, "flaky", 3).await;
    let log = delivery_log(&cfg).await;
    for a in &flaky_alerts {
        let rows: Vec<&LogRow> = log.iter().filter(|r| r.alert_id == a.alert_id).collect();
        let (last, retries) = rows.split_last().expect("attempts");
        assert_eq!(last.outcome, "delivered", "{rows:?}");
        assert!(retries.len() >= 6, "{rows:?}");
        assert!(
            retries
                .iter()
                .all(|r| r.outcome == "retry" && r.status == 500)
        );
        assert!(
            rows.iter()
                .enumerate()
                .all(|(i, r)| r.attempt == i as u32 + 1)
        );
        // The gaps between attempts as the receiver measured them on the
        // monotonic clock: the log's `at_ms` is wall-clock time, which a
        // step of the machine's clock moves (a gap of 109 s was once seen
        // in a test that ran 66 s).
        let seen = &attempts[&a.alert_id];
        assert_eq!(seen.len(), rows.len(), "every attempt logged once");
        let gaps: Vec<i64> = seen
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as i64)
            .collect();
        println!(
            "flaky alert {}: gaps between attempts (ms) {gaps:?}",
            &a.alert_id[..8]
        );
        // 1, 2, 4, 8 s (each between half and all of it), then 8 s at most:
        // the backoff doubles, never shrinks below the cap, never passes it.
        assert!(gaps[0] >= 450 && gaps[0] <= 1_600, "{gaps:?}");
        for w in gaps.windows(2).take(3) {
            assert!(w[1] + 150 >= w[0], "gaps shrink: {gaps:?}");
        }
        assert!(gaps[3] >= 2 * gaps[0], "gaps grow: {gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 8_000 + 2_500), "capped: {gaps:?}");
    }
    // The receiver that never answers: every attempt timed out, retried.
    let hole_rows: Vec<&LogRow> = log.iter().filter(|r| r.department == "hole").collect();
    assert!(!hole_rows.is_empty());
    assert!(
        hole_rows.iter().all(|r| r.outcome == "retry"
            && r.status == 0
            && r.error.contains("no answer within 2s")),
        "{hole_rows:?}"
    );
    running.shutdown().await;
    common::drop_database(&cfg).await;
}

/// Waits until `department` has `n` delivered rows in the log (its final
/// rows are stored with the next flush).
/// Waits until `receiver` got a request for each alert of `want`, by its
/// `Idempotency-Key`: answered 2xx when `delivered`, any answer otherwise.
async fn wait_for_keys(
    what: &str,
    receiver: &Receiver,
    want: &BTreeSet<String>,
    delivered: bool,
    within: Duration,
) {
    let (r, w) = (receiver.clone(), want.clone());
    common::wait_for(what, within, move || {
        let requests = if delivered {
            r.delivered()
        } else {
            r.received()
        };
        let got: BTreeSet<String> = requests
            .iter()
            .map(|x| x.header("idempotency-key").to_owned())
            .collect();
        let done = got == w;
        async move { done }
    })
    .await;
}

async fn wait_for_log(cfg: &xoflow::Config, department: &str, n: u64) {
    let (c, sql) = (
        cfg.clone(),
        format!(
            "SELECT count() AS rows, uniqExact(alert_id) AS ids FROM alert_deliveries \
             WHERE department = '{department}' AND outcome = 'delivered'"
        ),
    );
    common::wait_for("the delivery log", Duration::from_secs(30), move || {
        let (c, sql) = (c.clone(), sql.clone());
        async move { alert_support::one::<Counts>(&c, &sql).await.ids >= n }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_dropped_mid_way_loses_nothing_and_stores_each_alert_once() {
    let (cfg, id) = alert_support::setup().await;
    let slow = Receiver::start(
        Format::Generic,
        Some("s"),
        Behaviour::Slow(Duration::from_millis(300)),
    )
    .await;
    let mut acfg = alert_support::alert_config(&id);
    acfg.max_in_flight_per_department = 2;
    alert_support::webhook(
        &mut acfg,
        "acme",
        "care",
        slow.url(),
        Format::Generic,
        Some("s"),
    );
    let alerts = specs(&id, "acme", "care", 40, common::now_ms());
    alert_support::produce(&cfg, &alerts, &[]).await;

    let first = alert_support::start(&cfg, &acfg, ApiKeys::default()).await;
    let s = slow.clone();
    common::wait_for(
        "a first part delivered",
        Duration::from_secs(60),
        move || {
            let n = s.received().len();
            async move { n >= 10 }
        },
    )
    .await;
    // Killed in the middle of deliveries: nothing drained, nothing more
    // committed.
    first.kill().await;
    let before = slow.received().len();
    assert!(before < alerts.len(), "killed mid-way ({before})");

    // Copies arrive while it is away, as after an enrich crash.
    alert_support::produce(&cfg, &alerts[..5], &[]).await;
    let second = alert_support::start(&cfg, &acfg, ApiKeys::default()).await;
    let want: BTreeSet<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
    wait_for_keys(
        "every alert delivered",
        &slow,
        &want,
        true,
        Duration::from_secs(90),
    )
    .await;
    wait_all_committed(&cfg, &acfg.group_id).await;
    let received = slow.received();
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for x in &received {
        *per_id
            .entry(alert_support::verify(x, Format::Generic, Some("s")))
            .or_default() += 1;
        // The key is the alert the body is about, in every delivery.
        assert_eq!(x.json()["alert_id"], x.header("idempotency-key"));
    }
    assert_eq!(per_id.keys().cloned().collect::<BTreeSet<_>>(), want);
    let again = per_id.values().filter(|n| **n > 1).count();
    println!(
        "{} alerts, {} requests before the kill, {} in all; {again} alerts delivered more than once",
        alerts.len(),
        before,
        received.len()
    );
    let c: Counts = alert_support::one(
        &cfg,
        "SELECT count() AS rows, uniqExact(alert_id) AS ids FROM alerts",
    )
    .await;
    assert_eq!((c.rows, c.ids), (40, 40), "each alert stored once");
    second.shutdown().await;
    common::drop_database(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_pauses_while_a_department_holds_its_most_pending_alerts() {
    let (cfg, id) = alert_support::setup().await;
    let started = tokio::time::Instant::now();
    let down = Receiver::start(
        Format::Generic,
        Some("d"),
        Behaviour::FailUntil(started + Duration::from_secs(8)),
    )
    .await;
    let mut acfg = alert_support::alert_config(&id);
    acfg.max_pending_per_department = 3;
    acfg.batch_max_records = 2;
    acfg.retry_max_backoff = Duration::from_secs(2);
    alert_support::webhook(
        &mut acfg,
        "acme",
        "care",
        down.url(),
        Format::Generic,
        Some("d"),
    );
    let alerts = specs(&id, "acme", "care", 20, common::now_ms());
    alert_support::produce(&cfg, &alerts, &[]).await;
    let running = alert_support::start(&cfg, &acfg, ApiKeys::default()).await;
    // While the receiver fails, the stage takes in at most the bound and
    // one batch more: the rest stays in Kafka.
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let c: Counts = alert_support::one(
            &cfg,
            "SELECT count() AS rows, uniqExact(alert_id) AS ids FROM alerts",
        )
        .await;
        most = most.max(c.rows);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        (1..=4).contains(&most),
        "alerts read while the department was full: {most}"
    );
    let ids: BTreeSet<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
    wait_for_keys(
        "every alert delivered",
        &down,
        &ids,
        true,
        Duration::from_secs(60),
    )
    .await;
    wait_all_committed(&cfg, &acfg.group_id).await;
    let c: Counts = alert_support::one(
        &cfg,
        "SELECT count() AS rows, uniqExact(alert_id) AS ids FROM alerts",
    )
    .await;
    assert_eq!((c.rows, c.ids), (20, 20));
    println!("at most {most} of 20 alerts read while the receiver failed (bound 3, batches of 2)");
    running.shutdown().await;
    common::drop_database(&cfg).await;
}

#[derive(Debug, Row, Deserialize)]
struct DeadRows {
    alert_id: String,
    rows: u64,
}

/// Two instances of the stage and a receiver that always fails. The first
/// takes every alert and retries them; when the second joins, the alerts
/// of the partitions it takes are withdrawn from the first's workers, so
/// each alert is retried by one instance and given up once, with one
/// `dead` row and one dead letter. Before, the first went on retrying the
/// alerts it no longer owned until its own `give_up_after`: the moved
/// alerts were given up twice (60 `dead` rows for 40 alerts). About 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_whose_partition_moves_is_given_up_by_its_new_owner_alone() {
    let (cfg, id) = alert_support::setup().await;
    let down = Receiver::start(Format::Generic, Some("d"), Behaviour::Status(500)).await;
    let mut acfg = alert_support::alert_config(&id);
    acfg.retry_backoff = Duration::from_millis(200);
    acfg.retry_max_backoff = Duration::from_secs(1);
    // Far longer than a rebalance takes, so that it comes first.
    acfg.give_up_after = Duration::from_secs(30);
    alert_support::webhook(
        &mut acfg,
        "acme",
        "care",
        down.url(),
        Format::Generic,
        Some("d"),
    );
    let alerts = specs(&id, "acme", "care", 40, common::now_ms());
    let want: BTreeSet<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
    alert_support::produce(&cfg, &alerts, &[]).await;

    let first = alert_support::start(&cfg, &acfg, ApiKeys::default()).await;
    wait_for_keys(
        "every alert attempted by the first instance",
        &down,
        &want,
        false,
        Duration::from_secs(30),
    )
    .await;
    let joined = tokio::time::Instant::now();
    let second = alert_support::start(&cfg, &acfg, ApiKeys::default()).await;

    let c = cfg.clone();
    common::wait_for("every alert given up", Duration::from_secs(90), move || {
        let c = c.clone();
        async move {
            alert_support::one::<Counts>(
                &c,
                "SELECT count() AS rows, uniqExact(alert_id) AS ids FROM alert_deliveries \
                     WHERE outcome = 'dead'",
            )
            .await
            .ids >= 40
        }
    })
    .await;
    wait_all_committed(&cfg, &acfg.group_id).await;
    let given_up = joined.elapsed();
    // The last of the second instance's alerts: given up `give_up_after`
    // after its first attempt, which came after the rebalance. (Had the
    // rebalance come after the first gave every alert up, the second would
    // have found them final: nothing would have been withdrawn.)
    assert!(
        given_up >= Duration::from_secs(30),
        "the moved alerts were given up by the second instance ({given_up:?} after it joined)"
    );
    let dead: Vec<DeadRows> = alert_support::all(
        &cfg,
        "SELECT alert_id, count() AS rows FROM alert_deliveries WHERE outcome = 'dead' \
         GROUP BY alert_id ORDER BY alert_id",
    )
    .await;
    let twice: Vec<&DeadRows> = dead.iter().filter(|r| r.rows != 1).collect();
    assert!(
        twice.is_empty(),
        "alerts given up more than once: {twice:?}"
    );
    assert_eq!(
        dead.iter()
            .map(|r| r.alert_id.clone())
            .collect::<BTreeSet<_>>(),
        want
    );
    // One dead letter per alert: every one is produced before the offsets
    // it makes final are committed.
    let letters: Vec<(Vec<u8>, Vec<u8>)> = common::read_topic(
        &cfg,
        &format!("g-{id}-read-dead"),
        &cfg.kafka.topics.dead_letters,
        Duration::from_secs(30),
        Duration::from_secs(2),
        |read: &mut Vec<(Vec<u8>, Vec<u8>)>, m| {
            use rdkafka::Message as _;
            read.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        },
        |read| read.len() >= 40,
    )
    .await;
    let letters = ingest_support::dead_letters(&letters);
    let per_alert: BTreeSet<String> = letters
        .iter()
        .map(|d| {
            assert_eq!(
                (d.stage.as_str(), d.reason.as_str()),
                ("alert", "UNDELIVERABLE")
            );
            Alert::decode(d.payload.as_slice())
                .expect("alert payload")
                .alert_id
        })
        .collect();
    assert_eq!(letters.len(), 40, "one dead letter per alert");
    assert_eq!(per_alert, want);
    println!(
        "40 alerts, the second instance joined once the first had attempted all; \
         given up {:.1} s after the join; {} dead rows, {} dead letters",
        given_up.as_secs_f64(),
        dead.iter().map(|r| r.rows).sum::<u64>(),
        letters.len()
    );
    first.shutdown().await;
    second.shutdown().await;
    common::drop_database(&cfg).await;
}
