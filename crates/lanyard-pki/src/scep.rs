//! SCEP message codec (RFC 8894), pure: bytes in, bytes out, no HTTP.
//!
//! Server side: [`ScepResponder`], Lanyard's one SCEP service (GetCACaps, GetCACert, and
//! PKIOperation in decode / issue / answer steps), built on [`ca_caps`], [`get_ca_cert`],
//! [`decode_pki_message`] and [`encode_cert_rep`].
//! Client side (for the simulated Mac and tests): [`encode_pki_message`], [`decode_cert_rep`].
//!
//! Cryptography is OpenSSL's: the request's signature is checked with `CMS_verify`, its
//! envelope opened with `CMS_decrypt`, the reply's envelope made with `CMS_encrypt`, and the
//! reply's signature computed with an OpenSSL `Signer`. Only the SignedData *structure* of
//! the reply (which needs SCEP's signed attributes, which OpenSSL's safe API cannot add) is
//! built with RustCrypto's `cms` types.
//!
//! Interop rules built in (each was a failure seen with a real client, or is what Apple's
//! client checks):
//! - The CertRep is signed by the RA that GetCACert serves: Apple's `SecSCEPVerifyReply`
//!   refuses any other signer (see [`ScepResponder`]).
//! - The CertRep signer must have keyUsage digitalSignature: certmonger (OpenSSL
//!   `PKCS7_verify`) refuses a signer with only keyCertSign/cRLSign.
//!   [`crate::Ca::issue_scep_ra`] makes an RA certificate with digitalSignature +
//!   keyEncipherment (which is also how Apple's `SecSCEPValidateCACertMessage` recognises
//!   the RA among the GetCACert certificates).
//! - The CertRep envelope is AES-CBC, never single DES (OpenSSL 3 clients lack DES): the
//!   request's AES key size is mirrored, anything else is answered with AES-256-CBC.
//! - SignerInfo `signatureAlgorithm` is `rsaEncryption` (1.2.840.113549.1.1.1), not
//!   `sha256WithRSAEncryption`: strongSwan's `pki --scep` rejects the latter ("only RSA
//!   digest encryption supported"); Apple, Go and OpenSSL accept both. OpenSSL 3's own
//!   `CMS_sign` also writes `rsaEncryption`.

use std::fmt;

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::CmsVersion;
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode as _, Encode as _, Tag, Tagged as _};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::{Id, PKeyRef, Private};
use openssl::stack::Stack;
use openssl::symm::Cipher;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Name, X509NameRef, X509PurposeId, X509StoreContext, X509};
use x509_cert::attr::{Attribute, Attributes};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

use crate::asn1::{self, der_err, oid};
use crate::error::{PkiError, Result};
use crate::issue::{CertificateIssuer, Csr};

/// The capabilities Lanyard's SCEP service announces, one per line of GetCACaps.
///
/// `SHA-384` and `SHA-512` are not only true (requests with those digests are accepted),
/// they are needed: strongSwan 5.9.x `pki --scep` tests its caps bit mask with enum
/// *indices* instead of bits, so it sees "SHA-256" and "AES" only when "SHA-384" (bit 3,
/// which its SCEPStandard check hits) is listed; without it, it stops with "sha256 digest
/// algorithm not supported by CA" / "AES_CBC encryption algorithm not supported by CA".
pub const CA_CAPS: &[&str] = &[
    "POSTPKIOperation",
    "SHA-256",
    "SHA-384",
    "SHA-512",
    "SHA-1",
    "AES",
    "SCEPStandard",
    "Renewal",
];

/// Content type of the GetCACaps answer.
pub const CA_CAPS_CONTENT_TYPE: &str = "text/plain";
/// Content type of a GetCACert answer holding the CA certificate alone (DER).
pub const CA_CERT_CONTENT_TYPE: &str = "application/x-x509-ca-cert";
/// Content type of a GetCACert answer holding CA and RA (degenerate PKCS#7, DER).
pub const CA_RA_CERT_CONTENT_TYPE: &str = "application/x-x509-ca-ra-cert";
/// Content type of a PKIOperation answer.
pub const PKI_MESSAGE_CONTENT_TYPE: &str = "application/x-pki-message";

/// The GetCACaps body: [`CA_CAPS`], newline separated.
pub fn ca_caps() -> String {
    let mut s = CA_CAPS.join("\n");
    s.push('\n');
    s
}

/// An answer: content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScepResponse {
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The GetCACert answer: the CA certificate as DER (`application/x-x509-ca-cert`), or, with
/// an RA, a degenerate certs-only PKCS#7 holding CA and RA (`application/x-x509-ca-ra-cert`).
pub fn get_ca_cert(ca: &X509, ra: Option<&X509>) -> Result<ScepResponse> {
    match ra {
        None => Ok(ScepResponse {
            content_type: CA_CERT_CONTENT_TYPE,
            body: ca.to_der()?,
        }),
        Some(ra) => Ok(ScepResponse {
            content_type: CA_RA_CERT_CONTENT_TYPE,
            body: asn1::certs_only(&[ca, ra])?,
        }),
    }
}

/// Certificates in a degenerate certs-only PKCS#7 (the client side of GetCACert).
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<X509>> {
    Ok(asn1::parse_signed_message(der)?.certificates)
}

/// SCEP operations named by the `operation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GetCACaps`
    GetCaCaps,
    /// `GetCACert`
    GetCaCert,
    /// `PKIOperation`
    PkiOperation,
    /// `GetNextCACert`
    GetNextCaCert,
}

impl Operation {
    /// Parse the `operation` query parameter value.
    pub fn parse(s: &str) -> Option<Operation> {
        match s {
            "GetCACaps" => Some(Operation::GetCaCaps),
            "GetCACert" => Some(Operation::GetCaCert),
            "PKIOperation" => Some(Operation::PkiOperation),
            "GetNextCACert" => Some(Operation::GetNextCaCert),
            _ => None,
        }
    }
}

/// SCEP messageType values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 3: the server's answer.
    CertRep,
    /// 17: renewal, signed with the current certificate.
    RenewalReq,
    /// 19: initial enrollment.
    PkcsReq,
    /// 20: polling for a pending request (GetCertInitial).
    CertPoll,
    /// 21: fetch a certificate by issuer and serial.
    GetCert,
    /// 22: fetch a CRL.
    GetCrl,
}

