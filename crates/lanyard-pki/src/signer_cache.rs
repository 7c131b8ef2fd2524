//! [`SignerCache`]: the `Mdm-Signature` check, done with the signer's certificate parsed once and
//! without OpenSSL.
//!
//! What a device sends (Apple, "Managing certificates for MDM servers and devices",
//! <https://developer.apple.com/documentation/devicemanagement/managing-certificates-for-mdm-servers-and-devices>,
//! and the MDM payload's `SignMessage`): when the enrollment profile sets `SignMessage`, every
//! request carries `Mdm-Signature`, the base64 of a detached CMS SignedData over the request's
//! exact body, signed by the device's identity certificate, which the SignedData includes.
//!
//! OpenSSL's own CMS verification ([`crate::verify_detached`]) costs about 0.4 ms per request on a
//! 2-core machine, almost none of it signature mathematics: it decodes the signer certificate
//! twice (OpenSSL 3 decodes public keys slowly) and builds its chain for every request. The cache
//! walks the SignedData's DER in place (borrowed elements, the parts it does not read decoded
//! strictly with the `cms` types), parses the certificate with `x509-cert` only at first contact
//! (a cached signer is found by the digest of its certificate's bytes), checks the signatures with
//! `ring` (RSA PKCS #1 v1.5 and ECDSA verification over raw key bytes, nothing to decode into a
//! key object), and then:
//!
//! - **first contact** (a certificate it does not hold): the certificate's issuer must be the CA's
//!   subject and its signature over the `TBSCertificate` must verify with the CA's public key
//!   (read once, when the cache is made); the certificate and the CA must be valid now; a key
//!   usage extension, if present, must allow `digitalSignature` ([`check_signing_usage`], the same
//!   rule the full check applies); no unknown extension may be critical;
//! - **every request**: the signed attributes' `messageDigest` must equal the body's digest and the
//!   SignerInfo's signature over those attributes must verify with the certificate's public key.
//!
//! A certificate that passed is remembered — only what the check needs: its key's algorithm (a
//! small enum) and the key's raw bytes (the `subjectPublicKey` BIT STRING: PKCS #1
//! `RSAPublicKey` or an uncompressed EC point), its validity window, keyed by the SHA-256 of its
//! DER (which is also the fingerprint enrollments are bound to). The cache is bounded
//! ([`SignerCache::new`]'s capacity, [`SIGNER_CACHE_DEFAULT_CAPACITY`] in the server), least
//! recently used first out (two generations: an entry not used during a whole generation is
//! dropped; a dropped certificate is checked again on its next use). A cached certificate is used
//! only inside its validity window.
//!
//! The fast check verifies only keys and algorithms `ring` checks exactly as OpenSSL does: RSA
//! keys of 2,048 to 8,192 bits (odd modulus, odd exponent from 3 to 2³³ − 1) with SHA-1 (message
//! signatures only), SHA-256, SHA-384 or SHA-512, and ECDSA keys on P-256 or P-384 (uncompressed
//! points) with SHA-256 or SHA-384. Anything else — no signed attributes, several certificates or
//! signers, a subject-key-identifier signer, a smaller RSA key, ECDSA with SHA-1 or SHA-512,
//! another curve or a compressed point, BER, an issuer name encoded differently from the CA's
//! subject, an unknown critical extension — goes to OpenSSL's full check
//! ([`crate::verify_detached`]), which decides; a certificate it accepts is remembered only when
//! its key is one the fast check can use. The fast check refuses only what the full check
//! refuses too, and accepts only what it accepts (the `mdm_signature` fuzz target compares the
//! two verdicts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cms::content_info::CmsVersion;
use cms::signed_data::{
    DigestAlgorithmIdentifiers, EncapsulatedContentInfo, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Encode, Tag, TagNumber, Tagged};
use openssl::x509::X509;
use ring::digest;
use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest, Sha256};
use x509_cert::ext::pkix::KeyUsage;
use x509_cert::ext::Extension;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;

use crate::asn1::{der_err, is_context, oid, strip_leading_zeros, tlvs, Tlv};
use crate::error::{PkiError, Result};
use crate::scep::Digest as Hash;
use crate::signing::{decode_signature, verify_detached};
use crate::time::{asn1_to_unix, now_unix};

/// Default bound: certificates kept at once (one per enrolled device that talks to this server).
/// An entry is a key algorithm, the key's raw bytes (about 270 for RSA-2048, 65 for P-256), two
/// times and its 32-byte key; docs/BENCHMARKS.md bounds what 10,000 entries cost.
pub const SIGNER_CACHE_DEFAULT_CAPACITY: usize = 100_000;

const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const ECDSA_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Certificate extensions the first-contact check understands when they are critical (RFC 5280
/// §4.2: basic constraints, key usage, extended key usage, subject alternative name). Another
/// critical extension sends the request to OpenSSL's full check.
const UNDERSTOOD_CRITICAL: [ObjectIdentifier; 4] = [
    ObjectIdentifier::new_unwrap("2.5.29.19"),
    ObjectIdentifier::new_unwrap("2.5.29.15"),
    ObjectIdentifier::new_unwrap("2.5.29.37"),
    ObjectIdentifier::new_unwrap("2.5.29.17"),
];
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

/// A signer whose signature verified: the hex SHA-256 of its certificate's DER (what
/// enrollments are bound to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSigner {
    pub sha256: String,
}

/// `data`'s digest, computed with `ring`. The fast check's digests are the SCEP codec's set
/// (`scep::Digest`, imported as `Hash`: SHA-1 and SHA-2), read from their OIDs by its one
/// `from_oid`.
fn ring_digest(hash: Hash, data: &[u8]) -> digest::Digest {
    let alg = match hash {
        Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
    };
    digest::digest(alg, data)
}

/// The kind of a public key the fast check verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyAlg {
    /// RSA, 2,048 to 8,192 bits, PKCS #1 v1.5 signatures.
    Rsa,
    /// ECDSA on P-256.
    EcP256,
    /// ECDSA on P-384.
    EcP384,
}

/// A public key as the fast check keeps it: its kind and the `subjectPublicKey` bytes (PKCS #1
/// `RSAPublicKey` DER, or the uncompressed EC point). Shared, so a cache hit copies no key.
#[derive(Clone)]
struct FastKey {
    alg: KeyAlg,
    bytes: Arc<[u8]>,
}

impl FastKey {
    /// The key of `spki`, if it is one `ring` verifies exactly as OpenSSL does; `None` leaves
    /// the certificate to the full check.
    fn of_spki(spki: &SubjectPublicKeyInfoOwned) -> Option<FastKey> {
        let bytes = spki.subject_public_key.as_bytes()?;
        let params = spki.algorithm.parameters.as_ref();
        let alg = if spki.algorithm.oid == oid::RSA_ENCRYPTION {
            if !params.is_none_or(|p| p.tag() == Tag::Null && p.value().is_empty()) {
                return None;
            }
            rsa_key_fits_ring(bytes).then_some(KeyAlg::Rsa)?
        } else if spki.algorithm.oid == EC_PUBLIC_KEY {
            let curve = params?.decode_as::<ObjectIdentifier>().ok()?;
            let (alg, len) = match curve {
                c if c == P256 => (KeyAlg::EcP256, 65),
                c if c == P384 => (KeyAlg::EcP384, 97),
                _ => return None,
            };
            // Uncompressed points only (`ring` reads no other form).
            (bytes.len() == len && bytes.first() == Some(&4)).then_some(alg)?
        } else {
            return None;
        };
        Some(FastKey {
            alg,
            bytes: bytes.into(),
        })
    }

