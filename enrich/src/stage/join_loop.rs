//! The join loop: events (direct) and repartition topic → enriched topic,
//! state per partition.
//!
//! In: batches from two topics, partition p of both assigned together
//! (the range assignor over two topics of the same partition count, checked
//! at start-up; see [`super::restore::co_partitioned`]):
//! - the events topic, of which only *direct* events are handled: those
//!   whose record key is their own customer id (the collectors key an event
//!   by its customer id when it carries one), which are therefore already in
//!   their customer's partition. Every other record there is skipped: the
//!   resolve loop forwards it to the repartition topic.
//! - `<group>.repartition`: `xoflow.v1.Event`s keyed by the customer the
//!   resolve loop chose (`\0<identifier>` when none; with a
//!   `xoflow-revision` header when moved here after waiting for a link),
//!   link notices (`xoflow-link` header) and erasure notices.
//!
//! and the rebalances recorded by the consumer's [`RebalanceLog`]. Out, per
//! batch: the released `EnrichedEvent`s to the enriched topic (key = event
//! id, see [`Released::key`]), repairs included, dead letters,
//! events a link resolved back to the repartition topic keyed by their
//! customer, and the changed state to the changelog partition of the same
//! number; then, once the outputs are acknowledged (while the next batch
//! is read: [`InFlight`]), input offsets are committed per (topic,
//! partition), each only below the lowest event of that topic its lateness
//! buffer still holds.
//!
//! The instance's memory budget for the customers' histories
//! (`max_history_bytes`) is split evenly over the partitions it holds, again
//! at every rebalance; each partition's join keeps within its share,
//! shedding after a batch's outputs are sent, in the time the next batch
//! is gathered ([`Join::shed_if_over`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders},
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::Readiness,
    clock,
    kafka::{BatchProducer, KafkaConfig, Outgoing, Queued, Target},
    rebalance::{Batch, Batches, Change, RebalanceLog},
    telemetry::ErrorKind,
};
use xoflow_proto::{
    Message as _,
    v1::{Event, EventIdentityView, IdentityResolution},
};

use super::{
    ERASE_HEADER, EnrichError, InternalTopics, LINK_HEADER, REVISION_HEADER, UNRESOLVED, is_direct,
    output, restore,
};
use crate::{
    EnrichConfig,
    alert::AlertStats,
    identity::Resolved,
    join::{ChangelogRecords, Input, Join, JoinStats, Released},
    local_store::LocalStore,
    telemetry::{self, Metric},
};

pub(super) struct Joiner<'a> {
    pub consumer: &'a StreamConsumer<RebalanceLog>,
    pub producer: &'a BatchProducer,
    pub kafka: &'a KafkaConfig,
    pub cfg: &'a EnrichConfig,
    pub internal: &'a InternalTopics,
    /// One operator per assigned partition: a customer's state lives with
    /// its partition.
    pub joins: HashMap<i32, Join>,
    /// Where the join partitions keep their cold customers past the recent
    /// ones (`[enrich.cold_customers]`; none: in the heap).
    pub cold_store: Option<Arc<LocalStore>>,
    /// Per input topic and assigned partition, the offset after the
    /// highest one read, and the offset last committed (or to be, once the
    /// outputs in flight are acknowledged).
    pub read: HashMap<(Input, i32), i64>,
    pub committed: HashMap<(Input, i32), i64>,
    /// Says `kafka_unreachable` while a produce is being retried.
    pub readiness: &'a Readiness,
    /// Output buffers, emptied, for the next flushes: two sets alternate
    /// under load, the one a flush fills and the one in flight.
    pub outputs: Vec<Outputs>,
    /// The last batch's outputs, queued but not yet acknowledged, and its
    /// offsets to commit once they are (see [`InFlight`]).
    pub in_flight: Option<InFlight>,
    /// When the join last logged its shedding, and what it shed since.
    pub shed_log: telemetry::ShedLog,
}

