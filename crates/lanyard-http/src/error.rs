//! The one mapping from a domain error to an answer, for every audience: [`status_of`] (the
//! HTTP status), [`code_of`] (the stable code string) and [`safe_message`] (what the caller may
//! read), put together with the one log line by [`answer`]. Each audience only renders it:
//! - the JSON API: [`ApiError`], `{"error": {"code": "invalid", "message": "…"}}`;
//! - the device endpoints: [`device_error`] (plain text, `400` for malformed protocol
//!   messages, Apple's error document for an unrecognized device);
//! - the portal and the enrollment pages: a page with the message (`portal::error_page`,
//!   `enroll::refuse`).
//!
//! Logged once, in [`answer`]: server faults at `error` with their cause chain (the caller sees
//! only that the server failed), an unreachable database and a failed upstream service at
//! `warn`; client errors are not logged.
//! Handlers do not log the errors they answer.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lanyard_core::CoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code: invalid, not_found, conflict, unauthorized, forbidden,
    /// rate_limited, upstream, payload_too_large, unsupported_media_type, unavailable (503, with
    /// `Retry-After`: the database is unreachable; retry later), internal.
    pub code: &'static str,
    /// A human-readable explanation, safe to show.
    pub message: String,
}

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (on 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let a = answer(&e);
        ApiError {
            status: a.status,
            code: a.code,
            message: a.message,
            retry_after: a.retry_after,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            }
            JsonRejection::JsonDataError(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("the JSON does not fit this request: {}", e.body_text()),
            ),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::invalid(format!("malformed JSON: {}", e.body_text()))
            }
            other => ApiError::new(other.status(), "invalid", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::invalid(format!("bad query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::invalid(format!("bad path: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            retry_after(&mut res, secs);
        }
        res
    }
}

/// Sets `Retry-After` (seconds) on an answer.
pub fn retry_after(res: &mut Response, secs: u64) {
    res.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, secs.into());
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The HTTP status of a domain error, the same for every audience (device endpoints answer
/// `400` instead of `422` for malformed protocol messages, see [`device_error`]).
pub fn status_of(e: &CoreError) -> StatusCode {
    classify(e).0
}

/// The stable machine-readable code of a domain error (the JSON API's `error.code`).
pub fn code_of(e: &CoreError) -> &'static str {
    classify(e).1
}

fn classify(e: &CoreError) -> (StatusCode, &'static str) {
    match e {
        CoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        CoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        CoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        CoreError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        CoreError::Forbidden(_) | CoreError::UnrecognizedDevice(_) => {
            (StatusCode::FORBIDDEN, "forbidden")
        }
        CoreError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        CoreError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        CoreError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream"),
        CoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        CoreError::Store(_)
        | CoreError::Pki(_)
        | CoreError::OpenSsl(_)
        | CoreError::Failed { .. }
        | CoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// What the caller is told about a server fault.
pub const INTERNAL_MESSAGE: &str = "internal error; the server log has the details";

/// The message a caller may read: the domain's own text, or for a server fault only that it
/// happened (causes can name paths, keys or SQL).
pub fn safe_message(e: &CoreError) -> String {
    if e.is_server_fault() {
        INTERNAL_MESSAGE.to_string()
    } else {
        e.to_string()
    }
}

/// A domain error as every audience answers it (each renders it its own way).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub code: &'static str,
    /// Safe to show ([`safe_message`]).
    pub message: String,
    /// Seconds for `Retry-After` (on 429; on 503 the response-headers layer adds it).
    pub retry_after: Option<u64>,
}

/// Answers a domain error and writes its one log line: a server fault at `error` with its
/// cause chain, an unreachable database or a failed upstream service (ABM, the signing
/// service) at `warn` (inside the request's span, so the line
/// carries the request id). Call it once per failed request, where the answer is rendered.
pub fn answer(e: &CoreError) -> Answer {
    let (status, code) = classify(e);
    match e {
        e if e.is_server_fault() => {
            tracing::error!(error = %e.chain(), status = status.as_u16(), "request failed");
        }
        CoreError::Unavailable(why) => {
            tracing::warn!(cause = %why, "request refused: database unavailable");
        }
        CoreError::Upstream(_) => {
            tracing::warn!(error = %e.chain(), "request failed: an upstream service failed");
        }
        _ => {}
    }
    Answer {
        status,
        code,
        message: safe_message(e),
        retry_after: match e {
            CoreError::RateLimited {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        },
    }
}

/// The same mapping for device-facing endpoints, which answer plain text (devices show or log
/// it) and use 400 for malformed protocol messages. An unrecognized device gets Apple's
/// documented 403 body instead (ErrorUnrecognizedDevice: JSON with `code`
/// `com.apple.unrecognized.device`, `Content-Type` saying it is JSON), which makes the device
/// unenroll. A `401` is never answered from here: on check-in and command endpoints a 401 is the
/// legacy unenroll trigger, so the handlers answer it only with the `apple-as-web` challenge.
pub fn device_error(e: CoreError) -> Response {
    if let CoreError::UnrecognizedDevice(m) = e {
        // Only for the device's log: nothing to show the person, the device unenrolls.
        return apple_error(&lanyard_proto::ErrorDocument {
            code: lanyard_proto::ErrorCode::UnrecognizedDevice,
            description: Some(m),
            message: None,
        });
    }
    let a = answer(&e);
    let status = if a.status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        a.status
    };
    let mut res = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        a.message,
    )
        .into_response();
    if let Some(secs) = a.retry_after {
        retry_after(&mut res, secs);
    }
    res
}

