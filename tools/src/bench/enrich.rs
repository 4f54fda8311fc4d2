//! B5: the enrich stage (resolve, repartition of the events not keyed by
//! their customer id, join) against a consume →
//! produce passthrough of the same pre-filled input on the same broker,
//! both as steady-state rates read back from their output topics: first
//! outputs (revision 0) per second. The enrich stage runs twice: on the
//! input in time order, and on the same events with every survey, call and
//! post first (history-first, as a company onboards), where the join emits
//! repairs besides; their count is reported with the rate.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use xoflow_app::{Config, Stages};
use xoflow_common::{kafka::Outgoing, shutdown::Shutdown};

/// Where the bench's reading consumer counts its errors (the bench reads
/// the enriched topic itself; nothing scrapes it).
const BENCH_ERRORS: &str = "xoflow_bench_consume_errors_total";
use xoflow_proto::{Message as _, v1::Event};

use super::support::{send_keyed, wait_assigned};

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
        wait_assigned(&consumer, topic).await?;
        Ok(OutputReader { consumer })
    }

    /// Reads until 90% of `n` first outputs are seen; the steady-state
    /// rate: first outputs between 10% and 90% of `n` over the time
    /// between, and the repairs (outputs of a revision above 0) read
    /// meanwhile.
    async fn steady_rate(&self, n: usize) -> anyhow::Result<(f64, u64)> {
        let (lo, hi) = (n / 10, n * 9 / 10);
        let mut seen = 0usize;
        let mut repairs = 0;
        let mut t_lo = None;
        while seen < hi.max(1) {
            let m = tokio::time::timeout(Duration::from_secs(120), self.consumer.recv())
                .await
                .with_context(|| format!("stalled after {seen} of {n} records"))??;
            let Some(payload) = m.payload() else { continue };
            if revision(payload) > 0 {
                repairs += 1;
                continue;
            }
            seen += 1;
            if seen == lo.max(1) {
                t_lo = Some(Instant::now());
            }
        }
        let secs = t_lo.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        Ok(((hi - lo) as f64 / secs, repairs))
    }
}

/// The `revision` of an encoded `EnrichedEvent` (field 10), read without
/// decoding the rest; 0 when absent (and for anything else, e.g. a
/// passthrough's raw event).
fn revision(mut b: &[u8]) -> u64 {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    while !b.is_empty() {
        let Ok((tag, wire)) = decode_key(&mut b) else {
            return 0;
        };
        if tag == 10 && wire == WireType::Varint {
            return decode_varint(&mut b).unwrap_or(0);
        }
        if skip_field(wire, tag, &mut b, DecodeContext::default()).is_err() {
            return 0;
        }
    }
    0
}

/// What B5 measured: first outputs per second of the enrich stage on
/// time-ordered and on history-first input, the repairs read during the
/// latter, and the passthrough's rate.
pub(super) struct Measured {
    pub in_order: f64,
    pub history_first: f64,
    pub repairs: u64,
    pub passthrough: f64,
}

/// B5: the enrich stage against a consume → produce passthrough of the same
/// pre-filled input, each on its own topics.
pub(super) async fn measure(cfg: &Config, events: &[Event], id: i64) -> anyhow::Result<Measured> {
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
                let batch = xoflow_common::kafka::recv_batch(
                    &consumer,
                    max,
                    wait,
                    None,
                    &stop,
                    BENCH_ERRORS,
                )
                .await?;
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
    let (passthrough_rate, _) = reader.steady_rate(n).await?;
    stop.cancel();
    passthrough.await??;

    // The enrich stage on its own topics, in time order.
    let (in_order, _) = run_enrich(cfg, &format!("{id}-en"), &encoded, n).await?;
    // And history-first.
    let mut x_first: Vec<Event> = events.to_vec();
    x_first.sort_by_key(|e| !is_experience(e));
    let encoded_x: Vec<(Vec<u8>, &str)> = x_first
        .iter()
        .map(|e| (e.encode_to_vec(), customer_key(e)))
        .collect();
    let (history_first, repairs) = run_enrich(cfg, &format!("{id}-xf"), &encoded_x, n).await?;
    Ok(Measured {
        in_order,
        history_first,
        repairs,
        passthrough: passthrough_rate,
    })
}

fn is_experience(e: &Event) -> bool {
    use xoflow_proto::v1::event::Payload;
    matches!(
        e.payload,
        Some(Payload::Survey(_) | Payload::Call(_) | Payload::Social(_))
    )
}

/// Runs the enrich stage alone on `input`, pre-filled into topics named
/// after `tag`; its steady first-output rate and the repairs read.
async fn run_enrich(
    cfg: &Config,
    tag: &str,
    input: &[(Vec<u8>, &str)],
    n: usize,
) -> anyhow::Result<(f64, u64)> {
    let mut ecfg = cfg.clone();
    ecfg.kafka.topics.events = format!("bench-{tag}-in");
    ecfg.kafka.topics.backfill = format!("bench-{tag}-backfill");
    ecfg.kafka.topics.enriched = format!("bench-{tag}-out");
    ecfg.enrich.group_id = format!("bench-{tag}-b5-enrich");
    ecfg.kafka
        .ensure_topics(&[&ecfg.kafka.topics.events])
        .await?;
    let producer = ecfg.kafka.batch_producer()?;
    for chunk in input.chunks(10_000) {
        send_keyed(&producer, &ecfg.kafka.topics.events, chunk).await?;
    }
    let reader = OutputReader::join(&ecfg, &ecfg.kafka.topics.enriched).await?;
    let running = xoflow_app::start(ecfg.clone(), Stages::ENRICH, Shutdown::new()).await?;
    let measured = reader.steady_rate(n).await?;
    running.stop();
    running.wait().await?;
    Ok(measured)
}
