//! The [`Ingestor`]: the one object every entry point shares. It judges a
//! batch, hands the accepted records to delivery, writes the dead letters
//! and emits the batch's telemetry; the entry points only decode and
//! answer.

use std::{sync::Arc, time::Instant};

use xoflow_common::clock;
use xoflow_proto::v1::{IngestResponse, RecordResult};

use super::{Record, handle_batch};
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
}

impl Ingestor {
    pub fn new(
        live: Normaliser,
        backfill: Normaliser,
        delivery: Arc<dyn Deliver>,
        auth: Authenticator,
        max_batch_events: usize,
    ) -> Self {
        Self {
            live,
            backfill,
            delivery,
            auth,
            max_batch_events,
        }
    }

    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub fn max_batch_events(&self) -> usize {
        self.max_batch_events
    }

    /// Judges, delivers and dead-letters one batch; answers once the
    /// accepted records are durable.
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
