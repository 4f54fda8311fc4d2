//! The batch producer: records of a whole consumed batch sent at once and
//! acknowledged together.
//!
//! In: [`Outgoing`] records for one topic (or one partition of it). Out: `Ok`
//! once every record is acknowledged, or a [`BatchError`] carrying the first
//! failure for the caller to classify; a full local queue is backpressure,
//! never an error.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    client::ClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer},
};
use tokio::sync::Notify;

/// One record to produce. An empty `payload` without `headers` is sent as
/// a tombstone (a record without a value).
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub headers: Option<OwnedHeaders>,
}

impl<'a> Outgoing<'a> {
    /// A record without headers.
    pub fn keyed(key: &'a [u8], payload: &'a [u8]) -> Self {
        Outgoing {
            key,
            payload,
            headers: None,
        }
    }
}

/// A producer whose deliveries are acknowledged per batch, not per record.
///
/// `FutureProducer` allocates a oneshot channel and wakes a task for every
/// record. Here every record of a batch carries a clone of one `Arc` as its
/// delivery opaque; librdkafka's delivery callback (on the producer's own
/// polling thread) counts it down, and the waiting task is woken once, when
/// the last record of the batch is settled.
pub struct BatchProducer {
    inner: ThreadedProducer<AckContext>,
    /// The stage's producer-queue gauge, set from librdkafka's queue length
    /// whenever a batch was queued and when it is settled.
    queue: Option<metrics::Gauge>,
}

impl std::fmt::Debug for BatchProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchProducer").finish_non_exhaustive()
    }
}

/// Delivery bookkeeping of one batch.
#[derive(Debug)]
struct BatchAck {
    /// Records not settled yet, plus one while records are still being sent.
    remaining: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl BatchAck {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(1),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            done: Notify::new(),
        })
    }

    fn settle(&self, error: Option<&KafkaError>) {
        if let Some(e) = error {
            self.failed.fetch_add(1, Ordering::AcqRel);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| e.clone());
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// The context that routes delivery reports to their batch.
#[derive(Debug, Default)]
struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<BatchAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<BatchAck>) {
        ack.settle(result.as_ref().err().map(|(e, _)| e));
    }
}

/// Some records of a batch were not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} records not acknowledged: {first}")]
pub struct BatchError {
    pub failed: usize,
    pub total: usize,
    /// The first failure reported, for classification.
    pub first: KafkaError,
}

impl BatchProducer {
    /// A producer with these settings (see
    /// [`KafkaConfig::batch_producer`](super::KafkaConfig::batch_producer)).
    pub(super) fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        Ok(BatchProducer {
            inner: config.create_with_context(AckContext)?,
            queue: None,
        })
    }

    /// Reports the local queue's depth (records and requests not yet
    /// answered by the broker) in the stage's gauge `metric`.
    pub fn reporting_queue(mut self, metric: &'static str) -> Self {
        self.queue = Some(metrics::gauge!(metric));
        self
    }

    /// Records and requests in the local queue now.
    pub fn queued(&self) -> i32 {
        use rdkafka::producer::Producer;
        self.inner.in_flight_count()
    }

    fn report_queue(&self) {
        if let Some(g) = &self.queue {
            g.set(f64::from(self.queued()));
        }
    }

    /// Sends every record to `topic` and returns once all are settled: Ok
    /// when every one was acknowledged. A full local queue is backpressure:
    /// sending pauses until the queue drains, it does not fail.
    pub async fn send_all(&self, topic: &str, records: &[Outgoing<'_>]) -> Result<(), BatchError> {
        self.send(topic, None, records).await
    }

    /// [`BatchProducer::send_all`] to one chosen partition (for changelogs,
    /// whose partitions mirror their input's).
    pub async fn send_all_to_partition(
        &self,
        topic: &str,
        partition: i32,
        records: &[Outgoing<'_>],
    ) -> Result<(), BatchError> {
        self.send(topic, Some(partition), records).await
    }

    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[Outgoing<'_>],
    ) -> Result<(), BatchError> {
        let ack = BatchAck::new();
        for rec in records {
            let mut record = BaseRecord::with_opaque_to(topic, ack.clone()).key(rec.key);
            // An empty value without headers is a deletion in a compacted
            // topic (the changelog, the links): written as a tombstone (no
            // value at all), so that compaction removes the key too, not
            // only its earlier values (an erased customer's id is a key).
            if !rec.payload.is_empty() || rec.headers.is_some() {
                record = record.payload(rec.payload);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            if let Some(h) = &rec.headers {
                record = record.headers(h.clone());
            }
            ack.remaining.fetch_add(1, Ordering::AcqRel);
            loop {
                match self.inner.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, back)) => {
                        // The record never entered the queue: settle it here.
                        drop(back);
                        ack.settle(Some(&e));
                        break;
                    }
                }
            }
        }
        self.report_queue();
        // Drop the sending guard; wait for the rest.
        ack.settle(None);
        while ack.remaining.load(Ordering::Acquire) > 0 {
            ack.done.notified().await;
        }
        self.report_queue();
        let failed = ack.failed.load(Ordering::Acquire);
        if failed == 0 {
            return Ok(());
        }
        let first = ack
            .first_error
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or(KafkaError::Canceled);
        Err(BatchError {
            failed,
            total: records.len(),
            first,
        })
    }
}
