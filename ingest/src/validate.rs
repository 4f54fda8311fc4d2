//! Validation and normalisation of one event: pure, no I/O.
//!
//! Input is an `Event` as a source sent it; output is either the event
//! normalised in place (UTC timestamps checked, weak identifiers replaced by
//! their tenant's keyed hashes, PII masked in every free-text field,
//! language detected, touchpoint resolved from the tenant's journey rules,
//! `received_at` stamped) or the list of every field at fault with a stable
//! reason code, so a caller can fix all of them at once.

use std::{sync::Arc, time::Duration};

use hmac::Mac;
use xoflow_proto::{
    Timestamp,
    v1::{Channel, ClickAction, Event, MetricKind, OrderStatus, Speaker, event::Payload},
};

use crate::{
    lang,
    pii::{self, MaskCounts},
    tenant::{Tenant, Tenants},
};

/// Stable machine-readable reasons, used in responses, dead letters and
/// metric tags.
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
        }
    }

    /// Every reason, for bounded metric tags.
    pub const ALL: [Reason; 8] = [
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

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Path of the field, e.g. `survey.answers[0].score`.
    pub field: String,
    pub reason: Reason,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, reason: Reason, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason,
            description: description.into(),
        }
    }
}

const MAX_ID_LEN: usize = 128;
const MAX_NAME_LEN: usize = 64;
const MAX_TEXT_LEN: usize = 64 * 1024;
const MAX_ATTRIBUTES: usize = 64;
const MAX_SEGMENTS: usize = 10_000;

/// Validates and normalises events against fixed rules and the tenants'
/// keys and journey maps.
#[derive(Clone)]
pub struct Normaliser {
    /// Per-tenant keyed hashes (pre-initialised with each secret so a hash
    /// costs no key set-up) and journey rules.
    tenants: Arc<Tenants>,
    max_future_skew_ms: i64,
    max_age_ms: i64,
}

impl std::fmt::Debug for Normaliser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("Normaliser")
            .field("max_future_skew_ms", &self.max_future_skew_ms)
            .field("max_age_ms", &self.max_age_ms)
            .finish_non_exhaustive()
    }
}

impl Normaliser {
    /// One secret for every tenant and no journey rules. Fails only for an
    /// empty key (HMAC itself accepts any length).
    pub fn new(
        hash_secret: &[u8],
        max_future_skew: Duration,
        max_age: Duration,
    ) -> Result<Self, String> {
        Ok(Self::with_tenants(
            Arc::new(Tenants::single(hash_secret)?),
            max_future_skew,
            max_age,
        ))
    }

    /// With compiled tenants.
    pub fn with_tenants(
        tenants: Arc<Tenants>,
        max_future_skew: Duration,
        max_age: Duration,
    ) -> Self {
        Self {
            tenants,
            max_future_skew_ms: max_future_skew.as_millis() as i64,
            max_age_ms: max_age.as_millis() as i64,
        }
    }

    /// The same rules with another bound on age (the backfill lane loads
    /// history).
    pub fn with_max_age(&self, max_age: Duration) -> Self {
        Self {
            max_age_ms: max_age.as_millis() as i64,
            ..self.clone()
        }
    }

    /// The tenants this normaliser knows.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Validates `e` and normalises it in place. `now_ms` is the receive
    /// time in Unix milliseconds.
    pub fn normalise(&self, e: &mut Event, now_ms: i64) -> Result<(), Vec<Violation>> {
        self.normalise_record(e, now_ms, &[], &mut MaskCounts::default())
    }

