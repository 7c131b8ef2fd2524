//! The admin JSON API under `/api/v1`, one module per resource: thin handlers (JSON → domain
//! call → JSON). Each module lists its routes once, with `api_routes!`, which takes a
//! handler's path and methods from its `#[utoipa::path]`: the router `lanyard serve` answers
//! with and the OpenAPI document served at `/api/v1/openapi.json` are made from that one list
//! and cannot drift. The router is built without the documentation, which is made only when the
//! document is first asked for (building it ran 0.7 MB of code at every start).
//!
//! This module holds what every resource shares: the extractors whose rejections use the API's
//! error shape ([`ApiJson`], [`ApiQuery`], [`ApiPath`]), the caller ([`Authed`]) and the router.

/// One path's handlers (idents of functions with `#[utoipa::path]`), as an [`ApiRoutes`]: routed
/// on the path and methods their documentation names, and documented through
/// `utoipa_axum::routes!`. Handlers on different paths are each routed to all of them, as
/// `utoipa_axum::routes!` does; list one path's handlers together.
macro_rules! api_routes {
    ($($handler:ident),+ $(,)?) => {
        $crate::api::ApiRoutes {
            routed: |router| {
                use utoipa::Path as _;
                use utoipa_axum::PathItemExt as _;
                let mut paths: Vec<String> = Vec::new();
                let mut method_router = axum::routing::MethodRouter::new();
                $(
                    utoipa_axum::paste! {
                        let path = [<__path_ $handler>]::path();
                        if !paths.contains(&path) {
                            paths.push(path);
                        }
                        for method in [<__path_ $handler>]::methods() {
                            method_router = method_router.on(method.to_method_filter(), $handler);
                        }
                    }
                )+
                paths.iter().fold(router, |router, path| {
                    let path = if path.is_empty() { "/" } else { path.as_str() };
                    router.route(path, method_router.clone())
                })
            },
            documented: |router| router.routes(utoipa_axum::routes!($($handler),+)),
        }
    };
}

mod abm;
mod admins;
mod api_tokens;
mod audit;
mod commands;
pub(crate) mod declarations;
mod devices;
mod identity_providers;
mod push_certificate;
mod settings;
mod users;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use lanyard_core::{Actor, CoreError};

use crate::auth::{constant_time_eq, cookie, CSRF_HEADER, SESSION_COOKIE};
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// The largest request body the admin API accepts.
pub const ADMIN_BODY_LIMIT: usize = 256 * 1024;

/// JSON body extractor whose rejections use the API's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Query extractor whose rejections use the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor whose rejections use the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The authenticated administrator behind an API request: an API token
/// (`Authorization: Bearer lyt_…`), a session token (`Authorization: Bearer lys_…`), or the
/// portal's session cookie. Cookie-authenticated requests that change something must carry the
/// session's CSRF token in `X-CSRF-Token`; bearer tokens are not sent by browsers on their own,
/// so they need none.
pub struct Authed(pub Actor);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let lanyard = &state.lanyard;
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or_else(|| ApiError::unauthorized("use Authorization: Bearer <token>"))?
                .trim();
            if token.starts_with("lys_") {
                let (actor, _) = lanyard.actor_for_session(token).await?;
                return Ok(Authed(actor));
            }
            return Ok(Authed(lanyard.actor_for_api_token(token).await?));
        }
        if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
            let (actor, csrf) = lanyard.actor_for_session(secret).await?;
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                let sent = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                    return Err(ApiError::forbidden(
                        "missing or wrong CSRF token; reload the page and try again",
                    ));
                }
            }
            return Ok(Authed(actor));
        }
        Err(ApiError::unauthorized(
            "sign in or send Authorization: Bearer <API token>",
        ))
    }
}

/// What unlocking an administrator or a user forgot.
#[derive(Serialize, ToSchema)]
pub struct Unlocked {
    /// How many client addresses had failed sign-ins counted against the name.
    pub addresses: u64,
}

