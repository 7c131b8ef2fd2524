#![allow(dead_code)] // some helpers serve the SCEP codec

//! Small ASN.1 helpers on RustCrypto's `der`/`cms`/`x509-cert` types, used where OpenSSL's
//! safe API has no equivalent (signed attributes, signer lookup, certs-only SignedData,
//! PKCS#10 attributes). No cryptography happens here.

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::revocation::RevocationInfoChoices;
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, SetOfVec};
use der::{Any, Decode, Encode, Tag, Tagged};
use openssl::x509::X509;
use x509_cert::Certificate;

use crate::error::{PkiError, Result};

/// OIDs used by this crate.
pub(crate) mod oid {
    use der::asn1::ObjectIdentifier as Oid;

    pub const ID_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
    pub const ID_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
    pub const ID_ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.3");
    pub const CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
    pub const MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
    pub const SIGNING_TIME: Oid = Oid::new_unwrap("1.2.840.113549.1.9.5");
    pub const CHALLENGE_PASSWORD: Oid = Oid::new_unwrap("1.2.840.113549.1.9.7");
    pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
    pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
    pub const DES_CBC: Oid = Oid::new_unwrap("1.3.14.3.2.7");
    pub const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");
    pub const AES128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
    pub const AES192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
    pub const AES256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
    // SCEP (RFC 8894, VeriSign arc 2.16.840.1.113733.1.9)
    pub const SCEP_MESSAGE_TYPE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.2");
    pub const SCEP_PKI_STATUS: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.3");
    pub const SCEP_FAIL_INFO: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.4");
    pub const SCEP_SENDER_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.5");
    pub const SCEP_RECIPIENT_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.6");
    pub const SCEP_TRANSACTION_ID: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.7");
}

pub(crate) fn der_err(e: der::Error) -> PkiError {
    PkiError::Der(e.to_string())
}

/// Parse a DER ContentInfo that must hold SignedData.
pub(crate) fn parse_signed_data(der_bytes: &[u8]) -> Result<SignedData> {
    let ci = ContentInfo::from_der(der_bytes).map_err(der_err)?;
    if ci.content_type != oid::ID_SIGNED_DATA {
        return Err(PkiError::InvalidInput(format!(
            "expected CMS SignedData, found content type {}",
            ci.content_type
        )));
    }
    ci.content.decode_as::<SignedData>().map_err(der_err)
}

/// The only SignerInfo of a SignedData (we never accept several signers).
pub(crate) fn single_signer(sd: &SignedData) -> Result<&SignerInfo> {
    let mut it = sd.signer_infos.0.iter();
    match (it.next(), it.next()) {
        (Some(si), None) => Ok(si),
        (None, _) => Err(PkiError::InvalidInput("SignedData has no signer".into())),
        (Some(_), Some(_)) => Err(PkiError::InvalidInput(
            "SignedData has more than one signer".into(),
        )),
    }
}

fn ski_of(cert: &Certificate) -> Option<Vec<u8>> {
    let skid = der::asn1::ObjectIdentifier::new_unwrap("2.5.29.14");
    let exts = cert.tbs_certificate.extensions.as_ref()?;
    let ext = exts.iter().find(|e| e.extn_id == skid)?;
    let inner = der::asn1::OctetString::from_der(ext.extn_value.as_bytes()).ok()?;
    Some(inner.as_bytes().to_vec())
}

/// The certificate named by `sid` among the SignedData's certificates, as OpenSSL X509.
pub(crate) fn find_signer_cert(sd: &SignedData, sid: &SignerIdentifier) -> Result<X509> {
    let certs = sd
        .certificates
        .as_ref()
        .ok_or_else(|| PkiError::Verify("SignedData carries no certificates".into()))?;
    for choice in certs.0.iter() {
        let CertificateChoices::Certificate(cert) = choice else {
            continue;
        };
        let matches = match sid {
            SignerIdentifier::IssuerAndSerialNumber(ias) => {
                ias.issuer == cert.tbs_certificate.issuer
                    && ias.serial_number == cert.tbs_certificate.serial_number
            }
            SignerIdentifier::SubjectKeyIdentifier(ski) => {
                ski_of(cert).as_deref() == Some(ski.0.as_bytes())
            }
        };
        if matches {
            let der_bytes = cert.to_der().map_err(der_err)?;
            return Ok(X509::from_der(&der_bytes)?);
        }
    }
    Err(PkiError::Verify(
        "signer certificate is not included in the SignedData".into(),
    ))
}

