//! `xoflow identities import`: a CRM export seeds enrich's link table, so
//! surveys known only by an e-mail address or a social handle resolve to
//! their customer. Real broker; the binary as ops run it, against a
//! pipeline (ingest and enrich in this process) that is already running —
//! the running enrich learns the imported links without a restart.
//!
//! - identifiers are hashed as the collectors hash them: an address
//!   written in another case, with spaces, resolves;
//! - rows without a customer id or with a malformed address are refused
//!   with their line and field; the rest are imported;
//! - a re-run changes nothing; a row that moves an identifier to another
//!   customer is counted as re-pointed;
//! - a link imported after a survey was emitted unresolved resolves it: the
//!   survey is emitted again, revision 1, with its customer.

mod common;
#[path = "ingest_support/mod.rs"]
mod ingest_support;

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use xoflow::Stages;
use xoflow_proto::v1::{CustomerIdentity, IdentityResolution, event::Payload};

/// Runs `xoflow identities import` against the test's topics; its stdout.
async fn import(cfg: &xoflow::Config, file: &std::path::Path, format: &str) -> String {
    let mut c = common::xoflow_command(cfg, &["identities", "import"]);
    c.arg(file)
        .args(["--format", format, "--tenant", "acme"])
        .stderr(Stdio::inherit());
    let out = tokio::process::Command::from(c)
        .output()
        .await
        .expect("run xoflow identities import");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "import failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_identities_resolve_email_and_handle_only_surveys() {
    let (cfg, id) = common::config("");
    let running = common::start(
        &cfg,
        Stages {
            ingest: true,
            enrich: true,
            sink: false,
            alert: false,
        },
    )
    .await;

    let dir = std::env::temp_dir().join(format!("xoflow-identities-{id}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let csv = dir.join("crm.csv");
    std::fs::write(
        &csv,
        format!(
            "customer_id,email,phone,social_handle,device_id\n\
             {id}-c1,ann@example.com,+8613800138000,,\n\
             {id}-c2,,,@bob_cx,\n\
             ,nobody@example.com,,,\n\
             {id}-c3,not-an-address,,,\n"
        ),
    )
    .expect("csv");
    let first = import(&cfg, &csv, "csv").await;
    println!("{first}");
    assert!(
        first.contains("4 rows; links 3 new, 0 unchanged, 0 re-pointed"),
        "{first}"
    );
    assert!(first.contains("2 rows refused"), "{first}");
    assert!(first.contains("line 4: customer_id: missing"), "{first}");
    assert!(first.contains("line 5: customer.email"), "{first}");
    let again = import(&cfg, &csv, "csv").await;
    assert!(
        again.contains("links 0 new, 3 unchanged, 0 re-pointed"),
        "{again}"
    );

    // Surveys known only by an address (written differently) or a handle.
    let now = common::now_ms();
    let mut surveys: Vec<_> = xoflow::sample::events(7, 15, "acme", &id, now)
        .into_iter()
        .filter(|e| matches!(e.payload, Some(Payload::Survey(_))))
        .collect();
    assert_eq!(surveys.len(), 3);
    surveys[0].customer = Some(CustomerIdentity {
        email: "  Ann@Example.COM ".into(),
        ..Default::default()
    });
    surveys[1].customer = Some(CustomerIdentity {
        social_handle: "@Bob_CX".into(),
        ..Default::default()
    });
    surveys[2].customer = Some(CustomerIdentity {
        email: "stranger@example.com".into(),
        ..Default::default()
    });
    let body = serde_json::to_string(&surveys).expect("json");
    let http = running.http_addr.expect("ingest");
    let r = ingest_support::http(http, "/v1/events", &[], Some(body.as_bytes())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let want: BTreeSet<&String> = surveys.iter().map(|s| &s.event_id).collect();
    let got = common::read_enriched(
        &cfg,
        &format!("g-{id}-check"),
        Duration::from_secs(90),
        Duration::ZERO,
        |seen| want.iter().all(|w| seen.contains_key(*w)),
    )
    .await;
    assert!(
        want.iter().all(|w| got.contains_key(*w)),
        "every survey enriched in time: {:?}",
        got.keys()
    );
    let of = |i: usize| &got[&surveys[i].event_id];
    assert_eq!(of(0).resolved_customer_id, format!("{id}-c1"));
    assert_eq!(of(0).resolution, IdentityResolution::Linked as i32);
    assert_eq!(of(1).resolved_customer_id, format!("{id}-c2"));
    assert_eq!(of(1).resolution, IdentityResolution::Linked as i32);
    assert_eq!(of(2).resolution, IdentityResolution::Unresolved as i32);
    assert_eq!(of(2).revision, 0);

    // A link imported after the event: the survey emitted unresolved is
    // resolved and emitted again, a revision up.
    let late = dir.join("late.csv");
    std::fs::write(
        &late,
        format!(
            "customer_id,email,phone,social_handle,device_id\n{id}-c7,Stranger@example.com,,,\n"
        ),
    )
    .expect("csv");
    let imported = import(&cfg, &late, "csv").await;
    assert!(imported.contains("links 1 new"), "{imported}");
    let unresolved = &surveys[2].event_id;
    let repaired = common::read_enriched(
        &cfg,
        &format!("g-{id}-repaired"),
        Duration::from_secs(90),
        Duration::ZERO,
        |seen| seen.get(unresolved).is_some_and(|e| e.revision > 0),
    )
    .await
    .remove(unresolved)
    .filter(|e| e.revision > 0)
    .expect("the unresolved survey emitted again in time");
    assert_eq!(repaired.revision, 1);
    assert_eq!(repaired.resolved_customer_id, format!("{id}-c7"));
    assert_eq!(repaired.resolution, IdentityResolution::Linked as i32);
    assert_eq!(repaired.event, got[&surveys[2].event_id].event);

    // Moving an address to another customer is counted, as NDJSON.
    let ndjson = dir.join("moved.ndjson");
    std::fs::write(
        &ndjson,
        format!("{{\"customer_id\":\"{id}-c9\",\"email\":\"ann@example.com\"}}\n"),
    )
    .expect("ndjson");
    let moved = import(&cfg, &ndjson, "ndjson").await;
    assert!(
        moved.contains("links 0 new, 0 unchanged, 1 re-pointed"),
        "{moved}"
    );

    running.stop();
    tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("stops")
        .expect("clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}
