//! The schema and every BI query on a current ClickHouse (26.9) give the same
//! figures as on 18.16, the server the rest of the suite runs.
//!
//! No server newer than 18.16 is installable here, but PyPI's `chdb-core`
//! (pinned: [`CHDB`]) embeds ClickHouse 26.9 in a Python module. The test
//!
//! 1. creates a Python venv in `$XOFLOW_SCRATCH/chdb-core-<version>/` with
//!    `chdb-core` alone in it (`pip install --no-deps`: the check only calls
//!    `chdb.session`, which needs neither pandas nor pyarrow). Only the first
//!    run of a checkout does this (a 180 MB download, 560 MB unpacked);
//!    later runs find its marker file. A run that cannot create it fails with
//!    pip's output: no silent skip.
//! 2. Runs the real pipeline (ingest → enrich → sink, the demo's
//!    [`run_pipeline`](xoflow::demo::run_pipeline)) on six days' generated
//!    data of the three demo tenants (scale 0.1: about 12,400 events and 60
//!    dead letters; with fewer days no survey follows a delivery and some of
//!    the doc's queries answer nothing, which the script counts as a
//!    failure) into a fresh database on the shared 18.16 server: the sink
//!    migrates it and inserts `events` and `dead_letters` as in production,
//!    the materialized views fill `touchpoint_metrics` and
//!    `customer_profile`.
//!    The alert tables (migration 10) get a fixture of alerts, deliveries
//!    and case actions written with the alert stage's own row types
//!    (`alert_fixture`), so that they and their views have rows to compare;
//!    and an erasure request for an unknown customer leaves a row in
//!    `erasure_receipts`.
//! 3. Exports what the sink wrote (and the alert fixture), `SELECT <columns> FROM <table> ORDER BY
//!    <lineage> FORMAT RowBinary` (each partition's rows in the order the
//!    sink inserted them, which decides `customer_profile` among an event's
//!    revisions), with the columns the sink's own insert names
//!    (`<EventRow as clickhouse::Row>::COLUMN_NAMES`, likewise
//!    `DeadLetterRow`), and the migration ledger. Why an export and not the
//!    sink's request bodies: the `clickhouse` crate's RowBinary serializer is
//!    private (`mod rowbinary`), and the sink's inserts go out
//!    LZ4-compressed from a client the sink builds itself. RowBinary has one
//!    encoding per value for every column type used here (String, Int/UInt,
//!    Enum8 as its Int8 code, DateTime as UInt32, Nullable, Array(String)),
//!    so the export is byte for byte what the sink's encoder sent, and
//!    18.16 stores even an Enum8 code its type does not name (26.9 would
//!    refuse such a row on load, which the test would report).
//! 4. Hands a manifest to `tests/clickhouse_current/check.py`, which applies
//!    every migration to 26.9 (the statements rendered by the runner's own
//!    `Migration::statements`, `{db}` filled in), loads the files, and runs
//!    every ```sql query of docs/clickhouse.md (read from the doc on each
//!    run, so doc and test cannot drift), `SELECT *` of every view and the
//!    whole content of every table on both servers, comparing the figures
//!    (tolerances: see the script's doc). It prints a table of what ran,
//!    also written to `$XOFLOW_SCRATCH/clickhouse_current.txt`.
//!
//! Run: `source target/xoflow-local/env && cargo nextest run --test
//! clickhouse_current --no-capture` (the table shows with `--no-capture`
//! or on failure). Needs `python3` with its `venv` module (Debian:
//! `python3-venv`) and PyPI reachable on the first run.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use clickhouse::Row;
use xoflow::{
    datagen::GenConfig,
    demo::{self, DemoOptions},
};
use xoflow_alert::store::{ActionRow, AlertRow, DeliveryRow, Store};
use xoflow_sink::clickhouse::{
    MIGRATIONS,
    row::{DeadLetterRow, EventRow},
};

