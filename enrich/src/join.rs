//! The X+O join: per-customer state that turns "a score of 3" into "a score
//! of 3 from a customer whose order arrived two days late after two support
//! calls".
//!
//! A pure, synchronous operator: events in, `EnrichedEvent`s out, one per
//! input, in input order; no I/O, so the stage decides batching and the
//! tests drive it directly. State per customer is bounded (most recent
//! orders only) and expires by event time (configurable windows).
//!
//! Identity: events that carry a customer id and weak identifiers (hashed
//! e-mail, phone, handle, device) teach links; events with only weak
//! identifiers are resolved through them. Links and state live in this
//! instance's memory: with several instances, a customer's events must
//! reach the same one (the events topic is keyed by the strongest key).

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use serde::Deserialize;
use xoflow_proto::v1::{
    ClickAction, CustomerContext, EnrichedEvent, Event, IdentityResolution, NpsCategory,
    OrderContext, OrderMatch, OrderStatus, SentimentLabel, SessionContext, Speaker, event::Payload,
    survey_trigger::Ref,
};

use crate::{derive, sentiment};

const DAY_MS: i64 = 86_400_000;

/// Windows and bounds of the per-customer state (`[enrich.join]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// How far back an order still explains an experience event.
    #[serde(with = "humantime_serde")]
    pub order_window: Duration,
    /// Support contacts counted for churn risk and context.
    #[serde(with = "humantime_serde")]
    pub support_window: Duration,
    /// Window of `orders_90d` and `value_90d_minor`.
    #[serde(with = "humantime_serde")]
    pub value_window: Duration,
    /// Most orders remembered per customer (oldest forgotten first).
    pub max_orders_per_customer: usize,
    /// Most customers kept; beyond it, customers idle longer than the value
    /// window are dropped.
    pub max_customers: usize,
    /// Department owning each journey stage, for alert routing.
    #[serde(default)]
    pub departments: HashMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct OrderState {
    ctx: OrderContext,
    placed_ms: i64,
    last_ms: i64,
    counted_value: bool,
}

#[derive(Debug, Clone, Default)]
struct SessionState {
    id: String,
    page_views: u32,
    errors: u32,
    checkout: bool,
    purchased: bool,
}

#[derive(Debug, Clone, Default)]
struct CustomerState {
    orders: VecDeque<OrderState>,
    /// (time, amount) of paid orders, for the 90-day figures.
    paid: VecDeque<(i64, i64)>,
    lifetime_value: i64,
    session: SessionState,
    support: VecDeque<i64>,
    last_nps: Option<i32>,
    nps_sum: i64,
    nps_answers: u32,
    detractors: u32,
    texts: u32,
    negative_texts: u32,
    delivered: u32,
    late_deliveries: u32,
    returns: u32,
    last_seen_ms: i64,
}

/// The join operator's state.
#[derive(Debug)]
pub struct Join {
    cfg: JoinConfig,
    customers: HashMap<String, CustomerState>,
    /// Hashed weak identifier → customer id.
    links: HashMap<String, String>,
}

impl Join {
    pub fn new(cfg: JoinConfig) -> Self {
        Self {
            cfg,
            customers: HashMap::new(),
            links: HashMap::new(),
        }
    }

    /// Customers currently held.
    pub fn customers(&self) -> usize {
        self.customers.len()
    }

    /// Enriches one event and updates the state with it.
    pub fn process(&mut self, e: Event, now_ms: i64) -> EnrichedEvent {
        let at = e
            .occurred_at
            .as_ref()
            .map(xoflow_proto::to_unix_millis)
            .unwrap_or(now_ms);
        let (customer_id, resolution) = self.resolve(&e);
        let mut cx = derive::cx_fields(&e);
        let text = experience_text(&e);
        if !text.is_empty() {
            let s = sentiment::score(&text);
            cx.sentiment = Some(s.score);
            cx.sentiment_label = s.label as i32;
            cx.topics = sentiment::topics(&text);
        }
        let stage = e
            .touchpoint
            .as_ref()
            .map(|t| t.stage.as_str())
            .unwrap_or("");
        let owner_department = self.cfg.departments.get(stage).cloned().unwrap_or_default();

        let mut out = EnrichedEvent {
            resolved_customer_id: customer_id.clone().unwrap_or_default(),
            resolution: resolution as i32,
            owner_department,
            enriched_at: Some(xoflow_proto::from_unix_millis(now_ms)),
            ..Default::default()
        };
        if let Some(id) = customer_id {
            self.evict_if_full(at);
            let cfg = self.cfg.clone();
            let state = self.customers.entry(id).or_default();
            state.update(&e, &cx, at, &cfg);
            out.order = state.order_context(&e, at, &cfg);
            out.session = (!state.session.id.is_empty()).then(|| SessionContext {
                session_id: state.session.id.clone(),
                page_views: state.session.page_views,
                error_pages: state.session.errors,
                abandoned_checkout: state.session.checkout && !state.session.purchased,
            });
            out.customer = Some(state.context(at, &cfg));
        } else {
            out.order = derive::own_order(&e);
        }
        out.cx = Some(cx);
        out.event = Some(e);
        out
    }

