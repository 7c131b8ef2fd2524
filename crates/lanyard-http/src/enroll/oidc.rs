//! Enrollment sign-in through an identity provider (OpenID Connect), beside the local password
//! form of `enroll::pages`:
//! - `GET /enroll/oidc/start?provider=…&user-identifier=…` starts a sign-in (single-use
//!   `state`, `nonce`, PKCE S256) and redirects to the provider; the `state` is also bound to
//!   this browser in the `lanyard_oidc` cookie;
//! - `GET /enroll/oidc/callback?code=…&state=…` is where the provider sends the person back:
//!   the state must match the cookie and a live, unused sign-in; the domain validates the
//!   provider's answer and Lanyard's rules, then the flow continues at the same page as after a
//!   local sign-in (what the organisation can see → ownership → attributes → token).
//!
//! Every refusal is a page that says what went wrong; codes, tokens and states are never
//! logged or shown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{ExtensionRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::{flow_started, refusal, refuse, set_cookie};
use crate::auth::{constant_time_eq, cookie};
use crate::html::{html, see_other, Markup};
use crate::AppState;

/// Binds a started sign-in to the browser that started it.
pub const OIDC_COOKIE: &str = "lanyard_oidc";
/// Longest `code` / `state` / error text accepted from the provider's redirect.
const MAX_PARAM: usize = 4096;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/enroll/oidc/start", get(start))
        .route("/enroll/oidc/callback", get(callback))
}

/// The "Sign in with …" links for the sign-in page (empty when no provider is enabled).
pub(crate) async fn provider_links(s: &AppState, user_identifier: &str) -> Markup {
    let buttons = match s.oidc.buttons().await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e.chain(), "listing identity providers failed");
            Vec::new()
        }
    };
    let start_url = |name: &str| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("provider", name);
        if !user_identifier.trim().is_empty() {
            q.append_pair("user-identifier", user_identifier.trim());
        }
        format!("/enroll/oidc/start?{}", q.finish())
    };
    html! {
        @if !buttons.is_empty() {
            p .muted { "Or" }
        }
        @for b in &buttons {
            p {
                a .idp #{ "idp-" (b.name) } href=(start_url(&b.name))
                    style="display:block;text-align:center;padding:.7rem;border:1px solid #0071e3;\
                           border-radius:8px;color:#0071e3;text-decoration:none;font-weight:600" {
                    "Sign in with " (b.display_name)
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct StartQuery {
    #[serde(default)]
    provider: String,
    #[serde(rename = "user-identifier", default)]
    user_identifier: Option<String>,
}

/// Sign-ins one address may start at providers within the sign-in window (each start stores a
/// short-lived sign-in state and sends the browser to the provider).
pub const OIDC_STARTS_PER_ADDRESS: u32 = 30;

/// The window [`OIDC_STARTS_PER_ADDRESS`] counts in.
pub const OIDC_START_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Counts sign-ins started at providers per client address within a window. Per process: with
/// several server processes the limit is per process (no password is checked here; password
/// sign-ins are throttled in the database, see `lanyard_core::sign_in`).
#[derive(Clone, Default)]
pub struct StartLimiter {
    starts: Arc<Mutex<HashMap<std::net::IpAddr, (u32, Instant)>>>,
}

impl StartLimiter {
    /// Counts one start from `client` and says whether it is over `limit` within the window.
    fn over_limit(&self, client: std::net::IpAddr, limit: u32) -> bool {
        let Ok(mut map) = self.starts.lock() else {
            return false;
        };
        if map.len() > 100_000 {
            map.retain(|_, (_, since)| since.elapsed() < OIDC_START_WINDOW);
        }
        let e = map.entry(client).or_insert((0, Instant::now()));
        if e.1.elapsed() >= OIDC_START_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 = e.0.saturating_add(1);
        e.0 > limit
    }
}

async fn start(
    State(s): State<AppState>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: HeaderMap,
    q: Result<Query<StartQuery>, QueryRejection>,
) -> Response {
    if let Some(client) = crate::client::client_address(&s.trusted_proxies, &peer, &headers) {
        if s.oidc_start_limiter
            .over_limit(client, OIDC_STARTS_PER_ADDRESS)
        {
            return refusal(
                &s,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-ins were started from this address. Wait fifteen minutes, then try again.",
            );
        }
    }
    let Ok(Query(q)) = q else {
        return refusal(
            &s,
            StatusCode::BAD_REQUEST,
            "The sign-in link could not be read.",
        );
    };
    let uid = q
        .user_identifier
        .as_deref()
        .filter(|u| !u.trim().is_empty() && u.len() <= 320);
    if q.provider.is_empty() || q.provider.len() > 100 {
        return refusal(&s, StatusCode::BAD_REQUEST, "Choose a sign-in provider.");
    }
    match s.oidc.begin(&q.provider, uid).await {
        Ok((url, state)) => {
            let mut res = see_other(&url);
            set_cookie(
                &mut res,
                OIDC_COOKIE,
                &state,
                lanyard_core::identity_providers::SIGN_IN_MINUTES * 60,
            );
            res
        }
        Err(e) => refuse(&s, e),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return refusal(
            &s,
            StatusCode::BAD_REQUEST,
            "The sign-in answer could not be read.",
        );
    };
    if let Some(err) = q.error.as_deref() {
        let detail = q
            .error_description
            .as_deref()
            .unwrap_or(err)
            .chars()
            .take(300)
            .collect::<String>();
        return refusal(
            &s,
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider did not sign you in: {detail}"),
        );
    }
    let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
        return refusal(
            &s,
            StatusCode::BAD_REQUEST,
            "The identity provider's answer lacks its code or state. Start again from the Mac.",
        );
    };
    if code.is_empty() || code.len() > MAX_PARAM || state.is_empty() || state.len() > MAX_PARAM {
        return refusal(
            &s,
            StatusCode::BAD_REQUEST,
            "The sign-in answer is malformed.",
        );
    }
    let bound = cookie(&headers, OIDC_COOKIE)
        .is_some_and(|c| constant_time_eq(c.as_bytes(), state.as_bytes()));
    if !bound {
        return refusal(
            &s,
            StatusCode::FORBIDDEN,
            "This sign-in did not start in this browser, or its state was altered. Start again \
             from the Mac's sign-in page.",
        );
    }
    match s.oidc.finish(state, code).await {
        Ok((secret, step)) => flow_started(&secret, step),
        Err(e) => refuse(&s, e),
    }
}

#[cfg(test)]
mod start_limiter_tests {
    use super::*;

    #[test]
    fn over_limit_counts_every_start_per_address() {
        let l = StartLimiter::default();
        let a: std::net::IpAddr = [192, 0, 2, 1].into();
        for _ in 0..3 {
            assert!(!l.over_limit(a, 3));
        }
        assert!(l.over_limit(a, 3));
        assert!(
            !l.over_limit([192, 0, 2, 2].into(), 3),
            "addresses are counted apart"
        );
    }
}
