//! A customer's repairable history: the events the join can still re-fold
//! when an earlier one arrives late.
//!
//! [`Customer`] keeps the customer's recent events in event-time order
//! (ties by event id), each with the revision and a hash of the joined
//! context it was last emitted with, between two states: the base (the
//! fold of events that fell out of the history) and the current state (the
//! base plus every event in the history). An event later than the last one
//! is folded into the current state at once (the in-order path, no
//! re-fold). One that lands in front of others marks the history dirty from
//! its position; [`Customer::settle`] then folds the history again from the
//! base once, however many late events the batch brought, and emits every
//! event whose joined context changed with its revision raised by one
//! (a repair). The bounds ([`JoinConfig::max_history_per_customer`] and
//! `order_window` behind the latest event) decide when an event leaves the
//! history for the base; from then on it is never repaired again.
//!
//! A customer also keeps the bytes its history holds ([`Customer::footprint`],
//! an estimate kept as entries come, go or are decoded, so that asking costs
//! nothing): the join adds them up against its memory budget, and over it
//! moves whole histories into their bases ([`Customer::shed`]).
//!
//! An entry keeps its event encoded, as the changelog writes it: the bytes
//! the stage read from the events or the repartition topic, not encoded
//! again here. The
//! in-order path hands the event itself to its output instead of copying
//! it, and a re-fold, a repair or an eviction decodes it when it needs it
//! (and keeps it decoded for the next re-fold).
//!
//! A repair is told from an unchanged output by a hash of its joined
//! context ([`context_hash`]), kept with the entry and in its changelog
//! record with the version of the hash ([`HASH_VERSION`]): version 1 hashes
//! the fields, version 0 (records written before the version existed)
//! hashed their encoding. An entry read back with version 0 compares its
//! next output with the old hash ([`context_hash_v0`]) and takes the new
//! one when it is emitted again, so that a changed hash alone never emits
//! a revision.

use std::{
    collections::VecDeque,
    hash::{BuildHasher as _, Hasher as _},
    sync::Arc,
};

use xoflow_proto::{
    Message, Timestamp,
    v1::{
        CallContext, CustomerContext, CxFields, EnrichedEvent, Event, EventFoldView,
        IdentityResolution, JoinCustomerState, JoinHistoryEntry, OrderContext, SessionContext,
    },
};

use super::{JoinConfig, JoinStats, Released, cold::Frozen, state::CustomerState};

/// One event of a customer's history.
///
/// Small (88 bytes): a history keeps one per event it can still repair,
/// each written to fresh memory and copied whenever its customer's history
/// grows. What only a re-fold, a repair or the changelog reads is behind a
/// pointer or in the event's bytes.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub at: i64,
    /// The event's id: the history's order, and the changelog key.
    id: EventId,
    /// The event, encoded (the changelog record's `event`): as read from
    /// the events or the repartition topic, or from the changelog.
    bytes: Arc<[u8]>,
    /// The event, decoded, once something needed it since it was admitted
    /// or read back; boxed, so that an entry without it stays small.
    event: Option<Box<Event>>,
    pub resolution: IdentityResolution,
    /// The event's CX fields (see [`Entry::cx`]); `None` when they are all
    /// empty, as they are for every event without a score or text.
    cx: Option<Box<CxFields>>,
    /// The last revision emitted; for an entry not emitted yet, the
    /// revision its first output gets.
    pub revision: u32,
    /// [`context_hash`] of the last output emitted.
    pub output_hash: u64,
    /// How `output_hash` was computed: [`HASH_VERSION`], or 0 for an entry
    /// read back from a changelog written before (see
    /// [`context_hash_v0`]) and not emitted since.
    pub hash_version: u32,
    /// Its first output has been emitted.
    pub emitted: bool,
    /// Emit it at the next settle even if unchanged, with a copy at
    /// revision 0: its outputs may have been lost (a replay after a crash).
    pub force: bool,
    /// It names an order or call the fold did not have at its last output.
    pub unmet: bool,
    /// Its first output is emitted twice, at its revision and one higher
    /// (see [`super::Join`], "Linked events").
    pub twice: bool,
    /// Its changelog record is older than it: written at the next
    /// [`super::Join::take_changes`]. A flag in place rather than a set of
    /// keys beside the history, which cost two id clones and a hash insert
    /// per event.
    pub unsaved: bool,
}

impl Entry {
    /// A new entry for `event`, kept encoded only, as `bytes` (see
    /// [`Entry::keep`]).
    pub fn new(
        at: i64,
        event: &Event,
        bytes: Arc<[u8]>,
        resolution: IdentityResolution,
        cx: CxFields,
        revision: u32,
    ) -> Self {
        Entry {
            at,
            id: EventId::find(&bytes, &event.event_id),
            bytes,
            event: None,
            resolution,
            cx: boxed_cx(cx),
            revision,
            output_hash: 0,
            hash_version: HASH_VERSION,
            emitted: false,
            force: false,
            unmet: false,
            twice: false,
            unsaved: true,
        }
    }

    /// Keeps `event` (the one this entry was made from) decoded too, for
    /// an entry that a re-fold will read soon.
    pub fn keep(&mut self, event: Event) {
        self.event = Some(Box::new(event));
    }

