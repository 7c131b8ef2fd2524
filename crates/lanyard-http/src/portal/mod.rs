//! The admin portal under `/portal`: server-rendered HTML pages for administrators (sign-in,
//! summary, devices, users, settings, ABM server tokens, identity providers, the APNs certificate, the audit log).
//!
//! Owns: page rendering, the portal's session handling (the same admin sessions as the API:
//! cookie `lanyard_session`, `Secure; HttpOnly; SameSite=Strict`), the CSRF token in every form
//! (the session's own token; before sign-in a double-submit cookie), and turning domain errors
//! into a message on the page. Every change goes through the same `Lanyard` methods as the admin
//! API, so roles (read-only), validation and the audit trail are the domain's.
//!
//! Must not hold SQL, name a database backend or make policy decisions. Pages use no inline
//! script or style (a strict Content-Security-Policy forbids them); the CSS and the small
//! progress script are served from `/portal/assets/`.

// Page helpers return the page to answer instead as their error: an axum `Response`, answered
// as is, so its size does not matter here.
#![allow(clippy::result_large_err)]

mod abm;
mod admin;
mod admins;
mod declarations;
mod fleet;
mod idp;
mod upload;

use std::net::SocketAddr;

use axum::extract::rejection::{ExtensionRejection, FormRejection};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State,
};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use lanyard_core::admins::Role;
use lanyard_core::{Actor, CoreError};

use crate::auth::{constant_time_eq, cookie, SESSION_COOKIE};
use crate::html::{html, page_headers, render, see_other, Markup, DOCTYPE};
use crate::AppState;

/// The pre-sign-in CSRF cookie (double submit on the sign-in form only).
pub const PORTAL_CSRF_COOKIE: &str = "lanyard_portal_csrf";
/// The largest form body the portal accepts (file uploads have their own limit).
pub const PORTAL_FORM_LIMIT: usize = 64 * 1024;
/// Rows per page in lists.
pub const PAGE_SIZE: i64 = 50;

const CSS: &str = include_str!("portal.css");
const JS: &str = include_str!("portal.js");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { see_other("/portal") }))
        .route("/portal", get(|| async { see_other("/portal/summary") }))
        .route("/portal/", get(|| async { see_other("/portal/summary") }))
        .route("/portal/sign-in", get(sign_in_page).post(sign_in_submit))
        .route("/portal/sign-out", post(sign_out))
        .route("/portal/assets/portal.css", get(css))
        .route("/portal/assets/portal.js", get(js))
        .merge(fleet::routes())
        .merge(declarations::routes())
        .merge(admin::routes())
        .merge(admins::routes())
        .merge(abm::routes())
        .merge(idp::routes())
        .layer(DefaultBodyLimit::max(PORTAL_FORM_LIMIT))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The signed-in administrator of a portal request.
pub(crate) struct Session {
    pub actor: Actor,
    pub csrf: String,
}

impl Session {
    pub fn read_only(&self) -> bool {
        self.actor.role == Role::ReadOnly
    }

    pub fn username(&self) -> &str {
        self.actor
            .name
            .strip_prefix("admin:")
            .unwrap_or(&self.actor.name)
    }

    /// The hidden CSRF field every form carries.
    pub fn csrf_field(&self) -> Markup {
        crate::html::csrf_field(&self.csrf)
    }

    /// Refuses a form whose CSRF token is not this session's; nothing is changed.
    pub fn check_csrf(&self, sent: &str) -> Result<(), Response> {
        if !sent.is_empty() && constant_time_eq(sent.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(message_page(
                Some(self),
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form has expired or did not come from this portal, so nothing was \
                 changed. Reload the page and try again.",
            ))
        }
    }
}

/// The signed-in administrator of a page that only shows: without a live session the request
/// is answered with the sign-in page (or a redirect to it) before the handler runs.
pub(crate) struct Viewer(pub(crate) Session);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &AppState,
    ) -> Result<Self, Response> {
        session(s, &parts.headers, false).await.map(Viewer)
    }
}