impl MessageType {
    /// The decimal string carried in the attribute.
    pub fn code(self) -> &'static str {
        match self {
            MessageType::CertRep => "3",
            MessageType::RenewalReq => "17",
            MessageType::PkcsReq => "19",
            MessageType::CertPoll => "20",
            MessageType::GetCert => "21",
            MessageType::GetCrl => "22",
        }
    }

    fn from_code(s: &str) -> Result<MessageType> {
        use MessageType::*;
        let all = [CertRep, RenewalReq, PkcsReq, CertPoll, GetCert, GetCrl];
        decode(&all, MessageType::code, "messageType", s)
    }
}

/// SCEP failInfo values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailInfo {
    /// 0: unrecognised or unsupported algorithm.
    BadAlg,
    /// 1: integrity check (signature) failed.
    BadMessageCheck,
    /// 2: transaction not permitted or supported (e.g. wrong challenge).
    BadRequest,
    /// 3: the signingTime attribute was not close enough to the server's time.
    BadTime,
    /// 4: no certificate matched the criteria.
    BadCertId,
}

impl FailInfo {
    /// The decimal string carried in the attribute.
    pub fn code(self) -> &'static str {
        match self {
            FailInfo::BadAlg => "0",
            FailInfo::BadMessageCheck => "1",
            FailInfo::BadRequest => "2",
            FailInfo::BadTime => "3",
            FailInfo::BadCertId => "4",
        }
    }

    fn from_code(s: &str) -> Result<FailInfo> {
        use FailInfo::*;
        let all = [BadAlg, BadMessageCheck, BadRequest, BadTime, BadCertId];
        decode(&all, FailInfo::code, "failInfo", s)
    }
}

/// SCEP pkiStatus values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiStatus {
    /// 0
    Success,
    /// 2
    Failure,
    /// 3
    Pending,
}

impl PkiStatus {
    fn code(self) -> &'static str {
        match self {
            PkiStatus::Success => "0",
            PkiStatus::Failure => "2",
            PkiStatus::Pending => "3",
        }
    }

    fn from_code(s: &str) -> Result<PkiStatus> {
        use PkiStatus::*;
        decode(
            &[Success, Failure, Pending],
            PkiStatus::code,
            "pkiStatus",
            s,
        )
    }
}

/// Reads an attribute's decimal string back: the value among `all` whose `code` it is.
fn decode<T: Copy>(all: &[T], code: fn(T) -> &'static str, attribute: &str, s: &str) -> Result<T> {
    let s = s.trim();
    all.iter()
        .copied()
        .find(|&v| code(v) == s)
        .ok_or_else(|| PkiError::Scep(format!("unknown {attribute} {s:?}")))
}

/// Digest algorithms accepted in SCEP messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// SHA-1 (legacy clients; announced because some only speak it).
    Sha1,
    /// SHA-256 (default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Digest {
    fn md(self) -> MessageDigest {
        match self {
            Digest::Sha1 => MessageDigest::sha1(),
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            Digest::Sha1 => oid::SHA1,
            Digest::Sha256 => oid::SHA256,
            Digest::Sha384 => oid::SHA384,
            Digest::Sha512 => oid::SHA512,
        }
    }

    pub(crate) fn from_oid(o: &ObjectIdentifier) -> Option<Digest> {
        if *o == oid::SHA1 {
            Some(Digest::Sha1)
        } else if *o == oid::SHA256 {
            Some(Digest::Sha256)
        } else if *o == oid::SHA384 {
            Some(Digest::Sha384)
        } else if *o == oid::SHA512 {
            Some(Digest::Sha512)
        } else {
            None
        }
    }
}

/// Content-encryption ciphers for the pkcsPKIEnvelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeCipher {
    /// AES-128-CBC
    Aes128Cbc,
    /// AES-192-CBC
    Aes192Cbc,
    /// AES-256-CBC
    Aes256Cbc,
    /// DES-EDE3-CBC: accepted in requests from old clients, never used by Lanyard.
    DesEde3Cbc,
    /// single DES-CBC: accepted in requests only if OpenSSL can still decrypt it.
    DesCbc,
    /// Something else (its OID).
    Other,
}

impl EnvelopeCipher {
    fn from_oid(o: &ObjectIdentifier) -> EnvelopeCipher {
        if *o == oid::AES128_CBC {
            EnvelopeCipher::Aes128Cbc
        } else if *o == oid::AES192_CBC {
            EnvelopeCipher::Aes192Cbc
        } else if *o == oid::AES256_CBC {
            EnvelopeCipher::Aes256Cbc
        } else if *o == oid::DES_EDE3_CBC {
            EnvelopeCipher::DesEde3Cbc
        } else if *o == oid::DES_CBC {
            EnvelopeCipher::DesCbc
        } else {
            EnvelopeCipher::Other
        }
    }

    /// The AES cipher Lanyard answers with: the request's AES size, else AES-256-CBC.
    fn reply_cipher(self) -> Cipher {
        match self {
            EnvelopeCipher::Aes128Cbc => Cipher::aes_128_cbc(),
            EnvelopeCipher::Aes192Cbc => Cipher::aes_192_cbc(),
            _ => Cipher::aes_256_cbc(),
        }
    }
}

/// Make single-DES (and other legacy) envelopes decryptable, process-wide, by loading
/// OpenSSL 3's `legacy` provider next to the default one. Off unless called.
///
/// Why it exists: micromdm's `scepclient` 2.1 (Debian `scep`) encrypts its PKCSReq with
/// DES-CBC whatever GetCACaps says; OpenSSL 3 refuses DES without this provider. Apple
/// devices use AES or 3DES and do not need it. Lanyard never *sends* DES either way: its
/// CertRep envelopes are AES. Enabling it weakens only the confidentiality of requests
/// from such clients (CSR and challenge), so keep it for tests or explicit opt-in.
pub fn allow_legacy_des() -> Result<()> {
    static LOADED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut loaded = LOADED
        .lock()
        .map_err(|_| PkiError::Scep("legacy provider lock poisoned".into()))?;
    if !*loaded {
        // Load "default" explicitly too: the legacy provider's DES key generation (which
        // CMS_decrypt uses for its random-key countermeasure) fetches a DRBG through the
        // providers loaded explicitly, and fails when only the implicit default exists.
        let default = openssl::provider::Provider::load(None, "default")?;
        let legacy = openssl::provider::Provider::load(None, "legacy")?;
        // Keep both loaded for the life of the process.
        std::mem::forget(default);
        std::mem::forget(legacy);
        *loaded = true;
    }
    Ok(())
}

