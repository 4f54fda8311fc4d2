//! The case lifecycle API: people acknowledge and resolve the alerts their
//! department received, and BI reads the closed loop from ClickHouse.
//!
//! ```text
//! POST /v1/alerts/{id}/ack       {"by": "<who>", "note": "<text>"}   → 200 lifecycle
//! POST /v1/alerts/{id}/resolve   {"by": "<who>", "note": "<text>"}   → 200 lifecycle
//! GET  /v1/alerts/{id}                                               → 200 summary + lifecycle + deliveries
//! ```
//!
//! Authenticated like the collectors ([`auth`]): `x-api-key` or
//! `Authorization: Bearer`; no or an unknown key is 401; an alert of
//! another tenant than the key's is 404, like one that does not exist.
//! `by` is required (1-128 characters), `note` optional (at most 4096); a
//! body that breaks that is 400 with `{"error": ..., "field": ...}`. An
//! action is one row of `alert_actions`; the first acknowledgement and the
//! first resolution count: repeating either answers 200 with the first one
//! and records nothing. A resolve before any ack is allowed (the alert is
//! then resolved, not acknowledged). The lifecycle answer: `{"alert_id",
//! "status": "open"|"acknowledged"|"resolved", "acknowledged_at",
//! "acknowledged_by", "resolved_at", "resolved_by"}` (RFC 3339, or null).
//! ClickHouse unavailable: 503.

pub mod auth;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use xoflow_common::clock;

pub use auth::{ApiKeys, AuthError, Caller};

use crate::{
    store::{Action, ActionRow, AlertSummary, Lifecycle, Store, StoreError},
    telemetry,
    webhook::payload,
};

/// Longest `by`, in characters.
pub const MAX_BY_CHARS: usize = 128;
/// Longest `note`, in characters.
pub const MAX_NOTE_CHARS: usize = 4096;

#[derive(Clone)]
struct ApiState {
    store: Store,
    keys: ApiKeys,
    /// Serialises "read the alert's actions, record one if new": two
    /// requests to acknowledge the same alert at once record it once (per
    /// instance; across instances the views read the first row).
    acting: Arc<tokio::sync::Mutex<()>>,
}

/// The API's routes, for serving or tests.
pub fn router(store: Store, keys: ApiKeys) -> Router {
    Router::new()
        .route("/v1/alerts/{id}", get(show))
        .route("/v1/alerts/{id}/ack", post(ack))
        .route("/v1/alerts/{id}/resolve", post(resolve))
        .fallback(|| async { ApiError::NoRoute })
        .with_state(ApiState {
            store,
            keys,
            acting: Arc::default(),
        })
}

/// What a request can fail with, and its answer.
#[derive(Debug)]
enum ApiError {
    Unauthenticated(AuthError),
    Invalid { field: &'static str, error: String },
    NotFound,
    NoRoute,
    Unavailable(StoreError),
}

impl ApiError {
    const fn outcome(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Invalid { .. } => "invalid",
            ApiError::NotFound | ApiError::NoRoute => "not_found",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthenticated(e) => (
                StatusCode::UNAUTHORIZED,
                json!({ "error": e.to_string(), "field": null }),
            ),
            ApiError::Invalid { field, error } => (
                StatusCode::BAD_REQUEST,
                json!({ "error": error, "field": field }),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                json!({ "error": "no such alert", "field": null }),
            ),
            ApiError::NoRoute => (
                StatusCode::NOT_FOUND,
                json!({ "error": "no such route", "field": null }),
            ),
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, "case API: ClickHouse call failed");
                xoflow_common::telemetry::ErrorKind::ClickHouse
                    .count(crate::telemetry::Metric::Errors.name());
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": "ClickHouse unavailable; retry later", "field": null }),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// The `by` and `note` of an action.
#[derive(Debug, PartialEq, Eq)]
struct ActionBody {
    by: String,
    note: String,
}

/// Reads an action's body; pure.
fn parse_body(body: &[u8]) -> Result<ActionBody, ApiError> {
    let invalid = |field, error: &str| ApiError::Invalid {
        field,
        error: error.to_owned(),
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::Invalid {
        field: "body",
        error: format!("malformed JSON: {e}"),
    })?;
    let Some(obj) = v.as_object() else {
        return Err(invalid("body", "expected a JSON object"));
    };
    let by = match obj.get("by") {
        None | Some(Value::Null) => return Err(invalid("by", "required: who acts")),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(_) => return Err(invalid("by", "must be a string")),
    };
    if by.is_empty() {
        return Err(invalid("by", "must not be empty"));
    }
    if by.chars().count() > MAX_BY_CHARS {
        return Err(invalid("by", "at most 128 characters"));
    }
    let note = match obj.get("note") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("note", "must be a string")),
    };
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(invalid("note", "at most 4096 characters"));
    }
    Ok(ActionBody { by, note })
}

