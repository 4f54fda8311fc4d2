//! The enrich stage's internal events; emitted once per batch.

use metrics::{counter, gauge};

pub(crate) const EVENTS_ENRICHED: &str = "xoflow_enrich_events_total";
pub(crate) const DEAD_LETTERS: &str = "xoflow_enrich_dead_letters_total";
pub(crate) const BATCHES: &str = "xoflow_enrich_batches_total";
pub(crate) const EVENTS_RESOLVED: &str = "xoflow_enrich_events_resolved_total";
pub(crate) const LINKS_LEARNT: &str = "xoflow_enrich_links_learnt_total";
pub(crate) const LINKS: &str = "xoflow_enrich_links";
pub(crate) const STATE_CHANGES: &str = "xoflow_enrich_state_changes_total";
pub(crate) const HELD: &str = "xoflow_enrich_events_held";

/// One batch resolved and forwarded to the repartition topic.
pub(crate) struct BatchResolved {
    pub records: u64,
    pub links_learnt: u64,
    /// Links in the table now.
    pub links: u64,
}

impl BatchResolved {
    pub fn emit(&self) {
        counter!(EVENTS_RESOLVED).increment(self.records);
        counter!(LINKS_LEARNT).increment(self.links_learnt);
        gauge!(LINKS).set(self.links as f64);
    }
}

/// One join batch enriched, produced and committed.
pub(crate) struct BatchEnriched {
    pub records: u64,
    pub dead_letters: u64,
    /// Customer states written to the changelog.
    pub state_changes: u64,
    /// Events waiting in the lateness buffers afterwards.
    pub held: u64,
}

impl BatchEnriched {
    pub fn emit(&self) {
        tracing::debug!(
            records = self.records,
            dead_letters = self.dead_letters,
            state_changes = self.state_changes,
            held = self.held,
            "batch enriched"
        );
        counter!(EVENTS_ENRICHED).increment(self.records);
        counter!(BATCHES).increment(1);
        counter!(STATE_CHANGES).increment(self.state_changes);
        gauge!(HELD).set(self.held as f64);
        if self.dead_letters > 0 {
            counter!(DEAD_LETTERS, "reason" => "DECODE").increment(self.dead_letters);
        }
    }
}
