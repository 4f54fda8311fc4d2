//! The X+O join: per-customer state that turns "a score of 3" into "a score
//! of 3 from a customer whose order arrived two days late after two support
//! calls" — whatever order the events arrive in.
//!
//! A synchronous operator: events in, `EnrichedEvent`s out; no network
//! I/O, so the stage decides batching and the tests drive it directly (its
//! cold customers past the recent ones go to a local store on disk when
//! given one: `cold`, [`Join::with_cold_store`]).
//!
//! Each output is what the customer's events up to the event's own time
//! say (a fold in event-time order, `state`). Three mechanisms keep it so
//! when events arrive out of order:
//!
//! - **Lateness buffer.** Events are held ordered by event time and applied
//!   once the partition's watermark (the latest event time seen) is
//!   `lateness` past them, or once they waited `max_hold` in wall-clock
//!   time: ordinary reordering costs no repair.
//! - **Repairs.** Each customer keeps a bounded history of recent events
//!   (`history`). An event arriving in front of later ones is folded in at
//!   its place, and every later event whose joined context (order, session,
//!   customer, call, identity) changes is emitted again with `revision`
//!   one higher. A batch's late events are folded once per customer.
//!   All histories together are bounded in memory too: over its budget
//!   after a batch, the join moves the least recently active customers'
//!   histories into their bases early ([`Join::shed_if_over`], which the
//!   stage calls once the batch's outputs are sent).
//! - **Waiting for a link.** An event known only by an identifier no link
//!   resolves is emitted unresolved and waits under that identifier
//!   (`unresolved`) until a link names its customer ([`Join::link`]); it is
//!   then handed back to the stage as a [`Moved`] event for its customer's
//!   partition, where it joins the history a revision up.
//!
//! Linked events: an event resolved through a link on its first emission
//! here is emitted at revision 0 and again at revision 1. The same event
//! may have been emitted unresolved, revision 0, on another partition
//! before: read again after a crash, the resolve loop may know the link
//! by then and route it here. The sink keeps whichever revision 0 it got
//! first (the one the aggregates count, whose measures do not depend on the
//! resolution), and revision 1 carries the customer either way.
//!
//! Replays: an event already in its customer's history is not applied
//! twice; it and the events after it are emitted again at their current
//! revisions, with a copy at revision 0 (the sink drops copies it has),
//! which also re-sends outputs lost in a crash: the stage sends a batch's
//! changelog records before its outputs, so a recorded revision may have
//! been lost, but an emitted one is always recorded. State travels through the changelog
//! ([`Join::take_changes`], [`Join::restore_records`]).
//!
//! Customers are a tenant's: the state is keyed by
//! [`tenancy::scoped`](crate::tenancy) (tenant, customer id), outputs carry
//! the customer id alone, so two tenants' customers with one id never share
//! a history (`tests/tenant_isolation.rs`).
//!
//! This module is the operator and its lateness buffer; `config` holds its
//! settings (`[enrich.join]`, [`JoinConfig::new`] for tests and tools),
//! `state` the fold, `history` a customer's repairable events, `cold` the
//! customers without any, `unresolved` the events waiting for a link.

mod cold;
mod config;
mod history;
mod state;
mod unresolved;

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Arc,
};

use xoflow_proto::{
    Message as _,
    v1::{
        Alert, EnrichedEvent, Event, IdentityResolution, JoinCustomerState, JoinHistoryEntry,
        JoinIdentifierState, Speaker, event::Payload,
    },
};

use cold::ColdCustomers;
pub use cold::ColdStore;
pub use config::{JoinConfig, Owners};
use history::{Activity, Customer, Entry, Outputs, Place};
use state::CustomerState;
use unresolved::{Unresolved, Waiter};

use crate::{
    alert::{self, AlertRules, AlertStats, Alerter, Silent},
    derive,
    identity::{self, Links, Resolved},
    sentiment, tenancy,
};

/// An event waiting in the lateness buffer.
#[derive(Debug)]
struct Held {
    event: Event,
    /// The event as the stage read it (see [`Join::offer_received`]).
    bytes: Arc<[u8]>,
    who: Resolved,
    /// The input topic it was read from, and its offset there: offsets
    /// are committed per topic.
    input: Input,
    offset: i64,
    arrived_ms: i64,
    /// The revision its first output here gets (above 0 for an event moved
    /// from the partition where it waited for a link).
    revision: u32,
}

/// The input topic a held event was read from. The stage commits each
/// topic's partition below the lowest event of that topic still held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    /// `<group>.repartition`: events the resolve loop keyed by customer
    /// (linked, unresolved, moved, backfill), link and erasure notices.
    Repartition,
    /// The events topic itself: direct events, keyed by their own customer
    /// id by the collectors (docs/enrich.md, "Direct events").
    Events,
}

/// An output and the input offset that caused it.
#[derive(Debug, Clone)]
pub struct Released {
    pub offset: i64,
    pub enriched: EnrichedEvent,
    /// The encoding of `enriched.event` as the stage read it, when the
    /// join has it at hand: the record's value then carries these bytes
    /// instead of the event encoded again (see [`Released::encode_value`]).
    pub event_bytes: Option<Arc<[u8]>>,
}

impl Released {
    /// The record written to the enriched topic: key = event id, value =
    /// the encoded `EnrichedEvent`. The stage produces exactly this, and the
    /// golden test compares exactly this, so the two cannot drift apart.
    pub fn into_record(mut self) -> (String, Vec<u8>) {
        let mut value = Vec::with_capacity(self.enriched.encoded_len());
        self.encode_value(&mut value);
        (self.key().to_owned(), value)
    }

    /// The record's key: the event's id.
    pub fn key(&self) -> &str {
        self.enriched
            .event
            .as_ref()
            .map_or("", |e| e.event_id.as_str())
    }

    /// Appends the record's value to `buf`: the stage encodes a whole
    /// batch's outputs into one buffer it keeps (see
    /// `stage::join_loop::Outputs`).
    ///
    /// With [`Released::event_bytes`], the event (field 1, which prost
    /// writes first) is those bytes, copied, and the rest is encoded: the
    /// same event, since it was decoded from them and the join never
    /// changes an event, without walking its fields twice (once for its
    /// length, once to write it) for every output. The same value too,
    /// but for the order of an event's `attributes`, which prost writes
    /// in the order of the map it decoded them into (the bytes keep the
    /// collector's order, the same in every revision), and fields this
    /// build does not know (from a newer collector), which the bytes keep
    /// and a decode drops.
    pub fn encode_value(&mut self, buf: &mut Vec<u8>) {
        use xoflow_proto::encoding::{self, WireType};
        let (Some(bytes), true) = (&self.event_bytes, self.enriched.event.is_some()) else {
            self.enriched.encode_raw(buf);
            return;
        };
        let event = self.enriched.event.take();
        // Compared decoded: prost writes a map (`attributes`) in its hash
        // order, which a decode changes, so the same event can be two
        // byte strings.
        debug_assert_eq!(
            Event::decode(&**bytes).as_ref().ok(),
            event.as_ref(),
            "bytes of another event"
        );
        encoding::encode_key(1, WireType::LengthDelimited, buf);
        encoding::encode_varint(bytes.len() as u64, buf);
        buf.extend_from_slice(bytes);
        self.enriched.encode_raw(buf);
        self.enriched.event = event;
    }
}

/// An event whose identifier a link resolved while it waited here: the
/// stage sends it to its customer's partition (keyed by `customer_id`),
/// where it is offered with [`Join::offer_moved`] at `revision`.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    pub customer_id: String,
    pub event: Event,
    /// The event as the join read it: what the stage sends, so that its
    /// outputs there carry the bytes its first one here did.
    pub bytes: Arc<[u8]>,
    pub revision: u32,
}

/// How far past the wall clock an event's time can be, at most: ingest
/// refuses events more than `ingest.max_future_skew` ahead (60 s by
/// default). A margin for [`recent_from`], wide enough for any skew an
/// operator would allow.
pub(super) const FUTURE_MARGIN: i64 = 86_400_000;

/// The earliest event time at `now_ms` whose repairs a customer can vouch
/// for as new ([`history::Outputs::recent_from`]).
fn recent_from(cfg: &JoinConfig, now_ms: i64) -> i64 {
    let idle = i64::try_from(cfg.value_window.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(idle).saturating_add(FUTURE_MARGIN)
}

/// Changelog records [`Join::restore_records`] left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Values that did not decode.
    pub undecodable: usize,
    /// A customer's records keyed by its customer id alone, as written
    /// before state keys named the tenant (`crate::tenancy`): which
    /// tenant's customer they held cannot be told, so that customer starts
    /// afresh; each becomes a tombstone at the next
    /// [`Join::take_changes`].
    pub untenanted: usize,
}

/// Counts since the last [`Join::take_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JoinStats {
    /// Outputs emitted again with a higher revision.
    pub repairs: u64,
    /// Events that stopped waiting for a link unresolved (too old, or too
    /// many waiting).
    pub expired_link: u64,
    /// Events that left their customer's history still missing the order or
    /// call they name.
    pub expired_reference: u64,
    /// Events that left their customer's history early, the histories over
    /// their memory budget, and the customers they were shed from.
    pub shed_events: u64,
    pub shed_customers: u64,
    /// Links forgotten, beyond `max_links`.
    pub forgotten_links: u64,
    /// Times the customers were scanned for idle ones, over
    /// `max_customers`.
    pub eviction_scans: u64,
}

/// Changelog records: key, value (empty deletes). See `state.proto` for the
/// three kinds of key.
pub type ChangelogRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// The join operator's state (one per partition in the stage).
#[derive(Debug)]
pub struct Join {
    cfg: JoinConfig,
    /// Boxed: a customer is over 500 bytes (two states and its history's
    /// head), and the map copied every one of them each time it grew.
    customers: Map<String, Box<Customer>>,
    /// Customers whose whole history left for their base (shed, or read
    /// back with none), kept as that base's changelog encoding until their
    /// next event, instead of the 2 KB a customer takes decoded (two
    /// states and the boxes, maps and queues that hold them), so that the
    /// customers a partition has ever seen cost little more than their
    /// ids. See `cold`.
    cold: ColdCustomers,
    /// Links for [`Join::process`], which resolves by itself; the stage
    /// resolves upstream against the global link table instead.
    links: Links,
    /// Events not applied yet, by (event time, event id US tenant): two
    /// tenants' events with one id and time are two events. Boxed: the
    /// buffer is taken from the front, and a B-tree node shifts the values
    /// it keeps at each removal (eleven 800-byte `Held`s, unboxed).
    held: BTreeMap<(i64, String), Box<Held>>,
    /// The latest event time offered, and the wall-clock time it was
    /// offered at (the re-scoring's clock: event time, running on with the
    /// wall clock while nothing newer arrives).
    watermark: i64,
    watermark_wall: i64,
    /// Events waiting for a link, by identifier.
    unresolved: Unresolved,
    /// Customers whose history needs a re-fold before the next output.
    touched: Vec<String>,
    /// Events to send to another partition.
    moves: Vec<Moved>,
    /// Outputs of [`Join::process`], and its event's id, kept between calls.
    scratch: Vec<Released>,
    scratch_id: String,
    /// Changelog keys changed since [`Join::take_changes`]: bases and
    /// identifiers by key; history entries flagged in place
    /// ([`Entry::unsaved`]) under customers listed once per batch; entries
    /// that left a history by their key ([`entry_key`]).
    dirty_bases: HashSet<String, foldhash::fast::RandomState>,
    unsaved: Vec<String>,
    removed: HashSet<Vec<u8>, foldhash::fast::RandomState>,
    dirty_identifiers: HashSet<String, foldhash::fast::RandomState>,
    /// Events in every customer's history, and those among them naming an
    /// order or call not met yet.
    history_len: usize,
    unmet: usize,
    /// The memory customers' histories take ([`Customer::footprint`],
    /// summed), and what they may take before the least recently active
    /// are shed ([`Join::set_history_budget`]).
    history_bytes: usize,
    history_budget: usize,
    /// Customers the last shedding pass chose and that are not shed yet,
    /// in the order they are shed: (state key, whether its latest event
    /// stays, its activity when chosen). See [`Join::shed`].
    shed_queue: VecDeque<(String, bool, Activity)>,
    /// `history_bytes` at the end of the last [`Join::shed_if_over`]: what
    /// the batch since added.
    bytes_at_last_batch: usize,
    /// Events admitted so far: the clock of [`Customer::last_active`].
    admissions: u64,
    /// The earliest event time at which a customer held can be idle for
    /// `value_window` (a lower bound; dirty customers aside): over
    /// `max_customers`, no scan before it can drop anyone. Without it a
    /// partition of active customers over the bound scanned them all at
    /// every event.
    evict_not_before: i64,
    stats: JoinStats,
    /// Topic rules per tenant (`[enrich.topics]`).
    topics: sentiment::TopicsConfig,
    /// Alert rules and the customers' alert books.
    alerter: Alerter,
}

/// Customer-keyed maps: foldhash, not SipHash (hashing was a tenth of the
/// join's time); keys are state keys (`crate::tenancy`), seeded per
/// process. hashbrown's
/// map for `entry_ref`: an event's customer is found, or inserted, with one
/// look-up of a borrowed id, which is cloned only for a new customer.
type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

impl Join {
    pub fn new(cfg: JoinConfig) -> Self {
        // Decodes the sentiment model now rather than on the first text.
        sentiment::load();
        Self {
            history_budget: cfg.max_history_bytes,
            evict_not_before: i64::MIN,
            cfg,
            customers: Map::default(),
            cold: ColdCustomers::default(),
            links: Links::default(),
            held: BTreeMap::new(),
            watermark: i64::MIN,
            watermark_wall: i64::MIN,
            unresolved: Unresolved::default(),
            touched: Vec::new(),
            moves: Vec::new(),
            scratch: Vec::new(),
            scratch_id: String::new(),
            dirty_bases: HashSet::default(),
            unsaved: Vec::new(),
            removed: HashSet::default(),
            dirty_identifiers: HashSet::default(),
            history_len: 0,
            unmet: 0,
            history_bytes: 0,
            admissions: 0,
            shed_queue: VecDeque::new(),
            bytes_at_last_batch: 0,
            stats: JoinStats::default(),
            topics: sentiment::TopicsConfig::default(),
            alerter: Alerter::default(),
        }
    }

    /// Raises alerts on these rules (`[enrich.alerts]`).
    pub fn with_alerts(mut self, rules: AlertRules) -> Self {
        self.alerter = Alerter::new(rules);
        self
    }

    /// Tags topics with these rules instead of the built-in set.
    pub fn with_topics(mut self, topics: sentiment::TopicsConfig) -> Self {
        self.topics = topics;
        self
    }

    /// Keeps the cold customers past the recent ones in `store` (see
    /// `cold`), instead of all of them in the heap.
    pub fn with_cold_store(mut self, store: ColdStore) -> Self {
        self.cold = ColdCustomers::with_store(store);
        self
    }

    /// Keeps `recent` cold customers in memory in front of the store (see
    /// [`Join::with_cold_store`]; the stage splits
    /// `enrich.cold_customers.recent_customers` over its partitions).
    pub fn set_recent_cold(&mut self, recent: usize) {
        self.cold.set_recent(recent);
    }