    /// The event, decoded now if it is not kept; the caller puts it back
    /// with [`Entry::put`] to keep it. The bytes were encoded here or read
    /// back and decoded once already, so they decode.
    pub fn take(&mut self) -> Box<Event> {
        self.event
            .take()
            .unwrap_or_else(|| Box::new(Event::decode(&*self.bytes).unwrap_or_default()))
    }

    /// The event as a customer's base folds it, for an entry leaving the
    /// history: the kept one if it is decoded, else only what
    /// `CustomerState::update` reads ([`EventFoldView`]). Most entries
    /// leave encoded (shed over the join's memory budget, or beyond the
    /// per-customer bounds), and a whole decode would allocate their texts,
    /// identifiers and line items only to drop them.
    pub fn take_for_fold(&mut self) -> Event {
        match self.event.take() {
            Some(event) => *event,
            None => EventFoldView::decode(&*self.bytes)
                .map(Event::from)
                .unwrap_or_default(),
        }
    }

    pub fn put(&mut self, event: Box<Event>) {
        self.event = Some(event);
    }

    /// The event, decoded and kept.
    pub fn event(&mut self) -> &Event {
        let bytes = &self.bytes;
        self.event
            .get_or_insert_with(|| Box::new(Event::decode(&**bytes).unwrap_or_default()))
    }

    /// The event's CX fields, derived once when it was admitted (or read
    /// back with it).
    pub fn cx(&self) -> &CxFields {
        self.cx.as_deref().unwrap_or(&NO_CX)
    }

    /// The entry's changelog record as a message; what
    /// [`Entry::encode_record`] writes is its encoding.
    #[cfg(test)]
    pub fn to_proto(&self) -> JoinHistoryEntry {
        JoinHistoryEntry {
            event: self.bytes.to_vec(),
            resolution: self.resolution as i32,
            cx: Some(self.cx().clone()),
            revision: self.revision,
            output_hash: self.output_hash,
            hash_version: self.hash_version,
        }
    }

    /// The entry's changelog record: the bytes prost writes for its
    /// `JoinHistoryEntry`, written straight from the entry. Going through
    /// the message copied the event's bytes twice (into the message, then
    /// into its encoding) and cloned the CX fields, strings and all, for
    /// every event the join admitted.
    pub fn encode_record(&self) -> Vec<u8> {
        use xoflow_proto::encoding::{self, WireType};
        let cx = self.cx();
        let resolution = self.resolution as i32;
        // Room for the bytes, the CX fields and every scalar with its key.
        let mut buf = Vec::with_capacity(self.bytes.len() + cx.encoded_len() + 64);
        // Field by field as prost encodes `JoinHistoryEntry` (proto3: a
        // scalar at its default is left out, a present message never).
        if !self.bytes.is_empty() {
            encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
            encoding::encode_varint(self.bytes.len() as u64, &mut buf);
            buf.extend_from_slice(&self.bytes);
        }
        if resolution != 0 {
            encoding::int32::encode(2, &resolution, &mut buf);
        }
        encoding::message::encode(3, cx, &mut buf);
        if self.revision != 0 {
            encoding::uint32::encode(4, &self.revision, &mut buf);
        }
        if self.output_hash != 0 {
            encoding::fixed64::encode(5, &self.output_hash, &mut buf);
        }
        if self.hash_version != 0 {
            encoding::uint32::encode(6, &self.hash_version, &mut buf);
        }
        buf
    }

    /// An entry read back from the changelog; `None` if its event does not
    /// decode.
    pub fn from_proto(p: JoinHistoryEntry, now_ms: i64) -> Option<Self> {
        let event = Event::decode(p.event.as_slice()).ok()?;
        Some(Entry {
            at: super::event_ms(&event, now_ms),
            id: EventId::find(&p.event, &event.event_id),
            bytes: p.event.into(),
            // The re-fold after the read-back reads it.
            event: Some(Box::new(event)),
            resolution: IdentityResolution::try_from(p.resolution).unwrap_or_default(),
            cx: p.cx.and_then(boxed_cx),
            revision: p.revision,
            output_hash: p.output_hash,
            hash_version: p.hash_version,
            emitted: true,
            force: false,
            unmet: false,
            twice: false,
            unsaved: false,
        })
    }

    /// The event's id, as bytes: the history orders by it (as it would
    /// by the text: UTF-8 sorts as its code points) and the changelog keys
    /// by it, and neither needs it as text.
    pub fn id(&self) -> &[u8] {
        match &self.id {
            EventId::InBytes(start, end) => &self.bytes[*start as usize..*end as usize],
            EventId::Own(id) => id.as_bytes(),
        }
    }

    fn key(&self) -> (i64, &[u8]) {
        (self.at, self.id())
    }

    /// What the entry holds beyond its own slot in the history, in bytes:
    /// the event's encoding, the event decoded while it is kept, its CX
    /// fields and an id that is not in the encoding. O(1) but for the
    /// topics, of which an event has a handful at most.
    pub fn held_bytes(&self) -> usize {
        let decoded = if self.event.is_some() {
            self.decoded_bytes()
        } else {
            0
        };
        self.held_encoded() + decoded
    }

    /// [`Entry::held_bytes`] without the decoded event.
    fn held_encoded(&self) -> usize {
        let mut n = self.bytes.len();
        if let Some(cx) = &self.cx {
            n += size_of::<CxFields>()
                + cx.topics
                    .iter()
                    .map(|t| size_of::<String>() + t.len())
                    .sum::<usize>();
        }
        if let EventId::Own(id) = &self.id {
            n += id.len();
        }
        n
    }

