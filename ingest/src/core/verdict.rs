//! The verdict on one batch, shared by every entry point: authorise each
//! record against the caller's key, validate and normalise it, refuse
//! duplicates within the batch, encode the accepted ones into one buffer,
//! and build a dead letter (PII-masked) for each refused one.
//!
//! Oversized values are never sent back or stored whole: an identifier
//! longer than any valid one is cut in the answer and in its dead letter
//! (saying so), and a dead letter is cut to fit one Kafka message (marked
//! in its description) rather than lost to `MessageSizeTooLarge`.
//!
//! Pure apart from the clock value passed in: no I/O, no metrics. The
//! [`Ingestor`](crate::Ingestor) adds delivery and telemetry.

use std::collections::HashSet;

use xoflow_common::dead_letter::{Builder, PROTOBUF, Reason, Stage};
use xoflow_proto::{
    Message,
    v1::{DeadLetter, Event, FieldViolation, RecordResult},
};

use super::Record;
use crate::{
    auth::Principal,
    delivery::EncodedBatch,
    normalise::{
        Normaliser, Violation,
        pii::{self, MaskCounts},
        redact_rejected,
    },
};

/// What one batch came to before delivery.
#[derive(Debug, Default)]
pub struct Verdict {
    /// One per submitted record, in order.
    pub results: Vec<RecordResult>,
    /// The accepted events, encoded and keyed, in order.
    pub accepted: EncodedBatch,
    /// Accepted events per `EventKind`.
    pub accepted_per_kind: [u64; 5],
    /// One per refused record.
    pub dead_letters: Vec<DeadLetter>,
    /// Refusals per reason (the first violation's), for bounded metric tags.
    pub rejected_per_reason: Vec<(Reason, u64)>,
    /// Spans of PII masked, per kind.
    pub masked: MaskCounts,
}

impl Verdict {
    fn count_rejection(&mut self, reason: Reason) {
        match self
            .rejected_per_reason
            .iter_mut()
            .find(|(r, _)| *r == reason)
        {
            Some((_, n)) => *n += 1,
            None => self.rejected_per_reason.push((reason, 1)),
        }
    }
}

/// Longest identifier echoed in an answer or a dead letter's origin: the
/// longest valid id (128 bytes) passes whole, anything longer is refused
/// anyway and is cut so that a 1 MB id is not sent back to its sender.
pub const MAX_ECHOED_ID_BYTES: usize = 128;

/// Largest encoded dead letter: below librdkafka's default
/// `message.max.bytes` (1,000,000) and the broker's (1,048,588), with room
/// for the record's key and headers. A larger one is cut to this.
pub const MAX_DEAD_LETTER_BYTES: usize = 900 * 1024;

/// Largest encoded event accepted: what one Kafka record holds with the
/// same room as a dead letter ([`MAX_DEAD_LETTER_BYTES`]). A larger one
/// (a transcript of many long segments, an order of thousands of lines)
/// would be refused by the producer after the batch's other events were
/// sent, and the caller answered an internal error for a batch partly
/// written.
pub const MAX_EVENT_BYTES: usize = MAX_DEAD_LETTER_BYTES;

/// Why a valid event too large for one Kafka record is refused, naming
/// its size.
fn too_long(len: usize) -> Violation {
    Violation::new(
        "",
        Reason::TooLong,
        format!(
            "the event encodes to {len} bytes, over the {MAX_EVENT_BYTES} one record may hold: split it (fewer segments, answers or items per event)"
        ),
    )
}

/// `id` as it may be echoed: whole when it is no longer than any valid id,
/// else its first bytes (on a character boundary) and how long it was.
pub fn echoed_id(id: String) -> String {
    if id.len() <= MAX_ECHOED_ID_BYTES {
        return id;
    }
    let cut = char_floor(&id, MAX_ECHOED_ID_BYTES);
    format!("{}…(truncated, {} bytes)", &id[..cut], id.len())
}

