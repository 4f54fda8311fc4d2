//! The ground truth written beside generated data: what a correct pipeline
//! must report. Counts are exact; NPS is kept as its three counts so it can
//! be compared exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::alerts::AlertsTruth;

/// NPS as counts; the score is derived, never stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NpsCounts {
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
}

impl NpsCounts {
    pub fn add(&mut self, score: i32) {
        match score {
            9..=10 => self.promoters += 1,
            7..=8 => self.passives += 1,
            _ => self.detractors += 1,
        }
    }

    pub fn responses(&self) -> u64 {
        self.promoters + self.passives + self.detractors
    }

    /// 100 × (promoters − detractors) / responses.
    pub fn score(&self) -> Option<f64> {
        let n = self.responses();
        (n > 0).then(|| 100.0 * (self.promoters as f64 - self.detractors as f64) / n as f64)
    }
}

/// Experience figures of one touchpoint of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TouchpointTruth {
    pub tenant: String,
    pub journey: String,
    pub touchpoint: String,
    pub nps: NpsCounts,
    pub csat_responses: u64,
    pub csat_top2: u64,
    pub ces_responses: u64,
    pub ces_sum: u64,
    /// CES answers of 5-7 (easy).
    pub ces_easy: u64,
}

/// NPS of one touchpoint at one store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreTruth {
    pub tenant: String,
    pub touchpoint: String,
    pub store: String,
    pub region: String,
    pub nps: NpsCounts,
}

/// The worst and best store on the same touchpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub tenant: String,
    pub touchpoint: String,
    pub worst_store: String,
    pub worst_nps: f64,
    pub best_store: String,
    pub best_nps: f64,
}

/// A customer the simulation made likely to leave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtRisk {
    pub tenant: String,
    pub customer_id: String,
    /// The latent propensity the simulation used, in [0, 1].
    pub propensity: f64,
    pub detractor_answers: u64,
    pub support_calls: u64,
    pub negative_posts: u64,
}

/// Everything a correct pipeline must find in the generated data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub seed: u64,
    pub start_ms: i64,
    pub days: u32,
    /// Valid (acceptable) events.
    pub events: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Answers of the valid surveys: rows `survey_answers` must hold.
    #[serde(default)]
    pub survey_answers: u64,
    pub by_tenant: BTreeMap<String, u64>,
    /// Malformed records by the reason code ingest must give them.
    pub invalid: BTreeMap<String, u64>,
    pub touchpoints: Vec<TouchpointTruth>,
    pub stores: Vec<StoreTruth>,
    /// Per touchpoint with at least two stores of 30+ responses.
    pub worst_vs_best: Vec<Comparison>,
    /// Texts written negative, by topic.
    pub negative_topics: BTreeMap<String, u64>,
    /// Customers the simulation made likely to leave (latent propensity of
    /// 0.6 or more) among those who gave any feedback, the ones showing the
    /// most unhappy signals first.
    pub at_risk: Vec<AtRisk>,
    /// Share of customers with feedback who are in `at_risk`: what picking
    /// customers at random would find.
    pub at_risk_base_rate: f64,
    /// Personal data planted in free text; none may reach storage unmasked.
    pub planted_pii: Vec<String>,
    /// The problems the simulation planted, in words.
    pub problems: Vec<String>,
    /// The alerts the demo's rules (`deploy/config/demo.toml`) must raise,
    /// and the customers planted for the closed loop.
    pub alerts: AlertsTruth,
}

/// Latent propensity from which a customer counts as drifting away.
pub const AT_RISK_PROPENSITY: f64 = 0.6;

/// Accumulates the truth while the simulation runs.
#[derive(Debug, Default)]
pub(crate) struct TruthBuilder {
    pub truth: Truth,
    pub touchpoints: BTreeMap<(String, String, String), TouchpointTruth>,
    pub stores: BTreeMap<(String, String, String), StoreTruth>,
    pub customers: BTreeMap<(String, String), AtRisk>,
}

impl TruthBuilder {
    pub fn touchpoint(
        &mut self,
        tenant: &str,
        journey: &str,
        touchpoint: &str,
    ) -> &mut TouchpointTruth {
        self.touchpoints
            .entry((tenant.into(), journey.into(), touchpoint.into()))
            .or_insert_with(|| TouchpointTruth {
                tenant: tenant.into(),
                journey: journey.into(),
                touchpoint: touchpoint.into(),
                ..Default::default()
            })
    }

    pub fn store(
        &mut self,
        tenant: &str,
        touchpoint: &str,
        store: &str,
        region: &str,
    ) -> &mut StoreTruth {
        self.stores
            .entry((tenant.into(), touchpoint.into(), store.into()))
            .or_insert_with(|| StoreTruth {
                tenant: tenant.into(),
                touchpoint: touchpoint.into(),
                store: store.into(),
                region: region.into(),
                ..Default::default()
            })
    }

    pub fn customer(&mut self, tenant: &str, id: &str, propensity: f64) -> &mut AtRisk {
        self.customers
            .entry((tenant.into(), id.into()))
            .or_insert_with(|| AtRisk {
                tenant: tenant.into(),
                customer_id: id.into(),
                propensity,
                detractor_answers: 0,
                support_calls: 0,
                negative_posts: 0,
            })
    }

    pub fn finish(mut self) -> Truth {
        let mut t = std::mem::take(&mut self.truth);
        t.touchpoints = self.touchpoints.into_values().collect();
        t.stores = self.stores.into_values().collect();
        let mut by_tp: BTreeMap<(String, String), Vec<&StoreTruth>> = BTreeMap::new();
        for s in &t.stores {
            if s.nps.responses() >= 30 {
                by_tp
                    .entry((s.tenant.clone(), s.touchpoint.clone()))
                    .or_default()
                    .push(s);
            }
        }
        for ((tenant, touchpoint), stores) in by_tp {
            if stores.len() < 2 {
                continue;
            }
            let score = |s: &StoreTruth| s.nps.score().unwrap_or(0.0);
            let worst = stores
                .iter()
                .min_by(|a, b| score(a).total_cmp(&score(b)))
                .copied();
            let best = stores
                .iter()
                .max_by(|a, b| score(a).total_cmp(&score(b)))
                .copied();
            if let (Some(w), Some(b)) = (worst, best) {
                t.worst_vs_best.push(Comparison {
                    tenant,
                    touchpoint,
                    worst_store: w.store.clone(),
                    worst_nps: score(w),
                    best_store: b.store.clone(),
                    best_nps: score(b),
                });
            }
        }
        let with_feedback = self.customers.len().max(1);
        let mut customers: Vec<AtRisk> = self
            .customers
            .into_values()
            .filter(|c| c.propensity >= AT_RISK_PROPENSITY)
            .collect();
        let signals = |c: &AtRisk| c.detractor_answers + c.support_calls + c.negative_posts;
        customers.sort_by(|a, b| {
            signals(b)
                .cmp(&signals(a))
                .then_with(|| b.propensity.total_cmp(&a.propensity))
                .then_with(|| a.customer_id.cmp(&b.customer_id))
        });
        t.at_risk_base_rate = customers.len() as f64 / with_feedback as f64;
        t.at_risk = customers;
        t
    }
}
