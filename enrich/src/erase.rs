//! The enrich side of `xoflow erase` (docs/privacy.md): forgetting a
//! customer and their hashed identifiers in Kafka and in running enrich
//! instances.
//!
//! In: a tenant, its customer ids and hashed identifiers (as the collectors
//! hash them).
//! Out, in this order, each acknowledged before the next:
//!
//! 1. an erasure notice per customer and identifier on
//!    `<group>.repartition` (header `xoflow-erase`, keyed like the events
//!    it stands for, the tenant as its value), so the join partition holding the state forgets it
//!    in memory — base, history, alert book, events still in the lateness
//!    buffer, unresolved events waiting for a link — and writes tombstones
//!    for its changelog records, whether it runs now or reads the notice
//!    after a restart;
//! 2. a tombstone on `<group>.links` for every identifier the link table
//!    holds: the resolve loops, which follow that topic, drop the link from
//!    memory, and no restart reads it back;
//! 3. a tombstone on `<group>.changelog` for every record still holding the
//!    customer's or identifier's state (read back partition by partition),
//!    for state no running instance holds.
//!
//! Tombstones remove the data from the topics' latest view at once and from
//! the log when the broker compacts it. Nothing here decides who the
//! customer is: the caller expands the subject with [`Eraser::linked`].

use rdkafka::consumer::Consumer;
use xoflow_common::kafka::{BatchProducer, KafkaConfig, Outgoing};

use crate::{
    EnrichConfig, EnrichError,
    identity::Links,
    stage::{self, InternalTopics},
    tenancy,
};

/// What an erasure wrote to Kafka.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KafkaErasure {
    /// Erasure notices sent to the join partitions.
    pub notices: u32,
    /// Links removed from the link table.
    pub link_tombstones: u32,
    /// Changelog records removed.
    pub changelog_tombstones: u32,
}

/// Erases from the topics of the enrich group of `cfg`.
pub struct Eraser {
    kafka: KafkaConfig,
    cfg: EnrichConfig,
    links: Links,
    producer: BatchProducer,
    internal: InternalTopics,
}

impl Eraser {
    /// Creates enrich's topics if needed and reads the link table.
    pub async fn open(kafka: &KafkaConfig, cfg: &EnrichConfig) -> Result<Self, EnrichError> {
        let internal: InternalTopics = stage::ensure_topics(kafka, cfg).await?;
        let (_, links) = stage::read_link_table(kafka, cfg, &internal).await?;
        Ok(Eraser {
            kafka: kafka.clone(),
            cfg: cfg.clone(),
            links,
            producer: kafka.batch_producer().map_err(EnrichError::Setup)?,
            internal,
        })
    }

    /// The customers the link table names for `identifiers`, and the
    /// identifiers it links to `customers`: the rest of the subject.
    pub fn linked(
        &mut self,
        customers: &[String],
        identifiers: &[String],
    ) -> Result<(Vec<String>, Vec<String>), EnrichError> {
        let mut more_customers: Vec<String> = identifiers
            .iter()
            .filter_map(|h| self.links.get(h))
            .filter(|c| !customers.iter().any(|x| x == c))
            .map(std::borrow::Cow::into_owned)
            .collect();
        more_customers.sort();
        more_customers.dedup();
        let mut more_identifiers: Vec<String> = customers
            .iter()
            .chain(&more_customers)
            .flat_map(|c| self.links.identifiers_of(c))
            .filter(|h| !identifiers.iter().any(|x| x == h))
            .collect();
        more_identifiers.sort();
        more_identifiers.dedup();
        match self.links.take_error() {
            Some(e) => Err(EnrichError::LinkStore(e)),
            None => Ok((more_customers, more_identifiers)),
        }
    }

