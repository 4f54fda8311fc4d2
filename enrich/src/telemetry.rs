//! The enrich stage's internal events and the one list of its metric names.
//!
//! Each event writes its log line and bumps its counters with the same
//! bounded tags; the names follow `xoflow_enrich_<what>_<unit>[_total]` and
//! are listed in `docs/enrich.md`.

use metrics::{counter, gauge};

/// Every metric the enrich stage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// Events (and link notices) the resolve loop forwarded to the
    /// repartition topic: every event but the direct ones.
    EventsResolved,
    /// Direct events (keyed by their own customer id): the resolve loop
    /// leaves them to the join, which reads them from the events topic.
    EventsDirect,
    /// Records the join loop read, by `input` (`events`: every record of
    /// the events topic, direct or skipped; `repartition`).
    JoinRecordsIn,
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
    /// Memory the link store's write buffers take: the links written and
    /// not yet flushed to its files (gauge; 0 for the table in memory).
    LinkStoreWriteBuffer,
    /// Links that moved an identifier from one customer to another, by
    /// `origin` (`event`, `import`).
    LinksRepointed,
    /// Join state records written to the changelog.
    StateChanges,
    /// Outputs emitted again with a higher revision because a late event
    /// changed their joined context.
    Repairs,
    /// Unresolved events a link resolved, sent to their customer's
    /// partition.
    EventsMoved,
    /// Waits that ended unrepaired, by `waiting_for` (`link`: an unresolved
    /// event left the wait still unresolved; `reference`: an event left its
    /// customer's history still missing the order or call it names).
    WaitsExpired,
    /// Events kept in customers' histories, repairable (gauge).
    HistoryEvents,
    /// Memory the customers' histories take in this instance, estimated
    /// (gauge).
    HistoryBytes,
    /// Events that left their customer's history early, the histories
    /// over `max_history_bytes`: never repaired again.
    HistoryShedEvents,
    /// Events in the join waiting, by `waiting_for` (`link`, `reference`)
    /// (gauge).
    JoinWaiting,
    /// Links the join partitions remember for the unresolved events that
    /// come after them (gauge).
    JoinLinks,
    /// Customers whose state the join partitions hold (gauge; over
    /// `max_customers` in a partition, the idle ones are dropped).
    JoinCustomers,
    /// Of those, the cold customers in the local store, out of memory
    /// (gauge; `[enrich.cold_customers]`).
    JoinCustomersOnDisk,
    /// Links the join partitions forgot, beyond `max_links`.
    JoinLinksForgotten,
    /// Events waiting in the lateness buffers (gauge).
    EventsHeld,
    /// Events waiting in the resolve loop for a link (gauge).
    EventsWaiting,
    /// Failures the stage logged and went on from, by `error`
    /// ([`ErrorKind`](xoflow_common::telemetry::ErrorKind)).
    Errors,
    /// Alerts raised and sent to the alerts topic.
    AlertsRaised,
    /// Rules that held but raised nothing, by `reason` (`repeated`: the
    /// alert was raised before, by an earlier revision or a replay;
    /// `quiet_period`; `do_not_contact`).
    AlertsSuppressed,
    /// Records taken in from the events and backfill topics (the resolve
    /// loop's batches, whatever became of them).
    RecordsIn,
    /// Enriched records produced (repairs included).
    RecordsOut,
    /// Records above this instance's consumer position, per `topic` and
    /// `partition` it holds (gauge; 0 for partitions it does not hold).
    ConsumerLag,
    /// Records and requests in the producer's local queue, waiting for
    /// the broker (gauge).
    ProducerQueue,
}

