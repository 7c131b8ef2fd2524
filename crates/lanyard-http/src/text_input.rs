//! NUL characters (U+0000) are refused in every text input, in this one place, before any
//! handler runs: the request path and query string (`%00`), URL-encoded form bodies (`%00` or a
//! raw NUL byte) and JSON bodies (`\u0000`). PostgreSQL cannot store U+0000 in text and SQLite
//! would keep it, so without this the two databases would differ; refused here, both answer
//! `400` and nothing changes. Property lists from devices are refused by the plist reader
//! (`lanyard_proto::read_plist`: XML cannot carry U+0000, even as a character reference).

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Largest URL-encoded form or JSON body read here: the largest any route takes
/// ([`crate::ADMIN_BODY_LIMIT`] for the API; portal and sign-in forms are smaller and their
/// routes still hold them to their own caps).
const TEXT_BODY_LIMIT: usize = crate::ADMIN_BODY_LIMIT;

const REFUSAL: &str = "text may not contain NUL characters (U+0000)";

/// The body kinds whose text is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextBody {
    Form,
    Json,
}

fn text_body(req: &Request) -> Option<TextBody> {
    let ct = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
    if essence == "application/x-www-form-urlencoded" {
        Some(TextBody::Form)
    } else if essence == "application/json" || essence.ends_with("+json") {
        Some(TextBody::Json)
    } else {
        None
    }
}

/// Whether percent-encoded text (a path, a query string, a form body) decodes to a NUL.
fn encoded_nul(text: &[u8]) -> bool {
    text.contains(&0) || text.windows(3).any(|w| w == b"%00")
}

/// Whether a JSON text holds a NUL in a string: a `\u0000` escape (not `\\u0000`, an escaped
/// backslash followed by text) or a raw NUL byte (which JSON forbids anyway).
fn json_nul(text: &[u8]) -> bool {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            0 => return true,
            b'\\' => {
                if text[i + 1..].starts_with(b"u0000") {
                    return true;
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    false
}

/// The refusal, in the shape of the route: the API's JSON error under `/api/`, plain text
/// elsewhere (pages, portal, device routes).
fn refuse(path: &str, status: StatusCode, message: &str) -> Response {
    if path.starts_with("/api/") {
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid"
        };
        return ApiError::new(status, code, message).into_response();
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_string(),
    )
        .into_response()
}

/// The middleware (see the module doc).
pub async fn refuse_nul(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let query_nul = req.uri().query().is_some_and(|q| encoded_nul(q.as_bytes()));
    if encoded_nul(path.as_bytes()) || query_nul {
        return refuse(&path, StatusCode::BAD_REQUEST, REFUSAL);
    }
    let Some(kind) = text_body(&req) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, TEXT_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                &path,
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            )
        }
    };
    let nul = match kind {
        TextBody::Form => encoded_nul(&bytes),
        TextBody::Json => json_nul(&bytes),
    };
    if nul {
        return refuse(&path, StatusCode::BAD_REQUEST, REFUSAL);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_in_each_encoding() {
        assert!(encoded_nul(b"search=a%00b"));
        assert!(encoded_nul(b"a\0b"));
        assert!(!encoded_nul(b"search=a%2500b&x=%0A"));
        assert!(json_nul(br#"{"a":"x\u0000"}"#));
        assert!(json_nul(br#"{"a\u0000":1}"#));
        assert!(!json_nul(br#"{"a":"x\\u0000"}"#));
        assert!(json_nul(br#"{"a":"x\\\u0000"}"#));
        assert!(json_nul(br#"{"a":"\u00001"}"#));
        assert!(!json_nul(br#"{"a":"\u0001 \n"}"#));
        assert!(!json_nul(b"\\"));
    }
}