/// The session behind a request, or the page to answer instead: GET requests without a session
/// go to the sign-in page; a change with an expired session is refused with a clear message.
pub(crate) async fn session(
    s: &AppState,
    headers: &HeaderMap,
    change: bool,
) -> Result<Session, Response> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Err(if change {
            expired_page()
        } else {
            see_other("/portal/sign-in")
        });
    };
    match s.lanyard.actor_for_session(secret).await {
        Ok((actor, csrf)) => Ok(Session { actor, csrf }),
        Err(CoreError::Unauthorized(_)) if !change => see_other_err("/portal/sign-in?expired=1"),
        Err(CoreError::Unauthorized(_)) => Err(expired_page()),
        Err(CoreError::Forbidden(m)) => Err(sign_in_form(StatusCode::FORBIDDEN, "", "", Some(&m))),
        Err(e) => Err(error_page(None, e)),
    }
}

/// A form that changes something: a live session (an expired one gets the expired-session page),
/// the form's fields, and its CSRF token checked against the session's.
pub(crate) async fn change_form(
    s: &AppState,
    headers: &HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<(Session, Fields), Response> {
    let sess = session(s, headers, true).await?;
    let f = fields(&sess, form)?;
    sess.check_csrf(f.get("csrf"))?;
    Ok((sess, f))
}

/// [`change_form`] as an extractor, for the handlers of forms that change something: the live
/// session and the checked fields, or the page to answer with instead. It reads the body, so
/// it is the handler's last argument.
pub(crate) struct ChangeForm(pub Session, pub Fields);

impl FromRequest<AppState> for ChangeForm {
    type Rejection = Response;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let form = Form::<Vec<(String, String)>>::from_request(req, s).await;
        let (sess, f) = change_form(s, &headers, form).await?;
        Ok(ChangeForm(sess, f))
    }
}

fn see_other_err<T>(location: &str) -> Result<T, Response> {
    Err(see_other(location))
}

fn expired_page() -> Response {
    let (token, _) = new_csrf();
    let mut res = sign_in_form(
        StatusCode::UNAUTHORIZED,
        &token,
        "",
        Some("Your session has expired, so nothing was changed. Sign in again."),
    );
    set_csrf_cookie(&mut res, &token);
    res
}

/// A form body as name/value pairs (so unknown fields never make a form unreadable).
pub(crate) struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    pub fn checked(&self, name: &str) -> bool {
        self.0.iter().any(|(k, v)| k == name && !v.is_empty())
    }
}

/// The `enabled` field of an enable/disable form (`true` or `false`), or the 422 page saying so.
pub(crate) fn enabled_field(sess: &Session, f: &Fields) -> Result<bool, Response> {
    match f.get("enabled") {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(message_page(
            Some(sess),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not done",
            "Enabled is true or false.",
        )),
    }
}

/// Reads a urlencoded form, or answers a clear 400 page.
pub(crate) fn fields(
    sess: &Session,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Fields, Response> {
    match form {
        Ok(Form(pairs)) => Ok(Fields(pairs)),
        Err(r) => {
            let (status, text) = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                (StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.")
            } else {
                (StatusCode::BAD_REQUEST, "The form could not be read.")
            };
            Err(message_page(Some(sess), status, "Form refused", text))
        }
    }
}

/// The status and on-page message for a domain error: the one mapping
/// ([`crate::error::answer`], which also logs it), rendered as a sentence.
pub(crate) fn describe(e: CoreError) -> (StatusCode, String) {
    let a = crate::error::answer(&e);
    if a.status == StatusCode::INTERNAL_SERVER_ERROR {
        return (
            a.status,
            "Something went wrong on the server; the server log has the details.".into(),
        );
    }
    let mut c = a.message.chars();
    let text = match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => a.message.clone(),
    };
    (a.status, text)
}