impl Metric {
    #[cfg(test)]
    pub(crate) const ALL: [Metric; 31] = [
        Metric::EventsResolved,
        Metric::EventsDirect,
        Metric::JoinRecordsIn,
        Metric::EventsEnriched,
        Metric::Batches,
        Metric::DeadLetters,
        Metric::LinksLearnt,
        Metric::LinksKnown,
        Metric::LinkStoreWriteBuffer,
        Metric::LinksRepointed,
        Metric::StateChanges,
        Metric::Repairs,
        Metric::EventsMoved,
        Metric::WaitsExpired,
        Metric::HistoryEvents,
        Metric::HistoryBytes,
        Metric::HistoryShedEvents,
        Metric::JoinWaiting,
        Metric::JoinLinks,
        Metric::JoinCustomers,
        Metric::JoinCustomersOnDisk,
        Metric::JoinLinksForgotten,
        Metric::EventsHeld,
        Metric::EventsWaiting,
        Metric::Errors,
        Metric::AlertsRaised,
        Metric::AlertsSuppressed,
        Metric::RecordsIn,
        Metric::RecordsOut,
        Metric::ConsumerLag,
        Metric::ProducerQueue,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Metric::EventsResolved => "xoflow_enrich_events_resolved_total",
            Metric::EventsDirect => "xoflow_enrich_events_direct_total",
            Metric::JoinRecordsIn => "xoflow_enrich_join_records_in_total",
            Metric::EventsEnriched => "xoflow_enrich_events_enriched_total",
            Metric::Batches => "xoflow_enrich_batches_total",
            Metric::DeadLetters => "xoflow_enrich_dead_letters_total",
            Metric::LinksLearnt => "xoflow_enrich_links_learnt_total",
            Metric::LinksKnown => "xoflow_enrich_links_known",
            Metric::LinkStoreWriteBuffer => "xoflow_enrich_link_store_write_buffer_bytes",
            Metric::LinksRepointed => "xoflow_enrich_links_repointed_total",
            Metric::StateChanges => "xoflow_enrich_state_changes_total",
            Metric::Repairs => "xoflow_enrich_repairs_total",
            Metric::EventsMoved => "xoflow_enrich_events_moved_total",
            Metric::WaitsExpired => "xoflow_enrich_waits_expired_total",
            Metric::HistoryEvents => "xoflow_enrich_history_events",
            Metric::HistoryBytes => "xoflow_enrich_history_bytes",
            Metric::HistoryShedEvents => "xoflow_enrich_history_shed_events_total",
            Metric::JoinWaiting => "xoflow_enrich_join_waiting",
            Metric::JoinLinks => "xoflow_enrich_join_links",
            Metric::JoinCustomers => "xoflow_enrich_join_customers",
            Metric::JoinCustomersOnDisk => "xoflow_enrich_join_customers_on_disk",
            Metric::JoinLinksForgotten => "xoflow_enrich_join_links_forgotten_total",
            Metric::EventsHeld => "xoflow_enrich_events_held",
            Metric::EventsWaiting => "xoflow_enrich_events_waiting",
            Metric::Errors => "xoflow_enrich_errors_total",
            Metric::AlertsRaised => "xoflow_enrich_alerts_raised_total",
            Metric::AlertsSuppressed => "xoflow_enrich_alerts_suppressed_total",
            Metric::RecordsIn => "xoflow_enrich_records_in_total",
            Metric::RecordsOut => "xoflow_enrich_records_out_total",
            Metric::ConsumerLag => "xoflow_enrich_consumer_lag_records",
            Metric::ProducerQueue => "xoflow_enrich_producer_queue_records",
        }
    }
}

/// One batch resolved and forwarded to the repartition topic.
pub(crate) struct BatchResolved {
    /// Records of the input batch.
    pub taken: u64,
    pub records: u64,
    /// Direct events, left to the join (not forwarded).
    pub direct: u64,
    pub dead_letters: u64,
    pub links_learnt: u64,
    /// Links in the table now.
    pub links: u64,
    /// Bytes in the link store's write buffers now.
    pub link_store_buffer: u64,
    /// Events waiting for a link afterwards.
    pub waiting: u64,
}

impl BatchResolved {
    pub fn emit(&self) {
        counter!(Metric::RecordsIn.name()).increment(self.taken);
        counter!(Metric::EventsResolved.name()).increment(self.records);
        counter!(Metric::EventsDirect.name()).increment(self.direct);
        counter!(Metric::LinksLearnt.name()).increment(self.links_learnt);
        gauge!(Metric::LinksKnown.name()).set(self.links as f64);
        gauge!(Metric::LinkStoreWriteBuffer.name()).set(self.link_store_buffer as f64);
        gauge!(Metric::EventsWaiting.name()).set(self.waiting as f64);
        dead_letters(self.dead_letters);
    }
}

