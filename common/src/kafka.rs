//! Kafka client helpers shared by the stages.
//!
//! Producers are idempotent with `acks=all`; consumers never auto-commit and
//! never auto-store offsets: a stage stores an offset only after the record's
//! effect is durable downstream. Topics are created up front because some
//! Kafka-protocol brokers (Tansu) do not auto-create them and silently drop
//! records sent to a missing topic.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{ConsumerContext, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
};
use serde::Deserialize;

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

    /// An idempotent, `acks=all` producer that batches for throughput.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            );
        self.with_options(c).create()
    }

    /// A consumer-group member that never commits or stores offsets on its
    /// own.
    pub fn consumer<C: ConsumerContext + 'static>(
        &self,
        group: &str,
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
            .set("partition.assignment.strategy", "range");
        self.with_options(c).create_with_context(context)
    }

    /// Creates the named topics if they do not exist yet.
    pub async fn ensure_topics(&self, names: &[&str]) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.with_options(self.base()).create()?;
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                NewTopic::new(
                    n,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
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

/// Produces `records` to `topic` and waits for every delivery report.
///
/// Returns one result per record, in order. A full local queue is
/// backpressure: the call waits for the oldest outstanding delivery and
/// retries, it does not fail.
pub async fn produce_all<'a>(
    producer: &FutureProducer,
    topic: &str,
    records: Vec<Outgoing<'a>>,
) -> Vec<Result<(i32, i64), KafkaError>> {
    // Taking a Vec (not an iterator) keeps closures out of the future, which
    // would otherwise make callers' futures not `Send` (rust#64552).
    let mut slots: Vec<Slot> = Vec::with_capacity(records.len());
    // Slots before this index are all `Done`.
    let mut settled = 0usize;
    for rec in records {
        let mut fr = FutureRecord::to(topic).key(rec.key).payload(rec.payload);
        if let Some(h) = rec.headers {
            fr = fr.headers(h);
        }
        loop {
            match producer.send_result(fr) {
                Ok(fut) => {
                    slots.push(Slot::Pending(fut));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    fr = back;
                    if !settle_oldest(&mut slots, &mut settled).await {
                        // Nothing of ours is in flight: others fill the queue.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                Err((e, _)) => {
                    slots.push(Slot::Done(Err(e)));
                    break;
                }
            }
        }
    }
    while settle_oldest(&mut slots, &mut settled).await {}
    slots
        .into_iter()
        .map(|s| match s {
            Slot::Done(r) => r,
            Slot::Pending(_) => Err(KafkaError::Canceled),
        })
        .collect()
}

enum Slot {
    Pending(DeliveryFuture),
    Done(Result<(i32, i64), KafkaError>),
}

/// Awaits the oldest pending delivery; false when none is pending.
async fn settle_oldest(slots: &mut [Slot], settled: &mut usize) -> bool {
    while *settled < slots.len() {
        let i = *settled;
        *settled += 1;
        if let Slot::Pending(fut) = &mut slots[i] {
            let r = match fut.await {
                Ok(Ok(d)) => Ok((d.partition, d.offset)),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            };
            slots[i] = Slot::Done(r);
            return true;
        }
    }
    false
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

/// Waits for the first message (or `stop`), then gathers more until `max`
/// messages or `max_wait` after the first. Messages stay borrowed from the
/// consumer: no copy per record.
///
/// Returns an empty batch once `stop` is cancelled.
pub async fn recv_batch<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    max: usize,
    max_wait: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Vec<BorrowedMessage<'c>>, KafkaError> {
    let first = tokio::select! {
        biased;
        _ = stop.cancelled() => return Ok(Vec::new()),
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
