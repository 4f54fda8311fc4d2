//! The batch producer: records of a whole consumed batch sent at once and
//! acknowledged together.
//!
//! In: [`Outgoing`] records for one topic (or one partition of it), or for
//! several at once ([`BatchProducer::send_together`]). Out: `Ok` once every
//! record is acknowledged, or a [`BatchError`] carrying the first
//! failure for the caller to classify; a full local queue is backpressure,
//! never an error. A caller with other work meanwhile queues first and
//! awaits the acknowledgements later ([`BatchProducer::queue_together`],
//! [`BatchProducer::settled`]).

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

/// Where [`BatchProducer::send_together`] sends records: a topic, the
/// partition if chosen (else the record's key decides), the records.
pub type Target<'a> = (&'a str, Option<i32>, &'a [Outgoing<'a>]);

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

/// Records queued by [`BatchProducer::queue_together`] whose
/// acknowledgements are still to come; [`BatchProducer::settled`] awaits
/// them.
#[derive(Debug)]
pub struct Queued {
    ack: Arc<BatchAck>,
    total: usize,
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

    /// Sends several topics' (or partitions') records as one batch: all
    /// queued first, then one wait until every one is settled. For records
    /// that need no order among themselves (a changelog's partitions, say):
    /// one round trip to the broker instead of one per target.
    pub async fn send_together(&self, targets: &[Target<'_>]) -> Result<(), BatchError> {
        let queued = self.queue_together(targets).await;
        self.settled(queued).await
    }

    /// The first half of [`BatchProducer::send_together`]: every record
    /// queued (librdkafka holds its own copy, so the caller's buffers are
    /// free once this returns), their acknowledgements still to come. A
    /// caller awaits them with [`BatchProducer::settled`], meanwhile doing
    /// other work: a loop reading its next batch while the last one's
    /// outputs are in flight.
    pub async fn queue_together(&self, targets: &[Target<'_>]) -> Queued {
        let ack = BatchAck::new();
        for (topic, partition, records) in targets {
            self.queue(&ack, topic, *partition, records).await;
        }
        let total = targets.iter().map(|(_, _, r)| r.len()).sum();
        self.report_queue();
        // Drop the sending guard: the last delivery now ends the wait.
        ack.settle(None);
        Queued { ack, total }
    }

    /// Waits until every record of `queued` is settled: Ok when every one
    /// was acknowledged.
    pub async fn settled(&self, queued: Queued) -> Result<(), BatchError> {
        let Queued { ack, total } = queued;
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
            total,
            first,
        })
    }

    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[Outgoing<'_>],
    ) -> Result<(), BatchError> {
        self.send_together(&[(topic, partition, records)]).await
    }

