//! The alerts the demo's rules must raise on generated data: the closed
//! loop's ground truth.
//!
//! The rules and the journey maps (who owns each touchpoint) are the demo's
//! own configuration, [`DEMO_CONFIG`] (`deploy/config/demo.toml`), which
//! `xoflow demo` lays over the configuration it runs with; the truth is
//! computed from that same text, so the two cannot drift apart.
//!
//! ```text
//! generated events ──► who each belongs to (links, as enrich learns them)
//!                  ──► per customer, in event-time order: the fold of the
//!                      join's state that rules read (orders, lateness, paid
//!                      value in the value window, latest NPS, do-not-contact)
//!                  ──► enrich's own compiled rules checked on each event
//!                  ──► do-not-contact, then the quiet period per customer
//!                      and rule (the earliest event in event time wins)
//!                  ──► RuleTruth: the alerts, per department
//! ```
//!
//! Exact for event rules whose conditions are the event's own fields
//! (kind, touchpoint, stage, NPS, CSAT, CES) or the joined context folded
//! here (`late_by_at_least`, `value_90d_at_least`,
//! `lifetime_value_at_least`, `last_nps_at_most`); rules with other
//! conditions (sentiment and topics of masked text, churn risk, support
//! contacts) and silence rules (which depend on when the re-scoring runs)
//! are listed as [`InexactRule`]s. For silence, the simulation plants
//! customers that must be alerted ([`AlertsTruth::planted_silent`]); for
//! opting out, customers that must never be ([`AlertsTruth::do_not_contact`]).
//!
//! What "exact" assumes: enrich checks each customer's events in
//! event-time order, as it does when they arrive in time order (the demo's
//! arrival order). Out of order, the join repairs itself and re-checks the
//! rules on every revision, raising an alert on the first revision that
//! meets a rule, once; the outcome can then differ in two ways. A rule on
//! the joined context can be met by an early revision and no longer by the
//! final one (a refund earlier in event time arrived after the answer): the
//! alert stays raised. And a quiet period depends on the order: the book
//! keeps the latest event time a rule fired at, and an earlier event
//! checked after a later one is compared with it. Customers for whom the
//! second can matter are named ([`RepeatCustomer`]). Measured on the demo
//! test's data (seed 7, scale 0.3, six days): time order and x-first give
//! exactly these alerts; shuffled gave one more high-value alert and, for
//! two customers with several valuable unhappy answers, another of their
//! answers than the earliest.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use xoflow_enrich::{
    alert::{AlertRules, AlertsSettings, Rule, do_not_contact},
    derive,
    join::{JoinConfig, Owners},
};
use xoflow_ingest::config::TenantConfig;
use xoflow_proto::v1::{
    CustomerContext, EnrichedEvent, Event, OrderContext, OrderStatus, event::Payload,
    survey_trigger::Ref,
};

/// The demo's overlay: journey maps and alert rules of the three brands.
pub const DEMO_CONFIG: &str = include_str!("../../../deploy/config/demo.toml");

/// The parts of [`DEMO_CONFIG`] the truth reads.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// `[ingest.tenants.*]`: the journey maps.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// `[enrich.alerts]` as written.
    pub alerts: AlertsSettings,
}

#[derive(Deserialize)]
struct File {
    ingest: IngestPart,
    enrich: EnrichPart,
}

#[derive(Deserialize)]
struct IngestPart {
    #[serde(default)]
    tenants: BTreeMap<String, TenantConfig>,
}

#[derive(Deserialize)]
struct EnrichPart {
    #[serde(default)]
    alerts: AlertsSettings,
}

