//! B1: raw rdkafka produce → consume of the same encoded events, the
//! ceiling every stage is compared against: consumed records per second
//! as a steady state ([`Flow`]), with the whole run beside it.

use std::time::Duration;

use anyhow::Context;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use xoflow_app::Config;
use xoflow_common::kafka::Outgoing;

use super::{
    report::Figure,
    support::{Flow, wait_assigned},
};

pub(super) async fn measure(
    cfg: &Config,
    topic: &str,
    encoded: &[Vec<u8>],
) -> anyhow::Result<Figure> {
    cfg.kafka.ensure_topics(&[topic]).await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("{topic}-g"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let n = encoded.len();
    // The earlier method timed from here, the consumer's group join
    // included; the steady state starts once records flow.
    let mut flow = Flow::start(n as u64);
    consumer.subscribe(&[topic])?;
    wait_assigned(&consumer, topic).await?;
    let producer = cfg.kafka.batch_producer()?;
    let consume = async {
        let mut got = 0u64;
        while got < n as u64 {
            let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .context("B1: consumer stalled")??;
            got += u64::from(m.payload().is_some());
            flow.observe(got);
        }
        anyhow::Ok(())
    };
    let produce = async {
        for chunk in encoded.chunks(10_000) {
            let records: Vec<Outgoing<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| Outgoing::keyed(if i % 2 == 0 { b"a" } else { b"b" }, b))
                .collect();
            producer.send_all(topic, &records).await?;
        }
        anyhow::Ok(())
    };
    let (c, p) = tokio::join!(consume, produce);
    c?;
    p?;
    Ok(flow.rate())
}
