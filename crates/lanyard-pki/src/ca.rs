//! Lanyard's own certificate authority: the root, TLS server certificates and
//! (see [`crate::issue`]) device identity certificates.

use std::fmt;
use std::net::IpAddr;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Extension, X509Name, X509NameBuilder, X509NameRef, X509};

use crate::error::{PkiError, Result};
use crate::time::{asn1_to_unix, from_now};

/// Validity of the root: ten years.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Validity of a TLS server leaf: 397 days, the CA/Browser Forum ceiling Apple enforces.
pub const TLS_SERVER_VALIDITY_DAYS: u32 = 397;
/// Certificates start this many seconds in the past to tolerate clock skew.
pub(crate) const BACKDATE_SECS: i64 = 300;

/// Lanyard's certificate authority: a self-signed RSA root and its private key.
///
/// The root carries keyUsage `keyCertSign, cRLSign, digitalSignature` so that it can
/// also sign SCEP CertRep messages (certmonger/OpenSSL reject a CertRep signer without
/// digitalSignature).
pub struct Ca {
    cert: X509,
    key: PKey<Private>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = crate::certinfo::name_to_string(self.cert.subject_name());
        let fp = self
            .cert
            .to_der()
            .map(|d| crate::certinfo::sha256_fingerprint(&d))
            .unwrap_or_default();
        f.debug_struct("Ca")
            .field("subject", &subject)
            .field("sha256", &fp)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A freshly issued leaf certificate with its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Secret: store it sealed.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A random, positive, non-zero 128-bit serial number.
pub(crate) fn random_serial() -> Result<Asn1Integer> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes)?;
    // Keep it positive in DER without a padding byte and never zero.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    let bn = BigNum::from_slice(&bytes)?;
    Ok(bn.to_asn1_integer()?)
}

fn simple_name(common_name: &str, organization: &str) -> Result<X509Name> {
    let mut b = X509NameBuilder::new()?;
    if !organization.is_empty() {
        b.append_entry_by_nid(Nid::ORGANIZATIONNAME, organization)?;
    }
    b.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    Ok(b.build())
}

/// Starts a certificate: X.509 v3, a random serial, `subject` issued by `issuer`, for `key`,
/// valid from `validity.0` to `validity.1`.
fn cert_builder<T: HasPublic>(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKeyRef<T>,
    validity: (Asn1Time, Asn1Time),
) -> Result<X509Builder> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = random_serial()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(key)?;
    b.set_not_before(&validity.0)?;
    b.set_not_after(&validity.1)?;
    Ok(b)
}

