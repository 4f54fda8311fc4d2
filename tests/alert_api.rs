//! The case lifecycle API on the real stage, broker and ClickHouse: a table
//! of requests and their answers, then the rows in `alert_actions` and the
//! closed-loop figures BI reads from `alert_lifecycle` and `closed_loop`.

mod alert_support;
mod common;
mod ingest_support;

use std::time::Duration;

use alert_support::Spec;
use clickhouse::Row;
use serde::Deserialize;
use serde_json::Value;
use xoflow_alert::ApiKeys;

#[derive(Debug, Row, Deserialize)]
struct ActionCount {
    alert_id: String,
    action: String,
    rows: u64,
    actor: String,
}

#[derive(Debug, Row, Deserialize)]
struct Lifecycle {
    alert_id: String,
    is_acknowledged: u8,
    is_resolved: u8,
    seconds_to_acknowledge: Option<i64>,
    seconds_to_resolve: Option<i64>,
}

#[derive(Debug, Row, Deserialize)]
struct ClosedLoop {
    store_id: String,
    alerts_raised: u64,
    alerts_acknowledged: u64,
    alerts_resolved: u64,
    closed_loop_rate: f64,
    median_seconds_to_resolve: Option<i64>,
}

#[derive(Debug, Row, Deserialize)]
struct Open {
    tenant: String,
    alert_id: String,
    acknowledged: u8,
}

