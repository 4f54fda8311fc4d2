//! The enrich stage: two consumer-group loops in one process.
//!
//! ```text
//!            direct events (key = own customer id), partition p ────────────────┐
//!                                                                                ▼
//! events, backfill ──► resolve ──► repartition topic (key = customer) ──► join (partition p of both) ──► enriched (key = event id)
//!   (the rest)          │  ▲                                                     │  ▲
//!                       ▼  │ read whole at start-up, then followed               ▼  │ read back when a partition is assigned
//!                     links topic (global table)                            changelog topic (partition = join partition)
//! ```
//!
//! Resolve (group `<group_id>.resolve`): decodes each event's identity,
//! learns links from events that carry a customer id and weak identifiers,
//! resolves the rest through the link table, and forwards the original
//! bytes keyed by customer id, so that every event of a customer reaches the
//! same join partition (unresolved events are keyed `\0<identifier>`, or
//! `\0<event id>` without one) — every event but the *direct* ones
//! (`is_direct`: on the events topic, keyed by their own customer id, as
//! the collectors key every event that carries one): those are in their
//! customer's partition already, and the join reads them there. Links it
//! learns go to the links topic, which every instance reads whole at
//! start-up and then follows: a global table, and are announced on the
//! repartition topic as link notices (see `link_notice`). An event known
//! only by weak identifiers that no link resolves yet waits up to the
//! join's `max_hold` for one ([`Waiting`]); after that, in the join, until a
//! link notice comes.
//!
//! Join (group `<group_id>`): subscribed to the events topic and the
//! repartition topic, which have the same partition count (checked at
//! start-up) and the same partitioner, so that a customer id lands in
//! partition p of both and the range assignor gives partition p of both to
//! the same member. One [`Join`](crate::join::Join) per partition number,
//! fed by both topics, so a customer's state lives with its partition. It
//! takes the direct events of the events topic and skips the rest. The
//! rebalance callbacks only record assignments (they run inside `recv()`);
//! between batches a revoked partition's state is dropped and an assigned
//! one is restored from its changelog partition (the latest record per key
//! wins).
//!
//! Per batch, in both loops: outputs (and, in join, events a link resolved
//! and the changed state, before the outputs) are produced and
//! acknowledged, then input offsets are committed — only below the lowest
//! event still held (in resolve, waiting for its link; in join, by the
//! lateness buffer, per input topic). A crash replays uncommitted input, of
//! both join inputs: outputs are emitted again with the same event ids and
//! revisions (the sink drops the copies), and state restored from the
//! changelog knows which events it already applied, by event id, whichever
//! topic brought them. Internal topics are named after the group: `<group_id>.links`,
//! `<group_id>.repartition`, `<group_id>.changelog`.
//!
//! The two loops run as tasks of their own (both cores handle batches at
//! once); they share the producer, and nothing else but the topics.
//!
//! Modules: `resolve_loop` and `join_loop` are the two loops, `restore`
//! reads the link table and a partition's state back, `output` is what both
//! do with a handled batch (produce with retries,
//! commit, dead-letter). This module wires them and owns the errors.

use std::{collections::HashMap, sync::Arc};

use rdkafka::{consumer::Consumer, error::KafkaError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::Readiness,
    kafka::{
        BatchProducer, ErrorClass, KafkaConfig, Outgoing,
        close::Closing,
        watch::{self, Watched},
    },
    rebalance::{Keep, RebalanceLog},
};

use crate::{EnrichConfig, identity::Waiting, telemetry::Metric};

