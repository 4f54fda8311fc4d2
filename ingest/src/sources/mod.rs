//! Source-native decoders: a source's own JSON in, a v1 `Event` out.
//! Normalisation happens afterwards, for every entry point alike, in
//! [`crate::normalise`].
//!
//! Each source kind speaks its own JSON (a survey tool's webhook, a
//! speech-to-text transcript, a social-listening post, an order event or CDC
//! row, a Segment-style `track` call); this module turns one such record
//! into a v1 `Event` plus the personal names the source marked, so they are
//! masked in its free text. Event ids are derived from the source's natural
//! id, so a replayed webhook or a re-run import carries the same key.
//! Decoding errors name the field at fault in the source's own terms
//! (`answers[1].value`). Samples of every format: `docs/collectors.md`.
//!
//! Pure: no I/O. The HTTP routes (`POST /v1/sources/{kind}/{source}`) and
//! `xoflow import --kind` both call [`decode`] (CSV rows: [`from_value`]);
//! one file per kind: `survey`, `call`, `social`, `order`, `click`.

mod call;
mod click;
mod order;
mod social;
mod survey;

use serde_json::Value;
use xoflow_common::dead_letter::JSON;
use xoflow_proto::{
    EventKind,
    v1::{CustomerIdentity, Event, Location},
};

use self::{
    call::Transcript,
    click::TrackCall,
    order::{OrderRow, order_row},
    social::Post,
    survey::SurveyWebhook,
};
use crate::{
    core::Record,
    framing::{parse, parse_value},
    normalise::{Reason, Violation},
};

/// Who the record is for, from the caller's key or the request.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub tenant: &'a str,
    pub source: &'a str,
}

/// Decodes one native JSON record of `kind` into a [`Record`].
pub fn decode(kind: EventKind, bytes: &[u8], origin: Origin<'_>) -> Record {
    let converted = match std::str::from_utf8(bytes) {
        Err(e) => Err(Violation::new(
            "",
            Reason::Decode,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )),
        Ok(_) => match kind {
            EventKind::Survey => parse::<SurveyWebhook>(bytes).and_then(SurveyWebhook::into_event),
            EventKind::Call => parse::<Transcript>(bytes).and_then(Transcript::into_event),
            EventKind::Social => parse::<Post>(bytes).and_then(Post::into_event),
            EventKind::Order => parse::<Value>(bytes)
                .and_then(order_row)
                .and_then(OrderRow::into_event),
            EventKind::Click => parse::<TrackCall>(bytes).and_then(TrackCall::into_event),
        },
    };
    from_converted(kind, converted, bytes.to_vec(), origin)
}

/// Decodes one native record already read into a typed row (CSV import).
pub fn from_value(kind: EventKind, value: Value, origin: Origin<'_>) -> Record {
    let original = serde_json::to_vec(&value).unwrap_or_default();
    let converted = match kind {
        EventKind::Survey => {
            parse_value::<SurveyWebhook>(value).and_then(SurveyWebhook::into_event)
        }
        EventKind::Call => parse_value::<Transcript>(value).and_then(Transcript::into_event),
        EventKind::Social => parse_value::<Post>(value).and_then(Post::into_event),
        EventKind::Order => order_row(value).and_then(OrderRow::into_event),
        EventKind::Click => parse_value::<TrackCall>(value).and_then(TrackCall::into_event),
    };
    from_converted(kind, converted, original, origin)
}

fn from_converted(
    kind: EventKind,
    converted: Result<(Event, Vec<String>), Violation>,
    original: Vec<u8>,
    origin: Origin<'_>,
) -> Record {
    match converted {
        Ok((mut e, names)) => {
            e.tenant = origin.tenant.to_owned();
            e.source = origin.source.to_owned();
            Record::decoded(e, original, JSON, names)
        }
        Err(v) => {
            // Refused before or after its fields were read, it keeps its
            // marked names masked in its dead letter: read again from the
            // JSON as it is (refused records only).
            let names = serde_json::from_slice::<Value>(&original)
                .map(|value| marked_names(kind, &value))
                .unwrap_or_default();
            let mut r =
                Record::undecodable(original, JSON, v).sent_for(origin.tenant, origin.source);
            r.names = names;
            r
        }
    }
}

