//! The built-in console: a web page for a person, served by the admin
//! server at `/console`, beside `/metrics` and `/health/*`.
//!
//! ```text
//!  browser ──GET /console──────────────► index.html, console.js, console.css (embedded)
//!          ──GET /console/api/stages───► this process's /metrics + each `console.targets`
//!                                        /metrics, parsed and summed ([`scrape`])
//!          ──GET /console/api/cx───────► ClickHouse: the SQL of [`cx`]
//! ```
//!
//! The page polls the stages every 2 s and works the rates, the lag and the
//! freshness quantiles out of successive answers; it reads the CX overview
//! every 30 s. Everything it needs is in the binary (no CDN, no font
//! download), so it works on a machine with no internet. Nothing here
//! writes: the console only reads metrics and ClickHouse.

pub mod cx;
pub mod scrape;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use xoflow_sink::ClickHouseConfig;

/// The console's settings (`[console]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at `/console` on the admin address.
    pub enabled: bool,
    /// Admin addresses (`host:port` or `http://host:port`) of other xoflow
    /// processes whose stages the console shows beside this process's own:
    /// a console run on its own (`xoflow console`) lists every stage here.
    pub targets: Vec<String>,
    /// The CX overview covers this many days back from today.
    pub days: u32,
    /// A store is ranked on a touchpoint once it has this many NPS answers
    /// there: one detractor out of one answer is no finding.
    pub min_store_responses: u64,
}

/// How long a target's `/metrics` may take before it is shown as down.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

static INDEX: &str = include_str!("assets/index.html");
static SCRIPT: &str = include_str!("assets/console.js");
static STYLE: &str = include_str!("assets/console.css");

#[derive(Clone)]
struct Console {
    cfg: Arc<ConsoleConfig>,
    clickhouse: clickhouse::Client,
    prometheus: Option<PrometheusHandle>,
}

/// The console's routes, to merge into the admin router.
pub fn router(
    cfg: ConsoleConfig,
    clickhouse: &ClickHouseConfig,
    prometheus: Option<PrometheusHandle>,
) -> Router {
    let state = Console {
        cfg: Arc::new(cfg),
        clickhouse: clickhouse.client(),
        prometheus,
    };
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/console") }))
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/console/api/stages", get(stages))
        .route("/console/api/cx", get(cx_overview))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn stages(State(c): State<Console>) -> Json<scrape::View> {
    let mut sources = Vec::with_capacity(c.cfg.targets.len() + 1);
    if let Some(h) = &c.prometheus {
        sources.push(scrape::Source {
            target: "this process".to_owned(),
            text: Some(h.render()),
        });
    }
    let fetched = futures_lite_join(c.cfg.targets.clone().into_iter().map(|t| async move {
        scrape::Source {
            text: scrape::fetch(&t, SCRAPE_TIMEOUT).await,
            target: t,
        }
    }))
    .await;
    sources.extend(fetched);
    Json(scrape::View::of(
        &sources,
        xoflow_common::clock::now_unix_millis(),
    ))
}

/// Awaits every future, concurrently (no `futures` dependency needed for
/// a handful of scrapes).
async fn futures_lite_join<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

async fn cx_overview(State(c): State<Console>) -> Response {
    match cx::overview(&c.clickhouse, c.cfg.days, c.cfg.min_store_responses).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => {
            tracing::debug!(error = %e, "console: ClickHouse did not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": e.to_string() })),
            )
                .into_response()
        }
    }
}