    /// The key of a certificate's DER, if the fast check can use it.
    fn of_certificate(der: &[u8]) -> Option<FastKey> {
        let cert = Certificate::from_der(der).ok()?;
        FastKey::of_spki(&cert.tbs_certificate.subject_public_key_info)
    }

    fn is_rsa(&self) -> bool {
        self.alg == KeyAlg::Rsa
    }

    /// The `ring` algorithm checking this key's signatures over `hash` digests; `None` when
    /// `ring` has none (ECDSA with SHA-1 or SHA-512).
    fn algorithm(&self, hash: Hash) -> Option<&'static dyn VerificationAlgorithm> {
        Some(match (self.alg, hash) {
            (KeyAlg::Rsa, Hash::Sha1) => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            (KeyAlg::Rsa, Hash::Sha256) => &sig::RSA_PKCS1_2048_8192_SHA256,
            (KeyAlg::Rsa, Hash::Sha384) => &sig::RSA_PKCS1_2048_8192_SHA384,
            (KeyAlg::Rsa, Hash::Sha512) => &sig::RSA_PKCS1_2048_8192_SHA512,
            (KeyAlg::EcP256, Hash::Sha256) => &sig::ECDSA_P256_SHA256_ASN1,
            (KeyAlg::EcP256, Hash::Sha384) => &sig::ECDSA_P256_SHA384_ASN1,
            (KeyAlg::EcP384, Hash::Sha256) => &sig::ECDSA_P384_SHA256_ASN1,
            (KeyAlg::EcP384, Hash::Sha384) => &sig::ECDSA_P384_SHA384_ASN1,
            _ => return None,
        })
    }

    /// Whether `signature` over `message` verifies with this key.
    fn verifies(
        &self,
        alg: &'static dyn VerificationAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        UnparsedPublicKey::new(alg, &*self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

/// Whether a PKCS #1 `RSAPublicKey` is one `ring` checks the way OpenSSL does: strict DER, a
/// modulus of 2,048 to 8,192 bits that is odd, an odd exponent from 3 to 2³³ − 1 (`ring`'s bounds;
/// OpenSSL accepts these too, and decides every other key itself).
fn rsa_key_fits_ring(bytes: &[u8]) -> bool {
    let Ok([seq]) = <[Tlv<'_>; 1]>::try_from(tlvs(bytes).unwrap_or_default()) else {
        return false;
    };
    if seq.tag() != Tag::Sequence {
        return false;
    }
    let Ok([n, e]) = <[Tlv<'_>; 2]>::try_from(tlvs(seq.value()).unwrap_or_default()) else {
        return false;
    };
    let (Ok(n), Ok(e)) = (n.decode_as::<UintRef>(), e.decode_as::<UintRef>()) else {
        return false;
    };
    let (n, e) = (n.as_bytes(), e.as_bytes());
    let bits = match n.first() {
        Some(&top) if top != 0 => n.len() * 8 - top.leading_zeros() as usize,
        _ => return false,
    };
    let odd = |v: &[u8]| v.last().is_some_and(|b| b & 1 == 1);
    let exponent = match e {
        [] => 0,
        e if e.len() <= 5 && e[0] != 0 => e.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)),
        _ => return false,
    };
    (2048..=8192).contains(&bits) && odd(n) && odd(e) && (3..(1 << 33)).contains(&exponent)
}

/// What the cache keeps per certificate: exactly what the per-request check needs.
struct Entry {
    key: FastKey,
    not_before: i64,
    not_after: i64,
}

/// The bounded map: two generations of at most `half` entries each. A hit in the old generation
/// moves the entry to the young one; when the young one is full it becomes the old one and the
/// old one is dropped. So an entry survives as long as it is used at least once per generation
/// (least recently used out, approximately), and at most `2 × half` entries are kept.
struct Generations {
    young: HashMap<[u8; 32], Entry>,
    old: HashMap<[u8; 32], Entry>,
    half: usize,
}

impl Generations {
    fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn make_room(&mut self) {
        if self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
    }

    fn get(&mut self, id: &[u8; 32]) -> Option<&Entry> {
        if !self.young.contains_key(id) {
            let e = self.old.remove(id)?;
            self.make_room();
            self.young.insert(*id, e);
        }
        self.young.get(id)
    }

    fn insert(&mut self, id: [u8; 32], e: Entry) {
        self.old.remove(&id);
        if !self.young.contains_key(&id) {
            self.make_room();
        }
        self.young.insert(id, e);
    }

    fn remove(&mut self, id: &[u8; 32]) {
        self.young.remove(id);
        self.old.remove(id);
    }
}

/// The CA as the first-contact check needs it, read once.
struct FastIssuer {
    subject_der: Vec<u8>,
    key: FastKey,
    not_before: i64,
    not_after: i64,
}

/// Verifies `Mdm-Signature` headers against one CA, remembering certificates that passed. Cheap
/// to share (`&self` everywhere, one short lock per request).
pub struct SignerCache {
    ca: X509,
    fast: Option<FastIssuer>,
    entries: Mutex<Generations>,
    hits: AtomicU64,
    full_checks: AtomicU64,
}

/// The parts of a detached SignedData the check needs, read without decoding anything with
/// OpenSSL. The certificate is kept as its bytes: a cached signer needs only their digest, and
/// first contact parses them ([`SignerCache::check_certificate`]).
struct DetachedParts<'a> {
    cert_der: &'a [u8],
    /// The certificate's `TBSCertificate` as it was signed.
    tbs_der: &'a [u8],
    /// The SignerInfo's `digestAlgorithm`.
    hash: Hash,
    signature_oid: ObjectIdentifier,
    /// The signed attributes as the `SET OF` that was signed.
    signed_attrs_der: Vec<u8>,
    message_digest: Vec<u8>,
    signature: Vec<u8>,
}

/// The tag of `[0]` around a ContentInfo's content and a SignedData's certificates.
const CONSTRUCTED_0: Tag = Tag::ContextSpecific {
    constructed: true,
    number: TagNumber::N0,
};

/// The only element of `value`, if it holds exactly one.
fn only(value: &[u8]) -> Result<Option<Tlv<'_>>> {
    Ok(<[Tlv<'_>; 1]>::try_from(tlvs(value)?).ok().map(|[one]| one))
}

/// A certificate's issuer Name (as encoded) and serial number octets, read from its
/// `TBSCertificate` without parsing the rest.
fn issuer_and_serial<'a>(tbs: &Tlv<'a>) -> Result<Option<(&'a [u8], &'a [u8])>> {
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, … }
    let fields = tlvs(tbs.value())?;
    let skip = usize::from(fields.first().is_some_and(|f| is_context(f, 0)));
    let (Some(serial), Some(issuer)) = (fields.get(skip), fields.get(skip + 2)) else {
        return Ok(None);
    };
    if serial.tag() != Tag::Integer || issuer.tag() != Tag::Sequence {
        return Ok(None);
    }
    Ok(Some((issuer.der(), serial.value())))
}

