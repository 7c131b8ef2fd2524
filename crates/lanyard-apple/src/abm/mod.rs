//! The Apple Business Manager (Device Assignment, "DEP") client.
//!
//! - [`oauth`]: OAuth 1.0a HMAC-SHA1 signing of `GET /session` (RFC 5849).
//! - [`AbmClient`]: a session (`X-ADM-Auth-Session`) renewed on `401` once per call, back-off on
//!   `429`/`5xx` honouring `Retry-After` (bounded), a timeout per request, typed [`AbmError`]s;
//!   calls `GET /account`, `POST /server/devices` (full fetch with cursor), `POST /devices/sync`
//!   (incremental; `EXPIRED_CURSOR` is its own error so callers fall back to a full fetch) and
//!   the account-driven enrollment service-discovery profile (`GET`/`POST`/`DELETE
//!   /account-driven-enrollment/profile`, Device Assignment Services 5.1+, confirmed against
//!   Apple's "Assign/Fetch/Remove Account-Driven Enrollment Service Discovery" pages; the GET
//!   answer's field besides `mdm_service_discovery_url` is read leniently).
//!
//! The token file itself (S/MIME to Lanyard's certificate) is opened by `lanyard-pki`; the
//! credentials it holds are passed in here and never logged.

mod client;
pub mod oauth;

pub use client::{
    AbmAccount, AbmClient, AbmDevicePage, AbmDeviceRecord, AbmOptions, DiscoveryProfile,
    DEFAULT_ABM_URL, SERVER_PROTOCOL_VERSION,
};
pub use oauth::OAuthCredentials;

/// Why an ABM call failed. Messages never contain the OAuth secrets or the session token.
#[derive(Debug, thiserror::Error)]
pub enum AbmError {
    /// The client is misconfigured (base URL, CA certificate).
    #[error("ABM client configuration: {0}")]
    Config(String),
    /// The connection failed or timed out.
    #[error("cannot reach Apple Business Manager at {url}: {reason}")]
    Transport { url: String, reason: String },
    /// ABM refused the OAuth credentials (token revoked, expired or for another server).
    #[error("Apple Business Manager refused the server token: {0}")]
    Unauthorized(String),
    /// An incremental sync's cursor is too old; fetch everything again.
    #[error("Apple Business Manager says the sync cursor expired")]
    ExpiredCursor,
    /// ABM answered an error status (with Apple's error code when it gave one).
    #[error("Apple Business Manager answered {status} to {path}: {code}")]
    Status {
        status: u16,
        path: String,
        code: String,
    },
    /// Still throttled or failing after the allowed retries.
    #[error("Apple Business Manager kept answering {status} to {path} after {attempts} attempts")]
    RetriesExhausted {
        status: u16,
        path: String,
        attempts: u32,
    },
    /// The answer was not what the documented wire format says.
    #[error("Apple Business Manager answered something unreadable to {path}: {reason}")]
    Garbage { path: String, reason: String },
}
