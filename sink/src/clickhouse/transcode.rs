//! An enriched record's `events` row, written as ClickHouse RowBinary
//! straight from the record's protobuf bytes: the sink's per-row hot path.
//!
//! In: one encoded `EnrichedEvent` as read from Kafka, and its lineage.
//! Out: the row's RowBinary bytes appended to the batch's buffer, in the
//! column order of [`EventRow`] (the insert names its columns with
//! `EventRow::COLUMN_NAMES`), and what the sink needs of the row besides
//! ([`Written`]): its dedup key, its times, and where its strings lie in
//! the bytes. Nothing is allocated per row: each string is checked for
//! UTF-8 and copied once, from the record into the buffer the insert sends.
//! Decoding into `EnrichedEvent`, moving its strings into an [`EventRow`]
//! and serializing that allocated every string and walked every field
//! twice: the row path was 23.5 % of the whole pipeline's samples
//! (BENCHMARKS.md, "A slower machine, profiled").
//!
//! The bytes equal the `clickhouse` crate's own serialization of
//! [`EventRow::from_record`] (tests below): that struct stays the typed
//! definition of the row. One pass reads a record as prost does when each
//! non-repeated message field occurs at most once and no field is a group,
//! which is how every protobuf encoder writes a message; anything else is
//! [`Unusual`], and the caller decodes it with prost and writes its
//! canonical encoding instead (prost merges repeated occurrences). A record
//! prost refuses (a bad length, invalid UTF-8 in any string field, a known
//! field of the wrong wire type) is always [`Unusual`] here, so its dead
//! letter carries prost's own error.
//!
//! [`EventRow`]: super::row::EventRow
//! [`EventRow::from_record`]: super::row::EventRow::from_record

use prost::encoding::{WireType, decode_key, decode_varint};

use super::row::{Lineage, enum8, millis, secs};

/// A record one pass cannot read as prost would (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unusual;

/// Where a field's bytes lie: in the record while reading, relative to
/// the row's start in [`Written`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn of(self, bytes: &[u8]) -> &[u8] {
        &bytes[self.start..self.end]
    }
}

/// What the sink needs of a written row besides its bytes. Spans are
/// relative to the row's first byte.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Written {
    pub tenant: Span,
    pub event_id: Span,
    pub source: Span,
    pub event_proto: Span,
    pub topic: Span,
    pub occurred_at: u32,
    pub occurred_ms: i64,
    pub received_ms: i64,
    pub revision: u32,
    /// Enrich vouched for this revision as never emitted before
    /// (`EnrichedEvent.new_revision`).
    pub new_revision: bool,
}

/// Per-row lists, kept between rows so that a row allocates nothing.
/// Spans are into the record being written.
#[derive(Default)]
pub(super) struct Scratch {
    attributes: Vec<(Span, Span)>,
    answers: Vec<Answer>,
    topics: Vec<Span>,
    segments: Vec<Span>,
}

#[derive(Clone, Copy)]
struct Answer {
    question_id: Span,
    kind: i32,
    score: Option<f64>,
    scale_min: i32,
    scale_max: i32,
    text: Span,
}

/// A timestamp as read; its columns are `row`'s `secs` and `millis` of it,
/// as for an `EventRow`.
type Ts = xoflow_proto::Timestamp;

/// Which `oneof payload` an event carries.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    None,
    Survey,
    Call,
    Social,
    Order,
    Click,
}

/// Every field of the row, as read from the record: strings as spans
/// into it.
#[derive(Default)]
struct Fields {
    // EnrichedEvent
    event: Option<Span>,
    resolved_customer_id: Span,
    resolution: i32,
    owner_department: Span,
    enriched_at: Option<Ts>,
    revision: u32,
    new_revision: bool,

    // Event
    event_id: Span,
    tenant: Span,
    source: Span,
    occurred_at: Option<Ts>,
    received_at: Option<Ts>,
    utc_offset_s: i32,
    contact_consent: i32,
    kind: Kind,
    customer_id: Span,
    email_hash: Span,
    phone_hash: Span,
    social_handle_hash: Span,
    device_id_hash: Span,
    journey: Span,
    stage: Span,
    touchpoint: Span,
    channel: i32,
    store_id: Span,
    region: Span,

    // The payload's columns.
    survey_id: Span,
    language: Span,
    /// A survey's comment or a social post's text; a call's text is its
    /// segments' ([`Scratch::segments`]).
    text: Span,
    trigger_order_id: Span,
    trigger_call_id: Span,
    session_id: Span,
    call_id: Span,
    call_agent_id: Span,
    call_queue: Span,
    call_started: Option<Ts>,
    call_ended: Option<Ts>,
    call_disposition: Span,
    social_platform: Span,
    social_post_id: Span,
    social_url: Span,
    social_likes: u32,
    social_shares: u32,
    order_id: Span,
    order_status: i32,
    amount_minor: i64,
    currency: Span,
    item_count: u32,
    promised_delivery: Option<Ts>,
    delivered: Option<Ts>,
    url: Span,
    path: Span,
    click_action: i32,
    duration_ms: u32,

    // CxFields
    nps_score: Option<i32>,
    nps_category: i32,
    csat_score: Option<f64>,
    csat_normalised: Option<f64>,
    csat_top2: bool,
    ces_score: Option<f64>,
    ces_normalised: Option<f64>,
    sentiment: Option<f64>,
    sentiment_label: i32,

    // The contexts.
    ctx_order_id: Span,
    ctx_order_status: i32,
    ctx_order_amount_minor: i64,
    ctx_delivery_late_s: Option<i64>,
    ctx_session_id: Span,
    ctx_session_errors: u32,
    ctx_orders_90d: u32,
    ctx_value_90d_minor: i64,
    ctx_support_contacts_30d: u32,
    ctx_lifetime_value_minor: i64,
    ctx_days_since_last_order: Option<u32>,
    ctx_last_nps: Option<i32>,
    ctx_churn_risk: Option<f64>,
    ctx_do_not_contact: bool,
    ctx_call_id: Span,
    ctx_call_queue: Span,
    ctx_call_disposition: Span,
    ctx_call_duration_s: u32,
    ctx_call_sentiment_label: i32,
}

