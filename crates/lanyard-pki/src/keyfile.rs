//! Key and certificate files as administrators hand them over, and the small signatures
//! Lanyard's Apple clients make: PKCS#12 bundles (the APNs push certificate, a vendor signing
//! certificate), PEM or DER certificate lists, a chain check against given roots, RSA-SHA256
//! and HMAC-SHA1 signatures, CMS envelopes to and from a signing service, names in a subject.
//!
//! Callers outside this crate never call OpenSSL themselves: they get these functions and the
//! certificate and key types of this crate's signatures.

use std::sync::OnceLock;

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::provider::Provider;
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::stack::Stack;
use openssl::symm::Cipher;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Name, X509Req, X509StoreContext, X509};

use crate::error::{PkiError, Result};

/// What a PKCS#12 file holds.
pub struct Pkcs12Contents {
    /// The end-entity certificate.
    pub cert: Option<X509>,
    /// Its private key. Secret.
    pub key: Option<PKey<Private>>,
    /// Further certificates (intermediates), in the file's order.
    pub chain: Vec<X509>,
}

impl std::fmt::Debug for Pkcs12Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs12Contents")
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("chain", &self.chain.len())
            .finish()
    }
}

/// Loads OpenSSL 3's legacy provider once (RC2-40 and 3DES, which many exported PKCS#12
/// files still use); `false` when this OpenSSL has none.
fn load_legacy_provider() -> bool {
    static LEGACY: OnceLock<Option<Provider>> = OnceLock::new();
    LEGACY
        .get_or_init(|| Provider::try_load(None, "legacy", true).ok())
        .is_some()
}

/// Opens a PKCS#12 file with its password. A file in the older ciphers is read with the
/// legacy provider when the default one refuses it; the error is the first refusal (a wrong
/// password reads as a MAC failure).
pub fn read_pkcs12(der: &[u8], password: &str) -> Result<Pkcs12Contents> {
    let p12 = Pkcs12::from_der(der)
        .map_err(|e| PkiError::InvalidInput(format!("not a PKCS#12 file: {e}")))?;
    let parsed = match p12.parse2(password) {
        Ok(p) => p,
        Err(first) => {
            if !load_legacy_provider() {
                return Err(PkiError::Openssl(first));
            }
            p12.parse2(password).map_err(|_| PkiError::Openssl(first))?
        }
    };
    Ok(Pkcs12Contents {
        cert: parsed.cert,
        key: parsed.pkey,
        chain: parsed
            .ca
            .map(|s| s.into_iter().collect())
            .unwrap_or_default(),
    })
}

/// Every certificate of a PEM text (in order).
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<X509>> {
    Ok(X509::stack_from_pem(pem)?)
}

/// The certificates of a file that is either PEM (any number) or one DER certificate.
pub fn read_certificates(bytes: &[u8]) -> Result<Vec<X509>> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        certificates_from_pem(trimmed)
    } else {
        X509::from_der(bytes)
            .map(|c| vec![c])
            .map_err(|e| PkiError::InvalidInput(format!("neither PEM nor DER certificates: {e}")))
    }
}

/// Whether the certificate is self-signed: its subject is its issuer and its own key
/// verifies its signature.
pub fn is_self_signed(cert: &X509) -> bool {
    cert.public_key()
        .and_then(|k| cert.verify(&k))
        .unwrap_or(false)
        && cert.subject_name().try_cmp(cert.issuer_name()).ok() == Some(std::cmp::Ordering::Equal)
}

/// Whether `key` is the private half of `cert`'s public key.
pub fn key_matches(cert: &X509, key: &PKeyRef<Private>) -> bool {
    cert.public_key().map(|p| p.public_eq(key)).unwrap_or(false)
}

/// An attribute of a certificate's subject that Lanyard reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameAttribute {
    /// CN (2.5.4.3).
    CommonName,
    /// UID (0.9.2342.19200300.100.1.1): the APNs topic of a push certificate.
    UserId,
    /// O (2.5.4.10).
    Organization,
}

impl NameAttribute {
    fn nid(self) -> Nid {
        match self {
            NameAttribute::CommonName => Nid::COMMONNAME,
            NameAttribute::UserId => Nid::USERID,
            NameAttribute::Organization => Nid::ORGANIZATIONNAME,
        }
    }

