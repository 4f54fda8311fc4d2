//! The Grafana dashboards (`deploy/grafana/dashboards/*.json`) are valid
//! and wired to the provisioned data sources, and every SQL panel (and
//! template variable) runs on the test ClickHouse, on a freshly migrated
//! database, with Grafana's macros given concrete values. The PromQL of the
//! dashboards and alerting rules is checked against live `/metrics` by
//! `tests/ops_metrics.rs`.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(deploy().join("grafana/dashboards")).expect("dashboards") {
        let path = f.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        out.push((path.display().to_string(), json));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The uids the provisioning file gives its data sources.
fn provisioned_uids() -> Vec<String> {
    let text =
        std::fs::read_to_string(deploy().join("grafana/provisioning/datasources/xoflow.yml"))
            .expect("datasources");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("uid:"))
        .map(|u| u.trim().to_owned())
        .collect()
}

/// Grafana's ClickHouse macros and the `tenant` variable, as Grafana would
/// expand them for the last week and tenant acme.
fn expand(sql: &str, from: i64, to: i64) -> String {
    let mut s = sql
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
        .replace("${tenant:singlequote}", "'acme'");
    while let Some(i) = s.find("$__timeFilter(") {
        let rest = &s[i + "$__timeFilter(".len()..];
        let end = rest.find(')').expect("closing parenthesis");
        let column = rest[..end].to_owned();
        s = format!(
            "{}{column} >= toDateTime({from}) AND {column} <= toDateTime({to}){}",
            &s[..i],
            &rest[end + 1..]
        );
    }
    assert!(!s.contains('$'), "a macro left unexpanded: {s}");
    s
}

#[test]
fn dashboards_are_valid_and_use_the_provisioned_sources() {
    let uids = provisioned_uids();
    assert_eq!(uids, ["prometheus", "clickhouse"]);
    let all = dashboards();
    assert_eq!(all.len(), 2, "the ops and the CX dashboard");
    let mut panels_seen = 0;
    for (file, d) in &all {
        for key in ["uid", "title", "schemaVersion", "panels"] {
            assert!(d.get(key).is_some(), "{file}: no {key}");
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in d["panels"].as_array().expect("panels") {
            let id = p["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            for k in ["x", "y", "w", "h"] {
                assert!(p["gridPos"][k].is_u64(), "{file}: panel {id} gridPos.{k}");
            }
            if p["type"] == "row" {
                continue;
            }
            panels_seen += 1;
            let uid = p["datasource"]["uid"].as_str().expect("panel datasource");
            assert!(
                uids.iter().any(|u| u == uid),
                "{file}: panel {id} uses {uid}"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: panel {id} has no query");
            for t in targets {
                let query = if uid == "prometheus" {
                    "expr"
                } else {
                    "rawSql"
                };
                assert!(
                    t[query].as_str().is_some_and(|q| !q.trim().is_empty()),
                    "{file}: panel {id} without {query}"
                );
            }
        }
    }
    println!("{panels_seen} panels in {} dashboards", all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_panel_runs_on_the_test_clickhouse() {
    let (cfg, _) = common::config("");
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrate");
    let client = cfg.clickhouse.client();
    let to = common::now_ms() / 1000;
    let from = to - 7 * 86_400;
    let mut ran = 0;
    for (file, d) in dashboards() {
        let mut queries: Vec<(String, String)> = Vec::new();
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(sql) = t["rawSql"].as_str() {
                    queries.push((
                        p["title"].as_str().unwrap_or("?").to_owned(),
                        sql.to_owned(),
                    ));
                }
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if v["datasource"]["uid"] == "clickhouse" {
                let q = v["query"].as_str().expect("variable query");
                queries.push((format!("variable {}", v["name"]), q.to_owned()));
            }
        }
        for (title, sql) in queries {
            let sql = expand(&sql, from, to);
            let mut cursor = client
                .query(&sql)
                .fetch_bytes("TSV")
                .unwrap_or_else(|e| panic!("{file}: {title}: {e}"));
            cursor
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{file}: {title}: {e}\n{sql}"));
            ran += 1;
        }
    }
    assert!(ran >= 9, "{ran} SQL queries");
    println!("{ran} SQL queries of the dashboards ran on ClickHouse");
    common::drop_database(&cfg).await;
}