    /// The event decoded, estimated: its struct, and on the heap what its
    /// strings and repeated fields take, [`DECODED_HEAP_PER_BYTE`] times its
    /// encoding.
    fn decoded_bytes(&self) -> usize {
        size_of::<Event>() + self.bytes.len() * DECODED_HEAP_PER_BYTE
    }

    /// Whether the event is kept decoded.
    pub fn decoded(&self) -> bool {
        self.event.is_some()
    }
}

/// Heap bytes of a decoded event per byte of its encoding: a string takes
/// its length on the heap as in the encoding, but a repeated message (a
/// survey's answers) takes its whole struct per element where the encoding
/// takes a few bytes. Measured with a counting allocator on the join
/// bench's generated events: 1.06 on average, orders 1.76, surveys 1.81
/// (at most 2.02), clicks 0.81.
const DECODED_HEAP_PER_BYTE: usize = 2;

/// Empty CX fields, for entries that keep none.
static NO_CX: CxFields = CxFields {
    nps_score: None,
    nps_category: 0,
    csat_score: None,
    csat_normalised: None,
    csat_top2: false,
    ces_score: None,
    ces_normalised: None,
    sentiment: None,
    sentiment_label: 0,
    topics: Vec::new(),
};

/// `cx` as an entry keeps it: nothing for empty fields.
fn boxed_cx(cx: CxFields) -> Option<Box<CxFields>> {
    (cx != NO_CX).then(|| Box::new(cx))
}

/// An entry's event id: where it lies in the entry's bytes, or a copy when
/// they do not start with it. An event encoded by prost starts with its
/// id (field 1), so an entry needs no copy of it (an allocation per event,
/// and memory for as long as the entry is kept).
#[derive(Debug, Clone)]
enum EventId {
    /// `bytes[start..end]`.
    InBytes(u32, u32),
    Own(Box<str>),
}

impl EventId {
    /// `id` in `bytes`, the encoded event it was decoded from.
    fn find(bytes: &[u8], id: &str) -> Self {
        // Field 1, length-delimited (tag 0x0a), and its length: a varint of
        // one or two bytes for any id up to 16 KiB (they are at most 128).
        let (len, at) = match bytes {
            [0x0a, l, ..] if *l < 0x80 => (usize::from(*l), 2),
            [0x0a, l0, l1, ..] if *l1 < 0x80 => {
                (usize::from(*l0 & 0x7f) | usize::from(*l1) << 7, 3)
            }
            _ => (usize::MAX, 0),
        };
        // The last field 1 is the id when a record repeats it: compared, not
        // trusted.
        if len == id.len()
            && let Some(found) = bytes.get(at..at + len)
            && found == id.as_bytes()
            && let (Ok(start), Ok(end)) = (u32::try_from(at), u32::try_from(at + len))
        {
            return EventId::InBytes(start, end);
        }
        EventId::Own(id.into())
    }
}

/// What a customer with a history takes besides its entries: its box, its
/// two states and what their queues and strings hold, its id and its slot
/// in the map. Measured, not computed: resident memory grew by about 2 KB
/// per customer shed down to its latest event (`benches/join_memory.rs`,
/// BENCHMARKS.md "Customers kept encoded"). Counted in the histories'
/// budget, so that the budget bounds how many customers are kept decoded.
pub(super) const DECODED_CUSTOMER_BYTES: usize = 2048;

/// One customer: base state, history, current state.
#[derive(Debug, Default)]
pub(super) struct Customer {
    /// The fold of the events that left the history; `None` until one
    /// does, as for most customers: a state is 264 bytes, written for every
    /// new customer.
    base: Option<Box<CustomerState>>,
    pub history: VecDeque<Entry>,
    pub current: CustomerState,
    /// The lowest history index whose output must be computed again.
    pub dirty_from: Option<usize>,
    /// Listed among the customers with [`Entry::unsaved`] entries, so that
    /// a batch lists each customer once.
    pub listed: bool,
    /// [`Entry::held_bytes`] of the history's entries, summed: kept as they
    /// change, so that [`Customer::footprint`] is O(1).
    held: usize,
    /// When the customer's latest event was admitted, counted in the
    /// partition's admissions (0: not since the state was read back): who
    /// is least recently active when the histories are over their budget
    /// (see `Join::shed`).
    pub last_active: u64,
}

/// How recently a customer was active (see [`Customer::activity`]):
/// older sorts first.
pub(super) type Activity = (u64, i64);

/// Where an event stands in a customer's history.
pub(super) enum Place {
    /// Already in the history at this index (a replay).
    Known(usize),
    /// Folded into the base long ago (a replay of a forgotten event).
    Forgotten,
    /// After every event in the history: the in-order path.
    Last,
    /// In front of later events: needs a re-fold.
    At(usize),
}

impl Customer {
    /// The memory the customer takes while it has a history, in bytes: a
    /// slot per entry the history has room for, what each entry holds
    /// ([`Entry::held_bytes`]), and the customer itself
    /// ([`DECODED_CUSTOMER_BYTES`]). Without one it is kept encoded
    /// (`Join::cold`), outside the budget this counts against.
    pub fn footprint(&self) -> usize {
        if self.history.capacity() == 0 {
            return self.held;
        }
        self.held + self.history.capacity() * size_of::<Entry>() + DECODED_CUSTOMER_BYTES
    }

