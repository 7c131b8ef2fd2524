//! Device identity certificates from PKCS#10 requests, and the helper certificates a
//! SCEP service or profile signer needs (RA, CMS signer).

use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, PKeyRef, Private, Public};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509NameBuilder, X509NameRef, X509Req, X509ReqBuilder, X509};
use x509_cert::request::CertReq;

use der::{Decode as _, Encode as _};

use crate::asn1::{self, oid};
use crate::ca::{Ca, IssuedCert, BACKDATE_SECS};
use crate::certinfo::name_to_string;
use crate::error::{PkiError, Result};
use crate::time::{asn1_to_unix, now_unix};

/// The largest validity we issue device identities for (about five years).
pub const MAX_IDENTITY_VALIDITY_DAYS: u32 = 1826;

/// A parsed, signature-checked PKCS#10 certificate request.
pub struct Csr {
    req: X509Req,
    der: Vec<u8>,
    challenge_password: Option<String>,
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csr")
            .field("subject", &self.subject())
            .field(
                "challenge_password",
                &self.challenge_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Csr {
    /// Parse a DER PKCS#10 request and check its self-signature (proof of possession).
    /// The `challengePassword` attribute (1.2.840.113549.1.9.7) is read with the `x509-cert`
    /// crate because OpenSSL's safe API does not expose request attributes.
    pub fn from_der(der: &[u8]) -> Result<Csr> {
        let req = X509Req::from_der(der)?;
        let key = req.public_key()?;
        if !req.verify(&key).unwrap_or(false) {
            return Err(PkiError::Verify(
                "certificate request signature does not verify".into(),
            ));
        }
        let parsed = CertReq::from_der(der).map_err(asn1::der_err)?;
        let challenge_password =
            asn1::attr_value(parsed.info.attributes.as_slice(), &oid::CHALLENGE_PASSWORD)?
                .map(asn1::any_to_string)
                .transpose()?;
        Ok(Csr {
            req,
            der: der.to_vec(),
            challenge_password,
        })
    }

    /// The challengePassword attribute, if the request carries one.
    pub fn challenge_password(&self) -> Option<&str> {
        self.challenge_password.as_deref()
    }

    /// The requested subject, e.g. `CN=dev1, O=scep-client`.
    pub fn subject(&self) -> String {
        name_to_string(self.req.subject_name())
    }

    /// The requested subject as an OpenSSL name.
    pub fn subject_name(&self) -> &X509NameRef {
        self.req.subject_name()
    }

    /// The requested public key.
    pub fn public_key(&self) -> Result<PKey<Public>> {
        Ok(self.req.public_key()?)
    }

    /// The OpenSSL request.
    pub fn request(&self) -> &X509Req {
        &self.req
    }

    /// The DER the request was parsed from.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// Build a PKCS#10 request for `key` with `subject` and, optionally, a challengePassword
/// attribute (PrintableString when the text allows, UTF8String otherwise), signed with
/// SHA-256. This is the client side (used by the simulated Mac and tests); OpenSSL builds
/// and signs, `x509-cert` adds the attribute OpenSSL's safe API cannot.
pub fn build_csr(
    key: &PKeyRef<Private>,
    subject: &X509NameRef,
    challenge_password: Option<&str>,
) -> Result<Vec<u8>> {
    let mut b = X509ReqBuilder::new()?;
    b.set_subject_name(subject)?;
    b.set_pubkey(key)?;
    b.sign(key, MessageDigest::sha256())?;
    let plain = b.build().to_der()?;
    let Some(challenge) = challenge_password else {
        return Ok(plain);
    };
    let mut req = CertReq::from_der(&plain).map_err(asn1::der_err)?;
    let value = if challenge
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&c))
    {
        der::Any::new(der::Tag::PrintableString, challenge.as_bytes())
    } else {
        der::Any::new(der::Tag::Utf8String, challenge.as_bytes())
    }
    .map_err(asn1::der_err)?;
    let mut values = der::asn1::SetOfVec::new();
    values.insert(value).map_err(asn1::der_err)?;
    req.info
        .attributes
        .insert(x509_cert::attr::Attribute {
            oid: oid::CHALLENGE_PASSWORD,
            values,
        })
        .map_err(asn1::der_err)?;
    let tbs = req.info.to_der().map_err(asn1::der_err)?;
    let mut signer = Signer::new(MessageDigest::sha256(), key)?;
    signer.update(&tbs)?;
    let sig = signer.sign_to_vec()?;
    req.signature = der::asn1::BitString::from_bytes(&sig).map_err(asn1::der_err)?;
    req.to_der().map_err(asn1::der_err)
}

/// Something that turns certificate requests into device identity certificates.
/// [`Ca`] implements it; the SCEP service is written against this trait.
pub trait CertificateIssuer {
    /// Issue a device identity certificate for the (signature-checked) request `csr_der`:
    /// keyUsage digitalSignature + keyEncipherment (critical), EKU clientAuth, SKI/AKI,
    /// random serial, valid for `validity` (one second to [`MAX_IDENTITY_VALIDITY_DAYS`] days,
    /// never beyond the issuer's own expiry). The subject is the request's unless
    /// `subject_override` is given. Extensions requested in the CSR are ignored: the issuer
    /// decides.
    fn issue_identity_valid_for(
        &self,
        csr_der: &[u8],
        validity: Duration,
        subject_override: Option<&X509NameRef>,
    ) -> Result<X509>;