    fn resolve(&mut self, e: &Event) -> (Option<String>, IdentityResolution) {
        let Some(c) = &e.customer else {
            return (None, IdentityResolution::Unresolved);
        };
        let weak = [
            &c.email_hash,
            &c.phone_hash,
            &c.social_handle_hash,
            &c.device_id_hash,
        ];
        if !c.customer_id.is_empty() {
            for h in weak.into_iter().filter(|h| !h.is_empty()) {
                if self.links.get(h.as_str()) != Some(&c.customer_id) {
                    self.links.insert(h.clone(), c.customer_id.clone());
                }
            }
            return (Some(c.customer_id.clone()), IdentityResolution::Direct);
        }
        match weak.into_iter().find_map(|h| self.links.get(h.as_str())) {
            Some(id) => (Some(id.clone()), IdentityResolution::Linked),
            None => (None, IdentityResolution::Unresolved),
        }
    }

    fn evict_if_full(&mut self, now: i64) {
        if self.customers.len() < self.cfg.max_customers {
            return;
        }
        let idle = self.cfg.value_window.as_millis() as i64;
        self.customers.retain(|_, c| now - c.last_seen_ms < idle);
    }
}

/// The customer's own words in an event: survey comment and free-text
/// answers, what the customer said on a call (not the agent), a post.
pub fn experience_text(e: &Event) -> String {
    match &e.payload {
        Some(Payload::Survey(s)) => {
            let mut t = s.comment.clone();
            for a in s.answers.iter().filter(|a| !a.text.is_empty()) {
                t.push(' ');
                t.push_str(&a.text);
            }
            t
        }
        Some(Payload::Call(c)) => c
            .segments
            .iter()
            .filter(|s| s.speaker == Speaker::Customer as i32)
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        Some(Payload::Social(p)) => p.text.clone(),
        _ => String::new(),
    }
}

impl CustomerState {
    fn update(&mut self, e: &Event, cx: &xoflow_proto::v1::CxFields, at: i64, cfg: &JoinConfig) {
        self.last_seen_ms = self.last_seen_ms.max(at);
        if cx.sentiment.is_some() {
            self.texts += 1;
        }
        if cx.sentiment_label == SentimentLabel::Negative as i32 {
            self.negative_texts += 1;
        }
        match &e.payload {
            Some(Payload::Order(o)) => {
                let idx = match self
                    .orders
                    .iter()
                    .position(|s| s.ctx.order_id == o.order_id)
                {
                    Some(i) => i,
                    None => {
                        if self.orders.len() >= cfg.max_orders_per_customer.max(1) {
                            self.orders.pop_front();
                        }
                        self.orders.push_back(OrderState {
                            ctx: OrderContext {
                                order_id: o.order_id.clone(),
                                currency: o.currency.clone(),
                                ..Default::default()
                            },
                            placed_ms: at,
                            ..Default::default()
                        });
                        self.orders.len() - 1
                    }
                };
                let s = &mut self.orders[idx];
                s.last_ms = at;
                s.ctx.status = o.status;
                s.ctx.amount_minor = o.amount_minor;
                s.ctx.placed_at = Some(xoflow_proto::from_unix_millis(s.placed_ms));
                if o.promised_delivery_at.is_some() {
                    s.ctx.promised_delivery_at = o.promised_delivery_at;
                }
                if o.delivered_at.is_some() {
                    s.ctx.delivered_at = o.delivered_at;
                }
                if let (Some(p), Some(d)) = (&s.ctx.promised_delivery_at, &s.ctx.delivered_at) {
                    let late =
                        (xoflow_proto::to_unix_millis(d) - xoflow_proto::to_unix_millis(p)) / 1000;
                    if s.ctx.delivery_late_seconds.is_none() {
                        self.delivered += 1;
                        self.late_deliveries += u32::from(late > 0);
                    }
                    s.ctx.delivery_late_seconds = Some(late);
                }
                let status = OrderStatus::try_from(o.status).unwrap_or_default();
                if matches!(status, OrderStatus::Paid | OrderStatus::Delivered) && !s.counted_value
                {
                    s.counted_value = true;
                    self.lifetime_value += o.amount_minor;
                    self.paid.push_back((at, o.amount_minor));
                }
                if matches!(status, OrderStatus::Returned | OrderStatus::Cancelled)
                    && s.counted_value
                {
                    s.counted_value = false;
                    self.lifetime_value -= o.amount_minor;
                    self.returns += u32::from(status == OrderStatus::Returned);
                    if let Some(pos) = self.paid.iter().rposition(|(_, a)| *a == o.amount_minor) {
                        self.paid.remove(pos);
                    }
                }
            }
            Some(Payload::Click(c)) => {
                if self.session.id != c.session_id {
                    self.session = SessionState {
                        id: c.session_id.clone(),
                        ..Default::default()
                    };
                }
                let s = &mut self.session;
                match ClickAction::try_from(c.action).unwrap_or_default() {
                    ClickAction::Error => s.errors += 1,
                    ClickAction::Checkout => s.checkout = true,
                    ClickAction::Purchase => s.purchased = true,
                    _ => {}
                }
                s.page_views += 1;
            }
            Some(Payload::Call(_)) => self.support.push_back(at),
            Some(Payload::Survey(_)) => {
                if let Some(n) = cx.nps_score {
                    self.last_nps = Some(n);
                    self.nps_sum += i64::from(n);
                    self.nps_answers += 1;
                }
                if cx.nps_category == NpsCategory::Detractor as i32 {
                    self.detractors += 1;
                }
            }
            _ => {}
        }
        let support_from = at - cfg.support_window.as_millis() as i64;
        while self.support.front().is_some_and(|t| *t < support_from) {
            self.support.pop_front();
        }
        let value_from = at - cfg.value_window.as_millis() as i64;
        while self.paid.front().is_some_and(|(t, _)| *t < value_from) {
            self.paid.pop_front();
        }
    }

