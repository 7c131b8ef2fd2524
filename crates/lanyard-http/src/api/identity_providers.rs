//! The admin API for OpenID Connect identity providers, under `/api/v1/identity-providers`.
//! Thin handlers over `lanyard_core::identity_providers`; client secrets go in, never out.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use lanyard_core::identity_providers::{
    CreateIdentityProvider, IdentityProviderView, UpdateIdentityProvider,
};

use super::{ApiJson, ApiPath, ApiRouter, Authed};
use crate::error::{ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(list, create))
        .routes(api_routes!(show, update, remove))
}

/// OpenID Connect identity providers for enrollment sign-in (never their secrets).
#[utoipa::path(get, path = "/api/v1/identity-providers",
    responses((status = 200, body = [IdentityProviderView])))]
async fn list(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<IdentityProviderView>>> {
    Ok(Json(s.lanyard.list_identity_providers().await?))
}

/// Add an identity provider.
#[utoipa::path(post, path = "/api/v1/identity-providers", request_body = CreateIdentityProvider,
    responses((status = 201, body = IdentityProviderView), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<CreateIdentityProvider>,
) -> ApiResult<(StatusCode, Json<IdentityProviderView>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.lanyard
                .create_identity_provider(&actor, &s.secrets, b)
                .await?,
        ),
    ))
}

/// One identity provider.
#[utoipa::path(get, path = "/api/v1/identity-providers/{name}", params(("name" = String, Path)),
    responses((status = 200, body = IdentityProviderView), (status = 404, body = ErrorBody)))]
async fn show(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<IdentityProviderView>> {
    Ok(Json(s.lanyard.identity_provider(&name).await?))
}

/// Change an identity provider.
#[utoipa::path(patch, path = "/api/v1/identity-providers/{name}", params(("name" = String, Path)),
    request_body = UpdateIdentityProvider,
    responses((status = 200, body = IdentityProviderView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn update(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<UpdateIdentityProvider>,
) -> ApiResult<Json<IdentityProviderView>> {
    Ok(Json(
        s.lanyard
            .update_identity_provider(&actor, &s.secrets, &name, b)
            .await?,
    ))
}

/// Remove an identity provider.
#[utoipa::path(delete, path = "/api/v1/identity-providers/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.lanyard.delete_identity_provider(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
