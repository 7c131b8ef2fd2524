//! The enrollment sign-in pages the Mac shows in its web authentication view: sign in → what
//! the organisation can and cannot see → who owns this Mac → custom attributes and "allow remote
//! management" → `308` redirect to `apple-remotemanagement-user-login://…?access-token=…`.
//!
//! Small server-rendered HTML (no scripts), fine in a constrained web view. Every form carries a
//! CSRF token that must match the `lanyard_csrf` cookie (double submit; cookies are
//! `SameSite=Lax`, `HttpOnly`, `Secure`). Sign-ins go through the domain's sign-in throttle, per
//! account and client address (see `lanyard_core::sign_in`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::rejection::{ExtensionRejection, FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use lanyard_core::attributes::{AttributeKind, CustomAttribute};
use lanyard_core::enrollment::FlowStep;
use lanyard_core::CoreError;

use crate::auth::{constant_time_eq, cookie};
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
    Router::new()
        .route("/enroll/sign-in", get(sign_in_page).post(sign_in_submit))
        .route("/enroll/privacy", get(privacy_page).post(privacy_submit))
        .route(
            "/enroll/ownership",
            get(ownership_page).post(ownership_submit),
        )
        .route(
            "/enroll/attributes",
            get(attributes_page).post(attributes_submit),
        )
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT))
}

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

const STYLE: &str = "body{font:16px/1.5 -apple-system,system-ui,sans-serif;margin:0;background:#f5f5f7;color:#1d1d1f}\
main{max-width:30rem;margin:2rem auto;padding:1.5rem 2rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.4rem;margin:.2rem 0 1rem}label{display:block;margin:.8rem 0 .2rem;font-weight:600}\
input[type=email],input[type=password],input[type=text],input[type=number],select{width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #b0b0b5;border-radius:8px;font:inherit}\
button{margin-top:1.2rem;width:100%;padding:.7rem;border:0;border-radius:8px;background:#0071e3;color:#fff;font:inherit;font-weight:600}\
.error{background:#fff2f2;border:1px solid #e0a0a0;border-radius:8px;padding:.6rem .8rem;color:#8a1010}\
.muted{color:#6e6e73;font-size:.9rem}fieldset{border:0;padding:0;margin:.5rem 0}\
fieldset label{font-weight:400;display:flex;gap:.5rem;align-items:center}ul{padding-left:1.2rem}";

pub(crate) fn page(status: StatusCode, org: &str, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t} · {o}</title><style>{STYLE}</style></head><body><main>\
         <p class=\"muted\">{o}</p><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title),
        o = esc(org),
    );
    let mut res = (status, Html(html)).into_response();
    // Cache-Control: no-store and nosniff come from the one response-headers layer.
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(ENROLLMENT_CSP),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    res
}

/// A page that ends the flow with an explanation.
pub(crate) fn refusal(s: &AppState, status: StatusCode, message: &str) -> Response {
    page(
        status,
        s.enrollment.organization(),
        "This Mac can't be enrolled",
        &format!(
            "<p id=\"message\" class=\"error\" role=\"alert\">{}</p>",
            esc(message)
        ),
    )
}

fn error_block(message: Option<&str>) -> String {
    message
        .map(|m| {
            format!(
                "<p id=\"message\" class=\"error\" role=\"alert\">{}</p>",
                esc(m)
            )
        })
        .unwrap_or_default()
}