/// A batch whose state is in the changelog and whose outputs (enriched
/// events, dead letters) are queued, awaited while the next batch is read
/// and joined, before anything of that one is sent. Its input offsets are
/// committed once the outputs are acknowledged. The wait for the
/// acknowledgements took 20 of 72 ms per 5,000-record batch with nothing
/// else to do (BENCHMARKS.md, "Larger enrich batches").
///
/// Only the last step goes ahead: the changelog is acknowledged before the
/// next poll, where a rebalance callback may hand a partition to another
/// member, which then restores a changelog holding all this batch's state
/// and reads from below its offsets (not committed yet): it emits the
/// outputs again, at the revisions recorded, as after a crash between the
/// changelog and the outputs. (So does this member for the partitions it
/// keeps in an eager rebalance: the callbacks read the group's commits
/// before this batch's are made.)
pub(super) struct InFlight {
    queued: Queued,
    /// The queued records' bytes, kept to send them again if the broker
    /// refuses them; back to [`Joiner::outputs`] once acknowledged.
    outputs: Outputs,
    dead: Vec<Vec<u8>>,
    commit: TopicPartitionList,
}

/// A batch's released outputs and their encoded values (one buffer; `ends`
/// marks where each value ends), kept from one flush to the next. A fresh
/// vector per flush grew by doubling, every time into new pages the kernel
/// had to zero (22 % of the process's samples in B5's enrich run:
/// BENCHMARKS.md, "Larger enrich batches"), and each output's value was an
/// allocation of its own.
#[derive(Default)]
pub(super) struct Outputs {
    released: Vec<Released>,
    values: Vec<u8>,
    ends: Vec<usize>,
}

impl Outputs {
    /// What a buffer keeps regardless of use: a quiet flush does not give
    /// back what the next busy one needs again.
    const KEEP_BYTES: usize = 16 << 20;

    /// A flush's buffers, emptied for the next. Each keeps its capacity
    /// unless that is more than twice what this flush used (and more than
    /// [`Outputs::KEEP_BYTES`]): then it shrinks to what was used, so that
    /// one burst (a partition drained at a rebalance) does not stay
    /// resident. Shrinking to a fixed size instead cut a full batch's
    /// buffers below its need at every flush: 20,000 outputs take more than
    /// 16 MiB, and each flush grew them again into pages the kernel zeroed.
    fn recycle(mut self) -> Self {
        keep_for_next(&mut self.released);
        keep_for_next(&mut self.values);
        keep_for_next(&mut self.ends);
        self
    }

    /// The enriched records: each released output keyed by its event id,
    /// its value in the shared buffer.
    fn records(&self) -> Vec<Outgoing<'_>> {
        self.released
            .iter()
            .zip(self.ends.iter().scan(0, |start, &end| {
                let span = *start..end;
                *start = end;
                Some(span)
            }))
            .map(|(r, span)| Outgoing::keyed(r.key().as_bytes(), &self.values[span]))
            .collect()
    }
}

/// Empties `buf`, keeping its capacity by the rule of [`Outputs::recycle`].
fn keep_for_next<T>(buf: &mut Vec<T>) {
    let keep = buf.len().max(Outputs::KEEP_BYTES / size_of::<T>().max(1));
    buf.clear();
    if buf.capacity() > keep.saturating_mul(2) {
        buf.shrink_to(keep);
    }
}