    /// [`Customer::footprint`] counted again from the entries, for tests
    /// of the accounting.
    #[cfg(test)]
    pub fn recount(&self) -> usize {
        if self.history.capacity() == 0 {
            return 0;
        }
        self.history.iter().map(Entry::held_bytes).sum::<usize>()
            + self.history.capacity() * size_of::<Entry>()
            + DECODED_CUSTOMER_BYTES
    }

    /// The latest entry, with its event decoded and kept, and the current
    /// state; and how many bytes the decoding added to the footprint.
    pub fn latest(&mut self) -> Option<(&mut Entry, &CustomerState, usize)> {
        let entry = self.history.back_mut()?;
        let mut added = 0;
        if !entry.decoded() {
            added = entry.decoded_bytes();
            self.held += added;
            entry.event();
        }
        Some((entry, &self.current, added))
    }

    /// How recently the customer was active, for shedding: the latest
    /// admission, then (among customers read back and not active since)
    /// the latest event time.
    pub fn activity(&self) -> Activity {
        (self.last_active, self.current.last_seen_ms)
    }

    /// What the history would take with its latest entry alone, kept
    /// encoded ([`Customer::shed`]).
    pub fn floor(&self) -> usize {
        self.history.back().map_or(0, |e| {
            size_of::<Entry>() + e.held_encoded() + DECODED_CUSTOMER_BYTES
        })
    }

    /// Puts `entry`, its event kept decoded for the re-fold, at `index`.
    pub fn insert(&mut self, index: usize, entry: Entry) {
        self.held += entry.held_bytes();
        self.history.insert(index, entry);
    }

    /// The base state, for the changelog.
    pub fn base_proto(&self) -> JoinCustomerState {
        match &self.base {
            Some(base) => base.to_proto(),
            None => CustomerState::default().to_proto(),
        }
    }

    /// Sets the base state, read back from the changelog.
    pub fn set_base(&mut self, base: CustomerState) {
        self.base = Some(Box::new(base));
    }

    /// Customer `id` as `Join::cold` keeps it, if it has no history (and
    /// so its current state is its base).
    pub(super) fn frozen(&self, id: &str) -> Option<Frozen> {
        if !self.history.is_empty() || self.dirty_from.is_some() {
            return None;
        }
        Some(Frozen::new(
            id,
            self.current.last_seen_ms,
            &self.base_proto(),
        ))
    }

    /// A copy of the base state, for a re-fold to start from.
    fn base_state(&self) -> CustomerState {
        self.base.as_deref().cloned().unwrap_or_default()
    }

    /// Whether the base folded `event_id` in (see
    /// [`CustomerState::folded`]).
    fn folded(&self, event_id: &str) -> bool {
        self.base.as_ref().is_some_and(|b| b.folded(event_id))
    }

    /// The event time after which what this customer's history emits at a
    /// revision above its entry's first is new ([`Emission::new_revision`]):
    /// after every event its base folded in and no longer recognises, and
    /// no earlier than `recent_from` (see [`Outputs::recent_from`]).
    ///
    /// Why that proves it: an entry's revision is the last it emitted, and
    /// the changelog records it before the outputs are sent, so a restored
    /// entry never mints a revision it emitted before; a moved event's
    /// first output here is one revision above what it was emitted at
    /// while it waited. The same event can only have been emitted at that
    /// revision by an *earlier* entry of it, which then left the history:
    /// folded into the base, which recognises the last 64 it folded (a
    /// replay of one of them is no new entry) and, past those, only knows
    /// that they were at or before its `last_seen_ms`; or dropped with its
    /// whole customer, idle past `value_window` (its time is then before
    /// `recent_from`). A client re-sending such an event makes a new entry
    /// at revision 0, whose repairs would mint revisions stored long ago:
    /// those are not vouched for, and the sink looks them up. (Nor is an
    /// entry of the same event in another customer's history, which only a
    /// replay after a crash can make, when the event's identifier was
    /// linked to another customer in between: docs/clickhouse.md,
    /// "Revisions enrich vouches for".)
    pub(super) fn vouch_after(&self, recent_from: i64) -> i64 {
        let folded = match &self.base {
            Some(b) if b.forgot_some() => b.last_seen_ms,
            _ => i64::MIN,
        };
        folded.max(recent_from.saturating_sub(1))
    }

    /// Where `(at, event_id)` belongs. An event's time comes from the
    /// event itself, so a replay lands on its own entry.
    pub fn place(&self, at: i64, event_id: &str) -> Place {
        let key = (at, event_id.as_bytes());
        if self.history.back().is_none_or(|last| last.key() < key) {
            return if self.folded(event_id) {
                Place::Forgotten
            } else {
                Place::Last
            };
        }
        match self.history.binary_search_by(|e| e.key().cmp(&key)) {
            Ok(i) => Place::Known(i),
            Err(_) if self.folded(event_id) => Place::Forgotten,
            Err(i) => Place::At(i),
        }
    }

    /// Marks the history for re-folding from `index` at the next settle.
    pub fn dirty(&mut self, index: usize) {
        self.dirty_from = Some(self.dirty_from.map_or(index, |d| d.min(index)));
    }

