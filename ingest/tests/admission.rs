//! Admission at the door, in process over deliveries that hold requests:
//! at the in-flight limit a request is refused at once (429 /
//! RESOURCE_EXHAUSTED with a retry hint), the accepted ones are answered
//! within the request deadline, and a request past its deadline is told to
//! retry and gives its budget back.
//!
//! The bounds asserted are the acceptance (refusal within 100 ms,
//! accepted p99 below the deadline), asserted generously (a refusal within
//! 1 s) because the machine is shared; the measured p99s are printed.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, http::Request};
use tokio::sync::watch;
use tower::ServiceExt;
use xoflow_common::clock;
use xoflow_ingest::{
    Deliver, IngestError,
    delivery::{DeliverFuture, EncodedBatch, Lane},
    grpc::CollectorService,
};
use xoflow_proto::v1::{DeadLetter, IngestRequest, collector_server::Collector};

/// A broker stand-in: one batch at a time, each taking `per_batch`, and
/// nothing acknowledged while the gate is shut.
#[derive(Debug)]
struct Held {
    per_batch: Duration,
    open: watch::Receiver<bool>,
    one_at_a_time: tokio::sync::Mutex<()>,
    delivered: AtomicUsize,
    /// Batches handed over so far, acknowledged or not.
    handed: watch::Sender<usize>,
}

impl Deliver for Held {
    fn deliver<'a>(
        &'a self,
        batch: &'a EncodedBatch,
        _lane: Lane,
    ) -> DeliverFuture<'a, Result<(), IngestError>> {
        Box::pin(async move {
            self.handed.send_modify(|n| *n += 1);
            let mut open = self.open.clone();
            open.wait_for(|o| *o)
                .await
                .map_err(|_| IngestError::Internal("gate dropped".into()))?;
            let _one = self.one_at_a_time.lock().await;
            // The broker's time to acknowledge a batch: what the test models.
            tokio::time::sleep(self.per_batch).await;
            self.delivered.fetch_add(batch.len(), Ordering::Relaxed);
            Ok(())
        })
    }

    fn dead_letters<'a>(&'a self, _letters: &'a [DeadLetter]) -> DeliverFuture<'a, ()> {
        Box::pin(async {})
    }
}

fn held(per_batch: Duration, open: bool) -> (Arc<Held>, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(open);
    let d = Arc::new(Held {
        per_batch,
        open: rx,
        one_at_a_time: tokio::sync::Mutex::new(()),
        delivered: AtomicUsize::new(0),
        handed: watch::channel(0).0,
    });
    (d, tx)
}

fn body(prefix: &str, n: usize, now: i64) -> Vec<u8> {
    let events: Vec<_> = (0..n)
        .map(|i| support::base("order", &format!("{prefix}-{i}"), now))
        .collect();
    serde_json::to_vec(&events).expect("json")
}

async fn post(router: &Router, body: Vec<u8>) -> (u16, Option<String>, Duration) {
    let started = Instant::now();
    let request = Request::post("/v1/events")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body))
        .expect("request");
    let r = router.clone().oneshot(request).await.expect("infallible");
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = r.status().as_u16();
    let _ = axum::body::to_bytes(r.into_body(), usize::MAX).await;
    (status, retry_after, started.elapsed())
}

