//! Device-facing routes: service discovery, the enrollment endpoint (`401 apple-as-web`, then
//! the signed profile), SCEP, check-in and the command endpoint. Handlers are thin: bounded
//! bytes → the enrollment service → bytes. Bodies are never logged (they hold push tokens,
//! PushMagic and challenges).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;

use lanyard_core::mdm::{CheckinReply, DeviceRequest};
use lanyard_core::CoreError;
use lanyard_proto::{ErrorCode, ErrorDocument};

use crate::error::{apple_error, device_error};
use crate::AppState;

/// Largest MachineInfo body accepted at the enrollment endpoint.
pub const ENROLL_BODY_LIMIT: usize = 64 * 1024;
/// Largest SCEP message.
pub const SCEP_BODY_LIMIT: usize = 64 * 1024;
/// Largest check-in: a `DeclarativeManagement` status report; the other check-in messages are
/// held to a smaller cap by the device service (`lanyard_core::mdm`, where each cap is argued).
pub const CHECKIN_BODY_LIMIT: usize = lanyard_core::mdm::DECLARATIVE_MESSAGE_LIMIT;
/// Largest command report (inventory results such as `InstalledApplicationList`).
pub const MDM_BODY_LIMIT: usize = lanyard_core::mdm::COMMAND_REPORT_LIMIT;

const DISCOVERY_PATH: &str = "/.well-known/com.apple.remotemanagement";
const ENROLL_PATH: &str = "/enroll";
const SCEP_PATH: &str = "/scep";
const CHECKIN_PATH: &str = "/mdm/checkin";
const COMMAND_PATH: &str = "/mdm/command";

/// Every device route with its methods, as [`routes`] serves them: the metrics layer registers
/// their handles once (`crate::RouteMetrics`), so a device request allocates no label.
pub const DEVICE_ROUTES: [(Method, &str); 7] = [
    (Method::GET, DISCOVERY_PATH),
    (Method::GET, ENROLL_PATH),
    (Method::POST, ENROLL_PATH),
    (Method::GET, SCEP_PATH),
    (Method::POST, SCEP_PATH),
    (Method::PUT, CHECKIN_PATH),
    (Method::PUT, COMMAND_PATH),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(DISCOVERY_PATH, get(discovery))
        .route(
            ENROLL_PATH,
            post(enroll)
                .get(enroll)
                .layer(DefaultBodyLimit::max(ENROLL_BODY_LIMIT)),
        )
        .route(
            SCEP_PATH,
            get(scep_get)
                .post(scep_post)
                .layer(DefaultBodyLimit::max(SCEP_BODY_LIMIT)),
        )
        .route(
            CHECKIN_PATH,
            put(checkin).layer(DefaultBodyLimit::max(CHECKIN_BODY_LIMIT)),
        )
        .route(
            COMMAND_PATH,
            put(command).layer(DefaultBodyLimit::max(MDM_BODY_LIMIT)),
        )
        .route(
            "/mdm/assets/{identifier}",
            get(asset).layer(DefaultBodyLimit::max(0)),
        )
}

#[derive(Deserialize)]
struct DiscoveryQuery {
    #[serde(rename = "user-identifier")]
    user_identifier: Option<String>,
    #[serde(rename = "model-family")]
    model_family: Option<String>,
}

/// Refuses a discovery request the way Apple documents: `403` with
/// `{"code":"com.apple.well-known.failed"}` (schema `mdm/errors/well-known.failed.yaml`,
/// macOS 14.5+: "returned when a device is doing well-known resource service discovery for
/// account driven enrollments, and the server rejects the request"). A Mac on macOS 15.2 or
/// later may then ask Apple for the discovery URL the organisation registered.
fn refuse_discovery(text: impl Into<String>) -> Response {
    apple_error(&ErrorDocument::new(ErrorCode::WellKnownFailed, text))
}

/// Service discovery: the `mdm-byod` BaseURL for a Mac of a managed account. Every refusal —
/// malformed query, unknown domain, a family other than `Mac`, enrollment not open — is the
/// well-known refusal above; only a server fault is a 500.
async fn discovery(
    State(s): State<AppState>,
    q: Result<Query<DiscoveryQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return refuse_discovery("malformed query string");
    };
    let Some(id) = q.user_identifier.filter(|s| !s.trim().is_empty()) else {
        return refuse_discovery("user-identifier (the managed Apple Account) is required");
    };
    match s.enrollment.discover(&id, q.model_family.as_deref()).await {
        Ok(doc) => Json(doc).into_response(),
        Err(e) if e.is_server_fault() || matches!(e, CoreError::Unavailable(_)) => device_error(e),
        Err(e) => refuse_discovery(e.to_string()),
    }
}

