//! The MDM push certificate: Apple issues it through the Push Certificates Portal, it
//! authenticates Lanyard to APNs as the TLS client certificate, and its subject's UID names
//! the APNs topic (`com.apple.mgmt.External.<uuid>`) that enrolled devices listen on.

use std::fmt;

use lanyard_pki::{CertInfo, CertView, NameAttribute};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::error::ApnsError;

/// Every MDM topic starts with this (Apple's MDM payload documentation says so of `Topic`).
pub const MDM_TOPIC_PREFIX: &str = "com.apple.mgmt.";

/// The certificate extension that marks an APNs certificate for the development (sandbox)
/// service. Source: Apple's WWDR Certification Practice Statement lists
/// `1.2.840.113635.100.6.3.1` (development) and `1.2.840.113635.100.6.3.2` (production) as
/// the Apple Push Notification service extensions; many APNs providers read them the same
/// way. UNCONFIRMED for MDM push certificates in particular: Apple's MDM pages do not say
/// whether the Push Certificates Portal marks them, so an unmarked certificate is accepted.
pub const APNS_DEVELOPMENT_OID: &str = "1.2.840.113635.100.6.3.1";
/// The production APNs extension; see [`APNS_DEVELOPMENT_OID`].
pub const APNS_PRODUCTION_OID: &str = "1.2.840.113635.100.6.3.2";

/// Which APNs service a certificate is marked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApnsEnvironment {
    Production,
    Development,
}

impl fmt::Display for ApnsEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApnsEnvironment::Production => "production",
            ApnsEnvironment::Development => "development (sandbox)",
        })
    }
}

/// The APNs service the certificate is marked for (see [`APNS_DEVELOPMENT_OID`]); `None`
/// when it carries neither marker. A certificate marked for both counts as production.
fn environment_of(cert: &CertView) -> Result<Option<ApnsEnvironment>, ApnsError> {
    let has = |oid| {
        cert.has_extension(oid)
            .map_err(|e| ApnsError::Pem(e.to_string()))
    };
    Ok(if has(APNS_PRODUCTION_OID)? {
        Some(ApnsEnvironment::Production)
    } else if has(APNS_DEVELOPMENT_OID)? {
        Some(ApnsEnvironment::Development)
    } else {
        None
    })
}

/// What a push certificate says of itself: its MDM topic, summary and APNs marker, read
/// from the certificate alone — without its key and without OpenSSL, so that showing the
/// stored certificate (start-up log, expiry gauge, API, portal) neither opens the key nor
/// loads OpenSSL. Its validity is not checked here: an expired certificate still shows.
#[derive(Debug, Clone)]
pub struct PushCertificateSummary {
    topic: String,
    info: CertInfo,
    environment: Option<ApnsEnvironment>,
}

impl PushCertificateSummary {
    /// The summary of a push certificate given as PEM (the first certificate). Refuses a
    /// certificate whose subject has no UID holding an MDM topic.
    pub fn from_pem(cert_pem: &[u8]) -> Result<PushCertificateSummary, ApnsError> {
        let view = CertView::from_pem(cert_pem).map_err(|e| ApnsError::Pem(e.to_string()))?;
        Self::of(&view)
    }

    fn of(view: &CertView) -> Result<PushCertificateSummary, ApnsError> {
        let info = view.info().map_err(|e| ApnsError::Pem(e.to_string()))?;
        // The subject's UID (0.9.2342.19200300.100.1.1) names the topic.
        let topic = view
            .subject_values(NameAttribute::UserId)
            .into_iter()
            .next()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApnsError::MissingTopic {
                subject: info.subject.clone(),
            })?;
        if !is_mdm_topic(&topic) {
            return Err(ApnsError::NotMdmTopic { topic });
        }
        Ok(PushCertificateSummary {
            topic,
            environment: environment_of(view)?,
            info,
        })
    }

    /// The APNs topic from the subject's UID, e.g. `com.apple.mgmt.External.<uuid>`. The
    /// enrollment profile's `Topic` must be exactly this.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The APNs service the certificate is marked for, if it is marked.
    pub fn environment(&self) -> Option<ApnsEnvironment> {
        self.environment
    }

    /// End of validity, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.info.not_after
    }

    /// Whole days until the certificate expires (negative once it has).
    pub fn days_left(&self) -> i64 {
        (self.info.not_after - now_unix()).div_euclid(86_400)
    }

    /// The subject, as `SHORT=value` pairs (e.g. `UID=com.apple.mgmt.External.…, CN=APSP:…`).
    pub fn subject(&self) -> &str {
        &self.info.subject
    }

    /// The issuer, same format as [`PushCertificateSummary::subject`].
    pub fn issuer(&self) -> &str {
        &self.info.issuer
    }

    /// SHA-256 of the certificate DER, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.info.sha256
    }
}

