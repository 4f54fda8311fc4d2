//! [`Deliver`] into memory: what the collectors would have written to Kafka,
//! kept for in-process tests to read back. Every batch is acknowledged
//! unless a failure was armed with [`MemoryDelivery::fail_next`].

use std::sync::{Arc, Mutex, MutexGuard};

use xoflow_proto::{
    Message,
    v1::{DeadLetter, Event},
};

use super::{Deliver, DeliverFuture, EncodedBatch, Lane};
use crate::IngestError;

/// One delivered record: its lane, key and event.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub lane: Lane,
    pub key: Vec<u8>,
    pub event: Event,
}

#[derive(Debug, Default)]
struct Stored {
    events: Vec<Delivered>,
    dead_letters: Vec<DeadLetter>,
    fail_next: Option<IngestError>,
}

/// An in-memory event log. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryDelivery {
    stored: Arc<Mutex<Stored>>,
}

impl MemoryDelivery {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Stored> {
        // A test that panicked while holding the lock left whole records.
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every accepted event so far, in delivery order.
    pub fn events(&self) -> Vec<Delivered> {
        self.lock().events.clone()
    }

    /// Every dead letter so far, in order.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead_letters.clone()
    }

    /// The next batch fails with `e` and nothing of it is kept.
    pub fn fail_next(&self, e: IngestError) {
        self.lock().fail_next = Some(e);
    }
}

impl Deliver for MemoryDelivery {
    fn deliver<'a>(
        &'a self,
        batch: &'a EncodedBatch,
        lane: Lane,
    ) -> DeliverFuture<'a, Result<(), IngestError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let mut stored = self.lock();
            if let Some(e) = stored.fail_next.take() {
                return Err(e);
            }
            for (key, payload) in batch.iter() {
                let event = Event::decode(payload).map_err(|e| {
                    IngestError::Internal(format!("an encoded event does not decode: {e}"))
                })?;
                stored.events.push(Delivered {
                    lane,
                    key: key.to_vec(),
                    event,
                });
            }
            Ok(())
        })
    }

    fn dead_letters<'a>(&'a self, letters: &'a [DeadLetter]) -> DeliverFuture<'a, ()> {
        Box::pin(async move {
            self.lock().dead_letters.extend_from_slice(letters);
        })
    }
}
