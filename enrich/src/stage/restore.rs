//! Reading a compacted topic back: the link table at start-up, a join
//! partition's state when it is assigned (its cold customers past the
//! recent ones into the instance's local store); and the start-up checks of the
//! join's two inputs (equal partition counts, a committed offset on the
//! events topic).
//!
//! In: a topic (one partition, or all) and a decoder of its records. Out:
//! the decoded records, latest last, read from the beginning up to the high
//! watermarks — on a blocking thread, since rdkafka's `BaseConsumer` polls
//! synchronously. Failures are [`EnrichError::Restore`].

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError,
    message::Message,
};
use xoflow_common::{
    kafka::{KafkaConfig, close::Closing},
    telemetry::ErrorKind,
};

use super::{EnrichError, InternalTopics};
use crate::{
    EnrichConfig,
    config::{ColdCustomersConfig, StoreKind},
    identity::Links,
    join::{ColdStore, Join},
    local_store::{LocalStore, StoreSizes},
    telemetry::Metric,
};

/// How long reading a topic back may wait for each fetch.
const READ_BACK_POLL: Duration = Duration::from_secs(10);
/// How long a read-back waits for more once past the high watermark.
const READ_BACK_QUIET: Duration = Duration::from_millis(300);

/// A record of the links topic: hashed identifier → customer id (an empty
/// value is no link).
pub(super) fn links_record(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<(String, String)> {
    let k = std::str::from_utf8(key?).ok()?;
    // A tombstone (no value, or an empty one: the identifier was erased)
    // reads as an empty customer id, which `Links::insert` removes.
    let v = std::str::from_utf8(value.unwrap_or_default()).ok()?;
    Some((k.to_owned(), v.to_owned()))
}

/// The whole link table. Returns the consumer that read it, assigned to
/// every links partition and positioned after what it read, so that the
/// resolve loop can follow what other instances publish.
pub(super) async fn link_table(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    internal: &InternalTopics,
) -> Result<(Closing<BaseConsumer>, Links), EnrichError> {
    let reader = Closing::new(
        kafka
            .base_consumer(&format!("{}.links-reader", cfg.group_id))
            .map_err(EnrichError::Setup)?,
    );
    let (follower, records) = read_back(reader, internal.links.clone(), None, links_record).await?;
    let mut links = Links::open(&cfg.link_table).map_err(EnrichError::LinkStore)?;
    for (k, v) in records {
        links.insert(k, v);
    }
    links
        .take_error()
        .map_or(Ok((follower, links)), |e| Err(EnrichError::LinkStore(e)))
}

/// Directories of the cold customers' stores start with this.
const COLD_DIR_PREFIX: &str = "xoflow-customers-";

/// The store the join partitions keep their cold customers in, as `cfg`
/// says (none: in the heap).
pub(super) fn cold_store(
    cfg: &ColdCustomersConfig,
) -> Result<Option<Arc<LocalStore>>, EnrichError> {
    if cfg.store == StoreKind::Memory {
        return Ok(None);
    }
    LocalStore::open(
        "cold customers' store",
        COLD_DIR_PREFIX,
        cfg.directory.as_deref(),
        StoreSizes {
            cache_mib: cfg.cache_mib,
            memtable_mib: cfg.memtable_mib,
        },
    )
    .map(Some)
    .map_err(EnrichError::CustomerStore)
}

/// A client that reads changelog partitions it assigns itself. librdkafka
/// assigns only in a group, though it never joins it: closed off the async
/// workers (`xoflow_common::kafka::close`).
fn changelog_reader(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
) -> Result<Closing<BaseConsumer>, EnrichError> {
    kafka
        .base_consumer(&format!("{}.changelog-reader", cfg.group_id))
        .map(Closing::new)
        .map_err(EnrichError::Setup)
}

/// Every key of one changelog partition whose latest record holds a value
/// (deleted keys left out): what `xoflow erase` looks through.
pub(crate) async fn changelog_keys(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    internal: &InternalTopics,
    partition: i32,
) -> Result<Vec<Vec<u8>>, EnrichError> {
    let reader = changelog_reader(kafka, cfg)?;
    let (_, records) = read_back(
        reader,
        internal.changelog.clone(),
        Some(partition),
        |k, v| Some((k?.to_vec(), !v.unwrap_or_default().is_empty())),
    )
    .await?;
    let latest: std::collections::HashMap<Vec<u8>, bool> = records.into_iter().collect();
    Ok(latest
        .into_iter()
        .filter_map(|(k, held)| held.then_some(k))
        .collect())
}

/// A join partition's state, read back from its changelog partition (the
/// latest record per key wins; an empty value deletes).
pub(super) async fn join_state(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    internal: &InternalTopics,
    partition: i32,
    cold: Option<(&Arc<LocalStore>, usize)>,
) -> Result<Join, EnrichError> {
    let started = std::time::Instant::now();
    let reader = changelog_reader(kafka, cfg)?;
    let (_, records) = read_back(
        reader,
        internal.changelog.clone(),
        Some(partition),
        |k, v| Some((k?.to_vec(), v.unwrap_or_default().to_vec())),
    )
    .await?;
    let n = records.len();
    let latest: std::collections::HashMap<Vec<u8>, Vec<u8>> = records.into_iter().collect();
    let mut join = Join::new(cfg.join.clone())
        .with_topics(cfg.topics.clone())
        .with_alerts(cfg.alerts.clone());
    if let Some((store, recent)) = cold {
        let table = ColdStore::open(store, recent).map_err(EnrichError::CustomerStore)?;
        join = join.with_cold_store(table);
    }
    let skipped = join.restore_records(latest, xoflow_common::clock::now_unix_millis());
    if let Some(e) = join.take_store_error() {
        return Err(EnrichError::CustomerStore(e));
    }

    if skipped.undecodable > 0 {
        ErrorKind::ReadBack.emit(
            Metric::Errors.name(),
            &format!(
                "{} changelog records of partition {partition} did not decode",
                skipped.undecodable
            ),
            "changelog records skipped",
        );
    }
    if skipped.untenanted > 0 {
        // Not an error of this run: state written before keys named the
        // tenant, which events rebuild.
        tracing::warn!(
            partition,
            records = skipped.untenanted,
            "changelog records keyed by customer id alone (written before state keys named \
             the tenant) skipped and deleted: those customers' join state starts afresh"
        );
    }
    tracing::info!(
        partition,
        records = n,
        customers = join.customers(),
        customers_on_disk = join.customers_on_disk(),
        history = join.history_events(),
        history_bytes = join.history_bytes(),
        waiting_for_link = join.waiting_for_link(),
        links = join.links_remembered(),
        seconds = started.elapsed().as_secs_f64(),
        "join state restored from the changelog"
    );
    Ok(join)
}

/// Reads `topic` (one partition, or all) from the beginning up to its high
/// watermarks on a blocking thread, turning each record into `T`. Returns
/// the consumer, left assigned and positioned after what it read, so the
/// caller can keep following.
async fn read_back<T: Send + 'static>(
    consumer: Closing<BaseConsumer>,
    topic: String,
    partition: Option<i32>,
    decode: impl Fn(Option<&[u8]>, Option<&[u8]>) -> Option<T> + Send + 'static,
) -> Result<(Closing<BaseConsumer>, Vec<T>), EnrichError> {
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
                    ErrorKind::ReadBack.emit(
                        Metric::Errors.name(),
                        &format!("{topic}: no record within {READ_BACK_POLL:?}"),
                        "read-back ended before the high watermark",
                    );
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
        xoflow_common::telemetry::ErrorKind::ReadBack
            .count(crate::telemetry::Metric::Errors.name());
        restore_err(KafkaError::Canceled)
    })?
}

