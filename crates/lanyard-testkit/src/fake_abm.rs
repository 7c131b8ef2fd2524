//! A fake Apple Business Manager (Device Assignment service) on loopback HTTP.
//!
//! It speaks the documented wire format as far as an MDM server sees it:
//! - it issues a **real token file** ([`FakeAbm::token_file`]): S/MIME (`application/pkcs7-mime`,
//!   enveloped-data) encrypted to the MDM's certificate, wrapping a MIME text entity whose
//!   body is the token JSON between `-----BEGIN MESSAGE-----`/`-----END MESSAGE-----`, so
//!   `openssl smime -decrypt -inkey key.pem` opens it as well as Lanyard does;
//! - `GET /session` checks the OAuth 1.0a signature (HMAC-SHA1, `realm="ADM"`) against the
//!   token's four values and answers `{"auth_session_token": …}`; every other call needs a
//!   live `X-ADM-Auth-Session` (else `401`);
//! - `GET /account`; `POST /server/devices` (full list in pages with cursors and
//!   `more_to_follow`); `POST /devices/sync` (changes since the cursor; an unknown or expired
//!   cursor is `400 EXPIRED_CURSOR`); `GET`/`POST`/`DELETE /account-driven-enrollment/profile`
//!   (`404 NOT_FOUND` when none; `400 MDM_SERVICE_DISCOVERY_URL_REQUIRED`/`_NOT_VALID`).
//!
//! Faults ([`FakeAbm::inject`]) apply to the next calls other than `/session`: `401` (the
//! session is forgotten, as when Apple expires it), `429` with `Retry-After`, `500`, a slow
//! answer (for client timeouts) and a garbage body. What it does not do: TLS (the client is
//! aimed at `http://127.0.0.1:…`), profiles and profile assignment, device details, disown,
//! and Apple's rate limits beyond what is injected.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use lanyard_apple::abm::oauth::verify_authorization;
use lanyard_apple::abm::{AbmDeviceRecord, OAuthCredentials};
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::symm::Cipher;
use openssl::x509::X509;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// A fault the fake answers instead of the next call (other than `/session`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbmFault {
    /// `401`, and every session is forgotten.
    ExpireSession,
    /// `429` with `Retry-After: <secs>`.
    TooManyRequests { retry_after: u64 },
    /// `500`.
    ServerError,
    /// Waits this long before answering normally.
    Slow(Duration),
    /// `200` with a body that is not JSON.
    Garbage,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Position in the device list (full fetch).
    fetch: usize,
    /// Position in the change log (sync).
    change: usize,
}

#[derive(Default)]
struct State_ {
    creds: Option<OAuthCredentials>,
    sessions: HashSet<String>,
    sessions_issued: u64,
    devices: Vec<AbmDeviceRecord>,
    changes: Vec<AbmDeviceRecord>,
    cursors: HashMap<String, Cursor>,
    discovery: Option<(String, String)>,
    faults: VecDeque<AbmFault>,
    log: Vec<(String, String, u16)>,
    oauth_failures: u64,
    /// Serials handed out so far (never reused, even after a removal).
    next_serial: usize,
}

/// The fake. Dropping it stops the server.
pub struct FakeAbm {
    addr: SocketAddr,
    state: Arc<Mutex<State_>>,
    task: JoinHandle<()>,
}

impl Drop for FakeAbm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex::encode(bytes)
}

/// A device as ABM lists a Mac assigned to the MDM server.
pub fn fake_device(serial: &str) -> AbmDeviceRecord {
    AbmDeviceRecord {
        serial_number: serial.into(),
        model: Some("MacBook Air".into()),
        description: Some("MBA 13.6\" SPG".into()),
        color: Some("SPACE GRAY".into()),
        os: Some("OSX".into()),
        device_family: Some("Mac".into()),
        profile_status: Some("empty".into()),
        profile_uuid: None,
        device_assigned_by: Some("admin@example.org".into()),
        device_assigned_date: Some("2026-11-02T10:00:00Z".into()),
        op_type: None,
    }
}

/// Makes an ABM-style token file: S/MIME enveloped-data to `cert_pem` holding the token JSON.
pub fn make_token_file(cert_pem: &[u8], token_json: &str) -> anyhow::Result<Vec<u8>> {
    let cert = X509::from_pem(cert_pem).context("recipient certificate")?;
    let mut certs = Stack::new()?;
    certs.push(cert)?;
    let inner = format!(
        "Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
         -----BEGIN MESSAGE-----\r\n{token_json}\r\n-----END MESSAGE-----\r\n"
    );
    let p7 = Pkcs7::encrypt(
        &certs,
        inner.as_bytes(),
        Cipher::aes_256_cbc(),
        Pkcs7Flags::BINARY,
    )?;
    Ok(p7.to_smime(inner.as_bytes(), Pkcs7Flags::BINARY)?)
}

