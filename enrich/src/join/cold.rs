//! Customers with no history, kept as their base state's changelog
//! encoding until their next event (see `Join::cold`).
//!
//! A partition holds every customer it has seen within `value_window`, and
//! most of them are cold: under a stream of new customers they are what
//! grows. So each is one allocation, its id, latest event time and encoded
//! base together ([`Frozen`]), in a table whose slot is that allocation's
//! pointer and length (16 bytes), hashed on the id. Kept as an id `String`
//! mapped to a time and a boxed encoding, a cold customer cost two
//! allocations and a 48-byte slot (BENCHMARKS.md, "What the RSS row
//! measures").
//!
//! Even so each takes some 300 bytes, and a partition may hold millions:
//! in the stage only the recent ones stay in memory, in two generations
//! ([`ColdStore`], `[enrich.cold_customers]`). A customer frozen goes into
//! the young one; when it is full, the old one is written to a local store
//! on disk and the young one becomes the old, so a customer stays in memory
//! at least a generation after it went cold, and the customers of the
//! last few minutes, whose next events are the likely ones, are thawed
//! without a read from disk. A customer is in exactly one place: the hot
//! table of the join, a generation, or the store (thawing one removes it
//! from where it was). Without a store every cold customer stays in the
//! young generation (tests, tools).
//!
//! Nothing here decodes a state: what crosses the boundary is a
//! customer's id, its latest event time and the bytes
//! `xoflow.v1.JoinCustomerState` encodes to.

use std::{hash::BuildHasher as _, sync::Arc};

use xoflow_proto::{
    Message as _,
    encoding::{decode_varint, encode_varint, encoded_len_varint},
    v1::JoinCustomerState,
};

use crate::local_store::{LocalStore, LocalStoreError, Table};

/// One cold customer: its latest event time (8 bytes, little-endian), its
/// id's length (a varint), its id, then its base state's encoding. The
/// same bytes are the value of its record in the store, keyed by its id.
#[derive(Debug)]
pub(super) struct Frozen(Box<[u8]>);

impl Frozen {
    /// Customer `id`, whose base encodes to `base` and whose latest event
    /// time is `last_seen_ms`.
    pub fn new(id: &str, last_seen_ms: i64, base: &JoinCustomerState) -> Self {
        let id_len = id.len() as u64;
        let mut b =
            Vec::with_capacity(8 + encoded_len_varint(id_len) + id.len() + base.encoded_len());
        b.extend_from_slice(&last_seen_ms.to_le_bytes());
        encode_varint(id_len, &mut b);
        b.extend_from_slice(id.as_bytes());
        base.encode(&mut b).expect("a Vec grows");
        // Sized exactly: no copy.
        Frozen(b.into_boxed_slice())
    }

    pub fn view(&self) -> View<'_> {
        View(&self.0)
    }

    pub fn id(&self) -> &str {
        self.view().id()
    }

    /// The base state's changelog encoding.
    pub fn base(&self) -> &[u8] {
        self.view().base()
    }
}

/// A cold customer's bytes, wherever they are kept (see [`Frozen`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct View<'a>(&'a [u8]);

impl<'a> View<'a> {
    /// Bytes a [`Frozen`] was: the store gives back only what it was given.
    fn checked(b: &'a [u8]) -> Option<Self> {
        let mut rest = b.get(8..)?;
        let len = decode_varint(&mut rest).ok()? as usize;
        std::str::from_utf8(rest.get(..len)?).ok()?;
        Some(View(b))
    }

    pub fn last_seen_ms(self) -> i64 {
        let mut t = [0; 8];
        t.copy_from_slice(&self.0[..8]);
        i64::from_le_bytes(t)
    }

    /// (Where the id starts, where it ends.)
    fn id_range(self) -> (usize, usize) {
        let mut rest = &self.0[8..];
        let len = decode_varint(&mut rest).expect("written by Frozen::new") as usize;
        let start = self.0.len() - rest.len();
        (start, start + len)
    }

    fn id_bytes(self) -> &'a [u8] {
        let (start, end) = self.id_range();
        &self.0[start..end]
    }

    pub fn id(self) -> &'a str {
        std::str::from_utf8(self.id_bytes()).expect("written from a str")
    }

    pub fn base(self) -> &'a [u8] {
        &self.0[self.id_range().1..]
    }
}

type Generation = hashbrown::HashTable<Frozen>;

