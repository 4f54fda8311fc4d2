//! The body of a delivery in each format, and the request around it.
//!
//! - `generic`: [`Generic`], xoflow's own JSON, documented field by field
//!   below and in docs/alerts.md: the alert and its whole story
//!   (the triggering event's scores, masked text, sentiment and topics; the
//!   order with its lateness; the customer's value, support load and churn
//!   risk; the support call).
//! - `feishu`: a Feishu / Lark custom bot's interactive card,
//!   `{"msg_type":"interactive","card":{header, elements}}`, with
//!   `timestamp` and `sign` beside them when the webhook has a secret.
//! - `dingtalk`: `{"msgtype":"markdown","markdown":{"title","text"}}`; the
//!   signature goes in the URL (`&timestamp=..&sign=..`).
//! - `wecom`: `{"msgtype":"markdown","markdown":{"content"}}` (WeCom caps
//!   the content at 4096 bytes; it is cut there on a character boundary).
//! - `slack`: `{"text", "blocks"}` (header, section, context).
//!
//! Text is UTF-8 end to end: Chinese comments, store names and reasons
//! reach the robot as they are (serde_json escapes nothing beyond JSON's
//! own). Pure: [`render`] takes the clock as an argument.

use chrono::{DateTime, SecondsFormat};
use http::Uri;
use serde::Serialize;
use serde_json::json;
use xoflow_proto::{
    Timestamp,
    v1::{
        Alert, AlertCause, AlertSeverity, CallContext, CustomerContext, EnrichedEvent, NpsCategory,
        OrderContext, OrderMatch, OrderStatus, SentimentLabel, SessionContext, event::Payload,
    },
};

use super::{Webhook, sign};
use crate::config::Format;

/// Longest masked text quoted in a chat message, in characters.
const CHAT_TEXT_CHARS: usize = 300;
/// Most reasons listed in a chat message.
const CHAT_REASONS: usize = 8;
/// WeCom's cap on a markdown message's content, in bytes.
const WECOM_MAX_BYTES: usize = 4096;
/// Slack's cap on a header block's text, in characters.
const SLACK_HEADER_CHARS: usize = 150;
/// Slack's cap on a section block's text, in characters.
const SLACK_SECTION_CHARS: usize = 3000;

/// One attempt's request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The webhook's URL; for DingTalk with its signature appended.
    pub uri: Uri,
    pub body: Vec<u8>,
    /// Every header but `Host` and `Content-Length`.
    pub headers: Vec<(&'static str, String)>,
}

/// The request for one attempt to deliver `alert` to `webhook` at
/// `now_ms` (unix milliseconds).
pub fn render(alert: &Alert, webhook: &Webhook, now_ms: i64) -> Rendered {
    let now_s = now_ms.div_euclid(1000);
    let secret = webhook.secret.as_deref();
    let mut uri = webhook.uri.clone();
    let body = match webhook.format {
        Format::Generic => serde_json::to_vec(&Generic::of(alert)),
        Format::Feishu => serde_json::to_vec(&feishu(alert, secret, now_s)),
        Format::Dingtalk => {
            if let Some(s) = secret {
                uri = with_query(
                    &webhook.uri,
                    &format!("timestamp={now_ms}&sign={}", sign::dingtalk(s, now_ms)),
                );
            }
            serde_json::to_vec(&dingtalk(alert))
        }
        Format::Wecom => serde_json::to_vec(&wecom(alert)),
        Format::Slack => serde_json::to_vec(&slack(alert)),
    }
    // Serializing a tree of strings and numbers cannot fail.
    .unwrap_or_default();
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("idempotency-key", alert.alert_id.clone()),
        ("x-xoflow-alert-id", alert.alert_id.clone()),
        ("x-xoflow-timestamp", now_s.to_string()),
    ];
    if let Some(s) = secret {
        headers.push(("x-xoflow-signature", sign::xoflow(s, now_s, &body)));
    }
    Rendered { uri, body, headers }
}

/// `uri` with `extra` appended to its query.
fn with_query(uri: &Uri, extra: &str) -> Uri {
    let s = uri.to_string();
    let joined = if uri.query().is_some_and(|q| !q.is_empty()) {
        format!("{s}&{extra}")
    } else if s.ends_with('?') {
        format!("{s}{extra}")
    } else {
        format!("{s}?{extra}")
    };
    joined.parse().unwrap_or_else(|_| uri.clone())
}

// ------------------------------------------------------------ generic