/// The largest index `<= at` on a character boundary of `s`
/// (`str::floor_char_boundary` is newer than the MSRV).
fn char_floor(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Cuts `d` to [`MAX_DEAD_LETTER_BYTES`]: the payload keeps its first bytes
/// and the description says how many of how many, so the refusal is never
/// lost and never mistaken for the whole record.
pub fn fit_dead_letter(d: &mut DeadLetter) {
    d.tenant = echoed_id(std::mem::take(&mut d.tenant));
    d.source = echoed_id(std::mem::take(&mut d.source));
    d.event_id = echoed_id(std::mem::take(&mut d.event_id));
    if d.description.len() > 4096 {
        let cut = char_floor(&d.description, 4096);
        d.description.truncate(cut);
        d.description.push('…');
    }
    let len = d.encoded_len();
    if len <= MAX_DEAD_LETTER_BYTES {
        return;
    }
    let total = d.payload.len();
    // The envelope without the payload, plus the marker and the payload's
    // own length prefix, must fit beside what is kept.
    let keep = MAX_DEAD_LETTER_BYTES.saturating_sub(len - total + 128);
    d.payload.truncate(keep);
    d.description = format!(
        "[truncated: payload keeps the first {keep} of {total} bytes] {}",
        d.description
    );
}

/// A record with its own verdict, before the batch-wide dedup.
type Judged = (Record, Result<(), Vec<Violation>>);

/// Checks the record against the key it was sent with: the tenant and
/// source default to the key's and may not differ from them.
fn authorise(e: &mut Event, p: &Principal, v: &mut Vec<Violation>) {
    if e.tenant.is_empty() {
        e.tenant = p.tenant.to_string();
    } else if e.tenant != *p.tenant {
        v.push(Violation::new(
            "tenant",
            Reason::Forbidden,
            "the API key may not write events of this tenant",
        ));
    }
    if e.source.is_empty() {
        e.source = p.source.to_string();
    } else if e.source != *p.source {
        v.push(Violation::new(
            "source",
            Reason::Forbidden,
            "the API key belongs to another source",
        ));
    }
}

/// Validates, normalises and encodes a batch.
pub fn handle_batch(
    n: &Normaliser,
    records: Vec<Record>,
    first_index: u32,
    principal: Option<&Principal>,
    now_ms: i64,
) -> Verdict {
    let mut v = Verdict {
        results: Vec::with_capacity(records.len()),
        ..Default::default()
    };
    // First pass: every record's own verdict.
    let mut outcomes: Vec<Judged> = records
        .into_iter()
        .map(|mut r| {
            let outcome = match (r.event.as_mut(), r.decode_error.take()) {
                (Some(e), None) => {
                    let mut auth = Vec::new();
                    if let Some(p) = principal {
                        authorise(e, p, &mut auth);
                    }
                    match n.normalise_record(e, now_ms, &r.names, &mut v.masked) {
                        Ok(()) if auth.is_empty() => Ok(()),
                        Ok(()) => Err(auth),
                        Err(more) => {
                            auth.extend(more);
                            Err(auth)
                        }
                    }
                }
                (_, Some(violation)) => Err(vec![violation]),
                (None, None) => Err(vec![Violation::new("", Reason::Decode, "empty record")]),
            };
            (r, outcome)
        })
        .collect();
    // Second pass: an id seen earlier in the batch is a duplicate.
    refuse_duplicates(&mut outcomes);
    v.accepted = EncodedBatch::with_capacity(outcomes.len());
    for (i, (r, outcome)) in outcomes.into_iter().enumerate() {
        let index = first_index.saturating_add(i as u32);
        // Encoded here, once: an event larger than a record holds is
        // refused as its encoding shows (after the in-batch duplicates:
        // a later copy of its id is a duplicate all the same).
        let outcome = match (outcome, &r.event) {
            (Ok(()), Some(e)) => v
                .accepted
                .push(e, MAX_EVENT_BYTES)
                .map_err(|len| vec![too_long(len)]),
            (outcome, _) => outcome,
        };
        match outcome {
            Ok(()) => {
                let Some(e) = r.event else { continue };
                if let Some(kind) = e.kind() {
                    v.accepted_per_kind[kind as usize] += 1;
                }
                v.results.push(RecordResult {
                    index,
                    event_id: e.event_id,
                    accepted: true,
                    violations: Vec::new(),
                });
            }
            Err(violations) => {
                let (tenant, source, event_id) = match (&r.event, &r.origin) {
                    (Some(e), _) => (e.tenant.clone(), e.source.clone(), e.event_id.clone()),
                    (None, Some((tenant, source))) => {
                        (tenant.clone(), source.clone(), String::new())
                    }
                    // Bytes that are no event, sent with a key: the key's.
                    (None, None) => principal
                        .map(|p| (p.tenant.to_string(), p.source.to_string(), String::new()))
                        .unwrap_or_default(),
                };
                // A description may quote the value at fault (serde's
                // "invalid type: integer `13800138000`"): masked like the
                // payload in the dead letter, not counted twice. The caller,
                // who sent the value, gets it as it is.
                let description = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                let description = pii::mask(&description, &r.names, &mut MaskCounts::default())
                    .unwrap_or(description);
                let (payload, content_type) = dead_letter_payload(r, &mut v.masked);
                let first = &violations[0];
                v.count_rejection(first.reason);
                let mut letter = Builder::new(Stage::Ingest, first.reason, now_ms)
                    .payload(payload, content_type)
                    .field(first.field.clone())
                    .description(description)
                    .origin(tenant, source, event_id.clone())
                    .build();
                fit_dead_letter(&mut letter);
                v.dead_letters.push(letter);
                v.results.push(RecordResult {
                    index,
                    event_id: echoed_id(event_id),
                    accepted: false,
                    violations: violations
                        .into_iter()
                        .map(|v| FieldViolation {
                            field: v.field,
                            reason: v.reason.as_str().into(),
                            description: v.description,
                        })
                        .collect(),
                });
            }
        }
    }
    v
}

/// The bytes a dead letter keeps: the original as received, with PII
/// masked, because the dead-letter topic is no less readable than the
/// events topic. Bytes that are not UTF-8 cannot be scanned as text and are
/// kept as they are.
fn dead_letter_payload(r: Record, masked: &mut MaskCounts) -> (Vec<u8>, &'static str) {
    match (r.original, r.event) {
        (Some(bytes), _) => match std::str::from_utf8(&bytes) {
            Ok(text) => match pii::mask(text, &r.names, masked) {
                Some(m) => (m.into_bytes(), r.content_type),
                None => (bytes, r.content_type),
            },
            Err(_) => (bytes, r.content_type),
        },
        (None, Some(mut e)) => {
            redact_rejected(&mut e, &r.names, masked);
            (e.encode_to_vec(), PROTOBUF)
        }
        (None, None) => (Vec::new(), r.content_type),
    }
}

/// Refuses every accepted record whose event id appeared earlier in the
/// batch. The set borrows the ids: no copy per event.
fn refuse_duplicates(outcomes: &mut [Judged]) {
    let mut seen: HashSet<&str> = HashSet::with_capacity(outcomes.len());
    let mut dups = Vec::new();
    for (i, (r, o)) in outcomes.iter().enumerate() {
        if let (Some(e), Ok(())) = (&r.event, o)
            && !seen.insert(e.event_id.as_str())
        {
            dups.push(i);
        }
    }
    for i in dups {
        let (r, o) = &mut outcomes[i];
        let id = r.event.as_ref().map(|e| e.event_id.as_str()).unwrap_or("");
        *o = Err(vec![Violation::new(
            "event_id",
            Reason::Duplicate,
            format!("event_id {id:?} appears earlier in this request"),
        )]);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use xoflow_proto::v1::{CallTranscript, Speaker, TranscriptSegment, event::Payload};

    use super::*;

    const NOW: i64 = 1_763_000_000_000;

    fn normaliser() -> Normaliser {
        Normaliser::new(
            b"0123456789abcdef",
            Duration::from_secs(300),
            Duration::from_secs(400 * 86_400),
        )
        .expect("key")
    }

    fn call(id: &str, segments: usize, chars: usize) -> Record {
        Record::event(Event {
            event_id: id.into(),
            tenant: "acme".into(),
            source: "cc".into(),
            occurred_at: Some(xoflow_proto::from_unix_millis(NOW - 1000)),
            payload: Some(Payload::Call(CallTranscript {
                call_id: format!("c-{id}"),
                segments: (0..segments)
                    .map(|i| TranscriptSegment {
                        speaker: Speaker::Customer as i32,
                        start_ms: i as u32 * 1000,
                        end_ms: i as u32 * 1000 + 900,
                        text: "好".repeat(chars / 3),
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    /// A record that is no event still names the tenant and source it was
    /// sent for in its dead letter: a native record's from the request, a
    /// canonical one's from the caller's key. Before, both were empty, and
    /// `xoflow replay --tenant` never found them.
    #[test]
    fn a_dead_letter_without_an_event_names_its_tenant_and_source() {
        let n = normaliser();
        let native = crate::sources::decode(
            xoflow_proto::EventKind::Call,
            br#"{"call_id": "c1", "segments": [{"speaker": "robot"}]}"#,
            crate::sources::Origin {
                tenant: "acme",
                source: "cc",
            },
        );
        let canonical = crate::framing::decode_events(b"{not json", false)
            .pop()
            .expect("record");
        let key = Principal {
            tenant: "acme".into(),
            source: "web".into(),
        };
        let v = handle_batch(&n, vec![native, canonical], 0, Some(&key), NOW);
        let origins: Vec<(&str, &str)> = v
            .dead_letters
            .iter()
            .map(|d| (d.tenant.as_str(), d.source.as_str()))
            .collect();
        assert_eq!(origins, [("acme", "cc"), ("acme", "web")]);
        // Neither held an event: the names came from elsewhere.
        assert!(v.dead_letters.iter().all(|d| d.event_id.is_empty()));
    }

    /// A dead letter's description is masked like its payload: serde's
    /// message quotes the value it could not take, here a phone number
    /// sent as a number, which reached the dead-letter topic and ClickHouse
    /// raw. The caller's own answer keeps the value.
    #[test]
    fn a_dead_letter_description_quotes_no_personal_value() {
        let n = normaliser();
        let records = crate::framing::decode_events(
            br#"{"event_id": "e1", "tenant": "acme", "customer": {"phone": 13800138000}}"#,
            false,
        );
        let v = handle_batch(&n, records, 0, None, NOW);
        assert!(!v.results[0].accepted);
        assert!(
            v.results[0].violations[0]
                .description
                .contains("13800138000"),
            "{:?}",
            v.results[0].violations
        );
        let letter = &v.dead_letters[0];
        assert!(
            !letter.description.contains("13800138000"),
            "{}",
            letter.description
        );
        assert!(
            letter.description.contains("[PHONE]"),
            "{}",
            letter.description
        );
    }

    /// An event valid field by field but too large for one Kafka record
    /// (20 segments of 60 KB: each within its own bound) is refused alone,
    /// `TOO_LONG`, with a dead letter, and the batch's other events are
    /// accepted. Before, it was accepted here, the producer refused it
    /// after queueing the others, and the caller got an internal error
    /// for a batch partly written.
    #[test]
    fn an_event_too_large_for_one_record_is_refused_alone() {
        let n = normaliser();
        let records = vec![call("small", 3, 300), call("large", 20, 60_000)];
        let v = handle_batch(&n, records, 0, None, NOW);
        assert!(v.results[0].accepted);
        assert!(!v.results[1].accepted);
        let why = &v.results[1].violations;
        assert_eq!(why.len(), 1, "{why:?}");
        assert_eq!(why[0].reason, "TOO_LONG");
        assert!(why[0].description.contains("encodes to"), "{why:?}");
        assert_eq!(v.dead_letters.len(), 1);
        assert!(v.dead_letters[0].encoded_len() <= MAX_DEAD_LETTER_BYTES);
    }
}