/// The cold customers of one join partition, by id.
#[derive(Default)]
pub(super) struct ColdCustomers {
    young: Generation,
    old: Generation,
    hasher: foldhash::fast::RandomState,
    /// Where the old generation goes when the young one is full; none:
    /// everything stays in the young one.
    store: Option<ColdStore>,
}

impl std::fmt::Debug for ColdCustomers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdCustomers")
            .field("in_memory", &(self.young.len() + self.old.len()))
            .field("on_disk", &self.on_disk())
            .finish()
    }
}

/// A join partition's cold customers past the recent ones: a table of its
/// own in the instance's store, deleted with the partition's state.
pub struct ColdStore {
    table: Table,
    /// Customers in `table` (the store does not count them).
    len: usize,
    /// Customers per generation in memory.
    per_generation: usize,
    /// The first failure since [`ColdCustomers::take_error`].
    error: Option<fjall::Error>,
}

impl ColdStore {
    /// A table for one join partition in `store`, with room for
    /// `recent` customers in memory in front of it.
    pub fn open(store: &Arc<LocalStore>, recent: usize) -> Result<Self, LocalStoreError> {
        Ok(ColdStore {
            table: store.scratch_table("customers")?,
            len: 0,
            per_generation: generation(recent),
            error: None,
        })
    }

    /// Keeps the first failure (later ones follow from it).
    fn failed(&mut self, e: fjall::Error) {
        tracing::error!(error = %e, "the cold customers' store failed");
        self.error.get_or_insert(e);
    }

    /// Deletes `key` from the table, which holds it.
    fn delete(&mut self, key: &[u8]) {
        match self.table.remove(key) {
            Ok(()) => self.len -= 1,
            Err(e) => self.failed(e),
        }
    }

    /// `id`'s bytes, if the table holds it.
    fn get(&mut self, id: &str) -> Option<fjall::Slice> {
        match self.table.get(id.as_bytes()) {
            Ok(found) => found,
            Err(e) => {
                self.failed(e);
                None
            }
        }
    }
}

/// Customers per generation for `recent` in memory (two generations).
fn generation(recent: usize) -> usize {
    (recent / 2).max(1)
}

impl ColdCustomers {
    /// Cold customers past the recent ones go to `store`.
    pub fn with_store(store: ColdStore) -> Self {
        ColdCustomers {
            store: Some(store),
            ..Default::default()
        }
    }

    /// Keeps `recent` customers in memory in front of the store (none
    /// without one); takes effect as the young generation fills.
    pub fn set_recent(&mut self, recent: usize) {
        if let Some(s) = &mut self.store {
            s.per_generation = generation(recent);
        }
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len() + self.on_disk()
    }

    /// Customers in the store, out of memory.
    pub fn on_disk(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.len)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `f`, in place of any customer of the same id kept in memory.
    /// A customer in the store is never kept again before it is removed
    /// (thawed, erased or evicted), so it is not looked for there.
    pub fn insert(&mut self, f: Frozen) {
        let hash = self.hasher.hash_one(f.view().id_bytes());
        if self.store.is_some() {
            let id = f.view().id_bytes();
            if let Ok(e) = self.old.find_entry(hash, |x| x.view().id_bytes() == id) {
                e.remove();
            }
        }
        let hasher = &self.hasher;
        let entry = self.young.entry(
            hash,
            |x| x.view().id_bytes() == f.view().id_bytes(),
            // Growing rehashes what is kept the same way.
            |x| hasher.hash_one(x.view().id_bytes()),
        );
        entry.insert(f);
        if self
            .store
            .as_ref()
            .is_some_and(|s| self.young.len() >= s.per_generation)
        {
            self.next_generation();
        }
    }

    /// Writes the old generation to the store, and makes the young one the
    /// old. A write that fails is recorded (see [`ColdCustomers::take_error`])
    /// and the customer lost from this partition's memory: the stage stops
    /// before anything of the batch is sent, and its restart reads every
    /// customer back from the changelog.
    fn next_generation(&mut self) {
        let Some(store) = &mut self.store else {
            return;
        };
        for f in self.old.drain() {
            match store.table.insert(f.view().id_bytes(), &f.0) {
                Ok(()) => store.len += 1,
                Err(e) => store.failed(e),
            }
        }
        self.old = std::mem::take(&mut self.young);
    }

