//! Lanyard's HTTP surface: the admin JSON API (`/api/v1`, with OpenAPI), health and metrics,
//! and — as the product grows — the device-facing routes and the portal.
//!
//! Owns: routing, request extraction (bounded bodies, typed JSON with the API's error shape,
//! authentication), and the single mapping from domain errors to HTTP statuses.
//!
//! Depends on `lanyard-core` and the storage *traits*; must not name a concrete database
//! backend, hold SQL, or make policy decisions (those belong to the domain).

pub mod admin_api;
pub mod auth;
pub mod client;
pub mod device;
pub mod error;
pub mod idp_api;
pub mod oidc_pages;
pub mod pages;
pub mod portal;
pub mod server_tokens;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use lanyard_core::enrollment::EnrollmentService;
use lanyard_core::Lanyard;

pub use error::{ApiError, ApiResult};

/// The largest request body the admin API accepts.
pub const ADMIN_BODY_LIMIT: usize = 256 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub lanyard: Lanyard,
    pub enrollment: EnrollmentService,
    /// Counts sign-ins started at identity providers per client address (in this process).
    pub oidc_start_limiter: oidc_pages::StartLimiter,
    /// The proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: client::TrustedProxies,
    /// Enrollment sign-in through OpenID Connect identity providers.
    pub oidc: lanyard_core::identity_providers::OidcSignIns,
    /// Check-ins and the command channel.
    pub mdm: lanyard_core::mdm::MdmService,
    /// Seals uploaded secrets (the push certificate key).
    pub secrets: lanyard_pki::SecretBox,
    /// Apple Business Manager server tokens, discovery registration and device sync.
    pub abm: lanyard_core::server_tokens::AbmService,
    /// Renders `/metrics`; `None` disables the endpoint (e.g. in unit tests).
    pub metrics: Option<PrometheusHandle>,
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(device::routes())
        .merge(pages::routes())
        .merge(oidc_pages::routes())
        .merge(portal::routes())
        .nest(
            "/api/v1",
            admin_api::routes()
                .merge(idp_api::routes())
                .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT)),
        )
        .fallback(not_found)
        .layer(middleware::from_fn(record_metrics))
        .with_state(state)
}

async fn healthz(State(s): State<AppState>) -> Response {
    let backend = s.lanyard.store().backend();
    match s.lanyard.store().ping().await {
        Ok(()) => Json(json!({"status": "ok", "database": backend})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "database": backend})),
            )
                .into_response()
        }
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::not_found("metrics are disabled").into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Counts requests and their latency by route and status (route templates, never raw paths, so
/// identifiers do not become label values).
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("lanyard_http_requests_total", "route" => route.clone(),
        "method" => method.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("lanyard_http_request_duration_seconds", "route" => route,
        "method" => method)
    .record(start.elapsed().as_secs_f64());
    res
}
