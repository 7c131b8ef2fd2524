//! Cookies and secrets shared by the audiences that sign people in: the admin session cookie
//! (the API's [`crate::api::Authed`] and the portal), the session secret of a request, and a
//! constant-time comparison for CSRF tokens and other secrets.

use axum::http::{header, HeaderMap};

pub const SESSION_COOKIE: &str = "lanyard_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

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
