//! Kafka client helpers shared by the stages.
//!
//! Producers use `acks=all` and are idempotent (a partition's records land
//! once each, in the order sent, whatever is retried) unless their readers
//! order and deduplicate on their own ([`KafkaConfig::unordered_producer`]);
//! consumers never auto-commit and never auto-store offsets: a stage stores
//! an offset only after the record's effect is durable downstream. Topics are created up front because some
//! Kafka-protocol brokers (Tansu, nisshi) do not auto-create them and silently drop
//! records sent to a missing topic.
//!
//! This module holds the settings ([`KafkaConfig`], [`Topics`]), the clients
//! built from them and topic creation; `producer` the [`BatchProducer`],
//! `batch` how a consumed batch is gathered and committed ([`recv_batch`],
//! [`next_offsets`]), `error` the bounded [`ErrorClass`], [`probe`] the
//! broker reachability probe behind readiness, [`watch`] the consuming
//! stages' stall watchdog, [`close`] how group clients are closed without
//! holding up a shutdown during an outage.

pub(crate) mod batch;
pub mod close;
mod error;
pub mod probe;
mod producer;
pub mod watch;

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    consumer::{ConsumerContext, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{Readiness, Reason},
    retry::RetryPolicy,
};

pub use batch::{next_offsets, recv_batch};
pub use error::ErrorClass;
pub use producer::{BatchError, BatchProducer, Outgoing, Queued, Target};

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
    /// Alerts raised by enrich for the alert stage (protobuf `Alert`).
    pub alerts: String,
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
            &mut self.alerts,
        ] {
            t.push_str(suffix);
        }
    }
}

impl KafkaConfig {
    /// Settings for `brokers` with the rest at their simplest: one
    /// partition, no replication, no compression, a 1 s message timeout and
    /// topics named `e`, `b`, `en`, `d`, `a`. For tests and tools that override
    /// what they care about.
    pub fn with_brokers(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topics: Topics {
                events: "e".into(),
                backfill: "b".into(),
                enriched: "en".into(),
                dead_letters: "d".into(),
                alerts: "a".into(),
            },
            partitions: 1,
            replication_factor: 1,
            compression: "none".into(),
            message_timeout: Duration::from_secs(1),
            options: Default::default(),
        }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// An admin client of the configured brokers (topics, records).
    pub fn admin_client(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.with_options(self.base()).create()
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
        BatchProducer::new(&self.producer_config(linger, true))
    }

    /// An `acks=all` producer that is not idempotent: a retried request may
    /// land twice, or behind a later request to the same partition. Only for
    /// topics whose readers put records in order and drop copies themselves
    /// (the collectors' events: the join orders each customer's events by
    /// event time and recognises an event it has folded; the sink stores
    /// each event id and revision once).
    ///
    /// Why it exists: librdkafka 2.12's idempotent producer sends a
    /// partition's next request only once fewer than five of its records
    /// are in flight, and meanwhile polls without sleeping when the next
    /// batch is ready (confluentinc/librdkafka#4989). Under many concurrent
    /// callers, as at the collectors, its thread then spins on a core for as
    /// long as the load lasts (BENCHMARKS.md, "A: where the stall comes
    /// from"). Stages that wait for each batch before the next never have a
    /// batch ready behind one in flight, so they keep the ordered producer.
    /// At most five requests are in flight per connection, as an idempotent
    /// producer would send: deeper pipelining stalled the local broker.
    pub fn unordered_producer(&self, linger: Duration) -> Result<BatchProducer, KafkaError> {
        BatchProducer::new(&self.producer_config(linger, false))
    }

    fn producer_config(&self, linger: Duration, ordered: bool) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", if ordered { "true" } else { "false" })
            .set("max.in.flight.requests.per.connection", "5")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", (linger.as_secs_f64() * 1e3).to_string())
            .set("batch.num.messages", "10000")
            // Every producer (the collectors', enrich's) hashes a key to the
            // same partition number: the join reads an event keyed by its
            // customer id from the events topic with the state of that
            // customer's repartition partition of the same number. Spelt out
            // (librdkafka's default today) so that no default of another
            // version or client drifts one topic from the other; an override
            // in `options` must be the same for every stage.
            .set("partitioner", "consistent_random")
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

