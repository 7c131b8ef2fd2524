//! Admin API for Apple Business Manager server tokens and the account-driven enrollment
//! service-discovery registration (`/api/v1/server-tokens…`, `/api/v1/account-driven-discovery`).
//! Thin handlers over [`lanyard_core::server_tokens::AbmService`]; read-only administrators
//! are refused every change by the domain.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use lanyard_core::server_tokens::{DiscoveryStatus, ServerTokenView, SyncReport, MAX_TOKEN_FILE};
use lanyard_store::AbmDevice;

use crate::admin_api::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/server-tokens", get(list).post(create))
        .route(
            "/server-tokens/{name}",
            get(show).delete(remove).patch(patch),
        )
        .route("/server-tokens/{name}/certificate", get(certificate))
        .route(
            "/server-tokens/{name}/token",
            put(upload).layer(DefaultBodyLimit::max(MAX_TOKEN_FILE)),
        )
        .route("/server-tokens/{name}/sync", post(sync))
        .route("/server-tokens/{name}/devices", get(devices))
        .route(
            "/account-driven-discovery",
            get(discovery)
                .put(register_discovery)
                .delete(unregister_discovery),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
}

async fn list(
    State(s): State<AppState>,
    Authed(_): Authed,
) -> ApiResult<Json<Vec<ServerTokenView>>> {
    Ok(Json(s.abm.list().await?))
}

/// Creates the key pair; answers the certificate to upload to ABM.
async fn create(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<NewToken>,
) -> ApiResult<Response> {
    let pem = s.abm.new_token(&actor, &b.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": b.name, "certificate_pem": pem})),
    )
        .into_response())
}

async fn show(
    State(s): State<AppState>,
    Authed(_): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<ServerTokenView>> {
    Ok(Json(s.abm.show(&name).await?))
}

async fn remove(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.abm.remove(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchToken {
    default_account_driven: bool,
}

/// `{"default_account_driven": true}` makes the token the default (moving it).
async fn patch(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<PatchToken>,
) -> ApiResult<Json<ServerTokenView>> {
    if !b.default_account_driven {
        return Err(ApiError::invalid(
            "there is always one default once set: make another token the default instead",
        ));
    }
    Ok(Json(s.abm.set_default(&actor, &name).await?))
}

async fn certificate(
    State(s): State<AppState>,
    Authed(_): Authed,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    #[serde(default)]
    default: bool,
}

/// The token file ABM gave (the `.p7m`, raw bytes); `?default=true` also makes it the default
/// token for account-driven enrollment.
async fn upload(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Bytes,
) -> ApiResult<Json<ServerTokenView>> {
    Ok(Json(s.abm.upload(&actor, &name, &body, q.default).await?))
}

async fn sync(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<SyncReport>> {
    Ok(Json(s.abm.sync(&actor, &name).await?))
}

#[derive(Deserialize)]
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

async fn devices(
    State(s): State<AppState>,
    Authed(_): Authed,
    ApiPath(name): ApiPath<String>,
    ApiQuery(p): ApiQuery<Page>,
) -> ApiResult<Json<Vec<AbmDevice>>> {
    Ok(Json(s.abm.devices(&name, p.offset, p.limit).await?))
}

async fn discovery(
    State(s): State<AppState>,
    Authed(_): Authed,
) -> ApiResult<Json<DiscoveryStatus>> {
    Ok(Json(s.abm.discovery().await?))
}

async fn register_discovery(
    State(s): State<AppState>,
    Authed(actor): Authed,
) -> ApiResult<Json<DiscoveryStatus>> {
    Ok(Json(s.abm.register_discovery(&actor).await?))
}

async fn unregister_discovery(
    State(s): State<AppState>,
    Authed(actor): Authed,
) -> ApiResult<Json<DiscoveryStatus>> {
    Ok(Json(s.abm.unregister_discovery(&actor).await?))
}
