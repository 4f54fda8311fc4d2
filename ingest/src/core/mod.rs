//! The collectors' core: how a request's records become Kafka records.
//!
//! Every entry point (gRPC, HTTP, source-native HTTP, bulk import) decodes
//! its input into [`Record`]s and hands them to the [`Ingestor`], which
//! judges the batch ([`verdict::handle_batch`]: key check, normalisation,
//! in-batch dedup, encoding, dead letters), delivers it and answers one
//! `RecordResult` per record. [`admission`] takes the in-flight budget at
//! the door, without waiting; the ingestor bounds judging and delivery by
//! the request deadline.
//!
//! ```text
//! Vec<Record> ──► authorise ──► normalise ──► dedup ──► EncodedBatch ──► Deliver (events / backfill)
//!                     └────────────┴────────────┴──► DeadLetter ──────► Deliver (dead letters)
//! ```

pub mod admission;
mod ingestor;
mod record;
pub mod verdict;

pub use admission::{Admission, Ticket};
pub use ingestor::{Ingestor, finish, response};
pub use record::Record;
pub use verdict::{Verdict, handle_batch};