mod join_loop;
mod output;
mod resolve_loop;
mod restore;

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
    /// Shutdown came while a produce was being retried: the batch's input
    /// offsets were not committed, so it is handled again after a restart.
    #[error("stopped while retrying a produce")]
    Stopped,
    #[error("committing offsets failed: {0}")]
    Commit(#[source] KafkaError),
    #[error("reading {topic} back failed: {source}")]
    Restore {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The join reads partition p of both topics with one state: they must
    /// have as many partitions (docs/enrich.md, "Direct events").
    #[error(
        "{events} has {events_partitions} partitions but {repartition} has {repartition_partitions}: \
         the join reads partition p of both with one state, so they must have as many \
         (set kafka.partitions to the events topic's count, or add partitions to the smaller)"
    )]
    NotCoPartitioned {
        events: String,
        events_partitions: usize,
        repartition: String,
        repartition_partitions: usize,
    },
    /// The link table's local store failed (docs/enrich.md, "The memory
    /// bound"): nothing read through it since was committed, and a restart
    /// builds it again from the links topic.
    #[error("{0}")]
    LinkStore(#[source] crate::identity::LinkStoreError),
    /// The cold customers' local store failed (docs/enrich.md, "The memory
    /// bound"): nothing of the batch was sent or committed, and a restart
    /// reads the partitions' state back from the changelog.
    #[error("{0}")]
    CustomerStore(#[source] crate::local_store::LocalStoreError),
    #[error("reading or seeding the join group's offsets on {topic} failed: {source}")]
    Offsets {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

impl EnrichError {
    pub fn is_transient(&self) -> bool {
        match self {
            // A local store that failed (a full disk) fails the process:
            // its restart builds the table again in a new directory.
            EnrichError::Setup(_)
            | EnrichError::Stopped
            | EnrichError::NotCoPartitioned { .. }
            | EnrichError::LinkStore(_)
            | EnrichError::CustomerStore(_) => false,
            EnrichError::Produce { source, .. }
            | EnrichError::Commit(source)
            | EnrichError::Restore { source, .. }
            | EnrichError::Offsets { source, .. } => ErrorClass::of(source).is_transient(),
        }
    }
}

/// Key prefix of events no customer was found for, and of link notices.
const UNRESOLVED: u8 = 0;

/// Header of a link notice on the repartition topic (key `\0<identifier>`,
/// value = customer id): tells the join partition where that identifier's
/// unresolved events wait that a link now names their customer.
const LINK_HEADER: &str = "xoflow-link";
/// Header of an event moved to its customer's partition after waiting for
/// a link: the revision its next output gets (decimal).
const REVISION_HEADER: &str = "xoflow-revision";

/// Header of an erasure notice on the repartition topic (no header value):
/// the join partition the key leads to forgets what it holds of that
/// customer (key = customer id, record value = its tenant) or hashed
/// identifier (key = `\0<identifier>`), and writes tombstones for its
/// changelog records. Sent by `xoflow erase`
/// (docs/privacy.md).
pub const ERASE_HEADER: &str = "xoflow-erase";

/// The repartition keys of erasure notices for these customers and hashed
/// identifiers: each reaches the join partition holding its state.
pub fn erase_notice_keys(customers: &[String], identifiers: &[String]) -> Vec<Vec<u8>> {
    customers
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .chain(identifiers.iter().map(|h| unresolved_key(h)))
        .collect()
}

/// One erasure notice record of `tenant` (see [`ERASE_HEADER`]).
pub fn erase_notice<'a>(key: &'a [u8], tenant: &'a str) -> Outgoing<'a> {
    Outgoing {
        key,
        payload: tenant.as_bytes(),
        headers: Some(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: ERASE_HEADER,
                value: Some(&[][..]),
            }),
        ),
    }
}

/// The repartition key of an event no customer was found for: its wait
/// identifier (see [`crate::identity::wait_identifier`]) or, without one,
/// its event id, marked so the join knows it is unresolved.
fn unresolved_key(identifier_or_event_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(identifier_or_event_id.len() + 1);
    k.push(UNRESOLVED);
    k.extend_from_slice(identifier_or_event_id.as_bytes());
    k
}

/// Link notices for the repartition topic, one per (identifier, customer):
/// (key, value) pairs to send with [`link_notice`].
pub(crate) fn link_notice_records(links: &[(String, String)]) -> Vec<(Vec<u8>, &[u8])> {
    links
        .iter()
        .map(|(h, c)| (unresolved_key(h), c.as_bytes()))
        .collect()
}

/// One link notice record (see [`LINK_HEADER`]).
pub(crate) fn link_notice<'a>(key: &'a [u8], customer: &'a [u8]) -> Outgoing<'a> {
    Outgoing {
        key,
        payload: customer,
        headers: Some(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: LINK_HEADER,
                value: Some(&[][..]),
            }),
        ),
    }
}

/// Whether a record of the events topic is a *direct* event: keyed by the
/// event's own (non-empty) customer id. The collectors key every event that
/// carries a customer id so; it is then in the partition of the same number
/// as its customer's join partition, and the join reads it from the events
/// topic itself instead of through the repartition topic.
pub(crate) fn is_direct(key: &[u8], customer: Option<&xoflow_proto::v1::CustomerIdentity>) -> bool {
    !key.is_empty() && customer.is_some_and(|c| c.customer_id.as_bytes() == key)
}

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

/// The whole link table as it is now (for tools that seed it; the stage
/// itself follows it as it runs).
pub async fn read_link_table(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    internal: &InternalTopics,
) -> Result<
    (
        xoflow_common::kafka::close::Closing<rdkafka::consumer::BaseConsumer>,
        crate::identity::Links,
    ),
    EnrichError,
> {
    restore::link_table(kafka, cfg, internal).await
}