fn caller(keys: &ApiKeys, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    keys.authenticate(auth::key_from_headers(h("x-api-key"), h("authorization")))
        .map_err(ApiError::Unauthenticated)
}

/// The alert, if it exists and the caller may see it.
async fn visible(store: &Store, caller: &Caller, id: &str) -> Result<AlertSummary, ApiError> {
    match store.alert(id).await.map_err(ApiError::Unavailable)? {
        Some(a) if caller.may_see(&a.tenant) => Ok(a),
        _ => Err(ApiError::NotFound),
    }
}

async fn ack(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(s, id, headers, body, Action::Ack).await
}

async fn resolve(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(s, id, headers, body, Action::Resolve).await
}

async fn act(s: ApiState, id: String, headers: HeaderMap, body: Bytes, action: Action) -> Response {
    let result: Result<_, ApiError> = async {
        let caller = caller(&s.keys, &headers)?;
        let body = parse_body(&body)?;
        let alert = visible(&s.store, &caller, &id).await?;
        let _one_at_a_time = s.acting.lock().await;
        let mut lifecycle = s
            .store
            .lifecycle(&id)
            .await
            .map_err(ApiError::Unavailable)?;
        let slot = match action {
            Action::Ack => &mut lifecycle.acknowledged,
            Action::Resolve => &mut lifecycle.resolved,
        };
        if slot.is_some() {
            return Ok((lifecycle, "repeated"));
        }
        let at_ms = clock::now_unix_millis();
        let row = ActionRow {
            at: u32::try_from(at_ms.div_euclid(1000)).unwrap_or(0),
            at_ms,
            alert_id: alert.alert_id,
            tenant: alert.tenant,
            department: alert.department,
            action: action as i8,
            by: body.by,
            note: body.note,
        };
        s.store
            .insert_action(&row)
            .await
            .map_err(ApiError::Unavailable)?;
        tracing::info!(
            alert_id = %row.alert_id,
            tenant = %row.tenant,
            department = %row.department,
            action = action.as_str(),
            by = %row.by,
            "alert action recorded"
        );
        *slot = Some(row);
        Ok((lifecycle, "recorded"))
    }
    .await;
    match result {
        Ok((lifecycle, outcome)) => {
            telemetry::action(action.as_str(), outcome);
            (StatusCode::OK, Json(lifecycle_json(&id, &lifecycle))).into_response()
        }
        Err(e) => {
            telemetry::action(action.as_str(), e.outcome());
            e.into_response()
        }
    }
}

async fn show(State(s): State<ApiState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let result: Result<_, ApiError> = async {
        let caller = caller(&s.keys, &headers)?;
        let a = visible(&s.store, &caller, &id).await?;
        let lifecycle = s
            .store
            .lifecycle(&id)
            .await
            .map_err(ApiError::Unavailable)?;
        let deliveries = s
            .store
            .deliveries(&id)
            .await
            .map_err(ApiError::Unavailable)?;
        let mut out = lifecycle_json(&id, &lifecycle);
        if let Some(o) = out.as_object_mut() {
            o.insert("tenant".into(), json!(a.tenant));
            o.insert("department".into(), json!(a.department));
            o.insert("rule".into(), json!(a.rule));
            o.insert("severity".into(), json!(severity_of(a.severity)));
            o.insert("customer_id".into(), json!(a.customer_id));
            o.insert("summary".into(), json!(a.summary));
            o.insert("reasons".into(), json!(a.reasons));
            o.insert("raised_at".into(), json!(time(a.raised_ms)));
            o.insert(
                "resolution_note".into(),
                json!(lifecycle.resolved.as_ref().map(|r| &r.note)),
            );
            o.insert(
                "deliveries".into(),
                Value::Array(
                    deliveries
                        .iter()
                        .map(|d| {
                            json!({
                                "webhook": d.webhook,
                                "host": d.host,
                                "format": format_of(d.format),
                                "attempts": d.attempts,
                                "outcome": outcome_of(d.outcome),
                                "status": d.status,
                                "last_attempt_at": time(d.last_ms),
                            })
                        })
                        .collect(),
                ),
            );
        }
        Ok(out)
    }
    .await;
    match result {
        Ok(v) => {
            telemetry::action("get", "ok");
            (StatusCode::OK, Json(v)).into_response()
        }
        Err(e) => {
            telemetry::action("get", e.outcome());
            e.into_response()
        }
    }
}

