//! Kafka client helpers shared by the stages.
//!
//! Producers are idempotent with `acks=all`; consumers never auto-commit and
//! never auto-store offsets: a stage stores an offset only after the record's
//! effect is durable downstream. Topics are created up front because some
//! Kafka-protocol brokers (Tansu) do not auto-create them and silently drop
//! records sent to a missing topic.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::ClientContext,
    client::DefaultClientContext,
    consumer::{ConsumerContext, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, OwnedHeaders},
    producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer},
};
use serde::Deserialize;
use tokio::sync::Notify;

/// Broker connection and topic layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    /// The topics the pipeline uses.
    pub topics: Topics,
    /// Partitions for topics xoflow creates; bounds the parallelism of enrich
    /// and sink instances.
    pub partitions: i32,
    /// Replication factor for topics xoflow creates.
    pub replication_factor: i32,
    /// Producer compression codec (none, gzip, snappy, lz4, zstd).
    pub compression: String,
    /// How long the producer retries a record before reporting it failed; a
    /// request that waits on it is answered UNAVAILABLE after this.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Extra librdkafka properties (security.protocol, sasl.*, ...), applied
    /// last so operators can override anything.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Topic names. Versioned so that a v2 contract can run beside v1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Accepted live events from the collectors (protobuf `Event`).
    pub events: String,
    /// Accepted backfill events from bulk import, so history never delays
    /// live data.
    pub backfill: String,
    /// Enriched events (protobuf `EnrichedEvent`) for the sink.
    pub enriched: String,
    /// Refused records (protobuf `DeadLetter`) from every stage.
    pub dead_letters: String,
}

impl Topics {
    /// Appends `suffix` to every topic name: a run of its own (demo,
    /// benchmark) beside whatever else uses the broker.
    pub fn suffix(&mut self, suffix: &str) {
        for t in [
            &mut self.events,
            &mut self.backfill,
            &mut self.enriched,
            &mut self.dead_letters,
        ] {
            t.push_str(suffix);
        }
    }
}

impl KafkaConfig {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    fn with_options(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    /// An idempotent, `acks=all` producer that batches for throughput and
    /// acknowledges per batch ([`BatchProducer`]), waiting up to 5 ms for a
    /// batch to fill: right for stages that send whole consumed batches.
    pub fn batch_producer(&self) -> Result<BatchProducer, KafkaError> {
        self.batch_producer_lingering(Duration::from_millis(5))
    }

    /// [`Self::batch_producer`] with its own `linger.ms`: a caller waiting
    /// for the acknowledgement of a few records pays the linger on every
    /// request.
    pub fn batch_producer_lingering(&self, linger: Duration) -> Result<BatchProducer, KafkaError> {
        Ok(BatchProducer {
            inner: self
                .producer_config(linger)
                .create_with_context(AckContext)?,
        })
    }

    fn producer_config(&self, linger: Duration) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", (linger.as_secs_f64() * 1e3).to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            );
        self.with_options(c)
    }

    /// A consumer-group member that never commits or stores offsets on its
    /// own.
    pub fn consumer<C: ConsumerContext + 'static>(
        &self,
        group: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, KafkaError> {
        self.static_consumer(group, None, context)
    }

    /// A group client that never subscribes: for reading the group's
    /// committed offsets and the topics' watermarks.
    pub fn base_consumer(
        &self,
        group: &str,
    ) -> Result<
        rdkafka::consumer::BaseConsumer<rdkafka::consumer::DefaultConsumerContext>,
        KafkaError,
    > {
        let mut c = self.base();
        c.set("group.id", group).set("enable.auto.commit", "false");
        self.with_options(c).create()
    }

    /// [`KafkaConfig::consumer`], as a static member (`group.instance.id`)
    /// when `instance` is given: an instance restarted under the same id
    /// takes back its partitions at once, without waiting for the group to
    /// notice the old one died.
    pub fn static_consumer<C: ConsumerContext + 'static>(
        &self,
        group: &str,
        instance: Option<&str>,
        context: C,
    ) -> Result<StreamConsumer<C>, KafkaError> {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "50")
            // Prefetch bound: librdkafka's 64 MiB default per consumer let
            // resident memory climb for as long as a stage lagged; 16 MiB
            // is still ~50k events ahead of the stage.
            .set("queued.max.messages.kbytes", "16384")
            .set("partition.assignment.strategy", "range");
        if let Some(instance) = instance {
            c.set("group.instance.id", instance);
        }
        self.with_options(c).create_with_context(context)
    }

    /// Creates the named topics if they do not exist yet.
    pub async fn ensure_topics(&self, names: &[&str]) -> Result<(), KafkaError> {
        self.create_topics(names, &[]).await
    }

    /// Creates the named topics, compacted (the latest record per key is
    /// kept), if they do not exist yet: for tables kept as topics, such as
    /// changelogs.
    pub async fn ensure_compacted_topics(&self, names: &[&str]) -> Result<(), KafkaError> {
        self.create_topics(names, &[("cleanup.policy", "compact")])
            .await
    }

    async fn create_topics(
        &self,
        names: &[&str],
        configs: &[(&str, &str)],
    ) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.with_options(self.base()).create()?;
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                configs.iter().fold(
                    NewTopic::new(
                        n,
                        self.partitions,
                        TopicReplication::Fixed(self.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&topics, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    tracing::error!(topic = %name, error = %code, "cannot create topic");
                    return Err(KafkaError::AdminOp(code));
                }
            }
        }
        Ok(())
    }
}