    /// The attribute's OID, as [`NameAttribute::nid`] names it to OpenSSL.
    pub(crate) fn oid(self) -> der::asn1::ObjectIdentifier {
        use der::asn1::ObjectIdentifier as Oid;
        match self {
            NameAttribute::CommonName => Oid::new_unwrap("2.5.4.3"),
            NameAttribute::UserId => Oid::new_unwrap("0.9.2342.19200300.100.1.1"),
            NameAttribute::Organization => Oid::new_unwrap("2.5.4.10"),
        }
    }
}

/// The values of one attribute in a certificate's subject, as text (entries that are not
/// valid text are skipped); see [`crate::CertView::subject_values`]. Empty for a certificate
/// that cannot be read as DER.
pub fn subject_values(cert: &X509, attribute: NameAttribute) -> Vec<String> {
    crate::CertView::from_x509(cert)
        .map(|v| v.subject_values(attribute))
        .unwrap_or_default()
}

/// A distinguished name from attributes, in order.
pub fn name(attributes: &[(NameAttribute, &str)]) -> Result<X509Name> {
    let mut b = X509Name::builder()?;
    for (a, v) in attributes {
        b.append_entry_by_nid(a.nid(), v)?;
    }
    Ok(b.build())
}

/// Checks that `leaf` chains to one of `roots` through `intermediates` (validity included);
/// returns the length of the chain built, leaf and root included.
pub fn verify_chain(leaf: &X509, intermediates: &[X509], roots: &[X509]) -> Result<usize> {
    let mut store = X509StoreBuilder::new()?;
    for r in roots {
        store.add_cert(r.clone())?;
    }
    let store = store.build();
    let mut untrusted = Stack::new()?;
    for c in intermediates {
        untrusted.push(c.clone())?;
    }
    let mut ctx = X509StoreContext::new()?;
    let (ok, why, len) = ctx.init(&store, leaf, &untrusted, |c| {
        let ok = c.verify_cert()?;
        Ok((
            ok,
            c.error().error_string().to_string(),
            c.chain().map(|s| s.len()),
        ))
    })?;
    if ok {
        Ok(len.unwrap_or(0))
    } else {
        Err(PkiError::Verify(why))
    }
}

/// Checks a PKCS#10 request (DER) is well formed and its self-signature verifies.
pub fn check_csr(der: &[u8]) -> Result<()> {
    let req = X509Req::from_der(der)
        .map_err(|e| PkiError::InvalidInput(format!("not a certificate request: {e}")))?;
    let public = req.public_key()?;
    if req.verify(&public).unwrap_or(false) {
        Ok(())
    } else {
        Err(PkiError::Verify(
            "its self-signature does not verify".into(),
        ))
    }
}

/// A PKCS#10 request, PEM, as DER.
pub fn csr_pem_to_der(pem: &[u8]) -> Result<Vec<u8>> {
    Ok(X509Req::from_pem(pem)?.to_der()?)
}

/// A PKCS#10 request, DER, as PEM text.
pub fn csr_der_to_pem(der: &[u8]) -> Result<String> {
    let pem = X509Req::from_der(der)?.to_pem()?;
    String::from_utf8(pem).map_err(|e| PkiError::InvalidInput(e.to_string()))
}

/// A certificate as PEM text.
pub fn certificate_pem(cert: &X509) -> Result<String> {
    String::from_utf8(cert.to_pem()?).map_err(|e| PkiError::InvalidInput(e.to_string()))
}

/// A private key as PKCS#8 PEM text. Secret.
pub fn private_key_pem(key: &PKeyRef<Private>) -> Result<String> {
    String::from_utf8(key.private_key_to_pem_pkcs8()?)
        .map_err(|e| PkiError::InvalidInput(e.to_string()))
}

/// A private key from PEM (PKCS#8 or traditional).
pub fn private_key_from_pem(pem: &[u8]) -> Result<PKey<Private>> {
    Ok(PKey::private_key_from_pem(pem)?)
}

/// A fresh RSA-2048 key.
pub fn generate_rsa_2048() -> Result<PKey<Private>> {
    Ok(PKey::from_rsa(Rsa::generate(2048)?)?)
}

/// SHA256WithRSA (PKCS#1 v1.5) over `data`.
pub fn sign_rsa_sha256(key: &PKeyRef<Private>, data: &[u8]) -> Result<Vec<u8>> {
    let mut signer = Signer::new(MessageDigest::sha256(), key)?;
    signer.update(data)?;
    Ok(signer.sign_to_vec()?)
}

