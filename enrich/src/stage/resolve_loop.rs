//! The resolve loop: events → customer-keyed repartition topic, for the
//! events not already in their customer's partition.
//!
//! In: batches of `xoflow.v1.Event` from the events and backfill topics
//! (only the identity is decoded, as `EventIdentityView`). It learns links
//! from every event, but forwards only those the join does not read from
//! the events topic itself: every event but the *direct* ones (an events
//! topic record keyed by its own customer id, see [`super::is_direct`]);
//! backfill events are all forwarded (the join does not read that topic).
//! Out, per batch and in this order: the original event bytes to
//! `<group>.repartition` keyed by customer id (`\0<first weak identifier>`
//! when none was found, `\0<event id>` without any), and after them a link
//! notice per link learnt; the links it learnt to `<group>.links`; undecodable records to
//! the dead-letter topic; then the input offsets are committed.
//!
//! An event known only by weak identifiers that no link resolves yet waits
//! (in [`Waiting`], up to the join's `max_hold`) for the link: it usually
//! comes with another event of the customer read from another partition a
//! moment later. Its partition is committed only below it meanwhile.

use std::{collections::HashMap, time::Duration};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, StreamConsumer},
    message::Message,
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::Readiness,
    clock,
    kafka::{BatchProducer, KafkaConfig, Outgoing, close::Closing, next_offsets},
    rebalance::{Batch, Batches, Change, RebalanceLog},
    telemetry::ErrorKind,
};
use xoflow_proto::{Message as _, v1::EventIdentityView};

use super::{
    EnrichError, InternalTopics, is_direct, link_notice, link_notice_records, output,
    restore::links_record, unresolved_key,
};
use crate::{
    EnrichConfig,
    identity::{Links, Waiter, Waiting, wait_identifier},
    telemetry::{self, Metric},
};

pub(super) struct Resolver<'a> {
    pub consumer: &'a StreamConsumer<RebalanceLog>,
    /// Assigned to every links partition, positioned after the read-back.
    pub follower: Closing<BaseConsumer>,
    pub links: Links,
    /// Events waiting for the link that resolves them.
    pub waiting: Waiting,
    /// Per input partition, the offset after the highest one read: the
    /// commit position of a partition once nothing of it waits.
    pub read: HashMap<(String, i32), i64>,
    pub producer: &'a BatchProducer,
    pub kafka: &'a KafkaConfig,
    pub cfg: &'a EnrichConfig,
    pub internal: &'a InternalTopics,
    /// Says `kafka_unreachable` while a produce is being retried.
    pub readiness: &'a Readiness,
}