/// One path of the API as both kinds of router take it (made by `api_routes!`).
pub(crate) struct ApiRoutes {
    /// Adds the handlers on their documented path and methods; makes no documentation.
    pub routed: fn(Router<AppState>) -> Router<AppState>,
    /// Adds them through `utoipa_axum::routes!`, with their documentation.
    pub documented: fn(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
}

/// What the resources' `routes` build: the plain router `lanyard serve` answers with, or the
/// router with the OpenAPI document, from the same lists.
pub(crate) trait ApiRouter: Sized {
    fn new() -> Self;
    /// Adds one path's handlers.
    fn routes(self, routes: ApiRoutes) -> Self;
    fn merge(self, other: Self) -> Self;
    /// Bounds the request bodies of the routes added so far.
    fn body_limit(self, bytes: usize) -> Self;
}

impl ApiRouter for Router<AppState> {
    fn new() -> Self {
        Router::new()
    }
    fn routes(self, routes: ApiRoutes) -> Self {
        (routes.routed)(self)
    }
    fn merge(self, other: Self) -> Self {
        Router::merge(self, other)
    }
    fn body_limit(self, bytes: usize) -> Self {
        self.layer(DefaultBodyLimit::max(bytes))
    }
}

impl ApiRouter for OpenApiRouter<AppState> {
    fn new() -> Self {
        OpenApiRouter::new()
    }
    fn routes(self, routes: ApiRoutes) -> Self {
        (routes.documented)(self)
    }
    fn merge(self, other: Self) -> Self {
        OpenApiRouter::merge(self, other)
    }
    fn body_limit(self, bytes: usize) -> Self {
        self.layer(DefaultBodyLimit::max(bytes))
    }
}

/// Every route of the API bounded by the handler timeout, added to `root`.
fn api<R: ApiRouter>(root: R) -> R {
    root.merge(admins::routes())
        .merge(users::routes())
        .merge(settings::routes())
        .merge(api_tokens::routes())
        .merge(devices::routes())
        .merge(commands::routes())
        .merge(declarations::routes())
        .merge(push_certificate::routes())
        .merge(identity_providers::routes())
        .merge(abm::routes())
        .merge(audit::routes())
}

/// The routes that may outlast the handler timeout (a waited-for ABM sync).
fn long_running<R: ApiRouter>() -> R {
    abm::long_running_routes()
}

/// The admin API's routes within the handler timeout (full paths, `/api/v1/…`) and
/// `/api/v1/openapi.json`, every body held to [`ADMIN_BODY_LIMIT`] unless a route sets its own.
/// No documentation is made here: the served document is made on the first request for it.
pub fn routes() -> Router<AppState> {
    api(Router::new())
        .route("/api/v1/openapi.json", get(openapi_json))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
}

/// `GET /api/v1/openapi.json`: the document, serialised once on the first request.
async fn openapi_json() -> Result<Response, ApiError> {
    static DOCUMENT: OnceLock<Result<Bytes, String>> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        serde_json::to_vec(&openapi_document())
            .map(Bytes::from)
            .map_err(|e| format!("the OpenAPI document does not serialise: {e}"))
    });
    match body {
        Ok(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], bytes.clone()).into_response())
        }
        Err(e) => Err(CoreError::Internal(e.clone()).into()),
    }
}

/// The admin API's routes mounted outside the handler timeout (see `crate::router`), with the
/// same body limit.
pub fn long_running_routes() -> Router<AppState> {
    long_running::<Router<AppState>>().layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
}

/// The whole admin API's OpenAPI document.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = api(OpenApiRouter::with_openapi(ApiDoc::openapi())).into_openapi();
    doc.merge(long_running::<OpenApiRouter<AppState>>().into_openapi());
    doc
}

/// What the document says besides its paths (those come from the routes themselves).
#[derive(OpenApi)]
#[openapi(
    info(title = "Lanyard admin API", description = "Administer a Lanyard MDM server."),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::Value;

    /// Every parameter is declared where it is read: a path parameter names a `{placeholder}`
    /// of its path, and everything else is a query parameter (`in: query`), which is how the
    /// handlers read them (`Query<…>`).
    #[test]
    fn parameters_are_declared_in_path_or_query() {
        let doc = serde_json::to_value(super::openapi_document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut query_params = Vec::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let Some(params) = op.get("parameters").and_then(Value::as_array) else {
                    continue;
                };
                for p in params {
                    let name = p["name"].as_str().unwrap();
                    let placeholder = format!("{{{name}}}");
                    match p["in"].as_str().unwrap() {
                        "path" => assert!(
                            path.contains(&placeholder),
                            "{method} {path}: `{name}` is declared in: path but is not in the path"
                        ),
                        "query" => {
                            assert!(!path.contains(&placeholder), "{method} {path}: {name}");
                            query_params.push(format!("{path}?{name}"));
                        }
                        other => panic!("{method} {path}: `{name}` in: {other}"),
                    }
                }
            }
        }
        // The GETs known to take query parameters declare them.
        for expected in [
            "/api/v1/users?search",
            "/api/v1/users?limit",
            "/api/v1/audit?action",
            "/api/v1/devices?search",
        ] {
            assert!(
                query_params.iter().any(|q| q == expected),
                "{expected} missing from {query_params:?}"
            );
        }
    }
}