/// Refuses an enrollment request at the BaseURL. Apple's account-driven enrollment article
/// asks for an HTTP error, on which the device stops; a refusal (`Forbidden`: enrollment not
/// open, not a Mac, macOS too old, account disabled) is a `403` with the error document of
/// Apple's schema (`mdm/errors`: `code`, a `description` for the device log and a `message`
/// the device shows when it can) under Lanyard's own code, as Apple defines none for this
/// request. Malformed requests stay `400`.
fn refuse_enrollment(e: CoreError) -> Response {
    match e {
        CoreError::Forbidden(m) => {
            apple_error(&ErrorDocument::new(ErrorCode::EnrollmentRefused, m))
        }
        other => device_error(other),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The `WWW-Authenticate` value of the `apple-as-web` challenge: the `Bearer` scheme and an
/// auth-param list as RFC 7235 §2.1 (RFC 9110 §11.2) defines it, parameters separated by commas,
/// values quoted: `Bearer method="apple-as-web", url="…"` (Apple, "Implementing the simple
/// authentication account-driven enrollment flow", step 5). A strict parser refuses the
/// parameters without the comma.
fn apple_as_web_challenge(sign_in_url: &str) -> String {
    let mut quoted = String::with_capacity(sign_in_url.len());
    for c in sign_in_url.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    format!("Bearer method=\"apple-as-web\", url=\"{quoted}\"")
}

/// `401` with the `apple-as-web` challenge naming our sign-in page.
fn challenge(s: &AppState, message: &str) -> Response {
    let value = apple_as_web_challenge(&s.enrollment.urls().sign_in());
    let mut res = (StatusCode::UNAUTHORIZED, message.to_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

async fn enroll(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let facts = match s.enrollment.device_facts(&body).await {
        Ok(f) => f,
        Err(e) => return refuse_enrollment(e),
    };
    let Some(token) = bearer(&headers) else {
        return challenge(&s, "sign in to enroll this Mac");
    };
    match s.enrollment.issue_profile(token, &facts).await {
        Ok(profile) => (
            [(header::CONTENT_TYPE, "application/x-apple-aspen-config")],
            profile,
        )
            .into_response(),
        Err(CoreError::Unauthorized(m)) => challenge(&s, &m),
        Err(e) => refuse_enrollment(e),
    }
}

#[derive(Deserialize)]
struct ScepQuery {
    operation: Option<String>,
    message: Option<String>,
}

fn scep_response(r: lanyard_pki::scep::ScepResponse) -> Response {
    ([(header::CONTENT_TYPE, r.content_type)], r.body).into_response()
}

async fn scep_get(
    State(s): State<AppState>,
    q: Result<Query<ScepQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return device_error(CoreError::Invalid("malformed query string".into()));
    };
    match q.operation.as_deref() {
        Some("GetCACaps") => match s.enrollment.scep_caps() {
            Ok(r) => scep_response(r),
            Err(e) => device_error(e),
        },
        Some("GetCACert") => match s.enrollment.scep_ca_cert() {
            Ok(r) => scep_response(r),
            Err(e) => device_error(e),
        },
        Some("PKIOperation") => {
            let Some(msg) = q.message else {
                return device_error(CoreError::Invalid("PKIOperation needs message".into()));
            };
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(msg.trim()) else {
                return device_error(CoreError::Invalid("message is not base64".into()));
            };
            if bytes.len() > SCEP_BODY_LIMIT {
                return StatusCode::PAYLOAD_TOO_LARGE.into_response();
            }
            match s.enrollment.scep_pki_operation(&bytes).await {
                Ok(r) => scep_response(r),
                Err(e) => device_error(e),
            }
        }
        _ => device_error(CoreError::Invalid(
            "operation must be GetCACaps, GetCACert or PKIOperation".into(),
        )),
    }
}

async fn scep_post(
    State(s): State<AppState>,
    q: Result<Query<ScepQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    match q.as_ref().ok().and_then(|q| q.0.operation.as_deref()) {
        Some("PKIOperation") => match s.enrollment.scep_pki_operation(&body).await {
            Ok(r) => scep_response(r),
            Err(e) => device_error(e),
        },
        _ => device_error(CoreError::Invalid(
            "POST is for operation=PKIOperation".into(),
        )),
    }
}

fn mdm_signature(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get("mdm-signature").map(|v| v.as_bytes())
}

/// The request as the device service sees it: signature, user-channel bearer, exact body.
fn device_request<'a>(headers: &'a HeaderMap, body: &'a Bytes) -> DeviceRequest<'a> {
    DeviceRequest {
        signature: mdm_signature(headers),
        bearer: bearer(headers),
        body,
    }
}

/// A refusal on the check-in or command endpoint. `401` only ever comes with the
/// `apple-as-web` challenge (the user channel must re-authenticate; Apple, "Onboarding users
/// with account sign-in"); everything else goes through the one device mapping.
fn mdm_refusal(s: &AppState, e: CoreError) -> Response {
    match e {
        CoreError::Unauthorized(m) => challenge(s, &m),
        other => device_error(other),
    }
}

/// The body of a check-in or command report, or why not: too large for the route (413 with
/// the cap; nothing is read further or stored) or unreadable.
fn device_body(
    body: Result<Bytes, BytesRejection>,
    what: &str,
    limit: usize,
) -> Result<Bytes, CoreError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            CoreError::TooLarge(format!(
                "{what} is larger than this server accepts ({} KiB at most)",
                limit / 1024
            ))
        } else {
            CoreError::Invalid(format!("{what}: {}", r.body_text()))
        }
    })
}

