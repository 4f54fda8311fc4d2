//! A short run of `xoflow bench` on the real broker and ClickHouse, so the
//! benchmark cannot rot: every measurement runs to its end and reports a
//! figure. Nothing here asserts a speed (3,000 events in a debug build
//! say nothing about it); `BENCHMARKS.md` holds the measured runs.

mod common;

use std::collections::HashSet;

/// Every measurement's rows, by the start of their names: what a full run
/// must produce (B1 raw Kafka, B2 collectors, B3 and B6 sink, B5 enrich,
/// P pipeline closed and open loop, A alerts).
const EXPECTED: &[&str] = &[
    "B1 raw rdkafka produce→consume",
    "B2 collector, batched",
    "B2 collector, client streaming",
    "B2 collector, unary",
    "B2 baseline echo, batched",
    "B3 sink Kafka→ClickHouse",
    "B3 sink catching up on a backlog",
    "B3 baseline clickhouse-client RowBinary insert",
    "B5 enrich stage (resolve + join), time order",
    "B5 baseline consume→produce passthrough",
    "B6 sink ÷ raw consume→insert loop",
    "B6 baseline raw rdkafka→clickhouse loop",
    "P whole pipeline gRPC→ClickHouse",
    "P CPU per event, xoflow",
    "P CPU per event, load generator",
    "P ack→visible latency p99 (half peak)",
    "P twice the peak: rate offered",
    "P twice the peak: RSS growth",
    "A alerts delivered",
    "A ingest→webhook latency p99",
];

#[test]
fn every_measurement_runs_to_its_end_and_reports_a_figure() {
    let (cfg, id) = common::config("");
    let out = std::env::temp_dir().join(format!("xoflow-bench-smoke-{id}"));
    let args = [
        "bench",
        "--events",
        "3000",
        "--seconds",
        "5",
        "--overload-seconds",
        "6",
        "--out",
    ];
    let run = common::xoflow_command(&cfg, &args)
        .arg(&out)
        .output()
        .expect("xoflow bench");
    assert!(
        run.status.success(),
        "xoflow bench failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read(out.join("results.json")).expect("results.json written");
    let rows: serde_json::Value = serde_json::from_slice(&json).expect("results.json parses");
    let rows = rows.as_array().expect("a list of each row's summary");
    let mut seen = HashSet::new();
    for r in rows {
        let name = r["name"].as_str().expect("each row has a name");
        let value = r["value"].as_f64().expect("each row has a value");
        assert!(value.is_finite(), "{name}: {value}");
        if let Some(e) = EXPECTED.iter().find(|e| name.starts_with(**e)) {
            seen.insert(*e);
            // A rate or a count of zero means the measurement saw nothing.
            // The load generator's thread may be charged less than one
            // clock tick (10 ms) for 3,000 events: its 0 is a reading.
            if !name.contains("latency")
                && !name.contains("RSS")
                && !name.contains("load generator")
            {
                assert!(value > 0.0, "{name} is 0");
            }
        }
    }
    let missing: Vec<_> = EXPECTED.iter().filter(|e| !seen.contains(*e)).collect();
    assert!(missing.is_empty(), "rows missing: {missing:?}");
    assert!(
        std::fs::read_to_string(out.join("results.md"))
            .expect("results.md written")
            .contains("| measurement |"),
        "results.md holds the table"
    );
    let runs: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("results-runs.json")).expect("results-runs.json written"),
    )
    .expect("results-runs.json parses");
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "one run's rows");
    // P and A delete what the pipeline's groups committed, as a broker's
    // retention would (BENCHMARKS.md, "Consumed records deleted"): at
    // least one of their phases, 5 s or more each, cut a topic.
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("[bench] consumed records deleted, partition cuts per topic: {\""),
        "no consumed record deleted: {stdout}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
