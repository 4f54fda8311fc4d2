//! What the join folds per customer, and what it derives from it.
//!
//! [`CustomerState`] is the fold of a customer's events in event-time order:
//! [`CustomerState::update`] applies one event, and the order, session,
//! call and customer context of an event are read off the state right after
//! it was applied. The join keeps two per customer (see `history`): the base,
//! folded from events no longer in the customer's history (it remembers
//! their ids against replays, [`CustomerState::forget`]), and the current
//! state, the base plus the history. The base converts to and from
//! `xoflow.v1.JoinCustomerState` for the changelog. Nothing here does I/O or
//! knows about partitions, history or the lateness buffer.

use std::collections::VecDeque;

use xoflow_proto::v1::{
    CallContext, ClickAction, CustomerContext, CxFields, Event, JoinCallState, JoinCustomerState,
    NpsCategory, OrderContext, OrderMatch, OrderStatus, SentimentLabel, SessionContext,
    event::Payload, survey_trigger::Ref,
};

use super::JoinConfig;

/// Ids of events folded into the base remembered per customer against
/// replays.
const APPLIED_IDS: usize = 64;
/// Support calls remembered per customer, for surveys triggered by one.
const CALLS: usize = 8;

const DAY_MS: i64 = 86_400_000;

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
pub(super) struct CustomerState {
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
    pub(super) last_seen_ms: i64,
    /// [`fingerprint`]s of the last events folded into the base.
    applied: VecDeque<u64>,
    /// The most recent support calls: (time, context).
    calls: VecDeque<(i64, CallContext)>,
    /// The latest `do_not_contact` attribute said yes.
    do_not_contact: bool,
}

impl CustomerState {
    pub(super) fn to_proto(&self) -> JoinCustomerState {
        use xoflow_proto::v1::{JoinOrderState, JoinPaidOrder, JoinSessionState};
        JoinCustomerState {
            orders: self
                .orders
                .iter()
                .map(|o| JoinOrderState {
                    ctx: Some(o.ctx.clone()),
                    placed_ms: o.placed_ms,
                    last_ms: o.last_ms,
                    counted_value: o.counted_value,
                })
                .collect(),
            paid: self
                .paid
                .iter()
                .map(|(at_ms, amount_minor)| JoinPaidOrder {
                    at_ms: *at_ms,
                    amount_minor: *amount_minor,
                })
                .collect(),
            lifetime_value_minor: self.lifetime_value,
            session: Some(JoinSessionState {
                id: self.session.id.clone(),
                page_views: self.session.page_views,
                errors: self.session.errors,
                checkout: self.session.checkout,
                purchased: self.session.purchased,
            }),
            support_at_ms: self.support.iter().copied().collect(),
            last_nps: self.last_nps,
            nps_sum: self.nps_sum,
            nps_answers: self.nps_answers,
            detractors: self.detractors,
            texts: self.texts,
            negative_texts: self.negative_texts,
            delivered: self.delivered,
            late_deliveries: self.late_deliveries,
            returns: self.returns,
            last_seen_ms: self.last_seen_ms,
            applied: self.applied.iter().copied().collect(),
            calls: self
                .calls
                .iter()
                .map(|(at_ms, ctx)| JoinCallState {
                    ctx: Some(ctx.clone()),
                    at_ms: *at_ms,
                })
                .collect(),
            do_not_contact: self.do_not_contact,
        }
    }

    pub(super) fn from_proto(p: JoinCustomerState) -> Self {
        let session = p.session.unwrap_or_default();
        CustomerState {
            orders: p
                .orders
                .into_iter()
                .map(|o| OrderState {
                    ctx: o.ctx.unwrap_or_default(),
                    placed_ms: o.placed_ms,
                    last_ms: o.last_ms,
                    counted_value: o.counted_value,
                })
                .collect(),
            paid: p
                .paid
                .into_iter()
                .map(|o| (o.at_ms, o.amount_minor))
                .collect(),
            lifetime_value: p.lifetime_value_minor,
            session: SessionState {
                id: session.id,
                page_views: session.page_views,
                errors: session.errors,
                checkout: session.checkout,
                purchased: session.purchased,
            },
            support: p.support_at_ms.into(),
            last_nps: p.last_nps,
            nps_sum: p.nps_sum,
            nps_answers: p.nps_answers,
            detractors: p.detractors,
            texts: p.texts,
            negative_texts: p.negative_texts,
            delivered: p.delivered,
            late_deliveries: p.late_deliveries,
            returns: p.returns,
            last_seen_ms: p.last_seen_ms,
            applied: p.applied.into(),
            calls: p
                .calls
                .into_iter()
                .map(|c| (c.at_ms, c.ctx.unwrap_or_default()))
                .collect(),
            do_not_contact: p.do_not_contact,
        }
    }

