//! Seeding the link table from outside the event stream: the enrich side
//! of `xoflow identities import` (a CRM export of customer id → e-mail,
//! phone, social handle, device).
//!
//! In: (hashed identifier, customer id) links, hashed as the collectors
//! hash events (`xoflow_ingest::identities`). Out: the links that are new
//! or changed, produced to `<group>.links` — the topic every enrich
//! instance reads whole at start-up and follows while it runs, so running
//! instances learn them within a batch — and a link notice for each to
//! `<group>.repartition`, so that events already emitted unresolved with
//! that identifier are resolved and emitted again (see `join::unresolved`).
//! The current table is read first,
//! so a re-run produces nothing (idempotent) and a link that moves an
//! identifier to another customer is counted and logged
//! (`xoflow_enrich_links_repointed_total{origin="import"}`).

use xoflow_common::kafka::{BatchProducer, KafkaConfig, Outgoing};

use crate::{
    EnrichConfig, EnrichError,
    identity::Links,
    stage::{self, InternalTopics},
    telemetry,
};

/// What a seeding did, so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    /// Links the table did not have: produced.
    pub new: u64,
    /// Links the table had already: nothing produced.
    pub unchanged: u64,
    /// Identifiers moved to another customer: produced, counted, logged.
    pub repointed: u64,
}

/// Writes links into the table of the enrich group of `cfg`.
pub struct Seeder {
    links: Links,
    producer: BatchProducer,
    internal: InternalTopics,
    report: SeedReport,
}

impl Seeder {
    /// Creates enrich's topics if needed and reads the current table.
    pub async fn open(kafka: &KafkaConfig, cfg: &EnrichConfig) -> Result<Self, EnrichError> {
        let internal: InternalTopics = stage::ensure_topics(kafka, cfg).await?;
        let (_, links) = stage::read_link_table(kafka, cfg, &internal).await?;
        Ok(Seeder {
            links,
            producer: kafka.batch_producer().map_err(EnrichError::Setup)?,
            internal,
            report: SeedReport::default(),
        })
    }

    /// Links in the table now.
    pub fn known(&self) -> usize {
        self.links.len()
    }

    /// Produces the new and changed links of `links` (later ones win), and
    /// waits until the broker acknowledged them.
    pub async fn seed(&mut self, links: Vec<(String, String)>) -> Result<(), EnrichError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (identifier, customer) in links {
            match self.links.get(&identifier) {
                Some(known) if known == customer => {
                    self.report.unchanged += 1;
                    continue;
                }
                Some(known) => {
                    telemetry::LinkRepointed {
                        origin: "import",
                        identifier: &identifier,
                        from: &known,
                        to: &customer,
                    }
                    .emit();
                    self.report.repointed += 1;
                }
                None => self.report.new += 1,
            }
            self.links.insert(identifier.clone(), customer.clone());
            out.push((identifier, customer));
        }
        // A link store that failed may have read a known link as new.
        if let Some(e) = self.links.take_error() {
            return Err(EnrichError::LinkStore(e));
        }
        if out.is_empty() {
            return Ok(());
        }
        let records: Vec<Outgoing<'_>> = out
            .iter()
            .map(|(h, c)| Outgoing::keyed(h.as_bytes(), c.as_bytes()))
            .collect();
        let notices = stage::link_notice_records(&out);
        let notices: Vec<Outgoing<'_>> = notices
            .iter()
            .map(|(k, c)| stage::link_notice(k, c))
            .collect();
        // The notices first, which move the events already waiting; then
        // the links, so that resolve loops key the identifier's next events
        // by customer. A failure in between leaves the links out of the
        // table, and a re-run sends both again (the other way round, a re-run
        // would find the links known and never announce them).
        for (topic, records) in [
            (&self.internal.repartition, &notices),
            (&self.internal.links, &records),
        ] {
            self.producer
                .send_all(topic, records)
                .await
                .map_err(|e| EnrichError::Produce {
                    attempts: 1,
                    source: e.first,
                })?;
        }
        Ok(())
    }

    pub fn report(&self) -> SeedReport {
        self.report
    }
}