impl Joiner<'_> {
    pub async fn run(mut self, stop: &CancellationToken) -> Result<(), EnrichError> {
        let mut batches = Batches::new(self.consumer);
        let tick = (self.cfg.join.max_hold / 4).max(Duration::from_millis(50));
        let rescore_every = self.cfg.alerts.rescore_interval();
        let mut rescored = tokio::time::Instant::now();
        // How long the shedding after the last batch took.
        let mut shed_took = Duration::ZERO;
        loop {
            // Held events are due by wall-clock time even when no input
            // arrives: wake up after `tick` without a message then; and in
            // time for the next silence re-scoring.
            let holding = self.joins.values().any(|j| j.held() > 0);
            let until_rescore = rescore_every.saturating_sub(rescored.elapsed());
            let mut wake = if holding {
                Some(tick.min(until_rescore.max(Duration::from_millis(1))))
            } else {
                Some(until_rescore.max(Duration::from_millis(1)))
            };
            // Outputs in flight are landed (and their offsets committed) by
            // the next flush: soon, even when no input follows.
            if self.in_flight.is_some() {
                wake = wake.map(|w| w.min(IN_FLIGHT_IDLE));
            }
            // Committed offsets sit below held events, inside record
            // batches: `Batches` checks where the broker resumes such a
            // partition, and hands over the rebalances before the records
            // fetched after them.
            let batch = batches
                .next(
                    self.cfg.batch_max_records,
                    self.cfg
                        .batch_max_wait
                        .saturating_sub(std::mem::take(&mut shed_took)),
                    wake,
                    stop,
                    crate::telemetry::Metric::Errors.name(),
                )
                .await;
            let Batch {
                changes,
                records: batch,
            } = match batch {
                Ok(b) => b,
                Err(e) => {
                    output::consumer_error(&e).await;
                    continue;
                }
            };
            if !changes.is_empty() {
                // Landed before the partitions' state is dropped or
                // restored. Its offsets are committed only now, after the
                // rebalance callbacks read the group's commits: the
                // partitions this member keeps read that batch again (as
                // they read the batch a callback came in), and a commit
                // for a partition gone to another member lands late, below
                // outputs already acknowledged.
                self.land(stop).await?;
            }
            self.rebalance(changes, stop).await?;
            let now = clock::now_unix_millis();
            let mut dead = Vec::new();
            let mut read = telemetry::JoinRead::default();
            for m in &batch {
                let p = m.partition();
                let input = self.input_of(m.topic());
                if !self.joins.contains_key(&p) {
                    // Assigned without a recorded change (none is dropped,
                    // but a record of a partition is never handled
                    // without its state): restore now.
                    let join = self.restore(p).await?;
                    self.joins.insert(p, join);
                    self.split_history_budget();
                }
                let next = self.read.entry((input, p)).or_insert(0);
                *next = (*next).max(m.offset() + 1);
                let key = m.key().unwrap_or_default();
                let Some(j) = self.joins.get_mut(&p) else {
                    continue;
                };
                if input == Input::Events {
                    read.events += 1;
                    // Only direct events; the resolve loop forwards the
                    // others (and dead-letters what does not decode).
                    // Decoded whole at once: most events are direct (79%
                    // of the generator's), and the event is needed whole
                    // when it is. Deciding on `EventIdentityView` first
                    // cost more there: 726-739 ns per record against
                    // 699-715 (the view alone is 173-176 ns).
                    let payload = m.payload().unwrap_or_default();
                    if key.is_empty() {
                        continue;
                    }
                    let event = match Event::decode(payload) {
                        Ok(e) => e,
                        // The resolve loop dead-letters what its identity
                        // view cannot read, and forwards what is not
                        // direct; a direct event only the whole decode
                        // fails on, neither loop would handle: here.
                        Err(err) => {
                            if EventIdentityView::decode(payload)
                                .is_ok_and(|v| is_direct(key, v.customer.as_ref()))
                            {
                                dead.push(output::undecodable(m, &err));
                            }
                            continue;
                        }
                    };
                    if !is_direct(key, event.customer.as_ref()) {
                        continue;
                    }
                    j.offer_direct(event, Arc::<[u8]>::from(payload), m.offset(), now);
                    continue;
                }
                read.repartition += 1;
                if header(m, ERASE_HEADER).is_some() {
                    let erased = match key.strip_prefix(&[UNRESOLVED]) {
                        Some(identifier) => {
                            j.erase_identifier(&String::from_utf8_lossy(identifier))
                        }
                        // The notice's value names the customer's tenant.
                        None => j.erase_customer(
                            &String::from_utf8_lossy(m.payload().unwrap_or_default()),
                            &String::from_utf8_lossy(key),
                        ),
                    };
                    // Neither the customer id nor the identifier is logged.
                    tracing::info!(partition = p, held = erased, "erasure notice applied");
                    continue;
                }
                if header(m, LINK_HEADER).is_some() {
                    if let (Some(identifier), Ok(customer)) = (
                        key.strip_prefix(&[UNRESOLVED]),
                        std::str::from_utf8(m.payload().unwrap_or_default()),
                    ) {
                        j.link(&String::from_utf8_lossy(identifier), customer);
                    }
                    continue;
                }
                let payload = m.payload().unwrap_or_default();
                let event = match Event::decode(payload) {
                    Ok(e) => e,
                    Err(err) => {
                        dead.push(output::undecodable(m, &err));
                        continue;
                    }
                };
                let who = resolved_from_key(key, &event);
                let revision = header(m, REVISION_HEADER)
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                // The history keeps the record's bytes: the event is not
                // encoded again for it.
                j.offer_received(
                    event,
                    Arc::<[u8]>::from(payload),
                    who,
                    revision,
                    m.offset(),
                    now,
                );
            }
            read.emit();
            let stopping = stop.is_cancelled();
            if rescored.elapsed() >= rescore_every {
                rescored = tokio::time::Instant::now();
                for j in self.joins.values_mut() {
                    j.rescore(now);
                }
            }
            let mut flushed = self.flush(now, stopping, dead, stop).await?;
            // The batch's outputs are on their way: histories over their
            // budget are shed now, not before the outputs were sent
            // (`Join::shed_if_over`); their changelog records go with the
            // next batch's. The time it takes comes out of the next
            // batch's wait, where the events it held up are gathered.
            if !stopping {
                let started = std::time::Instant::now();
                self.shed(&mut flushed);
                shed_took = started.elapsed();
            }
            self.emit(flushed);
            if batch.is_empty() && stopping {
                return Ok(());
            }
        }
    }

    /// Releases what is due (everything when stopping), produces the state
    /// changes and queues the outputs, to be landed with the next flush
    /// (see [`InFlight`]; at once when stopping), which commits the offsets
    /// below what is still held.
    async fn flush(
        &mut self,
        now: i64,
        all: bool,
        dead: Vec<Vec<u8>>,
        stop: &CancellationToken,
    ) -> Result<Flushed, EnrichError> {
        let Outputs {
            mut released,
            mut values,
            mut ends,
        } = self.outputs.pop().unwrap_or_default();
        let mut changes: Vec<(i32, ChangelogRecords)> = Vec::new();
        let mut moves = Vec::new();
        let mut alerts = Vec::new();
        let mut alert_stats = AlertStats::default();
        let mut stats = JoinStats::default();
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
            moves.extend(j.take_moves());
            alerts.extend(j.take_alerts());
            let a = j.take_alert_stats();
            alert_stats.raised += a.raised;
            alert_stats.repeated += a.repeated;
            alert_stats.quiet += a.quiet;
            alert_stats.do_not_contact += a.do_not_contact;
            add_stats(&mut stats, j.take_stats());
            let c = j.take_changes();
            // A customer read or written wrong: nothing of this batch
            // goes out; the restart reads the state back.
            if let Some(e) = j.take_store_error() {
                return Err(EnrichError::CustomerStore(e));
            }
            if !c.is_empty() {
                changes.push((*p, c));
            }
        }
        for r in &mut released {
            r.encode_value(&mut values);
            ends.push(values.len());
        }
        let outputs = Outputs {
            released,
            values,
            ends,
        };
        let enriched = outputs.records();
        let dead_out = output::dead_letter_records(&dead);
        // Alerts keyed by customer: one customer's alerts stay in order.
        let alerts_encoded: Vec<(&str, Vec<u8>)> = alerts
            .iter()
            .map(|a| (a.customer_id.as_str(), a.encode_to_vec()))
            .collect();
        let alerts_out: Vec<Outgoing<'_>> = alerts_encoded
            .iter()
            .map(|(k, v)| Outgoing::keyed(k.as_bytes(), v))
            .collect();
        let changelog: Vec<(i32, Vec<Outgoing<'_>>)> = changes
            .iter()
            .map(|(p, c)| (*p, c.iter().map(|(k, v)| Outgoing::keyed(k, v)).collect()))
            .collect();
        // Events a link resolved, to their customers' partitions.
        let moved: Vec<(String, Arc<[u8]>, String)> = moves
            .into_iter()
            .map(|m| (m.customer_id, m.bytes, m.revision.to_string()))
            .collect();
        let moved_out: Vec<Outgoing<'_>> = moved
            .iter()
            .map(|(c, e, r)| Outgoing {
                key: c.as_bytes(),
                payload: e,
                headers: Some(OwnedHeaders::new().insert(Header {
                    key: REVISION_HEADER,
                    value: Some(r.as_bytes()),
                })),
            })
            .collect();
        // In these steps, each acknowledged before the next is sent: alerts
        // before the books that record them (a crash in between replays the
        // batch against the old books and raises the same alerts, same ids,
        // again: never fewer); events a link resolved before the state that
        // no longer holds them, and the state before the outputs it
        // records. A crash in between then never leaves an output (a
        // revision) that the changelog does not know: the replayed input
        // finds its events in their histories and emits them again at the
        // recorded revisions, or, if the state did not land, as if for the
        // first time. Within a step nothing depends on anything else (each
        // changelog partition records its own join partition), so a step
        // is one round trip however many partitions it writes.
        let changelog_sends: Vec<Target<'_>> = changelog
            .iter()
            .map(|(p, records)| (self.internal.changelog.as_str(), Some(*p), &records[..]))
            .collect();
        // The last batch's outputs are acknowledged before anything of
        // this one is sent.
        self.land(stop).await?;
        output::produce_batch(
            self.producer,
            &[
                &[(&self.kafka.topics.alerts, None, &alerts_out)],
                &[(&self.internal.repartition, None, &moved_out)],
                &changelog_sends,
            ],
            stop,
            self.readiness,
        )
        .await?;
        let queued = self
            .producer
            .queue_together(&[
                (&self.kafka.topics.enriched, None, &enriched),
                (&self.kafka.topics.dead_letters, None, &dead_out),
            ])
            .await;

        // Commit each assigned partition of each input topic up to what was
        // read, or below the lowest event of that topic it still holds;
        // only what moved. (A partition whose held events were released
        // without new reads moves too, so a quiet partition does not stay
        // committed behind what it emitted.) Once the outputs are
        // acknowledged.
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let Some(j) = self.joins.get(p) else { continue };
            for input in [Input::Events, Input::Repartition] {
                let Some(read) = self.read.get(&(input, *p)) else {
                    continue;
                };
                let next = j.lowest_held_offset(input).unwrap_or(*read);
                if self.committed.get(&(input, *p)) == Some(&next) {
                    continue;
                }
                tpl.add_partition_offset(self.topic_of(input), *p, Offset::Offset(next))
                    .map_err(EnrichError::Commit)?;
                self.committed.insert((input, *p), next);
            }
        }
        let records = enriched.len() as u64;
        let dead_letters = dead_out.len() as u64;
        drop(enriched);
        drop(dead_out);
        self.in_flight = Some(InFlight {
            queued,
            outputs,
            dead,
            commit: tpl,
        });
        // Nothing to wait for (a quiet flush), or stopping: now.
        if all || records + dead_letters == 0 {
            self.land(stop).await?;
        }
        Ok(Flushed {
            records,
            dead_letters,
            state_changes: changelog.iter().map(|(_, c)| c.len() as u64).sum(),
            moved: moved_out.len() as u64,
            stats,
            alerts: alert_stats,
        })
    }

    /// Sheds what is over the histories' budget (see [`Join::shed_if_over`])
    /// once a batch's outputs are sent, and adds what it shed to the
    /// batch's counts.
    fn shed(&mut self, flushed: &mut Flushed) {
        for j in self.joins.values_mut() {
            j.shed_if_over();
            add_stats(&mut flushed.stats, j.take_stats());
        }
    }

    /// The batch's telemetry: what it sent, and the state as its shedding
    /// left it.
    fn emit(&mut self, f: Flushed) {
        let history_bytes = self.joins.values().map(|j| j.history_bytes() as u64).sum();
        telemetry::BatchEnriched {
            records: f.records,
            dead_letters: f.dead_letters,
            state_changes: f.state_changes,
            held: self.joins.values().map(|j| j.held() as u64).sum(),
            moved: f.moved,
            stats: f.stats,
            alerts: f.alerts,
            history: self.joins.values().map(|j| j.history_events() as u64).sum(),
            history_bytes,
            history_budget: self.cfg.join.max_history_bytes as u64,
            waiting_for_reference: self
                .joins
                .values()
                .map(|j| j.waiting_for_reference() as u64)
                .sum(),
            waiting_for_link: self
                .joins
                .values()
                .map(|j| j.waiting_for_link() as u64)
                .sum(),
            links_remembered: self
                .joins
                .values()
                .map(|j| j.links_remembered() as u64)
                .sum(),
            customers: self.joins.values().map(|j| j.customers() as u64).sum(),
            customers_on_disk: self
                .joins
                .values()
                .map(|j| j.customers_on_disk() as u64)
                .sum(),
        }
        .emit(&mut self.shed_log);
    }

    /// Waits for the outputs in flight, if any; sends them again (with
    /// retries) if the broker refused them; then commits their batch's
    /// offsets, and keeps their buffers for a next batch.
    async fn land(&mut self, stop: &CancellationToken) -> Result<(), EnrichError> {
        let Some(InFlight {
            queued,
            outputs,
            dead,
            commit,
        }) = self.in_flight.take()
        else {
            return Ok(());
        };
        if let Err(e) = self.producer.settled(queued).await {
            let enriched = outputs.records();
            let dead_out = output::dead_letter_records(&dead);
            output::resend(
                self.producer,
                e,
                &[
                    (&self.kafka.topics.enriched, None, &enriched),
                    (&self.kafka.topics.dead_letters, None, &dead_out),
                ],
                stop,
                self.readiness,
            )
            .await?;
        }
        output::commit(self.consumer, &commit, stop);
        // At most the two sets that alternate are kept.
        if self.outputs.len() < 2 {
            self.outputs.push(outputs.recycle());
        }
        Ok(())
    }

    /// Acts on the assignments the rebalance callbacks recorded. A join
    /// partition's state serves partition p of both input topics: it is
    /// restored when either is assigned and dropped when either is revoked.
    /// Both move together (range assignor, equal partition counts); should
    /// one be revoked alone, the other is sent back to its committed offset,
    /// so that what the dropped state held is read again, by the state
    /// restored for it. A partition assigned in these changes is not sent
    /// back: it starts at its committed offset already, checked (the eager
    /// protocol revokes every partition and assigns the new share, often
    /// the same partitions again).
    async fn rebalance(
        &mut self,
        changes: Vec<Change>,
        stop: &CancellationToken,
    ) -> Result<(), EnrichError> {
        let mut dropped: Vec<i32> = Vec::new();
        let mut assigned: Vec<(String, i32)> = Vec::new();
        for change in changes {
            match change {
                Change::Revoked { topic, partition } => {
                    // Held events were not committed: the next owner reads
                    // them again.
                    tracing::info!(%topic, partition, "join partition revoked");
                    if self.joins.remove(&partition).is_some() {
                        dropped.push(partition);
                    }
                    for input in [Input::Events, Input::Repartition] {
                        self.read.remove(&(input, partition));
                        self.committed.remove(&(input, partition));
                    }
                }
                Change::Assigned { topic, partition } => {
                    assigned.push((topic, partition));
                    if !self.joins.contains_key(&partition) {
                        // A broker gone during the read is waited for: the
                        // partition's state is read again once it is back.
                        let what = format!("reading partition {partition}'s state back");
                        let join = output::read_retrying(&what, self.readiness, stop, || {
                            self.restore(partition)
                        })
                        .await?;
                        self.joins.insert(partition, join);
                    }
                }
                Change::AssignmentEnd => {}
            }
        }
        if !dropped.is_empty() {
            self.rewind_kept(&dropped, &assigned);
        }
        self.split_history_budget();
        Ok(())
    }

    /// For each partition whose state was dropped, the input topics whose
    /// partition of that number this consumer still holds, and was not
    /// assigned afresh in the same changes (`assigned`), go back to their
    /// committed offsets (see [`Joiner::rebalance`]), checked as an assigned
    /// partition is ([`RebalanceLog::resume_at`]).
    fn rewind_kept(&self, dropped: &[i32], assigned: &[(String, i32)]) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let kept = kept_alone(&assignment, dropped, assigned);
        if kept.count() == 0 {
            return;
        }
        let committed = match self.consumer.committed_offsets(kept, REWIND_WAIT) {
            Ok(c) => c,
            Err(e) => {
                ErrorKind::Rebalance.emit(
                    Metric::Errors.name(),
                    &e,
                    "committed offsets not read; a partition kept its position",
                );
                return;
            }
        };
        for e in committed.elements() {
            let Offset::Offset(at) = e.offset() else {
                continue;
            };
            tracing::warn!(
                topic = e.topic(),
                partition = e.partition(),
                offset = at,
                "the other topic's partition was revoked alone; reading this one again from its committed offset"
            );
            if let Err(err) =
                self.consumer
                    .context()
                    .resume_at(self.consumer, e.topic(), e.partition(), at)
            {
                ErrorKind::Rebalance.emit(Metric::Errors.name(), &err, "seek failed");
            }
        }
    }

    /// Gives each join partition held an even share of the instance's
    /// history budget (`max_history_bytes`), after every change of the
    /// partitions held: the bound is the instance's memory, and a
    /// partition's customers are as many as another's (keys hashed). A
    /// partition over its new share sheds at its next batch.
    fn split_history_budget(&mut self) {
        let share = self.cfg.join.max_history_bytes / self.joins.len().max(1);
        let recent = self.cfg.cold_customers.recent_customers / self.joins.len().max(1);
        for j in self.joins.values_mut() {
            j.set_history_budget(share);
            j.set_recent_cold(recent);
        }
    }

    async fn restore(&self, partition: i32) -> Result<Join, EnrichError> {
        // Its share of the recent cold customers, until the rebalance
        // ends and the shares are split again.
        let recent = self.cfg.cold_customers.recent_customers / (self.joins.len() + 1);
        let cold = self.cold_store.as_ref().map(|s| (s, recent));
        restore::join_state(self.kafka, self.cfg, self.internal, partition, cold).await
    }

    /// Which input a record of `topic` came from.
    fn input_of(&self, topic: &str) -> Input {
        if topic == self.kafka.topics.events {
            Input::Events
        } else {
            Input::Repartition
        }
    }

    fn topic_of(&self, input: Input) -> &str {
        match input {
            Input::Events => &self.kafka.topics.events,
            Input::Repartition => &self.internal.repartition,
        }
    }
}

