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

use std::collections::{BTreeSet, HashMap};

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
    waiting: Vec<Waiter>,
}

/// The identifiers of one join partition.
#[derive(Debug, Default)]
pub(super) struct Unresolved {
    ids: HashMap<String, Identifier, foldhash::fast::RandomState>,
    /// (event time, identifier, event id) of every waiting event, oldest
    /// first: what expires first.
    by_time: BTreeSet<(i64, String, String)>,
}

impl Unresolved {
    /// Events waiting.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    /// The customer a link gave `identifier`, if one did.
    pub fn linked(&self, identifier: &str) -> Option<&str> {
        self.ids.get(identifier)?.customer_id.as_deref()
    }

    /// Keeps `w` waiting under `identifier`; false if it already waits (a
    /// replay).
    pub fn wait(&mut self, identifier: &str, w: Waiter) -> bool {
        let id = self.ids.entry(identifier.to_owned()).or_default();
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
        let id = self.ids.entry(identifier.to_owned()).or_default();
        id.customer_id = Some(customer_id.to_owned());
        let gone = std::mem::take(&mut id.waiting);
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
            if let Some(id) = self.ids.get_mut(&identifier) {
                id.waiting.retain(|w| w.event_id != event_id);
                if id.waiting.is_empty() && id.customer_id.is_none() {
                    self.ids.remove(&identifier);
                }
            }
            n += 1;
            changed.push(identifier);
        }
        (changed, n)
    }

    /// Forgets `identifier` (erasure): its link and the events waiting
    /// under it. Returns how many events were waiting, or `None` when
    /// nothing was kept.
    pub fn forget(&mut self, identifier: &str) -> Option<usize> {
        let id = self.ids.remove(identifier)?;
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

    /// Restores one identifier read back from the changelog.
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
        self.ids.insert(
            identifier,
            Identifier {
                customer_id: (!s.customer_id.is_empty()).then_some(s.customer_id),
                waiting,
            },
        );
    }
}
