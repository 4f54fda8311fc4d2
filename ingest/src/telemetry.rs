//! The collector's metric names ([`Metric`]) and internal events: each
//! event writes at most one log line and bumps its counters with the same
//! bounded tags. Emitted once per request or batch, never once per event.

use metrics::{counter, gauge, histogram};
use xoflow_common::dead_letter::Reason;
use xoflow_proto::EventKind;

/// Every metric the collectors export. Names follow
/// `xoflow_ingest_<name>_<unit>[_total]` and are listed in
/// `docs/collectors.md`; tags are bounded (kind, reason, rpc, outcome,
/// error code), never a customer or tenant id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Counter, by `kind`: events made durable.
    EventsAccepted,
    /// Counter, by `reason`: records refused (first violation's reason).
    EventsRejected,
    /// Counter, by `rpc` and `outcome`.
    Requests,
    /// Histogram, by `rpc`: request duration in seconds.
    RequestDuration,
    /// Counter, by `error_code`: events Kafka did not acknowledge.
    KafkaErrors,
    /// Counter: dead letters that could not be written.
    DeadLetterErrors,
    /// Gauge: events of requests being judged or awaiting Kafka.
    InFlightEvents,
    /// Gauge: request bytes admitted and not yet answered.
    InFlightBytes,
    /// Counter, by `kind`: PII spans masked.
    PiiMasked,
    /// Counter, by `outcome`: records of bulk imports.
    ImportRecords,
    /// Counter: failed or abandoned TLS handshakes on the HTTP collector.
    TlsHandshakeFailures,
    /// Gauge, by `api`: connections open on a collector port.
    OpenConnections,
    /// Counter, by `api`: connections refused over `max_connections`.
    ConnectionsRefused,
    /// Counter, by `api` and `phase`: connections closed because the client
    /// did not send in time.
    ConnectionsTimedOut,
    /// Counter: records judged (accepted or refused), every collector.
    RecordsIn,
    /// Counter: events made durable in Kafka (the sum of `EventsAccepted`).
    RecordsOut,
    /// Counter, by `reason`: dead letters of refused records (the same
    /// figures as `EventsRejected`, under the name every stage uses).
    DeadLetters,
    /// Gauge: records and requests in the producer's local queue, waiting
    /// for the broker.
    ProducerQueue,
    /// Counter, by `error`: failures the collectors went on from (`accept`:
    /// a connection not accepted; `produce`: a Kafka producer not renewed).
    Errors,
}

impl Metric {
    pub const ALL: [Metric; 19] = [
        Metric::EventsAccepted,
        Metric::EventsRejected,
        Metric::Requests,
        Metric::RequestDuration,
        Metric::KafkaErrors,
        Metric::DeadLetterErrors,
        Metric::InFlightEvents,
        Metric::InFlightBytes,
        Metric::PiiMasked,
        Metric::ImportRecords,
        Metric::TlsHandshakeFailures,
        Metric::OpenConnections,
        Metric::ConnectionsRefused,
        Metric::ConnectionsTimedOut,
        Metric::RecordsIn,
        Metric::RecordsOut,
        Metric::DeadLetters,
        Metric::ProducerQueue,
        Metric::Errors,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Metric::EventsAccepted => "xoflow_ingest_events_accepted_total",
            Metric::EventsRejected => "xoflow_ingest_events_rejected_total",
            Metric::Requests => "xoflow_ingest_requests_total",
            Metric::RequestDuration => "xoflow_ingest_request_duration_seconds",
            Metric::KafkaErrors => "xoflow_ingest_kafka_errors_total",
            Metric::DeadLetterErrors => "xoflow_ingest_dead_letter_errors_total",
            Metric::InFlightEvents => "xoflow_ingest_in_flight_events",
            Metric::InFlightBytes => "xoflow_ingest_in_flight_bytes",
            Metric::PiiMasked => "xoflow_ingest_pii_masked_total",
            Metric::ImportRecords => "xoflow_ingest_import_records_total",
            Metric::TlsHandshakeFailures => "xoflow_ingest_tls_handshake_failures_total",
            Metric::OpenConnections => "xoflow_ingest_open_connections",
            Metric::ConnectionsRefused => "xoflow_ingest_connections_refused_total",
            Metric::ConnectionsTimedOut => "xoflow_ingest_connections_timed_out_total",
            Metric::RecordsIn => "xoflow_ingest_records_in_total",
            Metric::RecordsOut => "xoflow_ingest_records_out_total",
            Metric::DeadLetters => "xoflow_ingest_dead_letters_total",
            Metric::ProducerQueue => "xoflow_ingest_producer_queue_records",
            Metric::Errors => "xoflow_ingest_errors_total",
        }
    }
}