/// What a flush sent, for its batch's telemetry ([`Joiner::emit`]).
struct Flushed {
    records: u64,
    dead_letters: u64,
    state_changes: u64,
    moved: u64,
    stats: JoinStats,
    alerts: AlertStats,
}

/// Adds a partition's join counts to the batch's.
fn add_stats(into: &mut JoinStats, s: JoinStats) {
    into.repairs += s.repairs;
    into.expired_link += s.expired_link;
    into.expired_reference += s.expired_reference;
    into.shed_events += s.shed_events;
    into.shed_customers += s.shed_customers;
    into.forgotten_links += s.forgotten_links;
}

/// The partitions of `assignment` whose join partition was `dropped` and
/// that were not among those `assigned` with the drop: held across it,
/// while their state was dropped because the other topic's partition of
/// the same number was revoked.
fn kept_alone(
    assignment: &TopicPartitionList,
    dropped: &[i32],
    assigned: &[(String, i32)],
) -> TopicPartitionList {
    let mut kept = TopicPartitionList::new();
    for e in assignment.elements() {
        let again = assigned
            .iter()
            .any(|(t, p)| *p == e.partition() && t == e.topic());
        if dropped.contains(&e.partition()) && !again {
            kept.add_partition(e.topic(), e.partition());
        }
    }
    kept
}

