//! The verdict on a batch, shared by every entry point (gRPC, HTTP, source
//! collectors, bulk import): authorise each record against the caller's key,
//! validate and normalise it, refuse duplicates within the batch, encode the
//! accepted ones into one buffer, and build a dead letter for each refused
//! one. [`handle_batch`] is pure apart from the clock value passed in;
//! [`Ingestor`] adds the Kafka hand-off and the telemetry.
//!
//! ```text
//! Vec<Record> ──► authorise ──► Normaliser ──► dedup ──► EncodedBatch ──► Delivery (events/backfill)
//!                     └─────────────┴─────────────┴──► DeadLetter ──────► Delivery (dead letters)
//! ```

use std::{collections::HashSet, ops::Range, time::Instant};

use xoflow_proto::{
    Message,
    v1::{DeadLetter, Event, FieldViolation, RecordResult},
};

use crate::{
    IngestError,
    auth::{Authenticator, Principal},
    delivery::{Delivery, Lane},
    pii::{self, MaskCounts},
    telemetry,
    validate::{Normaliser, Reason, Violation},
};

/// Content type of a dead letter holding a protobuf `Event`.
pub const PROTOBUF: &str = "application/x-protobuf";
/// Content type of a dead letter holding JSON as sent.
pub const JSON: &str = "application/json";

/// One submitted record as an entry point decoded it.
#[derive(Debug, Default)]
pub struct Record {
    /// The event, or why the bytes are no event at all.
    pub event: Option<Event>,
    /// Set when the record could not be decoded.
    pub decode_error: Option<Violation>,
    /// The record's bytes as received, for its dead letter; `None` for
    /// protobuf input, whose event is re-encoded instead.
    pub original: Option<Vec<u8>>,
    /// Content type of `original`.
    pub content_type: &'static str,
    /// Personal names the source marked (respondent, caller), masked in
    /// every free-text field of this record.
    pub names: Vec<String>,
}

impl Record {
    /// A decoded event with nothing else known.
    pub fn event(e: Event) -> Self {
        Self {
            event: Some(e),
            content_type: PROTOBUF,
            ..Default::default()
        }
    }

    /// Bytes that are not an event.
    pub fn undecodable(original: Vec<u8>, content_type: &'static str, v: Violation) -> Self {
        Self {
            event: None,
            decode_error: Some(v),
            original: Some(original),
            content_type,
            names: Vec::new(),
        }
    }
}

/// The accepted events of a batch, encoded back to back in one buffer.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    pub buf: Vec<u8>,
    /// Per record: the key's and the payload's range in `buf`.
    pub records: Vec<(Range<usize>, Range<usize>)>,
}

impl EncodedBatch {
    fn push(&mut self, e: &Event) {
        let key = e.partition_key().as_bytes();
        let k0 = self.buf.len();
        self.buf.extend_from_slice(key);
        let p0 = self.buf.len();
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = e.encode(&mut self.buf);
        self.records.push((k0..p0, p0..self.buf.len()));
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Key and payload of each record.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.records
            .iter()
            .map(|(k, p)| (&self.buf[k.clone()], &self.buf[p.clone()]))
    }
}

/// What one batch came to before delivery.
#[derive(Debug, Default)]
pub struct Verdict {
    /// One per submitted record, in order.
    pub results: Vec<RecordResult>,
    /// The accepted events, encoded and keyed, in order.
    pub accepted: EncodedBatch,
    pub accepted_per_kind: [u64; 5],
    /// One per refused record.
    pub dead_letters: Vec<DeadLetter>,
    /// Spans of PII masked, per kind.
    pub masked: MaskCounts,
}

impl Verdict {
    /// Refusals per reason, for bounded metric tags.
    pub fn rejected_per_reason(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for d in &self.dead_letters {
            let reason = Reason::ALL
                .into_iter()
                .map(Reason::as_str)
                .find(|r| *r == d.reason)
                .unwrap_or("OTHER");
            match counts.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => counts.push((reason, 1)),
            }
        }
        counts
    }
}

/// Checks the record against the key it was sent with: the tenant and
/// source default to the key's and may not differ from them.
fn authorise(e: &mut Event, p: &Principal, v: &mut Vec<Violation>) {
    if e.tenant.is_empty() {
        e.tenant = p.tenant.to_string();
    } else if e.tenant != *p.tenant {
        v.push(Violation::new(
            "tenant",
            Reason::Forbidden,
            "the API key may not write events of this tenant",
        ));
    }
    if e.source.is_empty() {
        e.source = p.source.to_string();
    } else if e.source != *p.source {
        v.push(Violation::new(
            "source",
            Reason::Forbidden,
            "the API key belongs to another source",
        ));
    }
}