/// HMAC-SHA1 of `data` under `key`.
pub fn hmac_sha1(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let pkey = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha1(), &pkey)?;
    signer.update(data)?;
    Ok(signer.sign_to_vec()?)
}

/// Compares two byte strings in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// Decrypts a DER CMS EnvelopedData with `cert` (which selects the recipient) and its key.
pub fn cms_decrypt(der: &[u8], cert: &X509, key: &PKeyRef<Private>) -> Result<Vec<u8>> {
    let cms = CmsContentInfo::from_der(der)
        .map_err(|e| PkiError::InvalidInput(format!("not a CMS message: {e}")))?;
    open_envelope(&cms, cert, key)
}

/// Decrypts a parsed CMS EnvelopedData with `cert` (which selects the recipient and keeps
/// OpenSSL's Bleichenbacher countermeasure on) and its key.
pub(crate) fn open_envelope(
    cms: &CmsContentInfo,
    cert: &X509,
    key: &PKeyRef<Private>,
) -> Result<Vec<u8>> {
    cms.decrypt(key, cert)
        .map_err(|e| PkiError::Verify(format!("could not decrypt the CMS envelope: {e}")))
}

/// Encrypts `data` to `cert` as a DER CMS EnvelopedData with AES-256-CBC.
pub fn cms_encrypt_aes256(data: &[u8], cert: &X509) -> Result<Vec<u8>> {
    let mut certs = Stack::new()?;
    certs.push(cert.clone())?;
    let cms = CmsContentInfo::encrypt(&certs, data, Cipher::aes_256_cbc(), CMSOptions::BINARY)?;
    Ok(cms.to_der()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cn: &str) -> (X509, PKey<Private>) {
        let issued = crate::self_signed_rsa(cn, 1).unwrap();
        (
            X509::from_pem(issued.cert_pem.as_bytes()).unwrap(),
            private_key_from_pem(issued.key_pem.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn pkcs12_round_trip_and_wrong_password() {
        let (cert, key) = pair("p12 test");
        let der = Pkcs12::builder()
            .name("t")
            .pkey(&key)
            .cert(&cert)
            .build2("secret")
            .unwrap()
            .to_der()
            .unwrap();
        let got = read_pkcs12(&der, "secret").unwrap();
        let got_cert = got.cert.unwrap();
        assert_eq!(got_cert.to_der().unwrap(), cert.to_der().unwrap());
        assert!(key_matches(&got_cert, got.key.as_ref().unwrap()));
        assert!(read_pkcs12(&der, "wrong").is_err());
        assert!(read_pkcs12(b"not der", "secret").is_err());
    }

    #[test]
    fn chain_and_self_signed() {
        let (root, _) = pair("root");
        let (other, other_key) = pair("other");
        assert!(is_self_signed(&root));
        assert_eq!(
            verify_chain(&root, &[], std::slice::from_ref(&root)).unwrap(),
            1
        );
        assert!(verify_chain(&other, &[], std::slice::from_ref(&root)).is_err());
        assert!(!key_matches(&root, &other_key));
        assert_eq!(
            subject_values(&other, NameAttribute::CommonName),
            vec!["other".to_string()]
        );
    }

    #[test]
    fn signatures_envelopes_and_csrs() {
        let (cert, key) = pair("envelope");
        let der = cms_encrypt_aes256(b"hello", &cert).unwrap();
        assert_eq!(cms_decrypt(&der, &cert, &key).unwrap(), b"hello");
        let (other, other_key) = pair("someone else");
        assert!(cms_decrypt(&der, &other, &other_key).is_err());

        let sig = sign_rsa_sha256(&key, b"data").unwrap();
        let public = cert.public_key().unwrap();
        let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &public).unwrap();
        v.update(b"data").unwrap();
        assert!(v.verify(&sig).unwrap());

        // RFC 2202 test case 2.
        assert_eq!(
            hex::encode(hmac_sha1(b"Jefe", b"what do ya want for nothing?").unwrap()),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));

        let subject = name(&[(NameAttribute::CommonName, "csr")]).unwrap();
        let csr = crate::build_csr(&key, &subject, None).unwrap();
        check_csr(&csr).unwrap();
        let pem = csr_der_to_pem(&csr).unwrap();
        assert_eq!(csr_pem_to_der(pem.as_bytes()).unwrap(), csr);
        let mut bad = csr.clone();
        let n = bad.len();
        bad[n - 5] ^= 0xff;
        assert!(check_csr(&bad).is_err());
    }
}