/// Where a record of `kind` marks a personal name: the dotted path its
/// decoder reads into the names to mask (a CSV import's column).
pub(crate) fn marked_name_field(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Survey => Some("respondent.name"),
        EventKind::Call => Some("caller.name"),
        EventKind::Social => Some("author.display_name"),
        EventKind::Order | EventKind::Click => None,
    }
}

/// The name a record of `kind` marks personal, read from any JSON.
fn marked_names(kind: EventKind, value: &Value) -> Vec<String> {
    let Some(field) = marked_name_field(kind) else {
        return Vec::new();
    };
    value
        .pointer(&format!("/{}", field.replace('.', "/")))
        .and_then(Value::as_str)
        .map(|n| name_list(n.to_owned()))
        .unwrap_or_default()
}

pub(super) fn required(field: &str, s: &str) -> Result<(), Violation> {
    if s.is_empty() {
        Err(Violation::new(
            field,
            Reason::Missing,
            format!("{field} is required"),
        ))
    } else {
        Ok(())
    }
}

pub(super) fn location(store_id: Option<String>, region: Option<String>) -> Option<Location> {
    (store_id.is_some() || region.is_some()).then(|| Location {
        store_id: store_id.unwrap_or_default(),
        region: region.unwrap_or_default(),
    })
}

pub(crate) fn name_list(name: String) -> Vec<String> {
    if name.trim().is_empty() {
        Vec::new()
    } else {
        vec![name]
    }
}

pub(super) fn identity(
    id: String,
    email: String,
    phone: String,
    device: String,
) -> Option<CustomerIdentity> {
    (!(id.is_empty() && email.is_empty() && phone.is_empty() && device.is_empty())).then(|| {
        CustomerIdentity {
            customer_id: id,
            email,
            phone,
            device_id: device,
            ..Default::default()
        }
    })
}

#[cfg(test)]
mod tests {
    use xoflow_proto::v1::{ClickAction, event::Payload};

    use super::*;

