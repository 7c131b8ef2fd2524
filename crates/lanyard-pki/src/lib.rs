//! `lanyard-pki`: Lanyard's cryptography, in one place.
//!
//! This crate owns:
//! - the certificate authority ([`Ca`]): root generation and loading, TLS server
//!   certificates, device identity certificates issued from CSRs;
//! - CMS signing and verification (signed enrollment profiles, the `Mdm-Signature` header);
//! - the SCEP message codec (GetCACaps, GetCACert, PKIOperation / CertRep), without HTTP;
//! - CMS decryption (the Apple Business Manager server token);
//! - key and certificate files and the Apple clients' small signatures (`keyfile`: PKCS#12,
//!   certificate lists, chain checks, RSA-SHA256, HMAC-SHA1, CMS envelopes);
//! - encryption of secrets at rest ([`SecretBox`]);
//! - certificate fingerprints and summaries ([`sha256_fingerprint`], [`CertInfo`]).
//!
//! It must stay pure: no tokio, sqlx or axum, no storage, no HTTP, no clock-driven jobs.
//! Callers hand it bytes and get bytes back. Cryptography goes through OpenSSL (the `openssl`
//! crate), except the `Mdm-Signature` fast path ([`SignerCache`]), which verifies RSA and ECDSA
//! signatures with `ring` over raw key bytes; RustCrypto's `der`/`cms`/`x509-cert` crates are
//! used only for ASN.1 that OpenSSL has no API for or that the fast path reads without it.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod asn1;
mod ca;
mod certinfo;
mod error;
mod issue;
mod keyfile;
pub mod scep;
mod secretbox;
mod signer_cache;
mod signing;
mod smime;
mod time;

pub use ca::{Ca, IssuedCert, CA_VALIDITY_DAYS, TLS_SERVER_VALIDITY_DAYS};
pub use certinfo::{
    certificate_der_to_pem, name_to_string, not_after_of_der, parse_cert, sha256_fingerprint,
    CertInfo, CertView,
};
pub use error::{PkiError, Result};
pub use issue::{build_csr, CertificateIssuer, Csr, MAX_IDENTITY_VALIDITY_DAYS};
pub use secretbox::SecretBox;
pub use signer_cache::{SignerCache, VerifiedSigner, SIGNER_CACHE_DEFAULT_CAPACITY};
pub use signing::{
    decode_signature, read_cms_attached, sign_cms, sign_detached, verify_cms_attached,
    verify_cms_attached_untrusted, verify_detached, AttachedSigner,
};
pub use smime::{decrypt_smime, self_signed_rsa, self_signed_rsa_named, smime_message_text};

pub use keyfile::{
    certificate_pem, certificates_from_pem, check_csr, cms_decrypt, cms_encrypt_aes256,
    constant_time_eq, csr_der_to_pem, csr_pem_to_der, generate_rsa_2048, hmac_sha1, is_self_signed,
    key_matches, name, private_key_from_pem, private_key_pem, read_certificates, read_pkcs12,
    sign_rsa_sha256, subject_values, verify_chain, NameAttribute, Pkcs12Contents,
};

/// The certificate, name and key types of this crate's signatures. Only these are shared:
/// other crates never call OpenSSL themselves (its functions are not re-exported), they
/// call this crate.
pub use openssl::error::ErrorStack;
pub use openssl::pkey::{PKey, PKeyRef, Private, Public};
pub use openssl::x509::{X509Name, X509NameRef, X509Req, X509};
