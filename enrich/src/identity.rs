//! Identity resolution: which customer an event belongs to.
//!
//! Events that carry a customer id and weak identifiers (hashed e-mail,
//! phone, social handle, device) teach links; events with only weak
//! identifiers are resolved through them. In the stage the link table is a
//! global table: every instance reads the whole links topic at start-up and
//! follows it, and writes the links it learns there (see [`crate::stage`]).

use std::collections::HashMap;

use xoflow_proto::v1::{CustomerIdentity, Event, IdentityResolution};

/// The customer an event was resolved to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub customer_id: Option<String>,
    pub resolution: IdentityResolution,
}

impl Resolved {
    pub fn unresolved() -> Self {
        Resolved {
            customer_id: None,
            resolution: IdentityResolution::Unresolved,
        }
    }
}

/// Hashed weak identifier → customer id.
///
/// The global table grows with every identifier an instance has seen (a
/// new customer brings two or three), so each link is kept small: an
/// identifier as ingest hashes it (64 lowercase hex digits of an
/// HMAC-SHA256) as its 32 bytes, in the map's slot, rather than 64 digits
/// on the heap; the customer id as a boxed `str`. Identifiers of any other
/// shape (hashed elsewhere, a test's) are kept as text in a map of their
/// own. The bench's customers (two or three identifiers each) take about
/// 220 bytes each in the table instead of 470 (BENCHMARKS.md, "Customers
/// kept encoded").
#[derive(Debug, Default)]
pub struct Links {
    digests: HashMap<[u8; 32], Box<str>, foldhash::fast::RandomState>,
    texts: HashMap<Box<str>, Box<str>, foldhash::fast::RandomState>,
}

/// `identifier` as [`Links`] keys it: `Ok` its digest, `Err` its text.
fn key(identifier: &str) -> Result<[u8; 32], &str> {
    let mut digest = [0u8; 32];
    // Lowercase only: the text must come back as it went in.
    let lower_hex = identifier
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if identifier.len() == 64 && lower_hex && hex::decode_to_slice(identifier, &mut digest).is_ok()
    {
        Ok(digest)
    } else {
        Err(identifier)
    }
}

