//! Small ASN.1 helpers on RustCrypto's `der`/`cms`/`x509-cert` types, used where OpenSSL's
//! safe API has no equivalent (signed attributes, signer lookup, certs-only SignedData,
//! PKCS#10 attributes). No cryptography happens here.

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::EnvelopedData;
use cms::revocation::RevocationInfoChoices;
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::{ObjectIdentifier, SetOfVec};
use der::{Any, AnyRef, Decode, Encode, Reader, SliceReader, Tag, Tagged};
use openssl::x509::X509;
use x509_cert::attr::Attribute;
use x509_cert::spki::AlgorithmIdentifierOwned;
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

/// Decode a CMS ContentInfo with `decode`, strictly as DER; when that fails (BER from Go's
/// pkcs7 or Apple's encoders: indefinite lengths, unsorted SET OF), let OpenSSL parse it and
/// re-encode it as DER, then decode that. Only *reading* uses the re-encoded form:
/// signatures are always checked by OpenSSL on the original bytes.
fn decode_lenient<T>(der_bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T>) -> Result<T> {
    match decode(der_bytes) {
        Ok(v) => Ok(v),
        Err(strict) => {
            let canonical = openssl::cms::CmsContentInfo::from_der(der_bytes)
                .and_then(|c| c.to_der())
                .map_err(|_| strict)?;
            decode(&canonical)
        }
    }
}

/// Parse a ContentInfo that must hold EnvelopedData (see [`decode_lenient`]).
pub(crate) fn parse_enveloped_data(der_bytes: &[u8]) -> Result<EnvelopedData> {
    decode_lenient(der_bytes, |b| {
        let ci = ContentInfo::from_der(b).map_err(der_err)?;
        if ci.content_type != oid::ID_ENVELOPED_DATA {
            return Err(PkiError::InvalidInput(format!(
                "expected CMS EnvelopedData, found content type {}",
                ci.content_type
            )));
        }
        ci.content.decode_as::<EnvelopedData>().map_err(der_err)
    })
}

/// How a SignerInfo names its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sid {
    /// issuer Name (DER) and serial INTEGER content octets.
    IssuerSerial { issuer: Vec<u8>, serial: Vec<u8> },
    /// subjectKeyIdentifier octets.
    Ski(Vec<u8>),
}

/// The parts of a SignerInfo we read.
#[derive(Debug, Clone)]
pub(crate) struct SignerSummary {
    pub sid: Sid,
    pub digest_oid: ObjectIdentifier,
    #[cfg_attr(not(test), allow(dead_code))] // asserted by the interop tests
    pub signature_oid: ObjectIdentifier,
    pub signed_attrs: Option<Vec<Attribute>>,
}

/// A SignedData read leniently: certificates go to OpenSSL as raw DER (so a certificate
/// x509-cert would refuse, e.g. certmonger's 33-byte serial numbers, still works) and the
/// SignerInfos are walked element by element.
#[derive(Debug)]
pub(crate) struct SignedMessage {
    /// The SignedData's `digestAlgorithms`.
    pub digest_algorithms: Vec<ObjectIdentifier>,
    pub econtent: Option<Vec<u8>>,
    pub certificates: Vec<X509>,
    pub signers: Vec<SignerSummary>,
}

/// One DER element inside its parent's value, borrowed: its tag, its content octets and its
/// whole encoding (so that it decodes, or is compared, without a copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    tag: Tag,
    value: &'a [u8],
    der: &'a [u8],
}

impl<'a> Tlv<'a> {
    pub(crate) fn tag(&self) -> Tag {
        self.tag
    }

    /// The content octets.
    pub(crate) fn value(&self) -> &'a [u8] {
        self.value
    }

    /// The whole element: tag, length and content, as received.
    pub(crate) fn der(&self) -> &'a [u8] {
        self.der
    }

    /// The element decoded strictly as `T` (whose tag it must carry).
    pub(crate) fn decode_as<T: Decode<'a>>(&self) -> Result<T> {
        T::from_der(self.der).map_err(der_err)
    }
}

/// The DER elements one after another in `value`.
pub(crate) fn tlvs(value: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let mut reader = SliceReader::new(value).map_err(der_err)?;
    let mut out = Vec::new();
    while !reader.is_finished() {
        let start = usize::try_from(reader.position()).map_err(der_err)?;
        let any = AnyRef::decode(&mut reader).map_err(der_err)?;
        let end = usize::try_from(reader.position()).map_err(der_err)?;
        let der = value
            .get(start..end)
            .ok_or_else(|| PkiError::Der("element outside its parent".into()))?;
        out.push(Tlv {
            tag: any.tag(),
            value: any.value(),
            der,
        });
    }
    Ok(out)
}

/// Whether `tlv` is the context-specific element `[number]`.
pub(crate) fn is_context(tlv: &Tlv<'_>, number: u8) -> bool {
    matches!(tlv.tag(), Tag::ContextSpecific { number: n, .. } if n.value() == number)
}

fn algorithm_oid(tlv: &Tlv<'_>) -> Result<ObjectIdentifier> {
    Ok(tlv.decode_as::<AlgorithmIdentifierOwned>()?.oid)
}

