//! Source-native collectors: where normalisation really happens.
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
//! `xoflow import --kind` both call [`decode`].

use std::collections::HashMap;

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use xoflow_proto::{
    EventKind, Timestamp,
    v1::{
        CallTranscript, ClickAction, ClickEvent, CustomerIdentity, Event, LineItem, Location,
        MetricKind, Order, OrderStatus, Reactions, SocialPost, Speaker, SurveyAnswer,
        SurveyResponse, SurveyTrigger, TranscriptSegment, event::Payload, survey_trigger::Ref,
    },
};

use crate::{
    batch::{JSON, Record},
    validate::{Reason, Violation},
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
    from_converted(converted, bytes.to_vec(), origin)
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
    from_converted(converted, original, origin)
}

fn from_converted(
    converted: Result<(Event, Vec<String>), Violation>,
    original: Vec<u8>,
    origin: Origin<'_>,
) -> Record {
    match converted {
        Ok((mut e, names)) => {
            e.tenant = origin.tenant.to_owned();
            e.source = origin.source.to_owned();
            Record {
                event: Some(e),
                decode_error: None,
                original: Some(original),
                content_type: JSON,
                names,
            }
        }
        Err(v) => Record::undecodable(original, JSON, v),
    }
}

/// Parses one JSON record. Only a record that fails pays for the path
/// tracking that names its field at fault (two thirds of decoding time
/// when every record paid for it).
pub(crate) fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Violation> {
    if let Ok(t) = serde_json::from_slice(bytes) {
        return Ok(t);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let t = serde_path_to_error::deserialize(&mut de).map_err(path_violation)?;
    de.end()
        .map_err(|e| Violation::new("", Reason::Decode, e.to_string()))?;
    Ok(t)
}

/// [`parse`] of a record already read as a JSON value (order rows, CSV).
fn parse_value<T: DeserializeOwned>(v: Value) -> Result<T, Violation> {
    if let Ok(t) = T::deserialize(&v) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(v).map_err(path_violation)
}

/// A serde error with its path, as a field violation with a reason code
/// classified from serde's own wording.
pub fn path_violation(e: serde_path_to_error::Error<serde_json::Error>) -> Violation {
    let path = e.path().to_string();
    // serde_path_to_error writes `?` for a position it could not name (the
    // value where the syntax broke): report the enclosing field.
    let field = path
        .split('.')
        .filter(|p| *p != "?" && !p.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    let inner = e.into_inner();
    let msg = inner.to_string();
    let reason = if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        Reason::Decode
    } else if msg.starts_with("unknown field") {
        Reason::Invalid
    } else if msg.starts_with("unknown variant")
        || msg.contains("unknown enum")
        || msg.contains("expected one of")
    {
        Reason::UnknownEnum
    } else if msg.starts_with("missing field") {
        Reason::Missing
    } else {
        Reason::Invalid
    };
    // "missing field `x`" is reported at the parent: name the field itself.
    let field = match (reason, msg.split('`').nth(1)) {
        (Reason::Missing, Some(name)) if field.is_empty() => name.to_owned(),
        (Reason::Missing, Some(name)) => format!("{field}.{name}"),
        _ => field,
    };
    Violation::new(field, reason, msg)
}

fn required(field: &str, s: &str) -> Result<(), Violation> {
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

fn location(store_id: Option<String>, region: Option<String>) -> Option<Location> {
    (store_id.is_some() || region.is_some()).then(|| Location {
        store_id: store_id.unwrap_or_default(),
        region: region.unwrap_or_default(),
    })
}

// ---------------------------------------------------------------- survey --

/// A survey tool's response webhook.
#[derive(Debug, Deserialize)]
struct SurveyWebhook {
    response_id: String,
    survey_id: String,
    submitted_at: Timestamp,
    #[serde(default)]
    respondent: Respondent,
    #[serde(default)]
    answers: Vec<NativeAnswer>,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    visit_id: Option<String>,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Respondent {
    #[serde(default)]
    id: String,
    /// Marked personal: masked wherever it appears in the free text.
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AnswerType {
    Nps,
    Csat,
    Ces,
    Text,
    Rating,
}

#[derive(Debug, Deserialize)]
struct NativeAnswer {
    question_id: String,
    #[serde(rename = "type")]
    kind: AnswerType,
    value: Value,
    /// The top of the scale for CSAT (5, 7 or 10) and rating questions.
    #[serde(default)]
    scale: Option<i32>,
}

impl SurveyWebhook {
    fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        required("response_id", &self.response_id)?;
        let mut answers = Vec::with_capacity(self.answers.len());
        for (i, a) in self.answers.into_iter().enumerate() {
            let (kind, min, max) = match a.kind {
                AnswerType::Nps => (MetricKind::Nps, 0, 10),
                AnswerType::Csat => (MetricKind::Csat, 1, a.scale.unwrap_or(5)),
                AnswerType::Ces => (MetricKind::Ces, 1, a.scale.unwrap_or(7)),
                AnswerType::Rating => (MetricKind::Other, 1, a.scale.unwrap_or(5)),
                AnswerType::Text => (MetricKind::Other, 0, 0),
            };
            let (score, text) = match (&a.kind, a.value) {
                (AnswerType::Text, Value::String(s)) => (None, s),
                (AnswerType::Text, other) => {
                    return Err(Violation::new(
                        format!("answers[{i}].value"),
                        Reason::Invalid,
                        format!("a text answer is a string, got {other}"),
                    ));
                }
                (_, Value::Number(n)) => (n.as_f64(), String::new()),
                (_, other) => {
                    return Err(Violation::new(
                        format!("answers[{i}].value"),
                        Reason::Invalid,
                        format!("a scored answer is a number, got {other}"),
                    ));
                }
            };
            answers.push(SurveyAnswer {
                question_id: a.question_id,
                kind: kind as i32,
                score,
                scale_min: min,
                scale_max: max,
                text,
            });
        }
        let trigger = self
            .order_id
            .map(Ref::OrderId)
            .or(self.call_id.map(Ref::CallId))
            .or(self.visit_id.map(Ref::VisitId))
            .map(|r| SurveyTrigger { r#ref: Some(r) });
        let names = name_list(self.respondent.name);
        let event = Event {
            event_id: format!("survey:{}:{}", self.survey_id, self.response_id),
            occurred_at: Some(self.submitted_at),
            customer: identity(
                self.respondent.id,
                self.respondent.email,
                self.respondent.phone,
                String::new(),
            ),
            location: location(self.store_id, self.region),
            payload: Some(Payload::Survey(SurveyResponse {
                survey_id: self.survey_id,
                answers,
                comment: self.comment,
                language: self.language,
                trigger,
            })),
            ..Default::default()
        };
        Ok((event, names))
    }
}

fn name_list(name: String) -> Vec<String> {
    if name.trim().is_empty() {
        Vec::new()
    } else {
        vec![name]
    }
}

fn identity(id: String, email: String, phone: String, device: String) -> Option<CustomerIdentity> {
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

// ------------------------------------------------------------------ call --

/// A speech-to-text transcript of a call.
#[derive(Debug, Deserialize)]
struct Transcript {
    call_id: String,
    #[serde(default)]
    agent_id: String,
    #[serde(default)]
    queue: String,
    started_at: Timestamp,
    #[serde(default)]
    ended_at: Option<Timestamp>,
    #[serde(default)]
    caller: Caller,
    #[serde(default)]
    language: String,
    #[serde(default)]
    disposition: String,
    segments: Vec<NativeSegment>,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Caller {
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    phone: String,
    /// Marked personal: masked wherever it appears in the transcript.
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NativeSpeaker {
    Customer,
    Agent,
    System,
}

#[derive(Debug, Deserialize)]
struct NativeSegment {
    speaker: NativeSpeaker,
    /// Seconds from the start of the call.
    start: f64,
    /// Seconds from the start of the call.
    end: f64,
    text: String,
}

fn seconds_to_ms(field: String, s: f64) -> Result<u32, Violation> {
    if !s.is_finite() || s < 0.0 || s > f64::from(u32::MAX) / 1000.0 {
        return Err(Violation::new(
            field,
            Reason::OutOfRange,
            format!("{s} is not a non-negative offset in seconds"),
        ));
    }
    Ok((s * 1000.0).round() as u32)
}

impl Transcript {
    fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        let mut segments = Vec::with_capacity(self.segments.len());
        for (i, s) in self.segments.into_iter().enumerate() {
            segments.push(TranscriptSegment {
                speaker: match s.speaker {
                    NativeSpeaker::Customer => Speaker::Customer,
                    NativeSpeaker::Agent => Speaker::Agent,
                    NativeSpeaker::System => Speaker::System,
                } as i32,
                start_ms: seconds_to_ms(format!("segments[{i}].start"), s.start)?,
                end_ms: seconds_to_ms(format!("segments[{i}].end"), s.end)?,
                text: s.text,
            });
        }
        let names = name_list(self.caller.name);
        let event = Event {
            event_id: format!("call:{}", self.call_id),
            occurred_at: Some(self.started_at),
            customer: identity(
                self.caller.customer_id,
                String::new(),
                self.caller.phone,
                String::new(),
            ),
            location: location(self.store_id, self.region),
            payload: Some(Payload::Call(CallTranscript {
                call_id: self.call_id,
                agent_id: self.agent_id,
                queue: self.queue,
                started_at: Some(self.started_at),
                ended_at: self.ended_at,
                segments,
                disposition: self.disposition,
                language: self.language,
            })),
            ..Default::default()
        };
        Ok((event, names))
    }
}

// ---------------------------------------------------------------- social --

/// A post from a social-listening tool.
#[derive(Debug, Deserialize)]
struct Post {
    platform: String,
    post_id: String,
    created_at: Timestamp,
    #[serde(default)]
    author: Author,
    text: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    reply_to: String,
    #[serde(default)]
    likes: u32,
    #[serde(default)]
    shares: u32,
    #[serde(default)]
    comments: u32,
    #[serde(default)]
    language: String,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Author {
    #[serde(default)]
    handle: String,
    /// Marked personal: masked in the text.
    #[serde(default)]
    display_name: String,
}

impl Post {
    fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        let names = name_list(self.author.display_name);
        let event = Event {
            event_id: format!("social:{}:{}", self.platform, self.post_id),
            occurred_at: Some(self.created_at),
            location: location(self.store_id, self.region),
            payload: Some(Payload::Social(SocialPost {
                platform: self.platform,
                post_id: self.post_id,
                author_handle: self.author.handle,
                text: self.text,
                url: self.url,
                reply_to: self.reply_to,
                reactions: Some(Reactions {
                    likes: self.likes,
                    shares: self.shares,
                    comments: self.comments,
                }),
                language: self.language,
            })),
            ..Default::default()
        };
        Ok((event, names))
    }
}

// ----------------------------------------------------------------- order --

/// An order event, or a CDC row: a Debezium-style `{"op", "after": row}`
/// envelope is unwrapped first, and errors then name the row's field as
/// `after.amount_minor`.
#[derive(Debug)]
struct OrderRow(OrderFields);

fn order_row(mut v: Value) -> Result<OrderRow, Violation> {
    match v.get_mut("after").map(Value::take) {
        Some(after) => parse_value::<OrderFields>(after)
            .map(OrderRow)
            .map_err(|mut e| {
                e.field = if e.field.is_empty() {
                    "after".into()
                } else {
                    format!("after.{}", e.field)
                };
                e
            }),
        None => parse_value::<OrderFields>(v).map(OrderRow),
    }
}

#[derive(Debug, Deserialize)]
struct OrderFields {
    order_id: String,
    status: String,
    updated_at: Timestamp,
    #[serde(default)]
    amount_minor: i64,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    promised_delivery_at: Option<Timestamp>,
    #[serde(default)]
    delivered_at: Option<Timestamp>,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    items: Vec<NativeItem>,
}

#[derive(Debug, Deserialize)]
struct NativeItem {
    sku: String,
    #[serde(default)]
    name: String,
    quantity: u32,
    unit_price_minor: i64,
}

impl OrderRow {
    fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        let o = self.0;
        let status = OrderStatus::from_str_name(&format!(
            "ORDER_STATUS_{}",
            o.status.trim().to_ascii_uppercase()
        ))
        .filter(|s| *s != OrderStatus::Unspecified)
        .ok_or_else(|| {
            Violation::new(
                "status",
                Reason::UnknownEnum,
                format!(
                    "{:?} is not one of placed, paid, shipped, delivered, cancelled, returned",
                    o.status
                ),
            )
        })?;
        let event = Event {
            event_id: format!("order:{}:{}", o.order_id, status as i32),
            occurred_at: Some(o.updated_at),
            customer: identity(o.customer_id, o.email, o.phone, String::new()),
            location: location(o.store_id, o.region),
            payload: Some(Payload::Order(Order {
                order_id: o.order_id,
                status: status as i32,
                amount_minor: o.amount_minor,
                currency: o.currency,
                items: o
                    .items
                    .into_iter()
                    .map(|i| LineItem {
                        sku: i.sku,
                        name: i.name,
                        quantity: i.quantity,
                        unit_price_minor: i.unit_price_minor,
                    })
                    .collect(),
                promised_delivery_at: o.promised_delivery_at,
                delivered_at: o.delivered_at,
            })),
            ..Default::default()
        };
        Ok((event, Vec::new()))
    }
}

// ----------------------------------------------------------------- click --

/// A Segment-style `track` (or `page`) call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrackCall {
    #[serde(rename = "type", default = "track")]
    call_type: String,
    #[serde(default)]
    event: String,
    message_id: String,
    timestamp: Timestamp,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    anonymous_id: String,
    #[serde(default)]
    context: TrackContext,
    #[serde(default)]
    properties: HashMap<String, Value>,
}

fn track() -> String {
    "track".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrackContext {
    #[serde(default)]
    page: PageContext,
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    session_id: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct PageContext {
    #[serde(default)]
    url: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    referrer: String,
}

/// The click action a Segment event name stands for (the Segment e-commerce
/// spec names, and the obvious words).
fn action_of(call_type: &str, event: &str) -> ClickAction {
    let e = event.to_ascii_lowercase();
    if call_type == "page" || call_type == "screen" || e.contains("viewed") {
        ClickAction::View
    } else if e.contains("search") {
        ClickAction::Search
    } else if e.contains("added") || e.contains("add to cart") {
        ClickAction::AddToCart
    } else if e.contains("checkout") {
        ClickAction::Checkout
    } else if e.contains("order completed") || e.contains("purchase") {
        ClickAction::Purchase
    } else if e.contains("error") || e.contains("failed") {
        ClickAction::Error
    } else {
        ClickAction::Click
    }
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl TrackCall {
    fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        if !matches!(self.call_type.as_str(), "track" | "page" | "screen") {
            return Err(Violation::new(
                "type",
                Reason::UnknownEnum,
                format!("{:?} is not one of track, page, screen", self.call_type),
            ));
        }
        required("messageId", &self.message_id)?;
        let session = self
            .properties
            .get("session_id")
            .and_then(value_string)
            .or_else(|| self.context.session_id.as_ref().and_then(value_string))
            .unwrap_or_else(|| self.anonymous_id.clone());
        let duration_ms = match self.properties.get("duration_ms") {
            None => 0,
            Some(v) => v
                .as_u64()
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| {
                    Violation::new(
                        "properties.duration_ms",
                        Reason::Invalid,
                        format!("a whole number of milliseconds, got {v}"),
                    )
                })?,
        };
        let mut path = self.context.page.path;
        if path.is_empty() {
            path = path_of(&self.context.page.url);
        }
        let event = Event {
            event_id: format!("click:{}", self.message_id),
            occurred_at: Some(self.timestamp),
            customer: identity(
                self.user_id,
                String::new(),
                String::new(),
                self.anonymous_id,
            ),
            payload: Some(Payload::Click(ClickEvent {
                session_id: session,
                url: self.context.page.url,
                path,
                action: action_of(&self.call_type, &self.event) as i32,
                referrer: self.context.page.referrer,
                user_agent: self.context.user_agent,
                duration_ms,
            })),
            attributes: if self.event.is_empty() {
                Default::default()
            } else {
                [("event".to_string(), self.event)].into()
            },
            ..Default::default()
        };
        Ok((event, Vec::new()))
    }
}

/// The path of a URL (`https://h/a/b?q` → `/a/b`).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin<'static> = Origin {
        tenant: "acme",
        source: "test",
    };

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
