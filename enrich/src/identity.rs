//! Identity resolution: which customer an event belongs to.
//!
//! Events that carry a customer id and weak identifiers (hashed e-mail,
//! phone, social handle, device) teach links; events with only weak
//! identifiers are resolved through them. In the stage the link table is a
//! global table: every instance reads the whole links topic at start-up and
//! follows it, and writes the links it learns there (see [`crate::stage`]).

use std::{borrow::Cow, collections::HashMap};

pub use crate::config::{LinkTableConfig, StoreKind as LinkStore};
use crate::local_store::{LocalStore, LocalStoreError, StoreSizes, Table};

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
/// new customer brings two or three), so in the stage it is kept in a
/// local store on disk ([`LinkTableConfig`], "disk"): an LSM tree
/// (`fjall`) in a directory of its own, whose memory is bounded by its
/// block cache and write buffer, with the links used lately in memory in
/// front of it (`Recent`). The directory is a cache of the links topic,
/// not a copy of record: every start reads the topic into a fresh one, as
/// the in-memory table always did, so it needs no durability and nothing
/// in it outlives the process (the directories a killed process left are
/// removed by the next start). "memory" keeps the whole table in the heap
/// (tests, the join's own [`crate::join::Join::process`]).
///
/// Either way an identifier as ingest hashes it (64 lowercase hex digits
/// of an HMAC-SHA256) is keyed by its 32 bytes, and identifiers of any
/// other shape (hashed elsewhere, a test's) by their text, so that each
/// comes back exactly as it went in.
///
/// A store that fails (a full disk) cannot answer: a look-up that failed
/// reads as no link and a write that failed is lost, and the first
/// failure is kept until [`Links::take_error`] hands it to the caller, who
/// must not commit what it read since (the resolve loop fails the stage,
/// and the restart rebuilds the table).
pub struct Links {
    store: Store,
    new_links: NewLinks,
}

enum Store {
    Memory(Memory),
    Disk(Box<Disk>),
}

impl Default for Links {
    /// An empty table in memory.
    fn default() -> Self {
        Links {
            store: Store::Memory(Memory::default()),
            new_links: NewLinks::default(),
        }
    }
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.store {
            Store::Memory(_) => "memory",
            Store::Disk(_) => "disk",
        };
        f.debug_struct("Links")
            .field("store", &store)
            .field("len", &self.len())
            .finish()
    }
}

/// Links in the heap: a digest in the map's slot, a customer id boxed.
#[derive(Default)]
struct Memory {
    digests: HashMap<[u8; 32], Box<str>, foldhash::fast::RandomState>,
    texts: HashMap<Box<str>, Box<str>, foldhash::fast::RandomState>,
}

impl Memory {
    fn len(&self) -> usize {
        self.digests.len() + self.texts.len()
    }

    fn get(&self, key: &Key<'_>) -> Option<&str> {
        match key {
            Key::Digest(d) => self.digests.get(d),
            Key::Text(t) => self.texts.get(*t),
        }
        .map(|c| &**c)
    }

    fn set(&mut self, key: &Key<'_>, customer_id: Box<str>) {
        match key {
            Key::Digest(d) => self.digests.insert(*d, customer_id),
            Key::Text(t) => self.texts.insert((*t).into(), customer_id),
        };
    }

    fn remove(&mut self, key: &Key<'_>) -> Option<Box<str>> {
        match key {
            Key::Digest(d) => self.digests.remove(d),
            Key::Text(t) => self.texts.remove(*t),
        }
    }
}

/// The links used lately, in front of the disk store: two generations of
/// at most `per_generation` links each. A link read or written goes into
/// the young one; when it is full, it becomes the old one and the old one
/// is dropped, so a link stays at least one generation after its last use
/// and a customer's identifiers, read again with each of their events,
/// stay in memory while the customer is active. Written through: the
/// store always holds every link.
struct Recent {
    young: Memory,
    old: Memory,
    per_generation: usize,
}