/// An MDM push certificate with its private key, checked on load: the key matches, the
/// subject's UID holds an MDM topic, and the certificate is within its validity.
///
/// Held as DER (the certificate and its chain) and the key as rustls takes it: loading the
/// stored certificate to push reads it without OpenSSL (only a PKCS#12 upload is read with
/// it). `Debug` shows the subject, topic and expiry, never the key.
pub struct PushCertificate {
    chain_der: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    summary: PushCertificateSummary,
}

impl Clone for PushCertificate {
    fn clone(&self) -> Self {
        PushCertificate {
            chain_der: self.chain_der.clone(),
            key: self.key.clone_key(),
            summary: self.summary.clone(),
        }
    }
}

impl fmt::Debug for PushCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushCertificate")
            .field("topic", &self.summary.topic)
            .field("subject", &self.summary.info.subject)
            .field("not_after", &self.summary.info.not_after)
            .field("sha256", &self.summary.info.sha256)
            .field("key", &"<redacted>")
            .finish()
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl PushCertificate {
    /// Load from a PKCS#12 (`.p12`) file as exported from Keychain Access, with its password.
    /// Extra certificates in the file are sent as the chain.
    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<PushCertificate, ApnsError> {
        // macOS Keychain has long exported `.p12` files in RC2-40; `read_pkcs12` reads those
        // with OpenSSL 3's legacy provider.
        let parsed = lanyard_pki::read_pkcs12(der, password)
            .map_err(|e| ApnsError::Pkcs12(e.to_string()))?;
        let cert = parsed.cert.ok_or(ApnsError::Missing("certificate"))?;
        let key = parsed.key.ok_or(ApnsError::Missing("private key"))?;
        let pem = |e: lanyard_pki::ErrorStack| ApnsError::Pkcs12(e.to_string());
        let chain_der = std::iter::once(&cert)
            .chain(parsed.chain.iter())
            .map(|c| c.to_der().map(CertificateDer::from).map_err(pem))
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.private_key_to_pkcs8().map_err(pem)?,
        ));
        Self::checked(chain_der, key)
    }

    /// Load from PEM: the certificate (optionally followed by its chain) and the private key
    /// (PKCS#8, or PKCS#1 RSA or SEC1 EC; unencrypted). Both arguments may be the same
    /// combined PEM file holding the certificate and the key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<PushCertificate, ApnsError> {
        let chain_der = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApnsError::Pem(format!("certificate: {e}")))?;
        if chain_der.is_empty() {
            return Err(ApnsError::Missing("certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => ApnsError::Missing("private key"),
            e => ApnsError::Pem(format!("private key: {e}")),
        })?;
        Self::checked(chain_der, key)
    }

    fn checked(
        chain_der: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<PushCertificate, ApnsError> {
        let leaf = chain_der.first().ok_or(ApnsError::Missing("certificate"))?;
        let view = CertView::from_der(leaf).map_err(|e| ApnsError::Pem(e.to_string()))?;
        // The key's public half against the certificate's (what rustls's own `keys_match`
        // compares), with the signing key rustls will use for the TLS handshake.
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| ApnsError::Pem(format!("private key: {e}")))?;
        let ours = view
            .public_key_info_der()
            .map_err(|e| ApnsError::Pem(e.to_string()))?;
        if signer.public_key().as_deref() != Some(ours.as_slice()) {
            return Err(ApnsError::KeyMismatch);
        }
        let summary = PushCertificateSummary::of(&view)?;
        let now = now_unix();
        if summary.info.not_after <= now {
            return Err(ApnsError::Expired {
                not_after: summary.info.not_after,
            });
        }
        if summary.info.not_before > now {
            return Err(ApnsError::NotYetValid {
                not_before: summary.info.not_before,
            });
        }
        Ok(PushCertificate {
            chain_der,
            key,
            summary,
        })
    }

    /// What the certificate says of itself (topic, subject, expiry, APNs marker).
    pub fn summary(&self) -> &PushCertificateSummary {
        &self.summary
    }

    /// The APNs topic; see [`PushCertificateSummary::topic`].
    pub fn topic(&self) -> &str {
        self.summary.topic()
    }

    /// Whole days until the certificate expires; see [`PushCertificateSummary::days_left`].
    pub fn days_left(&self) -> i64 {
        self.summary.days_left()
    }

    /// The certificate, PEM (public).
    pub fn cert_pem(&self) -> Result<String, ApnsError> {
        let leaf = self
            .chain_der
            .first()
            .ok_or(ApnsError::Missing("certificate"))?;
        Ok(lanyard_pki::certificate_der_to_pem(leaf))
    }

    /// The certificate and then its chain, DER, for the TLS handshake.
    pub(crate) fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        self.chain_der.clone()
    }

    /// The private key, for the TLS handshake. Secret.
    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn is_mdm_topic(topic: &str) -> bool {
    topic
        .strip_prefix(MDM_TOPIC_PREFIX)
        .is_some_and(|rest| !rest.is_empty())
        && topic
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdm_topic_shape() {
        assert!(is_mdm_topic(
            "com.apple.mgmt.External.5b4b0c4e-49e3-4a4a-8e4e-1f3c0a9b7d21"
        ));
        assert!(is_mdm_topic("com.apple.mgmt.XServer.abc"));
        assert!(!is_mdm_topic("com.apple.mgmt."));
        assert!(!is_mdm_topic("com.example.app"));
        assert!(!is_mdm_topic("com.apple.mgmt.External.a b"));
        assert!(!is_mdm_topic("com.apple.mgmt.External.a\nb"));
    }

    fn issued_with_uid(uid: Option<&str>) -> lanyard_pki::IssuedCert {
        let mut subject = Vec::new();
        if let Some(uid) = uid {
            subject.push((NameAttribute::UserId, uid));
        }
        subject.push((NameAttribute::CommonName, "APSP:test"));
        let name = lanyard_pki::name(&subject).unwrap();
        lanyard_pki::self_signed_rsa_named(&name, 30).unwrap()
    }

    fn cert_with_uid(uid: Option<&str>) -> Vec<u8> {
        issued_with_uid(uid).cert_pem.into_bytes()
    }

    #[test]
    fn loaded_from_pem_for_tls_without_openssl() {
        let topic = "com.apple.mgmt.External.5b4b0c4e-49e3-4a4a-8e4e-1f3c0a9b7d21";
        let issued = issued_with_uid(Some(topic));
        let cert = PushCertificate::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap();
        assert_eq!(cert.topic(), topic);
        // The stored form is the certificate as it came; the TLS chain is its DER.
        assert_eq!(cert.cert_pem().unwrap(), issued.cert_pem);
        assert_eq!(cert.chain_der()[0].as_ref(), issued.cert_der.as_slice());
        // Both halves in one file, as `push-cert upload --cert` takes them.
        let combined = format!("{}{}", issued.cert_pem, issued.key_pem);
        assert!(PushCertificate::from_pem(combined.as_bytes(), combined.as_bytes()).is_ok());
        // Another key, no key, no certificate.
        let other = issued_with_uid(Some(topic));
        assert!(matches!(
            PushCertificate::from_pem(issued.cert_pem.as_bytes(), other.key_pem.as_bytes()),
            Err(ApnsError::KeyMismatch)
        ));
        assert!(matches!(
            PushCertificate::from_pem(issued.cert_pem.as_bytes(), issued.cert_pem.as_bytes()),
            Err(ApnsError::Missing("private key"))
        ));
        assert!(matches!(
            PushCertificate::from_pem(issued.key_pem.as_bytes(), issued.key_pem.as_bytes()),
            Err(ApnsError::Missing("certificate"))
        ));
    }

    #[test]
    fn summary_of_pem_without_the_key() {
        let topic = "com.apple.mgmt.External.5b4b0c4e-49e3-4a4a-8e4e-1f3c0a9b7d21";
        let pem = cert_with_uid(Some(topic));
        let summary = PushCertificateSummary::from_pem(&pem).unwrap();
        assert_eq!(summary.topic(), topic);
        assert_eq!(summary.subject(), format!("UID={topic}, CN=APSP:test"));
        assert_eq!(summary.environment(), None);
        assert!((28..=30).contains(&summary.days_left()), "{summary:?}");
        // The same facts as the OpenSSL reading of the whole certificate with its key.
        let cert = lanyard_pki::certificates_from_pem(&pem).unwrap().remove(0);
        assert_eq!(
            summary.sha256(),
            lanyard_pki::sha256_fingerprint(&cert.to_der().unwrap())
        );
        assert!(matches!(
            PushCertificateSummary::from_pem(&cert_with_uid(None)),
            Err(ApnsError::MissingTopic { .. })
        ));
        assert!(matches!(
            PushCertificateSummary::from_pem(&cert_with_uid(Some("  "))),
            Err(ApnsError::MissingTopic { .. })
        ));
        assert!(matches!(
            PushCertificateSummary::from_pem(&cert_with_uid(Some("com.example.app"))),
            Err(ApnsError::NotMdmTopic { .. })
        ));
        assert!(PushCertificateSummary::from_pem(b"not a certificate").is_err());
    }
}
