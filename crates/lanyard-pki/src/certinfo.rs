//! Certificate fingerprints and a plain summary of a certificate.

use openssl::x509::{X509NameRef, X509};
use sha2::{Digest, Sha256};

use crate::error::{PkiError, Result};
use crate::time::asn1_to_unix;

/// SHA-256 of the given bytes (normally a certificate's DER) as lower-case hex, no separators.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A distinguished name as `SHORT=value` pairs in certificate order, joined by `", "`,
/// e.g. `O=Lanyard, CN=Lanyard CA`.
pub fn name_to_string(name: &X509NameRef) -> String {
    let mut parts = Vec::new();
    for entry in name.entries() {
        let key = entry
            .object()
            .nid()
            .short_name()
            .map(str::to_owned)
            .unwrap_or_else(|_| entry.object().to_string());
        let value = entry
            .data()
            .to_string()
            .unwrap_or_else(|_| hex::encode(entry.data().as_slice()));
        parts.push(format!("{key}={value}"));
    }
    parts.join(", ")
}

/// A summary of one certificate, for storage and display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN, see [`name_to_string`].
    pub subject: String,
    /// Issuer DN, see [`name_to_string`].
    pub issuer: String,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256: String,
}

impl CertInfo {
    /// Summarise an OpenSSL certificate.
    pub fn from_x509(cert: &X509) -> Result<CertInfo> {
        let der = cert.to_der()?;
        Ok(CertInfo {
            subject: name_to_string(cert.subject_name()),
            issuer: name_to_string(cert.issuer_name()),
            serial_hex: crate::ca::serial_hex(cert)?,
            not_before: asn1_to_unix(cert.not_before())?,
            not_after: asn1_to_unix(cert.not_after())?,
            sha256: sha256_fingerprint(&der),
        })
    }

    /// Summarise a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo> {
        Self::from_x509(&X509::from_der(der)?)
    }

    /// Summarise a PEM certificate (the first one in the input).
    pub fn from_pem(pem: &[u8]) -> Result<CertInfo> {
        Self::from_x509(&X509::from_pem(pem)?)
    }

    /// Summarise a certificate given as PEM or DER (detected by the PEM header).
    pub fn parse(bytes: &[u8]) -> Result<CertInfo> {
        Self::from_x509(&parse_cert(bytes)?)
    }
}

/// Whether the certificate carries an extension with this dotted OID (e.g. one of Apple's
/// private `1.2.840.113635.…` markers, which OpenSSL's safe API cannot look up).
pub fn has_extension(cert: &X509, dotted_oid: &str) -> Result<bool> {
    use der::Decode as _;
    let oid = der::asn1::ObjectIdentifier::new(dotted_oid)
        .map_err(|e| PkiError::InvalidInput(format!("bad OID {dotted_oid:?}: {e}")))?;
    let der = cert.to_der()?;
    let parsed = x509_cert::Certificate::from_der(&der).map_err(crate::asn1::der_err)?;
    Ok(parsed
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .any(|e| e.extn_id == oid))
}

/// The end of a certificate's validity (Unix seconds), from its DER, without OpenSSL: what
/// `lanyard serve` checks of its TLS certificate at start-up, before anything needs OpenSSL.
pub fn not_after_of_der(der: &[u8]) -> Result<i64> {
    use der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der).map_err(crate::asn1::der_err)?;
    let secs = cert
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs();
    i64::try_from(secs).map_err(|_| PkiError::InvalidInput("validity beyond 2^63 s".into()))
}

/// Parse a certificate given as PEM or DER.
pub fn parse_cert(bytes: &[u8]) -> Result<X509> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        Ok(X509::from_pem(trimmed)?)
    } else if trimmed.first() == Some(&0x30) {
        Ok(X509::from_der(bytes)?)
    } else {
        Err(PkiError::InvalidInput(
            "certificate is neither PEM nor DER".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ca;

    #[test]
    fn fingerprint_is_lower_hex_sha256() {
        assert_eq!(
            sha256_fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn info_from_der_and_pem_agree() {
        let ca = Ca::generate("Info CA", "Lanyard").unwrap();
        let leaf = ca
            .issue_tls_server(&["a.example.test".into()], &[])
            .unwrap();
        let a = CertInfo::from_der(&leaf.cert_der).unwrap();
        let b = CertInfo::from_pem(leaf.cert_pem.as_bytes()).unwrap();
        let c = CertInfo::parse(leaf.cert_pem.as_bytes()).unwrap();
        let d = CertInfo::parse(&leaf.cert_der).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert_eq!(a.subject, "CN=a.example.test");
        assert_eq!(a.issuer, "O=Lanyard, CN=Info CA");
        assert_eq!(a.serial_hex, leaf.serial_hex);
        assert_eq!(a.not_after, leaf.not_after);
        assert!(a.not_before < a.not_after);
        assert_eq!(a.sha256, sha256_fingerprint(&leaf.cert_der));
        assert!(CertInfo::parse(b"garbage").is_err());
        assert!(CertInfo::from_der(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        // The same end of validity read without OpenSSL.
        assert_eq!(not_after_of_der(&leaf.cert_der).unwrap(), a.not_after);
        assert!(not_after_of_der(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