/// A decoded, signature-checked, decrypted SCEP request (pkiMessage).
pub struct PkiRequest {
    /// messageType.
    pub message_type: MessageType,
    /// transactionID (text as sent).
    pub transaction_id: String,
    /// senderNonce (16 bytes from conforming clients).
    pub sender_nonce: Vec<u8>,
    /// The certificate that signed the request: self-signed for PKCSReq, the current
    /// identity for RenewalReq. Replies are encrypted to it.
    pub signer_cert: X509,
    /// The decrypted messageData: a PKCS#10 request for PKCSReq/RenewalReq,
    /// IssuerAndSubject for CertPoll, IssuerAndSerialNumber for GetCert/GetCRL.
    pub message_data: Vec<u8>,
    /// Digest algorithm the requester used (mirrored in the reply).
    pub digest: Digest,
    /// Cipher of the request's envelope (its AES size is mirrored in the reply).
    pub cipher: EnvelopeCipher,
    transaction_id_raw: Any,
}

impl fmt::Debug for PkiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkiRequest")
            .field("message_type", &self.message_type)
            .field("transaction_id", &self.transaction_id)
            .field("sender_nonce", &hex::encode(&self.sender_nonce))
            .field("digest", &self.digest)
            .field("cipher", &self.cipher)
            .field("message_data_len", &self.message_data.len())
            .finish()
    }
}

impl PkiRequest {
    /// The PKCS#10 request of a PKCSReq or RenewalReq (signature checked).
    pub fn csr(&self) -> Result<Csr> {
        match self.message_type {
            MessageType::PkcsReq | MessageType::RenewalReq => Csr::from_der(&self.message_data),
            other => Err(PkiError::Scep(format!("{other:?} carries no CSR"))),
        }
    }

    /// Does the request's signer certificate chain to `ca` (and is it valid now)?
    /// Renewal requests are signed with the current identity; use this to accept them.
    pub fn signer_chains_to(&self, ca: &X509) -> Result<bool> {
        let mut sb = X509StoreBuilder::new()?;
        sb.add_cert(ca.clone())?;
        sb.set_purpose(X509PurposeId::ANY)?;
        let store = sb.build();
        let chain = Stack::new()?;
        let mut ctx = X509StoreContext::new()?;
        Ok(ctx.init(&store, &self.signer_cert, &chain, |c| c.verify_cert())?)
    }
}

fn attr_text(attrs: &[Attribute], id: &ObjectIdentifier, name: &str) -> Result<Option<String>> {
    asn1::attr_value(attrs, id)?
        .map(|v| asn1::any_to_string(v).map_err(|e| PkiError::Scep(format!("{name}: {e}"))))
        .transpose()
}

/// A text attribute the message must carry.
fn required_text(attrs: &[Attribute], id: &ObjectIdentifier, name: &str) -> Result<String> {
    attr_text(attrs, id, name)?.ok_or_else(|| missing(name))
}

fn missing(attribute: &str) -> PkiError {
    PkiError::Scep(format!("{attribute} attribute missing"))
}

fn attr_octets(attrs: &[Attribute], id: &ObjectIdentifier) -> Result<Option<Vec<u8>>> {
    match asn1::attr_value(attrs, id)? {
        None => Ok(None),
        Some(v) if v.tag() == Tag::OctetString => Ok(Some(v.value().to_vec())),
        Some(v) => Err(PkiError::Scep(format!(
            "attribute {id} is {} rather than an OCTET STRING",
            v.tag()
        ))),
    }
}

/// A pkiMessage whose signature has been checked.
struct Opened {
    /// Digest algorithm of the (single) signer.
    digest_oid: ObjectIdentifier,
    /// Its signed attributes.
    attrs: Vec<Attribute>,
    /// Its certificate.
    signer: X509,
    /// The eContent octets, if any.
    content: Option<Vec<u8>>,
}

/// Parse the SignedData of a pkiMessage and check its signature: with the certificate it
/// names (`CMS_verify` without chain building) or, given `trust`, chaining to it.
fn open_signed(der: &[u8], trust: Option<&X509>) -> Result<Opened> {
    let sd = asn1::parse_signed_message(der)?;
    let si = sd.single_signer()?;
    let attrs = si
        .signed_attrs
        .clone()
        .ok_or_else(|| PkiError::Scep("pkiMessage has no signed attributes".into()))?;
    let signer = sd.signer_cert(si)?;
    let content = sd.econtent.clone();
    let mut cms = CmsContentInfo::from_der(der)?;
    let detached: Option<&[u8]> = if content.is_none() { Some(b"") } else { None };
    let result = match trust {
        None => {
            let mut certs = Stack::new()?;
            certs.push(signer.clone())?;
            cms.verify(
                Some(&certs),
                None,
                detached,
                None,
                CMSOptions::BINARY | CMSOptions::NO_SIGNER_CERT_VERIFY,
            )
        }
        Some(ca) => {
            let mut sb = X509StoreBuilder::new()?;
            sb.add_cert(ca.clone())?;
            sb.set_purpose(X509PurposeId::ANY)?;
            let store = sb.build();
            cms.verify(None, Some(&store), detached, None, CMSOptions::BINARY)
        }
    };
    result.map_err(|e| PkiError::Verify(format!("pkiMessage signature: {e}")))?;
    Ok(Opened {
        digest_oid: si.digest_oid,
        attrs,
        signer,
        content,
    })
}

