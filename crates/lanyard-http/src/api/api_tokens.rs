//! `/api/v1/api-tokens`: bearer tokens for scripts, acting as an administrator.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ApiPath, ApiRouter, Authed};
use crate::error::{ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(list_api_tokens, create_api_token))
        .routes(api_routes!(revoke_api_token))
}

#[derive(Serialize, ToSchema)]
pub struct ApiTokenView {
    pub id: i64,
    pub admin_id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

impl From<lanyard_store::ApiToken> for ApiTokenView {
    fn from(t: lanyard_store::ApiToken) -> Self {
        Self {
            id: t.id,
            admin_id: t.admin_id,
            name: t.name,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked: t.revoked,
        }
    }
}

/// API tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/api-tokens", responses((status = 200, body = [ApiTokenView])))]
async fn list_api_tokens(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<ApiTokenView>>> {
    let tokens = s.lanyard.list_api_tokens().await?;
    Ok(Json(tokens.into_iter().map(Into::into).collect()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    /// The administrator the token acts as (its role applies).
    pub admin: String,
    pub name: String,
    pub valid_days: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiTokenCreated {
    /// Shown once; store it now.
    pub token: String,
    pub details: ApiTokenView,
}

/// Create an API token; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/api-tokens", request_body = NewApiToken,
    responses((status = 201, body = ApiTokenCreated)))]
async fn create_api_token(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<NewApiToken>,
) -> ApiResult<(StatusCode, Json<ApiTokenCreated>)> {
    let (t, secret) = s
        .lanyard
        .create_api_token(&actor, &b.admin, &b.name, b.valid_days)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenCreated {
            token: secret,
            details: t.into(),
        }),
    ))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/api/v1/api-tokens/{id}", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_api_token(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    s.lanyard.revoke_api_token(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
