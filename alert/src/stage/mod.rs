//! The stage loop: alerts from Kafka to ClickHouse and the department
//! workers, and offsets committed once alerts are final.
//!
//! [`AlertStage::bind`] does what can fail because of the configuration
//! (validation, the API's listener, the TLS setup) and
//! [`AlertStage::run`] the rest, until `stop`:
//!
//! 1. the case API serves at once (it answers 503 while ClickHouse lacks
//!    the tables); topics are created (a broker that is away is waited
//!    for); the stage waits, readiness `schema_missing`, until `alerts`,
//!    `alert_deliveries` and `alert_actions` exist (`xoflow migrate`);
//! 2. per batch read: undecodable records become `DECODE` dead letters;
//!    copies of an alert already being delivered wait for it; the others
//!    are looked up in `alerts` and the missing ones inserted, and the
//!    delivery log is asked which of their webhooks are final already;
//!    each alert then goes to its department's worker (a department
//!    without webhooks: one `no_webhook` row, final);
//! 3. between batches (at least every `batch_max_wait`): the workers'
//!    reports are taken; dead letters produced, attempts inserted into
//!    `alert_deliveries`, and only then the alerts they finished count as
//!    final; offsets are committed up to the last contiguous final one
//!    ([`crate::delivery::offsets`]); the topic is paused while a
//!    department holds `max_pending_per_department` alerts.
//!
//! ClickHouse and Kafka failures that pass are retried with backoff while
//! readiness says why; nothing is committed meanwhile. The alerts of a
//! partition revoked and not assigned back in the same rebalance are
//! withdrawn from their workers ([`delivery::Withdrawal`]); the new owner
//! reads them again. The loop does not poll while it retries
//! ClickHouse: past `max.poll.interval.ms` librdkafka takes its partitions
//! away, and from then on a failed call is not retried: the alerts of the
//! batch in hand are dropped without being handed to a worker, the
//! delivery log waits for the next flush, and the loop polls, rejoins and
//! withdraws the alerts of partitions not assigned back. On stop (or when the
//! future is dropped), workers stop at once: attempts in flight are
//! abandoned, their alerts not committed, and delivered again (same
//! idempotency key) by whoever reads them next. What is final is stored
//! and committed before `run` returns.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::BorrowedMessage,
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    admin::{Readiness, Reason},
    clock,
    dead_letter::{self, Stage},
    kafka::{
        ErrorClass, KafkaConfig, Outgoing,
        close::Closing,
        watch::{self, Watched},
    },
    rebalance::{Batch, Batches, Change, Keep, RebalanceLog},
    retry::RetryPolicy,
    telemetry::ErrorKind,
};
use xoflow_proto::{
    Message as _,
    v1::{Alert, DeadLetter},
};

use crate::{
    AlertConfig, AlertError,
    api::{self, ApiKeys},
    delivery::{
        self, Department, DepartmentKey, Job, Policy, Report, Reports, Withdrawal, offsets::Offsets,
    },
    store::{AlertRow, DeliveryRow, Outcome, Store, StoreError, is_valid_id, row::FORMAT_NONE},
    telemetry::{self, Metric},
    webhook::{Webhook, WebhookClient},
};

/// How ClickHouse calls are retried: quickly at first, then every 30 s at
/// most (as the sink does).
const CLICKHOUSE_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(30));
/// How often the loop wakes without input, to take the workers' reports.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// The alert stage, bound and ready to run.
pub struct AlertStage {
    cfg: AlertConfig,
    kafka: KafkaConfig,
    store: Store,
    keys: ApiKeys,
    listener: TcpListener,
    client: WebhookClient,
    departments: BTreeMap<DepartmentKey, Arc<Department>>,
    /// Routes served beside the case API on its listener (the process's
    /// erasure API, `POST /v1/erasures`): same port, same keys.
    extra_routes: Option<axum::Router>,
}

impl std::fmt::Debug for AlertStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertStage")
            .field("group_id", &self.cfg.group_id)
            .field("api", &self.listener.local_addr().ok())
            .field("departments", &self.departments.len())
            .finish_non_exhaustive()
    }
}