/// The lifecycle answer.
fn lifecycle_json(id: &str, l: &Lifecycle) -> Value {
    let status = match (&l.acknowledged, &l.resolved) {
        (_, Some(_)) => "resolved",
        (Some(_), None) => "acknowledged",
        (None, None) => "open",
    };
    json!({
        "alert_id": id,
        "status": status,
        "acknowledged_at": l.acknowledged.as_ref().map(|r| time(r.at_ms)),
        "acknowledged_by": l.acknowledged.as_ref().map(|r| &r.by),
        "resolved_at": l.resolved.as_ref().map(|r| time(r.at_ms)),
        "resolved_by": l.resolved.as_ref().map(|r| &r.by),
    })
}

fn time(ms: i64) -> Option<String> {
    payload::rfc3339(Some(&xoflow_proto::from_unix_millis(ms)))
}

fn severity_of(code: i8) -> &'static str {
    payload::severity(i32::from(code))
}

fn format_of(code: i8) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|c| c.checked_sub(1))
        .and_then(|i| crate::config::Format::ALL.get(i))
        .map_or("none", |f| f.as_str())
}

fn outcome_of(code: i8) -> &'static str {
    match code {
        1 => "delivered",
        2 => "retry",
        3 => "dead",
        4 => "no_webhook",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<ActionBody, ApiError>) -> Result<ActionBody, &'static str> {
        r.map_err(|e| match e {
            ApiError::Invalid { field, .. } => field,
            _ => "?",
        })
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = |by: &str, note: &str| {
            Ok(ActionBody {
                by: by.into(),
                note: note.into(),
            })
        };
        let long_by = format!(r#"{{"by":"{}"}}"#, "名".repeat(129));
        let max_by = format!(r#"{{"by":"{}"}}"#, "名".repeat(128));
        let long_note = format!(r#"{{"by":"ann","note":"{}"}}"#, "x".repeat(4097));
        let max_note = format!(r#"{{"by":"ann","note":"{}"}}"#, "记".repeat(4096));
        let table: Vec<(&str, Result<ActionBody, &str>)> = vec![
            (
                r#"{"by":"ann","note":"called the customer"}"#,
                ok("ann", "called the customer"),
            ),
            (r#"{"by":" 王经理 "}"#, ok("王经理", "")),
            (r#"{"by":"ann","note":null}"#, ok("ann", "")),
            (r#"{"by":"ann","extra":1}"#, ok("ann", "")),
            ("{not json", Err("body")),
            ("", Err("body")),
            ("[1,2]", Err("body")),
            (r#"{"note":"x"}"#, Err("by")),
            (r#"{"by":null}"#, Err("by")),
            (r#"{"by":"  "}"#, Err("by")),
            (r#"{"by":7}"#, Err("by")),
            (&long_by, Err("by")),
            (&max_by, ok(&"名".repeat(128), "")),
            (r#"{"by":"ann","note":5}"#, Err("note")),
            (&long_note, Err("note")),
            (&max_note, ok("ann", &"记".repeat(4096))),
        ];
        for (body, want) in table {
            assert_eq!(field_of(parse_body(body.as_bytes())), want, "{body}");
        }
    }

    #[test]
    fn the_lifecycle_says_the_latest_state() {
        let row = |action: Action, at_ms: i64| ActionRow {
            at_ms,
            action: action as i8,
            by: "ann".into(),
            ..Default::default()
        };
        let open = lifecycle_json("a", &Lifecycle::default());
        assert_eq!(open["status"], "open");
        assert_eq!(open["acknowledged_at"], Value::Null);
        let acked = lifecycle_json(
            "a",
            &Lifecycle {
                acknowledged: Some(row(Action::Ack, 1_767_225_600_000)),
                resolved: None,
            },
        );
        assert_eq!(acked["status"], "acknowledged");
        assert_eq!(acked["acknowledged_at"], "2026-01-01T00:00:00.000Z");
        let resolved_first = lifecycle_json(
            "a",
            &Lifecycle {
                acknowledged: None,
                resolved: Some(row(Action::Resolve, 1_767_225_600_000)),
            },
        );
        assert_eq!(resolved_first["status"], "resolved");
        assert_eq!(resolved_first["acknowledged_at"], Value::Null);
        assert_eq!(resolved_first["resolved_by"], "ann");
        assert_eq!(format_of(2), "feishu");
        assert_eq!(format_of(0), "none");
        assert_eq!(outcome_of(4), "no_webhook");
    }
}
