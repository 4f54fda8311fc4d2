//! The ClickHouse rows and their construction from protobuf records.
//!
//! [`EventRow`] is the typed definition of an `events` row; the sink's batch
//! holds its rows as RowBinary bytes instead ([`EventRows`], written by
//! `transcode` straight from the records, equal to the `clickhouse`
//! crate's serialization of `EventRow`). Field names and types mirror the
//! migrations: the insert names its columns (`INSERT INTO events
//! (<fields>) FORMAT RowBinary`), so order need not match the table, but
//! with validation off (needed for ClickHouse 18.16) types are not checked
//! by the client; the end-to-end tests read every field back.

use std::ops::Range;

use clickhouse::Row;
use serde::Serialize;
use xoflow_common::dead_letter::{Builder, PROTOBUF_EVENT, Reason, Stage};
use xoflow_proto::{
    Message,
    v1::{DeadLetter, EnrichedEvent, event::Payload},
};

use super::transcode::{self, Scratch, Span, Unusual, Written};

/// Why a record has no row: it has no event, or its event no payload.
pub const NO_PAYLOAD: &str = "no event, or an event without a payload";

/// The `events` rows of a batch: their RowBinary bytes, in the order the
/// insert sends them, and what the sink needs of each row besides (its
/// dedup key, lineage and a refused row's dead letter: [`RowRef`]).
/// Emptied, not dropped, between batches: its memory is reused.
#[derive(Default)]
pub struct EventRows {
    bytes: Vec<u8>,
    rows: Vec<Entry>,
    scratch: Scratch,
}

#[derive(Clone, Copy)]
struct Entry {
    at: usize,
    end: usize,
    written: Written,
    partition: i32,
    offset: i64,
}

/// One row of [`EventRows`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowRef<'a> {
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub source: &'a str,
    /// The event as protobuf (the `event_proto` column).
    pub event_proto: &'a [u8],
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub revision: u32,
    /// Enrich vouched for this revision as never emitted before: the
    /// dedup index is not asked for it (docs/clickhouse.md, "Revisions
    /// enrich vouches for").
    pub new_revision: bool,
    /// `occurred_at`, seconds, and the same in milliseconds.
    pub occurred_at: u32,
    pub occurred_ms: i64,
    /// When ingest received the event, Unix milliseconds (0 when unknown).
    pub received_ms: i64,
}

