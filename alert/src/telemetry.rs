//! The alert stage's internal events and the one list of its metric names.
//!
//! Names follow `xoflow_alert_<what>_<unit>[_total]`; tags are bounded:
//! `format` and `outcome` are fixed sets, `reason` the dead-letter
//! vocabulary, `tenant` and `department` come from the configuration
//! (only configured departments get a pending gauge), never from an alert.
//! Alert ids, customers and hosts go in log lines only.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Every metric the alert stage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// Records read from the alerts topic.
    RecordsIn,
    /// Alerts inserted into `alerts` (copies already stored are not).
    RecordsOut,
    /// Alerts read again and not handled again, by `reason`: `stored` (not
    /// written again), `in_flight` (a copy of an alert being delivered),
    /// `delivered` (every webhook already reached a final outcome).
    Skipped,
    /// Delivery attempts by `format` and `outcome` (`delivered`, `retry`,
    /// `dead`; `no_webhook` with format `none`).
    Deliveries,
    /// How long one webhook call took.
    AttemptDuration,
    /// From `raised_at` to the receiver's 2xx.
    RaisedToDelivered,
    /// Alerts read and not final, per configured department (gauge).
    Pending,
    /// Dead letters produced, by `reason`.
    DeadLetters,
    /// Case API calls by `action` (`ack`, `resolve`, `get`) and `outcome`.
    Actions,
    /// Failures the stage went on from, by `error`.
    Errors,
    /// Records above this instance's consumer position, per `topic` and
    /// `partition` it holds (gauge; 0 for partitions it does not hold).
    ConsumerLag,
    /// Records and requests in the producer's local queue (dead letters)
    /// (gauge).
    ProducerQueue,
}

impl Metric {
    #[cfg(test)]
    pub(crate) const ALL: [Metric; 12] = [
        Metric::RecordsIn,
        Metric::RecordsOut,
        Metric::Skipped,
        Metric::Deliveries,
        Metric::AttemptDuration,
        Metric::RaisedToDelivered,
        Metric::Pending,
        Metric::DeadLetters,
        Metric::Actions,
        Metric::Errors,
        Metric::ConsumerLag,
        Metric::ProducerQueue,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Metric::RecordsIn => "xoflow_alert_records_in_total",
            Metric::RecordsOut => "xoflow_alert_records_out_total",
            Metric::Skipped => "xoflow_alert_skipped_total",
            Metric::Deliveries => "xoflow_alert_deliveries_total",
            Metric::AttemptDuration => "xoflow_alert_delivery_attempt_seconds",
            Metric::RaisedToDelivered => "xoflow_alert_raised_to_delivered_seconds",
            Metric::Pending => "xoflow_alert_pending",
            Metric::DeadLetters => "xoflow_alert_dead_letters_total",
            Metric::Actions => "xoflow_alert_actions_total",
            Metric::Errors => "xoflow_alert_errors_total",
            Metric::ConsumerLag => "xoflow_alert_consumer_lag_records",
            Metric::ProducerQueue => "xoflow_alert_producer_queue_records",
        }
    }
}

/// A batch of the alerts topic was read and recorded.
pub(crate) struct BatchRead {
    pub records: u64,
    pub written: u64,
    pub skipped_stored: u64,
    pub skipped_in_flight: u64,
    pub skipped_delivered: u64,
    pub undecodable: u64,
}

impl BatchRead {
    pub fn emit(&self) {
        tracing::debug!(
            records = self.records,
            written = self.written,
            stored = self.skipped_stored,
            in_flight = self.skipped_in_flight,
            delivered = self.skipped_delivered,
            undecodable = self.undecodable,
            "alert batch read"
        );
        counter!(Metric::RecordsIn.name()).increment(self.records);
        counter!(Metric::RecordsOut.name()).increment(self.written);
        let skipped = Metric::Skipped.name();
        counter!(skipped, "reason" => "stored").increment(self.skipped_stored);
        counter!(skipped, "reason" => "in_flight").increment(self.skipped_in_flight);
        counter!(skipped, "reason" => "delivered").increment(self.skipped_delivered);
    }
}

