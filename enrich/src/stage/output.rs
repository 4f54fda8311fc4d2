//! What both loops do with a handled batch: produce its records (retrying
//! transient failures), commit its input offsets, and dead-letter the
//! records that did not decode.
//!
//! In: the encoded records of one batch per topic (and partition, for the
//! changelog), in the steps their order needs, and the offsets to commit
//! once they are acknowledged. Out: `Ok` once every record is acknowledged.
//! Transient produce failures (the broker unreachable, a queue full) are
//! retried without a bound, with capped exponential backoff and jitter,
//! while readiness says `kafka_unreachable` (or `producer_queue_stuck` for a
//! full queue); [`EnrichError::Produce`] only for a permanent error,
//! [`EnrichError::Stopped`] when shutdown comes during a retry wait (nothing
//! of the batch is committed then). Commit failures are only logged and
//! counted, because a missed commit only means records are handled again.
//! Reads the loops depend on are retried the same way
//! ([`read_retrying`]).

use std::time::Duration;

use rdkafka::{
    TopicPartitionList,
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    message::{BorrowedMessage, Message},
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::{Readiness, Reason},
    clock,
    dead_letter::{self, Stage},
    kafka::{BatchError, BatchProducer, ErrorClass, Outgoing, Target},
    retry::RetryPolicy,
    telemetry::ErrorKind,
};
use xoflow_proto::Message as _;

use super::EnrichError;
use crate::telemetry::Metric;

/// Produce retries: waiting 400, 800, 1600, 3200, then 5000 ms (less up
/// to half, jitter) between attempts, for as long as the broker is away.
/// The cap bounds how long after the broker returns enrich resumes.
pub(super) const PRODUCE_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(400), Duration::from_millis(5000));

/// How long a loop waits after a consumer error before polling again.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// What either loop does when polling its consumer failed: count and log
/// it, then pause before polling again (librdkafka retries underneath).
pub(super) async fn consumer_error(e: &rdkafka::error::KafkaError) {
    ErrorKind::Consume.emit(Metric::Errors.name(), e, "kafka consumer error");
    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
}

/// Produces a batch's records in steps, in the order given: a step's sends
/// go out together (one round trip to the broker however many topics and
/// partitions it names), and every record of a step is acknowledged before
/// the next step is sent. Transient failures are retried (a retry re-sends
/// acknowledged records too; their consumers drop copies by event id and
/// revision, or by key).
pub(super) async fn produce_batch(
    producer: &BatchProducer,
    steps: &[&[Target<'_>]],
    stop: &CancellationToken,
    readiness: &Readiness,
) -> Result<(), EnrichError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut result = Ok(());
        for step in steps {
            // A step with no records settles at once: no round trip.
            if let Err(e) = producer.send_together(step).await {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(attempts = attempt, "the broker acknowledges again");
                }
                readiness.clear(Reason::KafkaUnreachable);
                readiness.clear(Reason::ProducerQueueStuck);
                return Ok(());
            }
            Err(e)
                if PRODUCE_RETRY.retries_after(attempt)
                    && ErrorClass::of(&e.first).is_transient() =>
            {
                retrying(attempt, &e, readiness);
                if !PRODUCE_RETRY.sleep(attempt, stop).await {
                    return Err(EnrichError::Stopped);
                }
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

/// Reads from the broker that a loop cannot go on without (a partition's
/// state, the link table, the join group's offsets at start-up): a
/// transient failure (the broker away) holds readiness at
/// `kafka_unreachable` and is tried again as produces are
/// ([`PRODUCE_RETRY`]), for as long as it lasts; a permanent one is the
/// stage's error. [`EnrichError::Stopped`] when shutdown comes first.
pub(super) async fn read_retrying<T, F, Fut>(
    what: &str,
    readiness: &Readiness,
    stop: &CancellationToken,
    mut read: F,
) -> Result<T, EnrichError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EnrichError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let e = tokio::select! {
            r = read() => match r {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!(what, attempts = attempt, "the broker answers again");
                        readiness.clear(Reason::KafkaUnreachable);
                    }
                    return Ok(v);
                }
                Err(e) => e,
            },
            () = stop.cancelled() => return Err(EnrichError::Stopped),
        };
        if !e.is_transient() {
            return Err(e);
        }
        readiness.fail(
            Reason::KafkaUnreachable,
            format_args!("{what}, attempt {attempt}: {e}"),
        );
        tracing::warn!(what, attempt, error = %e, kind = ErrorKind::ReadBack.as_str(), "read failed; retrying");
        metrics::counter!(Metric::Errors.name(), "error" => ErrorKind::ReadBack.as_str())
            .increment(1);
        if !PRODUCE_RETRY.sleep(attempt, stop).await {
            return Err(EnrichError::Stopped);
        }
    }
}