impl FakeAbm {
    /// Starts the fake on `127.0.0.1` with fresh random OAuth values.
    pub async fn start() -> anyhow::Result<FakeAbm> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<FakeAbm> {
        let state = Arc::new(Mutex::new(State_ {
            creds: Some(OAuthCredentials {
                consumer_key: format!("CK_{}", random_hex(16)),
                consumer_secret: format!("CS_{}", random_hex(16)),
                access_token: format!("AT_{}", random_hex(16)),
                access_secret: format!("AS_{}", random_hex(16)),
            }),
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeAbm { addr, state, task })
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `http://127.0.0.1:<port>`: the base URL to give the ABM client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token's OAuth values (what the token file carries).
    pub fn credentials(&self) -> OAuthCredentials {
        self.lock()
            .creds
            .clone()
            .unwrap_or_else(|| OAuthCredentials {
                consumer_key: String::new(),
                consumer_secret: String::new(),
                access_token: String::new(),
                access_secret: String::new(),
            })
    }

    /// The token JSON with this expiry (RFC 3339).
    pub fn token_json(&self, expiry: &str) -> String {
        let c = self.credentials();
        json!({
            "consumer_key": c.consumer_key,
            "consumer_secret": c.consumer_secret,
            "access_token": c.access_token,
            "access_secret": c.access_secret,
            "access_token_expiry": expiry,
        })
        .to_string()
    }

    /// A token file for the MDM whose certificate is `cert_pem`, valid for `days`.
    pub fn token_file(&self, cert_pem: &[u8], days: i64) -> anyhow::Result<Vec<u8>> {
        let expiry = (chrono::Utc::now() + chrono::Duration::days(days))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        make_token_file(cert_pem, &self.token_json(&expiry))
    }

    /// Assigns `n` more Macs (serials `<prefix>0000…`), recorded as `added` changes.
    pub fn add_devices(&self, prefix: &str, n: usize) {
        let mut s = self.lock();
        let start = s.next_serial;
        s.next_serial += n;
        for i in 0..n {
            let d = fake_device(&format!("{prefix}{:06}", start + i));
            let mut change = d.clone();
            change.op_type = Some("added".into());
            s.devices.push(d);
            s.changes.push(change);
        }
    }

    /// Changes a device's model (a `modified` change).
    pub fn modify_device(&self, serial: &str, model: &str) {
        let mut s = self.lock();
        if let Some(d) = s.devices.iter_mut().find(|d| d.serial_number == serial) {
            d.model = Some(model.into());
            let mut change = d.clone();
            change.op_type = Some("modified".into());
            s.changes.push(change);
        }
    }

    /// Unassigns a device (a `deleted` change).
    pub fn remove_device(&self, serial: &str) {
        let mut s = self.lock();
        s.devices.retain(|d| d.serial_number != serial);
        let mut change = fake_device(serial);
        change.op_type = Some("deleted".into());
        s.changes.push(change);
    }

    pub fn device_count(&self) -> usize {
        self.lock().devices.len()
    }

    /// Queues faults for the next calls other than `/session`.
    pub fn inject(&self, faults: impl IntoIterator<Item = AbmFault>) {
        self.lock().faults.extend(faults);
    }

    /// Forgets every cursor handed out, so the next sync gets `EXPIRED_CURSOR`.
    pub fn expire_cursors(&self) {
        self.lock().cursors.clear();
    }

    /// The registered account-driven service-discovery URL.
    pub fn discovery_url(&self) -> Option<String> {
        self.lock().discovery.as_ref().map(|(u, _)| u.clone())
    }

    pub fn sessions_issued(&self) -> u64 {
        self.lock().sessions_issued
    }

    pub fn oauth_failures(&self) -> u64 {
        self.lock().oauth_failures
    }

    /// Every call answered: method, path, status.
    pub fn calls(&self) -> Vec<(String, String, u16)> {
        self.lock().log.clone()
    }
}

fn code(status: StatusCode, code: &str) -> Response {
    (status, code.to_string()).into_response()
}

fn json_ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json;charset=UTF8")],
        v.to_string(),
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<Mutex<State_>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let fault = if path == "/session" {
        None
    } else {
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .faults
            .pop_front()
    };
    if let Some(AbmFault::Slow(d)) = &fault {
        tokio::time::sleep(*d).await;
    }
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let resp = answer(&mut s, &method, &uri, &headers, &body, fault);
    s.log
        .push((method.to_string(), path, resp.status().as_u16()));
    resp
}

fn answer(
    s: &mut State_,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    fault: Option<AbmFault>,
) -> Response {
    let path = uri.path();
    if path == "/session" {
        if method != Method::GET {
            return code(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
        }
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let url = format!("http://{host}{uri}");
        let auth = headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let Some(creds) = s.creds.clone() else {
            return code(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        };
        let realm_ok = lanyard_apple::abm::oauth::parse_authorization(auth)
            .is_some_and(|p| p.iter().any(|(k, v)| k == "realm" && v == "ADM"));
        if !realm_ok || verify_authorization("GET", &url, auth, &creds).is_err() {
            s.oauth_failures += 1;
            return code(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
        let token = format!(
            "{}O1O{}",
            chrono::Utc::now().timestamp_millis(),
            random_hex(16)
        );
        s.sessions.insert(token.clone());
        s.sessions_issued += 1;
        return json_ok(json!({ "auth_session_token": token }));
    }
    let session_ok = headers
        .get("x-adm-auth-session")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|t| s.sessions.contains(t));
    if !session_ok {
        return code(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    match fault {
        Some(AbmFault::ExpireSession) => {
            s.sessions.clear();
            return code(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
        Some(AbmFault::TooManyRequests { retry_after }) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after.to_string())],
                "TOO_MANY_REQUESTS",
            )
                .into_response();
        }
        Some(AbmFault::ServerError) => {
            return code(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR")
        }
        Some(AbmFault::Garbage) => {
            return (StatusCode::OK, "<html>definitely not JSON").into_response();
        }
        Some(AbmFault::Slow(_)) | None => {}
    }
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return code(StatusCode::BAD_REQUEST, "MALFORMED_REQUEST_BODY"),
        }
    };
    let limit = req
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 1000) as usize;
    match (method.as_str(), path) {
        ("GET", "/account") => json_ok(json!({
            "server_name": "Lanyard MDM",
            "server_uuid": "677cd0a4-1b2c-4b3a-9c40-5a8c0ee4e0f1",
            "admin_id": "admin@example.org",
            "facilitator_id": "admin@example.org",
            "org_name": "Example Org",
            "org_email": "it@example.org",
            "org_phone": "+1 555 0100",
            "org_address": "1 Example Way",
            "org_id": "1234567",
            "org_type": "org",
            "org_version": "v2",
        })),
        ("POST", "/server/devices") => {
            let start = match req.get("cursor").and_then(Value::as_str) {
                None => Cursor {
                    fetch: 0,
                    change: s.changes.len(),
                },
                Some(c) => match s.cursors.get(c) {
                    Some(c) => *c,
                    None => return code(StatusCode::BAD_REQUEST, "INVALID_CURSOR"),
                },
            };
            let end = (start.fetch + limit).min(s.devices.len());
            let page: Vec<_> = s.devices[start.fetch.min(end)..end].to_vec();
            let cursor = random_hex(12);
            s.cursors.insert(
                cursor.clone(),
                Cursor {
                    fetch: end,
                    change: start.change,
                },
            );
            json_ok(json!({
                "devices": page,
                "cursor": cursor,
                "more_to_follow": end < s.devices.len(),
                "fetched_until": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }))
        }
        ("POST", "/devices/sync") => {
            let Some(c) = req
                .get("cursor")
                .and_then(Value::as_str)
                .and_then(|c| s.cursors.get(c).copied())
            else {
                return code(StatusCode::BAD_REQUEST, "EXPIRED_CURSOR");
            };
            let end = (c.change + limit).min(s.changes.len());
            let page: Vec<_> = s.changes[c.change.min(end)..end].to_vec();
            let cursor = random_hex(12);
            s.cursors.insert(
                cursor.clone(),
                Cursor {
                    fetch: c.fetch,
                    change: end,
                },
            );
            json_ok(json!({
                "devices": page,
                "cursor": cursor,
                "more_to_follow": end < s.changes.len(),
                "fetched_until": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }))
        }
        ("GET", "/account-driven-enrollment/profile") => match &s.discovery {
            Some((url, at)) => json_ok(json!({
                "mdm_service_discovery_url": url,
                "last_updated_timestamp": at,
            })),
            None => code(StatusCode::NOT_FOUND, "NOT_FOUND"),
        },
        ("POST", "/account-driven-enrollment/profile") => {
            let Some(url) = req.get("mdm_service_discovery_url").and_then(Value::as_str) else {
                return code(
                    StatusCode::BAD_REQUEST,
                    "MDM_SERVICE_DISCOVERY_URL_REQUIRED",
                );
            };
            if !url.starts_with("https://") || url::Url::parse(url).is_err() {
                return code(
                    StatusCode::BAD_REQUEST,
                    "MDM_SERVICE_DISCOVERY_URL_NOT_VALID",
                );
            }
            let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            s.discovery = Some((url.to_string(), at));
            (StatusCode::OK, "").into_response()
        }
        ("DELETE", "/account-driven-enrollment/profile") => {
            s.discovery = None;
            (StatusCode::OK, "").into_response()
        }
        _ => code(StatusCode::NOT_FOUND, "NOT_FOUND"),
    }
}
