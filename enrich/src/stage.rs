//! The enrich stage: two consumer-group loops in one process.
//!
//! ```text
//! events, backfill ──► resolve ──► repartition topic (key = customer) ──► join ──► enriched (key = event id)
//!                       │  ▲                                              │  ▲
//!                       ▼  │ read whole at start-up, then followed        ▼  │ read back when a partition is assigned
//!                     links topic (global table)                     changelog topic (partition = join partition)
//! ```
//!
//! Resolve (group `<group_id>.resolve`): decodes each event, learns links
//! from events that carry a customer id and weak identifiers, resolves the
//! rest through the link table, and forwards the original bytes keyed by
//! customer id, so that every event of a customer reaches the same join
//! partition (unresolved events are keyed `\0<event id>`). Links it learns
//! go to the links topic, which every instance reads whole at start-up and
//! then follows: a global table.
//!
//! Join (group `<group_id>`): one [`Join`] per assigned partition, so a
//! customer's state lives with its partition. The rebalance callbacks only
//! record assignments (they run inside `recv()`); between batches a revoked
//! partition's state is dropped and an assigned one is restored from its
//! changelog partition (the latest record per customer wins).
//!
//! Per batch, in both loops: outputs (and, in join, the changed customers'
//! state to the changelog) are produced and acknowledged, then input
//! offsets are committed — in join, only below the lowest event still held
//! by the lateness buffer. A crash replays uncommitted input: outputs are
//! emitted again with the same event ids (the sink drops the copies), and
//! state restored from the changelog remembers which events it already
//! applied. Internal topics are named after the group: `<group_id>.links`,
//! `<group_id>.repartition`, `<group_id>.changelog`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    message::{BorrowedMessage, Message},
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::Readiness,
    kafka::{BatchProducer, ErrorClass, KafkaConfig, Outgoing, next_offsets, recv_batch},
};
use xoflow_proto::{
    Message as _,
    v1::{DeadLetter, Event, EventIdentityView, IdentityResolution, JoinCustomerState},
};

use crate::{
    EnrichConfig,
    identity::{Links, Resolved},
    join::{Join, Released},
    telemetry,
};

