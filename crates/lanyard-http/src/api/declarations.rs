//! `/api/v1/declarations` and `/api/v1/declaration-sets`: declarative device management.
//! Declarations (checked against Apple's schema; a refusal is 422 naming the key, such as
//! `Payload.EnabledProtocolTypes`), the sets they are grouped in, the sets' members and
//! assignments (to a person, to every User Enrollment Mac, to one enrollment), and what a Mac
//! reported (`/api/v1/devices/{id}/declarations`). Every change goes through
//! `lanyard_core::declarations::DeclarationService`, which refuses read-only administrators and
//! writes the audit log.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use lanyard_core::declarations::{
    AssignTo, DeclarationInput, DeclarationKind, DeclarationUpdate, DeclarationView,
    EnrollmentDeclarativeStatus, SetView,
};

use super::{ApiJson, ApiPath, ApiRouter, Authed};
use crate::error::{ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(list_declarations, create_declaration))
        .routes(api_routes!(
            get_declaration,
            update_declaration,
            delete_declaration
        ))
        .routes(api_routes!(list_sets, create_set))
        .routes(api_routes!(get_set, update_set, delete_set))
        .routes(api_routes!(add_member, remove_member))
        .routes(api_routes!(assign_set))
        .routes(api_routes!(unassign_set))
        .routes(api_routes!(device_declarations))
}

/// A declaration in the list, with how many Macs report it active and how many failing
/// (`valid: invalid` in their status report).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeclarationSummary {
    pub identifier: String,
    #[serde(rename = "type")]
    pub declaration_type: String,
    pub kind: DeclarationKind,
    pub server_token: String,
    pub has_asset_data: bool,
    pub updated_at: DateTime<Utc>,
    /// Macs that report it active.
    pub active: i64,
    /// Macs that report it invalid.
    pub failing: i64,
}

/// A new set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSet {
    /// 1 to 64 letters, digits, `.`, `-` or `_`.
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A set's new description.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSet {
    pub description: String,
}

/// Declarations with their active and failing counts, by identifier.
#[utoipa::path(get, path = "/api/v1/declarations",
    responses((status = 200, body = [DeclarationSummary])))]
async fn list_declarations(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<DeclarationSummary>>> {
    Ok(Json(summaries(&s).await?))
}

/// The declaration list with counts (shared with the portal).
pub(crate) async fn summaries(
    s: &AppState,
) -> Result<Vec<DeclarationSummary>, lanyard_core::CoreError> {
    let counts: HashMap<String, (i64, i64)> = s
        .declarations
        .status_counts()
        .await?
        .into_iter()
        .map(|c| (c.identifier, (c.active, c.failing)))
        .collect();
    Ok(s.declarations
        .list()
        .await?
        .into_iter()
        .map(|d| {
            let (active, failing) = counts.get(&d.identifier).copied().unwrap_or_default();
            DeclarationSummary {
                identifier: d.identifier,
                declaration_type: d.declaration_type,
                kind: d.kind,
                server_token: d.server_token,
                has_asset_data: d.has_asset_data,
                updated_at: d.updated_at,
                active,
                failing,
            }
        })
        .collect())
}

/// Create a declaration. Its payload is checked against Apple's schema; a refusal (422) names
/// the key, and nothing is stored.
#[utoipa::path(post, path = "/api/v1/declarations", request_body = DeclarationInput,
    responses((status = 201, body = DeclarationView), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create_declaration(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<DeclarationInput>,
) -> ApiResult<(StatusCode, Json<DeclarationView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.declarations.create(&actor, b).await?),
    ))
}

/// One declaration (an asset's data is never shown).
#[utoipa::path(get, path = "/api/v1/declarations/{identifier}",
    params(("identifier" = String, Path)),
    responses((status = 200, body = DeclarationView), (status = 404, body = ErrorBody)))]
async fn get_declaration(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(identifier): ApiPath<String>,
) -> ApiResult<Json<DeclarationView>> {
    Ok(Json(s.declarations.get(&identifier).await?))
}