/// A `403` carrying Apple's MDM error document (`{"code": …, "description": …, "message": …}`,
/// schema `mdm/errors/*.yaml`), as JSON with its `Content-Type`, which those pages require.
pub fn apple_error(document: &lanyard_proto::ErrorDocument) -> Response {
    (StatusCode::FORBIDDEN, Json(document)).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use lanyard_store::StoreError;

    /// One of each variant, with the status and code every audience answers it with.
    fn every_variant() -> Vec<(CoreError, StatusCode, &'static str)> {
        vec![
            (
                CoreError::Invalid("bad".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
            ),
            (
                CoreError::NotFound("user x".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                CoreError::Conflict("taken".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                CoreError::Unauthorized("who".into()),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                CoreError::Forbidden("no".into()),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                CoreError::UnrecognizedDevice("gone".into()),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                CoreError::TooLarge("big".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
            (
                CoreError::RateLimited {
                    message: "slow down".into(),
                    retry_after_secs: Some(7),
                },
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
            ),
            (
                CoreError::Upstream("ABM said no".into()),
                StatusCode::BAD_GATEWAY,
                "upstream",
            ),
            (
                CoreError::Unavailable("pool timed out".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                CoreError::Store(StoreError::Corrupt("relation secret_table".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                CoreError::Pki(lanyard_pki::PkiError::Verify("secret_table".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                CoreError::OpenSsl(lanyard_pki::ErrorStack::get()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                CoreError::failed("reading settings", "column secret_table"),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                CoreError::Internal("invariant secret_table".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ]
    }

    /// Fails to compile when a variant is added, so the table above gets it too.
    #[allow(dead_code)]
    fn table_covers(e: &CoreError) {
        match e {
            CoreError::Invalid(_)
            | CoreError::NotFound(_)
            | CoreError::Conflict(_)
            | CoreError::Unauthorized(_)
            | CoreError::Forbidden(_)
            | CoreError::UnrecognizedDevice(_)
            | CoreError::TooLarge(_)
            | CoreError::RateLimited { .. }
            | CoreError::Upstream(_)
            | CoreError::Unavailable(_)
            | CoreError::Store(_)
            | CoreError::Pki(_)
            | CoreError::OpenSsl(_)
            | CoreError::Failed { .. }
            | CoreError::Internal(_) => {}
        }
    }

    #[test]
    fn every_variant_has_its_status_and_code() {
        for (e, status, code) in every_variant() {
            assert_eq!(status_of(&e), status, "{e:?}");
            assert_eq!(code_of(&e), code, "{e:?}");
            let api = ApiError::from(e);
            assert_eq!((api.status, api.code), (status, code));
        }
    }

    #[test]
    fn server_faults_tell_the_caller_nothing_of_their_cause() {
        for (e, status, _) in every_variant() {
            let message = safe_message(&e);
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                assert_eq!(message, INTERNAL_MESSAGE, "{e:?}");
                if !matches!(e, CoreError::OpenSsl(_)) {
                    let logged = e.chain().to_string();
                    assert!(
                        logged.contains("secret_table"),
                        "the log keeps the cause: {logged}"
                    );
                }
            } else {
                assert_eq!(message, e.to_string());
            }
        }
    }

    #[test]
    fn rate_limits_carry_retry_after_in_every_rendering() {
        let e = || CoreError::RateLimited {
            message: "slow down".into(),
            retry_after_secs: Some(7),
        };
        assert_eq!(answer(&e()).retry_after, Some(7));
        let res = ApiError::from(e()).into_response();
        assert_eq!(res.headers()[axum::http::header::RETRY_AFTER], "7");
        let res = device_error(e());
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[axum::http::header::RETRY_AFTER], "7");
    }

    #[test]
    fn devices_get_400_for_malformed_messages_and_apple_document_when_unrecognized() {
        let res = device_error(CoreError::Invalid("not a plist".into()));
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let res = device_error(CoreError::UnrecognizedDevice("unknown identity".into()));
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            res.headers()[axum::http::header::CONTENT_TYPE],
            "application/json"
        );
        let res = device_error(CoreError::Internal("secret_table".into()));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
