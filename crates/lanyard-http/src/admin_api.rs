//! The admin JSON API under `/api/v1`: thin handlers (JSON → domain call → JSON), described by
//! the OpenAPI document served at `/api/v1/openapi.json`.

use std::net::SocketAddr;

use axum::extract::rejection::ExtensionRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use lanyard_core::admins::{AdminView, Role};
use lanyard_core::attributes::{CustomAttribute, DefineAttribute};
use lanyard_core::commands::{CommandChannel, CommandSpec, CommandTarget, CommandView, Queued};
use lanyard_core::enrollment::{list_enrollments, EnrollmentView};
use lanyard_core::push::{PushCertificateInfo, PushCertificateUpload};
use lanyard_core::settings::{EnrollmentSettings, SettingsPatch};
use lanyard_core::users::{CreateUser, UpdateUser, UserView};
use lanyard_store::{AuditEntry, AuditFilter, EnrollmentStatus, ListQuery};

use crate::auth::{Authed, SESSION_COOKIE};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::AppState;

/// JSON body extractor whose rejections use the API's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Query extractor whose rejections use the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor whose rejections use the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sessions", post(sign_in))
        .route("/sessions/current", delete(sign_out))
        .route("/users", get(list_users).post(create_user))
        .route("/users/{key}", get(get_user).patch(update_user))
        .route(
            "/settings/enrollment",
            get(get_settings).patch(patch_settings),
        )
        .route("/attributes", get(list_attributes).post(define_attribute))
        .route("/attributes/{name}", delete(delete_attribute))
        .route("/admins", get(list_admins).post(create_admin))
        .route("/admins/{name}", patch(update_admin).delete(remove_admin))
        .route("/admins/{name}/unlock", post(unlock_admin))
        .route("/users/{key}/unlock", post(unlock_user))
        .route("/api-tokens", get(list_api_tokens).post(create_api_token))
        .route("/api-tokens/{id}", delete(revoke_api_token))
        .route("/devices", get(list_devices))
        .route("/devices/{id}", get(get_device))
        .route("/devices/{id}/commands", get(device_commands))
        .route("/devices/{id}/inventory", get(device_inventory))
        .route("/devices/{id}/unenroll", post(unenroll_device))
        .route("/devices/{id}/require-sign-in", post(require_sign_in))
        .route("/commands", post(send_command))
        .route(
            "/push-certificate",
            get(get_push_certificate).put(put_push_certificate),
        )
        .route(
            "/push-certificate/request",
            get(get_push_request).post(create_push_request),
        )
        .route("/push-certificate/request/sign", post(sign_push_request))
        .route(
            "/push-certificate/request/signing-service",
            post(send_push_request),
        )
        .route(
            "/push-certificate/request/decrypt",
            post(decrypt_push_reply),
        )
        .route("/commands/{uuid}", get(command_status))
        .route("/audit", get(audit_log))
        .route("/openapi.json", get(openapi))
        .merge(crate::server_tokens::routes())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Lanyard admin API", description = "Administer a Lanyard MDM server."),
    paths(
        sign_in, sign_out, list_users, create_user, get_user, update_user, get_settings,
        patch_settings, list_attributes, define_attribute, delete_attribute, list_admins,
        create_admin, update_admin, remove_admin, unlock_admin, unlock_user, list_api_tokens, create_api_token, revoke_api_token, audit_log, list_devices, get_device,
        device_commands, device_inventory, unenroll_device, require_sign_in, send_command, command_status,
        get_push_certificate, put_push_certificate, get_push_request, create_push_request,
        sign_push_request, send_push_request, decrypt_push_reply
    ),
    components(schemas(ErrorBody, UserView, CreateUser, UpdateUser, EnrollmentSettings,
        SettingsPatch, CustomAttribute, DefineAttribute, AdminView, Role, SignIn, SessionCreated,
        NewAdmin, AdminChange, Unlocked, NewApiToken, ApiTokenCreated, ApiTokenView, AuditView, EnrollmentView, SendCommand, CommandSpec,
        CommandTarget, CommandChannel, Queued, CommandView, PushCertificateInfo, PushCertificateBody,
        lanyard_core::pushcert::PushRequestInfo, VendorBody, SigningServiceBody, ReplyBody,
        RequestFile)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// The whole admin API's OpenAPI document.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::idp_api::IdpApiDoc::openapi());
    doc.merge(crate::server_tokens::ServerTokensApiDoc::openapi());
    doc
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

#[derive(Serialize, ToSchema)]
pub struct Unlocked {
    /// How many client addresses had failed sign-ins counted against the name.
    pub addresses: u64,
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
    let tokens = s
        .lanyard
        .store()
        .list_api_tokens()
        .await
        .map_err(lanyard_core::CoreError::from)?;
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    /// Return entries older than this id (paging).
    before: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self {
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = [AuditView])))]
async fn audit_log(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditView>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 1000"));
    }
    let entries = s
        .lanyard
        .audit_log(&AuditFilter {
            actor: q.actor,
            action: q.action,
            target: q.target,
            before_id: q.before,
            limit,
        })
        .await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
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
    let e = s
        .lanyard
        .store()
        .enrollment(&id)
        .await
        .map_err(lanyard_core::CoreError::from)?
        .ok_or_else(|| ApiError::not_found(format!("enrollment {id} not found")))?;
    Ok(Json(e.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendCommand {
    pub target: CommandTarget,
    pub command: CommandSpec,
    /// `device` (default) or `user`.
    #[serde(default)]
    pub channel: CommandChannel,
    /// Wake the devices by APNs after queueing (default true).
    #[serde(default = "yes")]
    pub push: bool,
}

fn yes() -> bool {
    true
}

/// Queue a command for one device, a list, or every device matching a filter. Commands that
/// User Enrollment forbids are refused with the reason (422) and nothing is queued.
#[utoipa::path(post, path = "/api/v1/commands", request_body = SendCommand,
    responses((status = 202, body = Queued), (status = 422, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn send_command(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<SendCommand>,
) -> ApiResult<(StatusCode, Json<Queued>)> {
    let q = s
        .lanyard
        .enqueue_command_on(&actor, &b.target, b.channel, &b.command, b.push)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(q)))
}

/// A command's state on each of its targets.
#[utoipa::path(get, path = "/api/v1/commands/{uuid}", params(("uuid" = String, Path)),
    responses((status = 200, body = [CommandView]), (status = 404, body = ErrorBody)))]