/// Why the enrich stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("kafka client set-up failed: {0}")]
    Setup(#[source] KafkaError),
    #[error("records were not acknowledged after {attempts} attempts: {source}")]
    Produce {
        attempts: u32,
        #[source]
        source: KafkaError,
    },
    #[error("committing offsets failed: {0}")]
    Commit(#[source] KafkaError),
    #[error("reading {topic} back failed: {source}")]
    Restore {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

impl EnrichError {
    pub fn is_transient(&self) -> bool {
        match self {
            EnrichError::Setup(_) => false,
            EnrichError::Produce { source, .. }
            | EnrichError::Commit(source)
            | EnrichError::Restore { source, .. } => ErrorClass::of(source).is_transient(),
        }
    }
}

const PRODUCE_ATTEMPTS: u32 = 5;
/// How long reading a topic back may wait for each fetch.
const READ_BACK_POLL: Duration = Duration::from_secs(10);
/// How long a read-back waits for more once past the high watermark.
const READ_BACK_QUIET: Duration = Duration::from_millis(300);
/// Key prefix of events no customer was found for.
const UNRESOLVED: u8 = 0;

/// The stage's internal topics, named after its consumer group.
#[derive(Debug, Clone)]
pub struct InternalTopics {
    pub links: String,
    pub repartition: String,
    pub changelog: String,
}

impl InternalTopics {
    pub fn of(group_id: &str) -> Self {
        InternalTopics {
            links: format!("{group_id}.links"),
            repartition: format!("{group_id}.repartition"),
            changelog: format!("{group_id}.changelog"),
        }
    }
}

/// Runs the enrich stage until `stop` is cancelled.
pub async fn run(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), EnrichError> {
    let t = &kafka.topics;
    let internal = InternalTopics::of(&cfg.group_id);
    kafka
        .ensure_topics(&[
            &t.events,
            &t.backfill,
            &t.enriched,
            &t.dead_letters,
            &internal.repartition,
        ])
        .await
        .map_err(EnrichError::Setup)?;
    kafka
        .ensure_compacted_topics(&[&internal.links, &internal.changelog])
        .await
        .map_err(EnrichError::Setup)?;
    let producer = kafka.batch_producer().map_err(EnrichError::Setup)?;

    // The global link table: read whole before resolving anything.
    let follower = kafka
        .base_consumer(&format!("{}.links-reader", cfg.group_id))
        .map_err(EnrichError::Setup)?;
    let mut links = Links::default();
    let follower = read_back(follower, internal.links.clone(), None, move |k, v| {
        links_record(k, v)
    })
    .await
    .map(|(consumer, records)| {
        for (k, v) in records {
            links.insert(k, v);
        }
        consumer
    })?;
    tracing::info!(links = links.len(), "link table read");

    let resolve_instance = cfg.instance_id.as_ref().map(|i| format!("{i}.resolve"));
    let resolve_consumer: StreamConsumer<ResolveContext> = kafka
        .static_consumer(
            &format!("{}.resolve", cfg.group_id),
            resolve_instance.as_deref(),
            ResolveContext,
        )
        .map_err(EnrichError::Setup)?;
    resolve_consumer
        .subscribe(&[&t.events, &t.backfill])
        .map_err(EnrichError::Setup)?;
    let join_consumer: StreamConsumer<JoinContext> = kafka
        .static_consumer(
            &cfg.group_id,
            cfg.instance_id.as_deref(),
            JoinContext::default(),
        )
        .map_err(EnrichError::Setup)?;
    join_consumer
        .subscribe(&[&internal.repartition])
        .map_err(EnrichError::Setup)?;
    readiness.set(true);
    tracing::info!(group = %cfg.group_id, input = %t.events, output = %t.enriched, "enrich started");

    let resolve = Resolver {
        consumer: &resolve_consumer,
        follower,
        links,
        producer: &producer,
        kafka,
        cfg,
        internal: &internal,
    };
    let join = Joiner {
        consumer: &join_consumer,
        producer: &producer,
        kafka,
        cfg,
        internal: &internal,
        joins: HashMap::new(),
    };
    let result = tokio::try_join!(resolve.run(&stop), join.run(&stop));
    readiness.set(false);
    if result.is_err() {
        // One loop failed: stop the other too.
        stop.cancel();
    }
    result?;
    tracing::info!("enrich stopped");
    Ok(())
}

fn links_record(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<(String, String)> {
    let k = std::str::from_utf8(key?).ok()?;
    let v = std::str::from_utf8(value?).ok()?;
    (!v.is_empty()).then(|| (k.to_owned(), v.to_owned()))
}

/// Reads `topic` (one partition, or all) from the beginning up to its high
/// watermarks on a blocking thread, turning each record into `T`. Returns
/// the consumer, left assigned and positioned after what it read, so the
/// caller can keep following.
async fn read_back<T: Send + 'static>(
    consumer: BaseConsumer,
    topic: String,
    partition: Option<i32>,
    decode: impl Fn(Option<&[u8]>, Option<&[u8]>) -> Option<T> + Send + 'static,
) -> Result<(BaseConsumer, Vec<T>), EnrichError> {
    let restore_err = {
        let topic = topic.clone();
        move |source| EnrichError::Restore {
            topic: topic.clone(),
            source,
        }
    };
    let err = restore_err.clone();
    tokio::task::spawn_blocking(move || {
        let partitions: Vec<i32> = match partition {
            Some(p) => vec![p],
            None => consumer
                .fetch_metadata(Some(&topic), READ_BACK_POLL)
                .map_err(&err)?
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect(),
        };
        let mut tpl = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        for p in &partitions {
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)
                .map_err(&err)?;
            let (low, high) = consumer
                .fetch_watermarks(&topic, *p, READ_BACK_POLL)
                .map_err(&err)?;
            if high > low {
                remaining.insert(*p, high);
            }
        }
        consumer.assign(&tpl).map_err(&err)?;
        let mut out = Vec::new();
        loop {
            // The watermark is a lower bound only (Tansu 0.6 reports it
            // behind what it acknowledged): past it, read on until the
            // partitions stay quiet for a moment.
            let wait = if remaining.is_empty() {
                READ_BACK_QUIET
            } else {
                READ_BACK_POLL
            };
            let Some(m) = consumer.poll(wait) else {
                if !remaining.is_empty() {
                    tracing::warn!(topic, "read-back ended before the high watermark");
                }
                break;
            };
            let m = m.map_err(&err)?;
            if let Some(v) = decode(m.key(), m.payload()) {
                out.push(v);
            }
            if remaining
                .get(&m.partition())
                .is_some_and(|high| m.offset() + 1 >= *high)
            {
                remaining.remove(&m.partition());
            }
        }
        Ok((consumer, out))
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "read-back task failed");
        restore_err(KafkaError::Canceled)
    })?
}

/// Produces several topics' records of one batch, retrying transient
/// failures (a retry re-sends acknowledged records too; their consumers
/// drop copies by event id or by key).
async fn produce_batch(
    producer: &BatchProducer,
    sends: &[(&str, Option<i32>, &[Outgoing<'_>])],
) -> Result<(), EnrichError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut result = Ok(());
        for (topic, partition, records) in sends {
            if records.is_empty() {
                continue;
            }
            let r = match partition {
                Some(p) => producer.send_all_to_partition(topic, *p, records).await,
                None => producer.send_all(topic, records).await,
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt < PRODUCE_ATTEMPTS && ErrorClass::of(&e.first).is_transient() => {
                tracing::warn!(error = %e, attempt, "produce failed; retrying the batch");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                return Err(EnrichError::Produce {
                    attempts: attempt,
                    source: e.first,
                });
            }
        }
    }
}

fn commit<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    offsets: &TopicPartitionList,
    stop: &CancellationToken,
) {
    if offsets.elements().is_empty() {
        return;
    }
    let mode = if stop.is_cancelled() {
        CommitMode::Sync
    } else {
        CommitMode::Async
    };
    if let Err(e) = consumer.commit(offsets, mode) {
        // A failed commit only means these records are handled again after
        // a restart; outputs carry event ids the sink deduplicates.
        tracing::warn!(error = %e, "offset commit failed");
    }
}

fn decode_failure(m: &BorrowedMessage<'_>, err: &dyn std::fmt::Display, now: i64) -> DeadLetter {
    DeadLetter {
        payload: m.payload().unwrap_or_default().to_vec(),
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
    }
}

/// The resolve loop: events → customer-keyed repartition topic.
struct Resolver<'a> {
    consumer: &'a StreamConsumer<ResolveContext>,
    /// Assigned to every links partition, positioned after the read-back.
    follower: BaseConsumer,
    links: Links,
    producer: &'a BatchProducer,
    kafka: &'a KafkaConfig,
    cfg: &'a EnrichConfig,
    internal: &'a InternalTopics,
}

impl Resolver<'_> {
    async fn run(mut self, stop: &CancellationToken) -> Result<(), EnrichError> {
        loop {
            let batch = match recv_batch(
                self.consumer,
                self.cfg.batch_max_records,
                self.cfg.batch_max_wait,
                None,
                stop,
            )
            .await
            {
                Ok(b) if b.is_empty() => return Ok(()),
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.follow_links();
            let now = now_ms();
            let mut dead = Vec::new();
            let mut events = Vec::with_capacity(batch.len());
            for m in &batch {
                // Only the identity is needed here; the join decodes the rest.
                match EventIdentityView::decode(m.payload().unwrap_or_default()) {
                    Ok(e) => events.push((m, e)),
                    Err(err) => dead.push(decode_failure(m, &err, now).encode_to_vec()),
                }
            }
            // Learn the whole batch's links first: an order and a survey of
            // the same customer often arrive in one batch from different
            // partitions.
            let mut new_links: Vec<(String, String)> = Vec::new();
            for (_, e) in &events {
                self.links.learn_from(e.customer.as_ref(), |h, c| {
                    new_links.push((h.to_owned(), c.to_owned()));
                });
            }
            let keys: Vec<Vec<u8>> = events
                .iter()
                .map(
                    |(_, e)| match self.links.resolve_from(e.customer.as_ref()).customer_id {
                        Some(c) => c.into_bytes(),
                        None => {
                            let mut k = Vec::with_capacity(e.event_id.len() + 1);
                            k.push(UNRESOLVED);
                            k.extend_from_slice(e.event_id.as_bytes());
                            k
                        }
                    },
                )
                .collect();
            let forward: Vec<Outgoing<'_>> = events
                .iter()
                .zip(&keys)
                .map(|((m, _), k)| Outgoing::keyed(k, m.payload().unwrap_or_default()))
                .collect();
            let links_out: Vec<Outgoing<'_>> = new_links
                .iter()
                .map(|(h, c)| Outgoing::keyed(h.as_bytes(), c.as_bytes()))
                .collect();
            let dead_out: Vec<Outgoing<'_>> =
                dead.iter().map(|b| Outgoing::keyed(&[], b)).collect();
            // Links before the events they resolve, so that another instance
            // following the links topic knows them as early as possible.
            produce_batch(
                self.producer,
                &[
                    (&self.internal.links, None, &links_out),
                    (&self.internal.repartition, None, &forward),
                    (&self.kafka.topics.dead_letters, None, &dead_out),
                ],
            )
            .await?;
            let offsets = next_offsets(batch.iter()).map_err(EnrichError::Commit)?;
            commit(self.consumer, &offsets, stop);
            telemetry::BatchResolved {
                records: forward.len() as u64,
                links_learnt: links_out.len() as u64,
                links: self.links.len() as u64,
            }
            .emit();
        }
    }

    /// Applies links other instances published since the last call.
    fn follow_links(&mut self) {
        while let Some(m) = self.follower.poll(Duration::ZERO) {
            match m {
                Ok(m) => {
                    if let Some((k, v)) = links_record(m.key(), m.payload()) {
                        self.links.insert(k, v);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "links topic read failed");
                    break;
                }
            }
        }
    }
}

/// The resolve consumer's rebalances, logged: which instance reads which
/// input partitions is what ops look for when a group is being rebalanced.
#[derive(Debug, Default)]
pub struct ResolveContext;

impl ClientContext for ResolveContext {}

impl ConsumerContext for ResolveContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<String> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect();
            tracing::info!(partitions = %partitions.join(","), "resolve partitions assigned");
        }
    }
}

