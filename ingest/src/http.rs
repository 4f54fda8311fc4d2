//! The HTTP/JSON collector for webhooks: `POST /v1/events`.
//!
//! Accepts the proto3 canonical JSON form of `xoflow.v1.Event` — one
//! object, an array of objects, or NDJSON (one object per line) — optionally
//! gzip-compressed (`Content-Encoding: gzip`). Answers with the same
//! per-record results as the gRPC `Ingest` call, as JSON, once every accepted
//! record is durable in Kafka. A record that is not an event at all gets its
//! own `DECODE` verdict and a dead letter; it never fails its neighbours.
//!
//! Status codes: 200 with per-record results (some may be rejected); 400
//! for a body that is neither JSON nor NDJSON or a batch over the limit; 413
//! for a body over `ingest.max_message_bytes`; 429 (overloaded) and 503
//! (event log unavailable) with `Retry-After`, in which case nothing in the
//! request is acknowledged. The OpenAPI document is served at
//! `/openapi.yaml`.

use std::io::Read;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xoflow_common::admin::Readiness;
use xoflow_proto::v1::{DeadLetter, Event, FieldViolation, IngestResponse, RecordResult};

use crate::{IngestError, delivery::Lane, grpc::CollectorService, validate::Reason};

/// The OpenAPI 3 description of this endpoint.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

#[derive(Clone)]
struct HttpState {
    service: CollectorService,
}

/// The HTTP routes, for embedding or tests.
pub fn router(service: CollectorService, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route(
            "/openapi.yaml",
            get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(HttpState { service })
}

/// Serves the HTTP collector on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    service: CollectorService,
    max_body_bytes: usize,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<()> {
    readiness.set(true);
    let result = axum::serve(listener, router(service, max_body_bytes))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    readiness.set(false);
    result
}

/// One record of the body: an event, or why it is not one.
enum Parsed {
    Event(Box<Event>),
    Invalid { raw: String, error: String },
}

fn parse_record(raw: &str) -> Parsed {
    match serde_json::from_str::<Event>(raw) {
        Ok(e) => Parsed::Event(Box::new(e)),
        Err(e) => Parsed::Invalid {
            raw: raw.to_string(),
            error: e.to_string(),
        },
    }
}

/// Splits a body into records: an array, NDJSON, or one object.
fn parse_body(text: &str) -> Result<Vec<Parsed>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(trimmed)
            .map_err(|e| format!("not a JSON array of events: {e}"))?;
        return Ok(values.iter().map(|v| parse_record(v.get())).collect());
    }
    if trimmed.starts_with('{') {
        // One object, or one object per line (NDJSON).
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() > 1 {
            return Ok(lines.into_iter().map(parse_record).collect());
        }
        return Ok(vec![parse_record(trimmed)]);
    }
    Err("the body must be a JSON object, a JSON array, or NDJSON".into())
}

fn error_response(status: StatusCode, message: &str, retry_after: Option<u64>) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response();
    if let Some(s) = retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The one place ingest errors become HTTP answers.
fn ingest_error(e: IngestError) -> Response {
    let msg = e.to_string();
    match e {
        IngestError::Overloaded { .. } => {
            error_response(StatusCode::TOO_MANY_REQUESTS, &msg, Some(1))
        }
        IngestError::Unavailable { .. } | IngestError::ShuttingDown => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, &msg, Some(1))
        }
        IngestError::BatchTooLarge { .. } => error_response(StatusCode::BAD_REQUEST, &msg, None),
        IngestError::Internal(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &msg, None),
    }
}

async fn post_events(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let bytes = if gzip {
        let mut out = Vec::new();
        // Bound the inflated size as well as the compressed one.
        let limit = (body.len() as u64).saturating_mul(20).max(1 << 20);
        match flate2::read::GzDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out)
        {
            Ok(_) => out,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid gzip body: {e}"),
                    None,
                );
            }
        }
    } else {
        body.to_vec()
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("the body is not UTF-8: {e}"),
                None,
            );
        }
    };
    let records = match parse_body(text) {
        Ok(r) => r,
        Err(msg) => return error_response(StatusCode::BAD_REQUEST, &msg, None),
    };

    // Events go through the shared batch path; records that are not events
    // get their verdict here, at their position.
    let mut positions = Vec::with_capacity(records.len());
    let mut events = Vec::with_capacity(records.len());
    let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(records.len());
    let mut dead = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        match r {
            Parsed::Event(e) => {
                positions.push(i);
                events.push(*e);
                results.push(None);
            }
            Parsed::Invalid { raw, error } => {
                let field = field_of(&error);
                dead.push(DeadLetter {
                    payload: raw.into_bytes(),
                    content_type: "application/json".into(),
                    stage: "ingest".into(),
                    reason: Reason::Decode.as_str().into(),
                    field: field.clone(),
                    description: error.clone(),
                    ..Default::default()
                });
                results.push(Some(RecordResult {
                    index: i as u32,
                    event_id: String::new(),
                    accepted: false,
                    violations: vec![FieldViolation {
                        field,
                        reason: Reason::Decode.as_str().into(),
                        description: error,
                    }],
                }));
            }
        }
    }
    let verdicts = match state.service.ingest_batch(events, 0, Lane::Live).await {
        Ok(v) => v,
        Err(e) => return ingest_error(e),
    };
    state.service.dead_letters(&dead).await;
    for (mut r, pos) in verdicts.into_iter().zip(positions) {
        r.index = pos as u32;
        results[pos] = Some(r);
    }
    let results: Vec<RecordResult> = results.into_iter().flatten().collect();
    let accepted = results.iter().filter(|r| r.accepted).count() as u32;
    let response = IngestResponse {
        rejected: results.len() as u32 - accepted,
        accepted,
        results,
    };
    match serde_json::to_string(&response) {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    }
}

/// The field a JSON decoding error names, when it names one
/// ("unknown field `x`", "invalid value ... for field `y`").
fn field_of(error: &str) -> String {
    error
        .split('`')
        .nth(1)
        .filter(|f| !f.is_empty() && !f.contains(' '))
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_records() {
        let one = r#"{"eventId":"a","tenant":"t"}"#;
        assert_eq!(parse_body(one).map(|r| r.len()), Ok(1));
        let arr = r#"[{"eventId":"a"},{"eventId":"b"},{"nope":1}]"#;
        let parsed = parse_body(arr).expect("array");
        assert_eq!(parsed.len(), 3);
        assert!(matches!(parsed[2], Parsed::Invalid { .. }));
        let nd = "{\"eventId\":\"a\"}\n{\"eventId\":\"b\"}\n\n";
        assert_eq!(parse_body(nd).map(|r| r.len()), Ok(2));
        assert!(parse_body("hello").is_err());
    }

    #[test]
    fn decode_errors_name_their_field() {
        let Parsed::Invalid { error, .. } = parse_record(r#"{"eventId":"a","tenantz":"t"}"#) else {
            panic!("should not parse");
        };
        assert_eq!(field_of(&error), "tenantz", "{error}");
    }
}