impl EventRows {
    /// Appends the row of an encoded `EnrichedEvent`, read at `lineage`,
    /// and returns it; or says why the record has none (it is then
    /// dead-lettered as undecodable). A record one pass cannot read as
    /// prost would (`transcode::Unusual`) is decoded with prost and its
    /// canonical encoding written.
    pub fn push(&mut self, record: &[u8], lineage: Lineage<'_>) -> Result<RowRef<'_>, String> {
        let at = self.bytes.len();
        let written =
            match transcode::write(record, None, lineage, &mut self.bytes, &mut self.scratch) {
                Ok(w) => w,
                Err(Unusual) => {
                    let en = EnrichedEvent::decode(record).map_err(|e| e.to_string())?;
                    let canonical = en.encode_to_vec();
                    transcode::write(
                        &canonical,
                        event_field(record),
                        lineage,
                        &mut self.bytes,
                        &mut self.scratch,
                    )
                    .map_err(|Unusual| {
                        "a record prost reads but its canonical encoding does not transcode"
                            .to_owned()
                    })?
                }
            };
        let Some(written) = written else {
            return Err(NO_PAYLOAD.to_owned());
        };
        self.rows.push(Entry {
            at,
            end: self.bytes.len(),
            written,
            partition: lineage.partition,
            offset: lineage.offset,
        });
        Ok(self.get(self.rows.len() - 1))
    }

    /// Removes the last row pushed.
    pub fn pop(&mut self) {
        if let Some(e) = self.rows.pop() {
            self.bytes.truncate(e.at);
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows.clear();
    }

    /// Row `i`; panics past the end, as indexing does.
    pub fn get(&self, i: usize) -> RowRef<'_> {
        self.view(&self.rows[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.iter_from(0)
    }

    /// The rows from `from` on.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = RowRef<'_>> {
        self.rows[from..].iter().map(|e| self.view(e))
    }

    /// The RowBinary bytes of `rows`, as one insert sends them.
    pub fn bytes(&self, rows: Range<usize>) -> &[u8] {
        if rows.is_empty() {
            return &[];
        }
        &self.bytes[self.rows[rows.start].at..self.rows[rows.end - 1].end]
    }

    /// Keeps the rows `keep` says to, in order, moving their bytes
    /// together.
    pub fn retain(&mut self, mut keep: impl FnMut(RowRef<'_>) -> bool) {
        let (mut kept, mut to) = (0, 0);
        for i in 0..self.rows.len() {
            let e = self.rows[i];
            if !keep(self.view(&e)) {
                continue;
            }
            let len = e.end - e.at;
            // Rows before the first one dropped stay where they are.
            if to != e.at {
                self.bytes.copy_within(e.at..e.end, to);
            }
            self.rows[kept] = Entry {
                at: to,
                end: to + len,
                ..e
            };
            (kept, to) = (kept + 1, to + len);
        }
        self.rows.truncate(kept);
        self.bytes.truncate(to);
    }

    fn view(&self, e: &Entry) -> RowRef<'_> {
        let row = &self.bytes[e.at..e.end];
        // Every string was checked for UTF-8 as it was written.
        let str = |s: Span| std::str::from_utf8(s.of(row)).unwrap_or_default();
        let w = &e.written;
        RowRef {
            tenant: str(w.tenant),
            event_id: str(w.event_id),
            source: str(w.source),
            event_proto: w.event_proto.of(row),
            topic: str(w.topic),
            partition: e.partition,
            offset: e.offset,
            revision: w.revision,
            new_revision: w.new_revision,
            occurred_at: w.occurred_at,
            occurred_ms: w.occurred_ms,
            received_ms: w.received_ms,
        }
    }
}

/// One row of `events`.
#[derive(Debug, Clone, Default, PartialEq, Row, Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct EventRow {
    pub event_id: String,
    pub tenant: String,
    pub source: String,
    pub kind: i8,
    pub occurred_at: u32,
    pub occurred_ms: i64,
    /// The tenant's offset from UTC at `occurred_at` (stamped by ingest):
    /// local days, weeks and months are computed with it.
    pub utc_offset_s: i32,
    pub received_at: u32,
    pub enriched_at: u32,

    pub customer_id: String,
    pub resolution: i8,
    pub email_hash: String,
    pub phone_hash: String,
    pub social_handle_hash: String,
    pub device_id_hash: String,

    pub journey: String,
    pub stage: String,
    pub touchpoint: String,
    pub channel: i8,
    pub store_id: String,
    pub region: String,
    pub owner_department: String,
    pub attr_keys: Vec<String>,
    pub attr_values: Vec<String>,

    pub survey_id: String,
    pub nps_score: Option<i8>,
    pub nps_category: i8,
    pub csat_score: Option<f64>,
    pub csat_normalised: Option<f64>,
    pub csat_top2: u8,
    pub ces_score: Option<f64>,
    pub ces_normalised: Option<f64>,
    pub sentiment: Option<f64>,
    pub sentiment_label: i8,
    pub topics: Vec<String>,
    pub language: String,
    pub text: String,
    pub trigger_order_id: String,
    pub trigger_call_id: String,
    pub call_id: String,
    pub call_agent_id: String,
    pub call_queue: String,
    pub call_duration_s: u32,
    pub call_disposition: String,
    pub social_platform: String,
    pub social_post_id: String,
    pub social_url: String,
    pub social_likes: u32,
    pub social_shares: u32,

    pub order_id: String,
    pub order_status: i8,
    pub amount_minor: i64,
    pub currency: String,
    pub item_count: u32,
    pub promised_delivery_ms: Option<i64>,
    pub delivered_ms: Option<i64>,
    pub session_id: String,
    pub url: String,
    pub path: String,
    pub click_action: i8,
    pub duration_ms: u32,

    pub ctx_order_id: String,
    pub ctx_order_status: i8,
    pub ctx_order_amount_minor: i64,
    pub ctx_delivery_late_s: Option<i64>,
    pub ctx_session_id: String,
    pub ctx_session_errors: u32,
    pub ctx_orders_90d: u32,
    pub ctx_value_90d_minor: i64,
    pub ctx_support_contacts_30d: u32,
    pub ctx_lifetime_value_minor: i64,
    pub ctx_days_since_last_order: Option<u32>,
    pub ctx_last_nps: Option<i8>,
    pub ctx_churn_risk: Option<f64>,
    pub ctx_call_id: String,
    pub ctx_call_queue: String,
    pub ctx_call_disposition: String,
    pub ctx_call_duration_s: u32,
    pub ctx_call_sentiment_label: i8,

    /// Every answer of a survey, as parallel arrays (one element per
    /// answer, in the survey's order): `survey_answers` is derived from
    /// them. `answer_has_score` is 0 for a text-only answer.
    pub answer_question_ids: Vec<String>,
    pub answer_kinds: Vec<i8>,
    pub answer_scores: Vec<f64>,
    pub answer_has_score: Vec<u8>,
    pub answer_scale_min: Vec<i32>,
    pub answer_scale_max: Vec<i32>,
    pub answer_texts: Vec<String>,

    /// The event's contact statement (Enum8: 0 unspecified, 1 granted, 2
    /// withdrawn) and the customer's standing do-not-contact as enrich knew
    /// it.
    pub contact_consent: i8,
    pub ctx_do_not_contact: u8,

    /// Which enrichment of the event this row is: with `event_id`, the
    /// sink's dedup key and the end of the table's sorting key.
    pub revision: u32,

    pub event_proto: Vec<u8>,

    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// Where a record came from, for the lineage columns.
#[derive(Debug, Clone, Copy)]
pub struct Lineage<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

pub(super) fn secs(ts: &Option<xoflow_proto::Timestamp>) -> u32 {
    ts.as_ref()
        .map(|t| t.seconds.clamp(0, i64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

pub(super) fn millis(ts: &Option<xoflow_proto::Timestamp>) -> Option<i64> {
    ts.as_ref().map(xoflow_proto::to_unix_millis)
}

/// Narrows a protobuf enum value to the Enum8 code; unknown values become 0.
pub(super) fn enum8(v: i32) -> i8 {
    i8::try_from(v).unwrap_or(0)
}

/// The encoded `event` (field 1) of an encoded `EnrichedEvent`, as it
/// stands in the record: what `event_proto` stores, without encoding the
/// decoded event again (an encode per row was 1-2 % of the whole pipeline's
/// CPU). Enrich writes there the event's bytes as it read them (the
/// collector's prost encoding) and prost encodes a message the same way
/// every time, so these bytes equal the event encoded again (test below),
/// but for the order of its `attributes` (a map, written in hash order)
/// and any field this build does not know. `None` when the field is
/// absent or occurs more than once (a
/// decoder merges repeated occurrences; the caller encodes the merge then)
/// or the record does not parse.
pub fn event_field(record: &[u8]) -> Option<&[u8]> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut rest = record;
    let mut found = None;
    while !rest.is_empty() {
        let (tag, wire) = decode_key(&mut rest).ok()?;
        let len = match wire {
            WireType::Varint => {
                decode_varint(&mut rest).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut rest).ok()?).ok()?,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        let field = rest.get(..len)?;
        if tag == 1 && wire == WireType::LengthDelimited {
            if found.is_some() {
                return None;
            }
            found = Some(field);
        }
        rest = &rest[len..];
    }
    found
}

impl EventRow {
    /// Builds the row, consuming the record. Returns `None` for a record
    /// without an event, which the caller dead-letters.
    pub fn from_enriched(en: EnrichedEvent, lineage: Lineage<'_>) -> Option<EventRow> {
        Self::from_decoded(en, None, lineage)
    }

    /// The same, for `en` decoded from `record`: `event_proto` is copied
    /// from the record's bytes (see [`event_field`]) instead of encoding
    /// the event again.
    pub fn from_record(en: EnrichedEvent, record: &[u8], lineage: Lineage<'_>) -> Option<EventRow> {
        Self::from_decoded(en, event_field(record), lineage)
    }

    fn from_decoded(
        mut en: EnrichedEvent,
        event_bytes: Option<&[u8]>,
        lineage: Lineage<'_>,
    ) -> Option<EventRow> {
        let mut e = en.event.take()?;
        let kind = e.kind()? as i8 + 1;
        let event_proto = match event_bytes {
            Some(b) => b.to_vec(),
            None => e.encode_to_vec(),
        };
        let mut r = EventRow {
            kind,
            occurred_at: secs(&e.occurred_at),
            occurred_ms: millis(&e.occurred_at).unwrap_or(0),
            utc_offset_s: e.utc_offset_seconds,
            contact_consent: if (0..=2).contains(&e.contact_consent) {
                e.contact_consent as i8
            } else {
                0
            },
            received_at: secs(&e.received_at),
            enriched_at: secs(&en.enriched_at),
            revision: en.revision,
            resolution: enum8(en.resolution),
            customer_id: std::mem::take(&mut en.resolved_customer_id),
            owner_department: std::mem::take(&mut en.owner_department),
            event_proto,
            kafka_topic: lineage.topic.to_owned(),
            kafka_partition: lineage.partition,
            kafka_offset: lineage.offset,
            ..Default::default()
        };
        r.event_id = std::mem::take(&mut e.event_id);
        r.tenant = std::mem::take(&mut e.tenant);
        r.source = std::mem::take(&mut e.source);
        if let Some(c) = e.customer.take() {
            r.email_hash = c.email_hash;
            r.phone_hash = c.phone_hash;
            r.social_handle_hash = c.social_handle_hash;
            r.device_id_hash = c.device_id_hash;
            if r.customer_id.is_empty() {
                r.customer_id = c.customer_id;
            }
        }
        if let Some(tp) = e.touchpoint.take() {
            r.journey = tp.journey;
            r.stage = tp.stage;
            r.touchpoint = tp.touchpoint;
            r.channel = enum8(tp.channel);
        }
        if let Some(loc) = e.location.take() {
            r.store_id = loc.store_id;
            r.region = loc.region;
        }
        let mut attrs: Vec<(String, String)> =
            std::mem::take(&mut e.attributes).into_iter().collect();
        // Map order is unspecified; sorted keys make the row deterministic.
        attrs.sort_unstable();
        (r.attr_keys, r.attr_values) = attrs.into_iter().unzip();

        match e.payload.take() {
            Some(Payload::Survey(s)) => {
                let n = s.answers.len();
                r.answer_question_ids.reserve(n);
                for a in s.answers {
                    r.answer_question_ids.push(a.question_id);
                    // The table's enum names the proto's values 0-4.
                    r.answer_kinds.push(if (0..=4).contains(&a.kind) {
                        a.kind as i8
                    } else {
                        0
                    });
                    r.answer_scores.push(a.score.unwrap_or(0.0));
                    r.answer_has_score.push(u8::from(a.score.is_some()));
                    r.answer_scale_min.push(a.scale_min);
                    r.answer_scale_max.push(a.scale_max);
                    r.answer_texts.push(a.text);
                }
                r.survey_id = s.survey_id;
                r.language = s.language;
                r.text = s.comment;
                if let Some(t) = s.trigger.and_then(|t| t.r#ref) {
                    use xoflow_proto::v1::survey_trigger::Ref;
                    match t {
                        Ref::OrderId(id) => r.trigger_order_id = id,
                        Ref::CallId(id) => r.trigger_call_id = id,
                        Ref::VisitId(id) => r.session_id = id,
                    }
                }
            }
            Some(Payload::Call(c)) => {
                r.call_duration_s = match (millis(&c.started_at), millis(&c.ended_at)) {
                    (Some(s), Some(e)) if e >= s => {
                        u32::try_from(e.saturating_sub(s) / 1000).unwrap_or(u32::MAX)
                    }
                    _ => 0,
                };
                r.call_id = c.call_id;
                r.call_agent_id = c.agent_id;
                r.call_queue = c.queue;
                r.call_disposition = c.disposition;
                r.language = c.language;
                let mut text = String::new();
                for s in c.segments {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&s.text);
                }
                r.text = text;
            }
            Some(Payload::Social(s)) => {
                r.social_platform = s.platform;
                r.social_post_id = s.post_id;
                r.social_url = s.url;
                r.language = s.language;
                r.text = s.text;
                if let Some(re) = s.reactions {
                    r.social_likes = re.likes;
                    r.social_shares = re.shares;
                }
            }
            Some(Payload::Order(o)) => {
                r.order_status = enum8(o.status);
                r.amount_minor = o.amount_minor;
                // Saturated: a sum past UInt32 is not a count to wrap.
                r.item_count = o
                    .items
                    .iter()
                    .fold(0u32, |n, i| n.saturating_add(i.quantity));
                r.promised_delivery_ms = millis(&o.promised_delivery_at);
                r.delivered_ms = millis(&o.delivered_at);
                r.order_id = o.order_id;
                r.currency = o.currency;
            }
            Some(Payload::Click(c)) => {
                r.session_id = c.session_id;
                r.url = c.url;
                r.path = c.path;
                r.click_action = enum8(c.action);
                r.duration_ms = c.duration_ms;
            }
            None => return None,
        }

        if let Some(cx) = en.cx.take() {
            r.nps_score = cx.nps_score.and_then(|s| i8::try_from(s).ok());
            r.nps_category = enum8(cx.nps_category);
            r.csat_score = cx.csat_score;
            r.csat_normalised = cx.csat_normalised;
            r.csat_top2 = u8::from(cx.csat_top2);
            r.ces_score = cx.ces_score;
            r.ces_normalised = cx.ces_normalised;
            r.sentiment = cx.sentiment;
            r.sentiment_label = enum8(cx.sentiment_label);
            r.topics = cx.topics;
        }
        if let Some(o) = en.order.take() {
            r.ctx_order_status = enum8(o.status);
            r.ctx_order_amount_minor = o.amount_minor;
            r.ctx_delivery_late_s = o.delivery_late_seconds;
            r.ctx_order_id = o.order_id;
        }
        if let Some(s) = en.session.take() {
            r.ctx_session_id = s.session_id;
            r.ctx_session_errors = s.error_pages;
        }
        if let Some(c) = en.customer.take() {
            r.ctx_orders_90d = c.orders_90d;
            r.ctx_value_90d_minor = c.value_90d_minor;
            r.ctx_support_contacts_30d = c.support_contacts_30d;
            r.ctx_lifetime_value_minor = c.lifetime_value_minor;
            r.ctx_days_since_last_order = c.days_since_last_order;
            r.ctx_last_nps = c.last_nps.and_then(|n| i8::try_from(n).ok());
            r.ctx_churn_risk = c.churn_risk;
            r.ctx_do_not_contact = u8::from(c.do_not_contact);
        }
        if let Some(c) = en.call.take() {
            r.ctx_call_id = c.call_id;
            r.ctx_call_queue = c.queue;
            r.ctx_call_disposition = c.disposition;
            r.ctx_call_duration_s = c.duration_seconds;
            r.ctx_call_sentiment_label = enum8(c.sentiment_label);
        }
        Some(r)
    }
}

/// One row of `dead_letters`.
#[derive(Debug, Clone, Default, PartialEq, Row, Serialize)]
pub struct DeadLetterRow {
    pub at: u32,
    pub stage: String,
    pub reason: String,
    pub field: String,
    pub description: String,
    pub tenant: String,
    pub source: String,
    pub event_id: String,
    pub content_type: String,
    pub payload: Vec<u8>,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// 1 when this is a row of `events` that ClickHouse refused: its
    /// lineage then counts towards the enriched topic's stored position.
    pub refused: u8,
    /// For a refused row, its revision: with `event_id`, the dedup key the
    /// sink reloads for the enriched topic. 0 for every other dead letter.
    pub revision: u32,
}

impl DeadLetterRow {
    /// The dead letter for an `events` row ClickHouse refused: the event as
    /// protobuf (replayable through `xoflow import`), the server's reason,
    /// and the row's own lineage.
    pub fn refused(row: RowRef<'_>, at_unix_millis: i64, error: String) -> Self {
        let d = Builder::new(Stage::Sink, Reason::ClickHouseRefused, at_unix_millis)
            .payload(row.event_proto.to_vec(), PROTOBUF_EVENT)
            .description(error)
            .origin(row.tenant, row.source, row.event_id)
            .build();
        let lineage = Lineage {
            topic: row.topic,
            partition: row.partition,
            offset: row.offset,
        };
        DeadLetterRow {
            refused: 1,
            revision: row.revision,
            ..DeadLetterRow::from_dead_letter(d, lineage)
        }
    }

    /// The row of a dead letter read from Kafka at `lineage`.
    pub fn from_dead_letter(d: DeadLetter, lineage: Lineage<'_>) -> Self {
        DeadLetterRow {
            kafka_topic: lineage.topic.to_owned(),
            kafka_partition: lineage.partition,
            kafka_offset: lineage.offset,
            at: secs(&d.at),
            stage: d.stage,
            reason: d.reason,
            field: d.field,
            description: d.description,
            tenant: d.tenant,
            source: d.source,
            event_id: d.event_id,
            content_type: d.content_type,
            payload: d.payload,
            refused: 0,
            revision: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use xoflow_proto::v1::{
        CallContext, CustomerIdentity, Event, IdentityResolution, SentimentLabel, SurveyResponse,
        SurveyTrigger, Touchpoint, survey_trigger::Ref,
    };

    use super::*;

    const LINEAGE: Lineage<'static> = Lineage {
        topic: "enriched",
        partition: 3,
        offset: 41,
    };

    /// A post-call survey as enrich emits it: revision 0 before the call
    /// reached enrich (unresolved, no call), a later revision with both.
    fn survey(revision: u32) -> EnrichedEvent {
        let event = Event {
            event_id: "ev-1".into(),
            tenant: "shop".into(),
            source: "survey-tool".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(1_700_000_000_250)),
            customer: Some(CustomerIdentity {
                email_hash: "h".into(),
                ..Default::default()
            }),
            touchpoint: Some(Touchpoint {
                journey: "support".into(),
                stage: "after-call".into(),
                touchpoint: "hotline".into(),
                channel: 4,
            }),
            payload: Some(Payload::Survey(SurveyResponse {
                survey_id: "post-call".into(),
                trigger: Some(SurveyTrigger {
                    r#ref: Some(Ref::CallId("call-7".into())),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut en = EnrichedEvent {
            event: Some(event),
            revision,
            resolution: IdentityResolution::Unresolved as i32,
            ..Default::default()
        };
        if revision > 0 {
            en.resolved_customer_id = "c-9".into();
            en.resolution = IdentityResolution::Linked as i32;
            en.call = Some(CallContext {
                call_id: "call-7".into(),
                queue: "billing".into(),
                agent_id: "a-3".into(),
                duration_seconds: 312,
                disposition: "resolved".into(),
                sentiment_label: SentimentLabel::Negative as i32,
                ..Default::default()
            });
        }
        en
    }

    #[test]
    fn a_revision_maps_its_number_and_call_context() {
        let first = EventRow::from_enriched(survey(0), LINEAGE).expect("row");
        assert_eq!(first.revision, 0);
        assert_eq!(
            (first.ctx_call_id.as_str(), first.ctx_call_duration_s),
            ("", 0)
        );
        assert_eq!(first.ctx_call_sentiment_label, 0, "Enum8 'none'");
        assert_eq!(first.customer_id, "");

        let repaired = EventRow::from_enriched(survey(2), LINEAGE).expect("row");
        assert_eq!(repaired.revision, 2);
        assert_eq!(repaired.ctx_call_id, "call-7");
        assert_eq!(repaired.ctx_call_queue, "billing");
        assert_eq!(repaired.ctx_call_disposition, "resolved");
        assert_eq!(repaired.ctx_call_duration_s, 312);
        assert_eq!(repaired.ctx_call_sentiment_label, 1, "Enum8 'negative'");
        assert_eq!(repaired.customer_id, "c-9");
        assert_eq!(repaired.resolution, 2, "Enum8 'linked'");
        assert_eq!(repaired.trigger_call_id, "call-7");

        // Everything the event itself determines, the sorting key included,
        // is the same in both revisions: the aggregates may count either.
        let joined = |r: &EventRow| EventRow {
            revision: 0,
            customer_id: String::new(),
            resolution: 0,
            ctx_call_id: String::new(),
            ctx_call_queue: String::new(),
            ctx_call_disposition: String::new(),
            ctx_call_duration_s: 0,
            ctx_call_sentiment_label: 0,
            ..r.clone()
        };
        assert_eq!(joined(&first), joined(&repaired));
    }

    #[test]
    fn event_proto_from_the_record_equals_the_event_encoded_again() {
        for en in [survey(0), survey(2)] {
            let record = en.encode_to_vec();
            let copied = EventRow::from_record(en.clone(), &record, LINEAGE).expect("row");
            let encoded = EventRow::from_enriched(en.clone(), LINEAGE).expect("row");
            assert_eq!(copied, encoded);
            assert_eq!(copied.event_proto, en.event.expect("event").encode_to_vec());
        }
        // Absent, repeated (a decoder merges them) or cut short: no bytes
        // to copy, the caller encodes.
        let mut no_event = survey(0);
        no_event.event = None;
        assert_eq!(event_field(&no_event.encode_to_vec()), None);
        let once = survey(0).encode_to_vec();
        let twice = [once.as_slice(), once.as_slice()].concat();
        assert_eq!(event_field(&twice), None);
        assert_eq!(event_field(&once[..once.len() - 1]), None);
    }

    #[test]
    fn a_refused_row_keeps_its_revision() {
        let mut rows = EventRows::default();
        let row = rows.push(&survey(1).encode_to_vec(), LINEAGE).expect("row");
        let dead = DeadLetterRow::refused(row, 0, "Code: 691".into());
        assert_eq!(
            (dead.refused, dead.revision, dead.event_id.as_str()),
            (1, 1, "ev-1")
        );
        assert_eq!(dead.kafka_offset, 41);
        let plain = DeadLetterRow::from_dead_letter(DeadLetter::default(), LINEAGE);
        assert_eq!((plain.refused, plain.revision), (0, 0));
    }

    #[test]
    fn every_answer_becomes_an_element_of_the_answer_arrays() {
        use xoflow_proto::v1::{MetricKind, SurveyAnswer};
        let mut en = survey(0);
        if let Some(Payload::Survey(s)) = en.event.as_mut().and_then(|e| e.payload.as_mut()) {
            s.answers = vec![
                SurveyAnswer {
                    question_id: "nps".into(),
                    kind: MetricKind::Nps as i32,
                    score: Some(3.0),
                    scale_min: 0,
                    scale_max: 10,
                    ..Default::default()
                },
                SurveyAnswer {
                    question_id: "why".into(),
                    kind: MetricKind::Other as i32,
                    text: "late again".into(),
                    ..Default::default()
                },
                SurveyAnswer {
                    question_id: "speed".into(),
                    kind: MetricKind::Other as i32,
                    score: Some(2.0),
                    scale_min: 1,
                    scale_max: 5,
                    ..Default::default()
                },
            ];
        }
        let r = EventRow::from_enriched(en, LINEAGE).expect("row");
        assert_eq!(r.answer_question_ids, ["nps", "why", "speed"]);
        assert_eq!(r.answer_kinds, [1, 4, 4]);
        assert_eq!(r.answer_has_score, [1, 0, 1]);
        assert_eq!(r.answer_scores, [3.0, 0.0, 2.0]);
        assert_eq!(
            (r.answer_scale_min, r.answer_scale_max),
            (vec![0, 0, 1], vec![10, 0, 5])
        );
        assert_eq!(r.answer_texts, ["", "late again", ""]);
    }
}