    /// The first failure of the cold customers' store since the last call:
    /// what this partition read or wrote since may be wrong, so none of it
    /// may be sent or committed.
    pub fn take_store_error(&mut self) -> Option<crate::local_store::LocalStoreError> {
        self.cold.take_error()
    }

    /// Customers currently held.
    pub fn customers(&self) -> usize {
        self.customers.len() + self.cold.len()
    }

    /// Of those, the cold ones in the store, out of memory.
    pub fn customers_on_disk(&self) -> usize {
        self.cold.on_disk()
    }

    /// Events waiting in the lateness buffer.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Events kept in customers' histories (repairable).
    pub fn history_events(&self) -> usize {
        self.history_len
    }

    /// The memory customers' histories take, in bytes (an estimate: each
    /// entry, the event's encoding, the event decoded where it is kept, its
    /// CX fields).
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Sets the memory customers' histories may take on this partition
    /// (the whole `max_history_bytes` until then): the stage splits the
    /// instance's budget over the partitions it holds. Over it after a
    /// batch, [`Join::shed_if_over`] sheds.
    pub fn set_history_budget(&mut self, bytes: usize) {
        self.history_budget = bytes;
    }

    /// History events naming an order or call not met yet.
    pub fn waiting_for_reference(&self) -> usize {
        self.unmet
    }

    /// Unresolved events waiting for a link.
    pub fn waiting_for_link(&self) -> usize {
        self.unresolved.len()
    }

    /// Links remembered for the unresolved events that come after them.
    pub fn links_remembered(&self) -> usize {
        self.unresolved.links()
    }

    /// The lowest offset of `input` still held: that topic's partition may
    /// be committed only below it.
    pub fn lowest_held_offset(&self, input: Input) -> Option<i64> {
        self.held
            .values()
            .filter(|h| h.input == input)
            .map(|h| h.offset)
            .min()
    }

    /// Resolves with this operator's own links, then enriches at once (no
    /// lateness buffer, no waiting for links): for callers that see every
    /// event of a customer in order, such as benchmarks and single-process
    /// tools. Returns the event's own output; repairs of earlier events
    /// (if it arrived out of order) are dropped. Encodes the event for its
    /// history entry: a caller holding its bytes already calls
    /// [`Join::process_received`].
    pub fn process(&mut self, e: Event, now_ms: i64) -> EnrichedEvent {
        let bytes = e.encode_to_vec();
        self.process_received(e, bytes, now_ms)
    }

    /// [`Join::process`] for an event read as `bytes` (its encoding, as in
    /// [`Join::offer_received`]).
    pub fn process_received(
        &mut self,
        e: Event,
        bytes: impl Into<Arc<[u8]>>,
        now_ms: i64,
    ) -> EnrichedEvent {
        let bytes = bytes.into();
        self.links.learn(&e, |_, _| {});
        let mut who = self.links.resolve(&e);
        if let Some(c) = who.customer_id.as_mut() {
            tenancy::scope(&e.tenant, c);
        }
        let mut id = std::mem::take(&mut self.scratch_id);
        id.clear();
        id.push_str(&e.event_id);
        let mut out = std::mem::take(&mut self.scratch);
        // The event's own output is the first of its outputs, before any
        // that `settle` adds.
        let mut own = EnrichedEvent::default();
        let built = if who.customer_id.is_some() {
            self.admit(e, bytes, who, 0, 0, now_ms, &mut out, Some(&mut own))
        } else {
            self.fill_unresolved(&mut own, e, 0, now_ms);
            true
        };
        self.settle(0, now_ms, &mut out);
        self.shed_if_over();
        self.moves.clear();
        if !built {
            let i = out
                .iter()
                .position(|r| r.enriched.event.as_ref().is_some_and(|e| e.event_id == id))
                .expect("an admitted event is emitted");
            // Taken in place: a 1.3 KB output moved out of the vector once.
            own = std::mem::take(&mut out[i].enriched);
        }
        out.clear();
        self.scratch = out;
        self.scratch_id = id;
        own
    }

    /// Puts an event resolved upstream into the lateness buffer (encoding
    /// it for its history entry; see [`Join::offer_received`]).
    pub fn offer(&mut self, e: Event, who: Resolved, offset: i64, now_ms: i64) {
        self.offer_moved(e, who, 0, offset, now_ms);
    }

    /// [`Join::offer`] for an event already emitted elsewhere up to
    /// `revision - 1` (a [`Moved`] event).
    pub fn offer_moved(
        &mut self,
        e: Event,
        who: Resolved,
        revision: u32,
        offset: i64,
        now_ms: i64,
    ) {
        let bytes = e.encode_to_vec();
        self.offer_received(e, bytes, who, revision, offset, now_ms);
    }

    /// [`Join::offer_moved`] for an event decoded from `bytes`, the record
    /// the stage read: its history entry (and changelog record) keeps these
    /// bytes instead of encoding the event again.
    pub fn offer_received(
        &mut self,
        e: Event,
        bytes: impl Into<Arc<[u8]>>,
        who: Resolved,
        revision: u32,
        offset: i64,
        now_ms: i64,
    ) {
        self.hold(
            e,
            bytes.into(),
            who,
            revision,
            (Input::Repartition, offset),
            now_ms,
        );
    }

    /// A direct event read as `bytes` at `offset` of the events topic: one
    /// whose record key is its own customer id, so the collectors already
    /// put it in its customer's partition. Resolved `DIRECT`, revision 0.
    pub fn offer_direct(
        &mut self,
        e: Event,
        bytes: impl Into<Arc<[u8]>>,
        offset: i64,
        now_ms: i64,
    ) {
        let who = Resolved {
            customer_id: e
                .customer
                .as_ref()
                .map(|c| tenancy::with_room(&e.tenant, &c.customer_id)),
            resolution: IdentityResolution::Direct,
        };
        self.hold(e, bytes.into(), who, 0, (Input::Events, offset), now_ms);
    }

    fn hold(
        &mut self,
        e: Event,
        bytes: Arc<[u8]>,
        mut who: Resolved,
        revision: u32,
        (input, offset): (Input, i64),
        now_ms: i64,
    ) {
        let at = event_ms(&e, now_ms);
        if at > self.watermark {
            self.watermark = at;
            self.watermark_wall = now_ms;
        }
        // From here on a customer is its tenant's (see `tenancy`).
        if let Some(c) = who.customer_id.as_mut() {
            tenancy::scope(&e.tenant, c);
        }
        // A copy of a held event replaces it; another tenant's event with
        // the same id and time is another event.
        let mut id = String::with_capacity(e.event_id.len() + 1 + e.tenant.len());
        id.push_str(&e.event_id);
        id.push(tenancy::SEP);
        id.push_str(&e.tenant);
        let key = (at, id);
        self.held.insert(
            key,
            Box::new(Held {
                event: e,
                bytes,
                who,
                input,
                offset,
                arrived_ms: now_ms,
                revision,
            }),
        );
    }

    /// A link learnt upstream: `identifier` belongs to `customer_id`. The
    /// events waiting for it here leave as [`Moved`] events.
    pub fn link(&mut self, identifier: &str, customer_id: &str) {
        let gone = self.unresolved.link(identifier, customer_id);
        self.dirty_identifiers.insert(identifier.to_owned());
        for w in gone {
            // It decoded when it arrived (or was read back), from these
            // very bytes.
            let Ok(event) = Event::decode(&*w.bytes) else {
                continue;
            };
            self.moves.push(Moved {
                customer_id: customer_id.to_owned(),
                event,
                bytes: w.bytes,
                revision: w.revision + 1,
            });
        }
    }

    /// Erasure: forgets everything this partition holds of `tenant`'s
    /// customer `customer_id` (of every tenant's customer with that id when
    /// `tenant` is empty: a notice written before notices named their
    /// tenant): its base state, its history, its alert book and its events
    /// still in the lateness buffer (they are not emitted). Each changelog
    /// record it had becomes a tombstone at the next [`Join::take_changes`].
    /// Returns whether anything was held.
    pub fn erase_customer(&mut self, tenant: &str, customer_id: &str) -> bool {
        let keys: Vec<String> = if tenant.is_empty() {
            let cold_ids = self.cold.ids();
            let mut keys: Vec<String> = self
                .customers
                .keys()
                .map(String::as_str)
                .chain(cold_ids.iter().map(String::as_str))
                .chain(
                    self.held
                        .values()
                        .filter_map(|h| h.who.customer_id.as_deref()),
                )
                .chain(self.alerter.customers())
                .filter(|k| tenancy::customer_part(k) == customer_id)
                .map(str::to_owned)
                .collect();
            keys.sort();
            keys.dedup();
            keys
        } else {
            vec![tenancy::scoped(tenant, customer_id)]
        };
        let mut held = false;
        for key in &keys {
            held |= self.erase_key(key);
        }
        held
    }

    /// [`Join::erase_customer`] of one state key.
    fn erase_key(&mut self, key: &str) -> bool {
        let mut held = false;
        if let Some(c) = self.customers.remove(key) {
            held = true;
            self.history_bytes -= c.footprint();
            // Chosen to be shed: its key is not kept either.
            self.shed_queue.retain(|(k, ..)| k != key);
            self.dirty_bases.insert(key.to_owned());
            for e in c.history {
                self.history_len -= 1;
                self.unmet -= usize::from(e.unmet);
                self.removed.insert(entry_key(key, e.id()));
            }
        }
        if self.cold.remove(key).is_some() {
            held = true;
            self.dirty_bases.insert(key.to_owned());
        }
        self.touched.retain(|c| c != key);
        let before = self.held.len();
        self.held
            .retain(|_, h| h.who.customer_id.as_deref() != Some(key));
        held |= self.held.len() != before;
        held |= self.alerter.forget(key);
        held
    }

    /// Erasure: forgets a hashed identifier: the link this partition knew
    /// for it and the unresolved events waiting under it (also those still
    /// in the lateness buffer). Returns whether anything was held.
    pub fn erase_identifier(&mut self, identifier: &str) -> bool {
        let mut held = self.unresolved.forget(identifier).is_some();
        if held {
            self.dirty_identifiers.insert(identifier.to_owned());
        }
        let before = self.held.len();
        self.held.retain(|_, h| {
            h.who.customer_id.is_some()
                || identity::wait_identifier(h.event.customer.as_ref()) != Some(identifier)
        });
        held |= self.held.len() != before;
        self.links.remove(identifier);
        held
    }

    /// The events to send to their customers' partitions (see [`Moved`]).
    pub fn take_moves(&mut self) -> Vec<Moved> {
        std::mem::take(&mut self.moves)
    }

    /// Counts since the last call.
    pub fn take_stats(&mut self) -> JoinStats {
        std::mem::take(&mut self.stats)
    }

    /// Applies and emits, in event-time order, the held events that are
    /// due (`lateness` behind the watermark, or held `max_hold` long), then
    /// the repairs they cause. Shedding is the caller's next step
    /// ([`Join::shed_if_over`]).
    pub fn release(&mut self, now_ms: i64, out: &mut Vec<Released>) {
        let bound = self.cfg.lateness.as_millis() as i64;
        let hold = self.cfg.max_hold.as_millis() as i64;
        let start = out.len();
        let mut last_offset = None;
        while let Some(entry) = self.held.first_entry() {
            let (at, _) = *entry.key();
            let due = at <= self.watermark.saturating_sub(bound)
                || entry.get().arrived_ms <= now_ms - hold;
            if !due {
                break;
            }
            let h = entry.remove();
            last_offset = Some(h.offset);
            self.apply_held(h, now_ms, out);
        }
        if let Some(offset) = last_offset {
            self.settle(offset, now_ms, out);
        }
        self.expire_waiting();
        self.alert(&out[start..], now_ms);
    }

    /// Applies and emits everything held, in event-time order.
    pub fn drain(&mut self, now_ms: i64, out: &mut Vec<Released>) {
        let start = out.len();
        let mut last_offset = None;
        while let Some((_, h)) = self.held.pop_first() {
            last_offset = Some(h.offset);
            self.apply_held(h, now_ms, out);
        }
        if let Some(offset) = last_offset {
            self.settle(offset, now_ms, out);
        }
        self.expire_waiting();
        self.alert(&out[start..], now_ms);
    }

    /// Checks the alert rules on outputs just emitted.
    fn alert(&mut self, outputs: &[Released], now_ms: i64) {
        if outputs.is_empty() {
            return;
        }
        self.alerter.evaluate(
            outputs.iter().map(|r| {
                let at = r
                    .enriched
                    .event
                    .as_ref()
                    .map_or(now_ms, |e| event_ms(e, now_ms));
                (&r.enriched, at)
            }),
            now_ms,
        );
    }

    /// The silence re-scoring: every customer held whose tenant has a
    /// silence rule, re-scored as of the partition's clock (its latest
    /// event time, run on by the wall clock since it arrived: a backfill of
    /// last year does not make everyone look silent, and a quiet partition
    /// does not stop time), and offered to those rules when they have not
    /// ordered for longer than their usual gap. Also forgets alert books
    /// nothing can use any more.
    pub fn rescore(&mut self, now_ms: i64) {
        if self.watermark == i64::MIN {
            return;
        }
        let clock = self
            .watermark
            .saturating_add((now_ms - self.watermark_wall).max(0));
        self.alerter
            .prune(clock, self.cfg.order_window.as_millis() as i64);
        if !self.alerter.rules().any_silent() {
            return;
        }
        let mut silent = Vec::new();
        // Reused: most customers are not silent, and of those that are,
        // most were alerted already; only those due get a whole output.
        let mut probe = EnrichedEvent::default();
        for (id, c) in &mut self.customers {
            let Some((silent_ms, gap_ms, last_order_ms)) = c.current.silence(clock) else {
                continue;
            };
            if silent_ms <= gap_ms {
                continue;
            }
            // A customer whose whole history was shed has nothing to be
            // alerted on until its next event.
            let Some((entry, current, decoded)) = c.latest() else {
                continue;
            };
            self.history_bytes += decoded;
            let (at, resolution) = (entry.at, entry.resolution);
            let cx = entry.cx().clone();
            let event = entry.event();
            let tenant = &event.tenant;
            if !self.alerter.wants_silence(tenant) {
                continue;
            }
            probe.customer = Some(current.context(clock, &self.cfg));
            let ratio = silent_ms as f64 / gap_ms.max(1) as f64;
            if !self
                .alerter
                .silence_due(tenant, id, ratio, last_order_ms, &probe)
            {
                continue;
            }
            let mut o = output(&self.cfg, current, event, at, resolution, &cx, id, now_ms);
            o.customer = Some(current.context(clock, &self.cfg));
            o.event = Some(event.clone());
            silent.push(Silent {
                customer_id: tenancy::customer_part(id).to_owned(),
                output: o,
                silent_ms,
                gap_ms,
                last_order_ms,
            });
        }
        // Customers in a fixed order, so a replay raises the same alerts.
        silent.sort_by(|a, b| silent_order(a).cmp(&silent_order(b)));
        self.alerter.silence(silent, now_ms);
    }