/// How long a start-up look at metadata or committed offsets may wait.
const START_WAIT: Duration = Duration::from_secs(10);

/// The partition count of `events` and `repartition`, or
/// [`EnrichError::NotCoPartitioned`] when they differ: the join reads
/// partition p of both with one state.
pub(super) async fn co_partitioned(
    kafka: &KafkaConfig,
    events: &str,
    repartition: &str,
) -> Result<i32, EnrichError> {
    let consumer = kafka.reader().map_err(EnrichError::Setup)?;
    let (events, repartition) = (events.to_owned(), repartition.to_owned());
    tokio::task::spawn_blocking(move || {
        let count = |topic: &str| -> Result<usize, EnrichError> {
            let md = consumer
                .fetch_metadata(Some(topic), START_WAIT)
                .map_err(EnrichError::Setup)?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len()))
        };
        // A topic just created may show no partitions for a moment.
        let mut counts = (count(&events)?, count(&repartition)?);
        for _ in 0..20 {
            if counts.0 > 0 && counts.1 > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            counts = (count(&events)?, count(&repartition)?);
        }
        let (e, r) = counts;
        if e != r || e == 0 {
            return Err(EnrichError::NotCoPartitioned {
                events,
                events_partitions: e,
                repartition,
                repartition_partitions: r,
            });
        }
        Ok(e as i32)
    })
    .await
    .map_err(|_| EnrichError::Setup(KafkaError::Canceled))?
}

