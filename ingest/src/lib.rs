//! The collectors: the face of xoflow to the sources.
//!
//! Every submitted record gets its own verdict. A valid record is normalised
//! (UTC timestamps, weak identifiers hashed with a keyed hash, PII masked),
//! encoded as a protobuf `xoflow.v1.Event` and produced to the events topic
//! keyed by its strongest customer key; the caller is answered only once
//! Kafka has acknowledged it. An invalid record is answered with the field
//! at fault and a reason code, and a `DeadLetter` carrying the original
//! bytes (PII-masked) goes to the dead-letter topic.
//!
//! Under overload a request is refused at the door, never queued: its bytes
//! and events are taken from the in-flight budget without waiting
//! ([`core::admission`]), and judging and delivery are bounded by the
//! request deadline. The HTTP listener bounds connections and how long a
//! client may take to send ([`http::listener`]).
//!
//! ```text
//!  gRPC (grpc) ──────────────┐
//!  HTTP /v1/events ── framing┤
//!  HTTP /v1/sources ─ framing┼─► Vec<Record> ─► core::Ingestor ─► Deliver ─► events / backfill topic
//!        └─ sources::decode  │     authorise, normalise, dedup,      └────► dead-letter topic
//!  xoflow import ─── framing ┘     encode; per-record RecordResult
//! ```
//!
//! Reading order: [`run`] (config → Kafka → listeners → serving until
//! shutdown), [`config`], the hot path in [`core`] and [`normalise`], the
//! entry points ([`grpc`], [`http`], [`framing`], [`sources`], [`import`]),
//! [`delivery`] (Kafka, or memory for in-process tests), and [`error`], the
//! one place request failures become gRPC statuses and HTTP answers.

pub mod auth;
pub mod config;
pub mod core;
pub mod delivery;
pub mod error;
pub mod framing;
pub mod grpc;
pub mod http;
pub mod identities;
pub mod import;
pub mod normalise;
mod run;
pub mod sources;
pub mod telemetry;
pub mod tenant;
pub mod tls;

pub use crate::core::{Ingestor, Record};
pub use config::IngestConfig;
pub use delivery::{Deliver, KafkaDelivery, MemoryDelivery};
pub use error::IngestError;
pub use run::{Collectors, RunError, build, ingestor, run};