/// The `generic` body: one JSON object per alert. Optional values are
/// `null` when unknown; times are RFC 3339 UTC with milliseconds; money is
/// in minor units with its currency.
#[derive(Debug, Serialize)]
pub struct Generic<'a> {
    /// Always `"xoflow.alert.v1"`: what this object is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The idempotency key: the same in every delivery of the alert.
    pub alert_id: &'a str,
    pub tenant: &'a str,
    /// The rule's name in the tenant's config.
    pub rule: &'a str,
    /// `low`, `medium`, `high`, `critical` (`unspecified` if unknown).
    pub severity: &'static str,
    /// The department that must act.
    pub department: &'a str,
    pub customer_id: &'a str,
    /// `event` (an event met the rule) or `silence` (the customer went
    /// quiet).
    pub cause: &'static str,
    /// One line per condition the rule checked.
    pub reasons: &'a [String],
    /// One line for people.
    pub summary: &'a str,
    pub raised_at: Option<String>,
    /// For a silence: whole days since the last order, and the customer's
    /// usual gap.
    pub silent_days: Option<u32>,
    pub usual_gap_days: Option<u32>,
    /// The triggering event (for a silence, the customer's latest) with
    /// what enrich joined to it; `null` if the alert carries none.
    pub trigger: Option<Trigger<'a>>,
}

/// The triggering event in a `generic` body.
#[derive(Debug, Serialize)]
pub struct Trigger<'a> {
    pub event_id: &'a str,
    /// Which enrichment of the event the alert saw.
    pub revision: u32,
    /// `survey`, `call`, `social`, `order`, `click`.
    pub kind: Option<&'static str>,
    pub source: &'a str,
    pub occurred_at: Option<String>,
    /// When a collector received the event (its acknowledgement follows
    /// the Kafka write right after).
    pub received_at: Option<String>,
    /// When enrich joined this revision of it.
    pub enriched_at: Option<String>,
    pub journey: &'a str,
    pub stage: &'a str,
    pub touchpoint: &'a str,
    pub store_id: &'a str,
    pub region: &'a str,
    pub scores: Scores,
    /// The event's free text (survey comment, call transcript, post),
    /// masked by ingest (e-mails, phone and card numbers replaced).
    pub text: String,
    pub language: &'a str,
    /// Sentiment of the text in [-1, 1].
    pub sentiment: Option<f64>,
    /// `negative`, `neutral`, `positive`, or `null` without text.
    pub sentiment_label: Option<&'static str>,
    pub topics: &'a [String],
    pub order: Option<Order<'a>>,
    pub customer: Option<Customer>,
    pub session: Option<Session<'a>>,
    pub call: Option<Call<'a>>,
}

/// A survey's scores, each on its native scale and normalised.
#[derive(Debug, Serialize)]
pub struct Scores {
    /// 0-10.
    pub nps: Option<i32>,
    /// `detractor`, `passive`, `promoter`.
    pub nps_category: Option<&'static str>,
    pub csat: Option<f64>,
    /// CSAT on [0, 1].
    pub csat_normalised: Option<f64>,
    pub ces: Option<f64>,
    /// CES on [0, 1], higher is easier.
    pub ces_normalised: Option<f64>,
}

/// The order joined to the event.
#[derive(Debug, Serialize)]
pub struct Order<'a> {
    pub order_id: &'a str,
    /// `referenced` (the event named it) or `recent`.
    pub r#match: Option<&'static str>,
    /// The latest status seen: `placed`, `paid`, `shipped`, `delivered`,
    /// `cancelled`, `returned`.
    pub status: Option<&'static str>,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub placed_at: Option<String>,
    pub promised_delivery_at: Option<String>,
    pub delivered_at: Option<String>,
    /// Delivered minus promised; positive is late.
    pub delivery_late_seconds: Option<i64>,
}

/// The customer's history when the event happened.
#[derive(Debug, Serialize)]
pub struct Customer {
    pub orders_90d: u32,
    pub value_90d_minor: i64,
    pub lifetime_value_minor: i64,
    pub support_contacts_30d: u32,
    pub days_since_last_order: Option<u32>,
    pub last_nps: Option<i32>,
    /// In [0, 1].
    pub churn_risk: Option<f64>,
}

/// The customer's web/app session.
#[derive(Debug, Serialize)]
pub struct Session<'a> {
    pub session_id: &'a str,
    pub page_views: u32,
    pub error_pages: u32,
    pub abandoned_checkout: bool,
}

/// The support call a survey was about.
#[derive(Debug, Serialize)]
pub struct Call<'a> {
    pub call_id: &'a str,
    pub started_at: Option<String>,
    pub queue: &'a str,
    pub agent_id: &'a str,
    pub duration_seconds: u32,
    pub disposition: &'a str,
    pub sentiment_label: Option<&'static str>,
}

impl<'a> Generic<'a> {
    pub fn of(a: &'a Alert) -> Self {
        Generic {
            kind: "xoflow.alert.v1",
            alert_id: &a.alert_id,
            tenant: &a.tenant,
            rule: &a.rule,
            severity: severity(a.severity),
            department: &a.department,
            customer_id: &a.customer_id,
            cause: cause(a.cause),
            reasons: &a.reasons,
            summary: &a.summary,
            raised_at: rfc3339(a.raised_at.as_ref()),
            silent_days: a.silent_days,
            usual_gap_days: a.usual_gap_days,
            trigger: a.trigger.as_ref().map(Trigger::of),
        }
    }
}

