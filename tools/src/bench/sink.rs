//! B3: the sink (Kafka → ClickHouse) against `clickhouse-client` inserting
//! the same rows as RowBinary; B6: against a raw loop that reads the same
//! records and inserts the same rows with the `clickhouse` crate, without
//! the sink's dedup and position logic.
//!
//! The sink is measured two ways. Fed (B3, B6): it drains the records
//! while the bench produces them, as it would in service. Catching up:
//! the records are all in a topic before a sink starts on it, as after an
//! outage, and as `clickhouse-client` reads a file that is all there (a
//! row beside B3). Every timed part waits first for ClickHouse to finish
//! merging what the part before it wrote ([`settle`]).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::bail;
use rdkafka::{
    Message as _,
    consumer::{Consumer, DefaultConsumerContext},
};
use xoflow_app::{Config, Stages};
use xoflow_common::{kafka::BatchProducer, shutdown::Shutdown};
use xoflow_proto::{
    Message as _,
    v1::{EnrichedEvent, Event},
};
use xoflow_sink::clickhouse::row::{EventRow, Lineage};

use super::{
    report::Figure,
    support::{Flow, Rows, count, follow_rows, own_pipeline, send_keyed, wait_rows},
};

/// Rows per second: the sink fed as the records are produced (B3, B6), the
/// sink catching up on a backlog, `clickhouse-client` (B3) and the raw loop
/// (B6).
pub(super) struct SinkRates {
    pub sink: Figure,
    pub drained: Figure,
    pub client: f64,
    pub raw_loop: Figure,
}