    /// The alerts raised since the last call.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        self.alerter.take_alerts()
    }

    /// Alert counts since the last call.
    pub fn take_alert_stats(&mut self) -> AlertStats {
        self.alerter.take_stats()
    }

    fn apply_held(&mut self, h: Box<Held>, now_ms: i64, out: &mut Vec<Released>) {
        let h = *h;
        if h.who.customer_id.is_some() {
            self.admit(
                h.event, h.bytes, h.who, h.revision, h.offset, now_ms, out, None,
            );
        } else {
            self.admit_unresolved(h.event, h.bytes, h.revision, h.offset, now_ms, out);
        }
    }

    /// The changelog records changed since the last call, sorted by key.
    pub fn take_changes(&mut self) -> ChangelogRecords {
        let mut out: ChangelogRecords = Vec::with_capacity(
            self.dirty_bases.len()
                + self.unsaved.len()
                + self.removed.len()
                + self.dirty_identifiers.len(),
        );
        for id in self.dirty_bases.drain() {
            let value = match self.customers.get(&id) {
                Some(c) => c.base_proto().encode_to_vec(),
                None => self.cold.base(&id).unwrap_or_default(),
            };
            out.push((id.into_bytes(), value));
        }
        let entries_from = out.len();
        for id in self.unsaved.drain(..) {
            // Absent: dropped since (its entries are in `removed`). Not
            // listed: listed twice, dropped and back within the batch.
            let Some(c) = self.customers.get_mut(&id) else {
                continue;
            };
            if !std::mem::take(&mut c.listed) {
                continue;
            }
            for e in c.history.iter_mut().filter(|e| e.unsaved) {
                e.unsaved = false;
                out.push((entry_key(&id, e.id()), e.encode_record()));
            }
        }
        if !self.removed.is_empty() {
            // An entry that left a history and came back since is kept.
            let kept: HashSet<&[u8], foldhash::fast::RandomState> = out[entries_from..]
                .iter()
                .map(|(k, _)| k.as_slice())
                .collect();
            let gone: Vec<Vec<u8>> = self
                .removed
                .drain()
                .filter(|k| !kept.contains(k.as_slice()))
                .collect();
            out.extend(gone.into_iter().map(|k| (k, Vec::new())));
        }
        for identifier in self.dirty_identifiers.drain() {
            let value = self.unresolved.encoded(&identifier);
            let mut key = Vec::with_capacity(identifier.len() + 1);
            key.push(0);
            key.extend_from_slice(identifier.as_bytes());
            out.push((key, value));
        }
        self.alerter.take_changes(&mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores a partition's state from its changelog records (the latest
    /// value per key; empty values are skipped). Returns the records it
    /// skipped.
    pub fn restore_records(
        &mut self,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        now_ms: i64,
    ) -> Skipped {
        let mut skipped = Skipped::default();
        for (key, value) in records {
            if value.is_empty() {
                continue;
            }
            let book = key.strip_prefix(&alert::BOOK_PREFIX);
            let identifier = key.strip_prefix(&[0]).filter(|_| book.is_none());
            let customer = book.unwrap_or(&key);
            let customer = customer.split(|b| *b == 0).next().unwrap_or_default();
            if identifier.is_none() && !customer.contains(&(tenancy::SEP as u8)) {
                // Keyed by the customer id alone: no tenant to give it.
                // Deleted at the next `take_changes`, so that compaction
                // removes it and it is read back once.
                skipped.untenanted += 1;
                self.removed.insert(key);
                continue;
            }
            let ok = if let Some(customer) = book {
                self.alerter.restore(customer, &value)
            } else if let Some(identifier) = identifier {
                JoinIdentifierState::decode(value.as_slice())
                    .map(|s| {
                        self.unresolved
                            .restore(String::from_utf8_lossy(identifier).into_owned(), s)
                    })
                    .is_ok()
            } else if let Some(nul) = key.iter().position(|b| *b == 0) {
                let id = String::from_utf8_lossy(&key[..nul]).into_owned();
                match JoinHistoryEntry::decode(value.as_slice())
                    .ok()
                    .and_then(|p| Entry::from_proto(p, now_ms))
                {
                    Some(entry) => {
                        self.customers
                            .entry(id)
                            .or_default()
                            .history
                            .push_back(entry);
                        self.history_len += 1;
                        true
                    }
                    None => false,
                }
            } else {
                let id = String::from_utf8_lossy(&key).into_owned();
                JoinCustomerState::decode(value.as_slice())
                    .map(|s| {
                        self.customers
                            .entry(id)
                            .or_default()
                            .set_base(CustomerState::from_proto(s))
                    })
                    .is_ok()
            };
            skipped.undecodable += usize::from(!ok);
        }
        for c in self.customers.values_mut() {
            c.refold(&self.cfg);
            self.unmet += c.history.iter().filter(|e| e.unmet).count();
        }
        let cold = &mut self.cold;
        self.customers.retain(|id, c| match c.frozen(id) {
            Some(frozen) => {
                cold.insert(frozen);
                false
            }
            None => true,
        });
        self.history_bytes = self.customers.values().map(|c| c.footprint()).sum();
        // Read back, not added by a batch (see `Join::shed`).
        self.bytes_at_last_batch = self.history_bytes;
        skipped
    }

    /// Puts a resolved event in its customer's history: folded and emitted
    /// at once when it is the customer's latest, else left for
    /// [`Join::settle`]. `bytes` is `e` encoded. Inlined into its two
    /// callers, so that `e` (704 bytes) is not copied on the way in.
    ///
    /// With `own` (an empty output), an in-order event's first output is
    /// built there instead of in `out`, and the call returns true: for
    /// [`Join::process_received`], which returns that output alone, and
    /// would otherwise copy 1.3 KB out of `out` and drop what it leaves.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn admit(
        &mut self,
        e: Event,
        bytes: Arc<[u8]>,
        who: Resolved,
        revision: u32,
        offset: i64,
        now_ms: i64,
        out: &mut Vec<Released>,
        mut own: Option<&mut EnrichedEvent>,
    ) -> bool {
        let at = event_ms(&e, now_ms);
        let Resolved {
            customer_id,
            resolution,
        } = who;
        let Some(mut id) = customer_id else {
            return false;
        };
        self.evict_if_full(at);
        // One look-up for the whole admission: a new customer is inserted
        // empty, where every event is the latest.
        let (cold, cfg, due) = (&mut self.cold, &self.cfg, &mut self.evict_not_before);
        let c = self.customers.entry_ref(id.as_str()).or_insert_with(|| {
            // Its latest event time will be `at` or later.
            *due = (*due).min(at.saturating_add(cfg.value_window.as_millis() as i64));
            thaw(cold, &id, cfg)
        });
        self.admissions += 1;
        c.last_active = self.admissions;
        let place = c.place(at, &e.event_id);
        match place {
            Place::Known(i) => {
                // A replay: emit it and what follows again, at their
                // current revisions unless something changed.
                for entry in c.history.iter_mut().skip(i) {
                    entry.force = true;
                }
                c.dirty(i);
                self.touched.push(id);
            }
            Place::Forgotten => {
                // Folded into the base long ago: emitted again as the
                // current state sees it (the sink keeps the copy it has).
                let cx = cx_fields(&self.topics, &e);
                let mut o = output(&self.cfg, &c.current, &e, at, resolution, &cx, &id, now_ms);
                o.event = Some(e);
                out.push(Released {
                    offset,
                    enriched: o,
                    event_bytes: Some(bytes),
                });
            }
            Place::Last | Place::At(_) => {
                let cx = cx_fields(&self.topics, &e);
                // In order (after the customer's latest, nothing pending):
                // folded and emitted now, without a re-fold, and the event
                // goes to its output, the entry keeping its encoding.
                let in_order = matches!(place, Place::Last) && c.dirty_from.is_none();
                let footprint = c.footprint();
                // The output's value carries the bytes too (see
                // `Released::event_bytes`): shared, not copied.
                let event_bytes = (in_order && own.is_none()).then(|| bytes.clone());
                let mut entry = Entry::new(at, &e, bytes, resolution, cx, revision);
                entry.twice = twice(resolution, revision);
                self.history_len += 1;
                list_unsaved(&mut self.unsaved, &id, c);
                if in_order {
                    let cfg = &self.cfg;
                    let fill = |state: &CustomerState,
                                entry: &Entry,
                                event: &Event,
                                o: &mut EnrichedEvent| {
                        fill_context(
                            o,
                            cfg,
                            state,
                            event,
                            entry.at,
                            entry.resolution,
                            entry.cx(),
                            now_ms,
                        )
                    };
                    // Built where it goes: in the caller's own output, or in
                    // a new slot at the end of `out`.
                    let recent = recent_from(cfg, now_ms);
                    let emission = match own.as_deref_mut() {
                        Some(o) => c.push_last(cfg, entry, &e, o, fill, recent),
                        None => {
                            out.push(Released {
                                offset,
                                enriched: EnrichedEvent::default(),
                                event_bytes: None,
                            });
                            let o = &mut out.last_mut().expect("just pushed").enriched;
                            c.push_last(cfg, entry, &e, o, fill, recent)
                        }
                    };
                    self.unmet += usize::from(c.history.back().is_some_and(|x| x.unmet));
                    let gone = c.evict(&self.cfg);
                    self.history_bytes = self.history_bytes + c.footprint() - footprint;
                    self.evicted(&id, gone);
                    let Some(emission) = emission else {
                        if own.is_none() {
                            out.pop();
                        }
                        return false;
                    };
                    // The event and the customer id are moved into the
                    // output, not copied: the id came with the event's
                    // resolution and has no other use left.
                    match own {
                        Some(o) => {
                            o.event.get_or_insert(e);
                            tenancy::unscope(&mut id);
                            o.resolved_customer_id = id;
                            // The caller wants the first output only (see
                            // `process_received`); the copy that would
                            // follow it counts all the same.
                            o.revision = emission.first_revision();
                            self.stats.repairs += emission.repairs();
                            return true;
                        }
                        None => {
                            let slot = out.last_mut().expect("a slot");
                            slot.event_bytes = event_bytes;
                            let last = &mut slot.enriched;
                            last.event.get_or_insert(e);
                            tenancy::unscope(&mut id);
                            last.resolved_customer_id = id;
                            // The emission says what is vouched for.
                            let mut outputs = Outputs {
                                out,
                                offset,
                                stats: &mut self.stats,
                                recent_from: i64::MAX,
                            };
                            outputs.keep(emission);
                        }
                    }
                } else {
                    let i = match place {
                        Place::At(i) => i,
                        _ => c.history.len(),
                    };
                    // Read by the re-fold at the end of the batch.
                    entry.keep(e);
                    c.insert(i, entry);
                    self.history_bytes = self.history_bytes + c.footprint() - footprint;
                    c.dirty(i);
                    self.touched.push(id);
                }
            }
        }
        false
    }

    /// An event no customer was found for: moved at once if its identifier
    /// is linked by now, else emitted unresolved and kept waiting.
    fn admit_unresolved(
        &mut self,
        e: Event,
        bytes: Arc<[u8]>,
        revision: u32,
        offset: i64,
        now_ms: i64,
        out: &mut Vec<Released>,
    ) {
        let at = event_ms(&e, now_ms);
        let identifier = identity::wait_identifier(e.customer.as_ref()).map(str::to_owned);
        if let Some(h) = &identifier
            && let Some(c) = self.unresolved.linked(h)
        {
            self.moves.push(Moved {
                customer_id: c.to_owned(),
                event: e,
                bytes,
                revision,
            });
            return;
        }
        if let Some(h) = identifier
            && self.unresolved.wait(
                &h,
                &e.event_id,
                Waiter::new(&e.event_id, bytes.clone(), at, revision),
            )
        {
            self.dirty_identifiers.insert(h);
        }
        let o = self.unresolved_output(e, revision, now_ms);
        out.push(Released {
            offset,
            enriched: o,
            event_bytes: Some(bytes),
        });
    }

    fn unresolved_output(&self, e: Event, revision: u32, now_ms: i64) -> EnrichedEvent {
        let mut o = EnrichedEvent::default();
        self.fill_unresolved(&mut o, e, revision, now_ms);
        o
    }

    /// [`Join::unresolved_output`] built in `o`, an empty output already in
    /// its place (see `process_received`).
    fn fill_unresolved(&self, o: &mut EnrichedEvent, e: Event, revision: u32, now_ms: i64) {
        o.resolution = IdentityResolution::Unresolved as i32;
        o.owner_department = department(&self.cfg, &e);
        o.enriched_at = Some(xoflow_proto::from_unix_millis(now_ms));
        o.order = derive::own_order(&e);
        o.cx = Some(cx_fields(&self.topics, &e));
        o.revision = revision;
        o.event.get_or_insert(e);
    }

    /// Re-folds the customers late events landed in front of, and emits
    /// what changed.
    fn settle(&mut self, offset: i64, now_ms: i64, out: &mut Vec<Released>) {
        for id in std::mem::take(&mut self.touched) {
            self.settle_customer(&id, offset, now_ms, out);
        }
    }

    /// Settles one customer's history (see `history::Customer::settle`),
    /// emits what it gives, and evicts what is beyond the bounds.
    fn settle_customer(&mut self, id: &str, offset: i64, now_ms: i64, out: &mut Vec<Released>) {
        let cfg = &self.cfg;
        let Some(c) = self.customers.get_mut(id) else {
            return;
        };
        let footprint = c.footprint();
        let from = c.dirty_from.unwrap_or(c.history.len());
        let unmet_before = c.history.range(from..).filter(|e| e.unmet).count();
        let mut outputs = Outputs {
            out,
            offset,
            stats: &mut self.stats,
            recent_from: recent_from(cfg, now_ms),
        };
        let emitted = c.settle(cfg, &mut outputs, |state, entry, event, o| {
            fill_output(
                o,
                cfg,
                state,
                event,
                entry.at,
                entry.resolution,
                entry.cx(),
                id,
                now_ms,
            )
        });
        let unmet_after = c.history.range(from..).filter(|e| e.unmet).count();
        self.unmet = (self.unmet + unmet_after).saturating_sub(unmet_before);
        if emitted {
            list_unsaved(&mut self.unsaved, id, c);
        }
        // Beyond the bounds, into the base.
        let gone = c.evict(&self.cfg);
        self.history_bytes = self.history_bytes + c.footprint() - footprint;
        self.evicted(id, gone);
    }

    /// Accounts for the entries `gone` from customer `id`'s history into
    /// its base. Inlined for the usual nothing, as [`Customer::evict`].
    #[inline]
    fn evicted(&mut self, id: &str, gone: Vec<Entry>) {
        if !gone.is_empty() {
            self.evicted_some(id, gone);
        }
    }

    #[inline(never)]
    fn evicted_some(&mut self, id: &str, gone: Vec<Entry>) {
        for e in gone {
            self.history_len -= 1;
            if e.unmet {
                self.unmet -= 1;
                self.stats.expired_reference += 1;
            }
            self.removed.insert(entry_key(id, e.id()));
        }
        self.dirty_bases.insert(id.to_owned());
    }

    /// Ends the wait of unresolved events beyond the bounds, and forgets
    /// the links beyond theirs.
    fn expire_waiting(&mut self) {
        let (forgotten, n) = self.unresolved.forget_links(self.cfg.max_links);
        self.stats.forgotten_links += n;
        self.dirty_identifiers.extend(forgotten);
        if self.unresolved.len() == 0 {
            return;
        }
        let before = self
            .watermark
            .saturating_sub(self.cfg.order_window.as_millis() as i64);
        let (changed, n) = self.unresolved.expire(before, self.cfg.max_waiting);
        self.stats.expired_link += n;
        self.dirty_identifiers.extend(changed);
    }

    fn evict_if_full(&mut self, now: i64) {
        if self.customers() < self.cfg.max_customers || now < self.evict_not_before {
            return;
        }
        self.stats.eviction_scans += 1;
        let idle = self.cfg.value_window.as_millis() as i64;
        // The earliest a customer kept can be dropped by a later scan.
        let mut due = i64::MAX;
        let dirty_bases = &mut self.dirty_bases;
        self.cold.retain(|c| {
            let keep = now - c.last_seen_ms() < idle;
            if keep {
                due = due.min(c.last_seen_ms().saturating_add(idle));
            } else {
                dirty_bases.insert(c.id().to_owned());
            }
            keep
        });
        let mut dropped = Vec::new();
        let mut freed = 0;
        self.customers.retain(|id, c| {
            let recent = now - c.current.last_seen_ms < idle;
            if recent {
                due = due.min(c.current.last_seen_ms.saturating_add(idle));
            }
            // A dirty customer stays until its changes are taken; it is
            // dropped at the next scan due, not by one of its own.
            let keep = recent || c.dirty_from.is_some();
            if !keep {
                freed += c.footprint();
                dropped.push((id.clone(), std::mem::take(&mut c.history)));
            }
            keep
        });
        self.evict_not_before = due;
        self.history_bytes -= freed;
        for (id, history) in dropped {
            for e in history {
                self.history_len -= 1;
                self.unmet -= usize::from(e.unmet);
                self.removed.insert(entry_key(&id, e.id()));
            }
            self.dirty_bases.insert(id);
        }
    }

    /// Sheds while the histories take more than their budget, or while a
    /// shedding is under way (`Join::shed`): a comparison per batch.
    /// Called once per batch by the caller, after [`Join::release`] and
    /// once the batch's outputs are sent: shedding changes no output, so
    /// they need not wait for it (the stage sheds while the next batch is
    /// gathered); its changelog records come with the next
    /// [`Join::take_changes`]. Read back without them, a customer has the
    /// history it had before, and the same current state.
    /// [`Join::process_received`] calls it itself.
    #[inline]
    pub fn shed_if_over(&mut self) {
        if self.history_bytes > self.history_budget || !self.shed_queue.is_empty() {
            self.shed();
        }
        self.bytes_at_last_batch = self.history_bytes;
    }

    /// Brings the histories down to [`SHED_TO_PERCENT`] of their budget,
    /// the least recently active customers' first: their events leave for
    /// the base as they would beyond the per-customer bounds (the base's
    /// changelog record rewritten, the entries' deleted), and are never
    /// repaired again. First each customer's history but its latest event
    /// (see [`Customer::shed`]); only if that is not enough, the latest
    /// events too, again the least recently active first.
    ///
    /// Least recently active: whose latest event was admitted longest ago
    /// here. Arrival, not event time: an event arrives late by the time
    /// its source took to send it (order CDC lagging, a survey tool's
    /// retries), so the customers whose events arrived longest ago are
    /// the least likely to receive one; and a backfill's customers, busy
    /// now with events of last year, would be the first shed by event
    /// time. Counted in admissions rather than read off the wall clock: a
    /// batch admits thousands of events in the same millisecond.
    ///
    /// Down to the low-water mark, not just below the budget: the pass over
    /// every customer ([`Join::choose_to_shed`]) then comes once every few
    /// hundredths of the budget admitted, not once per batch. Not lower
    /// than 95 %: down to 80 % the first crossing held every event behind
    /// it for seconds (BENCHMARKS.md, "The local ClickHouse's tables in
    /// memory; shedding in twentieths"). And spread over the batches after
    /// the crossing: what a shedding moves (the events folded into their
    /// bases, the bases frozen, the entries deleted from the changelog) is
    /// work, and done at once it made one batch in three at the budget
    /// take over 100 ms (BENCHMARKS.md, "Shedding spread over the batches,
    /// after the outputs"). So each batch sheds, from the customers the
    /// pass chose, what takes the histories back under their budget and
    /// at least twice what the batch added: never more than a batch over
    /// the budget, as before, and a batch's shedding in proportion to what
    /// it admitted. The batches add to the histories meanwhile, so what
    /// the pass chose brings them about halfway down to the mark before
    /// the next crossing.
    #[inline(never)]
    fn shed(&mut self) {
        let target = self.history_budget / 100 * SHED_TO_PERCENT;
        let grown = self.history_bytes.saturating_sub(self.bytes_at_last_batch);
        let over = self.history_bytes.saturating_sub(self.history_budget);
        let quota = over
            .max(grown.saturating_mul(2))
            .min(self.history_bytes.saturating_sub(target));
        let goal = self.history_bytes.saturating_sub(quota);
        let mut chosen = false;
        while self.history_bytes > goal {
            let Some((id, keep_latest, activity)) = self.shed_queue.pop_front() else {
                // Chosen afresh only over the budget, once per batch: the
                // customers chosen may all have been active since.
                if chosen || self.history_bytes <= self.history_budget {
                    break;
                }
                self.choose_to_shed(target);
                chosen = true;
                continue;
            };
            let Some(c) = self.customers.get_mut(&id) else {
                continue;
            };
            // Active since it was chosen: no longer among the least.
            if c.activity() != activity {
                continue;
            }
            let footprint = c.footprint();
            let gone = c.shed(&self.cfg, keep_latest);
            self.history_bytes = self.history_bytes + c.footprint() - footprint;
            if let Some(frozen) = c.frozen(&id) {
                self.customers.remove(&id);
                self.cold.insert(frozen);
            }
            self.stats.shed_customers += u64::from(!gone.is_empty());
            self.stats.shed_events += gone.len() as u64;
            self.evicted(&id, gone);
        }
        if self.history_bytes <= target {
            self.shed_queue.clear();
        }
    }

    /// The pass of a shedding: queues the customers whose histories, shed,
    /// bring the total down to `target` (the histories down to their
    /// latest events first, then whole ones; each the least recently
    /// active first). The pass is a quickselect over the partition's
    /// customers ([`Cut::at`]), not a sort; only those chosen are sorted.
    fn choose_to_shed(&mut self, target: usize) {
        let need = self.history_bytes.saturating_sub(target);
        let sheddable = |c: &Customer| c.dirty_from.is_none() && !c.history.is_empty();
        // What shedding all but their latest event frees, per customer.
        let mut older: Vec<(Activity, usize)> = self
            .customers
            .values()
            .filter(|c| sheddable(c) && c.history.len() > 1)
            .map(|c| (c.activity(), c.footprint() - c.floor()))
            .collect();
        let older_bytes: usize = older.iter().map(|(_, b)| b).sum();
        let (older_cut, latest_cut) = if older_bytes >= need {
            (Cut::at(&mut older, need), None)
        } else {
            drop(older);
            // Every history down to its latest event, and the latest events
            // of the least recently active too.
            let rest = need - older_bytes;
            let mut latest: Vec<(Activity, usize)> = self
                .customers
                .values()
                .filter(|c| sheddable(c))
                .map(|c| (c.activity(), c.floor()))
                .collect();
            (Cut::All, Some(Cut::at(&mut latest, rest)))
        };
        let (mut freed_older, mut freed_latest) = (0, 0);
        let mut chosen = Vec::new();
        for (id, c) in &self.customers {
            if !sheddable(c) {
                continue;
            }
            let (activity, floor) = (c.activity(), c.floor());
            let whole = latest_cut.as_ref().is_some_and(|cut| {
                cut.takes(activity, floor, &mut freed_latest, need - older_bytes)
            });
            let older = c.history.len() > 1
                && older_cut.takes(activity, c.footprint() - floor, &mut freed_older, need);
            if whole || older {
                chosen.push((id.clone(), !whole, activity));
            }
        }
        // The histories down to their latest events first, then whole
        // ones; each the least recently active first.
        chosen.sort_unstable_by(|a, b| (!a.1, a.2, &a.0).cmp(&(!b.1, b.2, &b.0)));
        self.shed_queue.clear();
        self.shed_queue.extend(chosen);
    }
}

