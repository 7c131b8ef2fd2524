//! `/api/v1/sessions` and `/api/v1/admins`: administrators signing in and out, and the
//! administrators themselves (roles, passwords, enabled, failed sign-ins).

use std::net::SocketAddr;

use axum::extract::rejection::ExtensionRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use lanyard_core::admins::{AdminView, Role};

use super::{ApiJson, ApiPath, ApiRouter, Authed, Unlocked};
use crate::auth::SESSION_COOKIE;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(sign_in))
        .routes(api_routes!(sign_out))
        .routes(api_routes!(list_admins, create_admin))
        .routes(api_routes!(update_admin, remove_admin))
        .routes(api_routes!(unlock_admin))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionCreated {
    /// Send as `Authorization: Bearer …` (API clients) — browsers get the same as a cookie.
    pub session_token: String,
    /// Send as `X-CSRF-Token` on changes made with the cookie.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    pub admin: AdminView,
}

/// Sign an administrator in.
#[utoipa::path(post, path = "/api/v1/sessions", request_body = SignIn, security(()),
    responses((status = 201, body = SessionCreated), (status = 401, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn sign_in(
    State(s): State<AppState>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<SignIn>,
) -> ApiResult<Response> {
    let client = crate::client::client_address(&s.trusted_proxies, &peer, &headers);
    let grant = s
        .lanyard
        .admin_sign_in(&b.username, &b.password, client)
        .await?;
    let max_age = (grant.expires_at - Utc::now()).num_seconds().max(0);
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict",
        grant.secret
    );
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, v);
    }
    let body = SessionCreated {
        session_token: grant.secret,
        csrf_token: grant.csrf_token,
        expires_at: grant.expires_at,
        admin: grant.admin,
    };
    Ok((StatusCode::CREATED, headers, Json(body)).into_response())
}

/// Sign the current session out.
#[utoipa::path(delete, path = "/api/v1/sessions/current",
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn sign_out(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let from_bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| t.starts_with("lys_"))
        .map(str::to_string);
    let from_cookie = crate::auth::cookie(&headers, SESSION_COOKIE).map(str::to_string);
    match from_bearer.or(from_cookie) {
        Some(secret) => s.lanyard.admin_sign_out(&secret).await?,
        None => return Err(ApiError::invalid("this request is not a session")),
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict");
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&clear) {
        h.insert(header::SET_COOKIE, v);
    }
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

/// Administrators.
#[utoipa::path(get, path = "/api/v1/admins", responses((status = 200, body = [AdminView])))]
async fn list_admins(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<AdminView>>> {
    Ok(Json(s.lanyard.list_admins().await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdmin {
    pub username: String,
    pub password: String,
    pub role: Role,
}

/// Create an administrator (administrator or read-only).
#[utoipa::path(post, path = "/api/v1/admins", request_body = NewAdmin,
    responses((status = 201, body = AdminView), (status = 409, body = ErrorBody)))]
async fn create_admin(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<NewAdmin>,
) -> ApiResult<(StatusCode, Json<AdminView>)> {
    let a = s
        .lanyard
        .create_admin(&actor, &b.username, &b.password, b.role)
        .await?;
    Ok((StatusCode::CREATED, Json(a)))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminChange {
    /// A new password: ends the administrator's other sessions (API tokens are kept).
    pub password: Option<String>,
    /// Disable (ends their sessions) or enable. The last enabled administrator with the
    /// Administrator role cannot be disabled.
    pub enabled: Option<bool>,
}

/// Change an administrator: password, enabled. Anyone may change their own password.
#[utoipa::path(patch, path = "/api/v1/admins/{name}", params(("name" = String, Path)),
    request_body = AdminChange,
    responses((status = 200, body = AdminView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_admin(
    State(s): State<AppState>,
    Authed(actor): Authed,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<AdminChange>,
) -> ApiResult<Json<AdminView>> {
    if b.password.is_none() && b.enabled.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "nothing to change; send password and/or enabled",
        ));
    }
    let mut view = None;
    if let Some(password) = &b.password {
        let own = crate::auth::session_secret(&headers);
        let (v, _) = s
            .lanyard
            .set_admin_password(&actor, &name, password, own)
            .await?;
        view = Some(v);
    }
    if let Some(enabled) = b.enabled {
        view = Some(s.lanyard.set_admin_enabled(&actor, &name, enabled).await?);
    }
    view.map(Json)
        .ok_or_else(|| ApiError::invalid("nothing to change"))
}

/// Remove an administrator with their sessions and API tokens.
#[utoipa::path(delete, path = "/api/v1/admins/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_admin(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.lanyard.remove_admin(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Forget an administrator's failed sign-ins from every address.
#[utoipa::path(post, path = "/api/v1/admins/{name}/unlock", params(("name" = String, Path)),
    responses((status = 200, body = Unlocked), (status = 404, body = ErrorBody)))]
async fn unlock_admin(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Unlocked>> {
    let addresses = s.lanyard.unlock_admin(&actor, &name).await?;
    Ok(Json(Unlocked { addresses }))
}
