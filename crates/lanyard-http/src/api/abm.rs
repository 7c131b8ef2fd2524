//! Admin API for Apple Business Manager server tokens and the account-driven enrollment
//! service-discovery registration (`/api/v1/server-tokens…`, `/api/v1/account-driven-discovery`).
//! Thin handlers over [`lanyard_core::abm::AbmService`]; read-only administrators
//! are refused every change by the domain.
//!
//! `POST /server-tokens/{name}/sync` answers when the sync is done (its [`SyncReport`]);
//! with `?wait=false` it answers `202` at once with the progress URL
//! (`GET /server-tokens/{name}/sync`), where this server reports the sync until it is done.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use lanyard_core::abm::{AbmTokenView, DiscoveryStatus, SyncProgress, SyncReport, MAX_TOKEN_FILE};
use lanyard_core::CoreError;
use lanyard_store::AbmDevice;

use super::{ApiJson, ApiPath, ApiQuery, ApiRouter, Authed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::AppState;

/// `POST /server-tokens/{name}/sync`: with `?wait=true` the answer waits for the whole sync,
/// which may take longer than the handler timeout (`tracing_layers::REQUEST_TIMEOUT`), so this
/// route is mounted outside it ([`super::long_running_routes`]).
pub(super) fn long_running_routes<R: ApiRouter>() -> R {
    R::new().routes(api_routes!(sync))
}

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(list, create))
        .routes(api_routes!(show, remove, patch))
        .routes(api_routes!(certificate))
        .merge(
            // A token file is larger than the API's other bodies.
            R::new()
                .routes(api_routes!(upload))
                .body_limit(MAX_TOKEN_FILE),
        )
        .routes(api_routes!(sync_progress))
        .routes(api_routes!(devices))
        .routes(api_routes!(
            discovery,
            register_discovery,
            unregister_discovery
        ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
}

#[derive(Serialize, ToSchema)]
struct TokenCreated {
    name: String,
    /// The certificate to upload to the MDM server in Apple Business Manager.
    certificate_pem: String,
}

/// The schema of [`AbmDevice`] (the store does not depend on utoipa).
#[derive(ToSchema)]
#[schema(as = AbmDevice)]
#[allow(dead_code)] // only its schema is used
struct AbmDeviceDoc {
    serial_number: String,
    model: String,
    description: String,
    os: String,
    color: String,
    profile_status: String,
    profile_uuid: Option<String>,
    assigned_by: Option<String>,
    assigned_date: Option<String>,
    /// `added`, `modified` or `deleted` from an incremental sync; `None` from a full fetch.
    op_type: Option<String>,
}

/// Server tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/server-tokens",
    responses((status = 200, body = [AbmTokenView])))]
async fn list(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<AbmTokenView>>> {
    Ok(Json(s.abm.list().await?))
}

/// Create a token's key pair; answers the certificate to upload to ABM.
#[utoipa::path(post, path = "/api/v1/server-tokens", request_body = NewToken,
    responses((status = 201, body = TokenCreated), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<NewToken>,
) -> ApiResult<Response> {
    let pem = s.abm.new_token(&actor, &b.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            name: b.name,
            certificate_pem: pem,
        }),
    )
        .into_response())
}

/// One server token.
#[utoipa::path(get, path = "/api/v1/server-tokens/{name}", params(("name" = String, Path)),
    responses((status = 200, body = AbmTokenView), (status = 404, body = ErrorBody)))]
async fn show(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<AbmTokenView>> {
    Ok(Json(s.abm.show(&name).await?))
}

/// Forget a token and its devices (ABM keeps its side).
#[utoipa::path(delete, path = "/api/v1/server-tokens/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.abm.remove(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchToken {
    default_account_driven: bool,
}

/// `{"default_account_driven": true}` makes the token the default (moving it).
#[utoipa::path(patch, path = "/api/v1/server-tokens/{name}", params(("name" = String, Path)),
    request_body = PatchToken,
    responses((status = 200, body = AbmTokenView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn patch(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<PatchToken>,
) -> ApiResult<Json<AbmTokenView>> {
    if !b.default_account_driven {
        return Err(ApiError::invalid(
            "there is always one default once set: make another token the default instead",
        ));
    }
    Ok(Json(s.abm.set_default(&actor, &name).await?))
}

/// The token's certificate (PEM) to upload to the MDM server in ABM.
#[utoipa::path(get, path = "/api/v1/server-tokens/{name}/certificate",
    params(("name" = String, Path)),
    responses((status = 200, content_type = "application/x-pem-file", body = String),
        (status = 404, body = ErrorBody)))]
