//! The enrich stage's internal events and the one list of its metric names.
//!
//! Each event writes its log line and bumps its counters with the same
//! bounded tags; the names follow `xoflow_enrich_<what>_<unit>[_total]` and
//! are listed in `docs/enrich.md`.

use metrics::{counter, gauge};

/// Every metric the enrich stage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// Events the resolve loop forwarded to the repartition topic.
    EventsResolved,
    /// Events the join loop enriched and produced.
    EventsEnriched,
    /// Join batches produced and committed.
    Batches,
    /// Records refused, by `reason`.
    DeadLetters,
    /// Links learnt from events and published.
    LinksLearnt,
    /// Links in this instance's link table (gauge).
    LinksKnown,
    /// Links that moved an identifier from one customer to another, by
    /// `origin` (`event`, `import`).
    LinksRepointed,
    /// Customer states written to the changelog.
    StateChanges,
    /// Events waiting in the lateness buffers (gauge).
    EventsHeld,
    /// Events waiting in the resolve loop for a link (gauge).
    EventsWaiting,
    /// Failures the stage logged and went on from, by `error`
    /// ([`ErrorKind`](xoflow_common::telemetry::ErrorKind)).
    Errors,
}

impl Metric {
    #[cfg(test)]
    pub(crate) const ALL: [Metric; 11] = [
        Metric::EventsResolved,
        Metric::EventsEnriched,
        Metric::Batches,
        Metric::DeadLetters,
        Metric::LinksLearnt,
        Metric::LinksKnown,
        Metric::LinksRepointed,
        Metric::StateChanges,
        Metric::EventsHeld,
        Metric::EventsWaiting,
        Metric::Errors,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Metric::EventsResolved => "xoflow_enrich_events_resolved_total",
            Metric::EventsEnriched => "xoflow_enrich_events_enriched_total",
            Metric::Batches => "xoflow_enrich_batches_total",
            Metric::DeadLetters => "xoflow_enrich_dead_letters_total",
            Metric::LinksLearnt => "xoflow_enrich_links_learnt_total",
            Metric::LinksKnown => "xoflow_enrich_links_known",
            Metric::LinksRepointed => "xoflow_enrich_links_repointed_total",
            Metric::StateChanges => "xoflow_enrich_state_changes_total",
            Metric::EventsHeld => "xoflow_enrich_events_held",
            Metric::EventsWaiting => "xoflow_enrich_events_waiting",
            Metric::Errors => "xoflow_enrich_errors_total",
        }
    }
}

/// One batch resolved and forwarded to the repartition topic.
pub(crate) struct BatchResolved {
    pub records: u64,
    pub dead_letters: u64,
    pub links_learnt: u64,
    /// Links in the table now.
    pub links: u64,
    /// Events waiting for a link afterwards.
    pub waiting: u64,
}

impl BatchResolved {
    pub fn emit(&self) {
        counter!(Metric::EventsResolved.name()).increment(self.records);
        counter!(Metric::LinksLearnt.name()).increment(self.links_learnt);
        gauge!(Metric::LinksKnown.name()).set(self.links as f64);
        gauge!(Metric::EventsWaiting.name()).set(self.waiting as f64);
        dead_letters(self.dead_letters);
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
        counter!(Metric::EventsEnriched.name()).increment(self.records);
        counter!(Metric::Batches.name()).increment(1);
        counter!(Metric::StateChanges.name()).increment(self.state_changes);
        gauge!(Metric::EventsHeld.name()).set(self.held as f64);
        dead_letters(self.dead_letters);
    }
}

/// Records that did not decode: the only reason enrich refuses one.
fn dead_letters(n: u64) {
    if n > 0 {
        counter!(
            Metric::DeadLetters.name(),
            "reason" => xoflow_common::dead_letter::Reason::Decode.as_str()
        )
        .increment(n);
    }
}

/// A link moved an identifier to another customer: never silent, since
/// the earlier customer's events stay where they were joined.
pub(crate) struct LinkRepointed<'a> {
    pub origin: &'static str,
    pub identifier: &'a str,
    pub from: &'a str,
    pub to: &'a str,
}

impl LinkRepointed<'_> {
    pub fn emit(&self) {
        // The identifier is a keyed hash; its first 12 hex digits are enough
        // to find it and are no personal data.
        let short = self.identifier.get(..12).unwrap_or(self.identifier);
        tracing::warn!(
            origin = self.origin,
            identifier = short,
            from = self.from,
            to = self.to,
            "a link re-points an identifier to another customer"
        );
        counter!(Metric::LinksRepointed.name(), "origin" => self.origin).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        for m in Metric::ALL {
            let n = m.name();
            assert!(n.starts_with("xoflow_enrich_"), "{n}");
            // Counters end in _total; gauges name what they count.
            assert_eq!(
                n.ends_with("_total"),
                !matches!(
                    m,
                    Metric::LinksKnown | Metric::EventsHeld | Metric::EventsWaiting
                ),
                "{n}"
            );
        }
    }
}