/// A refused change as the status and error notice of the page shown again: `prefix` says what
/// was not done (empty when the explanation says it all).
pub(crate) fn refused(prefix: &str, e: CoreError) -> (StatusCode, Option<Notice>) {
    let (status, text) = describe(e);
    let text = if prefix.is_empty() {
        text
    } else {
        format!("{prefix} {text}")
    };
    (status, Some(Notice::Error(text)))
}

pub(crate) fn error_page(sess: Option<&Session>, e: CoreError) -> Response {
    let (status, text) = describe(e);
    message_page(sess, status, "Not done", &text)
}

pub(crate) fn message_page(
    sess: Option<&Session>,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let body = notice(Some(Notice::Error(text.to_string())));
    match sess {
        Some(sess) => layout(sess, status, Nav::None, title, body),
        None => bare(status, title, body),
    }
}

/// A message shown above a page's content.
pub(crate) enum Notice {
    Ok(String),
    Error(String),
}

pub(crate) fn notice(n: Option<Notice>) -> Markup {
    html! {
        @match n {
            Some(Notice::Ok(t)) => p #message .notice.ok role="status" { (t) },
            Some(Notice::Error(t)) => p #message .notice.error role="alert" { (t) },
            None => {},
        }
    }
}

/// The `done` (and `name`) of the page a change redirects to (`?done=added&name=…`), for the
/// notice saying what was done; absent or unreadable, nothing was.
#[derive(Deserialize, Default)]
pub(crate) struct Done {
    done: Option<String>,
    name: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Done {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &S,
    ) -> Result<Self, Self::Rejection> {
        let q = Query::<Done>::from_request_parts(parts, s).await;
        Ok(q.map(|Query(q)| q).unwrap_or_default())
    }
}

impl Done {
    /// The notice `text(done, name)` gives, if any (`name` is empty when absent).
    pub fn notice(&self, text: impl FnOnce(&str, &str) -> Option<String>) -> Option<Notice> {
        let done = self.done.as_deref()?;
        text(done, self.name.as_deref().unwrap_or_default()).map(Notice::Ok)
    }
}

/// A table with one header row (`columns`, each a column header) and `rows` as its body.
pub(crate) fn table(class: Option<&str>, columns: &[&str], rows: Markup) -> Markup {
    html! {
        table class=[class] {
            thead { tr { @for c in columns { th scope="col" { (c) } } } }
            tbody { (rows) }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Summary,
    Devices,
    Declarations,
    Users,
    Settings,
    Abm,
    IdentityProviders,
    Apns,
    Admins,
    Audit,
    None,
}

const NAV: &[(Nav, &str, &str)] = &[
    (Nav::Summary, "/portal/summary", "Summary"),
    (Nav::Devices, "/portal/devices", "Devices"),
    (Nav::Declarations, "/portal/declarations", "Declarations"),
    (Nav::Users, "/portal/users", "Users"),
    (Nav::Settings, "/portal/settings", "Settings"),
    (Nav::Abm, "/portal/abm", "ABM"),
    (
        Nav::IdentityProviders,
        "/portal/identity-providers",
        "Identity providers",
    ),
    (Nav::Apns, "/portal/apns", "APNs certificate"),
    (Nav::Admins, "/portal/admins", "Administrators"),
    (Nav::Audit, "/portal/audit", "Audit log"),
];

/// The portal's Content-Security-Policy: no inline script or style.
const PORTAL_CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Page-specific headers; `Cache-Control: no-store` and `nosniff` come from the one
/// response-headers layer ([`crate::response_headers`]).
fn secure_headers(res: &mut Response) {
    page_headers(res, PORTAL_CSP);
    res.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("same-origin"));
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width,initial-scale=1";
            title { (title) " · Lanyard" }
            link rel="stylesheet" href="/portal/assets/portal.css";
            script src="/portal/assets/portal.js" defer {}
        }
    }
}

