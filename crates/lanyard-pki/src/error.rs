//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong in `lanyard-pki`.
///
/// Messages never contain key material or plaintext secrets.
#[derive(Debug, Error)]
pub enum PkiError {
    /// An OpenSSL operation failed (bad key, bad certificate, library error).
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),

    /// The caller handed us something malformed (bad PEM/DER, wrong length, missing field).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Base64 text could not be decoded.
    #[error("base64: {0}")]
    Base64(#[from] base64::DecodeError),

    /// A sealed secret could not be opened: wrong key, wrong context, or tampered bytes.
    /// Deliberately says nothing more.
    #[error("sealed secret could not be opened (wrong key, wrong context or tampered data)")]
    Unseal,

    /// A sealed secret carries a format version this build does not know.
    #[error("sealed secret has unknown format version {0}")]
    UnknownSealVersion(u8),

    /// A signature or certificate chain did not verify.
    #[error("verification failed: {0}")]
    Verify(String),

    /// A DER structure could not be parsed or built.
    #[error("asn.1/der: {0}")]
    Der(String),

    /// A SCEP message was well formed but not acceptable.
    #[error("scep: {0}")]
    Scep(String),
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, PkiError>;
