//! One submitted record as an entry point decoded it: what crosses from
//! the framing and source decoders into the verdict.

use xoflow_common::dead_letter::PROTOBUF;
use xoflow_proto::v1::Event;

use crate::normalise::Violation;

/// One submitted record as an entry point decoded it.
#[derive(Debug, Default)]
pub struct Record {
    /// The event, or why the bytes are no event at all.
    pub event: Option<Event>,
    /// Set when the record could not be decoded.
    pub decode_error: Option<Violation>,
    /// The record's bytes as received, for its dead letter; `None` for
    /// protobuf input, whose event is re-encoded instead.
    pub original: Option<Vec<u8>>,
    /// Content type of `original` (`dead_letter::{PROTOBUF, JSON}`).
    pub content_type: &'static str,
    /// Personal names the source marked (respondent, caller), masked in
    /// every free-text field of this record.
    pub names: Vec<String>,
    /// The tenant and source the record was sent for, when it holds no
    /// event to say so (a native record that did not decode): its dead
    /// letter carries them, so that a replay for the tenant finds it.
    pub origin: Option<(String, String)>,
}

impl Record {
    /// A decoded event with nothing else known.
    pub fn event(e: Event) -> Self {
        Self {
            event: Some(e),
            content_type: PROTOBUF,
            ..Default::default()
        }
    }

    /// A decoded event with its bytes as received and the names its source
    /// marked personal.
    pub fn decoded(
        e: Event,
        original: Vec<u8>,
        content_type: &'static str,
        names: Vec<String>,
    ) -> Self {
        Self {
            event: Some(e),
            decode_error: None,
            original: Some(original),
            content_type,
            names,
            origin: None,
        }
    }

    /// Bytes that are not an event.
    pub fn undecodable(original: Vec<u8>, content_type: &'static str, v: Violation) -> Self {
        Self {
            event: None,
            decode_error: Some(v),
            original: Some(original),
            content_type,
            names: Vec::new(),
            origin: None,
        }
    }

    /// The record, sent for `tenant` and `source` (see [`Record::origin`]).
    pub fn sent_for(mut self, tenant: &str, source: &str) -> Self {
        self.origin = Some((tenant.to_owned(), source.to_owned()));
        self
    }
}