pub(crate) fn set_cookie(res: &mut Response, name: &str, value: &str, max_age: i64) {
    let c =
        format!("{name}={value}; Path=/enroll; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub(crate) fn see_other(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The end of the web sign-in, for both sign-in paths (password and identity provider):
/// `308 Permanent Redirect` to
/// `apple-remotemanagement-user-login://authentication-results?access-token=…`, the status and
/// URL Apple documents for the simple authentication flow ("Implementing the simple
/// authentication account-driven enrollment flow", step 11). The Mac's web authentication
/// session takes the navigation to that scheme as its callback and reads `access-token`.
fn hand_off(access_token: &str) -> Response {
    let token: String = url::form_urlencoded::byte_serialize(access_token.as_bytes()).collect();
    let mut res = StatusCode::PERMANENT_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{AUTH_RESULT}?access-token={token}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The CSRF token for this browser: the cookie's, or a new one to set.
fn csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE).filter(|c| c.len() >= 32) {
        Some(c) => (c.to_string(), false),
        None => (lanyard_core::admins::new_secret("").secret, true),
    }
}

fn csrf_ok(headers: &HeaderMap, sent: &str) -> bool {
    cookie(headers, CSRF_COOKIE)
        .is_some_and(|c| !sent.is_empty() && constant_time_eq(c.as_bytes(), sent.as_bytes()))
}

fn with_csrf(mut res: Response, token: &str, fresh: bool) -> Response {
    if fresh {
        set_cookie(&mut res, CSRF_COOKIE, token, 3600);
    }
    res
}

fn forbidden_csrf(s: &AppState) -> Response {
    refusal(
        s,
        StatusCode::FORBIDDEN,
        "This form has expired or did not come from this page. Go back and try again.",
    )
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

#[derive(Deserialize, Default)]
struct SignInQuery {
    #[serde(rename = "user-identifier")]
    user_identifier: Option<String>,
}

fn sign_in_form(
    s: &AppState,
    status: StatusCode,
    csrf: &str,
    email: &str,
    user_identifier: &str,
    message: Option<&str>,
    providers: &str,
) -> Response {
    let body = format!(
        "<p>Sign in with your work or school account to enroll this Mac. Your organisation will \
         manage only work data on it.</p>{err}\
         <form method=\"post\" action=\"/enroll/sign-in\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"user_identifier\" value=\"{uid}\">\
         <label for=\"email\">Email or managed Apple Account</label>\
         <input id=\"email\" type=\"email\" name=\"email\" value=\"{email}\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" type=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>{providers}",
        err = error_block(message),
        csrf = esc(csrf),
        uid = esc(user_identifier),
        email = esc(email),
    );
    page(status, s.enrollment.organization(), "Sign in", &body)
}

async fn sign_in_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<SignInQuery>, QueryRejection>,
) -> Response {
    let uid = q
        .ok()
        .and_then(|Query(q)| q.user_identifier)
        .unwrap_or_default();
    let (csrf, fresh) = csrf_token(&headers);
    let providers = crate::oidc_pages::provider_links(&s, &uid).await;
    with_csrf(
        sign_in_form(&s, StatusCode::OK, &csrf, &uid, &uid, None, &providers),
        &csrf,
        fresh,
    )
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user_identifier: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

async fn sign_in_submit(
    State(s): State<AppState>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return refusal(&s, StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    if !csrf_ok(&headers, &f.csrf) {
        return forbidden_csrf(&s);
    }
    let client = crate::client::client_address(&s.trusted_proxies, &peer, &headers);
    let uid = Some(f.user_identifier.as_str()).filter(|u| !u.trim().is_empty());
    match s
        .enrollment
        .start_flow(&f.email, &f.password, uid, client)
        .await
    {
        Ok((secret, step)) => {
            let mut res = see_other(step_url(step));
            set_cookie(
                &mut res,
                FLOW_COOKIE,
                &secret,
                lanyard_core::enrollment::FLOW_MINUTES * 60,
            );
            res
        }
        Err(CoreError::Unauthorized(m)) => sign_in_form(
            &s,
            StatusCode::UNAUTHORIZED,
            &f.csrf,
            &f.email,
            &f.user_identifier,
            Some(&m),
            &crate::oidc_pages::provider_links(&s, &f.user_identifier).await,
        ),
        Err(CoreError::RateLimited {
            retry_after_secs, ..
        }) => {
            let mut res = sign_in_form(
                &s,
                StatusCode::TOO_MANY_REQUESTS,
                &f.csrf,
                &f.email,
                &f.user_identifier,
                Some("Too many failed sign-ins. Wait a little, then try again."),
                &crate::oidc_pages::provider_links(&s, &f.user_identifier).await,
            );
            if let Some(secs) = retry_after_secs {
                crate::error::retry_after(&mut res, secs);
            }
            res
        }
        Err(e) => refuse(&s, e),
    }
}

/// The flow cookie and its live state, or the page to show instead.
async fn current_flow(
    s: &AppState,
    headers: &HeaderMap,
    expect: FlowStep,
) -> Result<(String, lanyard_core::enrollment::FlowState), Response> {
    let Some(secret) = cookie(headers, FLOW_COOKIE) else {
        return Err(refusal(
            s,
            StatusCode::UNAUTHORIZED,
            "Your sign-in has expired. Please start again.",
        ));
    };
    let state = s.enrollment.flow(secret).await.map_err(|e| refuse(s, e))?;
    if state.step != expect {
        return Err(see_other(step_url(state.step)));
    }
    Ok((secret.to_string(), state))
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn privacy_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (_, state) = match current_flow(&s, &headers, FlowStep::Privacy).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (csrf, fresh) = csrf_token(&headers);
    let org = esc(&state.organization);
    let body =
        format!(
        "<p>Signed in as <strong>{who}</strong>. Enrolling this personal Mac creates a separate, \
         encrypted volume for work data.</p>\
         <h2>{org} can</h2><ul><li>install and remove work apps, accounts and settings</li>\
         <li>see the macOS version, the Mac's model and the work data it manages</li>\
         <li>remove all work data, leaving your personal data untouched</li></ul>\
         <h2>{org} cannot</h2><ul><li>see your personal email, messages, photos, files or \
         browsing</li><li>see your personal apps or their data</li><li>see the Mac's serial \
         number or locate it</li><li>erase or lock your Mac</li></ul>\
         <form method=\"post\" action=\"/enroll/privacy\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Continue</button></form>",
        who = esc(state.user.managed_apple_id.as_deref().unwrap_or(&state.user.email)),
        csrf = esc(&csrf),
    );
    with_csrf(
        page(
            StatusCode::OK,
            &state.organization,
            "What your organisation can see",
            &body,
        ),
        &csrf,
        fresh,
    )
}

async fn privacy_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return refusal(&s, StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    if !csrf_ok(&headers, &f.csrf) {
        return forbidden_csrf(&s);
    }
    let (secret, _) = match current_flow(&s, &headers, FlowStep::Privacy).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match s.enrollment.accept_privacy(&secret).await {
        Ok(step) => see_other(step_url(step)),
        Err(e) => refuse(&s, e),
    }
}

fn ownership_form(s: &AppState, csrf: &str, status: StatusCode, message: Option<&str>) -> Response {
    let body = format!(
        "<p>Who owns this Mac?</p>{err}<form method=\"post\" action=\"/enroll/ownership\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><fieldset>\
         <legend class=\"muted\">Device ownership</legend>\
         <label><input type=\"radio\" name=\"ownership\" value=\"employee\" required> \
         Employee — my own Mac</label>\
         <label><input type=\"radio\" name=\"ownership\" value=\"corporate\"> Corporate — owned \
         by the organisation</label>\
         <label><input type=\"radio\" name=\"ownership\" value=\"shared\"> Shared — used by \
         several people</label></fieldset>\
         <button type=\"submit\">Continue</button></form>",
        err = error_block(message),
        csrf = esc(csrf),
    );
    page(
        status,
        s.enrollment.organization(),
        "Device ownership",
        &body,
    )
}

async fn ownership_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = current_flow(&s, &headers, FlowStep::Ownership).await {
        return r;
    }
    let (csrf, fresh) = csrf_token(&headers);
    with_csrf(
        ownership_form(&s, &csrf, StatusCode::OK, None),
        &csrf,
        fresh,
    )
}

#[derive(Deserialize)]
struct OwnershipForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    ownership: String,
}

async fn ownership_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<OwnershipForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return refusal(&s, StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    if !csrf_ok(&headers, &f.csrf) {
        return forbidden_csrf(&s);
    }
    let (secret, _) = match current_flow(&s, &headers, FlowStep::Ownership).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match s.enrollment.choose_ownership(&secret, &f.ownership).await {
        Ok(step) => see_other(step_url(step)),
        Err(CoreError::Invalid(m)) => {
            ownership_form(&s, &f.csrf, StatusCode::UNPROCESSABLE_ENTITY, Some(&m))
        }
        Err(e) => {
            let mut res = refuse(&s, e);
            set_cookie(&mut res, FLOW_COOKIE, "", 0);
            res
        }
    }
}

fn attribute_input(a: &CustomAttribute, value: &str) -> String {
    let name = format!("attr:{}", a.name);
    let id = format!("attr-{}", a.id);
    let req = if a.required { " required" } else { "" };
    let label = format!(
        "<label for=\"{id}\">{}{}</label>",
        esc(&a.name),
        if a.required {
            ""
        } else {
            " <span class=\"muted\">(optional)</span>"
        }
    );
    let control = match a.kind {
        AttributeKind::Text => format!(
            "<input id=\"{id}\" type=\"text\" name=\"{n}\" value=\"{v}\" maxlength=\"500\"{req}>",
            n = esc(&name),
            v = esc(value)
        ),
        AttributeKind::Number => format!(
            "<input id=\"{id}\" type=\"number\" step=\"any\" name=\"{n}\" value=\"{v}\"{req}>",
            n = esc(&name),
            v = esc(value)
        ),
        AttributeKind::Boolean | AttributeKind::Choice => {
            let options: Vec<(String, String)> = if a.kind == AttributeKind::Boolean {
                vec![("true".into(), "Yes".into()), ("false".into(), "No".into())]
            } else {
                a.choices.iter().map(|c| (c.clone(), c.clone())).collect()
            };
            let mut html = format!("<select id=\"{id}\" name=\"{}\"{req}>", esc(&name));
            html.push_str("<option value=\"\">—</option>");
            for (v, text) in options {
                let sel = if v == value { " selected" } else { "" };
                html.push_str(&format!(
                    "<option value=\"{}\"{sel}>{}</option>",
                    esc(&v),
                    esc(&text)
                ));
            }
            html.push_str("</select>");
            html
        }
    };
    format!("{label}{control}")
}

fn attributes_form(
    s: &AppState,
    csrf: &str,
    defs: &[CustomAttribute],
    values: &BTreeMap<String, String>,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let fields: String = defs
        .iter()
        .map(|a| attribute_input(a, values.get(&a.name).map(String::as_str).unwrap_or("")))
        .collect();
    let intro = if defs.is_empty() {
        "<p>One last step.</p>"
    } else {
        "<p>Your organisation asks for a few details about this Mac.</p>"
    };
    let body = format!(
        "{intro}{err}<form method=\"post\" action=\"/enroll/attributes\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{fields}\
         <p class=\"muted\">Next, your Mac asks you to allow remote management of work data.</p>\
         <button type=\"submit\">Allow remote management</button></form>",
        err = error_block(message),
        csrf = esc(csrf),
    );
    page(status, s.enrollment.organization(), "About this Mac", &body)
}

async fn attributes_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = current_flow(&s, &headers, FlowStep::Attributes).await {
        return r;
    }
    let defs = match s.lanyard.list_attributes().await {
        Ok(d) => d,
        Err(e) => return refuse(&s, e),
    };
    let (csrf, fresh) = csrf_token(&headers);
    with_csrf(
        attributes_form(&s, &csrf, &defs, &BTreeMap::new(), StatusCode::OK, None),
        &csrf,
        fresh,
    )
}

