//! Certificate fingerprints, a plain summary of a certificate, and the names and extensions
//! Lanyard reads of certificates it only shows or classifies. All of it is read without
//! OpenSSL ([`CertView`], on RustCrypto's `x509-cert`), so a start-up that shows the push
//! certificate or checks the TLS certificate's expiry does not load OpenSSL.

use der::asn1::ObjectIdentifier;
use der::{Decode as _, Tag, Tagged as _};
use openssl::x509::{X509NameRef, X509};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::error::{PkiError, Result};
use crate::keyfile::NameAttribute;

/// SHA-256 of the given bytes (normally a certificate's DER) as lower-case hex, no separators.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// OpenSSL's short names of the name attributes a certificate commonly carries, so that
/// names read here print as OpenSSL prints them (`objects.txt`). An attribute not listed
/// prints as its dotted OID.
const SHORT_NAMES: [(ObjectIdentifier, &str); 21] = [
    (ObjectIdentifier::new_unwrap("2.5.4.3"), "CN"),
    (ObjectIdentifier::new_unwrap("2.5.4.4"), "SN"),
    (ObjectIdentifier::new_unwrap("2.5.4.5"), "serialNumber"),
    (ObjectIdentifier::new_unwrap("2.5.4.6"), "C"),
    (ObjectIdentifier::new_unwrap("2.5.4.7"), "L"),
    (ObjectIdentifier::new_unwrap("2.5.4.8"), "ST"),
    (ObjectIdentifier::new_unwrap("2.5.4.9"), "street"),
    (ObjectIdentifier::new_unwrap("2.5.4.10"), "O"),
    (ObjectIdentifier::new_unwrap("2.5.4.11"), "OU"),
    (ObjectIdentifier::new_unwrap("2.5.4.12"), "title"),
    (ObjectIdentifier::new_unwrap("2.5.4.13"), "description"),
    (ObjectIdentifier::new_unwrap("2.5.4.15"), "businessCategory"),
    (ObjectIdentifier::new_unwrap("2.5.4.17"), "postalCode"),
    (ObjectIdentifier::new_unwrap("2.5.4.42"), "GN"),
    (ObjectIdentifier::new_unwrap("2.5.4.43"), "initials"),
    (
        ObjectIdentifier::new_unwrap("2.5.4.44"),
        "generationQualifier",
    ),
    (ObjectIdentifier::new_unwrap("2.5.4.46"), "dnQualifier"),
    (ObjectIdentifier::new_unwrap("2.5.4.65"), "pseudonym"),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1"),
        "UID",
    ),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25"),
        "DC",
    ),
    (
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1"),
        "emailAddress",
    ),
];

fn short_name(oid: &ObjectIdentifier) -> String {
    SHORT_NAMES
        .iter()
        .find(|(o, _)| o == oid)
        .map(|(_, n)| (*n).to_string())
        .unwrap_or_else(|| oid.to_string())
}

/// The text of an attribute value, converted as OpenSSL's `ASN1_STRING_to_UTF8` converts it:
/// UTF8String as it is, the one-byte string types as Latin-1, BMPString as UTF-16; `None` for
/// a value that is no string (or not valid in its type).
fn value_text(tag: Tag, bytes: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String => std::str::from_utf8(bytes).ok().map(str::to_owned),
        Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::NumericString
        | Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString if bytes.len() % 2 == 0 => {
            let units = bytes
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]));
            char::decode_utf16(units)
                .collect::<std::result::Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// A name's attributes in certificate order (each RDN's, in DER order).
fn attributes(name: &Name) -> impl Iterator<Item = &AttributeTypeAndValue> {
    name.0.iter().flat_map(|rdn| rdn.0.iter())
}

