//! The collectors' core: how a request's records become Kafka records.
//!
//! Every entry point (gRPC, HTTP, source-native HTTP, bulk import) decodes
//! its input into [`Record`]s and hands them to the [`Ingestor`], which
//! judges the batch ([`verdict::handle_batch`]: key check, normalisation,
//! in-batch dedup, encoding, dead letters), delivers it and answers one
//! `RecordResult` per record.
//!
//! ```text
//! Vec<Record> ──► authorise ──► normalise ──► dedup ──► EncodedBatch ──► Deliver (events / backfill)
//!                     └────────────┴────────────┴──► DeadLetter ──────► Deliver (dead letters)
//! ```

mod ingestor;
mod record;
pub mod verdict;

pub use ingestor::{Ingestor, finish, response};
pub use record::Record;
pub use verdict::{Verdict, handle_batch};
