//! `lanyard-apple`: Lanyard's clients for Apple's own services.
//!
//! What this crate owns:
//! - [`apns`]: the Apple Push Notification service client that wakes enrolled Macs — the MDM
//!   push certificate ([`apns::PushCertificate`], PKCS#12 or PEM, topic from its subject UID),
//!   one long-lived HTTP/2 connection with many concurrent streams ([`apns::ApnsClient`]),
//!   the mapping of APNs answers to what the caller should do ([`apns::PushOutcome`]) and a
//!   back-off policy for retries ([`apns::backoff`]);
//! - [`abm`]: the Apple Business Manager (Device Assignment) client — OAuth 1.0a sessions,
//!   account details, device fetch/sync with cursors and the account-driven enrollment
//!   service-discovery profile.
//!
//! Every base URL is configurable, so tests aim these clients at fakes (`lanyard-testkit`).
//! This crate does network I/O to Apple and nothing else: no storage, no HTTP server, no
//! scheduling. Callers decide what to push, when to retry and what to do with a dead token.
//! Push tokens and `PushMagic` strings are secrets: nothing here logs them, and no `Debug`
//! output shows them or any private key.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod abm;
pub mod apns;

/// The one rule for a configured Apple service URL: `https://`, or plain `http://` only to a
/// loopback address (a test service on this machine). The refusal says why, without the
/// caller's prefix.
pub(crate) fn check_service_url(base: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(base).map_err(|e| e.to_string())?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback) {
        Ok(parsed)
    } else {
        Err("must be https:// (plain http only to a loopback address)".into())
    }
}
