//! A broker reachability probe for readiness: a stage that is idle, or only
//! consuming, learns of a broker outage from nothing else.
//!
//! Every [`PROBE_EVERY`] a metadata request for one topic (one round trip,
//! through a client that never joins a group) is made. One topic, never
//! all: librdkafka 2.12 crashed (SIGSEGV comparing a null topic name in its
//! metadata cache) on Tansu 0.6's answer to a request for every topic. A
//! failure holds
//! [`Reason::KafkaUnreachable`], the next success clears it. The probe
//! clears only what it set, so a produce still being retried keeps its own
//! hold on the reason.

use std::{sync::Arc, time::Duration};

use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use tokio_util::sync::CancellationToken;

use super::KafkaConfig;
use crate::admin::{Readiness, Reason};

/// How often the broker is asked; also the longest a request may take.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Probes until `stop` is cancelled. A client that cannot even be built
/// (bad settings) ends the probe with a warning; the stage itself fails on
/// the same settings.
pub async fn probe(
    kafka: KafkaConfig,
    topic: String,
    every: Duration,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let client: BaseConsumer<DefaultConsumerContext> = match kafka.reader() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "kafka probe not started");
            return;
        }
    };
    let client = Arc::new(client);
    let mut holding = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let (c, t) = (client.clone(), topic.clone());
        // librdkafka's metadata call blocks: off the async workers.
        let answer = tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&t), every)).await;
        match answer {
            Ok(Ok(_)) if holding => {
                readiness.clear(Reason::KafkaUnreachable);
                holding = false;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                readiness.fail(Reason::KafkaUnreachable, format_args!("metadata: {e}"));
                holding = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::Health;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_that_is_not_there_turns_readiness_off() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let kafka = KafkaConfig::with_brokers(format!("127.0.0.1:{closed}"));
        let health = Health::new();
        let readiness = health.register("enrich");
        readiness.set(true);
        let stop = CancellationToken::new();
        let task = tokio::spawn(probe(
            kafka,
            "e".into(),
            Duration::from_millis(200),
            readiness.clone(),
            stop.clone(),
        ));
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while !readiness.holds(Reason::KafkaUnreachable) {
            assert!(tokio::time::Instant::now() < until, "{:?}", health.check());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reasons = health.check().expect_err("not ready");
        assert!(
            reasons[0].starts_with("enrich: kafka_unreachable (metadata:"),
            "{reasons:?}"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stop ends the probe")
            .expect("task");
    }
}