async fn command_status(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(uuid): ApiPath<String>,
) -> ApiResult<Json<Vec<CommandView>>> {
    Ok(Json(s.lanyard.command_targets(&uuid).await?))
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

/// The MDM push certificate: topic, expiry and any warning.
#[utoipa::path(get, path = "/api/v1/push-certificate",
    responses((status = 200, body = PushCertificateInfo), (status = 404, body = ErrorBody)))]
async fn get_push_certificate(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<PushCertificateInfo>> {
    s.lanyard
        .push_certificate_info(&s.secrets)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no push certificate has been uploaded"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushCertificateBody {
    /// PKCS#12 file, base64.
    pub pkcs12_base64: Option<String>,
    pub password: Option<String>,
    /// Or PEM certificate and key; `cert_pem` alone is the certificate Apple issued for the
    /// pending request (`POST /api/v1/push-certificate/request`), matched to its key.
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// Accept a topic that differs from the live enrollments' topic.
    #[serde(default)]
    pub force: bool,
}

/// Upload or renew the MDM push certificate (PKCS#12 or PEM).
#[utoipa::path(put, path = "/api/v1/push-certificate", request_body = PushCertificateBody,
    responses((status = 200, body = PushCertificateInfo), (status = 422, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn put_push_certificate(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<PushCertificateBody>,
) -> ApiResult<Json<PushCertificateInfo>> {
    use base64::Engine;
    let info = match (&b.pkcs12_base64, &b.cert_pem, &b.key_pem) {
        (Some(p12), None, None) => {
            let der = base64::engine::general_purpose::STANDARD
                .decode(p12.trim())
                .map_err(|_| ApiError::invalid("pkcs12_base64 is not base64"))?;
            s.lanyard
                .set_push_certificate(
                    &actor,
                    &s.secrets,
                    &PushCertificateUpload::Pkcs12 {
                        der: &der,
                        password: b.password.as_deref().unwrap_or(""),
                    },
                    b.force,
                )
                .await?
        }
        (None, Some(cert), Some(key)) => {
            s.lanyard
                .set_push_certificate(
                    &actor,
                    &s.secrets,
                    &PushCertificateUpload::Pem {
                        cert: cert.as_bytes(),
                        key: key.as_bytes(),
                    },
                    b.force,
                )
                .await?
        }
        (None, Some(cert), None) => {
            s.lanyard
                .complete_push_request(&actor, &s.secrets, cert.as_bytes(), b.force)
                .await?
        }
        _ => {
            return Err(ApiError::invalid(
                "send cert_pem (for the pending request), pkcs12_base64 (+ password), or \
                 cert_pem and key_pem",
            ))
        }
    };
    Ok(Json(info))
}

/// The pending push certificate request: its CSR (PEM) for an MDM vendor to sign.
#[utoipa::path(get, path = "/api/v1/push-certificate/request",
    responses((status = 200, body = lanyard_core::pushcert::PushRequestInfo),
              (status = 404, body = ErrorBody)))]
async fn get_push_request(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<lanyard_core::pushcert::PushRequestInfo>> {
    s.lanyard
        .push_request()
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no push certificate request is pending"))
}

/// Start getting (or renewing) the push certificate: a new push key (sealed) and CSR, kept
/// pending until `PUT /api/v1/push-certificate` with the `cert_pem` Apple issued for it.
#[utoipa::path(post, path = "/api/v1/push-certificate/request",
    responses((status = 201, body = lanyard_core::pushcert::PushRequestInfo),
              (status = 403, body = ErrorBody)))]
