//! CMS SignedData: signing enrollment profiles, verifying attached and detached
//! signatures (the `Mdm-Signature` header).
//!
//! Signing goes through OpenSSL's `CMS_sign` with `CMS_BINARY` (no MIME canonicalisation),
//! so the encapsulated content is exactly the given bytes as ONE OCTET STRING.
//! OpenSSL 3 writes SignerInfo `digestAlgorithm = sha256` and, for RSA keys,
//! `signatureAlgorithm = rsaEncryption` (1.2.840.113549.1.1.1); signed attributes are
//! contentType, signingTime, messageDigest and smimeCapabilities.

use base64::Engine as _;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::{PKeyRef, Private};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::X509PurposeId;
use openssl::x509::X509;

use der::Decode as _;

use crate::asn1;
use crate::error::{PkiError, Result};
use crate::signer_cache::check_signing_usage;

/// Sign `content` as CMS SignedData with the content attached (one OCTET STRING), the
/// signer certificate and `chain` included. Returns DER (what a `.mobileconfig` holds).
pub fn sign_cms(
    signer_cert: &X509,
    signer_key: &PKeyRef<Private>,
    chain: &[X509],
    content: &[u8],
) -> Result<Vec<u8>> {
    let mut certs = Stack::new()?;
    for c in chain {
        certs.push(c.clone())?;
    }
    let cms = CmsContentInfo::sign(
        Some(signer_cert),
        Some(signer_key),
        Some(&certs),
        Some(content),
        CMSOptions::BINARY,
    )?;
    Ok(cms.to_der()?)
}

/// Sign `body` as a detached CMS SignedData (no content), signer certificate included.
/// This is what a Mac sends, base64-encoded, in the `Mdm-Signature` header; Lanyard uses it
/// in its simulated Mac.
pub fn sign_detached(cert: &X509, key: &PKeyRef<Private>, body: &[u8]) -> Result<Vec<u8>> {
    let cms = CmsContentInfo::sign(
        Some(cert),
        Some(key),
        None,
        Some(body),
        CMSOptions::BINARY | CMSOptions::DETACHED,
    )?;
    Ok(cms.to_der()?)
}

/// A store trusting exactly `trust`, accepting any certificate purpose (our device identity
/// certificates carry EKU clientAuth, which OpenSSL's default S/MIME purpose would reject).
fn trust_store(trust: &[X509]) -> Result<X509Store> {
    let mut b = X509StoreBuilder::new()?;
    for c in trust {
        b.add_cert(c.clone())?;
    }
    b.set_purpose(X509PurposeId::ANY)?;
    Ok(b.build())
}

fn verify_error(e: openssl::error::ErrorStack) -> PkiError {
    PkiError::Verify(e.to_string())
}

/// Verify an attached CMS SignedData (DER) whose signer chains to one of `trust`.
/// Returns the encapsulated content and the signer certificate.
pub fn verify_cms_attached(der: &[u8], trust: &[X509]) -> Result<(Vec<u8>, X509)> {
    if trust.is_empty() {
        return Err(PkiError::InvalidInput("no trust anchors given".into()));
    }
    let sd = asn1::parse_signed_message(der)?;
    let signer = sd.signer_cert(sd.single_signer()?)?;
    if sd.econtent.is_none() {
        return Err(PkiError::InvalidInput(
            "CMS SignedData has no attached content".into(),
        ));
    }
    let store = trust_store(trust)?;
    let mut cms = CmsContentInfo::from_der(der)?;
    let mut out = Vec::new();
    cms.verify(None, Some(&store), None, Some(&mut out), CMSOptions::BINARY)
        .map_err(verify_error)?;
    Ok((out, signer))
}

/// Verify an attached CMS SignedData's signature with the certificate it carries, without
/// checking that certificate's chain (for inputs signed by CAs we cannot hold, e.g. the
/// Apple device CA behind MachineInfo). Returns the content and the signer certificate.
pub fn verify_cms_attached_untrusted(der: &[u8]) -> Result<(Vec<u8>, X509)> {
    let sd = asn1::parse_signed_message(der)?;
    let signer = sd.signer_cert(sd.single_signer()?)?;
    if sd.econtent.is_none() {
        return Err(PkiError::InvalidInput(
            "CMS SignedData has no attached content".into(),
        ));
    }
    let mut cms = CmsContentInfo::from_der(der)?;
    let mut out = Vec::new();
    cms.verify(
        None,
        None,
        None,
        Some(&mut out),
        CMSOptions::BINARY | CMSOptions::NO_SIGNER_CERT_VERIFY,
    )
    .map_err(verify_error)?;
    Ok((out, signer))
}