    /// [`Self::normalise`] with the personal names the source marked for
    /// this record, and masked-span counts accumulated for the batch.
    pub fn normalise_record(
        &self,
        e: &mut Event,
        now_ms: i64,
        names: &[String],
        masked: &mut MaskCounts,
    ) -> Result<(), Vec<Violation>> {
        let mut v = Vec::new();
        if e.event_id.is_empty()
            && let Some(id) = natural_id(e)
        {
            e.event_id = id;
        }
        check_id(&mut v, "event_id", &e.event_id, true);
        check_name(&mut v, "tenant", &e.tenant, true);
        check_name(&mut v, "source", &e.source, true);
        match &e.occurred_at {
            None => v.push(Violation::new(
                "occurred_at",
                Reason::Missing,
                "occurred_at is required",
            )),
            Some(ts) => self.check_time(&mut v, "occurred_at", ts, now_ms),
        }
        if let Some(tp) = &e.touchpoint {
            check_name(&mut v, "touchpoint.journey", &tp.journey, false);
            check_name(&mut v, "touchpoint.stage", &tp.stage, false);
            check_name(&mut v, "touchpoint.touchpoint", &tp.touchpoint, false);
            if Channel::try_from(tp.channel).is_err() {
                v.push(unknown_enum("touchpoint.channel", tp.channel));
            }
        }
        if let Some(loc) = &e.location {
            check_name(&mut v, "location.store_id", &loc.store_id, false);
            check_name(&mut v, "location.region", &loc.region, false);
        }
        if e.attributes.len() > MAX_ATTRIBUTES {
            v.push(Violation::new(
                "attributes",
                Reason::TooLong,
                format!(
                    "at most {MAX_ATTRIBUTES} attributes, got {}",
                    e.attributes.len()
                ),
            ));
        }
        for (k, val) in &e.attributes {
            if k.is_empty() || k.len() > MAX_NAME_LEN {
                v.push(Violation::new(
                    format!("attributes[{k:?}]"),
                    Reason::Invalid,
                    format!("attribute keys are 1-{MAX_NAME_LEN} bytes"),
                ));
            }
            if val.len() > MAX_NAME_LEN * 16 {
                v.push(Violation::new(
                    format!("attributes[{k:?}]"),
                    Reason::TooLong,
                    "attribute values are at most 1024 bytes",
                ));
            }
        }
        match &e.payload {
            None => v.push(Violation::new(
                "payload",
                Reason::Missing,
                "exactly one of survey, call, social, order, click is required",
            )),
            Some(p) => check_payload(&mut v, p, now_ms, self),
        }
        if !v.is_empty() {
            return Err(v);
        }
        if let Some(Payload::Social(s)) = &e.payload
            && !s.author_handle.is_empty()
        {
            let c = e.customer.get_or_insert_with(Default::default);
            if c.social_handle.is_empty() && c.social_handle_hash.is_empty() {
                c.social_handle = s.author_handle.clone();
            }
        }
        let tenant = self.tenants.get(&e.tenant);
        self.hash_identity(tenant, e, &mut v);
        if !v.is_empty() {
            return Err(v);
        }
        mask_free_text(e, names, masked);
        tenant.resolve_touchpoint(e);
        e.received_at = Some(xoflow_proto::from_unix_millis(now_ms));
        Ok(())
    }

    fn check_time(&self, v: &mut Vec<Violation>, field: &str, ts: &Timestamp, now_ms: i64) {
        if !(0..1_000_000_000).contains(&ts.nanos) {
            v.push(Violation::new(
                field,
                Reason::Invalid,
                "nanos must be in 0..1e9",
            ));
            return;
        }
        let ms = xoflow_proto::to_unix_millis(ts);
        if ms > now_ms.saturating_add(self.max_future_skew_ms) {
            v.push(Violation::new(
                field,
                Reason::OutOfRange,
                format!("{field} is {} s in the future", (ms - now_ms) / 1000),
            ));
        } else if ms < now_ms.saturating_sub(self.max_age_ms) {
            v.push(Violation::new(
                field,
                Reason::OutOfRange,
                format!(
                    "{field} is older than the {} day limit",
                    self.max_age_ms / 86_400_000
                ),
            ));
        }
    }