    /// Whether `event_id` was folded into this state and forgotten (see
    /// [`CustomerState::forget`]).
    pub(super) fn folded(&self, event_id: &str) -> bool {
        // Most customers never had an event leave their history, and every
        // in-order event asks: no fingerprint to compute for them.
        !self.applied.is_empty() && self.applied.contains(&fingerprint(event_id.as_bytes()))
    }

    /// Whether it folded in more events than it recognises ([`Self::folded`]):
    /// a replay of one of the others is taken for a new event.
    pub(super) fn forgot_some(&self) -> bool {
        self.applied.len() >= APPLIED_IDS
    }

    /// Remembers that `event_id` was folded in, so that a replay of it is
    /// recognised once its history entry is gone.
    pub(super) fn forget(&mut self, event_id: &[u8]) {
        if self.applied.len() >= APPLIED_IDS {
            self.applied.pop_front();
        }
        self.applied.push_back(fingerprint(event_id));
    }

    /// Folds one event in.
    pub(super) fn update(&mut self, e: &Event, cx: &CxFields, at: i64, cfg: &JoinConfig) {
        self.last_seen_ms = self.last_seen_ms.max(at);
        if let Some(dnc) = e.do_not_contact() {
            // Folded in event-time order: the latest statement wins.
            self.do_not_contact = dnc;
        }
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
            Some(Payload::Call(c)) => {
                self.support.push_back(at);
                if self.calls.len() >= CALLS {
                    self.calls.pop_front();
                }
                let started = c.started_at.or(e.occurred_at);
                let duration = match (&c.started_at, &c.ended_at) {
                    (Some(s), Some(e)) => {
                        let ms = xoflow_proto::to_unix_millis(e) - xoflow_proto::to_unix_millis(s);
                        u32::try_from(ms.max(0) / 1000).unwrap_or(u32::MAX)
                    }
                    _ => 0,
                };
                self.calls.push_back((
                    at,
                    CallContext {
                        call_id: c.call_id.clone(),
                        started_at: started,
                        queue: c.queue.clone(),
                        agent_id: c.agent_id.clone(),
                        duration_seconds: duration,
                        disposition: c.disposition.clone(),
                        sentiment_label: cx.sentiment_label,
                    },
                ));
            }
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
    pub(super) fn order_context(
        &self,
        e: &Event,
        at: i64,
        cfg: &JoinConfig,
    ) -> Option<OrderContext> {
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

    /// The support call a survey names (`trigger.call_id`), once applied.
    pub(super) fn call_context(&self, e: &Event) -> Option<CallContext> {
        let Some(Payload::Survey(s)) = &e.payload else {
            return None;
        };
        let Some(Ref::CallId(id)) = s.trigger.as_ref().and_then(|t| t.r#ref.as_ref()) else {
            return None;
        };
        self.calls
            .iter()
            .rev()
            .find(|(_, c)| c.call_id == *id)
            .map(|(_, c)| c.clone())
    }

    /// Whether `e` names an order or a call this state does not know (yet).
    pub(super) fn unmet_reference(&self, e: &Event) -> bool {
        let Some(Payload::Survey(s)) = &e.payload else {
            return false;
        };
        match s.trigger.as_ref().and_then(|t| t.r#ref.as_ref()) {
            Some(Ref::OrderId(id)) => !self.orders.iter().any(|o| o.ctx.order_id == *id),
            Some(Ref::CallId(id)) => !self.calls.iter().any(|(_, c)| c.call_id == *id),
            _ => false,
        }
    }

    pub(super) fn context(&self, at: i64, _cfg: &JoinConfig) -> CustomerContext {
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
            churn_risk: Some(self.churn_risk(at)),
            do_not_contact: self.do_not_contact,
        }
    }

    /// How long the customer has not ordered at `at`, against their own
    /// rhythm: (time since the last order, usual gap between orders, when
    /// the last order was placed). `None` before a second order (no rhythm
    /// yet). The usual gap is the mean over the orders remembered, at least
    /// a day (two orders on one day are not a rhythm of minutes).
    pub(super) fn silence(&self, at: i64) -> Option<(i64, i64, i64)> {
        let mut first = i64::MAX;
        let mut last = i64::MIN;
        let mut n = 0i64;
        for o in &self.orders {
            if o.placed_ms <= at {
                first = first.min(o.placed_ms);
                last = last.max(o.placed_ms);
                n += 1;
            }
        }
        if n < 2 {
            return None;
        }
        let gap = ((last - first) / (n - 1)).max(DAY_MS);
        Some((at - last, gap, last))
    }

    /// The session context, once the customer has a session.
    pub(super) fn session_context(&self) -> Option<SessionContext> {
        (!self.session.id.is_empty()).then(|| SessionContext {
            session_id: self.session.id.clone(),
            page_views: self.session.page_views,
            error_pages: self.session.errors,
            abandoned_checkout: self.session.checkout && !self.session.purchased,
        })
    }

    /// Churn risk in [0, 1] from the signals that predict leaving. Shares,
    /// not counts, so a busy loyal customer does not look riskier than a
    /// quiet unhappy one: how low their NPS runs (weighted by how many
    /// answers back it), the share of their words that are negative, support
    /// contacts, the share of their deliveries that came late or went
    /// back, and silence: time without an order beyond the customer's own
    /// usual gap (none within it; up to three gaps beyond it count).
    fn churn_risk(&self, at: i64) -> f64 {
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
            + 0.6 * share(self.returns, self.delivered.max(self.returns))
            + 0.5
                * self.silence(at).map_or(0.0, |(silent, gap, _)| {
                    (silent as f64 / gap as f64 - 1.0).clamp(0.0, 3.0)
                });
        1.0 - (-x).exp()
    }
}

/// 64-bit FNV-1a of an event id: what a customer's state remembers of the
/// events applied to it (a collision among its last 64 is negligible).
fn fingerprint(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use xoflow_proto::{
        Message as _, from_unix_millis,
        v1::{
            CallTranscript, ClickEvent, ContactConsent, EventFoldView, LineItem, Order, SocialPost,
            SurveyAnswer, SurveyResponse, SurveyTrigger, TranscriptSegment,
        },
    };

    use super::*;

    /// Events of every kind with every field the state reads, and texts,
    /// identifiers and items it does not.
    fn events() -> Vec<(Event, CxFields)> {
        const T: i64 = 1_750_000_000_000;
        let at = |m: i64| Some(from_unix_millis(T + m * 60_000));
        let base = |id: &str, m: i64, payload: Payload| Event {
            event_id: id.into(),
            tenant: "shop".into(),
            source: "test".into(),
            occurred_at: at(m),
            attributes: [("store".to_owned(), "berlin-3".to_owned())].into(),
            payload: Some(payload),
            ..Default::default()
        };
        let order = |id: &str, status: OrderStatus, delivered: Option<i64>| Order {
            order_id: id.into(),
            status: status as i32,
            amount_minor: 12_990,
            currency: "EUR".into(),
            items: vec![LineItem {
                sku: "sku-1".into(),
                name: "kettle".into(),
                quantity: 1,
                unit_price_minor: 12_990,
            }],
            promised_delivery_at: at(60),
            delivered_at: delivered.and_then(at),
        };
        let click = |session: &str, action: ClickAction| ClickEvent {
            session_id: session.into(),
            url: "https://shop.example/cart".into(),
            path: "/cart".into(),
            action: action as i32,
            referrer: "https://search.example".into(),
            user_agent: "Mozilla/5.0".into(),
            duration_ms: 1_200,
        };
        let mut withdrawn = base(
            "e8",
            8,
            Payload::Social(SocialPost {
                platform: "x".into(),
                text: "never again".into(),
                ..Default::default()
            }),
        );
        withdrawn.contact_consent = ContactConsent::Withdrawn as i32;
        let mut said_by_attribute = base("e9", 9, Payload::Click(click("s2", ClickAction::View)));
        said_by_attribute
            .attributes
            .insert("do_not_contact".into(), "yes".into());
        let mut granted = base("e10", 10, Payload::Click(click("s2", ClickAction::Error)));
        granted.contact_consent = ContactConsent::Granted as i32;
        let negative = CxFields {
            sentiment: Some(-0.8),
            sentiment_label: SentimentLabel::Negative as i32,
            ..Default::default()
        };
        let detractor = CxFields {
            nps_score: Some(3),
            nps_category: NpsCategory::Detractor as i32,
            ..Default::default()
        };
        vec![
            (
                base(
                    "e1",
                    1,
                    Payload::Order(order("o1", OrderStatus::Placed, None)),
                ),
                CxFields::default(),
            ),
            (
                base(
                    "e2",
                    2,
                    Payload::Order(order("o1", OrderStatus::Paid, None)),
                ),
                CxFields::default(),
            ),
            (
                base("e3", 3, Payload::Click(click("s1", ClickAction::Checkout))),
                CxFields::default(),
            ),
            (
                base("e4", 4, Payload::Click(click("s1", ClickAction::Purchase))),
                CxFields::default(),
            ),
            (
                base(
                    "e5",
                    90,
                    Payload::Order(order("o1", OrderStatus::Delivered, Some(90))),
                ),
                CxFields::default(),
            ),
            (
                base(
                    "e6",
                    95,
                    Payload::Call(CallTranscript {
                        call_id: "call-1".into(),
                        agent_id: "agent-7".into(),
                        queue: "billing".into(),
                        started_at: at(95),
                        ended_at: at(101),
                        segments: vec![TranscriptSegment {
                            text: "my kettle arrived late".into(),
                            ..Default::default()
                        }],
                        disposition: "refund".into(),
                        language: "en".into(),
                    }),
                ),
                negative.clone(),
            ),
            (
                base(
                    "e7",
                    102,
                    Payload::Survey(SurveyResponse {
                        survey_id: "nps".into(),
                        answers: vec![SurveyAnswer {
                            question_id: "q1".into(),
                            score: Some(3.0),
                            scale_max: 10,
                            text: "slow".into(),
                            ..Default::default()
                        }],
                        comment: "late and rude".into(),
                        language: "en".into(),
                        trigger: Some(SurveyTrigger {
                            r#ref: Some(Ref::OrderId("o1".into())),
                        }),
                    }),
                ),
                detractor,
            ),
            (withdrawn, negative),
            (said_by_attribute, CxFields::default()),
            (granted, CxFields::default()),
            (
                base(
                    "e11",
                    120,
                    Payload::Order(order("o1", OrderStatus::Returned, Some(90))),
                ),
                CxFields::default(),
            ),
        ]
    }

    /// A base folded from the events' encodings read as `EventFoldView`
    /// is the base folded from the whole events: the view holds every
    /// field `update` reads.
    #[test]
    fn the_fold_view_folds_as_the_whole_event() {
        let cfg = JoinConfig::new(std::time::Duration::from_secs(2));
        let (mut whole, mut view) = (CustomerState::default(), CustomerState::default());
        for (i, (e, cx)) in events().iter().enumerate() {
            let at = xoflow_proto::to_unix_millis(e.occurred_at.as_ref().expect("a time"));
            let bytes = e.encode_to_vec();
            let folded = Event::from(EventFoldView::decode(&*bytes).expect("decodes"));
            assert!(
                folded.encoded_len() < bytes.len(),
                "event {i}: the view skips fields"
            );
            whole.update(e, cx, at, &cfg);
            view.update(&folded, cx, at, &cfg);
            whole.forget(e.event_id.as_bytes());
            view.forget(e.event_id.as_bytes());
            assert_eq!(view.to_proto(), whole.to_proto(), "after event {i}");
        }
        // The events reached every branch that reads them.
        assert_eq!((whole.lifetime_value, whole.returns), (0, 1));
        assert_eq!((whole.delivered, whole.late_deliveries), (1, 1));
        assert_eq!(
            (whole.detractors, whole.texts, whole.negative_texts),
            (1, 2, 2)
        );
        assert_eq!((whole.calls.len(), whole.session.errors), (1, 1));
        assert!(!whole.do_not_contact);
    }
}