async fn checkin(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match device_body(body, "a check-in", CHECKIN_BODY_LIMIT) {
        Ok(b) => b,
        Err(e) => return device_error(e),
    };
    match s.mdm.checkin(device_request(&headers, &body)).await {
        Ok(CheckinReply::Ok) => StatusCode::OK.into_response(),
        Ok(CheckinReply::Plist(p)) => {
            ([(header::CONTENT_TYPE, "application/xml")], p).into_response()
        }
        Ok(CheckinReply::Json(j)) => {
            ([(header::CONTENT_TYPE, "application/json")], j).into_response()
        }
        Ok(CheckinReply::Gone) => StatusCode::GONE.into_response(),
        Err(e) => mdm_refusal(&s, e),
    }
}

/// The command endpoint: identifies the device, records its report (result, error or NotNow)
/// and answers the next command for that channel, or an empty 200 when none is due.
async fn command(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match device_body(body, "a command report", MDM_BODY_LIMIT) {
        Ok(b) => b,
        Err(e) => return device_error(e),
    };
    match s.mdm.command(device_request(&headers, &body)).await {
        Ok(Some(next)) => (
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            next.payload,
        )
            .into_response(),
        Ok(None) => StatusCode::OK.into_response(),
        Err(e) => mdm_refusal(&s, e),
    }
}

/// An asset's data, for the Macs it is assigned to: the request is signed like a check-in
/// (`Mdm-Signature` over the empty body) and, on the user channel where Lanyard serves
/// declarations, carries the bearer. A Mac the asset is not assigned to gets 404.
async fn asset(
    State(s): State<AppState>,
    axum::extract::Path(identifier): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let empty = Bytes::new();
    match s
        .mdm
        .asset(device_request(&headers, &empty), &identifier)
        .await
    {
        Ok((content_type, data)) => match HeaderValue::from_str(&content_type) {
            Ok(ct) => ([(header::CONTENT_TYPE, ct)], data).into_response(),
            Err(_) => device_error(CoreError::Internal(
                "a stored asset's media type is not a header value".into(),
            )),
        },
        Err(e) => mdm_refusal(&s, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_an_auth_param_list() {
        assert_eq!(
            apple_as_web_challenge("https://mdm.example.com/enroll/sign-in"),
            r#"Bearer method="apple-as-web", url="https://mdm.example.com/enroll/sign-in""#
        );
        assert_eq!(
            apple_as_web_challenge(r#"https://x.example/a"b\c"#),
            r#"Bearer method="apple-as-web", url="https://x.example/a\"b\\c""#
        );
    }
}