    /// Appends `entry`, made from `event`, as the customer's latest, with
    /// nothing else pending, and folds it into the current state: the
    /// in-order path, no re-fold. Its output, built by `output` in `o` (an
    /// empty output where the caller wants it), is for the caller to keep
    /// with the event or discard, as the returned emission says.
    pub fn push_last(
        &mut self,
        cfg: &JoinConfig,
        mut entry: Entry,
        event: &Event,
        o: &mut EnrichedEvent,
        output: impl FnOnce(&CustomerState, &Entry, &Event, &mut EnrichedEvent),
        recent_from: i64,
    ) -> Option<Emission> {
        let vouch_after = self.vouch_after(recent_from);
        self.current.update(event, entry.cx(), entry.at, cfg);
        output(&self.current, &entry, event, o);
        let emission = emit(&mut entry, event, &self.current, o, vouch_after);
        self.held += entry.held_bytes();
        self.history.push_back(entry);
        emission
    }

    /// Folds the history again from the base and appends to `outputs` the
    /// outputs to emit, in history order, each with a copy of its event
    /// (see [`Emission`]): entries never emitted, entries whose joined
    /// context changed (revision + 1), and forced ones. `output` fills an
    /// entry's output from the state right after it was folded in. When the
    /// only dirty entry is a new last one, it is folded into the current
    /// state instead: no re-fold. Returns whether anything was emitted
    /// (those entries are now [`Entry::unsaved`]).
    pub fn settle(
        &mut self,
        cfg: &JoinConfig,
        outputs: &mut Outputs<'_>,
        mut output: impl FnMut(&CustomerState, &Entry, &Event, &mut EnrichedEvent),
    ) -> bool {
        let Some(from) = self.dirty_from.take() else {
            return false;
        };
        let vouch_after = self.vouch_after(outputs.recent_from);
        if from + 1 == self.history.len() && !self.history[from].emitted {
            let entry = &mut self.history[from];
            let held = entry.held_bytes();
            let event = entry.take();
            self.current.update(&event, entry.cx(), entry.at, cfg);
            let o = outputs.slot();
            output(&self.current, entry, &event, o);
            let emission = emit(entry, &event, &self.current, o, vouch_after);
            match emission {
                Some(emission) => {
                    outputs
                        .event()
                        .get_or_insert_with(|| event.as_ref().clone());
                    outputs.event_bytes(entry);
                    outputs.keep(emission);
                }
                None => outputs.discard(),
            }
            entry.put(event);
            self.held = self.held - held + entry.held_bytes();
            return emission.is_some();
        }
        let mut state = self.base_state();
        let mut any = false;
        // Every entry is decoded by the re-fold, and kept so.
        let mut held = 0;
        for (index, entry) in self.history.iter_mut().enumerate() {
            let event = entry.take();
            state.update(&event, entry.cx(), entry.at, cfg);
            if index >= from {
                let o = outputs.slot();
                output(&state, entry, &event, o);
                match emit(entry, &event, &state, o, vouch_after) {
                    Some(emission) => {
                        outputs
                            .event()
                            .get_or_insert_with(|| event.as_ref().clone());
                        outputs.event_bytes(entry);
                        outputs.keep(emission);
                        any = true;
                    }
                    None => outputs.discard(),
                }
            }
            entry.put(event);
            held += entry.held_bytes();
        }
        self.held = held;
        self.current = state;
        any
    }

    /// Moves the entries beyond the bounds into the base, oldest first, and
    /// returns them. Never an entry waiting to be emitted.
    ///
    /// Asked after every in-order event, and almost always answered with
    /// nothing: the check is inlined, the eviction (whose frame alone cost
    /// as much as the check) is not.
    #[inline]
    pub fn evict(&mut self, cfg: &JoinConfig) -> Vec<Entry> {
        if self.front_over(cfg) {
            self.evict_over(cfg)
        } else {
            Vec::new()
        }
    }

    /// Whether the oldest entry is beyond the bounds and may leave.
    #[inline]
    fn front_over(&self, cfg: &JoinConfig) -> bool {
        let (Some(front), Some(newest)) = (self.history.front(), self.history.back()) else {
            return false;
        };
        let window = cfg.order_window.as_millis() as i64;
        let over = self.history.len() > cfg.max_history_per_customer.max(1)
            || front.at < newest.at.saturating_sub(window);
        over && front.emitted && self.dirty_from.is_none()
    }

    #[inline(never)]
    fn evict_over(&mut self, cfg: &JoinConfig) -> Vec<Entry> {
        let mut gone = Vec::new();
        while self.front_over(cfg) {
            let e = self.history.pop_front().expect("front exists");
            gone.push(self.fold_into_base(e, cfg));
        }
        gone
    }