async fn create_push_request(
    State(s): State<AppState>,
    Authed(actor): Authed,
) -> ApiResult<(StatusCode, Json<lanyard_core::pushcert::PushRequestInfo>)> {
    let r = s
        .lanyard
        .create_push_request(&actor, &s.secrets, None)
        .await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// An MDM vendor identity, handed over for one signature and never stored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VendorBody {
    /// The MDM CSR signing (vendor) certificate and its key: a PKCS#12 file, base64.
    pub pkcs12_base64: String,
    pub password: String,
    /// Apple's certificates above the vendor certificate: the WWDR intermediate and the
    /// Apple root, each PEM (or base64 of DER, as Apple's `.cer` files are).
    pub apple_certificates: Vec<String>,
}

/// The request file for Apple's Push Certificates Portal.
#[derive(Serialize, ToSchema)]
pub struct RequestFile {
    /// Base64 of the push certificate request plist: upload it at
    /// <https://identity.apple.com>.
    pub upload_file: String,
}

/// Sign the pending request with an MDM vendor certificate (stored nowhere): the request
/// file for Apple's Push Certificates Portal.
#[utoipa::path(post, path = "/api/v1/push-certificate/request/sign", request_body = VendorBody,
    responses((status = 200, body = RequestFile), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn sign_push_request(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<VendorBody>,
) -> ApiResult<Json<RequestFile>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pkcs12 = b64
        .decode(b.pkcs12_base64.trim())
        .map_err(|_| ApiError::invalid("pkcs12_base64 is not base64"))?;
    let apple = b
        .apple_certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.trim_start().starts_with("-----BEGIN") {
                Ok(c.as_bytes().to_vec())
            } else {
                b64.decode(c.trim()).map_err(|_| {
                    ApiError::invalid(format!(
                        "apple_certificates[{i}] is neither PEM nor base64 of DER"
                    ))
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&[u8]> = apple.iter().map(Vec::as_slice).collect();
    let signer = lanyard_core::pushcert::vendor_signer(&pkcs12, &b.password, &refs)?;
    let upload_file = s.lanyard.sign_push_request(&actor, &signer).await?;
    Ok(Json(RequestFile { upload_file }))
}

/// A request to the CSR signing service, for operators without their own vendor
/// certificate.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningServiceBody {
    /// Where the service emails the signed request (encrypted to a key Lanyard keeps).
    pub email: String,
    /// The service's API key; used for this request only, never stored or logged.
    pub api_key: String,
}

/// Start getting (or renewing) the push certificate through the CSR signing service
/// (`--signing-service-url`): a new push key and CSR go to the service, which emails the
/// signed request, encrypted; `POST /api/v1/push-certificate/request/decrypt` reads it.
/// Nothing is kept pending unless the service accepts the request.
#[utoipa::path(post, path = "/api/v1/push-certificate/request/signing-service",
    request_body = SigningServiceBody,
    responses((status = 201, body = lanyard_core::pushcert::PushRequestInfo),
              (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn send_push_request(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<SigningServiceBody>,
) -> ApiResult<(StatusCode, Json<lanyard_core::pushcert::PushRequestInfo>)> {
    let r = s
        .lanyard
        .request_push_signing(&actor, &s.secrets, &s.signing_service, &b.email, &b.api_key)
        .await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// The signing service's emailed reply.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyBody {
    /// The content of the emailed `*.plist.b64.p7` attachment (hex text).
    pub reply: String,
}

/// Decrypt the signing service's emailed reply to the pending request: the request file
/// for Apple's Push Certificates Portal. Stores nothing.
#[utoipa::path(post, path = "/api/v1/push-certificate/request/decrypt", request_body = ReplyBody,
    responses((status = 200, body = RequestFile), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn decrypt_push_reply(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<ReplyBody>,
) -> ApiResult<Json<RequestFile>> {
    let upload_file = s
        .lanyard
        .decrypt_push_reply(&actor, &s.secrets, b.reply.as_bytes())
        .await?;
    Ok(Json(RequestFile { upload_file }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::Value;

    /// Every parameter is declared where it is read: a path parameter names a `{placeholder}`
    /// of its path, and everything else is a query parameter (`in: query`), which is how the
    /// handlers read them (`Query<…>`).
    #[test]
    fn parameters_are_declared_in_path_or_query() {
        let doc = serde_json::to_value(super::openapi_document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut query_params = Vec::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let Some(params) = op.get("parameters").and_then(Value::as_array) else {
                    continue;
                };
                for p in params {
                    let name = p["name"].as_str().unwrap();
                    let placeholder = format!("{{{name}}}");
                    match p["in"].as_str().unwrap() {
                        "path" => assert!(
                            path.contains(&placeholder),
                            "{method} {path}: `{name}` is declared in: path but is not in the path"
                        ),
                        "query" => {
                            assert!(!path.contains(&placeholder), "{method} {path}: {name}");
                            query_params.push(format!("{path}?{name}"));
                        }
                        other => panic!("{method} {path}: `{name}` in: {other}"),
                    }
                }
            }
        }
        // The GETs known to take query parameters declare them.
        for expected in [
            "/api/v1/users?search",
            "/api/v1/users?limit",
            "/api/v1/audit?action",
            "/api/v1/devices?search",
        ] {
            assert!(
                query_params.iter().any(|q| q == expected),
                "{expected} missing from {query_params:?}"
            );
        }
    }
}