/// A degenerate ("certs-only") SignedData ContentInfo holding `certs`, DER.
pub(crate) fn certs_only(certs: &[&X509]) -> Result<Vec<u8>> {
    let mut set = SetOfVec::new();
    for c in certs {
        let cert = Certificate::from_der(&c.to_der()?).map_err(der_err)?;
        set.insert(CertificateChoices::Certificate(cert))
            .map_err(der_err)?;
    }
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: Some(RevocationInfoChoices(SetOfVec::new())),
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    content_info(oid::ID_SIGNED_DATA, &sd.to_der().map_err(der_err)?)
}

/// Wrap DER `content` as a ContentInfo of type `content_type`.
pub(crate) fn content_info(content_type: ObjectIdentifier, content: &[u8]) -> Result<Vec<u8>> {
    let ci = ContentInfo {
        content_type,
        content: Any::from_der(content).map_err(der_err)?,
    };
    ci.to_der().map_err(der_err)
}

/// The certificates of a certs-only (or any) SignedData, in encoded order, as OpenSSL X509.
pub(crate) fn signed_data_certs(sd: &SignedData) -> Result<Vec<X509>> {
    let mut out = Vec::new();
    if let Some(certs) = &sd.certificates {
        for choice in certs.0.iter() {
            if let CertificateChoices::Certificate(cert) = choice {
                out.push(X509::from_der(&cert.to_der().map_err(der_err)?)?);
            }
        }
    }
    Ok(out)
}

/// The value bytes of the eContent of a SignedData, which must be ONE OCTET STRING.
pub(crate) fn econtent_octets(sd: &SignedData) -> Result<Option<Vec<u8>>> {
    match &sd.encap_content_info.econtent {
        None => Ok(None),
        Some(any) if any.tag() == Tag::OctetString => Ok(Some(any.value().to_vec())),
        Some(any) => Err(PkiError::InvalidInput(format!(
            "eContent is {} rather than an OCTET STRING",
            any.tag()
        ))),
    }
}

/// Decode a DirectoryString-like attribute value (PrintableString, UTF8String, IA5String,
/// TeletexString treated as Latin-1 ASCII subset) to text.
pub(crate) fn any_to_string(any: &Any) -> Result<String> {
    match any.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String | Tag::TeletexString => {
            String::from_utf8(any.value().to_vec())
                .map_err(|_| PkiError::InvalidInput("attribute text is not UTF-8".into()))
        }
        Tag::BmpString => {
            let v = any.value();
            if v.len() % 2 != 0 {
                return Err(PkiError::InvalidInput("odd BMPString length".into()));
            }
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| PkiError::InvalidInput("bad BMPString".into()))
        }
        other => Err(PkiError::InvalidInput(format!(
            "attribute has unexpected type {other}"
        ))),
    }
}

/// The single value of the attribute `oid` in `attrs`, if present.
pub(crate) fn attr_value<'a>(
    attrs: &'a x509_cert::attr::Attributes,
    id: &ObjectIdentifier,
) -> Result<Option<&'a Any>> {
    let Some(attr) = attrs.iter().find(|a| &a.oid == id) else {
        return Ok(None);
    };
    let mut it = attr.values.iter();
    match (it.next(), it.next()) {
        (Some(v), None) => Ok(Some(v)),
        _ => Err(PkiError::InvalidInput(format!(
            "attribute {id} must have exactly one value"
        ))),
    }
}
