//! Delivery: where accepted events and dead letters go once a batch is
//! judged.
//!
//! The [`Ingestor`](crate::Ingestor) hands over an [`EncodedBatch`] (keys
//! and protobuf payloads, back to back in one buffer) and a lane, and waits:
//! `Ok` means every record is durable, an error means none is acknowledged.
//! Dead letters are best effort: the caller has already been told why each
//! record was refused.
//!
//! Two implementations: [`KafkaDelivery`] (the process) and
//! [`MemoryDelivery`] (in-process tests of the collectors, no broker).

mod kafka;
mod memory;

pub use kafka::KafkaDelivery;
pub use memory::{Delivered, MemoryDelivery};

use std::{future::Future, ops::Range, pin::Pin};

use xoflow_proto::{
    Message,
    v1::{DeadLetter, Event},
};

use crate::IngestError;

/// A future returned by a [`Deliver`] method.
pub type DeliverFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which topic a batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Live traffic from the APIs.
    Live,
    /// Bulk imports of history.
    Backfill,
}

/// Where judged batches go. Object-safe so the collectors hold one
/// `Arc<dyn Deliver>` whatever is behind it.
pub trait Deliver: Send + Sync + std::fmt::Debug {
    /// Makes every record of `batch` durable on `lane`, or none of them.
    fn deliver<'a>(
        &'a self,
        batch: &'a EncodedBatch,
        lane: Lane,
    ) -> DeliverFuture<'a, Result<(), IngestError>>;

    /// Stores dead letters; failures are the implementation's to log and
    /// count.
    fn dead_letters<'a>(&'a self, letters: &'a [DeadLetter]) -> DeliverFuture<'a, ()>;
}

/// The accepted events of a batch, encoded back to back in one buffer.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    buf: Vec<u8>,
    /// Per record: the key's and the payload's range in `buf`.
    records: Vec<(Range<usize>, Range<usize>)>,
}

impl EncodedBatch {
    /// Room for `events` records of a typical size.
    pub fn with_capacity(events: usize) -> Self {
        Self {
            buf: Vec::with_capacity(events * 256),
            records: Vec::with_capacity(events),
        }
    }

    /// Appends `e`, keyed by its strongest customer key, unless it encodes
    /// to more than `max` bytes: then nothing is kept, and the length is
    /// returned. Measured from the encoding itself, so that the event is
    /// not sized a second time before it.
    pub fn push(&mut self, e: &Event, max: usize) -> Result<(), usize> {
        let key = e.partition_key().as_bytes();
        let k0 = self.buf.len();
        self.buf.extend_from_slice(key);
        let p0 = self.buf.len();
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = e.encode(&mut self.buf);
        let len = self.buf.len() - p0;
        if len > max {
            self.buf.truncate(k0);
            return Err(len);
        }
        self.records.push((k0..p0, p0..self.buf.len()));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Key and payload of each record.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.records
            .iter()
            .map(|(k, p)| (&self.buf[k.clone()], &self.buf[p.clone()]))
    }
}
