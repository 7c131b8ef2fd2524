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

use std::sync::OnceLock;
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

/// What every handler can reach: [`Services`] behind one reference count, so that the state
/// axum hands each handler and middleware per request is one atomic increment, not one per
/// service it holds.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(std::sync::Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
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
    /// Declarative device management: declarations, sets and their assignments.
    pub declarations: lanyard_core::declarations::DeclarationService,
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
        .layer(middleware::from_fn_with_state(
            std::sync::Arc::new(RouteMetrics::new()),
            record_metrics,
        ))
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

/// Statuses whose request counters each device route keeps a handle for (the answers the
/// device routes give); another status is counted through the registry like any route.
const DEVICE_STATUSES: [u16; 11] = [200, 204, 400, 401, 403, 404, 405, 410, 413, 500, 503];

/// One device route's metric handles, each registered on its first use and kept.
struct RouteHandles {
    method: axum::http::Method,
    route: &'static str,
    duration: OnceLock<metrics::Histogram>,
    requests: [OnceLock<metrics::Counter>; DEVICE_STATUSES.len()],
}

impl RouteHandles {
    fn record(&self, status: u16, seconds: f64) {
        let method = || self.method.as_str().to_owned();
        let counter = || {
            metrics::counter!("lanyard_http_requests_total", "route" => self.route,
                "method" => method(), "status" => status.to_string())
        };
        match DEVICE_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.requests[i].get_or_init(counter).increment(1),
            None => counter().increment(1),
        }
        self.duration
            .get_or_init(|| {
                metrics::histogram!("lanyard_http_request_duration_seconds",
                    "route" => self.route, "method" => method())
            })
            .record(seconds);
    }
}

/// The request metrics' handles for the device routes ([`device::DEVICE_ROUTES`]): the requests
/// Macs make — most of the traffic — record their count and latency through handles kept here,
/// without building label strings or looking the series up per request. The series are the
/// same as those [`record_metrics`] names for any other route; a series appears on its first
/// request, as for other routes. Made with the router, after the recorder is installed.
struct RouteMetrics {
    device: Vec<RouteHandles>,
}

impl RouteMetrics {
    fn new() -> Self {
        let device = device::DEVICE_ROUTES
            .iter()
            .map(|(method, route)| RouteHandles {
                method: method.clone(),
                route,
                duration: OnceLock::new(),
                requests: [const { OnceLock::new() }; DEVICE_STATUSES.len()],
            })
            .collect();
        Self { device }
    }

    fn device(&self, method: &axum::http::Method, route: &str) -> Option<&RouteHandles> {
        self.device
            .iter()
            .find(|h| h.method == method && h.route == route)
    }
}

/// Counts requests and their latency by route and status (route templates, never raw paths, so
/// identifiers do not become label values). Device routes use the handles registered ahead
/// ([`RouteMetrics`]); other routes name their series per request.
async fn record_metrics(
    State(handles): State<std::sync::Arc<RouteMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let matched = req.extensions().get::<MatchedPath>();
    if let Some(h) = matched.and_then(|p| handles.device(req.method(), p.as_str())) {
        let start = Instant::now();
        let res = next.run(req).await;
        h.record(res.status().as_u16(), start.elapsed().as_secs_f64());
        return res;
    }
    let route = matched
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