/// One field's value as the wire has it.
#[derive(Clone, Copy)]
enum Val {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Len(Span),
}

impl Val {
    fn varint(self) -> Result<u64, Unusual> {
        match self {
            Val::Varint(v) => Ok(v),
            _ => Err(Unusual),
        }
    }

    /// prost's `int32` and enums: the varint truncated.
    fn int32(self) -> Result<i32, Unusual> {
        Ok(self.varint()? as i32)
    }

    fn uint32(self) -> Result<u32, Unusual> {
        Ok(self.varint()? as u32)
    }

    fn int64(self) -> Result<i64, Unusual> {
        Ok(self.varint()? as i64)
    }

    fn bool(self) -> Result<bool, Unusual> {
        Ok(self.varint()? != 0)
    }

    fn double(self) -> Result<f64, Unusual> {
        match self {
            Val::Fixed64(v) => Ok(f64::from_bits(v)),
            _ => Err(Unusual),
        }
    }

    fn message(self) -> Result<Span, Unusual> {
        match self {
            Val::Len(s) => Ok(s),
            _ => Err(Unusual),
        }
    }

    /// A `string`: its bytes must be UTF-8, as prost requires.
    fn string(self, record: &[u8]) -> Result<Span, Unusual> {
        let s = self.message()?;
        std::str::from_utf8(s.of(record)).map_err(|_| Unusual)?;
        Ok(s)
    }

    /// A non-repeated message field: a second occurrence would be merged
    /// by prost.
    fn once(self, slot: &mut Option<Span>) -> Result<(), Unusual> {
        if slot.is_some() {
            return Err(Unusual);
        }
        *slot = Some(self.message()?);
        Ok(())
    }
}

/// The fields of one message, in wire order.
struct Wire<'a> {
    record: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Wire<'a> {
    fn of(record: &'a [u8], span: Span) -> Self {
        Wire {
            record,
            pos: span.start,
            end: span.end,
        }
    }

    fn next(&mut self) -> Result<Option<(u32, Val)>, Unusual> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let mut buf = &self.record[self.pos..self.end];
        let (tag, wire) = decode_key(&mut buf).map_err(|_| Unusual)?;
        let val = match wire {
            WireType::Varint => Val::Varint(decode_varint(&mut buf).map_err(|_| Unusual)?),
            WireType::SixtyFourBit => {
                let (v, rest) = buf.split_first_chunk::<8>().ok_or(Unusual)?;
                buf = rest;
                Val::Fixed64(u64::from_le_bytes(*v))
            }
            WireType::ThirtyTwoBit => {
                buf = buf.get(4..).ok_or(Unusual)?;
                Val::Fixed32
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|_| Unusual)?;
                let len = usize::try_from(len).map_err(|_| Unusual)?;
                if len > buf.len() {
                    return Err(Unusual);
                }
                let start = self.end - buf.len();
                buf = &buf[len..];
                Val::Len(Span {
                    start,
                    end: start + len,
                })
            }
            WireType::StartGroup | WireType::EndGroup => return Err(Unusual),
        };
        self.pos = self.end - buf.len();
        Ok(Some((tag, val)))
    }
}

fn timestamp(record: &[u8], span: Span) -> Result<Ts, Unusual> {
    let mut t = Ts::default();
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => t.seconds = v.int64()?,
            2 => t.nanos = v.int32()?,
            _ => {}
        }
    }
    Ok(t)
}

fn opt_timestamp(record: &[u8], span: Option<Span>) -> Result<Option<Ts>, Unusual> {
    span.map(|s| timestamp(record, s)).transpose()
}

/// Reads the row's fields from `record` (an encoded `EnrichedEvent`).
/// `Ok(false)`: a record without an event, or an event without a payload.
fn read(record: &[u8], r: &mut Fields, scratch: &mut Scratch) -> Result<bool, Unusual> {
    let whole = Span {
        start: 0,
        end: record.len(),
    };
    let (mut order, mut session, mut customer, mut cx, mut enriched_at, mut call) =
        (None, None, None, None, None, None);
    let mut f = Wire::of(record, whole);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => v.once(&mut r.event)?,
            2 => r.resolved_customer_id = v.string(record)?,
            3 => r.resolution = v.int32()?,
            4 => v.once(&mut order)?,
            5 => v.once(&mut session)?,
            6 => v.once(&mut customer)?,
            7 => v.once(&mut cx)?,
            8 => r.owner_department = v.string(record)?,
            9 => v.once(&mut enriched_at)?,
            10 => r.revision = v.uint32()?,
            11 => v.once(&mut call)?,
            12 => r.new_revision = v.bool()?,
            _ => {}
        }
    }
    r.enriched_at = opt_timestamp(record, enriched_at)?;
    if let Some(s) = order {
        order_context(record, s, r)?;
    }
    if let Some(s) = session {
        let mut f = Wire::of(record, s);
        while let Some((tag, v)) = f.next()? {
            match tag {
                1 => r.ctx_session_id = v.string(record)?,
                2 => {
                    v.uint32()?;
                }
                3 => r.ctx_session_errors = v.uint32()?,
                4 => {
                    v.bool()?;
                }
                _ => {}
            }
        }
    }
    if let Some(s) = customer {
        customer_context(record, s, r)?;
    }
    if let Some(s) = cx {
        cx_fields(record, s, r, scratch)?;
    }
    if let Some(s) = call {
        call_context(record, s, r)?;
    }
    match r.event {
        Some(s) => event(record, s, r, scratch),
        None => Ok(false),
    }
}

fn order_context(record: &[u8], span: Span, r: &mut Fields) -> Result<(), Unusual> {
    let (mut placed, mut promised, mut delivered) = (None, None, None);
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.ctx_order_id = v.string(record)?,
            2 => {
                v.int32()?;
            }
            3 => r.ctx_order_status = v.int32()?,
            4 => r.ctx_order_amount_minor = v.int64()?,
            5 => {
                v.string(record)?;
            }
            6 => v.once(&mut placed)?,
            7 => v.once(&mut promised)?,
            8 => v.once(&mut delivered)?,
            9 => r.ctx_delivery_late_s = Some(v.int64()?),
            _ => {}
        }
    }
    for t in [placed, promised, delivered] {
        opt_timestamp(record, t)?;
    }
    Ok(())
}

