//! Getting the MDM push certificate from inside Lanyard: `push-cert request` makes the push key
//! (sealed at rest like every other key) and its CSR, kept pending in the database; a vendor
//! certificate signs the CSR into the request file for Apple's Push Certificates Portal; the
//! certificate Apple returns is matched to the pending key and, once checked (topic, expiry,
//! APNs environment, the topic rule on renewal), becomes the push certificate in one
//! transaction that also clears the pending request.
//!
//! The key stays pending until its certificate comes back, so a renewal keeps the running
//! certificate (and APNs) working until the new one is uploaded.

use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use lanyard_apple::apns::{
    ApnsEnvironment, ApnsError, PushCertRequestFile, PushCertificate, SignRequestBody,
    SigningServiceError,
};
pub use lanyard_apple::apns::{
    SigningService, VendorSigner, DEFAULT_SIGNING_SERVICE_URL, REPLY_LIMIT,
};
use lanyard_pki::SecretBox;
use lanyard_pki::{NameAttribute, PKey, Private};
use lanyard_store::{Audit, PkiMaterial};

use crate::push::{info, seal_context, PushCertificateInfo, APNS_CERT_NAME};
use crate::{Actor, CoreError, Lanyard, Result};

/// The pending push key and its CSR (row of the pending PKI table).
pub const PENDING_REQUEST: &str = "apns.request";
/// The key and self-signed certificate a signing service encrypts its reply to, pending
/// beside the push key of a request sent to that service.
pub const PENDING_ENCRYPTION: &str = "apns.request.encryption";

fn encryption_seal_context() -> &'static [u8] {
    b"lanyard:pki:apns-request-encryption"
}

/// A new push key and its CSR (DER and PEM), not stored yet.
struct Made {
    key: PKey<Private>,
    csr_der: Vec<u8>,
    csr_pem: String,
}

/// A new push key and its CSR.
fn new_push_key() -> Result<Made> {
    let key = lanyard_pki::generate_rsa_2048()?;
    let name = lanyard_pki::name(&[(NameAttribute::CommonName, "Lanyard MDM push")])?;
    let csr_der = lanyard_pki::build_csr(&key, &name, None)?;
    let csr_pem = lanyard_pki::csr_der_to_pem(&csr_der)?;
    Ok(Made {
        key,
        csr_der,
        csr_pem,
    })
}

/// A key and self-signed certificate for a signing service to encrypt its reply to (valid
/// 30 days: the reply comes by email within minutes).
fn new_encryption_identity() -> Result<(String, Vec<u8>)> {
    let issued = lanyard_pki::self_signed_rsa("Lanyard push request encryption", 30)?;
    Ok((issued.cert_pem, issued.key_pem.into_bytes()))
}

/// An email address a signing service can reply to: one `@`, no spaces or controls.
fn check_email(email: &str) -> Result<()> {
    let ok = email.len() <= 254
        && email.split('@').count() == 2
        && email.split('@').all(|p| !p.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "{email:?} is not an email address the signing service can reply to"
        )))
    }
}

/// A pending push certificate request, as the CLI, API and portal show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PushRequestInfo {
    /// The CSR, PEM (public): what a vendor signs.
    pub csr_pem: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The request file for Apple's Push Certificates Portal, when a vendor certificate
    /// signed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_file: Option<String>,
    /// The request went to the signing service: its emailed reply is decrypted with a key
    /// kept pending beside it.
    pub signing_service: bool,
}

fn csr_der_of(pem: &str) -> Result<Vec<u8>> {
    lanyard_pki::csr_pem_to_der(pem.as_bytes())
        .map_err(|e| CoreError::failed("reading the stored push certificate request", e))
}

fn vendor_error(e: lanyard_apple::apns::VendorError) -> CoreError {
    CoreError::Invalid(e.to_string())
}

