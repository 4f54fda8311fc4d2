//! The enrich loop: consume a batch, enrich it, produce it, commit it.
//!
//! A batch is the unit of work and of commit: its outputs are produced
//! together, and its offsets are committed only once all of them are
//! acknowledged. On shutdown the current batch is finished, its offsets are
//! committed synchronously, and the loop returns.

use std::time::Duration;

use rdkafka::{
    consumer::{CommitMode, Consumer, DefaultConsumerContext},
    error::KafkaError,
    message::Message,
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::Readiness,
    kafka::{ErrorClass, KafkaConfig, Outgoing, next_offsets, recv_batch},
};
use xoflow_proto::{
    Message as _,
    v1::{DeadLetter, Event},
};

use crate::{EnrichConfig, join::Join, telemetry};

/// Why the enrich stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("kafka client set-up failed: {0}")]
    Setup(#[source] KafkaError),
    #[error("enriched events were not acknowledged after {attempts} attempts: {source}")]
    Produce {
        attempts: u32,
        #[source]
        source: KafkaError,
    },
    #[error("committing offsets failed: {0}")]
    Commit(#[source] KafkaError),
}

impl EnrichError {
    pub fn is_transient(&self) -> bool {
        match self {
            EnrichError::Setup(_) => false,
            EnrichError::Produce { source, .. } | EnrichError::Commit(source) => {
                ErrorClass::of(source).is_transient()
            }
        }
    }
}

const PRODUCE_ATTEMPTS: u32 = 5;

/// Runs the enrich stage until `stop` is cancelled.
pub async fn run(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), EnrichError> {
    let topics = &kafka.topics;
    kafka
        .ensure_topics(&[
            &topics.events,
            &topics.backfill,
            &topics.enriched,
            &topics.dead_letters,
        ])
        .await
        .map_err(EnrichError::Setup)?;
    let consumer = kafka
        .consumer(&cfg.group_id, DefaultConsumerContext)
        .map_err(EnrichError::Setup)?;
    consumer
        .subscribe(&[&topics.events, &topics.backfill])
        .map_err(EnrichError::Setup)?;
    let producer = kafka.batch_producer().map_err(EnrichError::Setup)?;
    let mut join = Join::new(cfg.join.clone());
    readiness.set(true);
    tracing::info!(group = %cfg.group_id, input = %topics.events, output = %topics.enriched, "enrich started");

    loop {
        let batch =
            match recv_batch(&consumer, cfg.batch_max_records, cfg.batch_max_wait, &stop).await {
                Ok(b) if b.is_empty() => break,
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
        let now = now_ms();
        // (event_id, encoded EnrichedEvent). The enriched topic is keyed by
        // event id: every copy of an event, however often it is redelivered
        // or re-resolved, lands in the same partition, where the sink
        // deduplicates it.
        let mut outputs: Vec<(String, Vec<u8>)> = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for m in batch.iter() {
            let payload = m.payload().unwrap_or_default();
            match Event::decode(payload) {
                Ok(e) => {
                    let id = e.event_id.clone();
                    outputs.push((id, join.process(e, now).encode_to_vec()));
                }
                Err(err) => dead.push(DeadLetter {
                    payload: payload.to_vec(),
                    content_type: "application/x-protobuf".into(),
                    stage: "enrich".into(),
                    reason: "DECODE".into(),
                    field: String::new(),
                    description: format!(
                        "{}[{}]@{}: not a xoflow.v1.Event: {err}",
                        m.topic(),
                        m.partition(),
                        m.offset()
                    ),
                    at: Some(xoflow_proto::from_unix_millis(now)),
                    ..Default::default()
                }),
            }
        }
        let dead_bytes: Vec<Vec<u8>> = dead.iter().map(|d| d.encode_to_vec()).collect();

        let enriched: Vec<Outgoing<'_>> = outputs
            .iter()
            .map(|(id, bytes)| Outgoing {
                key: id.as_bytes(),
                payload: bytes,
                headers: None,
            })
            .collect();
        let dead_letters: Vec<Outgoing<'_>> = dead_bytes
            .iter()
            .map(|b| Outgoing {
                key: &[],
                payload: b,
                headers: None,
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Retrying re-sends already acknowledged outputs too; they carry
            // the same event ids, which the sink deduplicates.
            let (r1, r2) = tokio::join!(
                producer.send_all(&topics.enriched, &enriched),
                producer.send_all(&topics.dead_letters, &dead_letters),
            );
            match r1.and(r2) {
                Ok(()) => break,
                Err(e) if attempt < PRODUCE_ATTEMPTS && ErrorClass::of(&e.first).is_transient() => {
                    tracing::warn!(error = %e, attempt, "produce failed; retrying the batch");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => {
                    readiness.set(false);
                    return Err(EnrichError::Produce {
                        attempts: attempt,
                        source: e.first,
                    });
                }
            }
        }
        let offsets = next_offsets(batch.iter()).map_err(EnrichError::Commit)?;
        let mode = if stop.is_cancelled() {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = consumer.commit(&offsets, mode) {
            // A failed commit only means these records may be enriched again
            // after a restart; the sink deduplicates them.
            tracing::warn!(error = %e, "offset commit failed");
        }
        telemetry::BatchEnriched {
            records: outputs.len() as u64,
            dead_letters: dead.len() as u64,
        }
        .emit();
    }
    readiness.set(false);
    tracing::info!("enrich stopped");
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
