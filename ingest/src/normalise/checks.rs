//! The field rules: required fields, lengths, enums, score scales and
//! time bounds. Each rule adds a [`Violation`] naming the field; none stops
//! at the first fault.

use xoflow_proto::{
    Timestamp,
    v1::{ClickAction, MetricKind, OrderStatus, Speaker, event::Payload},
};

use super::{Normaliser, Reason, Violation};

pub(super) const MAX_ID_LEN: usize = 128;
pub(super) const MAX_NAME_LEN: usize = 64;
pub(super) const MAX_TEXT_LEN: usize = 64 * 1024;
pub(super) const MAX_ATTRIBUTES: usize = 64;
pub(super) const MAX_SEGMENTS: usize = 10_000;

impl Normaliser {
    pub(super) fn check_time(
        &self,
        v: &mut Vec<Violation>,
        field: &str,
        ts: &Timestamp,
        now_ms: i64,
    ) {
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
}

pub(super) fn unknown_enum(field: &str, value: i32) -> Violation {
    Violation::new(field, Reason::UnknownEnum, format!("unknown value {value}"))
}

/// What a short string field may hold: identifiers are printable ASCII
/// without spaces, names anything but control characters.
struct Form {
    max_len: usize,
    ok: fn(&str) -> bool,
    rule: &'static str,
}

const ID: Form = Form {
    max_len: MAX_ID_LEN,
    ok: |s| s.bytes().all(|b| b.is_ascii_graphic()),
    rule: "printable ASCII without spaces only",
};

const NAME: Form = Form {
    max_len: MAX_NAME_LEN,
    ok: |s| !s.chars().any(char::is_control),
    rule: "control characters are not allowed",
};

fn check_str(v: &mut Vec<Violation>, field: &str, s: &str, required: bool, form: &Form) {
    if s.is_empty() {
        if required {
            v.push(Violation::new(
                field,
                Reason::Missing,
                format!("{field} is required"),
            ));
        }
    } else if s.len() > form.max_len {
        v.push(Violation::new(
            field,
            Reason::TooLong,
            format!("at most {} bytes", form.max_len),
        ));
    } else if !(form.ok)(s) {
        v.push(Violation::new(field, Reason::Invalid, form.rule));
    }
}

pub(super) fn check_id(v: &mut Vec<Violation>, field: &str, s: &str, required: bool) {
    check_str(v, field, s, required, &ID);
}

pub(super) fn check_name(v: &mut Vec<Violation>, field: &str, s: &str, required: bool) {
    check_str(v, field, s, required, &NAME);
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

pub(super) fn check_payload(v: &mut Vec<Violation>, p: &Payload, now_ms: i64, n: &Normaliser) {
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
            } else if !super::currency::is_currency(&o.currency) {
                v.push(Violation::new(
                    "order.currency",
                    Reason::Invalid,
                    format!("{} is not an ISO-4217 currency code", o.currency),
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
