//! Events known only by a weak identifier no link resolved, waiting on the
//! join partition their identifier is keyed to until a link names their
//! customer.
//!
//! The resolve loop keys such an event by its identifier (see
//! [`crate::identity::wait_identifier`]), and announces every link it
//! learns to the partition of the identifier's key. Here the event is
//! emitted unresolved at once and kept; when the link comes, it leaves
//! (the operator moves it to its customer's partition, where it joins the
//! customer's history and is emitted again, a revision up). The link is
//! remembered, so an event of that identifier arriving afterwards moves at
//! once. Waiting is bounded: by event time (`order_window` behind the
//! partition's latest event) and by count (`max_waiting`), oldest first.
//!
//! So is remembering: only the latest `max_links` links of a partition are
//! kept. A link is needed here only until every instance's resolve loop
//! has applied it from the links topic (after that they resolve the
//! identifier's events themselves, and none comes here unresolved), while
//! the links themselves come with every new customer: unbounded, this copy
//! of the link table grew with the customers.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use xoflow_proto::{
    Message as _,
    v1::{Event, JoinIdentifierState, JoinWaitingEvent},
};

/// One waiting event, kept as its encoding: decoded, an event is about
/// 1.5 KB against its 300 encoded bytes, and most waiting events leave
/// unlinked (expired) without being read again. Its id is kept only as a
/// hash (a replay is confirmed from the bytes), and its entry in the
/// expiry index is its sequence number: with the waiting events at their
/// bound under a stream of unlinked identifiers, two copies of each
/// event's id and identifier and a first push's room for four were 38 %
/// of what a waiting event cost (BENCHMARKS.md, "What the RSS row
/// measures").
#[derive(Debug, Clone)]
pub(super) struct Waiter {
    /// The event, encoded (as read, and as its changelog record keeps it).
    pub bytes: Arc<[u8]>,
    pub at: i64,
    /// The revision it was last emitted with (unresolved).
    pub revision: u32,
    /// Hash of the event's id ([`id_hash`]).
    id_hash: u64,
    /// Its place in the [`Expiry`] index; unique in the partition.
    seq: u64,
}

impl Waiter {
    /// A waiting event; `event_id` is the id `bytes` decode to.
    pub fn new(event_id: &str, bytes: Arc<[u8]>, at: i64, revision: u32) -> Self {
        Waiter {
            bytes,
            at,
            revision,
            id_hash: id_hash(event_id),
            seq: 0,
        }
    }

    /// Whether this is the event `event_id` (the hash first; on a match,
    /// the id its bytes decode to).
    fn is(&self, event_id: &str, hash: u64) -> bool {
        self.id_hash == hash && Event::decode(&*self.bytes).is_ok_and(|e| e.event_id == event_id)
    }
}

fn id_hash(event_id: &str) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::default().hash_one(event_id)
}

#[derive(Debug, Default)]
struct Identifier {
    customer_id: Option<String>,
    /// The sequence number its link was last given (see
    /// [`Unresolved::linked_order`]).
    linked_seq: u64,
    waiting: Vec<Waiter>,
}

type Ids = HashMap<Arc<str>, Identifier, foldhash::fast::RandomState>;

/// `identifier`'s entry, created empty if there is none.
fn entry<'a>(ids: &'a mut Ids, identifier: &str) -> (Arc<str>, &'a mut Identifier) {
    let key = match ids.get_key_value(identifier) {
        Some((k, _)) => k.clone(),
        None => Arc::from(identifier),
    };
    let id = ids.entry(key.clone()).or_default();
    (key, id)
}

/// (event time, [`Waiter::seq`]) of every waiting event, oldest first
/// (what expires first), with the identifier it waits under.
#[derive(Debug, Default)]
struct Expiry {
    entries: BTreeMap<(i64, u64), Arc<str>>,
    /// The last [`Waiter::seq`] given.
    last_seq: u64,
}

impl Expiry {
    /// Gives `w` its sequence number and its entry.
    fn add(&mut self, w: &mut Waiter, identifier: Arc<str>) {
        self.last_seq += 1;
        w.seq = self.last_seq;
        self.entries.insert((w.at, w.seq), identifier);
    }

    fn remove(&mut self, w: &Waiter) {
        self.entries.remove(&(w.at, w.seq));
    }
}

/// The identifiers of one join partition.
#[derive(Debug, Default)]
pub(super) struct Unresolved {
    /// Shared with `linked_order`: a remembered link costs its identifier
    /// once.
    ids: Ids,
    expiry: Expiry,
    /// Identifiers in the order their links came, with the sequence number
    /// each was given: the oldest are forgotten first. An identifier linked
    /// again is queued again; its earlier entry, whose number no longer
    /// matches, is skipped.
    linked_order: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
    /// Identifiers with a link.
    links: usize,
}

impl Unresolved {
    /// Events waiting.
    pub fn len(&self) -> usize {
        self.expiry.entries.len()
    }

    /// Links remembered.
    pub fn links(&self) -> usize {
        self.links
    }

