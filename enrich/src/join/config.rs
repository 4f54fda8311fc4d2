//! The join's windows and bounds (`[enrich.join]`): how long state lasts,
//! how much of it there is, and how long events wait for each other.

use std::{collections::HashMap, time::Duration};

use serde::Deserialize;

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
    /// Most events kept per customer for repairs (see docs/enrich.md); the
    /// history also ends `order_window` behind the customer's latest event.
    #[serde(default = "default_max_history")]
    pub max_history_per_customer: usize,
    /// Most unresolved events waiting for a link, per partition (oldest
    /// dropped first); they also stop waiting `order_window` behind the
    /// partition's latest event.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
    /// Department owning each journey stage, for alert routing.
    #[serde(default)]
    pub departments: HashMap<String, String>,
}

impl JoinConfig {
    /// The windows and bounds shipped in `deploy/config/xoflow.toml`, with
    /// `lateness` as both the lateness bound and the longest hold, and no
    /// departments: what tests, benchmarks and tools start from, overriding
    /// only what they exercise.
    pub fn new(lateness: Duration) -> Self {
        const DAY: u64 = 86_400;
        JoinConfig {
            order_window: Duration::from_secs(30 * DAY),
            support_window: Duration::from_secs(30 * DAY),
            value_window: Duration::from_secs(90 * DAY),
            max_orders_per_customer: 16,
            max_customers: 2_000_000,
            lateness,
            max_hold: lateness,
            max_history_per_customer: default_max_history(),
            max_waiting: default_max_waiting(),
            departments: HashMap::new(),
        }
    }

    /// The same, routing each `(stage, department)` pair.
    pub fn with_departments(mut self, pairs: &[(&str, &str)]) -> Self {
        self.departments = pairs
            .iter()
            .map(|(s, d)| ((*s).to_owned(), (*d).to_owned()))
            .collect();
        self
    }
}

const fn default_max_history() -> usize {
    256
}

const fn default_max_waiting() -> usize {
    200_000
}
