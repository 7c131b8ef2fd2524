//! `lanyard-pki`: Lanyard's cryptography, in one place.
//!
//! This crate owns:
//! - the certificate authority ([`Ca`]): root generation and loading, TLS server
//!   certificates, device identity certificates issued from CSRs;
//! - CMS signing and verification (signed enrollment profiles, the `Mdm-Signature` header);
//! - the SCEP message codec (GetCACaps, GetCACert, PKIOperation / CertRep), without HTTP;
//! - CMS decryption (the Apple Business Manager server token);
//! - encryption of secrets at rest ([`SecretBox`]);
//! - certificate fingerprints and summaries ([`sha256_fingerprint`], [`CertInfo`]).
//!
//! It must stay pure: no tokio, sqlx or axum, no storage, no HTTP, no clock-driven jobs.
//! Callers hand it bytes and get bytes back. All cryptography goes through OpenSSL (the
//! `openssl` crate); RustCrypto's `der`/`cms` crates are used only for ASN.1 that OpenSSL
//! has no API for.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod asn1;
mod ca;
mod certinfo;
mod error;
mod issue;
pub mod scep;
mod secretbox;
mod signer_cache;
mod signing;
mod smime;
mod time;

pub use ca::{Ca, IssuedCert, CA_VALIDITY_DAYS, TLS_SERVER_VALIDITY_DAYS};
pub use certinfo::{has_extension, name_to_string, parse_cert, sha256_fingerprint, CertInfo};
pub use error::{PkiError, Result};
pub use issue::{build_csr, CertificateIssuer, Csr, MAX_IDENTITY_VALIDITY_DAYS};
pub use secretbox::SecretBox;
pub use signer_cache::{SignerCache, VerifiedSigner, SIGNER_CACHE_DEFAULT_CAPACITY};
pub use signing::{
    decode_signature, read_cms_attached, sign_cms, sign_detached, verify_cms_attached,
    verify_cms_attached_untrusted, verify_detached, AttachedSigner,
};
pub use smime::{decrypt_smime, self_signed_rsa, smime_message_text};

/// Re-export of the `openssl` crate so callers name the same types (`X509`, `PKey`).
pub use openssl;