/// Decode a PKIOperation request body: check the outer signature against the signer
/// certificate it carries, read messageType, transactionID and senderNonce, and decrypt
/// the inner EnvelopedData with whichever of `recipients` (CA and/or RA, with keys) it was
/// encrypted to.
pub fn decode_pki_message(
    der: &[u8],
    recipients: &[(&X509, &PKeyRef<Private>)],
) -> Result<PkiRequest> {
    let Opened {
        digest_oid,
        attrs,
        signer: signer_cert,
        content,
    } = open_signed(der, None)?;
    let digest = Digest::from_oid(&digest_oid)
        .ok_or_else(|| PkiError::Scep(format!("unsupported digest algorithm {digest_oid}")))?;
    let message_type = MessageType::from_code(&required_text(
        &attrs,
        &oid::SCEP_MESSAGE_TYPE,
        "messageType",
    )?)?;
    let transaction_id_raw = asn1::attr_value(&attrs, &oid::SCEP_TRANSACTION_ID)?
        .cloned()
        .ok_or_else(|| missing("transactionID"))?;
    let transaction_id = asn1::any_to_string(&transaction_id_raw)
        .map_err(|e| PkiError::Scep(format!("transactionID: {e}")))?;
    let sender_nonce =
        attr_octets(&attrs, &oid::SCEP_SENDER_NONCE)?.ok_or_else(|| missing("senderNonce"))?;
    let envelope = content.ok_or_else(|| PkiError::Scep("pkiMessage has no content".into()))?;

    let ed = asn1::parse_enveloped_data(&envelope)
        .map_err(|e| PkiError::Scep(format!("pkcsPKIEnvelope: {e}")))?;
    let cipher = EnvelopeCipher::from_oid(&ed.encrypted_content.content_enc_alg.oid);
    let env = CmsContentInfo::from_der(&envelope)?;
    let mut last_err = None;
    let mut message_data = None;
    for (cert, key) in recipients {
        match env.decrypt(*key, cert) {
            Ok(data) => {
                message_data = Some(data);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let message_data = message_data.ok_or_else(|| {
        PkiError::Scep(format!(
            "pkcsPKIEnvelope could not be decrypted with the CA/RA keys: {}",
            last_err
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no recipients".into())
        ))
    })?;
    Ok(PkiRequest {
        message_type,
        transaction_id,
        sender_nonce,
        signer_cert,
        message_data,
        digest,
        cipher,
        transaction_id_raw,
    })
}

/// What to answer.
pub enum CertRepStatus<'a> {
    /// SUCCESS with the issued certificate (the degenerate PKCS#7 holds it first, then
    /// `chain`).
    Success {
        /// The issued certificate.
        issued: &'a X509,
        /// Extra certificates to include after it (usually none).
        chain: &'a [X509],
    },
    /// FAILURE with a reason.
    Failure(FailInfo),
    /// PENDING (manual approval; Lanyard does not use it yet).
    Pending,
}

fn attribute(id: ObjectIdentifier, value: Any) -> Result<Attribute> {
    let mut values = SetOfVec::new();
    values.insert(value).map_err(der_err)?;
    Ok(Attribute { oid: id, values })
}

fn printable(s: &str) -> Result<Any> {
    Any::new(Tag::PrintableString, s.as_bytes()).map_err(der_err)
}

fn octets(b: &[u8]) -> Result<Any> {
    Any::new(Tag::OctetString, b).map_err(der_err)
}

fn random_nonce() -> Result<Vec<u8>> {
    let mut n = vec![0u8; 16];
    openssl::rand::rand_bytes(&mut n)?;
    Ok(n)
}

/// Build and sign a SignedData (id-data content `econtent`, or none) with SCEP attributes.
fn signed_pki_message(
    econtent: Option<&[u8]>,
    scep_attrs: Vec<Attribute>,
    digest: Digest,
    signer_cert: &X509,
    signer_key: &PKeyRef<Private>,
    extra_certs: &[&X509],
) -> Result<Vec<u8>> {
    if signer_key.id() != Id::RSA {
        return Err(PkiError::Scep("the SCEP signer key must be RSA".into()));
    }
    if !signer_cert.public_key()?.public_eq(signer_key) {
        return Err(PkiError::InvalidInput(
            "SCEP signer key does not match its certificate".into(),
        ));
    }
    let md = hash(digest.md(), econtent.unwrap_or_default())?;
    let mut attrs: Attributes = SetOfVec::new();
    attrs
        .insert(attribute(
            oid::CONTENT_TYPE,
            Any::encode_from(&oid::ID_DATA).map_err(der_err)?,
        )?)
        .map_err(der_err)?;
    attrs
        .insert(attribute(oid::MESSAGE_DIGEST, octets(&md)?)?)
        .map_err(der_err)?;
    for a in scep_attrs {
        attrs.insert(a).map_err(der_err)?;
    }
    let to_sign = attrs.to_der().map_err(der_err)?;
    let mut signer = openssl::sign::Signer::new(digest.md(), signer_key)?;
    signer.update(&to_sign)?;
    let signature = signer.sign_to_vec()?;

    let signer_x = Certificate::from_der(&signer_cert.to_der()?).map_err(der_err)?;
    let sid = SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
        issuer: signer_x.tbs_certificate.issuer.clone(),
        serial_number: signer_x.tbs_certificate.serial_number.clone(),
    });
    let digest_alg = AlgorithmIdentifierOwned {
        oid: digest.oid(),
        parameters: None,
    };
    let si = SignerInfo {
        version: CmsVersion::V1,
        sid,
        digest_alg: digest_alg.clone(),
        signed_attrs: Some(attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: oid::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(signature).map_err(der_err)?,
        unsigned_attrs: None,
    };
    let mut certs = SetOfVec::new();
    certs
        .insert(cms::cert::CertificateChoices::Certificate(signer_x))
        .map_err(der_err)?;
    for c in extra_certs {
        let x = Certificate::from_der(&c.to_der()?).map_err(der_err)?;
        certs
            .insert(cms::cert::CertificateChoices::Certificate(x))
            .map_err(der_err)?;
    }
    let mut digest_algs = SetOfVec::new();
    digest_algs.insert(digest_alg).map_err(der_err)?;
    let mut signer_infos = SetOfVec::new();
    signer_infos.insert(si).map_err(der_err)?;
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: digest_algs,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::ID_DATA,
            econtent: econtent
                .map(|c| Any::new(Tag::OctetString, c))
                .transpose()
                .map_err(der_err)?,
        },
        certificates: Some(CertificateSet(certs)),
        crls: None,
        signer_infos: SignerInfos(signer_infos),
    };
    asn1::content_info(oid::ID_SIGNED_DATA, &sd.to_der().map_err(der_err)?)
}

fn envelope(data: &[u8], recipient: &X509, cipher: Cipher) -> Result<Vec<u8>> {
    let mut certs = Stack::new()?;
    certs.push(recipient.clone())?;
    Ok(CmsContentInfo::encrypt(&certs, data, cipher, CMSOptions::BINARY)?.to_der()?)
}