impl<'a> Trigger<'a> {
    fn of(en: &'a EnrichedEvent) -> Self {
        let e = en.event.as_ref();
        let tp = e.and_then(|e| e.touchpoint.as_ref());
        let loc = e.and_then(|e| e.location.as_ref());
        let cx = en.cx.as_ref();
        Trigger {
            event_id: e.map_or("", |e| &e.event_id),
            revision: en.revision,
            kind: e.and_then(|e| e.kind()).map(|k| k.as_str()),
            source: e.map_or("", |e| &e.source),
            occurred_at: rfc3339(e.and_then(|e| e.occurred_at.as_ref())),
            received_at: rfc3339(e.and_then(|e| e.received_at.as_ref())),
            enriched_at: rfc3339(en.enriched_at.as_ref()),
            journey: tp.map_or("", |t| &t.journey),
            stage: tp.map_or("", |t| &t.stage),
            touchpoint: tp.map_or("", |t| &t.touchpoint),
            store_id: loc.map_or("", |l| &l.store_id),
            region: loc.map_or("", |l| &l.region),
            scores: Scores {
                nps: cx.and_then(|c| c.nps_score),
                nps_category: cx.and_then(|c| nps_category(c.nps_category)),
                csat: cx.and_then(|c| c.csat_score),
                csat_normalised: cx.and_then(|c| c.csat_normalised),
                ces: cx.and_then(|c| c.ces_score),
                ces_normalised: cx.and_then(|c| c.ces_normalised),
            },
            text: text_of(en),
            language: language_of(en),
            sentiment: cx.and_then(|c| c.sentiment),
            sentiment_label: cx.and_then(|c| sentiment(c.sentiment_label)),
            topics: cx.map_or(&[], |c| c.topics.as_slice()),
            order: en.order.as_ref().map(Order::of),
            customer: en.customer.as_ref().map(Customer::of),
            session: en.session.as_ref().map(Session::of),
            call: en.call.as_ref().map(Call::of),
        }
    }
}

impl<'a> Order<'a> {
    fn of(o: &'a OrderContext) -> Self {
        Order {
            order_id: &o.order_id,
            r#match: match OrderMatch::try_from(o.r#match) {
                Ok(OrderMatch::Referenced) => Some("referenced"),
                Ok(OrderMatch::Recent) => Some("recent"),
                _ => None,
            },
            status: order_status(o.status),
            amount_minor: o.amount_minor,
            currency: &o.currency,
            placed_at: rfc3339(o.placed_at.as_ref()),
            promised_delivery_at: rfc3339(o.promised_delivery_at.as_ref()),
            delivered_at: rfc3339(o.delivered_at.as_ref()),
            delivery_late_seconds: o.delivery_late_seconds,
        }
    }
}

impl Customer {
    fn of(c: &CustomerContext) -> Self {
        Customer {
            orders_90d: c.orders_90d,
            value_90d_minor: c.value_90d_minor,
            lifetime_value_minor: c.lifetime_value_minor,
            support_contacts_30d: c.support_contacts_30d,
            days_since_last_order: c.days_since_last_order,
            last_nps: c.last_nps,
            churn_risk: c.churn_risk,
        }
    }
}

impl<'a> Session<'a> {
    fn of(s: &'a SessionContext) -> Self {
        Session {
            session_id: &s.session_id,
            page_views: s.page_views,
            error_pages: s.error_pages,
            abandoned_checkout: s.abandoned_checkout,
        }
    }
}

impl<'a> Call<'a> {
    fn of(c: &'a CallContext) -> Self {
        Call {
            call_id: &c.call_id,
            started_at: rfc3339(c.started_at.as_ref()),
            queue: &c.queue,
            agent_id: &c.agent_id,
            duration_seconds: c.duration_seconds,
            disposition: &c.disposition,
            sentiment_label: sentiment(c.sentiment_label),
        }
    }
}

/// The event's free text: a survey's comment (and answers' texts), a call's
/// transcript (one line per segment), a post.
pub fn text_of(en: &EnrichedEvent) -> String {
    let Some(p) = en.event.as_ref().and_then(|e| e.payload.as_ref()) else {
        return String::new();
    };
    let join = |parts: &mut dyn Iterator<Item = &str>| {
        parts
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    match p {
        Payload::Survey(s) => join(
            &mut std::iter::once(s.comment.as_str())
                .chain(s.answers.iter().map(|a| a.text.as_str())),
        ),
        Payload::Call(c) => join(&mut c.segments.iter().map(|s| s.text.as_str())),
        Payload::Social(s) => s.text.clone(),
        Payload::Order(_) | Payload::Click(_) => String::new(),
    }
}

fn language_of(en: &EnrichedEvent) -> &str {
    match en.event.as_ref().and_then(|e| e.payload.as_ref()) {
        Some(Payload::Survey(s)) => &s.language,
        Some(Payload::Call(c)) => &c.language,
        Some(Payload::Social(s)) => &s.language,
        _ => "",
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: Option<&Timestamp>) -> Option<String> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub const fn severity_name(s: AlertSeverity) -> &'static str {
    match s {
        AlertSeverity::Unspecified => "unspecified",
        AlertSeverity::Low => "low",
        AlertSeverity::Medium => "medium",
        AlertSeverity::High => "high",
        AlertSeverity::Critical => "critical",
    }
}

/// The severity's name; unknown values read `unspecified`.
pub fn severity(v: i32) -> &'static str {
    AlertSeverity::try_from(v).map_or("unspecified", severity_name)
}

