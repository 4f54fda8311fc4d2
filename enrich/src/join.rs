//! The X+O join: per-customer state that turns "a score of 3" into "a score
//! of 3 from a customer whose order arrived two days late after two support
//! calls".
//!
//! A pure, synchronous operator: events in, `EnrichedEvent`s out, one per
//! input; no I/O, so the stage decides batching and the tests drive it
//! directly. State per customer is bounded (most recent orders only) and
//! expires by event time (configurable windows).
//!
//! Lateness rule: events are held in a buffer ordered by event time and
//! applied in that order once the partition's watermark (the latest event
//! time seen) is `lateness` past them, or once they have waited `max_hold`
//! in wall-clock time. A survey that arrives before its order, within the
//! bound, therefore meets the order; any interleaving of the same events
//! within the bound gives the same outputs. An event later than the bound
//! is applied on arrival, with the state as it is then.
//!
//! Replays: each customer's state remembers the ids of the events last
//! applied to it, and travels with them through the changelog
//! ([`Join::take_changes`], [`Join::restore`]); an event replayed after a
//! crash is emitted again but not applied twice.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use serde::Deserialize;
use xoflow_proto::v1::{
    ClickAction, CustomerContext, EnrichedEvent, Event, NpsCategory, OrderContext, OrderMatch,
    OrderStatus, SentimentLabel, SessionContext, Speaker, event::Payload, survey_trigger::Ref,
};

use crate::{
    derive,
    identity::{Links, Resolved},
    sentiment,
};

/// Event ids remembered per customer against replays.
const APPLIED_IDS: usize = 64;

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
    /// How far behind the latest event time seen an event may arrive and
    /// still be applied in event-time order.
    #[serde(with = "humantime_serde")]
    pub lateness: Duration,
    /// The longest an event waits in wall-clock time for that, whatever the
    /// event times say (so a quiet partition still emits).
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
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
    /// [`fingerprint`]s of the last events applied.
    applied: VecDeque<u64>,
}

/// An event waiting in the lateness buffer.
#[derive(Debug)]
struct Held {
    event: Event,
    who: Resolved,
    offset: i64,
    arrived_ms: i64,
}

/// An output and the input offset it came from.
#[derive(Debug)]
pub struct Released {
    pub offset: i64,
    pub enriched: EnrichedEvent,
}

/// The join operator's state.
#[derive(Debug)]
pub struct Join {
    cfg: JoinConfig,
    customers: Map<String, CustomerState>,
    /// Links for [`Join::process`], which resolves by itself; the stage
    /// resolves upstream against the global link table instead.
    links: Links,
    /// Events not applied yet, by (event time, event id).
    held: BTreeMap<(i64, String), Held>,
    /// The latest event time offered.
    watermark: i64,
    /// Customers changed (or dropped) since [`Join::take_changes`].
    dirty: HashSet<String, foldhash::fast::RandomState>,
    /// Topic rules per tenant (`[enrich.topics]`).
    topics: sentiment::TopicsConfig,
}