    /// Base state of customer `id`, if it is cold.
    pub fn base(&mut self, id: &str) -> Option<Vec<u8>> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let found = |x: &Frozen| x.view().id_bytes() == id.as_bytes();
        if let Some(f) = self
            .young
            .find(hash, found)
            .or_else(|| self.old.find(hash, found))
        {
            return Some(f.base().to_vec());
        }
        let stored = self.store.as_mut()?.get(id)?;
        View::checked(&stored).map(|v| v.base().to_vec())
    }

    /// Takes customer `id` out, if it is cold.
    pub fn remove(&mut self, id: &str) -> Option<Frozen> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let found = |x: &Frozen| x.view().id_bytes() == id.as_bytes();
        if let Ok(e) = self.young.find_entry(hash, found) {
            return Some(e.remove().0);
        }
        if let Ok(e) = self.old.find_entry(hash, found) {
            return Some(e.remove().0);
        }
        let store = self.store.as_mut()?;
        let stored = store.get(id)?;
        store.delete(id.as_bytes());
        View::checked(&stored).map(|_| Frozen(stored.to_vec().into_boxed_slice()))
    }

    /// Keeps the customers `keep` says yes to (the store's are read
    /// whole: a scan).
    pub fn retain(&mut self, mut keep: impl FnMut(View<'_>) -> bool) {
        self.young.retain(|f| keep(f.view()));
        self.old.retain(|f| keep(f.view()));
        let Some(store) = &mut self.store else {
            return;
        };
        let mut gone = Vec::new();
        let scanned = store.table.iter().try_for_each(|kv| {
            let (k, v) = kv?;
            if View::checked(&v).is_some_and(|v| !keep(v)) {
                gone.push(k);
            }
            Ok(())
        });
        if let Err(e) = scanned {
            store.failed(e);
            return;
        }
        for k in gone {
            store.delete(&k);
        }
    }

    /// Every cold customer's id (the store's are read whole: a scan).
    pub fn ids(&mut self) -> Vec<String> {
        let mut ids: Vec<String> = (self.young.iter().chain(self.old.iter()))
            .map(|f| f.id().to_owned())
            .collect();
        let Some(store) = &mut self.store else {
            return ids;
        };
        let scanned = store.table.iter().try_for_each(|kv| {
            let (_, v) = kv?;
            ids.extend(View::checked(&v).map(|v| v.id().to_owned()));
            Ok(())
        });
        if let Err(e) = scanned {
            store.failed(e);
        }
        ids
    }

    /// The first failure of the store since the last call, if any: what
    /// the partition read or wrote since may be wrong.
    pub fn take_error(&mut self) -> Option<LocalStoreError> {
        let store = self.store.as_mut()?;
        let e = store.error.take()?;
        Some(store.table.store().failed(e))
    }

    /// The customers kept in memory.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Frozen> {
        self.young.iter().chain(self.old.iter())
    }

    /// Customer `id`, if kept in memory.
    #[cfg(test)]
    pub fn get(&self, id: &str) -> Option<&Frozen> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let found = |x: &Frozen| x.view().id_bytes() == id.as_bytes();
        self.young
            .find(hash, found)
            .or_else(|| self.old.find(hash, found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_store::StoreSizes;

    fn state(lifetime_value_minor: i64) -> JoinCustomerState {
        JoinCustomerState {
            lifetime_value_minor,
            applied: vec![1, u64::MAX],
            ..Default::default()
        }
    }

    fn decoded(base: &[u8]) -> JoinCustomerState {
        JoinCustomerState::decode(base).expect("decodes")
    }

    #[test]
    fn a_customer_reads_back_as_kept_and_is_replaced_by_its_id() {
        let mut cold = ColdCustomers::default();
        // An id as long as a varint's first byte holds, and one longer.
        let long = "c".repeat(200);
        for (i, id) in ["", "c-1", &"é".repeat(63), &long].into_iter().enumerate() {
            cold.insert(Frozen::new(id, -(i as i64), &state(i as i64)));
        }
        assert_eq!(cold.len(), 4);
        for (i, id) in ["", "c-1", &"é".repeat(63), &long].into_iter().enumerate() {
            let f = cold.get(id).expect("kept");
            assert_eq!(f.id(), id);
            assert_eq!(f.view().last_seen_ms(), -(i as i64));
            assert_eq!(decoded(f.base()), state(i as i64));
        }
        assert!(cold.get("c-2").is_none());

        cold.insert(Frozen::new("c-1", 7, &state(70)));
        assert_eq!(cold.len(), 4);
        let f = cold.remove("c-1").expect("kept");
        assert_eq!((f.id(), f.view().last_seen_ms()), ("c-1", 7));
        assert_eq!(decoded(f.base()), state(70));
        assert!(cold.remove("c-1").is_none());

        cold.retain(|f| f.id().is_empty());
        let left: Vec<_> = cold.iter().map(|f| f.id().to_owned()).collect();
        assert_eq!(left, [""]);
        assert_eq!(cold.ids(), [""]);
    }

    /// With a store, two generations of `recent / 2` stay in memory and
    /// the rest is on disk; every customer reads back wherever it is, is
    /// in one place only, and leaves every place when taken out, evicted
    /// or when the partition's table is dropped.
    #[test]
    fn past_the_recent_ones_customers_go_to_disk_and_come_back_whole() {
        let dir = tempfile::tempdir().expect("a test directory");
        let sizes = StoreSizes {
            cache_mib: 1,
            memtable_mib: 1,
        };
        let store = LocalStore::open("test store", "xoflow-test-", Some(dir.path()), sizes)
            .expect("a store opens");
        let mut cold = ColdCustomers::with_store(ColdStore::open(&store, 200).expect("a table"));
        let id = |i: i64| format!("tenant\u{1f}customer-{i}");
        // 20,000 customers of ~100 bytes: several write buffers of 1 MiB.
        for i in 0..20_000 {
            cold.insert(Frozen::new(&id(i), i, &state(i)));
        }
        assert_eq!(cold.len(), 20_000);
        let in_memory = cold.young.len() + cold.old.len();
        assert!((100..=200).contains(&in_memory), "{in_memory} in memory");
        assert_eq!(cold.on_disk(), 20_000 - in_memory);
        // Frozen again while in memory: replaced, not doubled.
        cold.insert(Frozen::new(&id(19_999), 19_999, &state(-1)));
        assert_eq!(cold.len(), 20_000);
        assert_eq!(cold.base(&id(19_999)).map(|b| decoded(&b)), Some(state(-1)));
        for i in (0..20_000).step_by(97) {
            assert_eq!(
                cold.base(&id(i)).map(|b| decoded(&b)),
                Some(state(i)),
                "{i}"
            );
        }
        assert_eq!(cold.base(&id(20_000)), None);

        // Thawed from disk and from memory: gone from where it was.
        for i in [0, 5_000, 19_998] {
            let f = cold.remove(&id(i)).expect("cold");
            assert_eq!((f.id(), f.view().last_seen_ms()), (&*id(i), i));
            assert_eq!(decoded(f.base()), state(i));
            assert!(cold.remove(&id(i)).is_none());
            assert_eq!(cold.base(&id(i)), None);
        }
        assert_eq!(cold.len(), 19_997);
        // Frozen again after a thaw: one customer still.
        cold.insert(Frozen::new(&id(5_000), 5_000, &state(5)));
        assert_eq!(cold.len(), 19_998);
        assert_eq!(cold.base(&id(5_000)).map(|b| decoded(&b)), Some(state(5)));

        // Evicted everywhere by one rule: the even ones stay (0 and 19,998
        // were thawed).
        cold.retain(|v| v.last_seen_ms() % 2 == 0);
        assert_eq!(cold.len(), 9_998);
        let mut ids = cold.ids();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 9_998);
        let even = |i: &String| {
            i.rsplit('-')
                .next()
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|n| n % 2 == 0)
        };
        assert!(ids.iter().all(even), "{ids:?}");
        assert!(cold.take_error().is_none());

        // Dropped with its partition: the table goes, the store stays.
        let tables = || {
            std::fs::read_dir(dir.path())
                .expect("the test directory reads")
                .count()
        };
        assert_eq!(tables(), 1);
        drop(cold);
        let mut other = ColdCustomers::with_store(ColdStore::open(&store, 2).expect("a table"));
        other.insert(Frozen::new("a", 1, &state(1)));
        other.insert(Frozen::new("b", 2, &state(2)));
        assert_eq!(other.base(&id(2)), None, "a new table is empty");
        assert_eq!(other.len(), 2);
        drop((other, store));
        assert_eq!(tables(), 0);
    }
}