/// The PyPI package and version that embeds ClickHouse 26.9.
const CHDB: &str = "chdb-core==26.9.0";

/// Longest a first-run venv creation and install may take (a 180 MB wheel).
const INSTALL_DEADLINE: Duration = Duration::from_secs(900);

/// The order rows were read from Kafka in, within each partition.
const LINEAGE_ORDER: &str = "kafka_topic, kafka_partition, kafka_offset";

/// Longest the comparison may take (it takes seconds).
const CHECK_DEADLINE: Duration = Duration::from_secs(600);

fn scratch() -> PathBuf {
    std::env::var_os("XOFLOW_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/xoflow-local"))
}

/// The venv's python, creating the venv first if this checkout has none.
async fn chdb_python() -> PathBuf {
    let venv = scratch().join(CHDB.replace("==", "-"));
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == CHDB) {
        return python;
    }
    std::fs::create_dir_all(scratch()).expect("scratch dir");
    // Two test processes of the same checkout (two nextest runs) would
    // otherwise install into the same directory at once.
    let lock = std::fs::File::create(scratch().join("chdb-venv.lock")).expect("venv lock file");
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .expect("lock task")
        .expect("venv lock");
    if !std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == CHDB) {
        let t0 = Instant::now();
        let _ = std::fs::remove_dir_all(&venv);
        run(
            "python3 -m venv (needs python3 and its venv module; Debian: apt-get install python3-venv)",
            tokio::process::Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv),
            INSTALL_DEADLINE,
        )
        .await;
        run(
            &format!("pip install {CHDB} (needs PyPI reachable on the first run)"),
            tokio::process::Command::new(venv.join("bin/pip")).args([
                "install",
                "--no-deps",
                "--disable-pip-version-check",
                CHDB,
            ]),
            INSTALL_DEADLINE,
        )
        .await;
        run(
            "import chdb",
            tokio::process::Command::new(&python).args(["-c", "import chdb"]),
            INSTALL_DEADLINE,
        )
        .await;
        std::fs::write(&marker, CHDB).expect("venv marker");
        println!(
            "created {} with {CHDB} in {:.0} s",
            venv.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    drop(lock);
    python
}

