//! The migrations for a ClickHouse cluster (`clickhouse.cluster` set): the
//! same schema, spread over shards and replicated.
//!
//! The migration files are written for one server. For a cluster each
//! statement is rewritten, by [`statements`], into what the classic
//! sharded-and-replicated layout needs:
//!
//! - every table with an engine becomes `<name>_local` (`ON CLUSTER`, the
//!   `Replicated` variant of its engine, with the conventional
//!   `/clickhouse/tables/{shard}/<db>/<name>_local` path and `{replica}`
//!   macro) plus `<name>`, a `Distributed` table over it: the sink inserts
//!   into and BI reads from the names they always used;
//! - materialized views read `<source>_local` and write `<target>_local`, so
//!   each shard aggregates the rows it holds and `-Merge` over the
//!   `Distributed` table combines the shards' partial states;
//! - plain views, `CREATE DATABASE` and `DROP TABLE` (of a view) gain `ON
//!   CLUSTER`; an `ALTER TABLE` is applied to both tables, less any `MODIFY
//!   ORDER BY` for the `Distributed` one, which has no sorting key;
//! - an `INSERT ... SELECT` (a data rewrite) is left as it is: run once,
//!   it reads and writes every shard through the `Distributed` tables.
//!
//! Sharding keys: `events` by customer (unresolved events by event id), so
//! that a customer's rows — and the `customer_profile` rows its
//! materialized view derives from them — live on one shard, where
//! `ReplacingMergeTree` can collapse them, and a redelivered copy of an
//! event lands beside its original; `alerts` by alert id, so that a copy
//! written by a replay lands beside its original too; other tables have no
//! key of their own (`rand()`), their rows are written by materialized
//! views on the shard that holds the source rows, or are few. The
//! trade-offs are in docs/clickhouse.md.
//!
//! Nothing here talks to a server: no cluster runs on the machines the
//! tests run on, so the rewrite is checked statically (the tests below) and
//! documented as such.

/// Sharding key of the `Distributed` table over each data table.
fn sharding_key(table: &str) -> &'static str {
    match table {
        "events" => "cityHash64(tenant, if(customer_id = '', event_id, customer_id))",
        // Copies of an alert (a replay racing its first write) land on one
        // shard, where ReplacingMergeTree collapses them.
        "alerts" => "cityHash64(alert_id)",
        _ => "rand()",
    }
}

/// The engines of the single-server schema and their replicated variants.
const ENGINES: [(&str, &str); 4] = [
    ("ReplacingMergeTree", "ReplicatedReplacingMergeTree"),
    ("AggregatingMergeTree", "ReplicatedAggregatingMergeTree"),
    ("SummingMergeTree", "ReplicatedSummingMergeTree"),
    ("MergeTree", "ReplicatedMergeTree"),
];

/// The rewrite of one single-server statement for `cluster`, in order.
/// `tables` are the names of every data table of the schema (their
/// `CREATE TABLE ... ENGINE` statements): references to them inside
/// materialized views are pointed at the local tables.
pub fn statements(stmt: &str, db: &str, cluster: &str, tables: &[String]) -> Vec<String> {
    let on = format!("ON CLUSTER {cluster}");
    let trimmed = stmt.trim_start();
    if let Some(rest) = trimmed.strip_prefix("CREATE DATABASE IF NOT EXISTS ") {
        return vec![format!(
            "CREATE DATABASE IF NOT EXISTS {} {on}",
            rest.trim()
        )];
    }
    if let Some(rest) = trimmed.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
        let (name, body) = split_name(rest);
        let table = unqualified(name, db);
        let Some((engine_at, engine, args_end)) = find_engine(body) else {
            // A table without an engine clause: nothing to replicate.
            return vec![format!("CREATE TABLE IF NOT EXISTS {name} {on}{body}")];
        };
        let replicated = ENGINES
            .iter()
            .find(|(e, _)| *e == engine)
            .map_or(engine, |(_, r)| r);
        let args = &body[engine_at + engine.len() + 1..args_end];
        let path = format!("'/clickhouse/tables/{{shard}}/{db}/{table}_local', '{{replica}}'");
        let args = if args.trim().is_empty() {
            path
        } else {
            format!("{path}, {args}")
        };
        let local = format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table}_local {on}{}{replicated}({args}){}",
            &body[..engine_at],
            &body[args_end + 1..]
        );
        let distributed = format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table} {on} AS {db}.{table}_local \
             ENGINE = Distributed({cluster}, {db}, {table}_local, {})",
            sharding_key(table)
        );
        return vec![local, distributed];
    }
    if let Some(rest) = trimmed.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
        let (name, body) = split_name(rest);
        let mut body = body.to_string();
        for t in tables {
            body = replace_table(&body, &format!("{db}.{t}"), &format!("{db}.{t}_local"));
        }
        return vec![format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {name} {on}{body}"
        )];
    }
    if let Some(rest) = trimmed.strip_prefix("CREATE VIEW IF NOT EXISTS ") {
        let (name, body) = split_name(rest);
        return vec![format!("CREATE VIEW IF NOT EXISTS {name} {on}{body}")];
    }
    if let Some(rest) = trimmed.strip_prefix("DROP TABLE IF EXISTS ") {
        let (name, body) = split_name(rest);
        return vec![format!("DROP TABLE IF EXISTS {name} {on}{body}")];
    }
    if let Some(rest) = trimmed.strip_prefix("ALTER TABLE ") {
        let (name, body) = split_name(rest);
        let mut out = vec![format!("ALTER TABLE {name}_local {on}{body}")];
        if let Some(body) = without_sorting_key(body) {
            out.push(format!("ALTER TABLE {name} {on}{body}"));
        }
        return out;
    }
    vec![stmt.to_string()]
}