impl Recent {
    fn get(&self, key: &Key<'_>) -> Option<&str> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    fn keep(&mut self, key: &Key<'_>, customer_id: Box<str>) {
        if self.young.len() >= self.per_generation {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.set(key, customer_id);
    }

    fn forget(&mut self, key: &Key<'_>) {
        self.young.remove(key);
        self.old.remove(key);
    }
}

/// The store on disk, the links used lately, and the links it holds.
struct Disk {
    table: Table,
    recent: Recent,
    len: usize,
    /// The first failure since [`Links::take_error`]: behind a lock only
    /// so that a read through `&self` can record it (taken with
    /// `get_mut`, no lock).
    error: std::sync::Mutex<Option<fjall::Error>>,
}

impl Disk {
    fn get(&self, key: &Key<'_>) -> Result<Option<Cow<'_, str>>, fjall::Error> {
        if let Some(c) = self.recent.get(key) {
            return Ok(Some(Cow::Borrowed(c)));
        }
        Ok(self.read_store(key)?.map(|c| Cow::Owned(c.into())))
    }

    /// The link in the store itself, past the recent ones.
    fn read_store(&self, key: &Key<'_>) -> Result<Option<Box<str>>, fjall::Error> {
        // Only this table writes it, and only from `&str`s.
        Ok(self
            .table
            .get(key.stored().as_ref())?
            .map(|v| String::from_utf8_lossy(&v).into()))
    }

    fn set(&mut self, key: &Key<'_>, customer_id: &str) -> Result<(), fjall::Error> {
        self.table
            .insert(key.stored().as_ref(), customer_id.as_bytes())?;
        self.recent.keep(key, customer_id.into());
        Ok(())
    }

    fn remove(&mut self, key: &Key<'_>) -> Result<(), fjall::Error> {
        self.table.remove(key.stored().as_ref())?;
        self.recent.forget(key);
        Ok(())
    }

    /// Keeps the first failure (later ones follow from it).
    fn failed(&self, e: fjall::Error) {
        tracing::error!(error = %e, "link store failed");
        if let Ok(mut first) = self.error.lock() {
            first.get_or_insert(e);
        }
    }
}

/// The identifiers [`Links`] linked since [`Links::take_new_links`], as
/// tags (a digest's first 8 bytes, a text's hash): a tag two identifiers
/// share only makes [`Waiting::release`] look the other one up for
/// nothing. Past `MAX` tags (a start-up reading the whole links topic, a
/// caller that never takes them) it stops counting and answers "maybe"
/// for every identifier, so it never grows with the table.
#[derive(Default)]
pub struct NewLinks {
    tags: std::collections::HashSet<u64, foldhash::fast::RandomState>,
    overflowed: bool,
}

impl NewLinks {
    const MAX: usize = 65_536;

    fn add(&mut self, key: &Key<'_>) {
        if self.overflowed {
            return;
        }
        if self.tags.len() >= Self::MAX {
            self.overflowed = true;
            self.tags = Default::default();
            return;
        }
        self.tags.insert(key.tag());
    }

    /// Whether a link to one of `customer`'s identifiers may be among them.
    pub fn may_resolve(&self, customer: &CustomerIdentity) -> bool {
        self.overflowed
            || (!self.tags.is_empty()
                && weak_identifiers(customer).any(|h| self.tags.contains(&Key::of(h).tag())))
    }
}

/// `identifier` as [`Links`] keys it.
enum Key<'a> {
    Digest([u8; 32]),
    Text(&'a str),
}

impl<'a> Key<'a> {
    fn of(identifier: &'a str) -> Self {
        let mut digest = [0u8; 32];
        // Lowercase only: the text must come back as it went in.
        let lower_hex = identifier
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if identifier.len() == 64
            && lower_hex
            && hex::decode_to_slice(identifier, &mut digest).is_ok()
        {
            Key::Digest(digest)
        } else {
            Key::Text(identifier)
        }
    }