/// Partitions assigned and revoked since the join loop last looked, recorded
/// by the rebalance callbacks.
#[derive(Debug, Default)]
pub struct JoinContext {
    changes: Mutex<Vec<Assignment>>,
}

#[derive(Debug)]
enum Assignment {
    Assigned(i32),
    Revoked(i32),
}

impl ClientContext for JoinContext {}

impl ConsumerContext for JoinContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.record(rebalance, Assignment::Revoked, true);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "join partitions assigned");
        }
        self.record(rebalance, Assignment::Assigned, false);
    }
}

impl JoinContext {
    fn record(&self, rebalance: &Rebalance<'_>, make: fn(i32) -> Assignment, revoke: bool) {
        let tpl = match (rebalance, revoke) {
            (Rebalance::Revoke(tpl), true) | (Rebalance::Assign(tpl), false) => tpl,
            _ => return,
        };
        if let Ok(mut changes) = self.changes.lock() {
            changes.extend(tpl.elements().iter().map(|e| make(e.partition())));
        }
    }

    fn take(&self) -> Vec<Assignment> {
        self.changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

/// Encoded changelog records (customer id, state; empty deletes).
type StateRecords = Vec<(String, Vec<u8>)>;

/// The join loop: repartition topic → enriched topic, state per partition.
struct Joiner<'a> {
    consumer: &'a StreamConsumer<JoinContext>,
    producer: &'a BatchProducer,
    kafka: &'a KafkaConfig,
    cfg: &'a EnrichConfig,
    internal: &'a InternalTopics,
    joins: HashMap<i32, Join>,
}

impl Joiner<'_> {
    async fn run(mut self, stop: &CancellationToken) -> Result<(), EnrichError> {
        let tick = (self.cfg.join.max_hold / 4).max(Duration::from_millis(50));
        loop {
            // Held events are due by wall-clock time even when no input
            // arrives: wake up after `tick` without a message then.
            let holding = self.joins.values().any(|j| j.held() > 0);
            let batch = recv_batch(
                self.consumer,
                self.cfg.batch_max_records,
                self.cfg.batch_max_wait,
                holding.then_some(tick),
                stop,
            )
            .await;
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.rebalance().await?;
            let now = now_ms();
            let mut dead = Vec::new();
            let mut last: BTreeMap<i32, i64> = BTreeMap::new();
            for m in &batch {
                let p = m.partition();
                if !self.joins.contains_key(&p) {
                    // The assignment callback may come after the first
                    // records in some client versions: restore now.
                    let join = self.restore(p).await?;
                    self.joins.insert(p, join);
                }
                last.insert(p, m.offset());
                let event = match Event::decode(m.payload().unwrap_or_default()) {
                    Ok(e) => e,
                    Err(err) => {
                        dead.push(decode_failure(m, &err, now).encode_to_vec());
                        continue;
                    }
                };
                let who = resolved_from_key(m.key().unwrap_or_default(), &event);
                if let Some(j) = self.joins.get_mut(&p) {
                    j.offer(event, who, m.offset(), now);
                }
            }
            let stopping = stop.is_cancelled();
            self.flush(now, stopping, &dead, &last, stop).await?;
            if batch.is_empty() && stopping {
                return Ok(());
            }
        }
    }