/// A page outside the signed-in layout (sign-in, errors before sign-in).
pub(crate) fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body .bare {
                main .card.narrow {
                    p .brand { "Lanyard" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    let mut res = render(status, page);
    secure_headers(&mut res);
    res
}

/// A signed-in page: navigation, who is signed in, a read-only banner, then `body`.
pub(crate) fn layout(
    sess: &Session,
    status: StatusCode,
    active: Nav,
    title: &str,
    body: Markup,
) -> Response {
    let role = if sess.read_only() {
        "read-only"
    } else {
        "administrator"
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header .top {
                    a .brand href="/portal/summary" { "Lanyard" }
                    nav aria-label="Main" {
                        ul {
                            @for (n, href, label) in NAV {
                                li { a href=(href) aria-current=[(*n == active).then_some("page")] { (label) } }
                            }
                        }
                    }
                    form .who method="post" action="/portal/sign-out" {
                        (sess.csrf_field())
                        span { (sess.username()) " " span .muted { "(" (role) ")" } }
                        button type="submit" .link { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    @if sess.read_only() {
                        p .notice.info role="note" {
                            "You are signed in as a read-only administrator: you can see \
                             everything, and changes are refused."
                        }
                    }
                    (body)
                }
            }
        }
    };
    let mut res = render(status, page);
    secure_headers(&mut res);
    res
}

pub(crate) fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "—".into())
}

/// The text, or a dash when there is none.
pub(crate) fn or_dash(s: Option<&str>) -> &str {
    match s {
        Some(s) if !s.is_empty() => s,
        _ => "—",
    }
}

/// "Previous / Next" links for a list; `more` says whether a next page exists.
pub(crate) fn pager(base: &str, page: i64, more: bool) -> Markup {
    let sep = if base.contains('?') { "&" } else { "?" };
    html! {
        nav .pager aria-label="Pages" {
            @if page > 1 {
                a rel="prev" href={ (base) (sep) "page=" (page - 1) } { "← Previous" }
            }
            span { "Page " (page) }
            @if more {
                a rel="next" href={ (base) (sep) "page=" (page + 1) } { "Next →" }
            }
        }
    }
}

/// A page number from the query (1 when absent); nonsense is a clear 400.
pub(crate) fn page_number(sess: &Session, raw: Option<&str>) -> Result<i64, Response> {
    match raw.map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(1),
        Some(p) => match p.parse::<i64>() {
            Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
            _ => Err(message_page(
                Some(sess),
                StatusCode::BAD_REQUEST,
                "Not found",
                "The page number must be a whole number from 1.",
            )),
        },
    }
}

fn new_csrf() -> (String, bool) {
    (lanyard_core::admins::new_secret("").secret, true)
}