    /// Replaces raw weak identifiers by their keyed hashes. Checks every
    /// identifier before changing any, so a refused event is left as sent.
    fn hash_identity(&self, t: &Tenant, e: &mut Event, v: &mut Vec<Violation>) {
        let Some(c) = e.customer.as_mut() else { return };
        check_id(v, "customer.customer_id", &c.customer_id, false);
        let email = (!c.email.is_empty()).then(|| normalise_email(&c.email));
        let phone = (!c.phone.is_empty()).then(|| normalise_phone(&c.phone));
        if let Some(None) = email {
            v.push(Violation::new(
                "customer.email",
                Reason::Invalid,
                "not an e-mail address",
            ));
        }
        if let Some(None) = phone {
            v.push(Violation::new(
                "customer.phone",
                Reason::Invalid,
                "not a phone number in international (+CC...) or Chinese mobile form",
            ));
        }
        if !v.is_empty() {
            return;
        }
        let tenant = e.tenant.as_str();
        let hash = |kind: &str, value: &str| keyed_hash(t, tenant, kind, value);
        if let Some(Some(email)) = email {
            c.email_hash = hash("email", &email);
            c.email.clear();
        }
        if let Some(Some(phone)) = phone {
            c.phone_hash = hash("phone", &phone);
            c.phone.clear();
        }
        if !c.social_handle.is_empty() {
            let h = c
                .social_handle
                .trim()
                .trim_start_matches('@')
                .to_lowercase();
            c.social_handle_hash = hash("handle", &h);
            c.social_handle.clear();
        }
        if !c.device_id.is_empty() {
            c.device_id_hash = hash("device", c.device_id.trim());
            c.device_id.clear();
        }
    }

    /// Hex HMAC-SHA256 under the tenant's key over tenant, identifier kind
    /// and value, so the same address in two tenants never joins.
    pub fn hash(&self, tenant: &str, kind: &str, value: &str) -> String {
        keyed_hash(self.tenants.get(tenant), tenant, kind, value)
    }
}

