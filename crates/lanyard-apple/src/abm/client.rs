//! [`AbmClient`]: sessions, retries and the calls Lanyard makes.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::oauth::{authorization_header, OAuthCredentials};
use super::AbmError;

/// Apple's Device Assignment service.
pub const DEFAULT_ABM_URL: &str = "https://mdmenrollment.apple.com";
/// Sent as `X-Server-Protocol-Version` (what current DEP clients send).
pub const SERVER_PROTOCOL_VERSION: &str = "7";
const SESSION_HEADER: &str = "X-ADM-Auth-Session";
/// Bodies larger than this are refused as garbage.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the client talks to ABM.
#[derive(Debug, Clone)]
pub struct AbmOptions {
    /// Base URL, `https://mdmenrollment.apple.com` unless testing.
    pub base_url: String,
    /// An extra trusted CA certificate (PEM), e.g. a test server's.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts per call on `429`/`5xx`/transport errors (at least 1).
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured; longer waits are cut to this.
    pub max_retry_wait: Duration,
}

impl Default for AbmOptions {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_ABM_URL.into(),
            extra_ca_pem: None,
            timeout: Duration::from_secs(30),
            max_attempts: 4,
            max_retry_wait: Duration::from_secs(60),
        }
    }
}

/// `GET /account`: the ABM server (MDM server entry) and its organisation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmAccount {
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub server_uuid: Option<String>,
    #[serde(default)]
    pub admin_id: Option<String>,
    #[serde(default)]
    pub org_name: Option<String>,
    #[serde(default)]
    pub org_email: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub org_type: Option<String>,
}

/// One device in a fetch or sync page (the fields Lanyard keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmDeviceRecord {
    pub serial_number: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub device_family: Option<String>,
    #[serde(default)]
    pub profile_status: Option<String>,
    #[serde(default)]
    pub profile_uuid: Option<String>,
    #[serde(default)]
    pub device_assigned_by: Option<String>,
    #[serde(default)]
    pub device_assigned_date: Option<String>,
    /// `added`, `modified` or `deleted` (sync only).
    #[serde(default)]
    pub op_type: Option<String>,
}

/// A page of `POST /server/devices` or `POST /devices/sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbmDevicePage {
    #[serde(default)]
    pub devices: Vec<AbmDeviceRecord>,
    pub cursor: String,
    #[serde(default)]
    pub more_to_follow: bool,
    #[serde(default)]
    pub fetched_until: Option<String>,
}

/// `GET /account-driven-enrollment/profile`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryProfile {
    pub mdm_service_discovery_url: String,
    #[serde(default)]
    pub last_updated_timestamp: Option<String>,
}

/// A client for one server token. Cheap to share behind an `Arc`; the session is cached.
pub struct AbmClient {
    http: reqwest::Client,
    base: String,
    creds: OAuthCredentials,
    opts: AbmOptions,
    session: Mutex<Option<String>>,
}

impl std::fmt::Debug for AbmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbmClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Done(reqwest::StatusCode, HeaderMap, Vec<u8>),
    Retry(Option<Duration>, u16),
}