/// One record to produce.
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
            let mut record = BaseRecord::with_opaque_to(topic, ack.clone())
                .key(rec.key)
                .payload(rec.payload);
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
        // Drop the sending guard; wait for the rest.
        ack.settle(None);
        while ack.remaining.load(Ordering::Acquire) > 0 {
            ack.done.notified().await;
        }
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

/// A bounded classification of Kafka errors, for metric tags and retry
/// decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The broker is unreachable or slow; retrying later may work.
    Unavailable,
    /// The local producer queue is full; wait for deliveries.
    QueueFull,
    /// The record can never be produced as is.
    TooLarge,
    /// The topic does not exist.
    UnknownTopic,
    /// Credentials or ACLs refuse the operation.
    Auth,
    /// Anything else.
    Other,
}

impl ErrorClass {
    pub fn of(e: &KafkaError) -> Self {
        let code = match e.rdkafka_error_code() {
            Some(c) => c,
            None => return ErrorClass::Other,
        };
        use RDKafkaErrorCode as C;
        match code {
            C::MessageTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::RequestTimedOut
            | C::NetworkException
            | C::OperationTimedOut
            | C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend => ErrorClass::Unavailable,
            C::QueueFull => ErrorClass::QueueFull,
            C::MessageSizeTooLarge | C::InvalidMessageSize => ErrorClass::TooLarge,
            C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => {
                ErrorClass::UnknownTopic
            }
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication => ErrorClass::Auth,
            _ => ErrorClass::Other,
        }
    }

    /// The bounded `error_code` tag.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::QueueFull => "queue_full",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::UnknownTopic => "unknown_topic",
            ErrorClass::Auth => "auth",
            ErrorClass::Other => "other",
        }
    }

    /// Whether retrying the same operation later can succeed.
    pub const fn is_transient(self) -> bool {
        matches!(self, ErrorClass::Unavailable | ErrorClass::QueueFull)
    }
}

/// Waits for the first message (or `stop`, or `idle` without one), then
/// gathers more until `max` messages or `max_wait` after the first. Messages
/// stay borrowed from the consumer: no copy per record.
///
/// Returns an empty batch once `stop` is cancelled or `idle` passed with no
/// message. Callers that need to wake up without input (timers) pass `idle`
/// rather than racing this future against a timer: dropped while filling,
/// it would drop the messages already taken from the consumer.
pub async fn recv_batch<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    max: usize,
    max_wait: Duration,
    idle: Option<Duration>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Vec<BorrowedMessage<'c>>, KafkaError> {
    // `recv` itself is cancel-safe: a message is only taken when returned.
    let first = tokio::select! {
        biased;
        _ = stop.cancelled() => return Ok(Vec::new()),
        _ = tokio::time::sleep(idle.unwrap_or(Duration::MAX)), if idle.is_some() => {
            return Ok(Vec::new());
        }
        m = consumer.recv() => m?,
    };
    let mut batch = Vec::with_capacity(max.min(1024));
    batch.push(first);
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => batch.push(m),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kafka consumer error while filling a batch");
                break;
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}

/// The offsets to commit after `batch` is fully handled: for each partition
/// the highest offset seen plus one. Callers handle a batch as a whole, so
/// there is never a gap below the committed offset.
pub fn next_offsets<'a, M: Message + 'a>(
    batch: impl IntoIterator<Item = &'a M>,
) -> Result<TopicPartitionList, KafkaError> {
    let mut highest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = highest
            .entry((m.topic(), m.partition()))
            .or_insert(m.offset());
        *e = (*e).max(m.offset());
    }
    let mut tpl = TopicPartitionList::with_capacity(highest.len());
    for ((topic, partition), offset) in highest {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_fold_into_bounded_classes() {
        let table = [
            (
                RDKafkaErrorCode::MessageTimedOut,
                ErrorClass::Unavailable,
                true,
            ),
            (
                RDKafkaErrorCode::AllBrokersDown,
                ErrorClass::Unavailable,
                true,
            ),
            (RDKafkaErrorCode::QueueFull, ErrorClass::QueueFull, true),
            (
                RDKafkaErrorCode::MessageSizeTooLarge,
                ErrorClass::TooLarge,
                false,
            ),
            (
                RDKafkaErrorCode::UnknownTopicOrPartition,
                ErrorClass::UnknownTopic,
                false,
            ),
            (
                RDKafkaErrorCode::TopicAuthorizationFailed,
                ErrorClass::Auth,
                false,
            ),
            (RDKafkaErrorCode::InvalidConfig, ErrorClass::Other, false),
        ];
        for (code, class, transient) in table {
            let e = KafkaError::MessageProduction(code);
            assert_eq!(ErrorClass::of(&e), class, "{code:?}");
            assert_eq!(ErrorClass::of(&e).is_transient(), transient, "{code:?}");
        }
        assert_eq!(ErrorClass::of(&KafkaError::Canceled), ErrorClass::Other);
    }
}