impl Links {
    pub fn len(&self) -> usize {
        self.digests.len() + self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a link read from the links topic (the latest wins); an
    /// empty customer id (a tombstone: the identifier was erased) removes
    /// it.
    pub fn insert(&mut self, identifier: String, customer_id: String) {
        if customer_id.is_empty() {
            self.remove(&identifier);
        } else {
            self.set(&identifier, &customer_id);
        }
    }

    fn set(&mut self, identifier: &str, customer_id: &str) {
        match key(identifier) {
            Ok(d) => self.digests.insert(d, customer_id.into()),
            Err(t) => self.texts.insert(t.into(), customer_id.into()),
        };
    }

    /// Forgets `identifier` (erasure).
    pub fn remove(&mut self, identifier: &str) -> Option<String> {
        match key(identifier) {
            Ok(d) => self.digests.remove(&d),
            Err(t) => self.texts.remove(t),
        }
        .map(String::from)
    }

    /// Every identifier linked to `customer_id`.
    pub fn identifiers_of<'a>(&'a self, customer_id: &'a str) -> impl Iterator<Item = String> + 'a {
        let digests = self
            .digests
            .iter()
            .filter(move |(_, c)| &***c == customer_id)
            .map(|(d, _)| hex::encode(d));
        let texts = self
            .texts
            .iter()
            .filter(move |(_, c)| &***c == customer_id)
            .map(|(t, _)| t.to_string());
        digests.chain(texts)
    }

    /// The customer `identifier` is linked to.
    pub fn get(&self, identifier: &str) -> Option<&str> {
        match key(identifier) {
            Ok(d) => self.digests.get(&d),
            Err(t) => self.texts.get(t),
        }
        .map(|c| &**c)
    }

    /// Learns the links `e` teaches; calls `new_link` for each link that is
    /// new or changed (to be published).
    pub fn learn(&mut self, e: &Event, new_link: impl FnMut(&str, &str)) {
        self.learn_from(e.customer.as_ref(), new_link);
    }

    /// [`Links::learn`] from an event's identity alone.
    pub fn learn_from(
        &mut self,
        customer: Option<&CustomerIdentity>,
        mut new_link: impl FnMut(&str, &str),
    ) {
        let Some(c) = customer else { return };
        if c.customer_id.is_empty() {
            return;
        }
        for h in [
            &c.email_hash,
            &c.phone_hash,
            &c.social_handle_hash,
            &c.device_id_hash,
        ] {
            if h.is_empty() {
                continue;
            }
            match self.get(h) {
                Some(known) if known == c.customer_id => continue,
                Some(known) => crate::telemetry::LinkRepointed {
                    origin: "event",
                    identifier: h,
                    from: known,
                    to: &c.customer_id,
                }
                .emit(),
                None => {}
            }
            self.set(h, &c.customer_id);
            new_link(h, &c.customer_id);
        }
    }

    /// The customer of `e`: its own id, else the first weak identifier
    /// linked to one.
    pub fn resolve(&self, e: &Event) -> Resolved {
        self.resolve_from(e.customer.as_ref())
    }

    /// [`Links::resolve`] from an event's identity alone.
    pub fn resolve_from(&self, customer: Option<&CustomerIdentity>) -> Resolved {
        let Some(c) = customer else {
            return Resolved::unresolved();
        };
        if !c.customer_id.is_empty() {
            return Resolved {
                customer_id: Some(c.customer_id.clone()),
                resolution: IdentityResolution::Direct,
            };
        }
        [
            &c.email_hash,
            &c.phone_hash,
            &c.social_handle_hash,
            &c.device_id_hash,
        ]
        .into_iter()
        .filter(|h| !h.is_empty())
        .find_map(|h| self.get(h))
        .map_or_else(Resolved::unresolved, |id| Resolved {
            customer_id: Some(id.to_string()),
            resolution: IdentityResolution::Linked,
        })
    }
}

/// The identifier an event no link resolved waits under, in the join, for
/// a link (see `join::unresolved`): its first weak identifier, in the order
/// [`Links::resolve`] tries them. `None` when it has none (nothing could
/// ever resolve it).
pub fn wait_identifier(customer: Option<&CustomerIdentity>) -> Option<&str> {
    let c = customer?;
    [
        &c.email_hash,
        &c.phone_hash,
        &c.social_handle_hash,
        &c.device_id_hash,
    ]
    .into_iter()
    .find(|h| !h.is_empty())
    .map(String::as_str)
}

/// An event known only by weak identifiers that no link resolves yet,
/// waiting in the resolve loop for one (see [`Waiting`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Waiter {
    /// Where it was read: its offset is not committed while it waits.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Its repartition key when it leaves unresolved.
    pub event_id: String,
    pub customer: CustomerIdentity,
    /// The event as read, forwarded unchanged.
    pub payload: Vec<u8>,
    /// Wall-clock milliseconds when it started waiting.
    pub since_ms: i64,
}

/// Events waiting for the link that resolves them, up to `max_hold` each.
///
/// The link that resolves an e-mail-only survey is taught by another event
/// of the customer (an order, a logged-in click) which often travels on
/// another partition — read in another fetch, or by another instance that
/// publishes it on the links topic a moment later. Resolving at once would
/// make the answer depend on which partition the consumer happened to read
/// first. Waiting up to the join's `max_hold` applies the join's lateness
/// rule to identity as well: within the bound, the outcome does not depend
/// on arrival order. Pure; the resolve loop owns the I/O and commits each
/// partition only below its lowest waiting event.
#[derive(Debug, Default)]
pub struct Waiting {
    waiters: Vec<Waiter>,
}

impl Waiting {
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Whether an event with this identity, which `links` does not resolve,
    /// should wait: it carries a weak identifier a link could still resolve
    /// (and no customer id, which would have resolved it).
    pub fn worth_waiting(customer: Option<&CustomerIdentity>) -> bool {
        customer.is_some_and(|c| {
            c.customer_id.is_empty()
                && [
                    &c.email_hash,
                    &c.phone_hash,
                    &c.social_handle_hash,
                    &c.device_id_hash,
                ]
                .iter()
                .any(|h| !h.is_empty())
        })
    }

    pub fn hold(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
    }

    /// Takes the waiters `links` now resolves, and those that waited
    /// `max_hold_ms` (unresolved), in the order they arrived.
    pub fn release(
        &mut self,
        links: &Links,
        now_ms: i64,
        max_hold_ms: i64,
    ) -> Vec<(Waiter, Resolved)> {
        let mut out = Vec::new();
        let mut keep = Vec::with_capacity(self.waiters.len());
        for w in self.waiters.drain(..) {
            let r = links.resolve_from(Some(&w.customer));
            if r.customer_id.is_some() || now_ms - w.since_ms >= max_hold_ms {
                out.push((w, r));
            } else {
                keep.push(w);
            }
        }
        self.waiters = keep;
        out
    }