/// A vendor identity as the operator hands it over (the CLI's files, the API's body, the
/// portal's upload): the PKCS#12 file with its password and Apple's certificates above it
/// (the WWDR intermediate and the Apple root). Every way in checks it here.
pub fn vendor_signer(pkcs12: &[u8], password: &str, apple_certs: &[&[u8]]) -> Result<VendorSigner> {
    if pkcs12.is_empty() {
        return Err(CoreError::Invalid(
            "give the vendor certificate and key (PKCS#12 file)".into(),
        ));
    }
    if apple_certs.iter().all(|c| c.is_empty()) {
        return Err(CoreError::Invalid(
            "give Apple's certificates above the vendor certificate: the WWDR intermediate and \
             the Apple root"
                .into(),
        ));
    }
    let apple: Vec<&[u8]> = apple_certs
        .iter()
        .copied()
        .filter(|c| !c.is_empty())
        .collect();
    VendorSigner::from_pkcs12(pkcs12, password, &apple).map_err(vendor_error)
}

/// A client of the signing service at `url` (https, or http to a loopback test service).
pub fn signing_service(url: &str) -> Result<SigningService> {
    SigningService::new(url).map_err(|e| CoreError::Invalid(e.to_string()))
}

impl Lanyard {
    /// Makes a new push key and CSR and keeps them pending (replacing an earlier pending
    /// request; the current push certificate is untouched). With `vendor`, also signs the CSR
    /// into the request file for Apple. A vendor that cannot sign stores nothing.
    pub async fn create_push_request(
        &self,
        actor: &Actor,
        secrets: &SecretBox,
        vendor: Option<&VendorSigner>,
    ) -> Result<PushRequestInfo> {
        actor.require_write()?;
        let Made {
            key,
            csr_der,
            csr_pem,
        } = new_push_key()?;
        let upload_file = match vendor {
            Some(v) => Some(v.sign_request(&csr_der).map_err(vendor_error)?),
            None => None,
        };
        let key_pem = key.private_key_to_pem_pkcs8()?;
        // Sealed with the push key's own context: on completion it moves as it is.
        let sealed = secrets.seal(&key_pem, seal_context())?;
        let created_at = lanyard_store::now();
        self.store
            .put_pending_pki(
                &[PkiMaterial {
                    name: PENDING_REQUEST.into(),
                    cert_pem: csr_pem.clone(),
                    key_sealed: sealed,
                    created_at,
                }],
                &Audit::new(
                    &actor.name,
                    "push_certificate.request",
                    APNS_CERT_NAME,
                    json!({"vendor_signed": upload_file.is_some()}),
                ),
            )
            .await?;
        Ok(PushRequestInfo {
            csr_pem,
            created_at,
            upload_file,
            signing_service: false,
        })
    }

    /// The pending request, if any.
    pub async fn push_request(&self) -> Result<Option<PushRequestInfo>> {
        let Some(m) = self.store.get_pending_pki(PENDING_REQUEST).await? else {
            return Ok(None);
        };
        // A request sent to the signing service is stored together with its encryption key
        // (one transaction, one time); a later request made otherwise leaves an older key.
        let signing_service = self
            .store
            .get_pending_pki(PENDING_ENCRYPTION)
            .await?
            .is_some_and(|e| e.created_at == m.created_at);
        Ok(Some(PushRequestInfo {
            csr_pem: m.cert_pem,
            created_at: m.created_at,
            upload_file: None,
            signing_service,
        }))
    }

