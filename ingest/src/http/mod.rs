//! The HTTP collector (axum): the same per-record verdicts as gRPC, for
//! sources that cannot speak gRPC.
//!
//! - `POST /v1/events`: proto3 canonical JSON of `xoflow.v1.Event` — one
//!   object, an array, or NDJSON; `Content-Encoding: gzip` accepted. Answers
//!   `IngestResponse` as canonical JSON.
//! - `POST /v1/sources/{kind}/{source}`: a source's native JSON (see
//!   [`crate::sources`]), same framing ([`crate::framing`]) and answer.
//! - `GET /openapi.yaml`: the committed OpenAPI document.
//!
//! Whole-request failures map through [`crate::IngestError`]: 413 for
//! bodies or batches over the limit, 400 for an empty body (`empty_body`),
//! 401 for a missing or unknown key, 408 for a body that stops arriving,
//! 429 with `Retry-After` when the in-flight budget is taken (checked
//! before the body is read, without waiting), 503 with `Retry-After` when
//! Kafka is unavailable or the request deadline passed. Connections are
//! served by [`listener`] (limits and timeouts).

mod body;
pub mod listener;

use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xoflow_common::admin::Readiness;
use xoflow_proto::EventKind;

use crate::{
    IngestError,
    auth::{Principal, key_from_headers},
    core::{Ingestor, Record, finish, response},
    delivery::Lane,
    framing::{decode_events, split_records},
    sources::{self, Origin},
};

/// The OpenAPI document of the HTTP collector.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

#[derive(Clone, Debug)]
struct AppState {
    ingestor: Ingestor,
    max_body_bytes: usize,
    body_read_timeout: Duration,
}

/// The routes, for serving or for in-process tests, with the default body
/// read timeout.
pub fn router(ingestor: Ingestor, max_body_bytes: usize) -> Router {
    router_with(ingestor, max_body_bytes, Duration::from_secs(30))
}

/// The routes with a body read timeout of the caller's.
pub fn router_with(
    ingestor: Ingestor,
    max_body_bytes: usize,
    body_read_timeout: Duration,
) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/sources/{kind}/{source}", post(post_source))
        .route("/openapi.yaml", get(openapi))
        .with_state(AppState {
            ingestor,
            max_body_bytes,
            body_read_timeout,
        })
}

/// Serves the HTTP collector on `listener` (HTTPS when `tls` is given)
/// until `stop` is cancelled, within the connection limits of
/// [`listener`].
pub async fn serve(
    listener: TcpListener,
    ingestor: Ingestor,
    cfg: &crate::IngestConfig,
    tls: Option<&crate::tls::Identity>,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = router_with(ingestor, cfg.max_body_bytes, cfg.body_read_timeout);
    let limits = listener::Limits {
        header_read_timeout: cfg.header_read_timeout,
        max_connections: cfg.max_connections,
    };
    let ready = readiness.clone();
    let draining = CancellationToken::new();
    let watch = {
        let draining = draining.clone();
        async move {
            stop.cancelled().await;
            ready.set(false);
            draining.cancel();
        }
    };
    readiness.set(true);
    let (served, ()) = tokio::join!(
        listener::serve(
            listener,
            tls.map(crate::tls::Identity::acceptor),
            app,
            limits,
            draining
        ),
        watch
    );
    served
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

fn principal(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, IngestError> {
    let get = |k: header::HeaderName| headers.get(k).and_then(|v| v.to_str().ok());
    state.ingestor.auth().authenticate(key_from_headers(
        get(header::HeaderName::from_static("x-api-key")),
        get(header::AUTHORIZATION),
    ))
}

async fn post_events(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let r = async {
        let principal = principal(&state, &headers)?;
        let _bytes_held = admit(&state, &headers)?;
        let bytes = read_body(&state, body, &headers).await?;
        let records = decode_events(&bytes, is_ndjson(&headers));
        ingest(&state, records, principal.as_ref()).await
    }
    .await;
    finish("http_events", started, &r);
    respond(r)
}

#[derive(Debug, serde::Deserialize)]
struct SourceQuery {
    /// The tenant, when no API key names it (auth = "none" only).
    #[serde(default)]
    tenant: Option<String>,
}

async fn post_source(
    State(state): State<AppState>,
    Path((kind, source)): Path<(String, String)>,
    Query(q): Query<SourceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = async {
        let principal = principal(&state, &headers)?;
        let kind = EventKind::parse(&kind).ok_or_else(|| {
            IngestError::BadRequest(format!(
                "unknown source kind {kind:?}: one of survey, call, social, order, click"
            ))
        })?;
        let _bytes_held = admit(&state, &headers)?;
        let bytes = read_body(&state, body, &headers).await?;
        let tenant = match (&principal, q.tenant.as_deref()) {
            (Some(p), _) => p.tenant.to_string(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => String::new(),
        };
        let origin = Origin {
            tenant: &tenant,
            source: &source,
        };
        let records = split_records(&bytes, is_ndjson(&headers))
            .into_iter()
            .map(|raw| match raw {
                Ok(slice) => sources::decode(kind, slice, origin),
                Err(r) => r,
            })
            .collect();
        ingest(&state, records, principal.as_ref()).await
    }
    .await;
    finish("http_source", started, &r);
    respond(r)
}

/// Takes the request's bytes from the in-flight budget before its body is
/// read, without waiting: 429 at once when they do not fit.
fn admit(state: &AppState, headers: &HeaderMap) -> Result<crate::core::Ticket, IngestError> {
    state
        .ingestor
        .admission()
        .admit_bytes(body::declared_or_max(headers, state.max_body_bytes))
}

async fn read_body(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
) -> Result<Vec<u8>, IngestError> {
    body::non_empty(body::read(body, headers, state.max_body_bytes, state.body_read_timeout).await?)
}

async fn ingest(
    state: &AppState,
    records: Vec<Record>,
    principal: Option<&Principal>,
) -> Result<xoflow_proto::v1::IngestResponse, IngestError> {
    let i = &state.ingestor;
    i.within_deadline(i.ingest(records, 0, principal, Lane::Live))
        .await
        .map(response)
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("ndjson") || ct.contains("jsonl"))
}

fn respond(r: Result<xoflow_proto::v1::IngestResponse, IngestError>) -> Response {
    match r {
        Ok(resp) => match serde_json::to_vec(&resp) {
            Ok(json) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response(),
            Err(e) => IngestError::Internal(format!("encoding the response: {e}")).into_response(),
        },
        Err(e) => e.into_response(),
    }
}
