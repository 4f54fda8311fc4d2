//! Admission at the door: the in-flight budget (events and bytes) is taken
//! without waiting, before a request does any work, so overload answers
//! `RESOURCE_EXHAUSTED` / 429 at once instead of queueing callers behind
//! the ones already in flight (acknowledgements took 14-22 s that way, and
//! no caller was ever refused).
//!
//! ```text
//! HTTP: headers ──► bytes (Content-Length, or the body limit) ──► read ──► decode ─┐
//! gRPC: message ──► bytes (encoded length) ───────────────────────────────────────┤
//!                                                                                  ▼
//!                             events (records in the batch) ──► judge ──► deliver ──► answer
//! ```
//!
//! Both are `try_acquire`: a request never waits for budget. What it holds
//! is given back when its answer is ready (the [`Ticket`] is dropped).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{IngestError, telemetry};

/// The shared budget of requests being handled. Clones share it.
#[derive(Debug, Clone)]
pub struct Admission {
    events: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_events: usize,
    max_bytes: usize,
}

/// Budget held by one request until it is answered.
#[derive(Debug)]
pub struct Ticket {
    admission: Admission,
    events: Option<OwnedSemaphorePermit>,
    bytes: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// At most `max_events` events and `max_bytes` request bytes in flight.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        // Semaphores count at most `Semaphore::MAX_PERMITS`.
        let max_events = max_events.min(Semaphore::MAX_PERMITS);
        let max_bytes = max_bytes.min(Semaphore::MAX_PERMITS);
        Self {
            events: Arc::new(Semaphore::new(max_events)),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_events,
            max_bytes,
        }
    }

    /// A ticket holding nothing yet.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            admission: self.clone(),
            events: None,
            bytes: None,
        }
    }

    /// A ticket holding `bytes` of request, or RESOURCE_EXHAUSTED now.
    pub fn admit_bytes(&self, bytes: usize) -> Result<Ticket, IngestError> {
        let mut t = self.ticket();
        t.add_bytes(bytes)?;
        Ok(t)
    }

    fn gauges(&self) {
        telemetry::in_flight(
            self.max_events - self.events.available_permits(),
            self.max_bytes - self.bytes.available_permits(),
        );
    }
}

fn take(
    sem: &Arc<Semaphore>,
    n: usize,
    max: usize,
    held: &mut Option<OwnedSemaphorePermit>,
) -> Result<(), IngestError> {
    // More than the whole budget can never be admitted: it is refused like
    // any overload rather than waiting forever. (Config validation keeps
    // the batch and body limits below the budget.)
    let n32 = u32::try_from(n.min(max)).unwrap_or(u32::MAX);
    if n32 == 0 {
        return Ok(());
    }
    let permit = sem
        .clone()
        .try_acquire_many_owned(n32)
        .map_err(|_| IngestError::Overloaded { requested: n })?;
    match held {
        Some(p) => p.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

impl Ticket {
    /// Adds `n` bytes to what this request holds, or RESOURCE_EXHAUSTED now.
    pub fn add_bytes(&mut self, n: usize) -> Result<(), IngestError> {
        let a = &self.admission;
        take(&a.bytes, n, a.max_bytes, &mut self.bytes)?;
        a.gauges();
        Ok(())
    }

    /// Adds `n` events to what this request holds, or RESOURCE_EXHAUSTED
    /// now.
    pub fn add_events(&mut self, n: usize) -> Result<(), IngestError> {
        let a = &self.admission;
        take(&a.events, n, a.max_events, &mut self.events)?;
        a.gauges();
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.events = None;
        self.bytes = None;
        self.admission.gauges();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_taken_without_waiting_and_given_back_on_drop() {
        let a = Admission::new(10, 100);
        let mut t1 = a.admit_bytes(60).expect("fits");
        t1.add_events(8).expect("fits");
        assert!(matches!(
            a.admit_bytes(50),
            Err(IngestError::Overloaded { requested: 50 })
        ));
        let mut t2 = a.admit_bytes(40).expect("fits");
        assert!(t2.add_events(3).is_err());
        t2.add_events(2).expect("fits");
        drop(t1);
        a.admit_bytes(60).expect("given back");
        // More than the whole budget takes the whole budget, never waits.
        drop(t2);
        a.ticket().add_events(1_000).expect("whole budget");
    }
}