    /// Queues `records`, each carrying `ack`; waits (never fails) while the
    /// local queue is full.
    async fn queue(
        &self,
        ack: &Arc<BatchAck>,
        topic: &str,
        partition: Option<i32>,
        records: &[Outgoing<'_>],
    ) {
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
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::{
        Message, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
        mocking::MockCluster,
        types::{RDKafkaApiKey, RDKafkaRespErr},
    };

    use super::Outgoing;
    use crate::kafka::KafkaConfig;

    /// A consumer assigned `partitions` of the mock cluster from their
    /// beginning.
    fn reader(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        partitions: &[(&str, i32)],
    ) -> BaseConsumer {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "reader")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition_offset(topic, *partition, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        consumer
    }

    /// The compacted topics (the join's changelog, the identity links) take
    /// a key's last record as its state, so a retried request must never
    /// land behind a later one of the same partition: every record once,
    /// in the order sent, a retried one at most repeated where it stood.
    /// Requests here are small (20 records) and many are queued at once;
    /// every third answer of the in-process mock broker is a retriable
    /// error, and every fiftieth closes the connection with requests in
    /// flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retried_requests_keep_the_partition_order() {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t", 1, 1).expect("topic");
        let errors: Vec<RDKafkaRespErr> = (0..400)
            .map(|i| match i {
                i if i % 50 == 25 => RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
                i if i % 3 == 0 => RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                _ => RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
            })
            .collect();
        mock.request_errors(RDKafkaApiKey::Produce, &errors);

        let mut cfg = KafkaConfig::with_brokers(mock.bootstrap_servers());
        cfg.message_timeout = Duration::from_secs(60);
        for (k, v) in [
            ("batch.num.messages", "20"),
            ("retry.backoff.ms", "1"),
            ("reconnect.backoff.ms", "1"),
            ("reconnect.backoff.max.ms", "10"),
        ] {
            cfg.options.insert(k.into(), v.into());
        }
        let producer = cfg
            .batch_producer_lingering(Duration::from_millis(1))
            .expect("producer");

        const BATCHES: usize = 100;
        const PER_BATCH: usize = 50;
        let payloads: Vec<Vec<Vec<u8>>> = (0..BATCHES)
            .map(|b| {
                (0..PER_BATCH)
                    .map(|i| ((b * PER_BATCH + i) as u32).to_be_bytes().to_vec())
                    .collect()
            })
            .collect();
        let batches: Vec<Vec<Outgoing<'_>>> = payloads
            .iter()
            .map(|b| b.iter().map(|p| Outgoing::keyed(b"k", p)).collect())
            .collect();
        // Polled in order, each send queues its whole batch before it first
        // waits: the queue's order is the records' numbering.
        let sends = batches.iter().map(|b| producer.send_all("t", b));
        for result in futures::future::join_all(sends).await {
            result.expect("every batch acknowledged after its retries");
        }

        let consumer = reader(&mock, &[("t", 0)]);
        let total = BATCHES * PER_BATCH;
        let mut log = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let p = m.payload().expect("payload");
                    log.push(u32::from_be_bytes(p.try_into().expect("4 bytes")));
                }
                Some(Err(e)) => panic!("consume: {e}"),
                None if log.last() == Some(&(total as u32 - 1)) => break,
                None => {}
            }
        }
        if let Some(w) = log.windows(2).find(|w| w[1] < w[0]) {
            panic!("record {} landed after record {}", w[1], w[0]);
        }
        let mut distinct = log.clone();
        distinct.dedup();
        assert_eq!(distinct, (0..total as u32).collect::<Vec<_>>());
    }

    /// Every record of every target lands where it was sent, once; a
    /// failure counts the records of all targets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_sent_together_land_in_each_target() {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("a", 2, 1).expect("topic a");
        mock.create_topic("b", 1, 1).expect("topic b");
        // Not `with_brokers`' 1 s: the idempotent producer's first
        // connection and producer id come before any record is sent, and
        // on two cores busy with the rest of the suite that took longer,
        // failing every record with `MessageTimedOut`.
        let cfg = KafkaConfig {
            message_timeout: Duration::from_secs(30),
            ..KafkaConfig::with_brokers(mock.bootstrap_servers())
        };
        let producer = cfg.batch_producer().expect("producer");
        let payloads: Vec<Vec<u8>> = (0..30u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let records: Vec<Outgoing<'_>> =
            payloads.iter().map(|p| Outgoing::keyed(b"k", p)).collect();
        producer
            .send_together(&[
                ("a", Some(0), &records[..10]),
                ("a", Some(1), &records[10..20]),
                ("b", None, &records[20..]),
            ])
            .await
            .expect("every record acknowledged");

        let consumer = reader(&mock, &[("a", 0), ("a", 1), ("b", 0)]);
        let mut landed: Vec<(String, i32, u32)> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while landed.len() < payloads.len() && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let p = m.payload().expect("payload");
                    let n = u32::from_be_bytes(p.try_into().expect("4 bytes"));
                    landed.push((m.topic().to_owned(), m.partition(), n));
                }
                Some(Err(e)) => panic!("consume: {e}"),
                None => {}
            }
        }
        landed.sort_by_key(|(_, _, n)| *n);
        let expected: Vec<(String, i32, u32)> = (0..30u32)
            .map(|n| match n {
                0..10 => ("a".to_owned(), 0, n),
                10..20 => ("a".to_owned(), 1, n),
                _ => ("b".to_owned(), 0, n),
            })
            .collect();
        assert_eq!(landed, expected);

        // No broker: every record of every target fails, and is counted.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let cfg = KafkaConfig {
            message_timeout: Duration::from_millis(200),
            ..KafkaConfig::with_brokers(format!("127.0.0.1:{closed}"))
        };
        let producer = cfg.batch_producer().expect("producer");
        let e = producer
            .send_together(&[("a", None, &records[..10]), ("b", None, &records[10..])])
            .await
            .expect_err("nothing acknowledged without a broker");
        assert_eq!((e.failed, e.total), (30, 30));
    }
}
