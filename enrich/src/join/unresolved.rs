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
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use xoflow_proto::{
    Message as _,
    v1::{Event, JoinIdentifierState, JoinWaitingEvent},
};

/// One waiting event, kept as its encoding: decoded, an event is about
/// 1.5 KB against its 300 encoded bytes, and most waiting events leave
/// unlinked (expired) without being read again.
#[derive(Debug, Clone)]
pub(super) struct Waiter {
    pub event_id: String,
    /// The event, encoded (as read, and as its changelog record keeps it).
    pub bytes: Box<[u8]>,
    pub at: i64,
    /// The revision it was last emitted with (unresolved).
    pub revision: u32,
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

/// The identifiers of one join partition.
#[derive(Debug, Default)]
pub(super) struct Unresolved {
    /// Shared with `linked_order`: a remembered link costs its identifier
    /// once.
    ids: Ids,
    /// (event time, identifier, event id) of every waiting event, oldest
    /// first: what expires first.
    by_time: BTreeSet<(i64, String, String)>,
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
        self.by_time.len()
    }

    /// Links remembered.
    pub fn links(&self) -> usize {
        self.links
    }

    /// The customer a link gave `identifier`, if one did.
    pub fn linked(&self, identifier: &str) -> Option<&str> {
        self.ids.get(identifier)?.customer_id.as_deref()
    }

    /// Keeps `w` waiting under `identifier`; false if it already waits (a
    /// replay).
    pub fn wait(&mut self, identifier: &str, w: Waiter) -> bool {
        let (_, id) = entry(&mut self.ids, identifier);
        if id.waiting.iter().any(|x| x.event_id == w.event_id) {
            return false;
        }
        self.by_time
            .insert((w.at, identifier.to_owned(), w.event_id.clone()));
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
            self.by_time
                .remove(&(w.at, identifier.to_owned(), w.event_id.clone()));
        }
        gone
    }

    /// Drops waiting events older than `before` (event time), then the
    /// oldest beyond `max`; returns the identifiers changed and how many
    /// events left.
    pub fn expire(&mut self, before: i64, max: usize) -> (Vec<String>, u64) {
        let mut changed = Vec::new();
        let mut n = 0;
        while let Some(first) = self.by_time.first() {
            if first.0 >= before && self.by_time.len() <= max {
                break;
            }
            let (_, identifier, event_id) = self.by_time.pop_first().expect("first exists");
            if let Some(id) = self.ids.get_mut(identifier.as_str()) {
                id.waiting.retain(|w| w.event_id != event_id);
                if id.waiting.is_empty() && id.customer_id.is_none() {
                    self.ids.remove(identifier.as_str());
                }
            }
            n += 1;
            changed.push(identifier);
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
            self.by_time
                .remove(&(w.at, identifier.to_owned(), w.event_id.clone()));
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
        let waiting: Vec<Waiter> = s
            .waiting
            .into_iter()
            .filter_map(|w| {
                // Decoded once for its id, and to keep only what decodes.
                let event_id = Event::decode(w.event.as_slice()).ok()?.event_id;
                Some(Waiter {
                    event_id,
                    bytes: w.event.into_boxed_slice(),
                    at: w.at_ms,
                    revision: w.revision,
                })
            })
            .collect();
        for w in &waiting {
            self.by_time
                .insert((w.at, identifier.clone(), w.event_id.clone()));
        }
        let key: Arc<str> = Arc::from(identifier);
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
        if before.is_some_and(|b| b.customer_id.is_some()) {
            self.links -= 1;
        }
        self.links += usize::from(linked_seq != 0);
    }
}
