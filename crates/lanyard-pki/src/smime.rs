//! CMS EnvelopedData decryption: the Apple Business Manager server token (`.p7m`).
//!
//! ABM hands the administrator a file that is S/MIME (`Content-Type: application/pkcs7-mime`,
//! base64 body) holding CMS EnvelopedData encrypted to the certificate the MDM uploaded.
//! Inside is a MIME entity whose text body carries the token JSON, wrapped in
//! `-----BEGIN MESSAGE-----` / `-----END MESSAGE-----` (the framing is UNCONFIRMED against a
//! real token; nanodep's `tokenpki` strips the same markers).

use openssl::cms::CmsContentInfo;
use openssl::nid::Nid;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509NameBuilder, X509NameRef, X509};

use crate::ca::{issued, IssuedCert};
use crate::error::{PkiError, Result};
use crate::keyfile::open_envelope;

/// Decrypt a CMS EnvelopedData given as S/MIME text (what ABM's `.p7m` holds), PEM
/// (`-----BEGIN PKCS7-----` or `CMS`) or DER, with `key` (and `cert`, which selects the
/// recipient and keeps OpenSSL's Bleichenbacher countermeasure on). Returns the decrypted
/// content: for the ABM token, a MIME entity (see [`smime_message_text`]).
pub fn decrypt_smime(smime_bytes: &[u8], cert: &X509, key: &PKeyRef<Private>) -> Result<Vec<u8>> {
    let trimmed = smime_bytes.trim_ascii_start();
    let cms = if trimmed.first() == Some(&0x30) {
        CmsContentInfo::from_der(trimmed)?
    } else if trimmed.starts_with(b"-----BEGIN") {
        CmsContentInfo::from_pem(trimmed)?
    } else {
        CmsContentInfo::smime_read_cms(smime_bytes)?
    };
    open_envelope(&cms, cert, key)
}

/// The text of a decrypted MIME entity: the body after the header block (if the content
/// starts with headers), with a `-----BEGIN MESSAGE-----`/`-----END MESSAGE-----` armor
/// removed when present, trimmed. For the ABM token this is the token JSON.
pub fn smime_message_text(decrypted: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(decrypted)
        .map_err(|_| PkiError::InvalidInput("decrypted message is not UTF-8".into()))?;
    let text = text.replace("\r\n", "\n");
    let first_line = text.lines().next().unwrap_or_default();
    let looks_like_header = first_line
        .split_once(':')
        .map(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .unwrap_or(false);
    let body = if looks_like_header {
        text.split_once("\n\n").map(|(_, b)| b).unwrap_or_default()
    } else {
        text.as_str()
    };
    let mut body = body.trim();
    if let Some(rest) = body.strip_prefix("-----BEGIN MESSAGE-----") {
        body = rest.trim();
        if let Some(end) = body.find("-----END MESSAGE-----") {
            body = body[..end].trim();
        }
    }
    Ok(body.to_string())
}

/// A self-signed RSA-2048 certificate with its key, for a key-transport recipient such as
/// the public key uploaded to Apple Business Manager (its token is encrypted to it).
/// keyUsage keyEncipherment + digitalSignature, random serial, SKI.
pub fn self_signed_rsa(common_name: &str, validity_days: u32) -> Result<IssuedCert> {
    if common_name.is_empty() {
        return Err(PkiError::InvalidInput("a common name is required".into()));
    }
    let mut nb = X509NameBuilder::new()?;
    nb.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    self_signed_rsa_named(&nb.build(), validity_days)
}

/// [`self_signed_rsa`] with a whole subject name.
pub fn self_signed_rsa_named(name: &X509NameRef, validity_days: u32) -> Result<IssuedCert> {
    if validity_days == 0 {
        return Err(PkiError::InvalidInput("a validity is required".into()));
    }
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let cert = crate::ca::self_signed(
        &key,
        name,
        validity_days,
        BasicConstraints::new().critical().build()?,
        KeyUsage::new()
            .critical()
            .key_encipherment()
            .digital_signature()
            .build()?,
    )?;
    issued(&cert, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::cms::CMSOptions;
    use openssl::stack::Stack;
    use openssl::symm::Cipher;

    const TOKEN: &str = "Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n-----BEGIN MESSAGE-----\n{\"consumer_key\":\"CK_1\",\"consumer_secret\":\"CS_1\",\"access_token\":\"AT_1\",\"access_secret\":\"AS_1\",\"access_token_expiry\":\"2027-01-01T00:00:00Z\"}\n-----END MESSAGE-----\n";

    fn recipient() -> (X509, PKey<Private>) {
        let r = self_signed_rsa("Lanyard ABM token", 365).unwrap();
        (
            X509::from_der(&r.cert_der).unwrap(),
            PKey::private_key_from_pem(r.key_pem.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn der_pem_and_wrong_key() {
        let (cert, key) = recipient();
        let mut certs = Stack::new().unwrap();
        certs.push(cert.clone()).unwrap();
        let cms = CmsContentInfo::encrypt(
            &certs,
            TOKEN.as_bytes(),
            Cipher::aes_256_cbc(),
            CMSOptions::BINARY,
        )
        .unwrap();
        let der = cms.to_der().unwrap();
        assert_eq!(decrypt_smime(&der, &cert, &key).unwrap(), TOKEN.as_bytes());
        let pem = cms.to_pem().unwrap();
        assert_eq!(decrypt_smime(&pem, &cert, &key).unwrap(), TOKEN.as_bytes());

        let (other_cert, other_key) = recipient();
        assert!(decrypt_smime(&der, &other_cert, &other_key).is_err());
        assert!(decrypt_smime(b"not a message", &cert, &key).is_err());
    }

    #[test]
    fn message_text() {
        let json = smime_message_text(TOKEN.as_bytes()).unwrap();
        assert!(json.starts_with("{\"consumer_key\""), "{json}");
        assert!(json.ends_with('}'), "{json}");
        assert_eq!(smime_message_text(b"{\"a\":1}\n").unwrap(), "{\"a\":1}");
        assert_eq!(
            smime_message_text(b"-----BEGIN MESSAGE-----\nX\n-----END MESSAGE-----").unwrap(),
            "X"
        );
        assert!(smime_message_text(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn self_signed_recipient_profile() {
        let r = self_signed_rsa("Lanyard ABM token", 365).unwrap();
        let cert = X509::from_der(&r.cert_der).unwrap();
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(text.contains("Key Encipherment"), "{text}");
        assert!(self_signed_rsa("", 1).is_err());
    }
}
