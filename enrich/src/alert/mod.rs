//! Alerting: the tenant's alert rules checked on every output of the join
//! (every revision of every event) and on silent customers, raising
//! `xoflow.v1.Alert`s for the alert stage to deliver.
//!
//! ```text
//! join outputs ──► Alerter::evaluate ──┐
//!                                      ├──► alerts (to the alerts topic, before the changelog)
//! Join::rescore ─► Alerter::silence ───┘    books (to the changelog, `NUL NUL <tenant US customer>`)
//! ```
//!
//! An alert's id is a hash of (tenant, rule, triggering event id), so every
//! copy of it — a replay after a crash, a later revision of the event — has
//! the same id, and the alert stage and ClickHouse keep one. Per customer
//! (a tenant's: books are keyed like the join's state, `crate::tenancy`) a
//! small book remembers the ids raised (a revision that meets a rule its
//! event already raised does not raise it again) and when each rule last
//! fired, in event time (quiet periods: at most one alert per customer per
//! rule per `quiet_period`). The stage sends a batch's alerts before its
//! changelog: a crash in between replays the batch with the books as they
//! were, raising the same alerts with the same ids again, never fewer.
//!
//! Not raised: an output without a customer (not checked at all: an
//! unresolved event is checked when a link resolves it, a revision up);
//! and, counted in `alerts_suppressed_total`, a customer who asked not to
//! be contacted (`do_not_contact`, on the event or the customer) and a
//! rule still in its quiet period. `rules` holds the configuration and the
//! conditions.

pub mod rules;

use std::collections::{HashMap, HashSet, VecDeque};

use crate::tenancy;
use sha2::{Digest, Sha256};
use xoflow_proto::{
    Message as _,
    v1::{
        Alert, AlertCause, AlertSeverity, EnrichedEvent, JoinAlertQuiet, JoinAlertRaised,
        JoinAlertState,
    },
};

pub use rules::{AlertRules, AlertsSettings, Rule, RulesError};

/// The attribute that carried the do-not-contact statement before
/// `Event.contact_consent`; ingest reads it into the field. Consent is read
/// with `Event::do_not_contact` (field, or this attribute on older events).
pub use xoflow_proto::DO_NOT_CONTACT_ATTRIBUTE as DO_NOT_CONTACT;

/// Alert ids remembered per customer, newest kept.
const MAX_RAISED: usize = 256;

/// Changelog key prefix of a customer's book.
pub const BOOK_PREFIX: [u8; 2] = [0, 0];

/// Counts since the last [`Alerter::take_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertStats {
    pub raised: u64,
    /// A rule held, but an alert with its id was raised before (a later
    /// revision, a replay).
    pub repeated: u64,
    pub quiet: u64,
    pub do_not_contact: u64,
}

/// A customer's alert bookkeeping.
#[derive(Debug, Default, Clone)]
struct Book {
    /// (id prefix, event time), oldest first.
    raised: VecDeque<(u64, i64)>,
    /// Per rule, the event time it last fired at.
    quiet: Vec<(String, i64)>,
}

impl Book {
    fn to_proto(&self) -> JoinAlertState {
        JoinAlertState {
            raised: self
                .raised
                .iter()
                .map(|(id, at)| JoinAlertRaised {
                    id: *id,
                    at_ms: *at,
                })
                .collect(),
            quiet: self
                .quiet
                .iter()
                .map(|(rule, at)| JoinAlertQuiet {
                    rule: rule.clone(),
                    at_ms: *at,
                })
                .collect(),
        }
    }

    fn from_proto(p: JoinAlertState) -> Self {
        Self {
            raised: p.raised.into_iter().map(|r| (r.id, r.at_ms)).collect(),
            quiet: p.quiet.into_iter().map(|q| (q.rule, q.at_ms)).collect(),
        }
    }

    fn newest(&self) -> i64 {
        let r = self.raised.iter().map(|(_, at)| *at).max();
        let q = self.quiet.iter().map(|(_, at)| *at).max();
        r.max(q).unwrap_or(i64::MIN)
    }
}

/// A silent customer offered to the silence rules by the join's
/// re-scoring.
#[derive(Debug)]
pub struct Silent {
    pub customer_id: String,
    /// The customer's latest event, with the customer context as of the
    /// re-scoring time.
    pub output: EnrichedEvent,
    /// Since the last order, and the customer's usual gap between orders.
    pub silent_ms: i64,
    pub gap_ms: i64,
    /// When the last order was placed: with the customer, it names this
    /// silence (a new order ends it).
    pub last_order_ms: i64,
}

