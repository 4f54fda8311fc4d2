//! Alert rules per tenant (`[enrich.alerts]`): which enriched events, and
//! which silent customers, someone must act on, how urgently, and who.
//!
//! ```text
//! [enrich.alerts]
//!   rescore_interval                     how often customers are re-scored for silence
//!   tenants.<tenant>.default_department  owner when the touchpoint has none
//!   [[tenants.<tenant>.rules]]           name, severity, department, quiet_period,
//!                                        silent, and conditions (all must hold)
//! ```
//!
//! A rule's conditions are checked against one output of the join (any
//! revision): the event's own fields (kind, touchpoint, stage, scores,
//! sentiment, topics) and its joined context (customer value, support
//! contacts, churn risk, the order's lateness). Each condition that holds
//! gives one line of the alert's `reasons`. A `silent` rule is checked only
//! by the silence re-scoring, against the customer's latest event with the
//! customer context as of the re-scoring. Rules are checked and compiled
//! when the configuration is read: a bad rule stops start-up with its
//! setting's path; that the departments it routes to exist is checked
//! against the tenants' journey config by the binary (it sees both).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use xoflow_proto::{
    EventKind,
    v1::{AlertSeverity, EnrichedEvent, NpsCategory, SentimentLabel},
};

/// Longest rule name: it is part of the alert's id and a ClickHouse column.
const MAX_NAME: usize = 64;

/// `[enrich.alerts]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSettings {
    /// How often every customer held is re-scored for silence.
    #[serde(with = "humantime_serde", default = "default_rescore_interval")]
    pub rescore_interval: Duration,
    /// Rules per tenant.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantAlerts>,
}

impl Default for AlertsSettings {
    fn default() -> Self {
        Self {
            rescore_interval: default_rescore_interval(),
            tenants: BTreeMap::new(),
        }
    }
}

const fn default_rescore_interval() -> Duration {
    Duration::from_secs(60)
}

/// One tenant's alerting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantAlerts {
    /// Where an alert goes when the rule names no department and the
    /// event's touchpoint has no owner in the journey config. Without it
    /// such an alert is still raised and stored, with no department.
    #[serde(default)]
    pub default_department: Option<String>,
    /// The rules, each checked on its own (an event can raise several).
    #[serde(default)]
    pub rules: Vec<RuleSettings>,
}

/// One alert rule as written. Every condition given must hold; at least
/// one must be given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Unique within the tenant: `[a-z0-9-]`, at most 64 characters.
    pub name: String,
    /// low, medium, high or critical.
    pub severity: String,
    /// The department to alert instead of the touchpoint's owner.
    #[serde(default)]
    pub department: Option<String>,
    /// At most one alert per customer per rule within this span of event
    /// time (contact-fatigue control); none by default.
    #[serde(with = "humantime_serde", default)]
    pub quiet_period: Option<Duration>,
    /// Checked by the silence re-scoring instead of on events: the customer
    /// has not ordered for `min_silence` times their usual gap.
    #[serde(default)]
    pub silent: bool,
    /// With `silent`: how many of the customer's usual gaps between orders
    /// must have passed since the last one (default 2).
    #[serde(default)]
    pub min_silence: Option<f64>,
    /// Event kinds: survey, call, social, order, click.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Touchpoint names (the event's `touchpoint.touchpoint`).
    #[serde(default)]
    pub touchpoints: Vec<String>,
    /// Journey stages (the event's `touchpoint.stage`).
    #[serde(default)]
    pub stages: Vec<String>,
    /// NPS categories of the event's answer: detractor, passive, promoter.
    #[serde(default)]
    pub nps: Vec<String>,
    /// The event's NPS answer (0-10) at or below this.
    #[serde(default)]
    pub nps_at_most: Option<i32>,
    /// The customer's latest NPS answer at or below this.
    #[serde(default)]
    pub last_nps_at_most: Option<i32>,
    /// The event's CSAT answer, on its native scale, at or below this.
    #[serde(default)]
    pub csat_at_most: Option<f64>,
    /// The event's CES answer, on its native scale, at or below this.
    #[serde(default)]
    pub ces_at_most: Option<f64>,
    /// The sentiment of the event's text: negative, neutral or positive.
    #[serde(default)]
    pub sentiment: Option<String>,
    /// Any of these topics found in the event's text.
    #[serde(default)]
    pub topics: Vec<String>,
    /// The customer's churn risk (0-1) at or above this.
    #[serde(default)]
    pub churn_risk_at_least: Option<f64>,
    /// The customer's paid value over the value window (90 days), in minor
    /// units of the tenant's currency, at or above this.
    #[serde(default)]
    pub value_90d_at_least: Option<i64>,
    /// The customer's lifetime value, in minor units, at or above this.
    #[serde(default)]
    pub lifetime_value_at_least: Option<i64>,
    /// The joined order was delivered late by at least this much (`0s`:
    /// late at all).
    #[serde(with = "humantime_serde", default)]
    pub late_by_at_least: Option<Duration>,
    /// The customer's support contacts in the support window (30 days) at
    /// or above this.
    #[serde(default)]
    pub support_contacts_at_least: Option<u32>,
}

