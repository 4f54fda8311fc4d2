//! The join loop: repartition topic → enriched topic, state per partition.
//!
//! In: batches of `xoflow.v1.Event` from `<group>.repartition`, keyed by the
//! customer the resolve loop chose, and the rebalances recorded by the
//! consumer's [`RebalanceLog`]. Out, per batch: the released
//! `EnrichedEvent`s to the enriched topic (key = event id, see
//! [`Released::into_record`]), dead letters, and the changed customers'
//! state to the changelog partition of the same number; then input offsets
//! are committed, each partition's only below the lowest event its lateness
//! buffer still holds.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::Message,
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::Readiness,
    clock,
    kafka::{BatchProducer, KafkaConfig, Outgoing, recv_batch},
    rebalance::{Change, RebalanceLog},
};
use xoflow_proto::{
    Message as _,
    v1::{Event, IdentityResolution},
};

use super::{EnrichError, InternalTopics, UNRESOLVED, output, restore};
use crate::{
    EnrichConfig,
    identity::Resolved,
    join::{Join, Released},
    telemetry,
};

/// Encoded changelog records (customer id, state; empty deletes).
type StateRecords = Vec<(String, Vec<u8>)>;

pub(super) struct Joiner<'a> {
    pub consumer: &'a StreamConsumer<RebalanceLog>,
    pub producer: &'a BatchProducer,
    pub kafka: &'a KafkaConfig,
    pub cfg: &'a EnrichConfig,
    pub internal: &'a InternalTopics,
    /// One operator per assigned partition: a customer's state lives with
    /// its partition.
    pub joins: HashMap<i32, Join>,
    /// Says `kafka_unreachable` while a produce is being retried.
    pub readiness: &'a Readiness,
}

impl Joiner<'_> {
    pub async fn run(mut self, stop: &CancellationToken) -> Result<(), EnrichError> {
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
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    output::consumer_error(&e).await;
                    continue;
                }
            };
            // Committed offsets sit below held events, inside record
            // batches: check where the broker resumes such a partition.
            self.consumer.context().admit(self.consumer, &mut batch);
            self.rebalance().await?;
            let now = clock::now_unix_millis();
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
                        dead.push(output::undecodable(m, &err));
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
            let c: StateRecords = j
                .take_changes()
                .into_iter()
                .map(|(id, s)| (id, s.map(|s| s.encode_to_vec()).unwrap_or_default()))
                .collect();
            if !c.is_empty() {
                changes.push((*p, c));
            }
        }
        let encoded: Vec<(String, Vec<u8>)> =
            released.into_iter().map(Released::into_record).collect();
        let enriched: Vec<Outgoing<'_>> = encoded
            .iter()
            .map(|(id, b)| Outgoing::keyed(id.as_bytes(), b))
            .collect();
        let dead_out = output::dead_letter_records(dead);
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
        let mut sends: Vec<output::Send<'_>> = vec![
            (&self.kafka.topics.enriched, None, &enriched),
            (&self.kafka.topics.dead_letters, None, &dead_out),
        ];
        for (p, records) in &changelog {
            sends.push((&self.internal.changelog, Some(*p), records));
        }
        output::produce_batch(self.producer, &sends, stop, self.readiness).await?;

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
        output::commit(self.consumer, &tpl, stop);
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
                Change::Revoked { partition, .. } => {
                    // Held events were not committed: the next owner reads
                    // them again.
                    tracing::info!(partition, "join partition revoked");
                    self.joins.remove(&partition);
                }
                Change::Assigned { partition, .. } => {
                    if !self.joins.contains_key(&partition) {
                        let join = self.restore(partition).await?;
                        self.joins.insert(partition, join);
                    }
                }
            }
        }
        Ok(())
    }

    async fn restore(&self, partition: i32) -> Result<Join, EnrichError> {
        restore::join_state(self.kafka, self.cfg, self.internal, partition).await
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
