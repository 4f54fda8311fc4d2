//! Reading and framing HTTP bodies: the size limit (also after gzip), and
//! splitting one object, an array or NDJSON into records, each decoded on
//! its own so one bad line is refused alone.

use std::io::Read;

use axum::{
    body::Body,
    http::{HeaderMap, header},
};
use xoflow_proto::v1::Event;

use crate::{
    IngestError,
    batch::{JSON, Record},
    validate::{Reason, Violation},
};

/// The body, gunzipped when it says so, refused beyond `max` bytes.
pub(crate) async fn read(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<Vec<u8>, IngestError> {
    let raw = axum::body::to_bytes(body, max).await.map_err(|e| {
        // The only error of a well-formed upload is the length limit.
        tracing::debug!(error = %e, "request body refused");
        IngestError::BodyTooLarge { max }
    })?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::GzDecoder::new(&raw[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::BadRequest(format!("the gzip body cannot be read: {e}")))?;
    if out.len() > max {
        return Err(IngestError::BodyTooLarge { max });
    }
    Ok(out)
}

/// The records of a body: the elements of an array, one object, or the
/// lines of NDJSON. An element that cannot even be framed comes back as an
/// undecodable record in its place.
pub fn split_records(body: &[u8], ndjson: bool) -> Vec<Result<&[u8], Record>> {
    let trimmed = body.trim_ascii();
    if !ndjson && trimmed.first() == Some(&b'[') {
        return split_array(trimmed);
    }
    if !ndjson && serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok() {
        return vec![Ok(trimmed)];
    }
    trimmed
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty())
        .map(Ok)
        .collect()
}

/// The byte ranges of an array's elements, found with a streaming scan so
/// each element is decoded (and dead-lettered) as sent.
fn split_array(body: &[u8]) -> Vec<Result<&[u8], Record>> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let mut start = None;
    for (i, &b) in body.iter().enumerate() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                if depth == 1 && start.is_none() {
                    start = Some(i);
                }
            }
            b'[' | b'{' => {
                if depth == 1 && start.is_none() {
                    start = Some(i);
                }
                depth += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    if let Some(s) = start.take() {
                        out.push(Ok(body[s..i].trim_ascii()));
                    }
                    return out;
                }
            }
            b',' if depth == 1 => {
                if let Some(s) = start.take() {
                    out.push(Ok(body[s..i].trim_ascii()));
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => {
                if depth == 1 && start.is_none() {
                    start = Some(i);
                }
            }
        }
    }
    // Unterminated array: what was read is judged, the rest is refused.
    let rest = start.map_or(&body[body.len()..], |s| &body[s..]);
    out.push(Err(Record::undecodable(
        rest.to_vec(),
        JSON,
        Violation::new("", Reason::Decode, "the JSON array is not terminated"),
    )));
    out
}

/// Decodes canonical-JSON events, one record per element or line.
pub fn decode_events(body: &[u8], ndjson: bool) -> Vec<Record> {
    split_records(body, ndjson)
        .into_iter()
        .map(|r| match r {
            Ok(slice) => decode_event(slice),
            Err(r) => r,
        })
        .collect()
}

/// One canonical-JSON event, or why it is none, with the field path.
pub fn decode_event(slice: &[u8]) -> Record {
    if let Err(e) = std::str::from_utf8(slice) {
        return Record::undecodable(
            slice.to_vec(),
            JSON,
            Violation::new(
                "",
                Reason::Decode,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            ),
        );
    }
    match crate::sources::parse::<Event>(slice) {
        Ok(e) => Record {
            event: Some(e),
            decode_error: None,
            original: Some(slice.to_vec()),
            content_type: JSON,
            names: Vec::new(),
        },
        Err(v) => Record::undecodable(slice.to_vec(), JSON, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_of_objects_arrays_and_ndjson() {
        let one = split_records(br#" {"a": [1, {"b": "]"}]} "#, false);
        assert_eq!(one.len(), 1);
        let arr = split_records(br#"[{"a":"x,]"}, {"b":[1,2]} ,3]"#, false);
        let got: Vec<_> = arr.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(
            got,
            vec![
                Some(&br#"{"a":"x,]"}"#[..]),
                Some(&br#"{"b":[1,2]}"#[..]),
                Some(&b"3"[..])
            ]
        );
        let nd = split_records(b"{\"a\":1}\n\n{bad\n{\"c\":3}\n", false);
        assert_eq!(nd.len(), 3);
        let cut = split_records(br#"[{"a":1}, {"b":"#, false);
        assert!(cut[1].is_err());
    }

    #[test]
    fn canonical_json_errors_carry_their_path() {
        for (json, field, reason) in [
            (r#"{"eventId": 5}"#, "eventId", Reason::Invalid),
            (
                r#"{"occurredAt": "yesterday"}"#,
                "occurredAt",
                Reason::Invalid,
            ),
            (
                r#"{"order": {"status": "ORDER_STATUS_LOST"}}"#,
                "order.status",
                Reason::UnknownEnum,
            ),
            (
                r#"{"survey": {"answers": [{"score": "x"}]}}"#,
                "survey.answers[0].score",
                Reason::Invalid,
            ),
            (r#"{"tenant": "a""#, "", Reason::Decode),
        ] {
            let r = decode_event(json.as_bytes());
            let v = r.decode_error.expect(json);
            assert_eq!(
                (v.field.as_str(), v.reason),
                (field, reason),
                "{json}: {}",
                v.description
            );
        }
        let ok = decode_event(
            br#"{"eventId":"e1","tenant":"acme","occurredAt":"2025-11-14T10:00:00+08:00","order":{"orderId":"o","status":"ORDER_STATUS_PAID","amountMinor":"5600"}}"#,
        );
        let e = ok.event.expect("decoded");
        assert_eq!(e.occurred_at.expect("ts").seconds, 1_763_085_600);
    }
}
