//! `/api/v1/users`: the people who enroll Macs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use lanyard_core::users::{CreateUser, UpdateUser, UserView};
use lanyard_store::ListQuery;

use super::{ApiJson, ApiPath, ApiQuery, ApiRouter, Authed, Unlocked};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(list_users, create_user))
        .routes(api_routes!(get_user, update_user))
        .routes(api_routes!(unlock_user))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Case-insensitive substring of email or display name.
    search: Option<String>,
    #[serde(default)]
    offset: i64,
    limit: Option<i64>,
}

/// List users.
#[utoipa::path(get, path = "/api/v1/users", params(Page),
    responses((status = 200, body = [UserView])))]
async fn list_users(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiQuery(p): ApiQuery<Page>,
) -> ApiResult<Json<Vec<UserView>>> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || p.offset < 0 {
        return Err(ApiError::invalid(
            "limit is 1 to 1000 and offset is not negative",
        ));
    }
    Ok(Json(
        s.lanyard
            .list_users(&ListQuery {
                search: p.search,
                offset: p.offset,
                limit,
            })
            .await?,
    ))
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create_user(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.lanyard.create_user(&actor, b).await?),
    ))
}

/// Show one user, by id or email.
#[utoipa::path(get, path = "/api/v1/users/{key}", params(("key" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(key): ApiPath<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(s.lanyard.find_user(&key).await?.into()))
}

/// Change a user (display name, password, managed Apple ID, enabled).
#[utoipa::path(patch, path = "/api/v1/users/{key}", params(("key" = String, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
async fn update_user(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(key): ApiPath<String>,
    ApiJson(b): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(s.lanyard.update_user(&actor, &key, b).await?))
}

/// Forget a user's failed enrollment sign-ins from every address (`key`: the email).
#[utoipa::path(post, path = "/api/v1/users/{key}/unlock", params(("key" = String, Path)),
    responses((status = 200, body = Unlocked), (status = 404, body = ErrorBody)))]
async fn unlock_user(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(key): ApiPath<String>,
) -> ApiResult<Json<Unlocked>> {
    let addresses = s.lanyard.unlock_user(&actor, &key).await?;
    Ok(Json(Unlocked { addresses }))
}
