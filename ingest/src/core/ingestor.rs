//! The [`Ingestor`]: the one object every entry point shares. It judges a
//! batch, hands the accepted records to delivery, writes the dead letters
//! and emits the batch's telemetry; the entry points only decode and
//! answer. It holds the in-flight budget ([`Admission`]) and the request
//! deadline.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use xoflow_common::clock;
use xoflow_proto::v1::{IngestResponse, RecordResult};

use super::{Admission, Record, handle_batch};
use crate::{
    IngestError,
    auth::{Authenticator, Principal},
    delivery::{Deliver, Lane},
    normalise::Normaliser,
    telemetry,
};

/// The collectors' shared core: a normaliser per lane, the key check and
/// the delivery. Cheap to clone: clones share the delivery.
#[derive(Clone, Debug)]
pub struct Ingestor {
    live: Normaliser,
    backfill: Normaliser,
    delivery: Arc<dyn Deliver>,
    auth: Authenticator,
    max_batch_events: usize,
    /// The in-flight budget, taken without waiting.
    admission: Admission,
    /// How long judging and delivering one request may take before its
    /// caller is told to retry.
    request_timeout: Duration,
}

impl Ingestor {
    pub fn new(
        live: Normaliser,
        backfill: Normaliser,
        delivery: Arc<dyn Deliver>,
        auth: Authenticator,
        max_batch_events: usize,
        admission: Admission,
        request_timeout: Duration,
    ) -> Self {
        Self {
            live,
            backfill,
            delivery,
            auth,
            max_batch_events,
            admission,
            request_timeout,
        }
    }

    /// The in-flight budget, for the entry points to take bytes at the
    /// door.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// `work` (judging and delivering a request), bounded by the request
    /// deadline. Past it the caller is told to retry: whatever delivery had
    /// started may still become durable, and a retry with the same event
    /// ids is deduplicated downstream.
    pub async fn within_deadline<T>(
        &self,
        work: impl Future<Output = Result<T, IngestError>>,
    ) -> Result<T, IngestError> {
        tokio::time::timeout(self.request_timeout, work)
            .await
            .unwrap_or(Err(IngestError::DeadlineExceeded {
                after: self.request_timeout,
            }))
    }

    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub fn max_batch_events(&self) -> usize {
        self.max_batch_events
    }

    /// Judges, delivers and dead-letters one batch; answers once the
    /// accepted records are durable. Its events are taken from the
    /// in-flight budget first, without waiting: RESOURCE_EXHAUSTED at once
    /// when they do not fit.
    pub async fn ingest(
        &self,
        records: Vec<Record>,
        first_index: u32,
        principal: Option<&Principal>,
        lane: Lane,
    ) -> Result<Vec<RecordResult>, IngestError> {
        if records.len() > self.max_batch_events {
            return Err(IngestError::BatchTooLarge {
                got: records.len(),
                max: self.max_batch_events,
            });
        }
        let mut ticket = self.admission.ticket();
        ticket.add_events(records.len())?;
        let n = match lane {
            Lane::Live => &self.live,
            Lane::Backfill => &self.backfill,
        };
        let verdict = handle_batch(n, records, first_index, principal, clock::now_unix_millis());
        self.delivery.deliver(&verdict.accepted, lane).await?;
        telemetry::EventsAccepted {
            per_kind: &verdict.accepted_per_kind,
        }
        .emit();
        telemetry::PiiMasked {
            per_kind: &verdict.masked,
        }
        .emit();
        for &(reason, count) in &verdict.rejected_per_reason {
            telemetry::EventsRejected { reason, count }.emit();
        }
        self.delivery.dead_letters(&verdict.dead_letters).await;
        drop(ticket);
        Ok(verdict.results)
    }
}

/// The answer to a request, from its per-record results (gRPC and HTTP
/// alike; HTTP writes it as canonical JSON).
pub fn response(results: Vec<RecordResult>) -> IngestResponse {
    let accepted = results.iter().filter(|r| r.accepted).count() as u32;
    IngestResponse {
        rejected: results.len() as u32 - accepted,
        accepted,
        results,
    }
}

/// Records one request's outcome.
pub fn finish<T>(rpc: &'static str, started: Instant, r: &Result<T, IngestError>) {
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