    /// Its tag in [`NewLinks`].
    fn tag(&self) -> u64 {
        match self {
            Key::Digest(d) => u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]),
            Key::Text(t) => {
                use std::hash::BuildHasher as _;
                foldhash::fast::FixedState::with_seed(0).hash_one(t)
            }
        }
    }

    /// The key in the disk store: a tag byte, so that a 32-byte text never
    /// meets a digest, then the bytes (a digest's on the stack).
    fn stored(&self) -> Stored {
        match self {
            Key::Digest(d) => {
                let mut k = [b'd'; 33];
                k[1..].copy_from_slice(d);
                Stored::Digest(k)
            }
            Key::Text(t) => Stored::Text([b"t", t.as_bytes()].concat()),
        }
    }

    /// The identifier a stored key stands for.
    fn identifier(stored: &[u8]) -> Option<String> {
        match stored.split_first()? {
            (b'd', d) => Some(hex::encode(d)),
            (b't', t) => std::str::from_utf8(t).ok().map(str::to_owned),
            _ => None,
        }
    }
}

/// A key as the disk store holds it (see [`Key::stored`]).
enum Stored {
    Digest([u8; 33]),
    Text(Vec<u8>),
}

impl AsRef<[u8]> for Stored {
    fn as_ref(&self) -> &[u8] {
        match self {
            Stored::Digest(k) => k,
            Stored::Text(k) => k,
        }
    }
}

/// The link store could not be opened, or failed.
pub type LinkStoreError = LocalStoreError;

/// Directories of link stores start with this; what follows is random.
const DIR_PREFIX: &str = "xoflow-links-";

/// What the link store's errors and logs call it.
const WHAT: &str = "link store";

impl Links {
    /// An empty table kept as `cfg` says.
    pub fn open(cfg: &LinkTableConfig) -> Result<Links, LinkStoreError> {
        match cfg.store {
            LinkStore::Memory => Ok(Links::default()),
            LinkStore::Disk => Ok(Links {
                store: Store::Disk(Box::new(Self::open_disk(cfg)?)),
                new_links: NewLinks::default(),
            }),
        }
    }

    fn open_disk(cfg: &LinkTableConfig) -> Result<Disk, LinkStoreError> {
        let store = LocalStore::open(
            WHAT,
            DIR_PREFIX,
            cfg.directory.as_deref(),
            StoreSizes {
                cache_mib: cfg.cache_mib,
                memtable_mib: cfg.memtable_mib,
            },
        )?;
        Ok(Disk {
            table: store.table("links")?,
            recent: Recent {
                young: Memory::default(),
                old: Memory::default(),
                per_generation: cfg.recent_links,
            },
            len: 0,
            error: std::sync::Mutex::new(None),
        })
    }

