//! The rows of `alerts`, `alert_deliveries` and `alert_actions`, named
//! against `sink/migrations/0010_alerts.sql`.
//!
//! As in the sink, the insert names its columns and the client does not
//! validate types (ClickHouse 18.16 knows neither the setting nor the
//! format validation needs): the integration tests read every table back.
//! Enum8 columns are written as their codes; a protobuf value the table's
//! enum does not name is written as 0 (`unspecified`/`none`), never as a
//! code a current server would refuse.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use xoflow_proto::{
    Message,
    v1::{Alert, AlertCause, AlertSeverity, SentimentLabel},
};

/// One row of `alerts`.
#[derive(Debug, Clone, Default, PartialEq, Row, Serialize, Deserialize)]
pub struct AlertRow {
    pub alert_id: String,
    pub tenant: String,
    pub rule: String,
    pub severity: i8,
    pub department: String,
    pub customer_id: String,
    pub cause: i8,
    pub reasons: Vec<String>,
    pub summary: String,
    pub raised_at: u32,
    pub raised_ms: i64,
    pub written_at: u32,
    pub silent_days: Option<u32>,
    pub usual_gap_days: Option<u32>,

    pub event_id: String,
    pub revision: u32,
    pub kind: i8,
    pub occurred_at: u32,
    pub journey: String,
    pub stage: String,
    pub touchpoint: String,
    pub store_id: String,
    pub region: String,

    pub nps_score: Option<i8>,
    pub csat_score: Option<f64>,
    pub ces_score: Option<f64>,
    pub sentiment: Option<f64>,
    pub sentiment_label: i8,
    pub topics: Vec<String>,
    pub order_id: String,
    pub delivery_late_s: Option<i64>,
    pub value_90d_minor: i64,
    pub lifetime_value_minor: i64,
    pub support_contacts_30d: u32,
    pub churn_risk: Option<f64>,
    pub call_id: String,

    pub alert_proto: Vec<u8>,
    /// The tenant's offset from UTC at the triggering event (stamped by
    /// ingest): the closed loop is counted per local day.
    pub utc_offset_s: i32,
}

/// Seconds for a `DateTime` column: clamped into its range.
fn secs(ts: Option<&xoflow_proto::Timestamp>) -> u32 {
    ts.map_or(0, |t| t.seconds.clamp(0, i64::from(u32::MAX)) as u32)
}

/// The code of a protobuf enum value the column names (`0..=max`), else 0.
fn code(v: i32, max: i32) -> i8 {
    if (0..=max).contains(&v) { v as i8 } else { 0 }
}

impl AlertRow {
    /// The row of `alert`, written at `written_at` (unix seconds).
    pub fn of(alert: &Alert, written_at: u32) -> Self {
        let en = alert.trigger.as_ref();
        let e = en.and_then(|t| t.event.as_ref());
        let tp = e.and_then(|e| e.touchpoint.as_ref());
        let loc = e.and_then(|e| e.location.as_ref());
        let cx = en.and_then(|t| t.cx.as_ref());
        let order = en.and_then(|t| t.order.as_ref());
        let customer = en.and_then(|t| t.customer.as_ref());
        AlertRow {
            alert_id: alert.alert_id.clone(),
            tenant: alert.tenant.clone(),
            rule: alert.rule.clone(),
            severity: code(alert.severity, AlertSeverity::Critical as i32),
            department: alert.department.clone(),
            customer_id: alert.customer_id.clone(),
            cause: code(alert.cause, AlertCause::Silence as i32),
            reasons: alert.reasons.clone(),
            summary: alert.summary.clone(),
            raised_at: secs(alert.raised_at.as_ref()),
            raised_ms: alert
                .raised_at
                .as_ref()
                .map_or(0, xoflow_proto::to_unix_millis),
            written_at,
            silent_days: alert.silent_days,
            usual_gap_days: alert.usual_gap_days,
            event_id: e.map_or_else(String::new, |e| e.event_id.clone()),
            revision: en.map_or(0, |t| t.revision),
            // The table's `kind` enum: none = 0, then the payload kinds in
            // `EventKind::ALL` order from 1.
            kind: e.and_then(|e| e.kind()).map_or(0, |k| {
                xoflow_proto::EventKind::ALL
                    .iter()
                    .position(|x| *x == k)
                    .map_or(0, |i| i as i8 + 1)
            }),
            occurred_at: secs(e.and_then(|e| e.occurred_at.as_ref())),
            journey: tp.map_or_else(String::new, |t| t.journey.clone()),
            stage: tp.map_or_else(String::new, |t| t.stage.clone()),
            touchpoint: tp.map_or_else(String::new, |t| t.touchpoint.clone()),
            store_id: loc.map_or_else(String::new, |l| l.store_id.clone()),
            region: loc.map_or_else(String::new, |l| l.region.clone()),
            nps_score: cx
                .and_then(|c| c.nps_score)
                .and_then(|n| i8::try_from(n).ok()),
            csat_score: cx.and_then(|c| c.csat_score),
            ces_score: cx.and_then(|c| c.ces_score),
            sentiment: cx.and_then(|c| c.sentiment),
            sentiment_label: cx.map_or(0, |c| {
                code(c.sentiment_label, SentimentLabel::Positive as i32)
            }),
            topics: cx.map_or_else(Vec::new, |c| c.topics.clone()),
            order_id: order.map_or_else(String::new, |o| o.order_id.clone()),
            delivery_late_s: order.and_then(|o| o.delivery_late_seconds),
            value_90d_minor: customer.map_or(0, |c| c.value_90d_minor),
            lifetime_value_minor: customer.map_or(0, |c| c.lifetime_value_minor),
            support_contacts_30d: customer.map_or(0, |c| c.support_contacts_30d),
            churn_risk: customer.and_then(|c| c.churn_risk),
            call_id: en
                .and_then(|t| t.call.as_ref())
                .map_or_else(String::new, |c| c.call_id.clone()),
            alert_proto: alert.encode_to_vec(),
            utc_offset_s: e.map_or(0, |e| e.utc_offset_seconds),
        }
    }
}

