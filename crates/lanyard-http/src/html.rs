//! HTML and URL pieces shared by the server-rendered pages of both audiences, the portal and
//! the enrollment pages: escaping, query-value encoding, redirects after a form, and the
//! headers every page carries. Each audience keeps its own layout.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value or path segment.
pub fn qv(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `303 See Other` to `location`: the answer to a form that did its work.
pub fn see_other(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The headers of every page: its Content-Security-Policy, and no framing.
/// (`Cache-Control: no-store` and `nosniff` come from the one response-headers layer,
/// [`crate::response_headers`].)
pub fn page_headers(res: &mut Response, csp: &'static str) {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(qv("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(qv("ann@example.com"), "ann%40example.com");
    }
}
