//! Dead letters: one reason vocabulary and one builder for every stage.
//!
//! A record a stage cannot take is never dropped: it becomes a
//! `xoflow.v1.DeadLetter` on the dead-letter topic, which the sink stores in
//! ClickHouse's `dead_letters` table. The reason codes below are the stable,
//! machine-readable vocabulary that callers (`FieldViolation.reason`), the
//! table's `reason` column and the `reason` metric tag share; the content
//! types say how to read a dead letter's `payload` back.

use xoflow_proto::{from_unix_millis, v1::DeadLetter};

/// Content type of a payload holding a protobuf `xoflow.v1.Event`, or bytes
/// read from Kafka that should have been a protobuf message.
pub const PROTOBUF: &str = "application/x-protobuf";
/// Content type of a payload holding a protobuf `xoflow.v1.Event`, named:
/// what the sink writes for an event ClickHouse refused, so that a replay
/// knows the message type without guessing.
pub const PROTOBUF_EVENT: &str = "application/x-protobuf; messageType=xoflow.v1.Event";
/// Content type of a payload holding a protobuf `xoflow.v1.Alert`: what the
/// alert stage dead-letters when an alert cannot be delivered to a webhook.
pub const PROTOBUF_ALERT: &str = "application/x-protobuf; messageType=xoflow.v1.Alert";
/// Content type of a payload holding JSON as a source sent it.
pub const JSON: &str = "application/json";
/// Content type of a payload holding one CSV row of an import as the file
/// had it (not replayed: the file is mended and imported again).
pub const CSV: &str = "text/csv";

/// The stage that refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Ingest,
    Enrich,
    Sink,
    /// The alert stage (`alert/`): alerts it cannot read or deliver.
    Alert,
}

impl Stage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Enrich => "enrich",
            Stage::Sink => "sink",
            Stage::Alert => "alert",
        }
    }
}

/// Why a record was refused. The strings are a public contract: documented
/// in `docs/collectors.md` and `docs/clickhouse.md`, stored in ClickHouse,
/// and answered to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A required field is empty.
    Missing,
    /// The value has the wrong form.
    Invalid,
    /// A number or time is outside its allowed range.
    OutOfRange,
    /// A string or list is longer than allowed.
    TooLong,
    /// An enum value this version does not know.
    UnknownEnum,
    /// The same event id appears twice in one request.
    Duplicate,
    /// The bytes could not be decoded at all.
    Decode,
    /// The caller's key may not write this value (another tenant's events).
    Forbidden,
    /// ClickHouse refused the row (the sink's insert failed for this row
    /// alone, not for a transient reason).
    ClickHouseRefused,
    /// The alert stage could not deliver an alert to one of its
    /// department's webhooks: the receiver refused it for good (a 4xx other
    /// than 408 and 429) or kept failing for `alert.give_up_after`. The
    /// payload is the alert (`PROTOBUF_ALERT`), the field the webhook's
    /// setting path, the description the last error.
    Undeliverable,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "MISSING",
            Reason::Invalid => "INVALID",
            Reason::OutOfRange => "OUT_OF_RANGE",
            Reason::TooLong => "TOO_LONG",
            Reason::UnknownEnum => "UNKNOWN_ENUM",
            Reason::Duplicate => "DUPLICATE",
            Reason::Decode => "DECODE",
            Reason::Forbidden => "PERMISSION_DENIED",
            Reason::ClickHouseRefused => "CLICKHOUSE_REFUSED",
            Reason::Undeliverable => "UNDELIVERABLE",
        }
    }

    /// The reasons ingest's validation can give, for bounded metric tags.
    pub const VALIDATION: [Reason; 8] = [
        Reason::Missing,
        Reason::Invalid,
        Reason::OutOfRange,
        Reason::TooLong,
        Reason::UnknownEnum,
        Reason::Duplicate,
        Reason::Decode,
        Reason::Forbidden,
    ];
}

/// Builds a dead letter. Only the stage, the reason and the clock are
/// required; everything else a stage knows about the record it adds.
#[derive(Debug)]
pub struct Builder(DeadLetter);

impl Builder {
    /// A dead letter refused by `stage` for `reason` at `at_unix_millis`.
    pub fn new(stage: Stage, reason: Reason, at_unix_millis: i64) -> Self {
        Builder(DeadLetter {
            stage: stage.as_str().into(),
            reason: reason.as_str().into(),
            at: Some(from_unix_millis(at_unix_millis)),
            ..Default::default()
        })
    }

    /// The record as received and how to read it.
    pub fn payload(mut self, payload: Vec<u8>, content_type: &str) -> Self {
        self.0.payload = payload;
        self.0.content_type = content_type.into();
        self
    }

    /// The path of the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.0.field = field.into();
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.0.description = description.into();
        self
    }

    /// Tenant, source and event id, when the record got far enough to have
    /// them.
    pub fn origin(
        mut self,
        tenant: impl Into<String>,
        source: impl Into<String>,
        event_id: impl Into<String>,
    ) -> Self {
        self.0.tenant = tenant.into();
        self.0.source = source.into();
        self.0.event_id = event_id.into();
        self
    }

    pub fn build(self) -> DeadLetter {
        self.0
    }
}

/// The dead letter for a Kafka record at `topic[partition]@offset` that
/// does not decode as `expected` (e.g. `"xoflow.v1.Event"`): kept whole, as
/// protobuf bytes, with its position in the description.
pub fn undecodable(
    stage: Stage,
    payload: &[u8],
    position: (&str, i32, i64),
    expected: &str,
    error: &dyn std::fmt::Display,
    at_unix_millis: i64,
) -> DeadLetter {
    let (topic, partition, offset) = position;
    Builder::new(stage, Reason::Decode, at_unix_millis)
        .payload(payload.to_vec(), PROTOBUF)
        .description(format!(
            "{topic}[{partition}]@{offset}: not a {expected}: {error}"
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_vocabulary_is_stable() {
        let all: Vec<&str> = Reason::VALIDATION.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            all,
            [
                "MISSING",
                "INVALID",
                "OUT_OF_RANGE",
                "TOO_LONG",
                "UNKNOWN_ENUM",
                "DUPLICATE",
                "DECODE",
                "PERMISSION_DENIED"
            ]
        );
        assert_eq!(Reason::ClickHouseRefused.as_str(), "CLICKHOUSE_REFUSED");
        assert_eq!(Reason::Undeliverable.as_str(), "UNDELIVERABLE");
        assert_eq!(Stage::Alert.as_str(), "alert");
    }

    #[test]
    fn an_undecodable_record_keeps_its_bytes_and_position() {
        let d = undecodable(
            Stage::Enrich,
            b"\xff\x00",
            ("events", 3, 42),
            "xoflow.v1.Event",
            &"bad wire type",
            1_700_000_000_000,
        );
        assert_eq!(d.stage, "enrich");
        assert_eq!(d.reason, "DECODE");
        assert_eq!(d.payload, b"\xff\x00");
        assert_eq!(d.content_type, PROTOBUF);
        assert_eq!(
            d.description,
            "events[3]@42: not a xoflow.v1.Event: bad wire type"
        );
        assert_eq!(d.at.map(|t| t.seconds), Some(1_700_000_000));
    }
}