/// Gives the join group a committed offset on every partition of the events
/// topic that has none, before either loop starts:
///
/// - where the resolve group has one, the deployment ran the old contract
///   (every event went through the repartition topic): everything below
///   the resolve group's offset was forwarded there already, so the join
///   starts the events topic at that offset. Above it, the resolve loop
///   reads on and forwards only what is not direct.
/// - elsewhere nothing was read yet: the join starts at the partition's
///   first offset, as the resolve loop does.
///
/// So the join group always has an offset wherever the resolve group has
/// one: a join that has not read a partition yet never resumes at the
/// resolve group's offset past direct events it never handled. Another
/// instance seeding at the same moment is fine: whichever commits first,
/// both commit the same offsets.
pub(super) async fn seed_direct_offsets(
    kafka: &KafkaConfig,
    cfg: &EnrichConfig,
    events: &str,
    partitions: i32,
) -> Result<(), EnrichError> {
    // Group clients: closed where a broker gone meanwhile cannot hold the
    // blocking thread (`xoflow_common::kafka::close`).
    let join = Closing::new(
        kafka
            .base_consumer(&cfg.group_id)
            .map_err(EnrichError::Setup)?,
    );
    let resolve = Closing::new(
        kafka
            .base_consumer(&format!("{}.resolve", cfg.group_id))
            .map_err(EnrichError::Setup)?,
    );
    let topic = events.to_owned();
    tokio::task::spawn_blocking(move || seed(&join, &resolve, &topic, partitions))
        .await
        .map_err(|_| EnrichError::Setup(KafkaError::Canceled))?
}

/// The blocking part of [`seed_direct_offsets`].
fn seed(
    join: &BaseConsumer,
    resolve: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> Result<(), EnrichError> {
    let err = |source| EnrichError::Offsets {
        topic: topic.to_owned(),
        source,
    };
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let missing = |join: &BaseConsumer| -> Result<TopicPartitionList, EnrichError> {
        let mine = join
            .committed_offsets(all.clone(), START_WAIT)
            .map_err(err)?;
        let mut missing = TopicPartitionList::new();
        for e in mine.elements() {
            if !matches!(e.offset(), Offset::Offset(_)) {
                missing.add_partition(topic, e.partition());
            }
        }
        Ok(missing)
    };
    let todo = missing(join)?;
    if todo.count() == 0 {
        return Ok(());
    }
    let theirs = resolve.committed_offsets(todo, START_WAIT).map_err(err)?;
    let mut seed = TopicPartitionList::new();
    for e in theirs.elements() {
        let p = e.partition();
        let (at, why) = match e.offset() {
            Offset::Offset(o) => (o, "upgrade: the resolve group forwarded everything below"),
            _ => (
                join.fetch_watermarks(topic, p, START_WAIT).map_err(err)?.0,
                "nothing read yet",
            ),
        };
        tracing::info!(topic = %topic, partition = p, offset = at, reason = why, "join starts the events topic here");
        seed.add_partition_offset(topic, p, Offset::Offset(at))
            .map_err(err)?;
    }
    if let Err(e) = join.commit(&seed, CommitMode::Sync) {
        // Refused while another member holds the group: it seeded them.
        if missing(join)?.count() > 0 {
            return Err(err(e));
        }
    }
    Ok(())
}