/// A rule or setting that cannot work, with the setting's path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct RulesError {
    pub path: String,
    pub problem: String,
}

fn err(path: &str, problem: impl Into<String>) -> RulesError {
    RulesError {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// The compiled rules of every tenant; cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertRules(Arc<Compiled>);

impl Default for AlertRules {
    /// No rules.
    fn default() -> Self {
        Self(Arc::new(Compiled {
            rescore_interval: default_rescore_interval(),
            tenants: HashMap::new(),
        }))
    }
}

#[derive(Debug, Default)]
struct Compiled {
    rescore_interval: Duration,
    tenants: HashMap<String, Tenant>,
}

/// One tenant's compiled rules.
#[derive(Debug, Default)]
pub struct Tenant {
    pub default_department: String,
    pub rules: Vec<Rule>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub severity: AlertSeverity,
    pub department: Option<String>,
    /// In milliseconds; 0 when none.
    pub quiet_ms: i64,
    pub silent: bool,
    pub min_silence: f64,
    kinds: Vec<EventKind>,
    touchpoints: Vec<String>,
    stages: Vec<String>,
    nps: Vec<NpsCategory>,
    nps_at_most: Option<i32>,
    last_nps_at_most: Option<i32>,
    csat_at_most: Option<f64>,
    ces_at_most: Option<f64>,
    sentiment: Option<SentimentLabel>,
    topics: Vec<String>,
    churn_risk_at_least: Option<f64>,
    value_90d_at_least: Option<i64>,
    lifetime_value_at_least: Option<i64>,
    late_by_at_least: Option<i64>,
    support_contacts_at_least: Option<u32>,
}

impl<'de> Deserialize<'de> for AlertRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let settings = AlertsSettings::deserialize(d)?;
        Self::compile(&settings).map_err(serde::de::Error::custom)
    }
}

impl AlertRules {
    /// Checks and compiles the settings; errors name the setting's path.
    pub fn compile(s: &AlertsSettings) -> Result<Self, RulesError> {
        if s.rescore_interval < Duration::from_secs(1) {
            return Err(err(
                "enrich.alerts.rescore_interval",
                "at least 1s (each re-scoring visits every customer held)",
            ));
        }
        let mut tenants = HashMap::new();
        for (name, t) in &s.tenants {
            let path = format!("enrich.alerts.tenants.{name}");
            if name.trim().is_empty() {
                return Err(err(&path, "empty tenant id"));
            }
            let mut rules: Vec<Rule> = Vec::with_capacity(t.rules.len());
            for (i, r) in t.rules.iter().enumerate() {
                let rule = Rule::compile(&format!("{path}.rules[{i}]"), r)?;
                if rules.iter().any(|x| x.name == rule.name) {
                    return Err(err(
                        &format!("{path}.rules[{i}].name"),
                        format!("\"{}\" is used by an earlier rule", rule.name),
                    ));
                }
                rules.push(rule);
            }
            let default_department = t.default_department.clone().unwrap_or_default();
            if t.default_department.is_some() && default_department.trim().is_empty() {
                return Err(err(&format!("{path}.default_department"), "empty"));
            }
            tenants.insert(
                name.clone(),
                Tenant {
                    default_department,
                    rules,
                },
            );
        }
        Ok(Self(Arc::new(Compiled {
            rescore_interval: s.rescore_interval,
            tenants,
        })))
    }