/// Validates, normalises and encodes a batch.
pub fn handle_batch(
    n: &Normaliser,
    records: Vec<Record>,
    first_index: u32,
    principal: Option<&Principal>,
    now_ms: i64,
) -> Verdict {
    let mut v = Verdict {
        results: Vec::with_capacity(records.len()),
        ..Default::default()
    };
    // First pass: every record's own verdict.
    let mut outcomes: Vec<(Record, Result<(), Vec<Violation>>)> = records
        .into_iter()
        .map(|mut r| {
            let outcome = match (r.event.as_mut(), r.decode_error.take()) {
                (Some(e), None) => {
                    let mut auth = Vec::new();
                    if let Some(p) = principal {
                        authorise(e, p, &mut auth);
                    }
                    match n.normalise_record(e, now_ms, &r.names, &mut v.masked) {
                        Ok(()) if auth.is_empty() => Ok(()),
                        Ok(()) => Err(auth),
                        Err(more) => {
                            auth.extend(more);
                            Err(auth)
                        }
                    }
                }
                (_, Some(violation)) => Err(vec![violation]),
                (None, None) => Err(vec![Violation::new("", Reason::Decode, "empty record")]),
            };
            (r, outcome)
        })
        .collect();
    // Second pass: an id seen earlier in the batch is a duplicate. The set
    // borrows the ids: no copy per event.
    {
        let mut seen: HashSet<&str> = HashSet::with_capacity(outcomes.len());
        let mut dups = Vec::new();
        for (i, (r, o)) in outcomes.iter().enumerate() {
            if let (Some(e), Ok(())) = (&r.event, o)
                && !seen.insert(e.event_id.as_str())
            {
                dups.push(i);
            }
        }
        for i in dups {
            let (r, o) = &mut outcomes[i];
            let id = r.event.as_ref().map(|e| e.event_id.as_str()).unwrap_or("");
            *o = Err(vec![Violation::new(
                "event_id",
                Reason::Duplicate,
                format!("event_id {id:?} appears earlier in this request"),
            )]);
        }
    }
    v.accepted.buf.reserve(outcomes.len() * 256);
    for (i, (r, outcome)) in outcomes.into_iter().enumerate() {
        let index = first_index.saturating_add(i as u32);
        match outcome {
            Ok(()) => {
                let Some(e) = r.event else { continue };
                if let Some(kind) = e.kind() {
                    v.accepted_per_kind[kind as usize] += 1;
                }
                v.accepted.push(&e);
                v.results.push(RecordResult {
                    index,
                    event_id: e.event_id,
                    accepted: true,
                    violations: Vec::new(),
                });
            }
            Err(violations) => {
                let (tenant, source, event_id) = r
                    .event
                    .as_ref()
                    .map(|e| (e.tenant.clone(), e.source.clone(), e.event_id.clone()))
                    .unwrap_or_default();
                let (payload, content_type) = dead_letter_payload(r, &mut v.masked);
                let first = &violations[0];
                v.dead_letters.push(DeadLetter {
                    payload,
                    content_type: content_type.into(),
                    stage: "ingest".into(),
                    reason: first.reason.as_str().into(),
                    field: first.field.clone(),
                    description: violations
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect::<Vec<_>>()
                        .join("; "),
                    tenant,
                    source,
                    event_id: event_id.clone(),
                    at: Some(xoflow_proto::from_unix_millis(now_ms)),
                });
                v.results.push(RecordResult {
                    index,
                    event_id,
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

/// The bytes a dead letter keeps: the original as received, with PII
/// masked, because the dead-letter topic is no less readable than the
/// events topic. Bytes that are not UTF-8 cannot be scanned as text and are
/// kept as they are.
fn dead_letter_payload(r: Record, masked: &mut MaskCounts) -> (Vec<u8>, &'static str) {
    match (r.original, r.event) {
        (Some(bytes), _) => match std::str::from_utf8(&bytes) {
            Ok(text) => match pii::mask(text, &r.names, masked) {
                Some(m) => (m.into_bytes(), r.content_type),
                None => (bytes, r.content_type),
            },
            Err(_) => (bytes, r.content_type),
        },
        (None, Some(mut e)) => {
            crate::validate::redact_rejected(&mut e, &r.names, masked);
            (e.encode_to_vec(), PROTOBUF)
        }
        (None, None) => (Vec::new(), r.content_type),
    }
}

/// The collectors' shared core: a normaliser per lane, the key check and
/// the Kafka side.
#[derive(Clone, Debug)]
pub struct Ingestor {
    live: Normaliser,
    backfill: Normaliser,
    delivery: Delivery,
    auth: Authenticator,
    max_batch_events: usize,
}

impl Ingestor {
    pub fn new(
        live: Normaliser,
        backfill: Normaliser,
        delivery: Delivery,
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
    /// accepted records are durable in Kafka.
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
        let verdict = handle_batch(n, records, first_index, principal, now_ms());
        self.delivery.deliver(&verdict.accepted, lane).await?;
        telemetry::EventsAccepted {
            per_kind: &verdict.accepted_per_kind,
        }
        .emit();
        telemetry::PiiMasked {
            per_kind: &verdict.masked,
        }
        .emit();
        for (reason, count) in verdict.rejected_per_reason() {
            telemetry::EventsRejected { reason, count }.emit();
        }
        self.delivery.dead_letters(&verdict.dead_letters).await;
        Ok(verdict.results)
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

/// Builds the shared core from a validated config: tenants, both lanes'
/// normalisers, the key check and the Kafka producer. Warns loudly about
/// development settings.
pub fn build(
    cfg: &crate::IngestConfig,
    kafka: &xoflow_common::kafka::KafkaConfig,
) -> Result<Ingestor, String> {
    if cfg.auth == crate::config::AuthMode::None {
        tracing::warn!(
            "ingest.auth = \"none\": ANY caller may write events for ANY tenant. Development only: set ingest.auth = \"api-key\" in production"
        );
    }
    if cfg.uses_dev_secret() {
        tracing::warn!(
            "a hash secret is the development default; set XOFLOW_INGEST__HASH_SECRET (and per-tenant secrets) in production"
        );
    }
    let tenants = std::sync::Arc::new(crate::tenant::Tenants::from_config(cfg)?);
    let live = Normaliser::with_tenants(tenants, cfg.max_future_skew, cfg.max_age);
    let backfill = live.with_max_age(cfg.max_backfill_age);
    let delivery =
        Delivery::new(kafka, cfg.max_in_flight_events, cfg.linger).map_err(|e| e.to_string())?;
    Ok(Ingestor::new(
        live,
        backfill,
        delivery,
        Authenticator::from_config(cfg),
        cfg.max_batch_events,
    ))
}
