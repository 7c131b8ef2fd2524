//! Errors of loading a push certificate or setting up the APNs client.
//!
//! A push itself never returns an error: it returns a [`super::PushOutcome`].

use thiserror::Error;

/// Why a push certificate could not be loaded or an APNs client could not be built.
///
/// Messages never contain key material, push tokens or `PushMagic`.
#[derive(Debug, Error)]
pub enum ApnsError {
    /// The PKCS#12 file could not be opened: wrong password, damaged file, or an encryption
    /// this OpenSSL cannot read.
    #[error("cannot open the PKCS#12 push certificate (wrong password or damaged file): {0}")]
    Pkcs12(String),

    /// The certificate or key PEM could not be read.
    #[error("cannot read the push certificate or its key: {0}")]
    Pem(String),

    /// The input has no certificate, or no private key.
    #[error("the push certificate input has no {0}")]
    Missing(&'static str),

    /// The private key does not belong to the certificate.
    #[error("the private key does not belong to the push certificate")]
    KeyMismatch,

    /// The subject has no UID attribute, so there is no APNs topic.
    #[error(
        "the push certificate's subject has no UID attribute (0.9.2342.19200300.100.1.1), so it \
         names no APNs topic: is this the MDM push certificate from Apple's Push Certificates \
         Portal? (subject: {subject})"
    )]
    MissingTopic {
        /// The certificate's subject, for the operator.
        subject: String,
    },

    /// The UID is not an MDM topic.
    #[error(
        "the push certificate's topic {topic:?} is not an MDM topic (it must start with \
         \"com.apple.mgmt.\", e.g. com.apple.mgmt.External.<uuid>)"
    )]
    NotMdmTopic {
        /// The UID found.
        topic: String,
    },

    /// The certificate has expired.
    #[error(
        "the push certificate expired at {not_after} (unix seconds): renew it in Apple's Push \
         Certificates Portal with the same topic, or enrolled devices stop answering"
    )]
    Expired {
        /// End of validity, unix seconds.
        not_after: i64,
    },

    /// The certificate is not valid yet.
    #[error("the push certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// Start of validity, unix seconds.
        not_before: i64,
    },

    /// The APNs base URL is unusable.
    #[error("bad APNs base URL {url:?}: {reason}")]
    BaseUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The TLS client could not be set up (trust roots, client certificate).
    #[error("APNs TLS setup: {0}")]
    Tls(String),
}
