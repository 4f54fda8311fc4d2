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
//! measures"). Nothing here decodes a state: what crosses the
//! boundary is a customer's id, its latest event time and the bytes
//! `xoflow.v1.JoinCustomerState` encodes to.

use std::hash::BuildHasher as _;

use xoflow_proto::{
    Message as _,
    encoding::{decode_varint, encode_varint, encoded_len_varint},
    v1::JoinCustomerState,
};

/// One cold customer: its latest event time (8 bytes, little-endian), its
/// id's length (a varint), its id, then its base state's encoding.
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

    pub fn last_seen_ms(&self) -> i64 {
        let mut t = [0; 8];
        t.copy_from_slice(&self.0[..8]);
        i64::from_le_bytes(t)
    }

    /// (Where the id starts, where it ends.)
    fn id_range(&self) -> (usize, usize) {
        let mut rest = &self.0[8..];
        let len = decode_varint(&mut rest).expect("written by Frozen::new") as usize;
        let start = self.0.len() - rest.len();
        (start, start + len)
    }

    fn id_bytes(&self) -> &[u8] {
        let (start, end) = self.id_range();
        &self.0[start..end]
    }

    pub fn id(&self) -> &str {
        std::str::from_utf8(self.id_bytes()).expect("written from a str")
    }

    /// The base state's changelog encoding.
    pub fn base(&self) -> &[u8] {
        &self.0[self.id_range().1..]
    }
}

/// The cold customers of one join partition, by id.
#[derive(Debug, Default)]
pub(super) struct ColdCustomers {
    table: hashbrown::HashTable<Frozen>,
    hasher: foldhash::fast::RandomState,
}

impl ColdCustomers {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Keeps `f`, in place of any customer of the same id.
    pub fn insert(&mut self, f: Frozen) {
        let hasher = &self.hasher;
        let entry = self.table.entry(
            hasher.hash_one(f.id_bytes()),
            |x| x.id_bytes() == f.id_bytes(),
            // Growing rehashes what is kept the same way.
            |x| hasher.hash_one(x.id_bytes()),
        );
        entry.insert(f);
    }

    pub fn get(&self, id: &str) -> Option<&Frozen> {
        let hash = self.hasher.hash_one(id.as_bytes());
        self.table.find(hash, |x| x.id_bytes() == id.as_bytes())
    }

    pub fn remove(&mut self, id: &str) -> Option<Frozen> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let found = self
            .table
            .find_entry(hash, |x| x.id_bytes() == id.as_bytes());
        found.ok().map(|e| e.remove().0)
    }

    /// Keeps the customers `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Frozen) -> bool) {
        self.table.retain(|f| keep(f));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Frozen> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(lifetime_value_minor: i64) -> JoinCustomerState {
        JoinCustomerState {
            lifetime_value_minor,
            applied: vec![1, u64::MAX],
            ..Default::default()
        }
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
            assert_eq!(f.last_seen_ms(), -(i as i64));
            let base = JoinCustomerState::decode(f.base()).expect("decodes");
            assert_eq!(base, state(i as i64));
        }
        assert!(cold.get("c-2").is_none());

        cold.insert(Frozen::new("c-1", 7, &state(70)));
        assert_eq!(cold.len(), 4);
        let f = cold.remove("c-1").expect("kept");
        assert_eq!((f.id(), f.last_seen_ms()), ("c-1", 7));
        assert_eq!(
            JoinCustomerState::decode(f.base()).expect("decodes"),
            state(70)
        );
        assert!(cold.remove("c-1").is_none());

        cold.retain(|f| f.id().is_empty());
        let left: Vec<_> = cold.iter().map(|f| f.id().to_owned()).collect();
        assert_eq!(left, [""]);
    }
}