    /// A client outside any group: for metadata and watermarks (librdkafka
    /// assigns partitions only in a group). With no group to leave, it is
    /// dropped at once even while the broker is away ([`close`]).
    pub fn reader(
        &self,
    ) -> Result<
        rdkafka::consumer::BaseConsumer<rdkafka::consumer::DefaultConsumerContext>,
        KafkaError,
    > {
        self.with_options(self.base()).create()
    }

    /// A group client that never subscribes: for reading the group's
    /// committed offsets and the topics' watermarks, or committing the
    /// group's offsets. Wrap it in [`close::Closing`]: the broker may be
    /// away when it is dropped.
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
        // librdkafka's warnings are produced even when the log filter hides
        // them (rdkafka takes the level from the `log` crate's): a refused
        // asynchronous commit is known only by its `COMMITFAIL` warning,
        // which the stages' consumer context counts
        // (`crate::rebalance::RebalanceLog`).
        if matches!(
            c.log_level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        ) {
            c.set_log_level(RDKafkaLogLevel::Warning);
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

    /// Creates `plain` and `compacted` topics like [`Self::ensure_topics`]
    /// and [`Self::ensure_compacted_topics`], waiting out a broker that is
    /// not there (yet): a stage started during a broker outage holds
    /// [`Reason::KafkaUnreachable`] and retries with backoff instead of
    /// exiting. Only a permanent error (refused credentials, a bad setting)
    /// ends the wait with `Err`; `Ok(false)` means `stop` came first.
    pub async fn await_topics(
        &self,
        plain: &[&str],
        compacted: &[&str],
        readiness: &Readiness,
        stop: &CancellationToken,
    ) -> Result<bool, KafkaError> {
        let policy = RetryPolicy::exponential(Duration::from_millis(500), Duration::from_secs(10));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let created = async {
                if !plain.is_empty() {
                    self.ensure_topics(plain).await?;
                }
                if !compacted.is_empty() {
                    self.ensure_compacted_topics(compacted).await?;
                }
                Ok::<(), KafkaError>(())
            };
            let e = tokio::select! {
                r = created => match r {
                    Ok(()) => {
                        readiness.clear(Reason::KafkaUnreachable);
                        return Ok(true);
                    }
                    Err(e) => e,
                },
                () = stop.cancelled() => return Ok(false),
            };
            if !ErrorClass::of(&e).is_transient() {
                return Err(e);
            }
            tracing::warn!(error = %e, attempt, "cannot create topics yet; the broker is retried");
            readiness.fail(
                Reason::KafkaUnreachable,
                format_args!("creating topics: {e}"),
            );
            if !policy.sleep(attempt, stop).await {
                return Ok(false);
            }
        }
    }

    /// Deletes every topic whose name contains `part`, and returns their
    /// names: for tools that make topics of their own per run (the
    /// benchmark, whose millions of records would otherwise stay in a
    /// broker that keeps them in memory), never for the stages' topics.
    pub async fn delete_topics_containing(&self, part: &str) -> Result<Vec<String>, KafkaError> {
        let admin = self.admin_client()?;
        let names: Vec<String> = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))?
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| n.contains(part))
            .collect();
        if names.is_empty() {
            return Ok(names);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        for result in admin.delete_topics(&refs, &admin_options()).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    tracing::warn!(topic = %name, error = %code, "cannot delete topic");
                }
            }
        }
        Ok(names)
    }

    async fn create_topics(
        &self,
        names: &[&str],
        configs: &[(&str, &str)],
    ) -> Result<(), KafkaError> {
        let admin = self.admin_client()?;
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
        for result in admin.create_topics(&topics, &admin_options()).await? {
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

/// How long a topic creation or deletion may take on the broker.
fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::Health;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topic_creation_waits_for_a_broker_that_is_not_there() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let kafka = KafkaConfig::with_brokers(format!("127.0.0.1:{closed}"));
        let health = Health::new();
        let readiness = health.register("enrich");
        let stop = CancellationToken::new();
        let task = {
            let (readiness, stop) = (readiness.clone(), stop.clone());
            tokio::spawn(async move { kafka.await_topics(&["e"], &["c"], &readiness, &stop).await })
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while !readiness.holds(Reason::KafkaUnreachable) {
            assert!(tokio::time::Instant::now() < until, "{:?}", health.check());
            assert!(!task.is_finished(), "gave up: {:?}", health.check());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        let created = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("stop ends the wait")
            .expect("task")
            .expect("no permanent error");
        assert!(!created, "stopped, not created");
    }
}