/// What one join batch read, per input topic.
#[derive(Debug, Default)]
pub(crate) struct JoinRead {
    /// Records of the events topic, direct or not.
    pub events: u64,
    /// Records of the repartition topic (events and notices).
    pub repartition: u64,
}

impl JoinRead {
    pub fn emit(&self) {
        counter!(Metric::JoinRecordsIn.name(), "input" => "events").increment(self.events);
        counter!(Metric::JoinRecordsIn.name(), "input" => "repartition")
            .increment(self.repartition);
    }
}

/// What the join loop shed since its last log line. At the budget nearly
/// every batch sheds (a part of what the last pass chose: see
/// `Join::shed_if_over`), so the line is written at the first shedding and
/// then at most once per [`SHED_LOG_EVERY_MS`], summing every partition's
/// sheddings since; `xoflow_enrich_history_shed_events_total` counts each.
#[derive(Debug, Default)]
pub(crate) struct ShedLog {
    /// When the last line was written; `None` before the first.
    logged_ms: Option<i64>,
    events: u64,
    customers: u64,
}

const SHED_LOG_EVERY_MS: i64 = 60_000;

/// A shedding line's figures: events and customers shed since the line
/// before, `over_ms` after it (`None` for the first).
#[derive(Debug, PartialEq, Eq)]
struct Shed {
    events: u64,
    customers: u64,
    over_ms: Option<i64>,
}

