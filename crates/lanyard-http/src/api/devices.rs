//! `/api/v1/devices`: enrollments, their command history and inventory, unenrolling and
//! asking the person to sign in again.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use lanyard_core::commands::{CommandView, Queued};
use lanyard_core::enrollment::{list_enrollments, EnrollmentView};
use lanyard_store::EnrollmentStatus;

use super::{ApiPath, ApiQuery, ApiRouter, Authed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(list_devices))
        .routes(api_routes!(get_device))
        .routes(api_routes!(device_commands))
        .routes(api_routes!(device_inventory))
        .routes(api_routes!(unenroll_device))
        .routes(api_routes!(require_sign_in))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// pending, authenticated, enrolled (default), checked_out or inactive; `all` for every
    /// status.
    status: Option<String>,
    /// Case-insensitive substring of the managed Apple ID, the person's email, the model
    /// family or the product, taken literally (the portal's device search).
    search: Option<String>,
    /// `true`: only devices whose Mac reports a declaration invalid.
    #[serde(default)]
    declarations_failing: bool,
    #[serde(default)]
    offset: i64,
    limit: Option<i64>,
}

/// Enrolled devices with their enrollment mode, newest first.
#[utoipa::path(get, path = "/api/v1/devices", params(DeviceQuery),
    responses((status = 200, body = [EnrollmentView])))]
async fn list_devices(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> ApiResult<Json<Vec<EnrollmentView>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || q.offset < 0 {
        return Err(ApiError::invalid(
            "limit is 1 to 1000 and offset is not negative",
        ));
    }
    let status = match q.status.as_deref() {
        None => Some(EnrollmentStatus::Enrolled),
        Some("all") => None,
        Some(other) => match EnrollmentStatus::parse(other) {
            Some(st) => Some(st),
            None => return Err(ApiError::invalid(format!("unknown status `{other}`"))),
        },
    };
    let list = list_enrollments(
        &s.lanyard,
        &lanyard_store::DeviceListQuery {
            status,
            search: q.search,
            declarations_failing: q.declarations_failing,
            descending: true,
            offset: q.offset,
            limit,
            ..lanyard_store::DeviceListQuery::default()
        },
    )
    .await?;
    Ok(Json(list))
}

/// One enrollment.
#[utoipa::path(get, path = "/api/v1/devices/{id}", params(("id" = String, Path)),
    responses((status = 200, body = EnrollmentView), (status = 404, body = ErrorBody)))]
async fn get_device(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EnrollmentView>> {
    Ok(Json(s.lanyard.enrollment(&id).await?))
}

/// A device's command history, newest first, with results.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands", params(("id" = String, Path)),
    responses((status = 200, body = [CommandView])))]
async fn device_commands(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<CommandView>>> {
    Ok(Json(s.lanyard.command_history(&id, 200).await?))
}

/// What the device reported: DeviceInformation, security info, profiles.
#[utoipa::path(get, path = "/api/v1/devices/{id}/inventory", params(("id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn device_inventory(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(s.lanyard.inventory(&id).await?))
}

/// Unenroll a device: removes the MDM profile (and with it the managed volume).
#[utoipa::path(post, path = "/api/v1/devices/{id}/unenroll", params(("id" = String, Path)),
    responses((status = 202, body = Queued), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn unenroll_device(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Queued>)> {
    let q = s.lanyard.unenroll(&actor, &id, true).await?;
    Ok((StatusCode::ACCEPTED, Json(q)))
}

/// Makes the person sign in again: the Mac's next user-channel request is challenged.
#[utoipa::path(post, path = "/api/v1/devices/{id}/require-sign-in", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn require_sign_in(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.lanyard.require_sign_in(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
