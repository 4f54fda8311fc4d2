//! Delivery: one worker per (tenant, department), each with its own queue,
//! retry schedule and connections, so that a slow or dead receiver only
//! delays its own department's alerts.
//!
//! ```text
//!  stage loop ──Job (alert, webhooks to reach)──► bounded queue ──► department worker
//!      ▲                                                              │ ≤ max_in_flight calls at once,
//!      │                                                              │ each alert × webhook on its own
//!      │                                                              │ backoff: retry_backoff doubling to
//!      │                                                              │ retry_max_backoff, with jitter,
//!      │                                                              │ until give_up_after
//!      └──────────── Reports: one DeliveryRow per attempt, ◄──────────┘
//!                    DeadLetters as webhooks are given up,
//!                    Settled(alert id) once every webhook is final
//! ```
//!
//! In: [`Job`]s on the department's queue. Out: [`Report`]s, which the
//! stage loop takes in batches: it writes the rows to `alert_deliveries`,
//! produces the dead letters, and only then counts the alert's offsets as
//! final. An attempt is delivered (2xx, no robot error code), retried, or
//! final without delivery (refused for good, or failing past
//! `give_up_after`): a dead letter `UNDELIVERABLE` with the alert as
//! payload. [`next_step`] is that decision, pure.
//!
//! A worker never waits for the stage loop: reports go into a shared
//! buffer, and jobs come from a queue the loop only feeds while the
//! department holds fewer than `max_pending_per_department` alerts. Alerts
//! waiting for a retry wait in a timer heap, not in front of the queue: a
//! receiver answering 500 delays its own alerts only by their backoff.
//!
//! An alert whose partition went to another instance in a rebalance is
//! [`Withdrawal::withdraw`]n by the stage loop once the rebalance ends:
//! its worker starts no further attempt of it (queued, waiting for a
//! retry, or due), reports no settlement, and logs an attempt that was
//! already on the wire as `retry` unless it delivered. The partition's new
//! owner reads the alert again, asks the delivery log, and decides alone
//! about the webhooks not final there, on its own `give_up_after`. A
//! webhook's dead letter is reported as soon as it is given up
//! ([`Report::DeadLetters`]), not held until the alert is settled: its
//! `dead` row tells a new owner, or this instance after a restart, not to
//! try that webhook again, so nobody else would send it.

pub mod offsets;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream::FuturesUnordered};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use xoflow_common::{
    clock,
    dead_letter::{Builder, PROTOBUF_ALERT, Reason, Stage},
    retry::RetryPolicy,
};
use xoflow_proto::{
    Message,
    v1::{Alert, DeadLetter},
};

use crate::{
    store::{DeliveryRow, Outcome},
    telemetry,
    webhook::{Attempt, Verdict, Webhook, WebhookClient, payload},
};

/// A (tenant, department) pair: the unit of isolation.
pub type DepartmentKey = (String, String);

/// One department's receivers.
#[derive(Debug)]
pub struct Department {
    pub tenant: String,
    pub name: String,
    pub webhooks: Vec<Webhook>,
}

/// An alert for a department worker, and which of its webhooks still need
/// it (those the delivery log shows final are left out on a replay).
#[derive(Debug, Clone)]
pub struct Job {
    pub alert: Arc<Alert>,
    pub targets: Vec<u16>,
    /// Set by the stage loop once the alert's partition was revoked.
    pub withdrawal: Withdrawal,
}

/// Shared by the stage loop and the worker holding one reading of an
/// alert: the loop withdraws the alert when its partition goes to another
/// instance, and the worker drops it at its next step (see the module
/// doc). A later reading of the same alert gets a new one.
#[derive(Debug, Clone, Default)]
pub struct Withdrawal(Arc<AtomicBool>);