impl AlertStage {
    /// Everything that can fail because of the configuration: the
    /// settings, the case API's listener, the webhook client. Nothing is
    /// read from Kafka or ClickHouse yet. `clickhouse` is the client of the
    /// database holding the tables (`ClickHouseConfig::client()`); `keys`
    /// the API keys the case API accepts.
    pub async fn bind(
        cfg: &AlertConfig,
        kafka: &KafkaConfig,
        clickhouse: clickhouse::Client,
        keys: ApiKeys,
    ) -> Result<Self, AlertError> {
        cfg.validate()?;
        let listener =
            TcpListener::bind(cfg.api_addr)
                .await
                .map_err(|source| AlertError::Bind {
                    addr: cfg.api_addr,
                    source,
                })?;
        let client = WebhookClient::new(cfg.request_timeout)?;
        let mut departments = BTreeMap::new();
        for (tenant, t) in &cfg.tenants {
            for (name, d) in &t.departments {
                let webhooks = d
                    .webhooks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| {
                        Webhook::new(
                            w,
                            i,
                            format!("alert.tenants.{tenant}.departments.{name}.webhooks[{i}]"),
                        )
                    })
                    .collect();
                departments.insert(
                    (tenant.clone(), name.clone()),
                    Arc::new(Department {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        webhooks,
                    }),
                );
            }
        }
        Ok(AlertStage {
            cfg: cfg.clone(),
            kafka: kafka.clone(),
            store: Store::new(clickhouse),
            keys,
            listener,
            client,
            departments,
            extra_routes: None,
        })
    }

    /// Serves `routes` beside the case API, on its listener.
    pub fn with_routes(mut self, routes: axum::Router) -> Self {
        self.extra_routes = Some(routes);
        self
    }

    /// Where the case API listens.
    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `stop` is cancelled (see the module doc). `readiness` is
    /// the stage's, `api_readiness` the case API's. Dropping the future
    /// stops everything at once and commits nothing more (what a crash
    /// does).
    pub async fn run(
        self,
        readiness: Readiness,
        api_readiness: Readiness,
        stop: CancellationToken,
    ) -> Result<(), AlertError> {
        telemetry::init();
        let AlertStage {
            cfg,
            kafka,
            store,
            keys,
            listener,
            client,
            departments,
            extra_routes,
        } = self;
        // Every task of the stage lives in this set: dropped with the
        // future, it aborts them all.
        let mut tasks = JoinSet::new();
        let stop_all = stop.child_token();
        let _stop_on_drop = stop_all.clone().drop_guard();
        {
            let mut router = api::router(store.clone(), keys);
            if let Some(extra) = extra_routes {
                router = extra.merge(router);
            }
            let (r, s) = (api_readiness.clone(), stop_all.clone());
            let addr = listener.local_addr().ok();
            tasks.spawn(async move {
                r.set(true);
                tracing::info!(addr = ?addr, "case API listening");
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(s.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "case API stopped");
                    ErrorKind::Accept.count(Metric::Errors.name());
                }
                r.set(false);
            });
        }
        let result = consume(
            &cfg,
            &kafka,
            store,
            client,
            departments,
            &readiness,
            &stop_all,
            &mut tasks,
        )
        .await;
        readiness.set(false);
        stop_all.cancel();
        while tasks.join_next().await.is_some() {}
        tracing::info!("alert stage stopped");
        result
    }
}

/// [`AlertStage::bind`] then [`AlertStage::run`].
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &AlertConfig,
    kafka: &KafkaConfig,
    clickhouse: clickhouse::Client,
    keys: ApiKeys,
    readiness: Readiness,
    api_readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), AlertError> {
    AlertStage::bind(cfg, kafka, clickhouse, keys)
        .await?
        .run(readiness, api_readiness, stop)
        .await
}

/// Why a retried call ended without a result.
enum Interrupted {
    /// `stop` came during a wait.
    Stopped,
    /// The group took this instance's partitions (it did not poll for
    /// `max.poll.interval.ms` while it retried).
    Lost,
    Failed(AlertError),
}

impl From<AlertError> for Interrupted {
    fn from(e: AlertError) -> Self {
        Interrupted::Failed(e)
    }
}

/// What a retried ClickHouse call needs besides the call: shutdown
/// interrupts its waits, readiness says why no progress is made, and
/// `lost` (the consumer's `assignment_lost`) tells whether the group took
/// the partitions meanwhile.
#[derive(Clone, Copy)]
struct Retrying<'a> {
    readiness: &'a Readiness,
    stop: &'a CancellationToken,
    lost: &'a (dyn Fn() -> bool + Sync),
}

