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
//!
//! This module is the operator and its lateness buffer; `config` holds its
//! settings (`[enrich.join]`, [`JoinConfig::new`] for tests and tools),
//! `state` what it keeps per customer.

mod config;
mod state;

use std::collections::{BTreeMap, HashMap, HashSet};

use xoflow_proto::{
    Message as _,
    v1::{EnrichedEvent, Event, JoinCustomerState, Speaker, event::Payload},
};

pub use config::JoinConfig;
use state::CustomerState;

use crate::{
    derive,
    identity::{Links, Resolved},
    sentiment,
};

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

impl Released {
    /// The record written to the enriched topic: key = event id, value =
    /// the encoded `EnrichedEvent`. The stage produces exactly this, and the
    /// golden test compares exactly this, so the two cannot drift apart.
    pub fn into_record(self) -> (String, Vec<u8>) {
        let id = self
            .enriched
            .event
            .as_ref()
            .map(|e| e.event_id.clone())
            .unwrap_or_default();
        (id, self.enriched.encode_to_vec())
    }
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
    pub fn take_changes(&mut self) -> Vec<(String, Option<JoinCustomerState>)> {
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
    pub fn restore(&mut self, customer_id: String, state: Option<JoinCustomerState>) {
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
            if state.apply(&e, &cx, at, cfg) && !self.dirty.contains(&id) {
                self.dirty.insert(id.clone());
            }
            out.order = state.order_context(&e, at, cfg);
            out.session = state.session_context();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::Links;
    use xoflow_proto::v1::{
        CallTranscript, CustomerIdentity, MetricKind, Order, SurveyAnswer, SurveyResponse,
        SurveyTrigger, TranscriptSegment,
    };
    use xoflow_proto::v1::{
        IdentityResolution, OrderMatch, OrderStatus, SentimentLabel, survey_trigger::Ref,
    };

    const DAY_MS: i64 = 86_400_000;

    fn cfg() -> JoinConfig {
        JoinConfig {
            max_orders_per_customer: 8,
            max_customers: 1000,
            ..JoinConfig::new(Duration::from_secs(5)).with_departments(&[("delivery", "logistics")])
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
        let events = xoflow_tools::scenario::journeys(5, 0..3, 1_800_000_000_000);
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