/// The sink alone, warmed up, draining the enriched events as they are
/// produced, against `clickhouse-client` inserting the rows the sink wrote,
/// as RowBinary, and against the raw loop fed the same way.
pub(super) async fn measure(cfg: &Config, events: &[Event]) -> anyhow::Result<SinkRates> {
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await?;
    let producer = cfg.kafka.batch_producer()?;
    let encoded: Vec<(Vec<u8>, &str)> = events
        .iter()
        .map(|e| {
            let en = crate::datagen::as_enriched(e.clone());
            (en.encode_to_vec(), e.event_id.as_str())
        })
        .collect();
    xoflow_sink::migrate(&cfg.clickhouse).await?;
    let ch = cfg.clickhouse.client();
    let n = events.len() as u64;
    let db = &cfg.clickhouse.database;
    settle(&ch, db).await;
    let running = xoflow_app::start(cfg.clone(), Stages::SINK, Shutdown::new()).await?;
    let sink_rate = timed_feed(&producer, &t.enriched, &encoded, &ch).await?;
    running.stop();
    running.wait().await?;
    let drained = drain_backlog(cfg, &producer, &encoded).await?;

    // The same rows, exported as RowBinary and inserted by clickhouse-client
    // into an empty copy of the table.
    let port = std::env::var("XOFLOW_CLICKHOUSE_TCP_PORT").unwrap_or_else(|_| "9000".into());
    let dir = std::env::temp_dir().join(format!("{db}-rowbinary"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("events.rowbinary");
    let client = |query: &str| {
        let mut c = std::process::Command::new("clickhouse-client");
        c.args(["--port", &port, "--database", db, "--query", query]);
        c
    };
    // system.columns lists columns in table order (18.16 has no `position`
    // column to sort by, nor SELECT * EXCEPT).
    let cols: Vec<String> = ch
        .query(
            "SELECT name FROM system.columns \
             WHERE database = currentDatabase() AND table = 'events' AND name != 'inserted_at'",
        )
        .fetch_all()
        .await?;
    let cols = cols.join(", ");
    let ok = client(&format!("SELECT {cols} FROM events FORMAT RowBinary"))
        .stdout(std::fs::File::create(&file)?)
        .status()?
        .success();
    if !ok {
        bail!("clickhouse-client export failed");
    }
    // Into the same schema (materialized view included) in a second
    // database, so both sides pay for the aggregates.
    let mut copy_cfg = cfg.clickhouse.clone();
    copy_cfg.database = format!("{db}_copy");
    xoflow_sink::migrate(&copy_cfg).await?;
    settle(&ch, db).await;
    let start = Instant::now();
    let ok = client(&format!(
        "INSERT INTO {}.events ({cols}) FORMAT RowBinary",
        copy_cfg.database
    ))
    .stdin(std::fs::File::open(&file)?)
    .stdout(Stdio::null())
    .status()?
    .success();
    let secs = start.elapsed().as_secs_f64();
    if !ok {
        bail!("clickhouse-client insert failed");
    }
    let copied = count(&ch, Rows::Of(&format!("{}.events", copy_cfg.database))).await;
    let _ = copy_cfg.drop_database().await;
    if copied != n {
        bail!("clickhouse-client inserted {copied} rows, expected {n}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let raw_loop = raw_loop(cfg, &producer, &encoded).await?;
    Ok(SinkRates {
        sink: sink_rate,
        drained,
        client: n as f64 / secs,
        raw_loop,
    })
}

/// The sink catching up: started on a topic that already holds every
/// record, with a group and a database of its own, timed by the rows
/// visible (the middle 80%, [`Flow`]; the whole run, its group join
/// included, beside it).
async fn drain_backlog(
    cfg: &Config,
    producer: &BatchProducer,
    encoded: &[(Vec<u8>, &str)],
) -> anyhow::Result<Figure> {
    let own = own_pipeline(cfg, "backlog");
    let measured = async {
        let t = &own.kafka.topics;
        own.kafka
            .ensure_topics(&[&t.enriched, &t.dead_letters])
            .await?;
        xoflow_sink::migrate(&own.clickhouse).await?;
        for chunk in encoded.chunks(10_000) {
            send_keyed(producer, &t.enriched, chunk).await?;
        }
        let ch = own.clickhouse.client();
        settle(&ch, &cfg.clickhouse.database).await;
        let mut flow = Flow::start(encoded.len() as u64);
        let running = xoflow_app::start(own.clone(), Stages::SINK, Shutdown::new()).await?;
        let followed = follow_rows(
            &ch,
            Rows::Of("events"),
            0,
            &mut flow,
            Duration::from_secs(600),
        )
        .await;
        running.stop();
        running.wait().await?;
        followed.map(|()| flow.rate())
    }
    .await;
    // Its topics go with the run's (named after it); its database here.
    let _ = own.clickhouse.drop_database().await;
    measured
}

/// Waits, up to half a minute, until ClickHouse merges nothing in the
/// bench's databases (`db` and the copies named after it). The parts a
/// measurement wrote are merged for seconds after it ends, and an insert
/// timed meanwhile shares the cores with those merges: `clickhouse-client`
/// measured 27.7k-106.7k rows/s on the same rows, one run to the next,
/// while they ran. Says so when it stops waiting unsettled.
async fn settle(ch: &clickhouse::Client, db: &str) {
    let sql = format!("SELECT count() FROM system.merges WHERE startsWith(database, '{db}')");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match ch.query(&sql).fetch_one::<u64>().await {
            Ok(0) => return,
            Ok(n) if Instant::now() >= until => {
                eprintln!("[bench] {n} merges still running after 30 s; timing anyway");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("[bench] cannot read system.merges ({e}); timing without waiting");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// B6: what the sink's work costs at least. A consumer reads the records
/// as they are produced, as the sink did (to a topic of its own, the same
/// producer and chunks), decodes each, builds its row with the sink's own
/// `EventRow::from_record`, and inserts the rows with the `clickhouse`
/// crate in batches of the sink's `batch_rows` or `batch_max_wait`, into
/// the same schema in a database of its own (so it pays for the
/// materialized views too). No dedup look-up, no positions, no retries, no
/// commits. Timed like the sink ([`timed_feed`]).
async fn raw_loop(
    cfg: &Config,
    producer: &BatchProducer,
    encoded: &[(Vec<u8>, &str)],
) -> anyhow::Result<Figure> {
    let topic = format!("{}.raw-loop", cfg.kafka.topics.enriched);
    cfg.kafka.ensure_topics(&[&topic]).await?;
    let mut raw_cfg = cfg.clickhouse.clone();
    raw_cfg.database = format!("{}_raw", cfg.clickhouse.database);
    xoflow_sink::migrate(&raw_cfg).await?;
    let ch = raw_cfg.client();
    settle(&ch, &cfg.clickhouse.database).await;
    let consumer = cfg.kafka.consumer(
        &format!("{}.raw-loop", cfg.sink.group_id),
        DefaultConsumerContext,
    )?;
    consumer.subscribe(&[&topic])?;
    let n = encoded.len();
    let (batch_rows, max_wait) = (cfg.sink.batch_rows.max(1), cfg.sink.batch_max_wait);
    let client = ch.clone();
    let mut reader = tokio::spawn(async move {
        let mut rows: Vec<EventRow> = Vec::with_capacity(batch_rows);
        let mut since: Option<Instant> = None;
        let mut inserted = 0;
        while inserted < n {
            let m = match since {
                Some(t) => {
                    let left = (t + max_wait).saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, consumer.recv()).await.ok()
                }
                None => Some(consumer.recv().await),
            };
            if let Some(m) = m {
                let m = m?;
                let payload = m.payload().unwrap_or_default();
                let en = EnrichedEvent::decode(payload)?;
                let lineage = Lineage {
                    topic: m.topic(),
                    partition: m.partition(),
                    offset: m.offset(),
                };
                let Some(row) = EventRow::from_record(en, payload, lineage) else {
                    bail!("a record without its event");
                };
                rows.push(row);
                since.get_or_insert_with(Instant::now);
            }
            let due = since.is_some_and(|t| t.elapsed() >= max_wait);
            if rows.len() >= batch_rows || (due && !rows.is_empty()) {
                let mut insert = client.insert::<EventRow>("events").await?;
                for r in &rows {
                    insert.write(r).await?;
                }
                insert.end().await?;
                inserted += rows.len();
                rows.clear();
                since = None;
            }
        }
        Ok(())
    });
    // A loop that fails says why at once, not after the feed's wait.
    let feed = timed_feed(producer, &topic, encoded, &ch);
    tokio::pin!(feed);
    let rate = tokio::select! {
        rate = &mut feed => {
            reader.await??;
            rate?
        }
        done = &mut reader => {
            done??;
            feed.await?
        }
    };
    let _ = raw_cfg.drop_database().await;
    Ok(rate)
}

/// Feeds `encoded` to `topic` for a reader that writes them to `ch`'s
/// `events`, and returns its rate in rows/s (a steady state, with the
/// whole run beside it: [`Flow`]). The reader joins its group and reads its
/// positions first (seconds on the local broker): one record, until it is
/// visible. Then the rest is timed from its first produce to its last row
/// visible: the reader drains it while it arrives, as it would in service.
async fn timed_feed(
    producer: &BatchProducer,
    topic: &str,
    encoded: &[(Vec<u8>, &str)],
    ch: &clickhouse::Client,
) -> anyhow::Result<Figure> {
    let n = encoded.len() as u64;
    send_keyed(producer, topic, &encoded[..1]).await?;
    wait_rows(ch, Rows::Of("events"), 1, Duration::from_secs(600)).await?;
    let mut flow = Flow::start(n - 1);
    let feed = async {
        for chunk in encoded[1..].chunks(10_000) {
            send_keyed(producer, topic, chunk).await?;
        }
        anyhow::Ok(())
    };
    // The rows are followed while they are fed: a rate taken only after
    // the last produce would miss the middle of the flow.
    let followed = follow_rows(
        ch,
        Rows::Of("events"),
        1,
        &mut flow,
        Duration::from_secs(600),
    );
    let (fed, followed) = tokio::join!(feed, followed);
    fed?;
    followed?;
    Ok(flow.rate())
}