fn keyed_hash(t: &Tenant, tenant: &str, kind: &str, value: &str) -> String {
    let mut mac = t.mac.clone();
    mac.update(tenant.as_bytes());
    mac.update(&[0]);
    mac.update(kind.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Makes a refused event fit for the dead-letter topic: free text masked and
/// raw identifiers that look personal replaced by placeholders (a value that
/// is not an address or number stays, so the reader sees why it failed).
pub fn redact_rejected(e: &mut Event, names: &[String], masked: &mut MaskCounts) {
    mask_free_text(e, names, masked);
    if let Some(c) = e.customer.as_mut() {
        for f in [
            &mut c.email,
            &mut c.phone,
            &mut c.social_handle,
            &mut c.device_id,
        ] {
            pii::mask_in_place(f, names, masked);
        }
        if !c.social_handle.is_empty() {
            c.social_handle = "[HANDLE]".into();
        }
    }
}

/// Masks PII in every free-text field and fills in the language of the
/// text when the source did not give it.
fn mask_free_text(e: &mut Event, names: &[String], masked: &mut MaskCounts) {
    for v in e.attributes.values_mut() {
        pii::mask_in_place(v, names, masked);
    }
    match e.payload.as_mut() {
        Some(Payload::Survey(s)) => {
            pii::mask_in_place(&mut s.comment, names, masked);
            for a in &mut s.answers {
                pii::mask_in_place(&mut a.text, names, masked);
            }
            if s.language.is_empty() {
                let text = if s.comment.is_empty() {
                    s.answers
                        .iter()
                        .map(|a| a.text.as_str())
                        .find(|t| !t.is_empty())
                } else {
                    Some(s.comment.as_str())
                };
                if let Some(lang) = text.and_then(lang::detect) {
                    s.language = lang.into();
                }
            }
        }
        Some(Payload::Call(c)) => {
            for seg in &mut c.segments {
                pii::mask_in_place(&mut seg.text, names, masked);
            }
            if c.language.is_empty()
                && let Some(lang) = c
                    .segments
                    .iter()
                    .find(|s| s.speaker == Speaker::Customer as i32 && !s.text.is_empty())
                    .or_else(|| c.segments.first())
                    .and_then(|s| lang::detect(&s.text))
            {
                c.language = lang.into();
            }
        }
        Some(Payload::Social(s)) => {
            pii::mask_in_place(&mut s.text, names, masked);
            if let Some(u) = pii::mask_url(&s.url, masked) {
                s.url = u;
            }
            // The handle is hashed into the identity; the post keeps a hint
            // only, enough to read a thread, not to find the person.
            if !s.author_handle.is_empty() {
                let hint: String = s
                    .author_handle
                    .trim_start_matches('@')
                    .chars()
                    .take(1)
                    .collect();
                s.author_handle = format!("@{hint}***");
            }
            if s.language.is_empty()
                && let Some(lang) = lang::detect(&s.text)
            {
                s.language = lang.into();
            }
        }
        Some(Payload::Click(c)) => {
            for u in [&mut c.url, &mut c.referrer] {
                if let Some(m) = pii::mask_url(u, masked) {
                    *u = m;
                }
            }
        }
        Some(Payload::Order(o)) => {
            for item in &mut o.items {
                pii::mask_in_place(&mut item.name, names, masked);
            }
        }
        None => {}
    }
}

/// The event id derived from a source's natural record id, when it has one:
/// a replayed webhook then carries the same idempotency key.
pub fn natural_id(e: &Event) -> Option<String> {
    let id = match e.payload.as_ref()? {
        Payload::Order(o) if !o.order_id.is_empty() => {
            format!("order:{}:{}", o.order_id, o.status)
        }
        Payload::Call(c) if !c.call_id.is_empty() => format!("call:{}", c.call_id),
        Payload::Social(s) if !s.post_id.is_empty() => {
            format!("social:{}:{}", s.platform, s.post_id)
        }
        _ => return None,
    };
    (id.len() <= MAX_ID_LEN).then_some(id)
}

fn unknown_enum(field: &str, value: i32) -> Violation {
    Violation::new(field, Reason::UnknownEnum, format!("unknown value {value}"))
}

fn check_id(v: &mut Vec<Violation>, field: &str, s: &str, required: bool) {
    if s.is_empty() {
        if required {
            v.push(Violation::new(
                field,
                Reason::Missing,
                format!("{field} is required"),
            ));
        }
    } else if s.len() > MAX_ID_LEN {
        v.push(Violation::new(
            field,
            Reason::TooLong,
            format!("at most {MAX_ID_LEN} bytes"),
        ));
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        v.push(Violation::new(
            field,
            Reason::Invalid,
            "printable ASCII without spaces only",
        ));
    }
}

fn check_name(v: &mut Vec<Violation>, field: &str, s: &str, required: bool) {
    if s.is_empty() {
        if required {
            v.push(Violation::new(
                field,
                Reason::Missing,
                format!("{field} is required"),
            ));
        }
    } else if s.len() > MAX_NAME_LEN {
        v.push(Violation::new(
            field,
            Reason::TooLong,
            format!("at most {MAX_NAME_LEN} bytes"),
        ));
    } else if s.chars().any(char::is_control) {
        v.push(Violation::new(
            field,
            Reason::Invalid,
            "control characters are not allowed",
        ));
    }
}

fn check_text(v: &mut Vec<Violation>, field: &str, s: &str) {
    if s.len() > MAX_TEXT_LEN {
        v.push(Violation::new(
            field,
            Reason::TooLong,
            format!("at most {MAX_TEXT_LEN} bytes"),
        ));
    }
}

fn check_payload(v: &mut Vec<Violation>, p: &Payload, now_ms: i64, n: &Normaliser) {
    match p {
        Payload::Survey(s) => {
            check_id(v, "survey.survey_id", &s.survey_id, true);
            check_text(v, "survey.comment", &s.comment);
            if s.answers.is_empty() && s.comment.is_empty() {
                v.push(Violation::new(
                    "survey.answers",
                    Reason::Missing,
                    "a survey response needs at least one answer or a comment",
                ));
            }
            for (i, a) in s.answers.iter().enumerate() {
                check_answer(v, i, a);
            }
        }
        Payload::Call(c) => {
            check_id(v, "call.call_id", &c.call_id, true);
            if let Some(ts) = &c.started_at {
                n.check_time(v, "call.started_at", ts, now_ms);
            }
            if let (Some(s), Some(e)) = (&c.started_at, &c.ended_at)
                && xoflow_proto::to_unix_millis(e) < xoflow_proto::to_unix_millis(s)
            {
                v.push(Violation::new(
                    "call.ended_at",
                    Reason::OutOfRange,
                    "ended before it started",
                ));
            }
            if c.segments.len() > MAX_SEGMENTS {
                v.push(Violation::new(
                    "call.segments",
                    Reason::TooLong,
                    format!("at most {MAX_SEGMENTS}"),
                ));
            }
            for (i, s) in c.segments.iter().enumerate() {
                if Speaker::try_from(s.speaker).is_err() {
                    v.push(unknown_enum(
                        &format!("call.segments[{i}].speaker"),
                        s.speaker,
                    ));
                }
                if s.end_ms < s.start_ms {
                    v.push(Violation::new(
                        format!("call.segments[{i}].end_ms"),
                        Reason::OutOfRange,
                        "segment ends before it starts",
                    ));
                }
                check_text(v, &format!("call.segments[{i}].text"), &s.text);
            }
        }
        Payload::Social(s) => {
            check_name(v, "social.platform", &s.platform, true);
            check_id(v, "social.post_id", &s.post_id, true);
            check_text(v, "social.text", &s.text);
        }
        Payload::Order(o) => {
            check_id(v, "order.order_id", &o.order_id, true);
            match OrderStatus::try_from(o.status) {
                Ok(OrderStatus::Unspecified) => v.push(Violation::new(
                    "order.status",
                    Reason::Missing,
                    "order.status is required",
                )),
                Ok(_) => {}
                Err(_) => v.push(unknown_enum("order.status", o.status)),
            }
            if o.amount_minor < 0 {
                v.push(Violation::new(
                    "order.amount_minor",
                    Reason::OutOfRange,
                    "must not be negative",
                ));
            }
            if o.currency.len() != 3 || !o.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                v.push(Violation::new(
                    "order.currency",
                    Reason::Invalid,
                    "an ISO-4217 code of three upper-case letters, e.g. CNY",
                ));
            }
            for (i, item) in o.items.iter().enumerate() {
                if item.quantity == 0 {
                    v.push(Violation::new(
                        format!("order.items[{i}].quantity"),
                        Reason::OutOfRange,
                        "must be at least 1",
                    ));
                }
                if item.unit_price_minor < 0 {
                    v.push(Violation::new(
                        format!("order.items[{i}].unit_price_minor"),
                        Reason::OutOfRange,
                        "must not be negative",
                    ));
                }
            }
        }
        Payload::Click(c) => {
            check_id(v, "click.session_id", &c.session_id, true);
            match ClickAction::try_from(c.action) {
                Ok(ClickAction::Unspecified) => v.push(Violation::new(
                    "click.action",
                    Reason::Missing,
                    "click.action is required",
                )),
                Ok(_) => {}
                Err(_) => v.push(unknown_enum("click.action", c.action)),
            }
            if !c.path.is_empty() && !c.path.starts_with('/') {
                v.push(Violation::new(
                    "click.path",
                    Reason::Invalid,
                    "a path starts with '/'",
                ));
            }
            check_text(v, "click.url", &c.url);
        }
    }
}

fn check_answer(v: &mut Vec<Violation>, i: usize, a: &xoflow_proto::v1::SurveyAnswer) {
    let f = |name: &str| format!("survey.answers[{i}].{name}");
    let kind = match MetricKind::try_from(a.kind) {
        Ok(k) => k,
        Err(_) => {
            v.push(unknown_enum(&f("kind"), a.kind));
            return;
        }
    };
    check_text(v, &f("text"), &a.text);
    let Some(score) = a.score else {
        if a.text.is_empty() {
            v.push(Violation::new(
                f("score"),
                Reason::Missing,
                "an answer needs a score or text",
            ));
        }
        return;
    };
    let allowed: &[(i32, i32)] = match kind {
        MetricKind::Nps => &[(0, 10)],
        MetricKind::Csat => &[(1, 5), (1, 7), (1, 10)],
        MetricKind::Ces => &[(1, 7), (1, 5)],
        MetricKind::Other | MetricKind::Unspecified => &[],
    };
    if !allowed.is_empty() && !allowed.contains(&(a.scale_min, a.scale_max)) {
        v.push(Violation::new(
            f("scale_max"),
            Reason::Invalid,
            format!(
                "{} scale {}-{} is not one of {:?}",
                kind.as_str_name(),
                a.scale_min,
                a.scale_max,
                allowed
            ),
        ));
        return;
    }
    if allowed.is_empty() && a.scale_min >= a.scale_max {
        v.push(Violation::new(
            f("scale_max"),
            Reason::Invalid,
            "scale_max must exceed scale_min",
        ));
        return;
    }
    if !score.is_finite() || score < f64::from(a.scale_min) || score > f64::from(a.scale_max) {
        v.push(Violation::new(
            f("score"),
            Reason::OutOfRange,
            format!(
                "{score} is outside the scale {}-{}",
                a.scale_min, a.scale_max
            ),
        ));
    } else if kind == MetricKind::Nps && score.fract() != 0.0 {
        v.push(Violation::new(
            f("score"),
            Reason::Invalid,
            "NPS scores are whole numbers",
        ));
    }
}

/// Trimmed, lower-cased address with one `@` and a dotted domain.
pub fn normalise_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(char::is_whitespace)
        && !domain.contains('@');
    ok.then_some(e)
}