fn customer_context(record: &[u8], span: Span, r: &mut Fields) -> Result<(), Unusual> {
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.ctx_orders_90d = v.uint32()?,
            2 => r.ctx_value_90d_minor = v.int64()?,
            3 => r.ctx_lifetime_value_minor = v.int64()?,
            4 => r.ctx_support_contacts_30d = v.uint32()?,
            5 => r.ctx_days_since_last_order = Some(v.uint32()?),
            6 => r.ctx_last_nps = Some(v.int32()?),
            7 => r.ctx_churn_risk = Some(v.double()?),
            8 => r.ctx_do_not_contact = v.bool()?,
            _ => {}
        }
    }
    Ok(())
}

fn cx_fields(
    record: &[u8],
    span: Span,
    r: &mut Fields,
    scratch: &mut Scratch,
) -> Result<(), Unusual> {
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.nps_score = Some(v.int32()?),
            2 => r.nps_category = v.int32()?,
            3 => r.csat_score = Some(v.double()?),
            4 => r.csat_normalised = Some(v.double()?),
            5 => r.csat_top2 = v.bool()?,
            6 => r.ces_score = Some(v.double()?),
            7 => r.ces_normalised = Some(v.double()?),
            8 => r.sentiment = Some(v.double()?),
            9 => r.sentiment_label = v.int32()?,
            10 => scratch.topics.push(v.string(record)?),
            _ => {}
        }
    }
    Ok(())
}

fn call_context(record: &[u8], span: Span, r: &mut Fields) -> Result<(), Unusual> {
    let mut started = None;
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.ctx_call_id = v.string(record)?,
            2 => v.once(&mut started)?,
            3 => r.ctx_call_queue = v.string(record)?,
            4 => {
                v.string(record)?;
            }
            5 => r.ctx_call_duration_s = v.uint32()?,
            6 => r.ctx_call_disposition = v.string(record)?,
            7 => r.ctx_call_sentiment_label = v.int32()?,
            _ => {}
        }
    }
    opt_timestamp(record, started)?;
    Ok(())
}

/// The `Event`: `Ok(false)` when it has no payload.
fn event(
    record: &[u8],
    span: Span,
    r: &mut Fields,
    scratch: &mut Scratch,
) -> Result<bool, Unusual> {
    let (mut occurred, mut received, mut customer, mut touchpoint, mut location) =
        (None, None, None, None, None);
    let mut payload = None;
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.event_id = v.string(record)?,
            2 => r.tenant = v.string(record)?,
            3 => r.source = v.string(record)?,
            4 => v.once(&mut occurred)?,
            5 => v.once(&mut received)?,
            6 => v.once(&mut customer)?,
            7 => v.once(&mut touchpoint)?,
            8 => v.once(&mut location)?,
            9 => scratch.attributes.push(map_entry(record, v.message()?)?),
            10 => r.utc_offset_s = v.int32()?,
            11 => r.contact_consent = v.int32()?,
            20..=24 => {
                // A second payload, of the same kind (merged) or another
                // (replacing): prost's business.
                if payload.is_some() {
                    return Err(Unusual);
                }
                payload = Some((tag, v.message()?));
            }
            _ => {}
        }
    }
    r.occurred_at = opt_timestamp(record, occurred)?;
    r.received_at = opt_timestamp(record, received)?;
    if let Some(s) = customer {
        let mut f = Wire::of(record, s);
        while let Some((tag, v)) = f.next()? {
            match tag {
                1 => r.customer_id = v.string(record)?,
                2..=5 => {
                    v.string(record)?;
                }
                12 => r.email_hash = v.string(record)?,
                13 => r.phone_hash = v.string(record)?,
                14 => r.social_handle_hash = v.string(record)?,
                15 => r.device_id_hash = v.string(record)?,
                _ => {}
            }
        }
    }
    if let Some(s) = touchpoint {
        let mut f = Wire::of(record, s);
        while let Some((tag, v)) = f.next()? {
            match tag {
                1 => r.journey = v.string(record)?,
                2 => r.stage = v.string(record)?,
                3 => r.touchpoint = v.string(record)?,
                4 => r.channel = v.int32()?,
                _ => {}
            }
        }
    }
    if let Some(s) = location {
        let mut f = Wire::of(record, s);
        while let Some((tag, v)) = f.next()? {
            match tag {
                1 => r.store_id = v.string(record)?,
                2 => r.region = v.string(record)?,
                _ => {}
            }
        }
    }
    let Some((tag, s)) = payload else {
        return Ok(false);
    };
    match tag {
        20 => survey(record, s, r, scratch)?,
        21 => call(record, s, r, scratch)?,
        22 => social(record, s, r)?,
        23 => order(record, s, r)?,
        _ => click(record, s, r)?,
    }
    Ok(true)
}

/// A `map<string, string>` entry: absent key or value read as empty.
fn map_entry(record: &[u8], span: Span) -> Result<(Span, Span), Unusual> {
    let (mut key, mut value) = (Span::default(), Span::default());
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => key = v.string(record)?,
            2 => value = v.string(record)?,
            _ => {}
        }
    }
    Ok((key, value))
}

fn survey(record: &[u8], span: Span, r: &mut Fields, scratch: &mut Scratch) -> Result<(), Unusual> {
    r.kind = Kind::Survey;
    let mut trigger = None;
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.survey_id = v.string(record)?,
            2 => scratch.answers.push(answer(record, v.message()?)?),
            3 => r.text = v.string(record)?,
            4 => r.language = v.string(record)?,
            5 => v.once(&mut trigger)?,
            _ => {}
        }
    }
    if let Some(s) = trigger {
        // A oneof of strings: the last one set is the one.
        let mut set = None;
        let mut f = Wire::of(record, s);
        while let Some((tag, v)) = f.next()? {
            if (1..=3).contains(&tag) {
                set = Some((tag, v.string(record)?));
            }
        }
        match set {
            Some((1, id)) => r.trigger_order_id = id,
            Some((2, id)) => r.trigger_call_id = id,
            Some((_, id)) => r.session_id = id,
            None => {}
        }
    }
    Ok(())
}