    /// The customer a link gave `identifier`, if one did.
    pub fn linked(&self, identifier: &str) -> Option<&str> {
        self.ids.get(identifier)?.customer_id.as_deref()
    }

    /// Keeps `w` (the event `event_id`) waiting under `identifier`; false
    /// if it already waits (a replay).
    pub fn wait(&mut self, identifier: &str, event_id: &str, mut w: Waiter) -> bool {
        let (key, id) = entry(&mut self.ids, identifier);
        if id.waiting.iter().any(|x| x.is(event_id, w.id_hash)) {
            return false;
        }
        self.expiry.add(&mut w, key);
        // Most identifiers have one event waiting: room for one, not the
        // four a first push makes (later pushes grow as usual).
        if id.waiting.capacity() == 0 {
            id.waiting.reserve_exact(1);
        }
        id.waiting.push(w);
        true
    }

    /// Records that `identifier` belongs to `customer_id`; returns the
    /// events that waited for it.
    pub fn link(&mut self, identifier: &str, customer_id: &str) -> Vec<Waiter> {
        self.next_seq += 1;
        let seq = self.next_seq;
        let (key, id) = entry(&mut self.ids, identifier);
        let new = id.customer_id.is_none();
        id.customer_id = Some(customer_id.to_owned());
        id.linked_seq = seq;
        let gone = std::mem::take(&mut id.waiting);
        self.links += usize::from(new);
        self.linked_order.push_back((seq, key));
        for w in &gone {
            self.expiry.remove(w);
        }
        gone
    }

    /// Drops waiting events older than `before` (event time), then the
    /// oldest beyond `max`; returns the identifiers changed and how many
    /// events left.
    pub fn expire(&mut self, before: i64, max: usize) -> (Vec<String>, u64) {
        let mut changed = Vec::new();
        let mut n = 0;
        let index = &mut self.expiry.entries;
        while let Some((&(at, _), _)) = index.first_key_value() {
            if at >= before && index.len() <= max {
                break;
            }
            let ((_, seq), identifier) = index.pop_first().expect("first exists");
            if let Some(id) = self.ids.get_mut(&*identifier) {
                id.waiting.retain(|w| w.seq != seq);
                if id.waiting.is_empty() && id.customer_id.is_none() {
                    self.ids.remove(&*identifier);
                }
            }
            n += 1;
            changed.push(identifier.to_string());
        }
        (changed, n)
    }

    /// Forgets the oldest links beyond `max`; returns the identifiers
    /// changed and how many links were forgotten.
    pub fn forget_links(&mut self, max: usize) -> (Vec<String>, u64) {
        let mut changed = Vec::new();
        let mut n = 0;
        while self.linked_order.len() > max {
            let (seq, key) = self.linked_order.pop_front().expect("longer than max");
            let Some(id) = self.ids.get_mut(&*key) else {
                continue;
            };
            if id.linked_seq != seq || id.customer_id.is_none() {
                continue;
            }
            id.customer_id = None;
            self.links -= 1;
            if id.waiting.is_empty() {
                self.ids.remove(&*key);
            }
            n += 1;
            changed.push(key.to_string());
        }
        (changed, n)
    }

    /// Forgets `identifier` (erasure): its link and the events waiting
    /// under it. Returns how many events were waiting, or `None` when
    /// nothing was kept.
    pub fn forget(&mut self, identifier: &str) -> Option<usize> {
        let id = self.ids.remove(identifier)?;
        self.links -= usize::from(id.customer_id.is_some());
        for w in &id.waiting {
            self.expiry.remove(w);
        }
        Some(id.waiting.len())
    }

    /// The changelog value of `identifier`: empty when nothing is kept.
    pub fn encoded(&self, identifier: &str) -> Vec<u8> {
        match self.ids.get(identifier) {
            Some(id) if id.customer_id.is_some() || !id.waiting.is_empty() => JoinIdentifierState {
                customer_id: id.customer_id.clone().unwrap_or_default(),
                waiting: id
                    .waiting
                    .iter()
                    .map(|w| JoinWaitingEvent {
                        event: w.bytes.to_vec(),
                        at_ms: w.at,
                        revision: w.revision,
                    })
                    .collect(),
            }
            .encode_to_vec(),
            _ => Vec::new(),
        }
    }