/// Every key of one changelog partition that still holds a value (for
/// `xoflow erase`).
pub(crate) async fn changelog_keys(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    internal: &InternalTopics,
    partition: i32,
) -> Result<Vec<Vec<u8>>, EnrichError> {
    restore::changelog_keys(kafka, cfg, internal, partition).await
}

/// Every topic the stage reads or writes: the plain ones and the compacted
/// ones (tables kept as topics).
fn topic_names<'a>(
    t: &'a xoflow_common::kafka::Topics,
    internal: &'a InternalTopics,
) -> ([&'a str; 6], [&'a str; 2]) {
    (
        [
            &t.events,
            &t.backfill,
            &t.enriched,
            &t.dead_letters,
            &t.alerts,
            &internal.repartition,
        ],
        [&internal.links, &internal.changelog],
    )
}

/// Creates every topic the stage reads or writes, its internal ones
/// (named after the group) included, and returns the internal names.
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
) -> Result<InternalTopics, EnrichError> {
    let internal = InternalTopics::of(&cfg.group_id);
    let (plain, compacted) = topic_names(&kafka.topics, &internal);
    kafka
        .ensure_topics(&plain)
        .await
        .map_err(EnrichError::Setup)?;
    kafka
        .ensure_compacted_topics(&compacted)
        .await
        .map_err(EnrichError::Setup)?;
    Ok(internal)
}

/// Waits for both loops. The first to fail ends the other at once (it is
/// aborted at its next await, as if dropped: nothing of its batch in flight
/// is committed) and its error is the stage's; a loop's panic is the
/// stage's panic. Dropping the set (the stage's own future dropped) aborts
/// both.
async fn first_error(loops: &mut JoinSet<Result<(), EnrichError>>) -> Result<(), EnrichError> {
    let mut result = Ok(());
    while let Some(done) = loops.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                loops.abort_all();
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Aborted above.
            Err(_) => {}
        }
    }
    result
}

/// What both loops of a running stage borrow: each task owns a copy
/// (one `Arc` and a few small clones at start-up, nothing per batch).
#[derive(Clone)]
struct Shared {
    producer: Arc<BatchProducer>,
    kafka: KafkaConfig,
    cfg: EnrichConfig,
    internal: InternalTopics,
    readiness: Readiness,
    stop: CancellationToken,
}