    /// The lowest offset still waiting on `topic[partition]`: the commit
    /// bound.
    pub fn lowest_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.waiters
            .iter()
            .filter(|w| w.partition == partition && w.topic == topic)
            .map(|w| w.offset)
            .min()
    }

    /// Forgets the waiters of a partition taken from this instance: their
    /// offsets were not committed, so its next owner reads them again.
    pub fn drop_partition(&mut self, topic: &str, partition: i32) {
        self.waiters
            .retain(|w| !(w.partition == partition && w.topic == topic));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_email(email: &str) -> CustomerIdentity {
        CustomerIdentity {
            email_hash: email.into(),
            ..Default::default()
        }
    }

    /// A digest kept as its bytes and any other identifier as its text
    /// come back exactly as they went in, and never meet each other.
    #[test]
    fn links_give_back_the_identifiers_they_were_given() {
        let digest = "0f".repeat(32);
        let upper = "0F".repeat(32);
        let short = "abc123";
        let mut links = Links::default();
        links.insert(digest.clone(), "c1".into());
        links.insert(upper.clone(), "c1".into());
        links.insert(short.into(), "c2".into());
        assert_eq!(links.len(), 3);
        assert_eq!(links.get(&digest), Some("c1"));
        assert_eq!(links.get(&upper), Some("c1"));
        assert_eq!(links.get(short), Some("c2"));
        assert_eq!(links.get(&"1f".repeat(32)), None);
        let mut of_c1: Vec<String> = links.identifiers_of("c1").collect();
        of_c1.sort();
        assert_eq!(of_c1, vec![upper.clone(), digest.clone()]);
        // Learnt from an event too, and a tombstone removes it.
        let e = Event {
            customer: Some(CustomerIdentity {
                customer_id: "c3".into(),
                phone_hash: "2e".repeat(32),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut learnt = Vec::new();
        links.learn(&e, |h, c| learnt.push((h.to_owned(), c.to_owned())));
        assert_eq!(learnt, vec![("2e".repeat(32), "c3".to_owned())]);
        assert_eq!(links.remove(&digest).as_deref(), Some("c1"));
        links.insert(upper.clone(), String::new());
        assert_eq!(links.len(), 2);
        assert_eq!(links.get(&digest), None);
        assert_eq!(links.get(&upper), None);
    }

    fn waiter(partition: i32, offset: i64, email: &str, since_ms: i64) -> Waiter {
        Waiter {
            topic: "events".into(),
            partition,
            offset,
            event_id: format!("e{offset}"),
            customer: by_email(email),
            payload: Vec::new(),
            since_ms,
        }
    }

    #[test]
    fn only_weak_identifiers_are_worth_waiting_for() {
        assert!(Waiting::worth_waiting(Some(&by_email("e1"))));
        let direct = CustomerIdentity {
            customer_id: "c1".into(),
            email_hash: "e1".into(),
            ..Default::default()
        };
        assert!(!Waiting::worth_waiting(Some(&direct)));
        assert!(!Waiting::worth_waiting(Some(&CustomerIdentity::default())));
        assert!(!Waiting::worth_waiting(None));
    }

    #[test]
    fn a_waiter_leaves_when_its_link_arrives_or_its_time_is_up() {
        let mut w = Waiting::default();
        w.hold(waiter(0, 10, "e1", 1_000));
        w.hold(waiter(0, 12, "e2", 1_000));
        w.hold(waiter(1, 5, "e3", 1_200));
        let mut links = Links::default();
        assert!(w.release(&links, 1_100, 500).is_empty());
        assert_eq!(w.lowest_offset("events", 0), Some(10));

        links.insert("e2".into(), "c2".into());
        let out = w.release(&links, 1_200, 500);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.offset, 12);
        assert_eq!(out[0].1.customer_id.as_deref(), Some("c2"));
        assert_eq!(out[0].1.resolution, IdentityResolution::Linked);

        let out = w.release(&links, 1_500, 500);
        assert_eq!(out.len(), 1, "e1 waited 500 ms");
        assert_eq!(out[0].0.offset, 10);
        assert_eq!(out[0].1, Resolved::unresolved());
        assert_eq!(w.lowest_offset("events", 0), None);
        assert_eq!(w.lowest_offset("events", 1), Some(5));

        w.drop_partition("events", 1);
        assert!(w.is_empty());
    }
}
