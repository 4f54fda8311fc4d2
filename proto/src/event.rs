//! Pure helpers over [`v1::Event`]: no I/O, no allocation beyond what the
//! caller asks for. Every stage classifies and keys events through these so
//! that they agree on partitioning and kind names.

use crate::v1::{self, event::Payload};

/// The five payload kinds. The string forms are the `kind` column in
/// ClickHouse and a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Survey,
    Call,
    Social,
    Order,
    Click,
}

impl EventKind {
    /// All kinds, in the order of the ClickHouse `kind` enum values.
    pub const ALL: [EventKind; 5] = [
        EventKind::Survey,
        EventKind::Call,
        EventKind::Social,
        EventKind::Order,
        EventKind::Click,
    ];

    /// The stable lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Survey => "survey",
            EventKind::Call => "call",
            EventKind::Social => "social",
            EventKind::Order => "order",
            EventKind::Click => "click",
        }
    }

    /// Parses the stable name back.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// X-data (experience) as opposed to O-data (operational).
    pub const fn is_experience(self) -> bool {
        matches!(
            self,
            EventKind::Survey | EventKind::Call | EventKind::Social
        )
    }

    /// The kind of a payload.
    pub const fn of(payload: &Payload) -> Self {
        match payload {
            Payload::Survey(_) => EventKind::Survey,
            Payload::Call(_) => EventKind::Call,
            Payload::Social(_) => EventKind::Social,
            Payload::Order(_) => EventKind::Order,
            Payload::Click(_) => EventKind::Click,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attribute that carried the do-not-contact statement before
/// `Event.contact_consent` existed: ingest reads it into the field (and
/// removes it); events accepted before that still carry it.
pub const DO_NOT_CONTACT_ATTRIBUTE: &str = "do_not_contact";

impl v1::Event {
    /// The payload kind, or `None` for an event without a payload.
    pub fn kind(&self) -> Option<EventKind> {
        self.payload.as_ref().map(EventKind::of)
    }

    /// The customer's contact statement made with this event: `Some(true)`
    /// do not contact, `Some(false)` contact allowed, `None` no statement.
    /// The one reading of consent every stage uses: `contact_consent`, or,
    /// for an event accepted before that field existed, its
    /// `do_not_contact` attribute ("true", "1", "yes", "y": do not contact;
    /// any other value: allowed).
    pub fn do_not_contact(&self) -> Option<bool> {
        match v1::ContactConsent::try_from(self.contact_consent) {
            Ok(v1::ContactConsent::Withdrawn) => Some(true),
            Ok(v1::ContactConsent::Granted) => Some(false),
            _ => self
                .attributes
                .get(DO_NOT_CONTACT_ATTRIBUTE)
                .map(|v| attribute_says_yes(v)),
        }
    }

    /// The Kafka key: the strongest customer key the event carries, so that
    /// one customer's events stay in one partition and in order. Falls back
    /// to the event id for fully anonymous events.
    pub fn partition_key(&self) -> &str {
        if let Some(c) = &self.customer {
            for k in [
                &c.customer_id,
                &c.email_hash,
                &c.phone_hash,
                &c.social_handle_hash,
                &c.device_id_hash,
            ] {
                if !k.is_empty() {
                    return k;
                }
            }
        }
        &self.event_id
    }
}

/// The event a customer's state folds, from what [`v1::EventFoldView`]
/// decoded: every field the view holds, the rest empty.
impl From<v1::EventFoldView> for v1::Event {
    fn from(v: v1::EventFoldView) -> Self {
        use v1::event_fold_view::Payload as Fold;
        v1::Event {
            occurred_at: v.occurred_at,
            attributes: v.attributes,
            contact_consent: v.contact_consent,
            payload: v.payload.map(|p| match p {
                Fold::Survey(_) => Payload::Survey(v1::SurveyResponse::default()),
                Fold::Social(_) => Payload::Social(v1::SocialPost::default()),
                Fold::Call(c) => Payload::Call(v1::CallTranscript {
                    call_id: c.call_id,
                    agent_id: c.agent_id,
                    queue: c.queue,
                    started_at: c.started_at,
                    ended_at: c.ended_at,
                    disposition: c.disposition,
                    ..Default::default()
                }),
                Fold::Order(o) => Payload::Order(v1::Order {
                    order_id: o.order_id,
                    status: o.status,
                    amount_minor: o.amount_minor,
                    currency: o.currency,
                    promised_delivery_at: o.promised_delivery_at,
                    delivered_at: o.delivered_at,
                    ..Default::default()
                }),
                Fold::Click(c) => Payload::Click(v1::ClickEvent {
                    session_id: c.session_id,
                    action: c.action,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }
}

/// Milliseconds since the Unix epoch of a protobuf timestamp.
pub fn to_unix_millis(ts: &crate::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// A protobuf timestamp from milliseconds since the Unix epoch.
pub fn from_unix_millis(ms: i64) -> crate::Timestamp {
    crate::Timestamp {
        seconds: ms.div_euclid(1000),
        // The remainder is in 0..1000, so the product fits an i32.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// How the `do_not_contact` attribute said yes.
pub fn attribute_says_yes(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "y"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{CustomerIdentity, Event, Order};

    #[test]
    fn kind_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn partition_key_prefers_the_strongest_identifier() {
        let mut e = Event {
            event_id: "e1".into(),
            payload: Some(Payload::Order(Order::default())),
            ..Default::default()
        };
        assert_eq!(e.partition_key(), "e1");
        e.customer = Some(CustomerIdentity {
            device_id_hash: "d".into(),
            email_hash: "m".into(),
            ..Default::default()
        });
        assert_eq!(e.partition_key(), "m");
        if let Some(c) = e.customer.as_mut() {
            c.customer_id = "c42".into();
        }
        assert_eq!(e.partition_key(), "c42");
        assert_eq!(e.kind(), Some(EventKind::Order));
    }

    #[test]
    fn millis_round_trip_including_before_the_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            let ts = from_unix_millis(ms);
            assert!((0..1_000_000_000).contains(&ts.nanos));
            assert_eq!(to_unix_millis(&ts), ms);
        }
    }
}