    /// The order an event is about: the one it names, else the customer's
    /// most recent order within the window (for experience events).
    fn order_context(&self, e: &Event, at: i64, cfg: &JoinConfig) -> Option<OrderContext> {
        let referenced = match &e.payload {
            Some(Payload::Order(o)) => Some(o.order_id.as_str()),
            Some(Payload::Survey(s)) => match s.trigger.as_ref().and_then(|t| t.r#ref.as_ref()) {
                Some(Ref::OrderId(id)) => Some(id.as_str()),
                _ => None,
            },
            _ => None,
        };
        if let Some(id) = referenced
            && let Some(o) = self.orders.iter().find(|o| o.ctx.order_id == id)
        {
            let mut ctx = o.ctx.clone();
            ctx.r#match = OrderMatch::Referenced as i32;
            return Some(ctx);
        }
        let experience = matches!(
            e.payload,
            Some(Payload::Survey(_) | Payload::Call(_) | Payload::Social(_))
        );
        if !experience {
            return None;
        }
        let from = at - cfg.order_window.as_millis() as i64;
        self.orders
            .iter()
            .filter(|o| o.last_ms >= from && o.last_ms <= at)
            .max_by_key(|o| o.last_ms)
            .map(|o| {
                let mut ctx = o.ctx.clone();
                ctx.r#match = OrderMatch::Recent as i32;
                ctx
            })
    }

    fn context(&self, at: i64, _cfg: &JoinConfig) -> CustomerContext {
        let last_order = self
            .orders
            .iter()
            .map(|o| o.placed_ms)
            .filter(|t| *t <= at)
            .max();
        CustomerContext {
            orders_90d: self.paid.len() as u32,
            value_90d_minor: self.paid.iter().map(|(_, a)| a).sum(),
            lifetime_value_minor: self.lifetime_value,
            support_contacts_30d: self.support.len() as u32,
            days_since_last_order: last_order.map(|t| ((at - t).max(0) / DAY_MS) as u32),
            last_nps: self.last_nps,
            churn_risk: Some(self.churn_risk()),
        }
    }