/// Encode a CertRep answering `req`: messageType 3, pkiStatus, failInfo (on FAILURE),
/// transactionID echoed, recipientNonce = the request's senderNonce, a fresh senderNonce;
/// on SUCCESS the content is a degenerate certs-only PKCS#7 holding the issued certificate,
/// enveloped (AES-CBC) to the request's signer certificate. Signed by `signer_cert` (the RA,
/// or the CA itself; it needs keyUsage digitalSignature) with the request's digest and
/// SignerInfo signatureAlgorithm rsaEncryption. `extra_certs` are added to the SignedData's
/// certificates (the CA when an RA signs).
pub fn encode_cert_rep(
    req: &PkiRequest,
    status: CertRepStatus<'_>,
    signer_cert: &X509,
    signer_key: &PKeyRef<Private>,
    extra_certs: &[X509],
) -> Result<Vec<u8>> {
    let (pki_status, fail_info, content) = match status {
        CertRepStatus::Success { issued, chain } => {
            let mut certs: Vec<&X509> = vec![issued];
            certs.extend(chain.iter());
            let degenerate = asn1::certs_only(&certs)?;
            let env = envelope(&degenerate, &req.signer_cert, req.cipher.reply_cipher())?;
            (PkiStatus::Success, None, Some(env))
        }
        CertRepStatus::Failure(fi) => (PkiStatus::Failure, Some(fi), None),
        CertRepStatus::Pending => (PkiStatus::Pending, None, None),
    };
    let mut attrs = vec![
        attribute(
            oid::SCEP_MESSAGE_TYPE,
            printable(MessageType::CertRep.code())?,
        )?,
        attribute(oid::SCEP_PKI_STATUS, printable(pki_status.code())?)?,
        attribute(oid::SCEP_TRANSACTION_ID, req.transaction_id_raw.clone())?,
        attribute(oid::SCEP_RECIPIENT_NONCE, octets(&req.sender_nonce)?)?,
        attribute(oid::SCEP_SENDER_NONCE, octets(&random_nonce()?)?)?,
    ];
    if let Some(fi) = fail_info {
        attrs.push(attribute(oid::SCEP_FAIL_INFO, printable(fi.code())?)?);
    }
    let extra: Vec<&X509> = extra_certs.iter().collect();
    signed_pki_message(
        content.as_deref(),
        attrs,
        req.digest,
        signer_cert,
        signer_key,
        &extra,
    )
}

// ---------------------------------------------------------------------------------------
// Client side

/// Encode a client pkiMessage (PKCSReq, RenewalReq, …): `message_data` (a DER CSR for
/// PKCSReq) enveloped with `cipher` to `recipient` (the CA or RA certificate), signed by
/// `signer_cert`/`signer_key` (a self-signed certificate for the CSR's key, or the current
/// identity for renewal) with SHA-256 and SCEP attributes. Returns the DER and the
/// senderNonce used.
#[allow(clippy::too_many_arguments)]
pub fn encode_pki_message(
    message_type: MessageType,
    message_data: &[u8],
    signer_cert: &X509,
    signer_key: &PKeyRef<Private>,
    recipient: &X509,
    transaction_id: &str,
    cipher: Cipher,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let env = envelope(message_data, recipient, cipher)?;
    let nonce = random_nonce()?;
    let attrs = vec![
        attribute(oid::SCEP_MESSAGE_TYPE, printable(message_type.code())?)?,
        attribute(oid::SCEP_TRANSACTION_ID, printable(transaction_id)?)?,
        attribute(oid::SCEP_SENDER_NONCE, octets(&nonce)?)?,
    ];
    let der = signed_pki_message(
        Some(&env),
        attrs,
        Digest::Sha256,
        signer_cert,
        signer_key,
        &[],
    )?;
    Ok((der, nonce))
}

/// A decoded CertRep (client side).
#[derive(Debug)]
pub struct CertRep {
    /// pkiStatus.
    pub status: PkiStatus,
    /// failInfo, on FAILURE.
    pub fail_info: Option<FailInfo>,
    /// transactionID.
    pub transaction_id: String,
    /// recipientNonce (must equal the request's senderNonce).
    pub recipient_nonce: Vec<u8>,
    /// The certificates of the degenerate PKCS#7 (issued certificate first when the server
    /// follows RFC 8894), empty unless SUCCESS.
    pub certificates: Vec<X509>,
    /// The certificate that signed the CertRep.
    pub signer_cert: X509,
}

/// Decode a CertRep: its signer must chain to `ca`; on SUCCESS the envelope is opened
/// with the requester's certificate and key.
pub fn decode_cert_rep(
    der: &[u8],
    ca: &X509,
    requester_cert: &X509,
    requester_key: &PKeyRef<Private>,
) -> Result<CertRep> {
    let Opened {
        attrs,
        signer: signer_cert,
        content,
        ..
    } = open_signed(der, Some(ca))?;
    let mt = MessageType::from_code(&required_text(
        &attrs,
        &oid::SCEP_MESSAGE_TYPE,
        "messageType",
    )?)?;
    if mt != MessageType::CertRep {
        return Err(PkiError::Scep(format!("expected CertRep, got {mt:?}")));
    }
    let status = PkiStatus::from_code(&required_text(&attrs, &oid::SCEP_PKI_STATUS, "pkiStatus")?)?;
    let fail_info = attr_text(&attrs, &oid::SCEP_FAIL_INFO, "failInfo")?
        .map(|s| FailInfo::from_code(&s))
        .transpose()?;
    let transaction_id = required_text(&attrs, &oid::SCEP_TRANSACTION_ID, "transactionID")?;
    let recipient_nonce = attr_octets(&attrs, &oid::SCEP_RECIPIENT_NONCE)?.unwrap_or_default();
    let certificates = match (status, content) {
        (PkiStatus::Success, Some(env)) => {
            // Re-parse the certificate so OpenSSL compares canonical issuer/serial values
            // (an in-memory certificate built without a serial does not match its own DER).
            let recipient = X509::from_der(&requester_cert.to_der()?)?;
            let inner = CmsContentInfo::from_der(&env)?.decrypt(requester_key, &recipient)?;
            parse_certs_only(&inner)?
        }
        (PkiStatus::Success, None) => {
            return Err(PkiError::Scep("SUCCESS CertRep without content".into()));
        }
        _ => Vec::new(),
    };
    Ok(CertRep {
        status,
        fail_info,
        transaction_id,
        recipient_nonce,
        certificates,
        signer_cert,
    })
}

// ---------------------------------------------------------------------------------------
// Responder

/// What a synchronous policy decided for a PKCSReq/RenewalReq (see
/// [`ScepResponder::pki_operation`]).
pub struct IssueDecision {
    /// Validity of the identity certificate.
    pub validity: std::time::Duration,
    /// Subject to use instead of the requested one.
    pub subject_override: Option<X509Name>,
}

/// A PKIOperation request the responder has decoded (signature checked, envelope opened),
/// waiting for the caller's decision. Made only by [`ScepResponder::decode`].
pub struct ScepRequest {
    pki: PkiRequest,
    /// The CSR of a PKCSReq/RenewalReq whose PKCS#10 verifies; for anything else the
    /// failInfo the answer must carry.
    csr: std::result::Result<Csr, FailInfo>,
}

impl fmt::Debug for ScepRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScepRequest")
            .field("pki", &self.pki)
            .field("csr", &self.csr)
            .finish()
    }
}

impl ScepRequest {
    /// The decoded pkiMessage (messageType, transactionID, nonce, signer, digest, cipher).
    pub fn pki(&self) -> &PkiRequest {
        &self.pki
    }