/// What [`read_cms_attached`] learnt about the signature over the content it read.
#[derive(Debug)]
pub enum AttachedSigner {
    /// The signature verifies with the certificate the message carries (whose chain is not
    /// checked).
    Verified(X509),
    /// The message is well formed but its signature could not be verified; the reason.
    Unverified(String),
}

/// Reads the content of an attached CMS SignedData signed under a CA Lanyard cannot hold
/// (a MachineInfo body: the device's Apple identity, an old SHA-1 chain). A malformed message
/// — not DER, not SignedData, no attached content — is an error. A signature that cannot be
/// verified — the signer's certificate missing, an algorithm this OpenSSL's policy refuses
/// (SHA-1), a mismatch — is not: the content is returned with the reason, because the
/// signature could not prove anything to Lanyard anyway (it chains to no anchor Lanyard has).
pub fn read_cms_attached(der: &[u8]) -> Result<(Vec<u8>, AttachedSigner)> {
    let sd = asn1::parse_signed_message(der)?;
    let Some(content) = sd.econtent else {
        return Err(PkiError::InvalidInput(
            "CMS SignedData has no attached content".into(),
        ));
    };
    match verify_cms_attached_untrusted(der) {
        Ok((out, signer)) => Ok((out, AttachedSigner::Verified(signer))),
        Err(e) => Ok((content, AttachedSigner::Unverified(e.to_string()))),
    }
}

/// Decode an `Mdm-Signature` value: base64 text (whitespace ignored) or raw DER.
pub fn decode_signature(sig_b64_or_der: &[u8]) -> Result<Vec<u8>> {
    if sig_b64_or_der.first() == Some(&0x30) {
        return Ok(sig_b64_or_der.to_vec());
    }
    // Devices send the header as one line: decoded as it is, without a filtered copy first.
    if !sig_b64_or_der.iter().any(u8::is_ascii_whitespace) {
        return Ok(base64::engine::general_purpose::STANDARD.decode(sig_b64_or_der)?);
    }
    let text: Vec<u8> = sig_b64_or_der
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
}

