//! Stand-ins for Apple's side of getting an MDM push certificate, for tests: a throwaway
//! "Apple root" → "WWDR" → MDM vendor (CSR signing) certificate chain, and a fake Push
//! Certificates Portal that issues a push certificate for a CSR.

use anyhow::anyhow;
use openssl::asn1::{Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{
    X509Builder, X509Extension, X509Name, X509NameBuilder, X509NameRef, X509Req, X509,
};

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Starts a certificate: X.509 v3, a random serial, `subject` issued by `issuer`, for `key`,
/// valid from `from` to `until` seconds from now. The caller adds extensions and signs.
pub(crate) fn start_cert<T: HasPublic>(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKeyRef<T>,
    from: i64,
    until: i64,
) -> anyhow::Result<X509Builder> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(key)?;
    let now = now_unix();
    let (not_before, not_after) = (
        Asn1Time::from_unix(now + from)?,
        Asn1Time::from_unix(now + until)?,
    );
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    Ok(b)
}

/// A push certificate's subject as Apple writes it: `UID=<topic>` (when there is one),
/// `CN=APSP:<uuid>`, `C=US`.
pub(crate) fn apsp_subject(topic: Option<&str>) -> anyhow::Result<X509Name> {
    let mut name = X509NameBuilder::new()?;
    if let Some(topic) = topic {
        name.append_entry_by_nid(Nid::USERID, topic)?;
    }
    name.append_entry_by_nid(Nid::COMMONNAME, &format!("APSP:{}", uuid::Uuid::new_v4()))?;
    name.append_entry_by_nid(Nid::COUNTRYNAME, "US")?;
    Ok(name.build())
}

fn pem(cert: &X509) -> anyhow::Result<String> {
    String::from_utf8(cert.to_pem()?).map_err(|_| anyhow!("PEM is not UTF-8"))
}

/// One certificate: `cn` (and optionally a UID), signed by `issuer` (self-signed when
/// `None`), valid from `from` to `until` seconds from now.
struct Make<'a> {
    uid: Option<&'a str>,
    cn: &'a str,
    ca: bool,
    from: i64,
    until: i64,
    /// Extra extensions by dotted OID (value: DER NULL).
    oids: &'a [&'a str],
}

fn make(
    m: Make<'_>,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> anyhow::Result<X509> {
    let mut name = X509NameBuilder::new()?;
    if let Some(uid) = m.uid {
        name.append_entry_by_nid(Nid::USERID, uid)?;
    }
    name.append_entry_by_nid(Nid::COMMONNAME, m.cn)?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Lanyard test")?;
    name.append_entry_by_nid(Nid::COUNTRYNAME, "US")?;
    let name = name.build();
    let issuer_name = issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name);
    let mut b = start_cert(&name, issuer_name, key, m.from, m.until)?;
    if m.ca {
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
    } else {
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    }
    for oid in m.oids {
        let null = Asn1OctetString::new_from_bytes(&[0x05, 0x00])?;
        let obj = Asn1Object::from_str(oid)?;
        b.append_extension(X509Extension::new_from_der(&obj, false, &null)?)?;
    }
    let signer = issuer.map(|(_, k)| k).unwrap_or(key);
    b.sign(signer, MessageDigest::sha256())?;
    Ok(b.build())
}

fn rsa() -> anyhow::Result<PKey<Private>> {
    Ok(PKey::from_rsa(Rsa::generate(2048)?)?)
}

/// What kind of vendor certificate [`fake_vendor_chain`] makes.
#[derive(Debug, Clone)]
pub struct FakeVendorOptions {
    /// The vendor certificate's common name; Apple's start with `MDM Vendor:`.
    pub common_name: String,
    /// Already expired.
    pub expired: bool,
}

impl Default for FakeVendorOptions {
    fn default() -> Self {
        FakeVendorOptions {
            common_name: "MDM Vendor: Lanyard Test Org".into(),
            expired: false,
        }
    }
}