/// After the broker refused some records of `step`, queued ahead of their
/// acknowledgement ([`BatchProducer::queue_together`]; `failed` says how):
/// a transient failure sends the whole step again, retried as
/// [`produce_batch`] retries; a permanent one is [`EnrichError::Produce`].
pub(super) async fn resend(
    producer: &BatchProducer,
    failed: BatchError,
    step: &[Target<'_>],
    stop: &CancellationToken,
    readiness: &Readiness,
) -> Result<(), EnrichError> {
    if !ErrorClass::of(&failed.first).is_transient() {
        return Err(EnrichError::Produce {
            attempts: 1,
            source: failed.first,
        });
    }
    retrying(0, &failed, readiness);
    produce_batch(producer, &[step], stop, readiness).await
}

/// Says a transient produce failure `e` of attempt `attempt` (0: the
/// outputs queued ahead) is retried: readiness, one warn line, the count
/// ErrorKind::emit keeps.
fn retrying(attempt: u32, e: &BatchError, readiness: &Readiness) {
    // A full local queue that a wait did not drain is its own reason: the
    // broker answers, but not fast enough.
    let reason = match ErrorClass::of(&e.first) {
        ErrorClass::QueueFull => Reason::ProducerQueueStuck,
        _ => Reason::KafkaUnreachable,
    };
    readiness.fail(
        reason,
        format_args!("produce, attempt {attempt}: {}", e.first),
    );
    tracing::warn!(attempt, error = %e, kind = ErrorKind::Produce.as_str(), "produce failed; retrying the batch");
    metrics::counter!(Metric::Errors.name(), "error" => ErrorKind::Produce.as_str()).increment(1);
}

/// Commits `offsets`: asynchronously while running, synchronously once
/// stopping (the process is about to exit).
pub(super) fn commit<C: ConsumerContext>(
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
        ErrorKind::Commit.emit(Metric::Errors.name(), &e, "offset commit failed");
    }
}

/// The encoded dead letter for a record that is not a `xoflow.v1.Event`.
pub(super) fn undecodable(m: &BorrowedMessage<'_>, err: &dyn std::fmt::Display) -> Vec<u8> {
    dead_letter::undecodable(
        Stage::Enrich,
        m.payload().unwrap_or_default(),
        (m.topic(), m.partition(), m.offset()),
        "xoflow.v1.Event",
        err,
        clock::now_unix_millis(),
    )
    .encode_to_vec()
}

/// Dead letters as records: unkeyed.
pub(super) fn dead_letter_records(dead: &[Vec<u8>]) -> Vec<Outgoing<'_>> {
    dead.iter().map(|b| Outgoing::keyed(&[], b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_retries_never_give_up_and_each_wait_is_capped() {
        let waits: Vec<u128> = (1..7).map(|a| PRODUCE_RETRY.delay(a).as_millis()).collect();
        assert_eq!(waits, [400, 800, 1600, 3200, 5000, 5000]);
        assert!(PRODUCE_RETRY.retries_after(u32::MAX - 1));
        assert!(PRODUCE_RETRY.wait(1_000) <= Duration::from_secs(5));
    }

    /// A broker that is not there (a closed port): the produce is retried
    /// past the old bound of 5 attempts, readiness says why, and shutdown
    /// ends the wait at once with nothing acknowledged.
    #[tokio::test]
    async fn a_missing_broker_is_retried_until_shutdown_and_readiness_says_so() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let kafka = xoflow_common::kafka::KafkaConfig {
            message_timeout: Duration::from_millis(300),
            ..xoflow_common::kafka::KafkaConfig::with_brokers(format!("127.0.0.1:{closed}"))
        };
        let producer = kafka.batch_producer().expect("producer");
        let health = xoflow_common::admin::Health::new();
        let readiness = health.register("enrich");
        readiness.set(true);
        let stop = CancellationToken::new();
        let produce = tokio::spawn({
            let (stop, readiness) = (stop.clone(), readiness.clone());
            async move {
                let records = [Outgoing::keyed(b"k", b"v")];
                produce_batch(&producer, &[&[("en", None, &records)]], &stop, &readiness).await
            }
        });
        // Attempt 6 means the old bound (5 attempts) was passed.
        let until = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let reasons = health.check().err().unwrap_or_default();
            let attempt = reasons.iter().find_map(|r| {
                let rest = r.strip_prefix("enrich: kafka_unreachable (produce, attempt ")?;
                rest[..rest.find(':')?].parse::<u32>().ok()
            });
            if attempt.is_some_and(|a| a >= 6) {
                break;
            }
            assert!(!produce.is_finished(), "gave up: {reasons:?}");
            assert!(tokio::time::Instant::now() < until, "{reasons:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), produce)
            .await
            .expect("shutdown interrupts the retry")
            .expect("task");
        assert!(matches!(result, Err(EnrichError::Stopped)), "{result:?}");
    }
}
