//! The consumer-group rebalances a stage has not acted on yet.
//!
//! librdkafka calls a consumer's rebalance callbacks from inside `recv()`,
//! where a stage must not do slow work (restore state, flush a batch). The
//! stages therefore only *record* assignments and revocations there, and act
//! on them between batches, when no record of the partition is in flight.
//! [`RebalanceLog`] is that record, and the consumer context that fills it;
//! it also logs each assignment, which is what ops look for while a group
//! rebalances.

use std::sync::Mutex;

use rdkafka::{
    ClientContext,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
};

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
        }
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
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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
