//! The admin API for OpenID Connect identity providers, under `/api/v1/identity-providers`.
//! Thin handlers over `lanyard_core::identity_providers`; client secrets go in, never out.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use lanyard_core::identity_providers::{
    CreateIdentityProvider, IdentityProviderView, UpdateIdentityProvider,
};

use crate::admin_api::{ApiJson, ApiPath};
use crate::auth::Authed;
use crate::error::ApiResult;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/identity-providers", get(list).post(create))
        .route(
            "/identity-providers/{name}",
            get(show).patch(update).delete(remove),
        )
}

async fn list(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<IdentityProviderView>>> {
    Ok(Json(s.lanyard.list_identity_providers().await?))
}

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

async fn show(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<IdentityProviderView>> {
    Ok(Json(s.lanyard.identity_provider(&name).await?))
}

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

async fn remove(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.lanyard.delete_identity_provider(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
