//! Failures of whole collector requests, and the one place they become
//! gRPC statuses (with `google.rpc` details) and HTTP responses (JSON with
//! `Retry-After`). Per-record problems are not errors: they are
//! `RecordResult`s with field violations, and dead letters.

use std::time::Duration;

use tonic::{Code, Status};

/// How long a client should wait before retrying a transient failure.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a whole request could not be handled. Per-record problems are not
/// errors: they are `RecordResult`s with field violations.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Too many events are already waiting for Kafka.
    #[error("too many events in flight ({requested} requested); retry later")]
    Overloaded { requested: usize },
    /// The batch exceeds the configured maximum.
    #[error("batch of {got} events exceeds the maximum of {max}")]
    BatchTooLarge { got: usize, max: usize },
    /// The request body exceeds the configured maximum (after gzip).
    #[error("request body exceeds the maximum of {max} bytes")]
    BodyTooLarge { max: usize },
    /// The request has no body at all: nothing to judge, so no dead letter
    /// either (like a body that cannot be gunzipped).
    #[error("the request body is empty: send one JSON object, an array or NDJSON lines")]
    EmptyBody,
    /// The client went away (reset, closed) before its body was read; it is
    /// not waiting for an answer, but the count tells aborts from refusals.
    #[error("the client aborted the request before its body was read")]
    ClientAborted,
    /// The request as a whole cannot be read (bad gzip, unknown source kind).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No key, or a key that is not configured.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// Kafka did not acknowledge accepted records in time.
    #[error(
        "the event log is unavailable ({class}); this batch is not acknowledged; retry with the same event ids (on a stream, its earlier batches may already be written: sent again with the same ids, each event is stored once)"
    )]
    Unavailable { class: &'static str },
    /// Judging and delivering took longer than the request deadline;
    /// nothing in the request is acknowledged.
    #[error("the request was not acknowledged within {}s; nothing in it is acknowledged, retry with the same event ids", after.as_secs_f64())]
    DeadlineExceeded { after: Duration },
    /// A request body arrived slower than the body read timeout allows.
    #[error("the request body was not received within {}s", after.as_secs_f64())]
    BodyTimeout { after: Duration },
    /// A record that passed validation could not be encoded or produced for a
    /// reason retrying will not fix.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IngestError {
    /// Whether the client should retry the same request later.
    pub const fn is_transient(&self) -> bool {
        matches!(
            self,
            IngestError::Overloaded { .. }
                | IngestError::Unavailable { .. }
                | IngestError::DeadlineExceeded { .. }
        )
    }

    /// The bounded `outcome` metric tag.
    pub const fn code(&self) -> &'static str {
        match self {
            IngestError::Overloaded { .. } => "overloaded",
            IngestError::BatchTooLarge { .. } => "batch_too_large",
            IngestError::BodyTooLarge { .. } => "body_too_large",
            IngestError::BadRequest(_) => "bad_request",
            IngestError::EmptyBody => "empty_body",
            IngestError::ClientAborted => "client_aborted",
            IngestError::Unauthenticated(_) => "unauthenticated",
            IngestError::Unavailable { .. } => "unavailable",
            IngestError::DeadlineExceeded { .. } => "deadline_exceeded",
            IngestError::BodyTimeout { .. } => "body_timeout",
            IngestError::Internal(_) => "internal",
        }
    }

    /// The gRPC code.
    pub const fn grpc_code(&self) -> Code {
        match self {
            IngestError::Overloaded { .. } => Code::ResourceExhausted,
            IngestError::BatchTooLarge { .. }
            | IngestError::BodyTooLarge { .. }
            | IngestError::BadRequest(_)
            | IngestError::EmptyBody => Code::InvalidArgument,
            IngestError::ClientAborted => Code::Cancelled,
            IngestError::Unauthenticated(_) => Code::Unauthenticated,
            IngestError::Unavailable { .. } => Code::Unavailable,
            // The server's own bound on Kafka, not the caller's deadline:
            // to the caller the log was unavailable, and the remedy (retry
            // later with the same ids) is UNAVAILABLE's.
            IngestError::DeadlineExceeded { .. } => Code::Unavailable,
            IngestError::BodyTimeout { .. } => Code::DeadlineExceeded,
            IngestError::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status code.
    pub const fn http_status(&self) -> u16 {
        match self {
            IngestError::Overloaded { .. } => 429,
            IngestError::BatchTooLarge { .. } | IngestError::BodyTooLarge { .. } => 413,
            IngestError::BadRequest(_) | IngestError::EmptyBody | IngestError::ClientAborted => 400,
            IngestError::Unauthenticated(_) => 401,
            IngestError::Unavailable { .. } => 503,
            IngestError::DeadlineExceeded { .. } => 503,
            IngestError::BodyTimeout { .. } => 408,
            IngestError::Internal(_) => 500,
        }
    }
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        let mut details = tonic_types::ErrorDetails::new();
        if let IngestError::BatchTooLarge { .. } = &e {
            details.add_bad_request_violation("events", e.to_string());
        }
        if e.is_transient() {
            details.set_retry_info(Some(RETRY_AFTER));
        }
        use tonic_types::StatusExt;
        Status::with_error_details(e.grpc_code(), e.to_string(), details)
    }
}

impl axum::response::IntoResponse for IngestError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{HeaderValue, StatusCode, header};
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "code": self.code(),
            "message": self.to_string(),
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if self.is_transient() {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_maps_every_error() {
        let table = [
            (
                IngestError::Overloaded { requested: 1 },
                Code::ResourceExhausted,
                429,
                true,
            ),
            (
                IngestError::BatchTooLarge { got: 2, max: 1 },
                Code::InvalidArgument,
                413,
                false,
            ),
            (
                IngestError::BodyTooLarge { max: 1 },
                Code::InvalidArgument,
                413,
                false,
            ),
            (
                IngestError::BadRequest("x".into()),
                Code::InvalidArgument,
                400,
                false,
            ),
            (IngestError::EmptyBody, Code::InvalidArgument, 400, false),
            (IngestError::ClientAborted, Code::Cancelled, 400, false),
            (
                IngestError::Unauthenticated("x"),
                Code::Unauthenticated,
                401,
                false,
            ),
            (
                IngestError::Unavailable {
                    class: "unavailable",
                },
                Code::Unavailable,
                503,
                true,
            ),
            (
                IngestError::DeadlineExceeded {
                    after: Duration::from_secs(1),
                },
                Code::Unavailable,
                503,
                true,
            ),
            (
                IngestError::BodyTimeout {
                    after: Duration::from_secs(1),
                },
                Code::DeadlineExceeded,
                408,
                false,
            ),
            (
                IngestError::Internal("x".into()),
                Code::Internal,
                500,
                false,
            ),
        ];
        for (e, code, http, transient) in table {
            assert_eq!(e.grpc_code(), code, "{e}");
            assert_eq!(e.http_status(), http, "{e}");
            assert_eq!(e.is_transient(), transient, "{e}");
        }
    }
}
