//! [`SignerCache`]: the `Mdm-Signature` check with the signer's certificate chain verified once
//! per certificate instead of on every request.
//!
//! The expensive part of [`crate::verify_detached`] is not the signature mathematics but decoding
//! the signer certificate (twice: once here, once inside OpenSSL's CMS code) and building its chain
//! against the CA. A device signs every request with the same identity certificate, so the cache
//! keeps, per certificate (keyed by the SHA-256 of its DER), the decoded public key and the
//! validity window of a certificate that once passed the FULL check. On a hit only the signature
//! over the body is verified: the signed attributes' `messageDigest` must equal the body's digest
//! and the SignerInfo's signature over those attributes must verify with the cached key.
//!
//! Rules: a certificate enters the cache only after [`crate::verify_detached`] accepted it
//! (chain to the CA, validity now); a cached certificate is used only inside its validity window
//! (outside it the entry is dropped and the full check decides); anything the fast path does not
//! understand (no signed attributes, several certificates or signers, a subject-key-identifier
//! signer, an unusual algorithm, BER) goes through the full check. The cache is bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::asn1::ObjectIdentifier;
use der::{Any, Decode, Encode, Reader, SliceReader, Tag, Tagged};
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;
use openssl::x509::X509;
use sha2::{Digest, Sha256};

use crate::asn1::oid;
use crate::error::{PkiError, Result};
use crate::signing::{decode_signature, verify_detached};
use crate::time::{asn1_to_unix, now_unix};

/// Default bound: certificates kept at once (one per enrolled device that talks to this server).
pub const SIGNER_CACHE_DEFAULT_CAPACITY: usize = 100_000;

const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const ECDSA_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");

/// A signer whose signature verified: its certificate and the hex SHA-256 of the certificate's
/// DER (what enrollments are bound to).
#[derive(Clone)]
pub struct VerifiedSigner {
    pub cert: X509,
    pub sha256: String,
}

struct Entry {
    cert: X509,
    key: PKey<Public>,
    sha256: String,
    not_before: i64,
    not_after: i64,
}

/// Verifies `Mdm-Signature` headers against one CA, remembering certificates whose chain
/// already verified. Cheap to share (`&self` everywhere, one short lock per request).
pub struct SignerCache {
    ca: X509,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    hits: AtomicU64,
}

/// The parts of a detached SignedData the fast path needs, read without decoding any
/// certificate with OpenSSL.
struct DetachedParts {
    cert_der: Vec<u8>,
    digest: MessageDigest,
    signature_oid: ObjectIdentifier,
    /// The signed attributes re-tagged as the `SET OF` that was signed.
    signed_attrs_der: Vec<u8>,
    message_digest: Vec<u8>,
    signature: Vec<u8>,
}

fn der_err(e: der::Error) -> PkiError {
    PkiError::Der(e.to_string())
}

fn tlvs(value: &[u8]) -> Result<Vec<Any>> {
    let mut reader = SliceReader::new(value).map_err(der_err)?;
    let mut out = Vec::new();
    while !reader.is_finished() {
        out.push(Any::decode(&mut reader).map_err(der_err)?);
    }
    Ok(out)
}

fn is_context(any: &Any, number: u8) -> bool {
    matches!(any.tag(), Tag::ContextSpecific { number: n, .. } if n.value() == number)
}

fn first_oid(seq: &Any) -> Result<ObjectIdentifier> {
    let parts = tlvs(seq.value())?;
    let first = parts
        .first()
        .ok_or_else(|| PkiError::Der("empty AlgorithmIdentifier".into()))?;
    first.decode_as::<ObjectIdentifier>().map_err(der_err)
}

fn digest_for(oid_: &ObjectIdentifier) -> Option<MessageDigest> {
    if *oid_ == oid::SHA256 {
        Some(MessageDigest::sha256())
    } else if *oid_ == oid::SHA384 {
        Some(MessageDigest::sha384())
    } else if *oid_ == oid::SHA512 {
        Some(MessageDigest::sha512())
    } else if *oid_ == oid::SHA1 {
        Some(MessageDigest::sha1())
    } else {
        None
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n..]
}