/// The cause's name; unknown values read `unspecified`.
pub fn cause(v: i32) -> &'static str {
    match AlertCause::try_from(v) {
        Ok(AlertCause::Event) => "event",
        Ok(AlertCause::Silence) => "silence",
        _ => "unspecified",
    }
}

fn nps_category(v: i32) -> Option<&'static str> {
    match NpsCategory::try_from(v) {
        Ok(NpsCategory::Detractor) => Some("detractor"),
        Ok(NpsCategory::Passive) => Some("passive"),
        Ok(NpsCategory::Promoter) => Some("promoter"),
        _ => None,
    }
}

pub fn sentiment(v: i32) -> Option<&'static str> {
    match SentimentLabel::try_from(v) {
        Ok(SentimentLabel::Negative) => Some("negative"),
        Ok(SentimentLabel::Neutral) => Some("neutral"),
        Ok(SentimentLabel::Positive) => Some("positive"),
        _ => None,
    }
}

fn order_status(v: i32) -> Option<&'static str> {
    match OrderStatus::try_from(v) {
        Ok(OrderStatus::Placed) => Some("placed"),
        Ok(OrderStatus::Paid) => Some("paid"),
        Ok(OrderStatus::Shipped) => Some("shipped"),
        Ok(OrderStatus::Delivered) => Some("delivered"),
        Ok(OrderStatus::Cancelled) => Some("cancelled"),
        Ok(OrderStatus::Returned) => Some("returned"),
        _ => None,
    }
}

// ------------------------------------------------------------ chat robots

