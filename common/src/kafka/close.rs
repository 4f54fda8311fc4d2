//! Closing group consumers without holding up the process.
//!
//! Dropping a group member closes it: librdkafka leaves the group and waits
//! until its coordinator requests are over, and rdkafka's `Drop` polls
//! until then. While the broker is away that wait can last for ever
//! (confluentinc/librdkafka#3740: the coordinator query is retried without
//! end). Dropped on an async worker, such a consumer holds the worker, and
//! the tokio runtime, so the process never ends: stops during a broker
//! outage, repeated in a loop, hung so once in 10 to 20
//! (`tests/enrich_broker_outage.rs` once held CI for 70 minutes).
//!
//! So group clients are wrapped in [`Closing`], which drops them on a
//! thread of its own, whoever drops it last: neither the runtime nor the
//! process waits for that thread. The process waits for
//! those closes within what is left of its drain budget ([`wait_closed`]):
//! with the broker there, a member leaves its group at once and its
//! partitions move on without waiting for its session to expire; with the
//! broker away, nothing is lost by not waiting, since stages commit before
//! they close.
//!
//! Clients outside any group ([`super::KafkaConfig::reader`]) have no group
//! to leave and are dropped at once.

use std::{
    ops::Deref,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Notify;

/// Closes under way on their threads.
static CLOSING: AtomicUsize = AtomicUsize::new(0);
/// Told whenever one of them ends.
static CLOSED: Notify = Notify::const_new();

/// Drops `clients` on a thread of their own, without waiting. The receiver
/// is told once they are dropped.
fn close_in_background<T: Send + 'static>(clients: T) -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    CLOSING.fetch_add(1, Ordering::AcqRel);
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(clients);
            let _ = tx.send(());
            CLOSING.fetch_sub(1, Ordering::AcqRel);
            CLOSED.notify_waiters();
        });
    if let Err(e) = spawned {
        // The closure, clients included, was dropped here.
        CLOSING.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "no thread to close kafka clients on; closed in place");
    }
    rx
}

/// Waits until every close begun by a [`Closing`] ended, at most
/// `budget`. Returns false when some still run (a warning says how many).
pub async fn wait_closed(budget: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let closed = CLOSED.notified();
        let n = CLOSING.load(Ordering::Acquire);
        if n == 0 {
            return true;
        }
        if tokio::time::timeout_at(deadline, closed).await.is_err() {
            tracing::warn!(
                clients = CLOSING.load(Ordering::Acquire),
                ?budget,
                "kafka clients still closing (their broker is away?); not waited for"
            );
            return false;
        }
    }
}

/// A group client that is closed on a thread of its own when dropped,
/// wherever its last owner drops it.
#[derive(Debug)]
pub struct Closing<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Closing<T> {
    pub fn new(client: T) -> Self {
        Closing(Some(client))
    }
}

impl<T: Send + 'static> Deref for Closing<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("only taken in drop")
    }
}

impl<T: Send + 'static> Drop for Closing<T> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(close_in_background(client));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::{
        ClientConfig, Offset, TopicPartitionList,
        consumer::{BaseConsumer, CommitMode, Consumer},
        mocking::MockCluster,
    };

    use super::*;

    /// A group member whose broker goes away with a commit in flight is
    /// dropped on an async worker: the runtime ends at once, and waiting for
    /// the close ends at its budget, whether or not librdkafka's close ever
    /// does.
    #[test]
    fn a_member_dropped_during_an_outage_holds_up_nothing() {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t", 2, 1).expect("topic");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        consumer.subscribe(&["t"]).expect("subscribe");
        let until = Instant::now() + Duration::from_secs(30);
        while consumer.assignment().map_or(0, |a| a.count()) == 0 {
            assert!(Instant::now() < until, "never assigned");
            let _ = consumer.poll(Duration::from_millis(100));
        }
        mock.broker_down(1).expect("broker down");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Offset(1))
            .expect("offset");
        let _ = consumer.commit(&tpl, CommitMode::Async);
        let consumer = std::sync::Arc::new(Closing::new(consumer));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let started = Instant::now();
        let budget = Duration::from_millis(500);
        runtime.block_on(async move {
            // The last owner is a task on a worker thread.
            tokio::spawn(async move { drop(consumer) })
                .await
                .expect("task");
            wait_closed(budget).await;
        });
        drop(runtime);
        let took = started.elapsed();
        assert!(
            took < budget + Duration::from_secs(3),
            "the runtime ended after {took:?}, past the close budget of {budget:?}"
        );
    }

    /// A close with its broker there ends, and says so.
    #[tokio::test]
    async fn a_close_with_its_broker_there_is_waited_for() {
        let mock = MockCluster::new(1).expect("mock cluster");
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "g")
            .create()
            .expect("member");
        let done = close_in_background(member);
        let closed = tokio::time::timeout(Duration::from_secs(20), done).await;
        assert!(matches!(closed, Ok(Ok(()))), "not closed: {closed:?}");
    }
}
