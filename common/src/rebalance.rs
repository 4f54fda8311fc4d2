//! The consumer-group rebalances a stage has not acted on yet.
//!
//! librdkafka calls a consumer's rebalance callbacks from inside `recv()`,
//! where a stage must not do slow work (restore state, flush a batch). The
//! stages therefore only *record* assignments and revocations there, and act
//! on them between batches, when no record of the partition is in flight.
//! [`RebalanceLog`] is that record, and the consumer context that fills it;
//! it also logs each assignment, which is what ops look for while a group
//! rebalances.
//!
//! A stage that resumes at the group's committed offsets, which may lie
//! inside a record batch, asks it to make sure no record after them is
//! skipped ([`RebalanceLog::resuming_at_commits`]): the committed offsets of
//! an assigned partition are read in the callback, the partition starts up
//! to [`crate::resume::REWIND`] records earlier, and [`RebalanceLog::admit`]
//! drops what comes before the committed offset, seeking further back where
//! the broker still answered past it ([`crate::resume`]).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{
        BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer,
    },
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Message},
    types::RDKafkaRespErr,
};

use crate::{
    resume::{self, Resume, ResumeCheck},
    telemetry::ErrorKind,
};

/// How long the callback waits for the group's committed offsets, and a
/// seek for the fetcher.
const BROKER_WAIT: Duration = Duration::from_secs(10);

/// One partition given to or taken from this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Assigned { topic: String, partition: i32 },
    Revoked { topic: String, partition: i32 },
}

/// A consumer context that records rebalances for the stage's loop.
#[derive(Debug)]
pub struct RebalanceLog {
    /// Names the consumer in the log line (`"<name> partitions assigned"`).
    name: &'static str,
    /// Which changes the loop wants; the rest are only logged.
    keep: Keep,
    changes: Mutex<Vec<Change>>,
    /// Whether assigned partitions are checked against their committed
    /// offsets.
    check_commits: bool,
    /// Per assigned partition not yet proven contiguous with its committed
    /// offset: its check. Empty in the steady state.
    resuming: Mutex<HashMap<(String, i32), ResumeCheck>>,
    /// The stage's errors counter, for the failures logged here.
    errors: Option<&'static str>,
}

/// Which changes a [`RebalanceLog`] keeps for its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// None: the loop holds no per-partition state.
    Nothing,
    /// Revocations only (the loop drops a revoked partition's state, and
    /// builds an assigned one's on its first record).
    Revoked,
    /// Both (the loop restores an assigned partition's state up front).
    Both,
}

impl RebalanceLog {
    pub fn new(name: &'static str, keep: Keep) -> Self {
        RebalanceLog {
            name,
            keep,
            changes: Mutex::new(Vec::new()),
            check_commits: false,
            resuming: Mutex::new(HashMap::new()),
            errors: None,
        }
    }

    /// Counts the failures this context logs (a seek, a rebalance, reading
    /// committed offsets, records gone from the log) in the stage's errors
    /// counter `metric`, by [`ErrorKind`].
    pub fn counting_errors(self, metric: &'static str) -> Self {
        RebalanceLog {
            errors: Some(metric),
            ..self
        }
    }

    fn count(&self, kind: ErrorKind) {
        if let Some(m) = self.errors {
            kind.count(m);
        }
    }

    /// Starts each assigned partition a little before the group's committed
    /// offset and checks its first records against it (see the module doc);
    /// the loop passes every batch through [`RebalanceLog::admit`].
    pub fn resuming_at_commits(self) -> Self {
        RebalanceLog {
            check_commits: true,
            ..self
        }
    }