    /// The certificate request of a PKCSReq or RenewalReq (its PKCS#10 signature checked).
    /// `Err` carries the failInfo to answer with when the message asks for anything else
    /// (CertPoll/GetCert: badCertId; GetCRL: badRequest) or its CSR does not verify
    /// (badMessageCheck): Lanyard issues nothing for those.
    pub fn csr(&self) -> std::result::Result<&Csr, FailInfo> {
        self.csr.as_ref().map_err(|fi| *fi)
    }
}

/// An identity certificate the responder issued for one [`ScepRequest`]'s CSR. Made only by
/// [`ScepResponder::issue`], so a SUCCESS CertRep can only carry a certificate for the key
/// that asked.
pub struct IssuedIdentity {
    cert: X509,
}

impl IssuedIdentity {
    /// The certificate.
    pub fn certificate(&self) -> &X509 {
        &self.cert
    }
}

/// How to answer a decoded request.
pub enum ScepAnswer<'a> {
    /// SUCCESS with this certificate.
    Issued(&'a IssuedIdentity),
    /// FAILURE with this failInfo (e.g. badRequest for a wrong or spent challenge).
    Refused(FailInfo),
}

/// Lanyard's one SCEP service, without transport: GetCACaps, GetCACert and PKIOperation.
///
/// GetCACert serves the CA and the registration authority (RA) as
/// `application/x-x509-ca-ra-cert`, and every CertRep is signed by that RA, with the CA in
/// the SignedData's certificates. Apple's client requires exactly this: in Apple's
/// open-source Security framework, `SecSCEPVerifyReply` (`SecSCEP.c`) takes the signer
/// certificate from the CA/RA pair that GetCACert gave it ("response should be signed by
/// ra") and refuses a reply whose signer is not that RA, so a CA-signed CertRep makes the
/// SCEP payload, and with it the enrollment profile, fail to install. certmonger, strongSwan
/// `pki --scep` and micromdm's `scepclient` also accept the RA (certmonger 0.79 cannot
/// verify a CertRep signed by a CA served alone). Requests encrypted to the RA, or (with
/// `ca_key`) to the CA, are opened.
///
/// A PKIOperation is answered in steps, so that a caller's asynchronous decision (claiming a
/// one-time challenge in a database) sits between them: [`Self::decode`] (an `Err` means
/// "answer HTTP 400"), then the caller's checks, optionally [`Self::issue`], then
/// [`Self::answer`]. [`Self::pki_operation`] runs the same steps for a synchronous policy.
/// The responder is `Send`, so it may be held across those awaits.
pub struct ScepResponder<'a> {
    issuer: &'a (dyn CertificateIssuer + Sync),
    ca_key: Option<&'a PKeyRef<Private>>,
    ra_cert: &'a X509,
    ra_key: &'a PKeyRef<Private>,
}

