//! The join's windows and bounds (`[enrich.join]`): how long state lasts,
//! how much of it there is, and how long events wait for each other.

use std::{collections::HashMap, sync::Arc, time::Duration};

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
    /// Most customers kept by one join (a partition); beyond it, customers
    /// idle longer than the value window are dropped (active ones stay).
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
    /// Memory the repairable histories of all customers, and the customers
    /// that have one (decoded), may take in one instance, in bytes: the
    /// per-customer bounds alone let the total grow with every new
    /// customer. The stage splits it evenly over the join
    /// partitions it holds ([`super::Join::set_history_budget`]); over its
    /// share, a partition's least recently active customers' histories
    /// leave for their base state (see docs/enrich.md, "Bounds").
    #[serde(default = "default_max_history_bytes")]
    pub max_history_bytes: usize,
    /// Most unresolved events waiting for a link, per partition (oldest
    /// dropped first); they also stop waiting `order_window` behind the
    /// partition's latest event.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
    /// Most links a partition remembers for the unresolved events that
    /// come after their link (oldest forgotten first): see
    /// docs/enrich.md, "Waiting for a link".
    #[serde(default = "default_max_links")]
    pub max_links: usize,
    /// Removed: the owning department of an event comes from its tenant's
    /// journey config (`ingest.tenants.<tenant>.touchpoints`), the one
    /// ownership model. Kept only to refuse old files with that advice
    /// ([`JoinConfig::validate`]).
    #[serde(default)]
    pub departments: Option<HashMap<String, String>>,
    /// Who owns each touchpoint, per tenant: not read from `[enrich.join]`
    /// but set by the binary from the tenants' journey config.
    #[serde(skip)]
    pub owners: Owners,
}

/// The department owning each touchpoint, per tenant: the tenants' journey
/// config (`ingest.tenants.<tenant>.touchpoints.<touchpoint>.department`),
/// which ingest also uses. Cheap to clone. Looked up for every output:
/// foldhash, not SipHash (two SipHash lookups were 3% of the join).
#[derive(Debug, Clone, Default)]
pub struct Owners(Arc<OwnersMap<String, OwnersMap<String, String>>>);

type OwnersMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl Owners {
    /// From (tenant, touchpoint, department) triples.
    pub fn new<'a>(triples: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Self {
        let mut map: OwnersMap<String, OwnersMap<String, String>> = OwnersMap::default();
        for (tenant, touchpoint, department) in triples {
            map.entry(tenant.to_owned())
                .or_default()
                .insert(touchpoint.to_owned(), department.to_owned());
        }
        Self(Arc::new(map))
    }

    /// The department owning `touchpoint` of `tenant`, if the journey
    /// config names one.
    pub fn department(&self, tenant: &str, touchpoint: &str) -> Option<&str> {
        self.0.get(tenant)?.get(touchpoint).map(String::as_str)
    }

    /// Whether `department` owns some touchpoint of `tenant`.
    pub fn defines(&self, tenant: &str, department: &str) -> bool {
        self.0
            .get(tenant)
            .is_some_and(|m| m.values().any(|d| d == department))
    }
}

impl JoinConfig {
    /// The windows and bounds shipped in `deploy/config/xoflow.toml`, with
    /// `lateness` as both the lateness bound and the longest hold, and no
    /// owners: what tests, benchmarks and tools start from, overriding
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
            max_history_bytes: default_max_history_bytes(),
            max_waiting: default_max_waiting(),
            max_links: default_max_links(),
            departments: None,
            owners: Owners::default(),
        }
    }

    /// The same, with these (tenant, touchpoint, department) owners.
    pub fn with_owners(mut self, triples: &[(&str, &str, &str)]) -> Self {
        self.owners = Owners::new(triples.iter().copied());
        self
    }

    /// Refuses settings that no longer exist. Pure.
    pub fn validate(&self) -> Result<(), String> {
        if self.departments.is_some() {
            return Err(
                "enrich.join.departments: removed; the department owning an event is \
                        the one its touchpoint names in the tenant's journey config \
                        (ingest.tenants.<tenant>.touchpoints.<touchpoint>.department)"
                    .into(),
            );
        }
        Ok(())
    }
}

const fn default_max_history() -> usize {
    256
}

/// 512 MiB: at about 280 bytes per event kept encoded (its entry and its
/// bytes), some 1.9 million repairable events per instance; an eighth of
/// the shipped Kubernetes pod's 4 GiB limit, which also holds the
/// customers' states (up to `max_customers`), the lateness buffer and the
/// Kafka clients' queues.
const fn default_max_history_bytes() -> usize {
    512 * 1024 * 1024
}

const fn default_max_waiting() -> usize {
    200_000
}

/// 100,000 per partition: some 250 bytes each (a hashed identifier, a
/// customer id, their map entry and queue slot), 25 MB; at 2,500 new
/// links a second on one partition (a stream of 10,000 new customers a
/// second on four), the last 40 seconds of links, against the second or
/// so a resolve loop takes to apply a link from the links topic.
const fn default_max_links() -> usize {
    100_000
}
