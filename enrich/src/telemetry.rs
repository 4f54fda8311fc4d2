//! The enrich stage's internal events; emitted once per batch.

use metrics::counter;

pub(crate) const EVENTS_ENRICHED: &str = "xoflow_enrich_events_total";
pub(crate) const DEAD_LETTERS: &str = "xoflow_enrich_dead_letters_total";
pub(crate) const BATCHES: &str = "xoflow_enrich_batches_total";

/// One batch enriched, produced and committed.
pub(crate) struct BatchEnriched {
    pub records: u64,
    pub dead_letters: u64,
}

impl BatchEnriched {
    pub fn emit(&self) {
        tracing::debug!(
            records = self.records,
            dead_letters = self.dead_letters,
            "batch enriched"
        );
        counter!(EVENTS_ENRICHED).increment(self.records);
        counter!(BATCHES).increment(1);
        if self.dead_letters > 0 {
            counter!(DEAD_LETTERS, "reason" => "DECODE").increment(self.dead_letters);
        }
    }
}