/// A distinguished name as `SHORT=value` pairs in certificate order, joined by `", "`,
/// e.g. `O=Lanyard, CN=Lanyard CA`. A value that is not text shows as the hex of its bytes.
fn name_text(name: &Name) -> String {
    attributes(name)
        .map(|atv| {
            let text = value_text(atv.value.tag(), atv.value.value())
                .unwrap_or_else(|| hex::encode(atv.value.value()));
            format!("{}={text}", short_name(&atv.oid))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An OpenSSL name as text, the same as [`CertView`] shows names (see [`CertInfo::subject`]).
/// A name that cannot be encoded and read back shows as an empty string.
pub fn name_to_string(name: &X509NameRef) -> String {
    name.to_der()
        .ok()
        .and_then(|der| Name::from_der(&der).ok())
        .map(|n| name_text(&n))
        .unwrap_or_default()
}

/// A serial number as OpenSSL's `BN_bn2hex` prints it, lower-cased: two digits a byte, no
/// leading zero bytes, `0` for zero, `-` before the magnitude of a negative one.
fn serial_text(twos_complement: &[u8]) -> String {
    let negative = twos_complement.first().is_some_and(|b| b & 0x80 != 0);
    let magnitude: Vec<u8> = if negative {
        // Two's complement: invert and add one.
        let mut m: Vec<u8> = twos_complement.iter().map(|b| !b).collect();
        for b in m.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
        m
    } else {
        twos_complement.to_vec()
    };
    let digits = hex::encode(
        magnitude
            .iter()
            .skip_while(|b| **b == 0)
            .copied()
            .collect::<Vec<_>>(),
    );
    match (negative, digits.is_empty()) {
        (_, true) => "0".into(),
        (true, false) => format!("-{digits}"),
        (false, false) => digits,
    }
}

/// Unix seconds of a certificate time.
pub(crate) fn unix_of(t: x509_cert::time::Time) -> Result<i64> {
    i64::try_from(t.to_unix_duration().as_secs())
        .map_err(|_| PkiError::InvalidInput("certificate time out of range".into()))
}

/// One certificate read without OpenSSL: its summary, the values of its subject's
/// attributes, whether it carries an extension. For certificates Lanyard shows or classifies
/// (the push and vendor certificates, the TLS certificate, issued identities); checking a
/// signature is not its business.
pub struct CertView {
    cert: Certificate,
    der: Vec<u8>,
}

impl CertView {
    /// Read a DER certificate (strict DER).
    pub fn from_der(der: &[u8]) -> Result<CertView> {
        let cert = Certificate::from_der(der).map_err(crate::asn1::der_err)?;
        Ok(CertView {
            cert,
            der: der.to_vec(),
        })
    }

    /// Read the first certificate of a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<CertView> {
        let der = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or_else(|| PkiError::InvalidInput("no certificate in the PEM text".into()))?
            .map_err(|e| PkiError::InvalidInput(format!("unreadable PEM certificate: {e}")))?;
        Self::from_der(&der)
    }

    /// Read an OpenSSL certificate.
    pub fn from_x509(cert: &X509) -> Result<CertView> {
        Self::from_der(&cert.to_der()?)
    }

    /// The certificate as PEM text (see [`certificate_der_to_pem`]).
    pub fn pem(&self) -> String {
        certificate_der_to_pem(&self.der)
    }

    /// The DER of the certificate's `SubjectPublicKeyInfo`: what a private key's public half
    /// is compared with.
    pub fn public_key_info_der(&self) -> Result<Vec<u8>> {
        use der::Encode as _;
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(crate::asn1::der_err)
    }

    /// The summary of the certificate.
    pub fn info(&self) -> Result<CertInfo> {
        let tbs = &self.cert.tbs_certificate;
        Ok(CertInfo {
            subject: name_text(&tbs.subject),
            issuer: name_text(&tbs.issuer),
            serial_hex: self.serial_hex(),
            not_before: unix_of(tbs.validity.not_before)?,
            not_after: self.not_after()?,
            sha256: sha256_fingerprint(&self.der),
        })
    }

    /// The serial number, lower-case hex (see [`CertInfo::serial_hex`]).
    pub fn serial_hex(&self) -> String {
        serial_text(self.cert.tbs_certificate.serial_number.as_bytes())
    }

    /// The end of validity, unix seconds.
    pub fn not_after(&self) -> Result<i64> {
        unix_of(self.cert.tbs_certificate.validity.not_after)
    }

    /// The values of one attribute of the subject, as text, in order (values that are not
    /// text are skipped).
    pub fn subject_values(&self, attribute: NameAttribute) -> Vec<String> {
        let oid = attribute.oid();
        attributes(&self.cert.tbs_certificate.subject)
            .filter(|atv| atv.oid == oid)
            .filter_map(|atv| value_text(atv.value.tag(), atv.value.value()))
            .collect()
    }

    /// Whether the certificate carries an extension with this dotted OID (e.g. one of
    /// Apple's private `1.2.840.113635.…` markers).
    pub fn has_extension(&self, dotted_oid: &str) -> Result<bool> {
        let oid = ObjectIdentifier::new(dotted_oid)
            .map_err(|e| PkiError::InvalidInput(format!("bad OID {dotted_oid:?}: {e}")))?;
        Ok(self
            .cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .any(|e| e.extn_id == oid))
    }
}

/// A summary of one certificate, for storage and display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN as `SHORT=value` pairs in certificate order, joined by `", "`, e.g.
    /// `O=Lanyard, CN=Lanyard CA` (OpenSSL's short names; a value that is not text shows
    /// as hex).
    pub subject: String,
    /// Issuer DN, as [`CertInfo::subject`].
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
        CertView::from_x509(cert)?.info()
    }

    /// Summarise a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo> {
        CertView::from_der(der)?.info()
    }

    /// Summarise a PEM certificate (the first one in the input).
    pub fn from_pem(pem: &[u8]) -> Result<CertInfo> {
        CertView::from_pem(pem)?.info()
    }

    /// Summarise a certificate given as PEM or DER (detected by the PEM header).
    pub fn parse(bytes: &[u8]) -> Result<CertInfo> {
        let trimmed = bytes.trim_ascii_start();
        if trimmed.starts_with(b"-----BEGIN") {
            Self::from_pem(trimmed)
        } else {
            Self::from_der(bytes)
        }
    }
}