/// What a chat message says, before a robot's dialect is applied.
struct Card {
    /// `[HIGH] late-delivery-detractor`.
    title: String,
    summary: String,
    /// (label, value), in reading order.
    facts: Vec<(&'static str, String)>,
    reasons: Vec<String>,
    /// The masked text, cut to [`CHAT_TEXT_CHARS`].
    quote: String,
    /// `alert <id> · raised <time>`.
    footer: String,
}

fn card(a: &Alert) -> Card {
    let mut facts = Vec::new();
    let customer = if a.customer_id.is_empty() {
        "(unresolved)".to_owned()
    } else {
        a.customer_id.clone()
    };
    facts.push(("Customer", customer));
    facts.push(("Department", a.department.clone()));
    let en = a.trigger.as_ref();
    let e = en.and_then(|t| t.event.as_ref());
    if let Some(tp) = e.and_then(|e| e.touchpoint.as_ref()) {
        let path: Vec<&str> = [&tp.journey, &tp.stage, &tp.touchpoint]
            .into_iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        if !path.is_empty() {
            facts.push(("Touchpoint", path.join(" / ")));
        }
    }
    if let Some(loc) = e.and_then(|e| e.location.as_ref())
        && !loc.store_id.is_empty()
    {
        let store = if loc.region.is_empty() {
            loc.store_id.clone()
        } else {
            format!("{} ({})", loc.store_id, loc.region)
        };
        facts.push(("Store", store));
    }
    if let Some(e) = e {
        let kind = e.kind().map_or("event", |k| k.as_str());
        let at = rfc3339(e.occurred_at.as_ref()).unwrap_or_default();
        facts.push(("Event", format!("{kind} {} {at}", e.event_id)));
    }
    if let Some(cx) = en.and_then(|t| t.cx.as_ref()) {
        let mut scores = Vec::new();
        if let Some(n) = cx.nps_score {
            scores.push(match nps_category(cx.nps_category) {
                Some(c) => format!("NPS {n} ({c})"),
                None => format!("NPS {n}"),
            });
        }
        if let Some(c) = cx.csat_score {
            scores.push(format!("CSAT {c}"));
        }
        if let Some(c) = cx.ces_score {
            scores.push(format!("CES {c}"));
        }
        if let Some(s) = sentiment(cx.sentiment_label) {
            scores.push(format!("sentiment {s}"));
        }
        if !scores.is_empty() {
            facts.push(("Scores", scores.join(" · ")));
        }
        if !cx.topics.is_empty() {
            facts.push(("Topics", cx.topics.join(", ")));
        }
    }
    if let Some(o) = en.and_then(|t| t.order.as_ref())
        && !o.order_id.is_empty()
    {
        let mut parts = vec![o.order_id.clone()];
        if let Some(s) = order_status(o.status) {
            parts.push(s.to_owned());
        }
        if o.amount_minor != 0 {
            parts.push(money(o.amount_minor, &o.currency));
        }
        if let Some(late) = o.delivery_late_seconds
            && late > 0
        {
            parts.push(format!("delivered {} late", duration(late)));
        }
        facts.push(("Order", parts.join(", ")));
    }
    if let Some(c) = en.and_then(|t| t.customer.as_ref()) {
        let mut parts = vec![
            format!("90-day value {}", money(c.value_90d_minor, "")),
            format!("lifetime {}", money(c.lifetime_value_minor, "")),
            format!("support contacts (30 d) {}", c.support_contacts_30d),
        ];
        if let Some(r) = c.churn_risk {
            parts.push(format!("churn risk {r:.2}"));
        }
        facts.push(("History", parts.join(" · ")));
    }
    if let Some(c) = en.and_then(|t| t.call.as_ref())
        && !c.call_id.is_empty()
    {
        facts.push((
            "Call",
            format!(
                "{} queue {}, {} s, {}",
                c.call_id, c.queue, c.duration_seconds, c.disposition
            ),
        ));
    }
    if let Some(d) = a.silent_days {
        let usual = a
            .usual_gap_days
            .map_or(String::new(), |u| format!(" (usually {u})"));
        facts.push(("Silent", format!("{d} days{usual}")));
    }
    let quote = en.map_or(String::new(), text_of);
    Card {
        title: format!(
            "[{}] {}",
            severity(a.severity).to_uppercase(),
            if a.rule.is_empty() { "alert" } else { &a.rule }
        ),
        summary: a.summary.clone(),
        facts,
        reasons: a.reasons.iter().take(CHAT_REASONS).cloned().collect(),
        quote: cut_chars(&quote, CHAT_TEXT_CHARS),
        footer: format!(
            "alert {} · raised {}",
            a.alert_id,
            rfc3339(a.raised_at.as_ref()).unwrap_or_default()
        ),
    }
}

/// Markdown as Feishu's lark_md, DingTalk and WeCom read it (`**bold**`,
/// `> quote`, `- item`), with or without the title and footer (a Feishu
/// card shows them apart).
fn markdown(c: &Card, with_title: bool, with_footer: bool) -> String {
    let mut out = String::new();
    if with_title {
        out.push_str(&format!("### {}\n", c.title));
    }
    if !c.summary.is_empty() {
        out.push_str(&format!("{}\n\n", c.summary));
    }
    for (label, value) in &c.facts {
        out.push_str(&format!("**{label}**: {value}\n"));
    }
    if !c.reasons.is_empty() {
        out.push_str("\n**Reasons**\n");
        for r in &c.reasons {
            out.push_str(&format!("- {r}\n"));
        }
    }
    if !c.quote.is_empty() {
        out.push('\n');
        for line in c.quote.lines() {
            out.push_str(&format!("> {line}\n"));
        }
    }
    if with_footer {
        out.push_str(&format!("\n{}", c.footer));
    }
    out
}

fn feishu(a: &Alert, secret: Option<&str>, now_s: i64) -> serde_json::Value {
    let c = card(a);
    let template = match AlertSeverity::try_from(a.severity) {
        Ok(AlertSeverity::Critical | AlertSeverity::High) => "red",
        Ok(AlertSeverity::Medium) => "orange",
        Ok(AlertSeverity::Low) => "blue",
        _ => "grey",
    };
    let mut body = json!({
        "msg_type": "interactive",
        "card": {
            "config": { "wide_screen_mode": true },
            "header": {
                "title": { "tag": "plain_text", "content": c.title },
                "template": template,
            },
            "elements": [
                { "tag": "div", "text": { "tag": "lark_md", "content": markdown(&c, false, false).trim_end() } },
                { "tag": "note", "elements": [ { "tag": "plain_text", "content": c.footer } ] },
            ],
        },
    });
    if let (Some(s), Some(obj)) = (secret, body.as_object_mut()) {
        obj.insert("timestamp".into(), json!(now_s.to_string()));
        obj.insert("sign".into(), json!(sign::feishu(s, now_s)));
    }
    body
}

fn dingtalk(a: &Alert) -> serde_json::Value {
    let c = card(a);
    // The title is what the notification and the chat list show.
    let title = if c.summary.is_empty() {
        c.title.clone()
    } else {
        cut_chars(&c.summary, 64)
    };
    json!({
        "msgtype": "markdown",
        "markdown": { "title": title, "text": markdown(&c, true, true) },
    })
}

fn wecom(a: &Alert) -> serde_json::Value {
    let content = markdown(&card(a), true, true);
    json!({
        "msgtype": "markdown",
        "markdown": { "content": cut_bytes(&content, WECOM_MAX_BYTES) },
    })
}

fn slack(a: &Alert) -> serde_json::Value {
    let c = card(a);
    let mut section = String::new();
    if !c.summary.is_empty() {
        section.push_str(&format!("{}\n", slack_escape(&c.summary)));
    }
    for (label, value) in &c.facts {
        section.push_str(&format!("*{label}*: {}\n", slack_escape(value)));
    }
    for r in &c.reasons {
        section.push_str(&format!("• {}\n", slack_escape(r)));
    }
    for line in c.quote.lines() {
        section.push_str(&format!("> {}\n", slack_escape(line)));
    }
    let text = if c.summary.is_empty() {
        c.title.clone()
    } else {
        format!("{}: {}", c.title, c.summary)
    };
    json!({
        // The notification and fallback text.
        "text": slack_escape(&text),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": cut_chars(&c.title, SLACK_HEADER_CHARS) } },
            { "type": "section", "text": { "type": "mrkdwn", "text": cut_chars(section.trim_end(), SLACK_SECTION_CHARS) } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": slack_escape(&c.footer) } ] },
        ],
    })
}

/// Slack reads `&`, `<` and `>` as markup (`<!channel>` notifies everyone):
/// customers' words must not.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most `max` characters, with `…` when cut.
fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((i, _)) if s.chars().count() > max => format!("{}…", &s[..i]),
        _ => s.to_owned(),
    }
}