/// One delivery attempt finished (or an alert had no webhook).
pub(crate) struct Delivered<'a> {
    pub alert_id: &'a str,
    pub tenant: &'a str,
    pub department: &'a str,
    pub webhook: u16,
    pub host: &'a str,
    /// `generic` ... `slack`, or `none` for `no_webhook`.
    pub format: &'static str,
    pub attempt: u32,
    pub status: u16,
    /// `delivered`, `retry`, `dead`, `no_webhook`.
    pub outcome: &'static str,
    pub error: &'a str,
    /// The call's duration; `None` when no call was made.
    pub latency: Option<Duration>,
    /// Seconds from `raised_at` to now, for a delivered alert.
    pub raised_to_delivered: Option<f64>,
}

impl Delivered<'_> {
    pub fn emit(&self) {
        match self.outcome {
            "delivered" | "no_webhook" => tracing::debug!(
                alert_id = self.alert_id,
                tenant = self.tenant,
                department = self.department,
                webhook = self.webhook,
                host = self.host,
                attempt = self.attempt,
                outcome = self.outcome,
                "alert delivery"
            ),
            "retry" => tracing::info!(
                alert_id = self.alert_id,
                tenant = self.tenant,
                department = self.department,
                webhook = self.webhook,
                host = self.host,
                attempt = self.attempt,
                status = self.status,
                error = self.error,
                "alert delivery failed; retrying"
            ),
            _ => tracing::warn!(
                alert_id = self.alert_id,
                tenant = self.tenant,
                department = self.department,
                webhook = self.webhook,
                host = self.host,
                attempt = self.attempt,
                status = self.status,
                error = self.error,
                "alert undeliverable; dead-lettered"
            ),
        }
        counter!(Metric::Deliveries.name(), "format" => self.format, "outcome" => self.outcome)
            .increment(1);
        if let Some(l) = self.latency {
            histogram!(Metric::AttemptDuration.name()).record(l.as_secs_f64());
        }
        if let Some(s) = self.raised_to_delivered {
            histogram!(Metric::RaisedToDelivered.name()).record(s.max(0.0));
        }
    }
}

/// Exports the counters of failures at 0 when the stage starts, so that
/// alerting on their increase works from the first failure.
pub(crate) fn init() {
    xoflow_common::telemetry::ErrorKind::init(Metric::Errors.name());
    counter!(Metric::Errors.name(), "error" => DELIVERY_LOG_DROPPED).increment(0);
    for reason in [
        xoflow_common::dead_letter::Reason::Decode,
        xoflow_common::dead_letter::Reason::Undeliverable,
    ] {
        counter!(Metric::DeadLetters.name(), "reason" => reason.as_str()).increment(0);
    }
}

/// `n` `retry` rows of the delivery log were dropped, the buffer full.
pub(crate) fn delivery_log_dropped(n: u64) {
    counter!(Metric::Errors.name(), "error" => DELIVERY_LOG_DROPPED).increment(n);
}

/// The errors counter's kind for [`delivery_log_dropped`], beside the
/// common ones.
const DELIVERY_LOG_DROPPED: &str = "delivery_log_dropped";

/// Dead letters were produced.
pub(crate) fn dead_letters(reason: &'static str, n: u64) {
    counter!(Metric::DeadLetters.name(), "reason" => reason).increment(n);
}

/// A configured department's alerts read and not final.
pub(crate) fn pending(tenant: &str, department: &str, n: usize) {
    gauge!(
        Metric::Pending.name(),
        "tenant" => tenant.to_owned(),
        "department" => department.to_owned()
    )
    .set(n as f64);
}

/// A case API call was answered.
pub(crate) fn action(action: &'static str, outcome: &'static str) {
    counter!(Metric::Actions.name(), "action" => action, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        for m in Metric::ALL {
            let n = m.name();
            assert!(n.starts_with("xoflow_alert_"), "{n}");
            let gauge_or_histogram = matches!(
                m,
                Metric::Pending
                    | Metric::AttemptDuration
                    | Metric::RaisedToDelivered
                    | Metric::ConsumerLag
                    | Metric::ProducerQueue
            );
            assert_eq!(n.ends_with("_total"), !gauge_or_histogram, "{n}");
            if matches!(m, Metric::AttemptDuration | Metric::RaisedToDelivered) {
                assert!(n.ends_with("_seconds"), "{n}");
            }
        }
    }
}