    /// Moves the history into the base, oldest first, and returns the
    /// entries, the history's memory released: the join is over its budget
    /// and this customer among the least recently active. With
    /// `keep_latest`, the latest entry stays, encoded only: what the
    /// silence re-scoring reads (the customer's tenant, and the event an
    /// alert carries), and what every customer keeps under the
    /// per-customer bounds too. Stops at an entry waiting to be emitted,
    /// and does nothing while the history waits for a re-fold; neither is
    /// left after a batch.
    pub fn shed(&mut self, cfg: &JoinConfig, keep_latest: bool) -> Vec<Entry> {
        if self.dirty_from.is_some() {
            return Vec::new();
        }
        let latest = if keep_latest {
            self.history.pop_back()
        } else {
            None
        };
        let mut gone = Vec::with_capacity(self.history.len());
        while self.history.front().is_some_and(|e| e.emitted) {
            let e = self.history.pop_front().expect("front exists");
            gone.push(self.fold_into_base(e, cfg));
        }
        if self.history.is_empty() {
            // A history's room stays as large as it ever grew: released.
            self.history = VecDeque::new();
        }
        if let Some(mut latest) = latest {
            self.held -= latest.held_bytes();
            latest.event = None;
            self.held += latest.held_bytes();
            if self.history.is_empty() {
                self.history.reserve_exact(1);
            }
            self.history.push_back(latest);
        }
        gone
    }

    /// Folds `e`, just taken off the front of the history, into the base.
    fn fold_into_base(&mut self, mut e: Entry, cfg: &JoinConfig) -> Entry {
        self.held -= e.held_bytes();
        let event = e.take_for_fold();
        let base = self.base.get_or_insert_default();
        base.update(&event, e.cx(), e.at, cfg);
        base.forget(e.id());
        e
    }

    /// Restores the current state from base and history after a read-back.
    pub fn refold(&mut self, cfg: &JoinConfig) {
        self.history
            .make_contiguous()
            .sort_by(|a, b| a.key().cmp(&b.key()));
        let mut state = self.base_state();
        for e in &mut self.history {
            // Not kept decoded: read back, a history takes what an encoded
            // one takes, as most did when written (a re-fold alone keeps
            // its events decoded).
            let event = e.take();
            state.update(&event, e.cx(), e.at, cfg);
            e.unmet = state.unmet_reference(&event);
        }
        // Read back entry by entry, the history has room to spare.
        self.history.shrink_to_fit();
        self.held = self.history.iter().map(Entry::held_bytes).sum();
        self.current = state;
    }
}

/// Where a batch's outputs go: appended to the operator's output, each
/// built in place. An `EnrichedEvent` is 1.3 KB: built apart, an output was
/// copied four or five times on its way there (returned, handed on,
/// wrapped, pushed).
pub(super) struct Outputs<'a> {
    pub out: &'a mut Vec<Released>,
    /// The input offset that caused them.
    pub offset: i64,
    pub stats: &'a mut JoinStats,
    /// The earliest event time whose repairs are vouched for as new
    /// ([`Customer::vouch_after`]): a customer idle past `value_window` may
    /// have been dropped whole (`Join::evict_if_full`), and a customer made
    /// afresh later knows nothing of its events. Its drop needed an event
    /// `value_window` past its latest; no event is more than
    /// [`super::FUTURE_MARGIN`] past the wall clock, so every event of a
    /// dropped customer is before `now - value_window + FUTURE_MARGIN`.
    pub recent_from: i64,
}

impl Outputs<'_> {
    /// A new, empty output at the end, for an entry's output to be built in.
    pub fn slot(&mut self) -> &mut EnrichedEvent {
        self.out.push(Released {
            offset: self.offset,
            enriched: EnrichedEvent::default(),
            event_bytes: None,
        });
        &mut self.out.last_mut().expect("just pushed").enriched
    }

    /// Drops the output built in the last slot (in place, not moved out
    /// first): it is not emitted.
    pub fn discard(&mut self) {
        self.out.truncate(self.out.len() - 1);
    }

    /// The event of the output built in the last slot, empty, for the
    /// caller to fill in place before [`Outputs::keep`]: an `Event` is 704
    /// bytes, copied at every hand-over (and twice by an assignment, which
    /// drops what it replaces first).
    pub fn event(&mut self) -> &mut Option<Event> {
        &mut self.out.last_mut().expect("a slot").enriched.event
    }

    /// Gives the output built in the last slot its event's bytes (see
    /// [`Released::event_bytes`]), shared with `entry`.
    pub fn event_bytes(&mut self, entry: &Entry) {
        self.out.last_mut().expect("a slot").event_bytes = Some(entry.bytes.clone());
    }

    /// Keeps the output built in the last slot, its event in place, as
    /// `emission` says: at its revision, after a copy of it at the `before`
    /// revision if there is one.
    pub fn keep(&mut self, emission: Emission) {
        let last = self.out.last_mut().expect("a slot");
        last.enriched.revision = emission.revision;
        last.enriched.new_revision = emission.new_revision;
        self.stats.repairs += u64::from(emission.repaired);
        if let Some((revision, repaired)) = emission.before {
            // The copy comes first: the slot becomes it, and the output
            // follows it.
            let after = last.clone();
            last.enriched.revision = revision;
            last.enriched.new_revision = false;
            self.stats.repairs += u64::from(repaired);
            self.out.push(after);
        }
    }
}

/// What an entry emits: its output at `revision`, after, when `before` is
/// set, a copy of it at that revision (a replay's revision 0, or a linked
/// event's first revision); `repaired` tells each whether it counts as a
/// repair.
#[derive(Debug, Clone, Copy)]
pub(super) struct Emission {
    pub before: Option<(u32, bool)>,
    pub revision: u32,
    pub repaired: bool,
    /// The output at `revision` is a repair minted now, or a moved event's
    /// first output here, of an entry later than
    /// [`Customer::vouch_after`]: no copy of it was ever emitted
    /// (`EnrichedEvent::new_revision`).
    pub new_revision: bool,
}