    /// No tenant has a rule.
    pub fn is_empty(&self) -> bool {
        self.0.tenants.values().all(|t| t.rules.is_empty())
    }

    /// A tenant's rules, if it has any.
    pub fn tenant(&self, tenant: &str) -> Option<&Tenant> {
        self.0.tenants.get(tenant).filter(|t| !t.rules.is_empty())
    }

    /// Whether any tenant has a rule checked by the silence re-scoring.
    pub fn any_silent(&self) -> bool {
        self.0
            .tenants
            .values()
            .any(|t| t.rules.iter().any(|r| r.silent))
    }

    pub fn rescore_interval(&self) -> Duration {
        self.0.rescore_interval
    }

    /// Every department a rule or a tenant default routes to, with the
    /// setting's path: for the start-up check against the journey config.
    pub fn routes(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut names: Vec<_> = self.0.tenants.keys().collect();
        names.sort();
        for name in names {
            let t = &self.0.tenants[name];
            let path = format!("enrich.alerts.tenants.{name}");
            if !t.default_department.is_empty() {
                out.push((
                    name.clone(),
                    t.default_department.clone(),
                    format!("{path}.default_department"),
                ));
            }
            for (i, r) in t.rules.iter().enumerate() {
                if let Some(d) = &r.department {
                    out.push((
                        name.clone(),
                        d.clone(),
                        format!("{path}.rules[{i}].department"),
                    ));
                }
            }
        }
        out
    }

    /// Tenants with alerting configured.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.0.tenants.keys().map(String::as_str)
    }
}

fn parse_list<T>(
    path: &str,
    values: &[String],
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, RulesError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            parse(v).ok_or_else(|| err(&format!("{path}[{i}]"), format!("unknown {what} \"{v}\"")))
        })
        .collect()
}

fn names(path: &str, values: &[String]) -> Result<Vec<String>, RulesError> {
    for (i, v) in values.iter().enumerate() {
        if v.trim().is_empty() {
            return Err(err(&format!("{path}[{i}]"), "empty"));
        }
    }
    Ok(values.to_vec())
}

