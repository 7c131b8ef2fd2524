//! The one error → HTTP mapping. Every JSON error has the same shape:
//! `{"error": {"code": "invalid", "message": "…"}}`. Server-side failures are logged here, once;
//! client errors are not logged as errors.

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
        let (status, code) = match &e {
            CoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            CoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            CoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            CoreError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            CoreError::Forbidden(_) | CoreError::UnrecognizedDevice(_) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            CoreError::RateLimited {
                message,
                retry_after_secs,
            } => {
                let mut api = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    message.clone(),
                );
                api.retry_after = *retry_after_secs;
                return api;
            }
            CoreError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            CoreError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream"),
            CoreError::Unavailable(why) => {
                tracing::warn!(cause = %why, "request refused: database unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            CoreError::Store(_) | CoreError::Internal(_) => {
                // The one place a server-side failure is logged.
                tracing::error!(error = %e, "request failed");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
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
    let api = ApiError::from(e);
    let status = if api.status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        api.status
    };
    let mut res = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        api.message,
    )
        .into_response();
    if let Some(secs) = api.retry_after {
        retry_after(&mut res, secs);
    }
    res
}

/// A `403` carrying Apple's MDM error document (`{"code": …, "description": …, "message": …}`,
/// schema `mdm/errors/*.yaml`), as JSON with its `Content-Type`, which those pages require.
pub fn apple_error(document: &lanyard_proto::ErrorDocument) -> Response {
    (StatusCode::FORBIDDEN, Json(document)).into_response()
}