/// E.164 form (`+` and 8-15 digits). A bare 11-digit number starting with 1
/// is taken as a mainland China mobile (+86).
pub fn normalise_phone(raw: &str) -> Option<String> {
    let mut digits = String::with_capacity(16);
    let s = raw.trim();
    let (international, rest) = if let Some(r) = s.strip_prefix('+') {
        (true, r)
    } else if let Some(r) = s.strip_prefix("00") {
        (true, r)
    } else {
        (false, s)
    };
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '(' | ')' | '.' => {}
            _ => return None,
        }
    }
    if international {
        (8..=15)
            .contains(&digits.len())
            .then(|| format!("+{digits}"))
    } else if digits.len() == 11 && digits.starts_with('1') {
        Some(format!("+86{digits}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::v1::{CustomerIdentity, Order, SurveyAnswer, SurveyResponse};

    const NOW: i64 = 1_763_000_000_000;

    fn normaliser() -> Normaliser {
        Normaliser::new(
            b"0123456789abcdef",
            Duration::from_secs(300),
            Duration::from_secs(400 * 86_400),
        )
        .expect("non-empty key")
    }

    fn order() -> Event {
        Event {
            event_id: "e-1".into(),
            tenant: "acme".into(),
            source: "pos".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(NOW - 1000)),
            payload: Some(Payload::Order(Order {
                order_id: "o-1".into(),
                status: OrderStatus::Paid as i32,
                amount_minor: 56_000,
                currency: "CNY".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_event_is_stamped_and_its_identifiers_hashed() {
        let mut e = order();
        e.customer = Some(CustomerIdentity {
            email: "  Li.Lei@Example.COM ".into(),
            phone: "138 0013 8000".into(),
            ..Default::default()
        });
        normaliser().normalise(&mut e, NOW).expect("valid");
        let c = e.customer.as_ref().expect("customer");
        assert!(c.email.is_empty() && c.phone.is_empty());
        assert_eq!(c.email_hash.len(), 64);
        assert_eq!(
            c.email_hash,
            normaliser().hash("acme", "email", "li.lei@example.com")
        );
        assert_eq!(
            c.phone_hash,
            normaliser().hash("acme", "phone", "+8613800138000")
        );
        assert_eq!(e.received_at, Some(xoflow_proto::from_unix_millis(NOW)));
    }

    #[test]
    fn every_fault_is_reported_with_its_field() {
        let mut e = order();
        e.tenant.clear();
        e.occurred_at = Some(xoflow_proto::from_unix_millis(NOW + 3_600_000));
        e.payload = Some(Payload::Survey(SurveyResponse {
            survey_id: "s".into(),
            answers: vec![SurveyAnswer {
                kind: MetricKind::Nps as i32,
                score: Some(11.0),
                scale_min: 0,
                scale_max: 10,
                ..Default::default()
            }],
            ..Default::default()
        }));
        let v = normaliser().normalise(&mut e, NOW).expect_err("invalid");
        let fields: Vec<_> = v.iter().map(|v| (v.field.as_str(), v.reason)).collect();
        assert_eq!(
            fields,
            vec![
                ("tenant", Reason::Missing),
                ("occurred_at", Reason::OutOfRange),
                ("survey.answers[0].score", Reason::OutOfRange),
            ]
        );
    }

    #[test]
    fn natural_ids_are_derived_when_the_client_sends_none() {
        let mut e = order();
        e.event_id.clear();
        normaliser().normalise(&mut e, NOW).expect("valid");
        assert_eq!(e.event_id, "order:o-1:2");
    }

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(
            normalise_phone("+44 20 7946 0958").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalise_phone("0086-138-0013-8000").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            normalise_phone("13800138000").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(normalise_phone("12345"), None);
        assert_eq!(normalise_phone("call me"), None);
    }
}