impl<'a> ScepResponder<'a> {
    /// A responder for the CA `issuer` with its RA certificate and key (see
    /// [`crate::Ca::issue_scep_ra`]: keyUsage digitalSignature + keyEncipherment). `ca_key`,
    /// if given, also lets requests encrypted to the CA certificate be opened.
    pub fn new(
        issuer: &'a (dyn CertificateIssuer + Sync),
        ra_cert: &'a X509,
        ra_key: &'a PKeyRef<Private>,
        ca_key: Option<&'a PKeyRef<Private>>,
    ) -> ScepResponder<'a> {
        ScepResponder {
            issuer,
            ca_key,
            ra_cert,
            ra_key,
        }
    }

    /// GetCACaps answer.
    pub fn ca_caps(&self) -> ScepResponse {
        ScepResponse {
            content_type: CA_CAPS_CONTENT_TYPE,
            body: ca_caps().into_bytes(),
        }
    }

    /// GetCACert answer: CA and RA.
    pub fn ca_cert(&self) -> Result<ScepResponse> {
        get_ca_cert(self.issuer.issuer_certificate(), Some(self.ra_cert))
    }

    /// Step 1 of a PKIOperation: check the request's signature and open its envelope. An
    /// `Err` means the body is not a SCEP request Lanyard can read (answer HTTP 400, change
    /// nothing); everything else gets a CertRep from [`Self::answer`].
    pub fn decode(&self, body: &[u8]) -> Result<ScepRequest> {
        let mut recipients: Vec<(&X509, &PKeyRef<Private>)> = vec![(self.ra_cert, self.ra_key)];
        if let Some(k) = self.ca_key {
            recipients.push((self.issuer.issuer_certificate(), k));
        }
        let pki = decode_pki_message(body, &recipients)?;
        let csr = match pki.message_type {
            MessageType::PkcsReq | MessageType::RenewalReq => {
                pki.csr().map_err(|_| FailInfo::BadMessageCheck)
            }
            MessageType::CertPoll | MessageType::GetCert => Err(FailInfo::BadCertId),
            MessageType::GetCrl | MessageType::CertRep => Err(FailInfo::BadRequest),
        };
        Ok(ScepRequest { pki, csr })
    }

    /// Step 2 (after the caller's checks): issue the identity certificate for the request's
    /// CSR, `validity_days` long, with `subject` instead of the requested one when given.
    /// Nothing is stored here; a caller that then fails to record it answers FAILURE and
    /// the certificate is never delivered.
    pub fn issue(
        &self,
        req: &ScepRequest,
        validity: std::time::Duration,
        subject: Option<&X509NameRef>,
    ) -> Result<IssuedIdentity> {
        let csr = req
            .csr()
            .map_err(|fi| PkiError::Scep(format!("{fi:?}: nothing to issue for this request")))?;
        let cert = self
            .issuer
            .issue_identity_valid_for(csr.der(), validity, subject)?;
        Ok(IssuedIdentity { cert })
    }

    /// Step 3: the CertRep for `req`, signed by the RA (the CA rides along in the
    /// SignedData's certificates). A request without a certificate request is always
    /// answered FAILURE with its own failInfo, whatever `answer` says.
    pub fn answer(&self, req: &ScepRequest, answer: ScepAnswer<'_>) -> Result<ScepResponse> {
        let status = match (&req.csr, answer) {
            (Err(fi), _) => CertRepStatus::Failure(*fi),
            (Ok(_), ScepAnswer::Refused(fi)) => CertRepStatus::Failure(fi),
            (Ok(_), ScepAnswer::Issued(issued)) => CertRepStatus::Success {
                issued: &issued.cert,
                chain: &[],
            },
        };
        let ca = self.issuer.issuer_certificate().clone();
        Ok(ScepResponse {
            content_type: PKI_MESSAGE_CONTENT_TYPE,
            body: encode_cert_rep(&req.pki, status, self.ra_cert, self.ra_key, &[ca])?,
        })
    }

    /// All three steps for a synchronous `policy`: undecodable requests give `Err` (answer
    /// HTTP 400); otherwise `policy` sees each PKCSReq/RenewalReq and its CSR and returns the
    /// decision or a failInfo, and a CertRep (SUCCESS or FAILURE) is returned.
    pub fn pki_operation(
        &self,
        body: &[u8],
        policy: impl FnOnce(&PkiRequest, &Csr) -> std::result::Result<IssueDecision, FailInfo>,
    ) -> Result<ScepResponse> {
        let req = self.decode(body)?;
        let decision = match req.csr() {
            Ok(csr) => policy(req.pki(), csr),
            Err(fi) => Err(fi),
        };
        let issued = match decision {
            Ok(d) => self.issue(&req, d.validity, d.subject_override.as_deref()),
            Err(fi) => return self.answer(&req, ScepAnswer::Refused(fi)),
        };
        match issued {
            Ok(issued) => self.answer(&req, ScepAnswer::Issued(&issued)),
            Err(_) => self.answer(&req, ScepAnswer::Refused(FailInfo::BadRequest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::tests::make_csr;
    use crate::Ca;
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// A self-signed certificate for the CSR key, as SCEP clients make.
    fn self_signed(key: &PKey<Private>, cn: &str) -> X509 {
        let mut nb = X509NameBuilder::new().unwrap();
        nb.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = nb.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    fn policy_ok(req: &PkiRequest, csr: &Csr) -> std::result::Result<IssueDecision, FailInfo> {
        if req.message_type == MessageType::PkcsReq && csr.challenge_password() != Some("secret") {
            return Err(FailInfo::BadRequest);
        }
        Ok(IssueDecision {
            validity: std::time::Duration::from_secs(365 * 86_400),
            subject_override: None,
        })
    }

    #[test]
    fn caps_and_ca_cert() {
        assert_eq!(
            ca_caps(),
            "POSTPKIOperation\nSHA-256\nSHA-384\nSHA-512\nSHA-1\nAES\nSCEPStandard\nRenewal\n"
        );
        let ca = Ca::generate("SCEP CA", "Lanyard").unwrap();
        let r = get_ca_cert(ca.certificate(), None).unwrap();
        assert_eq!(r.content_type, "application/x-x509-ca-cert");
        assert_eq!(r.body, ca.cert_der().unwrap());
        let ra = ca.issue_scep_ra("SCEP RA", 365).unwrap();
        let ra = X509::from_der(&ra.cert_der).unwrap();
        let r = get_ca_cert(ca.certificate(), Some(&ra)).unwrap();
        assert_eq!(r.content_type, "application/x-x509-ca-ra-cert");
        let certs = parse_certs_only(&r.body).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(Operation::parse("GetCACaps") == Some(Operation::GetCaCaps));
        assert!(Operation::parse("nope").is_none());
    }

    struct Keys {
        ca: Ca,
        ra_cert: X509,
        ra_key: PKey<Private>,
    }

    fn keys() -> Keys {
        let ca = Ca::generate("SCEP CA", "Lanyard").unwrap();
        let ra = ca.issue_scep_ra("SCEP RA", 365).unwrap();
        Keys {
            ra_cert: X509::from_der(&ra.cert_der).unwrap(),
            ra_key: PKey::private_key_from_pem(ra.key_pem.as_bytes()).unwrap(),
            ca,
        }
    }

    fn responder(k: &Keys) -> ScepResponder<'_> {
        ScepResponder::new(&k.ca, &k.ra_cert, &k.ra_key, Some(k.ca.private_key()))
    }

    /// A PKCSReq for `cn` with `challenge`, enveloped to `recipient`: (message, nonce,
    /// self-signed requester, its key).
    fn pkcs_req(
        recipient: &X509,
        cipher: Cipher,
        challenge: &str,
    ) -> (Vec<u8>, Vec<u8>, X509, PKey<Private>) {
        let (csr, key) = make_csr("dev1", Some(challenge));
        let me = self_signed(&key, "dev1");
        let (msg, nonce) = encode_pki_message(
            MessageType::PkcsReq,
            &csr,
            &me,
            &key,
            recipient,
            "tx-0001",
            cipher,
        )
        .unwrap();
        (msg, nonce, me, key)
    }

    /// The certificates in a SignedData, as DER.
    fn signed_data_certs(der: &[u8]) -> Vec<Vec<u8>> {
        asn1::parse_signed_message(der)
            .unwrap()
            .certificates
            .iter()
            .map(|c| c.to_der().unwrap())
            .collect()
    }

    fn round_trip(encrypt_to_ca: bool, cipher: Cipher, challenge: &str) -> CertRep {
        let k = keys();
        let responder = responder(&k);
        let recipient = if encrypt_to_ca {
            k.ca.certificate()
        } else {
            &k.ra_cert
        };
        let (msg, nonce, me, key) = pkcs_req(recipient, cipher, challenge);
        let opener: &PKeyRef<Private> = if encrypt_to_ca {
            k.ca.private_key()
        } else {
            &k.ra_key
        };
        let decoded = decode_pki_message(&msg, &[(recipient, opener)]).unwrap();
        assert_eq!(decoded.message_type, MessageType::PkcsReq);
        assert_eq!(decoded.transaction_id, "tx-0001");
        assert_eq!(decoded.sender_nonce, nonce);
        assert_eq!(decoded.digest, Digest::Sha256);

        let resp = responder.pki_operation(&msg, policy_ok).unwrap();
        assert_eq!(resp.content_type, "application/x-pki-message");
        let rep = decode_cert_rep(&resp.body, k.ca.certificate(), &me, &key).unwrap();
        assert_eq!(rep.transaction_id, "tx-0001");
        assert_eq!(rep.recipient_nonce, nonce);
        // SUCCESS or FAILURE, the RA signs, with rsaEncryption, and the CA rides along.
        assert_eq!(
            rep.signer_cert.to_der().unwrap(),
            k.ra_cert.to_der().unwrap()
        );
        let certs = signed_data_certs(&resp.body);
        assert!(
            certs.contains(&k.ca.cert_der().unwrap()),
            "no CA in the CertRep"
        );
        assert!(
            certs.contains(&k.ra_cert.to_der().unwrap()),
            "no RA in the CertRep"
        );
        let sd = asn1::parse_signed_message(&resp.body).unwrap();
        let si = sd.single_signer().unwrap();
        assert_eq!(si.signature_oid, oid::RSA_ENCRYPTION);
        if let Some(env) = sd.econtent.clone() {
            let ci = cms::content_info::ContentInfo::from_der(&env).unwrap();
            let ed = ci
                .content
                .decode_as::<cms::enveloped_data::EnvelopedData>()
                .unwrap();
            let c = EnvelopeCipher::from_oid(&ed.encrypted_content.content_enc_alg.oid);
            assert!(
                matches!(
                    c,
                    EnvelopeCipher::Aes128Cbc
                        | EnvelopeCipher::Aes192Cbc
                        | EnvelopeCipher::Aes256Cbc
                ),
                "{c:?}"
            );
        }
        if rep.status == PkiStatus::Success {
            let issued = &rep.certificates[0];
            assert!(crate::ca::tests::verify_with_store(
                k.ca.certificate(),
                issued
            ));
            assert!(issued.public_key().unwrap().public_eq(&key));
        }
        rep
    }

    #[test]
    fn pkcs_req_encrypted_to_the_ca_is_answered_by_the_ra() {
        let rep = round_trip(true, Cipher::aes_128_cbc(), "secret");
        assert_eq!(rep.status, PkiStatus::Success);
        assert_eq!(rep.certificates.len(), 1);
    }

    #[test]
    fn pkcs_req_success_with_ra_and_3des_request() {
        let rep = round_trip(false, Cipher::des_ede3_cbc(), "secret");
        assert_eq!(rep.status, PkiStatus::Success);
    }

    #[test]
    fn wrong_challenge_is_failure_bad_request() {
        let rep = round_trip(false, Cipher::aes_256_cbc(), "wrong");
        assert_eq!(rep.status, PkiStatus::Failure);
        assert_eq!(rep.fail_info, Some(FailInfo::BadRequest));
        assert!(rep.certificates.is_empty());
    }

    /// The steps a caller with an asynchronous decision runs: decode, its own checks,
    /// issue, answer.
    #[test]
    fn decode_issue_answer_in_steps() {
        let k = keys();
        let responder = responder(&k);
        assert!(responder.decode(b"not a pkiMessage").is_err());

        let (msg, nonce, me, key) = pkcs_req(&k.ra_cert, Cipher::aes_256_cbc(), "secret");
        let req = responder.decode(&msg).unwrap();
        assert_eq!(req.pki().transaction_id, "tx-0001");
        assert_eq!(req.csr().unwrap().challenge_password(), Some("secret"));
        let mut nb = X509Name::builder().unwrap();
        nb.append_entry_by_nid(Nid::COMMONNAME, "Chosen by the server")
            .unwrap();
        let subject = nb.build();
        let issued = responder
            .issue(
                &req,
                std::time::Duration::from_secs(30 * 86_400),
                Some(&subject),
            )
            .unwrap();
        let reply = responder.answer(&req, ScepAnswer::Issued(&issued)).unwrap();
        let rep = decode_cert_rep(&reply.body, k.ca.certificate(), &me, &key).unwrap();
        assert_eq!(rep.status, PkiStatus::Success);
        assert_eq!(rep.recipient_nonce, nonce);
        assert_eq!(
            rep.certificates[0].to_der().unwrap(),
            issued.certificate().to_der().unwrap()
        );
        assert_eq!(
            crate::certinfo::name_to_string(rep.certificates[0].subject_name()),
            "CN=Chosen by the server"
        );

        // A refusal of the same request.
        let reply = responder
            .answer(&req, ScepAnswer::Refused(FailInfo::BadRequest))
            .unwrap();
        let rep = decode_cert_rep(&reply.body, k.ca.certificate(), &me, &key).unwrap();
        assert_eq!(rep.status, PkiStatus::Failure);
        assert_eq!(rep.fail_info, Some(FailInfo::BadRequest));
        assert_eq!(
            rep.signer_cert.to_der().unwrap(),
            k.ra_cert.to_der().unwrap()
        );

        // A GetCert carries no CSR: nothing to issue, and its answer is FAILURE badCertId
        // whatever the caller asks for.
        let (getcert, _) = encode_pki_message(
            MessageType::GetCert,
            b"\x30\x00",
            &me,
            &key,
            &k.ra_cert,
            "tx-0002",
            Cipher::aes_256_cbc(),
        )
        .unwrap();
        let other = responder.decode(&getcert).unwrap();
        assert_eq!(other.csr().err(), Some(FailInfo::BadCertId));
        assert!(responder
            .issue(&other, std::time::Duration::from_secs(30 * 86_400), None)
            .is_err());
        let reply = responder
            .answer(&other, ScepAnswer::Issued(&issued))
            .unwrap();
        let rep = decode_cert_rep(&reply.body, k.ca.certificate(), &me, &key).unwrap();
        assert_eq!(rep.status, PkiStatus::Failure);
        assert_eq!(rep.fail_info, Some(FailInfo::BadCertId));
        assert!(rep.certificates.is_empty());
    }

    #[test]
    fn tampered_or_misaddressed_requests_are_rejected() {
        let ca = Ca::generate("SCEP CA", "Lanyard").unwrap();
        let (msg, ..) = pkcs_req(ca.certificate(), Cipher::aes_256_cbc(), "secret");
        // flip a byte inside the envelope (the signed content)
        let mut bad = msg.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        let r = decode_pki_message(&bad, &[(ca.certificate(), ca.private_key())]);
        assert!(r.is_err());
        // encrypted to another CA
        let other = Ca::generate("Other", "").unwrap();
        let r = decode_pki_message(&msg, &[(other.certificate(), other.private_key())]);
        assert!(matches!(r, Err(PkiError::Scep(_))), "{r:?}");
        assert!(decode_pki_message(b"garbage", &[]).is_err());
    }

    #[test]
    fn renewal_signed_by_current_identity() {
        let ca = Ca::generate("SCEP CA", "Lanyard").unwrap();
        let (csr, key) = make_csr("dev1", None);
        let current = ca.issue_identity(&csr, 30, None).unwrap();
        let (csr2, _key2) = make_csr("dev1", None);
        let renewal_signed_by = |signer: &X509| {
            let (msg, _) = encode_pki_message(
                MessageType::RenewalReq,
                &csr2,
                signer,
                &key,
                ca.certificate(),
                "tx-renew",
                Cipher::aes_256_cbc(),
            )
            .unwrap();
            decode_pki_message(&msg, &[(ca.certificate(), ca.private_key())]).unwrap()
        };
        let req = renewal_signed_by(&current);
        assert_eq!(req.message_type, MessageType::RenewalReq);
        assert!(req.signer_chains_to(ca.certificate()).unwrap());
        let req = renewal_signed_by(&self_signed(&key, "x"));
        assert!(!req.signer_chains_to(ca.certificate()).unwrap());
    }
}