/// One join partition's alerting.
#[derive(Debug, Default)]
pub struct Alerter {
    rules: AlertRules,
    /// By the customer's state key (tenant and customer id).
    books: HashMap<String, Book, foldhash::fast::RandomState>,
    dirty: HashSet<String, foldhash::fast::RandomState>,
    alerts: Vec<Alert>,
    stats: AlertStats,
}

/// The customer asked not to be contacted, by this event or before.
pub fn do_not_contact(o: &EnrichedEvent) -> bool {
    let on_event = o
        .event
        .as_ref()
        .and_then(|e| e.do_not_contact())
        .unwrap_or(false);
    on_event || o.customer.as_ref().is_some_and(|c| c.do_not_contact)
}

/// The alert id for these parts: 32 hex characters of their SHA-256.
pub fn alert_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    hex::encode(&digest[..16])
}

/// The first 8 bytes of a hex alert id, as the book keeps it.
fn id_prefix(id: &str) -> u64 {
    let mut b = [0u8; 8];
    // An id made by `alert_id` always decodes.
    let _ = hex::decode_to_slice(&id[..16.min(id.len())], &mut b);
    u64::from_be_bytes(b)
}

impl Alerter {
    pub fn new(rules: AlertRules) -> Self {
        Self {
            rules,
            ..Default::default()
        }
    }

    pub fn rules(&self) -> &AlertRules {
        &self.rules
    }

    /// Whether `tenant` has a rule for the silence re-scoring.
    pub fn wants_silence(&self, tenant: &str) -> bool {
        self.rules
            .tenant(tenant)
            .is_some_and(|t| t.rules.iter().any(|r| r.silent))
    }