/// A certificate's DER as PEM text (`CERTIFICATE`, 64 columns, as OpenSSL writes it), without
/// OpenSSL and without parsing it.
pub fn certificate_der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The end of a certificate's validity (Unix seconds), from its DER, without OpenSSL: what
/// `lanyard serve` checks of its TLS certificate at start-up, before anything needs OpenSSL.
pub fn not_after_of_der(der: &[u8]) -> Result<i64> {
    CertView::from_der(der)?.not_after()
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
    use openssl::nid::Nid;

    #[test]
    fn fingerprint_is_lower_hex_sha256() {
        assert_eq!(
            sha256_fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// How OpenSSL itself prints a name entry by entry (short name, `ASN1_STRING_to_UTF8`):
    /// the reference the OpenSSL-free reading must match. One difference is deliberate: an
    /// attribute OpenSSL has no name for shows as its dotted OID, where OpenSSL says `UNDEF`.
    fn openssl_name_text(name: &X509NameRef) -> String {
        name.entries()
            .map(|e| {
                let key = match e.object().nid() {
                    Nid::UNDEF => e.object().to_string(),
                    nid => nid.short_name().map(str::to_owned).unwrap_or_default(),
                };
                let value = e
                    .data()
                    .to_string()
                    .unwrap_or_else(|_| hex::encode(e.data().as_slice()));
                format!("{key}={value}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn names_read_without_openssl_print_as_openssl_prints_them() {
        use openssl::asn1::Asn1Type;
        let mut b = openssl::x509::X509Name::builder().unwrap();
        b.append_entry_by_nid(Nid::USERID, "com.apple.mgmt.External.5b4b0c4e")
            .unwrap();
        b.append_entry_by_nid(Nid::COMMONNAME, "APSP:5b4b0c4e é")
            .unwrap();
        b.append_entry_by_text_with_type("C", "US", Asn1Type::PRINTABLESTRING)
            .unwrap();
        // A BMPString's content is UTF-16BE, here `Zurichа` (the last a Cyrillic а, U+0430):
        // given as raw bytes, which OpenSSL stores as they are.
        b.append_entry_by_text_with_type("O", "\0Z\0u\0r\0i\0c\0h\u{4}0", Asn1Type::BMPSTRING)
            .unwrap();
        // A T61String is read as Latin-1: these UTF-8 bytes of `é` read as two characters.
        b.append_entry_by_text_with_type("OU", "Caf\u{e9}", Asn1Type::T61STRING)
            .unwrap();
        b.append_entry_by_nid(Nid::PKCS9_EMAILADDRESS, "it@example.test")
            .unwrap();
        b.append_entry_by_nid(Nid::DOMAINCOMPONENT, "example")
            .unwrap();
        b.append_entry_by_nid(Nid::SERIALNUMBER, "C02XYZ").unwrap();
        b.append_entry_by_text("1.3.6.1.4.1.99999.1", "private")
            .unwrap();
        let name = b.build();
        let ours = name_to_string(&name);
        assert_eq!(ours, openssl_name_text(&name));
        assert!(ours.starts_with("UID=com.apple.mgmt.External.5b4b0c4e, CN=APSP:5b4b0c4e é"));
        assert!(
            ours.contains("O=Zurich\u{430}, OU=Caf\u{c3}\u{a9}"),
            "{ours}"
        );
        assert!(ours.ends_with("1.3.6.1.4.1.99999.1=private"), "{ours}");

        // The same name on a certificate, with the subject's values by attribute.
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut c = X509::builder().unwrap();
        c.set_subject_name(&name).unwrap();
        c.set_issuer_name(&name).unwrap();
        c.set_pubkey(&key).unwrap();
        let serial = openssl::bn::BigNum::from_hex_str("00A1B2").unwrap();
        c.set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        c.set_not_before(&openssl::asn1::Asn1Time::from_unix(1_700_000_000).unwrap())
            .unwrap();
        c.set_not_after(&openssl::asn1::Asn1Time::from_unix(1_800_000_000).unwrap())
            .unwrap();
        c.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let cert = c.build();
        let view = CertView::from_x509(&cert).unwrap();
        let info = view.info().unwrap();
        assert_eq!(info.subject, openssl_name_text(cert.subject_name()));
        assert_eq!(info.serial_hex, "a1b2");
        assert_eq!(info.not_before, 1_700_000_000);
        assert_eq!(info.not_after, 1_800_000_000);
        assert_eq!(
            view.subject_values(NameAttribute::UserId),
            ["com.apple.mgmt.External.5b4b0c4e"]
        );
        assert_eq!(
            crate::subject_values(&cert, NameAttribute::Organization),
            ["Zurich\u{430}"]
        );
        assert!(view.subject_values(NameAttribute::CommonName)[0].ends_with('é'));
        // Extensions by OID: none here but the ones OpenSSL adds (none).
        assert!(!view.has_extension("1.2.840.113635.100.6.3.2").unwrap());
        assert!(view.has_extension("not an oid").is_err());
        // PEM and the public key as OpenSSL writes them.
        assert_eq!(view.pem().as_bytes(), cert.to_pem().unwrap());
        assert_eq!(
            view.public_key_info_der().unwrap(),
            key.public_key_to_der().unwrap()
        );
    }

    #[test]
    fn serials_print_as_openssl_prints_them() {
        for (twos, hexed) in [
            (&[0x00][..], "0"),
            (&[0x01], "01"),
            (&[0x00, 0x80], "80"),
            (&[0x0a, 0x00], "0a00"),
            (&[0xff], "-01"),
            (&[0x80], "-80"),
            (&[0xff, 0x00], "-0100"),
        ] {
            assert_eq!(serial_text(twos), hexed, "{twos:02x?}");
            let bn = openssl::bn::BigNum::from_slice(twos).unwrap();
            if twos[0] & 0x80 == 0 {
                assert_eq!(bn.to_hex_str().unwrap().to_ascii_lowercase(), hexed);
            }
        }
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