fn parse_signer_info(any: &Tlv<'_>) -> Result<SignerSummary> {
    if any.tag() != Tag::Sequence {
        return Err(PkiError::Der("SignerInfo is not a SEQUENCE".into()));
    }
    let parts = tlvs(any.value())?;
    let mut it = parts.iter().skip(1); // version
    let sid_any = it
        .next()
        .ok_or_else(|| PkiError::Der("SignerInfo without sid".into()))?;
    let sid = if sid_any.tag() == Tag::Sequence {
        let ias = tlvs(sid_any.value())?;
        match (ias.first(), ias.get(1)) {
            (Some(issuer), Some(serial)) if serial.tag() == Tag::Integer => Sid::IssuerSerial {
                issuer: issuer.der().to_vec(),
                serial: serial.value().to_vec(),
            },
            _ => return Err(PkiError::Der("bad IssuerAndSerialNumber".into())),
        }
    } else if is_context(sid_any, 0) {
        Sid::Ski(sid_any.value().to_vec())
    } else {
        return Err(PkiError::Der("unknown SignerIdentifier".into()));
    };
    let digest = it
        .next()
        .ok_or_else(|| PkiError::Der("SignerInfo without digestAlgorithm".into()))?;
    let digest_oid = algorithm_oid(digest)?;
    let mut next = it.next();
    let mut signed_attrs = None;
    if let Some(a) = next.filter(|a| is_context(a, 0)) {
        let mut attrs = Vec::new();
        for attr in tlvs(a.value())? {
            attrs.push(attr.decode_as::<Attribute>()?);
        }
        signed_attrs = Some(attrs);
        next = it.next();
    }
    let sig_alg =
        next.ok_or_else(|| PkiError::Der("SignerInfo without signatureAlgorithm".into()))?;
    Ok(SignerSummary {
        sid,
        digest_oid,
        signature_oid: algorithm_oid(sig_alg)?,
        signed_attrs,
    })
}

fn parse_signed_message_strict(der_bytes: &[u8]) -> Result<SignedMessage> {
    let ci = ContentInfo::from_der(der_bytes).map_err(der_err)?;
    if ci.content_type != oid::ID_SIGNED_DATA {
        return Err(PkiError::InvalidInput(format!(
            "expected CMS SignedData, found content type {}",
            ci.content_type
        )));
    }
    if ci.content.tag() != Tag::Sequence {
        return Err(PkiError::Der("SignedData is not a SEQUENCE".into()));
    }
    // version, digestAlgorithms, encapContentInfo, [0] certificates, [1] crls, signerInfos
    let parts = tlvs(ci.content.value())?;
    let digest_algorithms = match parts.get(1) {
        Some(set) if set.tag() == Tag::Set => tlvs(set.value())?
            .iter()
            .map(algorithm_oid)
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(PkiError::Der("SignedData without digestAlgorithms".into())),
    };
    let encap = parts
        .get(2)
        .ok_or_else(|| PkiError::Der("SignedData too short".into()))?;
    let encap = encap.decode_as::<EncapsulatedContentInfo>()?;
    let econtent = match &encap.econtent {
        None => None,
        Some(any) if any.tag() == Tag::OctetString => Some(any.value().to_vec()),
        Some(any) => {
            return Err(PkiError::InvalidInput(format!(
                "eContent is {} rather than an OCTET STRING",
                any.tag()
            )))
        }
    };
    let mut certificates = Vec::new();
    let mut signers = Vec::new();
    for part in parts.iter().skip(3) {
        if is_context(part, 0) {
            for c in tlvs(part.value())? {
                if c.tag() == Tag::Sequence {
                    certificates.push(X509::from_der(c.der())?);
                }
            }
        } else if part.tag() == Tag::Set {
            for si in tlvs(part.value())? {
                signers.push(parse_signer_info(&si)?);
            }
        }
    }
    Ok(SignedMessage {
        digest_algorithms,
        econtent,
        certificates,
        signers,
    })
}

/// Whether `id` is a digest Lanyard accepts in a signature: SHA-1, SHA-256, SHA-384, SHA-512.
pub(crate) fn is_accepted_digest(id: &ObjectIdentifier) -> bool {
    [oid::SHA1, oid::SHA256, oid::SHA384, oid::SHA512].contains(id)
}

/// Read a CMS/PKCS#7 SignedData (DER or BER; see [`decode_lenient`]).
pub(crate) fn parse_signed_message(der_bytes: &[u8]) -> Result<SignedMessage> {
    decode_lenient(der_bytes, parse_signed_message_strict)
}

/// An INTEGER's content octets without their leading zero bytes (how two encodings of one
/// serial number compare).
pub(crate) fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n..]
}

impl SignedMessage {
    /// The only SignerInfo (we never accept several signers).
    pub(crate) fn single_signer(&self) -> Result<&SignerSummary> {
        match self.signers.as_slice() {
            [one] => Ok(one),
            [] => Err(PkiError::InvalidInput("SignedData has no signer".into())),
            _ => Err(PkiError::InvalidInput(
                "SignedData has more than one signer".into(),
            )),
        }
    }

    /// The included certificate that `signer` names.
    pub(crate) fn signer_cert(&self, signer: &SignerSummary) -> Result<X509> {
        for cert in &self.certificates {
            let matches = match &signer.sid {
                Sid::IssuerSerial { issuer, serial } => {
                    cert.serial_number().to_bn()?.to_vec() == strip_leading_zeros(serial)
                        && cert.issuer_name().to_der()? == *issuer
                }
                Sid::Ski(ski) => cert
                    .subject_key_id()
                    .map(|k| k.as_slice() == ski.as_slice())
                    .unwrap_or(false),
            };
            if matches {
                return Ok(cert.clone());
            }
        }
        Err(PkiError::Verify(
            "signer certificate is not included in the SignedData".into(),
        ))
    }
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
    attrs: &'a [Attribute],
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
