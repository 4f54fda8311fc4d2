//! Enrichment: reads accepted events, resolves whom each belongs to, joins
//! experience events with what the customer did, derives the CX fields, and
//! writes `EnrichedEvent`s for the sink.
//!
//! ```text
//! events ─┬─────────── direct events (keyed by their own customer id) ─────┐
//!         └► stage (resolve) ──► repartition (the rest) ──► stage (join: join::Join per partition) ──► enriched
//!              │ identity::Links ◄── links topic                 │ state ◄──► changelog topic
//! ```
//!
//! [`join`] and [`identity`] are operators without network I/O (their
//! largest tables, the links and the cold customers, go to a
//! [`local_store`] on disk when given one); [`stage`] owns the
//! Kafka loops, the global link table, partition-local state and its
//! changelog. Offsets are committed only after every output of a batch is
//! acknowledged (at-least-once); outputs carry the input's `event_id`, which
//! the sink's idempotent writes turn into an exactly-once effect. Design and
//! guarantees: `docs/enrich.md`.

pub mod alert;
pub mod config;
pub mod derive;
pub mod erase;
pub mod identities;
pub mod identity;
pub mod join;
pub mod local_store;
pub mod sentiment;
pub mod stage;
mod telemetry;
pub mod tenancy;

pub use config::EnrichConfig;
pub use stage::{EnrichError, run};
