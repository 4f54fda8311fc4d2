//! The v1 event contract shared by every stage.
//!
//! The stages never depend on one another: their contract is the protobuf on
//! Kafka, and this crate is that contract. It holds the generated types
//! (`xoflow.v1`), the collector gRPC service, the descriptor set for gRPC
//! reflection, and the small pure helpers every stage needs to read an event
//! the same way (its kind, its partition key, timestamps).

pub mod v1 {
    //! Generated from `proto/xoflow/v1/*.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("xoflow.v1");
    include!(concat!(env!("OUT_DIR"), "/xoflow.v1.serde.rs"));

    /// Encoded `FileDescriptorSet` of the v1 protos, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("xoflow_v1_descriptor");
}

mod event;

pub use event::{
    DO_NOT_CONTACT_ATTRIBUTE, EventKind, attribute_says_yes, from_unix_millis, to_unix_millis,
};
pub use pbjson_types::Timestamp;
pub use prost::{Message, encoding};