impl AbmClient {
    pub fn new(opts: AbmOptions, creds: OAuthCredentials) -> Result<Self, AbmError> {
        let base = opts.base_url.trim_end_matches('/').to_string();
        // Plain HTTP only to this machine (the test kit's fake ABM); Apple is https.
        crate::check_service_url(&base)
            .map_err(|e| AbmError::Config(format!("ABM URL {base:?}: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .redirect(reqwest::redirect::Policy::none());
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            if let Ok(c) = reqwest::Certificate::from_der(&cert) {
                builder = builder.add_root_certificate(c);
            }
        }
        if let Some(pem) = &opts.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| AbmError::Config(format!("ABM CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(AbmError::Config(
                    "the ABM CA file holds no certificate".into(),
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| AbmError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            creds,
            opts,
            session: Mutex::new(None),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request, with retries for `429`/`5xx`/transport errors.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), AbmError> {
        let url = self.url(path);
        let attempts = self.opts.max_attempts.max(1);
        let mut last_status = 0;
        for attempt in 1..=attempts {
            let mut rb = self
                .http
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(b) = body {
                rb = rb
                    .header(CONTENT_TYPE, "application/json;charset=UTF8")
                    .body(b.to_string());
            }
            let outcome = match rb.send().await {
                Err(e) => {
                    if attempt == attempts {
                        return Err(AbmError::Transport {
                            url,
                            reason: if e.is_timeout() {
                                "timed out".into()
                            } else {
                                e.to_string()
                            },
                        });
                    }
                    Attempt::Retry(None, 0)
                }
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                        Attempt::Retry(retry_after(&headers), status.as_u16())
                    } else {
                        match read_body(resp).await {
                            Ok(bytes) => Attempt::Done(status, headers, bytes),
                            Err(reason) => {
                                if attempt == attempts {
                                    return Err(AbmError::Garbage {
                                        path: path.into(),
                                        reason,
                                    });
                                }
                                Attempt::Retry(None, 0)
                            }
                        }
                    }
                }
            };
            match outcome {
                Attempt::Done(s, h, b) => return Ok((s, h, b)),
                Attempt::Retry(wait, status) => {
                    last_status = status;
                    if attempt == attempts {
                        break;
                    }
                    let backoff = Duration::from_millis(200 * (1u64 << (attempt - 1).min(6)));
                    let wait = wait.unwrap_or(backoff).min(self.opts.max_retry_wait);
                    tracing::warn!(
                        path,
                        status,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "ABM call failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if last_status == 0 {
            return Err(AbmError::Transport {
                url,
                reason: "no answer".into(),
            });
        }
        Err(AbmError::RetriesExhausted {
            status: last_status,
            path: path.into(),
            attempts,
        })
    }

    /// A fresh session token from `GET /session` (OAuth 1.0a signed).
    async fn new_session(&self) -> Result<String, AbmError> {
        let url = self.url("/session");
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let auth = authorization_header("GET", &url, &self.creds, Some("ADM"), &nonce, ts)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&auth)
                .map_err(|_| AbmError::Config("OAuth header is not ASCII".into()))?,
        );
        let (status, _, body) = self.send(Method::GET, "/session", headers, None).await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(AbmError::Unauthorized(error_code(&body)));
        }
        if !status.is_success() {
            return Err(AbmError::Status {
                status: status.as_u16(),
                path: "/session".into(),
                code: error_code(&body),
            });
        }
        #[derive(Deserialize)]
        struct Session {
            auth_session_token: String,
        }
        let s: Session = serde_json::from_slice(&body).map_err(|e| AbmError::Garbage {
            path: "/session".into(),
            reason: e.to_string(),
        })?;
        if s.auth_session_token.is_empty() {
            return Err(AbmError::Garbage {
                path: "/session".into(),
                reason: "empty session token".into(),
            });
        }
        Ok(s.auth_session_token)
    }

    async fn session(&self, renew: bool) -> Result<String, AbmError> {
        let mut guard = self.session.lock().await;
        if !renew {
            if let Some(s) = guard.as_ref() {
                return Ok(s.clone());
            }
        }
        let s = self.new_session().await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    /// An authenticated call; a `401` renews the session and tries once more. Returns the
    /// status and body of a non-error answer, or a typed error.
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), AbmError> {
        let mut renew = false;
        for _ in 0..2 {
            let session = self.session(renew).await?;
            let mut headers = HeaderMap::new();
            headers.insert(
                SESSION_HEADER,
                HeaderValue::from_str(&session).map_err(|_| AbmError::Garbage {
                    path: "/session".into(),
                    reason: "session token is not a header value".into(),
                })?,
            );
            headers.insert(
                "X-Server-Protocol-Version",
                HeaderValue::from_static(SERVER_PROTOCOL_VERSION),
            );
            let (status, resp_headers, bytes) =
                self.send(method.clone(), path, headers, body).await?;
            if status == StatusCode::UNAUTHORIZED {
                renew = true;
                continue;
            }
            // ABM may hand a refreshed session token back on any answer.
            if let Some(fresh) = resp_headers
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
            {
                *self.session.lock().await = Some(fresh.to_string());
            }
            return Ok((status, bytes));
        }
        Err(AbmError::Unauthorized(format!(
            "{path} answered 401 again after a new session"
        )))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, AbmError> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        if !status.is_success() {
            let code = error_code(&bytes);
            if code == "EXPIRED_CURSOR" {
                return Err(AbmError::ExpiredCursor);
            }
            return Err(AbmError::Status {
                status: status.as_u16(),
                path: path.into(),
                code,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| AbmError::Garbage {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// `GET /account`.
    pub async fn account(&self) -> Result<AbmAccount, AbmError> {
        self.call(Method::GET, "/account", None).await
    }

    /// `POST /server/devices`: a page of the full device list (`cursor` from the last page).
    pub async fn fetch_devices(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<AbmDevicePage, AbmError> {
        let mut body = serde_json::json!({ "limit": limit });
        if let Some(c) = cursor {
            body["cursor"] = c.into();
        }
        self.call(Method::POST, "/server/devices", Some(&body))
            .await
    }

    /// `POST /devices/sync`: changes since `cursor`; [`AbmError::ExpiredCursor`] when too old.
    pub async fn sync_devices(&self, cursor: &str, limit: u32) -> Result<AbmDevicePage, AbmError> {
        let body = serde_json::json!({ "cursor": cursor, "limit": limit });
        self.call(Method::POST, "/devices/sync", Some(&body)).await
    }

    /// `POST /account-driven-enrollment/profile`: registers the URL Apple's hosted service
    /// discovery answers with for the organisation's managed Apple Accounts.
    pub async fn assign_discovery(&self, url: &str) -> Result<(), AbmError> {
        let body = serde_json::json!({ "mdm_service_discovery_url": url });
        let (status, bytes) = self
            .call_raw(
                Method::POST,
                "/account-driven-enrollment/profile",
                Some(&body),
            )
            .await?;
        check_empty(status, &bytes, "/account-driven-enrollment/profile")
    }

    /// `GET /account-driven-enrollment/profile`; `None` when none is registered (`404`).
    pub async fn discovery(&self) -> Result<Option<DiscoveryProfile>, AbmError> {
        let path = "/account-driven-enrollment/profile";
        let (status, bytes) = self.call_raw(Method::GET, path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check_empty(status, &bytes, path)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AbmError::Garbage {
                path: path.into(),
                reason: e.to_string(),
            })
    }

    /// `DELETE /account-driven-enrollment/profile`.
    pub async fn remove_discovery(&self) -> Result<(), AbmError> {
        let path = "/account-driven-enrollment/profile";
        let (status, bytes) = self.call_raw(Method::DELETE, path, None).await?;
        check_empty(status, &bytes, path)
    }
}

fn check_empty(status: StatusCode, bytes: &[u8], path: &str) -> Result<(), AbmError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(AbmError::Status {
            status: status.as_u16(),
            path: path.into(),
            code: error_code(bytes),
        })
    }
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_BODY {
            return Err("answer too large".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `Retry-After` in seconds (HTTP dates are treated as absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Apple's error code from an error body: JSON `{"code": …}` or a bare code such as
/// `EXPIRED_CURSOR`; shortened so a garbage page cannot flood logs.
fn error_code(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(c) = v.get("code").and_then(|c| c.as_str()) {
            return c.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim().trim_matches('"');
    let short: String = text.chars().take(120).collect();
    if short.is_empty() {
        "(no body)".into()
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        assert_eq!(error_code(b"EXPIRED_CURSOR"), "EXPIRED_CURSOR");
        assert_eq!(error_code(b"\"NOT_FOUND\"\n"), "NOT_FOUND");
        assert_eq!(
            error_code(br#"{"code":"ORG_NOT_SUPPORTED","message":"x"}"#),
            "ORG_NOT_SUPPORTED"
        );
        assert_eq!(error_code(b""), "(no body)");
        assert_eq!(error_code(&[b'x'; 500]).len(), 120);
    }

    #[test]
    fn bad_config_is_refused() {
        let creds = OAuthCredentials {
            consumer_key: "k".into(),
            consumer_secret: "s".into(),
            access_token: "t".into(),
            access_secret: "a".into(),
        };
        let opts = |u: &str| AbmOptions {
            base_url: u.into(),
            ..Default::default()
        };
        assert!(AbmClient::new(opts("ftp://x"), creds.clone()).is_err());
        assert!(AbmClient::new(opts("not a url"), creds.clone()).is_err());
        assert!(AbmClient::new(opts("http://abm.example.com"), creds.clone()).is_err());
        assert!(AbmClient::new(opts("http://127.0.0.1:9"), creds.clone()).is_ok());
        let mut with_ca = opts("https://x");
        with_ca.extra_ca_pem = Some(b"junk".to_vec());
        assert!(AbmClient::new(with_ca, creds).is_err());
    }
}
