//! `/api/v1/settings/enrollment` and `/api/v1/attributes`: the enrollment settings and the
//! custom attributes asked for at enrollment.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use lanyard_core::attributes::{CustomAttribute, DefineAttribute};
use lanyard_core::settings::{EnrollmentSettings, SettingsPatch};

use super::{ApiJson, ApiPath, ApiRouter, Authed};
use crate::error::{ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(get_settings, patch_settings))
        .routes(api_routes!(list_attributes, define_attribute))
        .routes(api_routes!(delete_attribute))
}

/// The enrollment settings.
#[utoipa::path(get, path = "/api/v1/settings/enrollment",
    responses((status = 200, body = EnrollmentSettings)))]
async fn get_settings(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<EnrollmentSettings>> {
    Ok(Json(s.lanyard.enrollment_settings().await?))
}

/// Change some enrollment settings; absent fields stay as they are.
#[utoipa::path(patch, path = "/api/v1/settings/enrollment", request_body = SettingsPatch,
    responses((status = 200, body = EnrollmentSettings), (status = 422, body = ErrorBody)))]
async fn patch_settings(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<SettingsPatch>,
) -> ApiResult<Json<EnrollmentSettings>> {
    Ok(Json(s.lanyard.update_enrollment_settings(&actor, b).await?))
}

/// Custom attribute definitions.
#[utoipa::path(get, path = "/api/v1/attributes",
    responses((status = 200, body = [CustomAttribute])))]
async fn list_attributes(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<CustomAttribute>>> {
    Ok(Json(s.lanyard.list_attributes().await?))
}

/// Define a custom attribute.
#[utoipa::path(post, path = "/api/v1/attributes", request_body = DefineAttribute,
    responses((status = 201, body = CustomAttribute), (status = 409, body = ErrorBody)))]
async fn define_attribute(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<DefineAttribute>,
) -> ApiResult<(StatusCode, Json<CustomAttribute>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.lanyard.define_attribute(&actor, b).await?),
    ))
}

/// Delete a custom attribute definition.
#[utoipa::path(delete, path = "/api/v1/attributes/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_attribute(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.lanyard.delete_attribute(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