impl Rule {
    fn compile(path: &str, r: &RuleSettings) -> Result<Self, RulesError> {
        let name_ok = !r.name.is_empty()
            && r.name.len() <= MAX_NAME
            && r.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(err(
                &format!("{path}.name"),
                format!("\"{}\": 1-{MAX_NAME} characters of a-z, 0-9 and -", r.name),
            ));
        }
        let severity = match r.severity.as_str() {
            "low" => AlertSeverity::Low,
            "medium" => AlertSeverity::Medium,
            "high" => AlertSeverity::High,
            "critical" => AlertSeverity::Critical,
            other => {
                return Err(err(
                    &format!("{path}.severity"),
                    format!("\"{other}\": one of low, medium, high, critical"),
                ));
            }
        };
        if let Some(d) = &r.department
            && d.trim().is_empty()
        {
            return Err(err(&format!("{path}.department"), "empty"));
        }
        let kinds = parse_list(&format!("{path}.kinds"), &r.kinds, "kind", EventKind::parse)?;
        let nps = parse_list(
            &format!("{path}.nps"),
            &r.nps,
            "NPS category",
            |s| match s {
                "detractor" => Some(NpsCategory::Detractor),
                "passive" => Some(NpsCategory::Passive),
                "promoter" => Some(NpsCategory::Promoter),
                _ => None,
            },
        )?;
        let sentiment = match r.sentiment.as_deref() {
            None => None,
            Some("negative") => Some(SentimentLabel::Negative),
            Some("neutral") => Some(SentimentLabel::Neutral),
            Some("positive") => Some(SentimentLabel::Positive),
            Some(other) => {
                return Err(err(
                    &format!("{path}.sentiment"),
                    format!("\"{other}\": one of negative, neutral, positive"),
                ));
            }
        };
        for (field, v) in [
            ("nps_at_most", r.nps_at_most),
            ("last_nps_at_most", r.last_nps_at_most),
        ] {
            if let Some(v) = v
                && !(0..=10).contains(&v)
            {
                return Err(err(&format!("{path}.{field}"), format!("{v}: 0 to 10")));
            }
        }
        if let Some(v) = r.churn_risk_at_least
            && !(0.0..=1.0).contains(&v)
        {
            return Err(err(
                &format!("{path}.churn_risk_at_least"),
                format!("{v}: 0 to 1"),
            ));
        }
        for (field, v) in [
            ("csat_at_most", r.csat_at_most),
            ("ces_at_most", r.ces_at_most),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(err(&format!("{path}.{field}"), "not a number"));
            }
        }
        let min_silence = r.min_silence.unwrap_or(2.0);
        if r.min_silence.is_some() && !r.silent {
            return Err(err(
                &format!("{path}.min_silence"),
                "only with silent = true",
            ));
        }
        if !(1.0..=100.0).contains(&min_silence) {
            return Err(err(
                &format!("{path}.min_silence"),
                format!("{min_silence}: 1 to 100"),
            ));
        }
        let rule = Rule {
            name: r.name.clone(),
            severity,
            department: r.department.clone(),
            quiet_ms: r.quiet_period.map_or(0, |d| d.as_millis() as i64),
            silent: r.silent,
            min_silence,
            kinds,
            touchpoints: names(&format!("{path}.touchpoints"), &r.touchpoints)?,
            stages: names(&format!("{path}.stages"), &r.stages)?,
            nps,
            nps_at_most: r.nps_at_most,
            last_nps_at_most: r.last_nps_at_most,
            csat_at_most: r.csat_at_most,
            ces_at_most: r.ces_at_most,
            sentiment,
            topics: names(&format!("{path}.topics"), &r.topics)?,
            churn_risk_at_least: r.churn_risk_at_least,
            value_90d_at_least: r.value_90d_at_least,
            lifetime_value_at_least: r.lifetime_value_at_least,
            late_by_at_least: r.late_by_at_least.map(|d| d.as_secs() as i64),
            support_contacts_at_least: r.support_contacts_at_least,
        };
        if rule.silent {
            // Silence is about the customer, not one event's answer.
            let event_fields = [
                ("kinds", !rule.kinds.is_empty()),
                ("touchpoints", !rule.touchpoints.is_empty()),
                ("stages", !rule.stages.is_empty()),
                ("nps", !rule.nps.is_empty()),
                ("nps_at_most", rule.nps_at_most.is_some()),
                ("csat_at_most", rule.csat_at_most.is_some()),
                ("ces_at_most", rule.ces_at_most.is_some()),
                ("sentiment", rule.sentiment.is_some()),
                ("topics", !rule.topics.is_empty()),
                ("late_by_at_least", rule.late_by_at_least.is_some()),
            ];
            if let Some((f, _)) = event_fields.iter().find(|(_, set)| *set) {
                return Err(err(
                    &format!("{path}.{f}"),
                    "a silent rule checks the customer, not an event: use churn_risk_at_least, \
                     last_nps_at_most, value_90d_at_least, lifetime_value_at_least or \
                     support_contacts_at_least",
                ));
            }
            if rule.churn_risk_at_least.is_none() {
                return Err(err(
                    &format!("{path}.churn_risk_at_least"),
                    "required for a silent rule",
                ));
            }
        } else if !rule.has_condition() {
            return Err(err(path, "no condition: it would alert on every event"));
        }
        Ok(rule)
    }

    fn has_condition(&self) -> bool {
        !self.kinds.is_empty()
            || !self.touchpoints.is_empty()
            || !self.stages.is_empty()
            || !self.nps.is_empty()
            || self.nps_at_most.is_some()
            || self.last_nps_at_most.is_some()
            || self.csat_at_most.is_some()
            || self.ces_at_most.is_some()
            || self.sentiment.is_some()
            || !self.topics.is_empty()
            || self.churn_risk_at_least.is_some()
            || self.value_90d_at_least.is_some()
            || self.lifetime_value_at_least.is_some()
            || self.late_by_at_least.is_some()
            || self.support_contacts_at_least.is_some()
    }

    /// The reasons this output meets the rule, one per condition checked;
    /// `None` when a condition fails. Costs nothing for a rule whose first
    /// condition fails (most events, most rules).
    pub fn check(&self, o: &EnrichedEvent) -> Option<Vec<String>> {
        let e = o.event.as_ref()?;
        let mut reasons = Vec::new();
        if !self.kinds.is_empty() {
            let kind = e.kind()?;
            if !self.kinds.contains(&kind) {
                return None;
            }
        }
        let tp = e.touchpoint.as_ref();
        if !self.touchpoints.is_empty() {
            let name = tp.map_or("", |t| t.touchpoint.as_str());
            if !self.touchpoints.iter().any(|t| t == name) {
                return None;
            }
            reasons.push(format!("at touchpoint {name}"));
        }
        if !self.stages.is_empty() {
            let stage = tp.map_or("", |t| t.stage.as_str());
            if !self.stages.iter().any(|s| s == stage) {
                return None;
            }
            if self.touchpoints.is_empty() {
                reasons.push(format!("at stage {stage}"));
            }
        }
        let cx = o.cx.as_ref();
        if !self.nps.is_empty() || self.nps_at_most.is_some() {
            let score = cx.and_then(|c| c.nps_score)?;
            let category = cx.map_or(0, |c| c.nps_category);
            if !self.nps.is_empty() && !self.nps.iter().any(|n| *n as i32 == category) {
                return None;
            }
            if self.nps_at_most.is_some_and(|m| score > m) {
                return None;
            }
            reasons.push(format!("NPS {score} ({})", nps_name(category)));
        }
        if let Some(m) = self.csat_at_most {
            let s = cx.and_then(|c| c.csat_score)?;
            if s > m {
                return None;
            }
            reasons.push(format!("CSAT {}", trim_float(s)));
        }
        if let Some(m) = self.ces_at_most {
            let s = cx.and_then(|c| c.ces_score)?;
            if s > m {
                return None;
            }
            reasons.push(format!("CES {}", trim_float(s)));
        }
        if let Some(label) = self.sentiment {
            let (l, s) = cx.map_or((0, None), |c| (c.sentiment_label, c.sentiment));
            if l != label as i32 {
                return None;
            }
            reasons.push(format!(
                "{} text ({:+.2})",
                sentiment_name(l),
                s.unwrap_or_default()
            ));
        }
        if !self.topics.is_empty() {
            let found: Vec<&String> = cx
                .map(|c| {
                    c.topics
                        .iter()
                        .filter(|t| self.topics.contains(t))
                        .collect()
                })
                .unwrap_or_default();
            if found.is_empty() {
                return None;
            }
            let list: Vec<&str> = found.iter().map(|s| s.as_str()).collect();
            reasons.push(format!("about {}", list.join(", ")));
        }
        if let Some(min) = self.late_by_at_least {
            let late = o.order.as_ref().and_then(|x| x.delivery_late_seconds)?;
            if late <= 0 || late < min {
                return None;
            }
            let id = o.order.as_ref().map_or("", |x| x.order_id.as_str());
            reasons.push(format!("order {id} delivered {} late", span(late)));
        }
        self.check_customer(o, &mut reasons)?;
        Some(reasons)
    }

    /// The conditions on the customer context (the whole check of a
    /// silent rule).
    pub fn check_customer(&self, o: &EnrichedEvent, reasons: &mut Vec<String>) -> Option<()> {
        let c = o.customer.as_ref();
        if let Some(m) = self.last_nps_at_most {
            let n = c.and_then(|c| c.last_nps)?;
            if n > m {
                return None;
            }
            reasons.push(format!("last NPS {n}"));
        }
        if let Some(m) = self.value_90d_at_least {
            let v = c.map_or(0, |c| c.value_90d_minor);
            if v < m {
                return None;
            }
            reasons.push(format!("value in 90 days {}", money(v)));
        }
        if let Some(m) = self.lifetime_value_at_least {
            let v = c.map_or(0, |c| c.lifetime_value_minor);
            if v < m {
                return None;
            }
            reasons.push(format!("lifetime value {}", money(v)));
        }
        if let Some(m) = self.support_contacts_at_least {
            let n = c.map_or(0, |c| c.support_contacts_30d);
            if n < m {
                return None;
            }
            reasons.push(format!("{n} support contacts in 30 days"));
        }
        if let Some(m) = self.churn_risk_at_least {
            let r = c.and_then(|c| c.churn_risk)?;
            if r < m {
                return None;
            }
            reasons.push(format!("churn risk {r:.2}"));
        }
        Some(())
    }
}