    /// [`CertificateIssuer::issue_identity_valid_for`] for whole days
    /// (1..=[`MAX_IDENTITY_VALIDITY_DAYS`]).
    fn issue_identity(
        &self,
        csr_der: &[u8],
        validity_days: u32,
        subject_override: Option<&X509NameRef>,
    ) -> Result<X509> {
        self.issue_identity_valid_for(
            csr_der,
            Duration::from_secs(u64::from(validity_days) * 86_400),
            subject_override,
        )
    }

    /// The certificate that issued (and chains) the identities.
    fn issuer_certificate(&self) -> &X509;
}

impl CertificateIssuer for Ca {
    fn issue_identity_valid_for(
        &self,
        csr_der: &[u8],
        validity: Duration,
        subject_override: Option<&X509NameRef>,
    ) -> Result<X509> {
        let max = u64::from(MAX_IDENTITY_VALIDITY_DAYS) * 86_400;
        let secs = validity.as_secs();
        if secs == 0 || secs > max {
            return Err(PkiError::InvalidInput(format!(
                "identity validity must be 1 second to {MAX_IDENTITY_VALIDITY_DAYS} days, got \
                 {secs} seconds"
            )));
        }
        let csr = Csr::from_der(csr_der)?;
        let subject = subject_override.unwrap_or(csr.subject_name());
        if subject.entries().next().is_none() {
            return Err(PkiError::InvalidInput(
                "identity certificate subject is empty".into(),
            ));
        }
        let key = csr.public_key()?;
        let mut b = self.leaf_builder(subject, &key, self.validity_secs(secs)?)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()?,
        )?;
        b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        self.sign_leaf(b)
    }

    fn issuer_certificate(&self) -> &X509 {
        self.certificate()
    }
}

/// What a helper certificate is for.
#[derive(Clone, Copy)]
enum HelperKind {
    ScepRa,
    CmsSigner,
}

impl Ca {
    /// Validity window: now minus skew, `days` ahead, clipped to the CA's own expiry.
    fn validity(&self, days: u32) -> Result<(openssl::asn1::Asn1Time, openssl::asn1::Asn1Time)> {
        self.validity_secs(u64::from(days) * 86_400)
    }

    /// Validity window: now minus skew, `secs` ahead, clipped to the CA's own expiry.
    fn validity_secs(
        &self,
        secs: u64,
    ) -> Result<(openssl::asn1::Asn1Time, openssl::asn1::Asn1Time)> {
        let now = now_unix()?;
        let ca_end = asn1_to_unix(self.certificate().not_after())?;
        let ahead = i64::try_from(secs)
            .map_err(|_| PkiError::InvalidInput("validity out of range".into()))?;
        let end = now.saturating_add(ahead).min(ca_end);
        if end <= now {
            return Err(PkiError::InvalidInput("the CA has expired".into()));
        }
        Ok((
            openssl::asn1::Asn1Time::from_unix(now - BACKDATE_SECS)?,
            openssl::asn1::Asn1Time::from_unix(end)?,
        ))
    }

    fn issue_helper(
        &self,
        common_name: &str,
        validity_days: u32,
        kind: HelperKind,
    ) -> Result<IssuedCert> {
        if common_name.is_empty() {
            return Err(PkiError::InvalidInput("common name is empty".into()));
        }
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let mut nb = X509NameBuilder::new()?;
        for entry in self
            .certificate()
            .subject_name()
            .entries_by_nid(Nid::ORGANIZATIONNAME)
        {
            nb.append_entry_by_nid(Nid::ORGANIZATIONNAME, &entry.data().to_string()?)?;
        }
        nb.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = nb.build();
        let mut b = self.leaf_builder(&name, &key, self.validity(validity_days)?)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        match kind {
            HelperKind::ScepRa => {
                b.append_extension(
                    KeyUsage::new()
                        .critical()
                        .digital_signature()
                        .key_encipherment()
                        .build()?,
                )?;
            }
            HelperKind::CmsSigner => {
                b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
                b.append_extension(ExtendedKeyUsage::new().email_protection().build()?)?;
            }
        }
        let cert = self.sign_leaf(b)?;
        crate::ca::issued(&cert, &key)
    }