/// Retries a ClickHouse call through failures that pass — an outage, and
/// a schema that went missing (waited for like at start) — while
/// readiness says why. The first attempt is always made, also when
/// stopping; a failed one is retried until the partitions were taken:
/// then `Lost`, so that the loop polls and rejoins. (What the calls write
/// is harmless whoever owns the partitions: alerts keyed by id, attempts
/// made. What is not, handing alerts to workers, the loop checks itself.)
async fn store_retry<T, F, Fut>(r: Retrying<'_>, what: &str, mut call: F) -> Result<T, Interrupted>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let Retrying {
        readiness,
        stop,
        lost,
    } = r;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => {
                if attempt > 1 {
                    readiness.clear(Reason::ClickHouseUnreachable);
                    readiness.clear(Reason::SchemaMissing);
                    tracing::info!(attempt, "{what}: ClickHouse answers again");
                }
                return Ok(v);
            }
            Err(e) if e.is_missing_schema() => readiness.fail(
                Reason::SchemaMissing,
                format_args!("{what}: {e} (run `xoflow migrate`)"),
            ),
            Err(e) if e.transient => readiness.fail(
                Reason::ClickHouseUnreachable,
                format_args!("{what}, attempt {attempt}: {e}"),
            ),
            Err(e) => return Err(Interrupted::Failed(e.into())),
        }
        if lost() {
            return Err(Interrupted::Lost);
        }
        tracing::warn!(attempt, "{what} failed; retrying");
        ErrorKind::ClickHouse.count(Metric::Errors.name());
        if !CLICKHOUSE_RETRY.sleep(attempt, stop).await {
            return Err(Interrupted::Stopped);
        }
    }
}

/// Waits until ClickHouse has the stage's tables; `Ok(false)`: stopped
/// first.
async fn await_schema(
    store: &Store,
    readiness: &Readiness,
    stop: &CancellationToken,
) -> Result<bool, AlertError> {
    let policy = RetryPolicy::exponential(Duration::from_millis(500), Duration::from_secs(10));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store.missing_tables().await {
            Ok(missing) if missing.is_empty() => {
                readiness.clear(Reason::SchemaMissing);
                readiness.clear(Reason::ClickHouseUnreachable);
                return Ok(true);
            }
            Ok(missing) => {
                readiness.clear(Reason::ClickHouseUnreachable);
                let detail = format!(
                    "ClickHouse lacks table(s) {}: run `xoflow migrate`",
                    missing.join(", ")
                );
                if attempt == 1 || attempt % 10 == 0 {
                    tracing::warn!(attempt, "{detail}; waiting");
                }
                readiness.fail(Reason::SchemaMissing, detail);
            }
            Err(e) if e.transient => {
                tracing::warn!(attempt, error = %e, "ClickHouse unreachable; waiting");
                ErrorKind::ClickHouse.count(Metric::Errors.name());
                readiness.fail(
                    Reason::ClickHouseUnreachable,
                    format_args!("checking the schema, attempt {attempt}: {e}"),
                );
            }
            Err(e) => return Err(e.into()),
        }
        if !policy.sleep(attempt, stop).await {
            return Ok(false);
        }
    }
}