impl Emission {
    /// The revision of its first output: the copy's, when there is one.
    pub fn first_revision(&self) -> u32 {
        self.before.map_or(self.revision, |(revision, _)| revision)
    }

    /// How many of its outputs count as repairs.
    pub fn repairs(&self) -> u64 {
        u64::from(self.repaired) + self.before.map_or(0, |(_, repaired)| u64::from(repaired))
    }
}

/// Decides what `entry`, made from `event`, emits given its output
/// `enriched`, computed from `state` (the fold up to it): its first
/// output, a repair when its joined context changed (revision + 1), or a
/// forced copy; and the extra copy a replay (revision 0) or a linked
/// event's first output (one revision up) adds. `None`: nothing.
fn emit(
    entry: &mut Entry,
    event: &Event,
    state: &CustomerState,
    enriched: &EnrichedEvent,
    vouch_after: i64,
) -> Option<Emission> {
    let hash = context_hash(enriched);
    entry.unmet = state.unmet_reference(event);
    // An entry read back with an older hash compares the same way it was
    // written: a changed hash alone is no repair. (A version this build
    // does not know compares as the current one: at most one revision.)
    let last = match entry.hash_version {
        0 => context_hash_v0(enriched),
        _ => hash,
    };
    let repaired = entry.emitted && last != entry.output_hash;
    if repaired {
        entry.revision += 1;
    }
    let forced = entry.force && entry.emitted;
    // A moved event's first output, one revision above its unresolved one.
    let moved = !entry.emitted && entry.revision > 0 && !entry.twice;
    let emit = !entry.emitted || repaired || entry.force;
    entry.force = false;
    if !emit {
        return None;
    }
    entry.output_hash = hash;
    entry.hash_version = HASH_VERSION;
    let mut before = None;
    if forced && entry.revision > 0 {
        // A replay: the outputs of the flush that recorded this entry may
        // have been lost, its revision 0 (which the aggregates count) among
        // them; the sink keeps the copy it has.
        before = Some((0, false));
    }
    if !entry.emitted && entry.twice {
        before = Some((entry.revision, repaired));
        entry.revision += 1;
    }
    entry.emitted = true;
    entry.unsaved = true;
    Some(Emission {
        before,
        revision: entry.revision,
        repaired,
        new_revision: (repaired || moved) && entry.at > vouch_after,
    })
}

/// The way [`context_hash`] hashes, written with each entry
/// (`JoinHistoryEntry.hash_version`); entries read back with another keep
/// theirs until their next output (see [`Entry::hash_version`]).
pub(super) const HASH_VERSION: u32 = 1;