fn answer(record: &[u8], span: Span) -> Result<Answer, Unusual> {
    let mut a = Answer {
        question_id: Span::default(),
        kind: 0,
        score: None,
        scale_min: 0,
        scale_max: 0,
        text: Span::default(),
    };
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => a.question_id = v.string(record)?,
            2 => a.kind = v.int32()?,
            3 => a.score = Some(v.double()?),
            4 => a.scale_min = v.int32()?,
            5 => a.scale_max = v.int32()?,
            6 => a.text = v.string(record)?,
            _ => {}
        }
    }
    Ok(a)
}

fn call(record: &[u8], span: Span, r: &mut Fields, scratch: &mut Scratch) -> Result<(), Unusual> {
    r.kind = Kind::Call;
    let (mut started, mut ended) = (None, None);
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.call_id = v.string(record)?,
            2 => r.call_agent_id = v.string(record)?,
            3 => r.call_queue = v.string(record)?,
            4 => v.once(&mut started)?,
            5 => v.once(&mut ended)?,
            6 => {
                let mut text = Span::default();
                let mut s = Wire::of(record, v.message()?);
                while let Some((tag, v)) = s.next()? {
                    match tag {
                        1 => {
                            v.int32()?;
                        }
                        2 | 3 => {
                            v.uint32()?;
                        }
                        4 => text = v.string(record)?,
                        _ => {}
                    }
                }
                scratch.segments.push(text);
            }
            7 => r.call_disposition = v.string(record)?,
            8 => r.language = v.string(record)?,
            _ => {}
        }
    }
    r.call_started = opt_timestamp(record, started)?;
    r.call_ended = opt_timestamp(record, ended)?;
    Ok(())
}