impl Withdrawal {
    pub fn withdraw(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_withdrawn(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether both are the same reading's.
    pub fn same(&self, other: &Withdrawal) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a worker tells the stage loop.
#[derive(Debug)]
pub enum Report {
    /// One attempt (its row of the delivery log).
    Attempt(DeliveryRow),
    /// A webhook was given up (refused for good, or failing past
    /// `give_up_after`): its dead letter, reported before the row of the
    /// attempt is stored.
    DeadLetters(Vec<DeadLetter>),
    /// Every webhook of the alert reached a final outcome (the dead letters
    /// of those given up were reported before). `reading` tells which
    /// reading of the alert this was, so that a settlement reported just
    /// before its reading was withdrawn does not settle a later reading.
    Settled {
        alert_id: String,
        reading: Withdrawal,
    },
}

/// `retry` rows of the delivery log reported and not stored yet (waiting
/// here or in the stage's buffer while ClickHouse is away); beyond it
/// further `retry` rows are dropped as they are reported, and counted in
/// `xoflow_alert_errors_total{error="delivery_log_dropped"}`. Final rows
/// and settlements are never dropped: they are bounded by the alerts
/// pending.
pub const MAX_BUFFERED_RETRY_ROWS: usize = 100_000;

/// Where workers leave their reports for the stage loop, which takes them
/// all at once. The bound on `retry` rows is kept here, where they arrive:
/// while ClickHouse is away the loop waits in its store's retries and takes
/// no reports, and the workers go on reporting an attempt per alert and
/// retry.
#[derive(Debug, Clone, Default)]
pub struct Reports(Arc<Mutex<Held>>);

#[derive(Debug, Default)]
struct Held {
    reports: Vec<Report>,
    /// `retry` rows reported and not yet stored: here, and taken by the
    /// loop but not stored yet ([`Reports::stored_retry_rows`]).
    retry_rows: usize,
    /// `retry` rows dropped since the bound was last reached: logged once
    /// when it is reached and once when there is room again.
    dropped: u64,
}

impl Reports {
    pub fn push(&self, r: Report) {
        let Ok(mut held) = self.0.lock() else { return };
        if let Report::Attempt(row) = &r
            && row.outcome == Outcome::Retry as i8
        {
            if held.retry_rows >= MAX_BUFFERED_RETRY_ROWS {
                if held.dropped == 0 {
                    tracing::warn!(
                        buffered = held.retry_rows,
                        "delivery log buffer full (ClickHouse away?): retry rows dropped until it drains"
                    );
                }
                held.dropped += 1;
                drop(held);
                telemetry::delivery_log_dropped(1);
                return;
            }
            held.retry_rows += 1;
        }
        held.reports.push(r);
    }

    /// Everything reported since the last call, in order.
    pub fn take(&self) -> Vec<Report> {
        self.0
            .lock()
            .map(|mut held| std::mem::take(&mut held.reports))
            .unwrap_or_default()
    }

    /// `n` `retry` rows taken from here were stored (or left the buffer):
    /// room for as many more.
    pub fn stored_retry_rows(&self, n: usize) {
        if let Ok(mut held) = self.0.lock() {
            held.retry_rows = held.retry_rows.saturating_sub(n);
            if held.dropped > 0 && held.retry_rows < MAX_BUFFERED_RETRY_ROWS {
                tracing::info!(dropped = held.dropped, "delivery log buffer has room again");
                held.dropped = 0;
            }
        }
    }
}

/// How a worker retries.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub retry: RetryPolicy,
    pub give_up_after: Duration,
    pub max_in_flight: usize,
}

/// What follows an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Delivered,
    /// Attempt again after this wait.
    Retry(Duration),
    /// No more attempts: dead-letter it, saying why.
    Dead(String),
}

/// The step after attempt number `attempt` (1-based) ended with `verdict`,
/// `elapsed` after the first attempt began; `u` in `0..1` draws the
/// jitter. Pure.
pub fn next_step(
    verdict: Verdict,
    attempt: u32,
    elapsed: Duration,
    policy: &Policy,
    u: f64,
) -> Step {
    match verdict {
        Verdict::Delivered => Step::Delivered,
        Verdict::Refused => Step::Dead("refused by the receiver".into()),
        Verdict::Retry { .. } if elapsed >= policy.give_up_after => Step::Dead(format!(
            "gave up after {attempt} attempts in {}s (alert.give_up_after {}s)",
            elapsed.as_secs(),
            policy.give_up_after.as_secs()
        )),
        Verdict::Retry { after } => {
            let wait = policy.retry.jittered(attempt, u);
            // A receiver's Retry-After is honoured up to the longest wait.
            let asked = after.map_or(Duration::ZERO, |a| a.min(policy.retry.max));
            Step::Retry(wait.max(asked))
        }
    }
}

/// One alert × webhook delivery.
#[derive(Debug)]
struct Task {
    alert: Arc<Alert>,
    webhook: u16,
    /// Attempts made so far.
    attempts: u32,
    /// When the first attempt began.
    first: Option<Instant>,
    withdrawal: Withdrawal,
}

/// An alert whose webhooks are not all final yet.
struct Open {
    remaining: usize,
    withdrawal: Withdrawal,
}

/// Forgets `open`'s entry for `task`'s withdrawn alert when it is that
/// reading's (a later reading of the alert may have taken its place).
fn forget(open: &mut HashMap<String, Open>, task: &Task) {
    if open
        .get(&task.alert.alert_id)
        .is_some_and(|o| o.withdrawal.same(&task.withdrawal))
    {
        open.remove(&task.alert.alert_id);
    }
}

type Attempting = Pin<Box<dyn Future<Output = (Task, Attempt, i64)> + Send>>;

/// Delivers `dept`'s jobs until `stop` is cancelled (attempts in flight
/// then are dropped: their alerts are not final, their offsets not
/// committed, and whoever reads them next delivers them again) or the queue
/// closes and everything taken is final.
pub async fn work(
    dept: Arc<Department>,
    mut jobs: mpsc::Receiver<Job>,
    client: WebhookClient,
    policy: Policy,
    reports: Reports,
    stop: CancellationToken,
) {
    let mut open: HashMap<String, Open> = HashMap::new();
    let mut ready: VecDeque<Task> = VecDeque::new();
    // Retries by due time; `seq` keeps equal times apart.
    let mut waiting: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut parked: HashMap<u64, Task> = HashMap::new();
    let mut seq = 0u64;
    let mut in_flight: FuturesUnordered<Attempting> = FuturesUnordered::new();
    let mut closed = false;
    loop {
        let now = Instant::now();
        while let Some(Reverse((due, id))) = waiting.peek().copied() {
            if due > now {
                break;
            }
            waiting.pop();
            if let Some(t) = parked.remove(&id) {
                ready.push_back(t);
            }
        }
        while in_flight.len() < policy.max_in_flight {
            let Some(task) = ready.pop_front() else { break };
            if task.withdrawal.is_withdrawn() {
                forget(&mut open, &task);
                continue;
            }
            in_flight.push(attempt(&dept, &client, task));
        }
        if closed && in_flight.is_empty() && ready.is_empty() && waiting.is_empty() {
            return;
        }
        let next_due = waiting.peek().map(|Reverse((due, _))| *due);
        // New jobs only while nothing already taken waits for a slot: the
        // queue, not this worker, holds what cannot start yet.
        let take = !closed && ready.is_empty() && in_flight.len() < policy.max_in_flight;
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            Some((mut task, a, at_ms)) = in_flight.next(), if !in_flight.is_empty() => {
                task.attempts += 1;
                let elapsed = task.first.map_or(Duration::ZERO, |f| f.elapsed());
                let mut step = next_step(a.verdict, task.attempts, elapsed, &policy, rand_unit());
                if task.withdrawal.is_withdrawn() {
                    // The new owner decides: only a delivery is final here,
                    // and nothing is settled or dead-lettered.
                    if step != Step::Delivered {
                        step = Step::Retry(Duration::ZERO);
                    }
                    report(&dept, &reports, &task, &a, &step, at_ms);
                    forget(&mut open, &task);
                    continue;
                }
                let id = task.alert.alert_id.clone();
                if let Some(letter) = report(&dept, &reports, &task, &a, &step, at_ms) {
                    reports.push(Report::DeadLetters(vec![letter]));
                }
                match step {
                    Step::Retry(wait) => {
                        seq += 1;
                        waiting.push(Reverse((Instant::now() + wait, seq)));
                        parked.insert(seq, task);
                    }
                    Step::Delivered | Step::Dead(_) => {
                        if let Some(o) = open.get_mut(&id) {
                            o.remaining = o.remaining.saturating_sub(1);
                            if o.remaining == 0
                                && let Some(o) = open.remove(&id)
                            {
                                reports.push(Report::Settled {
                                    alert_id: id,
                                    reading: o.withdrawal,
                                });
                            }
                        }
                    }
                }
            }
            () = sleep_until(next_due), if next_due.is_some() => {}
            job = jobs.recv(), if take => match job {
                Some(job) => {
                    let id = job.alert.alert_id.clone();
                    let taken = open.get(&id).is_some_and(|o| !o.withdrawal.is_withdrawn());
                    if job.targets.is_empty() || taken || job.withdrawal.is_withdrawn() {
                        // Nothing to do: the stage loop sends an alert again
                        // only once its earlier reading was withdrawn.
                        continue;
                    }
                    // A withdrawn reading's tasks still queued or parked
                    // are dropped when they come up (`forget` leaves this
                    // entry alone).
                    open.insert(id, Open {
                        remaining: job.targets.len(),
                        withdrawal: job.withdrawal.clone(),
                    });
                    for w in job.targets {
                        ready.push_back(Task {
                            alert: job.alert.clone(),
                            webhook: w,
                            attempts: 0,
                            first: None,
                            withdrawal: job.withdrawal.clone(),
                        });
                    }
                }
                None => closed = true,
            },
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(d) = due {
        tokio::time::sleep_until(d).await;
    }
}

fn rand_unit() -> f64 {
    use rand::Rng;
    rand::rng().random::<f64>()
}

/// One attempt of `task`: the request is rendered (timestamps, signatures)
/// when it starts.
fn attempt(dept: &Department, client: &WebhookClient, mut task: Task) -> Attempting {
    task.first.get_or_insert_with(Instant::now);
    let hook = dept.webhooks.get(usize::from(task.webhook)).cloned();
    let client = client.clone();
    Box::pin(async move {
        let at_ms = clock::now_unix_millis();
        let a = match hook {
            Some(h) => {
                let req = payload::render(&task.alert, &h, at_ms);
                client.send(h.format, req).await
            }
            // The stage loop only names configured webhooks.
            None => Attempt {
                status: 0,
                verdict: Verdict::Refused,
                error: "no such webhook".into(),
                latency: Duration::ZERO,
            },
        };
        (task, a, at_ms)
    })
}

/// Writes the attempt's row and metrics; the dead letter when the step is
/// final without delivery.
fn report(
    dept: &Department,
    reports: &Reports,
    task: &Task,
    a: &Attempt,
    step: &Step,
    at_ms: i64,
) -> Option<DeadLetter> {
    let alert = &task.alert;
    let hook = dept.webhooks.get(usize::from(task.webhook));
    let (host, format) = hook.map_or(("", "generic"), |h| (h.host.as_str(), h.format.as_str()));
    let format_code = hook.map_or(0, |h| {
        crate::config::Format::ALL
            .iter()
            .position(|f| *f == h.format)
            .map_or(0, |i| i as i8 + 1)
    });
    let (outcome, error) = match step {
        Step::Delivered => (Outcome::Delivered, String::new()),
        Step::Retry(_) => (Outcome::Retry, a.error.clone()),
        Step::Dead(why) if a.error.is_empty() => (Outcome::Dead, why.clone()),
        Step::Dead(why) => (Outcome::Dead, format!("{why}: {}", a.error)),
    };
    let raised_ms = alert
        .raised_at
        .as_ref()
        .map_or(0, xoflow_proto::to_unix_millis);
    let now_ms = clock::now_unix_millis();
    telemetry::Delivered {
        alert_id: &alert.alert_id,
        tenant: &dept.tenant,
        department: &dept.name,
        webhook: task.webhook,
        host,
        format,
        attempt: task.attempts,
        status: a.status,
        outcome: outcome.as_str(),
        error: &error,
        latency: Some(a.latency),
        raised_to_delivered: (outcome == Outcome::Delivered && raised_ms > 0)
            .then(|| (now_ms - raised_ms) as f64 / 1e3),
    }
    .emit();
    reports.push(Report::Attempt(DeliveryRow {
        at: u32::try_from(at_ms.div_euclid(1000)).unwrap_or(0),
        at_ms,
        alert_id: alert.alert_id.clone(),
        tenant: dept.tenant.clone(),
        department: dept.name.clone(),
        webhook: task.webhook,
        host: host.to_owned(),
        format: format_code,
        attempt: task.attempts,
        status: a.status,
        outcome: outcome as i8,
        error: error.clone(),
        latency_ms: u32::try_from(a.latency.as_millis()).unwrap_or(u32::MAX),
        raised_at: u32::try_from(raised_ms.div_euclid(1000)).unwrap_or(0),
    }));
    if outcome != Outcome::Dead {
        return None;
    }
    let event = alert.trigger.as_ref().and_then(|t| t.event.as_ref());
    Some(
        Builder::new(Stage::Alert, Reason::Undeliverable, now_ms)
            .payload(alert.encode_to_vec(), PROTOBUF_ALERT)
            .field(hook.map_or_else(String::new, |h| h.path.clone()))
            .origin(
                alert.tenant.clone(),
                event.map_or_else(String::new, |e| e.source.clone()),
                event.map_or_else(String::new, |e| e.event_id.clone()),
            )
            .description(format!(
                "alert {} to webhook {} ({host}, {format}) after {} attempts: {error}",
                alert.alert_id, task.webhook, task.attempts
            ))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            retry: RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60)),
            give_up_after: Duration::from_secs(30 * 60),
            max_in_flight: 8,
        }
    }

    /// While the loop takes no reports (ClickHouse away, the loop inside
    /// its store's retries), the `retry` rows reported stop at the bound
    /// as they arrive; final rows and settlements still come through, and
    /// room comes back as rows are stored. Capped where the loop took the
    /// reports, as before, the workers' reports grew without bound here.
    #[test]
    fn retry_rows_stop_at_the_bound_as_they_are_reported() {
        let row = |alert: usize, outcome: Outcome| {
            Report::Attempt(DeliveryRow {
                alert_id: format!("a{alert}"),
                outcome: outcome as i8,
                ..Default::default()
            })
        };
        let reports = Reports::default();
        for n in 0..MAX_BUFFERED_RETRY_ROWS + 50 {
            reports.push(row(n, Outcome::Retry));
        }
        reports.push(row(0, Outcome::Delivered));
        reports.push(Report::Settled {
            alert_id: "a0".into(),
            reading: Withdrawal::default(),
        });
        let taken = reports.take();
        assert_eq!(taken.len(), MAX_BUFFERED_RETRY_ROWS + 2);
        assert!(matches!(
            &taken[MAX_BUFFERED_RETRY_ROWS],
            Report::Attempt(r) if r.outcome == Outcome::Delivered as i8
        ));
        // Taken but not stored: still no room.
        reports.push(row(1, Outcome::Retry));
        assert!(reports.take().is_empty());
        reports.stored_retry_rows(10);
        for n in 0..20 {
            reports.push(row(n, Outcome::Retry));
        }
        assert_eq!(reports.take().len(), 10, "room for the 10 stored");
    }

    #[test]
    fn the_backoff_doubles_from_retry_backoff_to_its_cap() {
        let p = policy();
        let retry = Verdict::Retry { after: None };
        // Without jitter drawn (u = 0): exactly the exponential figure.
        let waits: Vec<u64> = (1..=9)
            .map(|n| match next_step(retry, n, Duration::ZERO, &p, 0.0) {
                Step::Retry(w) => w.as_secs(),
                s => panic!("{s:?}"),
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // With jitter, between half and all of it, never shrinking from one
        // attempt to the next below the cap.
        for n in 1..6 {
            for u in [0.0, 0.3, 0.999] {
                let Step::Retry(w) = next_step(retry, n, Duration::ZERO, &p, u) else {
                    panic!("retry")
                };
                let full = p.retry.delay(n);
                assert!(w <= full && w >= full / 2, "{n} {u} {w:?}");
                let Step::Retry(longest_before) = next_step(retry, n - 1, Duration::ZERO, &p, 0.0)
                else {
                    panic!("retry")
                };
                assert!(
                    n == 1 || w >= longest_before,
                    "{n}: {w:?} < {longest_before:?}"
                );
            }
        }
    }

    #[test]
    fn a_receiver_asking_for_time_gets_it_up_to_the_cap() {
        let p = policy();
        let step = |after| {
            next_step(
                Verdict::Retry { after: Some(after) },
                1,
                Duration::ZERO,
                &p,
                0.0,
            )
        };
        assert_eq!(
            step(Duration::from_secs(30)),
            Step::Retry(Duration::from_secs(30))
        );
        assert_eq!(
            step(Duration::from_secs(3600)),
            Step::Retry(Duration::from_secs(60))
        );
        assert_eq!(step(Duration::ZERO), Step::Retry(Duration::from_secs(1)));
    }

    #[test]
    fn deliveries_end_delivered_refused_or_given_up() {
        let p = policy();
        assert_eq!(
            next_step(Verdict::Delivered, 7, Duration::from_secs(9999), &p, 0.5),
            Step::Delivered
        );
        assert!(matches!(
            next_step(Verdict::Refused, 1, Duration::ZERO, &p, 0.5),
            Step::Dead(why) if why == "refused by the receiver"
        ));
        let retry = Verdict::Retry { after: None };
        assert!(matches!(
            next_step(retry, 40, Duration::from_secs(30 * 60 - 1), &p, 0.5),
            Step::Retry(_)
        ));
        assert!(matches!(
            next_step(retry, 41, Duration::from_secs(30 * 60), &p, 0.5),
            Step::Dead(why) if why.starts_with("gave up after 41 attempts in 1800s")
        ));
    }

    /// Webhook `index` of department acme/logistics at `url`.
    fn hook(index: usize, url: String, format: crate::config::Format) -> Webhook {
        Webhook::new(
            &crate::config::WebhookConfig {
                url,
                format,
                secret: None,
            },
            index,
            format!("alert.tenants.acme.departments.logistics.webhooks[{index}]"),
        )
        .expect("hook")
    }

    fn logistics(webhooks: Vec<Webhook>) -> Arc<Department> {
        Arc::new(Department {
            tenant: "acme".into(),
            name: "logistics".into(),
            webhooks,
        })
    }

    /// A worker for `dept`, its queue and its reports; requests time out
    /// after `timeout`. It ends once the queue is closed and all is final.
    fn spawn_worker(
        dept: Arc<Department>,
        policy: Policy,
        timeout: Duration,
    ) -> (mpsc::Sender<Job>, Reports, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4);
        let reports = Reports::default();
        let worker = tokio::spawn(work(
            dept,
            rx,
            WebhookClient::new(timeout).expect("client"),
            policy,
            reports.clone(),
            CancellationToken::new(),
        ));
        (tx, reports, worker)
    }

    /// Sends `alert` (webhook 0) as the queue's last job, then waits for
    /// the worker to end with everything final: the reports left.
    async fn last_job(
        tx: mpsc::Sender<Job>,
        alert: Arc<Alert>,
        worker: tokio::task::JoinHandle<()>,
        reports: &Reports,
    ) -> Vec<Report> {
        tx.send(Job {
            alert,
            targets: vec![0],
            withdrawal: Withdrawal::default(),
        })
        .await
        .expect("send");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(120), worker)
            .await
            .expect("the worker ends once the queue is closed and all is final")
            .expect("worker");
        reports.take()
    }

    /// The delivery log rows among `got`.
    fn attempt_rows(got: &[Report]) -> Vec<&DeliveryRow> {
        got.iter()
            .filter_map(|r| match r {
                Report::Attempt(row) => Some(row),
                Report::Settled { .. } | Report::DeadLetters(_) => None,
            })
            .collect()
    }

    /// Retries 1, 2, 4, 4… s apart without jitter, given up after 10 s
    /// (the paused-clock tests' schedule).
    fn short_policy() -> Policy {
        Policy {
            retry: RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(4))
                .with_jitter(0.0),
            give_up_after: Duration::from_secs(10),
            max_in_flight: 2,
        }
    }

    /// A port nobody listens on.
    fn closed_port() -> std::net::SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
    }

    /// A department whose one webhook is a closed port.
    fn unreachable() -> (Arc<Department>, std::net::SocketAddr) {
        let closed = closed_port();
        let url = format!("http://{closed}/hook");
        (
            logistics(vec![hook(0, url, crate::config::Format::Wecom)]),
            closed,
        )
    }

    /// An alert with two webhooks, one refusing it for good (400) and one
    /// unreachable, withdrawn while the second waits for its retry: the
    /// first's dead letter was reported as soon as it was given up,
    /// unsettled (its `dead` row keeps the new owner from that webhook, so
    /// nobody else would send it), and the second is attempted no more.
    /// Held until the alert was settled, the dead letter was dropped with
    /// the withdrawn reading (or with the worker, on a stop), never sent.
    #[tokio::test]
    async fn a_webhook_given_up_sends_its_dead_letter_even_if_the_alert_is_withdrawn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port");
        let refusing = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let app = axum::Router::new()
                .fallback(|| async { (axum::http::StatusCode::BAD_REQUEST, "no such recipient") });
            let _ = axum::serve(listener, app).await;
        });
        let dept = logistics(vec![
            hook(
                0,
                format!("http://{refusing}/hook"),
                crate::config::Format::Generic,
            ),
            hook(
                1,
                format!("http://{}/hook", closed_port()),
                crate::config::Format::Generic,
            ),
        ]);
        let policy = Policy {
            // Long enough that the withdrawal comes first on a busy
            // machine: it follows the second report by a few ms.
            retry: RetryPolicy::exponential(Duration::from_secs(2), Duration::from_secs(2))
                .with_jitter(0.0),
            give_up_after: Duration::from_secs(60),
            max_in_flight: 2,
        };
        let (tx, reports, worker) = spawn_worker(dept, policy, Duration::from_secs(5));
        let w = Withdrawal::default();
        tx.send(Job {
            alert: Arc::new(Alert {
                alert_id: "a2".into(),
                tenant: "acme".into(),
                department: "logistics".into(),
                ..Default::default()
            }),
            targets: vec![0, 1],
            withdrawal: w.clone(),
        })
        .await
        .expect("send");
        // Both attempted once: webhook 0 refused for good, 1 to retry.
        let mut got = Vec::new();
        let first_two = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                got.extend(reports.take());
                let outcomes: Vec<(u16, i8)> = got
                    .iter()
                    .filter_map(|r| match r {
                        Report::Attempt(row) => Some((row.webhook, row.outcome)),
                        _ => None,
                    })
                    .collect();
                if outcomes.len() >= 2 {
                    return outcomes;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both webhooks attempted");
        assert!(
            first_two.contains(&(0, Outcome::Dead as i8)),
            "{first_two:?}"
        );
        assert!(
            first_two.contains(&(1, Outcome::Retry as i8)),
            "{first_two:?}"
        );
        w.withdraw();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("the worker ends once its queue is closed and nothing is left")
            .expect("worker");
        server.abort();
        got.extend(reports.take());
        assert_eq!(
            attempt_rows(&got).len(),
            2,
            "no attempt after the withdrawal: {got:?}"
        );
        assert!(
            !got.iter().any(|r| matches!(r, Report::Settled { .. })),
            "{got:?}"
        );
        let letters: Vec<&DeadLetter> = got
            .iter()
            .filter_map(|r| match r {
                Report::DeadLetters(d) => Some(d),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(letters.len(), 1, "{got:?}");
        assert_eq!(
            letters[0].field,
            "alert.tenants.acme.departments.logistics.webhooks[0]"
        );
        assert_eq!(letters[0].reason, "UNDELIVERABLE");
    }

    /// A reading withdrawn while it waits for its retry gets no further
    /// attempt, no settlement and no dead letter; a later reading of the
    /// same alert is taken at once (the withdrawn one's parked retry does
    /// not block it) and runs to its end alone. Without the withdrawal the
    /// first reading would be retried to `give_up_after` and the second
    /// ignored as a copy.
    #[tokio::test(start_paused = true)]
    async fn a_withdrawn_alert_is_attempted_no_more_and_not_settled() {
        let (dept, _closed) = unreachable();
        let (tx, reports, worker) = spawn_worker(dept, short_policy(), Duration::from_secs(1));
        let alert = Arc::new(Alert {
            alert_id: "a1".into(),
            tenant: "acme".into(),
            department: "logistics".into(),
            ..Default::default()
        });
        let first = Withdrawal::default();
        tx.send(Job {
            alert: alert.clone(),
            targets: vec![0],
            withdrawal: first.clone(),
        })
        .await
        .expect("send");
        let mut got = Vec::new();
        while got.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            got.extend(reports.take());
        }
        // Parked for its retry, 1 s away: withdrawn meanwhile, and read
        // again.
        first.withdraw();
        got.extend(last_job(tx, alert, worker, &reports).await);
        let rows = attempt_rows(&got);
        let settled = got
            .iter()
            .filter(|r| matches!(r, Report::Settled { .. }))
            .count();
        assert_eq!(settled, 1, "settled once, by the second reading: {got:?}");
        let letters = got
            .iter()
            .filter_map(|r| match r {
                Report::DeadLetters(d) => Some(d.len()),
                _ => None,
            })
            .sum::<usize>();
        assert_eq!(letters, 1, "one dead letter, the second reading's: {got:?}");
        // The first reading's one attempt, then the second's from 1 to the
        // last, given up.
        let attempts: Vec<u32> = rows.iter().map(|r| r.attempt).collect();
        assert_eq!(attempts[..2], [1, 1], "{attempts:?}");
        assert!(
            attempts[1..]
                .iter()
                .enumerate()
                .all(|(i, a)| *a == i as u32 + 1),
            "{attempts:?}"
        );
        assert_eq!(
            rows.iter()
                .filter(|r| r.outcome == Outcome::Dead as i8)
                .count(),
            1
        );
        assert_eq!(rows.last().map(|r| r.outcome), Some(Outcome::Dead as i8));
    }

    /// A worker against a receiver that is never there: it keeps retrying
    /// on the schedule, reports every attempt, and gives up once
    /// `give_up_after` has passed, with a dead letter. Paused time: the
    /// test waits for nothing real.
    #[tokio::test(start_paused = true)]
    async fn a_worker_retries_then_dead_letters_with_the_alert() {
        let (dept, closed) = unreachable();
        let (tx, reports, worker) = spawn_worker(dept, short_policy(), Duration::from_secs(1));
        let alert = Alert {
            alert_id: "a1".into(),
            tenant: "acme".into(),
            department: "logistics".into(),
            ..Default::default()
        };
        let got = last_job(tx, Arc::new(alert.clone()), worker, &reports).await;
        let rows = attempt_rows(&got);
        // Attempts about 0, 1, 3, 7 and 11 s after the first (a paused
        // clock may also time a refused connection out first, which only
        // shifts the schedule): retried until give_up_after, then dead.
        assert!((3..=6).contains(&rows.len()), "{rows:?}");
        let (last, retried) = rows.split_last().expect("rows");
        assert!(retried.iter().all(|r| r.outcome == Outcome::Retry as i8));
        assert_eq!(last.outcome, Outcome::Dead as i8);
        assert!(
            rows.iter()
                .enumerate()
                .all(|(i, r)| r.attempt == i as u32 + 1)
        );
        assert!(
            rows.iter()
                .all(|r| r.host == closed.to_string() && r.format == 4)
        );
        // The dead letter as the webhook was given up, then the settlement.
        let [
            ..,
            Report::DeadLetters(dead_letters),
            Report::Settled { alert_id, .. },
        ] = got.as_slice()
        else {
            panic!("dead letter, then settled, last: {got:?}")
        };
        assert_eq!(alert_id, "a1");
        assert_eq!(dead_letters.len(), 1);
        let d = &dead_letters[0];
        assert_eq!(
            (d.stage.as_str(), d.reason.as_str()),
            ("alert", "UNDELIVERABLE")
        );
        assert_eq!(
            d.field,
            "alert.tenants.acme.departments.logistics.webhooks[0]"
        );
        assert_eq!(d.content_type, PROTOBUF_ALERT);
        assert_eq!(Alert::decode(d.payload.as_slice()).ok(), Some(alert));
        assert!(d.description.contains("gave up after"), "{}", d.description);
    }
}