impl ShedLog {
    /// Adds a batch's sheddings; the figures to log when a line is due.
    fn add(&mut self, events: u64, customers: u64, now_ms: i64) -> Option<Shed> {
        self.events += events;
        self.customers += customers;
        let over_ms = self.logged_ms.map(|t| now_ms - t);
        if self.events == 0 || over_ms.is_some_and(|ms| ms < SHED_LOG_EVERY_MS) {
            return None;
        }
        self.logged_ms = Some(now_ms);
        Some(Shed {
            events: std::mem::take(&mut self.events),
            customers: std::mem::take(&mut self.customers),
            over_ms,
        })
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
    /// Events a link resolved, sent to their customers' partitions.
    pub moved: u64,
    /// Repairs and expired waits of the batch.
    pub stats: crate::join::JoinStats,
    /// Events kept in customers' histories for repairs, afterwards.
    pub history: u64,
    /// The memory those histories take, afterwards, and what they may take
    /// (`max_history_bytes`).
    pub history_bytes: u64,
    pub history_budget: u64,
    /// Of those, events naming an order or call not met yet.
    pub waiting_for_reference: u64,
    /// Unresolved events waiting for a link, afterwards.
    pub waiting_for_link: u64,
    /// Links the join partitions remember, afterwards.
    pub links_remembered: u64,
    /// Customers the join partitions hold, afterwards, and of those the
    /// ones in the local store.
    pub customers: u64,
    pub customers_on_disk: u64,
    /// Alerts raised and suppressed in the batch.
    pub alerts: crate::alert::AlertStats,
}

impl BatchEnriched {
    /// Its metrics, its debug line, and the shedding line when `shed_log`
    /// says one is due.
    pub fn emit(&self, shed_log: &mut ShedLog) {
        tracing::debug!(
            records = self.records,
            dead_letters = self.dead_letters,
            state_changes = self.state_changes,
            held = self.held,
            "batch enriched"
        );
        counter!(Metric::EventsEnriched.name()).increment(self.records);
        counter!(Metric::RecordsOut.name()).increment(self.records);
        counter!(Metric::Batches.name()).increment(1);
        counter!(Metric::StateChanges.name()).increment(self.state_changes);
        gauge!(Metric::EventsHeld.name()).set(self.held as f64);
        counter!(Metric::Repairs.name()).increment(self.stats.repairs);
        counter!(Metric::EventsMoved.name()).increment(self.moved);
        counter!(Metric::WaitsExpired.name(), "waiting_for" => "link")
            .increment(self.stats.expired_link);
        counter!(Metric::WaitsExpired.name(), "waiting_for" => "reference")
            .increment(self.stats.expired_reference);
        gauge!(Metric::HistoryEvents.name()).set(self.history as f64);
        gauge!(Metric::HistoryBytes.name()).set(self.history_bytes as f64);
        counter!(Metric::HistoryShedEvents.name()).increment(self.stats.shed_events);
        let now_ms = xoflow_common::clock::now_unix_millis();
        if let Some(shed) = shed_log.add(self.stats.shed_events, self.stats.shed_customers, now_ms)
        {
            tracing::info!(
                events = shed.events,
                customers = shed.customers,
                over_seconds = shed.over_ms.map(|ms| ms / 1000),
                history_bytes = self.history_bytes,
                budget = self.history_budget,
                "join histories over their memory budget: the least recently active customers' shed"
            );
        }
        gauge!(Metric::JoinWaiting.name(), "waiting_for" => "reference")
            .set(self.waiting_for_reference as f64);
        gauge!(Metric::JoinWaiting.name(), "waiting_for" => "link")
            .set(self.waiting_for_link as f64);
        gauge!(Metric::JoinLinks.name()).set(self.links_remembered as f64);
        gauge!(Metric::JoinCustomers.name()).set(self.customers as f64);
        gauge!(Metric::JoinCustomersOnDisk.name()).set(self.customers_on_disk as f64);
        counter!(Metric::JoinLinksForgotten.name()).increment(self.stats.forgotten_links);
        counter!(Metric::AlertsRaised.name()).increment(self.alerts.raised);
        for (reason, n) in [
            ("repeated", self.alerts.repeated),
            ("quiet_period", self.alerts.quiet),
            ("do_not_contact", self.alerts.do_not_contact),
        ] {
            counter!(Metric::AlertsSuppressed.name(), "reason" => reason).increment(n);
        }
        dead_letters(self.dead_letters);
    }
}

/// Exports the counters of failures at 0 when the stage starts, so that
/// alerting on their increase works from the first failure.
pub(crate) fn init() {
    xoflow_common::telemetry::ErrorKind::init(Metric::Errors.name());
    dead_letters(0);
}

/// Records that did not decode: the only reason enrich refuses one.
fn dead_letters(n: u64) {
    counter!(
        Metric::DeadLetters.name(),
        "reason" => xoflow_common::dead_letter::Reason::Decode.as_str()
    )
    .increment(n);
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
                    Metric::LinksKnown
                        | Metric::LinkStoreWriteBuffer
                        | Metric::EventsHeld
                        | Metric::EventsWaiting
                        | Metric::HistoryEvents
                        | Metric::HistoryBytes
                        | Metric::JoinWaiting
                        | Metric::JoinLinks
                        | Metric::JoinCustomers
                        | Metric::JoinCustomersOnDisk
                        | Metric::ConsumerLag
                        | Metric::ProducerQueue
                ),
                "{n}"
            );
        }
    }

    #[test]
    fn shedding_is_logged_at_first_then_once_a_minute_with_the_sum() {
        let mut s = ShedLog::default();
        assert_eq!(s.add(0, 0, 1_000), None, "nothing shed, nothing logged");
        let first = Shed {
            events: 100,
            customers: 10,
            over_ms: None,
        };
        assert_eq!(s.add(100, 10, 2_000), Some(first));
        assert_eq!(s.add(50, 5, 3_000), None);
        assert_eq!(s.add(70, 7, 2_000 + SHED_LOG_EVERY_MS - 1), None);
        let summed = Shed {
            events: 120,
            customers: 12,
            over_ms: Some(SHED_LOG_EVERY_MS),
        };
        assert_eq!(s.add(0, 0, 2_000 + SHED_LOG_EVERY_MS), Some(summed));
        assert_eq!(
            s.add(0, 0, 4_000 + 2 * SHED_LOG_EVERY_MS),
            None,
            "none since"
        );
        assert_eq!(
            s.add(1, 1, 5_000 + 2 * SHED_LOG_EVERY_MS),
            Some(Shed {
                events: 1,
                customers: 1,
                over_ms: Some(3_000 + SHED_LOG_EVERY_MS),
            })
        );
    }
}