/// The commands of an `ALTER TABLE` body less any `MODIFY ORDER BY`; `None`
/// when nothing is left.
fn without_sorting_key(body: &str) -> Option<String> {
    let mut commands = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                commands.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    commands.push(&body[start..]);
    let kept: Vec<&str> = commands
        .into_iter()
        .filter(|c| !c.trim_start().starts_with("MODIFY ORDER BY"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

/// The data tables of a schema: the names of its `CREATE TABLE` statements
/// that have an engine.
pub fn data_tables<'a>(stmts: impl IntoIterator<Item = &'a str>, db: &str) -> Vec<String> {
    stmts
        .into_iter()
        .filter_map(|s| {
            let rest = s.trim_start().strip_prefix("CREATE TABLE IF NOT EXISTS ")?;
            let (name, body) = split_name(rest);
            find_engine(body).map(|_| unqualified(name, db).to_string())
        })
        .collect()
}

/// The object name at the start of `rest` and what follows it.
fn split_name(rest: &str) -> (&str, &str) {
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(rest.len());
    (&rest[..end], &rest[end..])
}

fn unqualified<'a>(name: &'a str, db: &str) -> &'a str {
    name.strip_prefix(db)
        .and_then(|n| n.strip_prefix('.'))
        .unwrap_or(name)
}

/// Where `ENGINE = X(args)` is in a table body: the index of `X`, `X`, and
/// the index of its closing parenthesis.
fn find_engine(body: &str) -> Option<(usize, &str, usize)> {
    let at = body.find("ENGINE = ")? + "ENGINE = ".len();
    let open = at + body[at..].find('(')?;
    let close = open + body[open..].find(')')?;
    Some((at, &body[at..open], close))
}

