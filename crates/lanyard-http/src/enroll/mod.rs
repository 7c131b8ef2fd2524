//! The enrollment web pages the Mac shows in its web authentication view, and what they
//! share: the page layout and its Content-Security-Policy, the flow cookie, refusals (a domain
//! error rendered through the one mapping, [`crate::error::answer`]).
//! - `pages`: sign in with a password → what the organisation can and cannot see → who owns
//!   this Mac → custom attributes → the hand-off to the Mac;
//! - [`oidc`]: the same sign-in through an OpenID Connect identity provider.

pub mod oidc;
mod pages;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;

use lanyard_core::enrollment::FlowStep;
use lanyard_core::CoreError;

use crate::html::{html, page_headers, render, see_other, Markup, DOCTYPE};
use crate::AppState;

pub const FLOW_COOKIE: &str = "lanyard_flow";
pub const CSRF_COOKIE: &str = "lanyard_csrf";
pub const FORM_BODY_LIMIT: usize = 16 * 1024;

/// The callback that ends the web sign-in; the Mac's web authentication session waits for a
/// navigation to its scheme.
const AUTH_RESULT: &str = "apple-remotemanagement-user-login://authentication-results";

/// Content-Security-Policy of the enrollment pages (the portal has its own, stricter one).
///
/// `form-action` also allows the callback scheme: the last page's form POST is answered by a
/// redirect to `apple-remotemanagement-user-login://authentication-results?access-token=…`
/// (Apple, "Implementing the simple authentication account-driven enrollment flow", step 11:
/// <https://developer.apple.com/documentation/devicemanagement/implementing-the-simple-authentication-account-driven-enrollment-flow>).
/// CSP Level 3 `form-action` (<https://www.w3.org/TR/CSP3/#directive-form-action>) restricts
/// where a form submission may navigate, and browsers apply it to the redirects of that
/// navigation: Chromium refuses the hand-off ("Sending form data to … violates … form-action
/// 'self'"), WebKit checks form-action on redirects too. With `'self'` alone the access token
/// never reaches the Mac. Only the enrollment pages allow the scheme.
const ENROLLMENT_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     form-action 'self' apple-remotemanagement-user-login:; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    pages::routes()
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT))
        .merge(oidc::routes())
}

const STYLE: &str = "body{font:16px/1.5 -apple-system,system-ui,sans-serif;margin:0;background:#f5f5f7;color:#1d1d1f}\
main{max-width:30rem;margin:2rem auto;padding:1.5rem 2rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.4rem;margin:.2rem 0 1rem}label{display:block;margin:.8rem 0 .2rem;font-weight:600}\
input[type=email],input[type=password],input[type=text],input[type=number],select{width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #b0b0b5;border-radius:8px;font:inherit}\
button{margin-top:1.2rem;width:100%;padding:.7rem;border:0;border-radius:8px;background:#0071e3;color:#fff;font:inherit;font-weight:600}\
.error{background:#fff2f2;border:1px solid #e0a0a0;border-radius:8px;padding:.6rem .8rem;color:#8a1010}\
.muted{color:#6e6e73;font-size:.9rem}fieldset{border:0;padding:0;margin:.5rem 0}\
fieldset label{font-weight:400;display:flex;gap:.5rem;align-items:center}ul{padding-left:1.2rem}";

pub(crate) fn page(status: StatusCode, org: &str, title: &str, body: Markup) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { (title) " · " (org) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                main {
                    p .muted { (org) }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    let mut res = render(status, page);
    page_headers(&mut res, ENROLLMENT_CSP);
    res
}

/// A page that ends the flow with an explanation.
pub(crate) fn refusal(s: &AppState, status: StatusCode, message: &str) -> Response {
    page(
        status,
        s.enrollment.organization(),
        "This Mac can't be enrolled",
        error_block(Some(message)),
    )
}

/// The error above a form (nothing when there is none).
pub(crate) fn error_block(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message {
            p #message .error role="alert" { (m) }
        }
    }
}

pub(crate) fn set_cookie(res: &mut Response, name: &str, value: &str, max_age: i64) {
    let c =
        format!("{name}={value}; Path=/enroll; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A flow that has started: to its next step, with the cookie that carries it.
pub(crate) fn flow_started(secret: &str, step: FlowStep) -> Response {
    let mut res = see_other(step_url(step));
    set_cookie(
        &mut res,
        FLOW_COOKIE,
        secret,
        lanyard_core::enrollment::FLOW_MINUTES * 60,
    );
    res
}

pub(crate) fn step_url(step: FlowStep) -> &'static str {
    match step {
        FlowStep::Privacy => "/enroll/privacy",
        FlowStep::Ownership => "/enroll/ownership",
        FlowStep::Attributes => "/enroll/attributes",
    }
}

/// A domain error on a page: a refusal page with the one mapping's status and message
/// ([`crate::error::answer`], which also logs it).
pub(crate) fn refuse(s: &AppState, e: CoreError) -> Response {
    let a = crate::error::answer(&e);
    let text = if a.status == StatusCode::INTERNAL_SERVER_ERROR {
        "Something went wrong on the server. Try again in a moment."
    } else {
        &a.message
    };
    let mut res = refusal(s, a.status, text);
    if let Some(secs) = a.retry_after {
        crate::error::retry_after(&mut res, secs);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_pages_let_the_form_hand_off_to_the_mac() {
        let res = page(StatusCode::OK, "Example", "Sign in", html! {});
        let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        let form_action = csp
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix("form-action "))
            .unwrap();
        assert_eq!(
            form_action.split_whitespace().collect::<Vec<_>>(),
            ["'self'", "apple-remotemanagement-user-login:"],
            "{csp}"
        );
        assert!(AUTH_RESULT.starts_with("apple-remotemanagement-user-login://"));
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    }

    #[tokio::test]
    async fn an_error_on_a_page_is_escaped() {
        use http_body_util::BodyExt;
        let hostile = "<script>alert(\"x\")</script> & 'y'";
        let res = page(
            StatusCode::OK,
            "Org <b>\"",
            "Sign in",
            error_block(Some(hostile)),
        );
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            !body.contains("<script>") && !body.contains("<b>"),
            "{body}"
        );
        assert!(
            body.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; 'y'"),
            "{body}"
        );
        assert!(body.contains("Org &lt;b&gt;&quot;"), "{body}");
    }
}