/// Runs a command to completion within `deadline`; fails the test with its
/// output otherwise. Returns its stdout.
async fn run(what: &str, cmd: &mut tokio::process::Command, deadline: Duration) -> String {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let out = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: not done after {deadline:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes `SELECT columns FROM table [ORDER BY order] FORMAT RowBinary`
/// from 18.16 to a file.
async fn export(
    ch: &clickhouse::Client,
    dir: &Path,
    table: &str,
    columns: &[&str],
    order: Option<&str>,
) -> serde_json::Value {
    let rows: u64 = ch
        .query(&format!("SELECT count() FROM {table}"))
        .fetch_one()
        .await
        .expect("count");
    let order = order.map_or(String::new(), |o| format!(" ORDER BY {o}"));
    let bytes = ch
        .query(&format!(
            "SELECT {} FROM {table}{order}",
            columns.join(", ")
        ))
        .fetch_bytes("RowBinary")
        .expect("export")
        .collect()
        .await
        .expect("export body");
    let file = dir.join(format!("{table}.rowbinary"));
    std::fs::write(&file, &bytes).expect("write export");
    serde_json::json!({ "table": table, "columns": columns, "file": file, "rows": rows })
}

/// Alerts of two tenants over three days, in three departments and
/// stores, as the alert stage writes them: delivered, retried, dead and
/// without webhook; acknowledged, resolved (some without an ack, one
/// acknowledged twice), and open. Every alert view then has rows, groups
/// with an even and an odd number of resolved alerts (the median), and one
/// with none (its median is NULL).
async fn alert_fixture(ch: &clickhouse::Client, now_ms: i64) {
    use xoflow_proto::v1::{Alert, EnrichedEvent, Event, Location, Touchpoint, event::Payload};
    let store = Store::new(ch.clone());
    let depts = ["logistics", "customer-care", "kitchen"];
    let stores = ["sz-01", "sz-02", "bj-01"];
    let mut alerts = Vec::new();
    let mut deliveries = Vec::new();
    let mut actions = Vec::new();
    for i in 0..24i64 {
        let raised_ms = now_ms - now_ms.rem_euclid(3_600_000) - (i % 3) * 86_400_000 - i * 600_000;
        let tenant = if i % 5 == 0 { "fixture-b" } else { "fixture-a" };
        let department = depts[(i % 3) as usize];
        let alert = Alert {
            alert_id: format!("{:032x}", 0xa1e7_0000_u64 + i as u64),
            tenant: tenant.into(),
            rule: "late-delivery-detractor".into(),
            severity: (i % 4 + 1) as i32,
            department: department.into(),
            customer_id: format!("c-{i}"),
            cause: 1 + (i % 2) as i32,
            reasons: vec![format!("NPS {}", i % 7), "订单晚到 2 天".into()],
            summary: format!("alert {i}"),
            raised_at: Some(xoflow_proto::from_unix_millis(raised_ms)),
            silent_days: (i % 2 == 1).then_some(30 + i as u32),
            usual_gap_days: (i % 2 == 1).then_some(12),
            trigger: Some(EnrichedEvent {
                event: Some(Event {
                    event_id: format!("fx-ev-{i}"),
                    tenant: tenant.into(),
                    occurred_at: Some(xoflow_proto::from_unix_millis(raised_ms - 60_000)),
                    touchpoint: Some(Touchpoint {
                        journey: "online-purchase".into(),
                        stage: "fulfilment".into(),
                        touchpoint: if i % 2 == 0 {
                            "courier-delivery"
                        } else {
                            "checkout"
                        }
                        .into(),
                        channel: 1,
                    }),
                    location: Some(Location {
                        store_id: stores[(i % 3) as usize].into(),
                        region: "华南".into(),
                    }),
                    payload: Some(Payload::Survey(Default::default())),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let row = AlertRow::of(&alert, (raised_ms / 1000) as u32 + 1);
        let at = |ms: i64| ((ms / 1000) as u32, ms);
        // Deliveries: a retry then delivered; every fifth dead; every
        // seventh without webhook.
        let (outcome_final, format) = match i {
            _ if i % 7 == 0 => (4, 0),
            _ if i % 5 == 0 => (3, 1),
            _ => (1, 2),
        };
        if outcome_final != 4 {
            let (a, a_ms) = at(raised_ms + 1_000);
            deliveries.push(DeliveryRow {
                at: a,
                at_ms: a_ms,
                alert_id: alert.alert_id.clone(),
                tenant: tenant.into(),
                department: department.into(),
                webhook: 0,
                host: "hooks.example.com".into(),
                format,
                attempt: 1,
                status: 500,
                outcome: 2,
                error: "HTTP 500: nope".into(),
                latency_ms: 12,
                raised_at: row.raised_at,
            });
        }
        let (a, a_ms) = at(raised_ms + 3_000);
        deliveries.push(DeliveryRow {
            at: a,
            at_ms: a_ms,
            alert_id: alert.alert_id.clone(),
            tenant: tenant.into(),
            department: department.into(),
            webhook: 0,
            host: if outcome_final == 4 {
                ""
            } else {
                "hooks.example.com"
            }
            .into(),
            format,
            attempt: u32::from(outcome_final != 4) * 2,
            status: match outcome_final {
                1 => 200,
                3 => 404,
                _ => 0,
            },
            outcome: outcome_final,
            error: String::new(),
            latency_ms: 15,
            raised_at: row.raised_at,
        });
        // Lifecycle: acknowledged after i minutes (every third twice),
        // resolved after 10 + i minutes unless i % 4 == 3; every sixth
        // resolved without an ack.
        let mut act = |action: i8, after_ms: i64, by: &str| {
            let (a, a_ms) = at(raised_ms + after_ms);
            actions.push(ActionRow {
                at: a,
                at_ms: a_ms,
                alert_id: alert.alert_id.clone(),
                tenant: tenant.into(),
                department: department.into(),
                action,
                by: by.into(),
                note: "回访客户".into(),
            });
        };
        if i % 6 != 0 {
            act(1, (i + 1) * 60_000, "王芳");
            if i % 3 == 0 {
                act(1, (i + 2) * 60_000, "bob");
            }
        }
        if i % 4 != 3 {
            act(2, (10 + i) * 60_000, "王芳");
        }
        alerts.push(row);
    }
    store.insert_alerts(&alerts).await.expect("alerts");
    store
        .insert_deliveries(&deliveries)
        .await
        .expect("alert_deliveries");
    for a in &actions {
        store.insert_action(a).await.expect("alert_actions");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_26_9_returns_the_same_figures_as_18_16() {
    let python = chdb_python().await;
    let (cfg, id) = common::config("");
    let db = cfg.clickhouse.database.clone();
    let now = common::now_ms();
    let opts = DemoOptions {
        generator: GenConfig {
            seed: 19,
            scale: 0.1,
            days: 6,
            // Ends at today's midnight (UTC): inside the doc's "this week"
            // and "last 7 days" windows on both servers.
            start_ms: xoflow::datagen::days_before_today(now, 6),
            ..GenConfig::default()
        },
        batch: 1_000,
    };
    let t0 = Instant::now();
    demo::run_pipeline(cfg.clone(), &opts, false)
        .await
        .expect("pipeline into 18.16");
    let pipeline_s = t0.elapsed().as_secs_f64();
    // The runner skips on 18.16 exactly the migrations that need what it
    // lacks (DateTime64, Map); 26.9 below applies them all.
    let again = xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrate again");
    let needing: Vec<u32> = MIGRATIONS
        .iter()
        .filter(|m| !m.requires.is_empty())
        .map(|m| m.version)
        .collect();
    let version: String = cfg
        .clickhouse
        .client()
        .query("SELECT version()")
        .fetch_one()
        .await
        .expect("version");
    if version.starts_with("18.") {
        assert_eq!(again.skipped, needing, "{again:?}");
    }
    assert!(again.applied.is_empty(), "{again:?}");
    // The alert tables and their views get rows of their own (the
    // pipeline above raises no alert), written with the alert stage's row
    // types.
    alert_fixture(&cfg.clickhouse.client(), now).await;
    // An erasure request (docs/privacy.md) for a customer nobody holds:
    // it changes no row (erasing a real one would change the `customers`
    // sketches 18.16 already merged, which 26.9 rebuilds from the exported
    // rows) and leaves a receipt to compare.
    let receipt = xoflow::erase::erase(
        &cfg,
        "hotpot-house",
        xoflow::erase::Subject::Customer(format!("nobody-{id}")),
        "test",
    )
    .await
    .expect("erasure");
    assert!(!receipt.found, "{receipt:?}");

    let dir = scratch().join(format!("clickhouse_current-{id}"));
    std::fs::create_dir_all(&dir).expect("work dir");
    let ch = cfg.clickhouse.client();
    let tables = vec![
        export(
            &ch,
            &dir,
            "schema_migrations",
            &["version", "name", "checksum"],
            None,
        )
        .await,
        // In the order the sink inserted them (offset order within a
        // partition): `customer_profile` keeps, among rows of equal
        // version (the revisions of one event), the last inserted.
        export(
            &ch,
            &dir,
            "events",
            EventRow::COLUMN_NAMES,
            Some(LINEAGE_ORDER),
        )
        .await,
        export(
            &ch,
            &dir,
            "dead_letters",
            DeadLetterRow::COLUMN_NAMES,
            Some(LINEAGE_ORDER),
        )
        .await,
        export(
            &ch,
            &dir,
            "alerts",
            AlertRow::COLUMN_NAMES,
            Some("alert_id"),
        )
        .await,
        export(
            &ch,
            &dir,
            "alert_deliveries",
            DeliveryRow::COLUMN_NAMES,
            Some("alert_id, at_ms, webhook"),
        )
        .await,
        export(
            &ch,
            &dir,
            "alert_actions",
            ActionRow::COLUMN_NAMES,
            Some("alert_id, at_ms"),
        )
        .await,
        export(
            &ch,
            &dir,
            "erasure_receipts",
            &[
                "erasure_id",
                "tenant",
                "subject",
                "requested_by",
                "requested_at",
                "completed_at",
                "customers",
                "identifiers",
                "tables",
                "rows",
                "link_tombstones",
                "changelog_tombstones",
                "notices",
            ],
            Some("erasure_id"),
        )
        .await,
    ];
    // The ledger is created by the runner's own code, not by a migration
    // file: take its DDL from the server the runner created it on.
    let ledger: String = String::from_utf8(
        ch.query(&format!("SHOW CREATE TABLE {db}.schema_migrations"))
            .fetch_bytes("TabSeparatedRaw")
            .expect("ledger DDL")
            .collect()
            .await
            .expect("ledger DDL body")
            .to_vec(),
    )
    .expect("utf-8 DDL");
    // The runner applies what MIGRATIONS embeds; a file left out of it would
    // be applied by neither.
    let dir_files =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("sink/migrations"))
            .expect("sink/migrations")
            .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("migration file"))
            .collect::<Vec<_>>();
    assert_eq!(
        dir_files.len(),
        MIGRATIONS.len(),
        "sink/migrations vs MIGRATIONS"
    );
    assert!(
        dir_files
            .iter()
            .all(|f| MIGRATIONS.iter().any(|m| m.sql == f))
    );
    let migrations: Vec<_> = MIGRATIONS
        .iter()
        .map(|m| {
            serde_json::json!({
                "version": m.version,
                "name": m.name,
                "statements": m.statements(&db),
            })
        })
        .collect();
    let report = scratch().join("clickhouse_current.txt");
    let manifest = serde_json::json!({
        "clickhouse_18": cfg.clickhouse.url,
        "database": db,
        "chdb_path": dir.join("chdb"),
        "setup": [format!("CREATE DATABASE IF NOT EXISTS {db}"), ledger.trim()],
        "migrations": migrations,
        // What the feature-gated migrations give, checked on 26.9 only
        // (18.16 skipped them): each query must answer 1.
        "checks": [
            {
                "what": "events.occurred_time (DateTime64) = occurred_ms",
                "sql": format!("SELECT toUInt8(count() > 0 AND countIf(toUnixTimestamp64Milli(occurred_time) = occurred_ms) = count()) FROM {db}.events"),
            },
            {
                "what": "events.attrs (Map) = attr_keys, attr_values",
                "sql": format!("SELECT toUInt8(countIf(mapKeys(attrs) = attr_keys AND mapValues(attrs) = attr_values) = count()) FROM {db}.events"),
            },
        ],
        "tables": tables,
        "doc": Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/clickhouse.md"),
        "report": report,
    });
    let manifest_file = dir.join("manifest.json");
    std::fs::write(&manifest_file, manifest.to_string()).expect("manifest");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clickhouse_current/check.py");
    let t1 = Instant::now();
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&manifest_file)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start check.py");
    let out = tokio::time::timeout(CHECK_DEADLINE, child.wait_with_output())
        .await
        .expect("check.py within its deadline")
        .expect("check.py");
    println!(
        "{}{}pipeline into 18.16 {pipeline_s:.1} s, comparison {:.1} s",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        t1.elapsed().as_secs_f64()
    );
    common::drop_database(&cfg).await;
    assert!(
        out.status.success(),
        "ClickHouse 26.9 differs from 18.16 (table above; work files kept in {})",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