/// PII spans masked in one batch, per kind.
pub(crate) struct PiiMasked<'a> {
    pub per_kind: &'a crate::normalise::pii::MaskCounts,
}

impl PiiMasked<'_> {
    pub fn emit(&self) {
        for (kind, n) in crate::normalise::pii::PiiKind::ALL
            .iter()
            .zip(self.per_kind)
        {
            if *n > 0 {
                counter!(Metric::PiiMasked.name(), "kind" => kind.as_str()).increment(*n);
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
        counter!(Metric::ImportRecords.name(), "outcome" => "accepted").increment(self.accepted);
        counter!(Metric::ImportRecords.name(), "outcome" => "rejected").increment(self.rejected);
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
                counter!(Metric::EventsAccepted.name(), "kind" => kind.as_str()).increment(*n);
            }
        }
        let n: u64 = self.per_kind.iter().sum();
        counter!(Metric::RecordsIn.name()).increment(n);
        counter!(Metric::RecordsOut.name()).increment(n);
    }
}

/// Records refused for one reason in one batch.
pub(crate) struct EventsRejected {
    pub reason: Reason,
    pub count: u64,
}

impl EventsRejected {
    pub fn emit(&self) {
        let reason = self.reason.as_str();
        tracing::debug!(reason, count = self.count, "records rejected");
        counter!(Metric::EventsRejected.name(), "reason" => reason).increment(self.count);
        counter!(Metric::DeadLetters.name(), "reason" => reason).increment(self.count);
        counter!(Metric::RecordsIn.name()).increment(self.count);
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
        counter!(Metric::Requests.name(), "rpc" => self.rpc, "outcome" => self.outcome)
            .increment(1);
        histogram!(Metric::RequestDuration.name(), "rpc" => self.rpc).record(self.seconds);
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
        counter!(Metric::KafkaErrors.name(), "error_code" => self.error_code)
            .increment(self.failed);
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
        counter!(Metric::DeadLetterErrors.name()).increment(self.failed);
    }
}

/// Exports the counters of failures at 0 when the collectors start, so
/// that alerting on their increase works from the first failure.
pub(crate) fn init() {
    xoflow_common::telemetry::ErrorKind::init(Metric::Errors.name());
    counter!(Metric::DeadLetterErrors.name()).increment(0);
    counter!(Metric::KafkaErrors.name(), "error_code" => "none").increment(0);
}

/// Events and bytes of requests admitted and not yet answered.
pub(crate) fn in_flight(events: usize, bytes: usize) {
    gauge!(Metric::InFlightEvents.name()).set(events as f64);
    gauge!(Metric::InFlightBytes.name()).set(bytes as f64);
}

/// Connections open on a collector port.
pub(crate) fn connections(api: &'static str, n: usize) {
    gauge!(Metric::OpenConnections.name(), "api" => api).set(n as f64);
}

/// A connection over `max_connections` was refused.
pub(crate) struct ConnectionRefused {
    pub api: &'static str,
}

impl ConnectionRefused {
    pub fn emit(&self) {
        // Debug, not warn: a flood would write a line per connection; the
        // counter is what alerts.
        tracing::debug!(api = self.api, "connection over the limit refused");
        counter!(Metric::ConnectionsRefused.name(), "api" => self.api).increment(1);
    }
}

/// An HTTPS client that failed or abandoned its handshake (probes, wrong
/// certificates, plaintext sent to the TLS port).
pub(crate) fn tls_handshake_failed() {
    counter!(Metric::TlsHandshakeFailures.name()).increment(1);
}

/// A connection closed because the client did not send in time.
pub(crate) struct ConnectionTimedOut {
    pub api: &'static str,
    /// What did not arrive: `preface`.
    pub phase: &'static str,
}

impl ConnectionTimedOut {
    pub fn emit(&self) {
        // Debug, not warn: a flood would write a line per connection.
        tracing::debug!(api = self.api, phase = self.phase, "connection timed out");
        counter!(Metric::ConnectionsTimedOut.name(), "api" => self.api, "phase" => self.phase)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_carry_the_stage_and_a_unit() {
        for m in Metric::ALL {
            let n = m.name();
            assert!(n.starts_with("xoflow_ingest_"), "{n}");
            assert!(
                n.ends_with("_total")
                    || n.ends_with("_seconds")
                    || n.ends_with("_events")
                    || n.ends_with("_bytes")
                    || n.ends_with("_records")
                    || n.ends_with("_connections"),
                "{n}"
            );
        }
    }
}