/// Sets up the consumer and the workers, then runs [`Loop`].
#[allow(clippy::too_many_arguments)]
async fn consume(
    cfg: &AlertConfig,
    kafka: &KafkaConfig,
    store: Store,
    client: WebhookClient,
    departments: BTreeMap<DepartmentKey, Arc<Department>>,
    readiness: &Readiness,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), AlertError> {
    let topics = &kafka.topics;
    let created = kafka
        .await_topics(
            &[&topics.alerts, &topics.dead_letters],
            &[],
            readiness,
            stop,
        )
        .await
        .map_err(AlertError::Kafka)?;
    if !created || !await_schema(&store, readiness, stop).await? {
        return Ok(());
    }
    let producer = kafka
        .batch_producer()
        .map_err(AlertError::Kafka)?
        .reporting_queue(Metric::ProducerQueue.name());
    // Both: a revoked partition's offsets are forgotten, and its alerts
    // withdrawn unless the same rebalance assigns it back. Each partition
    // resumes at the group's committed offset, checked.
    // Dropped, it leaves its group on a thread of its own: a broker that
    // is away holds up no worker (`xoflow_common::kafka::close`).
    let consumer: Arc<Closing<StreamConsumer<RebalanceLog>>> = kafka
        .consumer(
            &cfg.group_id,
            RebalanceLog::new("alert", Keep::Both)
                .resuming_at_commits()
                .counting_errors(Metric::Errors.name()),
        )
        .map(|c| Arc::new(Closing::new(c)))
        .map_err(AlertError::Kafka)?;
    consumer
        .subscribe(&[&topics.alerts])
        .map_err(AlertError::Kafka)?;

    let reports = Reports::default();
    let policy = Policy {
        retry: RetryPolicy::exponential(cfg.retry_backoff, cfg.retry_max_backoff),
        give_up_after: cfg.give_up_after,
        max_in_flight: cfg.max_in_flight_per_department,
    };
    let mut queues = HashMap::new();
    for (key, dept) in &departments {
        // Room for the pending bound and one more batch: the loop never
        // waits on a queue (see `Loop::dispatch`).
        let (tx, rx) = mpsc::channel(cfg.max_pending_per_department + cfg.batch_max_records);
        queues.insert(key.clone(), tx);
        tasks.spawn(delivery::work(
            dept.clone(),
            rx,
            client.clone(),
            policy,
            reports.clone(),
            stop.clone(),
        ));
    }
    {
        let c = consumer.clone();
        tasks.spawn(watch::watch(
            kafka.clone(),
            vec![Watched {
                group: cfg.group_id.clone(),
                topics: vec![topics.alerts.clone()],
                held: Box::new(move || watch::held(&**c)),
                lag_metric: Metric::ConsumerLag.name(),
            }],
            cfg.stall_timeout,
            readiness.clone(),
            stop.clone(),
        ));
    }
    readiness.set(true);
    tracing::info!(
        group = %cfg.group_id,
        topic = %topics.alerts,
        departments = departments.len(),
        "alert stage started"
    );
    let lost = || consumer.assignment_lost();
    let mut l = Loop {
        cfg,
        kafka,
        consumer: &consumer,
        lost: &lost,
        producer,
        store,
        departments,
        queues,
        reports,
        readiness,
        stop,
        offsets: Offsets::default(),
        in_flight: HashMap::new(),
        pending: HashMap::new(),
        overflow: Vec::new(),
        log: Vec::new(),
        dead: Vec::new(),
        after_flush: Vec::new(),
        revoked: HashSet::new(),
        last_flush: Instant::now(),
        paused: false,
    };
    match l.run().await {
        Ok(()) | Err(Interrupted::Stopped | Interrupted::Lost) => Ok(()),
        Err(Interrupted::Failed(e)) => Err(e),
    }
}

/// An alert read and not final yet.
struct InFlight {
    /// Its department when a worker has it (for the pending count).
    department: Option<DepartmentKey>,
    /// Every offset it was read at: the first, and copies read meanwhile.
    offsets: Vec<(i32, i64)>,
    /// Shared with the worker's job: set when every partition it was read
    /// from is revoked.
    withdrawal: Withdrawal,
}

/// The stage loop's state.
struct Loop<'a> {
    cfg: &'a AlertConfig,
    kafka: &'a KafkaConfig,
    consumer: &'a StreamConsumer<RebalanceLog>,
    producer: xoflow_common::kafka::BatchProducer,
    store: Store,
    departments: BTreeMap<DepartmentKey, Arc<Department>>,
    queues: HashMap<DepartmentKey, mpsc::Sender<Job>>,
    reports: Reports,
    readiness: &'a Readiness,
    stop: &'a CancellationToken,
    /// The consumer's `assignment_lost`.
    lost: &'a (dyn Fn() -> bool + Sync),
    offsets: Offsets,
    /// Alert id → where it was read, while not final.
    in_flight: HashMap<String, InFlight>,
    /// Alerts a worker holds, per department.
    pending: HashMap<DepartmentKey, usize>,
    /// Jobs a full queue did not take yet (only while over the pending
    /// bound; the topic is paused meanwhile).
    overflow: Vec<(DepartmentKey, Job)>,
    /// Delivery log rows not stored yet.
    log: Vec<DeliveryRow>,
    /// Dead letters not produced yet.
    dead: Vec<DeadLetter>,
    /// Offsets final once `log` and `dead` are stored.
    after_flush: Vec<(i32, i64)>,
    /// Partitions revoked and not assigned again yet: their alerts are
    /// withdrawn at the end of the next assignment unless it holds them.
    revoked: HashSet<i32>,
    last_flush: Instant,
    paused: bool,
}

