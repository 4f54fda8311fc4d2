//! Bulk import end to end: `xoflow import` of generated NDJSON (with a line
//! that is not an event) goes on the backfill lane through enrich and sink
//! into ClickHouse; running the same import again stores nothing twice.

mod common;

use std::{io::Write, time::Duration};

use xoflow::{
    Stages,
    datagen::{self, GenConfig},
};

fn import(cfg: &xoflow::Config, file: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xoflow"))
        .args(["import", "--chunk", "500"])
        .arg(file)
        .env("XOFLOW_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env("XOFLOW_KAFKA__TOPICS__EVENTS", &cfg.kafka.topics.events)
        .env("XOFLOW_KAFKA__TOPICS__BACKFILL", &cfg.kafka.topics.backfill)
        .env(
            "XOFLOW_KAFKA__TOPICS__DEAD_LETTERS",
            &cfg.kafka.topics.dead_letters,
        )
        .env("RUST_LOG", "warn")
        .output()
        .expect("run xoflow import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_lands_once_even_when_run_twice() {
    let (cfg, id) = common::config("");
    let now = common::now_ms();
    let g = datagen::generate(&GenConfig {
        seed: 3,
        scale: 0.05,
        days: 2,
        start_ms: datagen::days_before_today(now, 2),
        invalid_share: 0.0,
        ..GenConfig::default()
    });
    let dir = std::env::temp_dir().join(format!("xoflow-import-{id}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("events.ndjson");
    let mut bytes = Vec::new();
    datagen::write_ndjson(&g.events, &mut bytes).expect("ndjson");
    bytes.extend_from_slice(b"{\"this is\": \"not an event\"}\n");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("write");
    let distinct = g.events.len() as u64;

    let running = common::start(
        &cfg,
        Stages {
            ingest: false,
            enrich: true,
            sink: true,
            alert: false,
        },
    )
    .await;
    import(&cfg, &file);
    import(&cfg, &file);

    let ch = cfg.clickhouse.client();
    // Both runs fully through: every event once, and the bad line
    // dead-lettered once per run.
    common::wait_for(
        "both imports through the pipeline",
        Duration::from_secs(120),
        || {
            let ch = ch.clone();
            async move {
                let events: u64 = ch
                    .query("SELECT uniqExact(event_id) FROM events")
                    .fetch_one()
                    .await
                    .unwrap_or(0);
                let dead: u64 = ch
                    .query("SELECT count() FROM dead_letters")
                    .fetch_one()
                    .await
                    .unwrap_or(0);
                events >= distinct && dead >= 2
            }
        },
    )
    .await;
    // The second run's copies are read after the last of the first run's
    // events; once its dead letter is in, the copies have been seen.
    let (rows, ids): (u64, u64) = ch
        .query("SELECT toUInt64(countIf(revision = 0) + count() - uniqExact(event_id, revision)), uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!((rows, ids), (distinct, distinct));
    let topics: Vec<String> = ch
        .query("SELECT DISTINCT kafka_topic FROM events")
        .fetch_all()
        .await
        .expect("lineage");
    assert_eq!(topics, vec![cfg.kafka.topics.enriched.clone()]);

    running.stop();
    running.wait().await.expect("clean shutdown");
    common::drop_database(&cfg).await;
    let _ = std::fs::remove_dir_all(&dir);
}