async fn certificate(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let pem = s.abm.certificate_pem(&name).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"lanyard-abm-{}.pem\"",
                    sanitize(&name)
                ),
            ),
        ],
        pem,
    )
        .into_response())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// Also make the token the default for account-driven enrollment.
    #[serde(default)]
    default: bool,
}

/// The token file ABM gave (the `.p7m`, raw bytes); `?default=true` also makes it the default
/// token for account-driven enrollment.
#[utoipa::path(put, path = "/api/v1/server-tokens/{name}/token",
    params(("name" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/pkcs7-mime"),
    responses((status = 200, body = AbmTokenView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn upload(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Bytes,
) -> ApiResult<Json<AbmTokenView>> {
    Ok(Json(s.abm.upload(&actor, &name, &body, q.default).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SyncQuery {
    /// `false`: answer `202` at once and sync in the background (default `true`).
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// A sync started in the background.
#[derive(Serialize, ToSchema)]
struct SyncStarted {
    /// Where this server reports the sync's progress.
    progress_url: String,
    progress: SyncProgress,
}

/// Sync the token's devices from ABM: answers the report when done, or with `?wait=false`
/// `202` at once and the progress URL. `409` while a sync of the token is running.
#[utoipa::path(post, path = "/api/v1/server-tokens/{name}/sync",
    params(("name" = String, Path), SyncQuery),
    responses((status = 200, body = SyncReport), (status = 202, body = SyncStarted),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn sync(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> ApiResult<Response> {
    if q.wait {
        return Ok(Json(s.abm.sync(&actor, &name).await?).into_response());
    }
    let progress = s.abm.start_sync(&actor, &name).await?;
    let progress_url = format!("/api/v1/server-tokens/{}/sync", crate::html::qv(&name));
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, progress_url.clone())],
        Json(SyncStarted {
            progress_url,
            progress,
        }),
    )
        .into_response())
}

/// The progress of this server's latest sync of the token (`404`: none since it started).
#[utoipa::path(get, path = "/api/v1/server-tokens/{name}/sync", params(("name" = String, Path)),
    responses((status = 200, body = SyncProgress), (status = 404, body = ErrorBody)))]
async fn sync_progress(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<SyncProgress>> {
    s.abm.show(&name).await?;
    Ok(Json(s.abm.progress(&name).ok_or_else(|| {
        CoreError::NotFound(format!("no sync of `{name}` was started on this server"))
    })?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    offset: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

/// The devices ABM assigned to the token, as last synced.
#[utoipa::path(get, path = "/api/v1/server-tokens/{name}/devices",
    params(("name" = String, Path), Page),
    responses((status = 200, body = [AbmDeviceDoc]), (status = 404, body = ErrorBody)))]
async fn devices(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(name): ApiPath<String>,
    ApiQuery(p): ApiQuery<Page>,
) -> ApiResult<Json<Vec<AbmDevice>>> {
    Ok(Json(s.abm.devices(&name, p.offset, p.limit).await?))
}

/// The service-discovery URL as recorded and as ABM reports it (default token).
#[utoipa::path(get, path = "/api/v1/account-driven-discovery",
    responses((status = 200, body = DiscoveryStatus), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn discovery(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<DiscoveryStatus>> {
    Ok(Json(s.abm.discovery().await?))
}

/// Register Lanyard's service-discovery URL at ABM with the default token.
#[utoipa::path(put, path = "/api/v1/account-driven-discovery",
    responses((status = 200, body = DiscoveryStatus), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn register_discovery(
    State(s): State<AppState>,
    Authed(actor): Authed,
) -> ApiResult<Json<DiscoveryStatus>> {
    Ok(Json(s.abm.register_discovery(&actor).await?))
}

/// Remove the registration at ABM.
#[utoipa::path(delete, path = "/api/v1/account-driven-discovery",
    responses((status = 200, body = DiscoveryStatus), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn unregister_discovery(
    State(s): State<AppState>,
    Authed(actor): Authed,
) -> ApiResult<Json<DiscoveryStatus>> {
    Ok(Json(s.abm.unregister_discovery(&actor).await?))
}
