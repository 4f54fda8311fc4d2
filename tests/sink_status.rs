//! `xoflow sink-status` on a partition whose last records are copies the
//! sink dropped on purpose: the group committed past them, ClickHouse
//! stores nothing for them, and that is no gap (exit 0); the high watermark
//! it prints is never below an offset stored. Real broker, real ClickHouse.

mod common;

use std::time::Duration;

use xoflow::Stages;

/// Every record under one key: one partition, in order.
const KEY: &str = "c-1";

fn enriched(id: &str, i: usize) -> Vec<u8> {
    common::enriched_click(format!("{id}-{i}"), "shop", KEY, "s1")
}

fn status_cli(cfg: &xoflow::Config) -> std::process::Output {
    common::xoflow_command(cfg, &["sink-status"])
        .output()
        .expect("run xoflow sink-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_dropped_at_the_end_of_a_partition_are_no_gap() {
    let (cfg, id) = common::config("");
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    // 100 events, then copies of the last 3 (an enrich retry): the
    // partition ends with records the sink drops.
    let mut records: Vec<(Vec<u8>, String)> = (0..100)
        .map(|i| (enriched(&id, i), KEY.to_owned()))
        .collect();
    records.extend((97..100).map(|i| (enriched(&id, i), KEY.to_owned())));
    common::produce_enriched(&cfg, &records).await;

    let running = common::start(&cfg, Stages::SINK).await;
    common::wait_for(
        "the sink to commit past the copies",
        Duration::from_secs(90),
        || {
            let cfg = cfg.clone();
            async move {
                let status =
                    xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id)
                        .await
                        .expect("status");
                status
                    .iter()
                    .filter(|s| s.topic == cfg.kafka.topics.enriched)
                    .filter_map(|s| s.committed)
                    .sum::<i64>()
                    == 103
            }
        },
    )
    .await;
    running.stop();
    running.wait().await.expect("clean shutdown");

    let status = xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id)
        .await
        .expect("status");
    let p = status
        .iter()
        .find(|s| s.topic == t.enriched && s.committed == Some(103))
        .expect("the partition holding the records");
    assert_eq!(p.stored_next, 100, "{p:?}");
    assert_eq!(p.rows_stored, 100, "{p:?}");
    assert_eq!(p.dropped_copies, 3, "{p:?}");
    assert_eq!(p.gap(), 0, "{p:?}");
    for s in &status {
        assert!(s.high_watermark >= s.stored_next, "{s:?}");
        assert!(s.high_watermark >= s.committed.unwrap_or(0), "{s:?}");
        assert!(s.high_watermark >= s.broker_high_watermark, "{s:?}");
    }
    assert_eq!(p.high_watermark, 103, "{p:?}");
    assert_eq!(p.lag(), 3, "the copies are read but not stored: {p:?}");

    let out = status_cli(&cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("copies"), "{stdout}");
}