    const ORIGIN: Origin<'static> = Origin {
        tenant: "acme",
        source: "test",
    };

    /// A native record refused (a field of the wrong type, a required one
    /// missing) keeps the name its source marks, so that its dead letter
    /// masks it; before, a refused record had no names and its dead letter
    /// kept the respondent's, caller's or author's name in clear.
    #[test]
    fn a_refused_record_keeps_its_marked_names_for_its_dead_letter() {
        let cases: [(EventKind, &str, &str); 4] = [
            (
                EventKind::Survey,
                r#"{"response_id":"r1","survey_id":"s","submitted_at":"2025-11-14T10:02:00+08:00",
                    "respondent":{"name":"Li Lei"},"answers":[{"question_id":"nps","type":"nps","value":"nine"}],
                    "comment":"Li Lei again"}"#,
                "Li Lei",
            ),
            (
                EventKind::Call,
                r#"{"call_id":"c1","caller":{"name":"Han Meimei"},"segments":"none"}"#,
                "Han Meimei",
            ),
            (
                EventKind::Social,
                r#"{"author":{"display_name":"王小明"},"text":"王小明 says hi"}"#,
                "王小明",
            ),
            (
                EventKind::Survey,
                r#"{"survey_id":"s","submitted_at":"2025-11-14T10:02:00+08:00","respondent":{"name":"Li Lei"}}"#,
                "Li Lei",
            ),
        ];
        for (kind, bytes, name) in cases {
            let r = decode(kind, bytes.as_bytes(), ORIGIN);
            assert!(r.event.is_none(), "{kind:?} refused");
            assert_eq!(r.names, vec![name.to_string()], "{kind:?}");
            let masked = crate::normalise::pii::mask(bytes, &r.names, &mut Default::default())
                .expect("masked");
            assert!(!masked.contains(name), "{masked}");
        }
        // CSV rows read into a value take the same path.
        let row = serde_json::json!({"call_id": "c2", "caller": {"name": "Li Lei"}});
        assert_eq!(
            from_value(EventKind::Call, row, ORIGIN).names,
            vec!["Li Lei".to_string()]
        );
        // Not JSON: nothing to read.
        assert!(
            decode(EventKind::Survey, b"{not json", ORIGIN)
                .names
                .is_empty()
        );
    }

    #[test]
    fn a_survey_webhook_becomes_a_survey_response() {
        let r = decode(
            EventKind::Survey,
            br#"{"response_id":"r1","survey_id":"post-delivery","submitted_at":"2025-11-14T10:02:00+08:00",
                "respondent":{"id":"c-1","name":"Li Lei"},
                "answers":[{"question_id":"nps","type":"nps","value":9},
                           {"question_id":"csat","type":"csat","value":4},
                           {"question_id":"why","type":"text","value":"fast"}],
                "order_id":"o-9"}"#,
            ORIGIN,
        );
        let e = r.event.expect("decoded");
        assert_eq!(e.event_id, "survey:post-delivery:r1");
        assert_eq!(r.names, vec!["Li Lei".to_string()]);
        assert_eq!(e.occurred_at.expect("time").seconds, 1_763_085_720);
        let Some(Payload::Survey(s)) = e.payload else {
            panic!("survey")
        };
        assert_eq!((s.answers[1].scale_min, s.answers[1].scale_max), (1, 5));
        assert_eq!(s.answers[2].text, "fast");
    }

    #[test]
    fn native_errors_name_the_native_field() {
        for (kind, body, field, reason) in [
            (
                EventKind::Survey,
                r#"{"response_id":"r","survey_id":"s","submitted_at":"2025-11-14T10:02:00Z","answers":[{"question_id":"q","type":"nps","value":"nine"}]}"#,
                "answers[0].value",
                Reason::Invalid,
            ),
            (
                EventKind::Survey,
                r#"{"response_id":"r","survey_id":"s","submitted_at":"2025-11-14T10:02:00Z","answers":[{"question_id":"q","type":"stars","value":1}]}"#,
                "answers[0].type",
                Reason::UnknownEnum,
            ),
            (
                EventKind::Survey,
                r#"{"survey_id":"s","submitted_at":"2025-11-14T10:02:00Z"}"#,
                "response_id",
                Reason::Missing,
            ),
            (
                EventKind::Call,
                r#"{"call_id":"c","started_at":"2025-11-14T10:02:00Z","segments":[{"speaker":"robot","start":0,"end":1,"text":"x"}]}"#,
                "segments[0].speaker",
                Reason::UnknownEnum,
            ),
            (
                EventKind::Order,
                r#"{"order_id":"o","status":"lost","updated_at":"2025-11-14T10:02:00Z"}"#,
                "status",
                Reason::UnknownEnum,
            ),
            (
                EventKind::Click,
                r#"{"type":"identify","messageId":"m","timestamp":"2025-11-14T10:02:00Z"}"#,
                "type",
                Reason::UnknownEnum,
            ),
        ] {
            let r = decode(kind, body.as_bytes(), ORIGIN);
            let v = r.decode_error.expect(body);
            assert_eq!(
                (v.field.as_str(), v.reason),
                (field, reason),
                "{body}: {}",
                v.description
            );
        }
    }

    #[test]
    fn cdc_envelopes_and_track_calls() {
        let r = decode(
            EventKind::Order,
            br#"{"op":"u","after":{"order_id":"o-1","status":"DELIVERED","updated_at":"2025-11-14T10:02:00Z","amount_minor":5600,"currency":"CNY"}}"#,
            ORIGIN,
        );
        assert_eq!(r.event.expect("order").event_id, "order:o-1:4");
        let r = decode(
            EventKind::Click,
            br#"{"type":"track","event":"Checkout Started","messageId":"m-1","timestamp":"2025-11-14T10:02:00Z","anonymousId":"a-1","context":{"page":{"url":"https://shop.example/checkout/pay?x=1"}}}"#,
            ORIGIN,
        );
        let e = r.event.expect("click");
        let Some(Payload::Click(c)) = e.payload else {
            panic!("click")
        };
        assert_eq!(
            (c.path.as_str(), c.action),
            ("/checkout/pay", ClickAction::Checkout as i32)
        );
        assert_eq!(c.session_id, "a-1");
    }
}