/// Customer-keyed maps: foldhash, not SipHash (hashing was a tenth of the
/// join's time); keys are customer ids, seeded per process.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl Join {
    pub fn new(cfg: JoinConfig) -> Self {
        // Decodes the sentiment model now rather than on the first text.
        sentiment::load();
        Self {
            cfg,
            customers: Map::default(),
            links: Links::default(),
            held: BTreeMap::new(),
            watermark: i64::MIN,
            dirty: HashSet::default(),
            topics: sentiment::TopicsConfig::default(),
        }
    }

    /// Tags topics with these rules instead of the built-in set.
    pub fn with_topics(mut self, topics: sentiment::TopicsConfig) -> Self {
        self.topics = topics;
        self
    }

    /// Customers currently held.
    pub fn customers(&self) -> usize {
        self.customers.len()
    }

    /// Events waiting in the lateness buffer.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The lowest input offset still held: input offsets may be committed
    /// only below it.
    pub fn lowest_held_offset(&self) -> Option<i64> {
        self.held.values().map(|h| h.offset).min()
    }

    /// Resolves with this operator's own links, then enriches at once (no
    /// lateness buffer): for callers that see every event of a customer in
    /// order, such as benchmarks and single-process tools.
    pub fn process(&mut self, e: Event, now_ms: i64) -> EnrichedEvent {
        self.links.learn(&e, |_, _| {});
        let who = self.links.resolve(&e);
        self.enrich(e, who, now_ms)
    }

    /// Puts an event resolved upstream into the lateness buffer.
    pub fn offer(&mut self, e: Event, who: Resolved, offset: i64, now_ms: i64) {
        let at = event_ms(&e, now_ms);
        self.watermark = self.watermark.max(at);
        let key = (at, e.event_id.clone());
        self.held.insert(
            key,
            Held {
                event: e,
                who,
                offset,
                arrived_ms: now_ms,
            },
        );
    }

    /// Applies and emits, in event-time order, the held events that are
    /// due: `lateness` behind the watermark, or held `max_hold` long.
    pub fn release(&mut self, now_ms: i64, out: &mut Vec<Released>) {
        let bound = self.cfg.lateness.as_millis() as i64;
        let hold = self.cfg.max_hold.as_millis() as i64;
        while let Some(entry) = self.held.first_entry() {
            let (at, _) = *entry.key();
            let due = at <= self.watermark.saturating_sub(bound)
                || entry.get().arrived_ms <= now_ms - hold;
            if !due {
                break;
            }
            let h = entry.remove();
            out.push(Released {
                offset: h.offset,
                enriched: self.enrich(h.event, h.who, now_ms),
            });
        }
    }

    /// Applies and emits everything held, in event-time order.
    pub fn drain(&mut self, now_ms: i64, out: &mut Vec<Released>) {
        while let Some((_, h)) = self.held.pop_first() {
            out.push(Released {
                offset: h.offset,
                enriched: self.enrich(h.event, h.who, now_ms),
            });
        }
    }

    /// The state of every customer changed since the last call, for the
    /// changelog: `None` for a customer dropped from memory.
    pub fn take_changes(&mut self) -> Vec<(String, Option<xoflow_proto::v1::JoinCustomerState>)> {
        let mut out: Vec<_> = self
            .dirty
            .drain()
            .map(|id| {
                let state = self.customers.get(&id).map(CustomerState::to_proto);
                (id, state)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores one customer's state read from the changelog (`None`
    /// removes it).
    pub fn restore(
        &mut self,
        customer_id: String,
        state: Option<xoflow_proto::v1::JoinCustomerState>,
    ) {
        match state {
            Some(s) => {
                self.customers
                    .insert(customer_id, CustomerState::from_proto(s));
            }
            None => {
                self.customers.remove(&customer_id);
            }
        }
    }

    /// Enriches one resolved event and applies it to its customer's state
    /// (unless it was applied before).
    pub fn enrich(&mut self, e: Event, who: Resolved, now_ms: i64) -> EnrichedEvent {
        let at = event_ms(&e, now_ms);
        let Resolved {
            customer_id,
            resolution,
        } = who;
        let mut cx = derive::cx_fields(&e);
        let text = experience_text(&e);
        if !text.is_empty() {
            let s = sentiment::score(&text);
            cx.sentiment = Some(s.score);
            cx.sentiment_label = s.label as i32;
            cx.topics = sentiment::topics(self.topics.for_tenant(&e.tenant), &text);
        }
        let stage = e
            .touchpoint
            .as_ref()
            .map(|t| t.stage.as_str())
            .unwrap_or("");
        let owner_department = self.cfg.departments.get(stage).cloned().unwrap_or_default();

        let mut out = EnrichedEvent {
            resolved_customer_id: String::new(),
            resolution: resolution as i32,
            owner_department,
            enriched_at: Some(xoflow_proto::from_unix_millis(now_ms)),
            ..Default::default()
        };
        if let Some(id) = customer_id {
            self.evict_if_full(at);
            let cfg = &self.cfg;
            let state = self.customers.entry(id.clone()).or_default();
            let print = fingerprint(&e.event_id);
            if !state.applied.contains(&print) {
                state.update(&e, &cx, at, cfg);
                if state.applied.len() >= APPLIED_IDS {
                    state.applied.pop_front();
                }
                state.applied.push_back(print);
                if !self.dirty.contains(&id) {
                    self.dirty.insert(id.clone());
                }
            }
            out.order = state.order_context(&e, at, cfg);
            out.session = (!state.session.id.is_empty()).then(|| SessionContext {
                session_id: state.session.id.clone(),
                page_views: state.session.page_views,
                error_pages: state.session.errors,
                abandoned_checkout: state.session.checkout && !state.session.purchased,
            });
            out.customer = Some(state.context(at, cfg));
            out.resolved_customer_id = id;
        } else {
            out.order = derive::own_order(&e);
        }
        out.cx = Some(cx);
        out.event = Some(e);
        out
    }

    fn evict_if_full(&mut self, now: i64) {
        if self.customers.len() < self.cfg.max_customers {
            return;
        }
        let idle = self.cfg.value_window.as_millis() as i64;
        let dirty = &mut self.dirty;
        self.customers.retain(|id, c| {
            let keep = now - c.last_seen_ms < idle;
            if !keep {
                dirty.insert(id.clone());
            }
            keep
        });
    }
}

/// 64-bit FNV-1a of an event id: what a customer's state remembers of the
/// events applied to it (a collision among its last 64 is negligible).
fn fingerprint(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn event_ms(e: &Event, now_ms: i64) -> i64 {
    e.occurred_at
        .as_ref()
        .map(xoflow_proto::to_unix_millis)
        .unwrap_or(now_ms)
}

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
    fn to_proto(&self) -> xoflow_proto::v1::JoinCustomerState {
        use xoflow_proto::v1::{JoinOrderState, JoinPaidOrder, JoinSessionState};
        xoflow_proto::v1::JoinCustomerState {
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
        }
    }

    fn from_proto(p: xoflow_proto::v1::JoinCustomerState) -> Self {
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
        }
    }

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
    use crate::identity::Links;
    use xoflow_proto::v1::IdentityResolution;
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
            lateness: Duration::from_secs(5),
            max_hold: Duration::from_secs(5),
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

    #[test]
    fn state_survives_the_changelog_and_replays_are_not_applied_twice() {
        let events = crate::scenario::journeys(5, 0..3, 1_800_000_000_000);
        let mut links = Links::default();
        for e in &events {
            links.learn(e, |_, _| {});
        }
        let now = 1_900_000_000_000;
        let half = events.len() / 2;
        let mut a = Join::new(cfg());
        for e in &events[..half] {
            a.enrich(e.clone(), links.resolve(e), now);
        }
        // A new owner restores the changelog, then re-reads the last few
        // events the old owner applied but did not commit.
        let mut b = Join::new(cfg());
        for (id, state) in a.take_changes() {
            b.restore(id, state);
        }
        for e in &events[half - 3..half] {
            b.enrich(e.clone(), links.resolve(e), now);
        }
        for e in &events[half..] {
            let want = a.enrich(e.clone(), links.resolve(e), now);
            let got = b.enrich(e.clone(), links.resolve(e), now);
            assert_eq!(got, want, "{}", e.event_id);
        }
    }
}