    /// Sends a new push key's CSR to a signing service, which emails the signed request file
    /// to `email`, encrypted to a key made for it. Only once the service accepted the request
    /// are the push key and the encryption key kept pending (sealed), replacing an earlier
    /// request: a refusal stores nothing.
    pub async fn request_push_signing(
        &self,
        actor: &Actor,
        secrets: &SecretBox,
        service: &SigningService,
        email: &str,
        api_key: &str,
    ) -> Result<PushRequestInfo> {
        actor.require_write()?;
        check_email(email)?;
        if api_key.trim().is_empty() {
            return Err(CoreError::Invalid(
                "the signing service's API key is empty".into(),
            ));
        }
        let Made { key, csr_pem, .. } = new_push_key()?;
        let (enc_cert, enc_key) = new_encryption_identity()?;
        service
            .submit(&SignRequestBody::new(
                &csr_pem,
                email,
                api_key.trim(),
                &enc_cert,
            ))
            .await
            .map_err(|e| match e {
                // The service refused what it was given (an unknown API key, an address it
                // will not mail): the administrator's input, not an outage.
                SigningServiceError::Config(_)
                | SigningServiceError::Refused {
                    status: 400..=499, ..
                } => CoreError::Invalid(e.to_string()),
                other => CoreError::Upstream(other.to_string()),
            })?;
        let created_at = lanyard_store::now();
        let rows = [
            PkiMaterial {
                name: PENDING_REQUEST.into(),
                cert_pem: csr_pem.clone(),
                key_sealed: secrets.seal(&key.private_key_to_pem_pkcs8()?, seal_context())?,
                created_at,
            },
            PkiMaterial {
                name: PENDING_ENCRYPTION.into(),
                cert_pem: enc_cert,
                key_sealed: secrets.seal(&enc_key, encryption_seal_context())?,
                created_at,
            },
        ];
        self.store
            .put_pending_pki(
                &rows,
                &Audit::new(
                    &actor.name,
                    "push_certificate.request",
                    APNS_CERT_NAME,
                    json!({"signing_service": service.url(), "email": email}),
                ),
            )
            .await?;
        Ok(PushRequestInfo {
            csr_pem,
            created_at,
            upload_file: None,
            signing_service: true,
        })
    }

    /// Reads the signing service's emailed reply to the pending request: decrypted with the
    /// pending encryption key, it must be a request file carrying the pending CSR. Returns
    /// the request file for Apple; stores nothing.
    pub async fn decrypt_push_reply(
        &self,
        actor: &Actor,
        secrets: &SecretBox,
        reply: &[u8],
    ) -> Result<String> {
        actor.require_write()?;
        if reply.len() > REPLY_LIMIT {
            return Err(CoreError::Invalid(format!(
                "this file ({} bytes) is too large to be a signing service reply (at most {} \
                 bytes)",
                reply.len(),
                REPLY_LIMIT
            )));
        }
        let pending = self
            .store
            .get_pending_pki(PENDING_REQUEST)
            .await?
            .ok_or_else(no_request)?;
        let enc = self
            .store
            .get_pending_pki(PENDING_ENCRYPTION)
            .await?
            .ok_or_else(|| {
                CoreError::NotFound(
                    "pending signing-service request (make one with `lanyard push-cert request \
                     --signing-service`)"
                        .into(),
                )
            })?;
        let key = secrets
            .open(&enc.key_sealed, encryption_seal_context())
            .map_err(|e| CoreError::failed("opening the pending encryption key", e))?;
        let file = lanyard_apple::apns::decrypt_reply(reply, enc.cert_pem.as_bytes(), &key)
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let parsed = PushCertRequestFile::decode(&file).map_err(|e| {
            CoreError::Invalid(format!(
                "the decrypted reply is not a request file for Apple: {e}"
            ))
        })?;
        if parsed.csr_der != csr_der_of(&pending.cert_pem)? {
            return Err(CoreError::Invalid(
                "the reply carries another CSR than Lanyard's pending push certificate request \
                 (it answers an earlier or another request): use the reply to the latest \
                 request, or make a new one"
                    .into(),
            ));
        }
        let text = String::from_utf8(file)
            .map_err(|_| CoreError::Invalid("the decrypted reply is not text".into()))?;
        Ok(text.trim().to_string())
    }

    /// Signs the pending request with a vendor certificate: the request file for Apple.
    /// Stores nothing, but only an administrator who may make the request may sign it.
    pub async fn sign_push_request(&self, actor: &Actor, vendor: &VendorSigner) -> Result<String> {
        actor.require_write()?;
        let pending = self.push_request().await?.ok_or_else(no_request)?;
        vendor
            .sign_request(&csr_der_of(&pending.csr_pem)?)
            .map_err(vendor_error)
    }

