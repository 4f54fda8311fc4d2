//! The collectors: the face of xoflow to the sources.
//!
//! Every submitted record gets its own verdict. A valid record is normalised
//! (UTC timestamps, weak identifiers hashed with a keyed hash), encoded as a
//! protobuf `xoflow.v1.Event` and produced to the events topic keyed by its
//! strongest customer key; the caller is answered only once Kafka has
//! acknowledged it. An invalid record is answered with the field at fault and
//! a reason code, and a `DeadLetter` carrying the original bytes goes to the
//! dead-letter topic.
//!
//! ```text
//! gRPC Ingest ──► validate::normalise ──► Delivery::deliver ──► Kafka events topic
//!                       │ violations                 └────────► dead-letter topic
//!                       └──► RecordResult { field, reason }
//! ```

pub mod auth;
pub mod batch;
pub mod config;
pub mod delivery;
pub mod error;
pub mod grpc;
pub mod http;
pub mod import;
pub mod lang;
pub mod pii;
pub mod sources;
mod telemetry;
pub mod tenant;
pub mod tls;
pub mod validate;

pub use batch::{Ingestor, Record};
pub use config::IngestConfig;
pub use delivery::Delivery;
pub use error::IngestError;