impl DemoConfig {
    /// Reads the journey maps and the alert rules from a TOML text.
    pub fn parse(toml: &str) -> Result<Self, String> {
        use figment::providers::Format as _;
        let f: File = figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            tenants: f.ingest.tenants,
            alerts: f.enrich.alerts,
        })
    }

    /// [`DEMO_CONFIG`], parsed.
    pub fn embedded() -> Self {
        // A constant of this crate, parsed and validated by its unit tests
        // (`the_embedded_demo_config_is_valid`).
        Self::parse(DEMO_CONFIG).expect("deploy/config/demo.toml parses")
    }

    /// Who owns each touchpoint, per tenant.
    pub fn owners(&self) -> Owners {
        Owners::new(self.tenants.iter().flat_map(|(tenant, t)| {
            t.touchpoints
                .iter()
                .map(move |(tp, c)| (tenant.as_str(), tp.as_str(), c.department.as_str()))
        }))
    }

    /// Every department of every tenant's journey map, in name order.
    pub fn departments(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .tenants
            .iter()
            .flat_map(|(tenant, t)| {
                t.touchpoints
                    .values()
                    .map(move |c| (tenant.clone(), c.department.clone()))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// What the demo's rules must raise on the generated data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsTruth {
    /// Per event rule predicted exactly.
    pub rules: Vec<RuleTruth>,
    /// Rules the truth cannot predict exactly, and why.
    pub inexact: Vec<InexactRule>,
    /// Customers who ordered at a steady rhythm, answered with a detractor
    /// score and then never ordered again for four of their gaps or more:
    /// each must get an alert from their tenant's silence rule.
    pub planted_silent: Vec<Planted>,
    /// Customers who asked not to be contacted (the attribute
    /// `do_not_contact = "true"` on every event) and gave answers that would
    /// otherwise alert: none may be named by any alert.
    pub do_not_contact: Vec<Planted>,
}

impl AlertsTruth {
    /// Alerts per (tenant, rule, department), for the exact rules.
    pub fn counts(&self) -> BTreeMap<(String, String, String), u64> {
        let mut out = BTreeMap::new();
        for r in &self.rules {
            for a in &r.alerts {
                *out.entry((r.tenant.clone(), r.rule.clone(), a.department.clone()))
                    .or_default() += 1;
            }
        }
        out
    }

    /// The exact rule `rule` of `tenant`.
    pub fn rule(&self, tenant: &str, rule: &str) -> Option<&RuleTruth> {
        self.rules
            .iter()
            .find(|r| r.tenant == tenant && r.rule == rule)
    }
}

/// One event rule's alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTruth {
    pub tenant: String,
    pub rule: String,
    /// 0 when none.
    pub quiet_period_ms: i64,
    /// Events of resolved customers meeting every condition of the rule.
    pub met: u64,
    /// Of those, held back because the customer asked not to be contacted.
    pub do_not_contact: u64,
    /// Of those, held back by the quiet period (another alert of the rule
    /// for the customer less than `quiet_period` before, in event time).
    pub quiet: u64,
    /// The alerts raised, in event-time order.
    pub alerts: Vec<ExpectedAlert>,
    /// Customers with several events meeting the rule (after do-not-contact)
    /// under a quiet period: which of them raise depends on the order enrich
    /// checks them in; `alerts` here assumes event-time order.
    pub repeat_customers: Vec<RepeatCustomer>,
}

/// One alert the rule must raise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedAlert {
    pub department: String,
    pub customer_id: String,
    pub event_id: String,
    /// Event time of the triggering event, Unix milliseconds.
    pub at_ms: i64,
}

/// A customer with several events meeting a rule under a quiet period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatCustomer {
    pub customer_id: String,
    /// Alerts raised when checked in event-time order.
    pub alerts: u64,
    /// The events meeting the rule, in event-time order.
    pub met_event_ids: Vec<String>,
    /// Whether the number of alerts, not only which events raise them,
    /// could differ in another order: some events are within the quiet
    /// period of one another and the whole span is not.
    pub order_sensitive: bool,
}

/// A rule the truth does not predict exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InexactRule {
    pub tenant: String,
    pub rule: String,
    pub why: String,
}

/// A customer the simulation planted for the closed loop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Planted {
    pub tenant: String,
    pub customer_id: String,
    /// What they did, in words.
    pub story: String,
}