    /// Stores the certificate Apple issued for the pending request (PEM, as Apple's portal
    /// gives it): it must belong to the pending key, carry an MDM topic, be valid, be for the
    /// APNs service Lanyard uses, and keep the topic of live enrollments (unless `force`).
    /// Certificate and key become the push certificate and the request is cleared, in one
    /// transaction; a refusal changes nothing.
    pub async fn complete_push_request(
        &self,
        actor: &Actor,
        secrets: &SecretBox,
        cert_pem: &[u8],
        force: bool,
    ) -> Result<PushCertificateInfo> {
        actor.require_write()?;
        let pending = self
            .store
            .get_pending_pki(PENDING_REQUEST)
            .await?
            .ok_or_else(no_request)?;
        let key = secrets
            .open(&pending.key_sealed, seal_context())
            .map_err(|e| CoreError::failed("opening the pending push key", e))?;
        let cert = PushCertificate::from_pem(cert_pem, &key).map_err(|e| match e {
            ApnsError::KeyMismatch => CoreError::Invalid(
                "this certificate was not issued for Lanyard's pending push certificate request \
                 (its key belongs to another CSR): upload the certificate Apple issued for the \
                 request file made by `lanyard push-cert request`, or make a new request"
                    .into(),
            ),
            other => CoreError::Invalid(format!("push certificate: {other}")),
        })?;
        self.check_push_replacement(&cert, force).await?;
        let stored_pem = cert
            .cert_pem()
            .map_err(|e| CoreError::failed("encoding the push certificate", e))?;
        let shown = info(cert.summary());
        self.store
            .complete_pending_pki(
                &[PENDING_REQUEST, PENDING_ENCRYPTION],
                &PkiMaterial {
                    name: APNS_CERT_NAME.into(),
                    cert_pem: stored_pem,
                    key_sealed: pending.key_sealed,
                    created_at: lanyard_store::now(),
                },
                &Audit::new(
                    &actor.name,
                    "push_certificate.upload",
                    cert.topic(),
                    json!({"sha256": shown.sha256, "not_after": shown.not_after,
                           "from_request": true}),
                ),
            )
            .await
            .map_err(|e| match e {
                lanyard_store::StoreError::NotFound(_) => CoreError::Conflict(
                    "the pending request was completed by another upload meanwhile".into(),
                ),
                other => other.into(),
            })?;
        crate::push::record_push_expiry(&shown);
        Ok(shown)
    }

    /// The rules every new push certificate meets before it replaces the stored one: it is
    /// for the APNs service Lanyard sends to, and — unless `force` — its topic is the topic
    /// live enrollments were issued with (Apple's `com.apple.mdm` payload: the topic "must
    /// not change" on a profile update, so a Mac enrolled under another topic is orphaned).
    pub(crate) async fn check_push_replacement(
        &self,
        cert: &PushCertificate,
        force: bool,
    ) -> Result<()> {
        if let Some(env) = cert.summary().environment() {
            if env != self.apns_environment {
                return Err(CoreError::Invalid(format!(
                    "this is a {env} APNs certificate, but Lanyard sends pushes to the {} APNs \
                     service (--apns-url): get a production MDM push certificate from Apple's \
                     Push Certificates Portal",
                    self.apns_environment
                )));
            }
        }
        if force {
            return Ok(());
        }
        let others: Vec<(String, i64)> = self
            .store
            .live_push_topics()
            .await?
            .into_iter()
            .filter(|(t, _)| t != cert.topic())
            .collect();
        if let Some((topic, _)) = others.first() {
            let live: i64 = others.iter().map(|(_, n)| n).sum();
            return Err(CoreError::Conflict(format!(
                "the certificate's topic {} differs from {topic}, the topic of {live} live \
                 enrollment(s): every enrolled device would be orphaned (it only accepts pushes \
                 for its topic and must re-enroll). Renew the existing certificate in Apple's \
                 Push Certificates Portal with the same Apple Account (Renew, not Create), or \
                 pass force to accept re-enrolling every device",
                cert.topic()
            )));
        }
        Ok(())
    }
}

fn no_request() -> CoreError {
    CoreError::NotFound(
        "pending push certificate request (make one with `lanyard push-cert request`)".into(),
    )
}

/// The APNs service a base URL names: Apple's sandbox URL is development, anything else
/// (Apple's production URL, or a test server) production.
pub fn environment_of_url(url: &str) -> ApnsEnvironment {
    if url.trim_end_matches('/') == lanyard_apple::apns::SANDBOX_URL {
        ApnsEnvironment::Development
    } else {
        ApnsEnvironment::Production
    }
}