/// Replaces whole-word occurrences of the table name `from` (followed by
/// neither a name character nor `_local` already).
fn replace_table(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        let whole = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..i]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::migrate::MIGRATIONS;

    fn cluster_schema() -> Vec<String> {
        let single: Vec<String> = MIGRATIONS.iter().flat_map(|m| m.statements("xo")).collect();
        let tables = data_tables(single.iter().map(String::as_str), "xo");
        single
            .iter()
            .flat_map(|s| statements(s, "xo", "prod", &tables))
            .collect()
    }

    #[test]
    fn every_data_table_is_replicated_and_distributed() {
        let single: Vec<String> = MIGRATIONS.iter().flat_map(|m| m.statements("xo")).collect();
        let tables = data_tables(single.iter().map(String::as_str), "xo");
        assert_eq!(
            tables,
            [
                "events",
                "dead_letters",
                "touchpoint_metrics",
                "customer_profile",
                "alerts",
                "alert_deliveries",
                "alert_actions",
                "revenue_metrics",
                "survey_answers",
                "erasure_receipts",
                "event_ids",
                "event_ids_hourly",
                "event_ids_hourly_from",
                "event_ids_by_time",
                "event_ids_by_time_from"
            ]
        );
        let schema = cluster_schema();
        for t in &tables {
            let local = schema
                .iter()
                .find(|s| {
                    s.starts_with(&format!(
                        "CREATE TABLE IF NOT EXISTS xo.{t}_local ON CLUSTER prod"
                    ))
                })
                .unwrap_or_else(|| panic!("no local table for {t}"));
            assert!(
                local.contains("ENGINE = Replicated")
                    && local.contains(&format!(
                        "'/clickhouse/tables/{{shard}}/xo/{t}_local', '{{replica}}'"
                    )),
                "{local}"
            );
            let dist = schema
                .iter()
                .find(|s| {
                    s.starts_with(&format!(
                        "CREATE TABLE IF NOT EXISTS xo.{t} ON CLUSTER prod AS xo.{t}_local"
                    ))
                })
                .unwrap_or_else(|| panic!("no distributed table for {t}"));
            assert!(
                dist.contains(&format!("ENGINE = Distributed(prod, xo, {t}_local, ")),
                "{dist}"
            );
        }
        // Engine arguments survive behind the replication path.
        assert!(schema.iter().any(|s| s.contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/xo/customer_profile_local', '{replica}', version_ms)"
        )));
        // The clauses after the engine survive.
        let events = schema
            .iter()
            .find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS xo.events_local"))
            .expect("events");
        assert!(events.contains("ORDER BY (tenant, touchpoint, occurred_at, event_id)"));
        assert!(events.contains("PARTITION BY toYYYYMM(occurred_at)"));
    }

    #[test]
    fn views_aggregate_per_shard_and_every_statement_is_on_the_cluster() {
        let schema = cluster_schema();
        let mv = schema
            .iter()
            .find(|s| {
                s.starts_with("CREATE MATERIALIZED VIEW IF NOT EXISTS xo.touchpoint_metrics_mv")
            })
            .expect("mv");
        assert!(mv.contains("TO xo.touchpoint_metrics_local"), "{mv}");
        assert!(mv.contains("FROM xo.events_local"), "{mv}");
        // A table whose name starts with another's is rewritten as itself.
        let ids = schema
            .iter()
            .find(|s| {
                s.starts_with("CREATE MATERIALIZED VIEW IF NOT EXISTS xo.event_ids_hourly_mv")
            })
            .expect("event_ids_hourly_mv");
        assert!(ids.contains("TO xo.event_ids_hourly_local "), "{ids}");
        assert!(ids.contains("FROM xo.events_local"), "{ids}");
        assert!(
            !mv.contains("xo.events\n") && !mv.contains("xo.events "),
            "{mv}"
        );
        for s in &schema {
            // A data rewrite runs once, through the Distributed tables.
            if s.starts_with("INSERT INTO") {
                assert!(!s.contains("_local"), "{s}");
                continue;
            }
            assert!(s.contains("ON CLUSTER prod"), "{s}");
            assert!(!s.contains("_local_local"), "{s}");
        }
        // BI views read the Distributed tables, under their usual names.
        let view = schema
            .iter()
            .find(|s| s.starts_with("CREATE VIEW IF NOT EXISTS xo.cx_by_touchpoint_day"))
            .expect("view");
        assert!(view.contains("xo.touchpoint_metrics") && !view.contains("_local"));
        // A column added later is added to both tables.
        let alters: Vec<&String> = schema
            .iter()
            .filter(|s| s.starts_with("ALTER TABLE xo.events"))
            .collect();
        assert!(
            alters
                .iter()
                .any(|s| s.starts_with("ALTER TABLE xo.events_local ON CLUSTER prod"))
        );
        assert!(
            alters
                .iter()
                .any(|s| s.starts_with("ALTER TABLE xo.events ON CLUSTER prod"))
        );
        // The sorting key is changed on the replicated tables only: the
        // Distributed table has none, but gains the column.
        let sorting: Vec<&&String> = alters
            .iter()
            .filter(|s| s.contains("MODIFY ORDER BY"))
            .collect();
        assert!(!sorting.is_empty());
        assert!(
            sorting
                .iter()
                .all(|s| s.starts_with("ALTER TABLE xo.events_local ON CLUSTER prod")),
            "{sorting:?}"
        );
        assert!(alters.iter().any(|s| {
            s.starts_with("ALTER TABLE xo.events ON CLUSTER prod")
                && s.contains("ADD COLUMN revision UInt32")
                && !s.contains("MODIFY")
        }));
        // The replaced materialized view is dropped on every node.
        assert!(
            schema
                .iter()
                .any(|s| s == "DROP TABLE IF EXISTS xo.touchpoint_metrics_mv ON CLUSTER prod")
        );
    }

    #[test]
    fn a_sorting_key_change_is_cut_from_the_distributed_alter() {
        let body = "\n    ADD COLUMN a UInt32,\n    MODIFY ORDER BY (x, f(y, z), a),\n    ADD COLUMN b String";
        assert_eq!(
            without_sorting_key(body).as_deref(),
            Some("\n    ADD COLUMN a UInt32,\n    ADD COLUMN b String")
        );
        assert_eq!(without_sorting_key(" MODIFY ORDER BY (x, a)"), None);
        assert_eq!(
            without_sorting_key(" ADD COLUMN c Enum8('a' = 1, 'b' = 2)").as_deref(),
            Some(" ADD COLUMN c Enum8('a' = 1, 'b' = 2)")
        );
    }
}