/// Reads the detached SignedData in `der`; `Ok(None)` when it is a shape the fast path leaves to
/// the full check.
///
/// The fast path decides only what the full check would decide the same way, so besides the
/// parts it uses it requires what OpenSSL's CMS verification requires of the parts it skips:
/// every part decodes as strict DER (the certificate too: its bytes are parsed at first contact,
/// and a cached certificate is one whose identical bytes were), the encapsulated content type is
/// `id-data` (the signed `contentType` must equal it), `digestAlgorithms` names exactly the
/// signer's digest (OpenSSL sets up every listed digest and refuses one it does not know), and
/// `contentType` and `messageDigest` appear once each among the signed attributes.
fn parse_detached(der: &[u8]) -> Result<Option<DetachedParts<'_>>> {
    // ContentInfo ::= SEQUENCE { contentType, [0] EXPLICIT content }
    let Some(ci) = only(der)?.filter(|t| t.tag() == Tag::Sequence) else {
        return Ok(None);
    };
    let ci = tlvs(ci.value())?;
    let [content_type, content] = ci.as_slice() else {
        return Ok(None);
    };
    if content_type.decode_as::<ObjectIdentifier>()? != oid::ID_SIGNED_DATA
        || content.tag() != CONSTRUCTED_0
    {
        return Ok(None);
    }
    let Some(signed_data) = only(content.value())?.filter(|t| t.tag() == Tag::Sequence) else {
        return Ok(None);
    };
    // version, digestAlgorithms, encapContentInfo, [0] certificates, signerInfos (no [1] crls)
    let parts = tlvs(signed_data.value())?;
    let [version, digests, encap, certs, signer_infos_tlv] = parts.as_slice() else {
        return Ok(None);
    };
    let (Ok(_), Ok(digests), Ok(encap), Ok(SignerInfos(signer_infos))) = (
        version.decode_as::<CmsVersion>(),
        digests.decode_as::<DigestAlgorithmIdentifiers>(),
        encap.decode_as::<EncapsulatedContentInfo>(),
        signer_infos_tlv.decode_as::<SignerInfos>(),
    ) else {
        return Ok(None);
    };
    if encap.econtent_type != oid::ID_DATA || encap.econtent.is_some() {
        return Ok(None); // attached content, or another type: the full check says which
    }
    if certs.tag() != CONSTRUCTED_0 {
        return Ok(None);
    }
    let Some(cert) = only(certs.value())?.filter(|t| t.tag() == Tag::Sequence) else {
        return Ok(None);
    };
    // Certificate ::= SEQUENCE { tbsCertificate, … }: the part the CA signed, as received.
    let Some(tbs) = tlvs(cert.value())?.into_iter().next() else {
        return Ok(None);
    };
    let Ok([si]) = <[SignerInfo; 1]>::try_from(signer_infos.into_vec()) else {
        return Ok(None);
    };
    // The signer must be the included certificate (issuer and serial number).
    let (SignerIdentifier::IssuerAndSerialNumber(sid), Some((issuer, serial))) =
        (&si.sid, issuer_and_serial(&tbs)?)
    else {
        return Ok(None);
    };
    if sid.issuer.to_der().map_err(der_err)? != issuer
        || strip_leading_zeros(sid.serial_number.as_bytes()) != strip_leading_zeros(serial)
    {
        return Ok(None);
    }
    let Some(hash) = Hash::from_oid(&si.digest_alg.oid) else {
        return Ok(None);
    };
    if digests
        .as_slice()
        .iter()
        .map(|a| a.oid)
        .ne([si.digest_alg.oid])
    {
        return Ok(None);
    }
    let Some(attrs) = &si.signed_attrs else {
        return Ok(None);
    };
    let mut content_type_ok = None;
    let mut message_digest = None;
    for attr in attrs.iter() {
        let values = attr.values.as_slice();
        if attr.oid == oid::CONTENT_TYPE {
            if content_type_ok.is_some() {
                return Ok(None);
            }
            content_type_ok = Some(matches!(values,
                [v] if v.decode_as::<ObjectIdentifier>().ok() == Some(oid::ID_DATA)));
        } else if attr.oid == oid::MESSAGE_DIGEST {
            match values {
                [v] if v.tag() == Tag::OctetString && message_digest.is_none() => {
                    message_digest = Some(v.value().to_vec())
                }
                _ => return Ok(None),
            }
        }
    }
    let Some(message_digest) = message_digest.filter(|_| content_type_ok == Some(true)) else {
        return Ok(None);
    };
    // The signature covers the signed attributes as received, re-tagged as a SET (RFC 5652
    // §5.4): the decoded set above is sorted, while OpenSSL keeps the received order
    // (`CMS_Attributes_Verify` is a SET OF marked to keep its order).
    let Some(si_der) = only(signer_infos_tlv.value())? else {
        return Ok(None);
    };
    let Some(attrs_der) = tlvs(si_der.value())?
        .into_iter()
        .find(|f| is_context(f, 0))
        .map(|f| f.der())
    else {
        return Ok(None);
    };
    let mut signed_attrs_der = attrs_der.to_vec();
    match signed_attrs_der.first_mut() {
        // [0] IMPLICIT, constructed (0xA0) → SET (0x31); the length stays.
        Some(tag) if *tag == 0xA0 => *tag = 0x31,
        _ => return Ok(None),
    }
    Ok(Some(DetachedParts {
        cert_der: cert.der(),
        tbs_der: tbs.der(),
        hash,
        signature_oid: si.signature_algorithm.oid,
        signed_attrs_der,
        message_digest,
        signature: si.signature.as_bytes().to_vec(),
    }))
}

/// Whether a SignerInfo's `signatureAlgorithm` names a signature the key can make: RSA
/// (`rsaEncryption` or an RSA-with-digest OID) for an RSA key, ECDSA for an EC key. The digest
/// is the SignerInfo's `digestAlgorithm`, as OpenSSL takes it; another pairing goes to the full
/// check.
fn key_fits(key: &FastKey, signature_oid: &ObjectIdentifier) -> bool {
    if key.is_rsa() {
        [
            oid::RSA_ENCRYPTION,
            SHA256_WITH_RSA,
            SHA384_WITH_RSA,
            SHA512_WITH_RSA,
            SHA1_WITH_RSA,
        ]
        .contains(signature_oid)
    } else {
        [ECDSA_SHA256, ECDSA_SHA384, ECDSA_SHA512, ECDSA_SHA1].contains(signature_oid)
    }
}

/// The digest and key kind (RSA: `true`) of a certificate signature algorithm the first-contact
/// check knows (RSA PKCS #1 v1.5 or ECDSA with SHA-2); `None` sends the request to the full
/// check.
fn certificate_signature(alg: &x509_cert::spki::AlgorithmIdentifierOwned) -> Option<(Hash, bool)> {
    let (hash, rsa) = match alg.oid {
        o if o == SHA256_WITH_RSA => (Hash::Sha256, true),
        o if o == SHA384_WITH_RSA => (Hash::Sha384, true),
        o if o == SHA512_WITH_RSA => (Hash::Sha512, true),
        o if o == ECDSA_SHA256 => (Hash::Sha256, false),
        o if o == ECDSA_SHA384 => (Hash::Sha384, false),
        o if o == ECDSA_SHA512 => (Hash::Sha512, false),
        _ => return None,
    };
    // RSA names NULL parameters, ECDSA none (RFC 4055 §5, RFC 5758 §3.2).
    let params_ok = if rsa {
        alg.parameters
            .as_ref()
            .is_none_or(|p| p.tag() == Tag::Null && p.value().is_empty())
    } else {
        alg.parameters.is_none()
    };
    params_ok.then_some((hash, rsa))
}