    /// Churn risk in [0, 1] from the signals that predict leaving. Shares,
    /// not counts, so a busy loyal customer does not look riskier than a
    /// quiet unhappy one: how low their NPS runs (weighted by how many
    /// answers back it), the share of their words that are negative, support
    /// contacts, and the share of their deliveries that came late or went
    /// back.
    fn churn_risk(&self) -> f64 {
        let share = |num: u32, den: u32| {
            if den == 0 {
                0.0
            } else {
                f64::from(num) / f64::from(den)
            }
        };
        let nps = if self.nps_answers == 0 {
            0.0
        } else {
            let avg = self.nps_sum as f64 / f64::from(self.nps_answers);
            let confidence = f64::from(self.nps_answers) / f64::from(self.nps_answers + 1);
            ((8.0 - avg) / 4.0).clamp(0.0, 1.5) * confidence
        };
        let x = 2.0 * nps
            + 1.0 * share(self.negative_texts, self.texts)
            + 0.25 * self.support.len() as f64
            + 0.4 * share(self.late_deliveries, self.delivered)
            + 0.6 * share(self.returns, self.delivered.max(self.returns));
        1.0 - (-x).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::v1::{
        CallTranscript, CustomerIdentity, MetricKind, Order, SurveyAnswer, SurveyResponse,
        SurveyTrigger, TranscriptSegment,
    };

    fn cfg() -> JoinConfig {
        JoinConfig {
            order_window: Duration::from_secs(30 * 86_400),
            support_window: Duration::from_secs(30 * 86_400),
            value_window: Duration::from_secs(90 * 86_400),
            max_orders_per_customer: 8,
            max_customers: 1000,
            departments: [("delivery".to_string(), "logistics".to_string())].into(),
        }
    }

    fn event(id: &str, at: i64, customer: CustomerIdentity, payload: Payload) -> Event {
        Event {
            event_id: id.into(),
            tenant: "t".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(at)),
            customer: Some(customer),
            touchpoint: Some(xoflow_proto::v1::Touchpoint {
                stage: "delivery".into(),
                ..Default::default()
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    #[test]
    fn a_detractor_survey_known_only_by_email_meets_its_late_order_and_calls() {
        let mut j = Join::new(cfg());
        let known = CustomerIdentity {
            customer_id: "c1".into(),
            email_hash: "h-email".into(),
            ..Default::default()
        };
        let order = |status: OrderStatus, delivered: Option<i64>| Order {
            order_id: "o1".into(),
            status: status as i32,
            amount_minor: 56_000,
            currency: "CNY".into(),
            promised_delivery_at: Some(xoflow_proto::from_unix_millis(3 * DAY_MS)),
            delivered_at: delivered.map(xoflow_proto::from_unix_millis),
            ..Default::default()
        };
        j.process(
            event(
                "e1",
                0,
                known.clone(),
                Payload::Order(order(OrderStatus::Paid, None)),
            ),
            0,
        );
        j.process(
            event(
                "e2",
                5 * DAY_MS,
                known.clone(),
                Payload::Order(order(OrderStatus::Delivered, Some(5 * DAY_MS))),
            ),
            0,
        );
        for i in 0..2 {
            j.process(
                event(
                    &format!("call{i}"),
                    5 * DAY_MS + i,
                    known.clone(),
                    Payload::Call(CallTranscript {
                        call_id: format!("k{i}"),
                        segments: vec![TranscriptSegment {
                            speaker: Speaker::Customer as i32,
                            text: "Where is my parcel? This is terrible.".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                ),
                0,
            );
        }
        let survey = event(
            "e3",
            6 * DAY_MS,
            CustomerIdentity {
                email_hash: "h-email".into(),
                ..Default::default()
            },
            Payload::Survey(SurveyResponse {
                survey_id: "post-delivery".into(),
                answers: vec![SurveyAnswer {
                    kind: MetricKind::Nps as i32,
                    score: Some(3.0),
                    scale_min: 0,
                    scale_max: 10,
                    ..Default::default()
                }],
                comment: "配送太慢了，等了五天".into(),
                trigger: Some(SurveyTrigger {
                    r#ref: Some(Ref::OrderId("o1".into())),
                }),
                ..Default::default()
            }),
        );
        let out = j.process(survey, 0);
        assert_eq!(out.resolved_customer_id, "c1");
        assert_eq!(out.resolution, IdentityResolution::Linked as i32);
        assert_eq!(out.owner_department, "logistics");
        let o = out.order.expect("order joined");
        assert_eq!(o.r#match, OrderMatch::Referenced as i32);
        assert_eq!(o.delivery_late_seconds, Some(2 * 86_400));
        assert_eq!(o.amount_minor, 56_000);
        let c = out.customer.expect("customer context");
        assert_eq!(c.support_contacts_30d, 2);
        assert_eq!(c.lifetime_value_minor, 56_000);
        assert_eq!(c.last_nps, Some(3));
        assert!(c.churn_risk.expect("risk") > 0.8);
        let cx = out.cx.expect("cx");
        assert_eq!(cx.sentiment_label, SentimentLabel::Negative as i32);
        assert!(
            cx.topics.contains(&"delivery".to_string()),
            "{:?}",
            cx.topics
        );
    }

    #[test]
    fn anonymous_events_pass_through_unresolved() {
        let mut j = Join::new(cfg());
        let out = j.process(
            event(
                "e1",
                0,
                CustomerIdentity {
                    device_id_hash: "d".into(),
                    ..Default::default()
                },
                Payload::Order(Order {
                    order_id: "o".into(),
                    ..Default::default()
                }),
            ),
            0,
        );
        assert_eq!(out.resolution, IdentityResolution::Unresolved as i32);
        assert!(out.customer.is_none());
        assert_eq!(j.customers(), 0);
    }
}