    /// Erases `tenant`'s `customers` and `identifiers` (see the module
    /// doc).
    pub async fn erase(
        &mut self,
        tenant: &str,
        customers: &[String],
        identifiers: &[String],
    ) -> Result<KafkaErasure, EnrichError> {
        let mut done = KafkaErasure::default();
        let produce = |source| EnrichError::Produce {
            attempts: 1,
            source,
        };

        let keys = stage::erase_notice_keys(customers, identifiers);
        let notices: Vec<Outgoing<'_>> = keys
            .iter()
            .map(|k| stage::erase_notice(k, tenant))
            .collect();
        self.producer
            .send_all(&self.internal.repartition, &notices)
            .await
            .map_err(|e| produce(e.first))?;
        done.notices = notices.len() as u32;

        let linked: Vec<&String> = identifiers
            .iter()
            .filter(|h| self.links.get(h).is_some())
            .collect();
        if let Some(e) = self.links.take_error() {
            return Err(EnrichError::LinkStore(e));
        }
        let tombstones: Vec<Outgoing<'_>> = linked
            .iter()
            .map(|h| Outgoing::keyed(h.as_bytes(), &[]))
            .collect();
        self.producer
            .send_all(&self.internal.links, &tombstones)
            .await
            .map_err(|e| produce(e.first))?;
        done.link_tombstones = tombstones.len() as u32;
        for h in linked {
            self.links.remove(h);
        }

        for p in self.changelog_partitions()? {
            let keys = stage::changelog_keys(&self.kafka, &self.cfg, &self.internal, p).await?;
            let erased: Vec<&Vec<u8>> = keys
                .iter()
                .filter(|k| belongs(k, tenant, customers, identifiers))
                .collect();
            if erased.is_empty() {
                continue;
            }
            let tombstones: Vec<Outgoing<'_>> =
                erased.iter().map(|k| Outgoing::keyed(k, &[])).collect();
            self.producer
                .send_all_to_partition(&self.internal.changelog, p, &tombstones)
                .await
                .map_err(|e| produce(e.first))?;
            done.changelog_tombstones += tombstones.len() as u32;
        }
        Ok(done)
    }

    /// Changelog records still holding state of `customers` or
    /// `identifiers` (0 once an erasure is complete): for audits and tests.
    pub async fn still_held(
        &self,
        tenant: &str,
        customers: &[String],
        identifiers: &[String],
    ) -> Result<usize, EnrichError> {
        let mut n = 0;
        for p in self.changelog_partitions()? {
            let keys = stage::changelog_keys(&self.kafka, &self.cfg, &self.internal, p).await?;
            n += keys
                .iter()
                .filter(|k| belongs(k, tenant, customers, identifiers))
                .count();
        }
        Ok(n)
    }

    /// Whether the link table names `identifier`.
    pub fn is_linked(&self, identifier: &str) -> bool {
        self.links.get(identifier).is_some()
    }

    fn changelog_partitions(&self) -> Result<Vec<i32>, EnrichError> {
        let consumer = self.kafka.reader().map_err(EnrichError::Setup)?;
        let md = consumer
            .fetch_metadata(
                Some(&self.internal.changelog),
                std::time::Duration::from_secs(10),
            )
            .map_err(|source| EnrichError::Restore {
                topic: self.internal.changelog.clone(),
                source,
            })?;
        Ok(md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect())
    }
}

/// Whether a changelog key holds state of one of `tenant`'s `customers`
/// (its base `<customer>`, a history event `<customer> NUL <event id>`, its
/// alert book `NUL NUL <customer>`, `<customer>` its state key: tenant, US,
/// customer id) or of one of `identifiers` (`NUL <identifier>`). A key
/// without a tenant (written before keys had one) is held by whichever
/// tenant's customer has its id. See `proto/xoflow/v1/state.proto`.
fn belongs(key: &[u8], tenant: &str, customers: &[String], identifiers: &[String]) -> bool {
    if let Some(h) = key.strip_prefix(&[0]).filter(|k| k.first() != Some(&0)) {
        return identifiers.iter().any(|x| x.as_bytes() == h);
    }
    let customer = match key.strip_prefix(&crate::alert::BOOK_PREFIX) {
        Some(c) => c,
        None => key.split(|b| *b == 0).next().unwrap_or_default(),
    };
    let Ok(customer) = std::str::from_utf8(customer) else {
        return false;
    };
    let of = tenancy::tenant_part(customer);
    (of.is_empty() || of == tenant)
        && customers
            .iter()
            .any(|x| x == tenancy::customer_part(customer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_keys_are_told_apart() {
        let c = vec!["c-1".to_owned()];
        let h = vec!["ab12".to_owned()];
        let belongs = |k: &[u8]| belongs(k, "acme", &c, &h);
        assert!(belongs(b"acme\x1fc-1"));
        assert!(belongs(b"acme\x1fc-1\0ev-9"));
        assert!(belongs(b"\0\0acme\x1fc-1"));
        assert!(belongs(b"\0ab12"));
        assert!(!belongs(b"acme\x1fc-10"));
        assert!(!belongs(b"acme\x1fc-10\0ev-9"));
        assert!(!belongs(b"\0\0acme\x1fc-10"));
        assert!(!belongs(b"\0ab123"));
        assert!(!belongs(b"\0c-1"), "an identifier key is not a customer");
        // Another tenant's customer with the same id is not erased.
        assert!(!belongs(b"beta\x1fc-1"));
        assert!(!belongs(b"beta\x1fc-1\0ev-9"));
        assert!(!belongs(b"\0\0beta\x1fc-1"));
        // Keys from before keys had a tenant.
        assert!(belongs(b"c-1"));
        assert!(belongs(b"c-1\0ev-9"));
        assert!(belongs(b"\0\0c-1"));
    }
}