    /// Keeps the records of `batch` the loop should handle: drops records
    /// before a partition's committed offset (handled already), and where
    /// the broker resumed a partition past it, drops the partition's records
    /// and seeks back. One lock per batch; nothing to do once every
    /// partition read on from its committed offset.
    pub fn admit<'c>(
        &self,
        consumer: &StreamConsumer<RebalanceLog>,
        batch: &mut Vec<BorrowedMessage<'c>>,
    ) {
        if !self.check_commits {
            return;
        }
        let Ok(mut resuming) = self.resuming.lock() else {
            return;
        };
        if resuming.is_empty() {
            return;
        }
        let mut seeking: Vec<(String, i32)> = Vec::new();
        batch.retain(|m| {
            let key = (m.topic().to_owned(), m.partition());
            if seeking.contains(&key) {
                return false;
            }
            let Some(check) = resuming.get_mut(&key) else {
                return true;
            };
            match check.check(m.offset()) {
                Resume::Read if m.offset() < check.next() => false,
                Resume::Read => {
                    resuming.remove(&key);
                    true
                }
                Resume::SeekTo(to) => {
                    resume::log_seek(m.topic(), m.partition(), check.next(), m.offset(), to);
                    if let Err(e) =
                        consumer.seek(m.topic(), m.partition(), Offset::Offset(to), BROKER_WAIT)
                    {
                        tracing::warn!(error = %e, "seek failed");
                        self.count(ErrorKind::Rebalance);
                    }
                    seeking.push(key);
                    false
                }
                Resume::Gap { from, to } => {
                    resume::log_gap(m.topic(), m.partition(), from, to);
                    self.count(ErrorKind::LogGap);
                    resuming.remove(&key);
                    true
                }
            }
        });
    }

    /// The changes recorded since the last call, oldest first.
    pub fn take(&self) -> Vec<Change> {
        self.changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    fn record(&self, changes: impl Iterator<Item = Change>) {
        if let Ok(mut c) = self.changes.lock() {
            c.extend(changes);
        }
    }

    /// Restarts each newly assigned partition that has a committed offset
    /// up to [`crate::resume::REWIND`] records before it, and remembers the
    /// offset so that [`RebalanceLog::admit`] drops what was handled
    /// already.
    fn rewind_to_commits(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let committed = match consumer.committed_offsets(tpl.clone(), BROKER_WAIT) {
            Ok(c) => c,
            Err(e) => {
                // Without them nothing is checked: the partitions resume
                // where the group committed them, as the broker answers.
                tracing::warn!(error = %e, "committed offsets not read; resuming unchecked");
                self.count(ErrorKind::Rebalance);
                return;
            }
        };
        let mut rewound = tpl.clone();
        let mut checks = Vec::new();
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                let (check, start) = ResumeCheck::rewound(o);
                if rewound
                    .set_partition_offset(e.topic(), e.partition(), Offset::Offset(start))
                    .is_ok()
                {
                    checks.push(((e.topic().to_owned(), e.partition()), check));
                }
            }
        }
        if checks.is_empty() {
            return;
        }
        if let Err(e) = consumer.assign(&rewound) {
            tracing::warn!(error = %e, "assignment not rewound; resuming unchecked");
            self.count(ErrorKind::Rebalance);
            return;
        }
        let resumed: Vec<String> = checks
            .iter()
            .map(|((t, p), c)| format!("{t}/{p}@{}", c.next()))
            .collect();
        tracing::info!(
            consumer = self.name,
            partitions = %format!("[{}]", resumed.join(",")),
            "partitions resume at their committed offsets, read from up to {} records before",
            crate::resume::REWIND
        );
        if let Ok(mut resuming) = self.resuming.lock() {
            resuming.extend(checks);
        }
    }
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    /// rdkafka's own rebalance, with the assignment's starting offsets
    /// rewound first when the stage checks where partitions resume.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assigning = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let revoking = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let rebalance = if assigning {
            Rebalance::Assign(tpl)
        } else if revoking {
            Rebalance::Revoke(tpl)
        } else {
            let code: RDKafkaErrorCode = err.into();
            tracing::error!(error = %code, "rebalance failed");
            self.count(ErrorKind::Rebalance);
            Rebalance::Error(KafkaError::Rebalance(code))
        };
        self.pre_rebalance(consumer, &rebalance);
        let result = match (assigning, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
            self.count(ErrorKind::Rebalance);
        } else if assigning && !cooperative && self.check_commits {
            // The group's committed offsets can only be read once the
            // partitions are assigned (librdkafka holds the request back
            // during the rebalance): read them now, then assign again,
            // rewound.
            self.rewind_to_commits(consumer, tpl);
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance
            && let Ok(mut resuming) = self.resuming.lock()
        {
            for e in tpl.elements() {
                resuming.remove(&(e.topic().to_owned(), e.partition()));
            }
        }
        if let Rebalance::Revoke(tpl) = rebalance
            && self.keep != Keep::Nothing
        {
            self.record(tpl.elements().iter().map(|e| Change::Revoked {
                topic: e.topic().to_owned(),
                partition: e.partition(),
            }));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<String> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect();
            tracing::info!(
                consumer = self.name,
                partitions = %format!("[{}]", partitions.join(",")),
                "{} partitions assigned",
                self.name
            );
            if self.keep == Keep::Both {
                self.record(tpl.elements().iter().map(|e| Change::Assigned {
                    topic: e.topic().to_owned(),
                    partition: e.partition(),
                }));
            }
        }
    }
}