fn social(record: &[u8], span: Span, r: &mut Fields) -> Result<(), Unusual> {
    r.kind = Kind::Social;
    let mut reactions = None;
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.social_platform = v.string(record)?,
            2 => r.social_post_id = v.string(record)?,
            3 | 6 => {
                v.string(record)?;
            }
            4 => r.text = v.string(record)?,
            5 => r.social_url = v.string(record)?,
            7 => v.once(&mut reactions)?,
            8 => r.language = v.string(record)?,
            _ => {}
        }
    }
    if let Some(s) = reactions {
        let mut f = Wire::of(record, s);
        while let Some((tag, v)) = f.next()? {
            match tag {
                1 => r.social_likes = v.uint32()?,
                2 => r.social_shares = v.uint32()?,
                3 => {
                    v.uint32()?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn order(record: &[u8], span: Span, r: &mut Fields) -> Result<(), Unusual> {
    r.kind = Kind::Order;
    let (mut promised, mut delivered) = (None, None);
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.order_id = v.string(record)?,
            2 => r.order_status = v.int32()?,
            3 => r.amount_minor = v.int64()?,
            4 => r.currency = v.string(record)?,
            5 => {
                let mut quantity = 0;
                let mut i = Wire::of(record, v.message()?);
                while let Some((tag, v)) = i.next()? {
                    match tag {
                        1 | 2 => {
                            v.string(record)?;
                        }
                        3 => quantity = v.uint32()?,
                        4 => {
                            v.int64()?;
                        }
                        _ => {}
                    }
                }
                // As `EventRow`'s: a sum past UInt32 is not a count to wrap.
                r.item_count = r.item_count.saturating_add(quantity);
            }
            6 => v.once(&mut promised)?,
            7 => v.once(&mut delivered)?,
            _ => {}
        }
    }
    r.promised_delivery = opt_timestamp(record, promised)?;
    r.delivered = opt_timestamp(record, delivered)?;
    Ok(())
}

fn click(record: &[u8], span: Span, r: &mut Fields) -> Result<(), Unusual> {
    r.kind = Kind::Click;
    let mut f = Wire::of(record, span);
    while let Some((tag, v)) = f.next()? {
        match tag {
            1 => r.session_id = v.string(record)?,
            2 => r.url = v.string(record)?,
            3 => r.path = v.string(record)?,
            4 => r.click_action = v.int32()?,
            5 | 6 => {
                v.string(record)?;
            }
            7 => r.duration_ms = v.uint32()?,
            _ => {}
        }
    }
    Ok(())
}

/// The RowBinary writer of one row, into the batch's buffer.
struct Out<'a> {
    bytes: &'a mut Vec<u8>,
    row_start: usize,
}

impl Out<'_> {
    fn len(&mut self, n: usize) {
        // LEB128, as RowBinary prefixes strings and arrays.
        let mut n = n as u64;
        while n >= 0x80 {
            self.bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.bytes.push(n as u8);
    }

    /// Writes a string; returns where its bytes lie in the row.
    fn str(&mut self, s: &[u8]) -> Span {
        self.len(s.len());
        let start = self.bytes.len() - self.row_start;
        self.bytes.extend_from_slice(s);
        Span {
            start,
            end: start + s.len(),
        }
    }

    fn i8(&mut self, v: i8) {
        self.bytes.push(v as u8);
    }

    fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn f64(&mut self, v: f64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// `Nullable(T)`: 1 for null, else 0 and the value.
    fn nullable<T>(&mut self, v: Option<T>, mut write: impl FnMut(&mut Self, T)) {
        match v {
            None => self.u8(1),
            Some(v) => {
                self.u8(0);
                write(self, v);
            }
        }
    }
}

/// Appends the `events` row of `record` to `bytes`, or returns `Ok(None)`
/// for a record without an event or payload (which the caller
/// dead-letters). `event_proto`, when given, is stored instead of the
/// record's own `event` field: the original bytes of a record whose
/// canonical encoding is being written ([`Unusual`]). The record is
/// read whole before the row is written: on an error nothing is.
pub(super) fn write(
    record: &[u8],
    event_proto: Option<&[u8]>,
    lineage: Lineage<'_>,
    bytes: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<Option<Written>, Unusual> {
    scratch.attributes.clear();
    scratch.answers.clear();
    scratch.topics.clear();
    scratch.segments.clear();
    let mut r = Fields::default();
    if !read(record, &mut r, scratch)? {
        return Ok(None);
    }
    let rec = |s: Span| s.of(record);
    let mut o = Out {
        row_start: bytes.len(),
        bytes,
    };
    let mut w = Written {
        occurred_at: secs(&r.occurred_at),
        occurred_ms: millis(&r.occurred_at).unwrap_or(0),
        received_ms: millis(&r.received_at).unwrap_or(0),
        revision: r.revision,
        new_revision: r.new_revision,
        ..Written::default()
    };
    w.event_id = o.str(rec(r.event_id));
    w.tenant = o.str(rec(r.tenant));
    w.source = o.str(rec(r.source));
    o.i8(match r.kind {
        Kind::None => 0,
        Kind::Survey => 1,
        Kind::Call => 2,
        Kind::Social => 3,
        Kind::Order => 4,
        Kind::Click => 5,
    });
    o.u32(w.occurred_at);
    o.i64(w.occurred_ms);
    o.i32(r.utc_offset_s);
    o.u32(secs(&r.received_at));
    o.u32(secs(&r.enriched_at));
    // The resolved customer, else the one the event named.
    o.str(rec(
        if r.resolved_customer_id.start == r.resolved_customer_id.end {
            r.customer_id
        } else {
            r.resolved_customer_id
        },
    ));
    o.i8(enum8(r.resolution));
    for s in [
        r.email_hash,
        r.phone_hash,
        r.social_handle_hash,
        r.device_id_hash,
        r.journey,
        r.stage,
        r.touchpoint,
    ] {
        o.str(rec(s));
    }
    o.i8(enum8(r.channel));
    for s in [r.store_id, r.region, r.owner_department] {
        o.str(rec(s));
    }
    // A map: the last entry of a key counts (as prost's), and keys are
    // sorted so that the row is deterministic.
    let attrs = &mut scratch.attributes;
    attrs.sort_by(|a, b| rec(a.0).cmp(rec(b.0)));
    let mut kept = 0;
    for i in 0..attrs.len() {
        if i + 1 < attrs.len() && rec(attrs[i].0) == rec(attrs[i + 1].0) {
            continue;
        }
        attrs[kept] = attrs[i];
        kept += 1;
    }
    attrs.truncate(kept);
    o.len(attrs.len());
    for (k, _) in attrs.iter() {
        o.str(rec(*k));
    }
    o.len(attrs.len());
    for (_, v) in attrs.iter() {
        o.str(rec(*v));
    }
    o.str(rec(r.survey_id));
    o.nullable(
        r.nps_score.and_then(|s| i8::try_from(s).ok()),
        |o: &mut Out, v| o.i8(v),
    );
    o.i8(enum8(r.nps_category));
    o.nullable(r.csat_score, Out::f64);
    o.nullable(r.csat_normalised, Out::f64);
    o.u8(u8::from(r.csat_top2));
    o.nullable(r.ces_score, Out::f64);
    o.nullable(r.ces_normalised, Out::f64);
    o.nullable(r.sentiment, Out::f64);
    o.i8(enum8(r.sentiment_label));
    o.len(scratch.topics.len());
    for t in &scratch.topics {
        o.str(rec(*t));
    }
    o.str(rec(r.language));
    if r.kind == Kind::Call {
        // The segments' texts, a line break between non-empty runs as
        // `EventRow` joins them.
        let mut len = 0;
        for s in &scratch.segments {
            if len > 0 {
                len += 1;
            }
            len += s.end - s.start;
        }
        o.len(len);
        let mut written = 0;
        for s in &scratch.segments {
            if written > 0 {
                o.u8(b'\n');
                written += 1;
            }
            o.bytes.extend_from_slice(rec(*s));
            written += s.end - s.start;
        }
    } else {
        o.str(rec(r.text));
    }
    for s in [
        r.trigger_order_id,
        r.trigger_call_id,
        r.call_id,
        r.call_agent_id,
        r.call_queue,
    ] {
        o.str(rec(s));
    }
    o.u32(match (millis(&r.call_started), millis(&r.call_ended)) {
        (Some(s), Some(e)) if e >= s => {
            u32::try_from(e.saturating_sub(s) / 1000).unwrap_or(u32::MAX)
        }
        _ => 0,
    });
    for s in [
        r.call_disposition,
        r.social_platform,
        r.social_post_id,
        r.social_url,
    ] {
        o.str(rec(s));
    }
    o.u32(r.social_likes);
    o.u32(r.social_shares);
    o.str(rec(r.order_id));
    o.i8(enum8(r.order_status));
    o.i64(r.amount_minor);
    o.str(rec(r.currency));
    o.u32(r.item_count);
    o.nullable(millis(&r.promised_delivery), Out::i64);
    o.nullable(millis(&r.delivered), Out::i64);
    for s in [r.session_id, r.url, r.path] {
        o.str(rec(s));
    }
    o.i8(enum8(r.click_action));
    o.u32(r.duration_ms);
    o.str(rec(r.ctx_order_id));
    o.i8(enum8(r.ctx_order_status));
    o.i64(r.ctx_order_amount_minor);
    o.nullable(r.ctx_delivery_late_s, Out::i64);
    o.str(rec(r.ctx_session_id));
    o.u32(r.ctx_session_errors);
    o.u32(r.ctx_orders_90d);
    o.i64(r.ctx_value_90d_minor);
    o.u32(r.ctx_support_contacts_30d);
    o.i64(r.ctx_lifetime_value_minor);
    o.nullable(r.ctx_days_since_last_order, Out::u32);
    o.nullable(
        r.ctx_last_nps.and_then(|n| i8::try_from(n).ok()),
        |o: &mut Out, v| o.i8(v),
    );
    o.nullable(r.ctx_churn_risk, Out::f64);
    for s in [r.ctx_call_id, r.ctx_call_queue, r.ctx_call_disposition] {
        o.str(rec(s));
    }
    o.u32(r.ctx_call_duration_s);
    o.i8(enum8(r.ctx_call_sentiment_label));
    let answers = &scratch.answers;
    o.len(answers.len());
    for a in answers {
        o.str(rec(a.question_id));
    }
    o.len(answers.len());
    for a in answers {
        // The table's enum names the proto's values 0-4.
        o.i8(if (0..=4).contains(&a.kind) {
            a.kind as i8
        } else {
            0
        });
    }
    o.len(answers.len());
    for a in answers {
        o.f64(a.score.unwrap_or(0.0));
    }
    o.len(answers.len());
    for a in answers {
        o.u8(u8::from(a.score.is_some()));
    }
    o.len(answers.len());
    for a in answers {
        o.i32(a.scale_min);
    }
    o.len(answers.len());
    for a in answers {
        o.i32(a.scale_max);
    }
    o.len(answers.len());
    for a in answers {
        o.str(rec(a.text));
    }
    o.i8(if (0..=2).contains(&r.contact_consent) {
        r.contact_consent as i8
    } else {
        0
    });
    o.u8(u8::from(r.ctx_do_not_contact));
    o.u32(r.revision);
    let event = r.event.map_or(&[][..], rec);
    w.event_proto = o.str(event_proto.unwrap_or(event));
    w.topic = o.str(lineage.topic.as_bytes());
    o.i32(lineage.partition);
    o.i64(lineage.offset);
    Ok(Some(w))
}

#[cfg(test)]
mod tests {
    use clickhouse::{
        Client, Compression,
        test::{Mock, handlers},
    };
    use prost::Message;
    use xoflow_proto::{
        Timestamp,
        v1::{
            CallContext, CallTranscript, ClickEvent, CustomerContext, CustomerIdentity, CxFields,
            EnrichedEvent, Event, LineItem, Location, Order, OrderContext, Reactions,
            SessionContext, SocialPost, SurveyAnswer, SurveyResponse, SurveyTrigger, Touchpoint,
            TranscriptSegment, event::Payload, survey_trigger::Ref,
        },
    };

    use super::super::{
        insert::{Block, EventBlock},
        row::{EventRow, EventRows, Lineage, NO_PAYLOAD},
    };

    /// A seeded generator (xorshift*): the same cases on every run.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self) -> bool {
            self.below(2) == 0
        }

        fn string(&mut self) -> String {
            const PIECES: [&str; 8] = ["a", "Zz", "é", "\t", "\n", "日本", "'", "0"];
            (0..self.below(5))
                .map(|_| PIECES[self.below(8) as usize])
                .collect()
        }

        fn i32(&mut self) -> i32 {
            match self.below(5) {
                0 => 0,
                1 => self.below(12) as i32 - 2,
                2 => 300,
                3 => i32::MIN,
                _ => self.next() as i32,
            }
        }

        fn u32(&mut self) -> u32 {
            match self.below(3) {
                0 => 0,
                1 => u32::MAX,
                _ => self.next() as u32,
            }
        }

        fn i64(&mut self) -> i64 {
            match self.below(4) {
                0 => 0,
                1 => -1,
                2 => i64::MAX,
                _ => self.next() as i64,
            }
        }

        fn f64(&mut self) -> f64 {
            (self.below(2_000_001) as f64 - 1_000_000.0) / 7.0
        }

        fn some<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            self.chance().then(|| f(self))
        }

        fn ts(&mut self) -> Option<Timestamp> {
            self.some(|g| Timestamp {
                seconds: match g.below(5) {
                    0 => -5,
                    1 => 0,
                    2 => 5_000_000_000,
                    3 => i64::MAX / 10,
                    _ => 1_700_000_000 + g.below(10_000_000) as i64,
                },
                nanos: match g.below(3) {
                    0 => 0,
                    1 => -5,
                    _ => g.below(1_000_000_000) as i32,
                },
            })
        }

        fn payload(&mut self) -> Option<Payload> {
            Some(match self.below(6) {
                0 => return None,
                1 => Payload::Survey(SurveyResponse {
                    survey_id: self.string(),
                    answers: (0..self.below(4))
                        .map(|_| SurveyAnswer {
                            question_id: self.string(),
                            kind: self.i32(),
                            score: self.some(Gen::f64),
                            scale_min: self.i32(),
                            scale_max: self.i32(),
                            text: self.string(),
                        })
                        .collect(),
                    comment: self.string(),
                    language: self.string(),
                    trigger: self.some(|g| SurveyTrigger {
                        r#ref: match g.below(4) {
                            0 => None,
                            1 => Some(Ref::OrderId(g.string())),
                            2 => Some(Ref::CallId(g.string())),
                            _ => Some(Ref::VisitId(g.string())),
                        },
                    }),
                }),
                2 => Payload::Call(CallTranscript {
                    call_id: self.string(),
                    agent_id: self.string(),
                    queue: self.string(),
                    started_at: self.ts(),
                    ended_at: self.ts(),
                    segments: (0..self.below(4))
                        .map(|_| TranscriptSegment {
                            speaker: self.i32(),
                            start_ms: self.u32(),
                            end_ms: self.u32(),
                            text: self.string(),
                        })
                        .collect(),
                    disposition: self.string(),
                    language: self.string(),
                }),
                3 => Payload::Social(SocialPost {
                    platform: self.string(),
                    post_id: self.string(),
                    author_handle: self.string(),
                    text: self.string(),
                    url: self.string(),
                    reply_to: self.string(),
                    reactions: self.some(|g| Reactions {
                        likes: g.u32(),
                        shares: g.u32(),
                        comments: g.u32(),
                    }),
                    language: self.string(),
                }),
                4 => Payload::Order(Order {
                    order_id: self.string(),
                    status: self.i32(),
                    amount_minor: self.i64(),
                    currency: self.string(),
                    items: (0..self.below(3))
                        .map(|_| LineItem {
                            sku: self.string(),
                            name: self.string(),
                            quantity: self.u32(),
                            unit_price_minor: self.i64(),
                        })
                        .collect(),
                    promised_delivery_at: self.ts(),
                    delivered_at: self.ts(),
                }),
                _ => Payload::Click(ClickEvent {
                    session_id: self.string(),
                    url: self.string(),
                    path: self.string(),
                    action: self.i32(),
                    referrer: self.string(),
                    user_agent: self.string(),
                    duration_ms: self.u32(),
                }),
            })
        }

        fn event(&mut self) -> Event {
            Event {
                event_id: self.string(),
                tenant: self.string(),
                source: self.string(),
                occurred_at: self.ts(),
                received_at: self.ts(),
                customer: self.some(|g| CustomerIdentity {
                    customer_id: g.string(),
                    email: g.string(),
                    phone: g.string(),
                    social_handle: g.string(),
                    device_id: g.string(),
                    email_hash: g.string(),
                    phone_hash: g.string(),
                    social_handle_hash: g.string(),
                    device_id_hash: g.string(),
                }),
                touchpoint: self.some(|g| Touchpoint {
                    journey: g.string(),
                    stage: g.string(),
                    touchpoint: g.string(),
                    channel: g.i32(),
                }),
                location: self.some(|g| Location {
                    store_id: g.string(),
                    region: g.string(),
                }),
                attributes: (0..self.below(4))
                    .map(|_| (self.string(), self.string()))
                    .collect(),
                utc_offset_seconds: self.i32(),
                contact_consent: self.i32(),
                payload: self.payload(),
            }
        }

        fn enriched(&mut self) -> EnrichedEvent {
            EnrichedEvent {
                event: (self.below(10) > 0).then(|| self.event()),
                resolved_customer_id: self.string(),
                resolution: self.i32(),
                order: self.some(|g| OrderContext {
                    order_id: g.string(),
                    r#match: g.i32(),
                    status: g.i32(),
                    amount_minor: g.i64(),
                    currency: g.string(),
                    placed_at: g.ts(),
                    promised_delivery_at: g.ts(),
                    delivered_at: g.ts(),
                    delivery_late_seconds: g.some(Gen::i64),
                }),
                session: self.some(|g| SessionContext {
                    session_id: g.string(),
                    page_views: g.u32(),
                    error_pages: g.u32(),
                    abandoned_checkout: g.chance(),
                }),
                customer: self.some(|g| CustomerContext {
                    orders_90d: g.u32(),
                    value_90d_minor: g.i64(),
                    lifetime_value_minor: g.i64(),
                    support_contacts_30d: g.u32(),
                    days_since_last_order: g.some(Gen::u32),
                    last_nps: g.some(Gen::i32),
                    churn_risk: g.some(Gen::f64),
                    do_not_contact: g.chance(),
                }),
                cx: self.some(|g| CxFields {
                    nps_score: g.some(Gen::i32),
                    nps_category: g.i32(),
                    csat_score: g.some(Gen::f64),
                    csat_normalised: g.some(Gen::f64),
                    csat_top2: g.chance(),
                    ces_score: g.some(Gen::f64),
                    ces_normalised: g.some(Gen::f64),
                    sentiment: g.some(Gen::f64),
                    sentiment_label: g.i32(),
                    topics: (0..g.below(3)).map(|_| g.string()).collect(),
                }),
                owner_department: self.string(),
                enriched_at: self.ts(),
                revision: self.u32(),
                call: self.some(|g| CallContext {
                    call_id: g.string(),
                    started_at: g.ts(),
                    queue: g.string(),
                    agent_id: g.string(),
                    duration_seconds: g.u32(),
                    disposition: g.string(),
                    sentiment_label: g.i32(),
                }),
                new_revision: self.chance(),
            }
        }
    }

    fn lineage(i: usize) -> Lineage<'static> {
        Lineage {
            topic: "xoflow.enriched.v1",
            partition: (i % 3) as i32,
            offset: i as i64,
        }
    }

    /// The rows `EventRow::from_record` builds of `records` (as the sink
    /// built them before it transcoded), and the rows the `clickhouse`
    /// crate reads back from the bytes the sink now sends for them, through
    /// the crate's mock server; with the sink's own view of each row.
    async fn both(records: &[Vec<u8>]) -> (Vec<EventRow>, Vec<EventRow>, EventRows) {
        let mut expected = Vec::new();
        let mut rows = EventRows::default();
        for (i, record) in records.iter().enumerate() {
            let old = EnrichedEvent::decode(record.as_slice())
                .ok()
                .and_then(|en| EventRow::from_record(en, record, lineage(i)));
            let new = rows.push(record, lineage(i));
            assert_eq!(old.is_some(), new.is_ok(), "record {i}: {new:?}");
            let Some(old) = old else { continue };
            let new = new.expect("a row");
            // The sink's view of the row: its key, lineage and dead letter.
            assert_eq!(
                (new.tenant, new.event_id, new.source, new.topic),
                (
                    old.tenant.as_str(),
                    old.event_id.as_str(),
                    old.source.as_str(),
                    old.kafka_topic.as_str()
                )
            );
            assert_eq!(same_event(new.event_proto), same_event(&old.event_proto));
            assert_eq!(
                (new.partition, new.offset, new.revision, new.occurred_at),
                (
                    old.kafka_partition,
                    old.kafka_offset,
                    old.revision,
                    old.occurred_at
                )
            );
            assert_eq!(new.occurred_ms, old.occurred_ms);
            let vouched = EnrichedEvent::decode(record.as_slice()).map(|en| en.new_revision);
            assert_eq!(Ok(new.new_revision), vouched, "record {i}");
            expected.push(old);
        }
        let mock = Mock::new();
        let client = Client::default()
            .with_mock(&mock)
            .with_compression(Compression::None);
        let recorded = mock.add(handlers::record::<EventRow>());
        let block = EventBlock {
            rows: &rows,
            range: 0..rows.len(),
        };
        block.insert_once(&client, "events").await.expect("insert");
        let got: Vec<EventRow> = recorded.collect().await;
        (expected, got, rows)
    }

    /// The event an `event_proto` holds. Its bytes are the record's own
    /// whenever the record has them once; one prost encodes again writes
    /// its attributes in the order of a hash map.
    fn same_event(bytes: &[u8]) -> Event {
        Event::decode(bytes).expect("an event")
    }

    fn assert_same(got: &[EventRow], expected: &[EventRow]) {
        assert_eq!(got.len(), expected.len());
        for (i, (got, expected)) in got.iter().zip(expected).enumerate() {
            let bare = |r: &EventRow| EventRow {
                event_proto: Vec::new(),
                ..r.clone()
            };
            assert_eq!(bare(got), bare(expected), "row {i}");
            assert_eq!(
                same_event(&got.event_proto),
                same_event(&expected.event_proto),
                "row {i}"
            );
        }
    }

    #[tokio::test]
    async fn the_bytes_are_the_crates_serialization_of_the_typed_row() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let records: Vec<Vec<u8>> = (0..3_000).map(|_| g.enriched().encode_to_vec()).collect();
        let (expected, got, rows) = both(&records).await;
        assert!(expected.len() > 2_000, "most cases make a row");
        // Written in one pass, the bytes are exactly the crate's.
        assert_eq!(got, expected);
        // Received times, for the freshness histograms.
        for (row, record) in rows.iter().zip(records.iter().filter_map(|r| {
            let e = EnrichedEvent::decode(r.as_slice()).ok()?.event?;
            e.payload.is_some().then_some(e)
        })) {
            let received = record
                .received_at
                .as_ref()
                .map_or(0, xoflow_proto::to_unix_millis);
            assert_eq!(row.received_ms, received);
        }
    }

    /// Records no protobuf encoder writes but prost reads: prost's
    /// reading of them is what counts.
    #[tokio::test]
    async fn records_read_otherwise_than_in_one_pass_are_rows_as_prost_reads_them() {
        let mut g = Gen(7);
        let mut records = Vec::new();
        for _ in 0..200 {
            let (a, b) = (g.enriched(), g.enriched());
            // Every field twice: messages merge, the last scalar counts.
            records.push([a.encode_to_vec(), b.encode_to_vec()].concat());
            // An event whose attributes repeat keys (the last counts), and
            // a field this build does not know.
            let mut event = g.event().encode_to_vec();
            let again = Event {
                attributes: a
                    .event
                    .iter()
                    .flat_map(|e| e.attributes.keys())
                    .map(|k| (k.clone(), "again".to_owned()))
                    .collect(),
                ..Default::default()
            };
            again.encode_raw(&mut event);
            prost::encoding::uint64::encode(99, &5, &mut event);
            let mut record = Vec::new();
            prost::encoding::bytes::encode(1, &event, &mut record);
            prost::encoding::string::encode(98, &"unknown".to_owned(), &mut record);
            records.push(record);
        }
        // An unknown group: prost skips it.
        let mut grouped = g.enriched().encode_to_vec();
        grouped.extend_from_slice(&[0xa3, 0x06, 0x08, 0x01, 0xa4, 0x06]);
        records.push(grouped);
        let (expected, got, _) = both(&records).await;
        assert!(expected.len() > 300);
        assert_same(&got, &expected);
    }

    #[test]
    fn records_prost_refuses_are_refused_with_its_error() {
        let mut g = Gen(11);
        let mut en = g.enriched();
        en.event = Some(Event {
            payload: Some(Payload::Click(ClickEvent::default())),
            ..g.event()
        });
        let record = en.encode_to_vec();
        let mut rows = EventRows::default();
        assert!(rows.push(&record, lineage(0)).is_ok());

        let cut = &record[..record.len() - 1];
        let prost_says = EnrichedEvent::decode(cut)
            .expect_err("cut short")
            .to_string();
        assert_eq!(rows.push(cut, lineage(1)), Err(prost_says));

        // Invalid UTF-8 in a string the row does not use.
        let event = en.event.as_mut().expect("an event");
        event.customer = Some(CustomerIdentity {
            email: "ab".into(),
            ..Default::default()
        });
        let mut bad = en.encode_to_vec();
        let at = bad
            .windows(2)
            .rposition(|w| w == b"ab")
            .expect("the email's bytes");
        bad[at] = 0xff;
        let prost_says = EnrichedEvent::decode(bad.as_slice())
            .expect_err("not UTF-8")
            .to_string();
        assert_eq!(rows.push(&bad, lineage(2)), Err(prost_says));

        en.event.as_mut().expect("an event").payload = None;
        assert_eq!(
            rows.push(&en.encode_to_vec(), lineage(3)),
            Err(NO_PAYLOAD.to_owned())
        );
        // Nothing of a refused record stays.
        let mut alone = EventRows::default();
        alone.push(&record, lineage(0)).expect("a row");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows.bytes(0..1), alone.bytes(0..1));
    }

    #[test]
    fn retain_and_pop_keep_each_rows_bytes() {
        let mut g = Gen(3);
        let mut rows = EventRows::default();
        // Each row's bytes as written alone, by offset.
        let mut alone = Vec::new();
        let mut offset = 0;
        while rows.len() < 9 {
            let record = g.enriched().encode_to_vec();
            let mut one = EventRows::default();
            if one.push(&record, lineage(offset)).is_ok() {
                rows.push(&record, lineage(offset)).expect("a row");
                alone.push((offset as i64, one.bytes(0..1).to_vec()));
            }
            offset += 1;
        }
        rows.retain(|r| r.partition != 1);
        let kept: Vec<&(i64, Vec<u8>)> = alone.iter().filter(|(o, _)| o % 3 != 1).collect();
        assert!(kept.len() < 9 && !kept.is_empty());
        assert_eq!(
            rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
            kept.iter().map(|(o, _)| *o).collect::<Vec<_>>()
        );
        for (j, (_, bytes)) in kept.iter().enumerate() {
            assert_eq!(rows.bytes(j..j + 1), bytes.as_slice());
        }
        let all: Vec<u8> = kept.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(rows.bytes(0..rows.len()), all.as_slice());
        rows.pop();
        let n = rows.len();
        assert_eq!(rows.bytes(0..n), &all[..all.len() - kept[n].1.len()]);
        assert_eq!(rows.get(n - 1).offset, kept[n - 1].0);
    }
}
