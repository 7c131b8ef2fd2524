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
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use lanyard_core::attributes::{AttributeKind, CustomAttribute};
use lanyard_core::enrollment::FlowStep;
use lanyard_core::CoreError;

use super::{
    error_block, flow_started, page, refusal, refuse, set_cookie, step_url, AUTH_RESULT,
    CSRF_COOKIE, FLOW_COOKIE,
};
use crate::auth::{constant_time_eq, cookie};
use crate::html::{csrf_field, html, see_other, Markup};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
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
    providers: Markup,
) -> Response {
    let body = html! {
        p {
            "Sign in with your work or school account to enroll this Mac. Your organisation \
             will manage only work data on it."
        }
        (error_block(message))
        form method="post" action="/enroll/sign-in" {
            (csrf_field(csrf))
            input type="hidden" name="user_identifier" value=(user_identifier);
            label for="email" { "Email or managed Apple Account" }
            input #email type="email" name="email" value=(email) autocomplete="username" required;
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
        (providers)
    };
    page(status, s.enrollment.organization(), "Sign in", body)
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
    let providers = super::oidc::provider_links(&s, &uid).await;
    with_csrf(
        sign_in_form(&s, StatusCode::OK, &csrf, &uid, &uid, None, providers),
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
        Ok((secret, step)) => flow_started(&secret, step),
        Err(CoreError::Unauthorized(m)) => sign_in_form(
            &s,
            StatusCode::UNAUTHORIZED,
            &f.csrf,
            &f.email,
            &f.user_identifier,
            Some(&m),
            super::oidc::provider_links(&s, &f.user_identifier).await,
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
                super::oidc::provider_links(&s, &f.user_identifier).await,
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

/// A step's form sent with `csrf`: the token this browser's and the flow at `step`; the flow's
/// secret, or the page to show instead.
async fn step_form(
    s: &AppState,
    headers: &HeaderMap,
    csrf: &str,
    step: FlowStep,
) -> Result<String, Response> {
    if !csrf_ok(headers, csrf) {
        return Err(forbidden_csrf(s));
    }
    let (secret, _) = current_flow(s, headers, step).await?;
    Ok(secret)
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
    let org = &state.organization;
    let who = state
        .user
        .managed_apple_id
        .as_deref()
        .unwrap_or(&state.user.email);
    let body = html! {
        p {
            "Signed in as " strong { (who) } ". Enrolling this personal Mac creates a separate, \
             encrypted volume for work data."
        }
        h2 { (org) " can" }
        ul {
            li { "install and remove work apps, accounts and settings" }
            li { "see the macOS version, the Mac's model and the work data it manages" }
            li { "remove all work data, leaving your personal data untouched" }
        }
        h2 { (org) " cannot" }
        ul {
            li { "see your personal email, messages, photos, files or browsing" }
            li { "see your personal apps or their data" }
            li { "see the Mac's serial number or locate it" }
            li { "erase or lock your Mac" }
        }
        form method="post" action="/enroll/privacy" {
            (csrf_field(&csrf))
            button type="submit" { "Continue" }
        }
    };
    with_csrf(
        page(
            StatusCode::OK,
            &state.organization,
            "What your organisation can see",
            body,
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
    let secret = match step_form(&s, &headers, &f.csrf, FlowStep::Privacy).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match s.enrollment.accept_privacy(&secret).await {
        Ok(step) => see_other(step_url(step)),
        Err(e) => refuse(&s, e),
    }
}

fn ownership_form(s: &AppState, csrf: &str, status: StatusCode, message: Option<&str>) -> Response {
    let body = html! {
        p { "Who owns this Mac?" }
        (error_block(message))
        form method="post" action="/enroll/ownership" {
            (csrf_field(csrf))
            fieldset {
                legend .muted { "Device ownership" }
                label {
                    input type="radio" name="ownership" value="employee" required;
                    " Employee — my own Mac"
                }
                label {
                    input type="radio" name="ownership" value="corporate";
                    " Corporate — owned by the organisation"
                }
                label {
                    input type="radio" name="ownership" value="shared";
                    " Shared — used by several people"
                }
            }
            button type="submit" { "Continue" }
        }
    };
    page(
        status,
        s.enrollment.organization(),
        "Device ownership",
        body,
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
    let secret = match step_form(&s, &headers, &f.csrf, FlowStep::Ownership).await {
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

fn attribute_input(a: &CustomAttribute, value: &str) -> Markup {
    let name = format!("attr:{}", a.name);
    let id = format!("attr-{}", a.id);
    let options: Vec<(&str, &str)> = match a.kind {
        AttributeKind::Boolean => vec![("true", "Yes"), ("false", "No")],
        AttributeKind::Choice => a.choices.iter().map(|c| (c.as_str(), c.as_str())).collect(),
        AttributeKind::Text | AttributeKind::Number => Vec::new(),
    };
    html! {
        label for=(id) {
            (a.name)
            @if !a.required {
                " " span .muted { "(optional)" }
            }
        }
        @match a.kind {
            AttributeKind::Text => {
                input #(id) type="text" name=(name) value=(value) maxlength="500" required[a.required];
            }
            AttributeKind::Number => {
                input #(id) type="number" step="any" name=(name) value=(value) required[a.required];
            }
            AttributeKind::Boolean | AttributeKind::Choice => {
                select #(id) name=(name) required[a.required] {
                    option value="" { "—" }
                    @for (v, text) in options {
                        option value=(v) selected[v == value] { (text) }
                    }
                }
            }
        }
    }
}

fn attributes_form(
    s: &AppState,
    csrf: &str,
    defs: &[CustomAttribute],
    values: &BTreeMap<String, String>,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let body = html! {
        @if defs.is_empty() {
            p { "One last step." }
        } @else {
            p { "Your organisation asks for a few details about this Mac." }
        }
        (error_block(message))
        form method="post" action="/enroll/attributes" {
            (csrf_field(csrf))
            @for a in defs {
                (attribute_input(a, values.get(&a.name).map(String::as_str).unwrap_or("")))
            }
            p .muted { "Next, your Mac asks you to allow remote management of work data." }
            button type="submit" { "Allow remote management" }
        }
    };
    page(status, s.enrollment.organization(), "About this Mac", body)
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
    let secret = match step_form(&s, &headers, &csrf, FlowStep::Attributes).await {
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
    fn the_hand_off_is_a_permanent_redirect_to_the_callback() {
        let res = hand_off("lya_a+b/c");
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            res.headers()[header::LOCATION],
            "apple-remotemanagement-user-login://authentication-results?access-token=lya_a%2Bb%2Fc"
        );
    }
}