/// Reads the detached SignedData in `der`; `Ok(None)` when it is a shape the fast path leaves to
/// the full check.
///
/// The fast path decides only what the full check would decide the same way, so besides the
/// parts it uses it requires what OpenSSL's CMS verification requires of the parts it skips: the
/// whole SignedData decodes (strict DER), the encapsulated content type is `id-data` (the signed
/// `contentType` must equal it), `digestAlgorithms` names exactly the signer's digest (OpenSSL
/// sets up every listed digest and refuses one it does not know), and `contentType` and
/// `messageDigest` appear once each among the signed attributes.
fn parse_detached(der: &[u8]) -> Result<Option<DetachedParts>> {
    let Ok(ci) = ContentInfo::from_der(der) else {
        return Ok(None);
    };
    if ci.content_type != oid::ID_SIGNED_DATA || ci.content.tag() != Tag::Sequence {
        return Ok(None);
    }
    let Ok(signed_data) = ci.content.decode_as::<SignedData>() else {
        return Ok(None);
    };
    let encap = &signed_data.encap_content_info;
    if encap.econtent_type != oid::ID_DATA || encap.econtent.is_some() {
        return Ok(None);
    }
    // version, digestAlgorithms, encapContentInfo, [0] certificates, [1] crls, signerInfos
    let parts = tlvs(ci.content.value())?;
    let Some(encap) = parts.get(2) else {
        return Ok(None);
    };
    let encap_parts = tlvs(encap.value())?;
    if encap_parts.len() != 1 {
        return Ok(None); // attached content, or malformed: the full check says which
    }
    let mut certs = Vec::new();
    let mut signer_infos = Vec::new();
    for part in parts.iter().skip(3) {
        if is_context(part, 0) {
            certs = tlvs(part.value())?;
        } else if part.tag() == Tag::Set {
            signer_infos = tlvs(part.value())?;
        }
    }
    let ([cert], [si]) = (certs.as_slice(), signer_infos.as_slice()) else {
        return Ok(None);
    };
    let fields = tlvs(si.value())?;
    // version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm, signature, [1]…
    let (Some(sid), Some(digest_alg), Some(attrs), Some(sig_alg), Some(sig)) = (
        fields.get(1),
        fields.get(2),
        fields.get(3),
        fields.get(4),
        fields.get(5),
    ) else {
        return Ok(None);
    };
    if sid.tag() != Tag::Sequence || !is_context(attrs, 0) || sig.tag() != Tag::OctetString {
        return Ok(None);
    }
    // The signer must be the included certificate (issuer and serial number).
    let cert_der = cert.to_der().map_err(der_err)?;
    let Ok(parsed) = x509_cert::Certificate::from_der(&cert_der) else {
        return Ok(None);
    };
    let ias = tlvs(sid.value())?;
    let (Some(issuer), Some(serial)) = (ias.first(), ias.get(1)) else {
        return Ok(None);
    };
    let tbs = &parsed.tbs_certificate;
    if tbs.issuer.to_der().map_err(der_err)? != issuer.to_der().map_err(der_err)?
        || strip_leading_zeros(tbs.serial_number.as_bytes()) != strip_leading_zeros(serial.value())
    {
        return Ok(None);
    }
    let digest_oid = first_oid(digest_alg)?;
    let Some(digest) = digest_for(&digest_oid) else {
        return Ok(None);
    };
    let listed: Vec<ObjectIdentifier> = signed_data
        .digest_algorithms
        .iter()
        .map(|a| a.oid)
        .collect();
    if listed != [digest_oid] {
        return Ok(None);
    }
    let mut content_type_ok = None;
    let mut message_digest = None;
    for attr in tlvs(attrs.value())? {
        let kv = tlvs(attr.value())?;
        let (Some(attr_oid), Some(values)) = (kv.first(), kv.get(1)) else {
            return Ok(None);
        };
        let attr_oid: ObjectIdentifier = attr_oid.decode_as().map_err(der_err)?;
        let values = tlvs(values.value())?;
        if attr_oid == oid::CONTENT_TYPE {
            if content_type_ok.is_some() {
                return Ok(None);
            }
            content_type_ok = Some(matches!(values.as_slice(),
                [v] if v.decode_as::<ObjectIdentifier>().ok() == Some(oid::ID_DATA)));
        } else if attr_oid == oid::MESSAGE_DIGEST {
            match values.as_slice() {
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
    let signed_attrs_der = Any::new(Tag::Set, attrs.value())
        .map_err(der_err)?
        .to_der()
        .map_err(der_err)?;
    Ok(Some(DetachedParts {
        cert_der,
        digest,
        signature_oid: first_oid(sig_alg)?,
        signed_attrs_der,
        message_digest,
        signature: sig.value().to_vec(),
    }))
}

fn key_fits(key: &PKey<Public>, signature_oid: &ObjectIdentifier) -> bool {
    match key.id() {
        Id::RSA => [
            oid::RSA_ENCRYPTION,
            SHA256_WITH_RSA,
            SHA384_WITH_RSA,
            SHA512_WITH_RSA,
            SHA1_WITH_RSA,
        ]
        .contains(signature_oid),
        Id::EC => [ECDSA_SHA256, ECDSA_SHA384, ECDSA_SHA512, ECDSA_SHA1].contains(signature_oid),
        _ => false,
    }
}

impl SignerCache {
    /// A cache trusting `ca`, keeping at most `capacity` certificates (at least one).
    pub fn new(ca: X509, capacity: usize) -> Self {
        Self {
            ca,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
        }
    }

    /// Certificates currently cached.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Signatures verified with a cached certificate (without the chain check) so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies a detached CMS signature (the `Mdm-Signature` header, base64 or DER) over the
    /// exact `body`, with the same outcome as [`crate::verify_detached`]: the signer must chain to
    /// the CA and be valid now, and the signature must cover `body`.
    pub fn verify(&self, sig_b64_or_der: &[u8], body: &[u8]) -> Result<VerifiedSigner> {
        let der = decode_signature(sig_b64_or_der)?;
        if let Some(parts) = parse_detached(&der)? {
            let id: [u8; 32] = Sha256::digest(&parts.cert_der).into();
            if let Some((cert, key, sha256)) = self.lookup(&id)? {
                if key_fits(&key, &parts.signature_oid) {
                    if hash(parts.digest, body)?.as_ref() != parts.message_digest.as_slice() {
                        return Err(PkiError::Verify(
                            "the body does not match the signature".into(),
                        ));
                    }
                    let mut v = Verifier::new(parts.digest, &key)?;
                    v.update(&parts.signed_attrs_der)?;
                    if !v.verify(&parts.signature).unwrap_or(false) {
                        return Err(PkiError::Verify("the signature does not verify".into()));
                    }
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(VerifiedSigner { cert, sha256 });
                }
            }
        }
        let signer = verify_detached(&der, body, &self.ca)?;
        let cert_der = signer.to_der()?;
        let id: [u8; 32] = Sha256::digest(&cert_der).into();
        let sha256 = hex::encode(id);
        self.insert(id, &signer, &sha256)?;
        Ok(VerifiedSigner {
            cert: signer,
            sha256,
        })
    }

    /// The cached certificate, key and fingerprint if it is cached and valid now; an expired or
    /// not-yet-valid entry is dropped.
    fn lookup(&self, id: &[u8; 32]) -> Result<Option<(X509, PKey<Public>, String)>> {
        let now = now_unix()?;
        let mut map = self
            .entries
            .lock()
            .map_err(|_| PkiError::Verify("signer cache poisoned".into()))?;
        match map.get(id) {
            Some(e) if e.not_before <= now && now <= e.not_after => {
                Ok(Some((e.cert.clone(), e.key.clone(), e.sha256.clone())))
            }
            Some(_) => {
                map.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Remembers a certificate the full check accepted.
    fn insert(&self, id: [u8; 32], cert: &X509, sha256: &str) -> Result<()> {
        let entry = Entry {
            cert: cert.clone(),
            key: cert.public_key()?,
            sha256: sha256.to_string(),
            not_before: asn1_to_unix(cert.not_before())?,
            not_after: asn1_to_unix(cert.not_after())?,
        };
        let mut map = self
            .entries
            .lock()
            .map_err(|_| PkiError::Verify("signer cache poisoned".into()))?;
        if map.len() >= self.capacity && !map.contains_key(&id) {
            // Bounded: drop an arbitrary entry (it is re-verified in full on its next use).
            if let Some(old) = map.keys().next().copied() {
                map.remove(&old);
            }
        }
        map.insert(id, entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sign_cms, sign_detached, Ca};
    use openssl::pkey::Private;

    fn leaf(ca: &Ca) -> (X509, PKey<Private>) {
        let i = ca
            .issue_tls_server(&["device.example.test".into()], &[])
            .unwrap();
        (
            X509::from_der(&i.cert_der).unwrap(),
            PKey::private_key_from_pem(i.key_pem.as_bytes()).unwrap(),
        )
    }

    const BODY: &[u8] = b"<plist><dict><key>Status</key><string>Idle</string></dict></plist>";

    #[test]
    fn a_cached_signer_is_still_checked_against_the_body_and_signature() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let (cert, key) = leaf(&ca);
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        // First use: full check, then cached.
        let v = cache.verify(&sig, BODY).unwrap();
        assert_eq!(v.cert.to_der().unwrap(), cert.to_der().unwrap());
        assert_eq!(v.sha256, crate::sha256_fingerprint(&cert.to_der().unwrap()));
        assert_eq!(cache.len(), 1);
        // Cached path: the same answer, base64 too.
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &sig);
        assert_eq!(cache.hits(), 0);
        assert_eq!(cache.verify(b64.as_bytes(), BODY).unwrap().sha256, v.sha256);
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
            let hits = cache.hits();
            assert_eq!(cache.verify(&changed, BODY).is_ok(), full_accepts, "{what}");
            assert_eq!(cache.hits(), hits, "{what}: not decided by the fast path");
        }
        // The unchanged signature still takes the fast path.
        let hits = cache.hits();
        assert!(cache.verify(&sig, BODY).is_ok());
        assert_eq!(cache.hits(), hits + 1);
    }

    #[test]
    fn a_certificate_not_from_the_ca_is_never_cached() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let other = Ca::generate("Other", "").unwrap();
        let (cert, key) = leaf(&other);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        for _ in 0..3 {
            assert!(cache.verify(&sig, BODY).is_err());
        }
        // A self-signed certificate that merely claims the CA's name.
        let imposter = Ca::generate("MDM CA", "Lanyard").unwrap();
        let sig = sign_detached(imposter.certificate(), imposter.private_key(), BODY).unwrap();
        assert!(cache.verify(&sig, BODY).is_err());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
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
    }

    /// A certificate from the CA whose validity ended yesterday.
    fn expired_leaf(ca: &Ca) -> (X509, PKey<Private>) {
        use openssl::asn1::Asn1Time;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "expired device").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&crate::ca::random_serial().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(ca.certificate().subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = now_unix().unwrap();
        b.set_not_before(&Asn1Time::from_unix(now - 2 * 86_400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now - 86_400).unwrap())
            .unwrap();
        b.sign(ca.private_key(), MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    #[test]
    fn validity_is_honoured_for_cached_certificates() {
        let ca = Ca::generate("MDM CA", "Lanyard").unwrap();
        let cache = SignerCache::new(ca.certificate().clone(), 10);
        let (cert, key) = expired_leaf(&ca);
        let sig = sign_detached(&cert, &key, BODY).unwrap();
        assert!(cache.verify(&sig, BODY).is_err());
        assert!(cache.is_empty());
        // Even if it had been cached while valid, an entry past its notAfter is not used.
        let der = cert.to_der().unwrap();
        let id: [u8; 32] = Sha256::digest(&der).into();
        cache.insert(id, &cert, &hex::encode(id)).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(cache.verify(&sig, BODY).is_err());
        assert!(cache.is_empty());
    }
}