/// Customer `id`, taken out of `cold` and read back as a restore reads
/// its base (no history to fold) if it is there, else a new one: the state
/// it continues from is the one an instance reading the changelog back
/// would continue from.
#[inline(never)]
fn thaw(cold: &mut ColdCustomers, id: &str, cfg: &JoinConfig) -> Box<Customer> {
    let mut c = Box::<Customer>::default();
    if let Some(frozen) = cold.remove(id) {
        // Encoded by this process from a state: it decodes.
        if let Ok(state) = JoinCustomerState::decode(frozen.base()) {
            c.set_base(CustomerState::from_proto(state));
            c.refold(cfg);
        }
    }
    c
}

/// Where shedding brings the histories, in percent of their budget.
const SHED_TO_PERCENT: usize = 95;

/// Which customers a shedding takes from (see [`Join::shed`]).
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Every one.
    All,
    /// Those less recently active than this, and of those as active as it,
    /// enough to free what is needed.
    Before(Activity),
}

impl Cut {
    /// Where the least recently active candidates' bytes, added up oldest
    /// first, reach `need`. Expected O(n): a quickselect on activity that
    /// keeps the side holding the cut.
    fn at(mut candidates: &mut [(Activity, usize)], mut need: usize) -> Cut {
        while !candidates.is_empty() {
            if need == 0 {
                return Cut::Before((0, i64::MIN));
            }
            let mid = candidates.len() / 2;
            let (older, pivot, newer) =
                std::mem::take(&mut candidates).select_nth_unstable_by_key(mid, |(a, _)| *a);
            let older_bytes: usize = older.iter().map(|(_, b)| b).sum();
            if older_bytes >= need {
                candidates = older;
            } else if older_bytes + pivot.1 >= need {
                return Cut::Before(pivot.0);
            } else {
                need -= older_bytes + pivot.1;
                candidates = newer;
            }
        }
        Cut::All
    }

    /// Whether a customer this active, whose shedding frees `bytes`, is
    /// taken; `freed` adds up what those taken free, against `need`.
    fn takes(&self, activity: Activity, bytes: usize, freed: &mut usize, need: usize) -> bool {
        let taken = match self {
            Cut::All => true,
            Cut::Before(cut) => activity < *cut || (activity == *cut && *freed < need),
        };
        if taken {
            *freed += bytes;
        }
        taken
    }
}

/// An event's own CX fields: scores, and sentiment and topics of its text
/// (`topics`: the join's rules). Apart from [`Join`], so that it can be
/// derived while a customer of the join is borrowed.
fn cx_fields(topics: &sentiment::TopicsConfig, e: &Event) -> xoflow_proto::v1::CxFields {
    let mut cx = derive::cx_fields(e);
    let text = experience_text(e);
    if !text.is_empty() {
        let s = sentiment::score(&text);
        cx.sentiment = Some(s.score);
        cx.sentiment_label = s.label as i32;
        cx.topics = sentiment::topics(topics.for_tenant(&e.tenant), &text);
    }
    cx
}

/// The department owning `e`'s touchpoint in its tenant's journey config.
fn department(cfg: &JoinConfig, e: &Event) -> String {
    let touchpoint = e
        .touchpoint
        .as_ref()
        .map(|t| t.touchpoint.as_str())
        .unwrap_or("");
    cfg.owners
        .department(&e.tenant, touchpoint)
        .unwrap_or_default()
        .to_owned()
}

/// Lists `c` among the customers with unsaved entries, once per batch.
fn list_unsaved(unsaved: &mut Vec<String>, id: &str, c: &mut Customer) {
    if !c.listed {
        c.listed = true;
        unsaved.push(id.to_owned());
    }
}

/// A history entry's changelog key: the customer's state key (tenant, unit
/// separator, customer id), NUL, event id.
fn entry_key(customer: &str, event_id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(customer.len() + 1 + event_id.len());
    key.extend_from_slice(customer.as_bytes());
    key.push(0);
    key.extend_from_slice(event_id);
    key
}

/// The order of the re-scoring's silent customers: by tenant, then id.
fn silent_order(s: &Silent) -> (&str, &str) {
    let tenant = s.output.event.as_ref().map_or("", |e| e.tenant.as_str());
    (tenant, &s.customer_id)
}

/// Whether an event's first output here is emitted twice (see the module
/// doc, "Linked events"): resolved through a link, and not moved here
/// after waiting unresolved (which starts above revision 0 anyway).
fn twice(resolution: IdentityResolution, revision: u32) -> bool {
    resolution == IdentityResolution::Linked && revision == 0
}

/// The output of a resolved event (at `at`, with its CX fields `cx`) of
/// the customer whose state key is `customer`, from the state right after
/// it was folded in, without the event itself (attached once it is
/// emitted).
#[allow(clippy::too_many_arguments)]
fn output(
    cfg: &JoinConfig,
    state: &CustomerState,
    event: &Event,
    at: i64,
    resolution: IdentityResolution,
    cx: &xoflow_proto::v1::CxFields,
    customer: &str,
    now_ms: i64,
) -> EnrichedEvent {
    let mut o = EnrichedEvent::default();
    fill_output(
        &mut o, cfg, state, event, at, resolution, cx, customer, now_ms,
    );
    o
}

/// [`output`] built in `o`, an empty output already in its place.
#[allow(clippy::too_many_arguments)]
fn fill_output(
    o: &mut EnrichedEvent,
    cfg: &JoinConfig,
    state: &CustomerState,
    event: &Event,
    at: i64,
    resolution: IdentityResolution,
    cx: &xoflow_proto::v1::CxFields,
    customer: &str,
    now_ms: i64,
) {
    o.resolved_customer_id = tenancy::customer_part(customer).to_owned();
    fill_context(o, cfg, state, event, at, resolution, cx, now_ms);
}

/// [`fill_output`] but for the customer id, which a caller owning it moves
/// in afterwards (it is not part of [`history::context_hash`]).
#[allow(clippy::too_many_arguments)]
fn fill_context(
    o: &mut EnrichedEvent,
    cfg: &JoinConfig,
    state: &CustomerState,
    event: &Event,
    at: i64,
    resolution: IdentityResolution,
    cx: &xoflow_proto::v1::CxFields,
    now_ms: i64,
) {
    o.resolution = resolution as i32;
    o.owner_department = department(cfg, event);
    o.enriched_at = Some(xoflow_proto::from_unix_millis(now_ms));
    o.order = state.order_context(event, at, cfg);
    o.session = state.session_context();
    o.customer = Some(state.context(at, cfg));
    o.call = state.call_context(event);
    o.cx = Some(cx.clone());
}

fn event_ms(e: &Event, now_ms: i64) -> i64 {
    e.occurred_at
        .as_ref()
        .map(xoflow_proto::to_unix_millis)
        .unwrap_or(now_ms)
}