fn set_csrf_cookie(res: &mut Response, token: &str) {
    let c = format!(
        "{PORTAL_CSRF_COOKIE}={token}; Path=/portal; Max-Age=3600; HttpOnly; Secure; SameSite=Strict"
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn sign_in_form(status: StatusCode, csrf: &str, username: &str, message: Option<&str>) -> Response {
    let body = html! {
        (notice(message.map(|m| Notice::Error(m.to_string()))))
        form method="post" action="/portal/sign-in" {
            (crate::html::csrf_field(csrf))
            label for="username" { "Administrator name" }
            input #username name="username" value=(username) autocomplete="username" required;
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
    };
    bare(status, "Sign in to the admin portal", body)
}

#[derive(Deserialize, Default)]
struct SignInQuery {
    expired: Option<String>,
}

async fn sign_in_page(
    headers: HeaderMap,
    q: Result<Query<SignInQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (token, fresh) = match cookie(&headers, PORTAL_CSRF_COOKIE).filter(|c| c.len() >= 32) {
        Some(c) => (c.to_string(), false),
        None => new_csrf(),
    };
    let expired = q.is_ok_and(|Query(q)| q.expired.is_some());
    let msg = expired.then_some("Your session has expired. Sign in again.");
    let mut res = sign_in_form(StatusCode::OK, &token, "", msg);
    if fresh {
        set_csrf_cookie(&mut res, &token);
    }
    res
}

async fn sign_in_submit(
    State(s): State<AppState>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Ok(Form(pairs)) = form else {
        return bare(
            StatusCode::BAD_REQUEST,
            "Sign in to the admin portal",
            notice(Some(Notice::Error("The form could not be read.".into()))),
        );
    };
    let f = Fields(pairs);
    let sent = f.get("csrf");
    let ok = cookie(&headers, PORTAL_CSRF_COOKIE)
        .is_some_and(|c| !sent.is_empty() && constant_time_eq(c.as_bytes(), sent.as_bytes()));
    if !ok {
        // Keep this browser's token when it has one; a forged form must not rotate it.
        let (token, fresh) = match cookie(&headers, PORTAL_CSRF_COOKIE).filter(|c| c.len() >= 32) {
            Some(c) => (c.to_string(), false),
            None => new_csrf(),
        };
        let mut res = sign_in_form(
            StatusCode::FORBIDDEN,
            &token,
            f.get("username"),
            Some("This sign-in form has expired or did not come from this portal. Try again."),
        );
        if fresh {
            set_csrf_cookie(&mut res, &token);
        }
        return res;
    }
    let client = crate::client::client_address(&s.trusted_proxies, &peer, &headers);
    match s
        .lanyard
        .admin_sign_in(f.get("username"), f.get("password"), client)
        .await
    {
        Ok(grant) => {
            let max_age = (grant.expires_at - Utc::now()).num_seconds().max(0);
            let mut res = see_other("/portal/summary");
            let c = format!(
                "{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict",
                grant.secret
            );
            if let Ok(v) = HeaderValue::from_str(&c) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            let wait = match &e {
                CoreError::RateLimited {
                    retry_after_secs, ..
                } => *retry_after_secs,
                _ => None,
            };
            let (status, text) = match e {
                CoreError::Unauthorized(_) => (
                    StatusCode::UNAUTHORIZED,
                    "Wrong name or password. After five failed attempts from one address, each \
                     further attempt has to wait a little longer."
                        .to_string(),
                ),
                CoreError::RateLimited { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed sign-ins. Wait a little, then try again.".to_string(),
                ),
                other => describe(other),
            };
            let mut res = sign_in_form(status, sent, f.get("username"), Some(&text));
            if let Some(secs) = wait {
                crate::error::retry_after(&mut res, secs);
            }
            res
        }
    }
}

async fn sign_out(
    State(s): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let sess = match session(&s, &headers, true).await {
        Ok(v) => v,
        Err(_) => return see_other("/portal/sign-in"),
    };
    let f = match fields(&sess, form) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Err(r) = sess.check_csrf(f.get("csrf")) {
        return r;
    }
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = s.lanyard.admin_sign_out(secret).await {
            return error_page(Some(&sess), e);
        }
    }
    let mut res = see_other("/portal/sign-in");
    let clear = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pager_links() {
        let p = pager("/portal/devices?search=x", 2, true).into_string();
        assert!(
            p.contains("href=\"/portal/devices?search=x&amp;page=1\""),
            "{p}"
        );
        assert!(p.contains("page=3"), "{p}");
        let p = pager("/portal/users", 1, false).into_string();
        assert!(!p.contains("href"), "{p}");
    }

    #[test]
    fn an_error_notice_is_text() {
        let n = notice(Some(Notice::Error(
            "no user \"<img src=x onerror=alert(1)>\"".into(),
        )))
        .into_string();
        assert_eq!(
            n,
            "<p class=\"notice error\" id=\"message\" role=\"alert\">no user \
             &quot;&lt;img src=x onerror=alert(1)&gt;&quot;</p>"
        );
    }
}