/// Verify a detached CMS signature (the `Mdm-Signature` header, base64 or DER) over the exact
/// `body`. The signer must chain to `trust_ca`, be valid now and, if its certificate has a key
/// usage extension, be allowed `digitalSignature`. Returns the signer
/// certificate, which the caller must still match to the enrollment's bound identity.
pub fn verify_detached(sig_b64_or_der: &[u8], body: &[u8], trust_ca: &X509) -> Result<X509> {
    let der = decode_signature(sig_b64_or_der)?;
    let sd = asn1::parse_signed_message(&der)?;
    if sd.econtent.is_some() {
        return Err(PkiError::InvalidInput(
            "expected a detached signature, found attached content".into(),
        ));
    }
    // Refused here rather than left to OpenSSL: OpenSSL 3.0's CMS_verify leaks its copy of the
    // detached content when it cannot set up a listed digest (found by the mdm_signature fuzz
    // target), which any enrolled device could repeat to grow the server's memory.
    if let Some(unknown) = sd
        .digest_algorithms
        .iter()
        .find(|d| !asn1::is_accepted_digest(d))
    {
        return Err(PkiError::InvalidInput(format!(
            "the signature lists digest algorithm {unknown}; accepted: SHA-1, SHA-256, SHA-384, \
             SHA-512"
        )));
    }
    let signer = sd.signer_cert(sd.single_signer()?)?;
    let store = trust_store(std::slice::from_ref(trust_ca))?;
    let mut cms = CmsContentInfo::from_der(&der)?;
    cms.verify(None, Some(&store), Some(body), None, CMSOptions::BINARY)
        .map_err(verify_error)?;
    // The trust store accepts any purpose (above), so the signing rule on key usage is checked
    // here, the one rule the signer cache applies too.
    let parsed = x509_cert::Certificate::from_der(&signer.to_der()?)
        .map_err(|e| PkiError::Verify(format!("the signer certificate cannot be read: {e}")))?;
    check_signing_usage(
        parsed
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default(),
    )?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ca;
    use openssl::pkey::PKey;

    #[test]
    fn an_mdm_signature_decodes_as_one_line_folded_or_raw_der() {
        let der: Vec<u8> = (0u8..=255).cycle().skip(0x30).take(700).collect();
        let line = base64::engine::general_purpose::STANDARD.encode(&der);
        let folded: String = line
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\r\n ", String::from_utf8_lossy(c)))
            .collect();
        assert_eq!(decode_signature(line.as_bytes()).unwrap(), der);
        assert_eq!(decode_signature(folded.as_bytes()).unwrap(), der);
        assert_eq!(decode_signature(&der).unwrap(), der);
        assert!(decode_signature(b"not base64!").is_err());
        assert!(decode_signature(b"not base64 !").is_err());
    }

    fn leaf(ca: &Ca) -> (X509, PKey<Private>) {
        let i = ca
            .issue_tls_server(&["signer.example.test".into()], &[])
            .unwrap();
        (
            X509::from_der(&i.cert_der).unwrap(),
            PKey::private_key_from_pem(i.key_pem.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn attached_round_trip_single_octet_string() {
        let ca = Ca::generate("CMS CA", "Lanyard").unwrap();
        let content = b"<?xml version=\"1.0\"?><plist><dict/></plist>\r\n\n";
        let der = sign_cms(ca.certificate(), ca.private_key(), &[], content).unwrap();
        let sd = asn1::parse_signed_message(&der).unwrap();
        assert_eq!(sd.econtent.as_deref().unwrap(), content);
        let (out, signer) = verify_cms_attached(&der, &[ca.certificate().clone()]).unwrap();
        assert_eq!(out, content);
        assert_eq!(signer.to_der().unwrap(), ca.cert_der().unwrap());
        let si = sd.single_signer().unwrap();
        assert_eq!(si.signature_oid, asn1::oid::RSA_ENCRYPTION);
        assert_eq!(si.digest_oid, asn1::oid::SHA256);

        // EC leaf signer with the CA in the chain
        let (cert, key) = leaf(&ca);
        let der = sign_cms(&cert, &key, &[ca.certificate().clone()], content).unwrap();
        let (out, signer) = verify_cms_attached(&der, &[ca.certificate().clone()]).unwrap();
        assert_eq!(out, content);
        assert_eq!(signer.to_der().unwrap(), cert.to_der().unwrap());

        let other = Ca::generate("Other", "").unwrap();
        assert!(verify_cms_attached(&der, &[other.certificate().clone()]).is_err());
        assert!(verify_cms_attached_untrusted(&der).is_ok());
    }

    #[test]
    fn attached_tamper_fails() {
        let ca = Ca::generate("CMS CA", "Lanyard").unwrap();
        let content = b"hello profile";
        let der = sign_cms(ca.certificate(), ca.private_key(), &[], content).unwrap();
        let pos = der
            .windows(content.len())
            .position(|w| w == content)
            .unwrap();
        let mut bad = der.clone();
        bad[pos] ^= 0x20;
        assert!(verify_cms_attached(&bad, &[ca.certificate().clone()]).is_err());
        assert!(verify_cms_attached_untrusted(&bad).is_err());
    }

    #[test]
    fn read_attached_reads_what_it_cannot_verify() {
        let ca = Ca::generate("Device CA", "Apple-like").unwrap();
        let content = b"<plist><dict><key>VERSION</key><string>24C101</string></dict></plist>";
        let der = sign_cms(ca.certificate(), ca.private_key(), &[], content).unwrap();
        let (out, signer) = read_cms_attached(&der).unwrap();
        assert_eq!(out, content);
        assert!(matches!(signer, AttachedSigner::Verified(_)), "{signer:?}");

        // No signer certificate in the message: unverifiable, still read.
        let bare = CmsContentInfo::sign(
            Some(ca.certificate()),
            Some(ca.private_key()),
            None,
            Some(content.as_slice()),
            CMSOptions::BINARY | CMSOptions::CMS_NOCERTS,
        )
        .unwrap()
        .to_der()
        .unwrap();
        assert!(verify_cms_attached_untrusted(&bare).is_err());
        let (out, signer) = read_cms_attached(&bare).unwrap();
        assert_eq!(out, content);
        assert!(
            matches!(signer, AttachedSigner::Unverified(_)),
            "{signer:?}"
        );

        // A signature that does not match: unverifiable, still read.
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 5] ^= 0x01;
        let (out, signer) = read_cms_attached(&bad).unwrap();
        assert_eq!(out, content);
        assert!(
            matches!(signer, AttachedSigner::Unverified(_)),
            "{signer:?}"
        );

        // Malformed: not DER, truncated, detached (no content).
        assert!(read_cms_attached(b"<plist/>").is_err());
        assert!(read_cms_attached(&der[..der.len() / 2]).is_err());
        let detached = sign_detached(ca.certificate(), ca.private_key(), content).unwrap();
        assert!(read_cms_attached(&detached).is_err());
    }

    #[test]
    fn detached_round_trip_and_failures() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let (cert, key) = leaf(&ca);
        let body =
            b"<plist><dict><key>MessageType</key><string>Authenticate</string></dict></plist>";
        let sig = sign_detached(&cert, &key, body).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&sig);
        let signer = verify_detached(b64.as_bytes(), body, ca.certificate()).unwrap();
        assert_eq!(signer.to_der().unwrap(), cert.to_der().unwrap());
        assert!(verify_detached(&sig, body, ca.certificate()).is_ok());
        // wrapped base64 (as some HTTP stacks fold it)
        let folded: String = b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned() + "\n")
            .collect();
        assert!(verify_detached(folded.as_bytes(), body, ca.certificate()).is_ok());

        // another body
        assert!(matches!(
            verify_detached(b64.as_bytes(), b"<plist/>", ca.certificate()),
            Err(PkiError::Verify(_))
        ));
        // a body with one byte changed
        let mut b2 = body.to_vec();
        b2[10] ^= 1;
        assert!(verify_detached(b64.as_bytes(), &b2, ca.certificate()).is_err());
        // another CA
        let other = Ca::generate("Other", "").unwrap();
        assert!(verify_detached(b64.as_bytes(), body, other.certificate()).is_err());
        // a self-signed signer that merely claims our CA's name
        let imposter = Ca::generate("MDM CA", "Lanyard").unwrap();
        let sig2 = sign_detached(imposter.certificate(), imposter.private_key(), body).unwrap();
        assert!(verify_detached(&sig2, body, ca.certificate()).is_err());
        // attached content is refused as Mdm-Signature
        let att = sign_cms(&cert, &key, &[], body).unwrap();
        assert!(verify_detached(&att, body, ca.certificate()).is_err());
        // garbage
        assert!(verify_detached(b"!!!", body, ca.certificate()).is_err());
        assert!(verify_detached(&[0x30, 0x00], body, ca.certificate()).is_err());
    }

    /// An unknown digest among the SignedData's digestAlgorithms (a part no signature covers)
    /// is refused before OpenSSL runs: OpenSSL 3.0 leaks memory on it (mdm_signature fuzz
    /// target).
    #[test]
    fn detached_with_an_unknown_digest_listed_is_refused_first() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let (cert, key) = leaf(&ca);
        let body = b"<plist/>";
        let sig = sign_detached(&cert, &key, body).unwrap();
        // The first SHA-256 OID is the digestAlgorithms entry; 2.16.840.1.69.3.4.2.1 instead.
        let sha256 = [6, 9, 0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 1];
        let at = sig.windows(sha256.len()).position(|w| w == sha256).unwrap();
        let mut changed = sig.clone();
        changed[at + 6] = 0x45;
        match verify_detached(&changed, body, ca.certificate()) {
            Err(PkiError::InvalidInput(m)) => {
                assert!(m.contains("digest algorithm 2.16.840.1.69.3.4.2.1"), "{m}")
            }
            other => panic!("expected a refusal naming the digest, got {other:?}"),
        }
        assert!(verify_detached(&sig, body, ca.certificate()).is_ok());
    }
}