    /// Issue a SCEP registration-authority certificate: RSA-2048, keyUsage digitalSignature
    /// and keyEncipherment (critical), no EKU. It signs SCEP CertRep messages and receives
    /// the requests' envelopes; serve it with the CA as `application/x-x509-ca-ra-cert`.
    pub fn issue_scep_ra(&self, common_name: &str, validity_days: u32) -> Result<IssuedCert> {
        self.issue_helper(common_name, validity_days, HelperKind::ScepRa)
    }

    /// Issue a certificate for signing enrollment profiles with [`crate::sign_cms`]:
    /// RSA-2048, keyUsage digitalSignature (critical), EKU emailProtection (so that
    /// `openssl cms -verify` accepts it under its default S/MIME purpose).
    pub fn issue_cms_signer(&self, common_name: &str, validity_days: u32) -> Result<IssuedCert> {
        self.issue_helper(common_name, validity_days, HelperKind::CmsSigner)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CSR for `cn` with an optional challengePassword.
    pub(crate) fn make_csr(cn: &str, challenge: Option<&str>) -> (Vec<u8>, PKey<Private>) {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut nb = X509NameBuilder::new().unwrap();
        nb.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        (build_csr(&key, &nb.build(), challenge).unwrap(), key)
    }

    #[test]
    fn csr_challenge_password() {
        let (der, _) = make_csr("dev1", Some("s3cret-Challenge"));
        let csr = Csr::from_der(&der).unwrap();
        assert_eq!(csr.challenge_password(), Some("s3cret-Challenge"));
        assert_eq!(csr.subject(), "CN=dev1");
        assert!(!format!("{csr:?}").contains("s3cret"));
        let (der, _) = make_csr("dev2", None);
        assert_eq!(Csr::from_der(&der).unwrap().challenge_password(), None);
        let (der, _) = make_csr("dev3", Some("pässwörd_with*specials"));
        assert_eq!(
            Csr::from_der(&der).unwrap().challenge_password(),
            Some("pässwörd_with*specials")
        );
    }

    #[test]
    fn csr_tampered_signature_fails() {
        let (mut der, _) = make_csr("dev1", Some("x"));
        let n = der.len();
        der[n - 5] ^= 0x55;
        assert!(Csr::from_der(&der).is_err());
        assert!(Csr::from_der(b"nonsense").is_err());
    }

    #[test]
    fn identity_cert_profile() {
        let ca = Ca::generate("Identity CA", "Lanyard").unwrap();
        let (der, key) = make_csr("device-1", Some("pw"));
        let cert = ca.issue_identity(&der, 365, None).unwrap();
        assert!(crate::ca::tests::verify_with_store(ca.certificate(), &cert));
        assert!(cert.public_key().unwrap().public_eq(&key));
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(
            text.contains("Digital Signature, Key Encipherment"),
            "{text}"
        );
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(!text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        let info = crate::CertInfo::from_x509(&cert).unwrap();
        assert_eq!(info.subject, "CN=device-1");
        assert_eq!((info.not_after - info.not_before) / 86_400, 365);

        let mut nb = X509NameBuilder::new().unwrap();
        nb.append_entry_by_nid(Nid::COMMONNAME, "enrollment-abc")
            .unwrap();
        let name = nb.build();
        let cert = ca.issue_identity(&der, 30, Some(&name)).unwrap();
        assert_eq!(
            crate::CertInfo::from_x509(&cert).unwrap().subject,
            "CN=enrollment-abc"
        );
        assert!(ca.issue_identity(&der, 0, None).is_err());
        assert!(ca.issue_identity(&der, 100_000, None).is_err());
        // Lifetimes shorter than a day (so a test can renew identities in minutes).
        let cert = ca
            .issue_identity_valid_for(&der, Duration::from_secs(90), None)
            .unwrap();
        let info = crate::CertInfo::from_x509(&cert).unwrap();
        assert_eq!(
            info.not_after - info.not_before,
            90 + crate::ca::BACKDATE_SECS
        );
        assert!(ca
            .issue_identity_valid_for(&der, Duration::ZERO, None)
            .is_err());
        assert_eq!(
            ca.issuer_certificate().to_der().unwrap(),
            ca.cert_der().unwrap()
        );
    }

    #[test]
    fn helper_certs() {
        let ca = Ca::generate("Helper CA", "Lanyard").unwrap();
        let ra = ca.issue_scep_ra("Lanyard SCEP RA", 365).unwrap();
        let cert = X509::from_der(&ra.cert_der).unwrap();
        assert!(crate::ca::tests::verify_with_store(ca.certificate(), &cert));
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(
            text.contains("Digital Signature, Key Encipherment"),
            "{text}"
        );
        let info = crate::CertInfo::from_x509(&cert).unwrap();
        assert_eq!(info.subject, "O=Lanyard, CN=Lanyard SCEP RA");
        let s = ca.issue_cms_signer("Lanyard Profile Signer", 365).unwrap();
        let cert = X509::from_der(&s.cert_der).unwrap();
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(text.contains("E-mail Protection"), "{text}");
    }
}
