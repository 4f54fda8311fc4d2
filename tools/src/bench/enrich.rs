//! B5: the enrich stage (resolve, repartition, join) against a consume →
//! produce passthrough of the same pre-filled input on the same broker,
//! both as steady-state rates read back from their output topics.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use xoflow_app::{Config, Stages};
use xoflow_common::{kafka::Outgoing, shutdown::Shutdown};
use xoflow_proto::{Message as _, v1::Event};

use super::support::send_keyed;

/// The key ingest gives an event: its strongest customer key.
fn customer_key(e: &Event) -> &str {
    let c = e.customer.as_ref();
    [
        c.map(|c| c.customer_id.as_str()),
        c.map(|c| c.email_hash.as_str()),
        c.map(|c| c.phone_hash.as_str()),
        c.map(|c| c.social_handle_hash.as_str()),
        c.map(|c| c.device_id_hash.as_str()),
    ]
    .into_iter()
    .flatten()
    .find(|k| !k.is_empty())
    .unwrap_or(e.event_id.as_str())
}

/// A reader of a stage's output topic, joined before the stage starts so
/// that it sees the output as it is written.
struct OutputReader {
    consumer: StreamConsumer,
}

impl OutputReader {
    async fn join(cfg: &Config, topic: &str) -> anyhow::Result<Self> {
        cfg.kafka.ensure_topics(&[topic]).await?;
        let consumer: StreamConsumer = cfg.kafka.consumer(
            &format!("{topic}-reader"),
            rdkafka::consumer::DefaultConsumerContext,
        )?;
        consumer.subscribe(&[topic])?;
        let until = Instant::now() + Duration::from_secs(60);
        while consumer.assignment()?.count() == 0 {
            if Instant::now() > until {
                bail!("{topic}: reader got no partitions");
            }
            // Polling drives the group join; the topic is still empty.
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
        Ok(OutputReader { consumer })
    }

    /// Reads until 90% of `n` records are seen; the steady-state rate:
    /// records between 10% and 90% of `n` over the time between.
    async fn steady_rate(&self, n: usize) -> anyhow::Result<f64> {
        let (lo, hi) = (n / 10, n * 9 / 10);
        let mut seen = 0usize;
        let mut t_lo = None;
        while seen < hi.max(1) {
            let m = tokio::time::timeout(Duration::from_secs(120), self.consumer.recv())
                .await
                .with_context(|| format!("stalled after {seen} of {n} records"))??;
            seen += usize::from(m.payload().is_some());
            if seen == lo.max(1) {
                t_lo = Some(Instant::now());
            }
        }
        let secs = t_lo.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        Ok((hi - lo) as f64 / secs)
    }
}

/// B5: the enrich stage against a consume → produce passthrough of the same
/// pre-filled input, each on its own topics.
pub(super) async fn measure(cfg: &Config, events: &[Event], id: i64) -> anyhow::Result<(f64, f64)> {
    let encoded: Vec<(Vec<u8>, &str)> = events
        .iter()
        .map(|e| (e.encode_to_vec(), customer_key(e)))
        .collect();
    let fill = |topic: String| {
        let encoded = &encoded;
        async move {
            cfg.kafka.ensure_topics(&[&topic]).await?;
            let producer = cfg.kafka.batch_producer()?;
            for chunk in encoded.chunks(10_000) {
                send_keyed(&producer, &topic, chunk).await?;
            }
            anyhow::Ok(())
        }
    };
    let n = events.len();

    // The passthrough: the enrich loop's shape without the work.
    let (input, output) = (format!("bench-{id}-pt-in"), format!("bench-{id}-pt-out"));
    fill(input.clone()).await?;
    let reader = OutputReader::join(cfg, &output).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let passthrough = {
        let (kafka, stop, input, output) = (
            cfg.kafka.clone(),
            stop.clone(),
            input.clone(),
            output.clone(),
        );
        let (max, wait) = (cfg.enrich.batch_max_records, cfg.enrich.batch_max_wait);
        tokio::spawn(async move {
            let consumer: StreamConsumer = kafka.consumer(
                &format!("{input}-g"),
                rdkafka::consumer::DefaultConsumerContext,
            )?;
            consumer.subscribe(&[&input])?;
            let producer = kafka.batch_producer()?;
            loop {
                let batch =
                    xoflow_common::kafka::recv_batch(&consumer, max, wait, None, &stop).await?;
                if batch.is_empty() {
                    return anyhow::Ok(());
                }
                let records: Vec<Outgoing<'_>> = batch
                    .iter()
                    .map(|m| {
                        Outgoing::keyed(
                            m.key().unwrap_or_default(),
                            m.payload().unwrap_or_default(),
                        )
                    })
                    .collect();
                producer.send_all(&output, &records).await?;
                let offsets = xoflow_common::kafka::next_offsets(batch.iter())?;
                consumer.commit(&offsets, rdkafka::consumer::CommitMode::Async)?;
            }
        })
    };
    let passthrough_rate = reader.steady_rate(n).await?;
    stop.cancel();
    passthrough.await??;

    // The enrich stage on its own topics.
    let mut ecfg = cfg.clone();
    ecfg.kafka.topics.events = format!("bench-{id}-en-in");
    ecfg.kafka.topics.backfill = format!("bench-{id}-en-backfill");
    ecfg.kafka.topics.enriched = format!("bench-{id}-en-out");
    ecfg.enrich.group_id = format!("bench-{id}-b5-enrich");
    fill(ecfg.kafka.topics.events.clone()).await?;
    let reader = OutputReader::join(&ecfg, &ecfg.kafka.topics.enriched).await?;
    let running = xoflow_app::start(ecfg.clone(), Stages::ENRICH, Shutdown::new()).await?;
    let enrich_rate = reader.steady_rate(n).await?;
    running.stop();
    running.wait().await?;
    Ok((enrich_rate, passthrough_rate))
}