/// A throwaway Apple chain with an MDM vendor certificate, in the files an operator holds.
pub struct FakeVendorChain {
    /// The fake "Apple Root CA", PEM.
    pub root_pem: String,
    /// The fake "WWDR" intermediate, PEM.
    pub wwdr_pem: String,
    /// The vendor certificate, PEM.
    pub vendor_pem: String,
    /// The vendor certificate and key as PKCS#12.
    pub vendor_p12_der: Vec<u8>,
    pub vendor_p12_password: String,
}

/// Makes a fresh fake Apple root → WWDR → vendor chain.
pub fn fake_vendor_chain(options: FakeVendorOptions) -> anyhow::Result<FakeVendorChain> {
    let (root_key, wwdr_key, vendor_key) = (rsa()?, rsa()?, rsa()?);
    let year = 365 * 86_400;
    let root = make(
        Make {
            uid: None,
            cn: "Fake Apple Root CA",
            ca: true,
            from: -3600,
            until: 10 * year,
            oids: &[],
        },
        &root_key,
        None,
    )?;
    let wwdr = make(
        Make {
            uid: None,
            cn: "Fake Apple Worldwide Developer Relations Certification Authority",
            ca: true,
            from: -3600,
            until: 5 * year,
            oids: &[],
        },
        &wwdr_key,
        Some((&root, &root_key)),
    )?;
    let (from, until) = if options.expired {
        (-2 * year, -86_400)
    } else {
        (-3600, year)
    };
    let vendor = make(
        Make {
            uid: Some("TESTTEAMID"),
            cn: &options.common_name,
            ca: false,
            from,
            until,
            oids: &[],
        },
        &vendor_key,
        Some((&wwdr, &wwdr_key)),
    )?;
    let password = format!("vendor-{}", uuid::Uuid::new_v4().simple());
    let p12 = Pkcs12::builder()
        .name("MDM vendor")
        .pkey(&vendor_key)
        .cert(&vendor)
        .build2(&password)?;
    Ok(FakeVendorChain {
        root_pem: pem(&root)?,
        wwdr_pem: pem(&wwdr)?,
        vendor_pem: pem(&vendor)?,
        vendor_p12_der: p12.to_der()?,
        vendor_p12_password: password,
    })
}

/// The APNs service marker [`fake_apple_push_certificate`] puts on the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeApnsMarker {
    None,
    Production,
    Development,
}

/// The fake Push Certificates Portal: issues an MDM push certificate for `topic` to the key
/// of `csr_pem` (PEM or DER), subject `UID=<topic>, CN=APSP:<uuid>` like Apple's, valid a
/// year. Returns the certificate, PEM.
pub fn fake_apple_push_certificate(
    csr: &[u8],
    topic: &str,
    marker: FakeApnsMarker,
) -> anyhow::Result<String> {
    let req = if csr.trim_ascii_start().starts_with(b"-----") {
        X509Req::from_pem(csr)?
    } else {
        X509Req::from_der(csr)?
    };
    let subject_key = req.public_key()?;
    let issuer_key = rsa()?;
    let issuer = make(
        Make {
            uid: None,
            cn: "Fake Apple Application Integration 2 Certification Authority",
            ca: true,
            from: -3600,
            until: 5 * 365 * 86_400,
            oids: &[],
        },
        &issuer_key,
        None,
    )?;
    let oids: &[&str] = match marker {
        FakeApnsMarker::None => &[],
        FakeApnsMarker::Production => &["1.2.840.113635.100.6.3.2"],
        FakeApnsMarker::Development => &["1.2.840.113635.100.6.3.1"],
    };
    let name = apsp_subject(Some(topic))?;
    let mut b = start_cert(
        &name,
        issuer.subject_name(),
        &subject_key,
        -300,
        365 * 86_400,
    )?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
    for oid in oids {
        let null = Asn1OctetString::new_from_bytes(&[0x05, 0x00])?;
        let obj = Asn1Object::from_str(oid)?;
        b.append_extension(X509Extension::new_from_der(&obj, false, &null)?)?;
    }
    b.sign(&issuer_key, MessageDigest::sha256())?;
    pem(&b.build())
}