/// Runs the enrich stage until `stop` is cancelled.
pub async fn run(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), EnrichError> {
    crate::telemetry::init();
    let t = &kafka.topics;
    let internal = InternalTopics::of(&cfg.group_id);
    // Started during a broker outage: wait for it, not ready, rather than
    // exit.
    let (plain, compacted) = topic_names(t, &internal);
    let created = kafka
        .await_topics(&plain, &compacted, &readiness, &stop)
        .await
        .map_err(EnrichError::Setup)?;
    if !created {
        return Ok(());
    }
    let producer = kafka
        .batch_producer()
        .map_err(EnrichError::Setup)?
        .reporting_queue(Metric::ProducerQueue.name());

    // The join reads partition p of the events topic with the state of
    // repartition partition p: refuse to start when that cannot hold, and
    // give the join group a start on the events topic before the resolve
    // group commits anything there.
    // Each read waits out a broker gone meanwhile, as topic creation did.
    let started = async {
        let partitions = output::read_retrying("counting partitions", &readiness, &stop, || {
            restore::co_partitioned(kafka, &t.events, &internal.repartition)
        })
        .await?;
        output::read_retrying(
            "seeding the join group's offsets",
            &readiness,
            &stop,
            || restore::seed_direct_offsets(kafka, cfg, &t.events, partitions),
        )
        .await?;
        // The global link table: read whole before resolving anything.
        output::read_retrying("reading the link table", &readiness, &stop, || {
            restore::link_table(kafka, cfg, &internal)
        })
        .await
    };
    let (follower, links) = match started.await {
        Ok(read) => read,
        Err(EnrichError::Stopped) => return Ok(()),
        Err(e) => return Err(e),
    };
    tracing::info!(links = links.len(), "link table read");
    // Where the join partitions keep their cold customers past the recent
    // ones (each partition a table of its own, gone with its state).
    let cold_store = restore::cold_store(&cfg.cold_customers)?;

    // The resolve loop forgets a revoked partition's waiting events (its
    // next owner reads them again). The join loop restores an assigned
    // partition's state and drops a revoked one's. Dropped, the members
    // leave their groups on threads of their own: a broker that is away
    // holds up no worker (`xoflow_common::kafka::close`).
    let resolve_instance = cfg.instance_id.as_ref().map(|i| format!("{i}.resolve"));
    let resolve_consumer = kafka
        .static_consumer(
            &format!("{}.resolve", cfg.group_id),
            resolve_instance.as_deref(),
            RebalanceLog::new("resolve", Keep::Revoked)
                .resuming_at_commits()
                .counting_errors(Metric::Errors.name()),
        )
        .map(Closing::new)
        .map_err(EnrichError::Setup)?;
    resolve_consumer
        .subscribe(&[&t.events, &t.backfill])
        .map_err(EnrichError::Setup)?;
    let join_consumer = kafka
        .static_consumer(
            &cfg.group_id,
            cfg.instance_id.as_deref(),
            RebalanceLog::new("join", Keep::Both)
                .resuming_at_commits()
                .counting_errors(Metric::Errors.name()),
        )
        .map(Closing::new)
        .map_err(EnrichError::Setup)?;
    // Partition p of both topics goes to the same member: the range
    // assignor hands out each topic's partitions in the same order to the
    // same sorted members, and both topics have as many partitions.
    join_consumer
        .subscribe(&[&t.events, &internal.repartition])
        .map_err(EnrichError::Setup)?;
    readiness.set(true);
    tracing::info!(group = %cfg.group_id, input = %t.events, output = %t.enriched, "enrich started");
    // Readiness learns of a broker outage even while nothing is produced;
    // the probe stops with the stage, however the stage ends.
    let probe_stop = stop.child_token();
    let _stop_probe = probe_stop.clone().drop_guard();
    tokio::spawn(xoflow_common::kafka::probe::probe(
        kafka.clone(),
        t.events.clone(),
        xoflow_common::kafka::probe::PROBE_EVERY,
        readiness.clone(),
        probe_stop,
    ));

    // Each loop is a task of its own, so that the two handle their batches
    // on both cores at once: polled together in one task their handling
    // took turns on one thread (BENCHMARKS.md, "The two loops on two
    // cores").
    let shared = Shared {
        producer: Arc::new(producer),
        kafka: kafka.clone(),
        cfg: cfg.clone(),
        internal: internal.clone(),
        readiness: readiness.clone(),
        stop: stop.clone(),
    };
    let resolve_consumer = Arc::new(resolve_consumer);
    let join_consumer = Arc::new(join_consumer);
    let mut tasks = JoinSet::new();
    tasks.spawn({
        let (consumer, s) = (resolve_consumer.clone(), shared.clone());
        async move {
            resolve_loop::Resolver {
                consumer: &consumer,
                follower,
                links,
                waiting: Waiting::default(),
                read: HashMap::new(),
                producer: &s.producer,
                kafka: &s.kafka,
                cfg: &s.cfg,
                internal: &s.internal,
                readiness: &s.readiness,
            }
            .run(&s.stop)
            .await
        }
    });
    tasks.spawn({
        let (consumer, s) = (join_consumer.clone(), shared);
        async move {
            join_loop::Joiner {
                consumer: &consumer,
                producer: &s.producer,
                kafka: &s.kafka,
                cfg: &s.cfg,
                internal: &s.internal,
                joins: HashMap::new(),
                cold_store: cold_store.clone(),
                read: HashMap::new(),
                committed: HashMap::new(),
                readiness: &s.readiness,
                outputs: Vec::new(),
                in_flight: None,
                shed_log: Default::default(),
            }
            .run(&s.stop)
            .await
        }
    });
    // The watchdog runs beside the loops (reading their consumers'
    // positions) and ends with them.
    let watch_stop = stop.child_token();
    let watched = vec![
        Watched {
            group: format!("{}.resolve", cfg.group_id),
            topics: vec![t.events.clone(), t.backfill.clone()],
            held: Box::new(|| watch::held(&**resolve_consumer)),
            lag_metric: Metric::ConsumerLag.name(),
        },
        Watched {
            group: cfg.group_id.clone(),
            topics: vec![t.events.clone(), internal.repartition.clone()],
            held: Box::new(|| watch::held(&**join_consumer)),
            lag_metric: Metric::ConsumerLag.name(),
        },
    ];
    let loops = async {
        let r = first_error(&mut tasks).await;
        watch_stop.cancel();
        r
    };
    let (result, ()) = tokio::join!(
        loops,
        watch::watch(
            kafka.clone(),
            watched,
            cfg.stall_timeout,
            readiness.clone(),
            watch_stop.clone(),
        )
    );
    readiness.set(false);
    if result.is_err() {
        // One loop failed: stop the other too.
        stop.cancel();
    }
    match result {
        Err(EnrichError::Stopped) => tracing::warn!(
            "enrich stopped while the broker was unreachable; the batch in flight was not committed and will be handled again"
        ),
        other => {
            other?;
        }
    }
    tracing::info!("enrich stopped");
    Ok(())
}