/// How long the loop waits for input before it lands outputs in flight
/// (and commits their offsets) on its own.
const IN_FLIGHT_IDLE: Duration = Duration::from_millis(20);

/// How long a rewind after a lone revocation waits for the broker.
const REWIND_WAIT: Duration = Duration::from_secs(10);

/// The value of header `name`, if the record has it.
fn header<'m>(m: &'m BorrowedMessage<'_>, name: &str) -> Option<&'m [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.unwrap_or_default())
}

/// The resolution the resolve loop chose, carried by the record key.
fn resolved_from_key(key: &[u8], e: &Event) -> Resolved {
    if key.first() == Some(&UNRESOLVED) || key.is_empty() {
        return Resolved::unresolved();
    }
    let customer_id = crate::tenancy::with_room(&e.tenant, &String::from_utf8_lossy(key));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Eager rebalances revoke every partition and assign the new share:
    /// a partition assigned again there resumes at its committed offset by
    /// itself and is not sent back; only one held across the drop is.
    #[test]
    fn only_a_partition_held_across_the_drop_is_sent_back() {
        let mut assignment = TopicPartitionList::new();
        for p in [4, 5] {
            assignment.add_partition("events", p);
            assignment.add_partition("repartition", p);
        }
        let dropped = [4, 5, 6, 7];
        let every = |topic: &str, ps: &[i32]| -> Vec<(String, i32)> {
            ps.iter().map(|p| (topic.to_owned(), *p)).collect()
        };
        let mut eager = every("events", &[4, 5]);
        eager.extend(every("repartition", &[4, 5]));
        assert_eq!(kept_alone(&assignment, &dropped, &eager).count(), 0);

        // Repartition 5 revoked alone: events 5 was held across the drop.
        let mut alone = every("events", &[4]);
        alone.extend(every("repartition", &[4, 5]));
        let kept = kept_alone(&assignment, &dropped, &alone);
        let kept: Vec<(String, i32)> = kept
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        assert_eq!(kept, [("events".to_owned(), 5)]);

        assert_eq!(kept_alone(&assignment, &[9], &[]).count(), 0);
    }

    /// A full batch's buffer stays as large as the batch needed, however
    /// far past the floor; one far larger than this flush's use shrinks to
    /// that use; one below the floor is never shrunk.
    #[test]
    fn buffers_keep_what_a_batch_used_and_give_back_a_burst() {
        let floor = Outputs::KEEP_BYTES;
        let mut full: Vec<u8> = Vec::with_capacity(3 * floor);
        full.resize(2 * floor, 1);
        keep_for_next(&mut full);
        assert!(full.is_empty());
        assert_eq!(
            full.capacity(),
            3 * floor,
            "a full batch's buffer kept whole"
        );

        let mut burst: Vec<u8> = Vec::with_capacity(8 * floor);
        burst.resize(floor + 1, 1);
        keep_for_next(&mut burst);
        assert!(burst.is_empty());
        assert!(
            (floor + 1..8 * floor).contains(&burst.capacity()),
            "shrunk to this flush's use: {}",
            burst.capacity()
        );

        let mut small: Vec<usize> = Vec::with_capacity(100);
        small.push(1);
        keep_for_next(&mut small);
        assert_eq!(small.capacity(), 100);
    }
}