/// Why a rule's outcome cannot be computed here, if it cannot.
fn inexact_because(r: &xoflow_enrich::alert::rules::RuleSettings) -> Option<&'static str> {
    if r.silent {
        return Some("a silence rule: raised when the re-scoring runs, on the wall clock");
    }
    if r.sentiment.is_some() || !r.topics.is_empty() {
        return Some("sentiment and topics are scored on the text ingest masked");
    }
    if r.churn_risk_at_least.is_some() {
        return Some("churn risk folds every signal, texts' sentiment included");
    }
    if r.support_contacts_at_least.is_some() {
        return Some("support contacts are not folded here");
    }
    None
}

/// The state of one customer that rules read, folded as enrich folds it
/// (`enrich/src/join/state.rs`, `CustomerState::update`).
#[derive(Debug, Default)]
struct Folded {
    orders: VecDeque<OrderFold>,
    /// (event time, amount) of orders counted as paid, oldest first.
    paid: VecDeque<(i64, i64)>,
    lifetime_value: i64,
    last_nps: Option<i32>,
    do_not_contact: bool,
}

#[derive(Debug, Default, Clone)]
struct OrderFold {
    order_id: String,
    last_ms: i64,
    status: i32,
    amount: i64,
    promised_ms: Option<i64>,
    delivered_ms: Option<i64>,
    late_s: Option<i64>,
    counted_value: bool,
}

impl Folded {
    fn update(&mut self, e: &Event, nps: Option<i32>, at: i64, cfg: &JoinConfig) {
        if let Some(dnc) = e.do_not_contact() {
            self.do_not_contact = dnc;
        }
        match &e.payload {
            Some(Payload::Order(o)) => {
                let i = match self.orders.iter().position(|s| s.order_id == o.order_id) {
                    Some(i) => i,
                    None => {
                        if self.orders.len() >= cfg.max_orders_per_customer.max(1) {
                            self.orders.pop_front();
                        }
                        self.orders.push_back(OrderFold {
                            order_id: o.order_id.clone(),
                            ..Default::default()
                        });
                        self.orders.len() - 1
                    }
                };
                let s = &mut self.orders[i];
                s.last_ms = at;
                s.status = o.status;
                s.amount = o.amount_minor;
                if let Some(p) = &o.promised_delivery_at {
                    s.promised_ms = Some(xoflow_proto::to_unix_millis(p));
                }
                if let Some(d) = &o.delivered_at {
                    s.delivered_ms = Some(xoflow_proto::to_unix_millis(d));
                }
                if let (Some(p), Some(d)) = (s.promised_ms, s.delivered_ms) {
                    s.late_s = Some((d - p) / 1000);
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
                    if let Some(pos) = self.paid.iter().rposition(|(_, a)| *a == o.amount_minor) {
                        self.paid.remove(pos);
                    }
                }
            }
            Some(Payload::Survey(_)) if nps.is_some() => self.last_nps = nps,
            _ => {}
        }
        let value_from = at - cfg.value_window.as_millis() as i64;
        while self.paid.front().is_some_and(|(t, _)| *t < value_from) {
            self.paid.pop_front();
        }
    }

