//! The resolve loop: events → customer-keyed repartition topic.
//!
//! In: batches of `xoflow.v1.Event` from the events and backfill topics
//! (only the identity is decoded, as `EventIdentityView`). Out, per batch
//! and in this order: the links it learnt to `<group>.links`, the original
//! event bytes to `<group>.repartition` keyed by customer id (`\0<event id>`
//! when none was found), undecodable records to the dead-letter topic; then
//! the input offsets are committed.

use std::time::Duration;

use rdkafka::{
    consumer::{BaseConsumer, StreamConsumer},
    message::Message,
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    kafka::{BatchProducer, KafkaConfig, Outgoing, next_offsets, recv_batch},
    rebalance::RebalanceLog,
    telemetry::ErrorKind,
};
use xoflow_proto::{Message as _, v1::EventIdentityView};

use super::{
    EnrichError, InternalTopics, UNRESOLVED,
    output::{self, CONSUMER_ERROR_PAUSE},
    restore::links_record,
};
use crate::{
    EnrichConfig,
    identity::Links,
    telemetry::{self, Metric},
};

pub(super) struct Resolver<'a> {
    pub consumer: &'a StreamConsumer<RebalanceLog>,
    /// Assigned to every links partition, positioned after the read-back.
    pub follower: BaseConsumer,
    pub links: Links,
    pub producer: &'a BatchProducer,
    pub kafka: &'a KafkaConfig,
    pub cfg: &'a EnrichConfig,
    pub internal: &'a InternalTopics,
}

impl Resolver<'_> {
    pub async fn run(mut self, stop: &CancellationToken) -> Result<(), EnrichError> {
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
                    ErrorKind::Consume.emit(Metric::Errors.name(), &e, "kafka consumer error");
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                    continue;
                }
            };
            self.follow_links();
            let mut dead = Vec::new();
            let mut events = Vec::with_capacity(batch.len());
            for m in &batch {
                // Only the identity is needed here; the join decodes the rest.
                match EventIdentityView::decode(m.payload().unwrap_or_default()) {
                    Ok(e) => events.push((m, e)),
                    Err(err) => dead.push(output::undecodable(m, &err)),
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
            let dead_out = output::dead_letter_records(&dead);
            // Links before the events they resolve, so that another instance
            // following the links topic knows them as early as possible.
            output::produce_batch(
                self.producer,
                &[
                    (&self.internal.links, None, &links_out),
                    (&self.internal.repartition, None, &forward),
                    (&self.kafka.topics.dead_letters, None, &dead_out),
                ],
            )
            .await?;
            let offsets = next_offsets(batch.iter()).map_err(EnrichError::Commit)?;
            output::commit(self.consumer, &offsets, stop);
            telemetry::BatchResolved {
                records: forward.len() as u64,
                dead_letters: dead_out.len() as u64,
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
                    ErrorKind::Follow.emit(Metric::Errors.name(), &e, "links topic read failed");
                    break;
                }
            }
        }
    }
}
