//! Who is calling the admin API: an API token (`Authorization: Bearer lyt_…`), a session token
//! (`Authorization: Bearer lys_…`), or the portal's session cookie. Cookie-authenticated requests
//! that change something must carry the session's CSRF token in `X-CSRF-Token`; bearer tokens are
//! not sent by browsers on their own, so they need none.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use lanyard_core::Actor;

use crate::error::ApiError;
use crate::AppState;

pub const SESSION_COOKIE: &str = "lanyard_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The authenticated administrator behind a request.
pub struct Authed(pub Actor);

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session secret a request is made with (`Authorization: Bearer lys_…` or the session
/// cookie), if it is made with a session rather than an API token.
pub(crate) fn session_secret(headers: &HeaderMap) -> Option<&str> {
    match headers.get(header::AUTHORIZATION) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with("lys_")),
        None => cookie(headers, SESSION_COOKIE),
    }
}

/// Compares two secrets without revealing where they first differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let lanyard = &state.lanyard;
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or_else(|| ApiError::unauthorized("use Authorization: Bearer <token>"))?
                .trim();
            if token.starts_with("lys_") {
                let (actor, _) = lanyard.actor_for_session(token).await?;
                return Ok(Authed(actor));
            }
            return Ok(Authed(lanyard.actor_for_api_token(token).await?));
        }
        if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
            let (actor, csrf) = lanyard.actor_for_session(secret).await?;
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                let sent = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                    return Err(ApiError::forbidden(
                        "missing or wrong CSRF token; reload the page and try again",
                    ));
                }
            }
            return Ok(Authed(actor));
        }
        Err(ApiError::unauthorized(
            "sign in or send Authorization: Bearer <API token>",
        ))
    }
}