/// Replace a declaration's payload (its type and identifier stay); the Macs it reaches are told
/// to synchronise.
#[utoipa::path(put, path = "/api/v1/declarations/{identifier}",
    params(("identifier" = String, Path)), request_body = DeclarationUpdate,
    responses((status = 200, body = DeclarationView), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn update_declaration(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(identifier): ApiPath<String>,
    ApiJson(b): ApiJson<DeclarationUpdate>,
) -> ApiResult<Json<DeclarationView>> {
    Ok(Json(s.declarations.update(&actor, &identifier, b).await?))
}

/// Delete a declaration no other declaration references (409 otherwise).
#[utoipa::path(delete, path = "/api/v1/declarations/{identifier}",
    params(("identifier" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_declaration(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(identifier): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.declarations.delete(&actor, &identifier).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Declaration sets with their members and assignments.
#[utoipa::path(get, path = "/api/v1/declaration-sets",
    responses((status = 200, body = [SetView])))]
async fn list_sets(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<Vec<SetView>>> {
    Ok(Json(s.declarations.list_sets().await?))
}

/// Create a set.
#[utoipa::path(post, path = "/api/v1/declaration-sets", request_body = CreateSet,
    responses((status = 201, body = SetView), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create_set(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<CreateSet>,
) -> ApiResult<(StatusCode, Json<SetView>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.declarations
                .create_set(&actor, &b.name, &b.description)
                .await?,
        ),
    ))
}

/// One set.
#[utoipa::path(get, path = "/api/v1/declaration-sets/{name}", params(("name" = String, Path)),
    responses((status = 200, body = SetView), (status = 404, body = ErrorBody)))]
async fn get_set(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<SetView>> {
    Ok(Json(s.declarations.set(&name).await?))
}

/// Change a set's description.
#[utoipa::path(patch, path = "/api/v1/declaration-sets/{name}", params(("name" = String, Path)),
    request_body = UpdateSet,
    responses((status = 200, body = SetView), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn update_set(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(b): ApiJson<UpdateSet>,
) -> ApiResult<Json<SetView>> {
    Ok(Json(
        s.declarations
            .update_set(&actor, &name, &b.description)
            .await?,
    ))
}

/// Delete a set with its assignments; the Macs it reached are told to synchronise.
#[utoipa::path(delete, path = "/api/v1/declaration-sets/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_set(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.declarations.delete_set(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a declaration to a set. When the set is assigned, a type macOS User Enrollment does not
/// allow is refused (422) with the schema's reason.
#[utoipa::path(put, path = "/api/v1/declaration-sets/{name}/members/{identifier}",
    params(("name" = String, Path), ("identifier" = String, Path)),
    responses((status = 200, body = SetView), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn add_member(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath((name, identifier)): ApiPath<(String, String)>,
) -> ApiResult<Json<SetView>> {
    Ok(Json(
        s.declarations
            .add_to_set(&actor, &name, &identifier)
            .await?,
    ))
}

/// Remove a declaration from a set.
#[utoipa::path(delete, path = "/api/v1/declaration-sets/{name}/members/{identifier}",
    params(("name" = String, Path), ("identifier" = String, Path)),
    responses((status = 200, body = SetView), (status = 404, body = ErrorBody)))]
async fn remove_member(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath((name, identifier)): ApiPath<(String, String)>,
) -> ApiResult<Json<SetView>> {
    Ok(Json(
        s.declarations
            .remove_from_set(&actor, &name, &identifier)
            .await?,
    ))
}

/// Assign a set to a person (`{"user": {"email": …}}`), to every User Enrollment Mac
/// (`"all_user_enrollments"`) or to one enrollment (`{"enrollment": {"id": …}}`). A member
/// whose type macOS User Enrollment does not allow is refused (422) with the schema's reason,
/// and nothing changes.
#[utoipa::path(post, path = "/api/v1/declaration-sets/{name}/assignments",
    params(("name" = String, Path)), request_body = AssignTo,
    responses((status = 200, body = SetView), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn assign_set(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(to): ApiJson<AssignTo>,
) -> ApiResult<Json<SetView>> {
    Ok(Json(s.declarations.assign(&actor, &name, &to).await?))
}

/// Remove one of a set's assignments (the same body as assigning).
#[utoipa::path(post, path = "/api/v1/declaration-sets/{name}/unassign",
    params(("name" = String, Path)), request_body = AssignTo,
    responses((status = 200, body = SetView), (status = 404, body = ErrorBody)))]
async fn unassign_set(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(to): ApiJson<AssignTo>,
) -> ApiResult<Json<SetView>> {
    Ok(Json(s.declarations.unassign(&actor, &name, &to).await?))
}

/// What a device reported: the state of the declarations it should hold, and the latest value
/// of each status item.
#[utoipa::path(get, path = "/api/v1/devices/{id}/declarations", params(("id" = String, Path)),
    responses((status = 200, body = EnrollmentDeclarativeStatus),
              (status = 404, body = ErrorBody)))]
async fn device_declarations(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EnrollmentDeclarativeStatus>> {
    Ok(Json(s.declarations.enrollment_status(&id).await?))
}
