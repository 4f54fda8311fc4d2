//! Enrichment settings (`[enrich]`).

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{alert::AlertRules, join::JoinConfig, sentiment::TopicsConfig};

/// Settings of the enrich stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Consumer group shared by every enrich instance; partitions are split
    /// among its members.
    pub group_id: String,
    /// This instance's stable name in the group (`group.instance.id`), e.g.
    /// the pod name of a StatefulSet: restarted under the same name, it
    /// takes back its partitions (and restores their state) at once.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Most records per batch: four produce round trips (see
    /// docs/enrich.md, "Durability") and one commit each.
    pub batch_max_records: usize,
    /// How long a batch may wait to fill once its first record arrived.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Work waiting (committed offsets below the high watermark, in the
    /// resolve or the join group) with nothing committed for this long
    /// turns readiness to `no_progress`, or, when this instance holds no
    /// partition of that group, readiness and liveness to `no_partitions`.
    #[serde(with = "humantime_serde", default = "default_stall_timeout")]
    pub stall_timeout: Duration,
    /// Windows and bounds of the per-customer join state.
    pub join: JoinConfig,
    /// Where the global link table is kept.
    #[serde(default)]
    pub link_table: LinkTableConfig,
    /// Where the join keeps the customers it holds no history for.
    #[serde(default)]
    pub cold_customers: ColdCustomersConfig,
    /// Topic rules per tenant, checked when the configuration is read.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Alert rules per tenant (docs/alerts.md), checked when the
    /// configuration is read.
    #[serde(default)]
    pub alerts: AlertRules,
}

const fn default_stall_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Where the link table is kept (`[enrich.link_table]`, docs/enrich.md
/// "The memory bound"). Every start rebuilds it from the links topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkTableConfig {
    /// `disk`: a local store whose memory is bounded by the settings
    /// below, whatever the number of links; `memory`: every link in the
    /// heap (some 100 bytes each, growing with every identifier seen).
    pub store: StoreKind,
    /// The directory the store's own directory is made in (default: the
    /// system's temporary directory). It needs about 120 bytes per link (measured, journal included).
    pub directory: Option<PathBuf>,
    /// The store's block cache.
    pub cache_mib: u64,
    /// The store's write buffer (links not yet written out to its files);
    /// up to four more, sealed, wait for their flush.
    pub memtable_mib: u64,
    /// Links used lately kept in memory in front of the store, per
    /// generation (two generations; ~100 bytes a link).
    pub recent_links: usize,
}

/// See [`LinkTableConfig::store`] and [`ColdCustomersConfig::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Disk,
    Memory,
}

impl Default for LinkTableConfig {
    fn default() -> Self {
        LinkTableConfig {
            store: StoreKind::Disk,
            directory: None,
            cache_mib: 32,
            memtable_mib: 16,
            recent_links: 100_000,
        }
    }
}

/// Where the join keeps its cold customers (`[enrich.cold_customers]`,
/// docs/enrich.md "The memory bound"): those whose whole history left for
/// their base state, kept until their next event (or until idle for
/// `value_window`). Every start rebuilds them from the changelog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColdCustomersConfig {
    /// `disk`: the recent ones in memory, the rest in a local store whose
    /// memory is bounded by the settings below, whatever the number of
    /// customers; `memory`: every one in the heap (some 300 bytes each,
    /// growing with every customer seen).
    pub store: StoreKind,
    /// The directory the store's own directory is made in (default: the
    /// system's temporary directory). It needs about the size of the
    /// customers' base states in the changelog.
    pub directory: Option<PathBuf>,
    /// The store's block cache.
    pub cache_mib: u64,
    /// The store's write buffer (customers not yet written out to its
    /// files); up to four more, sealed, wait for their flush.
    pub memtable_mib: u64,
    /// Cold customers kept in memory in front of the store, per instance:
    /// split evenly over the join partitions it holds, in two generations
    /// each (some 300 bytes a customer).
    pub recent_customers: usize,
}

impl Default for ColdCustomersConfig {
    fn default() -> Self {
        ColdCustomersConfig {
            store: StoreKind::Disk,
            directory: None,
            cache_mib: 16,
            memtable_mib: 16,
            recent_customers: 400_000,
        }
    }
}