/// `alert_deliveries.format`: the webhook formats, and `none` for a
/// `no_webhook` row.
pub const FORMAT_NONE: i8 = 0;

/// `alert_deliveries.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered = 1,
    Retry = 2,
    Dead = 3,
    NoWebhook = 4,
}

impl Outcome {
    /// The column's name for it, and the metric tag.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
            Outcome::NoWebhook => "no_webhook",
        }
    }

    /// Whether the alert's delivery to that webhook is over.
    pub const fn is_final(self) -> bool {
        !matches!(self, Outcome::Retry)
    }
}

/// One row of `alert_deliveries`: an attempt, or a `no_webhook` record.
#[derive(Debug, Clone, Default, PartialEq, Row, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub at: u32,
    pub at_ms: i64,
    pub alert_id: String,
    pub tenant: String,
    pub department: String,
    pub webhook: u16,
    pub host: String,
    pub format: i8,
    pub attempt: u32,
    pub status: u16,
    pub outcome: i8,
    pub error: String,
    pub latency_ms: u32,
    pub raised_at: u32,
}

/// `alert_actions.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Ack = 1,
    Resolve = 2,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Ack => "ack",
            Action::Resolve => "resolve",
        }
    }
}

/// One row of `alert_actions`.
#[derive(Debug, Clone, Default, PartialEq, Row, Serialize, Deserialize)]
pub struct ActionRow {
    pub at: u32,
    pub at_ms: i64,
    pub alert_id: String,
    pub tenant: String,
    pub department: String,
    pub action: i8,
    pub by: String,
    pub note: String,
}

#[cfg(test)]
mod tests {
    use xoflow_proto::v1::{EnrichedEvent, Event, OrderContext, event::Payload};

    use super::*;

    #[test]
    fn an_alert_row_carries_the_trigger_and_only_named_enum_codes() {
        let alert = Alert {
            alert_id: "a1".into(),
            tenant: "t".into(),
            severity: 3,
            cause: 9,
            raised_at: Some(xoflow_proto::from_unix_millis(1_767_225_600_250)),
            trigger: Some(EnrichedEvent {
                event: Some(Event {
                    event_id: "e1".into(),
                    payload: Some(Payload::Order(Default::default())),
                    ..Default::default()
                }),
                order: Some(OrderContext {
                    order_id: "o1".into(),
                    delivery_late_seconds: Some(7200),
                    ..Default::default()
                }),
                revision: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = AlertRow::of(&alert, 42);
        assert_eq!((r.severity, r.cause), (3, 0));
        assert_eq!(
            (r.raised_at, r.raised_ms),
            (1_767_225_600, 1_767_225_600_250)
        );
        assert_eq!((r.event_id.as_str(), r.revision, r.kind), ("e1", 2, 4));
        assert_eq!((r.order_id.as_str(), r.delivery_late_s), ("o1", Some(7200)));
        assert_eq!(r.written_at, 42);
        assert_eq!(Alert::decode(r.alert_proto.as_slice()).ok(), Some(alert));
        assert_eq!(AlertRow::of(&Alert::default(), 0).kind, 0);
    }
}