/// The signing rule on an identity certificate's extensions, shared by the full check and the
/// cache: a key usage extension, when present, must allow `digitalSignature` (RFC 5280 §4.2.1.3:
/// the bit for verifying digital signatures other than on certificates and CRLs — the CMS
/// signature of every MDM request). A malformed key usage extension is refused.
pub(crate) fn check_signing_usage(extensions: &[Extension]) -> Result<()> {
    for ext in extensions.iter().filter(|e| e.extn_id == KEY_USAGE) {
        let usage = KeyUsage::from_der(ext.extn_value.as_bytes()).map_err(|e| {
            PkiError::Verify(format!("the certificate's key usage is malformed: {e}"))
        })?;
        if !usage.digital_signature() {
            return Err(PkiError::Verify(
                "the certificate's key usage does not allow digital signatures".into(),
            ));
        }
    }
    Ok(())
}

/// Whether `now` lies in `[not_before, not_after]` (both ends included, as OpenSSL compares).
fn valid_at(now: i64, not_before: i64, not_after: i64) -> bool {
    not_before <= now && now <= not_after
}

impl SignerCache {
    /// A cache trusting `ca`, keeping at most `capacity` certificates (at least two). If the
    /// CA's own name, validity or key cannot be read, or its key is not one the fast check can
    /// use (an RSA key under 2,048 bits, a curve other than P-256 and P-384), every request goes
    /// to OpenSSL's full check.
    pub fn new(ca: X509, capacity: usize) -> Self {
        let fast = (|| -> Result<Option<FastIssuer>> {
            let Some(key) = FastKey::of_certificate(&ca.to_der()?) else {
                return Ok(None);
            };
            Ok(Some(FastIssuer {
                subject_der: ca.subject_name().to_der()?,
                key,
                not_before: asn1_to_unix(ca.not_before())?,
                not_after: asn1_to_unix(ca.not_after())?,
            }))
        })()
        .ok()
        .flatten();
        Self {
            ca,
            fast,
            entries: Mutex::new(Generations::new(capacity.max(2))),
            hits: AtomicU64::new(0),
            full_checks: AtomicU64::new(0),
        }
    }

    /// Certificates currently cached.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Signatures verified with a cached certificate so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Requests decided by OpenSSL's full check (shapes the fast check leaves to it) so far.
    pub fn full_checks(&self) -> u64 {
        self.full_checks.load(Ordering::Relaxed)
    }