/// At most `max` bytes, cut on a character boundary.
fn cut_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// `560.00 CNY` from minor units (two decimals: the alert does not say
/// the currency's exponent).
fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    let s = format!("{sign}{}.{:02}", m / 100, m % 100);
    if currency.is_empty() {
        s
    } else {
        format!("{s} {currency}")
    }
}

/// `2 d 3 h`, `5 h 10 min`, `40 min`.
fn duration(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use xoflow_proto::v1::{
        CustomerIdentity, CxFields, Event, Location, SurveyResponse, Touchpoint,
    };

    use super::*;
    use crate::config::WebhookConfig;

    pub(crate) fn survey_alert() -> Alert {
        let event = Event {
            event_id: "ev-1".into(),
            tenant: "hotpot".into(),
            source: "survey-tool".into(),
            occurred_at: Some(Timestamp {
                seconds: 1_767_225_000,
                nanos: 0,
            }),
            customer: Some(CustomerIdentity {
                customer_id: "c-17".into(),
                ..Default::default()
            }),
            touchpoint: Some(Touchpoint {
                journey: "delivery".into(),
                stage: "fulfilment".into(),
                touchpoint: "courier-delivery".into(),
                channel: 1,
            }),
            location: Some(Location {
                store_id: "sz-02".into(),
                region: "华南".into(),
            }),
            payload: Some(Payload::Survey(SurveyResponse {
                survey_id: "post-delivery".into(),
                comment: "配送晚了两天，汤都凉了 <!channel> & co".into(),
                language: "zh".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        Alert {
            alert_id: "0123456789abcdef0123456789abcdef".into(),
            tenant: "hotpot".into(),
            rule: "late-delivery-detractor".into(),
            severity: AlertSeverity::High as i32,
            department: "logistics".into(),
            customer_id: "c-17".into(),
            cause: AlertCause::Event as i32,
            reasons: vec!["NPS 2 (detractor)".into(), "订单 o-17 晚到 2 天".into()],
            trigger: Some(EnrichedEvent {
                event: Some(event),
                resolved_customer_id: "c-17".into(),
                order: Some(OrderContext {
                    order_id: "o-17".into(),
                    r#match: OrderMatch::Referenced as i32,
                    status: OrderStatus::Delivered as i32,
                    amount_minor: 56_000,
                    currency: "CNY".into(),
                    delivery_late_seconds: Some(2 * 86_400 + 3600),
                    ..Default::default()
                }),
                customer: Some(CustomerContext {
                    orders_90d: 3,
                    value_90d_minor: 120_000,
                    lifetime_value_minor: 560_000,
                    support_contacts_30d: 2,
                    churn_risk: Some(0.72),
                    ..Default::default()
                }),
                cx: Some(CxFields {
                    nps_score: Some(2),
                    nps_category: NpsCategory::Detractor as i32,
                    sentiment: Some(-0.8),
                    sentiment_label: SentimentLabel::Negative as i32,
                    topics: vec!["delivery".into(), "food".into()],
                    ..Default::default()
                }),
                revision: 1,
                enriched_at: Some(Timestamp {
                    seconds: 1_767_225_600,
                    nanos: 120_000_000,
                }),
                ..Default::default()
            }),
            raised_at: Some(Timestamp {
                seconds: 1_767_225_600,
                nanos: 250_000_000,
            }),
            summary: "HIGH late-delivery-detractor: c-17 at courier-delivery — NPS 2 (detractor)"
                .into(),
            silent_days: None,
            usual_gap_days: None,
        }
    }

    fn hook(url: &str, format: Format, secret: Option<&str>) -> Webhook {
        Webhook::new(
            &WebhookConfig {
                url: url.into(),
                format,
                secret: secret.map(Into::into),
            },
            0,
            "alert.tenants.t.departments.d.webhooks[0]".into(),
        )
        .expect("url")
    }

    fn body(r: &Rendered) -> serde_json::Value {
        serde_json::from_slice(&r.body).expect("json body")
    }

    fn header<'a>(r: &'a Rendered, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    const NOW_MS: i64 = 1_767_225_601_234;

    #[test]
    fn every_request_carries_the_key_the_timestamp_and_the_signature() {
        let a = survey_alert();
        for format in Format::ALL {
            let secret = format.needs_secret().then_some("k");
            let r = render(&a, &hook("https://h.example/x", format, secret), NOW_MS);
            assert_eq!(header(&r, "content-type"), Some("application/json"));
            assert_eq!(header(&r, "idempotency-key"), Some(a.alert_id.as_str()));
            assert_eq!(header(&r, "x-xoflow-alert-id"), Some(a.alert_id.as_str()));
            assert_eq!(header(&r, "x-xoflow-timestamp"), Some("1767225601"));
            match secret {
                Some(s) => assert_eq!(
                    header(&r, "x-xoflow-signature").map(str::to_owned),
                    Some(sign::xoflow(s, 1_767_225_601, &r.body)),
                    "{format}"
                ),
                None => assert_eq!(header(&r, "x-xoflow-signature"), None, "{format}"),
            }
            // Chinese passes through as UTF-8, not as \u escapes.
            let text = String::from_utf8(r.body.clone()).expect("utf-8");
            assert!(text.contains("配送晚了两天"), "{format}: {text}");
        }
    }

    #[test]
    fn the_generic_body_tells_the_whole_story() {
        let a = survey_alert();
        let b = body(&render(
            &a,
            &hook("http://h/x", Format::Generic, Some("k")),
            NOW_MS,
        ));
        assert_eq!(b["type"], "xoflow.alert.v1");
        assert_eq!(b["alert_id"], a.alert_id);
        assert_eq!(b["severity"], "high");
        assert_eq!(b["cause"], "event");
        assert_eq!(b["department"], "logistics");
        assert_eq!(b["reasons"][1], "订单 o-17 晚到 2 天");
        assert_eq!(b["raised_at"], "2026-01-01T00:00:00.250Z");
        assert_eq!(b["silent_days"], serde_json::Value::Null);
        let t = &b["trigger"];
        assert_eq!(t["event_id"], "ev-1");
        assert_eq!(t["revision"], 1);
        assert_eq!(t["enriched_at"], "2026-01-01T00:00:00.120Z");
        assert_eq!(t["kind"], "survey");
        assert_eq!(t["touchpoint"], "courier-delivery");
        assert_eq!(t["store_id"], "sz-02");
        assert_eq!(t["region"], "华南");
        assert_eq!(t["scores"]["nps"], 2);
        assert_eq!(t["scores"]["nps_category"], "detractor");
        assert_eq!(t["sentiment_label"], "negative");
        assert_eq!(t["topics"][0], "delivery");
        assert_eq!(t["text"], "配送晚了两天，汤都凉了 <!channel> & co");
        assert_eq!(t["order"]["order_id"], "o-17");
        assert_eq!(t["order"]["match"], "referenced");
        assert_eq!(t["order"]["status"], "delivered");
        assert_eq!(t["order"]["delivery_late_seconds"], 2 * 86_400 + 3600);
        assert_eq!(t["customer"]["value_90d_minor"], 120_000);
        assert_eq!(t["customer"]["lifetime_value_minor"], 560_000);
        assert_eq!(t["customer"]["support_contacts_30d"], 2);
        assert_eq!(t["customer"]["churn_risk"], 0.72);
        assert_eq!(t["call"], serde_json::Value::Null);
    }

    #[test]
    fn feishu_sends_a_signed_interactive_card() {
        let a = survey_alert();
        let r = render(
            &a,
            &hook(
                "https://open.feishu.cn/open-apis/bot/v2/hook/x",
                Format::Feishu,
                Some("fs"),
            ),
            NOW_MS,
        );
        let b = body(&r);
        assert_eq!(b["msg_type"], "interactive");
        assert_eq!(b["timestamp"], "1767225601");
        assert_eq!(b["sign"], sign::feishu("fs", 1_767_225_601));
        assert_eq!(b["card"]["header"]["template"], "red");
        assert_eq!(
            b["card"]["header"]["title"]["content"],
            "[HIGH] late-delivery-detractor"
        );
        let md = b["card"]["elements"][0]["text"]["content"]
            .as_str()
            .expect("md");
        assert_eq!(b["card"]["elements"][0]["text"]["tag"], "lark_md");
        assert!(
            md.contains("**Order**: o-17, delivered, 560.00 CNY, delivered 2 d 1 h late"),
            "{md}"
        );
        assert!(md.contains("**Store**: sz-02 (华南)"), "{md}");
        assert!(md.contains("> 配送晚了两天"), "{md}");
        assert!(
            b["card"]["elements"][1]["elements"][0]["content"]
                .as_str()
                .is_some_and(|f| f.starts_with("alert 0123456789abcdef"))
        );
        assert_eq!(
            r.uri.to_string(),
            "https://open.feishu.cn/open-apis/bot/v2/hook/x"
        );
    }

    #[test]
    fn dingtalk_signs_in_the_query_and_sends_markdown() {
        let a = survey_alert();
        let r = render(
            &a,
            &hook(
                "https://oapi.dingtalk.com/robot/send?access_token=T",
                Format::Dingtalk,
                Some("SECx"),
            ),
            NOW_MS,
        );
        assert_eq!(
            r.uri.to_string(),
            format!(
                "https://oapi.dingtalk.com/robot/send?access_token=T&timestamp={NOW_MS}&sign={}",
                sign::dingtalk("SECx", NOW_MS)
            )
        );
        let b = body(&r);
        assert_eq!(b["msgtype"], "markdown");
        assert!(
            b["markdown"]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("HIGH late"))
        );
        let text = b["markdown"]["text"].as_str().expect("text");
        assert!(
            text.starts_with("### [HIGH] late-delivery-detractor\n"),
            "{text}"
        );
        assert!(text.contains("- 订单 o-17 晚到 2 天"), "{text}");
        // A URL without a query gets one.
        let r = render(
            &a,
            &hook("https://d.example/robot", Format::Dingtalk, Some("s")),
            NOW_MS,
        );
        assert!(
            r.uri
                .to_string()
                .starts_with("https://d.example/robot?timestamp="),
            "{}",
            r.uri
        );
    }

    #[test]
    fn wecom_sends_markdown_within_its_byte_cap() {
        let mut a = survey_alert();
        let r = render(
            &a,
            &hook(
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K",
                Format::Wecom,
                None,
            ),
            NOW_MS,
        );
        let b = body(&r);
        assert_eq!(b["msgtype"], "markdown");
        assert!(
            b["markdown"]["content"]
                .as_str()
                .is_some_and(|c| c.contains("**Customer**: c-17"))
        );
        a.reasons = (0..2000).map(|i| format!("原因 {i}")).collect();
        a.summary = "长".repeat(3000);
        let b = body(&render(
            &a,
            &hook("https://w/x", Format::Wecom, None),
            NOW_MS,
        ));
        let content = b["markdown"]["content"].as_str().expect("content");
        assert!(
            content.len() <= WECOM_MAX_BYTES && content.len() > 4000,
            "{}",
            content.len()
        );
    }

    #[test]
    fn slack_escapes_markup_and_keeps_within_block_limits() {
        let mut a = survey_alert();
        let b = body(&render(
            &a,
            &hook(
                "https://hooks.slack.com/services/T/B/X",
                Format::Slack,
                None,
            ),
            NOW_MS,
        ));
        assert!(
            b["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("[HIGH] late-delivery-detractor: HIGH"))
        );
        assert_eq!(b["blocks"][0]["type"], "header");
        assert_eq!(b["blocks"][1]["text"]["type"], "mrkdwn");
        let section = b["blocks"][1]["text"]["text"].as_str().expect("section");
        assert!(section.contains("&lt;!channel&gt; &amp; co"), "{section}");
        assert!(!section.contains("<!channel>"), "{section}");
        a.rule = "r".repeat(400);
        a.summary = "s".repeat(5000);
        let b = body(&render(
            &a,
            &hook("https://s/x", Format::Slack, None),
            NOW_MS,
        ));
        assert!(
            b["blocks"][0]["text"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() <= SLACK_HEADER_CHARS)
        );
        assert!(
            b["blocks"][1]["text"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() <= SLACK_SECTION_CHARS)
        );
    }

    #[test]
    fn an_alert_without_a_trigger_still_renders_everywhere() {
        let a = Alert {
            alert_id: "a".into(),
            tenant: "t".into(),
            silent_days: Some(40),
            usual_gap_days: Some(12),
            cause: AlertCause::Silence as i32,
            severity: 99,
            ..Default::default()
        };
        for format in Format::ALL {
            let r = render(&a, &hook("https://h/x", format, Some("k")), NOW_MS);
            let b = body(&r);
            assert!(b.is_object(), "{format}");
            if format == Format::Generic {
                assert_eq!(b["severity"], "unspecified");
                assert_eq!(b["cause"], "silence");
                assert_eq!(b["silent_days"], 40);
                assert_eq!(b["trigger"], serde_json::Value::Null);
            }
        }
    }

    #[test]
    fn text_helpers_cut_on_character_boundaries() {
        assert_eq!(cut_chars("配送晚了", 3), "配送…");
        assert_eq!(cut_chars("abc", 3), "abc");
        assert_eq!(cut_bytes("配送", 4), "配");
        assert_eq!(money(56_000, "CNY"), "560.00 CNY");
        assert_eq!(money(-5, ""), "-0.05");
        assert_eq!(duration(2 * 86_400 + 3 * 3600), "2 d 3 h");
        assert_eq!(duration(5 * 3600 + 600), "5 h 10 min");
        assert_eq!(duration(2400), "40 min");
    }
}