fn key(k: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_and_resolve_through_the_case_api() {
    let (cfg, id) = alert_support::setup().await;
    let (acme_key, hotpot_key) = (key("k-acme"), key("k-hotpot"));
    let keys = ApiKeys::from_hex(
        false,
        [(acme_key.as_str(), "acme"), (hotpot_key.as_str(), "hotpot")],
    )
    .expect("keys");
    // No webhooks: every alert is recorded and logged as no_webhook.
    let acfg = alert_support::alert_config(&id);
    let now = common::now_ms();
    let hour = 3_600_000;
    let spec = |n: &str, tenant, store, raised_ms| Spec {
        seed: format!("{id}-{n}"),
        tenant,
        department: "logistics",
        store,
        raised_ms,
    };
    let a1 = alert_support::alert(&spec("a1", "acme", "s1", now - hour));
    let a2 = alert_support::alert(&spec("a2", "acme", "s2", now - 2 * hour));
    let a3 = alert_support::alert(&spec("a3", "acme", "s1", now - hour));
    let h1 = alert_support::alert(&spec("h1", "hotpot", "s9", now - hour));
    alert_support::produce(&cfg, &[a1.clone(), a2.clone(), a3.clone(), h1.clone()], &[]).await;
    let running = alert_support::start(&cfg, &acfg, keys).await;
    let api = running.api;

    let get = |id: String, k: &'static str| async move {
        ingest_support::http(api, &format!("/v1/alerts/{id}"), &[("x-api-key", k)], None).await
    };
    let (i1, i4) = (a1.alert_id.clone(), h1.alert_id.clone());
    common::wait_for("the alerts stored", Duration::from_secs(60), || {
        let (i1, i4) = (i1.clone(), i4.clone());
        async move {
            get(i1, "k-acme").await.status == 200 && get(i4, "k-hotpot").await.status == 200
        }
    })
    .await;

    let post = |path: String, headers: Vec<(&'static str, String)>, body: String| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ingest_support::http(api, &path, &h, Some(body.as_bytes())).await
    };
    let acme = || vec![("x-api-key", "k-acme".to_owned())];
    let ack = |a: &str| format!("/v1/alerts/{a}/ack");
    let resolve = |a: &str| format!("/v1/alerts/{a}/resolve");
    let (id1, id2, id3, id4) = (&a1.alert_id, &a2.alert_id, &a3.alert_id, &h1.alert_id);
    let unknown = alert_support::alert_id("never raised");
    let long_note = format!(r#"{{"by":"ann","note":"{}"}}"#, "记".repeat(4097));

    struct Case {
        what: &'static str,
        path: String,
        headers: Vec<(&'static str, String)>,
        body: String,
        status: u16,
        /// (JSON pointer, value) the answer must hold.
        expect: Vec<(&'static str, Value)>,
    }
    let case = |what, path, headers, body: &str, status, expect| Case {
        what,
        path,
        headers,
        body: body.to_owned(),
        status,
        expect,
    };
    let cases = vec![
        case(
            "ack",
            ack(id1),
            acme(),
            r#"{"by":"王芳","note":"called the customer"}"#,
            200,
            vec![
                ("/status", "acknowledged".into()),
                ("/acknowledged_by", "王芳".into()),
                ("/resolved_at", Value::Null),
                ("/alert_id", id1.as_str().into()),
            ],
        ),
        case(
            "second ack: the first stands",
            ack(id1),
            acme(),
            r#"{"by":"bob"}"#,
            200,
            vec![
                ("/status", "acknowledged".into()),
                ("/acknowledged_by", "王芳".into()),
            ],
        ),
        case(
            "resolve",
            resolve(id1),
            acme(),
            r#"{"by":"王芳","note":"refunded the delivery fee"}"#,
            200,
            vec![
                ("/status", "resolved".into()),
                ("/resolved_by", "王芳".into()),
                ("/acknowledged_by", "王芳".into()),
            ],
        ),
        case(
            "second resolve: idempotent",
            resolve(id1),
            acme(),
            r#"{"by":"carl","note":"again"}"#,
            200,
            vec![
                ("/status", "resolved".into()),
                ("/resolved_by", "王芳".into()),
            ],
        ),
        case(
            "resolve before ack",
            resolve(id2),
            acme(),
            r#"{"by":"dan"}"#,
            200,
            vec![
                ("/status", "resolved".into()),
                ("/acknowledged_at", Value::Null),
                ("/resolved_by", "dan".into()),
            ],
        ),
        case(
            "unknown id",
            ack(&unknown),
            acme(),
            r#"{"by":"ann"}"#,
            404,
            vec![],
        ),
        case(
            "malformed id",
            ack("x'y"),
            acme(),
            r#"{"by":"ann"}"#,
            404,
            vec![],
        ),
        case(
            "another tenant's alert",
            ack(id4),
            acme(),
            r#"{"by":"ann"}"#,
            404,
            vec![("/error", "no such alert".into())],
        ),
        case("no key", ack(id3), vec![], r#"{"by":"ann"}"#, 401, vec![]),
        case(
            "unknown key",
            ack(id3),
            vec![("x-api-key", "k-nobody".into())],
            r#"{"by":"ann"}"#,
            401,
            vec![],
        ),
        case(
            "malformed JSON",
            ack(id3),
            acme(),
            r#"{"by": "ann""#,
            400,
            vec![("/field", "body".into())],
        ),
        case(
            "missing by",
            ack(id3),
            acme(),
            r#"{"note":"who?"}"#,
            400,
            vec![("/field", "by".into())],
        ),
        case(
            "empty by",
            resolve(id3),
            acme(),
            r#"{"by":""}"#,
            400,
            vec![("/field", "by".into())],
        ),
        case(
            "over-long note",
            ack(id3),
            acme(),
            &long_note,
            400,
            vec![("/field", "note".into())],
        ),
        case(
            "bearer key",
            ack(id4),
            vec![("authorization", "Bearer k-hotpot".into())],
            r#"{"by":"李雷"}"#,
            200,
            vec![("/status", "acknowledged".into())],
        ),
    ];
    for c in cases {
        let r = post(c.path.clone(), c.headers, c.body).await;
        assert_eq!(
            r.status,
            c.status,
            "{}: {}",
            c.what,
            String::from_utf8_lossy(&r.body)
        );
        let json = r.json();
        for (pointer, want) in c.expect {
            assert_eq!(json.pointer(pointer), Some(&want), "{}: {json}", c.what);
        }
        if c.status != 200 {
            assert!(json["error"].is_string(), "{}: {json}", c.what);
        }
    }

    // The first resolution is what a repeat answers with, to the millisecond.
    let r = get(id1.clone(), "k-acme").await;
    assert_eq!(r.status, 200);
    let shown = r.json();
    assert_eq!(shown["status"], "resolved");
    assert_eq!(shown["resolution_note"], "refunded the delivery fee");
    assert_eq!(shown["tenant"], "acme");
    assert_eq!(shown["severity"], "high");
    assert_eq!(shown["deliveries"][0]["outcome"], "no_webhook");
    let again = post(resolve(id1), acme(), r#"{"by":"eve"}"#.into())
        .await
        .json();
    assert_eq!(again["resolved_at"], shown["resolved_at"]);
    assert_eq!(
        get(id4.clone(), "k-acme").await.status,
        404,
        "not another tenant's"
    );
    assert_eq!(get(id3.clone(), "k-acme").await.json()["status"], "open");

    // One row per first action, none for the repeats or the refusals.
    let actions: Vec<ActionCount> = alert_support::all(
        &cfg,
        "SELECT alert_id, toString(action) AS action, count() AS rows, any(by) AS actor \
         FROM alert_actions GROUP BY alert_id, action ORDER BY alert_id, action",
    )
    .await;
    let find = |id: &str, action: &str| {
        actions
            .iter()
            .find(|a| a.alert_id == id && a.action == action)
            .map(|a| (a.rows, a.actor.as_str()))
    };
    assert_eq!(actions.len(), 4, "{actions:?}");
    assert_eq!(find(id1, "ack"), Some((1, "王芳")));
    assert_eq!(find(id1, "resolve"), Some((1, "王芳")));
    assert_eq!(find(id2, "resolve"), Some((1, "dan")));
    assert_eq!(find(id4, "ack"), Some((1, "李雷")));

    // What BI reads.
    let life: Vec<Lifecycle> = alert_support::all(
        &cfg,
        "SELECT alert_id, is_acknowledged, is_resolved, seconds_to_acknowledge, seconds_to_resolve \
         FROM alert_lifecycle ORDER BY alert_id",
    )
    .await;
    let of = |id: &str| {
        life.iter()
            .find(|l| l.alert_id == id)
            .expect("lifecycle row")
    };
    let near = |got: Option<i64>, want: i64| got.is_some_and(|g| (g - want).abs() <= 120);
    let l1 = of(id1);
    assert_eq!((l1.is_acknowledged, l1.is_resolved), (1, 1));
    assert!(
        near(l1.seconds_to_acknowledge, 3600) && near(l1.seconds_to_resolve, 3600),
        "{l1:?}"
    );
    let l2 = of(id2);
    assert_eq!(
        (
            l2.is_acknowledged,
            l2.is_resolved,
            l2.seconds_to_acknowledge
        ),
        (0, 1, None)
    );
    assert!(near(l2.seconds_to_resolve, 7200), "{l2:?}");
    let l3 = of(id3);
    assert_eq!(
        (l3.is_acknowledged, l3.is_resolved, l3.seconds_to_resolve),
        (0, 0, None)
    );

    let loops: Vec<ClosedLoop> = alert_support::all(
        &cfg,
        "SELECT store_id, sum(alerts_raised) AS alerts_raised, sum(alerts_acknowledged) AS alerts_acknowledged, \
         sum(alerts_resolved) AS alerts_resolved, any(closed_loop_rate) AS closed_loop_rate, \
         any(median_seconds_to_resolve) AS median_seconds_to_resolve \
         FROM closed_loop WHERE tenant = 'acme' AND department = 'logistics' AND touchpoint = 'courier-delivery' \
         GROUP BY store_id ORDER BY store_id",
    )
    .await;
    assert_eq!(loops.len(), 2, "{loops:?}");
    let (s1, s2) = (&loops[0], &loops[1]);
    // s1: a1 (acknowledged, resolved) and a3 (open), raised the same hour.
    assert_eq!(s1.store_id, "s1");
    assert_eq!(
        (s1.alerts_raised, s1.alerts_acknowledged, s1.alerts_resolved),
        (2, 1, 1),
        "{s1:?}"
    );
    assert!((s1.closed_loop_rate - 0.5).abs() < 1e-9, "{s1:?}");
    assert!(
        s1.median_seconds_to_resolve
            .is_some_and(|m| (m - 3600).abs() <= 120),
        "{s1:?}"
    );
    // s2: a2, resolved without an acknowledgement.
    assert_eq!(
        (s2.alerts_raised, s2.alerts_acknowledged, s2.alerts_resolved),
        (1, 0, 1),
        "{s2:?}"
    );
    assert!((s2.closed_loop_rate - 1.0).abs() < 1e-9, "{s2:?}");
    assert!(
        s2.median_seconds_to_resolve
            .is_some_and(|m| (m - 7200).abs() <= 120),
        "{s2:?}"
    );

    let open: Vec<Open> = alert_support::all(
        &cfg,
        "SELECT tenant, alert_id, acknowledged FROM alerts_open ORDER BY tenant, alert_id",
    )
    .await;
    let open: Vec<(&str, &str, u8)> = open
        .iter()
        .map(|o| (o.tenant.as_str(), o.alert_id.as_str(), o.acknowledged))
        .collect();
    assert_eq!(
        open,
        [("acme", id3.as_str(), 0), ("hotpot", id4.as_str(), 1)]
    );
    running.shutdown().await;
    common::drop_database(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_waits_for_its_tables_and_says_why() {
    let (mut cfg, id) = common::config("");
    cfg.kafka.topics.alerts = format!("t-{id}.alerts");
    // No migration yet: the database does not even exist.
    let acfg = alert_support::alert_config(&id);
    let open = ApiKeys::open(Default::default());
    let stage = xoflow_alert::AlertStage::bind(&acfg, &cfg.kafka, cfg.clickhouse.client(), open)
        .await
        .expect("bind");
    let api = stage.api_addr().expect("addr");
    let health = xoflow_common::admin::Health::new();
    let (r, api_r) = (health.register("alert"), health.register("alert_api"));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(stage.run(r, api_r, stop.clone()));
    let h = health.clone();
    common::wait_for(
        "readiness to say schema_missing",
        Duration::from_secs(60),
        move || {
            let held =
                h.check().err().unwrap_or_default().iter().any(|r| {
                    r.starts_with("alert: schema_missing") && r.contains("xoflow migrate")
                });
            async move { held }
        },
    )
    .await;
    // The API answers meanwhile, without the tables: 503, not a crash.
    let r = ingest_support::http(
        api,
        &format!("/v1/alerts/{}/ack", alert_support::alert_id("x")),
        &[],
        Some(br#"{"by":"ann"}"#),
    )
    .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrate");
    let h = health.clone();
    common::wait_for(
        "the stage ready once migrated",
        Duration::from_secs(60),
        move || {
            let ok = h.check().is_ok();
            async move { ok }
        },
    )
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .expect("task")
        .expect("no error");
    common::drop_database(&cfg).await;
}