fn p(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// 48 callers sending 100-event requests as fast as they can to a broker
/// that acknowledges 50 batches a second, with room for 5 requests in
/// flight: the rest are refused at once, and what is accepted is answered
/// well within the deadline instead of queueing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_the_door_and_accepted_requests_meet_the_deadline() {
    let mut cfg = support::config("");
    cfg.max_batch_events = 100;
    cfg.max_in_flight_events = 500;
    cfg.request_timeout = Duration::from_secs(3);
    let (delivery, _gate) = held(Duration::from_millis(20), true);
    let ingestor = xoflow_ingest::ingestor(&cfg, delivery.clone()).expect("ingestor");
    let router = xoflow_ingest::http::router(ingestor, cfg.max_body_bytes);
    let now = clock::now_unix_millis();

    // Bodies are built first so that the callers only send.
    let bodies: Vec<Vec<Vec<u8>>> = (0..48)
        .map(|c| {
            (0..10)
                .map(|r| body(&format!("c{c}-r{r}"), 100, now))
                .collect()
        })
        .collect();
    let mut callers = Vec::new();
    for mine in bodies {
        let router = router.clone();
        callers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for b in mine {
                out.push(post(&router, b).await);
            }
            out
        }));
    }
    let (mut accepted, mut refused, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for c in callers {
        for (status, retry_after, took) in c.await.expect("caller") {
            match status {
                200 => accepted.push(took),
                429 => {
                    assert_eq!(retry_after.as_deref(), Some("1"), "429 without Retry-After");
                    refused.push(took);
                }
                s => other.push((s, took)),
            }
        }
    }
    accepted.sort();
    refused.sort();
    println!(
        "accepted {} (p50 {:?}, p99 {:?}), refused {} (p50 {:?}, p99 {:?})",
        accepted.len(),
        p(&accepted, 0.5),
        p(&accepted, 0.99),
        refused.len(),
        p(&refused, 0.5),
        p(&refused, 0.99)
    );
    assert!(other.is_empty(), "other answers: {other:?}");
    assert!(!refused.is_empty(), "overload was never refused");
    assert!(!accepted.is_empty(), "nothing was accepted");
    assert!(
        p(&refused, 0.99) < Duration::from_secs(1),
        "refusals queued"
    );
    assert!(p(&accepted, 0.99) < cfg.request_timeout);
    assert_eq!(
        delivery.delivered.load(Ordering::Relaxed),
        accepted.len() * 100
    );
}

/// With the budget held by requests the broker does not acknowledge, HTTP
/// and gRPC callers are refused at once; past the deadline the held ones
/// are told to retry and their budget is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_refuses_at_once_and_the_deadline_frees_it() {
    let mut cfg = support::config("");
    cfg.max_batch_events = 100;
    cfg.max_in_flight_events = 200;
    cfg.request_timeout = Duration::from_millis(500);
    let (delivery, gate) = held(Duration::ZERO, false);
    let ingestor = xoflow_ingest::ingestor(&cfg, delivery.clone()).expect("ingestor");
    let router = xoflow_ingest::http::router(ingestor.clone(), cfg.max_body_bytes);
    let now = clock::now_unix_millis();

    let holders: Vec<_> = (0..2)
        .map(|i| {
            let router = router.clone();
            tokio::spawn(async move { post(&router, body(&format!("h{i}"), 100, now)).await })
        })
        .collect();
    // Once both are held by the broker, the budget is full.
    delivery
        .handed
        .subscribe()
        .wait_for(|n| *n == 2)
        .await
        .expect("handed");
    let (status, retry_after, took) = post(&router, body("probe", 100, now)).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("1")));
    println!("HTTP refusal at the limit took {took:?}");
    assert!(took < Duration::from_secs(1));

    let service = CollectorService::new(ingestor);
    let events = support::events(100, "grpc", now);
    let started = Instant::now();
    let status = service
        .ingest(tonic::Request::new(IngestRequest { events }))
        .await
        .expect_err("refused");
    println!("gRPC refusal at the limit took {:?}", started.elapsed());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_secs(1));

    for h in holders {
        let (status, retry_after, took) = h.await.expect("holder");
        assert_eq!((status, retry_after.as_deref()), (503, Some("1")));
        assert!(took >= cfg.request_timeout && took < cfg.request_timeout * 4);
    }
    // The budget is free again: a request is accepted once the broker is.
    gate.send_replace(true);
    assert_eq!(post(&router, body("after", 100, now)).await.0, 200);
}
