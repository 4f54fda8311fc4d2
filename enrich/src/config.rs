//! Enrichment settings (`[enrich]`).

use std::time::Duration;

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
    /// Most records per batch: one produce round trip and one commit each.
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