    /// Releases what is due (everything when stopping), produces outputs and
    /// state changes, then commits below what is still held.
    async fn flush(
        &mut self,
        now: i64,
        all: bool,
        dead: &[Vec<u8>],
        last: &BTreeMap<i32, i64>,
        stop: &CancellationToken,
    ) -> Result<(), EnrichError> {
        let mut released: Vec<Released> = Vec::new();
        let mut changes: Vec<(i32, StateRecords)> = Vec::new();
        let mut partitions: Vec<i32> = self.joins.keys().copied().collect();
        partitions.sort_unstable();
        for p in &partitions {
            let Some(j) = self.joins.get_mut(p) else {
                continue;
            };
            if all {
                j.drain(now, &mut released);
            } else {
                j.release(now, &mut released);
            }
            let c: Vec<(String, Vec<u8>)> = j
                .take_changes()
                .into_iter()
                .map(|(id, s)| (id, s.map(|s| s.encode_to_vec()).unwrap_or_default()))
                .collect();
            if !c.is_empty() {
                changes.push((*p, c));
            }
        }
        let encoded: Vec<(String, Vec<u8>)> = released
            .into_iter()
            .map(|r| {
                let id = r
                    .enriched
                    .event
                    .as_ref()
                    .map(|e| e.event_id.clone())
                    .unwrap_or_default();
                (id, r.enriched.encode_to_vec())
            })
            .collect();
        let enriched: Vec<Outgoing<'_>> = encoded
            .iter()
            .map(|(id, b)| Outgoing::keyed(id.as_bytes(), b))
            .collect();
        let dead_out: Vec<Outgoing<'_>> = dead.iter().map(|b| Outgoing::keyed(&[], b)).collect();
        let changelog: Vec<(i32, Vec<Outgoing<'_>>)> = changes
            .iter()
            .map(|(p, c)| {
                (
                    *p,
                    c.iter()
                        .map(|(id, b)| Outgoing::keyed(id.as_bytes(), b))
                        .collect(),
                )
            })
            .collect();
        let mut sends: Vec<(&str, Option<i32>, &[Outgoing<'_>])> = vec![
            (&self.kafka.topics.enriched, None, &enriched),
            (&self.kafka.topics.dead_letters, None, &dead_out),
        ];
        for (p, records) in &changelog {
            sends.push((&self.internal.changelog, Some(*p), records));
        }
        produce_batch(self.producer, &sends).await?;

        // Commit each partition read in this batch, or still holding, below
        // the lowest event it holds.
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let Some(j) = self.joins.get(p) else { continue };
            let next = match (j.lowest_held_offset(), last.get(p)) {
                (Some(held), _) => held,
                (None, Some(last)) => last + 1,
                (None, None) => continue,
            };
            tpl.add_partition_offset(&self.internal.repartition, *p, Offset::Offset(next))
                .map_err(EnrichError::Commit)?;
        }
        commit(self.consumer, &tpl, stop);
        telemetry::BatchEnriched {
            records: enriched.len() as u64,
            dead_letters: dead_out.len() as u64,
            state_changes: changelog.iter().map(|(_, c)| c.len() as u64).sum(),
            held: self.joins.values().map(|j| j.held() as u64).sum(),
        }
        .emit();
        Ok(())
    }

    /// Acts on the assignments the rebalance callbacks recorded.
    async fn rebalance(&mut self) -> Result<(), EnrichError> {
        for change in self.consumer.context().take() {
            match change {
                Assignment::Revoked(p) => {
                    // Held events were not committed: the next owner reads
                    // them again.
                    tracing::info!(partition = p, "join partition revoked");
                    self.joins.remove(&p);
                }
                Assignment::Assigned(p) => {
                    if !self.joins.contains_key(&p) {
                        let join = self.restore(p).await?;
                        self.joins.insert(p, join);
                    }
                }
            }
        }
        Ok(())
    }

    /// A partition's join state, read back from its changelog partition.
    async fn restore(&self, partition: i32) -> Result<Join, EnrichError> {
        let started = std::time::Instant::now();
        let reader = self
            .kafka
            .base_consumer(&format!("{}.changelog-reader", self.cfg.group_id))
            .map_err(EnrichError::Setup)?;
        let (_, records) = read_back(
            reader,
            self.internal.changelog.clone(),
            Some(partition),
            |k, v| {
                let id = String::from_utf8(k?.to_vec()).ok()?;
                let state = match v {
                    Some(v) if !v.is_empty() => Some(JoinCustomerState::decode(v).ok()?),
                    _ => None,
                };
                Some((id, state))
            },
        )
        .await?;
        let mut join = Join::new(self.cfg.join.clone()).with_topics(self.cfg.topics.clone());
        let n = records.len();
        for (id, state) in records {
            join.restore(id, state);
        }
        tracing::info!(
            partition,
            records = n,
            customers = join.customers(),
            seconds = started.elapsed().as_secs_f64(),
            "join state restored from the changelog"
        );
        Ok(join)
    }
}

/// The resolution the resolve loop chose, carried by the record key.
fn resolved_from_key(key: &[u8], e: &Event) -> Resolved {
    if key.first() == Some(&UNRESOLVED) || key.is_empty() {
        return Resolved::unresolved();
    }
    let customer_id = String::from_utf8_lossy(key).into_owned();
    let direct = e
        .customer
        .as_ref()
        .is_some_and(|c| c.customer_id == customer_id);
    Resolved {
        customer_id: Some(customer_id),
        resolution: if direct {
            IdentityResolution::Direct
        } else {
            IdentityResolution::Linked
        },
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