impl Loop<'_> {
    async fn run(&mut self) -> Result<(), Interrupted> {
        let mut batches = Batches::new(self.consumer);
        loop {
            self.take_reports();
            self.dispatch_overflow()?;
            // Not between a revocation and the end of the rebalance: a
            // flush retrying ClickHouse would not poll, and the assignment
            // that withdraws the moved alerts would wait for ClickHouse.
            if self.flush_due() && self.revoked.is_empty() {
                self.flush(CommitMode::Async).await?;
            }
            self.pause_or_resume();
            // Rebalances come before the records fetched after them: a
            // revoked partition's records are never handled after its
            // offsets were dropped.
            let Batch {
                changes,
                records: batch,
            } = match batches
                .next(
                    self.cfg.batch_max_records,
                    self.cfg.batch_max_wait,
                    Some(IDLE_TICK.min(self.cfg.batch_max_wait)),
                    self.stop,
                    Metric::Errors.name(),
                )
                .await
            {
                Ok(_) if self.stop.is_cancelled() => break,
                Ok(b) => b,
                Err(e) => {
                    ErrorKind::Consume.emit(Metric::Errors.name(), &e, "kafka consumer error");
                    tokio::time::sleep(IDLE_TICK).await;
                    continue;
                }
            };
            for change in changes {
                match change {
                    Change::Revoked { partition, .. } => {
                        // Its records are read again from the group's
                        // commit, whoever gets it.
                        self.offsets.drop_partition(partition);
                        self.revoked.insert(partition);
                    }
                    Change::Assigned { partition, .. } => {
                        self.revoked.remove(&partition);
                    }
                    Change::AssignmentEnd => self.withdraw_revoked(),
                }
            }
            if !batch.is_empty() {
                self.handle(&batch).await?;
            }
        }
        // Stopping: store and commit what is final; nothing else.
        self.take_reports();
        self.flush(CommitMode::Sync).await
    }

    /// Moves the workers' reports into the buffers to store. (`retry`
    /// rows are bounded where they are reported: [`Reports::push`].)
    fn take_reports(&mut self) {
        for r in self.reports.take() {
            match r {
                Report::Attempt(row) => self.log.push(row),
                Report::Settled { alert_id, reading } => {
                    // A reading withdrawn meanwhile (the partition moved,
                    // maybe back): its offsets are not this reading's to
                    // settle.
                    if self
                        .in_flight
                        .get(&alert_id)
                        .is_some_and(|f| f.withdrawal.same(&reading))
                    {
                        self.settle_after_flush(&alert_id);
                    }
                }
                Report::DeadLetters(dead_letters) => self.dead_letters(dead_letters),
            }
        }
    }

    fn dead_letters(&mut self, dead_letters: Vec<DeadLetter>) {
        for d in &dead_letters {
            if d.reason == dead_letter::Reason::Undeliverable.as_str() {
                telemetry::dead_letters(dead_letter::Reason::Undeliverable.as_str(), 1);
            }
        }
        self.dead.extend(dead_letters);
    }

    fn retrying(&self) -> Retrying<'_> {
        Retrying {
            readiness: self.readiness,
            stop: self.stop,
            lost: self.lost,
        }
    }

    /// The partitions revoked and not assigned back went to other
    /// instances: the alerts read only from them are withdrawn from their
    /// workers, and their new owners read them again. Their attempts
    /// already made stay in the delivery log, which a new owner asks
    /// before delivering. (An alert of a partition assigned back stays
    /// with its worker, and the copies read again join it.)
    fn withdraw_revoked(&mut self) {
        if self.revoked.is_empty() {
            return;
        }
        let revoked = std::mem::take(&mut self.revoked);
        let pending = &mut self.pending;
        let mut withdrawn = 0usize;
        self.in_flight.retain(|_, f| {
            f.offsets.retain(|(p, _)| !revoked.contains(p));
            if !f.offsets.is_empty() {
                return true;
            }
            f.withdrawal.withdraw();
            withdrawn += 1;
            if let Some(k) = &f.department
                && let Some(n) = pending.get_mut(k)
            {
                *n = n.saturating_sub(1);
            }
            false
        });
        self.overflow
            .retain(|(_, job)| !job.withdrawal.is_withdrawn());
        if withdrawn > 0 {
            tracing::info!(
                partitions = ?revoked,
                withdrawn,
                "alerts of partitions now another instance's withdrawn from the workers"
            );
        }
    }

    /// The group took the partitions while ClickHouse was retried. The
    /// revocations come with the next poll, and the alerts in hand are
    /// withdrawn unless the rejoin assigns their partitions back.
    fn note_lost(&self, what: &str) {
        tracing::warn!(
            alerts = self.in_flight.len(),
            "{what}: partitions taken by the group while ClickHouse was retried (no poll for max.poll.interval.ms); rejoining"
        );
        ErrorKind::Rebalance.count(Metric::Errors.name());
    }

    /// The alert's offsets become final with the next flush.
    fn settle_after_flush(&mut self, alert_id: &str) {
        if let Some(f) = self.in_flight.remove(alert_id) {
            if let Some(k) = f.department
                && let Some(n) = self.pending.get_mut(&k)
            {
                *n = n.saturating_sub(1);
            }
            self.after_flush.extend(f.offsets);
        }
    }

    fn flush_due(&self) -> bool {
        !self.after_flush.is_empty()
            || !self.dead.is_empty()
            || self.log.len() >= self.cfg.batch_max_records
            || (!self.log.is_empty() && self.last_flush.elapsed() >= self.cfg.batch_max_wait)
    }

    /// Produces the dead letters, stores the delivery log, marks what they
    /// finished final, and commits what moved.
    async fn flush(&mut self, mode: CommitMode) -> Result<(), Interrupted> {
        if !self.dead.is_empty() {
            self.produce_dead_letters().await?;
            self.dead.clear();
        }
        if !self.log.is_empty() {
            let (store, log) = (&self.store, &self.log);
            match store_retry(self.retrying(), "writing alert_deliveries", || {
                store.insert_deliveries(log)
            })
            .await
            {
                Ok(()) => {}
                // The rows are facts whoever owns the alerts now: they
                // stay for the next flush, and so do the offsets they make
                // final.
                Err(Interrupted::Lost) => {
                    self.note_lost("delivery log not stored yet");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            let retry_rows = self
                .log
                .iter()
                .filter(|r| r.outcome == Outcome::Retry as i8)
                .count();
            self.reports.stored_retry_rows(retry_rows);
            self.log.clear();
        }
        for (p, o) in self.after_flush.drain(..) {
            self.offsets.settle(p, o);
        }
        self.last_flush = Instant::now();
        let positions = self.offsets.to_commit();
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(positions.len());
        for (p, at) in &positions {
            if let Err(e) =
                tpl.add_partition_offset(&self.kafka.topics.alerts, *p, Offset::Offset(*at))
            {
                ErrorKind::Commit.emit(Metric::Errors.name(), &e, "offset not committed");
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            // Only read again later: at least once.
            ErrorKind::Commit.emit(Metric::Errors.name(), &e, "offset commit failed");
        }
        Ok(())
    }

    async fn produce_dead_letters(&mut self) -> Result<(), Interrupted> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = self
            .dead
            .iter()
            .map(|d| (d.event_id.clone().into_bytes(), d.encode_to_vec()))
            .collect();
        let records: Vec<Outgoing<'_>> =
            encoded.iter().map(|(k, v)| Outgoing::keyed(k, v)).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .producer
                .send_all(&self.kafka.topics.dead_letters, &records)
                .await
            {
                Ok(()) => {
                    self.readiness.clear(Reason::KafkaUnreachable);
                    return Ok(());
                }
                Err(e) if ErrorClass::of(&e.first).is_transient() => {
                    ErrorKind::Produce.emit(
                        Metric::Errors.name(),
                        &e,
                        "dead letters not produced; retrying",
                    );
                    self.readiness.fail(
                        Reason::KafkaUnreachable,
                        format_args!("producing dead letters, attempt {attempt}: {e}"),
                    );
                }
                Err(e) => return Err(AlertError::Kafka(e.first).into()),
            }
            if !CLICKHOUSE_RETRY.sleep(attempt, self.stop).await {
                return Err(Interrupted::Stopped);
            }
        }
    }

    /// Pauses the topic while a department is at its pending bound (or
    /// jobs wait for room), resumes it once none is.
    fn pause_or_resume(&mut self) {
        for (key, dept) in &self.departments {
            telemetry::pending(
                &dept.tenant,
                &dept.name,
                self.pending.get(key).copied().unwrap_or(0),
            );
        }
        let max = self.cfg.max_pending_per_department;
        let over = !self.overflow.is_empty() || self.pending.values().any(|n| *n >= max);
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        if over {
            // Again on every pass: a partition assigned meanwhile starts
            // unpaused.
            if let Err(e) = self.consumer.pause(&assignment) {
                ErrorKind::Pause.emit(Metric::Errors.name(), &e, "pausing the alerts topic failed");
            }
            if !self.paused {
                tracing::info!(
                    max_pending_per_department = max,
                    "a department holds its most alerts pending: reading paused"
                );
                self.paused = true;
            }
        } else if self.paused {
            if let Err(e) = self.consumer.resume(&assignment) {
                ErrorKind::Pause.emit(
                    Metric::Errors.name(),
                    &e,
                    "resuming the alerts topic failed",
                );
            } else {
                tracing::info!("reading resumed");
                self.paused = false;
            }
        }
    }

    /// Hands jobs a full queue refused to their workers, as room frees.
    fn dispatch_overflow(&mut self) -> Result<(), Interrupted> {
        if self.overflow.is_empty() {
            return Ok(());
        }
        for (key, job) in std::mem::take(&mut self.overflow) {
            self.dispatch(key, job)?;
        }
        Ok(())
    }

    /// Gives `job` to its department's worker without waiting: a full
    /// queue keeps it in `overflow` (the topic pauses meanwhile).
    fn dispatch(&mut self, key: DepartmentKey, job: Job) -> Result<(), Interrupted> {
        let Some(q) = self.queues.get(&key) else {
            return Ok(());
        };
        match q.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.overflow.push((key, job));
                Ok(())
            }
            // Workers end only when stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Interrupted::Stopped),
        }
    }

    /// One batch: record, look up, write, dispatch.
    async fn handle(&mut self, batch: &[BorrowedMessage<'_>]) -> Result<(), Interrupted> {
        let now_ms = clock::now_unix_millis();
        let mut stats = telemetry::BatchRead {
            records: batch.len() as u64,
            written: 0,
            skipped_stored: 0,
            skipped_in_flight: 0,
            skipped_delivered: 0,
            undecodable: 0,
        };
        let mut fresh: Vec<Arc<Alert>> = Vec::new();
        for m in batch {
            let (p, o) = (m.partition(), m.offset());
            self.offsets.read(p, o);
            let payload = m.payload().unwrap_or_default();
            let alert = match decode(payload) {
                Ok(a) => a,
                Err(why) => {
                    stats.undecodable += 1;
                    telemetry::dead_letters(dead_letter::Reason::Decode.as_str(), 1);
                    self.dead.push(dead_letter::undecodable(
                        Stage::Alert,
                        payload,
                        (m.topic(), p, o),
                        "xoflow.v1.Alert with an alert_id of [0-9A-Za-z_-]{1,64}",
                        &why,
                        now_ms,
                    ));
                    self.after_flush.push((p, o));
                    continue;
                }
            };
            if let Some(f) = self.in_flight.get_mut(&alert.alert_id) {
                // A copy of an alert being handled: final with it.
                stats.skipped_in_flight += 1;
                f.offsets.push((p, o));
                continue;
            }
            self.in_flight.insert(
                alert.alert_id.clone(),
                InFlight {
                    department: None,
                    offsets: vec![(p, o)],
                    withdrawal: Withdrawal::default(),
                },
            );
            fresh.push(Arc::new(alert));
        }
        if fresh.is_empty() {
            stats.emit();
            return Ok(());
        }
        let ids: Vec<&str> = fresh.iter().map(|a| a.alert_id.as_str()).collect();
        let written_at = u32::try_from(now_ms.div_euclid(1000)).unwrap_or(0);
        // The lookup and the insert are retried together: an insert whose
        // answer was lost may have landed. The delivery log is read at the
        // same time (it does not depend on the insert): one ClickHouse
        // round trip less between an alert's arrival and its delivery.
        let (write, finals) = {
            let (store, fresh, ids) = (&self.store, &fresh, &ids);
            let write = store_retry(self.retrying(), "writing alerts", || async move {
                let stored = store.stored_alerts(ids).await?;
                let rows: Vec<AlertRow> = fresh
                    .iter()
                    .filter(|a| !stored.contains(&a.alert_id))
                    .map(|a| AlertRow::of(a, written_at))
                    .collect();
                store.insert_alerts(&rows).await?;
                Ok((rows.len() as u64, stored.len() as u64))
            });
            let finals = store_retry(self.retrying(), "reading alert_deliveries", || {
                store.final_deliveries(ids)
            });
            tokio::join!(write, finals)
        };
        let (write, finals) = match (write, finals) {
            (Ok(w), Ok(f)) if !(self.lost)() => (w, f),
            // The group took the partitions: a call failed after that, or
            // one that hung past `max.poll.interval.ms` answered. Nothing
            // of this batch goes to a worker: it is read again from the
            // group's commit, by whoever gets it.
            (Ok(_), Ok(_)) | (Err(Interrupted::Lost), _) | (_, Err(Interrupted::Lost)) => {
                for a in &fresh {
                    self.in_flight.remove(&a.alert_id);
                }
                self.note_lost("batch not handed to the workers");
                stats.emit();
                return Ok(());
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let (written, stored) = write;
        stats.written = written;
        stats.skipped_stored = stored;
        for alert in fresh {
            let id = alert.alert_id.clone();
            let key: DepartmentKey = (alert.tenant.clone(), alert.department.clone());
            let Some(dept) = self.departments.get(&key).cloned() else {
                if finals.contains(&(id.clone(), 0, String::new())) {
                    stats.skipped_delivered += 1;
                } else {
                    self.no_webhook(&alert, now_ms);
                }
                self.settle_after_flush(&id);
                continue;
            };
            let targets: Vec<u16> = dept
                .webhooks
                .iter()
                .filter(|w| !finals.contains(&(id.clone(), w.index, w.host.clone())))
                .map(|w| w.index)
                .collect();
            if targets.is_empty() {
                stats.skipped_delivered += 1;
                self.settle_after_flush(&id);
                continue;
            }
            let Some(f) = self.in_flight.get_mut(&id) else {
                continue;
            };
            f.department = Some(key.clone());
            let withdrawal = f.withdrawal.clone();
            *self.pending.entry(key.clone()).or_default() += 1;
            self.dispatch(
                key,
                Job {
                    alert,
                    targets,
                    withdrawal,
                },
            )?;
        }
        stats.emit();
        Ok(())
    }

    /// The `no_webhook` row of an alert whose department has no webhook.
    fn no_webhook(&mut self, alert: &Alert, now_ms: i64) {
        let raised_ms = alert
            .raised_at
            .as_ref()
            .map_or(0, xoflow_proto::to_unix_millis);
        telemetry::Delivered {
            alert_id: &alert.alert_id,
            tenant: &alert.tenant,
            department: &alert.department,
            webhook: 0,
            host: "",
            format: "none",
            attempt: 0,
            status: 0,
            outcome: Outcome::NoWebhook.as_str(),
            error: "",
            latency: None,
            raised_to_delivered: None,
        }
        .emit();
        self.log.push(DeliveryRow {
            at: u32::try_from(now_ms.div_euclid(1000)).unwrap_or(0),
            at_ms: now_ms,
            alert_id: alert.alert_id.clone(),
            tenant: alert.tenant.clone(),
            department: alert.department.clone(),
            webhook: 0,
            host: String::new(),
            format: FORMAT_NONE,
            attempt: 0,
            status: 0,
            outcome: Outcome::NoWebhook as i8,
            error: String::new(),
            latency_ms: 0,
            raised_at: u32::try_from(raised_ms.div_euclid(1000)).unwrap_or(0),
        });
    }
}

/// An alert record, or why it cannot be handled.
fn decode(payload: &[u8]) -> Result<Alert, String> {
    let a = Alert::decode(payload).map_err(|e| e.to_string())?;
    if !is_valid_id(&a.alert_id) {
        return Err(format!(
            "alert_id {:?} is not 1-64 characters of [0-9A-Za-z_-]",
            a.alert_id
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once the group took the partitions (no poll for
    /// `max.poll.interval.ms` while ClickHouse was away), a failed call is
    /// not retried: the loop goes back to polling, and rejoins.
    #[tokio::test]
    async fn a_failed_call_is_not_retried_once_the_partitions_are_taken() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let stop = CancellationToken::new();
        let readiness = xoflow_common::admin::Health::new().register("alert");
        let checks = AtomicU32::new(0);
        // Held after the first two failures, taken after the third.
        let lost = || checks.fetch_add(1, Ordering::AcqRel) >= 2;
        let calls = AtomicU32::new(0);
        let r = Retrying {
            readiness: &readiness,
            stop: &stop,
            lost: &lost,
        };
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            store_retry(r, "test", || {
                calls.fetch_add(1, Ordering::AcqRel);
                async {
                    Err::<(), _>(StoreError {
                        message: "unreachable".into(),
                        code: None,
                        transient: true,
                    })
                }
            }),
        )
        .await
        .expect("no retry once the partitions are taken");
        assert!(matches!(out, Err(Interrupted::Lost)));
        assert_eq!(calls.load(Ordering::Acquire), 3);
        assert_eq!(
            checks.load(Ordering::Acquire),
            3,
            "asked after each failure"
        );
    }

    #[test]
    fn only_alerts_with_a_usable_id_are_taken() {
        let ok = Alert {
            alert_id: "0123456789abcdef0123456789abcdef".into(),
            ..Default::default()
        };
        assert_eq!(decode(&ok.encode_to_vec()), Ok(ok));
        assert!(decode(b"\xff\xff\xff").is_err());
        let bad = Alert {
            alert_id: "x'; DROP TABLE alerts".into(),
            ..Default::default()
        };
        assert!(decode(&bad.encode_to_vec()).is_err_and(|e| e.contains("alert_id")));
        assert!(decode(&Alert::default().encode_to_vec()).is_err());
    }
}
