//! Enrichment: reads accepted events, attaches what xoflow knows about the
//! customer and the moment, derives the CX fields, and writes
//! `EnrichedEvent`s for the sink.
//!
//! ```text
//! events topic ──► recv_batch ──► decode ──► join::Join ──► enriched topic
//!                                   │ undecodable                  │ acked
//!                                   └──► dead-letter topic         └──► commit offsets
//! ```
//!
//! Offsets are committed only after every output of a batch is acknowledged
//! (at-least-once); outputs carry the input's `event_id`, which the sink's
//! idempotent writes turn into an exactly-once effect.

pub mod config;
pub mod derive;
pub mod identity;
pub mod join;
pub mod scenario;
pub mod sentiment;
pub mod stage;
mod telemetry;

pub use config::EnrichConfig;
pub use stage::{EnrichError, run};