pub fn experience_text(e: &Event) -> String {
    match &e.payload {
        Some(Payload::Survey(s)) => {
            let mut t = s.comment.clone();
            for a in s.answers.iter().filter(|a| !a.text.is_empty()) {
                t.push(' ');
                t.push_str(&a.text);
            }
            t
        }
        Some(Payload::Call(c)) => c
            .segments
            .iter()
            .filter(|s| s.speaker == Speaker::Customer as i32)
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        Some(Payload::Social(p)) => p.text.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;
    use crate::identity::Links;
    use xoflow_proto::v1::{
        CallTranscript, CustomerIdentity, MetricKind, Order, SurveyAnswer, SurveyResponse,
        SurveyTrigger, TranscriptSegment,
    };
    use xoflow_proto::v1::{
        IdentityResolution, OrderMatch, OrderStatus, SentimentLabel, survey_trigger::Ref,
    };

    const DAY_MS: i64 = 86_400_000;

    fn cfg() -> JoinConfig {
        JoinConfig {
            max_orders_per_customer: 8,
            max_customers: 1000,
            ..JoinConfig::new(Duration::from_secs(5)).with_owners(&[("t", "delivery", "logistics")])
        }
    }

    /// An NPS answer on the 0-10 scale.
    fn nps(score: f64) -> SurveyAnswer {
        SurveyAnswer {
            kind: MetricKind::Nps as i32,
            score: Some(score),
            scale_min: 0,
            scale_max: 10,
            ..Default::default()
        }
    }

    /// Order `order_id` of customer `customer_id`, paid at `at`.
    fn paid(
        event_id: &str,
        at: i64,
        customer_id: &str,
        order_id: &str,
        amount_minor: i64,
    ) -> Event {
        event(
            event_id,
            at,
            CustomerIdentity {
                customer_id: customer_id.into(),
                ..Default::default()
            },
            Payload::Order(Order {
                order_id: order_id.into(),
                status: OrderStatus::Paid as i32,
                amount_minor,
                ..Default::default()
            }),
        )
    }

    fn event(id: &str, at: i64, customer: CustomerIdentity, payload: Payload) -> Event {
        Event {
            event_id: id.into(),
            tenant: "t".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(at)),
            customer: Some(customer),
            touchpoint: Some(xoflow_proto::v1::Touchpoint {
                stage: "delivery".into(),
                touchpoint: "delivery".into(),
                ..Default::default()
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    #[test]
    fn a_detractor_survey_known_only_by_email_meets_its_late_order_and_calls() {
        let mut j = Join::new(cfg());
        let known = CustomerIdentity {
            customer_id: "c1".into(),
            email_hash: "h-email".into(),
            ..Default::default()
        };
        let order = |status: OrderStatus, delivered: Option<i64>| Order {
            order_id: "o1".into(),
            status: status as i32,
            amount_minor: 56_000,
            currency: "CNY".into(),
            promised_delivery_at: Some(xoflow_proto::from_unix_millis(3 * DAY_MS)),
            delivered_at: delivered.map(xoflow_proto::from_unix_millis),
            ..Default::default()
        };
        j.process(
            event(
                "e1",
                0,
                known.clone(),
                Payload::Order(order(OrderStatus::Paid, None)),
            ),
            0,
        );
        j.process(
            event(
                "e2",
                5 * DAY_MS,
                known.clone(),
                Payload::Order(order(OrderStatus::Delivered, Some(5 * DAY_MS))),
            ),
            0,
        );
        for i in 0..2 {
            j.process(
                event(
                    &format!("call{i}"),
                    5 * DAY_MS + i,
                    known.clone(),
                    Payload::Call(CallTranscript {
                        call_id: format!("k{i}"),
                        segments: vec![TranscriptSegment {
                            speaker: Speaker::Customer as i32,
                            text: "Where is my parcel? This is terrible.".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                ),
                0,
            );
        }
        let survey = event(
            "e3",
            6 * DAY_MS,
            CustomerIdentity {
                email_hash: "h-email".into(),
                ..Default::default()
            },
            Payload::Survey(SurveyResponse {
                survey_id: "post-delivery".into(),
                answers: vec![nps(3.0)],
                comment: "配送太慢了，等了五天".into(),
                trigger: Some(SurveyTrigger {
                    r#ref: Some(Ref::OrderId("o1".into())),
                }),
                ..Default::default()
            }),
        );
        let out = j.process(survey, 0);
        assert_eq!(out.resolved_customer_id, "c1");
        assert_eq!(out.resolution, IdentityResolution::Linked as i32);
        assert_eq!(out.owner_department, "logistics");
        let o = out.order.expect("order joined");
        assert_eq!(o.r#match, OrderMatch::Referenced as i32);
        assert_eq!(o.delivery_late_seconds, Some(2 * 86_400));
        assert_eq!(o.amount_minor, 56_000);
        let c = out.customer.expect("customer context");
        assert_eq!(c.support_contacts_30d, 2);
        assert_eq!(c.lifetime_value_minor, 56_000);
        assert_eq!(c.last_nps, Some(3));
        assert!(c.churn_risk.expect("risk") > 0.8);
        let cx = out.cx.expect("cx");
        assert_eq!(cx.sentiment_label, SentimentLabel::Negative as i32);
        assert!(
            cx.topics.contains(&"delivery".to_string()),
            "{:?}",
            cx.topics
        );
    }

    #[test]
    fn anonymous_events_pass_through_unresolved() {
        let mut j = Join::new(cfg());
        let out = j.process(
            event(
                "e1",
                0,
                CustomerIdentity {
                    device_id_hash: "d".into(),
                    ..Default::default()
                },
                Payload::Order(Order {
                    order_id: "o".into(),
                    ..Default::default()
                }),
            ),
            0,
        );
        assert_eq!(out.resolution, IdentityResolution::Unresolved as i32);
        assert!(out.customer.is_none());
        assert_eq!(j.customers(), 0);
    }

    /// Every output of `events` offered one by one (each released at once).
    fn feed(j: &mut Join, events: &[Event], links: &Links, now: i64) -> Vec<EnrichedEvent> {
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            j.offer(e.clone(), links.resolve(e), i as i64, now);
            j.drain(now, &mut out);
            j.shed_if_over();
        }
        out.into_iter().map(|r| r.enriched).collect()
    }

    /// Three days of five customers' journeys, and the links they teach.
    fn journeys_and_links() -> (Vec<Event>, Links) {
        let events = xoflow_tools::scenario::journeys(5, 0..3, 1_800_000_000_000);
        let mut links = Links::default();
        for e in &events {
            links.learn(e, |_, _| {});
        }
        (events, links)
    }

    fn without_time(mut e: EnrichedEvent) -> EnrichedEvent {
        e.enriched_at = None;
        e
    }

    /// How a test hands events to a join: [`feed`] or [`feed_both`].
    type Feed = fn(&mut Join, &[Event], &Links, i64) -> Vec<EnrichedEvent>;

    /// `events` handed one by one to `a` and to `b` (with `with`): both
    /// emit the same outputs for each.
    fn assert_continue_alike(
        a: &mut Join,
        b: &mut Join,
        events: &[Event],
        links: &Links,
        now: i64,
        with: Feed,
    ) {
        for e in events {
            let want = with(a, std::slice::from_ref(e), links, now);
            let got = with(b, std::slice::from_ref(e), links, now);
            assert_eq!(
                got.into_iter().map(without_time).collect::<Vec<_>>(),
                want.into_iter().map(without_time).collect::<Vec<_>>(),
                "{}",
                e.event_id
            );
        }
    }

    /// An owner reads the first half of the journeys (with `with`); a new
    /// owner restores its changelog, then re-reads the last `replayed` of
    /// them through the repartition topic ([`feed`]): applied already,
    /// they are no repair. Both then read the second half alike.
    fn assert_restored_owner_continues_alike(with: Feed, replayed: usize) {
        let (events, links) = journeys_and_links();
        let now = 1_900_000_000_000;
        let half = events.len() / 2;
        let mut a = Join::new(cfg());
        with(&mut a, &events[..half], &links, now);
        let mut b = Join::new(cfg());
        assert_eq!(b.restore_records(a.take_changes(), now), Skipped::default());
        let again = feed(&mut b, &events[half - replayed..half], &links, now);
        assert!(
            again.iter().all(|o| o.revision == 0 && !o.new_revision),
            "a replay is no repair, and vouches for nothing"
        );
        assert_continue_alike(&mut a, &mut b, &events[half..], &links, now, with);
    }

    #[test]
    fn state_survives_the_changelog_and_replays_are_not_applied_twice() {
        // The last few events the old owner applied but did not commit.
        assert_restored_owner_continues_alike(feed, 3);
    }

    /// As the stage feeds the join: events carrying a customer id from the
    /// events topic ([`Join::offer_direct`]), the rest through the
    /// repartition topic.
    fn feed_both(j: &mut Join, events: &[Event], links: &Links, now: i64) -> Vec<EnrichedEvent> {
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if e.customer
                .as_ref()
                .is_some_and(|c| !c.customer_id.is_empty())
            {
                j.offer_direct(e.clone(), e.encode_to_vec(), i as i64, now);
            } else {
                j.offer(e.clone(), links.resolve(e), i as i64, now);
            }
            j.drain(now, &mut out);
            j.shed_if_over();
        }
        out.into_iter().map(|r| r.enriched).collect()
    }

    /// Every output's record carries its event as the bytes the join
    /// read (attributes in the collector's order, whichever order a decode
    /// puts them in), first and whole, and decodes to the output it was
    /// made from: in order, late (repairs), direct or resolved.
    #[test]
    fn outputs_carry_their_events_as_read() {
        let (mut events, links) = journeys_and_links();
        for (i, e) in events.iter_mut().enumerate() {
            for k in ["campaign", "cohort", "variant", "store"] {
                e.attributes.insert(k.into(), format!("{k}-{i}"));
            }
        }
        // Latest first for a few: their successors are repaired.
        events[..12].reverse();
        let read: HashMap<String, Vec<u8>> = events
            .iter()
            .map(|e| (e.event_id.clone(), e.encode_to_vec()))
            .collect();
        let now = 1_900_000_000_000;
        let mut j = Join::new(cfg());
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let bytes = read[&e.event_id].as_slice();
            if e.customer
                .as_ref()
                .is_some_and(|c| !c.customer_id.is_empty())
            {
                j.offer_direct(e.clone(), bytes, i as i64, now);
            } else {
                j.offer_received(e.clone(), bytes, links.resolve(e), 0, i as i64, now);
            }
            // Batches of seven: an event later than its batch is repaired.
            if i % 7 == 6 {
                j.drain(now, &mut out);
            }
        }
        j.drain(now, &mut out);
        assert!(j.take_stats().repairs > 0, "repairs emitted");
        assert!(out.iter().all(|r| r.event_bytes.is_some()));
        for r in out {
            let expected = r.enriched.clone();
            let (key, value) = r.into_record();
            let bytes = &read[&key];
            let mut head = Vec::new();
            xoflow_proto::encoding::encode_key(
                1,
                xoflow_proto::encoding::WireType::LengthDelimited,
                &mut head,
            );
            xoflow_proto::encoding::encode_varint(bytes.len() as u64, &mut head);
            head.extend_from_slice(bytes);
            assert!(value.starts_with(&head), "{key}: the event as read");
            assert_eq!(EnrichedEvent::decode(value.as_slice()).ok(), Some(expected));
        }
    }

    #[test]
    fn direct_events_join_as_the_repartitioned_ones_and_replays_from_either_topic_count_once() {
        let (events, links) = journeys_and_links();
        let now = 1_900_000_000_000;
        // Same outputs whichever topic brought a direct event.
        let mut one = Join::new(cfg());
        let mut two = Join::new(cfg());
        assert_eq!(
            feed_both(&mut one, &events, &links, now)
                .into_iter()
                .map(without_time)
                .collect::<Vec<_>>(),
            feed(&mut two, &events, &links, now)
                .into_iter()
                .map(without_time)
                .collect::<Vec<_>>(),
        );
        // A new owner restores the changelog of one that read both topics,
        // and the last events it applied come again through the other
        // topic (an upgrade's overlap): recognised, no repair.
        assert_restored_owner_continues_alike(feed_both, 5);
    }

    #[test]
    fn held_offsets_are_told_apart_by_input_topic() {
        let (events, links) = journeys_and_links();
        let now = 1_900_000_000_000;
        let mut j = Join::new(cfg());
        assert_eq!(j.lowest_held_offset(Input::Events), None);
        let direct: Vec<&Event> = events
            .iter()
            .filter(|e| {
                e.customer
                    .as_ref()
                    .is_some_and(|c| !c.customer_id.is_empty())
            })
            .take(2)
            .collect();
        j.offer_direct(direct[0].clone(), direct[0].encode_to_vec(), 40, now);
        j.offer_direct(direct[1].clone(), direct[1].encode_to_vec(), 17, now);
        j.offer(events[0].clone(), links.resolve(&events[0]), 900, now);
        assert_eq!(j.lowest_held_offset(Input::Events), Some(17));
        assert_eq!(j.lowest_held_offset(Input::Repartition), Some(900));
        let mut out = Vec::new();
        j.drain(now, &mut out);
        assert_eq!(j.lowest_held_offset(Input::Events), None);
        assert_eq!(j.lowest_held_offset(Input::Repartition), None);
        let direct_out = out
            .iter()
            .find(|o| o.enriched.event.as_ref().map(|e| &e.event_id) == Some(&direct[0].event_id))
            .expect("emitted");
        assert_eq!(
            direct_out.enriched.resolution,
            IdentityResolution::Direct as i32
        );
    }

    #[test]
    fn a_history_written_before_hash_version_1_is_read_back_without_spurious_revisions() {
        let (events, links) = journeys_and_links();
        let now = 1_900_000_000_000;
        let half = events.len() / 2;
        let mut a = Join::new(cfg());
        // The last output of each event: what its entry's hash is of.
        let last: HashMap<String, EnrichedEvent> = feed(&mut a, &events[..half], &links, now)
            .into_iter()
            .map(|o| (o.event.as_ref().expect("event").event_id.clone(), o))
            .collect();
        let records = a.take_changes();
        // The same records as the join wrote them before the version field:
        // each entry's hash over the encoded contexts, no version (0). And
        // the same again with that field read as version 1.
        let rewrite = |version: u32| -> ChangelogRecords {
            records
                .iter()
                .map(|(k, v)| {
                    if k.first() == Some(&0) || !k.contains(&0) || v.is_empty() {
                        return (k.clone(), v.clone());
                    }
                    let mut p = JoinHistoryEntry::decode(v.as_slice()).expect("entry");
                    let id = Event::decode(p.event.as_slice()).expect("event").event_id;
                    assert_eq!(p.hash_version, history::HASH_VERSION);
                    assert_eq!(p.output_hash, history::context_hash(&last[&id]));
                    p.output_hash = history::context_hash_v0(&last[&id]);
                    p.hash_version = version;
                    (k.clone(), p.encode_to_vec())
                })
                .collect()
        };
        let old = rewrite(0);
        assert_ne!(old, records);
        let mut b = Join::new(cfg());
        assert_eq!(b.restore_records(old, now), Skipped::default());
        let mut misread = Join::new(cfg());
        assert_eq!(misread.restore_records(rewrite(1), now), Skipped::default());
        // A replay of the last events emits them at the revisions they had:
        // no repair. Read with the wrong hash, every entry replayed would
        // count as changed.
        let replay = &events[half - 3..half];
        let revisions = |outputs: Vec<EnrichedEvent>| -> Vec<u32> {
            outputs.iter().map(|o| o.revision).collect()
        };
        let got = revisions(feed(&mut b, replay, &links, now));
        assert!(got.iter().all(|r| *r == 0), "{got:?}");
        assert_eq!(b.take_stats().repairs, 0);
        let wrong = revisions(feed(&mut misread, replay, &links, now));
        assert!(wrong.iter().any(|r| *r > 0), "{wrong:?}");
        // The old entries are written again with the current hash as they
        // are emitted, and the restored state continues as the original.
        for (k, v) in b.take_changes() {
            if k.first() != Some(&0) && k.contains(&0) && !v.is_empty() {
                let p = JoinHistoryEntry::decode(v.as_slice()).expect("entry");
                assert_eq!(p.hash_version, history::HASH_VERSION);
            }
        }
        feed(&mut a, replay, &links, now);
        assert_continue_alike(&mut a, &mut b, &events[half..], &links, now, feed);
    }

    #[test]
    fn two_tenants_customers_with_one_id_share_no_state() {
        let mut j = Join::new(cfg());
        let of = |tenant: &str, mut e: Event| {
            e.tenant = tenant.into();
            e
        };
        let order = paid("order:7:2", DAY_MS, "1001", "7", 56_000);
        let survey = event(
            "s-1",
            2 * DAY_MS,
            CustomerIdentity {
                customer_id: "1001".into(),
                ..Default::default()
            },
            Payload::Survey(SurveyResponse {
                survey_id: "post-delivery".into(),
                answers: vec![nps(3.0)],
                ..Default::default()
            }),
        );
        // acme's order, then the same order id (same event id, same time)
        // at beta: two events, both emitted.
        let links = Links::default();
        let events = [
            of("acme", order.clone()),
            of("beta", order),
            of("gamma", survey.clone()),
            of("acme", survey),
        ];
        let out = feed(&mut j, &events, &links, 3 * DAY_MS);
        let by = |tenant: &str, id: &str| {
            let o = out
                .iter()
                .find(|o| {
                    o.event
                        .as_ref()
                        .is_some_and(|e| e.tenant == tenant && e.event_id == id)
                })
                .unwrap_or_else(|| panic!("{tenant} {id} emitted"));
            assert_eq!(o.resolved_customer_id, "1001", "outputs carry the id alone");
            o.customer.expect("customer context")
        };
        assert_eq!(by("acme", "order:7:2").orders_90d, 1);
        assert_eq!(by("beta", "order:7:2").orders_90d, 1, "not acme's");
        assert_eq!(by("gamma", "s-1").orders_90d, 0, "no order of its own");
        assert_eq!(by("acme", "s-1").lifetime_value_minor, 56_000);
        assert_eq!(j.customers(), 3);
        // An erasure names its tenant; one without (sent before notices
        // did) erases every tenant's customer with the id.
        assert!(j.erase_customer("beta", "1001"));
        assert_eq!(j.customers(), 2);
        assert!(!j.erase_customer("beta", "1001"));
        assert!(j.erase_customer("", "1001"));
        assert_eq!(j.customers(), 0);
    }

    #[test]
    fn records_keyed_without_a_tenant_are_skipped_on_restore() {
        let mut j = Join::new(cfg());
        let order = paid("o1", DAY_MS, "c1", "o1", 100);
        feed(&mut j, &[order], &Links::default(), 0);
        let records = j.take_changes();
        assert!(!records.is_empty());
        // As written before keys named the tenant.
        let untenanted: Vec<(Vec<u8>, Vec<u8>)> = records
            .iter()
            .map(|(k, v)| {
                (
                    k.strip_prefix(b"t\x1f").expect("a state key").to_vec(),
                    v.clone(),
                )
            })
            .collect();
        let mut old = Join::new(cfg());
        let skipped = old.restore_records(untenanted, 0);
        assert_eq!(
            skipped,
            Skipped {
                undecodable: 0,
                untenanted: records.len()
            }
        );
        assert_eq!(old.customers(), 0);
        // Deleted from the changelog, so that no restore reads them again.
        let tombstones = old.take_changes();
        assert_eq!(tombstones.len(), records.len());
        assert!(
            tombstones
                .iter()
                .all(|(k, v)| v.is_empty() && !k.contains(&0x1f))
        );
        let mut new = Join::new(cfg());
        assert_eq!(new.restore_records(records, 0), Skipped::default());
        assert_eq!(new.customers(), 1);
    }

    #[test]
    fn the_changelog_writes_each_changed_key_once_and_deletes_what_left() {
        let mut j = Join::new(JoinConfig {
            max_history_per_customer: 2,
            ..cfg()
        });
        let order = |i: i64| paid(&format!("o{i}"), i * DAY_MS, "c1", &format!("o{i}"), 100);
        let links = Links::default();
        feed(&mut j, &[order(0), order(1)], &links, 0);
        let first = j.take_changes();
        let keys: Vec<&[u8]> = first.iter().map(|(k, _)| k.as_slice()).collect();
        // Keys name the tenant ("t") before the customer id.
        assert_eq!(keys, vec![&b"t\x1fc1\0o0"[..], b"t\x1fc1\0o1"]);
        assert!(first.iter().all(|(_, v)| !v.is_empty()));
        assert!(j.take_changes().is_empty(), "nothing changed since");
        // Two more: the first two leave the history for the base.
        feed(&mut j, &[order(2), order(3)], &links, 0);
        let second = j.take_changes();
        let got: Vec<(&[u8], bool)> = second
            .iter()
            .map(|(k, v)| (k.as_slice(), v.is_empty()))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"t\x1fc1"[..], false),
                (b"t\x1fc1\0o0", true),
                (b"t\x1fc1\0o1", true),
                (b"t\x1fc1\0o2", false),
                (b"t\x1fc1\0o3", false),
            ]
        );
        // What the records say is the state: a new owner, reading the
        // latest record per key as the stage does, continues alike.
        let latest: BTreeMap<Vec<u8>, Vec<u8>> = first.into_iter().chain(second).collect();
        let mut k = Join::new(JoinConfig {
            max_history_per_customer: 2,
            ..cfg()
        });
        k.restore_records(latest, 0);
        assert_eq!(k.history_events(), 2);
        let want = feed(&mut j, &[order(4)], &links, 0);
        let got = feed(&mut k, &[order(4)], &links, 0);
        assert_eq!(
            got.into_iter().map(without_time).collect::<Vec<_>>(),
            want.into_iter().map(without_time).collect::<Vec<_>>()
        );
    }

    /// A survey about order `id`, and nothing else.
    fn survey_about_order(id: impl Into<String>) -> Payload {
        Payload::Survey(SurveyResponse {
            trigger: Some(SurveyTrigger {
                r#ref: Some(Ref::OrderId(id.into())),
            }),
            ..Default::default()
        })
    }

    /// A restore re-folds each history from the whole events: a survey
    /// about an order not seen yet still waits for it.
    #[test]
    fn a_survey_waiting_for_its_order_still_waits_after_a_restore() {
        let mut a = Join::new(cfg());
        let survey = event(
            "s",
            2 * DAY_MS,
            CustomerIdentity {
                customer_id: "c1".into(),
                ..Default::default()
            },
            survey_about_order("o1"),
        );
        feed(&mut a, &[survey], &Links::default(), 0);
        assert_eq!(a.waiting_for_reference(), 1);
        let mut b = Join::new(cfg());
        assert_eq!(b.restore_records(a.take_changes(), 0), Skipped::default());
        assert_eq!(b.waiting_for_reference(), 1);
    }

    #[test]
    fn a_late_order_repairs_the_survey_about_it_once() {
        let mut j = Join::new(cfg());
        let c = CustomerIdentity {
            customer_id: "c1".into(),
            ..Default::default()
        };
        let survey = event("s", 2 * DAY_MS, c.clone(), survey_about_order("o1"));
        let order = |id: &str, at: i64, status: OrderStatus| {
            event(
                id,
                at,
                c.clone(),
                Payload::Order(Order {
                    order_id: "o1".into(),
                    status: status as i32,
                    amount_minor: 100,
                    ..Default::default()
                }),
            )
        };
        let links = Links::default();
        let first = feed(&mut j, &[survey], &links, 0);
        assert_eq!(first.len(), 1);
        assert!(first[0].order.is_none());
        assert_eq!(j.waiting_for_reference(), 1);
        // Both of the order's events in one batch: one repair, not two.
        let mut out = Vec::new();
        j.offer(
            order("o-placed", 0, OrderStatus::Placed),
            links.resolve(&order("x", 0, OrderStatus::Placed)),
            1,
            0,
        );
        j.offer(
            order("o-paid", DAY_MS, OrderStatus::Paid),
            links.resolve(&order("x", 0, OrderStatus::Paid)),
            2,
            0,
        );
        j.drain(0, &mut out);
        let repairs: Vec<_> = out
            .iter()
            .filter(|r| r.enriched.event.as_ref().is_some_and(|e| e.event_id == "s"))
            .collect();
        assert_eq!(repairs.len(), 1);
        let r = &repairs[0].enriched;
        assert_eq!(r.revision, 1);
        let o = r.order.as_ref().expect("order joined");
        assert_eq!(
            (o.order_id.as_str(), o.r#match),
            ("o1", OrderMatch::Referenced as i32)
        );
        assert_eq!(o.status, OrderStatus::Paid as i32);
        assert_eq!(
            r.customer.as_ref().expect("customer").lifetime_value_minor,
            100
        );
        assert_eq!(j.waiting_for_reference(), 0);
        assert_eq!(j.take_stats().repairs, 1);
        // The order events themselves are emitted once, at revision 0.
        assert_eq!(out.iter().filter(|r| r.enriched.revision == 0).count(), 2);
    }

    /// Which outputs enrich vouches for as never emitted before
    /// (`EnrichedEvent::new_revision`, which the sink does not look up in
    /// its dedup index): repairs it mints, of events its history has held
    /// without a gap since their time. Not a first output, and not a repair
    /// of an event that could be a client's re-send the history no longer
    /// knows: one at or before what the customer's base folded in and no
    /// longer recognises, or one older than a customer dropped whole for
    /// idling could have had. (A moved event's first output:
    /// `an_unresolved_event_moves_to_its_customer_when_a_link_comes`.)
    #[test]
    fn a_repair_is_vouched_new_only_where_no_copy_of_it_can_exist() {
        let links = Links::default();
        let who = |c: &str| CustomerIdentity {
            customer_id: c.into(),
            ..Default::default()
        };
        let marks = |out: &[EnrichedEvent], id: &str| -> Vec<(u32, bool)> {
            out.iter()
                .filter(|o| o.event.as_ref().is_some_and(|e| e.event_id == id))
                .map(|o| (o.revision, o.new_revision))
                .collect()
        };
        let now = 10 * DAY_MS;

        // A survey of day 9, then the order it is about, of day 8, each in
        // a batch of its own with the wall clock at `now`: the marks of
        // the survey's outputs and of the order's.
        let late_order = |name: &str, now: i64| {
            let mut j = Join::new(cfg());
            let (s, o) = (format!("{name}-s"), format!("{name}-o"));
            let first = feed(
                &mut j,
                &[event(&s, 9 * DAY_MS, who(name), survey_about_order(&o))],
                &links,
                now,
            );
            let paid_id = format!("{name}-paid");
            let out = feed(
                &mut j,
                &[paid(&paid_id, 8 * DAY_MS, name, &o, 100)],
                &links,
                now,
            );
            (marks(&first, &s), marks(&out, &s), marks(&out, &paid_id))
        };

        // Live: the survey's first output is not vouched for, the late
        // order's repair of it is; the order's own output is a first one.
        assert_eq!(
            late_order("a", now),
            (vec![(0, false)], vec![(1, true)], vec![(0, false)])
        );

        // The same, with the wall clock just past the survey's time plus
        // `value_window` less the future margin: a customer that idle may
        // have been dropped whole and made afresh, knowing nothing of what
        // it emitted. A millisecond earlier, it is vouched for.
        let edge = 9 * DAY_MS + cfg().value_window.as_millis() as i64 - FUTURE_MARGIN;
        assert_eq!(late_order("e", edge).1, [(1, true)]);
        assert_eq!(late_order("b", edge + 1).1, [(1, false)]);

        // Behind the base: every event shed into it after each one (a
        // budget of one byte), `clicks` of them spread over a day, the
        // latest at two days; then a survey of a day and a half the
        // history does not know, a click at two and a half, and the order
        // the survey is about, without shedding in between.
        let behind_the_base = |name: &str, clicks: i64| {
            let mut j = budgeted(1);
            let clicks: Vec<Event> = (1..=clicks)
                .map(|k| {
                    event(
                        &format!("{name}-k{k}"),
                        DAY_MS + k * DAY_MS / clicks,
                        who(name),
                        Payload::Click(Default::default()),
                    )
                })
                .collect();
            feed(&mut j, &clicks, &links, now);
            let mut out = Vec::new();
            let survey = event(
                &format!("{name}-s"),
                3 * DAY_MS / 2,
                who(name),
                survey_about_order(format!("{name}-o")),
            );
            let click = event(
                &format!("{name}-late"),
                5 * DAY_MS / 2,
                who(name),
                Payload::Click(Default::default()),
            );
            let order = paid(
                &format!("{name}-paid"),
                DAY_MS,
                name,
                &format!("{name}-o"),
                100,
            );
            for (i, e) in [survey, click, order].into_iter().enumerate() {
                j.offer(e.clone(), links.resolve(&e), 1000 + i as i64, now);
                j.drain(now, &mut out);
            }
            let out: Vec<EnrichedEvent> = out.into_iter().map(|r| r.enriched).collect();
            (
                marks(&out, &format!("{name}-s")),
                marks(&out, &format!("{name}-late")),
            )
        };
        // More folded in than the base recognises (64): the survey's
        // repair is not vouched for, since a re-sent event folded long ago
        // would look the same. The click after the base, its customer's
        // value raised by the order, is.
        let (survey, late) = behind_the_base("c", 70);
        assert_eq!(survey, [(0, false), (1, false)]);
        assert_eq!(late, [(0, false), (1, true)]);
        // Every event folded in still recognised: a replay of one would be
        // no new entry, so the unknown survey is new, its repair too.
        let (survey, late) = behind_the_base("d", 3);
        assert_eq!(survey, [(0, false), (1, true)]);
        assert_eq!(late, [(0, false), (1, true)]);
    }

    /// `[enrich.alerts]` rules from TOML, read like the configuration.
    fn alert_rules(toml: &str) -> AlertRules {
        AlertRules::compile(&toml_settings(toml)).expect("valid rules")
    }

    fn toml_settings(toml: &str) -> crate::alert::AlertsSettings {
        #[derive(serde::Deserialize)]
        struct W {
            enrich: E,
        }
        #[derive(serde::Deserialize)]
        struct E {
            alerts: crate::alert::AlertsSettings,
        }
        let w: W = xoflow_common::config::from_toml(toml).expect("toml");
        w.enrich.alerts
    }

    #[test]
    fn a_detractor_whose_valuable_order_arrives_later_is_alerted_then_once() {
        let rules = alert_rules(
            r#"
[[enrich.alerts.tenants.t.rules]]
name = "valuable-detractor"
severity = "high"
nps = ["detractor"]
lifetime_value_at_least = 50000
"#,
        );
        let mut j = Join::new(cfg()).with_alerts(rules);
        let c = CustomerIdentity {
            customer_id: "c1".into(),
            ..Default::default()
        };
        let survey = event(
            "s",
            2 * DAY_MS,
            c.clone(),
            Payload::Survey(SurveyResponse {
                answers: vec![nps(2.0)],
                trigger: Some(SurveyTrigger {
                    r#ref: Some(Ref::OrderId("o1".into())),
                }),
                ..Default::default()
            }),
        );
        let paid = event(
            "o-paid",
            DAY_MS,
            c.clone(),
            Payload::Order(Order {
                order_id: "o1".into(),
                status: OrderStatus::Paid as i32,
                amount_minor: 80_000,
                ..Default::default()
            }),
        );
        let links = Links::default();
        let first = feed(&mut j, std::slice::from_ref(&survey), &links, 0);
        assert_eq!(first.len(), 1);
        assert!(j.take_alerts().is_empty(), "no value known yet");
        let later = feed(&mut j, &[paid], &links, 0);
        assert!(later.iter().any(|o| o.revision == 1), "the survey repaired");
        let alerts = j.take_alerts();
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(
            a.alert_id,
            crate::alert::alert_id(&["t", "valuable-detractor", "s"])
        );
        assert_eq!(a.department, "logistics", "the touchpoint's owner");
        assert_eq!(a.customer_id, "c1");
        assert_eq!(a.trigger.as_ref().map(|t| t.revision), Some(1));
        assert_eq!(
            a.reasons,
            vec!["NPS 2 (detractor)", "lifetime value 800.00"]
        );
        // A replay after a crash, from the changelog: the book remembers.
        let mut k = Join::new(cfg()).with_alerts(alert_rules(
            r#"
[[enrich.alerts.tenants.t.rules]]
name = "valuable-detractor"
severity = "high"
nps = ["detractor"]
lifetime_value_at_least = 50000
"#,
        ));
        assert_eq!(k.restore_records(j.take_changes(), 0), Skipped::default());
        feed(&mut k, &[survey], &links, 0);
        assert!(k.take_alerts().is_empty());
        assert!(k.take_alert_stats().repeated >= 1);
    }

    #[test]
    fn a_customer_who_stops_ordering_is_rescored_without_any_event() {
        let rules = alert_rules(
            r#"
[[enrich.alerts.tenants.t.rules]]
name = "silent"
severity = "medium"
silent = true
min_silence = 2
churn_risk_at_least = 0.5
last_nps_at_most = 6
"#,
        );
        let mut j = Join::new(cfg()).with_alerts(rules);
        let c = CustomerIdentity {
            customer_id: "c1".into(),
            ..Default::default()
        };
        let mut events: Vec<Event> = (0..4)
            .map(|i| {
                event(
                    &format!("o{i}"),
                    i * 7 * DAY_MS,
                    c.clone(),
                    Payload::Order(Order {
                        order_id: format!("o{i}"),
                        status: OrderStatus::Paid as i32,
                        amount_minor: 10_000,
                        ..Default::default()
                    }),
                )
            })
            .collect();
        events.push(event(
            "s",
            22 * DAY_MS,
            c.clone(),
            Payload::Survey(SurveyResponse {
                answers: vec![nps(3.0)],
                ..Default::default()
            }),
        ));
        let links = Links::default();
        let wall = 1_000;
        feed(&mut j, &events, &links, wall);
        // At the survey: 1 gap of 7 days since the last order; no alert.
        j.rescore(wall);
        assert!(j.take_alerts().is_empty());
        // Time runs on with the wall clock: 21 days (3 gaps) after the
        // last order.
        j.rescore(wall + 20 * DAY_MS);
        let alerts = j.take_alerts();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.cause, xoflow_proto::v1::AlertCause::Silence as i32);
        assert_eq!(a.silent_days, Some(21));
        assert_eq!(a.usual_gap_days, Some(7));
        let risk = a
            .trigger
            .as_ref()
            .and_then(|t| t.customer.as_ref())
            .and_then(|c| c.churn_risk)
            .unwrap_or_default();
        assert!(risk >= 0.5, "{risk}");
        // Once per silence.
        j.rescore(wall + 30 * DAY_MS);
        assert!(j.take_alerts().is_empty());
    }

    #[test]
    fn a_post_call_survey_is_joined_to_its_call_even_when_the_call_comes_later() {
        let c = CustomerIdentity {
            customer_id: "c1".into(),
            ..Default::default()
        };
        let call = event(
            "call",
            DAY_MS,
            c.clone(),
            Payload::Call(CallTranscript {
                call_id: "k1".into(),
                queue: "after-sales".into(),
                disposition: "escalated".into(),
                started_at: Some(xoflow_proto::from_unix_millis(DAY_MS)),
                ended_at: Some(xoflow_proto::from_unix_millis(DAY_MS + 300_000)),
                segments: vec![TranscriptSegment {
                    speaker: Speaker::Customer as i32,
                    text: "This is terrible, nobody helps me.".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
        let survey = event(
            "s",
            DAY_MS + 3_600_000,
            c,
            Payload::Survey(SurveyResponse {
                trigger: Some(SurveyTrigger {
                    r#ref: Some(Ref::CallId("k1".into())),
                }),
                ..Default::default()
            }),
        );
        let links = Links::default();
        let in_order = feed(
            &mut Join::new(cfg()),
            &[call.clone(), survey.clone()],
            &links,
            0,
        );
        let joined = in_order[1].call.clone().expect("call joined");
        assert_eq!(joined.call_id, "k1");
        assert_eq!(joined.queue, "after-sales");
        assert_eq!(joined.duration_seconds, 300);
        assert_eq!(joined.sentiment_label, SentimentLabel::Negative as i32);
        // The survey first: emitted without the call, then repaired.
        let late = feed(&mut Join::new(cfg()), &[survey, call], &links, 0);
        assert!(late[0].call.is_none());
        let repaired = late.iter().find(|o| o.revision == 1).expect("repaired");
        assert_eq!(repaired.call.as_ref(), Some(&joined));
    }

    #[test]
    fn an_unresolved_event_moves_to_its_customer_when_a_link_comes() {
        let mut j = Join::new(cfg());
        let anon = CustomerIdentity {
            email_hash: "h".into(),
            ..Default::default()
        };
        let post = event(
            "p",
            DAY_MS,
            anon,
            Payload::Social(xoflow_proto::v1::SocialPost {
                text: "terrible".into(),
                ..Default::default()
            }),
        );
        let mut out = Vec::new();
        j.offer(post.clone(), Resolved::unresolved(), 0, 0);
        j.drain(0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].enriched.resolution,
            IdentityResolution::Unresolved as i32
        );
        assert_eq!(j.waiting_for_link(), 1);
        j.link("h", "c9");
        let moved = j.take_moves();
        assert_eq!(
            moved,
            vec![Moved {
                customer_id: "c9".into(),
                event: post.clone(),
                bytes: post.encode_to_vec().into(),
                revision: 1
            }]
        );
        assert_eq!(j.waiting_for_link(), 0);
        // Offered at its customer's partition, it is emitted resolved, a
        // revision up.
        let m = moved.into_iter().next().expect("moved");
        let who = Resolved {
            customer_id: Some(m.customer_id.clone()),
            resolution: IdentityResolution::Linked,
        };
        out.clear();
        j.offer_moved(m.event, who, m.revision, 1, 0);
        j.drain(0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].enriched.revision, 1);
        assert_eq!(out[0].enriched.resolved_customer_id, "c9");
        // No other output of it has that revision: vouched for as new.
        assert!(out[0].enriched.new_revision);
        // A later event of the same identifier moves at once.
        let mut later = post.clone();
        later.event_id = "p2".into();
        out.clear();
        j.offer(later, Resolved::unresolved(), 2, 0);
        j.drain(0, &mut out);
        assert!(out.is_empty());
        assert_eq!(j.take_moves()[0].revision, 0);
        // And the identifier's state survives the changelog.
        let mut k = Join::new(cfg());
        k.restore_records(j.take_changes(), 0);
        assert_eq!(k.customers(), 1);
        k.offer(post, Resolved::unresolved(), 3, 0);
        k.drain(0, &mut out);
        assert_eq!(k.take_moves().len(), 1);
    }

    #[test]
    fn a_partition_remembers_only_its_latest_links() {
        let mut j = Join::new(JoinConfig {
            max_links: 2,
            ..cfg()
        });
        let post = |id: &str, email: &str| {
            event(
                id,
                DAY_MS,
                CustomerIdentity {
                    email_hash: email.into(),
                    ..Default::default()
                },
                Payload::Social(xoflow_proto::v1::SocialPost::default()),
            )
        };
        let mut out = Vec::new();
        for (identifier, customer) in [("a", "ca"), ("b", "cb"), ("c", "cc")] {
            j.link(identifier, customer);
        }
        j.drain(0, &mut out);
        assert_eq!(j.links_remembered(), 2);
        assert_eq!(j.take_stats().forgotten_links, 1);
        // The forgotten link's changelog record is deleted; the others kept.
        let changes = j.take_changes();
        let value = |identifier: &str| {
            changes
                .iter()
                .find(|(k, _)| k.strip_prefix(&[0]) == Some(identifier.as_bytes()))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value("a"), Some(Vec::new()));
        assert!(value("b").is_some_and(|v| !v.is_empty()));
        assert!(value("c").is_some_and(|v| !v.is_empty()));
        // An event of a remembered identifier moves at once; one of the
        // forgotten identifier waits, emitted unresolved.
        j.offer(post("pc", "c"), Resolved::unresolved(), 0, 0);
        j.offer(post("pa", "a"), Resolved::unresolved(), 1, 0);
        j.drain(0, &mut out);
        let moved = j.take_moves();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].customer_id, "cc");
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].enriched.event.as_ref().map(|e| e.event_id.as_str()),
            Some("pa")
        );
        assert_eq!(j.waiting_for_link(), 1);
        // A link announced again counts as the latest: `b` stays, `c` goes.
        j.link("b", "cb");
        j.link("d", "cd");
        j.drain(0, &mut out);
        assert_eq!(j.take_stats().forgotten_links, 1);
        assert_eq!(j.links_remembered(), 2);
        let mut k = Join::new(cfg());
        k.restore_records(j.take_changes(), 0);
        out.clear();
        for (i, identifier) in ["b", "c", "d"].into_iter().enumerate() {
            k.offer(
                post(&format!("q{i}"), identifier),
                Resolved::unresolved(),
                2,
                0,
            );
        }
        k.drain(0, &mut out);
        let moved: Vec<String> = k.take_moves().into_iter().map(|m| m.customer_id).collect();
        assert_eq!(moved, ["cb", "cd"]);
        assert_eq!(
            out.len(),
            1,
            "the event of the forgotten link is emitted unresolved"
        );
    }

    /// The memory budget at work: customers who each answer a survey
    /// naming an order not sent yet, then click; in `budget` bytes.
    fn budgeted(budget: usize) -> Join {
        Join::new(JoinConfig {
            max_history_bytes: budget,
            ..cfg()
        })
    }

    #[test]
    fn over_max_customers_they_are_scanned_only_once_one_can_be_idle() {
        const MINUTE: i64 = 60_000;
        let t0 = 1_800_000_000_000;
        let mut j = Join::new(JoinConfig {
            max_customers: 10,
            value_window: Duration::from_secs(3_600),
            ..cfg()
        });
        let mut click = |c: &str, at: i64| {
            let who = CustomerIdentity {
                customer_id: c.into(),
                ..Default::default()
            };
            let e = event(
                &format!("{c}-{at}"),
                at,
                who,
                Payload::Click(xoflow_proto::v1::ClickEvent {
                    session_id: format!("{c}-session"),
                    ..Default::default()
                }),
            );
            j.process(e, at);
            (j.customers(), j.take_stats().eviction_scans)
        };
        // Twenty customers a minute apart, all within the hour: over the
        // bound from the eleventh on, one scan finds none idle, and none is
        // due before the first can be (t0 + 60 min).
        let scans: u64 = (0..20)
            .map(|i| click(&format!("c{i}"), t0 + i * MINUTE).1)
            .sum();
        assert_eq!(scans, 1);
        // The one due drops the six idle an hour by then (c0..c5).
        assert_eq!(click("late", t0 + 65 * MINUTE), (21 - 6, 1));
        // The next is due when c6 can be idle, at t0 + 66 min.
        assert_eq!(click("later", t0 + 65 * MINUTE + 30_000), (16, 0));
        assert_eq!(click("latest", t0 + 66 * MINUTE), (17 - 1, 1));
    }

    /// Customer `c`'s survey at `at`, naming its order `<c>-o`, then
    /// `clicks` clicks a minute apart.
    fn survey_then_clicks(c: &str, at: i64, clicks: i64) -> Vec<Event> {
        let who = CustomerIdentity {
            customer_id: c.into(),
            ..Default::default()
        };
        let mut events = vec![event(
            &format!("{c}-s"),
            at,
            who.clone(),
            survey_about_order(format!("{c}-o")),
        )];
        for k in 1..=clicks {
            events.push(event(
                &format!("{c}-k{k}"),
                at + k * 60_000,
                who.clone(),
                Payload::Click(xoflow_proto::v1::ClickEvent {
                    session_id: format!("{c}-session"),
                    ..Default::default()
                }),
            ));
        }
        events
    }

    /// Customer `c`'s order `<c>-o`, paid a day before `at`: late.
    fn late_order(c: &str, at: i64) -> Event {
        paid(
            &format!("{c}-o-paid"),
            at - DAY_MS,
            c,
            &format!("{c}-o"),
            100,
        )
    }

    /// Batch `batch` of the budget tests: 25 new customers, each a survey
    /// and two clicks, ten minutes apart, and from the sixth batch on a late
    /// order for the first customer of five batches before (a re-fold).
    fn offer_new_customers_and_a_late_order(j: &mut Join, links: &Links, batch: i64) {
        for i in 0..25 {
            let at = DAY_MS + (batch * 25 + i) * 600_000;
            for e in survey_then_clicks(&format!("c{batch}-{i}"), at, 2) {
                j.offer(e.clone(), links.resolve(&e), 0, 0);
            }
        }
        if batch >= 5 {
            let o = late_order(&format!("c{}-0", batch - 5), DAY_MS + batch * 25 * 600_000);
            j.offer(o.clone(), links.resolve(&o), 0, 0);
        }
    }

    impl Join {
        /// [`Join::history_bytes`] counted again from every entry.
        fn recount_history_bytes(&self) -> usize {
            self.customers.values().map(|c| c.recount()).sum()
        }
    }

    /// Over its budget after a batch, a partition is back under it at
    /// once, and what the pass chose is shed over the batches after, each
    /// shedding at least twice what it added: the work of a shedding is
    /// spread over the batches in proportion to what each admits, not done
    /// in the one that crossed.
    #[test]
    fn a_shedding_is_spread_over_the_batches_after_the_crossing() {
        let budget = 1024 * 1024;
        let low = budget / 100 * SHED_TO_PERCENT;
        let mut j = budgeted(budget);
        let links = Links::default();
        let mut out = Vec::new();
        let mut at = DAY_MS;
        let mut customer = 0;
        // One batch: two new customers, a survey and five clicks each.
        // Returns the bytes before and after its shedding, and the events
        // it shed.
        let mut batch = |j: &mut Join| {
            for _ in 0..2 {
                for e in survey_then_clicks(&format!("c{customer}"), at, 5) {
                    j.offer(e.clone(), links.resolve(&e), 0, 0);
                }
                customer += 1;
                at += 600_000;
            }
            j.drain(0, &mut out);
            let before = j.history_bytes();
            j.shed_if_over();
            let after = j.history_bytes();
            assert!(after <= budget, "{after} bytes");
            (before, after, j.take_stats().shed_events)
        };
        // Up to the crossing, then until a batch sheds nothing: (bytes
        // before the batch, before its shedding, after it, events shed).
        let mut last = 0;
        let mut shedding = vec![];
        loop {
            let (before, after, shed) = batch(&mut j);
            if shed == 0 && !shedding.is_empty() {
                break;
            }
            if shed > 0 {
                shedding.push((last, before, after, shed));
            }
            assert!(before < 2 * budget, "the budget is crossed in steps");
            last = after;
        }
        let (_, crossed, ..) = shedding[0];
        assert!(crossed > budget);
        // Each sheds at least what takes it back under the budget and twice
        // what it added, but the last, which takes what the pass left.
        for (i, &(last, before, after, _)) in shedding.iter().enumerate() {
            let added = before - last;
            let freed = before - after;
            if i + 1 < shedding.len() {
                assert!(freed >= 2 * added, "batch {i}: {shedding:?}");
            }
            assert!(freed >= before.saturating_sub(budget), "batch {i}");
        }
        // Spread: the pass chose what is over the low-water mark at the
        // crossing, and the crossing shed a part of it.
        let all: u64 = shedding.iter().map(|s| s.3).sum();
        assert!(shedding.len() >= 4, "{shedding:?}");
        assert!(shedding[0].3 < all / 2, "{shedding:?}");
        let freed: usize = shedding.iter().map(|&(_, b, a, _)| b - a).sum();
        assert!(freed >= crossed - low, "{freed}");
    }

    /// Batches of new customers, each batch with a late order for a
    /// customer of five batches before (a re-fold, which keeps a history
    /// decoded): after every batch the histories are within the budget and
    /// take what a recount of every entry says. The changelog written
    /// meanwhile, shedding included, restores the same state.
    #[test]
    fn histories_stay_within_their_budget_and_are_counted_exactly() {
        let budget = 64 * 1024;
        let mut j = budgeted(budget);
        let links = Links::default();
        let mut out = Vec::new();
        let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let (mut shed, mut peak, mut trimmed) = (0, 0, false);
        for batch in 0..40_i64 {
            offer_new_customers_and_a_late_order(&mut j, &links, batch);
            j.drain(0, &mut out);
            j.shed_if_over();
            peak = peak.max(j.history_bytes());
            assert!(
                j.history_bytes() <= budget,
                "batch {batch}: {} bytes",
                j.history_bytes()
            );
            assert_eq!(
                j.history_bytes(),
                j.recount_history_bytes(),
                "batch {batch}"
            );
            shed += j.take_stats().shed_events;
            trimmed |= j.customers.values().any(|c| c.history.len() == 1);
            changelog.extend(j.take_changes());
        }
        // 3,000 events, a fraction kept.
        assert!(shed > 1_000, "{shed} shed");
        assert_eq!(j.history_events() as u64 + shed, 3_000 + 35);
        assert!(peak > budget / 2, "{peak}");
        // Both ways of shedding happened: histories down to their latest
        // event, and whole histories.
        assert!(trimmed);
        assert!(!j.cold.is_empty());
        // Read back: the same customers, histories and bases.
        let mut k = budgeted(budget);
        assert_eq!(k.restore_records(changelog, 0), Skipped::default());
        assert_eq!(k.customers(), j.customers());
        assert_eq!(k.history_events(), j.history_events());
        assert_eq!(k.history_bytes(), k.recount_history_bytes());
        assert!(k.history_bytes() <= j.history_bytes());
        for (id, c) in &j.customers {
            let r = &k.customers[id];
            let ids = |c: &Customer| {
                c.history
                    .iter()
                    .map(|e| e.id().to_vec())
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(r), ids(c), "{id}");
            assert_eq!(r.base_proto(), c.base_proto(), "{id}");
        }
        // Those with no history are kept encoded by both.
        assert_eq!(k.cold.len(), j.cold.len());
        for c in j.cold.iter() {
            let decoded = |c: &cold::Frozen| JoinCustomerState::decode(c.base()).expect("decodes");
            let read_back = k.cold.get(c.id()).expect("read back");
            assert_eq!(decoded(read_back), decoded(c), "{}", c.id());
        }
        // And both go on alike: late orders of a long-shed customer, of a
        // recent one, and a new customer (with room: whom each sheds next
        // is not what is compared).
        j.set_history_budget(usize::MAX);
        k.set_history_budget(usize::MAX);
        let end = DAY_MS + 40 * 25 * 600_000;
        let mut next = vec![late_order("c1-3", end), late_order("c39-24", end)];
        next.extend(survey_then_clicks("new", end, 1));
        let want = feed(&mut j, &next, &links, 0);
        let got = feed(&mut k, &next, &links, 0);
        assert_eq!(
            got.into_iter().map(without_time).collect::<Vec<_>>(),
            want.into_iter().map(without_time).collect::<Vec<_>>()
        );
    }

    /// With the cold customers past the recent few in a store on disk,
    /// the join emits and records exactly what it does with all of them in
    /// memory: customers shed cold and thawed again by a late order, read
    /// back from the changelog, erased and evicted as idle.
    #[test]
    fn cold_customers_on_disk_change_no_output_and_no_record() {
        let dir = tempfile::tempdir().expect("a test directory");
        let sizes = crate::local_store::StoreSizes {
            cache_mib: 1,
            memtable_mib: 1,
        };
        let store = crate::local_store::LocalStore::open(
            "test store",
            "xoflow-test-",
            Some(dir.path()),
            sizes,
        )
        .expect("a store opens");
        let on_disk = |cfg: JoinConfig| {
            Join::new(cfg).with_cold_store(ColdStore::open(&store, 4).expect("a table"))
        };
        let cfg = JoinConfig {
            max_history_bytes: 64 * 1024,
            max_customers: 900,
            ..cfg()
        };
        let links = Links::default();
        let (mut memory, mut disk) = (Join::new(cfg.clone()), on_disk(cfg.clone()));
        let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let batch_of = |j: &mut Join, batch: i64| {
            let mut out = Vec::new();
            // The late order's customer was shed long ago: thawed, from
            // disk for one of the two.
            offer_new_customers_and_a_late_order(j, &links, batch);
            j.drain(0, &mut out);
            j.shed_if_over();
            let out: Vec<_> = out.into_iter().map(|r| without_time(r.enriched)).collect();
            (out, j.take_changes())
        };
        for batch in 0..40_i64 {
            let (want, want_changes) = batch_of(&mut memory, batch);
            let (got, got_changes) = batch_of(&mut disk, batch);
            assert_eq!(got, want, "batch {batch}");
            assert_eq!(got_changes, want_changes, "batch {batch}");
            changelog.extend(want_changes);
        }
        assert!(
            disk.customers_on_disk() > 500,
            "{}",
            disk.customers_on_disk()
        );
        assert_eq!(disk.customers(), memory.customers());
        assert!(disk.take_store_error().is_none());

        // Read back from the changelog into a store: alike again.
        let mut restored = on_disk(cfg.clone());
        assert_eq!(restored.restore_records(changelog, 0), Skipped::default());
        assert_eq!(restored.customers(), memory.customers());
        assert!(restored.customers_on_disk() > 500);
        let end = DAY_MS + 40 * 25 * 600_000;
        let next = [late_order("c2-7", end), late_order("c30-3", end)];
        let want = feed(&mut memory, &next, &links, 0);
        for j in [&mut disk, &mut restored] {
            assert_eq!(
                feed(j, &next, &links, 0)
                    .into_iter()
                    .map(without_time)
                    .collect::<Vec<_>>(),
                want.iter().cloned().map(without_time).collect::<Vec<_>>()
            );
        }

        // Erased: its base deleted, wherever it was kept.
        let erased = tenancy::customer_part(&tenancy::scoped("", "c3-4")).to_owned();
        let mut tombstones = Vec::new();
        for j in [&mut memory, &mut disk, &mut restored] {
            drop(j.take_changes());
            assert!(j.erase_customer("", &erased));
            tombstones.push(j.take_changes());
        }
        assert!(tombstones[0].iter().any(|(_, v)| v.is_empty()));
        assert!(tombstones.iter().all(|t| *t == tombstones[0]));

        // Idle past the value window: evicted from memory and disk alike.
        let later = end + cfg.value_window.as_millis() as i64 + DAY_MS;
        let last = survey_then_clicks("late-comer", later, 0);
        for j in [&mut memory, &mut disk, &mut restored] {
            drop(feed(j, &last, &links, 0));
        }
        assert!(memory.customers() < 10, "{}", memory.customers());
        for j in [&mut disk, &mut restored] {
            assert_eq!(j.customers(), memory.customers());
            assert_eq!(j.customers_on_disk(), 0);
            assert!(j.take_store_error().is_none());
        }
    }

    /// Shedding moves events into the base, which the current state already
    /// holds: events arriving in order are emitted exactly as without a
    /// budget, however little it is.
    #[test]
    fn shedding_changes_nothing_for_events_in_order() {
        let (events, links) = journeys_and_links();
        let now = 1_900_000_000_000;
        let want = feed(&mut Join::new(cfg()), &events, &links, now);
        for budget in [0, 1_000, 2_000] {
            let mut j = budgeted(budget);
            let got = feed(&mut j, &events, &links, now);
            assert!(j.take_stats().shed_events > 0, "{budget}");
            assert_eq!(
                got.into_iter().map(without_time).collect::<Vec<_>>(),
                want.iter().cloned().map(without_time).collect::<Vec<_>>(),
                "{budget}"
            );
        }
    }

    /// Shed histories are not repaired, but a late event is still applied;
    /// the most recently active customers keep their repairs.
    #[test]
    fn a_late_order_repairs_a_recent_customers_survey_but_not_a_long_idle_ones() {
        // Room for every customer decoded with its latest event, and for
        // some of their histories, which are long enough that shedding
        // them brings the total down to the low-water mark (a customer
        // decoded takes more than a few events do).
        let budget = 192 * 1024 + 202 * history::DECODED_CUSTOMER_BYTES;
        let mut j = budgeted(budget);
        let links = Links::default();
        let mut at = DAY_MS;
        let mut next = |n: i64| {
            at += n * 600_000;
            at
        };
        let old = next(1);
        feed(&mut j, &survey_then_clicks("old", old, 2), &links, 0);
        for i in 0..200 {
            feed(
                &mut j,
                &survey_then_clicks(&format!("f{i}"), next(1), 12),
                &links,
                0,
            );
        }
        feed(&mut j, &survey_then_clicks("recent", next(1), 2), &links, 0);
        assert!(j.take_stats().shed_events > 0);
        // The long idle customer kept its latest click, the recent one all.
        assert_eq!(j.customers["t\x1fold"].history.len(), 1);
        assert_eq!(j.customers["t\x1frecent"].history.len(), 3);
        let outputs = |o: &[EnrichedEvent], id: &str| -> Vec<EnrichedEvent> {
            o.iter()
                .filter(|o| o.event.as_ref().is_some_and(|e| e.event_id == id))
                .cloned()
                .collect()
        };
        // Recent: its survey emitted again, a revision up, with the order.
        let at = next(1);
        let out = feed(&mut j, &[late_order("recent", at)], &links, 0);
        let repaired = outputs(&out, "recent-s");
        assert_eq!(repaired.len(), 1, "{out:#?}");
        assert_eq!(repaired[0].revision, 1);
        let o = repaired[0].order.as_ref().expect("order joined");
        assert_eq!(o.order_id, "recent-o");
        // Old: its survey left with the shedding and is not emitted again;
        // the order itself is emitted and applied (its later click sees it).
        let out = feed(&mut j, &[late_order("old", old)], &links, 0);
        assert!(outputs(&out, "old-s").is_empty(), "{out:#?}");
        let order = outputs(&out, "old-o-paid");
        assert_eq!(order.len(), 1);
        assert_eq!(order[0].revision, 0);
        let click = outputs(&out, "old-k2");
        assert_eq!(click.len(), 1);
        assert_eq!(click[0].revision, 1);
        assert_eq!(
            click[0].customer.as_ref().map(|c| c.lifetime_value_minor),
            Some(100)
        );
        // A later survey about that order meets it.
        let who = CustomerIdentity {
            customer_id: "old".into(),
            ..Default::default()
        };
        let again = event("old-s2", next(1), who, survey_about_order("old-o"));
        let out = feed(&mut j, &[again], &links, 0);
        assert_eq!(
            out[0].order.as_ref().map(|o| o.r#match),
            Some(OrderMatch::Referenced as i32)
        );
    }

    /// The cut of a shedding frees what is needed from the least recently
    /// active, as sorting everyone would: checked against a sort on
    /// random activities (with ties) and sizes.
    #[test]
    fn the_shedding_cut_takes_the_least_recently_active_first() {
        let mut seed = 0x5eed_u64;
        let mut rand = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        for round in 0..200 {
            let n = 1 + rand(300) as usize;
            let candidates: Vec<(Activity, usize)> = (0..n)
                .map(|_| ((rand(50), rand(3) as i64), 1 + rand(1_000) as usize))
                .collect();
            let total: usize = candidates.iter().map(|(_, b)| b).sum();
            let need = 1 + rand(total as u64 + 200) as usize;
            let mut sorted = candidates.clone();
            sorted.sort_by_key(|(a, _)| *a);
            // The first activity at which the sum, oldest first, reaches it.
            let mut sum = 0;
            let want = sorted.iter().find_map(|(a, b)| {
                sum += b;
                (sum >= need).then_some(*a)
            });
            let mut c = candidates.clone();
            let got = Cut::at(&mut c, need);
            match (want, got) {
                (None, Cut::All) => {}
                (Some(w), Cut::Before(g)) => assert_eq!(g, w, "round {round}"),
                (w, g) => panic!("round {round}: want {w:?}, got {g:?}"),
            }
            // What is taken frees at least what is needed, and what is
            // left is all at least as recently active.
            let mut freed = 0;
            let taken: Vec<bool> = candidates
                .iter()
                .map(|(a, b)| got.takes(*a, *b, &mut freed, need))
                .collect();
            assert!(freed >= need.min(total), "round {round}");
            let newest_taken = candidates
                .iter()
                .zip(&taken)
                .filter(|(_, t)| **t)
                .map(|((a, _), _)| *a)
                .max();
            let oldest_left = candidates
                .iter()
                .zip(&taken)
                .filter(|(_, t)| !**t)
                .map(|((a, _), _)| *a)
                .min();
            if let (Some(t), Some(l)) = (newest_taken, oldest_left) {
                assert!(t <= l, "round {round}");
            }
        }
    }
}