    /// Checks every event rule of the output's tenant on each output, in
    /// order. `at` is each output's event time. Rules are read in place:
    /// most outputs meet none, and cost a tenant lookup and each rule's
    /// first condition.
    pub fn evaluate<'a>(
        &mut self,
        outputs: impl IntoIterator<Item = (&'a EnrichedEvent, i64)>,
        now_ms: i64,
    ) {
        if self.rules.is_empty() {
            return;
        }
        let mut hits: Vec<(&'a EnrichedEvent, i64, usize, Vec<String>)> = Vec::new();
        for (o, at) in outputs {
            let Some(e) = o.event.as_ref() else { continue };
            if o.resolved_customer_id.is_empty() {
                continue;
            }
            let Some(tenant) = self.rules.tenant(&e.tenant) else {
                continue;
            };
            for (i, rule) in tenant.rules.iter().enumerate() {
                if rule.silent {
                    continue;
                }
                if let Some(reasons) = rule.check(o) {
                    hits.push((o, at, i, reasons));
                }
            }
        }
        for (o, at, i, reasons) in hits {
            let Some(e) = o.event.as_ref() else { continue };
            let rules = self.rules.clone();
            let Some(tenant) = rules.tenant(&e.tenant) else {
                continue;
            };
            let rule = &tenant.rules[i];
            let id = alert_id(&[&e.tenant, &rule.name, &e.event_id]);
            self.raise(
                rule,
                &tenant.default_department,
                o,
                id,
                at,
                reasons,
                AlertCause::Event,
                None,
                now_ms,
            );
        }
    }

    /// Whether a silence of this customer would raise an alert not raised
    /// yet: some silence rule of `tenant` finds it silent long enough and
    /// its customer conditions hold on `context` (an output carrying only
    /// the customer context). Reads without allocating beyond the ids it
    /// hashes, so the re-scoring builds an output only for customers that
    /// alert.
    pub fn silence_due(
        &self,
        tenant: &str,
        customer: &str,
        ratio: f64,
        last_order_ms: i64,
        context: &EnrichedEvent,
    ) -> bool {
        let Some(t) = self.rules.tenant(tenant) else {
            return false;
        };
        let book = self.books.get(customer);
        let customer_id = tenancy::customer_part(customer);
        let mut scratch = Vec::new();
        t.rules.iter().filter(|r| r.silent).any(|rule| {
            if ratio < rule.min_silence {
                return false;
            }
            scratch.clear();
            if rule.check_customer(context, &mut scratch).is_none() {
                return false;
            }
            let id = alert_id(&[
                tenant,
                &rule.name,
                "silence",
                customer_id,
                &last_order_ms.to_string(),
            ]);
            let prefix = id_prefix(&id);
            !book.is_some_and(|b| b.raised.iter().any(|(x, _)| *x == prefix))
        })
    }

    /// Checks the silence rules on customers the re-scoring found silent.
    pub fn silence(&mut self, silent: Vec<Silent>, now_ms: i64) {
        for s in silent {
            let Some(e) = s.output.event.as_ref() else {
                continue;
            };
            let rules = self.rules.clone();
            let Some(tenant) = rules.tenant(&e.tenant) else {
                continue;
            };
            let ratio = s.silent_ms as f64 / s.gap_ms.max(1) as f64;
            for rule in tenant.rules.iter().filter(|r| r.silent) {
                if ratio < rule.min_silence {
                    continue;
                }
                let silent_days = (s.silent_ms / 86_400_000) as u32;
                let gap_days = (s.gap_ms / 86_400_000).max(1) as u32;
                let mut reasons = vec![format!(
                    "no order for {silent_days} days (usually every {gap_days})"
                )];
                if rule.check_customer(&s.output, &mut reasons).is_none() {
                    continue;
                }
                let id = alert_id(&[
                    &e.tenant,
                    &rule.name,
                    "silence",
                    &s.customer_id,
                    &s.last_order_ms.to_string(),
                ]);
                self.raise(
                    rule,
                    &tenant.default_department,
                    &s.output,
                    id,
                    s.last_order_ms + s.silent_ms,
                    reasons,
                    AlertCause::Silence,
                    Some((silent_days, gap_days)),
                    now_ms,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        rule: &Rule,
        default_department: &str,
        o: &EnrichedEvent,
        id: String,
        at: i64,
        reasons: Vec<String>,
        cause: AlertCause,
        silence: Option<(u32, u32)>,
        now_ms: i64,
    ) {
        let customer = o.resolved_customer_id.as_str();
        // Books are per tenant's customer, like the join's state.
        let key = tenancy::scoped(o.event.as_ref().map_or("", |e| &e.tenant), customer);
        let prefix = id_prefix(&id);
        let book = self.books.get(&key);
        if book.is_some_and(|b| b.raised.iter().any(|(x, _)| *x == prefix)) {
            self.stats.repeated += 1;
            return;
        }
        if do_not_contact(o) {
            self.stats.do_not_contact += 1;
            return;
        }
        if rule.quiet_ms > 0
            && book.is_some_and(|b| {
                b.quiet
                    .iter()
                    .any(|(r, last)| *r == rule.name && (at - last).abs() < rule.quiet_ms)
            })
        {
            self.stats.quiet += 1;
            return;
        }
        let book = self.books.entry(key.clone()).or_default();
        book.raised.push_back((prefix, at));
        if book.raised.len() > MAX_RAISED {
            // Evict the oldest by event time, not by arrival.
            if let Some(i) = (0..book.raised.len()).min_by_key(|i| book.raised[*i].1) {
                book.raised.remove(i);
            }
        }
        match book.quiet.iter_mut().find(|(r, _)| *r == rule.name) {
            Some(q) => q.1 = q.1.max(at),
            None => book.quiet.push((rule.name.clone(), at)),
        }
        self.dirty.insert(key);
        self.stats.raised += 1;
        let department = rule
            .department
            .clone()
            .filter(|d| !d.is_empty())
            .or_else(|| Some(o.owner_department.clone()).filter(|d| !d.is_empty()))
            .unwrap_or_else(|| default_department.to_owned());
        let e = o.event.as_ref();
        let tenant = e.map(|e| e.tenant.clone()).unwrap_or_default();
        let summary = summary(rule, customer, o, &reasons);
        self.alerts.push(Alert {
            alert_id: id,
            tenant,
            rule: rule.name.clone(),
            severity: rule.severity as i32,
            department,
            customer_id: customer.to_owned(),
            cause: cause as i32,
            reasons,
            trigger: Some(o.clone()),
            raised_at: Some(xoflow_proto::from_unix_millis(now_ms)),
            summary,
            silent_days: silence.map(|s| s.0),
            usual_gap_days: silence.map(|s| s.1),
        });
    }

    /// Forgets books with nothing left that could matter: no event they
    /// name can be revised any more (older than `horizon_ms`) and no quiet
    /// period they hold is still running.
    pub fn prune(&mut self, now_event_ms: i64, horizon_ms: i64) {
        let longest_quiet = self
            .rules
            .tenants()
            .filter_map(|t| self.rules.tenant(t))
            .flat_map(|t| t.rules.iter().map(|r| r.quiet_ms))
            .max()
            .unwrap_or(0);
        let before = now_event_ms.saturating_sub(horizon_ms.max(longest_quiet));
        let dirty = &mut self.dirty;
        self.books.retain(|id, b| {
            let keep = b.newest() >= before;
            if !keep {
                dirty.insert(id.clone());
            }
            keep
        });
    }

    /// The alerts raised since the last call.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.alerts)
    }

    pub fn take_stats(&mut self) -> AlertStats {
        std::mem::take(&mut self.stats)
    }

    /// The state keys (see [`tenancy`]) of the customers with a book.
    pub fn customers(&self) -> impl Iterator<Item = &str> {
        self.books.keys().map(String::as_str)
    }

    /// Forgets the book of a customer, by its state key (erasure); its
    /// changelog record becomes a tombstone. Returns whether there was one.
    pub fn forget(&mut self, customer: &str) -> bool {
        let had = self.books.remove(customer).is_some();
        if had {
            self.dirty.insert(customer.to_owned());
        }
        had
    }

    /// Changed books as changelog records (`NUL NUL <state key>`; an empty
    /// value deletes).
    pub fn take_changes(&mut self, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        for id in self.dirty.drain() {
            let value = self
                .books
                .get(&id)
                .map(|b| b.to_proto().encode_to_vec())
                .unwrap_or_default();
            let mut key = Vec::with_capacity(id.len() + 2);
            key.extend_from_slice(&BOOK_PREFIX);
            key.extend_from_slice(id.as_bytes());
            out.push((key, value));
        }
    }

    /// Restores one book from its changelog record (key without the
    /// prefix). Returns whether it decoded.
    pub fn restore(&mut self, customer: &[u8], value: &[u8]) -> bool {
        match JoinAlertState::decode(value) {
            Ok(p) => {
                self.books.insert(
                    String::from_utf8_lossy(customer).into_owned(),
                    Book::from_proto(p),
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Customers with a book.
    pub fn books(&self) -> usize {
        self.books.len()
    }
}

/// `"<severity> <rule>: customer <id> at <touchpoint> (<store>) — <reasons>"`.
fn summary(rule: &Rule, customer: &str, o: &EnrichedEvent, reasons: &[String]) -> String {
    let severity = match rule.severity {
        AlertSeverity::Critical => "CRITICAL",
        AlertSeverity::High => "HIGH",
        AlertSeverity::Medium => "MEDIUM",
        _ => "LOW",
    };
    let e = o.event.as_ref();
    let touchpoint = e
        .and_then(|e| e.touchpoint.as_ref())
        .map(|t| t.touchpoint.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or("unknown touchpoint");
    let store = e
        .and_then(|e| e.location.as_ref())
        .map(|l| l.store_id.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    format!(
        "{severity} {}: customer {customer} at {touchpoint}{store} — {}",
        rule.name,
        reasons.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::v1::{CustomerContext, CxFields, Event, NpsCategory, Touchpoint};

    fn rules() -> AlertRules {
        let settings = AlertsSettings {
            tenants: [(
                "acme".to_string(),
                rules::TenantAlerts {
                    default_department: Some("customer-care".into()),
                    rules: vec![
                        rules::RuleSettings {
                            name: "detractor".into(),
                            severity: "high".into(),
                            nps: vec!["detractor".into()],
                            quiet_period: Some(std::time::Duration::from_secs(7 * 86_400)),
                            ..Default::default()
                        },
                        rules::RuleSettings {
                            name: "silent".into(),
                            severity: "medium".into(),
                            silent: true,
                            churn_risk_at_least: Some(0.3),
                            ..Default::default()
                        },
                    ],
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        AlertRules::compile(&settings).expect("valid")
    }

    fn detractor(id: &str, customer: &str, owner: &str) -> EnrichedEvent {
        EnrichedEvent {
            event: Some(Event {
                event_id: id.into(),
                tenant: "acme".into(),
                touchpoint: Some(Touchpoint {
                    touchpoint: "delivery-survey".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resolved_customer_id: customer.into(),
            owner_department: owner.into(),
            cx: Some(CxFields {
                nps_score: Some(1),
                nps_category: NpsCategory::Detractor as i32,
                ..Default::default()
            }),
            customer: Some(CustomerContext {
                churn_risk: Some(0.8),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn one_alert_per_event_whatever_its_revisions() {
        let mut a = Alerter::new(rules());
        let mut o = detractor("s1", "c1", "logistics");
        a.evaluate([(&o, DAY)], 0);
        o.revision = 1;
        a.evaluate([(&o, DAY)], 0);
        let alerts = a.take_alerts();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].department, "logistics");
        assert_eq!(alerts[0].alert_id, alert_id(&["acme", "detractor", "s1"]));
        assert_eq!(alerts[0].alert_id.len(), 32);
        assert_eq!(a.take_stats().repeated, 1);
    }

    #[test]
    fn quiet_periods_hold_in_event_time_and_survive_a_restore() {
        let mut a = Alerter::new(rules());
        a.evaluate([(&detractor("s1", "c1", ""), 10 * DAY)], 0);
        let mut changes = Vec::new();
        a.take_changes(&mut changes);
        let mut b = Alerter::new(rules());
        for (k, v) in changes {
            assert!(b.restore(&k[2..], &v));
        }
        // Three days later: quiet. Eight days later: raised again. Another
        // customer: unaffected.
        b.evaluate(
            [
                (&detractor("s2", "c1", ""), 13 * DAY),
                (&detractor("s3", "c1", ""), 18 * DAY),
                (&detractor("s4", "c2", ""), 13 * DAY),
            ],
            0,
        );
        let ids: Vec<String> = b
            .take_alerts()
            .into_iter()
            .map(|x| {
                x.trigger
                    .and_then(|t| t.event)
                    .map(|e| e.event_id)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(ids, vec!["s3", "s4"]);
        assert_eq!(b.take_stats().quiet, 1);
    }

    #[test]
    fn do_not_contact_on_the_event_or_the_customer_raises_nothing() {
        let mut a = Alerter::new(rules());
        let mut on_event = detractor("s1", "c1", "");
        on_event
            .event
            .as_mut()
            .expect("event")
            .attributes
            .insert(DO_NOT_CONTACT.into(), "true".into());
        let mut on_customer = detractor("s2", "c2", "");
        if let Some(c) = on_customer.customer.as_mut() {
            c.do_not_contact = true;
        }
        a.evaluate([(&on_event, DAY), (&on_customer, DAY)], 0);
        assert!(a.take_alerts().is_empty());
        assert_eq!(a.take_stats().do_not_contact, 2);
    }

    #[test]
    fn unresolved_outputs_wait_for_their_customer() {
        let mut a = Alerter::new(rules());
        a.evaluate([(&detractor("s1", "", ""), DAY)], 0);
        assert!(a.take_alerts().is_empty());
    }

    #[test]
    fn the_owner_decides_unless_the_rule_names_a_department() {
        let mut a = Alerter::new(rules());
        a.evaluate([(&detractor("s1", "c1", ""), DAY)], 0);
        assert_eq!(
            a.take_alerts()[0].department,
            "customer-care",
            "tenant default"
        );
    }

    #[test]
    fn a_silence_is_alerted_once_until_the_next_order() {
        let mut a = Alerter::new(rules());
        let silent = |last_order_ms: i64| Silent {
            customer_id: "c1".into(),
            output: detractor("s1", "c1", "customer-care"),
            silent_ms: 30 * DAY,
            gap_ms: 10 * DAY,
            last_order_ms,
        };
        a.silence(vec![silent(DAY)], 0);
        a.silence(vec![silent(DAY)], 0);
        let first = a.take_alerts();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].cause, AlertCause::Silence as i32);
        assert_eq!(first[0].silent_days, Some(30));
        assert_eq!(first[0].usual_gap_days, Some(10));
        assert_eq!(
            first[0].reasons,
            vec!["no order for 30 days (usually every 10)", "churn risk 0.80"]
        );
        a.silence(vec![silent(50 * DAY)], 0);
        assert_eq!(a.take_alerts().len(), 1, "a new silence after a new order");
        let mut short = silent(100 * DAY);
        short.silent_ms = 15 * DAY;
        a.silence(vec![short], 0);
        assert!(a.take_alerts().is_empty(), "1.5 gaps < min_silence 2");
    }
}
