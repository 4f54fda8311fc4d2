//! [`Deliver`] to Kafka: the durable hand-off of accepted events and dead
//! letters.
//!
//! A batch is produced in one go and awaited as a whole: the caller learns
//! that every record is acknowledged, or that the batch is not, never
//! something in between. In-flight events are bounded before delivery, at
//! the door ([`crate::core::admission`]), so a slow broker turns into
//! RESOURCE_EXHAUSTED for new callers rather than memory growth or queues.

use std::sync::Arc;

use xoflow_common::kafka::{BatchProducer, ErrorClass, KafkaConfig, Outgoing};
use xoflow_proto::{Message, v1::DeadLetter};

use super::{Deliver, DeliverFuture, EncodedBatch, Lane};
use crate::{IngestError, telemetry};

/// The collectors' Kafka side.
#[derive(Clone)]
pub struct KafkaDelivery {
    /// The producer ([`KafkaConfig::unordered_producer`]: the join orders
    /// events by their time and the sink drops copies, so a retried request
    /// landing late or twice changes nothing), replaced after the broker
    /// stopped acknowledging so that nothing of the outage's connections
    /// outlives it. A lock per batch, never per event.
    producer: Arc<std::sync::Mutex<(Arc<BatchProducer>, std::time::Instant)>>,
    kafka: Arc<KafkaConfig>,
    events_topic: Arc<str>,
    backfill_topic: Arc<str>,
    dead_letter_topic: Arc<str>,
    linger: std::time::Duration,
}

impl std::fmt::Debug for KafkaDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDelivery")
            .field("events_topic", &self.events_topic)
            .finish_non_exhaustive()
    }
}

impl KafkaDelivery {
    pub fn new(
        kafka: &KafkaConfig,
        linger: std::time::Duration,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            producer: Arc::new(std::sync::Mutex::new((
                Arc::new(
                    kafka
                        .unordered_producer(linger)?
                        .reporting_queue(crate::telemetry::Metric::ProducerQueue.name()),
                ),
                std::time::Instant::now(),
            ))),
            kafka: Arc::new(kafka.clone()),
            events_topic: kafka.topics.events.as_str().into(),
            backfill_topic: kafka.topics.backfill.as_str().into(),
            dead_letter_topic: kafka.topics.dead_letters.as_str().into(),
            linger,
        })
    }

    /// Produces the batch and returns once Kafka acknowledged every record.
    async fn produce(&self, batch: &EncodedBatch, lane: Lane) -> Result<(), IngestError> {
        if batch.is_empty() {
            return Ok(());
        }
        let topic = match lane {
            Lane::Live => &*self.events_topic,
            Lane::Backfill => &*self.backfill_topic,
        };
        let records: Vec<Outgoing<'_>> = batch
            .iter()
            .map(|(key, payload)| Outgoing::keyed(key, payload))
            .collect();
        let result = self.current().send_all(topic, &records).await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let class = ErrorClass::of(&e.first);
                telemetry::KafkaDeliveryFailed {
                    error_code: class.as_str(),
                    failed: e.failed as u64,
                    error: &e.to_string(),
                }
                .emit();
                if class == ErrorClass::Unavailable {
                    self.renew_producer();
                }
                if class.is_transient() || class == ErrorClass::Other {
                    Err(IngestError::Unavailable {
                        class: class.as_str(),
                    })
                } else {
                    Err(IngestError::Internal(format!(
                        "kafka refused the batch: {e}"
                    )))
                }
            }
        }
    }

    /// The producer in use; batches in flight keep theirs alive.
    fn current(&self) -> Arc<BatchProducer> {
        match self.producer.lock() {
            Ok(p) => p.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Replaces the producer, at most once per message timeout, so a
    /// stalled one does not outlive the outage.
    fn renew_producer(&self) {
        let Ok(mut p) = self.producer.lock() else {
            return;
        };
        if p.1.elapsed() < self.kafka.message_timeout {
            return;
        }
        match self.kafka.unordered_producer(self.linger) {
            Ok(fresh) => {
                let fresh = fresh.reporting_queue(crate::telemetry::Metric::ProducerQueue.name());
                *p = (Arc::new(fresh), std::time::Instant::now());
                tracing::info!("kafka producer renewed after delivery timeouts");
            }
            Err(e) => xoflow_common::telemetry::ErrorKind::Produce.emit(
                crate::telemetry::Metric::Errors.name(),
                &e,
                "cannot renew the kafka producer",
            ),
        }
    }

    /// Writes dead letters. Failures are logged and counted: the caller has
    /// already been told why each record was refused.
    async fn produce_dead_letters(&self, letters: &[DeadLetter]) {
        if letters.is_empty() {
            return;
        }
        let encoded: Vec<(Vec<u8>, &[u8])> = letters
            .iter()
            .map(|d| (d.encode_to_vec(), d.tenant.as_bytes()))
            .collect();
        let records: Vec<Outgoing<'_>> = encoded
            .iter()
            .map(|(bytes, key)| Outgoing::keyed(key, bytes))
            .collect();
        if let Err(e) = self
            .current()
            .send_all(&self.dead_letter_topic, &records)
            .await
        {
            telemetry::DeadLetterFailed {
                failed: e.failed as u64,
                error: &e.to_string(),
            }
            .emit();
        }
    }
}

impl Deliver for KafkaDelivery {
    fn deliver<'a>(
        &'a self,
        batch: &'a EncodedBatch,
        lane: Lane,
    ) -> DeliverFuture<'a, Result<(), IngestError>> {
        Box::pin(self.produce(batch, lane))
    }

    fn dead_letters<'a>(&'a self, letters: &'a [DeadLetter]) -> DeliverFuture<'a, ()> {
        Box::pin(self.produce_dead_letters(letters))
    }
}