/// A self-signed certificate for `key`: version 3, random 128-bit serial, valid from a little
/// before now for `validity_days`, with the given basic constraints and key usage and a
/// subject key identifier, signed with SHA-256.
pub(crate) fn self_signed(
    key: &PKeyRef<Private>,
    name: &X509NameRef,
    validity_days: u32,
    basic_constraints: X509Extension,
    key_usage: X509Extension,
) -> Result<X509> {
    let validity = (
        from_now(-BACKDATE_SECS)?,
        from_now(i64::from(validity_days) * 86_400)?,
    );
    let mut b = cert_builder(name, name, key, validity)?;
    b.append_extension(basic_constraints)?;
    b.append_extension(key_usage)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

impl Ca {
    /// Create a new root: RSA-2048 key, self-signed, ten years, random 128-bit serial,
    /// basicConstraints `CA:TRUE` (critical), keyUsage `keyCertSign, cRLSign,
    /// digitalSignature` (critical), subjectKeyIdentifier.
    pub fn generate(common_name: &str, organization: &str) -> Result<Ca> {
        if common_name.is_empty() {
            return Err(PkiError::InvalidInput("CA common name is empty".into()));
        }
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let name = simple_name(common_name, organization)?;

        let cert = self_signed(
            &key,
            &name,
            CA_VALIDITY_DAYS,
            BasicConstraints::new().critical().ca().build()?,
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .digital_signature()
                .build()?,
        )?;
        Ok(Ca { cert, key })
    }

    /// Load a CA from its PEM certificate and PEM private key (PKCS#8 or traditional).
    /// Fails when the key does not belong to the certificate.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Ca> {
        let cert = X509::from_pem(cert_pem)?;
        let key = PKey::private_key_from_pem(key_pem)?;
        if !cert.public_key()?.public_eq(&key) {
            return Err(PkiError::InvalidInput(
                "CA private key does not match the CA certificate".into(),
            ));
        }
        Ok(Ca { cert, key })
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> Result<String> {
        pem_string(self.cert.to_pem()?)
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> Result<Vec<u8>> {
        Ok(self.cert.to_der()?)
    }

    /// The CA private key as PKCS#8 PEM. Secret: seal it before storing.
    pub fn key_pem_pkcs8(&self) -> Result<String> {
        pem_string(self.key.private_key_to_pem_pkcs8()?)
    }

    /// The root certificate.
    pub fn certificate(&self) -> &X509 {
        &self.cert
    }

    /// The CA private key (for CMS signing and SCEP decryption inside this crate's callers).
    pub fn private_key(&self) -> &PKey<Private> {
        &self.key
    }

    /// Issue a TLS server certificate: EC P-256 key, SAN dNSName/iPAddress, EKU serverAuth,
    /// keyUsage digitalSignature (critical), AKI/SKI, 397 days, random serial.
    /// The subject CN is the first DNS name (or the first IP when there is none).
    pub fn issue_tls_server(
        &self,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
    ) -> Result<IssuedCert> {
        if dns_names.is_empty() && ip_addrs.is_empty() {
            return Err(PkiError::InvalidInput(
                "a TLS server certificate needs at least one DNS name or IP address".into(),
            ));
        }
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let cn = match (dns_names.first(), ip_addrs.first()) {
            (Some(d), _) => d.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => String::new(),
        };
        let mut nb = X509NameBuilder::new()?;
        nb.append_entry_by_nid(Nid::COMMONNAME, &cn)?;
        let subject = nb.build();

        let validity = (
            from_now(-BACKDATE_SECS)?,
            from_now(i64::from(TLS_SERVER_VALIDITY_DAYS) * 86_400)?,
        );
        let mut b = self.leaf_builder(&subject, &key, validity)?;
        b.append_extension(BasicConstraints::new().build()?)?;
        b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
        b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let mut san = SubjectAlternativeName::new();
        for d in dns_names {
            if d.is_empty() || d.contains(',') {
                return Err(PkiError::InvalidInput(format!("bad DNS name {d:?}")));
            }
            san.dns(d);
        }
        for ip in ip_addrs {
            san.ip(&ip.to_string());
        }
        let san = san.build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(san)?;
        let cert = self.sign_leaf(b)?;
        issued(&cert, &key)
    }

    /// Starts a certificate this CA issues: X.509 v3, a random serial, `subject`, the CA as
    /// issuer, `key`, valid from `validity.0` to `validity.1`. The caller adds the extensions
    /// that say what it is for.
    pub(crate) fn leaf_builder<T: HasPublic>(
        &self,
        subject: &X509NameRef,
        key: &PKeyRef<T>,
        validity: (Asn1Time, Asn1Time),
    ) -> Result<X509Builder> {
        cert_builder(subject, self.cert.subject_name(), key, validity)
    }

    /// Finishes a certificate started with [`Ca::leaf_builder`]: subject and authority key
    /// identifiers, then the CA's SHA-256 signature.
    pub(crate) fn sign_leaf(&self, mut b: X509Builder) -> Result<X509> {
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(ski)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(aki)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        Ok(b.build())
    }
}

pub(crate) fn pem_string(pem: Vec<u8>) -> Result<String> {
    String::from_utf8(pem).map_err(|_| PkiError::InvalidInput("PEM is not UTF-8".into()))
}

pub(crate) fn issued(cert: &X509, key: &PKey<Private>) -> Result<IssuedCert> {
    Ok(IssuedCert {
        cert_pem: pem_string(cert.to_pem()?)?,
        key_pem: pem_string(key.private_key_to_pem_pkcs8()?)?,
        cert_der: cert.to_der()?,
        serial_hex: crate::CertView::from_x509(cert)?.serial_hex(),
        not_after: asn1_to_unix(cert.not_after())?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509StoreContext;

    pub(crate) fn verify_with_store(ca: &X509, leaf: &X509) -> bool {
        let mut sb = X509StoreBuilder::new().unwrap();
        sb.add_cert(ca.clone()).unwrap();
        let store = sb.build();
        let chain = Stack::new().unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, leaf, &chain, |c| c.verify_cert()).unwrap()
    }

    #[test]
    fn generated_root_has_required_extensions() {
        let ca = Ca::generate("Lanyard Test CA", "Lanyard").unwrap();
        let text = String::from_utf8(ca.certificate().to_text().unwrap()).unwrap();
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(text.contains("Digital Signature"), "{text}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        assert!(
            text.contains("X509v3 Basic Constraints: critical"),
            "{text}"
        );
        assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
        // self-signed verifies against itself
        assert!(verify_with_store(ca.certificate(), ca.certificate()));
        let info = crate::CertInfo::from_der(&ca.cert_der().unwrap()).unwrap();
        let years = (info.not_after - info.not_before) / 86_400;
        assert!((3649..=3651).contains(&years), "{years}");
        assert_eq!(info.subject, "O=Lanyard, CN=Lanyard Test CA");
        // 128-bit serial
        assert!(info.serial_hex.len() >= 31, "{}", info.serial_hex);
    }

    #[test]
    fn pem_round_trip_and_mismatch() {
        let ca = Ca::generate("Lanyard Test CA", "Lanyard").unwrap();
        let again = Ca::from_pem(
            ca.cert_pem().unwrap().as_bytes(),
            ca.key_pem_pkcs8().unwrap().as_bytes(),
        )
        .unwrap();
        assert_eq!(again.cert_der().unwrap(), ca.cert_der().unwrap());
        let other = Ca::generate("Other", "").unwrap();
        let err = Ca::from_pem(
            ca.cert_pem().unwrap().as_bytes(),
            other.key_pem_pkcs8().unwrap().as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::InvalidInput(_)));
        let dbg = format!("{ca:?}");
        assert!(!dbg.contains("PRIVATE"));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn tls_server_cert_chains_and_has_san() {
        let ca = Ca::generate("Lanyard Test CA", "Lanyard").unwrap();
        let issued = ca
            .issue_tls_server(
                &["mdm.example.test".to_string(), "localhost".to_string()],
                &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            )
            .unwrap();
        let leaf = X509::from_der(&issued.cert_der).unwrap();
        assert!(verify_with_store(ca.certificate(), &leaf));
        let other = Ca::generate("Other", "").unwrap();
        assert!(!verify_with_store(other.certificate(), &leaf));

        let sans = leaf.subject_alt_names().unwrap();
        let dns: Vec<_> = sans.iter().filter_map(|n| n.dnsname()).collect();
        assert_eq!(dns, ["mdm.example.test", "localhost"]);
        let ips: Vec<_> = sans.iter().filter_map(|n| n.ipaddress()).collect();
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0], &[127, 0, 0, 1]);
        let text = String::from_utf8(leaf.to_text().unwrap()).unwrap();
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        assert!(text.contains("Digital Signature"), "{text}");

        let key = PKey::private_key_from_pem(issued.key_pem.as_bytes()).unwrap();
        assert!(leaf.public_key().unwrap().public_eq(&key));
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let now = crate::time::now_unix().unwrap();
        let days = (issued.not_after - now) / 86_400;
        assert!((396..=397).contains(&days), "{days}");
        // As OpenSSL prints the serial.
        let openssl_hex = leaf.serial_number().to_bn().unwrap().to_hex_str().unwrap();
        assert_eq!(issued.serial_hex, openssl_hex.to_ascii_lowercase());
        assert!(!format!("{issued:?}").contains("PRIVATE"));
    }

    #[test]
    fn tls_server_needs_a_name() {
        let ca = Ca::generate("Lanyard Test CA", "Lanyard").unwrap();
        assert!(ca.issue_tls_server(&[], &[]).is_err());
    }
}
