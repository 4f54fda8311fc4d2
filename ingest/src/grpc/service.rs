//! The `Collector` RPCs and the per-batch verdict logic shared with other
//! entry points.

use std::{collections::HashSet, time::Instant};

use tonic::{Request, Response, Status, Streaming};
use xoflow_proto::{
    Message,
    v1::{
        DeadLetter, Event, FieldViolation, IngestRequest, IngestResponse, RecordResult,
        collector_server::Collector,
    },
};

use crate::{
    IngestError,
    delivery::{Delivery, Encoded, Lane},
    telemetry,
    validate::{Normaliser, Reason, Violation},
};

/// The collector service: stateless apart from its Kafka client.
#[derive(Clone, Debug)]
pub struct CollectorService {
    normaliser: Normaliser,
    delivery: Delivery,
    max_batch_events: usize,
}

impl CollectorService {
    pub fn new(normaliser: Normaliser, delivery: Delivery, max_batch_events: usize) -> Self {
        Self {
            normaliser,
            delivery,
            max_batch_events,
        }
    }

    /// Validates, delivers and dead-letters one batch; shared by every
    /// entry point. Results are indexed from `first_index`.
    pub async fn ingest_batch(
        &self,
        events: Vec<Event>,
        first_index: u32,
        lane: Lane,
    ) -> Result<Vec<RecordResult>, IngestError> {
        if events.len() > self.max_batch_events {
            return Err(IngestError::BatchTooLarge {
                got: events.len(),
                max: self.max_batch_events,
            });
        }
        let verdict = handle_batch(&self.normaliser, events, first_index, now_ms());
        self.delivery.deliver(&verdict.accepted, lane).await?;
        telemetry::EventsAccepted {
            per_kind: &verdict.accepted_per_kind,
        }
        .emit();
        for (reason, count) in verdict.rejected_per_reason() {
            telemetry::EventsRejected { reason, count }.emit();
        }
        self.delivery.dead_letters(&verdict.dead_letters).await;
        Ok(verdict.results)
    }
}

impl CollectorService {
    /// Writes dead letters for records refused before validation (bytes
    /// that are not an event at all).
    pub async fn dead_letters(&self, letters: &[DeadLetter]) {
        if !letters.is_empty() {
            telemetry::EventsRejected {
                reason: Reason::Decode.as_str(),
                count: letters.len() as u64,
            }
            .emit();
        }
        self.delivery.dead_letters(letters).await;
    }
}

/// What one batch came to before delivery.
#[derive(Debug, Default)]
pub struct Verdict {
    /// One per submitted event, in order.
    pub results: Vec<RecordResult>,
    /// The accepted events, encoded and keyed, in order.
    pub accepted: Vec<Encoded>,
    pub accepted_per_kind: [u64; 5],
    /// One per refused event.
    pub dead_letters: Vec<DeadLetter>,
}

impl Verdict {
    fn rejected_per_reason(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for d in &self.dead_letters {
            let reason = reason_str(&d.reason);
            match counts.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => counts.push((reason, 1)),
            }
        }
        counts
    }
}

fn reason_str(s: &str) -> &'static str {
    [
        Reason::Missing,
        Reason::Invalid,
        Reason::OutOfRange,
        Reason::TooLong,
        Reason::UnknownEnum,
        Reason::Duplicate,
        Reason::Decode,
    ]
    .into_iter()
    .map(Reason::as_str)
    .find(|r| *r == s)
    .unwrap_or("OTHER")
}

/// Validates, normalises and encodes a batch: pure apart from the clock
/// value passed in, so every entry point (gRPC, HTTP, import) shares it.
pub fn handle_batch(n: &Normaliser, events: Vec<Event>, first_index: u32, now_ms: i64) -> Verdict {
    let mut v = Verdict {
        results: Vec::with_capacity(events.len()),
        accepted: Vec::with_capacity(events.len()),
        ..Default::default()
    };
    let mut seen: HashSet<String> = HashSet::with_capacity(events.len());
    for (i, mut e) in events.into_iter().enumerate() {
        let index = first_index + i as u32;
        let outcome = n.normalise(&mut e, now_ms).and_then(|()| {
            if seen.insert(e.event_id.clone()) {
                Ok(())
            } else {
                Err(vec![Violation {
                    field: "event_id".into(),
                    reason: Reason::Duplicate,
                    description: format!("event_id {:?} appears twice in this request", e.event_id),
                }])
            }
        });
        match outcome {
            Ok(()) => {
                if let Some(kind) = e.kind() {
                    v.accepted_per_kind[kind as usize] += 1;
                }
                v.results.push(RecordResult {
                    index,
                    event_id: e.event_id.clone(),
                    accepted: true,
                    violations: Vec::new(),
                });
                v.accepted.push(Encoded {
                    key: e.partition_key().to_owned(),
                    bytes: e.encode_to_vec(),
                });
            }
            Err(violations) => {
                let first = &violations[0];
                v.dead_letters.push(DeadLetter {
                    payload: e.encode_to_vec(),
                    content_type: "application/x-protobuf".into(),
                    stage: "ingest".into(),
                    reason: first.reason.as_str().into(),
                    field: first.field.clone(),
                    description: violations
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect::<Vec<_>>()
                        .join("; "),
                    tenant: e.tenant.clone(),
                    source: e.source.clone(),
                    event_id: e.event_id.clone(),
                    at: Some(xoflow_proto::from_unix_millis(now_ms)),
                });
                v.results.push(RecordResult {
                    index,
                    event_id: e.event_id,
                    accepted: false,
                    violations: violations
                        .into_iter()
                        .map(|v| FieldViolation {
                            field: v.field,
                            reason: v.reason.as_str().into(),
                            description: v.description,
                        })
                        .collect(),
                });
            }
        }
    }
    v
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn response(results: Vec<RecordResult>) -> IngestResponse {
    let accepted = results.iter().filter(|r| r.accepted).count() as u32;
    IngestResponse {
        rejected: results.len() as u32 - accepted,
        accepted,
        results,
    }
}

fn finish(rpc: &'static str, started: Instant, r: &Result<IngestResponse, IngestError>) {
    telemetry::RequestFinished {
        rpc,
        outcome: match r {
            Ok(_) => "ok",
            Err(e) => e.code(),
        },
        seconds: started.elapsed().as_secs_f64(),
    }
    .emit();
}

#[tonic::async_trait]
impl Collector for CollectorService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let started = Instant::now();
        let events = request.into_inner().events;
        let r = self.ingest_batch(events, 0, Lane::Live).await.map(response);
        finish("ingest", started, &r);
        Ok(Response::new(r?))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<IngestResponse>, Status> {
        let started = Instant::now();
        let mut stream = request.into_inner();
        let mut results = Vec::new();
        let r = async {
            while let Some(batch) = stream.message().await.map_err(|s| {
                IngestError::Internal(format!("reading the request stream: {}", s.message()))
            })? {
                let first = results.len() as u32;
                results.extend(self.ingest_batch(batch.events, first, Lane::Live).await?);
            }
            Ok(response(std::mem::take(&mut results)))
        }
        .await;
        finish("ingest_stream", started, &r);
        Ok(Response::new(r?))
    }
}