    pub fn len(&self) -> usize {
        match &self.store {
            Store::Memory(m) => m.len(),
            Store::Disk(d) => d.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of links written to the store and not yet flushed to its
    /// files (0 in memory).
    pub fn write_buffer_bytes(&self) -> u64 {
        match &self.store {
            Store::Memory(_) => 0,
            Store::Disk(d) => d.table.store().write_buffer_bytes(),
        }
    }

    /// The first failure of the store since the last call, if any: what
    /// was read since may have missed links.
    pub fn take_error(&mut self) -> Option<LinkStoreError> {
        match &mut self.store {
            Store::Memory(_) => None,
            Store::Disk(d) => {
                let e = d.error.get_mut().ok().and_then(Option::take)?;
                Some(d.table.store().failed(e))
            }
        }
    }

    /// The identifiers linked since the last call: the only ones that can
    /// resolve an event [`Waiting`] holds (it was held because none of its
    /// identifiers was linked).
    pub fn take_new_links(&mut self) -> NewLinks {
        std::mem::take(&mut self.new_links)
    }

    /// Records a link read from the links topic (the latest wins); an
    /// empty customer id (a tombstone: the identifier was erased) removes
    /// it.
    pub fn insert(&mut self, identifier: String, customer_id: String) {
        if customer_id.is_empty() {
            self.remove(&identifier);
            return;
        }
        let key = Key::of(&identifier);
        let new = match self.lookup(&key) {
            // The resolve loop reads back every link it published itself.
            Some(known) if known == customer_id => return,
            known => known.is_none(),
        };
        self.set(&key, &customer_id, new);
    }

    /// Links `key` to `customer_id`; `new` when it was linked to none.
    fn set(&mut self, key: &Key<'_>, customer_id: &str, new: bool) {
        self.new_links.add(key);
        match &mut self.store {
            Store::Memory(m) => m.set(key, customer_id.into()),
            Store::Disk(d) => match d.set(key, customer_id) {
                Ok(()) => d.len += usize::from(new),
                Err(e) => d.failed(e),
            },
        }
    }

    /// Forgets `identifier` (erasure).
    pub fn remove(&mut self, identifier: &str) -> Option<String> {
        let key = Key::of(identifier);
        match &mut self.store {
            Store::Memory(m) => m.remove(&key).map(String::from),
            Store::Disk(d) => {
                let known = match d.get(&key) {
                    Ok(known) => known.map(Cow::into_owned),
                    Err(e) => {
                        d.failed(e);
                        return None;
                    }
                };
                known.as_ref()?;
                match d.remove(&key) {
                    Ok(()) => d.len -= 1,
                    Err(e) => d.failed(e),
                }
                known
            }
        }
    }

    /// Every identifier linked to `customer_id` (erasure: a whole scan).
    pub fn identifiers_of(&self, customer_id: &str) -> Vec<String> {
        match &self.store {
            Store::Memory(m) => {
                let digests = m
                    .digests
                    .iter()
                    .filter(|(_, c)| &***c == customer_id)
                    .map(|(d, _)| hex::encode(d));
                let texts = m
                    .texts
                    .iter()
                    .filter(|(_, c)| &***c == customer_id)
                    .map(|(t, _)| t.to_string());
                digests.chain(texts).collect()
            }
            Store::Disk(d) => {
                let mut out = Vec::new();
                for kv in d.table.iter() {
                    match kv {
                        Ok((k, v)) if *v == *customer_id.as_bytes() => {
                            out.extend(Key::identifier(&k));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            d.failed(e);
                            break;
                        }
                    }
                }
                out
            }
        }
    }

    /// The customer `identifier` is linked to.
    pub fn get(&self, identifier: &str) -> Option<Cow<'_, str>> {
        let key = Key::of(identifier);
        match &self.store {
            Store::Memory(m) => m.get(&key).map(Cow::Borrowed),
            Store::Disk(d) => d.get(&key).unwrap_or_else(|e| {
                d.failed(e);
                None
            }),
        }
    }

    /// [`Links::get`] for the resolve loop (learning and resolving): a link
    /// read from the store is kept among the recent ones, and a failure is
    /// recorded.
    fn lookup(&mut self, key: &Key<'_>) -> Option<&str> {
        match &mut self.store {
            Store::Memory(m) => m.get(key),
            Store::Disk(d) => {
                if d.recent.young.get(key).is_none() {
                    // From the old generation (moved, not copied) or the
                    // store, into the young one.
                    let found = match d.recent.old.remove(key) {
                        Some(c) => c,
                        None => match d.read_store(key) {
                            Ok(Some(c)) => c,
                            Ok(None) => return None,
                            Err(e) => {
                                d.failed(e);
                                return None;
                            }
                        },
                    };
                    d.recent.keep(key, found);
                }
                d.recent.young.get(key)
            }
        }
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
        for h in weak_identifiers(c) {
            let key = Key::of(h);
            let new = match self.lookup(&key) {
                Some(known) if known == c.customer_id => continue,
                Some(known) => {
                    crate::telemetry::LinkRepointed {
                        origin: "event",
                        identifier: h,
                        from: known,
                        to: &c.customer_id,
                    }
                    .emit();
                    false
                }
                None => true,
            };
            self.set(&key, &c.customer_id, new);
            new_link(h, &c.customer_id);
        }
    }

    /// The customer of `e`: its own id, else the first weak identifier
    /// linked to one. The id comes with room for `e`'s tenant, which the
    /// join puts in front of it (`crate::tenancy`) without allocating again.
    pub fn resolve(&self, e: &Event) -> Resolved {
        let room = e.tenant.len() + 1;
        resolve_with(e.customer.as_ref(), room, |h| {
            self.get(h)
                .map(|c| crate::tenancy::with_room(&e.tenant, &c))
        })
    }

    /// [`Links::resolve`] from an event's identity alone.
    pub fn resolve_from(&self, customer: Option<&CustomerIdentity>) -> Resolved {
        resolve_with(customer, 0, |h| self.get(h).map(Cow::into_owned))
    }

    /// [`Links::resolve_from`] for the resolve loop: a link read from the
    /// store is kept among the recent ones, so that the customer's next
    /// events find it in memory.
    pub fn resolve_keeping(&mut self, customer: Option<&CustomerIdentity>) -> Resolved {
        resolve_with(customer, 0, |h| self.lookup(&Key::of(h)).map(str::to_owned))
    }
}

/// The customer of `customer`: its own id (with `room` bytes to spare),
/// else the first weak identifier `find` links to one.
fn resolve_with(
    customer: Option<&CustomerIdentity>,
    room: usize,
    mut find: impl FnMut(&str) -> Option<String>,
) -> Resolved {
    let Some(c) = customer else {
        return Resolved::unresolved();
    };
    if !c.customer_id.is_empty() {
        let mut id = String::with_capacity(c.customer_id.len() + room);
        id.push_str(&c.customer_id);
        return Resolved {
            customer_id: Some(id),
            resolution: IdentityResolution::Direct,
        };
    }
    weak_identifiers(c)
        .find_map(&mut find)
        .map_or_else(Resolved::unresolved, |id| Resolved {
            customer_id: Some(id),
            resolution: IdentityResolution::Linked,
        })
}

/// The identifier an event no link resolved waits under, in the join, for
/// a link (see `join::unresolved`): its first weak identifier, in the order
/// [`Links::resolve`] tries them. `None` when it has none (nothing could
/// ever resolve it).
pub fn wait_identifier(customer: Option<&CustomerIdentity>) -> Option<&str> {
    weak_identifiers(customer?).next()
}

/// The weak identifiers `c` carries, in the order [`Links::resolve`] tries
/// them.
fn weak_identifiers(c: &CustomerIdentity) -> impl Iterator<Item = &str> {
    [
        &c.email_hash,
        &c.phone_hash,
        &c.social_handle_hash,
        &c.device_id_hash,
    ]
    .into_iter()
    .map(String::as_str)
    .filter(|h| !h.is_empty())
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
        customer.is_some_and(|c| c.customer_id.is_empty() && weak_identifiers(c).next().is_some())
    }

