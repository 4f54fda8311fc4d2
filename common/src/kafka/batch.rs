//! A consumed batch: gathered from a stream consumer without copying, and
//! the offsets to commit once it is handled.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{ConsumerContext, StreamConsumer},
    error::KafkaError,
    message::BorrowedMessage,
};

/// Waits for the first message (or `stop`, or `idle` without one), then
/// gathers more until `max` messages or `max_wait` after the first. Messages
/// stay borrowed from the consumer: no copy per record.
///
/// Returns an empty batch once `stop` is cancelled or `idle` passed with no
/// message. Callers that need to wake up without input (timers) pass `idle`
/// rather than racing this future against a timer: dropped while filling,
/// it would drop the messages already taken from the consumer. An error
/// while filling ends the batch and is counted in the stage's `errors`
/// counter.
pub async fn recv_batch<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    max: usize,
    max_wait: Duration,
    idle: Option<Duration>,
    stop: &tokio_util::sync::CancellationToken,
    errors: &'static str,
) -> Result<Vec<BorrowedMessage<'c>>, KafkaError> {
    let Some(first) = first(consumer, idle, stop).await? else {
        return Ok(Vec::new());
    };
    let mut batch = Vec::with_capacity(max.min(1024));
    batch.push(first);
    fill(consumer, &mut batch, max, max_wait, errors, || false).await;
    Ok(batch)
}

/// The first message of a batch; `None` once `stop` is cancelled or `idle`
/// passed without one.
pub(crate) async fn first<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    idle: Option<Duration>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Option<BorrowedMessage<'c>>, KafkaError> {
    // `recv` itself is cancel-safe: a message is only taken when returned.
    tokio::select! {
        biased;
        _ = stop.cancelled() => Ok(None),
        _ = tokio::time::sleep(idle.unwrap_or(Duration::MAX)), if idle.is_some() => Ok(None),
        m = consumer.recv() => m.map(Some),
    }
}

/// Adds messages to `batch` until `max`, `max_wait` from now, an error
/// (counted in `errors`), or a message received once `ends()` says so:
/// that one is returned, for the next batch.
pub(crate) async fn fill<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    batch: &mut Vec<BorrowedMessage<'c>>,
    max: usize,
    max_wait: Duration,
    errors: &'static str,
    ends: impl Fn() -> bool,
) -> Option<BorrowedMessage<'c>> {
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) if ends() => return Some(m),
            Ok(Ok(m)) => batch.push(m),
            Ok(Err(e)) => {
                crate::telemetry::ErrorKind::Consume.emit(
                    errors,
                    &e,
                    "kafka consumer error while filling a batch",
                );
                break;
            }
            Err(_) => break,
        }
    }
    None
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