    /// The order an event is about, as the join reads it right after
    /// folding the event: the one it names, else for experience events
    /// the most recent within the order window.
    fn order_context(&self, e: &Event, at: i64, cfg: &JoinConfig) -> Option<OrderContext> {
        let referenced = match &e.payload {
            Some(Payload::Order(o)) => Some(o.order_id.as_str()),
            Some(Payload::Survey(s)) => match s.trigger.as_ref().and_then(|t| t.r#ref.as_ref()) {
                Some(Ref::OrderId(id)) => Some(id.as_str()),
                _ => None,
            },
            _ => None,
        };
        let ctx = |o: &OrderFold| OrderContext {
            order_id: o.order_id.clone(),
            status: o.status,
            amount_minor: o.amount,
            delivery_late_seconds: o.late_s,
            ..Default::default()
        };
        if let Some(id) = referenced
            && let Some(o) = self.orders.iter().find(|o| o.order_id == id)
        {
            return Some(ctx(o));
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
            .map(ctx)
    }

    fn context(&self) -> CustomerContext {
        CustomerContext {
            orders_90d: self.paid.len() as u32,
            value_90d_minor: self.paid.iter().map(|(_, a)| a).sum(),
            lifetime_value_minor: self.lifetime_value,
            last_nps: self.last_nps,
            do_not_contact: self.do_not_contact,
            ..Default::default()
        }
    }
}

/// Weak identifiers in the order enrich tries them (e-mail, phone, social
/// handle, device).
fn weak_ids(e: &Event) -> impl Iterator<Item = &str> {
    e.customer.iter().flat_map(|c| {
        [
            c.email.as_str(),
            c.phone.as_str(),
            c.social_handle.as_str(),
            c.device_id.as_str(),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
    })
}

fn event_ms(e: &Event) -> i64 {
    e.occurred_at
        .as_ref()
        .map(xoflow_proto::to_unix_millis)
        .unwrap_or_default()
}

/// The alerts `cfg`'s rules raise on `events` (valid events, any order).
///
/// Whom each event belongs to is decided as enrich's link table does: an
/// event's own customer id, else a weak identifier that some event with a
/// customer id carries anywhere in the data (a link learnt after the event
/// arrived resolves it then, a revision up). Events no link ever resolves
/// raise nothing.
pub fn expected<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    cfg: &DemoConfig,
    join: &JoinConfig,
) -> AlertsTruth {
    let events: Vec<&Event> = events.into_iter().collect();
    let mut truth = AlertsTruth::default();
    let rules = match AlertRules::compile(&cfg.alerts) {
        Ok(r) => r,
        Err(e) => {
            truth.inexact.push(InexactRule {
                tenant: String::new(),
                rule: String::new(),
                why: format!("the rules do not compile: {e}"),
            });
            return truth;
        }
    };
    let owners = cfg.owners();
    // (tenant, rule index) of every exact rule, with its truth.
    let mut exact: BTreeMap<(String, usize), RuleTruth> = BTreeMap::new();
    for (tenant, t) in &cfg.alerts.tenants {
        for (i, r) in t.rules.iter().enumerate() {
            match inexact_because(r) {
                Some(why) => truth.inexact.push(InexactRule {
                    tenant: tenant.clone(),
                    rule: r.name.clone(),
                    why: why.into(),
                }),
                None => {
                    exact.insert(
                        (tenant.clone(), i),
                        RuleTruth {
                            tenant: tenant.clone(),
                            rule: r.name.clone(),
                            quiet_period_ms: r.quiet_period.map_or(0, |d| d.as_millis() as i64),
                            ..Default::default()
                        },
                    );
                }
            }
        }
    }

    let mut links: HashMap<&str, &str> = HashMap::new();
    for e in &events {
        if let Some(c) = e.customer.as_ref().filter(|c| !c.customer_id.is_empty()) {
            for id in weak_ids(e) {
                links.insert(id, c.customer_id.as_str());
            }
        }
    }
    let mut by_customer: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events.iter().copied() {
        let own = e
            .customer
            .as_ref()
            .map(|c| c.customer_id.as_str())
            .filter(|c| !c.is_empty());
        let who = own.or_else(|| weak_ids(e).find_map(|id| links.get(id).copied()));
        if let Some(who) = who {
            by_customer.entry(who).or_default().push(e);
        }
    }
    let mut customers: Vec<(&str, Vec<&Event>)> = by_customer.into_iter().collect();
    customers.sort_by(|a, b| a.0.cmp(b.0));

    // Per (tenant, rule index): per customer, the event times and ids of
    // the events meeting the rule (after do-not-contact), for the repeat
    // check.
    let mut met_at: BTreeMap<(String, usize), MetByCustomer> = BTreeMap::new();
    for (customer, mut evs) in customers {
        evs.sort_by(|a, b| {
            event_ms(a)
                .cmp(&event_ms(b))
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        let mut state = Folded::default();
        // Per rule name, the latest event time it fired at.
        let mut fired: HashMap<(&str, &str), i64> = HashMap::new();
        for e in evs {
            let at = event_ms(e);
            let cx = derive::cx_fields(e);
            state.update(e, cx.nps_score, at, join);
            let Some(tenant) = rules.tenant(&e.tenant) else {
                continue;
            };
            let touchpoint = e.touchpoint.as_ref().map_or("", |t| t.touchpoint.as_str());
            let owner = owners
                .department(&e.tenant, touchpoint)
                .unwrap_or_default()
                .to_owned();
            let o = EnrichedEvent {
                event: Some(e.clone()),
                resolved_customer_id: customer.to_owned(),
                owner_department: owner.clone(),
                cx: Some(cx),
                order: state.order_context(e, at, join),
                customer: Some(state.context()),
                ..Default::default()
            };
            for (i, rule) in tenant.rules.iter().enumerate() {
                let Some(t) = exact.get_mut(&(e.tenant.clone(), i)) else {
                    continue;
                };
                if rule.check(&o).is_none() {
                    continue;
                }
                t.met += 1;
                if do_not_contact(&o) {
                    t.do_not_contact += 1;
                    continue;
                }
                met_at
                    .entry((e.tenant.clone(), i))
                    .or_default()
                    .entry(customer.to_owned())
                    .or_default()
                    .push((at, e.event_id.clone()));
                let key = (e.tenant.as_str(), rule.name.as_str());
                if quiet(rule, fired.get(&key).copied(), at) {
                    t.quiet += 1;
                    continue;
                }
                let last = fired.entry(key).or_insert(at);
                *last = (*last).max(at);
                t.alerts.push(ExpectedAlert {
                    department: department(rule, &owner, &tenant.default_department),
                    customer_id: customer.to_owned(),
                    event_id: e.event_id.clone(),
                    at_ms: at,
                });
            }
        }
    }
    for (key, mut t) in exact {
        t.alerts.sort_by(|a, b| {
            a.at_ms
                .cmp(&b.at_ms)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        let quiet = t.quiet_period_ms;
        for (customer, met) in met_at.remove(&key).unwrap_or_default() {
            if met.len() < 2 || quiet == 0 {
                continue;
            }
            let span = met.last().map_or(0, |m| m.0) - met[0].0;
            let all_apart = met.windows(2).all(|w| w[1].0 - w[0].0 >= quiet);
            if all_apart {
                // Every one raises, in any order.
                continue;
            }
            let alerts = t
                .alerts
                .iter()
                .filter(|a| a.customer_id == customer)
                .count() as u64;
            t.repeat_customers.push(RepeatCustomer {
                customer_id: customer,
                alerts,
                met_event_ids: met.into_iter().map(|m| m.1).collect(),
                order_sensitive: span >= quiet,
            });
        }
        truth.rules.push(t);
    }
    truth
}

/// Per customer, (event time, event id) of the events meeting a rule.
type MetByCustomer = BTreeMap<String, Vec<(i64, String)>>;

/// Whether `rule` is in its quiet period at `at` for a customer it last
/// fired for at `last` (enrich's `Alerter::raise`).
fn quiet(rule: &Rule, last: Option<i64>, at: i64) -> bool {
    rule.quiet_ms > 0 && last.is_some_and(|last| (at - last).abs() < rule.quiet_ms)
}

/// Who an alert goes to: the rule's department, else the touchpoint's
/// owner, else the tenant's default (enrich's `Alerter::raise`).
fn department(rule: &Rule, owner: &str, default_department: &str) -> String {
    rule.department
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| Some(owner.to_owned()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| default_department.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use xoflow_proto::v1::{
        CustomerIdentity, MetricKind, Order, SurveyAnswer, SurveyResponse, SurveyTrigger,
        Touchpoint,
    };

    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn the_embedded_demo_config_is_valid() {
        let cfg = DemoConfig::embedded();
        assert_eq!(cfg.tenants.len(), 3);
        let rules = AlertRules::compile(&cfg.alerts).expect("rules compile");
        // Every department a rule routes to owns a touchpoint of the tenant
        // (what the binary checks at start-up).
        let owners = cfg.owners();
        for (tenant, department, path) in rules.routes() {
            assert!(owners.defines(&tenant, &department), "{path}: {department}");
        }
        // Every touchpoint the generator emits has an owner.
        use crate::datagen::world::{dine_in, kit, online};
        let all = [
            ("hotpot-house", dine_in::BOOKING),
            ("hotpot-house", dine_in::QUEUE),
            ("hotpot-house", dine_in::ORDER),
            ("hotpot-house", dine_in::SERVING),
            ("hotpot-house", dine_in::DINING),
            ("hotpot-house", dine_in::PAYMENT),
            ("hotpot-house", dine_in::SOCIAL),
            ("hotpot-house", dine_in::CALL),
            ("shopmall-online", online::BROWSE),
            ("shopmall-online", online::CART),
            ("shopmall-online", online::CHECKOUT),
            ("shopmall-online", online::PAYMENT),
            ("shopmall-online", online::DELIVERY),
            ("shopmall-online", online::SUPPORT),
            ("shopmall-online", online::RETURNS),
            ("shopmall-online", online::SOCIAL),
            ("little-scholar", kit::SUBSCRIBE),
            ("little-scholar", kit::DELIVERY),
            ("little-scholar", kit::TOY),
            ("little-scholar", kit::SUPPORT),
            ("little-scholar", kit::SOCIAL),
        ];
        for (tenant, tp) in all {
            let c = &cfg.tenants[tenant].touchpoints[tp.touchpoint];
            assert_eq!(
                (c.journey.as_str(), c.stage.as_str()),
                (tp.journey, tp.stage),
                "{tenant} {}",
                tp.touchpoint
            );
        }
        let touchpoints: usize = cfg.tenants.values().map(|t| t.touchpoints.len()).sum();
        assert_eq!(
            touchpoints,
            all.len(),
            "no touchpoint the generator never emits"
        );
    }

    fn rules(toml: &str) -> DemoConfig {
        DemoConfig::parse(&format!(
            r#"
[ingest.tenants.acme.touchpoints.delivery-survey]
journey = "online-purchase"
stage = "after-sales"
department = "logistics"
{toml}"#
        ))
        .expect("parses")
    }

    fn identity(customer: &str, email: &str) -> Option<CustomerIdentity> {
        Some(CustomerIdentity {
            customer_id: customer.into(),
            email: email.into(),
            ..Default::default()
        })
    }

    fn survey(id: &str, customer: &str, at: i64, nps: i32, order: &str) -> Event {
        Event {
            event_id: id.into(),
            tenant: "acme".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(at)),
            customer: identity(customer, ""),
            touchpoint: Some(Touchpoint {
                touchpoint: "delivery-survey".into(),
                ..Default::default()
            }),
            payload: Some(Payload::Survey(SurveyResponse {
                answers: vec![SurveyAnswer {
                    kind: MetricKind::Nps as i32,
                    score: Some(f64::from(nps)),
                    scale_min: 0,
                    scale_max: 10,
                    ..Default::default()
                }],
                trigger: (!order.is_empty()).then(|| SurveyTrigger {
                    r#ref: Some(Ref::OrderId(order.into())),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn order(
        id: &str,
        customer: &str,
        at: i64,
        order_id: &str,
        status: OrderStatus,
        amount: i64,
        late_ms: Option<i64>,
    ) -> Event {
        Event {
            event_id: id.into(),
            tenant: "acme".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(at)),
            customer: identity(customer, &format!("{customer}@example.com")),
            payload: Some(Payload::Order(Order {
                order_id: order_id.into(),
                status: status as i32,
                amount_minor: amount,
                currency: "CNY".into(),
                promised_delivery_at: late_ms.map(|_| xoflow_proto::from_unix_millis(at)),
                delivered_at: late_ms.map(|l| xoflow_proto::from_unix_millis(at + l)),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn ids(t: &RuleTruth) -> Vec<&str> {
        t.alerts.iter().map(|a| a.event_id.as_str()).collect()
    }

    fn join() -> JoinConfig {
        JoinConfig::new(Duration::from_secs(2))
    }

    const DETRACTOR: &str = r#"
[[enrich.alerts.tenants.acme.rules]]
name = "detractor"
severity = "high"
nps = ["detractor"]
quiet_period = "3days"
"#;

    #[test]
    fn the_quiet_period_keeps_the_earliest_in_event_time_per_customer() {
        let cfg = rules(DETRACTOR);
        // Given out of order: the truth reads event time.
        let events = vec![
            survey("s3", "c1", 5 * DAY, 2, ""),
            survey("s1", "c1", DAY, 3, ""),
            survey("s2", "c1", 3 * DAY, 1, ""),
            survey("s4", "c1", 5 * DAY + 1, 9, ""),
            survey("t1", "c2", 2 * DAY, 0, ""),
        ];
        let t = expected(&events, &cfg, &join());
        let r = t.rule("acme", "detractor").expect("exact");
        // s1 raises; s2 is 2 days after it (quiet); s3 is 4 days after s1,
        // the last raised (raises); c2 is another customer.
        assert_eq!(ids(r), ["s1", "t1", "s3"]);
        assert_eq!((r.met, r.quiet, r.do_not_contact), (4, 1, 0));
        assert_eq!(
            r.alerts[0].department, "logistics",
            "the touchpoint's owner"
        );
        // s1, s2, s3 chain: another order could raise one or two.
        assert_eq!(r.repeat_customers.len(), 1);
        assert!(r.repeat_customers[0].order_sensitive);
        assert_eq!(r.repeat_customers[0].alerts, 2);
        assert_eq!(
            t.counts(),
            BTreeMap::from([(
                (
                    "acme".to_string(),
                    "detractor".to_string(),
                    "logistics".to_string()
                ),
                3
            )])
        );
    }

    #[test]
    fn customers_who_opted_out_raise_nothing_from_their_latest_statement_on() {
        let cfg = rules(DETRACTOR);
        let mut opt_out = order("o1", "c1", DAY, "ord-1", OrderStatus::Paid, 100, None);
        opt_out
            .attributes
            .insert("do_not_contact".into(), "true".into());
        let mut opt_in = order("o2", "c1", 8 * DAY, "ord-2", OrderStatus::Paid, 100, None);
        opt_in
            .attributes
            .insert("do_not_contact".into(), "no".into());
        let mut on_event = survey("s4", "c2", DAY, 1, "");
        on_event
            .attributes
            .insert("do_not_contact".into(), "yes".into());
        let events = vec![
            survey("s0", "c1", 0, 2, ""),
            opt_out,
            survey("s1", "c1", 2 * DAY, 2, ""),
            survey("s2", "c1", 6 * DAY, 2, ""),
            opt_in,
            survey("s3", "c1", 9 * DAY, 2, ""),
            on_event,
        ];
        let t = expected(&events, &cfg, &join());
        let r = t.rule("acme", "detractor").expect("exact");
        assert_eq!(ids(r), ["s0", "s3"]);
        assert_eq!((r.met, r.do_not_contact, r.quiet), (5, 3, 0));
    }

    #[test]
    fn value_counts_paid_orders_in_the_window_less_refunds_at_the_event_time() {
        let cfg = rules(
            r#"
[[enrich.alerts.tenants.acme.rules]]
name = "high-value-detractor"
severity = "high"
kinds = ["survey"]
nps = ["detractor"]
value_90d_at_least = 1000
department = "logistics"
"#,
        );
        let events = vec![
            // Leaves the 90-day window by s3.
            order("o1", "c1", 0, "a", OrderStatus::Paid, 900, None),
            order("o2", "c1", 10 * DAY, "b", OrderStatus::Placed, 600, None),
            order("o3", "c1", 10 * DAY + 1, "b", OrderStatus::Paid, 600, None),
            // Counted once, on payment.
            order("o4", "c1", 12 * DAY, "b", OrderStatus::Delivered, 600, None),
            order("o5", "c1", 20 * DAY, "c", OrderStatus::Paid, 500, None),
            survey("s1", "c1", 30 * DAY, 3, ""),
            // Returned: no longer counts for later answers.
            order("o6", "c1", 40 * DAY, "c", OrderStatus::Returned, 500, None),
            survey("s2", "c1", 41 * DAY, 3, ""),
            survey("s3", "c1", 95 * DAY, 3, ""),
            // After s3 in event time: counts for s4 only, whatever order
            // they are given in.
            order("o7", "c1", 96 * DAY, "d", OrderStatus::Paid, 400, None),
            survey("s4", "c1", 96 * DAY + 1, 3, ""),
        ];
        let t = expected(&events, &cfg, &join());
        let r = t.rule("acme", "high-value-detractor").expect("exact");
        // s1: 900 + 600 + 500; s2: 900 + 600; s3: 600 (the first order left
        // the window); s4: 600 + 400.
        assert_eq!(ids(r), ["s1", "s2", "s4"]);
    }

    #[test]
    fn lateness_comes_from_the_order_the_survey_names() {
        let cfg = rules(
            r#"
[[enrich.alerts.tenants.acme.rules]]
name = "late"
severity = "medium"
kinds = ["survey"]
late_by_at_least = "1day"
nps = ["detractor"]
"#,
        );
        let events = vec![
            order(
                "o1",
                "c1",
                0,
                "late",
                OrderStatus::Delivered,
                100,
                Some(DAY),
            ),
            order(
                "o2",
                "c1",
                1,
                "early",
                OrderStatus::Delivered,
                100,
                Some(-DAY),
            ),
            order(
                "o3",
                "c1",
                2,
                "bit-late",
                OrderStatus::Delivered,
                100,
                Some(DAY - 1000),
            ),
            survey("s1", "c1", DAY, 2, "late"),
            survey("s2", "c1", DAY, 2, "early"),
            survey("s3", "c1", DAY, 2, "bit-late"),
            // Names no order: the most recent one ("bit-late") is joined.
            survey("s4", "c1", DAY, 2, ""),
        ];
        let t = expected(&events, &cfg, &join());
        assert_eq!(ids(t.rule("acme", "late").expect("exact")), ["s1"]);
    }

    #[test]
    fn events_no_link_resolves_raise_nothing_and_links_resolve_in_any_order() {
        let cfg = rules(DETRACTOR);
        let by_email = |id: &str, email: &str, at: i64| {
            let mut s = survey(id, "", at, 1, "");
            s.customer = identity("", email);
            s
        };
        let events = vec![
            by_email("s1", "c1@example.com", DAY),
            by_email("s2", "nobody@example.com", DAY),
            // Teaches the link after the answer, in event time.
            order("o1", "c1", 2 * DAY, "a", OrderStatus::Paid, 100, None),
        ];
        let t = expected(&events, &cfg, &join());
        let r = t.rule("acme", "detractor").expect("exact");
        assert_eq!(ids(r), ["s1"]);
        assert_eq!(r.alerts[0].customer_id, "c1");
    }

    #[test]
    fn silence_and_text_rules_are_named_inexact() {
        let cfg = rules(
            r#"
[[enrich.alerts.tenants.acme.rules]]
name = "silent"
severity = "high"
silent = true
churn_risk_at_least = 0.5
[[enrich.alerts.tenants.acme.rules]]
name = "angry"
severity = "low"
sentiment = "negative"
"#,
        );
        let t = expected(&[], &cfg, &join());
        assert!(t.rules.is_empty());
        let names: Vec<&str> = t.inexact.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(names, ["silent", "angry"]);
    }
}