async fn attributes_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Ok(Form(pairs)) = form else {
        return refusal(&s, StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if !csrf_ok(&headers, &csrf) {
        return forbidden_csrf(&s);
    }
    let (secret, _) = match current_flow(&s, &headers, FlowStep::Attributes).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let values: BTreeMap<String, String> = pairs
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("attr:").map(|n| (n.to_string(), v)))
        .collect();
    match s.enrollment.submit_attributes(&secret, &values).await {
        Ok(token) => {
            let mut res = hand_off(&token);
            set_cookie(&mut res, FLOW_COOKIE, "", 0);
            res
        }
        Err(CoreError::Invalid(m)) => {
            let defs = s.lanyard.list_attributes().await.unwrap_or_default();
            attributes_form(
                &s,
                &csrf,
                &defs,
                &values,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&m),
            )
        }
        Err(e) => refuse(&s, e),
    }
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
    fn enrollment_pages_let_the_form_hand_off_to_the_mac() {
        let res = page(StatusCode::OK, "Example", "Sign in", "");
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

    #[test]
    fn the_hand_off_is_a_permanent_redirect_to_the_callback() {
        let res = hand_off("lya_a+b/c");
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            res.headers()[header::LOCATION],
            "apple-remotemanagement-user-login://authentication-results?access-token=lya_a%2Bb%2Fc"
        );
    }
}