fn nps_name(category: i32) -> &'static str {
    match NpsCategory::try_from(category) {
        Ok(NpsCategory::Detractor) => "detractor",
        Ok(NpsCategory::Passive) => "passive",
        Ok(NpsCategory::Promoter) => "promoter",
        _ => "unscored",
    }
}

fn sentiment_name(label: i32) -> &'static str {
    match SentimentLabel::try_from(label) {
        Ok(SentimentLabel::Negative) => "negative",
        Ok(SentimentLabel::Neutral) => "neutral",
        Ok(SentimentLabel::Positive) => "positive",
        _ => "unscored",
    }
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Minor units as major with two decimals ("1280.00"): the currency is the
/// tenant's own and travels with the order, not the rule.
fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

/// A duration in seconds as "2 days", "5 hours" or "40 minutes".
pub(crate) fn span(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 86_400 {
        let d = s / 86_400;
        format!("{d} day{}", if d == 1 { "" } else { "s" })
    } else if s >= 3_600 {
        let h = s / 3_600;
        format!("{h} hour{}", if h == 1 { "" } else { "s" })
    } else {
        format!("{} minutes", s / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::v1::{
        CustomerContext, CxFields, Event, OrderContext, SurveyResponse, Touchpoint, event::Payload,
    };

    /// Compiles `[enrich.alerts]` rules written with the `[alerts…]`
    /// prefix, read like the configuration file (figment over the
    /// embedded defaults).
    fn compile(toml_rules: &str) -> Result<AlertRules, String> {
        #[derive(Deserialize)]
        struct W {
            enrich: E,
        }
        #[derive(Deserialize)]
        struct E {
            #[serde(default)]
            alerts: AlertsSettings,
        }
        let toml = toml_rules.replace("[alerts", "[enrich.alerts");
        let w: W = xoflow_common::config::from_toml(&toml).map_err(|e| e.to_string())?;
        AlertRules::compile(&w.enrich.alerts).map_err(|e| e.to_string())
    }

    fn survey(nps: i32, value_90d: i64, late: Option<i64>) -> EnrichedEvent {
        let category = match nps {
            0..=6 => NpsCategory::Detractor,
            7 | 8 => NpsCategory::Passive,
            _ => NpsCategory::Promoter,
        };
        EnrichedEvent {
            event: Some(Event {
                event_id: "s-1".into(),
                tenant: "acme".into(),
                touchpoint: Some(Touchpoint {
                    journey: "online-purchase".into(),
                    stage: "after-sales".into(),
                    touchpoint: "delivery-survey".into(),
                    channel: 0,
                }),
                payload: Some(Payload::Survey(SurveyResponse::default())),
                ..Default::default()
            }),
            resolved_customer_id: "c-1".into(),
            owner_department: "customer-care".into(),
            cx: Some(CxFields {
                nps_score: Some(nps),
                nps_category: category as i32,
                ..Default::default()
            }),
            order: Some(OrderContext {
                order_id: "o-1".into(),
                delivery_late_seconds: late,
                ..Default::default()
            }),
            customer: Some(CustomerContext {
                value_90d_minor: value_90d,
                churn_risk: Some(0.5),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const HIGH_VALUE: &str = r#"
[alerts.tenants.acme]
[[alerts.tenants.acme.rules]]
name = "high-value-detractor"
severity = "high"
kinds = ["survey"]
nps = ["detractor"]
value_90d_at_least = 50000
"#;

    #[test]
    fn a_rule_holds_only_when_every_condition_does_and_says_why() {
        let rules = compile(HIGH_VALUE).expect("valid");
        let r = &rules.tenant("acme").expect("acme").rules[0];
        assert_eq!(
            r.check(&survey(2, 60_000, None)),
            Some(vec![
                "NPS 2 (detractor)".to_string(),
                "value in 90 days 600.00".to_string()
            ])
        );
        assert_eq!(r.check(&survey(2, 40_000, None)), None, "value too low");
        assert_eq!(r.check(&survey(8, 60_000, None)), None, "a passive");
        assert!(rules.tenant("other").is_none());
    }

    #[test]
    fn lateness_reads_the_joined_order() {
        let rules = compile(
            r#"
[[alerts.tenants.acme.rules]]
name = "late"
severity = "medium"
late_by_at_least = "1day"
"#,
        )
        .expect("valid");
        let r = &rules.tenant("acme").expect("acme").rules[0];
        assert_eq!(
            r.check(&survey(9, 0, Some(2 * 86_400))),
            Some(vec!["order o-1 delivered 2 days late".to_string()])
        );
        assert_eq!(r.check(&survey(9, 0, Some(3_600))), None);
        assert_eq!(r.check(&survey(9, 0, None)), None, "not delivered yet");
    }

    #[test]
    fn bad_rules_are_refused_with_their_path() {
        let cases = [
            (
                "name = \"Bad Name\"\nseverity = \"high\"\nkinds = [\"survey\"]",
                "enrich.alerts.tenants.acme.rules[0].name",
            ),
            (
                "name = \"x\"\nseverity = \"urgent\"\nkinds = [\"survey\"]",
                "rules[0].severity",
            ),
            (
                "name = \"x\"\nseverity = \"low\"\nkinds = [\"visit\"]",
                "rules[0].kinds[0]",
            ),
            ("name = \"x\"\nseverity = \"low\"", "no condition"),
            (
                "name = \"x\"\nseverity = \"low\"\nchurn_risk_at_least = 1.5",
                "rules[0].churn_risk_at_least",
            ),
            (
                "name = \"x\"\nseverity = \"low\"\nsilent = true\nnps = [\"detractor\"]\nchurn_risk_at_least = 0.5",
                "rules[0].nps",
            ),
            (
                "name = \"x\"\nseverity = \"low\"\nsilent = true",
                "rules[0].churn_risk_at_least: required",
            ),
            (
                "name = \"x\"\nseverity = \"low\"\nnps = [\"angry\"]",
                "unknown NPS category \"angry\"",
            ),
        ];
        for (rule, want) in cases {
            let toml = format!("[[alerts.tenants.acme.rules]]\n{rule}\n");
            let e = compile(&toml).expect_err(rule);
            assert!(e.contains(want), "{rule}: {e}");
        }
        let twice = format!(
            "{HIGH_VALUE}\n{}",
            HIGH_VALUE.replace("[alerts.tenants.acme]", "")
        );
        let e = compile(&twice).expect_err("duplicate");
        assert!(e.contains("rules[1].name"), "{e}");
    }

    #[test]
    fn routes_name_their_settings() {
        let rules = compile(
            r#"
[alerts.tenants.acme]
default_department = "customer-care"
[[alerts.tenants.acme.rules]]
name = "x"
severity = "low"
department = "logistics"
kinds = ["survey"]
"#,
        )
        .expect("valid");
        assert_eq!(
            rules.routes(),
            vec![
                (
                    "acme".into(),
                    "customer-care".into(),
                    "enrich.alerts.tenants.acme.default_department".into()
                ),
                (
                    "acme".into(),
                    "logistics".into(),
                    "enrich.alerts.tenants.acme.rules[0].department".into()
                ),
            ]
        );
    }
}
