//! B1: raw rdkafka produce → consume of the same encoded events, the
//! ceiling every stage is compared against.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use xoflow_app::Config;
use xoflow_common::kafka::Outgoing;

pub(super) async fn measure(cfg: &Config, topic: &str, encoded: &[Vec<u8>]) -> anyhow::Result<f64> {
    cfg.kafka.ensure_topics(&[topic]).await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("{topic}-g"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[topic])?;
    let producer = cfg.kafka.batch_producer()?;
    let start = Instant::now();
    let n = encoded.len();
    let consume = async {
        let mut got = 0usize;
        while got < n {
            let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .context("B1: consumer stalled")??;
            got += usize::from(m.payload().is_some());
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
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