impl Resolver<'_> {
    pub async fn run(mut self, stop: &CancellationToken) -> Result<(), EnrichError> {
        let max_hold_ms = self.cfg.join.max_hold.as_millis() as i64;
        let tick = (self.cfg.join.max_hold / 4).max(Duration::from_millis(50));
        let mut batches = Batches::new(self.consumer);
        loop {
            // Waiting events are due by wall-clock time even when no input
            // arrives: wake up after `tick` without a message then.
            let idle = (!self.waiting.is_empty()).then_some(tick);
            // Both loops commit below events still held, often inside a
            // record batch: `Batches` checks where the broker resumes such a
            // partition, and hands over the rebalances before the records
            // fetched after them.
            let Batch {
                changes,
                records: batch,
            } = match batches
                .next(
                    self.cfg.batch_max_records,
                    self.cfg.batch_max_wait,
                    idle,
                    stop,
                    crate::telemetry::Metric::Errors.name(),
                )
                .await
            {
                // Stopping: waiting events were not committed; whoever
                // reads these partitions next reads them again.
                Ok(_) if stop.is_cancelled() => return Ok(()),
                Ok(b) => b,
                Err(e) => {
                    output::consumer_error(&e).await;
                    continue;
                }
            };
            for change in changes {
                if let Change::Revoked { topic, partition } = change {
                    self.waiting.drop_partition(&topic, partition);
                    self.read.remove(&(topic, partition));
                }
            }
            self.follow_links();
            let now = clock::now_unix_millis();
            let mut dead = Vec::new();
            let mut events = Vec::with_capacity(batch.len());
            // Per partition, not per record: where reading has got to.
            for e in next_offsets(batch.iter())
                .map_err(EnrichError::Commit)?
                .elements()
            {
                if let Offset::Offset(next) = e.offset() {
                    let at = self
                        .read
                        .entry((e.topic().to_owned(), e.partition()))
                        .or_insert(next);
                    *at = (*at).max(next);
                }
            }
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
            let mut keys: Vec<Vec<u8>> = Vec::with_capacity(events.len());
            let mut forward: Vec<&[u8]> = Vec::with_capacity(events.len());
            let mut direct = 0u64;
            for (m, e) in &events {
                // The join reads direct events from the events topic: they
                // are in their customer's partition already.
                if m.topic() == self.kafka.topics.events
                    && is_direct(m.key().unwrap_or_default(), e.customer.as_ref())
                {
                    direct += 1;
                    continue;
                }
                let payload = m.payload().unwrap_or_default();
                let resolved = self.links.resolve_keeping(e.customer.as_ref());
                match resolved.customer_id {
                    Some(c) => keys.push(c.into_bytes()),
                    None if max_hold_ms > 0 && Waiting::worth_waiting(e.customer.as_ref()) => {
                        self.waiting.hold(Waiter {
                            topic: m.topic().to_owned(),
                            partition: m.partition(),
                            offset: m.offset(),
                            event_id: e.event_id.clone(),
                            customer: e.customer.clone().unwrap_or_default(),
                            payload: payload.to_vec(),
                            since_ms: now,
                        });
                        continue;
                    }
                    None => keys.push(unresolved_key(
                        wait_identifier(e.customer.as_ref()).unwrap_or(&e.event_id),
                    )),
                }
                forward.push(payload);
            }
            let released = self.waiting.release(&mut self.links, now, max_hold_ms);
            for (w, r) in &released {
                keys.push(match &r.customer_id {
                    Some(c) => c.clone().into_bytes(),
                    None => {
                        unresolved_key(wait_identifier(Some(&w.customer)).unwrap_or(&w.event_id))
                    }
                });
                forward.push(&w.payload);
            }
            // Each new link is announced to the join partition where events
            // of its identifier wait unresolved, after the events of this
            // batch (which it may resolve there).
            let notices = link_notice_records(&new_links);
            let forward: Vec<Outgoing<'_>> = forward
                .iter()
                .zip(&keys)
                .map(|(p, k)| Outgoing::keyed(k, p))
                .chain(notices.iter().map(|(k, c)| link_notice(k, c)))
                .collect();
            let links_out: Vec<Outgoing<'_>> = new_links
                .iter()
                .map(|(h, c)| Outgoing::keyed(h.as_bytes(), c.as_bytes()))
                .collect();
            let dead_out = output::dead_letter_records(&dead);
            // A link store that failed may have read as no link: nothing
            // of this batch goes out, nor is committed.
            if let Some(e) = self.links.take_error() {
                return Err(EnrichError::LinkStore(e));
            }
            // The events and link notices before the links: a link is
            // announced (notice) only when it is new to the table, so a crash
            // after the links landed but before their notices would leave the
            // events waiting for them unresolved for good. This way a replay
            // finds the link missing from the table and announces it again.
            output::produce_batch(
                self.producer,
                &[
                    &[
                        (&self.internal.repartition, None, &forward),
                        (&self.kafka.topics.dead_letters, None, &dead_out),
                    ],
                    &[(&self.internal.links, None, &links_out)],
                ],
                stop,
                self.readiness,
            )
            .await?;
            let offsets = self.commit_positions(&batch, &released)?;
            output::commit(self.consumer, &offsets, stop);
            telemetry::BatchResolved {
                taken: batch.len() as u64,
                records: forward.len() as u64,
                direct,
                dead_letters: dead_out.len() as u64,
                links_learnt: links_out.len() as u64,
                links: self.links.len() as u64,
                link_store_buffer: self.links.write_buffer_bytes(),
                waiting: self.waiting.len() as u64,
            }
            .emit();
        }
    }

    /// The offsets to commit for the partitions this round touched (read
    /// from, or released from): after the highest offset read, but never
    /// past an event still waiting.
    fn commit_positions(
        &self,
        batch: &[rdkafka::message::BorrowedMessage<'_>],
        released: &[(Waiter, crate::identity::Resolved)],
    ) -> Result<TopicPartitionList, EnrichError> {
        let mut touched: Vec<(&str, i32)> = batch
            .iter()
            .map(|m| (m.topic(), m.partition()))
            .chain(
                released
                    .iter()
                    .map(|(w, _)| (w.topic.as_str(), w.partition)),
            )
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut tpl = TopicPartitionList::with_capacity(touched.len());
        for (topic, partition) in touched {
            let Some(read) = self.read.get(&(topic.to_owned(), partition)) else {
                continue;
            };
            let next = self
                .waiting
                .lowest_offset(topic, partition)
                .unwrap_or(*read);
            tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(EnrichError::Commit)?;
        }
        Ok(tpl)
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