    pub fn hold(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
    }

    /// Takes the waiters `links` now resolves, and those that waited
    /// `max_hold_ms` (unresolved), in the order they arrived. Only a waiter
    /// one of whose identifiers was linked since the last call is looked
    /// up again: the others are as unresolved as when they were held, and
    /// on disk each look-up would be a store read per waiter per batch.
    pub fn release(
        &mut self,
        links: &mut Links,
        now_ms: i64,
        max_hold_ms: i64,
    ) -> Vec<(Waiter, Resolved)> {
        let new_links = links.take_new_links();
        let mut out = Vec::new();
        let mut keep = Vec::with_capacity(self.waiters.len());
        for w in self.waiters.drain(..) {
            let r = if new_links.may_resolve(&w.customer) {
                links.resolve_keeping(Some(&w.customer))
            } else {
                Resolved::unresolved()
            };
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

    /// A table on disk in a directory of the test's own, with a recent
    /// generation of `recent` links and the smallest write buffer (so that
    /// a few ten thousand links are written out to the store's files).
    fn on_disk(dir: &std::path::Path, recent: usize) -> Links {
        Links::open(&LinkTableConfig {
            directory: Some(dir.to_owned()),
            recent_links: recent,
            memtable_mib: 1,
            ..LinkTableConfig::default()
        })
        .expect("a link store opens")
    }

    /// A digest kept as its bytes and any other identifier as its text
    /// come back exactly as they went in, and never meet each other, in
    /// memory and on disk (where a generation of two recent links makes
    /// most reads go to the store).
    #[test]
    fn links_give_back_the_identifiers_they_were_given() {
        let dir = tempfile::tempdir().expect("a test directory");
        for mut links in [Links::default(), on_disk(dir.path(), 2)] {
            let digest = "0f".repeat(32);
            let upper = "0F".repeat(32);
            let short = "abc123";
            // 32 bytes of text: the digest "0f0f…"'s bytes as a text key.
            let thirty_two = "\u{f}".repeat(32);
            links.insert(digest.clone(), "c1".into());
            links.insert(upper.clone(), "c1".into());
            links.insert(short.into(), "c2".into());
            links.insert(short.into(), "c2".into());
            assert_eq!(links.len(), 3, "{links:?}");
            assert_eq!(links.get(&digest).as_deref(), Some("c1"));
            assert_eq!(links.get(&upper).as_deref(), Some("c1"));
            assert_eq!(links.get(short).as_deref(), Some("c2"));
            assert_eq!(links.get(&thirty_two), None);
            assert_eq!(links.get(&"1f".repeat(32)), None);
            let mut of_c1 = links.identifiers_of("c1");
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
            links.learn(&e, |h, c| learnt.push((h.to_owned(), c.to_owned())));
            assert_eq!(learnt, vec![("2e".repeat(32), "c3".to_owned())]);
            assert_eq!(links.len(), 4);
            assert_eq!(links.remove(&digest).as_deref(), Some("c1"));
            assert_eq!(links.remove(&digest), None);
            links.insert(upper.clone(), String::new());
            assert_eq!(links.len(), 2);
            assert_eq!(links.get(&digest), None);
            assert_eq!(links.get(&upper), None);
            // A link moved to another customer is one link still.
            links.insert(short.into(), "c4".into());
            assert_eq!(links.len(), 2);
            assert_eq!(links.get(short).as_deref(), Some("c4"));
            assert!(links.take_error().is_none());
        }
    }

    /// A steady stream of new links keeps the store's write buffer within
    /// its bound (four sealed buffers waiting for the flush and the one
    /// being written). The stall this guards against (see `local_store::Table::written`)
    /// needs a worker slower than the writer, as on a saturated machine;
    /// here it shows only if the sealing stops keeping the bound.
    #[test]
    fn the_store_keeps_its_write_buffer_under_a_stream_of_new_links() {
        let dir = tempfile::tempdir().expect("a test directory");
        let mut links = on_disk(dir.path(), 100);
        let mut most = 0;
        for i in 0..200_000u64 {
            links.insert(format!("{:064x}", i * 0x9e37_79b9), format!("c{i}"));
            if i % 1_000 == 0 {
                most = most.max(links.write_buffer_bytes());
            }
        }
        assert!(links.take_error().is_none());
        assert!(most <= 5 * 1024 * 1024, "{most} bytes unflushed");
        assert_eq!(links.len(), 200_000);
    }

    /// On disk, the table holds every link whatever the recent generations
    /// keep, and its directory goes with it; one a killed process left
    /// behind is removed by the next open, one still open is not.
    #[test]
    fn a_table_on_disk_holds_every_link_and_leaves_no_directory() {
        let dir = tempfile::tempdir().expect("a test directory");
        let stores = || {
            std::fs::read_dir(dir.path())
                .expect("the test directory reads")
                .filter(|e| {
                    e.as_ref()
                        .expect("an entry")
                        .file_name()
                        .to_string_lossy()
                        .starts_with(DIR_PREFIX)
                })
                .count()
        };
        let digest = |i: u32| format!("{:064x}", u64::from(i) * 0x9e37_79b9);
        let mut links = on_disk(dir.path(), 100);
        for i in 0..40_000 {
            links.insert(digest(i), format!("c{}", i / 3));
        }
        assert_eq!(links.len(), 40_000);
        for i in (0..40_000).step_by(7) {
            assert_eq!(
                links.get(&digest(i)).as_deref(),
                Some(&*format!("c{}", i / 3))
            );
        }
        assert_eq!(stores(), 1);
        // A store nobody holds open (a killed process's): removed when the
        // next one opens; the open one is left alone.
        let abandoned = dir.path().join(format!("{DIR_PREFIX}killed"));
        std::fs::create_dir(&abandoned).expect("a directory");
        std::fs::write(abandoned.join("lock"), b"").expect("a lock file");
        let other = on_disk(dir.path(), 100);
        assert!(!abandoned.exists());
        assert_eq!(stores(), 2);
        assert_eq!(links.get(&digest(9_999)).as_deref(), Some("c3333"));
        drop(other);
        drop(links);
        assert_eq!(stores(), 0);
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
        assert!(w.release(&mut links, 1_100, 500).is_empty());
        assert_eq!(w.lowest_offset("events", 0), Some(10));

        links.insert("e2".into(), "c2".into());
        let out = w.release(&mut links, 1_200, 500);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.offset, 12);
        assert_eq!(out[0].1.customer_id.as_deref(), Some("c2"));
        assert_eq!(out[0].1.resolution, IdentityResolution::Linked);

        let out = w.release(&mut links, 1_500, 500);
        assert_eq!(out.len(), 1, "e1 waited 500 ms");
        assert_eq!(out[0].0.offset, 10);
        assert_eq!(out[0].1, Resolved::unresolved());
        assert_eq!(w.lowest_offset("events", 0), None);
        assert_eq!(w.lowest_offset("events", 1), Some(5));

        w.drop_partition("events", 1);
        assert!(w.is_empty());
    }

    #[test]
    fn only_an_identifier_linked_since_the_last_release_sends_a_waiter_to_the_table() {
        let digest = "ab".repeat(32);
        let mut links = Links::default();
        links.insert(digest.clone(), "c1".into());
        links.learn_from(
            Some(&CustomerIdentity {
                customer_id: "c2".into(),
                phone_hash: "p2".into(),
                ..Default::default()
            }),
            |_, _| {},
        );
        let new = links.take_new_links();
        assert!(new.may_resolve(&by_email(&digest)));
        let phone = CustomerIdentity {
            email_hash: "e9".into(),
            phone_hash: "p2".into(),
            ..Default::default()
        };
        assert!(new.may_resolve(&phone), "any of its identifiers");
        assert!(!new.may_resolve(&by_email("e9")));
        assert!(!new.may_resolve(&by_email(&"cd".repeat(32))));
        // Taken: the next release sees only what is linked after it.
        assert!(!links.take_new_links().may_resolve(&by_email(&digest)));

        // A start-up reading the whole topic: no tag kept past the bound,
        // every waiter looked up once.
        for i in 0..=NewLinks::MAX {
            links.insert(format!("x{i}"), "c3".into());
        }
        let new = links.take_new_links();
        assert!(new.tags.is_empty());
        assert!(new.may_resolve(&by_email("e9")));
    }
}