    /// Verifies a detached CMS signature (the `Mdm-Signature` header, base64 or DER) over the
    /// exact `body`, with the same outcome as [`crate::verify_detached`]: the signer must be
    /// issued by the CA and valid now, may sign (key usage), and the signature must cover `body`.
    pub fn verify(&self, sig_b64_or_der: &[u8], body: &[u8]) -> Result<VerifiedSigner> {
        let der = decode_signature(sig_b64_or_der)?;
        let Some(parts) = parse_detached(&der)? else {
            return self.full_check(&der, body);
        };
        let id: [u8; 32] = Sha256::digest(parts.cert_der).into();
        let now = now_unix()?;
        let (key, validity) = match self.lookup(&id, now)? {
            Some(key) => (key, None),
            None => match self.check_certificate(&parts, now)? {
                Some((key, validity)) => (key, Some(validity)),
                None => return self.full_check(&der, body),
            },
        };
        let algorithm = key_fits(&key, &parts.signature_oid)
            .then(|| key.algorithm(parts.hash))
            .flatten();
        let Some(algorithm) = algorithm else {
            return self.full_check(&der, body);
        };
        if ring_digest(parts.hash, body).as_ref() != parts.message_digest.as_slice() {
            return Err(PkiError::Verify(
                "the body does not match the signature".into(),
            ));
        }
        if !key.verifies(algorithm, &parts.signed_attrs_der, &parts.signature) {
            return Err(PkiError::Verify("the signature does not verify".into()));
        }
        match validity {
            None => {
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            Some((not_before, not_after)) => self.insert(
                id,
                Entry {
                    key,
                    not_before,
                    not_after,
                },
            )?,
        }
        Ok(VerifiedSigner {
            sha256: hex::encode(id),
        })
    }

    /// First contact: the certificate parsed and given its own checks (see the module doc); its
    /// key and validity (not before, not after). `Ok(None)` for a shape left to the full check;
    /// an error for a certificate the full check refuses too.
    fn check_certificate(
        &self,
        parts: &DetachedParts<'_>,
        now: i64,
    ) -> Result<Option<(FastKey, (i64, i64))>> {
        let Some(issuer) = &self.fast else {
            return Ok(None);
        };
        let Ok(cert) = Certificate::from_der(parts.cert_der) else {
            return Ok(None);
        };
        let tbs = &cert.tbs_certificate;
        if tbs.issuer.to_der().map_err(der_err)? != issuer.subject_der
            || cert.signature_algorithm != tbs.signature
            || tbs.issuer_unique_id.is_some()
            || tbs.subject_unique_id.is_some()
        {
            return Ok(None);
        }
        let Some((hash, rsa)) = certificate_signature(&cert.signature_algorithm) else {
            return Ok(None);
        };
        let Some(signature) = cert.signature.as_bytes() else {
            return Ok(None);
        };
        let extensions = tbs.extensions.as_deref().unwrap_or_default();
        if extensions
            .iter()
            .any(|e| e.critical && !UNDERSTOOD_CRITICAL.contains(&e.extn_id))
        {
            return Ok(None);
        }
        let Some(key) = FastKey::of_spki(&tbs.subject_public_key_info) else {
            return Ok(None);
        };
        if issuer.key.is_rsa() != rsa {
            return Err(PkiError::Verify(
                "the certificate is not signed by our CA".into(),
            ));
        }
        // ECDSA with SHA-512 has no `ring` algorithm: the full check decides.
        let Some(algorithm) = issuer.key.algorithm(hash) else {
            return Ok(None);
        };
        if !issuer.key.verifies(algorithm, parts.tbs_der, signature) {
            return Err(PkiError::Verify(
                "the certificate is not signed by our CA".into(),
            ));
        }
        let (not_before, not_after) = (
            crate::certinfo::unix_of(tbs.validity.not_before)?,
            crate::certinfo::unix_of(tbs.validity.not_after)?,
        );
        if !valid_at(now, not_before, not_after) {
            return Err(PkiError::Verify("the certificate is not valid now".into()));
        }
        if !valid_at(now, issuer.not_before, issuer.not_after) {
            return Err(PkiError::Verify(
                "our CA certificate is not valid now".into(),
            ));
        }
        check_signing_usage(extensions)?;
        Ok(Some((key, (not_before, not_after))))
    }

    /// OpenSSL's CMS verification, for shapes the fast check leaves to it; a certificate it
    /// accepts is remembered like any other when the fast check can use its key.
    fn full_check(&self, der: &[u8], body: &[u8]) -> Result<VerifiedSigner> {
        self.full_checks.fetch_add(1, Ordering::Relaxed);
        let signer = verify_detached(der, body, &self.ca)?;
        let signer_der = signer.to_der()?;
        let id: [u8; 32] = Sha256::digest(&signer_der).into();
        if let Some(key) = FastKey::of_certificate(&signer_der) {
            self.insert(
                id,
                Entry {
                    key,
                    not_before: asn1_to_unix(signer.not_before())?,
                    not_after: asn1_to_unix(signer.not_after())?,
                },
            )?;
        }
        Ok(VerifiedSigner {
            sha256: hex::encode(id),
        })
    }

    /// The cached key if the certificate is cached and valid now; an entry outside its validity
    /// is dropped (the first-contact check then decides).
    fn lookup(&self, id: &[u8; 32], now: i64) -> Result<Option<FastKey>> {
        let mut map = self
            .entries
            .lock()
            .map_err(|_| PkiError::Verify("signer cache poisoned".into()))?;
        match map.get(id) {
            Some(e) if valid_at(now, e.not_before, e.not_after) => Ok(Some(e.key.clone())),
            Some(_) => {
                map.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Remembers a certificate that passed.
    fn insert(&self, id: [u8; 32], entry: Entry) -> Result<()> {
        self.entries
            .lock()
            .map_err(|_| PkiError::Verify("signer cache poisoned".into()))?
            .insert(id, entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sign_cms, sign_detached, Ca};
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    use der::asn1::{BitString, OctetString, SetOfVec};
    use der::Any;
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNumContext;
    use openssl::ec::{EcGroup, EcKey, PointConversionForm};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{HasPublic, Id, PKey, PKeyRef, Private};
    use openssl::rsa::Rsa;
    use openssl::sign::Signer;
    use openssl::x509::extension::{BasicConstraints, KeyUsage as KeyUsageExt};
    use x509_cert::spki::AlgorithmIdentifierOwned;

    fn leaf(ca: &Ca) -> (X509, PKey<Private>) {
        let i = ca
            .issue_tls_server(&["device.example.test".into()], &[])
            .unwrap();
        (
            X509::from_der(&i.cert_der).unwrap(),
            PKey::private_key_from_pem(i.key_pem.as_bytes()).unwrap(),
        )
    }

    /// A certificate signed by `ca`'s key, valid from `from` to `until` seconds from now, with
    /// the key usage `usage` builds (none when `None`).
    fn custom_leaf(
        ca: &Ca,
        from: i64,
        until: i64,
        usage: Option<fn(&mut KeyUsageExt) -> &mut KeyUsageExt>,
    ) -> (X509, PKey<Private>) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "custom device").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&crate::ca::random_serial().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(ca.certificate().subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = now_unix().unwrap();
        b.set_not_before(&Asn1Time::from_unix(now + from).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + until).unwrap())
            .unwrap();
        if let Some(usage) = usage {
            let mut ku = KeyUsageExt::new();
            b.append_extension(usage(ku.critical()).build().unwrap())
                .unwrap();
        }
        b.sign(ca.private_key(), MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    const BODY: &[u8] = b"<plist><dict><key>Status</key><string>Idle</string></dict></plist>";

    fn fingerprint(cert: &X509) -> String {
        crate::sha256_fingerprint(&cert.to_der().unwrap())
    }

    #[test]
    fn first_contact_is_decided_without_openssl_cms_and_matches_the_full_check() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        for (cert, key) in [
            leaf(&ca),
            custom_leaf(&ca, -60, 86_400, None),
            custom_leaf(&ca, -60, 86_400, Some(KeyUsageExt::digital_signature)),
        ] {
            let sig = sign_detached(&cert, &key, BODY).unwrap();
            let full = verify_detached(&sig, BODY, ca.certificate()).unwrap();
            assert_eq!(full.to_der().unwrap(), cert.to_der().unwrap());
            let v = cache.verify(&sig, BODY).unwrap();
            assert_eq!(v.sha256, fingerprint(&cert));
        }
        assert_eq!(cache.full_checks(), 0, "decided by the fast check");
        assert_eq!(cache.hits(), 0);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_cached_signer_is_still_checked_against_the_body_and_signature() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let (cert, key) = leaf(&ca);
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        // First use: the certificate is checked, then cached.
        let v = cache.verify(&sig, BODY).unwrap();
        assert_eq!(v.sha256, fingerprint(&cert));
        assert_eq!(cache.len(), 1);
        // Cached path: the same answer, base64 too.
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &sig);
        assert_eq!(cache.hits(), 0);
        assert_eq!(cache.verify(b64.as_bytes(), BODY).unwrap(), v);
        let sig2 = sign_detached(&cert, &key, b"<plist/>").unwrap();
        assert!(cache.verify(&sig2, b"<plist/>").is_ok());
        assert_eq!(cache.hits(), 2);
        assert_eq!(cache.len(), 1);
        // Wrong body.
        assert!(cache.verify(&sig, b"<plist/>").is_err());
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert!(cache.verify(&sig, &changed).is_err());
        // A damaged signature value (its last byte) with the right body.
        let mut bad = sig.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x01;
        assert!(cache.verify(&bad, BODY).is_err());
        // Another key presenting the cached certificate: the signature does not verify.
        let (_, other_key) = leaf(&ca);
        let forged = sign_detached(&cert, &other_key, BODY);
        if let Ok(forged) = forged {
            assert!(cache.verify(&forged, BODY).is_err());
        }
        // Attached content is still refused.
        let att = sign_cms(&cert, &key, &[], BODY).unwrap();
        assert!(cache.verify(&att, BODY).is_err());
        assert!(cache.verify(b"!!!", BODY).is_err());
        assert!(cache.verify(&[0x30, 0x00], BODY).is_err());
        assert_eq!(cache.hits(), 2);
    }

    /// A tampered message on first contact (nothing cached yet): another body, a damaged
    /// signature, a changed byte inside the certificate it carries — all refused, by the full
    /// check too, and nothing is cached.
    #[test]
    fn a_tampered_message_is_refused_on_first_contact() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let (cert, key) = leaf(&ca);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        let mut damaged = sig.clone();
        let n = damaged.len();
        damaged[n - 1] ^= 0x01;
        // The certificate's subject (CN=device.example.test) with one letter changed.
        let cn = b"device.example.test";
        let at = sig.windows(cn.len()).position(|w| w == cn).unwrap();
        let mut renamed = sig.clone();
        renamed[at] = b'e';
        let mut changed_body = BODY.to_vec();
        changed_body[20] ^= 1;
        for (what, sig, body) in [
            ("another body", sig.as_slice(), changed_body.as_slice()),
            ("a damaged signature", damaged.as_slice(), BODY),
            ("a changed certificate", renamed.as_slice(), BODY),
        ] {
            let cache = SignerCache::new(ca.certificate().clone(), 10);
            assert!(cache.verify(sig, body).is_err(), "{what}");
            assert!(
                verify_detached(sig, body, ca.certificate()).is_err(),
                "{what}"
            );
            assert!(cache.is_empty(), "{what}");
        }
    }

    /// Parts no signature covers, changed: the cache, already holding the signer, leaves them to
    /// the full check and so gives its verdict (found by the `mdm_signature` fuzz target: an
    /// unknown digest in `digestAlgorithms`, which the full check refuses, passed the fast path).
    #[test]
    fn unsigned_parts_the_fast_path_does_not_read_go_to_the_full_check() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let (cert, key) = leaf(&ca);
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        cache.verify(&sig, BODY).unwrap();
        let sha256 = [6, 9, 0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 1];
        let id_data = [6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 7, 1];
        for (what, changed, full_accepts) in [
            // The first SHA-256 is the SignedData's digestAlgorithms entry: an unknown digest.
            (
                "digestAlgorithms",
                patched(&sig, &sha256, &[6, 9, 0x60, 0x86, 0x48, 1, 0x45]),
                false,
            ),
            // The first id-data is the encapsulated content type: id-digestedData instead
            // (OpenSSL does not compare it with the signed contentType).
            (
                "eContentType",
                patched(
                    &sig,
                    &id_data,
                    &[6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 7, 5],
                ),
                true,
            ),
        ] {
            let full = verify_detached(&changed, BODY, ca.certificate());
            assert_eq!(full.is_ok(), full_accepts, "{what}: {:?}", full.err());
            let (hits, full_checks) = (cache.hits(), cache.full_checks());
            assert_eq!(cache.verify(&changed, BODY).is_ok(), full_accepts, "{what}");
            assert_eq!(cache.hits(), hits, "{what}: not decided by the fast path");
            assert_eq!(cache.full_checks(), full_checks + 1, "{what}");
        }
        // The unchanged signature still takes the fast path.
        let hits = cache.hits();
        assert!(cache.verify(&sig, BODY).is_ok());
        assert_eq!(cache.hits(), hits + 1);
    }

    /// `der` with the first occurrence of `from` replaced by `to` (same length).
    fn patched(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = der
            .windows(from.len())
            .position(|w| w == from)
            .expect("the pattern occurs");
        let mut out = der.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    }

    #[test]
    fn a_certificate_not_from_the_ca_is_refused_and_never_cached() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let other = Ca::generate("Other", "").unwrap();
        let (cert, key) = leaf(&other);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        for _ in 0..3 {
            assert!(cache.verify(&sig, BODY).is_err());
        }
        // A CA with our CA's very name: its certificates name our CA as issuer, but our CA's
        // key did not sign them. Decided by the fast check, as the full check decides.
        let namesake = Ca::generate("MDM CA", "Lanyard").unwrap();
        assert_eq!(
            namesake.certificate().subject_name().to_der().unwrap(),
            ca.certificate().subject_name().to_der().unwrap()
        );
        let (cert, key) = leaf(&namesake);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        assert!(verify_detached(&sig, BODY, ca.certificate()).is_err());
        let full_checks = cache.full_checks();
        match cache.verify(&sig, BODY) {
            Err(PkiError::Verify(m)) => assert!(m.contains("not signed by our CA"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(cache.full_checks(), full_checks);
        // The namesake CA's own (self-signed) certificate.
        let sig = sign_detached(namesake.certificate(), namesake.private_key(), BODY).unwrap();
        assert!(cache.verify(&sig, BODY).is_err());
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        for (what, from, until) in [
            ("expired", -2 * 86_400, -86_400),
            ("not yet valid", 86_400, 2 * 86_400),
        ] {
            let (cert, key) = custom_leaf(&ca, from, until, None);
            let sig = sign_detached(&cert, &key, BODY).unwrap();
            assert!(
                verify_detached(&sig, BODY, ca.certificate()).is_err(),
                "{what}"
            );
            match cache.verify(&sig, BODY) {
                Err(PkiError::Verify(m)) => assert!(m.contains("not valid now"), "{what}: {m}"),
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
        }
        assert!(cache.is_empty());
        assert_eq!(cache.full_checks(), 0);
    }

    #[test]
    fn a_key_usage_without_digital_signature_is_refused() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let (cert, key) = custom_leaf(&ca, -60, 86_400, Some(KeyUsageExt::key_encipherment));
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        for verdict in [
            cache.verify(&sig, BODY).map(|_| ()),
            verify_detached(&sig, BODY, ca.certificate()).map(|_| ()),
        ] {
            match verdict {
                Err(PkiError::Verify(m)) => assert!(m.contains("digital signatures"), "{m}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 2);
        for _ in 0..4 {
            let (cert, key) = leaf(&ca);
            let sig = sign_detached(&cert, &key, BODY).unwrap();
            assert!(cache.verify(&sig, BODY).is_ok());
            assert!(cache.verify(&sig, BODY).is_ok());
            assert!(cache.len() <= 2);
        }
        assert_eq!(cache.len(), 2);

        // One device used between every newcomer stays cached; the newcomers come and go.
        let cache = SignerCache::new(ca.certificate().clone(), 4);
        let (cert, key) = leaf(&ca);
        let busy = sign_detached(&cert, &key, BODY).unwrap();
        cache.verify(&busy, BODY).unwrap();
        for i in 0..10 {
            let (cert, key) = leaf(&ca);
            cache
                .verify(&sign_detached(&cert, &key, BODY).unwrap(), BODY)
                .unwrap();
            let hits = cache.hits();
            cache.verify(&busy, BODY).unwrap();
            assert_eq!(
                cache.hits(),
                hits + 1,
                "round {i}: the busy device was dropped"
            );
            assert!(cache.len() <= 4);
        }
    }

    #[test]
    fn validity_is_honoured_for_cached_certificates() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let (cert, key) = custom_leaf(&ca, -2 * 86_400, -86_400, None);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        assert!(cache.verify(&sig, BODY).is_err());
        assert!(cache.is_empty());
        // Even if it had been cached while valid, an entry past its notAfter is not used.
        let id: [u8; 32] = Sha256::digest(cert.to_der().unwrap()).into();
        cache
            .insert(
                id,
                Entry {
                    key: FastKey::of_certificate(&cert.to_der().unwrap()).unwrap(),
                    not_before: asn1_to_unix(cert.not_before()).unwrap(),
                    not_after: asn1_to_unix(cert.not_after()).unwrap(),
                },
            )
            .unwrap();
        assert_eq!(cache.len(), 1);
        assert!(cache.verify(&sig, BODY).is_err());
        assert!(cache.is_empty());
        assert_eq!(cache.hits(), 0);
    }

    fn ec_key(curve: Nid) -> PKey<Private> {
        let group = EcGroup::from_curve_name(curve).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn rsa_key(bits: u32) -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
    }

    /// A certificate for `subject_key`, valid from a minute ago for a day, issued by `issuer`
    /// (`None`: self-signed, a CA) and signed by `signer` with `md`.
    fn certificate<T: HasPublic>(
        subject_key: &PKeyRef<T>,
        issuer: Option<&X509>,
        signer: &PKeyRef<Private>,
        md: MessageDigest,
    ) -> X509 {
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        let cn = if issuer.is_some() {
            "device"
        } else {
            "test CA"
        };
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&crate::ca::random_serial().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        match issuer {
            Some(ca) => b.set_issuer_name(ca.subject_name()).unwrap(),
            None => {
                b.set_issuer_name(&name).unwrap();
                b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                    .unwrap();
                b.append_extension(
                    KeyUsageExt::new()
                        .critical()
                        .key_cert_sign()
                        .crl_sign()
                        .build()
                        .unwrap(),
                )
                .unwrap();
            }
        }
        b.set_pubkey(subject_key).unwrap();
        let now = now_unix().unwrap();
        b.set_not_before(&Asn1Time::from_unix(now - 60).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + 86_400).unwrap())
            .unwrap();
        b.sign(signer, md).unwrap();
        b.build()
    }

    /// `sig`, a detached SignedData over `body`, signed again by `key` with the digest `md`:
    /// its digest algorithms, `messageDigest` attribute, signature algorithm and signature
    /// replaced (OpenSSL's CMS signing always picks SHA-256).
    fn resign(sig: &[u8], body: &[u8], key: &PKeyRef<Private>, md: MessageDigest) -> Vec<u8> {
        let digest_oid = match md.type_() {
            Nid::SHA1 => oid::SHA1,
            Nid::SHA256 => oid::SHA256,
            Nid::SHA384 => oid::SHA384,
            Nid::SHA512 => oid::SHA512,
            other => panic!("no OID for {other:?}"),
        };
        let signature_oid = match (key.id(), md.type_()) {
            (Id::RSA, _) => oid::RSA_ENCRYPTION,
            (_, Nid::SHA1) => ECDSA_SHA1,
            (_, Nid::SHA256) => ECDSA_SHA256,
            (_, Nid::SHA384) => ECDSA_SHA384,
            _ => ECDSA_SHA512,
        };
        let alg = |oid| AlgorithmIdentifierOwned {
            oid,
            parameters: None,
        };
        let ci = ContentInfo::from_der(sig).unwrap();
        let mut sd: SignedData = ci.content.decode_as().unwrap();
        sd.digest_algorithms = SetOfVec::try_from(vec![alg(digest_oid)]).unwrap();
        let mut si = sd.signer_infos.0.into_vec().remove(0);
        si.digest_alg = alg(digest_oid);
        let mut attrs = si.signed_attrs.take().unwrap().into_vec();
        for attr in attrs.iter_mut().filter(|a| a.oid == oid::MESSAGE_DIGEST) {
            let digest = openssl::hash::hash(md, body).unwrap();
            let value = Any::encode_from(&OctetString::new(digest.to_vec()).unwrap()).unwrap();
            attr.values = SetOfVec::try_from(vec![value]).unwrap();
        }
        let attrs = SetOfVec::try_from(attrs).unwrap();
        let mut signer = Signer::new(md, key).unwrap();
        signer.update(&attrs.to_der().unwrap()).unwrap();
        si.signature = OctetString::new(signer.sign_to_vec().unwrap()).unwrap();
        si.signed_attrs = Some(attrs);
        si.signature_algorithm = alg(signature_oid);
        sd.signer_infos.0 = SetOfVec::try_from(vec![si]).unwrap();
        ContentInfo {
            content_type: ci.content_type,
            content: Any::encode_from(&sd).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    /// The fast check's verdict on `sig` equals the full check's, and whether the fast check
    /// decided it itself (`true`) or left it to the full check.
    fn same_verdict(cache: &SignerCache, ca: &X509, sig: &[u8], body: &[u8], what: &str) -> bool {
        let full = verify_detached(sig, body, ca);
        let full_checks = cache.full_checks();
        let fast = cache.verify(sig, body);
        assert_eq!(
            fast.as_ref().map(|v| v.sha256.clone()).ok(),
            full.as_ref().map(fingerprint).ok(),
            "{what}: the cache says {fast:?}, the full check {:?}",
            full.as_ref().map(|_| ())
        );
        cache.full_checks() == full_checks
    }

    /// Signed attributes out of DER order: the signature covers them as received (OpenSSL keeps
    /// their order), so a message signed over that order verifies and one signed over the
    /// sorted order does not, on first contact and cached, with the full check's verdict.
    #[test]
    fn signed_attributes_count_in_the_order_received() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let key = rsa_key(2048);
        let cert = certificate(
            &key,
            Some(ca.certificate()),
            ca.private_key(),
            MessageDigest::sha256(),
        );
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        // The signed attributes' TLV and the attributes inside it.
        let parts = parse_detached(&sig).unwrap().unwrap();
        let set = parts.signed_attrs_der.clone();
        let at = sig
            .windows(set.len() - 1)
            .position(|w| w == &set[1..])
            .unwrap()
            - 1;
        assert_eq!(sig[at], 0xA0);
        let inner = tlvs(&set[set.len() - tlvs(&set).unwrap()[0].value().len()..]).unwrap();
        assert!(
            inner.len() >= 2,
            "at least two signed attributes to reorder"
        );
        let mut reordered: Vec<u8> = Vec::new();
        for attr in inner.iter().rev() {
            reordered.extend_from_slice(attr.der());
        }
        let header = set.len() - reordered.len();
        let mut unsorted = sig.clone();
        unsorted[at + header..at + set.len()].copy_from_slice(&reordered);
        // Signed over the sorted order, sent reordered: refused by both checks.
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        assert!(verify_detached(&unsorted, BODY, ca.certificate()).is_err());
        same_verdict(
            &cache,
            ca.certificate(),
            &unsorted,
            BODY,
            "sorted signature",
        );
        // Signed over the order sent (an RSA signature keeps its length): accepted by both,
        // and decided by the fast check, first and cached.
        let mut signed = set[..header].to_vec();
        signed.extend_from_slice(&reordered);
        let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
        signer.update(&signed).unwrap();
        let signature = signer.sign_to_vec().unwrap();
        let old = &parts.signature;
        let pos = unsorted
            .windows(old.len())
            .position(|w| w == old.as_slice())
            .unwrap();
        unsorted[pos..pos + old.len()].copy_from_slice(&signature);
        assert!(verify_detached(&unsorted, BODY, ca.certificate()).is_ok());
        for round in ["first", "second"] {
            assert!(
                same_verdict(&cache, ca.certificate(), &unsorted, BODY, round),
                "{round}: decided by the fast check"
            );
        }
    }

    /// Device keys and message digests: `ring` checks the pairs it has an algorithm for (RSA of
    /// 2,048 bits or more with SHA-1 or SHA-2, ECDSA P-256/P-384 with SHA-256/SHA-384); the full
    /// check decides the others, and the verdicts agree, on a good and a damaged signature.
    #[test]
    fn ring_checks_the_pairs_it_knows_and_the_full_check_decides_the_rest() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let mds = [
            ("SHA-1", MessageDigest::sha1()),
            ("SHA-256", MessageDigest::sha256()),
            ("SHA-384", MessageDigest::sha384()),
            ("SHA-512", MessageDigest::sha512()),
        ];
        let keys = [
            (
                "P-256",
                ec_key(Nid::X9_62_PRIME256V1),
                [false, true, true, false],
            ),
            ("P-384", ec_key(Nid::SECP384R1), [false, true, true, false]),
            ("P-521", ec_key(Nid::SECP521R1), [false; 4]),
            ("RSA-1024", rsa_key(1024), [false; 4]),
            ("RSA-2048", rsa_key(2048), [true; 4]),
            ("RSA-3072", rsa_key(3072), [true; 4]),
        ];
        for (key_name, key, by_ring) in &keys {
            let cert = certificate(
                key,
                Some(ca.certificate()),
                ca.private_key(),
                MessageDigest::sha256(),
            );
            let cache = SignerCache::new(ca.certificate().clone(), 10);
            let fast_key = FastKey::of_certificate(&cert.to_der().unwrap());
            assert_eq!(fast_key.is_some(), by_ring[1], "{key_name}");
            for ((md_name, md), by_ring) in mds.iter().zip(by_ring) {
                let what = format!("{key_name} with {md_name}");
                let sig = resign(&sign_detached(&cert, key, BODY).unwrap(), BODY, key, *md);
                assert!(
                    verify_detached(&sig, BODY, ca.certificate()).is_ok(),
                    "{what}"
                );
                // Twice: the first contact, then with the certificate cached when its key is
                // one `ring` verifies.
                for round in ["first", "second"] {
                    let decided = same_verdict(&cache, ca.certificate(), &sig, BODY, &what);
                    assert_eq!(decided, *by_ring, "{what}, {round} request: who decided");
                }
                let mut damaged = sig.clone();
                let n = damaged.len();
                damaged[n - 3] ^= 0x10;
                let decided = same_verdict(&cache, ca.certificate(), &damaged, BODY, &what);
                assert_eq!(decided, *by_ring, "{what}, damaged: who decided");
                assert!(cache.verify(&damaged, BODY).is_err(), "{what}: damaged");
                assert!(
                    cache.verify(&sig, b"<plist/>").is_err(),
                    "{what}: another body"
                );
            }
            assert_eq!(cache.len(), usize::from(fast_key.is_some()), "{key_name}");
        }
    }

    /// The CA's signature over the certificate: `ring` checks RSA CAs with SHA-256/384/512 and
    /// ECDSA CAs (P-256, P-384) with SHA-256/384; ECDSA with SHA-512, SHA-1 and a small RSA CA
    /// go to the full check. A certificate from another CA of the same kind is refused either way.
    #[test]
    fn certificates_from_ec_and_rsa_cas_with_other_digests() {
        let device = ec_key(Nid::X9_62_PRIME256V1);
        let cas = [
            ("RSA-2048 CA", rsa_key(2048), [false, true, true, true]),
            (
                "P-256 CA",
                ec_key(Nid::X9_62_PRIME256V1),
                [false, true, true, false],
            ),
            (
                "P-384 CA",
                ec_key(Nid::SECP384R1),
                [false, true, true, false],
            ),
            ("RSA-1024 CA", rsa_key(1024), [false; 4]),
        ];
        let mds = [
            ("SHA-1", MessageDigest::sha1()),
            ("SHA-256", MessageDigest::sha256()),
            ("SHA-384", MessageDigest::sha384()),
            ("SHA-512", MessageDigest::sha512()),
        ];
        for (ca_name, ca_key, by_ring) in &cas {
            let ca = certificate(ca_key, None, ca_key, MessageDigest::sha256());
            let impostor_key = match ca_key.id() {
                Id::RSA => rsa_key(2048),
                _ => ec_key(Nid::X9_62_PRIME256V1),
            };
            for ((md_name, md), by_ring) in mds.iter().zip(by_ring) {
                let what = format!("{ca_name}, certificate signed with {md_name}");
                let cache = SignerCache::new(ca.clone(), 10);
                let cert = certificate(&device, Some(&ca), ca_key, *md);
                let sig = sign_detached(&cert, &device, BODY).unwrap();
                let decided = same_verdict(&cache, &ca, &sig, BODY, &what);
                assert_eq!(decided, *by_ring, "{what}: who decided");
                // Signed by another key in the CA's name.
                let forged = certificate(&device, Some(&ca), &impostor_key, *md);
                let sig = sign_detached(&forged, &device, BODY).unwrap();
                same_verdict(&cache, &ca, &sig, BODY, &what);
                assert!(verify_detached(&sig, BODY, &ca).is_err(), "{what}");
            }
        }
    }

    /// A P-256 key written as a compressed point (OpenSSL reads it, `ring` does not): the full
    /// check decides every request, and the certificate is not cached.
    #[test]
    fn a_compressed_ec_point_goes_to_the_full_check() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let key = ec_key(Nid::X9_62_PRIME256V1);
        let ec = key.ec_key().unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let point = ec
            .public_key()
            .to_bytes(ec.group(), PointConversionForm::COMPRESSED, &mut ctx)
            .unwrap();
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: EC_PUBLIC_KEY,
                parameters: Some(Any::encode_from(&P256).unwrap()),
            },
            subject_public_key: BitString::from_bytes(&point).unwrap(),
        };
        let public = PKey::public_key_from_der(&spki.to_der().unwrap()).unwrap();
        let cert = certificate(
            &public,
            Some(ca.certificate()),
            ca.private_key(),
            MessageDigest::sha256(),
        );
        let parsed = Certificate::from_der(&cert.to_der().unwrap()).unwrap();
        let written = parsed
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key;
        assert_eq!(
            written.raw_bytes(),
            point.as_slice(),
            "the certificate holds the compressed point"
        );
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        for _ in 0..2 {
            assert!(!same_verdict(
                &cache,
                ca.certificate(),
                &sig,
                BODY,
                "compressed"
            ));
        }
        assert!(cache.verify(&sig, b"<plist/>").is_err());
        assert!(cache.is_empty());
    }

    /// The RSA keys the fast check hands to `ring`: those `ring` reads and checks as OpenSSL
    /// does; every other one is left to the full check.
    #[test]
    fn rsa_keys_outside_rings_bounds_are_left_to_the_full_check() {
        fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            out.extend(
                der::Length::try_from(value.len())
                    .unwrap()
                    .to_der()
                    .unwrap(),
            );
            out.extend_from_slice(value);
            out
        }
        fn key(n: &[u8], e: &[u8]) -> Vec<u8> {
            tlv(0x30, &[tlv(2, n), tlv(2, e)].concat())
        }
        // A 2,048-bit odd modulus, written as DER writes it (a leading zero: the top bit is set).
        let n: Vec<u8> = [0].into_iter().chain([0xc5; 255]).chain([0x01]).collect();
        let f4 = [1, 0, 1];
        assert!(rsa_key_fits_ring(&key(&n, &f4)));
        assert!(rsa_key_fits_ring(&key(&n, &[3])));
        assert!(rsa_key_fits_ring(&key(&n, &[1, 0xff, 0xff, 0xff, 0xff])));
        for (what, bytes) in [
            ("e = 1", key(&n, &[1])),
            ("an even e", key(&n, &[1, 0, 0])),
            ("e = 2^33 + 1", key(&n, &[2, 0, 0, 0, 1])),
            ("a zero-padded e", key(&n, &[0, 1, 0, 1])),
            ("a negative e", key(&n, &[0x81])),
            ("an even modulus", key(&[&n[..256], &[0x02]].concat(), &f4)),
            (
                "a 2,041-bit modulus",
                key(&[&[0x01][..], &n[2..]].concat(), &f4),
            ),
            (
                "a 2,047-bit modulus",
                key(&[&[0x7f][..], &n[2..]].concat(), &f4),
            ),
            ("a zero-padded modulus", key(&[&[0][..], &n].concat(), &f4)),
            ("a modulus without its sign byte", key(&n[1..], &f4)),
            ("trailing bytes", [key(&n, &f4), vec![0]].concat()),
            ("no exponent", tlv(0x30, &tlv(2, &n))),
            (
                "an exponent that is not an INTEGER",
                tlv(0x30, &[tlv(2, &n), tlv(4, &f4)].concat()),
            ),
            (
                "not a SEQUENCE",
                tlv(0x31, &[tlv(2, &n), tlv(2, &f4)].concat()),
            ),
            ("not DER at all", vec![0x30, 0x80, 0, 0]),
        ] {
            assert!(!rsa_key_fits_ring(&bytes), "{what}");
        }
        let big: Vec<u8> = [0].into_iter().chain([0xc5; 1024]).chain([0x01]).collect();
        assert!(!rsa_key_fits_ring(&key(&big, &f4)), "an 8,200-bit modulus");
        let max: Vec<u8> = [0].into_iter().chain([0xc5; 1023]).chain([0x01]).collect();
        assert!(rsa_key_fits_ring(&key(&max, &f4)), "an 8,192-bit modulus");
    }
}
