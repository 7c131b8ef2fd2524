//! Apple Push Notification service (APNs) for MDM.
//!
//! An MDM push only wakes the device: `POST /3/device/<hex token>` with the body
//! `{"mdm":"<PushMagic>"}` over HTTP/2, authenticated by the MDM push certificate as the TLS
//! client certificate. The device then polls Lanyard's command endpoint.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lanyard_apple::apns::ApnsError> {
//! use lanyard_apple::apns::{ApnsClient, ApnsOptions, PushCertificate, PushOutcome, PRODUCTION_URL};
//! let p12 = std::fs::read("push.p12").unwrap_or_default();
//! let cert = PushCertificate::from_pkcs12(&p12, "password")?;
//! let client = ApnsClient::new(PRODUCTION_URL, &cert, ApnsOptions::default())?;
//! match client.push(&[0u8; 32], "push-magic").await {
//!     PushOutcome::Delivered { .. } => {}
//!     PushOutcome::Unregistered { .. } => { /* forget the token */ }
//!     other if other.is_retryable() => { /* try again after other.retry_delay(attempt) */ }
//!     _ => {}
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod cert;
mod client;
mod error;
mod signing_service;
mod vendor;

pub use backoff::{backoff, backoff_with, BACKOFF_BASE, BACKOFF_CAP};
pub use cert::{
    ApnsEnvironment, PushCertificate, PushCertificateSummary, APNS_DEVELOPMENT_OID,
    APNS_PRODUCTION_OID, MDM_TOPIC_PREFIX,
};
pub use client::{
    ApnsClient, ApnsOptions, PushOutcome, PushTarget, DEFAULT_EXPIRATION, PRODUCTION_URL,
    SANDBOX_URL,
};
pub use error::ApnsError;
pub use signing_service::{
    decrypt_reply, encrypt_reply, SignRequestBody, SignRequestReply, SigningService,
    SigningServiceError, DEFAULT_SIGNING_SERVICE_URL, REPLY_LIMIT, SIGN_REQUEST_PATH,
};
pub use vendor::{
    PushCertRequestFile, VendorError, VendorSigner, KEY_CHAIN, KEY_CSR, KEY_SIGNATURE,
    VENDOR_CN_PREFIX,
};