    /// Restores one identifier read back from the changelog. Restored
    /// links count as linked in the order they are restored (the changelog
    /// does not keep when each came).
    pub fn restore(&mut self, identifier: String, s: JoinIdentifierState) {
        let key: Arc<str> = Arc::from(identifier);
        let waiting: Vec<Waiter> = s
            .waiting
            .into_iter()
            .filter_map(|w| {
                // Decoded once for its id, and to keep only what decodes.
                let event_id = Event::decode(w.event.as_slice()).ok()?.event_id;
                let mut w = Waiter::new(&event_id, w.event.into(), w.at_ms, w.revision);
                self.expiry.add(&mut w, key.clone());
                Some(w)
            })
            .collect();
        let customer_id = (!s.customer_id.is_empty()).then_some(s.customer_id);
        let mut linked_seq = 0;
        if customer_id.is_some() {
            self.next_seq += 1;
            linked_seq = self.next_seq;
            self.linked_order.push_back((linked_seq, key.clone()));
        }
        let before = self.ids.insert(
            key,
            Identifier {
                customer_id,
                linked_seq,
                waiting,
            },
        );
        if let Some(b) = before {
            // Restored again, a key replaces what it held: its earlier
            // events leave the expiry index too.
            self.links -= usize::from(b.customer_id.is_some());
            for w in &b.waiting {
                self.expiry.remove(w);
            }
        }
        self.links += usize::from(linked_seq != 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(event_id: &str, at: i64) -> Waiter {
        let bytes = Event {
            event_id: event_id.into(),
            ..Default::default()
        }
        .encode_to_vec();
        Waiter::new(event_id, bytes.into(), at, 0)
    }

    fn wait(u: &mut Unresolved, identifier: &str, event_id: &str, at: i64) -> bool {
        u.wait(identifier, event_id, waiter(event_id, at))
    }

    #[test]
    fn a_replayed_event_waits_once_and_another_under_the_same_identifier_waits_too() {
        let mut u = Unresolved::default();
        assert!(wait(&mut u, "phone-1", "e1", 10));
        assert!(!wait(&mut u, "phone-1", "e1", 10), "a replay");
        assert!(wait(&mut u, "phone-1", "e2", 10), "same time, other event");
        assert!(
            wait(&mut u, "phone-2", "e1", 10),
            "same id, other identifier"
        );
        assert_eq!(u.len(), 3);
        // Equal hashes alone do not make a replay: the bytes decide.
        let mut other = waiter("e3", 10);
        other.id_hash = id_hash("e1");
        assert!(u.wait("phone-1", "e3", other));
        assert_eq!(u.len(), 4);
    }

    #[test]
    fn expiry_takes_the_oldest_first_and_a_link_or_erasure_takes_its_events_out_of_the_index() {
        let mut u = Unresolved::default();
        for (i, (identifier, at)) in [("a", 5), ("b", 1), ("a", 3), ("c", 4), ("b", 2)]
            .into_iter()
            .enumerate()
        {
            assert!(wait(&mut u, identifier, &format!("e{i}"), at));
        }
        // By count: the two oldest (b at 1 and 2) leave.
        let (changed, n) = u.expire(i64::MIN, 3);
        assert_eq!((changed, n), (vec!["b".to_owned(), "b".to_owned()], 2));
        assert_eq!(u.len(), 3);
        // A link takes both of a's events, and nothing expires twice.
        let gone = u.link("a", "cust-1");
        assert_eq!(gone.iter().map(|w| w.at).collect::<Vec<_>>(), vec![5, 3]);
        assert_eq!(u.len(), 1);
        assert_eq!(u.linked("a"), Some("cust-1"));
        assert_eq!(u.forget("c"), Some(1));
        assert_eq!(u.len(), 0);
        assert_eq!(u.expire(i64::MAX, 0), (vec![], 0));
        // By time: only what is older than `before`.
        assert!(wait(&mut u, "d", "e9", 7));
        assert!(wait(&mut u, "d", "e10", 9));
        assert_eq!(u.expire(8, 10), (vec!["d".to_owned()], 1));
        // The changelog value keeps the one left, as it arrived.
        let kept = JoinIdentifierState::decode(u.encoded("d").as_slice()).expect("decodes");
        assert_eq!(kept.waiting.len(), 1);
        assert_eq!(kept.waiting[0].at_ms, 9);
        assert_eq!(
            Event::decode(kept.waiting[0].event.as_slice())
                .expect("decodes")
                .event_id,
            "e10"
        );
    }

    #[test]
    fn restored_events_expire_and_link_as_the_ones_that_arrived() {
        // Two events as the changelog keeps them, and bytes that do not
        // decode.
        let state = || JoinIdentifierState {
            customer_id: String::new(),
            waiting: [("e1", 2), ("e2", 1)]
                .into_iter()
                .map(|(id, at)| JoinWaitingEvent {
                    event: waiter(id, at).bytes.to_vec(),
                    at_ms: at,
                    revision: 1,
                })
                .chain([JoinWaitingEvent {
                    event: vec![0xff, 0xff],
                    at_ms: 0,
                    revision: 0,
                }])
                .collect(),
        };
        let mut u = Unresolved::default();
        u.restore("x".into(), state());
        assert_eq!(u.len(), 2, "the undecodable one is not kept");
        assert!(!wait(&mut u, "x", "e1", 2), "a replay of a restored event");
        // Restored again, the same key replaces it: its events are
        // counted once.
        u.restore("x".into(), state());
        assert_eq!(u.len(), 2);
        assert_eq!(u.expire(i64::MIN, 1), (vec!["x".to_owned()], 1));
        let gone = u.link("x", "cust-2");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].at, 2);
        assert_eq!(u.len(), 0);
    }
}
