//! Lanyard's HTTP surface, laid out by audience:
//! - [`api`]: the admin JSON API under `/api/v1`, one module per resource, with its OpenAPI
//!   document made from the same route list;
//! - [`device`]: what Macs call — service discovery, the enrollment endpoint, SCEP, check-in and
//!   the command endpoint;
//! - [`enroll`]: the enrollment web pages the Mac shows (password sign-in and its OpenID
//!   Connect leg);
//! - [`portal`]: the administrators' web portal;
//! - beside them [`health`] and `/metrics`, and what the audiences share: [`error`] (the one
//!   mapping from a domain error to an answer), [`html`] (the template macro and page pieces),
//!   [`auth`] (session cookies, secret comparison), [`client`] (the client address behind
//!   proxies) and [`text_input`] (NUL refusal).
//!
//! HTML is written with `maud` templates (`html!`), checked at compile time and escaping every
//! spliced value by default; the layouts, the notice, the pager and the CSRF field are
//! components returning `Markup`. No page builds HTML by joining strings.
//!
//! Owns: routing, request extraction (bounded bodies, typed JSON with the API's error shape,
//! authentication), rendering answers, and the single mapping from domain errors to HTTP
//! statuses.
//!
//! Depends on `lanyard-core` (every read and change goes through its services, never the store
//! directly) and on storage *types* it re-exposes; must not name a concrete database backend,
//! hold SQL, or make policy decisions such as validating commands (those belong to the domain).

pub mod api;
pub mod auth;
pub mod client;
pub mod device;
pub mod enroll;
pub mod error;
pub mod health;
pub mod html;
pub mod portal;
pub mod text_input;
pub mod tracing_layers;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use lanyard_core::enrollment::EnrollmentService;
use lanyard_core::Lanyard;

pub use api::ADMIN_BODY_LIMIT;
pub use error::{ApiError, ApiResult};
pub use health::HealthSettings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub lanyard: Lanyard,
    pub enrollment: EnrollmentService,
    /// Counts sign-ins started at identity providers per client address (in this process).
    pub oidc_start_limiter: enroll::oidc::StartLimiter,
    /// The proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: client::TrustedProxies,
    /// Enrollment sign-in through OpenID Connect identity providers.
    pub oidc: lanyard_core::identity_providers::OidcSignIns,
    /// Check-ins and the command channel.
    pub mdm: lanyard_core::mdm::MdmService,
    /// Seals uploaded secrets (the push certificate key).
    pub secrets: lanyard_pki::SecretBox,
    /// Apple Business Manager server tokens, discovery registration and device sync.
    pub abm: lanyard_core::abm::AbmService,
    /// Renders `/metrics` on this router; `None` when it is disabled or served on its own
    /// address ([`metrics_router`]).
    pub metrics: Option<MetricsEndpoint>,
    /// What `/healthz` checks besides the database.
    pub health: HealthSettings,
    /// Headers added to every answer.
    pub headers: ResponseHeaders,
    /// The CSR signing service push certificate requests go to from the portal and the API
    /// (`--signing-service-url`).
    pub signing_service: std::sync::Arc<lanyard_core::pushcert::SigningService>,
}

/// `/metrics`: the Prometheus text, optionally only for `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct MetricsEndpoint {
    pub handle: PrometheusHandle,
    /// When set, a scrape without this bearer token is refused (401).
    pub token: Option<String>,
}

/// Headers the one response-headers layer adds to every answer (see [`response_headers`]).
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders {
    /// `Strict-Transport-Security`, when set (Lanyard serving TLS itself, or asked to behind a
    /// proxy).
    hsts: Option<HeaderValue>,
}

impl ResponseHeaders {
    /// `Strict-Transport-Security: max-age=<seconds>` on every answer when given.
    pub fn with_hsts_max_age(seconds: Option<u64>) -> Self {
        Self {
            hsts: seconds.and_then(|s| HeaderValue::from_str(&format!("max-age={s}")).ok()),
        }
    }
}

/// Seconds a `503` asks the client to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 5;

/// The whole application router. Outermost first, every request gets: its request id and span
/// ([`tracing_layers`]), the response headers, the metrics, the NUL refusal, a panic caught as a
/// `500`, and — on every route but a waited-for ABM sync — the handler timeout.
pub fn router(state: AppState) -> Router {
    let bounded = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics_text))
        .merge(device::routes())
        .merge(enroll::routes())
        .merge(portal::routes())
        .merge(api::routes());
    let unbounded = api::long_running_routes();
    let app = tracing_layers::with_timeout(bounded)
        .merge(unbounded)
        .fallback(not_found);
    let app = tracing_layers::catching_panics(app)
        .layer(middleware::from_fn(text_input::refuse_nul))
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn_with_state(
            state.headers.clone(),
            response_headers,
        ));
    tracing_layers::with_request_ids(app).with_state(state)
}

/// A router serving only `/metrics`, for `--metrics-listen` (its own address, plain HTTP).
pub fn metrics_router(endpoint: MetricsEndpoint, headers: ResponseHeaders) -> Router {
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State(e): State<MetricsEndpoint>, req: Request| async move {
                    render_metrics(&e, req.headers())
                },
            ),
        )
        .fallback(not_found);
    let app = tracing_layers::catching_panics(tracing_layers::with_timeout(app))
        .layer(middleware::from_fn_with_state(headers, response_headers));
    tracing_layers::with_request_ids(app).with_state(endpoint)
}

async fn metrics_text(State(s): State<AppState>, req: Request) -> Response {
    match &s.metrics {
        Some(e) => render_metrics(e, req.headers()),
        None => ApiError::not_found("metrics are not served on this address").into_response(),
    }
}

fn render_metrics(e: &MetricsEndpoint, headers: &header::HeaderMap) -> Response {
    if let Some(token) = &e.token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if !auth::constant_time_eq(sent.as_bytes(), token.as_bytes()) {
            let mut res = ApiError::unauthorized("send Authorization: Bearer <metrics token>")
                .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
            return res;
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        e.handle.render(),
    )
        .into_response()
}

/// The one layer that sets the headers every answer carries:
/// - `X-Content-Type-Options: nosniff`;
/// - `Cache-Control: no-store` unless the handler chose a cache policy (only the portal's
///   static assets do): sign-in answers, API and session tokens, enrollment hand-offs,
///   profiles and flow pages carry secrets, and nothing else is worth caching;
/// - `Strict-Transport-Security` when configured (Lanyard serving TLS);
/// - `Retry-After` on every `503` (the database is unavailable, or `/healthz` failed).
pub async fn response_headers(
    State(policy): State<ResponseHeaders>,
    req: Request,
    next: Next,
) -> Response {
    let mut res = next.run(req).await;
    let unavailable = res.status() == StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(hsts) = &policy.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if unavailable && !h.contains_key(header::RETRY_AFTER) {
        h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    res
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
