//! The collector's internal events: each one writes at most one log line and
//! bumps its counters with the same bounded tags. Emitted once per request or
//! batch, never once per event.

use metrics::{counter, gauge, histogram};
use xoflow_proto::EventKind;

pub(crate) const EVENTS_ACCEPTED: &str = "xoflow_ingest_events_accepted_total";
pub(crate) const EVENTS_REJECTED: &str = "xoflow_ingest_events_rejected_total";
pub(crate) const REQUESTS: &str = "xoflow_ingest_requests_total";
pub(crate) const REQUEST_DURATION: &str = "xoflow_ingest_request_duration_seconds";
pub(crate) const KAFKA_ERRORS: &str = "xoflow_ingest_kafka_errors_total";
pub(crate) const DEAD_LETTER_ERRORS: &str = "xoflow_ingest_dead_letter_errors_total";
pub(crate) const IN_FLIGHT: &str = "xoflow_ingest_in_flight_events";
pub(crate) const PII_MASKED: &str = "xoflow_ingest_pii_masked_total";
pub(crate) const IMPORT_RECORDS: &str = "xoflow_ingest_import_records_total";
pub(crate) const TLS_HANDSHAKE_FAILURES: &str = "xoflow_ingest_tls_handshake_failures_total";

/// PII spans masked in one batch, per kind.
pub(crate) struct PiiMasked<'a> {
    pub per_kind: &'a crate::pii::MaskCounts,
}

impl PiiMasked<'_> {
    pub fn emit(&self) {
        for (kind, n) in crate::pii::PiiKind::ALL.iter().zip(self.per_kind) {
            if *n > 0 {
                counter!(PII_MASKED, "kind" => kind.as_str()).increment(*n);
            }
        }
    }
}

/// One chunk of a bulk import handed to the backfill lane.
pub(crate) struct ImportChunk {
    pub accepted: u64,
    pub rejected: u64,
}

impl ImportChunk {
    pub fn emit(&self) {
        counter!(IMPORT_RECORDS, "outcome" => "accepted").increment(self.accepted);
        counter!(IMPORT_RECORDS, "outcome" => "rejected").increment(self.rejected);
    }
}

/// Events made durable, counted per kind for one batch.
pub(crate) struct EventsAccepted<'a> {
    pub per_kind: &'a [u64; 5],
}

impl EventsAccepted<'_> {
    pub fn emit(&self) {
        for (kind, n) in EventKind::ALL.iter().zip(self.per_kind) {
            if *n > 0 {
                counter!(EVENTS_ACCEPTED, "kind" => kind.as_str()).increment(*n);
            }
        }
    }
}

/// Records refused for one reason in one batch.
pub(crate) struct EventsRejected {
    pub reason: &'static str,
    pub count: u64,
}

impl EventsRejected {
    pub fn emit(&self) {
        tracing::debug!(reason = self.reason, count = self.count, "records rejected");
        counter!(EVENTS_REJECTED, "reason" => self.reason).increment(self.count);
    }
}

/// One RPC finished.
pub(crate) struct RequestFinished {
    pub rpc: &'static str,
    pub outcome: &'static str,
    pub seconds: f64,
}

impl RequestFinished {
    pub fn emit(&self) {
        counter!(REQUESTS, "rpc" => self.rpc, "outcome" => self.outcome).increment(1);
        histogram!(REQUEST_DURATION, "rpc" => self.rpc).record(self.seconds);
    }
}

/// Kafka refused or timed out records of an accepted batch.
pub(crate) struct KafkaDeliveryFailed<'a> {
    pub error_code: &'static str,
    pub failed: u64,
    pub error: &'a str,
}

impl KafkaDeliveryFailed<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            error_code = self.error_code,
            failed = self.failed,
            error = self.error,
            "kafka did not acknowledge events; answering UNAVAILABLE"
        );
        counter!(KAFKA_ERRORS, "error_code" => self.error_code).increment(self.failed);
    }
}

/// Dead letters could not be written.
pub(crate) struct DeadLetterFailed<'a> {
    pub failed: u64,
    pub error: &'a str,
}

impl DeadLetterFailed<'_> {
    pub fn emit(&self) {
        tracing::error!(
            failed = self.failed,
            error = self.error,
            "dead letters not delivered"
        );
        counter!(DEAD_LETTER_ERRORS).increment(self.failed);
    }
}

/// Events currently awaiting Kafka acknowledgement.
pub(crate) fn in_flight(n: usize) {
    gauge!(IN_FLIGHT).set(n as f64);
}

/// An HTTPS client that failed or abandoned its handshake (probes, wrong
/// certificates, plaintext sent to the TLS port).
pub(crate) fn tls_handshake_failed() {
    counter!(TLS_HANDSHAKE_FAILURES).increment(1);
}