/// A hash of what a repair can change in an output: how its customer was
/// found, and the joined order, session, customer and call context, field
/// by field, without encoding them (hash version 1). Not the customer id:
/// every output of an entry carries the id of the customer whose history
/// holds it. Each context is taken apart whole, so that a field added to
/// one does not compile until it is hashed here too (and the version
/// raised).
pub(super) fn context_hash(e: &EnrichedEvent) -> u64 {
    let mut h = Fields(foldhash::fast::FixedState::with_seed(0x786f_666c_6f77).build_hasher());
    h.int(i64::from(e.resolution));
    h.opt(e.order.as_ref(), |h, o| {
        let OrderContext {
            order_id,
            r#match,
            status,
            amount_minor,
            currency,
            placed_at,
            promised_delivery_at,
            delivered_at,
            delivery_late_seconds,
        } = o;
        h.str(order_id);
        h.int(i64::from(*r#match));
        h.int(i64::from(*status));
        h.int(*amount_minor);
        h.str(currency);
        h.time(placed_at.as_ref());
        h.time(promised_delivery_at.as_ref());
        h.time(delivered_at.as_ref());
        h.opt(delivery_late_seconds.as_ref(), |h, s| h.int(*s));
    });
    h.opt(e.session.as_ref(), |h, s| {
        let SessionContext {
            session_id,
            page_views,
            error_pages,
            abandoned_checkout,
        } = s;
        h.str(session_id);
        h.int(i64::from(*page_views));
        h.int(i64::from(*error_pages));
        h.int(i64::from(*abandoned_checkout));
    });
    h.opt(e.customer.as_ref(), |h, c| {
        let CustomerContext {
            orders_90d,
            value_90d_minor,
            lifetime_value_minor,
            support_contacts_30d,
            days_since_last_order,
            last_nps,
            churn_risk,
            do_not_contact,
        } = c;
        h.int(i64::from(*orders_90d));
        h.int(*value_90d_minor);
        h.int(*lifetime_value_minor);
        h.int(i64::from(*support_contacts_30d));
        h.opt(days_since_last_order.as_ref(), |h, d| h.int(i64::from(*d)));
        h.opt(last_nps.as_ref(), |h, n| h.int(i64::from(*n)));
        h.opt(churn_risk.as_ref(), |h, r| h.int(r.to_bits() as i64));
        h.int(i64::from(*do_not_contact));
    });
    h.opt(e.call.as_ref(), |h, c| {
        let CallContext {
            call_id,
            started_at,
            queue,
            agent_id,
            duration_seconds,
            disposition,
            sentiment_label,
        } = c;
        h.str(call_id);
        h.time(started_at.as_ref());
        h.str(queue);
        h.str(agent_id);
        h.int(i64::from(*duration_seconds));
        h.str(disposition);
        h.int(i64::from(*sentiment_label));
    });
    h.0.finish()
}

/// Writes fields to a hasher so that no two sequences of fields write the
/// same: strings with their length, optional parts with whether they are
/// there.
struct Fields(foldhash::fast::FoldHasher<'static>);

impl Fields {
    fn int(&mut self, v: i64) {
        self.0.write_i64(v);
    }

    fn str(&mut self, s: &str) {
        self.0.write_usize(s.len());
        self.0.write(s.as_bytes());
    }

    fn opt<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) {
        self.0.write_u8(u8::from(v.is_some()));
        if let Some(v) = v {
            f(self, v);
        }
    }

    fn time(&mut self, t: Option<&Timestamp>) {
        self.opt(t, |h, t| {
            h.int(t.seconds);
            h.int(i64::from(t.nanos));
        });
    }
}

/// [`context_hash`] as it was before `JoinHistoryEntry.hash_version`
/// (version 0): over the encoded contexts. Kept for entries read back from
/// a changelog written then, until each is emitted again.
pub(super) fn context_hash_v0(e: &EnrichedEvent) -> u64 {
    thread_local! {
        // Reused: the hash runs for every output.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut h = foldhash::fast::FixedState::with_seed(0x786f_666c_6f77).build_hasher();
    h.write(e.resolved_customer_id.as_bytes());
    h.write_i32(e.resolution);
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        // Each part, then a marker, so that parts cannot run into each other.
        for (part, marker) in [
            (e.order.as_ref().map(|o| o as &dyn DynEncode), 0xff),
            (e.session.as_ref().map(|s| s as &dyn DynEncode), 0xfe),
            (e.customer.as_ref().map(|c| c as &dyn DynEncode), 0xfd),
            (e.call.as_ref().map(|c| c as &dyn DynEncode), 0xfc),
        ] {
            if let Some(p) = part {
                p.encode_into(buf);
            }
            buf.push(marker);
        }
        h.write(buf);
    });
    h.finish()
}

/// Encoding into a shared buffer for any of the context messages.
trait DynEncode {
    fn encode_into(&self, buf: &mut Vec<u8>);
}

impl<M: Message> DynEncode for M {
    fn encode_into(&self, buf: &mut Vec<u8>) {
        // The same bytes as `encode`, without its first pass over the
        // message to check the room left, which a `Vec` does not need.
        self.encode_raw(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry keeps empty CX fields as nothing and its id where its bytes
    /// hold it, and still writes back exactly the record it was read from,
    /// or the fields it was made with.
    #[test]
    fn an_entry_writes_back_what_it_was_given() {
        let scored = CxFields {
            nps_score: Some(3),
            nps_category: 1,
            sentiment: Some(-0.0),
            topics: vec!["delivery".into(), "price".into()],
            ..CxFields::default()
        };
        // The id first, as prost encodes it; no id; the id after another
        // field, so that the entry keeps a copy.
        let mut late_id = Event {
            tenant: "t".into(),
            ..Event::default()
        }
        .encode_to_vec();
        Event {
            event_id: "e3".into(),
            ..Event::default()
        }
        .encode(&mut late_id)
        .expect("a vector grows");
        let events = [
            Event {
                event_id: "e1".into(),
                tenant: "t".into(),
                ..Event::default()
            }
            .encode_to_vec(),
            Event {
                tenant: "t".into(),
                ..Event::default()
            }
            .encode_to_vec(),
            late_id,
            // Longer than 127 bytes: a length of two bytes.
            Event {
                event_id: "e4".into(),
                tenant: "t".repeat(300),
                ..Event::default()
            }
            .encode_to_vec(),
            // An empty event: no field 1 in the record.
            Vec::new(),
        ];
        for bytes in events {
            let event = Event::decode(bytes.as_slice()).expect("decodes");
            for cx in [CxFields::default(), scored.clone()] {
                let p = JoinHistoryEntry {
                    event: bytes.clone(),
                    resolution: IdentityResolution::Linked as i32,
                    cx: Some(cx.clone()),
                    revision: 2,
                    output_hash: 7,
                    hash_version: 1,
                };
                let read = Entry::from_proto(p.clone(), 0).expect("decodes");
                assert_eq!(read.id(), event.event_id.as_bytes());
                assert_eq!(read.cx(), &cx);
                assert_eq!(read.to_proto(), p);
                let new = Entry::new(
                    0,
                    &event,
                    bytes.clone().into(),
                    IdentityResolution::Linked,
                    cx.clone(),
                    2,
                );
                assert_eq!(new.id(), event.event_id.as_bytes());
                assert_eq!(new.cx.is_none(), cx == CxFields::default());
                let written = new.to_proto();
                assert_eq!(new.encode_record(), written.encode_to_vec());
                assert_eq!(read.encode_record(), p.encode_to_vec());
                // Every scalar at its default, left out alike.
                let zero = JoinHistoryEntry {
                    resolution: 0,
                    revision: 0,
                    output_hash: 0,
                    hash_version: 0,
                    ..p.clone()
                };
                let read = Entry::from_proto(zero.clone(), 0).expect("decodes");
                assert_eq!(read.encode_record(), zero.encode_to_vec());
                assert_eq!((written.event, written.cx), (bytes.clone(), Some(cx)));
            }
        }
    }
}
